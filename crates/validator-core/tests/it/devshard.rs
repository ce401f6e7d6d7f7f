//! Devshard jobs through the same engine: verdicts back to the caller, joins, the challenged
//! lane, waits for ML capacity without a slot, the deadline, and every way a job ends.

use std::time::Duration;

use testkit::memory::{MemoryPorts, MlScript, MODEL};
use validator_core::{
    devshard::{DevshardJob, DevshardRequest, VerdictReason},
    ports::{ml_node::ReplayError, payload_source::PayloadError},
    Admission, Config, Error, Lane, Outcome, SkipReason, Stage,
};

use crate::{config, settle, Harness};

pub(crate) const EPOCH: u64 = 150;
const EXECUTOR: &str = "gonka1qypqxpq9qcrsszg2pvxq6rs0zqg3yyc50htqp7";

pub(crate) fn job(escrow: &str, id: u64, challenged: bool) -> DevshardJob {
    DevshardJob::new(DevshardRequest {
        inference_id: id,
        model: MODEL.into(),
        prompt_hash: vec![1; 32],
        response_hash: vec![2; 32],
        input_tokens: 12,
        output_tokens: 5,
        escrow_id: escrow.into(),
        epoch_id: EPOCH,
        executor_address: EXECUTOR.into(),
        runtime_version: "v4".into(),
        challenged,
    })
    .expect("a well-formed job")
}

fn harness(slots: usize, broker_slots: usize) -> Harness {
    let h = Harness::new(config(slots), MemoryPorts::new(Duration::from_millis(5), broker_slots));
    h.fakes.chain.set_epoch_models(EPOCH, &[MODEL]);
    h
}

fn reason(outcome: &Outcome) -> Option<VerdictReason> {
    match outcome {
        Outcome::Judged { verdict } => Some(verdict.reason),
        _ => None,
    }
}

#[tokio::test(start_paused = true)]
async fn a_devshard_job_gets_its_verdict_back_and_nothing_goes_to_the_chain() {
    let h = harness(2, 2);
    let ticket = h.engine.validate_devshard(job("42", 7, false)).unwrap();
    assert_eq!(ticket.admission, Admission::Admitted);
    let outcome = ticket.outcome().await;
    let Outcome::Judged { verdict } = &outcome else { panic!("{outcome:?}") };
    assert_eq!(verdict.reason, VerdictReason::SimilarityPass);
    assert_eq!(verdict.threshold.as_deref(), Some("0.90"));
    assert!(h.fakes.chain.submitted().is_empty());
    assert_eq!(h.fakes.broker.held(), 0);
    let status = h.engine.status();
    assert_eq!(status.devshard_verdicts.get(VerdictReason::SimilarityPass), 1);
    let body = &h.fakes.ml.requests()[0];
    assert_eq!(body["return_token_ids"], serde_json::json!(true));
}

#[tokio::test(start_paused = true)]
async fn a_second_call_for_a_job_in_flight_joins_it_and_the_replay_runs_once() {
    let h = harness(2, 2);
    let first = h.engine.validate_devshard(job("42", 7, false)).unwrap();
    let second = h.engine.validate_devshard(job("42", 7, false)).unwrap();
    assert_eq!(second.admission, Admission::AlreadyInFlight);
    let other_escrow = h.engine.validate_devshard(job("43", 7, false)).unwrap();
    assert_eq!(other_escrow.admission, Admission::Admitted);
    let (a, b, c) = tokio::join!(first.outcome(), second.outcome(), other_escrow.outcome());
    assert_eq!(a, b);
    assert!(reason(&c).is_some());
    assert_eq!(h.fakes.ml.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn challenged_votes_take_the_highest_lane() {
    let h = harness(1, 1);
    let sampled: Vec<_> =
        (1..=4).map(|id| h.engine.validate_devshard(job("42", id, false)).unwrap()).collect();
    let challenged = h.engine.validate_devshard(job("42", 99, true)).unwrap();
    let status = h.engine.status();
    assert_eq!(status.lanes[0].lane, Lane::Challenged, "the highest lane comes first");
    assert_eq!(status.lane(Lane::Challenged).unwrap().in_flight, 1);
    challenged.outcome().await;
    // Only the sampled job that already held the one slot can have replayed before the vote.
    assert!(h.fakes.ml.calls() <= 2, "{} replays before the vote", h.fakes.ml.calls());
    for ticket in sampled {
        ticket.outcome().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_job_waiting_for_ml_capacity_holds_no_slot_and_keeps_its_payload() {
    let h = Harness::new(config(4), MemoryPorts::new(Duration::from_secs(10), 1));
    h.fakes.chain.set_epoch_models(EPOCH, &[MODEL]);
    let tickets: Vec<_> =
        (1..=3).map(|id| h.engine.validate_devshard(job("42", id, false)).unwrap()).collect();
    let payloads = h.fakes.payloads.clone();
    settle(|| h.fakes.ml.in_flight() == 1 && h.engine.status().pipeline.buffered == 2).await;
    let status = h.engine.status();
    assert_eq!(status.slots_in_use, 1, "the jobs without room wait holding no GPU slot");
    assert_eq!(status.pipeline.fetch_in_use, 0);
    for ticket in tickets {
        assert_eq!(reason(&ticket.outcome().await), Some(VerdictReason::SimilarityPass));
    }
    for id in 1..=3 {
        let calls = payloads.calls(&format!("devshard:42:{id}")).len();
        assert_eq!(calls, 1, "job {id}: fetched once, kept while it waited for room");
    }
    assert_eq!(h.fakes.ml.peak(), 1);
    assert_eq!(h.fakes.broker.peak(), 1);
}

#[tokio::test(start_paused = true)]
async fn each_way_a_job_ends_is_typed() {
    let h = harness(2, 2);
    let gone = job("42", 1, false);
    h.fakes.payloads.script(gone.key.journal_id().as_str(), [PayloadError::Gone]);
    let mismatch = job("42", 2, false);
    h.fakes
        .payloads
        .script(mismatch.key.journal_id().as_str(), [PayloadError::HashMismatch("prompt".into())]);
    let gone = h.engine.validate_devshard(gone).unwrap();
    assert_eq!(gone.outcome().await, Outcome::Skipped { reason: SkipReason::Gone });
    let mismatch = h.engine.validate_devshard(mismatch).unwrap();
    assert_eq!(reason(&mismatch.outcome().await), Some(VerdictReason::HashMismatch));

    h.fakes.ml.script([MlScript::Reject(422)]);
    let rejected = h.engine.validate_devshard(job("42", 3, false)).unwrap();
    let outcome = rejected.outcome().await;
    assert_eq!(reason(&outcome), Some(VerdictReason::MlRejected));
    assert!(matches!(&outcome, Outcome::Judged { verdict } if verdict.valid()));

    let mut inflated = job("42", 4, false);
    inflated.input_tokens = 100;
    let inflated = h.engine.validate_devshard(inflated).unwrap();
    assert_eq!(reason(&inflated.outcome().await), Some(VerdictReason::InflatedTokens));

    h.fakes.ml.script([MlScript::Fail(ReplayError::Transport("reset".into()))]);
    let retried = h.engine.validate_devshard(job("42", 5, false)).unwrap();
    assert_eq!(reason(&retried.outcome().await), Some(VerdictReason::SimilarityPass));
    assert_eq!(h.fakes.broker.failures(), 1, "the transport failure reached the broker");
}

#[tokio::test(start_paused = true)]
async fn payloads_the_executor_never_serves_end_without_a_verdict_within_the_deadline() {
    let config = Config { devshard_deadline: Duration::from_secs(600), ..config(2) };
    let h = Harness::new(config, MemoryPorts::new(Duration::from_millis(5), 2));
    h.fakes.chain.set_epoch_models(EPOCH, &[MODEL]);
    let unavailable = job("42", 1, false);
    h.fakes.payloads.script(
        unavailable.key.journal_id().as_str(),
        (0..100).map(|_| PayloadError::Unavailable("503".into())),
    );
    let started = tokio::time::Instant::now();
    let outcome = h.engine.validate_devshard(unavailable).unwrap().outcome().await;
    assert!(matches!(outcome, Outcome::GaveUp { .. }), "{outcome:?}");
    assert!(started.elapsed() <= Duration::from_secs(600), "{:?}", started.elapsed());
    assert!(h.fakes.chain.submitted().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_model_without_a_threshold_gives_no_verdict() {
    let h = harness(2, 2);
    let mut other_epoch = job("42", 1, false);
    other_epoch.epoch_id = EPOCH + 1;
    let outcome = h.engine.validate_devshard(other_epoch).unwrap().outcome().await;
    assert!(matches!(outcome, Outcome::GaveUp { stage: Stage::Chain, .. }), "{outcome:?}");
}

#[tokio::test(start_paused = true)]
async fn unknown_models_and_shutdown_are_refused_and_waiting_callers_are_told() {
    let h = Harness::new(config(1), MemoryPorts::new(Duration::from_secs(3600), 1));
    h.fakes.chain.set_epoch_models(EPOCH, &[MODEL]);
    let mut unknown = job("42", 1, false);
    unknown.model = "no-such-model".into();
    assert_eq!(
        h.engine.validate_devshard(unknown).unwrap_err(),
        Error::ModelNotServed("no-such-model".into())
    );
    let running = h.engine.validate_devshard(job("42", 2, false)).unwrap();
    let queued = h.engine.validate_devshard(job("42", 3, true)).unwrap();
    settle(|| h.fakes.ml.in_flight() == 1).await;
    h.engine.shutdown(Duration::from_secs(1)).await;
    assert_eq!(running.outcome().await, Outcome::Cancelled);
    assert_eq!(queued.outcome().await, Outcome::Cancelled);
    assert_eq!(h.engine.validate_devshard(job("42", 4, false)).unwrap_err(), Error::ShuttingDown);
}

#[tokio::test(start_paused = true)]
async fn challenged_votes_get_the_next_free_ml_slot_when_slots_outnumber_it() {
    let h = Harness::new(config(4), MemoryPorts::new(Duration::from_secs(1), 1));
    h.fakes.chain.set_epoch_models(EPOCH, &[MODEL]);
    let sampled: Vec<_> =
        (1..=8).map(|id| h.engine.validate_devshard(job("42", id, false)).unwrap()).collect();
    settle(|| h.fakes.ml.in_flight() == 1).await;
    let challenged: Vec<_> =
        (100..=101).map(|id| h.engine.validate_devshard(job("42", id, true)).unwrap()).collect();
    for vote in challenged {
        assert_eq!(reason(&vote.outcome().await), Some(VerdictReason::SimilarityPass));
    }
    // The sampled job that held the one ML slot, then the two votes, then the rest.
    let order: Vec<String> = h
        .fakes
        .ml
        .requests()
        .iter()
        .map(|request| request["messages"][0]["content"].as_str().unwrap_or_default().to_owned())
        .collect();
    let first: Vec<&str> = order.iter().take(3).map(String::as_str).collect();
    assert_eq!(
        first,
        ["question devshard:42:1", "question devshard:42:100", "question devshard:42:101"],
        "{order:?}"
    );
    for ticket in sampled {
        ticket.outcome().await;
    }
    assert_eq!(h.fakes.ml.peak(), 1);
}
