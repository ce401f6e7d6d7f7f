//! The chain port: the queries and submissions the engine makes against the chain, and the
//! domain types they speak in (DOMAIN.md 2.2-2.8, 3.4).

use std::{fmt, sync::Arc};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::scoring::ValueDecimal;

/// An inference id as the chain stores it. Cheap to clone: queued work holds these.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct InferenceId(Arc<str>);

impl InferenceId {
    /// Wraps an id.
    pub fn new(id: impl Into<Arc<str>>) -> Self {
        Self(id.into())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for InferenceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for InferenceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl From<&str> for InferenceId {
    fn from(id: &str) -> Self {
        Self::new(id)
    }
}

impl From<String> for InferenceId {
    fn from(id: String) -> Self {
        Self::new(id)
    }
}

/// Status of an inference on chain (`inference.inference.InferenceStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum InferenceStatus {
    /// The executor has started but not finished; it cannot be validated yet.
    Started,
    /// Finished and awaiting validation.
    Finished,
    /// Passed a validation.
    Validated,
    /// Invalidated; a further invalidation is a no-op.
    Invalidated,
    /// An invalidation vote is running.
    Voting,
    /// Expired without completion.
    Expired,
}

/// The fields of a chain `Inference` record the engine uses (DOMAIN.md 2.1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Inference {
    /// The inference id.
    pub inference_id: InferenceId,
    /// The model the inference ran on.
    pub model: String,
    /// The epoch the inference belongs to.
    pub epoch_id: u64,
    /// Account address of the executor.
    pub executed_by: String,
    /// Current status.
    pub status: InferenceStatus,
    /// SHA-256 hex of the canonical prompt; empty means "not committed", and the check is skipped.
    pub prompt_hash: String,
    /// SHA-256 hex of the response; empty means "not committed", and the check is skipped.
    pub response_hash: String,
    /// Legacy on-chain prompt payload of pre-upgrade inferences; empty for newer ones.
    pub prompt_payload: String,
    /// Legacy on-chain response payload of pre-upgrade inferences; empty for newer ones.
    pub response_payload: String,
}

impl Inference {
    /// Whether the record carries the legacy on-chain payloads ("pre-upgrade" inference).
    pub fn has_legacy_payloads(&self) -> bool {
        !self.prompt_payload.is_empty()
    }
}

/// The compact summary of an inference that recovery detection streams: never payloads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InferenceSummary {
    /// The inference id.
    pub inference_id: InferenceId,
    /// The epoch it belongs to.
    pub epoch_id: u64,
    /// The model it ran on.
    pub model: String,
}

/// One page of the paged inference listing (`InferenceAll`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InferencePage {
    /// The inferences on this page.
    pub inferences: Vec<InferenceSummary>,
    /// Key of the next page; `None` on the last page.
    pub next_key: Option<Vec<u8>>,
}

/// The epoch group's validation parameters (`ValidationParams`), as decimal strings are parsed
/// by the adapter into these values. Defaults are the chain code's defaults (DOMAIN.md 7).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ValidationParams {
    /// Lowest validation average, for high-traffic executors.
    pub min_validation_average: rust_decimal::Decimal,
    /// Highest validation average, for low-traffic or new executors.
    pub max_validation_average: rust_decimal::Decimal,
    /// Validation average at half of the full-validation traffic cutoff.
    pub min_validation_halfway: rust_decimal::Decimal,
    /// Traffic above which the minimum average applies.
    pub full_validation_traffic_cutoff: u64,
    /// Traffic at or below which the maximum average applies.
    pub min_validation_traffic_cutoff: u64,
    /// The `logprobs_mode` replays ask for (`processed_logprobs` or `raw_logprobs`); empty
    /// leaves the ML node's default.
    pub logprobs_mode: String,
}

impl Default for ValidationParams {
    fn default() -> Self {
        use rust_decimal::Decimal;
        Self {
            min_validation_average: Decimal::new(1, 2),
            max_validation_average: Decimal::ONE,
            min_validation_halfway: Decimal::new(5, 2),
            full_validation_traffic_cutoff: 10_000,
            min_validation_traffic_cutoff: 100,
            logprobs_mode: String::new(),
        }
    }
}

/// Per-inference details of `GetInferenceValidationParameters` (DOMAIN.md 2.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidationDetails {
    /// Epoch of the inference.
    pub epoch_id: u64,
    /// The inference id.
    pub inference_id: InferenceId,
    /// Account address of the executor.
    pub executor_id: String,
    /// Executor reputation, 0..=100.
    pub executor_reputation: i32,
    /// Recent request count of the executor.
    pub traffic_basis: u64,
    /// Validation power of the executor.
    pub executor_power: u64,
    /// Model of the inference.
    pub model: String,
    /// Total validation power of the epoch group.
    pub total_power: u64,
    /// Height at which the inference was created.
    pub created_at_block_height: i64,
}

/// This validator's power in one epoch group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidatorPower {
    /// The power.
    pub power: u64,
    /// The epoch the power belongs to.
    pub epoch_index: u64,
}

/// The answer of `GetInferenceValidationParameters` for a batch of ids.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ValidationParameters {
    /// Details per id found; ids the chain could not find are absent.
    pub details: Vec<ValidationDetails>,
    /// Own power per epoch group the ids were found in.
    pub validator_powers: Vec<ValidatorPower>,
    /// Chain height of the answer.
    pub current_height: i64,
    /// The epoch group's validation parameters.
    pub params: ValidationParams,
}

/// The chain's epoch state as far as the engine needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochState {
    /// Index of the latest epoch.
    pub latest_epoch: u64,
}

impl EpochState {
    /// DOMAIN.md 2.3: an inference's epoch is stale once the latest epoch is two past it.
    pub fn is_stale(&self, inference_epoch: u64) -> bool {
        self.latest_epoch >= inference_epoch.saturating_add(2)
    }
}

/// The validation weights of one epoch group, or of one model's subgroup.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochGroup {
    /// Epoch index of the group.
    pub epoch_index: u64,
    /// Model of the subgroup; empty for the parent group.
    pub model: String,
    /// Models that have subgroups (parent group only).
    pub sub_group_models: Vec<String>,
    /// Addresses holding validation weight in this group.
    pub validation_weights: Vec<String>,
    /// Whether the subgroup carries a model snapshot; subgroups without one are skipped.
    pub has_model_snapshot: bool,
    /// The model snapshot's `validation_threshold` (a model subgroup only): a devshard
    /// similarity must be strictly above it to pass.
    pub validation_threshold: Option<rust_decimal::Decimal>,
}

impl EpochGroup {
    /// Whether `address` holds validation weight in this group.
    pub fn has_member(&self, address: &str) -> bool {
        self.validation_weights.iter().any(|member| member == address)
    }
}

/// `inference.inference.MsgValidation` as the engine builds it (DOMAIN.md 2.8). The adapter
/// fills in `creator` and leaves the deprecated fields empty.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MsgValidation {
    /// A fresh UUIDv4; kept across submission retries of the same result.
    pub id: String,
    /// The inference validated.
    pub inference_id: InferenceId,
    /// SHA-256 hex of the validator's full response body; empty when there was none.
    pub response_hash: String,
    /// The similarity as the shortest decimal.
    pub value_decimal: ValueDecimal,
    /// True only on the revalidation path.
    pub revalidation: bool,
}

/// What the chain said to a submission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmitReceipt {
    /// Hash of the transaction that carried the message, when the adapter knows it.
    pub tx_hash: Option<String>,
}

/// Why a chain query failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// The chain has no such record.
    #[error("not found")]
    NotFound,
    /// The query timed out.
    #[error("chain query timed out")]
    Timeout,
    /// Any other failure; the text says what.
    #[error("chain query failed: {0}")]
    Failed(String),
}

/// Why a submission failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// The chain already holds this validator's validation of the inference
    /// (`ErrDuplicateValidation`).
    #[error("duplicate validation")]
    Duplicate,
    /// The chain refused the message for good; retrying cannot help.
    #[error("submission rejected: {0}")]
    Rejected(String),
    /// A transient failure (timeout, sequence mismatch, node unreachable); retrying may help.
    #[error("submission failed: {0}")]
    Transient(String),
    /// The chain no longer accepts classic validations at all (the protocol is retired,
    /// LIVE-NETWORK.md section 1); no validation of any inference can land.
    #[error("classic validation is retired: {0}")]
    Retired(String),
}

/// The chain queries and submissions of DOMAIN.md 2.2-2.8 and 3.4.
///
/// Implementations put their own timeout on every call; the engine also bounds each call and
/// drops the future on cancellation, so every method must be cancel-safe.
#[async_trait]
pub trait ChainClient: Send + Sync + 'static {
    /// This validator's account address (bech32).
    fn account_address(&self) -> &str;

    /// The inference record; [`ChainError::NotFound`] when the chain has none.
    async fn inference(&self, id: &InferenceId) -> Result<Inference, ChainError>;

    /// One page of the inference listing, starting at `page_key` (`None` for the first page).
    async fn inferences_page(
        &self,
        page_key: Option<Vec<u8>>,
        limit: u32,
    ) -> Result<InferencePage, ChainError>;

    /// `GetInferenceValidationParameters` for at most 1000 ids, requested as this validator.
    async fn validation_parameters(
        &self,
        ids: &[InferenceId],
    ) -> Result<ValidationParameters, ChainError>;

    /// Ids this validator already validated in `epoch` (`EpochGroupValidations`).
    /// [`ChainError::NotFound`] means none.
    async fn validated_inferences(&self, epoch: u64) -> Result<Vec<InferenceId>, ChainError>;

    /// The epoch group of `epoch` for `model`; an empty model gives the parent group.
    async fn epoch_group(&self, epoch: u64, model: &str) -> Result<EpochGroup, ChainError>;

    /// The current epoch's parent group (`CurrentEpochGroupData`).
    async fn current_epoch_group(&self) -> Result<EpochGroup, ChainError>;

    /// The module's current validation parameters (the `Params` query's `validation_params`).
    async fn validation_params(&self) -> Result<ValidationParams, ChainError>;

    /// The chain's epoch state.
    async fn epoch_state(&self) -> Result<EpochState, ChainError>;

    /// This validator's sampling seed for `epoch` (DOMAIN.md 2.2): deterministic from the key,
    /// so it can be rebuilt after a restart.
    async fn seed_for_epoch(&self, epoch: u64) -> Result<i64, ChainError>;

    /// Signs and broadcasts one `MsgValidation`.
    async fn submit_validation(&self, msg: &MsgValidation) -> Result<SubmitReceipt, SubmitError>;

    /// Whether the chain holds this validator's validation `msg` of an inference of `epoch`:
    /// `Some(true)` or `Some(false)` when the chain can tell, `None` when it cannot. Used to
    /// reconcile submissions a crashed process may or may not have sent.
    ///
    /// The default reads the validated set, which records validations but not revalidations
    /// (DOMAIN.md 2.8), so a revalidation is `None`.
    async fn validation_recorded(
        &self,
        msg: &MsgValidation,
        epoch: u64,
    ) -> Result<Option<bool>, ChainError> {
        if msg.revalidation {
            return Ok(None);
        }
        match self.validated_inferences(epoch).await {
            Ok(ids) => Ok(Some(ids.contains(&msg.inference_id))),
            Err(ChainError::NotFound) => Ok(Some(false)),
            Err(err) => Err(err),
        }
    }
}
