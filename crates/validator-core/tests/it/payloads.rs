use std::time::Duration;

use testkit::memory::{payloads_for, MemoryPorts};
use validator_core::{
    ports::{chain::InferenceStatus, payload_source::PayloadError},
    Config, InvalidationReason, Outcome, SkipReason, Stage,
};

use crate::{config, Harness};

fn unavailable(n: usize) -> Vec<PayloadError> {
    (0..n).map(|i| PayloadError::Unavailable(format!("refused #{i}"))).collect()
}

/// DOMAIN.md 8.12: a bad executor signature is retried, not an invalidation.
#[tokio::test(start_paused = true)]
async fn bad_signature_is_retried() {
    let mut h = Harness::with_slots(2, Duration::from_millis(5));
    h.fakes.chain.add_inference("a", 10);
    h.fakes.payloads.script("a", [PayloadError::BadSignature, PayloadError::BadSignature]);
    h.engine.validate("a".into()).unwrap();
    let event = h.next_outcome().await;
    assert!(matches!(event.outcome, Outcome::Submitted { value, .. } if value == 1.0), "{event:?}");
    assert_eq!(h.fakes.payloads.calls("a").len(), 3);
    assert_eq!(h.fakes.chain.submitted()[0].value_decimal.value, 1);
}

/// DOMAIN.md 8.13: a hash mismatch submits one invalidation at once, unless the inference is
/// already invalidated.
#[tokio::test(start_paused = true)]
async fn hash_mismatch_invalidates_once_without_retry() {
    let mut h = Harness::with_slots(2, Duration::from_millis(5));
    h.fakes.chain.add_inference("a", 10);
    h.fakes.chain.add_inference("b", 10);
    h.fakes.chain.set_status("b", InferenceStatus::Invalidated);
    for id in ["a", "b"] {
        h.fakes.payloads.script(id, [PayloadError::HashMismatch("prompt".into())]);
        h.engine.validate(id.into()).unwrap();
    }
    let mut events = h.collect(2).await;
    events.sort_by(|x, y| x.inference_id.cmp(&y.inference_id));
    assert!(matches!(
        events[0].outcome,
        Outcome::Invalidated { reason: InvalidationReason::HashMismatch, .. }
    ));
    assert_eq!(events[1].outcome, Outcome::Skipped { reason: SkipReason::AlreadyInvalidated });
    let submitted = h.fakes.chain.submitted();
    assert_eq!(submitted.len(), 1);
    assert_eq!(submitted[0].inference_id.as_str(), "a");
    assert_eq!(submitted[0].response_hash, "");
    assert_eq!((submitted[0].value_decimal.value, submitted[0].value_decimal.exponent), (0, 0));
    assert_eq!(h.fakes.payloads.calls("a").len(), 1);
    assert_eq!(h.fakes.ml.calls(), 0);
}

/// DOMAIN.md 8.15 and 8.18: ten failed fetches of a post-upgrade inference submit exactly one
/// invalidation, with every back-off between 121 s and 240 s and none after the last.
#[tokio::test(start_paused = true)]
async fn ten_failures_invalidate_once_with_jittered_backoff() {
    let mut h = Harness::with_slots(2, Duration::from_millis(5));
    h.fakes.chain.add_inference("a", 10);
    h.fakes.payloads.script("a", unavailable(10));
    h.engine.validate("a".into()).unwrap();
    let event = h.next_outcome().await;
    assert!(matches!(
        event.outcome,
        Outcome::Invalidated { reason: InvalidationReason::PayloadUnavailable, .. }
    ));
    let calls = h.fakes.payloads.calls("a");
    assert_eq!(calls.len(), 10);
    let gaps: Vec<Duration> = calls.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps.iter().all(|gap| (Duration::from_secs(121)..=Duration::from_secs(240)).contains(gap)),
        "{gaps:?}"
    );
    assert!(gaps.iter().collect::<std::collections::HashSet<_>>().len() > 1, "jitter varies");
    assert_eq!(h.fakes.chain.submitted().len(), 1);
}

/// A validator-side failure is never the executor's fault: with one among the failed attempts,
/// running out of attempts gives up without submitting anything, where the executor's failures
/// alone invalidate.
#[tokio::test(start_paused = true)]
async fn validator_side_failures_never_invalidate() {
    let mut h = Harness::with_slots(2, Duration::from_millis(5));
    h.fakes.chain.add_inference("ours", 10);
    h.fakes.chain.add_inference("mixed", 10);
    let ours = (0..10).map(|i| PayloadError::Local(format!("chain query failed #{i}")));
    h.fakes.payloads.script("ours", ours);
    let mut mixed = unavailable(9);
    mixed.insert(4, PayloadError::Local("resolver failed".into()));
    h.fakes.payloads.script("mixed", mixed);
    h.engine.validate("ours".into()).unwrap();
    h.engine.validate("mixed".into()).unwrap();
    let mut events = h.collect(2).await;
    events.sort_by(|x, y| x.inference_id.cmp(&y.inference_id));
    assert_eq!(events[0].inference_id.as_str(), "mixed");
    assert!(
        matches!(&events[0].outcome, Outcome::GaveUp { stage: Stage::Payload, error } if error.contains("refused #8")),
        "{:?}",
        events[0].outcome
    );
    assert!(
        matches!(&events[1].outcome, Outcome::GaveUp { stage: Stage::Payload, error } if error.contains("validator-side")),
        "{:?}",
        events[1].outcome
    );
    assert_eq!(h.fakes.payloads.calls("ours").len(), 10);
    assert_eq!(h.fakes.payloads.calls("mixed").len(), 10);
    assert!(h.fakes.chain.submitted().is_empty(), "nothing is submitted against the executor");
    assert_eq!(h.fakes.ml.calls(), 0);
}

/// Failed chain queries share the payload budget and are the validator's own: an executor
/// failing the attempts left after them does not make an invalidation.
#[tokio::test(start_paused = true)]
async fn failed_chain_queries_count_as_validator_side() {
    let mut h = Harness::with_slots(1, Duration::from_millis(5));
    h.fakes.chain.add_inference("a", 10);
    h.fakes.chain.fail_inference_queries(3);
    h.fakes.payloads.script("a", unavailable(7));
    h.engine.validate("a".into()).unwrap();
    let event = h.next_outcome().await;
    assert!(
        matches!(&event.outcome, Outcome::GaveUp { stage: Stage::Payload, .. }),
        "{:?}",
        event.outcome
    );
    assert_eq!(h.fakes.payloads.calls("a").len(), 7);
    assert!(h.fakes.chain.submitted().is_empty());
}

/// DOMAIN.md 8.15: a pre-upgrade inference falls back to the legacy on-chain payloads.
#[tokio::test(start_paused = true)]
async fn legacy_payloads_are_used_after_every_attempt_fails() {
    let mut h = Harness::with_slots(2, Duration::from_millis(5));
    let mut inference = h.fakes.chain.add_inference("old", 10);
    let payloads = payloads_for("old");
    inference.prompt_payload = String::from_utf8(payloads.prompt.to_vec()).unwrap();
    inference.response_payload = String::from_utf8(payloads.response.to_vec()).unwrap();
    h.fakes.chain.put_inference(inference);
    h.fakes.payloads.script("old", unavailable(10));
    h.engine.validate("old".into()).unwrap();
    let event = h.next_outcome().await;
    assert!(matches!(event.outcome, Outcome::Submitted { value, .. } if value == 1.0), "{event:?}");
    assert_eq!(h.fakes.ml.calls(), 1);
}

/// DOMAIN.md 8.16: an epoch that turns stale between attempts stops the validation.
#[tokio::test(start_paused = true)]
async fn stale_epoch_between_attempts_stops_without_submitting() {
    let mut h = Harness::with_slots(2, Duration::from_millis(5));
    h.fakes.chain.add_inference("a", 9);
    h.fakes.payloads.script("a", unavailable(1));
    h.engine.validate("a".into()).unwrap();
    h.fakes.payloads.wait_calls("a", 1).await;
    h.fakes.chain.set_latest_epoch(Some(11));
    let event = h.next_outcome().await;
    assert_eq!(event.outcome, Outcome::Skipped { reason: SkipReason::EpochStale });
    assert_eq!(h.fakes.payloads.calls("a").len(), 1);
    assert!(h.fakes.chain.submitted().is_empty());
}

/// Unknown epoch state counts as not stale, as upstream.
#[tokio::test(start_paused = true)]
async fn unknown_epoch_state_is_not_stale() {
    let mut h = Harness::with_slots(1, Duration::from_millis(5));
    h.fakes.chain.add_inference("a", 1);
    h.fakes.chain.set_latest_epoch(None);
    h.engine.validate("a".into()).unwrap();
    assert!(matches!(h.next_outcome().await.outcome, Outcome::Submitted { .. }));
}

/// DOMAIN.md 8.17: a 404 stops at once and submits nothing; with the flag off it is retried
/// like any failure and ends in an invalidation.
#[tokio::test(start_paused = true)]
async fn payload_gone_skips_at_once_or_retries_behind_the_flag() {
    let mut h = Harness::with_slots(1, Duration::from_millis(5));
    h.fakes.chain.add_inference("a", 10);
    h.fakes.payloads.script("a", [PayloadError::Gone]);
    h.engine.validate("a".into()).unwrap();
    assert_eq!(h.next_outcome().await.outcome, Outcome::Skipped { reason: SkipReason::Gone });
    assert!(h.fakes.chain.submitted().is_empty());

    let config = Config { payload_gone_is_final: false, ..config(1) };
    let mut h = Harness::new(config, MemoryPorts::new(Duration::from_millis(5), 1));
    h.fakes.chain.add_inference("a", 10);
    h.fakes.payloads.script("a", vec![PayloadError::Gone; 10]);
    h.engine.validate("a".into()).unwrap();
    assert!(matches!(h.next_outcome().await.outcome, Outcome::Invalidated { .. }));
    assert_eq!(h.fakes.payloads.calls("a").len(), 10);
}

/// An inference the chain no longer has is skipped; a failing chain query is retried.
#[tokio::test(start_paused = true)]
async fn missing_record_is_gone_and_failing_queries_are_retried() {
    let mut h = Harness::with_slots(1, Duration::from_millis(5));
    h.engine.validate("nowhere".into()).unwrap();
    assert_eq!(h.next_outcome().await.outcome, Outcome::Skipped { reason: SkipReason::Gone });

    h.fakes.chain.add_inference("a", 10);
    h.fakes.chain.fail_inference_queries(2);
    h.engine.validate("a".into()).unwrap();
    let event = h.next_outcome().await;
    assert!(matches!(event.outcome, Outcome::Submitted { .. }), "{event:?}");
    assert_eq!(event.attempts, 3);
}

/// Ten failed chain queries give up at the chain stage, with nothing submitted.
#[tokio::test(start_paused = true)]
async fn a_chain_that_never_answers_gives_up() {
    let mut h = Harness::with_slots(1, Duration::from_millis(5));
    h.fakes.chain.add_inference("a", 10);
    h.fakes.chain.fail_inference_queries(100);
    h.engine.validate("a".into()).unwrap();
    let event = h.next_outcome().await;
    assert!(matches!(event.outcome, Outcome::GaveUp { stage: Stage::Chain, .. }), "{event:?}");
    assert!(h.fakes.chain.submitted().is_empty());
}
