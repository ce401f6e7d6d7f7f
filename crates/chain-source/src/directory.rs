//! What payload retrieval needs to know about an executor from the chain. The chain query client
//! implements it; tests implement it in memory.

use async_trait::async_trait;

use crate::Result;

/// The type URL of the message whose grantees may sign payloads for an executor.
pub const START_INFERENCE_MSG_TYPE: &str = "/inference.inference.MsgStartInference";

/// Executor facts from chain state (DOMAIN.md 2.3 steps 1 and 7).
#[async_trait]
pub trait ExecutorDirectory: Send + Sync + 'static {
    /// The executor's `inference_url` (`Participant` query); an error when it has none.
    async fn inference_url(&self, executor: &str) -> Result<String>;

    /// The keys allowed to sign payloads for the executor: its own account key, then the keys of
    /// its grantees for [`START_INFERENCE_MSG_TYPE`]. Compressed SEC1 bytes.
    async fn signing_keys(&self, executor: &str) -> Result<Vec<Vec<u8>>>;
}
