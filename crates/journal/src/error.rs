//! What can go wrong with the data directory or the journal.

use std::path::PathBuf;

use validator_core::ports::journal::JournalError;

use crate::LOCK_FILE;

/// What went wrong with the data directory or the journal.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Another process holds the data directory's lock.
    #[error(
        "another validator process is using the data directory {} (its {LOCK_FILE} file is locked)",
        path.display()
    )]
    Locked {
        /// The data directory.
        path: PathBuf,
    },
    /// The database was written by a newer validator.
    #[error(
        "the journal {location} has schema version {found}, but this validator knows versions \
         up to {known}: run a newer validator, or point it at another database"
    )]
    SchemaTooNew {
        /// The database file, or the PostgreSQL database's URL without its password.
        location: String,
        /// Its schema version.
        found: u32,
        /// The newest version this validator knows.
        known: u32,
    },
    /// SQLite would not switch the database to WAL mode.
    #[error(
        "the journal {} cannot use WAL mode (journal_mode stays {mode}): put the data directory \
         on a local file system",
        path.display()
    )]
    NoWal {
        /// The database file.
        path: PathBuf,
        /// The journal mode SQLite kept.
        mode: String,
    },
    /// A setting is out of range.
    #[error("invalid storage settings: {0}")]
    Config(String),
    /// A file system operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The database could not be opened or set up.
    #[error("cannot open the journal {}: {source}", path.display())]
    Open {
        /// The database file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: rusqlite::Error,
    },
    /// A query failed.
    #[error("journal query failed: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A PostgreSQL call failed.
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// No PostgreSQL connection could be had.
    #[error("PostgreSQL connection: {0}")]
    Pool(String),
    /// A PostgreSQL call did not answer within `storage.timeout`.
    #[error("PostgreSQL did not answer within {0:?}")]
    Timeout(std::time::Duration),
    /// The writer could not commit.
    #[error("journal write failed: {0}")]
    Write(String),
    /// A stored JSON value does not decode.
    #[error("journal holds an undecodable {what}: {source}")]
    Decode {
        /// What it belongs to.
        what: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The journal was closed, or its writer stopped.
    #[error("the journal is closed")]
    Closed,
    /// A blocking read panicked or was cancelled.
    #[error("journal read did not complete: {0}")]
    Task(String),
}

/// The module's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Error> for JournalError {
    fn from(err: Error) -> Self {
        JournalError(err.to_string())
    }
}
