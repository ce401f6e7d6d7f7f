//! The validator's durable state: the engine's [`Journal`](validator_core::ports::Journal)
//! (admitted validations, failed attempts, outcomes, write-ahead submission intents, recovery
//! runs), the last processed block height, the claim records, the history the admin API shows,
//! the [`Leases`](validator_core::ports::Leases) that share work between replicas, and the
//! [`DataDirLock`] that keeps a second process out of a SQLite data directory.
//!
//! Backends: [`SqliteJournal`] (`{data_dir}/journal.sqlite`, one process) and
//! [`PostgresJournal`] (one database, several replicas); [`Store`] is either, as configured.
//! Every backend answers the same history queries with the types of
//! [`records`](crate::InferenceHistory).

mod config;
mod error;
mod lock;
mod postgres;
mod records;
mod shared;
mod sqlite;
mod store;

pub use config::{redact, Backend, Config, Synchronous};
pub use error::{Error, Result};
pub use lock::DataDirLock;
pub use postgres::PostgresJournal;
pub use records::{
    AttemptRecord, InferenceHistory, OutcomeRecord, PruneReport, RunRecord, SubmissionRecord,
    ValidationRecord,
};
pub use sqlite::{SqliteJournal, JOURNAL_FILE};
pub use store::Store;

/// The lock file's name in the data directory.
pub const LOCK_FILE: &str = "LOCK";
