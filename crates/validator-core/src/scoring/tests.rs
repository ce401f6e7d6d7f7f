use rust_decimal::Decimal;
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

// === Devshard verdict ===

fn threshold(value: i64, exponent: i32) -> Decimal {
    threshold_from_decimal(value, exponent).unwrap()
}

fn judge(
    original: &[u8],
    answer: &[u8],
    input: u64,
    output: u64,
    pass: Decimal,
) -> DevshardVerdict {
    let original = CompletionResponse::from_payload(original).unwrap();
    judge_devshard(&original, answer, input, output, pass).unwrap()
}

fn detail<'a>(verdict: &'a DevshardVerdict, key: &str) -> Option<&'a str> {
    verdict.details.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

#[test]
fn a_devshard_similarity_passes_strictly_above_the_threshold() {
    let (original, answer) = (fixture(INFERENCE_INT4), fixture(VALIDATION_FP8));
    let verdict = judge(&original, &answer, 218, 100, threshold(90, -2));
    assert_eq!(verdict.reason, VerdictReason::SimilarityPass);
    assert!(verdict.valid());
    assert_eq!(verdict.similarity, Some(0.966_889_424_668_501_8));
    assert_eq!(verdict.threshold.as_deref(), Some("0.90"));
    assert_eq!(detail(&verdict, "similarity_decimal"), Some("9668894246685018e-16"));
    for (key, value) in [
        ("claimed_input_tokens", "218"),
        ("claimed_output_tokens", "100"),
        ("replay_input_tokens", "218"),
        ("replay_output_tokens", "100"),
    ] {
        assert_eq!(detail(&verdict, key), Some(value), "{key}");
    }
    // The similarity's decimal itself is not above it; a hair less is.
    let equal = judge(&original, &answer, 218, 100, threshold(9_668_894_246_685_018, -16));
    assert_eq!(equal.reason, VerdictReason::SimilarityBelow);
    assert!(!equal.valid());
    assert_eq!(equal.threshold.as_deref(), Some("0.9668894246685018"));
    let below = judge(&original, &answer, 218, 100, threshold(96_688_942_466_850_179, -17));
    assert_eq!(below.reason, VerdictReason::SimilarityPass);
    let above = judge(&original, &answer, 218, 100, threshold(97, -2));
    assert_eq!(above.reason, VerdictReason::SimilarityBelow);
    assert_eq!(above.similarity, Some(0.966_889_424_668_501_8));
}

#[test]
fn devshard_token_claims_may_exceed_the_replay_by_three() {
    let (original, answer) = (fixture(INFERENCE_INT4), fixture(VALIDATION_FP8));
    let pass = threshold(90, -2);
    for (input, output, inflated) in [
        (218, 100, false),
        (221, 103, false),
        (0, 0, false),
        (222, 100, true),
        (218, 104, true),
        (u64::MAX, 100, true),
    ] {
        let verdict = judge(&original, &answer, input, output, pass);
        assert_eq!(verdict.reason == VerdictReason::InflatedTokens, inflated, "{input}/{output}");
        if inflated {
            assert_eq!(verdict.similarity, None);
            assert_eq!(verdict.threshold, None);
            assert_eq!(detail(&verdict, "claimed_input_tokens"), Some(input.to_string().as_str()));
            assert_eq!(detail(&verdict, "replay_output_tokens"), Some("100"));
        }
    }
}

#[test]
fn devshard_inflation_is_judged_before_the_tokens() {
    let mut answer = fixture_value(VALIDATION_FP8);
    content_mut(&mut answer)[3]["token"] = json!("Different");
    let answer = to_bytes(&answer);
    let pass = threshold(90, -2);
    let original = fixture(INFERENCE_INT4);
    assert_eq!(judge(&original, &answer, 218, 100, pass).reason, VerdictReason::DifferentTokens);
    assert_eq!(judge(&original, &answer, 218, 200, pass).reason, VerdictReason::InflatedTokens);
}

#[test]
fn devshard_without_replay_usage_skips_the_token_check() {
    let original = fixture(INFERENCE_INT4);
    for usage in [Value::Null, json!({"prompt_tokens": 0, "completion_tokens": 0})] {
        let mut answer = fixture_value(VALIDATION_FP8);
        answer["usage"] = usage;
        let verdict = judge(&original, &to_bytes(&answer), 1_000_000, 1_000_000, threshold(9, -1));
        assert_eq!(verdict.reason, VerdictReason::SimilarityPass);
        assert_eq!(detail(&verdict, "replay_usage"), Some("absent"));
        assert_eq!(detail(&verdict, "replay_input_tokens"), None);
    }
    // One count is enough to make it a usage: a zero prompt count then flags any claimed input.
    let mut answer = fixture_value(VALIDATION_FP8);
    answer["usage"] = json!({"completion_tokens": 100});
    let verdict = judge(&original, &to_bytes(&answer), 4, 100, threshold(9, -1));
    assert_eq!(verdict.reason, VerdictReason::InflatedTokens);
}

#[test]
fn devshard_comparison_failures_are_invalid_verdicts() {
    let original = fixture(INFERENCE_INT4);
    let pass = threshold(90, -2);
    let mut short = fixture_value(VALIDATION_FP8);
    content_mut(&mut short).truncate(99);
    let verdict = judge(&original, &to_bytes(&short), 218, 100, pass);
    assert_eq!(verdict.reason, VerdictReason::DifferentLength);
    assert_eq!((verdict.similarity, verdict.threshold), (None, None));
    let mut broken_top = fixture_value(VALIDATION_FP8);
    content_mut(&mut broken_top)[5]["top_logprobs"] = json!([]);
    let verdict = judge(&original, &to_bytes(&broken_top), 218, 100, pass);
    assert_eq!(verdict.reason, VerdictReason::SimilarityBelow, "an empty top list scores 0");
    assert_eq!(verdict.similarity, Some(0.0));
}

#[test]
fn devshard_judges_empty_logprobs_as_upstream_does() {
    // Upstream's devshard path has no "no logits" error: nothing against nothing is similarity
    // 1, and an answer without positions is shorter than any original with some.
    let bare = to_bytes(
        &json!({"choices": [{"message": {"content": "hi"}}], "usage": {"prompt_tokens": 5, "completion_tokens": 1}}),
    );
    let pass = threshold(90, -2);
    let verdict = judge(&bare, &bare, 5, 1, pass);
    assert_eq!(verdict.reason, VerdictReason::SimilarityPass);
    assert_eq!(verdict.similarity, Some(1.0));
    assert_eq!(
        judge(&fixture(INFERENCE), &bare, 5, 1, pass).reason,
        VerdictReason::DifferentLength
    );
}

#[test]
fn a_devshard_answer_we_cannot_read_is_our_error_not_a_verdict() {
    let original = CompletionResponse::from_payload(&fixture(INFERENCE_INT4)).unwrap();
    let nan = String::from_utf8(fixture(VALIDATION_FP8)).unwrap().replacen(
        "\"logprob\": ",
        "\"logprob\": NaN, \"x\": ",
        1,
    );
    for bad in [
        &b""[..],
        b"<html>",
        b"[1]",
        nan.as_bytes(),
        br#"{"choices":[{"logprobs":{"content":[{"token":"a","logprob":1e400}]}}]}"#,
        br#"{"choices":[{"logprobs":{"content":[{"token":"a","logprob":-Infinity}]}}]}"#,
        br#"{"choices":[],"usage":{"prompt_tokens":-1}}"#,
    ] {
        assert!(
            matches!(
                judge_devshard(&original, bad, 0, 0, threshold(9, -1)),
                Err(ScoringError::ValidationResponse(_))
            ),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn extreme_logprobs_in_our_answer_never_pass_a_devshard_check() {
    let original = fixture(INFERENCE_INT4);
    for extreme in [f64::MAX, -f64::MAX, 1e300, -1e-300] {
        let mut answer = fixture_value(VALIDATION_FP8);
        for position in content_mut(&mut answer) {
            for top in position["top_logprobs"].as_array_mut().unwrap() {
                top["logprob"] = json!(extreme);
            }
        }
        let verdict = judge(&original, &to_bytes(&answer), 218, 100, threshold(90, -2));
        assert_eq!(verdict.reason, VerdictReason::SimilarityBelow, "{extreme:e}");
        let similarity = verdict.similarity.unwrap();
        assert!((0.0..0.9).contains(&similarity), "{extreme:e}: {similarity}");
    }
}

#[test]
fn non_finite_similarities_are_judged_as_zero() {
    // Not reachable through JSON, which holds no NaN or infinity; still never a panic, and the
    // same rule as upstream: a similarity of 0 passes only a negative threshold.
    for similarity in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 0.0] {
        let decimal = value_decimal(similarity);
        assert!(!decimal_greater(decimal, threshold(90, -2)));
        assert!(!decimal_greater(decimal, Decimal::ZERO));
        assert!(decimal_greater(decimal, threshold(-1, -2)));
    }
}

#[test]
fn decimals_compare_exactly() {
    use std::cmp::Ordering::{Equal, Greater, Less};
    let cases = [
        ((1, 0), (10, -1), Equal),
        ((1, 0), (1, 0), Equal),
        ((0, 5), (0, -7), Equal),
        ((5, -1), (49, -2), Greater),
        ((5, -1), (51, -2), Less),
        ((-5, -1), (-49, -2), Less),
        ((-1, 0), (0, 0), Less),
        ((0, 0), (-1, -300), Greater),
        ((1, -324), (0, 0), Greater),
        ((11_102_230_246_251_565, -32), (1, -28), Greater),
        ((11_102_230_246_251_565, -32), (1, -15), Less),
        ((9_668_894_246_685_018, -16), (9_668_894_246_685_018_000, -19), Equal),
        ((9_668_894_246_685_019, -16), (96_688_942_466_850_181, -17), Greater),
        ((1, 300), (i128::MAX, 0), Greater),
    ];
    for (a, b, expected) in cases {
        assert_eq!(compare_decimals(a, b), expected, "{a:?} vs {b:?}");
        assert_eq!(compare_decimals(b, a), expected.reverse(), "{b:?} vs {a:?}");
    }
    // A similarity finer than a Decimal's 28 places still compares exactly.
    let tiny = value_decimal(1.0 - 0.999_999_999_999_999_9);
    assert_eq!(tiny, ValueDecimal { value: 11_102_230_246_251_565, exponent: -32 });
    assert!(decimal_greater(tiny, Decimal::ZERO));
    assert!(decimal_greater(tiny, threshold(1_110_223_024_625, -28)));
    assert!(!decimal_greater(tiny, threshold(1_110_223_024_626, -28)));
}

#[test]
fn thresholds_convert_from_the_chain_decimal_exactly() {
    let cases: [((i64, i32), Option<&str>); 16] = [
        ((90, -2), Some("0.90")),
        ((-93, -2), Some("-0.93")),
        ((1, 0), Some("1")),
        ((5, 3), Some("5000")),
        ((0, 0), Some("0")),
        ((0, 99), Some("0")),
        ((0, -99), Some("0")),
        ((1, -28), Some("0.0000000000000000000000000001")),
        ((1000, -30), Some("0.0000000000000000000000000010")),
        ((1, 28), Some("10000000000000000000000000000")),
        ((i64::MAX, 0), Some("9223372036854775807")),
        ((i64::MIN, 0), Some("-9223372036854775808")),
        ((1, -29), None),
        ((1, 29), None),
        ((1, i32::MAX), None),
        ((1, i32::MIN), None),
    ];
    for ((value, exponent), expected) in cases {
        let converted = threshold_from_decimal(value, exponent).map(|d| d.to_string());
        assert_eq!(converted.as_deref(), expected, "{value}e{exponent}");
    }
    assert_eq!(threshold_from_decimal(i64::MAX, 10), None, "beyond 2^96");
}
