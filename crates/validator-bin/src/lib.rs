//! The validator node: settings, the app that wires the chain and ML-node adapters to the
//! engine, the admin API, metrics, logs, and the `demo` and `score` subcommands.
//!
//! Layout:
//! - [`settings`]: the one settings struct (defaults, TOML file, `VALIDATOR_` environment);
//! - [`app`]: builds the adapters and the engine, runs the chain-event loop and the claim-time
//!   dispatcher, and drains on shutdown;
//! - [`admin`]: the admin HTTP API (bearer token, recovery triggers, status);
//! - [`telemetry`]: the Prometheus listener and the tracing subscriber;
//! - [`demo`]: the whole system on loopback fakes, in one command;
//! - [`score`]: scores two chat-completion files;
//! - [`signal`]: the OS shutdown signal as a future.

pub mod admin;
pub mod app;
pub mod demo;
pub mod score;
pub mod settings;
pub mod signal;
pub mod telemetry;

/// Exit code of a bad command line or configuration (`EX_USAGE`).
pub const EXIT_USAGE: u8 = 64;
