//! The chain adapter: CometBFT events, chain queries, `MsgValidation` submission, and payload
//! retrieval from executors, implementing [`validator_core::ports::ChainClient`] and
//! [`validator_core::ports::PayloadSource`].

pub mod client;
pub mod config;
pub mod directory;
pub mod error;
pub mod events;
pub mod hex;
mod http;
pub mod payloads;
pub mod proto;
pub mod query;
pub mod rpc;
pub mod schedule;
pub mod seed;
pub mod signer;
pub mod tx;

pub use client::ChainNodeClient;
pub use config::Config;
pub use directory::{ExecutorDirectory, SigningKeys};
pub use error::{Error, Result};
pub use payloads::HttpPayloadSource;
pub use seed::seed_for_epoch;
pub use signer::Signer;
