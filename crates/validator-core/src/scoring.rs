//! Scoring: the comparison of our ML node's logprobs with the executor's, the numbers that go
//! into `MsgValidation` (DOMAIN.md 2.7, 2.8) and the devshard verdict (LIVE-NETWORK.md 2.2 item
//! 4). Both responses are read by [`crate::completion`].
//!
//! It re-implements upstream's `CompareLogits` and `DecimalFromFloat`, the outcomes of
//! `validateWithPayloads` (gonka-ai/gonka,
//! `decentralized-api/internal/validation/inference_validation.go`) and devshard's
//! `EvaluateValidationResponse` (`decentralized-api/internal/devshard/shared_runtime.go`). The
//! floating-point operations run in upstream's order, so scores match it bit for bit.
//!
//! Fault attribution follows upstream: see [`InvalidInference`] and [`ScoringError`].

use std::{borrow::Borrow, cmp::Ordering, collections::HashMap, fmt};

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{
    completion::{self, CompletionResponse, InvalidInference, Logprob, TopLogprob},
    devshard::{DevshardVerdict, VerdictReason},
};

/// Above this similarity upstream logs a local success. It is only logged: the chain applies the
/// model's own threshold to the submitted value.
pub const LOCAL_SUCCESS_THRESHOLD: f64 = 0.99;

/// Added to every denominator of the per-token distance, so that two zero logprobs compare as
/// equal instead of dividing zero by zero.
const DISTANCE_EPSILON: f64 = 1e-6;

/// A position's distance is divided by at least this many positions, which dilutes short answers
/// towards similarity 1 (an upstream property that must be kept for bit-compatibility).
const MIN_POSITIONS_DIVISOR: usize = 100;

/// With a single entry `m1` in the original's top list, upstream takes the second smallest to be
/// `m1 - 100`; the extrapolation `m1 - (m2 - m1)` for unlisted tokens then lands at `m1 + 100`,
/// above the entry instead of below it. Kept as is for bit-compatibility.
const SINGLE_ENTRY_GAP: f64 = 100.0;

/// How many tokens the executor may claim beyond the replay's usage before a devshard verdict
/// calls it inflation: upstream's `tokenCountTolerance`, slack for tokenisation drift between
/// the executor's and our run.
pub const TOKEN_COUNT_TOLERANCE: u64 = 3;

/// The most decimal places a [`Decimal`] holds.
const MAX_DECIMAL_SCALE: i32 = 28;

// === ValueDecimal ===

/// A decimal `value * 10^exponent`: the `inference.Decimal` of `MsgValidation.value_decimal`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ValueDecimal {
    /// The coefficient.
    pub value: i64,
    /// The power of ten.
    pub exponent: i32,
}

impl ValueDecimal {
    /// Zero, as upstream writes it: `{0, 0}`.
    pub const ZERO: ValueDecimal = ValueDecimal { value: 0, exponent: 0 };
}

/// The shortest decimal that round-trips to `x`, as shopspring's `decimal.NewFromFloat` builds it
/// upstream: the coefficient has no trailing zeros (`0.9987` is `{9987, -4}`, `1` is `{1, 0}`,
/// `100` is `{1, 2}`) and zero is `{0, 0}`.
///
/// Non-finite input gives [`ValueDecimal::ZERO`]; upstream panics instead, but a score is never
/// non-finite because [`compare_logprobs`] maps such similarities to 0.
pub fn value_decimal(x: f64) -> ValueDecimal {
    if !x.is_finite() || x == 0.0 {
        return ValueDecimal::ZERO;
    }
    // `{:e}` prints the fewest digits that round-trip (at most 17, so the coefficient fits an
    // i64), but breaks an exact tie between two such decimals upwards, where shopspring rounds
    // half to even. Rust's fixed-precision formatting does round half to even, so reprint with
    // that many digits and keep the result whenever it still round-trips.
    let shortest = format!("{x:e}");
    let digits = mantissa_digits(&shortest);
    let even = format!("{x:.precision$e}", precision = digits.saturating_sub(1));
    let text = if even.parse::<f64>() == Ok(x) { even } else { shortest };
    parse_scientific(&text).unwrap_or(ValueDecimal::ZERO)
}

fn mantissa_digits(scientific: &str) -> usize {
    scientific.bytes().take_while(|&byte| byte != b'e').filter(u8::is_ascii_digit).count()
}

/// Reads Rust's `{:e}` output (`-9.987e-1`) as a decimal without trailing zeros.
fn parse_scientific(text: &str) -> Option<ValueDecimal> {
    let (mantissa, exponent) = text.split_once('e')?;
    let mut exponent = exponent.parse::<i32>().ok()?;
    let mut value: i64 = 0;
    for byte in mantissa.bytes().filter(u8::is_ascii_digit) {
        value = value.checked_mul(10)?.checked_add(i64::from(byte - b'0'))?;
    }
    let digits = i32::try_from(mantissa_digits(mantissa)).ok()?;
    exponent = exponent.checked_sub(digits - 1)?;
    while value != 0 && value % 10 == 0 {
        value /= 10;
        exponent += 1;
    }
    if mantissa.starts_with('-') {
        value = -value;
    }
    Some(ValueDecimal { value, exponent })
}

/// `MsgValidation.response_hash`: the lowercase SHA-256 hex of the exact response bytes, or ""
/// when there are none (the 400/422 pass and invalid inferences).
pub fn response_hash(body: &[u8]) -> String {
    if body.is_empty() {
        return String::new();
    }
    let digest = Sha256::digest(body);
    let mut hex = String::with_capacity(digest.len() * 2);
    for byte in digest {
        hex.push(HEX_DIGITS[usize::from(byte >> 4)]);
        hex.push(HEX_DIGITS[usize::from(byte & 0x0f)]);
    }
    hex
}

const HEX_DIGITS: [char; 16] =
    ['0', '1', '2', '3', '4', '5', '6', '7', '8', '9', 'a', 'b', 'c', 'd', 'e', 'f'];

// === Error ===

/// Why a comparison could not be made on our side. The engine retries; never an invalidation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScoringError {
    /// Our ML node's answer is not a chat completion.
    #[error("validation response is not a chat completion: {0}")]
    ValidationResponse(String),
    /// The original response carries no logprobs.
    #[error("original response has no logprobs")]
    NoOriginalLogprobs,
    /// Our ML node's answer carries no logprobs.
    #[error("validation response has no logprobs")]
    NoValidationLogprobs,
    /// The original payload itself is unusable. Only [`compare`] and [`score_classic`] on raw
    /// bytes reach this, as the engine checks the original before replaying; it is the executor's
    /// fault, not ours.
    #[error(transparent)]
    Original(#[from] InvalidInference),
}

// === Comparison ===

/// How a comparison came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Same tokens; the value is the similarity.
    Similarity,
    /// Our output is shorter than the original; value 0.
    DifferentLength,
    /// A token differs; value 0.
    DifferentTokens,
    /// The executor's payloads are unusable; value 0.
    Invalid,
}

impl Verdict {
    /// Stable snake-case name, for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Similarity => "similarity",
            Verdict::DifferentLength => "different_length",
            Verdict::DifferentTokens => "different_tokens",
            Verdict::Invalid => "invalid",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The result of a validation: what gets submitted as the value.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Score {
    /// How the comparison came out.
    pub verdict: Verdict,
    /// The similarity to submit, in `[0, 1]`.
    pub value: f64,
}

impl Score {
    /// The executor's payloads are unusable ([`InvalidInference`]): value 0.
    pub const fn invalid_inference() -> Self {
        Self { verdict: Verdict::Invalid, value: 0.0 }
    }

    /// Our ML node refused the replay with 400 or 422: upstream counts it as passed, value 1 (the
    /// original may itself have been rejected upstream). Submit it with an empty response hash.
    pub const fn rejected_by_node() -> Self {
        Self { verdict: Verdict::Similarity, value: 1.0 }
    }

    /// The value as submitted.
    pub fn value_decimal(&self) -> ValueDecimal {
        value_decimal(self.value)
    }

    /// Upstream's local success test, used only for logging: a similarity above
    /// [`LOCAL_SUCCESS_THRESHOLD`].
    pub fn is_local_success(&self) -> bool {
        self.verdict == Verdict::Similarity && self.value > LOCAL_SUCCESS_THRESHOLD
    }
}

/// Compares the executor's response payload with our ML node's answer (DOMAIN.md 2.7).
///
/// An unparsable answer, or no logprobs on either side, is a [`ScoringError`]. An unparsable
/// original is [`ScoringError::Original`].
pub fn compare(
    original_response: &[u8],
    validation_response: &[u8],
) -> Result<Score, ScoringError> {
    let original = CompletionResponse::from_payload(original_response)?;
    compare_parsed(&original, validation_response)
}

/// [`compare`] with the original response already parsed.
pub fn compare_parsed(
    original: &CompletionResponse,
    validation_response: &[u8],
) -> Result<Score, ScoringError> {
    let validation = CompletionResponse::from_json(validation_response)
        .map_err(|err| ScoringError::ValidationResponse(err.to_string()))?;
    let original = original.logprobs();
    let validation = validation.logprobs();
    if original.is_empty() {
        return Err(ScoringError::NoOriginalLogprobs);
    }
    if validation.is_empty() {
        return Err(ScoringError::NoValidationLogprobs);
    }
    Ok(compare_logprobs(&original, &validation))
}

/// Scores our ML node's successful (2xx) answer to a classic replay, as upstream's
/// `validateWithPayloads` does: an [`completion::EMPTY_SENTINEL`] original
/// (`empty_sentinel`, from [`completion::ClassicReplay`]) is an invalid inference, since the
/// prompt the executor failed was servable; otherwise [`compare_parsed`].
pub fn score_classic_answer(
    original: &CompletionResponse,
    empty_sentinel: bool,
    answer: &[u8],
) -> Result<Score, ScoringError> {
    if empty_sentinel {
        return Ok(Score::invalid_inference());
    }
    compare_parsed(original, answer)
}

/// The classic path's checks and score of an executor's response payload against our ML node's
/// successful answer, without the prompt: the original parsed
/// ([`CompletionResponse::from_payload`]), the classic checks ([`completion::classic_enforcement`],
/// a failure being [`ScoringError::Original`]), then [`score_classic_answer`]. The engine runs
/// the same functions around its replay.
pub fn score_classic(original_response: &[u8], answer: &[u8]) -> Result<Score, ScoringError> {
    let original = CompletionResponse::from_payload(original_response)?;
    let enforcement = completion::classic_enforcement(&original)?;
    score_classic_answer(&original, enforcement.is_empty_sentinel(), answer)
}

/// Compares two lists of positions: upstream's `CompareLogits`.
///
/// A shorter `validation` is [`Verdict::DifferentLength`] and a token mismatch within the first
/// `original.len()` positions is [`Verdict::DifferentTokens`], both with value 0; extra
/// validation positions are ignored. Otherwise the value is `1 - distance`, or 0 when a top list
/// at some position is missing or empty, or when the result is not a finite number in `[0, 1]`.
/// Two empty lists score 1, as upstream's distance is 0 for no positions; [`compare_parsed`]
/// refuses empty lists before it gets here.
pub fn compare_logprobs<O, V>(original: &[O], validation: &[V]) -> Score
where
    O: Borrow<Logprob>,
    V: Borrow<Logprob>,
{
    if validation.len() < original.len() {
        return Score { verdict: Verdict::DifferentLength, value: 0.0 };
    }
    let same_tokens =
        original.iter().zip(validation).all(|(o, v)| o.borrow().token == v.borrow().token);
    if !same_tokens {
        return Score { verdict: Verdict::DifferentTokens, value: 0.0 };
    }
    Score { verdict: Verdict::Similarity, value: similarity(original, validation) }
}

fn similarity<O: Borrow<Logprob>, V: Borrow<Logprob>>(original: &[O], validation: &[V]) -> f64 {
    let Some(distance) = distance(original, validation) else {
        return 0.0;
    };
    if !distance.is_finite() {
        return 0.0;
    }
    let similarity = 1.0 - distance;
    if similarity < 0.0 {
        0.0
    } else {
        similarity
    }
}

/// The summed position distances over `max(100, N) * K`, K being the length of the original's
/// first top list (left out when 0). `None` when a top list is missing or empty.
fn distance<O: Borrow<Logprob>, V: Borrow<Logprob>>(
    original: &[O],
    validation: &[V],
) -> Option<f64> {
    let Some(first) = original.first() else {
        return Some(0.0);
    };
    let mut sum = 0.0;
    for (o, v) in original.iter().zip(validation) {
        sum += position_distance(top_list(o.borrow()), top_list(v.borrow()))?;
    }
    let mut divisor = original.len().max(MIN_POSITIONS_DIVISOR);
    let k = top_list(first.borrow()).len();
    if k > 0 {
        divisor = divisor.saturating_mul(k);
    }
    Some(sum / divisor as f64)
}

fn top_list(position: &Logprob) -> &[TopLogprob] {
    position.top_logprobs.as_deref().unwrap_or_default()
}

/// Sum over our top tokens of `|v - o| / (1e-6 + |v| + |o|) / 2`, with `o` the original's logprob
/// for that token or, when the original does not list it, `m1 - (m2 - m1)` extrapolated from the
/// original's two smallest logprobs. Terms with a NaN or zero denominator, and NaN terms, count 0.
fn position_distance(original: &[TopLogprob], validation: &[TopLogprob]) -> Option<f64> {
    if original.is_empty() || validation.is_empty() {
        return None;
    }
    // A token listed twice keeps its last logprob, as in upstream's map.
    let mut by_token: HashMap<&str, f64> = HashMap::with_capacity(original.len());
    for top in original {
        by_token.insert(top.token.as_str(), top.logprob);
    }
    let mut sorted: Vec<f64> = by_token.values().copied().collect();
    sorted.sort_by(go_float_order);
    let (min1, min2) = match sorted.as_slice() {
        [first, second, ..] => (*first, *second),
        [only] => (*only, *only - SINGLE_ENTRY_GAP),
        [] => (0.0, 0.0),
    };
    let missing = min1 - (min2 - min1);

    let mut distance = 0.0;
    for top in validation {
        let v = top.logprob;
        let o = by_token.get(top.token.as_str()).copied().unwrap_or(missing);
        let denominator = DISTANCE_EPSILON + v.abs() + o.abs();
        if denominator.is_nan() || denominator == 0.0 {
            continue;
        }
        let term = (v - o).abs() / denominator / 2.0;
        if !term.is_nan() {
            distance += term;
        }
    }
    Some(distance)
}

// === Devshard verdict ===

/// Judges our ML node's answer to a devshard replay (LIVE-NETWORK.md 2.2 item 4), as upstream's
/// `EvaluateValidationResponse` does after a non-400/422 answer (the engine turns 400 and 422
/// into [`VerdictReason::MlRejected`] without calling this):
///
/// 1. The answer must be a chat completion, else a [`ScoringError`] (our side: no verdict).
/// 2. When the answer reports a usage (one count at least non-zero; without one the check is
///    skipped, as upstream), claimed `input_tokens` or `output_tokens` more than
///    [`TOKEN_COUNT_TOLERANCE`] above its `prompt_tokens` or `completion_tokens` is
///    [`VerdictReason::InflatedTokens`]. This comes before the comparison.
/// 3. [`compare_logprobs`] on the two responses' positions, with no check that either has any
///    (upstream has none here: two empty lists score 1): a shorter answer is
///    [`VerdictReason::DifferentLength`], a token mismatch [`VerdictReason::DifferentTokens`].
/// 4. A similarity passes ([`VerdictReason::SimilarityPass`]) iff its decimal ([`value_decimal`],
///    upstream's `DecimalFromFloat`) is strictly greater than `threshold`, compared exactly;
///    else [`VerdictReason::SimilarityBelow`].
///
/// The verdict carries the similarity and the threshold when they were compared, and the claimed
/// and replayed token counts in its details.
pub fn judge_devshard(
    original: &CompletionResponse,
    replay_answer: &[u8],
    input_tokens: u64,
    output_tokens: u64,
    threshold: Decimal,
) -> Result<DevshardVerdict, ScoringError> {
    let replay = CompletionResponse::from_json(replay_answer)
        .map_err(|err| ScoringError::ValidationResponse(err.to_string()))?;
    let mut details = vec![
        ("claimed_input_tokens".to_owned(), input_tokens.to_string()),
        ("claimed_output_tokens".to_owned(), output_tokens.to_string()),
    ];
    match replay.usage() {
        Some(usage) => {
            details.push(("replay_input_tokens".to_owned(), usage.prompt_tokens.to_string()));
            details.push(("replay_output_tokens".to_owned(), usage.completion_tokens.to_string()));
            if inflated(input_tokens, usage.prompt_tokens)
                || inflated(output_tokens, usage.completion_tokens)
            {
                let mut verdict = DevshardVerdict::new(VerdictReason::InflatedTokens);
                verdict.details = details;
                return Ok(verdict);
            }
        }
        None => details.push(("replay_usage".to_owned(), "absent".to_owned())),
    }
    let score = compare_logprobs(&original.logprobs(), &replay.logprobs());
    let mut verdict = match score.verdict {
        Verdict::DifferentLength => DevshardVerdict::new(VerdictReason::DifferentLength),
        Verdict::DifferentTokens => DevshardVerdict::new(VerdictReason::DifferentTokens),
        Verdict::Invalid => DevshardVerdict::new(VerdictReason::InvalidInference),
        Verdict::Similarity => {
            let decimal = value_decimal(score.value);
            let reason = if decimal_greater(decimal, threshold) {
                VerdictReason::SimilarityPass
            } else {
                VerdictReason::SimilarityBelow
            };
            details.push((
                "similarity_decimal".to_owned(),
                format!("{}e{}", decimal.value, decimal.exponent),
            ));
            let mut verdict = DevshardVerdict::new(reason);
            verdict.similarity = Some(score.value);
            verdict.threshold = Some(threshold.to_string());
            verdict
        }
    };
    verdict.details = details;
    Ok(verdict)
}

/// Upstream's `tokenCountInflated`: more than [`TOKEN_COUNT_TOLERANCE`] tokens claimed beyond the
/// replay's count.
fn inflated(claimed: u64, replayed: u64) -> bool {
    claimed.saturating_sub(replayed) > TOKEN_COUNT_TOLERANCE
}

/// The chain's `Decimal{value, exponent}` (`value × 10^exponent`, a model's
/// `validation_threshold`) as a [`Decimal`], exactly; `None` when it does not fit one (more than
/// 28 decimal places after dropping trailing zeros, or a magnitude of 2^96 or more).
pub fn threshold_from_decimal(value: i64, exponent: i32) -> Option<Decimal> {
    if value == 0 {
        return Some(Decimal::ZERO);
    }
    let mut value = i128::from(value);
    let mut exponent = exponent;
    while exponent < -MAX_DECIMAL_SCALE && value % 10 == 0 {
        value /= 10;
        exponent += 1;
    }
    if exponent <= 0 {
        let scale = u32::try_from(exponent.checked_neg()?).ok()?;
        return Decimal::try_from_i128_with_scale(value, scale).ok();
    }
    let factor = 10_i128.checked_pow(u32::try_from(exponent).ok()?)?;
    Decimal::try_from_i128_with_scale(value.checked_mul(factor)?, 0).ok()
}

/// Whether `similarity` is strictly greater than `threshold`, compared exactly, as shopspring's
/// `GreaterThan` compares (a similarity's decimal may have more places than a [`Decimal`] holds).
fn decimal_greater(similarity: ValueDecimal, threshold: Decimal) -> bool {
    let threshold_exponent = -i64::from(threshold.scale());
    let similarity = (i128::from(similarity.value), i64::from(similarity.exponent));
    compare_decimals(similarity, (threshold.mantissa(), threshold_exponent)) == Ordering::Greater
}

/// Orders two decimals `mantissa × 10^exponent` exactly.
fn compare_decimals(a: (i128, i64), b: (i128, i64)) -> Ordering {
    let by_sign = a.0.signum().cmp(&b.0.signum());
    if by_sign != Ordering::Equal || a.0 == 0 {
        return by_sign;
    }
    let (a_digits, a_magnitude) = normalized(a.0.unsigned_abs(), a.1);
    let (b_digits, b_magnitude) = normalized(b.0.unsigned_abs(), b.1);
    // Same leading-digit position: without trailing zeros, the digit strings order the values.
    let by_magnitude = a_magnitude.cmp(&b_magnitude).then_with(|| a_digits.cmp(&b_digits));
    if a.0 < 0 {
        by_magnitude.reverse()
    } else {
        by_magnitude
    }
}

/// A non-zero `mantissa × 10^exponent` as its digits without trailing zeros and the power of ten
/// of its leading digit.
fn normalized(mut mantissa: u128, mut exponent: i64) -> (String, i64) {
    while mantissa.is_multiple_of(10) {
        mantissa /= 10;
        exponent += 1;
    }
    let digits = mantissa.to_string();
    let leading = exponent + digits.len() as i64 - 1;
    (digits, leading)
}

/// Go's `sort.Float64s` order: NaN before everything else.
fn go_float_order(a: &f64, b: &f64) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        (false, false) => a.partial_cmp(b).unwrap_or(Ordering::Equal),
    }
}

#[cfg(test)]
mod tests;
