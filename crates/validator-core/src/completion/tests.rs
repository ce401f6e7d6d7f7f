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
    let replay = build_replay_request(&to_bytes(prompt), original).unwrap();
    assert!(!replay.empty_sentinel);
    serde_json::from_slice(&replay.body).unwrap()
}

#[test]
fn replay_body_keeps_the_prompt_and_forces_the_original_tokens() {
    let prompt = prompt();
    let body = replay(&prompt, &fixture_ids(INFERENCE));

    for (key, value) in prompt.as_object().unwrap() {
        match key.as_str() {
            "stream" | "skip_special_tokens" => assert_eq!(body[key], json!(false)),
            "stream_options" => assert!(!body.contains_key(key)),
            _ => assert_eq!(&body[key], value, "{key}"),
        }
    }
    assert_eq!(body.len(), prompt.as_object().unwrap().len());

    let mut original = fixture_ids_value(INFERENCE);
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
    let okay = ["Okay", "Alright", "First"].map(token_id);
    assert_eq!(body["enforced_tokens"]["tokens"][0], json!({"token": okay[0], "top_tokens": okay}));
}

#[test]
fn replay_body_replaces_an_existing_enforced_tokens_field() {
    let mut prompt = prompt();
    prompt["enforced_tokens"] = json!("stale");
    let original = plain(vec![position("7", json!([top("7", -1.0)]))]);
    let body = replay(&prompt, &original);
    assert_eq!(body["enforced_tokens"], json!({"tokens": [{"token": "7", "top_tokens": ["7"]}]}));
}

#[test]
fn replay_body_from_parsed_original_is_the_same() {
    let original = fixture_ids(INFERENCE_INT4);
    let parsed = CompletionResponse::from_payload(&original).unwrap();
    let prompt = to_bytes(&prompt());
    assert_eq!(
        classic_replay(&prompt, &parsed).unwrap(),
        build_replay_request(&prompt, &original).unwrap()
    );
}

#[test]
fn positions_without_top_logprobs_are_skipped() {
    // Skipped positions are not enforced, so their tokens are not checked for ids either.
    let original = plain(vec![
        position("1", json!([top("1", -1.0), top("2", -2.0)])),
        position("skipped", Value::Null),
        json!({"token": "absent", "logprob": -1.0}),
        position("3", json!([top("3", -1.0)])),
    ]);
    let body = replay(&prompt(), &original);
    let expected = json!({"tokens": [
        {"token": "1", "top_tokens": ["1", "2"]},
        {"token": "3", "top_tokens": ["3"]},
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
    let from_plain = build_replay_request(&prompt, &fixture_ids(INFERENCE_INT4)).unwrap();
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
fn streamed_chunks_enforce_every_position_of_every_choice() {
    // Upstream v0.2.12 on: every position of a chunk, not only its first.
    let chunk = json!({"choices": [
        {"logprobs": {"content": [position("a", json!([top("a", -1.0)])), position("second", json!([top("x", -1.0)]))]}},
        {"logprobs": {"content": [position("b", Value::Null), position("c", json!([]))]}},
    ]});
    let last =
        json!({"choices": [{"logprobs": {"content": [position("d", json!([top("d", -1.0)]))]}}]});
    let events = vec![format!("data: {chunk}"), format!("data: {last}")];
    let response = CompletionResponse::from_payload(&streamed(events)).unwrap();
    assert_eq!(response.logprobs().len(), 5);
    let enforced = response.enforced_tokens().unwrap();
    assert_eq!(
        enforced.to_json(),
        json!({"tokens": [
            {"token": "a", "top_tokens": ["a"]},
            {"token": "second", "top_tokens": ["x"]},
            {"token": "b", "top_tokens": null},
            {"token": "c", "top_tokens": null},
            {"token": "d", "top_tokens": ["d"]},
        ]})
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
    let original = fixture_ids(INFERENCE);
    let prompt = br#"{"model": "m", "seed": 123456789012345678901234567890, "max_tokens": 1e308}"#;
    let replay = build_replay_request(prompt, &original).unwrap();
    let text = String::from_utf8(replay.body.clone()).unwrap();
    // Go reads every prompt number as a float64 and writes it back in its own format.
    assert!(text.contains(r#""seed":1.2345678901234568e+29"#), "{text}");
    assert!(text.contains(r#""max_tokens":1e+308"#), "{text}");
    let body: Map<String, Value> = serde_json::from_slice(&replay.body).unwrap();
    assert_eq!(body["max_tokens"], json!(1e308));
    assert!(matches!(
        build_replay_request(br#"{"seed": 1e400}"#, &original),
        Err(InvalidInference::Prompt(_))
    ));
}

#[test]
fn truncated_and_corrupted_payloads_never_panic() {
    let prompt = to_bytes(&prompt());
    for payload in [fixture_ids(INFERENCE_INT4), streamed_from_plain(INFERENCE_INT4)] {
        for truncated in truncations(&payload) {
            assert!(build_replay_request(&prompt, truncated).is_err());
        }
        for corrupted in corruptions(&payload) {
            let _ = build_replay_request(&prompt, &corrupted);
        }
    }
}

// === Completions-format logprobs ===

fn completions_logprobs(logprobs: Value) -> Result<CompletionResponse, serde_json::Error> {
    CompletionResponse::from_json(&to_bytes(&json!({"choices": [{"logprobs": logprobs}]})))
}

fn top_pairs(position: &Logprob) -> Option<Vec<(&str, f64)>> {
    let top = position.top_logprobs.as_ref()?;
    Some(top.iter().map(|t| (t.token.as_str(), t.logprob)).collect())
}

#[test]
fn completions_logprobs_become_positions_with_sorted_top_lists() {
    let body = br#"{"choices": [{"logprobs": {
        "tokens": ["1", "2", null, "4"],
        "token_logprobs": [-0.5, null, -0.25],
        "top_logprobs": [{"1": -0.5, "9": -1.5, "8": -1.5, "7": -0.75}, null, {"3": -0.25, "3": -0.125, "5": null}],
        "text_offset": [0, 1, 2, 3]}}]}"#;
    let response = CompletionResponse::from_json(body).unwrap();
    let logprobs = response.logprobs();
    let tokens: Vec<&str> = logprobs.iter().map(|p| p.token.as_str()).collect();
    assert_eq!(tokens, ["1", "2", "", "4"]);
    let values: Vec<f64> = logprobs.iter().map(|p| p.logprob).collect();
    assert_eq!(values, [-0.5, 0.0, -0.25, 0.0]);
    // Descending logprob, ties by token; a null map is an empty (not a missing) list; a
    // duplicate key keeps its last value and a null logprob reads 0; no map, no list.
    assert_eq!(
        top_pairs(logprobs[0]),
        Some(vec![("1", -0.5), ("7", -0.75), ("8", -1.5), ("9", -1.5)])
    );
    assert_eq!(top_pairs(logprobs[1]), Some(vec![]));
    assert_eq!(top_pairs(logprobs[2]), Some(vec![("5", 0.0), ("3", -0.125)]));
    assert_eq!(top_pairs(logprobs[3]), None);
    // The plain original's rule then applies: a present but empty top list is invalid.
    assert_eq!(response.enforced_tokens(), Err(InvalidInference::EmptyTopLogprobs));
}

#[test]
fn completions_logprobs_enforce_and_score_like_the_chat_format() {
    let chat = fixture_value(INFERENCE_INT4);
    let content = chat["choices"][0]["logprobs"]["content"].as_array().unwrap();
    let tokens: Vec<&Value> = content.iter().map(|p| &p["token"]).collect();
    let logprobs: Vec<&Value> = content.iter().map(|p| &p["logprob"]).collect();
    let tops: Vec<Map<String, Value>> = content
        .iter()
        .map(|p| {
            let top = p["top_logprobs"].as_array().unwrap();
            top.iter()
                .map(|t| (t["token"].as_str().unwrap().to_owned(), t["logprob"].clone()))
                .collect()
        })
        .collect();
    let completions = completions_logprobs(
        json!({"tokens": tokens, "token_logprobs": logprobs, "top_logprobs": tops}),
    )
    .unwrap();
    let chat = CompletionResponse::from_json(&to_bytes(&chat)).unwrap();
    // The same positions, with each top list in the completions format's order.
    let sorted: Vec<Logprob> = chat
        .logprobs()
        .into_iter()
        .map(|position| {
            let mut position = position.clone();
            let top = position.top_logprobs.as_mut().unwrap();
            top.sort_by(|a, b| b.logprob.total_cmp(&a.logprob).then_with(|| a.token.cmp(&b.token)));
            position
        })
        .collect();
    assert_eq!(completions.logprobs(), sorted.iter().collect::<Vec<_>>());
    let validation = fixture(VALIDATION_FP8);
    assert_eq!(
        crate::scoring::compare_parsed(&completions, &validation),
        crate::scoring::compare_parsed(&chat, &validation)
    );
    assert_eq!(completions.enforced_tokens().unwrap().tokens.len(), 100);
}

#[test]
fn a_content_key_selects_the_chat_format() {
    let chat = json!([position("1", json!([top("1", -1.0)]))]);
    let response = completions_logprobs(json!({"content": chat, "tokens": 5})).unwrap();
    let tokens: Vec<&str> = response.logprobs().iter().map(|p| p.token.as_str()).collect();
    assert_eq!(tokens, ["1"], "the completions fields are not even type-checked");
    let response = completions_logprobs(json!({"tokens": ["2"], "content": null})).unwrap();
    assert!(response.logprobs().is_empty());
    for empty in [json!({}), json!({"tokens": []}), json!({"tokens": null, "top_logprobs": [{}]})] {
        let response = completions_logprobs(empty.clone()).unwrap();
        assert!(response.logprobs().is_empty(), "{empty}");
    }
}

#[test]
fn malformed_logprobs_fail_the_parse_as_in_go() {
    for bad in [
        json!([]),
        json!("x"),
        json!(1),
        json!({"tokens": [1]}),
        json!({"tokens": "1"}),
        json!({"tokens": ["1"], "token_logprobs": ["x"]}),
        json!({"tokens": ["1"], "top_logprobs": [{"1": "x"}]}),
        json!({"tokens": ["1"], "top_logprobs": [["1"]]}),
        json!({"content": [{"token": 1}]}),
        json!({"content": {}}),
    ] {
        assert!(completions_logprobs(bad.clone()).is_err(), "{bad}");
    }
}

#[test]
fn streamed_originals_read_completions_logprobs_too() {
    let chunk = |token: &str| {
        let logprobs =
            json!({"tokens": [token], "token_logprobs": [-0.5], "top_logprobs": [{token: -0.5}]});
        format!("data: {}", json!({"choices": [{"text": token, "logprobs": logprobs}]}))
    };
    let response =
        CompletionResponse::from_payload(&streamed(vec![chunk("5"), chunk("6")])).unwrap();
    let enforced = response.enforced_tokens().unwrap();
    assert_eq!(
        enforced.to_json(),
        json!({"tokens": [{"token": "5", "top_tokens": ["5"]}, {"token": "6", "top_tokens": ["6"]}]})
    );
}

// === Usage ===

#[test]
fn usage_of_a_plain_response_is_none_when_absent_or_zero() {
    let usage = |usage: Value| {
        CompletionResponse::from_json(&to_bytes(&json!({"choices": [], "usage": usage})))
            .unwrap()
            .usage()
    };
    assert_eq!(
        usage(json!({"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17})),
        Some(Usage { prompt_tokens: 12, completion_tokens: 5 })
    );
    assert_eq!(
        usage(json!({"completion_tokens": 3})),
        Some(Usage { prompt_tokens: 0, completion_tokens: 3 })
    );
    for none in [json!(null), json!({}), json!({"prompt_tokens": 0, "completion_tokens": null})] {
        assert_eq!(usage(none.clone()), None, "{none}");
    }
    assert_eq!(CompletionResponse::from_json(b"{}").unwrap().usage(), None);
    for bad in [json!({"prompt_tokens": -1}), json!({"prompt_tokens": 1.5}), json!("x")] {
        let body = to_bytes(&json!({"usage": bad}));
        assert!(CompletionResponse::from_json(&body).is_err(), "{bad}");
    }
}

#[test]
fn usage_of_a_streamed_response_is_its_first_usage_or_a_position_count() {
    let positions = |n: usize| {
        let content: Vec<Value> = (0..n).map(|i| position(&i.to_string(), Value::Null)).collect();
        json!({"logprobs": {"content": content}})
    };
    let events = |chunks: Vec<Value>| {
        streamed(chunks.into_iter().map(|chunk| format!("data: {chunk}")).collect())
    };
    let counted = events(vec![
        json!({"choices": [positions(2), positions(7)]}),
        json!({"choices": [{"logprobs": null}]}),
        json!({"choices": [positions(3)], "usage": {"prompt_tokens": 0, "completion_tokens": 0}}),
    ]);
    assert_eq!(
        CompletionResponse::from_payload(&counted).unwrap().usage(),
        Some(Usage { prompt_tokens: 0, completion_tokens: 5 }),
        "only the first choice of each chunk counts"
    );
    let reported = events(vec![
        json!({"choices": [positions(2)]}),
        json!({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 2}}),
        json!({"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}),
    ]);
    assert_eq!(
        CompletionResponse::from_payload(&reported).unwrap().usage(),
        Some(Usage { prompt_tokens: 9, completion_tokens: 2 })
    );
    let no_chunks = streamed(vec!["data: [DONE]".to_owned()]);
    assert_eq!(CompletionResponse::from_payload(&no_chunks).unwrap().usage(), None);
}

// === Classic checks ===

#[test]
fn token_ids_follow_go_atoi() {
    for id in ["0", "7", "007", "+12", "-0", "151643", "9223372036854775807", "+0"] {
        assert!(is_token_id(id), "{id:?}");
    }
    for text in [
        "",
        "-1",
        "1.5",
        "abc",
        "+",
        "-",
        " 1",
        "1 ",
        "1_000",
        "0x10",
        "1e3",
        "９",
        "9223372036854775808",
        "-9223372036854775808",
        "Okay",
        "<EMPTY>",
        "++1",
    ] {
        assert!(!is_token_id(text), "{text:?}");
    }
}

#[test]
fn classic_replay_refuses_text_tokens() {
    let prompt = to_bytes(&prompt());
    assert_eq!(
        build_replay_request(&prompt, &fixture(INFERENCE)),
        Err(InvalidInference::NonNumericToken { position: 0, token: "Okay".into() })
    );
    let top_text = plain(vec![
        position("12", json!([top("12", -1.0)])),
        position("13", json!([top("13", -1.0), top("-1", -2.0)])),
    ]);
    assert_eq!(
        build_replay_request(&prompt, &top_text),
        Err(InvalidInference::NonNumericTopToken { position: 1, token: "-1".into() })
    );
    let long = "x".repeat(1000);
    let long_token = plain(vec![position(&long, json!([top(&long, -1.0)]))]);
    let Err(InvalidInference::NonNumericToken { token, .. }) =
        build_replay_request(&prompt, &long_token)
    else {
        panic!("accepted")
    };
    assert_eq!(token.chars().count(), MAX_TOKEN_EXCERPT);
}

#[test]
fn an_empty_sentinel_original_is_replayed_without_enforced_tokens() {
    let mut prompt = prompt();
    prompt["enforced_tokens"] = json!({"tokens": []});
    // The sentinel is looked for first: the text tokens beside it are not checked.
    let original = plain(vec![
        position("Okay", json!([top("Okay", -1.0)])),
        position(EMPTY_SENTINEL, json!([top(EMPTY_SENTINEL, -1.0)])),
    ]);
    let replay = build_replay_request(&to_bytes(&prompt), &original).unwrap();
    assert!(replay.empty_sentinel);
    let body: Map<String, Value> = serde_json::from_slice(&replay.body).unwrap();
    assert!(!body.contains_key("enforced_tokens"));
    assert_eq!(body["stream"], json!(false));
    assert_eq!(body["skip_special_tokens"], json!(false));
    assert!(!body.contains_key("stream_options"));
    let parsed = CompletionResponse::from_payload(&original).unwrap();
    assert_eq!(classic_enforcement(&parsed), Ok(ClassicEnforcement::EmptySentinel));

    // Only a chosen token counts as the sentinel.
    let in_top = plain(vec![position("5", json!([top("5", -1.0), top(EMPTY_SENTINEL, -2.0)]))]);
    assert_eq!(
        build_replay_request(&to_bytes(&prompt), &in_top),
        Err(InvalidInference::NonNumericTopToken { position: 0, token: EMPTY_SENTINEL.into() })
    );
}

#[test]
fn a_streamed_original_whose_last_chunk_has_empty_logprobs_is_invalid() {
    let mut events = match fixture_value_streamed(INFERENCE_INT4) {
        Value::Object(mut envelope) => envelope.remove("events").unwrap(),
        other => panic!("{other}"),
    };
    let events = events.as_array_mut().unwrap();
    let done = events.pop().unwrap();
    let last = json!({"choices": [{"index": 0, "delta": {}, "logprobs": {"content": []}, "finish_reason": "stop"}]});
    events.push(json!(format!("data: {last}")));
    events.push(done);
    let payload = to_bytes(&json!({ "events": events }));
    let original = CompletionResponse::from_payload(&payload).unwrap();
    assert_eq!(original.logprobs().len(), 100);
    assert_eq!(classic_enforcement(&original), Err(InvalidInference::EmptyLogprobsContent));
}

fn fixture_value_streamed(name: &str) -> Value {
    serde_json::from_slice(&streamed_from_plain(name)).unwrap()
}

#[test]
fn the_classic_body_is_written_as_go_writes_it() {
    let prompt = br#"{"model":"m","messages":[{"role":"user","content":"a<b> & \u2028"}],"seed":42,
        "temperature":0.7,"stream":true,"stream_options":{"include_usage":true},"max_tokens":100.0}"#;
    let original = plain(vec![position("15", json!([top("15", -0.5), top("16", -1.5)]))]);
    let replay = build_replay_request(prompt, &original).unwrap();
    assert_eq!(
        String::from_utf8(replay.body).unwrap(),
        r#"{"enforced_tokens":{"tokens":[{"token":"15","top_tokens":["15","16"]}]},"max_tokens":100,"messages":[{"content":"a\u003cb\u003e \u0026 \u2028","role":"user"}],"model":"m","seed":42,"skip_special_tokens":false,"stream":false,"temperature":0.7}"#
    );
}

// === Devshard replay ===

fn devshard(prompt: &Value, original: &[u8], id: u64, mode: &str) -> Map<String, Value> {
    let original = CompletionResponse::from_payload(original).unwrap();
    let body = build_devshard_replay(&to_bytes(prompt), &original, id, mode).unwrap();
    serde_json::from_slice(&body).unwrap()
}

fn small_original() -> Vec<u8> {
    plain(vec![position("15", json!([top("15", -0.5), top("16", -1.5)]))])
}

#[test]
fn the_devshard_body_is_written_as_go_writes_it() {
    let prompt = br#"{"model":"m","messages":[{"role":"user","content":"a<b> & \u2028"}],"seed":42,
        "temperature":0.7,"stream":true,"stream_options":{"include_usage":true},"max_tokens":100.0}"#;
    let original = CompletionResponse::from_payload(&small_original()).unwrap();
    let body = build_devshard_replay(prompt, &original, 7, "raw_logprobs").unwrap();
    assert_eq!(
        String::from_utf8(body).unwrap(),
        r#"{"enforced_tokens":{"tokens":[{"token":"15","top_tokens":["15","16"]}]},"logprobs":true,"logprobs_mode":"raw_logprobs","max_completion_tokens":100,"max_tokens":100,"messages":[{"content":"a\u003cb\u003e \u0026 \u2028","role":"user"}],"model":"m","return_token_ids":true,"seed":42,"skip_special_tokens":false,"stream":false,"temperature":0.7,"top_logprobs":5}"#
    );
}

#[test]
fn the_devshard_body_from_a_fixture_keeps_the_prompt_and_forces_every_position() {
    let mut prompt = prompt();
    prompt.as_object_mut().unwrap().remove("seed");
    let body = devshard(&prompt, &fixture(INFERENCE), 1_742_626_074, "");
    for (key, value) in prompt.as_object().unwrap() {
        match key.as_str() {
            "stream" | "skip_special_tokens" => assert_eq!(body[key], json!(false)),
            "stream_options" => assert!(!body.contains_key(key)),
            _ => assert_eq!(&body[key], value, "{key}"),
        }
    }
    assert_eq!(body["seed"], json!(1_742_626_074));
    assert_eq!(body["return_token_ids"], json!(true));
    assert!(!body.contains_key("logprobs_mode"));
    // The devshard path has no classic checks: text tokens are forced as they are.
    let tokens = body["enforced_tokens"]["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 100);
    assert_eq!(tokens[0], json!({"token": "Okay", "top_tokens": ["Okay", "Alright", "First"]}));
}

#[test]
fn devshard_logprobs_are_switched_on_unless_set_to_something_else() {
    let original = small_original();
    for (given, expected) in [
        (None, json!(true)),
        (Some(json!(null)), json!(true)),
        (Some(json!(false)), json!(true)),
        (Some(json!(true)), json!(true)),
        (Some(json!("yes")), json!("yes")),
        (Some(json!(0)), json!(0)),
    ] {
        let mut prompt = json!({"model": "m"});
        if let Some(given) = &given {
            prompt["logprobs"] = given.clone();
        }
        assert_eq!(devshard(&prompt, &original, 1, "")["logprobs"], expected, "{given:?}");
    }
}

#[test]
fn devshard_top_logprobs_are_always_five() {
    // Upstream keeps the prompt's value only when it decoded as a Go `int`; JSON numbers decode
    // as float64, so even 20 becomes 5.
    let original = small_original();
    for given in [
        None,
        Some(json!(3)),
        Some(json!(5)),
        Some(json!(20)),
        Some(json!(true)),
        Some(json!("x")),
        Some(json!(null)),
    ] {
        let mut prompt = json!({"model": "m"});
        if let Some(given) = &given {
            prompt["top_logprobs"] = given.clone();
        }
        assert_eq!(devshard(&prompt, &original, 1, "")["top_logprobs"], json!(5), "{given:?}");
    }
}

#[test]
fn devshard_max_tokens_take_the_first_number_truncated_as_go_does() {
    let original = small_original();
    for (prompt, expected) in [
        (json!({}), json!(5000)),
        (json!({"max_tokens": 100.7}), json!(100)),
        (json!({"max_tokens": -5.5}), json!(-5)),
        (json!({"max_tokens": 0}), json!(0)),
        (json!({"max_completion_tokens": 64}), json!(64)),
        (json!({"max_tokens": 100, "max_completion_tokens": 64}), json!(100)),
        (json!({"max_tokens": "100", "max_completion_tokens": 64}), json!(64)),
        (json!({"max_tokens": null, "max_completion_tokens": 64.9}), json!(64)),
        (json!({"max_tokens": [1], "max_completion_tokens": "64"}), json!(5000)),
        // Out of int64 range: amd64's conversion answers the minimum, which upstream's second
        // encoding writes as the float64 it decoded it into.
        (json!({"max_tokens": 1e300}), json!(-9.223_372_036_854_776e18)),
        (json!({"max_tokens": -1e19}), json!(-9.223_372_036_854_776e18)),
        (json!({"max_tokens": 9.2e18}), json!(9_200_000_000_000_000_000_i64)),
    ] {
        let body = devshard(&prompt, &original, 1, "");
        assert_eq!(body["max_tokens"], expected, "{prompt}");
        assert_eq!(body["max_completion_tokens"], expected, "{prompt}");
    }
}

#[test]
fn devshard_seed_is_the_wrapped_inference_id_unless_the_prompt_has_one() {
    let original = small_original();
    let seed = |prompt: Value, id: u64| devshard(&prompt, &original, id, "")["seed"].clone();
    assert_eq!(seed(json!({}), 7), json!(7));
    assert_eq!(seed(json!({}), (1 << 32) + 7), json!(7));
    assert_eq!(seed(json!({}), 1 << 31), json!(-2_147_483_648_i64));
    assert_eq!(seed(json!({}), u64::MAX), json!(-1));
    assert_eq!(seed(json!({"seed": 3}), 7), json!(3));
    assert_eq!(seed(json!({"seed": null}), 7), json!(null), "a present key is kept");
}

#[test]
fn devshard_logprobs_mode_is_set_only_when_given() {
    let original = small_original();
    let prompt = json!({"model": "m", "logprobs_mode": "processed_logprobs"});
    assert_eq!(devshard(&prompt, &original, 1, "")["logprobs_mode"], json!("processed_logprobs"));
    assert_eq!(
        devshard(&prompt, &original, 1, "raw_logprobs")["logprobs_mode"],
        json!("raw_logprobs")
    );
    assert!(!devshard(&json!({}), &original, 1, "").contains_key("logprobs_mode"));
}

#[test]
fn devshard_replay_has_no_classic_checks_but_keeps_the_shared_ones() {
    let sentinel = plain(vec![position(EMPTY_SENTINEL, json!([top("x", -1.0)]))]);
    let body = devshard(&json!({}), &sentinel, 1, "");
    assert_eq!(
        body["enforced_tokens"],
        json!({"tokens": [{"token": EMPTY_SENTINEL, "top_tokens": ["x"]}]})
    );

    let prompt = to_bytes(&json!({"model": "m"}));
    let empty_top =
        CompletionResponse::from_payload(&plain(vec![position("1", json!([]))])).unwrap();
    assert_eq!(
        build_devshard_replay(&prompt, &empty_top, 1, ""),
        Err(InvalidInference::EmptyTopLogprobs)
    );
    let original = CompletionResponse::from_payload(&small_original()).unwrap();
    for bad in [&b"null"[..], b"[]", b"{"] {
        assert!(matches!(
            build_devshard_replay(bad, &original, 1, ""),
            Err(InvalidInference::Prompt(_))
        ));
    }
    // The prompt is checked before the original.
    assert!(matches!(
        build_devshard_replay(br#"{"messages": 1}"#, &empty_top, 1, ""),
        Err(InvalidInference::Messages(_))
    ));
}

#[test]
fn devshard_prompts_must_hold_chat_messages() {
    let original = CompletionResponse::from_payload(&small_original()).unwrap();
    let check = |messages: Value| {
        let prompt = to_bytes(&json!({"model": "m", "messages": messages}));
        build_devshard_replay(&prompt, &original, 1, "")
    };
    let call = |id: &str| json!({"id": id, "type": "function", "function": {"name": "f", "arguments": "{}"}});
    let accepted = [
        json!([]),
        json!([{"role": "system", "content": "be brief"}, {"role": "developer", "content": "x"}, {"role": "user", "content": "hi"}]),
        json!([{"role": "user", "content": [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": "u"}}]}]),
        json!([{"role": "user", "content": [{"type": "image_url"}]}]),
        json!([
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": null, "tool_calls": [call("a"), call("b")]},
            {"role": "tool", "tool_call_id": "b", "content": "2"},
            {"role": "tool", "tool_call_id": "a", "content": [{"type": "text", "text": "1"}]},
            {"role": "assistant", "content": "done", "name": "bot"},
        ]),
        json!([{"role": "assistant", "function_call": {"name": "f", "arguments": null}}, {"role": "function", "name": "f", "content": "r"}]),
        json!([{"role": "user", "content": "hi", "name": "me", "extra": 1}]),
    ];
    for messages in accepted {
        assert!(check(messages.clone()).is_ok(), "{messages}");
    }
    let user = |content: Value| json!([{"role": "user", "content": content}]);
    let refused = [
        json!(null),
        json!("hi"),
        json!({"role": "user"}),
        json!([1]),
        json!([{"content": "hi"}]),
        json!([{"role": " ", "content": "hi"}]),
        json!([{"role": 5, "content": "hi"}]),
        json!([{"role": "User", "content": "hi"}]),
        json!([{"role": "bot", "content": "hi"}]),
        json!([{"role": "user"}]),
        user(json!(null)),
        user(json!("")),
        user(json!(" \n\u{a0}")),
        user(json!([])),
        user(json!([1])),
        user(json!(5)),
        user(json!({"type": "text", "text": "hi"})),
        user(json!([{"text": "hi"}])),
        user(json!([{"type": "", "text": "hi"}])),
        user(json!([{"type": "text"}])),
        user(json!([{"type": "text", "text": " "}])),
        user(json!([{"type": "text", "text": 5}])),
        json!([{"role": "user", "content": "hi", "tool_call_id": null}]),
        json!([{"role": "system", "content": "hi", "tool_calls": [call("a")]}]),
        json!([{"role": "assistant"}]),
        json!([{"role": "assistant", "content": ""}]),
        json!([{"role": "assistant", "tool_calls": []}]),
        json!([{"role": "assistant", "tool_calls": "a"}]),
        json!([{"role": "assistant", "tool_calls": null}]),
        json!([{"role": "assistant", "tool_calls": [1]}]),
        json!([{"role": "assistant", "tool_calls": [call("a"), call("a")]}]),
        json!([{"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "f"}}]}]),
        json!([{"role": "assistant", "tool_calls": [{"id": "a", "type": "fn", "function": {"name": "f"}}]}]),
        json!([{"role": "assistant", "tool_calls": [{"id": "a", "type": "function"}]}]),
        json!([{"role": "assistant", "tool_calls": [{"id": "a", "type": "function", "function": null}]}]),
        json!([{"role": "assistant", "tool_calls": [{"id": "a", "type": "function", "function": "f"}]}]),
        json!([{"role": "assistant", "tool_calls": [{"id": "a", "type": "function", "function": {"name": " "}}]}]),
        json!([{"role": "assistant", "tool_calls": [{"id": "a", "type": "function", "function": {"name": "f", "arguments": {}}}]}]),
        json!([{"role": "assistant", "content": "x", "tool_call_id": "a"}]),
        json!([{"role": "assistant", "function_call": null}]),
        json!([{"role": "assistant", "function_call": {"arguments": "{}"}}]),
        json!([{"role": "tool", "tool_call_id": "a", "content": "1"}]),
        json!([
            {"role": "assistant", "tool_calls": [call("a")]},
            {"role": "tool", "tool_call_id": "a", "content": "1"},
            {"role": "tool", "tool_call_id": "a", "content": "1"},
        ]),
        json!([{"role": "assistant", "tool_calls": [call("a")]}, {"role": "tool", "tool_call_id": "a", "content": "1", "name": "f"}]),
        json!([{"role": "assistant", "tool_calls": [call("a")]}, {"role": "tool", "tool_call_id": "a"}]),
        json!([{"role": "function", "content": "r"}]),
        json!([{"role": "function", "name": "f", "content": "r", "function_call": {"name": "f"}}]),
    ];
    for messages in refused {
        assert!(
            matches!(check(messages.clone()), Err(InvalidInference::Messages(_))),
            "{messages}"
        );
    }
}

#[test]
fn devshard_replay_never_panics_on_corrupted_payloads() {
    let prompt = to_bytes(&prompt());
    let original = CompletionResponse::from_payload(&small_original()).unwrap();
    for corrupted in corruptions(&prompt).chain(truncations(&prompt).map(<[u8]>::to_vec)) {
        let _ = build_devshard_replay(&corrupted, &original, 1, "raw_logprobs");
    }
    for nested in deeply_nested() {
        assert!(build_devshard_replay(nested.as_bytes(), &original, 1, "").is_err());
    }
}
