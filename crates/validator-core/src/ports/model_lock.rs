//! Leasing a slot on an ML node that serves a model (DOMAIN.md 2.5).

use std::{fmt, sync::Arc};

/// The node a lease was granted on, as the [`MlNodeClient`](super::MlNodeClient) needs it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MlNode {
    /// Stable identifier of the node (for logs, metrics and status).
    pub id: Arc<str>,
    /// Where to reach the node; opaque to the core (the HTTP adapter takes it as a base URL).
    pub address: Arc<str>,
}

/// How the leased call went, as far as the node's health is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeHealth {
    /// The node answered (whatever the answer meant).
    Healthy,
    /// The node did not answer: timeout, refused or reset connection, 5xx.
    Failed,
    /// The call did not tell (cancelled, or the lease was never used).
    Unknown,
}

/// Releases a lease. Called exactly once, from [`ModelLease`]'s drop or
/// [`ModelLease::release`]; it must not block or await.
pub trait LeaseRelease: Send + Sync + 'static {
    /// Gives the slot back to the node and records how the call went.
    fn release(self: Box<Self>, health: NodeHealth);
}

/// One slot on one node. Dropping it releases the slot without awaiting; [`release`] also
/// reports the node's health.
///
/// [`release`]: ModelLease::release
pub struct ModelLease {
    node: MlNode,
    releaser: Option<Box<dyn LeaseRelease>>,
}

impl ModelLease {
    /// A lease on `node`, released through `releaser`.
    pub fn new(node: MlNode, releaser: Box<dyn LeaseRelease>) -> Self {
        Self { node, releaser: Some(releaser) }
    }

    /// The leased node.
    pub fn node(&self) -> &MlNode {
        &self.node
    }

    /// Releases the slot, reporting how the call went.
    pub fn release(mut self, health: NodeHealth) {
        if let Some(releaser) = self.releaser.take() {
            releaser.release(health);
        }
    }
}

impl Drop for ModelLease {
    fn drop(&mut self) {
        if let Some(releaser) = self.releaser.take() {
            releaser.release(NodeHealth::Unknown);
        }
    }
}

impl fmt::Debug for ModelLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModelLease").field("node", &self.node).finish_non_exhaustive()
    }
}

/// Why no lease was granted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LockError {
    /// No eligible node serving the model has a free slot right now (`ErrNoNodesAvailable`).
    #[error("no nodes available for model {model}")]
    NoNode {
        /// The model asked for.
        model: String,
    },
}

/// Hands out leases on ML nodes. Never waits: "no node" is an immediate error, and the engine
/// decides when to try again.
pub trait ModelLockBroker: Send + Sync + 'static {
    /// Takes a slot on the least-busy eligible node serving `model`.
    fn lease(&self, model: &str) -> Result<ModelLease, LockError>;

    /// Whether any configured node serves `model` at all (the live path's model filter).
    fn serves(&self, model: &str) -> bool;
}
