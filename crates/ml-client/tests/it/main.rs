//! The real `HttpMlNodeClient` and `NodePool` against `testkit::LoopbackMlNode` over loopback HTTP.
//! Tests await signals from the fake (requests, disconnects, health checks); the only waits on
//! the clock are the timeouts and cool-downs under test, which run in real time because real
//! sockets do not mix with paused time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

// Status mapping, the request body, timeouts, cancellation, the size cap, and https nodes.
mod client;
// The engine end to end over HTTP: every item submitted, the slot limit the only bound.
mod engine;
// Least-busy leases, health, cool-down, probe and lease release on every path.
mod pool;
// NodeManagerBroker against testkit::LoopbackNodeManager over gRPC: leases and release outcomes,
// RESOURCE_EXHAUSTED, excluded nodes, a hanging or unreachable service, malformed endpoints,
// lost locks, the capacity listing behind has_room, and the engine end to end.
mod node_manager;

use std::time::Duration;

use bytes::Bytes;
use ml_client::{Config, NodeConfig};
use testkit::{memory::payloads_for, LoopbackMlNode};
use validator_core::{
    completion::build_replay_request,
    ports::{
        ml_node::{ReplayError, ReplayRequest},
        model_lock::{MlNode, NodeHealth},
    },
};

/// The model the tests' nodes serve.
pub(crate) const MODEL: &str = testkit::memory::MODEL;

/// The replay request the engine builds for inference `x` of the fakes.
pub(crate) fn request() -> ReplayRequest {
    let payloads = payloads_for("x");
    let replay = build_replay_request(&payloads.prompt, &payloads.response).unwrap();
    ReplayRequest { inference_id: "x".into(), body: Bytes::from(replay.body) }
}

/// A node config for `fake`, serving [`MODEL`].
pub(crate) fn node(id: &str, fake: &LoopbackMlNode, max_concurrent: usize) -> NodeConfig {
    NodeConfig::new(id, &fake.url(), &[MODEL], max_concurrent)
}

/// `nodes` with a replay timeout of `timeout`.
pub(crate) fn config(nodes: Vec<NodeConfig>, timeout: Duration) -> Config {
    Config { nodes, request_timeout: timeout, ..Config::default() }
}

/// The leased node for `fake` without a pool.
pub(crate) fn ml_node(fake: &LoopbackMlNode) -> MlNode {
    MlNode { id: "fake".into(), address: fake.url().into() }
}

/// The health a lease is released with after a replay, as the engine reports it.
pub(crate) fn health_of<T>(result: &Result<T, ReplayError>) -> NodeHealth {
    match result {
        Err(err) if err.is_node_failure() => NodeHealth::Failed,
        _ => NodeHealth::Healthy,
    }
}
