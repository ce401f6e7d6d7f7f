use std::{
    collections::HashMap,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use serde_json::{json, Value};

fn fixture(name: &str) -> Value {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/ml-node").join(name);
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// The positions of a plain fixture's first choice.
fn content(response: &mut Value) -> &mut Vec<Value> {
    response["choices"][0]["logprobs"]["content"].as_array_mut().unwrap()
}

/// `responses` with token ids in place of their token texts, one id per distinct text, as vLLM
/// answers with `return_token_ids`; scores between them are unchanged.
fn with_token_ids<const N: usize>(mut responses: [Value; N]) -> [Value; N] {
    let mut vocabulary: HashMap<String, String> = HashMap::new();
    let mut id = |token: &mut Value| {
        let next = vocabulary.len().to_string();
        let id = vocabulary.entry(token.as_str().unwrap().to_owned()).or_insert(next);
        *token = Value::String(id.clone());
    };
    for response in &mut responses {
        for position in content(response) {
            id(&mut position["token"]);
            for top in position["top_logprobs"].as_array_mut().unwrap() {
                id(&mut top["token"]);
            }
        }
    }
    responses
}

fn write(name: &str, value: &Value) -> PathBuf {
    let path = crate::temp_path(name);
    std::fs::write(&path, serde_json::to_vec(value).unwrap()).unwrap();
    path
}

/// Runs `validator score - VALIDATION` with the original on standard input and returns its one
/// JSON line; the exit code is 0, or 3 for an `invalid` verdict.
fn score(original: &Value, validation: &Value) -> Value {
    let mut child = Command::new(crate::binary())
        .arg("score")
        .arg("-")
        .arg(write("validation.json", validation))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&serde_json::to_vec(original).unwrap()).unwrap();
    drop(stdin);
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let line: Value = serde_json::from_str(&stdout).unwrap();
    let expected = if line["verdict"] == "invalid" { 3 } else { 0 };
    assert_eq!(
        output.status.code(),
        Some(expected),
        "{line} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    line
}

/// A streamed payload of `response`'s positions, one per chunk, as vLLM streams them.
fn streamed(response: &mut Value, last_chunk: Option<Value>) -> Value {
    let chunk = |choice: Value| format!("data: {}", json!({"id": "c", "choices": [choice]}));
    let mut events =
        vec![chunk(json!({"index": 0, "delta": {"role": "assistant"}, "logprobs": null}))];
    for position in content(response).iter() {
        let delta = json!({"content": "x"});
        events
            .push(chunk(json!({"index": 0, "delta": delta, "logprobs": {"content": [position]}})));
    }
    events.extend(last_chunk.map(chunk));
    events.push("data: [DONE]".to_owned());
    json!({ "events": events })
}

#[test]
fn scores_the_recorded_fixtures() {
    let [original, validation] = with_token_ids([
        fixture("inference_response_int4.json"),
        fixture("validation_response_fp8.json"),
    ]);
    let line = score(&original, &validation);
    assert_eq!(line["verdict"], "similarity");
    assert_eq!(line["value"].as_f64().unwrap(), 0.9668894246685018);
    assert!(line.to_string().contains("0.9668894246685018"), "{line}");
    assert_eq!(line["value_decimal"], json!({"value": 9668894246685018_i64, "exponent": -16}));
    assert!(line.get("error").is_none(), "{line}");
}

#[test]
fn an_original_with_text_tokens_is_invalid_as_in_the_engine() {
    let line =
        score(&fixture("inference_response_int4.json"), &fixture("validation_response_fp8.json"));
    assert_eq!(line["verdict"], "invalid");
    assert_eq!(line["value"], 0.0);
    assert_eq!(line["value_decimal"], json!({"value": 0, "exponent": 0}));
    assert!(line["error"].as_str().unwrap().contains("not a token id"), "{line}");
}

#[test]
fn a_streamed_original_whose_last_chunk_has_no_logprobs_is_invalid_as_in_the_engine() {
    let [mut original, validation] = with_token_ids([
        fixture("inference_response_int4.json"),
        fixture("validation_response_fp8.json"),
    ]);
    let whole = streamed(&mut original, None);
    assert_eq!(score(&whole, &validation)["value"].as_f64().unwrap(), 0.9668894246685018);

    let last =
        json!({"index": 0, "delta": {}, "logprobs": {"content": []}, "finish_reason": "length"});
    let line = score(&streamed(&mut original, Some(last)), &validation);
    assert_eq!(line["verdict"], "invalid", "{line}");
    assert_eq!(line["value"], 0.0);
    assert!(line["error"].as_str().unwrap().contains("empty logprobs content"), "{line}");
}

#[test]
fn an_empty_sentinel_original_answered_by_our_node_is_invalid() {
    let [mut original, validation] = with_token_ids([
        fixture("inference_response_int4.json"),
        fixture("validation_response_fp8.json"),
    ]);
    content(&mut original)[0]["token"] = json!("<EMPTY>");
    let line = score(&original, &validation);
    assert_eq!(line["verdict"], "invalid");
    assert_eq!(line["value"], 0.0);
    assert!(line.get("error").is_none(), "{line}");
}

#[test]
fn a_missing_file_is_an_error() {
    let output = Command::new(crate::binary())
        .args(["score", "/nonexistent/a.json", "/nonexistent/b.json"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent/a.json"));
}

#[test]
fn only_one_side_can_come_from_standard_input() {
    let output = Command::new(crate::binary()).args(["score", "-", "-"]).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("only one"));
}
