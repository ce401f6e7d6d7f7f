//! The chain adapter: CometBFT events, chain queries, `MsgValidation` submission, and payload
//! retrieval from executors, implementing [`validator_core::ports::ChainClient`] and
//! [`validator_core::ports::PayloadSource`].
//!
//! Not built yet: the ports it will implement are fixed in `validator-core`.

pub use validator_core::ports::{ChainClient, PayloadSource};
