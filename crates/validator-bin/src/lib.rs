//! The validator node: settings, the app that wires the chain and ML-node adapters and the
//! journal to the engine, the block triggers, the admin API, metrics, logs, and the `score`
//! subcommand.
//!
//! Layout:
//! - [`settings`]: the one settings struct (defaults, TOML file, `VALIDATOR_` environment);
//! - [`app`]: locks the data directory (SQLite), opens the journal, builds the adapters and the
//!   engine, runs the chain-event loop and the admin API, and drains on shutdown;
//! - [`leader`]: which replica on a shared journal does the duties that must not run twice;
//! - [`triggers`]: what each block triggers: the claim trigger and the periodic reward check;
//! - [`claim`]: recovery followed by the reward claim, and the record of claims;
//! - [`admin`]: the admin HTTP API (bearer token, recovery triggers, status);
//! - [`telemetry`]: the Prometheus listener and the tracing subscriber;
//! - [`score`]: scores two chat-completion files;
//! - [`signal`]: the OS shutdown signal as a future.

pub mod admin;
pub mod app;
pub mod claim;
pub mod leader;
pub mod score;
pub mod service;
pub mod settings;
pub mod signal;
pub mod telemetry;
pub mod triggers;

/// Exit code of a bad command line or configuration (`EX_USAGE`).
pub const EXIT_USAGE: u8 = 64;

/// Exit code when another process holds the data directory (`EX_CANTCREAT`).
pub const EXIT_LOCKED: u8 = 73;
