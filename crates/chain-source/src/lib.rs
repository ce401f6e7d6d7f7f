//! The chain adapter: CometBFT events, chain queries, `MsgValidation` submission, and payload
//! retrieval from executors, implementing [`validator_core::ports::ChainClient`] and
//! [`validator_core::ports::PayloadSource`].

pub mod config;
pub mod directory;
pub mod error;
pub mod signer;

pub use config::Config;
pub use directory::ExecutorDirectory;
pub use error::{Error, Result};
pub use signer::Signer;
