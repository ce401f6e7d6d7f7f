//! The validator node: settings, the app that wires the chain and ML-node adapters to the
//! engine, the admin API, metrics, logs, and the `demo` and `score` subcommands.
//!
//! Layout:
//! - [`settings`]: the one settings struct (defaults, TOML file, `VALIDATOR_` environment);
//! - [`app`]: locks the data directory, opens the journal, builds the adapters and the engine,
//!   runs the chain-event loop, the claim-time dispatcher and the reward checker, and drains on
//!   shutdown;
//! - [`admin`]: the admin HTTP API (bearer token, recovery triggers, status);
//! - [`telemetry`]: the Prometheus listener and the tracing subscriber;
//! - [`demo`]: the whole system on loopback fakes, in one command;
//! - [`score`]: scores two chat-completion files;
//! - [`signal`]: the OS shutdown signal as a future;
//! - [`storage`]: the SQLite journal and the data directory's single-instance lock.

pub mod admin;
pub mod app;
pub mod demo;
pub mod score;
pub mod settings;
pub mod signal;
pub mod storage;
pub mod telemetry;

/// Exit code of a bad command line or configuration (`EX_USAGE`).
pub const EXIT_USAGE: u8 = 64;

/// Exit code when another process holds the data directory (`EX_CANTCREAT`).
pub const EXIT_LOCKED: u8 = 73;
