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
//! - [`guard`]: the double-signer guard: no start while another process signs with the key;
//! - [`health`]: the chain's and the ML nodes' state, for readiness, status and metrics;
//! - [`keys`]: key files: import from hex or a mnemonic, show, the checks before signing;
//! - [`admin`]: the admin HTTP API (bearer token, recovery triggers, status);
//! - [`telemetry`]: the Prometheus listener and the tracing subscriber;
//! - [`score`]: scores two chat-completion files;
//! - [`signal`]: the OS shutdown signal as a future.

pub mod admin;
pub mod app;
pub mod claim;
pub mod guard;
pub mod health;
pub mod keys;
pub mod leader;
pub mod score;
pub mod service;
pub mod settings;
pub mod signal;
pub mod telemetry;
pub mod triggers;

/// The version `validator --version` prints: the crate's, the git commit and the build date.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("VALIDATOR_GIT_COMMIT"),
    ", built ",
    env!("VALIDATOR_BUILD_DATE"),
    ")"
);

/// The git commit the binary was built from (`unknown` outside a checkout).
pub const GIT_COMMIT: &str = env!("VALIDATOR_GIT_COMMIT");

/// The date of the build, `YYYY-MM-DD` in UTC.
pub const BUILD_DATE: &str = env!("VALIDATOR_BUILD_DATE");

/// Exit code of `validator score` when the verdict is `invalid`.
pub const EXIT_INVALID_VERDICT: u8 = 3;

/// Exit code of a bad command line or configuration (`EX_USAGE`).
pub const EXIT_USAGE: u8 = 64;

/// Exit code when another process signs with this node's key (`EX_CONFIG`): see [`guard`].
pub const EXIT_OTHER_SIGNER: u8 = 78;

/// Exit code when another process holds the data directory (`EX_CANTCREAT`).
pub const EXIT_LOCKED: u8 = 73;
