use serde_json::{json, Value};

use super::*;
use crate::completion::{fixtures::*, EMPTY_SENTINEL};

fn score(original: &[u8], validation: &[u8]) -> Score {
    compare(original, validation).unwrap()
}

// === Golden values ===

#[test]
fn int4_original_against_fp8_replay_matches_upstream_bit_for_bit() {
    let score = score(&fixture(INFERENCE_INT4), &fixture(VALIDATION_FP8));
    assert_eq!(score.verdict, Verdict::Similarity);
    assert_eq!(score.value.to_bits(), 0.966_889_424_668_501_8_f64.to_bits());
}

#[test]
fn fp8_original_against_int4_replay_matches_upstream_bit_for_bit() {
    let score = score(&fixture(VALIDATION_FP8), &fixture(INFERENCE_INT4));
    assert_eq!(score.verdict, Verdict::Similarity);
    assert_eq!(score.value.to_bits(), 0.966_890_842_753_379_2_f64.to_bits());
}

#[test]
fn inference_against_validation_fixture_is_one() {
    // Upstream's TestValidation only logs this pair; both files carry identical logprobs
    // (they differ in ids and timestamps), so every term is 0.
    let score = score(&fixture(INFERENCE), &fixture(VALIDATION));
    assert_eq!(score.verdict, Verdict::Similarity);
    assert!((score.value - 1.0).abs() < 1e-12);
    assert_eq!(score.value, 1.0);
}

#[test]
fn identical_inputs_score_exactly_one() {
    for name in [INFERENCE, INFERENCE_INT4, VALIDATION, VALIDATION_FP8] {
        let body = fixture(name);
        assert_eq!(score(&body, &body), Score { verdict: Verdict::Similarity, value: 1.0 });
    }
}

#[test]
fn golden_value_decimal() {
    assert_eq!(
        value_decimal(0.966_889_424_668_501_8),
        ValueDecimal { value: 9_668_894_246_685_018, exponent: -16 }
    );
}

// === Comparison rules ===

#[test]
fn shorter_validation_is_different_length_with_value_zero() {
    let mut validation = fixture_value(VALIDATION_FP8);
    content_mut(&mut validation).truncate(99);
    let score = score(&fixture(INFERENCE_INT4), &to_bytes(&validation));
    assert_eq!(score, Score { verdict: Verdict::DifferentLength, value: 0.0 });
}

#[test]
fn longer_validation_is_compared_on_the_first_n_positions() {
    let mut validation = fixture_value(VALIDATION_FP8);
    let extra = content_mut(&mut validation)[..10].to_vec();
    content_mut(&mut validation).extend(extra);
    let longer = score(&fixture(INFERENCE_INT4), &to_bytes(&validation));
    let same = score(&fixture(INFERENCE_INT4), &fixture(VALIDATION_FP8));
    assert_eq!(longer, same);
}

#[test]
fn token_mismatch_is_different_tokens_with_value_zero() {
    let mut validation = fixture_value(VALIDATION_FP8);
    content_mut(&mut validation)[42]["token"] = json!("Different");
    let score = score(&fixture(INFERENCE_INT4), &to_bytes(&validation));
    assert_eq!(score, Score { verdict: Verdict::DifferentTokens, value: 0.0 });
}

#[test]
fn length_is_checked_before_tokens() {
    let original = plain(vec![position("a", json!([top("a", -1.0)])); 2]);
    let validation = plain(vec![position("b", json!([top("b", -1.0)]))]);
    assert_eq!(score(&original, &validation).verdict, Verdict::DifferentLength);
}

#[test]
fn single_entry_top_list_estimates_missing_tokens_at_m1_plus_100() {
    // Original top list: only "a" at -1, so m1 = -1 and m2 = m1 - 100 = -101; the estimate
    // for tokens it lacks is m1 - (m2 - m1) = -1 + 100 = 99 (upstream's upward quirk).
    // Our top list: "a" at -1 (term 0) and "b" at -2 (estimated original 99):
    //   term = |-2 - 99| / (1e-6 + 2 + 99) / 2 = 101 / 101.000001 / 2 ≈ 0.49999999505
    // One position, K = 1: distance = term / (max(100, 1) * 1), similarity ≈ 0.99500000005.
    let original = plain(vec![position("a", json!([top("a", -1.0)]))]);
    let validation = plain(vec![position("a", json!([top("a", -1.0), top("b", -2.0)]))]);
    let expected = 1.0 - (101.0 / (1e-6 + 2.0 + 99.0) / 2.0) / 100.0;
    let score = score(&original, &validation);
    assert_eq!(score.verdict, Verdict::Similarity);
    assert_eq!(score.value, expected);
    assert!((score.value - 0.995_000_000_049_5).abs() < 1e-12);
}

#[test]
fn missing_token_estimate_extends_the_gap_of_the_two_smallest() {
    // Original: "a" at -1 and "b" at -3, so m1 = -3, m2 = -1 and the estimate for "c" is
    // -3 - (-1 - -3) = -5. term(c) = |-4 - -5| / (1e-6 + 4 + 5) / 2; K = 2.
    let original = plain(vec![position("a", json!([top("a", -1.0), top("b", -3.0)]))]);
    let validation = plain(vec![position("a", json!([top("a", -1.0), top("c", -4.0)]))]);
    let expected = 1.0 - (1.0 / (1e-6 + 4.0 + 5.0) / 2.0) / 200.0;
    assert_eq!(score(&original, &validation).value, expected);
}

#[test]
fn a_token_listed_twice_keeps_its_last_logprob() {
    let original = plain(vec![position("a", json!([top("a", -9.0), top("a", -1.0)]))]);
    let validation = plain(vec![position("a", json!([top("a", -1.0)]))]);
    // Only "a" at -1 is left, so the term is 0; K counts both entries.
    assert_eq!(score(&original, &validation).value, 1.0);
}

#[test]
fn empty_or_missing_top_list_gives_similarity_zero() {
    let original =
        plain(vec![position("a", json!([top("a", -1.0)])), position("b", json!([top("b", -1.0)]))]);
    for broken in [json!([]), Value::Null] {
        let validation =
            plain(vec![position("a", json!([top("a", -1.0)])), position("b", broken.clone())]);
        assert_eq!(
            score(&original, &validation),
            Score { verdict: Verdict::Similarity, value: 0.0 }
        );
        let swapped = score(&validation, &original);
        assert_eq!(swapped, Score { verdict: Verdict::Similarity, value: 0.0 });
    }
}

#[test]
fn non_finite_logprobs_never_escape_the_unit_interval() {
    let position = |top_logprobs: Vec<TopLogprob>| Logprob {
        token: "a".to_owned(),
        logprob: 0.0,
        top_logprobs: Some(top_logprobs),
    };
    let tops = |lps: &[f64]| {
        lps.iter().map(|&logprob| TopLogprob { token: "a".to_owned(), logprob }).collect::<Vec<_>>()
    };
    let values = [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, f64::MAX, -f64::MAX, 0.0, -0.0, -1.0];
    for &o in &values {
        for &v in &values {
            let score = compare_logprobs(&[position(tops(&[o]))], &[position(tops(&[v, o]))]);
            assert_eq!(score.verdict, Verdict::Similarity);
            assert!((0.0..=1.0).contains(&score.value), "{o} vs {v}: {}", score.value);
        }
    }
}

#[test]
fn zero_logprobs_on_both_sides_are_equal() {
    let original = plain(vec![position("a", json!([top("a", 0.0), top("b", -0.0)]))]);
    assert_eq!(score(&original, &original).value, 1.0);
}

#[test]
fn huge_logprobs_score_without_panicking() {
    let original = plain(vec![position("a", json!([top("a", 1e308), top("b", -1e308)]))]);
    let validation = plain(vec![position("a", json!([top("a", -1e308), top("c", 1.7e308)]))]);
    let score = score(&original, &validation);
    assert!((0.0..=1.0).contains(&score.value));
}

#[test]
fn missing_logprobs_are_validator_side_errors() {
    let with = plain(vec![position("a", json!([top("a", -1.0)]))]);
    let without = to_bytes(&json!({"choices": [{"index": 0, "logprobs": null}]}));
    assert_eq!(compare(&without, &with), Err(ScoringError::NoOriginalLogprobs));
    assert_eq!(compare(&with, &without), Err(ScoringError::NoValidationLogprobs));
    assert_eq!(compare(&with, b"{}"), Err(ScoringError::NoValidationLogprobs));
    assert_eq!(compare(&with, b"null"), Err(ScoringError::NoValidationLogprobs));
}

#[test]
fn unparsable_responses_are_typed_errors() {
    let good = fixture(INFERENCE);
    for bad in [&b""[..], b"not json", b"{", b"[1, 2]", b"\"text\"", b"42"] {
        assert!(matches!(compare(&good, bad), Err(ScoringError::ValidationResponse(_))), "{bad:?}");
        assert!(
            matches!(
                compare(bad, &good),
                Err(ScoringError::Original(InvalidInference::Response(_)))
            ),
            "{bad:?}"
        );
    }
    let wrong_type = to_bytes(&json!({"choices": [{"logprobs": {"content": [{"token": 1}]}}]}));
    assert!(matches!(compare(&good, &wrong_type), Err(ScoringError::ValidationResponse(_))));
    let out_of_range = br#"{"choices":[{"logprobs":{"content":[{"token":"a","logprob":1e400}]}}]}"#;
    assert!(matches!(compare(&good, out_of_range), Err(ScoringError::ValidationResponse(_))));
}

#[test]
fn local_success_needs_a_similarity_above_threshold() {
    assert!(Score { verdict: Verdict::Similarity, value: 0.991 }.is_local_success());
    assert!(
        !Score { verdict: Verdict::Similarity, value: LOCAL_SUCCESS_THRESHOLD }.is_local_success()
    );
    assert!(Score::rejected_by_node().is_local_success());
    assert!(!Score::invalid_inference().is_local_success());
    assert_eq!(Score::invalid_inference().value_decimal(), ValueDecimal::ZERO);
    assert_eq!(Score::rejected_by_node().value_decimal(), ValueDecimal { value: 1, exponent: 0 });
}

#[test]
fn verdicts_serialize_in_snake_case() {
    let names =
        [Verdict::Similarity, Verdict::DifferentLength, Verdict::DifferentTokens, Verdict::Invalid]
            .map(|verdict| (serde_json::to_value(verdict).unwrap(), verdict.as_str()));
    for (serialized, name) in names {
        assert_eq!(serialized, json!(name));
    }
    assert_eq!(Verdict::DifferentLength.as_str(), "different_length");
}

// === Streamed originals ===

#[test]
fn streamed_original_scores_like_the_plain_one() {
    let streamed = CompletionResponse::from_payload(&streamed_from_plain(INFERENCE_INT4)).unwrap();
    let plain = CompletionResponse::from_payload(&fixture_ids(INFERENCE_INT4)).unwrap();
    assert!(streamed.is_streamed());
    assert!(!plain.is_streamed());
    assert_eq!(streamed.logprobs(), plain.logprobs());
    let validation = fixture_ids(VALIDATION_FP8);
    assert_eq!(compare_parsed(&streamed, &validation), compare_parsed(&plain, &validation));
}

// === value_decimal and response_hash ===

#[test]
fn value_decimal_is_the_shortest_decimal() {
    let cases = [
        (0.9987, 9987, -4),
        (0.0, 0, 0),
        (-0.0, 0, 0),
        (1.0, 1, 0),
        (0.5, 5, -1),
        (0.1, 1, -1),
        (100.0, 1, 2),
        (1234.5, 12345, -1),
        (-0.25, -25, -2),
        (0.995_000_000_049_5, 9_950_000_000_495, -13),
        (1.0 / 3.0, 3_333_333_333_333_333, -16),
        (0.1 + 0.2, 30_000_000_000_000_004, -17),
        (5e-324, 5, -324),
        (f64::MAX, 17_976_931_348_623_157, 292),
        // Exact ties between two 17-digit candidates round half to even, as in shopspring.
        (f64::from_bits(0x430e_1c6d_958d_7b72), 10_594_382_859_262_542, -1), // 1059438285926254.25
        (2f64.powi(-25), 29_802_322_387_695_312, -24),
    ];
    for (x, value, exponent) in cases {
        assert_eq!(value_decimal(x), ValueDecimal { value, exponent }, "{x:e}");
    }
}

#[test]
fn value_decimal_of_non_finite_is_zero() {
    for x in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        assert_eq!(value_decimal(x), ValueDecimal::ZERO);
    }
}

#[test]
fn value_decimal_serializes_as_the_chain_message_field() {
    let decimal = value_decimal(0.9987);
    assert_eq!(serde_json::to_value(decimal).unwrap(), json!({"value": 9987, "exponent": -4}));
}

#[test]
fn response_hash_is_sha256_hex_of_the_exact_bytes() {
    assert_eq!(response_hash(b""), "");
    assert_eq!(
        response_hash(b"abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    let body = fixture(VALIDATION);
    let mut changed = body.clone();
    changed.push(b'\n');
    assert_eq!(response_hash(&body).len(), 64);
    assert_ne!(response_hash(&body), response_hash(&changed));
}

// === Hostile input ===

#[test]
fn deeply_nested_json_is_an_error_not_a_stack_overflow() {
    let good = fixture(INFERENCE);
    for nested in deeply_nested() {
        let nested = nested.as_bytes();
        assert!(matches!(compare(&good, nested), Err(ScoringError::ValidationResponse(_))));
        assert!(matches!(compare(nested, &good), Err(ScoringError::Original(_))));
    }
    let deep_field = format!("{{\"choices\": [], \"junk\": {}}}", "[".repeat(DEEP));
    assert!(compare(&good, deep_field.as_bytes()).is_err());
}

#[test]
fn huge_numbers_are_handled() {
    let original = fixture(INFERENCE);
    let huge_token_count = br#"{"choices":[{"index":99999999999999999999999,"logprobs":null}]}"#;
    assert!(compare(&original, huge_token_count).is_err());
}

#[test]
fn truncated_and_corrupted_payloads_never_panic() {
    let good = fixture(INFERENCE_INT4);
    let parsed = CompletionResponse::from_payload(&good).unwrap();
    for payload in [good.clone(), streamed_from_plain(INFERENCE_INT4)] {
        for truncated in truncations(&payload) {
            assert!(compare_parsed(&parsed, truncated).is_err());
            assert!(compare(truncated, &good).is_err());
        }
        for corrupted in corruptions(&payload) {
            let _ = compare_parsed(&parsed, &corrupted);
            if let Ok(score) = compare(&corrupted, &good) {
                assert!((0.0..=1.0).contains(&score.value));
            }
        }
    }
}

// === Classic path ===

#[test]
fn token_ids_score_exactly_as_the_texts_they_stand_for() {
    let score = score_classic(&fixture_ids(INFERENCE_INT4), &fixture_ids(VALIDATION_FP8)).unwrap();
    assert_eq!(score, compare(&fixture(INFERENCE_INT4), &fixture(VALIDATION_FP8)).unwrap());
    assert_eq!(score.value.to_bits(), 0.966_889_424_668_501_8_f64.to_bits());
}

#[test]
fn the_classic_score_runs_the_classic_checks_first() {
    assert_eq!(
        score_classic(&fixture(INFERENCE_INT4), &fixture(VALIDATION_FP8)),
        Err(ScoringError::Original(InvalidInference::NonNumericToken {
            position: 0,
            token: "Okay".into()
        }))
    );
    let sentinel = plain(vec![position(EMPTY_SENTINEL, json!([top(EMPTY_SENTINEL, -1.0)]))]);
    assert_eq!(score_classic(&sentinel, &fixture(VALIDATION)), Ok(Score::invalid_inference()));
    let parsed = CompletionResponse::from_payload(&fixture_ids(INFERENCE_INT4)).unwrap();
    let answer = fixture_ids(VALIDATION_FP8);
    assert_eq!(score_classic_answer(&parsed, true, &answer), Ok(Score::invalid_inference()));
    assert_eq!(score_classic_answer(&parsed, false, &answer), compare_parsed(&parsed, &answer));
}
