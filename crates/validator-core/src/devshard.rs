//! Devshard validation's domain (LIVE-NETWORK.md 2): the job a session host hands the engine,
//! checked on the way in, and the verdict it gets back. Wire formats stay in the adapters and
//! the service; these are the values they translate to and from.

use std::{fmt, sync::Arc};

use serde::{Deserialize, Serialize};

use crate::ports::chain::InferenceId;

/// The longest escrow id accepted (it becomes one segment of the payload URL).
pub const MAX_ESCROW_ID_LEN: usize = 128;

/// The longest model name accepted.
pub const MAX_MODEL_LEN: usize = 256;

/// The longest runtime version accepted (`v4` today; it becomes one segment of the payload URL).
pub const MAX_RUNTIME_VERSION_LEN: usize = 16;

/// What identifies one devshard validation: an inference id is unique within its escrow.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DevshardKey {
    /// The session's escrow.
    pub escrow_id: Arc<str>,
    /// The inference, numbered within the escrow (never 0).
    pub inference_id: u64,
}

impl DevshardKey {
    /// The id this job goes by in the journal and on the outcome stream:
    /// `devshard:{escrow_id}:{inference_id}`. Classic ids are base64 and never hold `:`, so the
    /// two kinds cannot collide.
    pub fn journal_id(&self) -> InferenceId {
        InferenceId::new(format!("devshard:{}:{}", self.escrow_id, self.inference_id))
    }
}

impl fmt::Display for DevshardKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.escrow_id, self.inference_id)
    }
}

/// One devshard validation as the engine runs it: upstream's `ValidateRequest` (LIVE-NETWORK.md
/// 2.1), checked. Built with [`DevshardJob::new`] from a [`DevshardRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevshardJob {
    /// The escrow and the inference.
    pub key: DevshardKey,
    /// The model the inference ran on.
    pub model: Arc<str>,
    /// Raw SHA-256 of the prompt payload's bytes.
    pub prompt_hash: [u8; 32],
    /// Raw SHA-256 of the response payload's bytes.
    pub response_hash: [u8; 32],
    /// The executor's claimed prompt tokens.
    pub input_tokens: u64,
    /// The executor's claimed completion tokens.
    pub output_tokens: u64,
    /// The mainnet epoch pinned on the escrow: payloads are stored, and signed, under it.
    pub epoch_id: u64,
    /// The executor's bech32 account address.
    pub executor_address: Arc<str>,
    /// The devshard runtime of the session (`v4`), a segment of the payload path.
    pub runtime_version: Arc<str>,
    /// A mandatory vote on a challenged inference, rather than a sampled validation.
    pub challenged: bool,
}

/// A devshard validation request as a caller hands it over, unchecked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DevshardRequest {
    /// See [`DevshardKey::inference_id`].
    pub inference_id: u64,
    /// See [`DevshardJob::model`].
    pub model: String,
    /// See [`DevshardJob::prompt_hash`]; must be 32 bytes.
    pub prompt_hash: Vec<u8>,
    /// See [`DevshardJob::response_hash`]; must be 32 bytes.
    pub response_hash: Vec<u8>,
    /// See [`DevshardJob::input_tokens`].
    pub input_tokens: u64,
    /// See [`DevshardJob::output_tokens`].
    pub output_tokens: u64,
    /// See [`DevshardKey::escrow_id`].
    pub escrow_id: String,
    /// See [`DevshardJob::epoch_id`].
    pub epoch_id: u64,
    /// See [`DevshardJob::executor_address`]; must be bech32.
    pub executor_address: String,
    /// See [`DevshardJob::runtime_version`].
    pub runtime_version: String,
    /// See [`DevshardJob::challenged`].
    pub challenged: bool,
}

/// Why a [`DevshardRequest`] was refused. Nothing was admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// `inference_id` is 0; upstream numbers inferences from 1.
    #[error("inference_id must not be 0")]
    ZeroInferenceId,
    /// `escrow_id` is empty, too long or holds characters outside `[A-Za-z0-9._-]`.
    #[error("escrow_id must be 1 to {MAX_ESCROW_ID_LEN} characters of [A-Za-z0-9._-]")]
    EscrowId,
    /// `model` is empty, too long or holds control characters.
    #[error("model must be 1 to {MAX_MODEL_LEN} printable characters")]
    Model,
    /// A hash is not 32 bytes.
    #[error("{field} must be 32 bytes, got {len}")]
    HashLength {
        /// `prompt_hash` or `response_hash`.
        field: &'static str,
        /// The length given.
        len: usize,
    },
    /// `executor_address` is not a bech32 string with a valid checksum.
    #[error("executor_address is not bech32: {0}")]
    ExecutorAddress(String),
    /// `runtime_version` is empty, too long or not of the form `v` and digits.
    #[error("runtime_version must be `v` and 1 to {} digits", MAX_RUNTIME_VERSION_LEN - 1)]
    RuntimeVersion,
}

impl DevshardJob {
    /// Checks `request` and builds the job.
    pub fn new(request: DevshardRequest) -> Result<Self, RequestError> {
        let DevshardRequest {
            inference_id,
            model,
            prompt_hash,
            response_hash,
            input_tokens,
            output_tokens,
            escrow_id,
            epoch_id,
            executor_address,
            runtime_version,
            challenged,
        } = request;
        if inference_id == 0 {
            return Err(RequestError::ZeroInferenceId);
        }
        let escrow_ok = !escrow_id.is_empty()
            && escrow_id.len() <= MAX_ESCROW_ID_LEN
            && escrow_id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !escrow_ok {
            return Err(RequestError::EscrowId);
        }
        if model.is_empty() || model.len() > MAX_MODEL_LEN || model.chars().any(char::is_control) {
            return Err(RequestError::Model);
        }
        let hash = |field: &'static str, bytes: Vec<u8>| -> Result<[u8; 32], RequestError> {
            let len = bytes.len();
            bytes.try_into().map_err(|_| RequestError::HashLength { field, len })
        };
        let prompt_hash = hash("prompt_hash", prompt_hash)?;
        let response_hash = hash("response_hash", response_hash)?;
        check_bech32(&executor_address).map_err(RequestError::ExecutorAddress)?;
        let version_ok = runtime_version.len() <= MAX_RUNTIME_VERSION_LEN
            && runtime_version.strip_prefix('v').is_some_and(|digits| {
                !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
            });
        if !version_ok {
            return Err(RequestError::RuntimeVersion);
        }
        Ok(Self {
            key: DevshardKey { escrow_id: escrow_id.into(), inference_id },
            model: model.into(),
            prompt_hash,
            response_hash,
            input_tokens,
            output_tokens,
            epoch_id,
            executor_address: executor_address.into(),
            runtime_version: runtime_version.into(),
            challenged,
        })
    }
}

/// Checks a bech32 (BIP-173) string: one human-readable part, the separator, data characters and
/// a valid six-character checksum, in one case. Accounts are 20 bytes, so the data part is far
/// below the 90-character limit; the limit is kept as BIP-173 states it.
fn check_bech32(address: &str) -> Result<(), String> {
    const CHARSET: &[u8; 32] = b"qpzry9x8gf2tvdw0s3jn54khce6mua7l";
    if address.len() > 90 {
        return Err("longer than 90 characters".into());
    }
    let has_lower = address.bytes().any(|b| b.is_ascii_lowercase());
    let has_upper = address.bytes().any(|b| b.is_ascii_uppercase());
    if has_lower && has_upper {
        return Err("mixed case".into());
    }
    let address = address.to_ascii_lowercase();
    let Some(separator) = address.rfind('1') else {
        return Err("no separator".into());
    };
    let (hrp, data) = (&address[..separator], &address[separator + 1..]);
    if hrp.is_empty() || !hrp.bytes().all(|b| (33..=126).contains(&b)) {
        return Err("bad human-readable part".into());
    }
    if data.len() < 6 {
        return Err("checksum too short".into());
    }
    let mut values = Vec::with_capacity(data.len());
    for byte in data.bytes() {
        match CHARSET.iter().position(|&c| c == byte) {
            Some(value) => values.push(value as u8),
            None => return Err(format!("character {:?} outside the bech32 set", byte as char)),
        }
    }
    let mut expanded: Vec<u8> = hrp.bytes().map(|b| b >> 5).collect();
    expanded.push(0);
    expanded.extend(hrp.bytes().map(|b| b & 31));
    expanded.extend(values);
    if polymod(&expanded) != 1 {
        return Err("bad checksum".into());
    }
    Ok(())
}

fn polymod(values: &[u8]) -> u32 {
    const GENERATOR: [u32; 5] = [0x3b6a_57b2, 0x2650_8e6d, 0x1ea1_19fa, 0x3d42_33dd, 0x2a14_62b3];
    let mut checksum: u32 = 1;
    for &value in values {
        let top = checksum >> 25;
        checksum = ((checksum & 0x01ff_ffff) << 5) ^ u32::from(value);
        for (i, generator) in GENERATOR.iter().enumerate() {
            if (top >> i) & 1 == 1 {
                checksum ^= generator;
            }
        }
    }
    checksum
}

/// The short tag a verdict carries, as upstream names them (`ValidateResult.reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VerdictReason {
    /// Same tokens, similarity strictly above the model's threshold: valid.
    SimilarityPass,
    /// Same tokens, similarity at or below the threshold: invalid.
    SimilarityBelow,
    /// The executor claimed more than 3 tokens beyond the replay's usage: invalid.
    InflatedTokens,
    /// The replay is shorter than the original: invalid.
    DifferentLength,
    /// A token differs: invalid.
    DifferentTokens,
    /// The executor's payloads cannot be replayed: invalid.
    InvalidInference,
    /// Our ML node refused the replay with 400 or 422: valid, as upstream counts it.
    MlRejected,
    /// The payloads do not hash to the request's hashes: invalid (devshard v4).
    HashMismatch,
}

impl VerdictReason {
    /// Every reason, in a stable order.
    pub const ALL: [VerdictReason; 8] = [
        VerdictReason::SimilarityPass,
        VerdictReason::SimilarityBelow,
        VerdictReason::InflatedTokens,
        VerdictReason::DifferentLength,
        VerdictReason::DifferentTokens,
        VerdictReason::InvalidInference,
        VerdictReason::MlRejected,
        VerdictReason::HashMismatch,
    ];

    /// Upstream's tag.
    pub fn as_str(self) -> &'static str {
        match self {
            VerdictReason::SimilarityPass => "similarity_pass",
            VerdictReason::SimilarityBelow => "similarity_below",
            VerdictReason::InflatedTokens => "inflated_tokens",
            VerdictReason::DifferentLength => "different_length",
            VerdictReason::DifferentTokens => "different_tokens",
            VerdictReason::InvalidInference => "invalid_inference",
            VerdictReason::MlRejected => "ml_rejected",
            VerdictReason::HashMismatch => "hash_mismatch",
        }
    }

    /// Whether the verdict with this reason is valid.
    pub fn is_valid(self) -> bool {
        matches!(self, VerdictReason::SimilarityPass | VerdictReason::MlRejected)
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for VerdictReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The verdict on one devshard inference, returned to the caller instead of being sent to the
/// chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DevshardVerdict {
    /// Why; [`VerdictReason::is_valid`] says whether it is a valid verdict.
    pub reason: VerdictReason,
    /// The similarity, when one was computed.
    pub similarity: Option<f64>,
    /// The model's threshold it was compared against, as a decimal string.
    pub threshold: Option<String>,
    /// Claimed and replayed token counts when the tokens were checked, and similar facts.
    pub details: Vec<(String, String)>,
}

impl DevshardVerdict {
    /// A verdict with `reason` and nothing else.
    pub fn new(reason: VerdictReason) -> Self {
        Self { reason, similarity: None, threshold: None, details: Vec::new() }
    }

    /// Whether the inference passed.
    pub fn valid(&self) -> bool {
        self.reason.is_valid()
    }
}

/// Verdicts per reason. Serialises as a map from reason tag to count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VerdictCounts([u64; VerdictReason::ALL.len()]);

impl VerdictCounts {
    /// Counts one more verdict with `reason`.
    pub fn add(&mut self, reason: VerdictReason) {
        self.0[reason.index()] += 1;
    }

    /// The count for `reason`.
    pub fn get(&self, reason: VerdictReason) -> u64 {
        self.0[reason.index()]
    }

    /// Non-zero counts, in [`VerdictReason::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (VerdictReason, u64)> + '_ {
        VerdictReason::ALL.into_iter().map(|r| (r, self.get(r))).filter(|(_, n)| *n > 0)
    }
}

impl Serialize for VerdictCounts {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter().map(|(r, n)| (r.as_str(), n)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXECUTOR: &str = "gonka1qypqxpq9qcrsszg2pvxq6rs0zqg3yyc50htqp7";

    fn request() -> DevshardRequest {
        DevshardRequest {
            inference_id: 7,
            model: "Qwen/Qwen3-235B-A22B-Instruct-2507-FP8".into(),
            prompt_hash: vec![1; 32],
            response_hash: vec![2; 32],
            input_tokens: 10,
            output_tokens: 20,
            escrow_id: "42".into(),
            epoch_id: 150,
            executor_address: EXECUTOR.into(),
            runtime_version: "v4".into(),
            challenged: false,
        }
    }

    #[test]
    fn a_well_formed_request_becomes_a_job() {
        let job = DevshardJob::new(request()).expect("valid");
        assert_eq!(job.key.journal_id().as_str(), "devshard:42:7");
        assert_eq!(job.prompt_hash, [1; 32]);
    }

    /// Spoils one field of a request.
    type Spoil = fn(&mut DevshardRequest);

    #[test]
    fn each_bad_field_is_named() {
        let cases: Vec<(Spoil, RequestError)> = vec![
            (|r| r.inference_id = 0, RequestError::ZeroInferenceId),
            (|r| r.escrow_id.clear(), RequestError::EscrowId),
            (|r| r.escrow_id = "a/../b".into(), RequestError::EscrowId),
            (|r| r.escrow_id = "e".repeat(129), RequestError::EscrowId),
            (|r| r.model.clear(), RequestError::Model),
            (|r| r.model = "m\n".into(), RequestError::Model),
            (
                |r| r.prompt_hash = vec![0; 31],
                RequestError::HashLength { field: "prompt_hash", len: 31 },
            ),
            (
                |r| r.response_hash = vec![0; 64],
                RequestError::HashLength { field: "response_hash", len: 64 },
            ),
            (|r| r.runtime_version = "v".into(), RequestError::RuntimeVersion),
            (
                |r| r.runtime_version = format!("v{}", "4".repeat(10_000)),
                RequestError::RuntimeVersion,
            ),
            (|r| r.runtime_version = "../v4".into(), RequestError::RuntimeVersion),
        ];
        for (spoil, expected) in cases {
            let mut bad = request();
            spoil(&mut bad);
            assert_eq!(DevshardJob::new(bad), Err(expected));
        }
    }

    #[test]
    fn executor_addresses_must_be_bech32_with_a_valid_checksum() {
        for bad in [
            "",
            "gonka",
            "not an address",
            "gonka1qypqxpq9qcrsszg2pvxq6rs0zqg3yyc50htqp8",
            "GONKA1qypqxpq9qcrsszg2pvxq6rs0zqg3yyc50htqp7",
            "gonka1qypqxpq9qcrsszg2pvxq6rs0zqg3yyc50htqpb",
        ] {
            let mut spoilt = request();
            spoilt.executor_address = bad.into();
            assert!(
                matches!(DevshardJob::new(spoilt), Err(RequestError::ExecutorAddress(_))),
                "{bad:?} accepted"
            );
        }
        let mut upper = request();
        upper.executor_address = EXECUTOR.to_ascii_uppercase();
        assert!(DevshardJob::new(upper).is_ok());
    }

    #[test]
    fn reasons_say_whether_they_pass() {
        let valid: Vec<_> = VerdictReason::ALL.into_iter().filter(|r| r.is_valid()).collect();
        assert_eq!(valid, [VerdictReason::SimilarityPass, VerdictReason::MlRejected]);
        let mut counts = VerdictCounts::default();
        counts.add(VerdictReason::InflatedTokens);
        assert_eq!(serde_json::to_string(&counts).expect("json"), r#"{"inflated_tokens":1}"#);
    }
}
