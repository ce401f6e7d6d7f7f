//! The HTTP adapter of [`validator_core::ports::MlNodeClient`] and the node-pool broker
//! implementing [`validator_core::ports::ModelLockBroker`].
//!
//! Not built yet: the ports it will implement are fixed in `validator-core`.

pub use validator_core::ports::{MlNodeClient, ModelLockBroker};
