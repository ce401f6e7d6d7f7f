//! Chat-completion parsing (`validator_core::completion`): the executor's response payload, plain or
//! streamed (`{"events": ["data: …"]}`), our node's plain answer, the enforced tokens, and the
//! replay request built from a prompt and a response (the input split at a `0xff` byte).
//!
//! Properties: no panic; heap growth linear in the input; a plain answer is never streamed; the
//! replay request is a JSON object with the enforced tokens, streaming off, and the same bytes
//! whether the original was parsed first or not.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};
use validator_core::completion::{self, CompletionResponse};
use validator_fuzz::{bounded, split};

fuzz_target!(|data: &[u8]| {
    bounded("completion_parse", data.len(), || run(data));
});

fn run(data: &[u8]) {
    if let Ok(plain) = CompletionResponse::from_json(data) {
        assert!(!plain.is_streamed());
        let _ = plain.logprobs();
        if let Ok(enforced) = plain.enforced_tokens() {
            let _ = enforced.to_json();
        }
    }
    if let Ok(response) = CompletionResponse::from_payload(data) {
        let positions = response.logprobs().len();
        if let Ok(enforced) = response.enforced_tokens() {
            assert!(enforced.tokens.len() <= positions);
            let json = enforced.to_json();
            assert!(json["tokens"].is_null() || json["tokens"].is_array());
        }
    }

    let (prompt, original) = split(data);
    let built = completion::build_replay_request(prompt, original);
    if let Ok(parsed) = CompletionResponse::from_payload(original) {
        assert_eq!(completion::build_replay_request_parsed(prompt, &parsed), built);
    }
    if let Ok(body) = built {
        let body: Map<String, Value> =
            serde_json::from_slice(&body).expect("the replay request is a JSON object");
        assert_eq!(body["stream"], Value::Bool(false));
        assert_eq!(body["skip_special_tokens"], Value::Bool(false));
        assert!(!body.contains_key("stream_options"));
        assert!(body["enforced_tokens"].is_object());
    }
}
