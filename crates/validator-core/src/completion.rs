//! The chat-completion format as validation reads and writes it: the executor's response payload,
//! plain or streamed, and our ML node's answer ([`CompletionResponse`]), the tokens a replay must
//! reproduce ([`EnforcedTokens`]) and the replay requests built from the executor's prompt: the
//! classic one ([`classic_replay`], DOMAIN.md 2.6, 6.3, 6.4 and LIVE-NETWORK.md 2.2 item 5) and
//! the devshard one ([`build_devshard_replay`], LIVE-NETWORK.md 2.2 item 2).
//!
//! It re-implements the parsing, logit extraction, usage and enforced tokens of upstream's
//! `decentralized-api/completionapi` (gonka-ai/gonka, v0.2.14: `completionresponse.go`,
//! `openai.go`), the request body that `validateWithPayloads`
//! (`decentralized-api/internal/validation/inference_validation.go`) sends for a classic replay,
//! and the one devshard's `BuildValidationBody` (`decentralized-api/internal/devshard`) builds
//! with `ModifyRequestBodyWithLogprobsMode` (`completionapi/request.go`,
//! `request_validation.go`). Request bodies are written byte for byte as Go writes them
//! ([`crate::go_json`]).
//!
//! Known differences from upstream's Go JSON decoding, none of which vLLM output triggers:
//! - Only the fields scoring reads are type-checked; Go also rejects, say, a non-integer `bytes`.
//! - serde reads an array where a chat-format object is expected, rejects duplicate keys in one
//!   (Go keeps the last) and matches keys case-sensitively (Go falls back to a case-insensitive
//!   match).
//! - Invalid UTF-8 and lone surrogate escapes in strings are errors (Go substitutes U+FFFD).
//! - Nesting deeper than 128 levels is an error (Go allows 10,000).

use std::{cmp::Ordering, collections::HashMap, fmt};

use serde::{
    de::{DeserializeOwned, IgnoredAny, MapAccess, Visitor},
    Deserialize, Deserializer,
};
use serde_json::{Map, Value};

use crate::go_json;

mod messages;

// === Error ===

/// Why the executor's payloads cannot be replayed. The executor's fault: the engine submits
/// [`Score::invalid_inference`](crate::scoring::Score::invalid_inference).
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
    /// Classic path: an enforced token of the original is not a token id (a non-negative decimal
    /// integer): the executor sent decoded text where `return_token_ids` gives ids.
    #[error("enforced token {position} is not a token id: {token:?}")]
    NonNumericToken {
        /// The position among the enforced tokens.
        position: usize,
        /// The token, cut to its first [`MAX_TOKEN_EXCERPT`] characters.
        token: String,
    },
    /// Classic path: a top token of the original is not a token id.
    #[error("a top token of enforced token {position} is not a token id: {token:?}")]
    NonNumericTopToken {
        /// The position among the enforced tokens.
        position: usize,
        /// The top token, cut to its first [`MAX_TOKEN_EXCERPT`] characters.
        token: String,
    },
    /// Devshard path: the prompt's `messages` are not OpenAI chat messages (roles, tool calls,
    /// content as a non-empty string or an array of typed parts).
    #[error("prompt messages are refused: {0}")]
    Messages(String),
}

/// How much of an offending token an [`InvalidInference`] quotes: enough to recognise it, while
/// an executor cannot fill the logs with one.
pub const MAX_TOKEN_EXCERPT: usize = 32;

fn excerpt(token: &str) -> String {
    token.chars().take(MAX_TOKEN_EXCERPT).collect()
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

    /// The token counts the response reports: upstream's `GetUsage`.
    ///
    /// Plain response: its `usage`, or `None` when absent or both counts are 0.
    ///
    /// Streamed response: the first chunk's non-zero `usage`; without one, 0 prompt tokens and as
    /// many completion tokens as the first choices of the chunks carry positions. `None` only
    /// without chunks.
    pub fn usage(&self) -> Option<Usage> {
        if !self.streamed {
            return self.chunks.first().map(|chunk| chunk.usage).filter(|usage| !usage.is_empty());
        }
        if self.chunks.is_empty() {
            return None;
        }
        let mut positions: u64 = 0;
        for chunk in &self.chunks {
            if let Some(choice) = chunk.choices.first() {
                let count = choice.logprobs.content.as_ref().map_or(0, Vec::len);
                positions = positions.saturating_add(count as u64);
            }
            if !chunk.usage.is_empty() {
                return Some(chunk.usage);
            }
        }
        Some(Usage { prompt_tokens: 0, completion_tokens: positions })
    }

    /// The tokens the replay must reproduce: upstream's `GetEnforcedTokens`.
    ///
    /// Plain response: the positions of the *first* choice; positions whose `top_logprobs` is
    /// absent or null are skipped; no choice, or a present but empty top list, is invalid.
    ///
    /// Streamed response: every position of every choice of every chunk, in order, with its top
    /// tokens (none when its `top_logprobs` is absent, null or empty); choices whose
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
            if content.is_empty() {
                return Err(InvalidInference::EmptyLogprobsContent);
            }
            tokens.extend(content.iter().map(EnforcedToken::new));
        }
        if tokens.is_empty() {
            return Err(InvalidInference::NoTokens);
        }
        Ok(EnforcedTokens { tokens })
    }
}

/// The token counts of a response's `usage`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
pub struct Usage {
    /// `usage.prompt_tokens`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub prompt_tokens: u64,
    /// `usage.completion_tokens`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub completion_tokens: u64,
}

impl Usage {
    /// Both counts are 0, which upstream reads as no usage at all.
    pub fn is_empty(&self) -> bool {
        self.prompt_tokens == 0 && self.completion_tokens == 0
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

// === Classic replay ===

/// The token an executor's API node writes when the inference failed on its side: such an
/// original is replayed without enforced tokens, to see whether the prompt can be served.
pub const EMPTY_SENTINEL: &str = "<EMPTY>";

/// What the classic path forces on a replay of an original (LIVE-NETWORK.md 2.2 item 5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClassicEnforcement {
    /// Force these tokens; every token and top token is a token id.
    Tokens(EnforcedTokens),
    /// A token of the original is [`EMPTY_SENTINEL`]: replay with nothing forced. A successful
    /// answer then means the executor failed a servable prompt: an invalid inference.
    EmptySentinel,
}

impl ClassicEnforcement {
    /// Whether the original carried [`EMPTY_SENTINEL`].
    pub fn is_empty_sentinel(&self) -> bool {
        matches!(self, Self::EmptySentinel)
    }
}

/// The classic checks of an original, in upstream's order: its enforced tokens
/// ([`CompletionResponse::enforced_tokens`]); then [`ClassicEnforcement::EmptySentinel`] when
/// any token is [`EMPTY_SENTINEL`]; otherwise every token and top token must be a token id
/// ([`is_token_id`]), or the inference is invalid.
pub fn classic_enforcement(
    original: &CompletionResponse,
) -> Result<ClassicEnforcement, InvalidInference> {
    let enforced = original.enforced_tokens()?;
    if enforced.tokens.iter().any(|enforced| enforced.token == EMPTY_SENTINEL) {
        return Ok(ClassicEnforcement::EmptySentinel);
    }
    for (position, enforced) in enforced.tokens.iter().enumerate() {
        if !is_token_id(&enforced.token) {
            return Err(InvalidInference::NonNumericToken {
                position,
                token: excerpt(&enforced.token),
            });
        }
        if let Some(top) = enforced.top_tokens.iter().find(|top| !is_token_id(top)) {
            return Err(InvalidInference::NonNumericTopToken { position, token: excerpt(top) });
        }
    }
    Ok(ClassicEnforcement::Tokens(enforced))
}

/// Whether `token` is a token id as upstream tests it: Go's `strconv.Atoi` on a 64-bit platform
/// accepts it (an optional sign, then ASCII digits, within `i64`) and the value is not negative.
/// So `+12`, `007` and `-0` pass; `-1`, `1.5`, ` 1`, `1_0` and the empty string do not.
pub fn is_token_id(token: &str) -> bool {
    // Rust's integer parsing takes exactly the syntax `Atoi` takes in base 10.
    token.parse::<i64>().is_ok_and(|id| id >= 0)
}

/// A classic replay request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassicReplay {
    /// The JSON body to post to the ML node.
    pub body: Vec<u8>,
    /// The original carried [`EMPTY_SENTINEL`], so nothing is forced: a successful answer makes
    /// the inference invalid, while a 400 or 422 stays the usual pass.
    pub empty_sentinel: bool,
}

/// Builds the classic replay request, upstream's `validateWithPayloads` (DOMAIN.md 2.6 steps 2-5
/// and LIVE-NETWORK.md 2.2 item 5): the prompt object with `stream` and `skip_special_tokens`
/// set to false, `stream_options` removed and `enforced_tokens` set from
/// [`classic_enforcement`] (removed for an [`EMPTY_SENTINEL`] original). Every other field is
/// kept. The body is written as Go's `json.Marshal` writes it.
///
/// An unusable prompt or original is an [`InvalidInference`]; the prompt is checked first.
pub fn classic_replay(
    prompt: &[u8],
    original: &CompletionResponse,
) -> Result<ClassicReplay, InvalidInference> {
    classic_body(parse_prompt(prompt)?, original)
}

/// [`classic_replay`] from the raw response payload.
pub fn build_replay_request(
    prompt: &[u8],
    original_response: &[u8],
) -> Result<ClassicReplay, InvalidInference> {
    // Upstream checks the prompt before the response; keep that order for the reported reason.
    let request = parse_prompt(prompt)?;
    classic_body(request, &CompletionResponse::from_payload(original_response)?)
}

fn classic_body(
    mut request: Map<String, Value>,
    original: &CompletionResponse,
) -> Result<ClassicReplay, InvalidInference> {
    let enforcement = classic_enforcement(original)?;
    let empty_sentinel = enforcement.is_empty_sentinel();
    match enforcement {
        ClassicEnforcement::Tokens(enforced) => {
            request.insert("enforced_tokens".to_owned(), enforced.to_json());
        }
        ClassicEnforcement::EmptySentinel => {
            request.remove("enforced_tokens");
        }
    }
    request.insert("stream".to_owned(), Value::Bool(false));
    request.insert("skip_special_tokens".to_owned(), Value::Bool(false));
    request.remove("stream_options");
    Ok(ClassicReplay { body: go_json::marshal(&Value::Object(request)), empty_sentinel })
}

fn parse_prompt(prompt: &[u8]) -> Result<Map<String, Value>, InvalidInference> {
    let prompt: Option<Map<String, Value>> =
        serde_json::from_slice(prompt).map_err(|err| InvalidInference::Prompt(err.to_string()))?;
    // Upstream decodes `null` into a nil map and then panics writing to it; refuse it instead.
    prompt.ok_or_else(|| InvalidInference::Prompt("null".to_owned()))
}

// === Devshard replay ===

/// The `max_tokens` a request without one is served with: upstream's
/// `calculations.DefaultMaxTokens`.
pub const DEFAULT_MAX_TOKENS: i64 = 5000;

/// The `top_logprobs` every devshard replay asks for (see [`build_devshard_replay`]).
pub const REPLAY_TOP_LOGPROBS: i64 = 5;

/// Builds the devshard replay request (LIVE-NETWORK.md 2.2 item 2), byte for byte as upstream's
/// `BuildValidationBody` writes it: the prompt object (a chat request) as
/// `ModifyRequestBodyWithLogprobsMode` rewrites it, then with the original's enforced tokens.
///
/// - `messages` must be OpenAI chat messages, else [`InvalidInference::Messages`];
/// - `logprobs` becomes true when absent, null or false (any other value is kept);
/// - `top_logprobs` becomes [`REPLAY_TOP_LOGPROBS`], always: upstream keeps the prompt's value
///   only when it decoded as a Go `int`, which a JSON number never does;
/// - `max_tokens` and `max_completion_tokens` both become the prompt's `max_tokens`, else its
///   `max_completion_tokens` (the first that is a number, truncated to an integer), else
///   [`DEFAULT_MAX_TOKENS`];
/// - `skip_special_tokens` false, `return_token_ids` true;
/// - `seed` the inference id cast to `i32` (wrapping, as Go's `int32(id)`) when the prompt has no
///   `seed` key (a null seed is kept);
/// - `logprobs_mode` set to `logprobs_mode` unless that is empty;
/// - `enforced_tokens` from [`CompletionResponse::enforced_tokens`], `stream` false,
///   `stream_options` removed.
///
/// None of the classic-only checks ([`classic_enforcement`]) apply here.
pub fn build_devshard_replay(
    prompt: &[u8],
    original: &CompletionResponse,
    inference_id: u64,
    logprobs_mode: &str,
) -> Result<Vec<u8>, InvalidInference> {
    let mut request = parse_prompt(prompt)?;
    messages::check(&request).map_err(InvalidInference::Messages)?;
    if matches!(request.get("logprobs"), None | Some(Value::Null | Value::Bool(false))) {
        request.insert("logprobs".to_owned(), Value::Bool(true));
    }
    request.insert("top_logprobs".to_owned(), Value::from(REPLAY_TOP_LOGPROBS));
    let max_tokens = Value::from(max_tokens(&request));
    request.insert("max_tokens".to_owned(), max_tokens.clone());
    request.insert("max_completion_tokens".to_owned(), max_tokens);
    request.insert("skip_special_tokens".to_owned(), Value::Bool(false));
    request.insert("return_token_ids".to_owned(), Value::Bool(true));
    if !request.contains_key("seed") {
        // Go's `int32(id)`: the low 32 bits, read as signed.
        request.insert("seed".to_owned(), Value::from(inference_id as i32));
    }
    if !logprobs_mode.is_empty() {
        request.insert("logprobs_mode".to_owned(), Value::String(logprobs_mode.to_owned()));
    }
    let enforced = original.enforced_tokens()?;
    request.insert("enforced_tokens".to_owned(), enforced.to_json());
    request.insert("stream".to_owned(), Value::Bool(false));
    request.remove("stream_options");
    Ok(go_json::marshal(&Value::Object(request)))
}

/// Upstream's `getMaxTokens`: the first of `max_tokens` and `max_completion_tokens` that is a
/// number, converted as Go's `int(float64)`; else [`DEFAULT_MAX_TOKENS`].
fn max_tokens(request: &Map<String, Value>) -> i64 {
    ["max_tokens", "max_completion_tokens"]
        .into_iter()
        .find_map(|key| match request.get(key) {
            Some(Value::Number(number)) => Some(go_int(number.as_f64().unwrap_or(f64::NAN))),
            _ => None,
        })
        .unwrap_or(DEFAULT_MAX_TOKENS)
}

/// Go's `int(x)` for a `float64` on amd64: truncation towards zero, and `i64::MIN` for NaN and
/// for values outside `i64` (the `CVTTSD2SQ` instruction's answer; Rust's `as` saturates
/// instead, as Go on arm64 does).
fn go_int(x: f64) -> i64 {
    const TWO_POW_63: f64 = 9_223_372_036_854_775_808.0;
    if x.is_nan() || !(-TWO_POW_63..TWO_POW_63).contains(&x) {
        i64::MIN
    } else {
        x as i64
    }
}

// === Wire format ===

// Fields not read for scoring are not declared, so they are not type-checked either.

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
struct Completion {
    #[serde(default, deserialize_with = "null_items")]
    choices: Vec<Choice>,
    #[serde(default, deserialize_with = "null_as_default")]
    usage: Usage,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
struct Choice {
    #[serde(default, deserialize_with = "null_as_default")]
    logprobs: ChoiceLogprobs,
}

/// A choice's `logprobs`, in either format upstream reads (its `ChoiceLogprobs.UnmarshalJSON`):
/// the chat format `{"content": [positions]}`, or, when there is no `content` key, the
/// completions format `{"tokens": [..], "token_logprobs": [..], "top_logprobs": [{token:
/// logprob}, ..]}`, turned into positions.
#[derive(Debug, Clone, Default, PartialEq)]
struct ChoiceLogprobs {
    content: Option<Vec<Logprob>>,
}

impl<'de> Deserialize<'de> for ChoiceLogprobs {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(ChoiceLogprobsVisitor)
    }
}

struct ChoiceLogprobsVisitor;

impl<'de> Visitor<'de> for ChoiceLogprobsVisitor {
    type Value = ChoiceLogprobs;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a logprobs object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ChoiceLogprobs, A::Error> {
        // Upstream first reads the object as raw values and looks for `content`; only without it
        // does it decode (and so type-check) the completions fields. The last duplicate wins.
        let mut content = None;
        let mut completions = CompletionsFields::default();
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "content" => content = Some(map.next_value::<ChatContent>()?.0),
                "tokens" => completions.tokens = Some(map.next_value()?),
                "token_logprobs" => completions.token_logprobs = Some(map.next_value()?),
                "top_logprobs" => completions.top_logprobs = Some(map.next_value()?),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        if let Some(content) = content {
            return Ok(ChoiceLogprobs { content });
        }
        let content = completions.positions().map_err(serde::de::Error::custom)?;
        Ok(ChoiceLogprobs { content })
    }
}

#[derive(Deserialize)]
struct ChatContent(#[serde(deserialize_with = "nullable_items")] Option<Vec<Logprob>>);

/// The completions-format fields, kept undecoded until upstream would decode them.
#[derive(Default)]
struct CompletionsFields {
    tokens: Option<Value>,
    token_logprobs: Option<Value>,
    top_logprobs: Option<Value>,
}

#[derive(Deserialize)]
#[serde(bound = "T: Deserialize<'de> + Default")]
struct Items<T>(#[serde(deserialize_with = "null_items")] Vec<T>);

/// One `{token: logprob}` map of the completions format; null reads as an empty map and a null
/// logprob as 0, as Go decodes them.
#[derive(Default, Deserialize)]
struct TopMap(#[serde(deserialize_with = "null_as_default")] HashMap<String, Option<f64>>);

impl CompletionsFields {
    /// The positions upstream builds: one per token, with its logprob (0 when missing or null)
    /// and, when the position has a top map, its entries sorted by logprob descending, then by
    /// token. No token at all is no content.
    fn positions(self) -> Result<Option<Vec<Logprob>>, serde_json::Error> {
        fn items<T: Default + DeserializeOwned>(
            value: Option<Value>,
        ) -> Result<Vec<T>, serde_json::Error> {
            match value {
                Some(value) => Ok(serde_json::from_value::<Items<T>>(value)?.0),
                None => Ok(Vec::new()),
            }
        }
        let tokens: Vec<String> = items(self.tokens)?;
        let logprobs: Vec<f64> = items(self.token_logprobs)?;
        let tops: Vec<TopMap> = items(self.top_logprobs)?;
        if tokens.is_empty() {
            return Ok(None);
        }
        let mut tops = tops.into_iter();
        let positions = tokens.into_iter().enumerate().map(|(i, token)| {
            let top_logprobs = tops.next().map(|TopMap(top)| {
                let mut top: Vec<TopLogprob> = top
                    .into_iter()
                    .map(|(token, logprob)| TopLogprob { token, logprob: logprob.unwrap_or(0.0) })
                    .collect();
                top.sort_by(|a, b| {
                    b.logprob
                        .partial_cmp(&a.logprob)
                        .unwrap_or(Ordering::Equal)
                        .then_with(|| a.token.cmp(&b.token))
                });
                top
            });
            let logprob = logprobs.get(i).copied().unwrap_or(0.0);
            Logprob { token, logprob, top_logprobs }
        });
        Ok(Some(positions.collect()))
    }
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
pub(crate) mod fixtures;
#[cfg(test)]
mod tests;
