//! Retrieval of an inference's prompt and response payloads from its executor (DOMAIN.md 2.3).

use async_trait::async_trait;
use bytes::Bytes;

use super::chain::Inference;
use crate::devshard::DevshardJob;

/// The decoded payloads of one inference, verified against the on-chain commitment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payloads {
    /// The canonical prompt JSON the executor served.
    pub prompt: Bytes,
    /// The response body (plain chat completion, or the streamed `{"events": [...]}` form).
    pub response: Bytes,
}

/// Why one fetch attempt failed. The variants decide what the engine does next.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// The executor answered 404: the payload is gone. The engine skips the inference.
    #[error("payload gone")]
    Gone,
    /// The payload does not match the on-chain hashes, or cannot be hashed. No retry: the
    /// engine submits an invalidation.
    #[error("payload hash mismatch: {0}")]
    HashMismatch(String),
    /// The executor's signature verifies with none of its keys. Retried, as upstream does.
    #[error("bad executor signature")]
    BadSignature,
    /// The executor did not serve its payloads: a timeout, a refused connection, a 5xx, a
    /// malformed answer. Retried; when every attempt fails this way the engine invalidates, as
    /// upstream does.
    #[error("payload unavailable: {0}")]
    Unavailable(String),
    /// The validator's own side failed: its chain query for the executor's URL or keys, its
    /// resolver, its TLS, its address guard. Retried like [`PayloadError::Unavailable`], but never
    /// the executor's fault: a validation with such a failure among its attempts gives up
    /// without a submission instead of invalidating.
    #[error("validator-side payload failure: {0}")]
    Local(String),
}

impl PayloadError {
    /// Whether the failure is the validator's own rather than the executor's.
    pub fn is_local(&self) -> bool {
        matches!(self, PayloadError::Local(_))
    }
}

/// One attempt at fetching an inference's payloads. Retries, back-off and the fallback to legacy
/// on-chain payloads are the engine's business, not the adapter's.
#[async_trait]
pub trait PayloadSource: Send + Sync + 'static {
    /// Fetches and verifies the payloads of `inference` from its executor, once.
    async fn fetch(&self, inference: &Inference) -> Result<Payloads, PayloadError>;

    /// Fetches a devshard inference's payloads from its executor's session route, once, checks
    /// the executor's signature as [`fetch`](PayloadSource::fetch) does, then the raw SHA-256 of
    /// both payloads against the job's hashes ([`PayloadError::HashMismatch`] when they differ).
    /// A source that serves only classic inferences keeps the default, a validator-side error.
    async fn fetch_devshard(&self, job: &DevshardJob) -> Result<Payloads, PayloadError> {
        let _ = job;
        Err(PayloadError::Local("this payload source does not serve devshard sessions".into()))
    }
}
