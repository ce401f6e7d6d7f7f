use serde_json::json;

use super::{fixtures::*, *};

// === Parsing ===

#[test]
fn nulls_read_as_zero_values_like_go() {
    let body = br#"{"choices":[null,{"logprobs":{"content":[null,{"token":null,"logprob":null,
        "top_logprobs":[null,{"token":"a","logprob":null}]}]}}]}"#;
    let response = CompletionResponse::from_json(body).unwrap();
    let logprobs = response.logprobs();
    assert_eq!(logprobs.len(), 2);
    assert_eq!(*logprobs[0], Logprob::default());
    assert_eq!(logprobs[1].token, "");
    assert_eq!(
        logprobs[1].top_logprobs,
        Some(vec![TopLogprob::default(), TopLogprob { token: "a".to_owned(), logprob: 0.0 }])
    );
}

#[test]
fn logprobs_concatenate_every_choice() {
    let body = to_bytes(&json!({"choices": [
        {"logprobs": {"content": [position("a", Value::Null)]}},
        {"logprobs": null},
        {"logprobs": {"content": [position("b", Value::Null), position("c", Value::Null)]}},
    ]}));
    let response = CompletionResponse::from_json(&body).unwrap();
    let tokens: Vec<&str> = response.logprobs().iter().map(|p| p.token.as_str()).collect();
    assert_eq!(tokens, ["a", "b", "c"]);
}

// === Replay request ===

fn prompt() -> Value {
    json!({
        "model": "Qwen/QwQ-32B",
        "messages": [{"role": "user", "content": "To whom did the Virgin Mary allegedly appear <in> 1858 & where?"}],
        "seed": 1_234_567_890_123_u64,
        "logprobs": true,
        "top_logprobs": 5,
        "max_tokens": 5000,
        "max_completion_tokens": 5000,
        "temperature": 0.7,
        "stream": true,
        "stream_options": {"include_usage": true},
        "skip_special_tokens": true,
        "vendor_extension": {"nested": [1, 2.5, null, "x"]},
    })
}

fn replay(prompt: &Value, original: &[u8]) -> Map<String, Value> {
    let body = build_replay_request(&to_bytes(prompt), original).unwrap();
    serde_json::from_slice(&body).unwrap()
}

#[test]
fn replay_body_keeps_the_prompt_and_forces_the_original_tokens() {
    let prompt = prompt();
    let body = replay(&prompt, &fixture(INFERENCE));

    for (key, value) in prompt.as_object().unwrap() {
        match key.as_str() {
            "stream" | "skip_special_tokens" => assert_eq!(body[key], json!(false)),
            "stream_options" => assert!(!body.contains_key(key)),
            _ => assert_eq!(&body[key], value, "{key}"),
        }
    }
    assert_eq!(body.len(), prompt.as_object().unwrap().len());

    let mut original = fixture_value(INFERENCE);
    let expected: Vec<Value> = content_mut(&mut original)
        .iter()
        .map(|p| {
            let tops: Vec<&Value> =
                p["top_logprobs"].as_array().unwrap().iter().map(|t| &t["token"]).collect();
            json!({"token": p["token"], "top_tokens": tops})
        })
        .collect();
    assert_eq!(expected.len(), 100);
    assert_eq!(body["enforced_tokens"], json!({ "tokens": expected }));
    assert_eq!(
        body["enforced_tokens"]["tokens"][0],
        json!({"token": "Okay", "top_tokens": ["Okay", "Alright", "First"]})
    );
}

#[test]
fn replay_body_replaces_an_existing_enforced_tokens_field() {
    let mut prompt = prompt();
    prompt["enforced_tokens"] = json!("stale");
    let original = plain(vec![position("a", json!([top("a", -1.0)]))]);
    let body = replay(&prompt, &original);
    assert_eq!(body["enforced_tokens"], json!({"tokens": [{"token": "a", "top_tokens": ["a"]}]}));
}

#[test]
fn replay_body_from_parsed_original_is_the_same() {
    let original = fixture(INFERENCE_INT4);
    let parsed = CompletionResponse::from_payload(&original).unwrap();
    let prompt = to_bytes(&prompt());
    assert_eq!(
        build_replay_request_parsed(&prompt, &parsed).unwrap(),
        build_replay_request(&prompt, &original).unwrap()
    );
}

#[test]
fn positions_without_top_logprobs_are_skipped() {
    let original = plain(vec![
        position("a", json!([top("a", -1.0), top("b", -2.0)])),
        position("skipped", Value::Null),
        json!({"token": "absent", "logprob": -1.0}),
        position("c", json!([top("c", -1.0)])),
    ]);
    let body = replay(&prompt(), &original);
    let expected = json!({"tokens": [
        {"token": "a", "top_tokens": ["a", "b"]},
        {"token": "c", "top_tokens": ["c"]},
    ]});
    assert_eq!(body["enforced_tokens"], expected);
}

#[test]
fn only_the_first_choice_is_enforced_for_a_plain_original() {
    let body = to_bytes(&json!({"choices": [
        {"logprobs": {"content": [position("a", json!([top("a", -1.0)]))]}},
        {"logprobs": {"content": [position("b", json!([top("b", -1.0)]))]}},
    ]}));
    let enforced = CompletionResponse::from_payload(&body).unwrap().enforced_tokens().unwrap();
    assert_eq!(
        enforced.tokens,
        [EnforcedToken { token: "a".to_owned(), top_tokens: vec!["a".to_owned()] }]
    );
}

#[test]
fn plain_original_without_positions_sends_null_tokens_like_upstream() {
    // Upstream sends `"tokens": null` here and lets the comparison fail on our side.
    let original =
        to_bytes(&json!({"choices": [{"logprobs": {"content": [position("a", Value::Null)]}}]}));
    let body = replay(&prompt(), &original);
    assert_eq!(body["enforced_tokens"], json!({ "tokens": null }));
}

#[test]
fn unusable_originals_are_invalid_inferences() {
    let cases: Vec<(Vec<u8>, InvalidInference)> = vec![
        (to_bytes(&json!({"choices": []})), InvalidInference::NoChoices),
        (to_bytes(&json!({"choices": null})), InvalidInference::NoChoices),
        (b"{}".to_vec(), InvalidInference::NoChoices),
        (b"null".to_vec(), InvalidInference::NoChoices),
        (
            plain(vec![position("a", json!([top("a", -1.0)])), position("b", json!([]))]),
            InvalidInference::EmptyTopLogprobs,
        ),
        (streamed(vec![]), InvalidInference::NoChunks),
        (to_bytes(&json!({"events": null})), InvalidInference::NoChunks),
        (streamed(vec!["data: [DONE]".to_owned(), String::new()]), InvalidInference::NoChunks),
        (streamed(vec![r#"data: {"choices":[]}"#.to_owned()]), InvalidInference::NoTokens),
        (
            streamed(vec![r#"data: {"choices":[{"logprobs":null}]}"#.to_owned()]),
            InvalidInference::NoTokens,
        ),
        (
            streamed(vec![r#"data: {"choices":[{"logprobs":{"content":[]}}]}"#.to_owned()]),
            InvalidInference::EmptyLogprobsContent,
        ),
    ];
    let prompt = to_bytes(&prompt());
    for (original, expected) in cases {
        assert_eq!(
            build_replay_request(&prompt, &original),
            Err(expected),
            "{}",
            String::from_utf8_lossy(&original)
        );
    }
    for bad in [
        &b"not json"[..],
        b"[]",
        b"{\"events\": [1]}",
        b"{\"events\": [\"data: {\"]}",
        b"{\"events\": \"x\"}",
    ] {
        assert!(
            matches!(build_replay_request(&prompt, bad), Err(InvalidInference::Response(_))),
            "{bad:?}"
        );
    }
}

#[test]
fn prompt_must_be_a_json_object() {
    let original = fixture(INFERENCE);
    for bad in [&b""[..], b"null", b"[]", b"\"prompt\"", b"5", b"{\"model\": }"] {
        assert!(
            matches!(build_replay_request(bad, &original), Err(InvalidInference::Prompt(_))),
            "{bad:?}"
        );
    }
    // The prompt is checked before the response, as upstream does.
    assert!(matches!(build_replay_request(b"[]", b"[]"), Err(InvalidInference::Prompt(_))));
}

// === Streamed originals ===

#[test]
fn streamed_original_enforces_the_same_tokens_as_the_plain_one() {
    let prompt = to_bytes(&prompt());
    let from_plain = build_replay_request(&prompt, &fixture(INFERENCE_INT4)).unwrap();
    let from_streamed =
        build_replay_request(&prompt, &streamed_from_plain(INFERENCE_INT4)).unwrap();
    assert_eq!(from_streamed, from_plain);
}

#[test]
fn streamed_lines_are_trimmed_and_the_data_prefix_is_optional() {
    let chunk = |token: &str| json!({"choices": [{"logprobs": {"content": [position(token, json!([top(token, -1.0)]))]}}]});
    let events = vec![
        format!("  data:{}\n", chunk("a")),
        chunk("b").to_string(),
        "data: null".to_owned(),
        "\tdata: [DONE]  ".to_owned(),
    ];
    let response = CompletionResponse::from_payload(&streamed(events)).unwrap();
    let enforced = response.enforced_tokens().unwrap();
    let tokens: Vec<&str> = enforced.tokens.iter().map(|t| t.token.as_str()).collect();
    assert_eq!(tokens, ["a", "b"]);
}

#[test]
fn streamed_chunks_enforce_their_first_position_of_every_choice() {
    let events = vec![format!(
        "data: {}",
        json!({"choices": [
            {"logprobs": {"content": [position("a", json!([top("a", -1.0)])), position("ignored", json!([top("x", -1.0)]))]}},
            {"logprobs": {"content": [position("b", Value::Null)]}},
        ]})
    )];
    let response = CompletionResponse::from_payload(&streamed(events)).unwrap();
    assert_eq!(response.logprobs().len(), 3);
    let enforced = response.enforced_tokens().unwrap();
    assert_eq!(
        enforced.to_json(),
        json!({"tokens": [{"token": "a", "top_tokens": ["a"]}, {"token": "b", "top_tokens": null}]})
    );
}

// === Hostile input ===

#[test]
fn deeply_nested_json_is_an_error_not_a_stack_overflow() {
    let good = fixture(INFERENCE);
    for nested in deeply_nested() {
        let nested = nested.as_bytes();
        assert!(matches!(build_replay_request(nested, &good), Err(InvalidInference::Prompt(_))));
        assert!(matches!(build_replay_request(b"{}", nested), Err(InvalidInference::Response(_))));
    }
}

#[test]
fn huge_numbers_are_handled() {
    let original = fixture(INFERENCE);
    let prompt = br#"{"model": "m", "seed": 123456789012345678901234567890, "max_tokens": 1e308}"#;
    let body: Map<String, Value> =
        serde_json::from_slice(&build_replay_request(prompt, &original).unwrap()).unwrap();
    assert_eq!(body["max_tokens"], json!(1e308));
    assert!(matches!(
        build_replay_request(br#"{"seed": 1e400}"#, &original),
        Err(InvalidInference::Prompt(_))
    ));
}

#[test]
fn truncated_and_corrupted_payloads_never_panic() {
    let prompt = to_bytes(&prompt());
    for payload in [fixture(INFERENCE_INT4), streamed_from_plain(INFERENCE_INT4)] {
        for truncated in truncations(&payload) {
            assert!(build_replay_request(&prompt, truncated).is_err());
        }
        for corrupted in corruptions(&payload) {
            let _ = build_replay_request(&prompt, &corrupted);
        }
    }
}
