//! Chat-completion payloads for tests: upstream's vLLM fixtures and builders of plain and
//! streamed responses.

use std::{collections::HashMap, sync::OnceLock};

use serde_json::{json, Value};

/// Where the vLLM fixtures (upstream's `internal/validation/testdata`) live.
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/fixtures/ml-node/");

pub(crate) const INFERENCE: &str = "inference_response.json";
pub(crate) const INFERENCE_INT4: &str = "inference_response_int4.json";
pub(crate) const VALIDATION: &str = "validation_response.json";
pub(crate) const VALIDATION_FP8: &str = "validation_response_fp8.json";

pub(crate) fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{FIXTURES}{name}");
    std::fs::read(&path).unwrap_or_else(|err| panic!("reading {path}: {err}"))
}

pub(crate) fn fixture_value(name: &str) -> Value {
    serde_json::from_slice(&fixture(name)).unwrap()
}

pub(crate) fn to_bytes(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).unwrap()
}

/// A fixture with token ids in place of its token texts, as vLLM answers with
/// `return_token_ids`: one id per distinct text across the four fixtures, so that comparisons
/// between them come out exactly as between the originals.
pub(crate) fn fixture_ids(name: &str) -> Vec<u8> {
    to_bytes(&fixture_ids_value(name))
}

/// [`fixture_ids`] as a JSON value.
pub(crate) fn fixture_ids_value(name: &str) -> Value {
    let vocabulary = vocabulary();
    let mut response = fixture_value(name);
    for position in content_mut(&mut response) {
        let id = |token: &Value| Value::String(vocabulary[token.as_str().unwrap()].clone());
        position["token"] = id(&position["token"]);
        for top in position["top_logprobs"].as_array_mut().unwrap() {
            top["token"] = id(&top["token"]);
        }
    }
    response
}

/// The id of `token` in [`fixture_ids`].
pub(crate) fn token_id(token: &str) -> String {
    vocabulary()[token].clone()
}

fn vocabulary() -> &'static HashMap<String, String> {
    static VOCABULARY: OnceLock<HashMap<String, String>> = OnceLock::new();
    VOCABULARY.get_or_init(|| {
        let mut vocabulary = HashMap::new();
        for name in [INFERENCE, INFERENCE_INT4, VALIDATION, VALIDATION_FP8] {
            let mut response = fixture_value(name);
            for position in content_mut(&mut response).iter() {
                let tops = position["top_logprobs"].as_array().unwrap();
                let tokens =
                    std::iter::once(&position["token"]).chain(tops.iter().map(|t| &t["token"]));
                for token in tokens {
                    let next = vocabulary.len().to_string();
                    vocabulary.entry(token.as_str().unwrap().to_owned()).or_insert(next);
                }
            }
        }
        vocabulary
    })
}

/// The `logprobs.content` array of a plain fixture's first choice.
pub(crate) fn content_mut(response: &mut Value) -> &mut Vec<Value> {
    response["choices"][0]["logprobs"]["content"].as_array_mut().unwrap()
}

pub(crate) fn top(token: &str, logprob: f64) -> Value {
    json!({"token": token, "logprob": logprob})
}

pub(crate) fn position(token: &str, top_logprobs: Value) -> Value {
    json!({"token": token, "logprob": -0.5, "bytes": [97], "top_logprobs": top_logprobs})
}

pub(crate) fn plain(positions: Vec<Value>) -> Vec<u8> {
    let choice = json!({"index": 0, "message": {"role": "assistant", "content": "x"},
        "logprobs": {"content": positions}, "finish_reason": "stop"});
    to_bytes(&json!({"id": "chatcmpl-1", "object": "chat.completion", "choices": [choice]}))
}

pub(crate) fn streamed(events: Vec<String>) -> Vec<u8> {
    to_bytes(&json!({ "events": events }))
}

/// A streamed payload carrying the same positions as a plain fixture (with [`fixture_ids`]), one
/// per chunk, framed as vLLM frames them: a role chunk without logprobs first, a usage chunk
/// without choices and `[DONE]` last.
pub(crate) fn streamed_from_plain(name: &str) -> Vec<u8> {
    let mut response = fixture_ids_value(name);
    let chunk = |choice: Value| format!("data: {}", json!({"id": "c", "choices": [choice]}));
    let role = json!({"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null});
    let mut events = vec![chunk(role)];
    for position in content_mut(&mut response).iter() {
        let delta = json!({"content": position["token"]});
        let choice = json!({"index": 0, "delta": delta, "logprobs": {"content": [position]}});
        events.push(chunk(choice));
    }
    events.push(format!("data: {}", json!({"choices": [], "usage": {"prompt_tokens": 7}})));
    events.push("  ".to_owned());
    events.push("data: [DONE]".to_owned());
    streamed(events)
}

/// The prefixes of `payload` whose length is a multiple of 997 or less than 8 bytes short of it
/// all (`payload` itself excluded).
pub(crate) fn truncations(payload: &[u8]) -> impl Iterator<Item = &[u8]> {
    let cuts =
        (0..payload.len()).step_by(997).chain(payload.len().saturating_sub(8)..payload.len());
    cuts.map(move |cut| &payload[..cut])
}

/// Copies of `payload` with one byte, at offset 0, 2003, 4006, …, replaced by `"`, `}`, `-` or
/// `0xff`.
pub(crate) fn corruptions(payload: &[u8]) -> impl Iterator<Item = Vec<u8>> + '_ {
    (0..payload.len()).step_by(2003).flat_map(move |at| {
        [b'"', b'}', b'-', 0xff].into_iter().map(move |byte| {
            let mut corrupted = payload.to_vec();
            corrupted[at] = byte;
            corrupted
        })
    })
}

/// Nesting deep enough to overflow a recursive parser's stack.
pub(crate) const DEEP: usize = 100_000;

/// JSON arrays and objects nested [`DEEP`] levels, unterminated.
pub(crate) fn deeply_nested() -> [String; 2] {
    ["[".repeat(DEEP), "{\"a\":".repeat(DEEP)]
}
