//! Test doubles and helpers for the workspace's tests; a dev-dependency only.
//!
//! - [`fakes`]: the in-memory fakes of every port (re-exported from `validator-core`'s
//!   `test-util` feature), with inspectable state and scripted failures;
//! - [`mocks`]: mockall mocks of the ports, for "called exactly N times" checks only.

pub mod mocks;

/// The in-memory fakes of every port.
pub mod fakes {
    pub use validator_core::testing::*;
}
