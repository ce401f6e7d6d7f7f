//! Scoring (`validator_core::scoring`): the comparison of an original response with our node's
//! answer (the input split at a `0xff` byte), the comparison of arbitrary logprob lists (any
//! `f64`, NaN and infinities included, which JSON cannot carry), and the submitted decimal.
//!
//! Properties, as the module documents them: scoring is total. Every comparison returns a
//! verdict with a value in `[0, 1]`, never NaN; every verdict but `similarity` has value 0; a
//! comparison of raw bytes never yields `invalid` (that is the caller's verdict for an unusable
//! original); the decimal of a finite value reads back as that value, and of anything else is
//! zero. No panic; heap growth linear in the input.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use validator_core::{
    completion::{Logprob, TopLogprob},
    scoring::{self, compare_logprobs, value_decimal, Score, ValueDecimal, Verdict},
};
use validator_fuzz::{bounded, split};

fuzz_target!(|data: &[u8]| {
    bounded("scoring", data.len(), || run(data));
});

fn run(data: &[u8]) {
    let (original, validation) = split(data);
    if let Ok(score) = scoring::compare(original, validation) {
        check_score(score);
        assert_ne!(score.verdict, Verdict::Invalid);
    }

    let mut input = Unstructured::new(data);
    if let (Ok(original), Ok(validation)) = (positions(&mut input), positions(&mut input)) {
        let score = compare_logprobs(&original, &validation);
        check_score(score);
        if original.is_empty() {
            assert_eq!(score, Score { verdict: Verdict::Similarity, value: 1.0 });
        }
        if validation.len() < original.len() {
            assert_eq!(score.verdict, Verdict::DifferentLength);
        }
    }

    let x = f64::from_bits(u64::arbitrary(&mut input).unwrap_or_default());
    check_decimal(x, value_decimal(x));
}

fn check_score(score: Score) {
    assert!((0.0..=1.0).contains(&score.value), "{score:?}");
    if score.verdict != Verdict::Similarity {
        assert_eq!(score.value, 0.0, "{score:?}");
    }
    check_decimal(score.value, score.value_decimal());
}

fn check_decimal(x: f64, decimal: ValueDecimal) {
    if !x.is_finite() || x == 0.0 {
        assert_eq!(decimal, ValueDecimal::ZERO, "{x:e}");
        return;
    }
    assert!(decimal.value % 10 != 0, "{x:e}: {decimal:?} has a trailing zero");
    let read: f64 = format!("{}e{}", decimal.value, decimal.exponent).parse().expect("a decimal");
    assert_eq!(read.to_bits(), x.to_bits(), "{x:e}: {decimal:?}");
}

/// A list of positions whose tokens come from a small alphabet, so that original and validation
/// agree often enough for the similarity to be computed.
fn positions(input: &mut Unstructured<'_>) -> arbitrary::Result<Vec<Logprob>> {
    let len = input.int_in_range(0..=8)?;
    (0..len)
        .map(|_| {
            let top_logprobs = match input.int_in_range(0..=2)? {
                0 => None,
                1 => Some(Vec::new()),
                _ => {
                    let k = input.int_in_range(1..=6)?;
                    Some(
                        (0..k)
                            .map(|_| {
                                Ok(TopLogprob { token: token(input)?, logprob: float(input)? })
                            })
                            .collect::<arbitrary::Result<_>>()?,
                    )
                }
            };
            Ok(Logprob { token: token(input)?, logprob: float(input)?, top_logprobs })
        })
        .collect()
}

fn token(input: &mut Unstructured<'_>) -> arbitrary::Result<String> {
    Ok(["a", "b", "c", "d"][input.int_in_range(0..=3)?].to_owned())
}

/// Any `f64`, with the special values likelier than their share of bit patterns.
fn float(input: &mut Unstructured<'_>) -> arbitrary::Result<f64> {
    Ok(match input.int_in_range(0..=7)? {
        0 => f64::NAN,
        1 => f64::INFINITY,
        2 => f64::NEG_INFINITY,
        3 => 0.0,
        4 => -f64::from(input.int_in_range(0..=20u8)?) / 4.0,
        5 => -f64::MAX,
        _ => f64::from_bits(u64::arbitrary(input)?),
    })
}
