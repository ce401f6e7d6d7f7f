//! What payload retrieval needs to know about an executor from the chain.
//! [`ChainNodeClient`](crate::ChainNodeClient) implements it; tests use testkit's
//! `StaticDirectory`.

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
    /// its grantees for [`START_INFERENCE_MSG_TYPE`]. The two are looked up independently: when
    /// one lookup fails the other's keys still come back, marked incomplete. An error only when
    /// no key could be learnt.
    async fn signing_keys(&self, executor: &str) -> Result<SigningKeys>;
}

/// The keys allowed to sign payloads for an executor, as far as they could be looked up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SigningKeys {
    /// Compressed SEC1 keys: the account key first, then the grantees'.
    pub keys: Vec<Vec<u8>>,
    /// Why a lookup failed, when one did. A signature that verifies with none of `keys` is then
    /// no proof against the executor: the missing key may be the one it signed with.
    pub incomplete: Option<String>,
}

impl SigningKeys {
    /// Complete keys.
    pub fn complete(keys: Vec<Vec<u8>>) -> Self {
        Self { keys, incomplete: None }
    }
}
