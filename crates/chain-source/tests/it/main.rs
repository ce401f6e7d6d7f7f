//! chain-source's integration tests: the adapters against loopback fakes of their peers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

// Payload retrieval against `testkit::LoopbackExecutor`: verification, failure mapping, bounds, the
// address guard, and the engine end to end over HTTP.
mod payloads;

// Devshard payload retrieval against the session route of `testkit::LoopbackExecutor`: the
// request, the decimal id signed, raw hash checks, and the same failure mapping and bounds.
mod devshard;

// Chain queries, the directory, the seed and transaction submission against
// `testkit::LoopbackChainNode`, and the engine end to end through the chain client.
mod chain;

// TLS: executors over https (path prefix, the guard's resolver, certificates refused as the
// executor's failure, a stalled handshake), chain RPC over https and the websocket over wss.
mod tls;

// Event decoding against CometBFT fixtures, and the event source against `LoopbackChainNode`: order,
// gaps, reconnects, the catch-up window, stalls and size caps.
mod events;
