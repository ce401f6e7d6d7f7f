//! The HTTP adapter of [`validator_core::ports::MlNodeClient`] ([`HttpMlNodeClient`]) and two
//! brokers implementing [`validator_core::ports::ModelLockBroker`]: the local node pool
//! ([`NodePool`]) and the API node's NodeManager ([`NodeManagerBroker`]).
//!
//! Layout:
//! - [`client`]: the replay request over reqwest: URL, timeout, size cap, status mapping;
//! - [`pool`]: leases on the least-busy eligible node, per-node health and the optional probe;
//! - [`node_manager`]: leases as NodeManager locks over gRPC, released with the call's outcome,
//!   and the capacity listing behind `has_room`;
//! - [`config`]: one serde [`Config`] for all three;
//! - [`error`]: construction and NodeManager errors; replay failures are the port's
//!   `ReplayError`.
//!
//! This is the only crate that knows the ML node's HTTP interface (paths, statuses, caps) and
//! the NodeManager's; the body it carries is `validator_core::completion`'s.

pub mod client;
pub mod config;
pub mod error;
pub mod node_manager;
pub mod pool;

pub use client::HttpMlNodeClient;
pub use config::{Broker, Config, HealthConfig, NodeConfig, NodeManagerConfig};
pub use error::{Error, Result};
pub use node_manager::{NodeManagerBroker, NodeManagerStatus};
pub use pool::{Availability, NodePool, NodeStatus};
