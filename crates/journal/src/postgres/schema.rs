//! The PostgreSQL schema, as migrations applied in order. The version is the one row of
//! `schema_version`: the number of migrations applied.
//!
//! A migration is appended, never edited. Replicas starting together migrate once: the
//! migration runs in one transaction under an advisory lock.

use tokio_postgres::Client;

use crate::{Error, Result};

/// The advisory lock key held while migrating (any constant unique to this schema).
const MIGRATION_LOCK: i64 = 0x7661_6c69_6461_746f;

/// Every migration, in order.
///
/// Timestamps of history are unix milliseconds; `submissions.intended_at` is the database's
/// clock, so a takeover can tell an intent's age by the same clock as the lease's expiry.
pub(super) const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    "
    CREATE TABLE validations (
        id           BIGSERIAL PRIMARY KEY,
        replica      TEXT NOT NULL,
        inference_id TEXT NOT NULL,
        revalidation BOOLEAN NOT NULL,
        lane         TEXT,
        epoch        BIGINT,
        run_id       BIGINT,
        admitted_at  BIGINT NOT NULL,
        finished_at  BIGINT,
        outcome      TEXT,
        verdict      TEXT,
        value        DOUBLE PRECISION,
        msg_id       TEXT,
        tx_hash      TEXT,
        stage        TEXT,
        error        TEXT,
        attempts     INTEGER,
        wait_ms      BIGINT,
        elapsed_ms   BIGINT
    );
    CREATE INDEX validations_key ON validations (inference_id, revalidation, replica, id);
    CREATE INDEX validations_epoch ON validations (epoch);

    CREATE TABLE attempts (
        id            BIGSERIAL PRIMARY KEY,
        validation_id BIGINT NOT NULL,
        stage         TEXT NOT NULL,
        error         TEXT NOT NULL,
        duration_ms   BIGINT NOT NULL,
        at            BIGINT NOT NULL
    );
    CREATE INDEX attempts_validation ON attempts (validation_id, id);

    CREATE TABLE submissions (
        msg_id       TEXT PRIMARY KEY,
        seq          BIGSERIAL,
        replica      TEXT NOT NULL,
        inference_id TEXT NOT NULL,
        revalidation BOOLEAN NOT NULL,
        epoch        BIGINT NOT NULL,
        lane         TEXT NOT NULL,
        intent       TEXT NOT NULL,
        result       TEXT,
        result_json  TEXT,
        open         BOOLEAN NOT NULL,
        intended_at  BIGINT NOT NULL,
        resolved_at  BIGINT
    );
    CREATE INDEX submissions_key ON submissions (inference_id, revalidation);
    CREATE INDEX submissions_open ON submissions (replica, intended_at) WHERE open;
    CREATE INDEX submissions_epoch ON submissions (epoch);

    CREATE TABLE runs (
        id          BIGSERIAL PRIMARY KEY,
        replica     TEXT NOT NULL,
        run_id      BIGINT NOT NULL,
        epoch       BIGINT NOT NULL,
        trigger     TEXT,
        started_at  BIGINT,
        ended_at    BIGINT,
        state       TEXT,
        detail      TEXT,
        detected    BIGINT,
        admitted    BIGINT,
        outcomes    TEXT
    );
    CREATE INDEX runs_run_id ON runs (run_id);
    CREATE INDEX runs_epoch ON runs (epoch);

    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value BIGINT NOT NULL
    );

    CREATE TABLE claims (
        epoch      BIGINT PRIMARY KEY,
        record     TEXT NOT NULL,
        updated_at BIGINT NOT NULL
    );

    CREATE TABLE leases (
        key        TEXT PRIMARY KEY,
        holder     TEXT NOT NULL,
        state      TEXT NOT NULL,
        expires_at TIMESTAMPTZ NOT NULL,
        outcome    TEXT,
        taken_at   TIMESTAMPTZ NOT NULL,
        updated_at TIMESTAMPTZ NOT NULL
    );
    CREATE INDEX leases_held ON leases (holder) WHERE state = 'held';
    ",
];

/// The schema version this validator writes.
pub(super) fn known_version() -> u32 {
    u32::try_from(MIGRATIONS.len()).unwrap_or(u32::MAX)
}

/// Applies the migrations the database lacks, in one transaction under the advisory lock;
/// refuses a database written by a newer validator. Returns the version found.
pub(super) async fn migrate(client: &mut Client, location: &str) -> Result<u32> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        .await?;
    let found: Option<i32> =
        tx.query_opt("SELECT version FROM schema_version", &[]).await?.map(|row| row.get(0));
    let found = found.map_or(0, |version| u32::try_from(version).unwrap_or(0));
    let known = known_version();
    if found > known {
        return Err(Error::SchemaTooNew { location: location.to_owned(), found, known });
    }
    for migration in MIGRATIONS.iter().skip(usize::try_from(found).unwrap_or(usize::MAX)) {
        tx.batch_execute(migration).await?;
    }
    let version = i32::try_from(known).unwrap_or(i32::MAX);
    if found == 0 {
        tx.execute("INSERT INTO schema_version (version) VALUES ($1)", &[&version]).await?;
    } else if found < known {
        tx.execute("UPDATE schema_version SET version = $1", &[&version]).await?;
    }
    tx.commit().await?;
    Ok(found)
}
