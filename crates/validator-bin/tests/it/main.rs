//! Integration tests of the `validator` binary and its app.
#![allow(clippy::unwrap_used, clippy::expect_used)]

// The admin API and metrics of an app running on loopback fakes, in process.
mod admin;
// Configuration loading and its exit codes, through the built binary.
mod config;
// The demo process: SIGTERM, and an external ML node with hanging replies.
mod process;
// `validator score` on the recorded vLLM fixtures.
mod score;
// The recovery triggers: the claim-time dispatcher, the reward checker, the admin claim.
mod triggers;

use std::path::PathBuf;

/// The built binary.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_validator"))
}

/// A fresh path under the system's temporary directory.
pub fn temp_path(name: &str) -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("validator-it-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}
