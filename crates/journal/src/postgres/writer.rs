//! The writer task: takes one message, drains what else is queued (up to [`MAX_BATCH`]) into
//! one transaction on a pooled connection, commits, then acknowledges the flushes of the batch.
//! A batch that cannot be written (the database is down) is dropped and counted: history never
//! holds up the engine.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use deadpool_postgres::{GenericClient, Pool};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};
use validator_core::{ports::journal::JournalEntry, recovery::RunState, OutcomeEvent};

use super::{int, millis, HEIGHT_KEY};
use crate::{
    shared::{Drops, OutcomeColumns},
    Error, PruneReport, Result,
};

/// Most messages written in one transaction.
pub(super) const MAX_BATCH: usize = 1024;

/// What the writer is asked to do.
pub(super) enum Msg {
    /// A history entry.
    Entry(JournalEntry),
    /// Acknowledged once everything queued before it is committed.
    Flush { ack: oneshot::Sender<Result<(), String>> },
    /// The chain source's last processed height.
    Height(u64),
    /// Stop taking messages; write those already queued, then exit.
    Close,
}

/// The writer task's state.
pub(super) struct Writer {
    pool: Pool,
    replica: String,
    timeout: Duration,
    drops: Arc<Drops>,
}

impl Writer {
    pub(super) fn new(pool: Pool, replica: String, timeout: Duration, drops: Arc<Drops>) -> Self {
        Self { pool, replica, timeout, drops }
    }

    /// Runs until every sender is gone or a [`Msg::Close`] has been seen and the queue drained.
    pub(super) async fn run(self, mut receiver: mpsc::Receiver<Msg>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while let Some(first) = receiver.recv().await {
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match receiver.try_recv() {
                    Ok(msg) => batch.push(msg),
                    Err(_) => break,
                }
            }
            if self.write(&mut batch).await {
                receiver.close();
            }
        }
        debug!("journal writer stopped");
    }

    /// Writes one batch and sends its acknowledgements. Returns whether it asked to close.
    async fn write(&self, batch: &mut Vec<Msg>) -> bool {
        let mut flushes = Vec::new();
        let mut entries = Vec::new();
        let mut height = None;
        let mut close = false;
        for msg in batch.drain(..) {
            match msg {
                Msg::Entry(entry) => entries.push(entry),
                Msg::Flush { ack } => flushes.push(ack),
                Msg::Height(value) => height = Some(height.unwrap_or(0).max(value)),
                Msg::Close => close = true,
            }
        }
        let count = entries.len();
        let written =
            tokio::time::timeout(self.timeout.saturating_mul(4), self.transaction(entries, height))
                .await
                .unwrap_or(Err(Error::Timeout(self.timeout.saturating_mul(4))));
        let result = written.map_err(|err| {
            warn!(%err, entries = count, "journal batch not committed; its history is lost");
            self.drops.add(u64::try_from(count).unwrap_or(u64::MAX));
            err.to_string()
        });
        for ack in flushes {
            let _ = ack.send(result.clone());
        }
        close
    }

    async fn transaction(&self, entries: Vec<JournalEntry>, height: Option<u64>) -> Result<()> {
        if entries.is_empty() && height.is_none() {
            return Ok(());
        }
        let mut client = self.pool.get().await.map_err(|err| Error::Pool(err.to_string()))?;
        let mut tx = client.transaction().await?;
        let mut failed = 0_usize;
        let mut first_error = None;
        for entry in entries {
            // One savepoint per entry: a bad entry is skipped, the batch still commits.
            let savepoint = tx.savepoint("entry").await?;
            match apply(&savepoint, &self.replica, entry).await {
                Ok(()) => savepoint.commit().await?,
                Err(err) => {
                    failed += 1;
                    first_error.get_or_insert(err);
                    savepoint.rollback().await?;
                }
            }
        }
        if let Some(height) = height {
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ($1, $2) \
                 ON CONFLICT (key) DO UPDATE SET value = greatest(meta.value, excluded.value)",
                &[&HEIGHT_KEY, &int(height)],
            )
            .await?;
        }
        if let Some(err) = first_error {
            warn!(%err, failed, "journal entries not written");
        }
        tx.commit().await?;
        Ok(())
    }
}

async fn apply(conn: &impl GenericClient, replica: &str, entry: JournalEntry) -> Result<()> {
    match entry {
        JournalEntry::Admitted { inference_id, revalidation, lane, epoch, run_id, at } => {
            conn.execute(
                "INSERT INTO validations (replica, inference_id, revalidation, lane, epoch, \
                 run_id, admitted_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[
                    &replica,
                    &inference_id.as_str(),
                    &revalidation,
                    &lane.as_str(),
                    &epoch.map(int),
                    &run_id.map(int),
                    &millis(at),
                ],
            )
            .await?;
        }
        JournalEntry::Epoch { inference_id, revalidation, epoch } => {
            let id =
                open_row(conn, replica, inference_id.as_str(), revalidation, SystemTime::now())
                    .await?;
            conn.execute("UPDATE validations SET epoch = $2 WHERE id = $1", &[&id, &int(epoch)])
                .await?;
        }
        JournalEntry::Attempt { inference_id, revalidation, stage, error, duration, at } => {
            let started = at.checked_sub(duration).unwrap_or(at);
            let id = open_row(conn, replica, inference_id.as_str(), revalidation, started).await?;
            conn.execute(
                "INSERT INTO attempts (validation_id, stage, error, duration_ms, at) \
                 VALUES ($1, $2, $3, $4, $5)",
                &[&id, &stage.as_str(), &error, &duration_ms(duration), &millis(at)],
            )
            .await?;
        }
        JournalEntry::Submission { msg_id, result, at } => {
            let json = serde_json::to_string(&result)
                .map_err(|source| Error::Decode { what: format!("answer to {msg_id}"), source })?;
            let closes = result.closes();
            let updated = conn
                .execute(
                    "UPDATE submissions SET result = $2, result_json = $3, open = $4, \
                     resolved_at = $5 WHERE msg_id = $1",
                    &[&msg_id, &result.as_str(), &json, &!closes, &closes.then(|| millis(at))],
                )
                .await?;
            if updated == 0 {
                debug!(%msg_id, "submission answer without a recorded intent");
            }
        }
        JournalEntry::Finished { event, at } => finish(conn, replica, &event, at).await?,
        JournalEntry::RunStarted { run_id, epoch, trigger, at } => {
            conn.execute(
                "INSERT INTO runs (replica, run_id, epoch, trigger, started_at) \
                 VALUES ($1, $2, $3, $4, $5)",
                &[&replica, &int(run_id), &int(epoch), &trigger.as_str(), &millis(at)],
            )
            .await?;
        }
        JournalEntry::RunEnded { report, at } => {
            let state = report.state.as_str();
            let detail = match &report.state {
                RunState::Failed(detail) => Some(detail.as_str()),
                _ => None,
            };
            let outcomes = serde_json::to_string(&report.outcomes).map_err(|source| {
                Error::Decode { what: format!("run {}", report.run_id), source }
            })?;
            let updated = conn
                .execute(
                    "UPDATE runs SET ended_at = $3, state = $4, detail = $5, detected = $6, \
                     admitted = $7, outcomes = $8 WHERE id = (SELECT max(id) FROM runs \
                     WHERE run_id = $1 AND replica = $2)",
                    &[
                        &int(report.run_id),
                        &replica,
                        &millis(at),
                        &state,
                        &detail,
                        &int(report.detected),
                        &int(report.admitted),
                        &outcomes,
                    ],
                )
                .await?;
            if updated == 0 {
                // Its start was dropped from a full queue: keep the end on its own.
                conn.execute(
                    "INSERT INTO runs (replica, run_id, epoch, ended_at, state, detail, \
                     detected, admitted, outcomes) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                    &[
                        &replica,
                        &int(report.run_id),
                        &int(report.epoch),
                        &millis(at),
                        &state,
                        &detail,
                        &int(report.detected),
                        &int(report.admitted),
                        &outcomes,
                    ],
                )
                .await?;
            }
        }
    }
    Ok(())
}

/// This replica's latest unfinished validation row of the key; when there is none (its
/// admission was dropped from a full queue), a row admitted at `admitted_at`.
async fn open_row(
    conn: &impl GenericClient,
    replica: &str,
    inference_id: &str,
    revalidation: bool,
    admitted_at: SystemTime,
) -> Result<i64> {
    let row = conn
        .query_one(
            "SELECT max(id) FROM validations WHERE inference_id = $1 AND revalidation = $2 \
             AND replica = $3 AND finished_at IS NULL",
            &[&inference_id, &revalidation, &replica],
        )
        .await?;
    if let Some(id) = row.get::<_, Option<i64>>(0) {
        return Ok(id);
    }
    let row = conn
        .query_one(
            "INSERT INTO validations (replica, inference_id, revalidation, admitted_at) \
             VALUES ($1, $2, $3, $4) RETURNING id",
            &[&replica, &inference_id, &revalidation, &millis(admitted_at)],
        )
        .await?;
    Ok(row.get(0))
}

async fn finish(
    conn: &impl GenericClient,
    replica: &str,
    event: &OutcomeEvent,
    at: SystemTime,
) -> Result<()> {
    let admitted_at = at.checked_sub(event.elapsed).unwrap_or(at);
    let id = open_row(conn, replica, event.inference_id.as_str(), event.revalidation, admitted_at)
        .await?;
    let OutcomeColumns { verdict, value, msg_id, tx_hash, stage, error } =
        OutcomeColumns::of(&event.outcome);
    let attempts = i32::try_from(event.attempts).unwrap_or(i32::MAX);
    conn.execute(
        "UPDATE validations SET lane = $2, run_id = coalesce(run_id, $3), finished_at = $4, \
         outcome = $5, verdict = $6, value = $7, msg_id = $8, tx_hash = $9, stage = $10, \
         error = $11, attempts = $12, wait_ms = $13, elapsed_ms = $14 WHERE id = $1",
        &[
            &id,
            &event.lane.as_str(),
            &event.run_id.map(int),
            &millis(at),
            &event.outcome.kind().as_str(),
            &verdict,
            &value,
            &msg_id,
            &tx_hash,
            &stage,
            &error,
            &attempts,
            &event.wait.map(duration_ms),
            &duration_ms(event.elapsed),
        ],
    )
    .await?;
    Ok(())
}

/// Deletes history older than `keep_from_epoch` in one transaction, as SQLite's prune; finished
/// leases go with the validations of their time.
pub(super) async fn prune(
    client: &mut deadpool_postgres::Object,
    keep_from_epoch: u64,
) -> Result<PruneReport> {
    let keep = int(keep_from_epoch);
    let tx = client.transaction().await?;
    let horizon: i64 = tx
        .query_one("SELECT min(admitted_at) FROM validations WHERE epoch >= $1", &[&keep])
        .await?
        .get::<_, Option<i64>>(0)
        .unwrap_or(i64::MIN);
    let attempts = tx
        .execute(
            "DELETE FROM attempts WHERE validation_id IN (SELECT id FROM validations \
             WHERE epoch < $1 OR (epoch IS NULL AND admitted_at < $2))",
            &[&keep, &horizon],
        )
        .await?;
    let validations = tx
        .execute(
            "DELETE FROM validations WHERE epoch < $1 OR (epoch IS NULL AND admitted_at < $2)",
            &[&keep, &horizon],
        )
        .await?;
    let submissions =
        tx.execute("DELETE FROM submissions WHERE NOT open AND epoch < $1", &[&keep]).await?;
    let runs = tx.execute("DELETE FROM runs WHERE epoch < $1", &[&keep]).await?;
    let claims = tx.execute("DELETE FROM claims WHERE epoch < $1", &[&keep]).await?;
    if horizon > i64::MIN {
        tx.execute(
            "DELETE FROM leases WHERE state = 'done' \
             AND updated_at < to_timestamp($1::bigint / 1000.0)",
            &[&horizon],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(PruneReport { validations, attempts, submissions, runs, claims })
}

fn duration_ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}
