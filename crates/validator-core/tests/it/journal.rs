use std::time::Duration;

use testkit::memory::{MemoryJournal, MemoryPorts};
use validator_core::{
    ports::{
        chain::MsgValidation,
        journal::{Intent, JournalEntry, SubmissionResult},
    },
    scoring::{ValueDecimal, Verdict},
    Engine, Lane, Outcome, SkipReason, Stage,
};

use crate::{config, Harness};

/// An intent a crashed process left open: value 1 for `inference` in epoch 10.
pub(crate) fn open_intent(inference: &str, revalidation: bool, msg_id: &str) -> Intent {
    Intent {
        msg: MsgValidation {
            id: msg_id.into(),
            inference_id: inference.into(),
            response_hash: format!("hash-of-{inference}"),
            value_decimal: ValueDecimal { value: 1, exponent: 0 },
            revalidation,
        },
        epoch: 10,
        lane: if revalidation { Lane::Revalidation } else { Lane::Live },
        outcome: Outcome::Submitted {
            verdict: Verdict::Similarity,
            value: 1.0,
            msg_id: msg_id.into(),
            tx_hash: None,
        },
    }
}

/// The answers recorded for `msg_id`, in order.
fn answers(journal: &MemoryJournal, msg_id: &str) -> Vec<SubmissionResult> {
    journal
        .entries()
        .into_iter()
        .filter_map(|entry| match entry {
            JournalEntry::Submission { msg_id: id, result, .. } if id == msg_id => Some(result),
            _ => None,
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn the_intent_is_committed_before_the_broadcast_and_the_history_is_recorded() {
    let mut h = Harness::with_slots(1, Duration::from_millis(5));
    h.fakes.chain.add_inference("a", 10);
    h.fakes.payloads.script(
        "a",
        [validator_core::ports::payload_source::PayloadError::Unavailable(
            "executor restarting".into(),
        )],
    );
    h.engine.validate("a".into()).unwrap();
    let Outcome::Submitted { msg_id, .. } = h.next_outcome().await.outcome else { panic!() };

    let journal = &h.fakes.journal;
    let intents = journal.intents();
    assert_eq!(intents.len(), 1);
    assert_eq!(intents[0].0.msg, h.fakes.chain.submitted()[0]);
    assert_eq!((intents[0].0.epoch, intents[0].0.lane), (10, Lane::Live));
    assert_eq!(
        answers(journal, &msg_id),
        [SubmissionResult::Landed { tx_hash: Some("TX1".into()) }]
    );

    let kinds: Vec<&str> = journal
        .entries()
        .iter()
        .map(|entry| match entry {
            JournalEntry::Admitted { .. } => "admitted",
            JournalEntry::Epoch { epoch: 10, .. } => "epoch",
            JournalEntry::Attempt { stage: Stage::Payload, .. } => "attempt",
            JournalEntry::Submission { .. } => "submission",
            JournalEntry::Finished { .. } => "finished",
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(kinds, ["admitted", "epoch", "attempt", "submission", "finished"]);
}

#[tokio::test(start_paused = true)]
async fn nothing_is_broadcast_without_a_committed_intent() {
    let mut h = Harness::with_slots(1, Duration::from_millis(5));
    h.fakes.chain.add_inference("a", 10);
    h.fakes.journal.fail_intents(true);
    h.engine.validate("a".into()).unwrap();
    let outcome = h.next_outcome().await.outcome;
    assert!(matches!(outcome, Outcome::GaveUp { stage: Stage::Submit, .. }), "{outcome:?}");
    assert!(h.fakes.chain.submitted().is_empty());
    assert_eq!(h.fakes.chain.queries("submit_validation"), 0);
    assert_eq!(h.fakes.ml.calls(), 1, "the retries reuse the replayed result");
}

#[tokio::test(start_paused = true)]
async fn open_intents_are_reconciled_with_the_chain_before_anything_is_sent() {
    let fakes = MemoryPorts::new(Duration::from_millis(5), 2);
    for id in ["landed", "lost", "disputed", "fresh"] {
        fakes.chain.add_inference(id, 10);
    }
    // The crashed process sent "landed"; its broadcast of "lost" never arrived; whether its
    // revalidation of "disputed" arrived, the chain cannot tell.
    fakes.chain.set_validated(10, &["landed"]);
    fakes.journal.leave_open(open_intent("landed", false, "m-landed"));
    fakes.journal.leave_open(open_intent("lost", false, "m-lost"));
    fakes.journal.leave_open(open_intent("disputed", true, "m-disputed"));

    let mut h = Harness::new(config(2), fakes);
    h.engine.validate("fresh".into()).unwrap();
    let events = h.collect(2).await;

    let submitted = h.fakes.chain.submitted();
    assert_eq!(submitted.len(), 2, "{submitted:?}");
    assert_eq!(submitted[0].id, "m-lost", "the resend goes first, before any new work");
    assert_eq!(submitted[0], open_intent("lost", false, "m-lost").msg, "the same message");
    assert_eq!(submitted[1].inference_id.as_str(), "fresh");
    assert_eq!(h.fakes.ml.calls(), 1, "the resend replays nothing");
    assert!(events.iter().any(|e| e.inference_id.as_str() == "lost"
        && matches!(&e.outcome, Outcome::Submitted { msg_id, .. } if msg_id == "m-lost")));

    let journal = &h.fakes.journal;
    assert_eq!(answers(journal, "m-landed"), [SubmissionResult::ReconciledLanded]);
    assert_eq!(
        answers(journal, "m-lost"),
        [
            SubmissionResult::ReconciledResent,
            SubmissionResult::Landed { tx_hash: Some("TX1".into()) }
        ]
    );
    assert_eq!(answers(journal, "m-disputed"), [SubmissionResult::ReconciledUnconfirmed]);
    use validator_core::ports::Journal as _;
    assert!(journal.open_intents().await.unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_restarted_engine_does_not_redo_what_an_earlier_one_submitted() {
    let fakes = MemoryPorts::new(Duration::from_millis(5), 1);
    fakes.chain.add_inference("a", 10);
    let first = Engine::start(config(1), fakes.ports()).unwrap();
    let mut outcomes = first.outcomes();
    first.revalidate("a".into()).unwrap();
    assert!(matches!(outcomes.recv().await.unwrap().outcome, Outcome::Submitted { .. }));
    first.recover(10, 1).unwrap().handle().wait().await;
    first.shutdown(Duration::from_secs(1)).await;

    // The chain keeps no record of revalidations: only the journal knows this one was sent.
    let second = Engine::start(config(1), fakes.ports()).unwrap();
    let mut outcomes = second.outcomes();
    second.revalidate("a".into()).unwrap();
    assert_eq!(
        outcomes.recv().await.unwrap().outcome,
        Outcome::Skipped { reason: SkipReason::AlreadyValidated }
    );
    assert_eq!(fakes.chain.submitted().len(), 1);
    assert_eq!(fakes.ml.calls(), 1);
    let run = second.recover(10, 1).unwrap();
    assert_eq!(run.handle().id(), 2, "run ids go on from the journal's");
    run.handle().wait().await;
}
