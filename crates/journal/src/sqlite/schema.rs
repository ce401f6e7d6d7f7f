//! The journal's schema, as migrations applied in order. The version is SQLite's
//! `PRAGMA user_version`: the number of migrations applied.
//!
//! A migration is appended, never edited: a database written by an older validator is brought
//! forward at open, and one written by a newer validator is refused.

use std::path::Path;

use rusqlite::{Connection, TransactionBehavior};

use super::{Error, Result};

/// Every migration, in order; the database's `user_version` counts those applied.
///
/// Timestamps are unix milliseconds. Text columns holding names use the stable snake-case names
/// of the core's enums (`Lane::as_str`, `Stage::as_str`, `OutcomeKind::as_str`, ...).
pub(super) const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    "
    CREATE TABLE validations (
        id           INTEGER PRIMARY KEY,
        inference_id TEXT NOT NULL,
        revalidation INTEGER NOT NULL,
        lane         TEXT,
        epoch        INTEGER,
        run_id       INTEGER,
        admitted_at  INTEGER NOT NULL,
        finished_at  INTEGER,
        outcome      TEXT,
        verdict      TEXT,
        value        REAL,
        msg_id       TEXT,
        tx_hash      TEXT,
        stage        TEXT,
        error        TEXT,
        attempts     INTEGER,
        wait_ms      INTEGER,
        elapsed_ms   INTEGER
    );
    CREATE INDEX validations_key ON validations (inference_id, revalidation, id);
    CREATE INDEX validations_epoch ON validations (epoch);

    CREATE TABLE attempts (
        id            INTEGER PRIMARY KEY,
        validation_id INTEGER NOT NULL,
        stage         TEXT NOT NULL,
        error         TEXT NOT NULL,
        duration_ms   INTEGER NOT NULL,
        at            INTEGER NOT NULL
    );
    CREATE INDEX attempts_validation ON attempts (validation_id, id);

    CREATE TABLE submissions (
        msg_id       TEXT PRIMARY KEY,
        inference_id TEXT NOT NULL,
        revalidation INTEGER NOT NULL,
        epoch        INTEGER NOT NULL,
        lane         TEXT NOT NULL,
        intent       TEXT NOT NULL,
        result       TEXT,
        result_json  TEXT,
        open         INTEGER NOT NULL,
        intended_at  INTEGER NOT NULL,
        resolved_at  INTEGER
    );
    CREATE INDEX submissions_key ON submissions (inference_id, revalidation);
    CREATE INDEX submissions_open ON submissions (intended_at) WHERE open = 1;
    CREATE INDEX submissions_epoch ON submissions (epoch);

    CREATE TABLE runs (
        id          INTEGER PRIMARY KEY,
        run_id      INTEGER NOT NULL,
        epoch       INTEGER NOT NULL,
        trigger     TEXT,
        started_at  INTEGER,
        ended_at    INTEGER,
        state       TEXT,
        detail      TEXT,
        detected    INTEGER,
        admitted    INTEGER,
        outcomes    TEXT
    );
    CREATE INDEX runs_run_id ON runs (run_id);
    CREATE INDEX runs_epoch ON runs (epoch);

    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    ) WITHOUT ROWID;
    ",
    // 2: the reward claim of each epoch, as the claimer describes it (JSON).
    "
    CREATE TABLE claims (
        epoch      INTEGER PRIMARY KEY,
        record     TEXT NOT NULL,
        updated_at INTEGER NOT NULL
    );
    ",
];

/// The schema version this validator writes.
pub(super) fn known_version() -> u32 {
    u32::try_from(MIGRATIONS.len()).unwrap_or(u32::MAX)
}

/// The database's schema version.
pub(super) fn version(conn: &Connection) -> Result<u32> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    Ok(u32::try_from(version).unwrap_or(u32::MAX))
}

/// Refuses a database written by a newer validator, before anything else touches it.
pub(super) fn check(conn: &Connection, path: &Path) -> Result<()> {
    let found = version(conn)?;
    let known = known_version();
    if found > known {
        return Err(Error::SchemaTooNew { location: path.display().to_string(), found, known });
    }
    Ok(())
}

/// Applies the migrations the database lacks, all in one transaction.
pub(super) fn migrate(conn: &mut Connection, path: &Path) -> Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // Read again under the write lock: another opener may have migrated in between.
    check(&tx, path)?;
    let applied = usize::try_from(version(&tx)?).unwrap_or(usize::MAX);
    for migration in MIGRATIONS.iter().skip(applied) {
        tx.execute_batch(migration)?;
    }
    if applied < MIGRATIONS.len() {
        tx.pragma_update(None, "user_version", known_version())?;
    }
    tx.commit()?;
    Ok(())
}
