//! Test doubles and helpers for the workspace's tests; a dev-dependency only.
//!
//! - [`fakes`]: the in-memory fakes of every port (re-exported from `validator-core`'s
//!   `test-util` feature), with inspectable state and scripted failures;
//! - [`FakeMlNode`]: an ML node over real HTTP on loopback, scriptable per request, for the
//!   HTTP adapter's tests, the demo and benchmarks;
//! - [`mocks`]: mockall mocks of the ports, for "called exactly N times" checks only.

pub mod ml_node;
pub mod mocks;

pub use ml_node::{FakeMlNode, Latency, RecordedRequest, Reply};

/// The in-memory fakes of every port.
pub mod fakes {
    pub use validator_core::testing::*;
}
