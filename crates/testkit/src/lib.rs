//! Test doubles and helpers for the workspace's tests, the demo and the bench; never a dependency
//! of the `validator` binary.
//!
//! - [`memory`]: the in-memory fakes of every port (`Memory*`, from `validator-core`'s
//!   `test-util` feature), with inspectable state and scripted failures;
//! - [`LoopbackMlNode`]: an ML node over real HTTP on loopback, scriptable per request, for the
//!   HTTP adapter's tests, the demo and benchmarks;
//! - [`LoopbackExecutor`]: an executor's payload endpoints (classic and devshard session) over real
//!   HTTP on loopback, scriptable per request or inference, with [`StaticDirectory`], an
//!   in-memory executor directory;
//! - [`LoopbackNodeManager`]: the API node's NodeManager gRPC service on loopback: nodes, locks
//!   with a TTL, capacity listing and runtime configuration, with fault switches and counters;
//! - [`LoopbackChainNode`]: a chain node over real HTTP and websocket on loopback (CometBFT RPC,
//!   `abci_query` queries, signed transactions), scriptable with accounts, inferences, epochs and
//!   blocks, and able to drop its websockets, skip heights, stall and send raw frames;
//! - [`TestCa`]: a certificate authority made up in the test, whose server certificates (valid,
//!   expired, self-signed, for any names) put the ML node, the executor and the chain node on
//!   TLS (`start_tls`; the NodeManager is plain HTTP/2, as upstream serves it);
//! - [`devshard_host`]: session hosts calling the validation service over gRPC as upstream's
//!   devshard hosts do (S sessions, 20 workers each);
//! - [`mocks`]: mockall mocks of the ports, for "called exactly N times" checks only;
//! - [`process`]: temporary paths and bounded waits for tests that run a built binary.

pub mod ca;
pub mod chain_node;
pub mod devshard_host;
pub mod executor;
pub mod ml_node;
pub mod mocks;
pub mod node_manager;
pub mod postgres;
pub mod process;

pub use ca::{public_tls, Leaf, ServerTls, TestCa};
pub use chain_node::{LoopbackChainNode, Submitted, SubmittedMsg, TxEvent};
pub use executor::{
    devshard_key, devshard_payloads, fixture_payloads, DevshardHashes, ExecutorReply,
    ExecutorRequest, LoopbackExecutor, OnChainHashes, StaticDirectory, DEVSHARD_RUNTIME,
};
pub use ml_node::{peak_held, Latency, LoopbackMlNode, RecordedRequest, Reply, Stay};
pub use node_manager::{LoopbackNodeManager, NodeManagerStats};

/// The in-memory fakes of every port.
pub mod memory {
    pub use validator_core::testing::*;
}

mod serve;
mod watched;
