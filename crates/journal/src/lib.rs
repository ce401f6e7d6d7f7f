//! The validator's durable state in its data directory: the engine's
//! [`Journal`](validator_core::ports::Journal) (admitted validations, failed attempts, outcomes,
//! write-ahead submission intents, recovery runs), the last processed block height, the history
//! the admin API shows, and the [`DataDirLock`] that keeps a second process out of the
//! directory.
//!
//! Backends: [`SqliteJournal`] (`{data_dir}/journal.sqlite`). Every backend answers the same
//! history queries with the types of [`records`](crate::InferenceHistory).

mod config;
mod error;
mod lock;
mod records;
mod sqlite;

pub use config::{Config, Synchronous};
pub use error::{Error, Result};
pub use lock::DataDirLock;
pub use records::{
    AttemptRecord, InferenceHistory, OutcomeRecord, PruneReport, RunRecord, SubmissionRecord,
    ValidationRecord,
};
pub use sqlite::{SqliteJournal, JOURNAL_FILE};

/// The lock file's name in the data directory.
pub const LOCK_FILE: &str = "LOCK";
