//! The journal's settings.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use validator_core::config::duration_ms;

use crate::{Error, Result};

/// The journal's settings (`[storage]`). Durations are whole milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// SQLite's `synchronous` under WAL: `full` makes every commit durable at once; `normal`
    /// may lose the last commits on a power loss (never on a process crash) for fewer fsyncs.
    pub synchronous: Synchronous,
    /// Messages the writer's queue holds. History entries beyond it are dropped and counted;
    /// intents wait for room.
    pub queue_capacity: usize,
    /// Epochs of history kept: a prune keeps the current epoch and this many before it.
    pub retention_epochs: u64,
    /// How often history is pruned, in milliseconds.
    #[serde(with = "duration_ms")]
    pub prune_interval: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            synchronous: Synchronous::Full,
            queue_capacity: 65_536,
            retention_epochs: 8,
            prune_interval: Duration::from_secs(3600),
        }
    }
}

impl Config {
    /// Checks the values a journal cannot run with.
    pub fn validate(&self) -> Result<()> {
        if self.queue_capacity == 0 {
            return Err(Error::Config("storage.queue_capacity must be at least 1".into()));
        }
        if self.prune_interval.is_zero() {
            return Err(Error::Config("storage.prune_interval must be positive".into()));
        }
        Ok(())
    }

    /// The oldest epoch a prune keeps while `current_epoch` is the chain's current epoch.
    pub fn keep_from_epoch(&self, current_epoch: u64) -> u64 {
        current_epoch.saturating_sub(self.retention_epochs)
    }
}

/// SQLite's `synchronous` setting, as far as WAL mode makes a difference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Synchronous {
    /// Every commit is on disk before it is acknowledged.
    Full,
    /// Commits reach the disk at checkpoints; a power loss may undo the last ones.
    Normal,
}

impl Synchronous {
    /// The pragma's numeric value.
    pub(crate) fn level(self) -> i64 {
        match self {
            Synchronous::Full => 2,
            Synchronous::Normal => 1,
        }
    }
}
