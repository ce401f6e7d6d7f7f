use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use sha2::{Digest, Sha256};
use testkit::memory::{payloads_for, MemoryPorts, MlScript};
use validator_core::{
    ports::{
        chain::{InferenceStatus, SubmitError},
        ml_node::ReplayError,
        payload_source::Payloads,
    },
    scoring::Verdict,
    Config, Error, Outcome, SkipReason, Stage,
};

use crate::{config, Harness};

/// DOMAIN.md 8.19: no node with the model: retried 5 times 4 min apart, then given up with
/// nothing submitted.
#[tokio::test(start_paused = true)]
async fn no_node_is_retried_five_times_then_given_up() {
    let mut h = Harness::with_slots(2, Duration::from_millis(5));
    h.fakes.chain.add_inference("a", 10);
    h.fakes.broker.set_models(&[]);
    h.engine.validate("a".into()).unwrap();
    let event = h.next_outcome().await;
    assert!(matches!(event.outcome, Outcome::GaveUp { stage: Stage::Replay, .. }), "{event:?}");
    assert_eq!(event.attempts, 5);
    assert_eq!(event.elapsed, Duration::from_secs(4 * 240));
    assert!(h.fakes.chain.submitted().is_empty());
    assert_eq!(h.fakes.ml.calls(), 0);
}

/// DOMAIN.md 8.20: the lease is released after success and after failure.
#[tokio::test(start_paused = true)]
async fn leases_are_released_on_success_and_failure() {
    let mut h = Harness::with_slots(2, Duration::from_millis(5));
    h.fakes.chain.add_inference("a", 10);
    h.fakes.ml.script([MlScript::Fail(ReplayError::Transport("reset".into()))]);
    h.engine.validate("a".into()).unwrap();
    assert!(matches!(h.next_outcome().await.outcome, Outcome::Submitted { .. }));
    assert_eq!(h.fakes.broker.held(), 0);
    assert_eq!(h.fakes.broker.failures(), 1, "the transport failure was reported to the broker");
    assert_eq!(h.fakes.ml.calls(), 2);
}

/// DOMAIN.md 8.21: the replay body keeps every prompt field, sets `stream=false` and
/// `skip_special_tokens=false`, adds the enforced tokens in order and drops `stream_options`.
#[tokio::test(start_paused = true)]
async fn the_replay_body_is_the_prompt_with_enforced_tokens() {
    let mut h = Harness::with_slots(1, Duration::from_millis(5));
    h.fakes.chain.add_inference("a", 10);
    h.engine.validate("a".into()).unwrap();
    h.next_outcome().await;
    let body = &h.fakes.ml.requests()[0];
    let prompt: serde_json::Value = serde_json::from_slice(&payloads_for("a").prompt).unwrap();
    for field in [
        "model",
        "messages",
        "seed",
        "logprobs",
        "top_logprobs",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
    ] {
        assert_eq!(body[field], prompt[field], "{field}");
    }
    assert_eq!(body["stream"], json!(false));
    assert_eq!(body["skip_special_tokens"], json!(false));
    assert!(body.get("stream_options").is_none());
    let tokens: Vec<&str> = body["enforced_tokens"]["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["token"].as_str().unwrap())
        .collect();
    assert_eq!(tokens, testkit::memory::TOKENS);
    assert_eq!(
        body["enforced_tokens"]["tokens"][0]["top_tokens"],
        json!(["32313", "32314", "32315"])
    );
}

/// DOMAIN.md 8.23: 400 or 422 from our own node is a pass with value 1 and no response hash.
#[tokio::test(start_paused = true)]
async fn rejection_by_our_node_passes_with_value_one() {
    let mut h = Harness::with_slots(1, Duration::from_millis(5));
    for (id, status) in [("a", 400), ("b", 422)] {
        h.fakes.chain.add_inference(id, 10);
        h.fakes.ml.script([MlScript::Reject(status)]);
        h.engine.validate(id.into()).unwrap();
        let event = h.next_outcome().await;
        assert!(matches!(event.outcome, Outcome::Submitted { value, .. } if value == 1.0));
    }
    for msg in h.fakes.chain.submitted() {
        assert_eq!(msg.response_hash, "");
        assert_eq!((msg.value_decimal.value, msg.value_decimal.exponent), (1, 0));
    }
}

/// DOMAIN.md 8.24: a hung node is abandoned after the replay timeout and retried; never an
/// invalidation.
#[tokio::test(start_paused = true)]
async fn a_hung_node_is_abandoned_after_the_timeout_and_retried() {
    let config = Config { replay_timeout: Duration::from_secs(300), ..config(1) };
    let mut h = Harness::new(config, MemoryPorts::new(Duration::from_millis(5), 1));
    h.fakes.chain.add_inference("a", 10);
    h.fakes.ml.script([MlScript::Hang]);
    h.engine.validate("a".into()).unwrap();
    let event = h.next_outcome().await;
    assert!(matches!(event.outcome, Outcome::Submitted { value, .. } if value == 1.0), "{event:?}");
    assert!(event.elapsed >= Duration::from_secs(300 + 240), "{:?}", event.elapsed);
    assert_eq!(h.fakes.broker.failures(), 1);
    assert_eq!(h.fakes.broker.held(), 0);
}

/// DOMAIN.md 8.25: an unparsable prompt or response, an empty top-logprob list, or tokens that
/// are not token ids (LIVE-NETWORK.md 2.2 item 5), submits value 0 (the executor's fault) without
/// touching the ML node.
#[tokio::test(start_paused = true)]
async fn invalid_payloads_submit_value_zero() {
    let mut h = Harness::with_slots(1, Duration::from_millis(5));
    let good = payloads_for("x");
    let empty_top = json!({"choices": [{"logprobs": {"content": [{"token": "a", "logprob": -1.0, "top_logprobs": []}]}}]});
    let text_tokens = json!({"choices": [{"logprobs": {"content": [{"token": "Okay", "logprob": -1.0, "top_logprobs": [{"token": "Okay", "logprob": -1.0}]}]}}]});
    let cases = [
        (
            "bad-prompt",
            Payloads { prompt: Bytes::from_static(b"{not json"), response: good.response.clone() },
        ),
        (
            "array-prompt",
            Payloads { prompt: Bytes::from_static(b"[1,2]"), response: good.response.clone() },
        ),
        (
            "bad-response",
            Payloads { prompt: good.prompt.clone(), response: Bytes::from_static(b"<html>") },
        ),
        (
            "empty-top",
            Payloads { prompt: good.prompt.clone(), response: Bytes::from(empty_top.to_string()) },
        ),
        ("nan-logprob", Payloads { prompt: good.prompt.clone(), response: nan_response() }),
        (
            "text-tokens",
            Payloads {
                prompt: good.prompt.clone(),
                response: Bytes::from(text_tokens.to_string()),
            },
        ),
        (
            "deep",
            Payloads { prompt: Bytes::from("[".repeat(10_000)), response: good.response.clone() },
        ),
    ];
    for (id, payloads) in cases {
        h.fakes.chain.add_inference(id, 10);
        h.fakes.payloads.set(id, payloads);
        h.engine.validate(id.into()).unwrap();
        let event = h.next_outcome().await;
        assert!(
            matches!(event.outcome, Outcome::Submitted { verdict: Verdict::Invalid, value, .. } if value == 0.0),
            "{id}: {event:?}"
        );
    }
    assert_eq!(h.fakes.ml.calls(), 0);
    assert!(h
        .fakes
        .chain
        .submitted()
        .iter()
        .all(|m| m.value_decimal.value == 0 && m.response_hash.is_empty()));
}

/// LIVE-NETWORK.md 2.2 item 5: an original carrying the `<EMPTY>` sentinel is replayed with
/// nothing enforced; our node serving it makes the inference invalid, our node refusing it (400
/// or 422) is the usual pass.
#[tokio::test(start_paused = true)]
async fn an_empty_sentinel_original_is_invalid_when_our_node_serves_the_prompt() {
    let mut h = Harness::with_slots(1, Duration::from_millis(5));
    let good = payloads_for("x");
    let sentinel = json!({"choices": [{"logprobs": {"content": [
        {"token": "<EMPTY>", "logprob": 0.0, "top_logprobs": [{"token": "<EMPTY>", "logprob": 0.0}]},
    ]}}]});
    let payloads = Payloads { prompt: good.prompt, response: Bytes::from(sentinel.to_string()) };
    for (id, script) in [("served", None), ("refused", Some(MlScript::Reject(422)))] {
        h.fakes.chain.add_inference(id, 10);
        h.fakes.payloads.set(id, payloads.clone());
        h.fakes.ml.script(script);
        h.engine.validate(id.into()).unwrap();
        let event = h.next_outcome().await;
        let expected = if id == "served" { Verdict::Invalid } else { Verdict::Similarity };
        assert!(
            matches!(event.outcome, Outcome::Submitted { verdict, .. } if verdict == expected),
            "{id}: {event:?}"
        );
    }
    for body in h.fakes.ml.requests() {
        assert!(body.get("enforced_tokens").is_none(), "{body}");
        assert_eq!(body["stream"], json!(false));
    }
    let submitted = h.fakes.chain.submitted();
    assert_eq!(submitted.len(), 2);
    assert!(submitted.iter().all(|m| m.response_hash.is_empty()));
    assert_eq!(submitted[0].value_decimal.value, 0);
    assert_eq!((submitted[1].value_decimal.value, submitted[1].value_decimal.exponent), (1, 0));
}

/// DOMAIN.md 8.27 and 8.28 through the engine: a shorter answer or a different token scores 0.
#[tokio::test(start_paused = true)]
async fn a_diverging_replay_scores_zero() {
    let mut h = Harness::with_slots(1, Duration::from_millis(5));
    let short = json!({"choices": [{"logprobs": {"content": [{"token": "Okay", "logprob": -0.1, "top_logprobs": [{"token": "Okay", "logprob": -0.1}]}]}}]});
    h.fakes.chain.add_inference("a", 10);
    h.fakes.ml.script([MlScript::Body(Bytes::from(short.to_string()))]);
    h.engine.validate("a".into()).unwrap();
    let event = h.next_outcome().await;
    assert!(
        matches!(event.outcome, Outcome::Submitted { verdict: Verdict::DifferentLength, value, .. } if value == 0.0),
        "{event:?}"
    );
}

/// DOMAIN.md 8.30: the message carries the SHA-256 of the exact response bytes, a fresh UUID,
/// the shortest decimal of the value, and the revalidation flag only on that path.
#[tokio::test(start_paused = true)]
async fn the_message_carries_hash_uuid_value_and_flag() {
    let mut h = Harness::with_slots(2, Duration::from_millis(5));
    h.fakes.chain.add_inference("a", 10);
    h.engine.validate("a".into()).unwrap();
    h.next_outcome().await;
    h.engine.revalidate("a".into()).unwrap();
    h.next_outcome().await;

    let request = &h.fakes.ml.requests()[0];
    let expected_hash = hex(&Sha256::digest(testkit::memory::echo_completion(request)));
    let submitted = h.fakes.chain.submitted();
    assert_eq!(submitted.len(), 2);
    assert_eq!(submitted[0].response_hash, expected_hash);
    assert!(!submitted[0].revalidation);
    assert!(submitted[1].revalidation);
    assert_ne!(submitted[0].id, submitted[1].id);
    for msg in &submitted {
        assert_eq!(uuid::Uuid::parse_str(&msg.id).unwrap().get_version_num(), 4);
        assert_eq!((msg.value_decimal.value, msg.value_decimal.exponent), (1, 0));
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// DOMAIN.md 8.36: a live validation of an id already validated (checked after the payload
/// fetch) submits nothing; a revalidation of it still runs.
#[tokio::test(start_paused = true)]
async fn already_validated_is_skipped_after_the_fetch_but_revalidation_runs() {
    let mut h = Harness::with_slots(1, Duration::from_millis(5));
    h.fakes.chain.add_inference("a", 10);
    h.fakes.chain.set_validated(10, &["a"]);
    h.engine.validate("a".into()).unwrap();
    assert_eq!(
        h.next_outcome().await.outcome,
        Outcome::Skipped { reason: SkipReason::AlreadyValidated }
    );
    assert_eq!(h.fakes.payloads.calls("a").len(), 1);
    assert!(h.fakes.chain.submitted().is_empty());

    h.engine.revalidate("a".into()).unwrap();
    assert!(matches!(h.next_outcome().await.outcome, Outcome::Submitted { .. }));
}

/// A transient submission failure is retried with the same message, without a second replay;
/// the chain's duplicate answer is a typed skip.
#[tokio::test(start_paused = true)]
async fn submission_retries_keep_the_message_and_duplicates_are_skips() {
    let mut h = Harness::with_slots(1, Duration::from_millis(5));
    h.fakes.chain.add_inference("a", 10);
    h.fakes.chain.fail_submissions([SubmitError::Transient("sequence mismatch".into())]);
    h.engine.validate("a".into()).unwrap();
    let Outcome::Submitted { msg_id, tx_hash, .. } = h.next_outcome().await.outcome else {
        panic!()
    };
    assert_eq!(h.fakes.ml.calls(), 1);
    assert_eq!(h.fakes.chain.submitted()[0].id, msg_id);
    assert_eq!(tx_hash.as_deref(), Some("TX1"));

    h.fakes.chain.add_inference("b", 10);
    h.fakes.chain.fail_submissions([SubmitError::Duplicate]);
    h.engine.validate("b".into()).unwrap();
    assert_eq!(
        h.next_outcome().await.outcome,
        Outcome::Skipped { reason: SkipReason::AlreadyValidated }
    );
}

/// An inference still `STARTED` is a validator-side failure: retried, then given up.
#[tokio::test(start_paused = true)]
async fn an_unfinished_inference_is_retried_then_given_up() {
    let mut h = Harness::with_slots(1, Duration::from_millis(5));
    h.fakes.chain.add_inference("a", 10);
    h.fakes.chain.set_status("a", InferenceStatus::Started);
    h.engine.validate("a".into()).unwrap();
    let event = h.next_outcome().await;
    assert!(matches!(event.outcome, Outcome::GaveUp { stage: Stage::Replay, .. }), "{event:?}");
    assert_eq!(h.fakes.ml.calls(), 0);
}

/// A chat completion whose first logprob is the (non-JSON) literal `NaN`.
fn nan_response() -> Bytes {
    let text = String::from_utf8(payloads_for("n").response.to_vec()).unwrap();
    Bytes::from(text.replacen("\"logprob\":", "\"logprob\":NaN,\"x\":", 1))
}

/// Our own node answering garbage (NaN logprobs, truncated JSON) is our side's failure:
/// retried, then given up, never an invalidation and never a panic.
#[tokio::test(start_paused = true)]
async fn a_garbage_answer_from_our_node_is_retried_then_given_up() {
    let mut h = Harness::with_slots(1, Duration::from_millis(5));
    h.fakes.chain.add_inference("a", 10);
    let truncated = payloads_for("a").response.slice(..40);
    h.fakes.ml.script([
        MlScript::Body(nan_response()),
        MlScript::Body(truncated),
        MlScript::Body(Bytes::from_static(b"{}")),
        MlScript::Body(Bytes::new()),
        MlScript::Body(Bytes::from_static(b"null")),
    ]);
    h.engine.validate("a".into()).unwrap();
    let event = h.next_outcome().await;
    assert!(matches!(event.outcome, Outcome::GaveUp { stage: Stage::Replay, .. }), "{event:?}");
    assert_eq!(h.fakes.ml.calls(), 5);
    assert!(h.fakes.chain.submitted().is_empty());
}

/// A submission the chain refuses as retired classic validation stops classic work: that key
/// and every later one end as `ProtocolRetired` without a broadcast, and nothing new is
/// admitted.
#[tokio::test(start_paused = true)]
async fn a_retired_protocol_stops_classic_work() {
    let mut h = Harness::with_slots(1, Duration::from_millis(5));
    for id in ["a", "b"] {
        h.fakes.chain.add_inference(id, 10);
    }
    h.fakes.chain.fail_submissions([SubmitError::Retired("code 1161".into())]);
    h.engine.validate("a".into()).unwrap();
    h.engine.validate("b".into()).unwrap();
    for _ in 0..2 {
        assert_eq!(
            h.next_outcome().await.outcome,
            Outcome::Skipped { reason: SkipReason::ProtocolRetired }
        );
    }
    // b's replay may start while a's submission is on its way (the GPU slot is free once a is
    // scored), but b is never broadcast.
    assert!(h.fakes.ml.calls() <= 2, "{} replays", h.fakes.ml.calls());
    assert!(h.fakes.chain.submitted().is_empty());
    assert_eq!(h.engine.retired(), Some("code 1161"));
    assert_eq!(h.engine.status().retired.as_deref(), Some("code 1161"));
    assert!(matches!(h.engine.validate("c".into()), Err(Error::ProtocolRetired(_))));
    assert!(matches!(h.engine.recover(9, 1), Err(Error::ProtocolRetired(_))));
    assert!(!h.engine.retire_classic("again"), "retirement is learned once");
}
