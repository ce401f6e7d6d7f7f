use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use testkit::memory::{payloads_for, MemoryPorts, MlScript, MODEL};
use validator_core::{
    ports::{
        chain::Inference,
        payload_source::{PayloadError, PayloadSource, Payloads},
    },
    Admission, Lane, Outcome, OutcomeKind, Ports, RecoveryStart,
};

use crate::{config, settle, Harness};

/// DOMAIN.md 8.31 and 8.32: 5,000 recovery items plus live and revalidation work on 10 slots
/// and a slow ML node never run more than 10 validations at once, and every slot comes back.
#[tokio::test(start_paused = true)]
async fn peak_concurrency_is_exactly_the_slot_count_across_all_lanes() {
    let mut h = Harness::new(config(10), MemoryPorts::new(Duration::from_millis(250), 64));
    h.fakes.chain.set_epoch_models(9, &[MODEL]);
    for i in 0..5_000 {
        h.fakes.chain.add_inference(&format!("r{i:05}"), 9);
    }
    for i in 0..100 {
        h.fakes.chain.add_inference(&format!("live{i}"), 10);
        h.fakes.chain.add_inference(&format!("dispute{i}"), 10);
    }
    let RecoveryStart::Started(run) = h.engine.recover(9, 1).unwrap() else { panic!() };
    for i in 0..100 {
        h.engine.sample(vec![format!("live{i}").into()]).unwrap();
        assert_eq!(h.engine.revalidate(format!("dispute{i}").into()).unwrap(), Admission::Admitted);
    }
    let events = h.collect(5_200).await;
    let report = run.wait().await;

    assert_eq!(report.detected, 5_000);
    assert_eq!(report.outcomes.get(OutcomeKind::Submitted), 5_000);
    assert!(events.iter().all(|e| matches!(e.outcome, Outcome::Submitted { .. })));
    assert_eq!(h.fakes.ml.peak(), 10, "the ML node saw exactly the slot count at peak");
    assert_eq!(h.fakes.broker.peak(), 10);
    let status = h.engine.status();
    assert_eq!(status.slots_peak, 10);
    assert_eq!(status.slots_in_use, 0);
    assert_eq!(h.fakes.broker.held(), 0);
    assert_eq!(h.fakes.chain.submitted().len(), 5_200);
    // The already-validated set is downloaded once per epoch and TTL, not once per validation.
    assert!(h.fakes.chain.queries("validated_inferences") < 20);
}

/// DOMAIN.md 8.33: the entry points return at once even when every slot is busy.
#[tokio::test(start_paused = true)]
async fn entry_points_do_not_wait_for_slots() {
    let h = Harness::with_slots(2, Duration::from_millis(10));
    h.fakes.ml.script([MlScript::Hang, MlScript::Hang]);
    for id in ["a", "b", "c", "d"] {
        h.fakes.chain.add_inference(id, 10);
    }
    h.engine.validate("a".into()).unwrap();
    h.engine.validate("b".into()).unwrap();
    // Let the dispatcher fill both slots with the hanging replays.
    settle(|| h.fakes.ml.in_flight() == 2).await;
    // Synchronous calls: they cannot wait for a slot.
    h.engine.sample(vec!["c".into()]).unwrap();
    assert_eq!(h.engine.revalidate("d".into()).unwrap(), Admission::Admitted);
    let status = h.engine.status();
    assert_eq!(status.slots_in_use, 2);
    assert_eq!(
        status.lane(Lane::Revalidation).unwrap().ready,
        1,
        "the revalidation waits for a slot, queued"
    );
}

/// The live lane goes before a recovery backlog: a live item admitted behind 1,000 recovery
/// items is dispatched within the next free slots, not after the backlog.
#[tokio::test(start_paused = true)]
async fn live_work_is_not_starved_by_a_backlog() {
    let mut h = Harness::with_slots(4, Duration::from_millis(100));
    h.fakes.chain.set_epoch_models(9, &[MODEL]);
    for i in 0..1_000 {
        h.fakes.chain.add_inference(&format!("r{i:04}"), 9);
    }
    h.fakes.chain.add_inference("live", 10);
    let run = h.engine.recover(9, 1).unwrap().handle().clone();
    // Wait until the backlog is queued and running.
    settle(|| h.engine.status().lane(Lane::Recovery).unwrap().ready >= 100).await;
    h.engine.validate("live".into()).unwrap();
    let mut before_live = 0;
    let live = loop {
        let event = h.next_outcome().await;
        if event.lane == Lane::Live {
            break event;
        }
        before_live += 1;
    };
    assert!(before_live <= 8, "{before_live} recovery items finished before the live one");
    // It took the first slot that freed: at most one replay time behind 1,000 queued items.
    assert!(live.wait.unwrap() <= Duration::from_millis(100), "{:?}", live.wait);
    run.wait().await;
}

/// DOMAIN.md 8.37: the same inference sent by live and recovery at once runs once.
#[tokio::test(start_paused = true)]
async fn the_same_inference_from_two_paths_runs_once() {
    let fakes = MemoryPorts::new(Duration::from_millis(50), 4);
    let mut mock = testkit::mocks::MockPayloadSource::new();
    mock.expect_fetch()
        .times(1)
        .returning(|inference| Ok(payloads_for(inference.inference_id.as_str())));
    let ports = Ports { payloads: Arc::new(mock), ..fakes.ports() };
    let engine = validator_core::Engine::start(config(4), ports).unwrap();
    let mut outcomes = engine.outcomes();
    fakes.chain.set_epoch_models(9, &[MODEL]);
    fakes.chain.add_inference("same", 9);

    assert_eq!(engine.validate("same".into()).unwrap(), Admission::Admitted);
    let run = engine.recover(9, 1).unwrap().handle().clone();
    let report = run.wait().await;
    let event = outcomes.recv().await.unwrap();
    assert!(matches!(event.outcome, Outcome::Submitted { .. }));
    assert_eq!(event.run_id, Some(run.id()), "the recovery run joined the live validation");
    assert_eq!(report.detected, 1);
    assert_eq!(report.outcomes.get(OutcomeKind::Submitted), 1);
    assert_eq!(fakes.ml.calls(), 1);
    assert_eq!(fakes.chain.submitted().len(), 1);
}

struct Panicking;

#[async_trait]
impl PayloadSource for Panicking {
    async fn fetch(&self, _inference: &Inference) -> Result<Payloads, PayloadError> {
        panic!("adapter bug");
    }
}

/// DOMAIN.md 8.32: a panic inside an attempt frees the slot and ends the key once.
#[tokio::test(start_paused = true)]
async fn a_panicking_attempt_frees_its_slot_and_gives_up() {
    let fakes = MemoryPorts::new(Duration::from_millis(1), 1);
    let ports = Ports { payloads: Arc::new(Panicking), ..fakes.ports() };
    let engine = validator_core::Engine::start(config(1), ports).unwrap();
    let mut outcomes = engine.outcomes();
    fakes.chain.add_inference("p", 10);
    fakes.chain.add_inference("q", 10);
    engine.validate("p".into()).unwrap();
    engine.validate("q".into()).unwrap();
    for _ in 0..2 {
        let event = outcomes.recv().await.unwrap();
        let Outcome::GaveUp { error, .. } = event.outcome else { panic!("{event:?}") };
        assert!(error.contains("adapter bug"), "{error}");
    }
    assert_eq!(engine.status().slots_in_use, 0);
}

/// DOMAIN.md 8.38: shutdown cancels back-off timers, in-flight fetches and replays at once and
/// submits nothing partial; every admitted key ends as cancelled; every task ends.
#[tokio::test(start_paused = true)]
async fn shutdown_cancels_everything_within_the_grace_period() {
    let mut h = Harness::with_slots(3, Duration::from_millis(10));
    for id in ["replaying", "backing-off", "fetching", "queued"] {
        h.fakes.chain.add_inference(id, 10);
    }
    h.fakes.ml.script([MlScript::Hang]);
    h.fakes.payloads.script("backing-off", [PayloadError::Unavailable("down".into())]);
    h.engine.validate("replaying".into()).unwrap();
    h.engine.validate("backing-off".into()).unwrap();
    settle(|| h.engine.status().waiting_to_retry == 1 && h.fakes.ml.in_flight() == 1).await;
    h.fakes.payloads.hang(true);
    h.engine.validate("fetching".into()).unwrap();
    h.fakes.payloads.wait_calls("fetching", 1).await;
    h.fakes.ml.script([MlScript::Hang]);
    h.engine.revalidate("queued".into()).unwrap();

    let started = tokio::time::Instant::now();
    let report = h.engine.shutdown(Duration::from_secs(10)).await;
    assert!(report.drained);
    assert_eq!(started.elapsed(), Duration::ZERO, "nothing waited on a timer");
    let events = h.collect(4).await;
    assert!(events.iter().all(|e| e.outcome == Outcome::Cancelled), "{events:?}");
    assert!(h.fakes.chain.submitted().is_empty());
    assert!(h.engine.is_stopped());
    assert_eq!(h.fakes.broker.held(), 0);
    assert!(h.engine.validate("late".into()).is_err());
    assert!(h.engine.sample(vec!["late".into()]).is_err());
}
