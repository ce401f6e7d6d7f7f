//! Scoring: the replay request sent to our own ML node, the comparison of its logprobs with the
//! executor's, and the numbers that go into `MsgValidation` (DOMAIN.md 2.6-2.8, 6.3, 6.4).
//!
//! This module performs no IO. It re-implements upstream's `validateWithPayloads`,
//! `CompareLogits` and `DecimalFromFloat` (gonka-ai/gonka,
//! `decentralized-api/internal/validation/inference_validation.go`) together with the
//! enforced-token and logit extraction of `decentralized-api/completionapi/completionresponse.go`.
//! The floating-point operations run in upstream's order, so scores match it bit for bit.
//!
//! Fault attribution follows upstream:
//! - [`InvalidInference`]: the executor's payloads are unusable; the engine submits
//!   [`Score::invalid_inference`] (value 0).
//! - [`ScoringError`]: our own side failed (bad ML-node answer, missing logprobs); the engine
//!   retries and never turns it into an invalidation.
//!
//! Known differences from upstream's Go JSON decoding, none of which vLLM output triggers:
//! - Only the fields scoring reads are type-checked; Go also rejects, say, a non-integer `bytes`.
//! - serde reads an array where an object is expected, rejects duplicate keys (Go keeps the last)
//!   and matches keys case-sensitively (Go falls back to a case-insensitive match).
//! - Invalid UTF-8 and lone surrogate escapes in strings are errors (Go substitutes U+FFFD).
//! - Without serde_json's `float_roundtrip` feature a logprob with 17 significant digits may be
//!   read one ulp off, where Go rounds correctly; the fixtures' golden values are unaffected.
//! - Prompt integers beyond 2^53 pass through exactly (Go rounds them through `float64`).

use std::{borrow::Borrow, cmp::Ordering, collections::HashMap, fmt};

use serde::{de::IgnoredAny, Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

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

// === Errors ===

/// Why the executor's payloads cannot be replayed. The executor's fault: the engine submits
/// [`Score::invalid_inference`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidInference {
    /// The prompt payload is not a JSON object.
    #[error("prompt payload is not a json object: {0}")]
    Prompt(String),
    /// The response payload is neither a chat completion nor a streamed one.
    #[error("response payload is not a chat completion: {0}")]
    Response(String),
    /// A plain response without any choice.
    #[error("response has no choices")]
    NoChoices,
    /// A plain response position whose `top_logprobs` is present but empty.
    #[error("response has a position with an empty top logprobs list")]
    EmptyTopLogprobs,
    /// A streamed response without any chunk.
    #[error("streamed response has no chunks")]
    NoChunks,
    /// A streamed chunk whose choice has a present but empty `logprobs.content`.
    #[error("streamed response has a chunk with empty logprobs content")]
    EmptyLogprobsContent,
    /// A streamed response from which not a single token could be taken.
    #[error("streamed response has no tokens")]
    NoTokens,
}

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
    /// The original payload itself is unusable. Only [`compare`] on raw bytes reaches this, as the
    /// engine parses the original before replaying; it is the executor's fault, not ours.
    #[error(transparent)]
    Original(#[from] InvalidInference),
}

// === Parsed responses ===

/// One alternative at a position of `logprobs.content[*].top_logprobs`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct TopLogprob {
    /// The token text.
    #[serde(default, deserialize_with = "null_as_default")]
    pub token: String,
    /// Its log probability.
    #[serde(default, deserialize_with = "null_as_default")]
    pub logprob: f64,
}

/// One output position of `choices[*].logprobs.content`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Logprob {
    /// The chosen token.
    #[serde(default, deserialize_with = "null_as_default")]
    pub token: String,
    /// Its log probability.
    #[serde(default, deserialize_with = "null_as_default")]
    pub logprob: f64,
    /// The alternatives, most likely first. `None` when absent or null, which upstream tells
    /// apart from a present but empty list.
    #[serde(default, deserialize_with = "nullable_items")]
    pub top_logprobs: Option<Vec<TopLogprob>>,
}

/// A chat completion as scoring reads it: either a plain one, or the chunks of a streamed one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CompletionResponse {
    /// One entry for a plain response; the parsed `data:` lines, in order, for a streamed one.
    chunks: Vec<Completion>,
    streamed: bool,
}

impl CompletionResponse {
    /// Parses an executor's response payload: a streamed one if it is a JSON object with an
    /// `events` key (`{"events": ["data: {chunk}", …, "data: [DONE]"]}`), else a plain chat
    /// completion (DOMAIN.md 6.3).
    pub fn from_payload(payload: &[u8]) -> Result<Self, InvalidInference> {
        let invalid = |err: serde_json::Error| InvalidInference::Response(err.to_string());
        // Like upstream, first read the payload as a generic object just to look for `events`.
        let keys: Option<HashMap<String, IgnoredAny>> =
            serde_json::from_slice(payload).map_err(invalid)?;
        if !keys.is_some_and(|keys| keys.contains_key("events")) {
            return Self::from_json(payload).map_err(invalid);
        }
        let envelope: StreamEnvelope = serde_json::from_slice(payload).map_err(invalid)?;
        let mut chunks = Vec::new();
        for event in &envelope.events {
            let line = event.trim();
            let line = line.strip_prefix("data:").unwrap_or(line).trim();
            if line.is_empty() || line == "[DONE]" {
                continue;
            }
            let chunk: Option<Completion> = serde_json::from_str(line).map_err(invalid)?;
            chunks.push(chunk.unwrap_or_default());
        }
        Ok(Self { chunks, streamed: true })
    }

    /// Parses a plain (non-streamed) chat completion, as our ML node answers a replay.
    pub fn from_json(body: &[u8]) -> Result<Self, serde_json::Error> {
        let completion: Option<Completion> = serde_json::from_slice(body)?;
        Ok(Self { chunks: vec![completion.unwrap_or_default()], streamed: false })
    }

    /// Whether this was a streamed response.
    pub fn is_streamed(&self) -> bool {
        self.streamed
    }

    /// Every position of every choice, concatenated in order (for a streamed response, across
    /// all chunks): upstream's `ExtractLogits`.
    pub fn logprobs(&self) -> Vec<&Logprob> {
        self.chunks
            .iter()
            .flat_map(|chunk| &chunk.choices)
            .flat_map(|choice| choice.logprobs.content.iter().flatten())
            .collect()
    }

    /// The tokens the replay must reproduce: upstream's `GetEnforcedTokens`.
    ///
    /// Plain response: the positions of the *first* choice; positions whose `top_logprobs` is
    /// absent or null are skipped; no choice, or a present but empty top list, is invalid.
    ///
    /// Streamed response: the *first* position of every choice of every chunk; choices whose
    /// `logprobs.content` is absent or null are skipped and a present but empty one is invalid;
    /// no chunk, or no token at all, is invalid.
    pub fn enforced_tokens(&self) -> Result<EnforcedTokens, InvalidInference> {
        if self.streamed {
            self.streamed_enforced_tokens()
        } else {
            self.plain_enforced_tokens()
        }
    }

    fn plain_enforced_tokens(&self) -> Result<EnforcedTokens, InvalidInference> {
        let choice = self
            .chunks
            .first()
            .and_then(|chunk| chunk.choices.first())
            .ok_or(InvalidInference::NoChoices)?;
        let mut tokens = Vec::new();
        for position in choice.logprobs.content.iter().flatten() {
            let Some(top) = &position.top_logprobs else { continue };
            if top.is_empty() {
                return Err(InvalidInference::EmptyTopLogprobs);
            }
            tokens.push(EnforcedToken::new(position));
        }
        Ok(EnforcedTokens { tokens })
    }

    fn streamed_enforced_tokens(&self) -> Result<EnforcedTokens, InvalidInference> {
        if self.chunks.is_empty() {
            return Err(InvalidInference::NoChunks);
        }
        let mut tokens = Vec::new();
        for choice in self.chunks.iter().flat_map(|chunk| &chunk.choices) {
            let Some(content) = &choice.logprobs.content else { continue };
            // Upstream takes only the first position of each chunk: vLLM streams one per chunk.
            let first = content.first().ok_or(InvalidInference::EmptyLogprobsContent)?;
            tokens.push(EnforcedToken::new(first));
        }
        if tokens.is_empty() {
            return Err(InvalidInference::NoTokens);
        }
        Ok(EnforcedTokens { tokens })
    }
}

/// The `enforced_tokens` field of a replay request (DOMAIN.md 6.4).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnforcedTokens {
    /// The positions to force, in order.
    pub tokens: Vec<EnforcedToken>,
}

/// One forced position: the chosen token and the alternatives to report logprobs for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnforcedToken {
    /// The token to force.
    pub token: String,
    /// The original's top tokens, in the given order.
    pub top_tokens: Vec<String>,
}

impl EnforcedToken {
    fn new(position: &Logprob) -> Self {
        let top_tokens = position.top_logprobs.iter().flatten().map(|top| top.token.clone());
        Self { token: position.token.clone(), top_tokens: top_tokens.collect() }
    }
}

impl EnforcedTokens {
    /// The JSON value upstream sends: `{"tokens": [{"token": …, "top_tokens": […]}, …]}`. An
    /// empty list is written as `null`, as Go writes a nil slice.
    pub fn to_json(&self) -> Value {
        let tokens = self.tokens.iter().map(|enforced| {
            let mut entry = Map::new();
            entry.insert("token".to_owned(), Value::String(enforced.token.clone()));
            let top = enforced.top_tokens.iter().cloned().map(Value::String);
            entry.insert("top_tokens".to_owned(), nil_if_empty(top.collect()));
            Value::Object(entry)
        });
        let mut object = Map::new();
        object.insert("tokens".to_owned(), nil_if_empty(tokens.collect()));
        Value::Object(object)
    }
}

fn nil_if_empty(items: Vec<Value>) -> Value {
    if items.is_empty() {
        Value::Null
    } else {
        Value::Array(items)
    }
}

// === Replay request ===

/// Builds the body of the replay request from the executor's prompt and response payloads
/// (DOMAIN.md 2.6 steps 2-5): the prompt object with `enforced_tokens` added, `stream` and
/// `skip_special_tokens` set to false and `stream_options` removed. Every other field is kept.
///
/// Keys come out sorted, as Go's `json.Marshal` writes a map (unless serde_json's
/// `preserve_order` feature is on, in which case the prompt's order is kept; the ML node does not
/// care either way).
pub fn build_replay_request(
    prompt: &[u8],
    original_response: &[u8],
) -> Result<Vec<u8>, InvalidInference> {
    // Upstream checks the prompt before the response; keep that order for the reported reason.
    let prompt = parse_prompt(prompt)?;
    let original = CompletionResponse::from_payload(original_response)?;
    replay_body(prompt, &original)
}

/// [`build_replay_request`] for an original response that is already parsed, so that the engine
/// can keep it for [`compare_parsed`].
pub fn build_replay_request_parsed(
    prompt: &[u8],
    original: &CompletionResponse,
) -> Result<Vec<u8>, InvalidInference> {
    replay_body(parse_prompt(prompt)?, original)
}

fn parse_prompt(prompt: &[u8]) -> Result<Map<String, Value>, InvalidInference> {
    let prompt: Option<Map<String, Value>> =
        serde_json::from_slice(prompt).map_err(|err| InvalidInference::Prompt(err.to_string()))?;
    // Upstream decodes `null` into a nil map and then panics writing to it; refuse it instead.
    prompt.ok_or_else(|| InvalidInference::Prompt("null".to_owned()))
}

fn replay_body(
    mut request: Map<String, Value>,
    original: &CompletionResponse,
) -> Result<Vec<u8>, InvalidInference> {
    let enforced = original.enforced_tokens()?;
    request.insert("enforced_tokens".to_owned(), enforced.to_json());
    request.insert("stream".to_owned(), Value::Bool(false));
    request.insert("skip_special_tokens".to_owned(), Value::Bool(false));
    request.remove("stream_options");
    // Writing a `Value` into a `String` cannot fail: every key is a string and the writer is
    // infallible.
    Ok(Value::Object(request).to_string().into_bytes())
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

/// Go's `sort.Float64s` order: NaN before everything else.
fn go_float_order(a: &f64, b: &f64) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        (false, false) => a.partial_cmp(b).unwrap_or(Ordering::Equal),
    }
}

// === Wire format ===

// Fields not read for scoring are not declared, so they are not type-checked either.

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
struct Completion {
    #[serde(default, deserialize_with = "null_items")]
    choices: Vec<Choice>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
struct Choice {
    #[serde(default, deserialize_with = "null_as_default")]
    logprobs: ChoiceLogprobs,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
struct ChoiceLogprobs {
    #[serde(default, deserialize_with = "nullable_items")]
    content: Option<Vec<Logprob>>,
}

#[derive(Deserialize)]
struct StreamEnvelope {
    #[serde(default, deserialize_with = "null_items")]
    events: Vec<String>,
}

// Go's decoder leaves a field at its zero value when the JSON says null; these helpers do the
// same, so a null never fails a parse that upstream accepts.

fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

fn null_items<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(nullable_items(deserializer)?.unwrap_or_default())
}

/// A list that may be null (`None`), with null items read as zero values.
fn nullable_items<'de, D, T>(deserializer: D) -> Result<Option<Vec<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    let items = Option::<Vec<Option<T>>>::deserialize(deserializer)?;
    Ok(items.map(|items| items.into_iter().map(Option::unwrap_or_default).collect()))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Where the vLLM fixtures (upstream's `internal/validation/testdata`) live.
    const FIXTURES: &str =
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/fixtures/ml-node/");

    const INFERENCE: &str = "inference_response.json";
    const INFERENCE_INT4: &str = "inference_response_int4.json";
    const VALIDATION: &str = "validation_response.json";
    const VALIDATION_FP8: &str = "validation_response_fp8.json";

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!("{FIXTURES}{name}");
        std::fs::read(&path).unwrap_or_else(|err| panic!("reading {path}: {err}"))
    }

    fn fixture_value(name: &str) -> Value {
        serde_json::from_slice(&fixture(name)).unwrap()
    }

    fn to_bytes(value: &Value) -> Vec<u8> {
        serde_json::to_vec(value).unwrap()
    }

    /// The `logprobs.content` array of a plain fixture's first choice.
    fn content_mut(response: &mut Value) -> &mut Vec<Value> {
        response["choices"][0]["logprobs"]["content"].as_array_mut().unwrap()
    }

    fn top(token: &str, logprob: f64) -> Value {
        json!({"token": token, "logprob": logprob})
    }

    fn position(token: &str, top_logprobs: Value) -> Value {
        json!({"token": token, "logprob": -0.5, "bytes": [97], "top_logprobs": top_logprobs})
    }

    fn plain(positions: Vec<Value>) -> Vec<u8> {
        let choice = json!({"index": 0, "message": {"role": "assistant", "content": "x"},
            "logprobs": {"content": positions}, "finish_reason": "stop"});
        to_bytes(&json!({"id": "chatcmpl-1", "object": "chat.completion", "choices": [choice]}))
    }

    fn streamed(events: Vec<String>) -> Vec<u8> {
        to_bytes(&json!({ "events": events }))
    }

    /// A streamed payload carrying the same positions as a plain fixture, one per chunk, framed
    /// as vLLM frames them: a role chunk without logprobs first, a usage chunk without choices
    /// and `[DONE]` last.
    fn streamed_from_plain(name: &str) -> Vec<u8> {
        let mut response = fixture_value(name);
        let chunk = |choice: Value| format!("data: {}", json!({"id": "c", "choices": [choice]}));
        let role =
            json!({"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null});
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
        let original = plain(vec![
            position("a", json!([top("a", -1.0)])),
            position("b", json!([top("b", -1.0)])),
        ]);
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
            lps.iter()
                .map(|&logprob| TopLogprob { token: "a".to_owned(), logprob })
                .collect::<Vec<_>>()
        };
        let values =
            [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, f64::MAX, -f64::MAX, 0.0, -0.0, -1.0];
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
            assert!(
                matches!(compare(&good, bad), Err(ScoringError::ValidationResponse(_))),
                "{bad:?}"
            );
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
        let out_of_range =
            br#"{"choices":[{"logprobs":{"content":[{"token":"a","logprob":1e400}]}}]}"#;
        assert!(matches!(compare(&good, out_of_range), Err(ScoringError::ValidationResponse(_))));
    }

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

    #[test]
    fn local_success_needs_a_similarity_above_threshold() {
        assert!(Score { verdict: Verdict::Similarity, value: 0.991 }.is_local_success());
        assert!(!Score { verdict: Verdict::Similarity, value: LOCAL_SUCCESS_THRESHOLD }
            .is_local_success());
        assert!(Score::rejected_by_node().is_local_success());
        assert!(!Score::invalid_inference().is_local_success());
        assert_eq!(Score::invalid_inference().value_decimal(), ValueDecimal::ZERO);
        assert_eq!(
            Score::rejected_by_node().value_decimal(),
            ValueDecimal { value: 1, exponent: 0 }
        );
    }

    #[test]
    fn verdicts_serialize_in_snake_case() {
        let names = [
            Verdict::Similarity,
            Verdict::DifferentLength,
            Verdict::DifferentTokens,
            Verdict::Invalid,
        ]
        .map(|verdict| (serde_json::to_value(verdict).unwrap(), verdict.as_str()));
        for (serialized, name) in names {
            assert_eq!(serialized, json!(name));
        }
        assert_eq!(Verdict::DifferentLength.as_str(), "different_length");
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
        assert_eq!(
            body["enforced_tokens"],
            json!({"tokens": [{"token": "a", "top_tokens": ["a"]}]})
        );
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
        let original = to_bytes(
            &json!({"choices": [{"logprobs": {"content": [position("a", Value::Null)]}}]}),
        );
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
    fn streamed_original_scores_like_the_plain_one() {
        let streamed =
            CompletionResponse::from_payload(&streamed_from_plain(INFERENCE_INT4)).unwrap();
        let plain = CompletionResponse::from_payload(&fixture(INFERENCE_INT4)).unwrap();
        assert!(streamed.is_streamed());
        assert!(!plain.is_streamed());
        assert_eq!(streamed.logprobs(), plain.logprobs());
        let validation = fixture(VALIDATION_FP8);
        assert_eq!(compare_parsed(&streamed, &validation), compare_parsed(&plain, &validation));
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
        let depth = 100_000;
        let arrays = "[".repeat(depth);
        let objects = "{\"a\":".repeat(depth);
        let good = fixture(INFERENCE);
        for nested in [arrays.as_bytes(), objects.as_bytes()] {
            assert!(matches!(compare(&good, nested), Err(ScoringError::ValidationResponse(_))));
            assert!(matches!(compare(nested, &good), Err(ScoringError::Original(_))));
            assert!(matches!(
                build_replay_request(nested, &good),
                Err(InvalidInference::Prompt(_))
            ));
            assert!(matches!(
                build_replay_request(b"{}", nested),
                Err(InvalidInference::Response(_))
            ));
        }
        let deep_field = format!("{{\"choices\": [], \"junk\": {}}}", "[".repeat(depth));
        assert!(compare(&good, deep_field.as_bytes()).is_err());
    }

    #[test]
    fn huge_numbers_are_handled() {
        let original = fixture(INFERENCE);
        let prompt =
            br#"{"model": "m", "seed": 123456789012345678901234567890, "max_tokens": 1e308}"#;
        let body: Map<String, Value> =
            serde_json::from_slice(&build_replay_request(prompt, &original).unwrap()).unwrap();
        assert_eq!(body["max_tokens"], json!(1e308));
        assert!(matches!(
            build_replay_request(br#"{"seed": 1e400}"#, &original),
            Err(InvalidInference::Prompt(_))
        ));
        let huge_token_count =
            br#"{"choices":[{"index":99999999999999999999999,"logprobs":null}]}"#;
        assert!(compare(&original, huge_token_count).is_err());
    }

    #[test]
    fn truncated_and_corrupted_payloads_never_panic() {
        let prompt = to_bytes(&prompt());
        let good = fixture(INFERENCE_INT4);
        let parsed = CompletionResponse::from_payload(&good).unwrap();
        let streamed = streamed_from_plain(INFERENCE_INT4);
        for payload in [&good, &streamed] {
            let cuts = (0..payload.len())
                .step_by(997)
                .chain(payload.len().saturating_sub(8)..payload.len());
            for cut in cuts {
                let truncated = &payload[..cut];
                assert!(build_replay_request(&prompt, truncated).is_err());
                assert!(compare_parsed(&parsed, truncated).is_err());
                assert!(compare(truncated, &good).is_err());
            }
            for at in (0..payload.len()).step_by(2003) {
                for byte in [b'"', b'}', b'-', 0xff] {
                    let mut corrupted = payload.clone();
                    corrupted[at] = byte;
                    let _ = build_replay_request(&prompt, &corrupted);
                    let _ = compare_parsed(&parsed, &corrupted);
                    if let Ok(score) = compare(&corrupted, &good) {
                        assert!((0.0..=1.0).contains(&score.value));
                    }
                }
            }
        }
    }
}
