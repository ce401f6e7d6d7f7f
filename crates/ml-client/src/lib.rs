//! The HTTP adapter of [`validator_core::ports::MlNodeClient`] ([`HttpMlNodeClient`]) and the
//! node-pool broker implementing [`validator_core::ports::ModelLockBroker`] ([`NodePool`]).
//!
//! Layout:
//! - [`client`]: the replay request over reqwest: URL, timeout, size cap, status mapping;
//! - [`pool`]: leases on the least-busy eligible node, per-node health and the optional probe;
//! - [`config`]: one serde [`Config`] for both;
//! - [`error`]: construction errors; replay failures are the port's `ReplayError`.
//!
//! This is the only crate that knows the ML node's HTTP interface (paths, statuses, caps); the
//! body it carries is `validator_core::completion`'s.

pub mod client;
pub mod config;
pub mod error;
pub mod pool;

pub use client::HttpMlNodeClient;
pub use config::{Config, HealthConfig, NodeConfig};
pub use error::{Error, Result};
pub use pool::{Availability, NodePool, NodeStatus};
