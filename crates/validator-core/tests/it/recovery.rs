use std::time::Duration;

use testkit::memory::{MemoryPorts, MODEL};
use validator_core::{
    ports::chain::{ValidationDetails, ValidatorPower},
    sampling, Lane, OutcomeKind, RecoveryStart, RunState,
};

use crate::{config, Harness};

fn recovery_harness() -> Harness {
    let h = Harness::with_slots(4, Duration::from_millis(20));
    h.fakes.chain.set_epoch_models(9, &[MODEL]);
    h
}

/// DOMAIN.md 8.34 and 8.35: two triggers at once run detection once; the second gets the
/// running run and can await it; after the run ends a new trigger runs again.
#[tokio::test(start_paused = true)]
async fn a_second_trigger_joins_the_running_run() {
    let h = recovery_harness();
    for i in 0..50 {
        h.fakes.chain.add_inference(&format!("r{i}"), 9);
    }
    let RecoveryStart::Started(first) = h.engine.recover(9, 1).unwrap() else { panic!() };
    let RecoveryStart::AlreadyRunning(second) = h.engine.recover(9, 1).unwrap() else {
        panic!("the second trigger must not start a run")
    };
    assert_eq!(second.id(), first.id());
    let joined = second.wait().await;
    assert_eq!(joined.state, RunState::Completed);
    assert_eq!(joined.outcomes.get(OutcomeKind::Submitted), 50);
    assert_eq!(h.fakes.chain.queries("current_epoch_group"), 1);
    assert_eq!(h.fakes.chain.submitted().len(), 50);

    let RecoveryStart::Started(again) = h.engine.recover(9, 1).unwrap() else { panic!() };
    assert_ne!(again.id(), first.id());
    let report = again.wait().await;
    assert_eq!(report.detected, 0, "everything of the epoch is validated now");
    assert!(h.engine.run(first.id()).is_some());
}

/// DOMAIN.md 8.35: the guard resets after a failed run.
#[tokio::test(start_paused = true)]
async fn the_guard_resets_after_a_failed_detection() {
    let h = Harness::with_slots(2, Duration::from_millis(5));
    // No epoch group for epoch 9: detection fails.
    let run = h.engine.recover(9, 1).unwrap().handle().clone();
    let report = run.wait().await;
    assert!(
        matches!(report.state, RunState::Failed(ref e) if e.contains("epoch group")),
        "{report:?}"
    );
    assert!(h.engine.current_run().is_none());
    assert!(matches!(h.engine.recover(9, 1).unwrap(), RecoveryStart::Started(_)));
}

/// The guard also resets when the run itself panics, and the run reports the failure.
#[tokio::test(start_paused = true)]
async fn the_guard_resets_after_a_panicking_run() {
    let h = recovery_harness();
    h.fakes.chain.add_inference("r", 9);
    h.fakes.chain.panic_on_listing(true);
    let report = h.engine.recover(9, 1).unwrap().handle().wait().await;
    assert!(
        matches!(report.state, RunState::Failed(ref e) if e.contains("panicked")),
        "{report:?}"
    );
    h.fakes.chain.panic_on_listing(false);
    let report = h.engine.recover(9, 1).unwrap().handle().wait().await;
    assert_eq!(report.state, RunState::Completed);
    assert_eq!(report.outcomes.get(OutcomeKind::Submitted), 1);
}

/// DOMAIN.md 8.40: not active in the current epoch means nothing executes.
#[tokio::test(start_paused = true)]
async fn an_inactive_validator_recovers_nothing() {
    let h = recovery_harness();
    h.fakes.chain.add_inference("r", 9);
    h.fakes.chain.set_active(false);
    let report = h.engine.recover(9, 1).unwrap().handle().wait().await;
    assert_eq!(report.state, RunState::NotActive);
    assert_eq!(h.fakes.chain.queries("inferences_page"), 0);
    assert!(h.fakes.chain.submitted().is_empty());
}

/// DOMAIN.md 8.8 and 8.9: detection returns only inferences of the epoch, not yet validated,
/// whose model subgroup includes us, across several listing pages; a missing validated set
/// counts as empty.
#[tokio::test(start_paused = true)]
async fn detection_filters_epoch_validated_and_model_across_pages() {
    let h = recovery_harness();
    let mut expected = Vec::new();
    for i in 0..2_500 {
        let id = format!("i{i:05}");
        let epoch = if i % 5 == 0 { 8 } else { 9 };
        let mut inference = h.fakes.chain.add_inference(&id, epoch);
        if i % 7 == 0 {
            inference.model = "other/model".into();
            h.fakes.chain.put_inference(inference);
        } else if epoch == 9 {
            expected.push(id);
        }
    }
    let validated: Vec<String> = expected.iter().step_by(10).cloned().collect();
    let validated_refs: Vec<&str> = validated.iter().map(String::as_str).collect();
    h.fakes.chain.set_validated(9, &validated_refs);
    expected.retain(|id| !validated.contains(id));

    let report = h.engine.recover(9, 1).unwrap().handle().wait().await;
    assert_eq!(report.state, RunState::Completed);
    assert_eq!(report.detected as usize, expected.len());
    assert!(h.fakes.chain.queries("inferences_page") >= 3);
    let mut submitted: Vec<String> =
        h.fakes.chain.submitted().iter().map(|m| m.inference_id.to_string()).collect();
    submitted.sort();
    assert_eq!(submitted, expected);

    // No validated set at all for epoch 8: treated as empty, not as a failure.
    h.fakes.chain.set_epoch_models(8, &[MODEL]);
    let report = h.engine.recover(8, 1).unwrap().handle().wait().await;
    assert_eq!(report.state, RunState::Completed);
    assert!(report.detected > 0);
}

/// Detection samples with the given seed: an inference the seed does not choose is not owed.
#[tokio::test(start_paused = true)]
async fn detection_applies_the_sampling_decision() {
    let h = recovery_harness();
    // p = 1/2: target 1, power 1, total - executor = 2.
    let mut chosen = 0;
    for i in 0..200 {
        let id = format!("s{i}");
        h.fakes.chain.add_inference(&id, 9);
        h.fakes.chain.set_details(details(&id, 9, 3));
        if sampling::deterministic_float(77, &id) < rust_decimal::Decimal::new(5, 1) {
            chosen += 1;
        }
    }
    let report = h.engine.recover(9, 77).unwrap().handle().wait().await;
    assert_eq!(report.detected, chosen);
    assert!(chosen > 50 && chosen < 150);
}

/// Models we hold weight for but no node serves now are reported, not run.
#[tokio::test(start_paused = true)]
async fn unserved_models_are_reported_as_skipped() {
    let h = recovery_harness();
    h.fakes.chain.add_inference("r", 9);
    h.fakes.broker.set_models(&["something/else"]);
    let report = h.engine.recover(9, 1).unwrap().handle().wait().await;
    assert_eq!(report.outcomes.get(OutcomeKind::SkippedModelNotServed), 1);
    assert_eq!(h.fakes.ml.calls(), 0);
}

/// Live sampling uses the seed of the inference's own epoch (fixing upstream's boundary
/// hazard): an inference of the previous epoch chosen by that epoch's seed, but not by the
/// current one, is validated.
#[tokio::test(start_paused = true)]
async fn live_sampling_uses_the_seed_of_the_inference_epoch() {
    let mut h = Harness::with_slots(2, Duration::from_millis(5));
    let (previous_seed, current_seed) = (1_111, 2_222);
    h.fakes.chain.set_seed(9, previous_seed);
    h.fakes.chain.set_seed(10, current_seed);
    let half = rust_decimal::Decimal::new(5, 1);
    let id = (0..)
        .map(|i| format!("boundary{i}"))
        .find(|id| {
            sampling::deterministic_float(previous_seed, id) < half
                && sampling::deterministic_float(current_seed, id) >= half
        })
        .unwrap();
    h.fakes.chain.add_inference(&id, 9);
    h.fakes.chain.set_details(details(&id, 9, 3));
    h.fakes.chain.set_validator_powers(vec![
        ValidatorPower { power: 1, epoch_index: 9 },
        ValidatorPower { power: 1, epoch_index: 10 },
    ]);
    h.engine.sample(vec![id.clone().into()]).unwrap();
    let event = h.next_outcome().await;
    assert_eq!(event.inference_id.as_str(), id);
    assert_eq!(h.fakes.chain.queries("seed_for_epoch"), 1);
}

fn details(id: &str, epoch: u64, total_power: u64) -> ValidationDetails {
    testkit::memory::chosen_details(id, epoch, testkit::memory::EXECUTOR, total_power)
}

/// Recovery memory is bounded: a backlog larger than the recovery window is streamed through
/// it, and the lane never holds more than the window.
#[tokio::test(start_paused = true)]
async fn the_recovery_lane_never_exceeds_its_window() {
    let config = validator_core::Config { recovery_window: 64, ..config(4) };
    let mut h = Harness::new(config, MemoryPorts::new(Duration::from_millis(10), 4));
    h.fakes.chain.set_epoch_models(9, &[MODEL]);
    for i in 0..1_000 {
        h.fakes.chain.add_inference(&format!("w{i:04}"), 9);
    }
    let run = h.engine.recover(9, 1).unwrap().handle().clone();
    let mut max_in_flight = 0;
    for _ in 0..1_000 {
        h.next_outcome().await;
        max_in_flight =
            max_in_flight.max(h.engine.status().lane(Lane::Recovery).unwrap().in_flight);
    }
    assert!(max_in_flight <= 64, "{max_in_flight}");
    assert_eq!(run.wait().await.outcomes.get(OutcomeKind::Submitted), 1_000);
}

/// A run whose every validation gave up did not do its job: it ends failed, saying how many
/// of how many were validated, at which stage they gave up and the last error.
#[tokio::test(start_paused = true)]
async fn a_run_that_validated_nothing_is_reported_failed_with_its_causes() {
    let h = recovery_harness();
    for i in 0..3 {
        h.fakes.chain.add_inference(&format!("r{i}"), 9);
    }
    h.fakes.journal.fail_intents(true);
    let report = h.engine.recover(9, 1).unwrap().handle().wait().await;
    let RunState::Failed(why) = &report.state else { panic!("{report:?}") };
    assert!(why.starts_with("0 of 3 validated: 3 gave up (by stage: submit 3)"), "{why}");
    assert!(why.contains("last error:"), "{why}");
    assert_eq!(report.outcomes.to_string(), "gave_up=3");

    // One validated is enough for the run to have completed.
    h.fakes.journal.fail_intents(false);
    h.fakes.chain.add_inference("r3", 9);
    let report = h.engine.recover(9, 1).unwrap().handle().wait().await;
    assert_eq!(report.state, RunState::Completed, "{report:?}");
}
