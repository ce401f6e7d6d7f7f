//! Replaying an inference on one of our own ML nodes (DOMAIN.md 2.6).

use async_trait::async_trait;
use bytes::Bytes;

use super::model_lock::MlNode;

/// A replay request: the chat-completion body the core built from the original prompt, with
/// the enforced tokens (see [`crate::completion::build_replay_request`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayRequest {
    /// The inference being replayed, for logs.
    pub inference_id: super::chain::InferenceId,
    /// The JSON body to post.
    pub body: Bytes,
}

/// The ML node's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayResponse {
    /// A 2xx answer with its exact body bytes: the chain message carries their SHA-256.
    Completed(Bytes),
    /// The node answered 400 or 422: upstream counts this as a pass with value 1.
    Rejected {
        /// The HTTP status.
        status: u16,
    },
}

/// Why a replay failed. All of these are the validator's side: the engine retries them and never
/// turns them into an invalidation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// No answer within the replay timeout.
    #[error("replay timed out")]
    Timeout,
    /// The connection failed, or the node answered with a non-2xx status other than 400/422.
    #[error("replay transport error: {0}")]
    Transport(String),
    /// The node answered 2xx with a body that is not a chat completion.
    #[error("bad replay response: {0}")]
    BadResponse(String),
}

impl ReplayError {
    /// Whether the failure says the node itself is unwell (for its health record).
    pub fn is_node_failure(&self) -> bool {
        matches!(self, Self::Timeout | Self::Transport(_))
    }
}

/// Sends replay requests to ML nodes.
#[async_trait]
pub trait MlNodeClient: Send + Sync + 'static {
    /// Replays `request` on `node`, once.
    async fn replay(
        &self,
        node: &MlNode,
        request: &ReplayRequest,
    ) -> Result<ReplayResponse, ReplayError>;
}
