//! Leasing a slot on an ML node that serves a model (DOMAIN.md 2.5), from a local pool of nodes
//! or from the API node's NodeManager (LIVE-NETWORK.md 2.2 item 3).

use std::{fmt, sync::Arc};

use async_trait::async_trait;

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
    /// The node did not answer: refused or reset connection, 5xx.
    Failed,
    /// The node did not answer within the replay timeout.
    TimedOut,
    /// The node answered, but with something the validator could not use (a body that is not
    /// a chat completion, too large, unscorable).
    BadAnswer,
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
    /// No eligible node serving the model has a free slot right now (`ErrNoNodesAvailable`, or
    /// the NodeManager's `RESOURCE_EXHAUSTED`). The engine tries again later, holding no slot.
    #[error("no nodes available for model {model}")]
    NoNode {
        /// The model asked for.
        model: String,
    },
    /// The broker itself failed: the NodeManager unreachable, too slow, or answering something
    /// unusable (a malformed endpoint). The validator's own failure; retried.
    #[error("model lock broker failed: {0}")]
    Broker(String),
}

/// What a lease is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseRequest<'a> {
    /// The model the node must serve.
    pub model: &'a str,
    /// Nodes not to hand out: those that failed this validation's earlier replays at the
    /// transport level.
    pub excluded_nodes: &'a [Arc<str>],
    /// The devshard escrow the replay is for, when it is one (the NodeManager logs it).
    pub escrow_id: Option<&'a str>,
}

impl<'a> LeaseRequest<'a> {
    /// A request for `model` with nothing excluded.
    pub fn model(model: &'a str) -> Self {
        Self { model, excluded_nodes: &[], escrow_id: None }
    }
}

/// Hands out leases on ML nodes. Never waits for capacity: "no node" is an immediate error,
/// and the engine decides when to try again, holding no slot meanwhile.
#[async_trait]
pub trait ModelLockBroker: Send + Sync + 'static {
    /// Takes a slot on an eligible node serving `request.model`. At most one outbound call,
    /// which the engine bounds with its lock timeout.
    async fn acquire(&self, request: &LeaseRequest<'_>) -> Result<ModelLease, LockError>;

    /// Whether any node serves `model` at all (the live path's model filter).
    fn serves(&self, model: &str) -> bool;

    /// How many more leases for `model` would likely be granted now, from what the broker
    /// already knows, without any call; `None` when it cannot tell. The engine claims one of
    /// them before it fetches a devshard job's payloads, so that no payloads are fetched, and no
    /// slot spent, for a replay that could not run, and so that concurrent attempts do not all
    /// race for the same free slot.
    fn free_slots(&self, model: &str) -> Option<usize> {
        let _ = model;
        None
    }

    /// Whether a lease for `model` would likely be granted now ([`free_slots`] above 0 or
    /// unknown).
    ///
    /// [`free_slots`]: ModelLockBroker::free_slots
    fn has_room(&self, model: &str) -> bool {
        self.free_slots(model).is_none_or(|free| free > 0)
    }
}
