//! The writer thread: the only owner of the write connection. It takes one message, drains
//! what else is queued (up to [`MAX_BATCH`]) into the same transaction, commits, and only then
//! acknowledges the intents of the batch.

use std::time::{Duration, SystemTime};

use rusqlite::{params, Connection, OptionalExtension as _, TransactionBehavior};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};
use validator_core::{
    ports::journal::{Intent, JournalEntry},
    recovery::RunState,
    OutcomeEvent,
};

use super::{int, millis, PruneReport, HEIGHT_KEY, RUN_ID_KEY};
use crate::shared::OutcomeColumns;

/// Most messages written in one transaction. Large enough that a burst of history costs a
/// handful of commits (each an fsync under `synchronous = full`), small enough that an intent
/// queued behind a burst is acknowledged within milliseconds.
pub(super) const MAX_BATCH: usize = 1024;

/// What the writer is asked to do.
pub(super) enum Msg {
    /// A history entry.
    Entry(JournalEntry),
    /// An intent, acknowledged once committed.
    Intend { intent: Intent, at: SystemTime, ack: oneshot::Sender<Result<(), String>> },
    /// Acknowledged once everything queued before it is committed.
    Flush { ack: oneshot::Sender<Result<(), String>> },
    /// The chain source's last processed height.
    Height(u64),
    /// An epoch's claim record, acknowledged once committed.
    Claim { epoch: u64, record: String, ack: oneshot::Sender<Result<(), String>> },
    /// Retention: delete what is older than the epoch.
    Prune { keep_from_epoch: u64, ack: oneshot::Sender<Result<PruneReport, String>> },
    /// Stop taking messages; write those already queued, then exit.
    Close,
    /// Holds the writer inside a transaction until `resume` fires or is dropped.
    #[cfg(test)]
    Pause { paused: oneshot::Sender<()>, resume: std::sync::mpsc::Receiver<()> },
}

/// An acknowledgement owed once the batch's fate is known.
enum Ack {
    Done(oneshot::Sender<Result<(), String>>, Result<(), String>),
    Prune(oneshot::Sender<Result<PruneReport, String>>, Result<PruneReport, String>),
}

impl Ack {
    fn fail(self, error: &str) -> Self {
        match self {
            Ack::Done(ack, _) => Ack::Done(ack, Err(error.to_owned())),
            Ack::Prune(ack, _) => Ack::Prune(ack, Err(error.to_owned())),
        }
    }

    fn send(self) {
        // The waiter may have gone away (its future was dropped); the write stands regardless.
        match self {
            Ack::Done(ack, result) => {
                let _ = ack.send(result);
            }
            Ack::Prune(ack, result) => {
                let _ = ack.send(result);
            }
        }
    }
}

/// The writer thread's state.
pub(super) struct Writer {
    conn: Connection,
}

impl Writer {
    pub(super) fn new(conn: Connection) -> Self {
        Self { conn }
    }

    /// Runs until every sender is gone or a [`Msg::Close`] has been seen and the queue drained.
    pub(super) fn run(mut self, mut receiver: mpsc::Receiver<Msg>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while let Some(first) = receiver.blocking_recv() {
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match receiver.try_recv() {
                    Ok(msg) => batch.push(msg),
                    Err(_) => break,
                }
            }
            if self.write(&mut batch) {
                // Messages already queued are still received; new sends fail.
                receiver.close();
            }
        }
        debug!("journal writer stopped");
    }

    /// Writes one batch in one transaction and sends its acknowledgements. Returns whether the
    /// batch asked the writer to close.
    fn write(&mut self, batch: &mut Vec<Msg>) -> bool {
        let messages = batch.len();
        let mut acks = Vec::new();
        let mut close = false;
        let committed = self.transaction(batch, &mut acks, &mut close);
        // Whatever failed, the batch is gone: a message left behind would be written twice.
        batch.clear();
        match committed {
            Ok(()) => acks.into_iter().for_each(Ack::send),
            Err(err) => {
                let error = err.to_string();
                warn!(%err, messages, "journal batch not committed");
                acks.into_iter().for_each(|ack| ack.fail(&error).send());
            }
        }
        close
    }

    fn transaction(
        &mut self,
        batch: &mut Vec<Msg>,
        acks: &mut Vec<Ack>,
        close: &mut bool,
    ) -> rusqlite::Result<()> {
        let tx = match self.conn.transaction_with_behavior(TransactionBehavior::Immediate) {
            Ok(tx) => tx,
            Err(err) => {
                // Nothing was written: the intents and prunes of the batch fail with the error.
                for msg in batch.drain(..) {
                    match msg {
                        Msg::Intend { ack, .. } | Msg::Flush { ack } | Msg::Claim { ack, .. } => {
                            acks.push(Ack::Done(ack, Ok(())));
                        }
                        Msg::Prune { ack, .. } => {
                            acks.push(Ack::Prune(ack, Ok(PruneReport::default())))
                        }
                        Msg::Close => *close = true,
                        _ => {}
                    }
                }
                return Err(err);
            }
        };
        let mut height = None;
        let mut failed = 0_usize;
        let mut first_error = None;
        for msg in batch.drain(..) {
            match msg {
                Msg::Entry(entry) => {
                    if let Err(err) = apply(&tx, entry) {
                        failed += 1;
                        first_error.get_or_insert(err);
                    }
                }
                Msg::Intend { intent, at, ack } => {
                    let result = intend(&tx, &intent, at);
                    acks.push(Ack::Done(ack, result));
                }
                Msg::Flush { ack } => acks.push(Ack::Done(ack, Ok(()))),
                Msg::Height(value) => height = Some(value),
                Msg::Claim { epoch, record, ack } => {
                    let result = tx
                        .prepare_cached(
                            "INSERT INTO claims (epoch, record, updated_at) VALUES (?1, ?2, ?3) \
                             ON CONFLICT (epoch) DO UPDATE SET record = ?2, updated_at = ?3",
                        )
                        .and_then(|mut statement| {
                            statement.execute(params![
                                i64::try_from(epoch).unwrap_or(i64::MAX),
                                record,
                                millis(SystemTime::now()),
                            ])
                        })
                        .map(drop)
                        .map_err(|err| err.to_string());
                    acks.push(Ack::Done(ack, result));
                }
                Msg::Prune { keep_from_epoch, ack } => {
                    let result = prune(&tx, keep_from_epoch).map_err(|err| err.to_string());
                    acks.push(Ack::Prune(ack, result));
                }
                Msg::Close => *close = true,
                #[cfg(test)]
                Msg::Pause { paused, resume } => {
                    let _ = paused.send(());
                    let _ = resume.recv();
                }
            }
        }
        if let Some(height) = height {
            if let Err(err) = set_meta(&tx, HEIGHT_KEY, height) {
                failed += 1;
                first_error.get_or_insert(err);
            }
        }
        if let Some(err) = first_error {
            warn!(%err, failed, "journal entries not written");
        }
        tx.commit()
    }
}

// === entries ===

fn apply(conn: &Connection, entry: JournalEntry) -> rusqlite::Result<()> {
    match entry {
        JournalEntry::Admitted { inference_id, revalidation, lane, epoch, run_id, at } => {
            conn.prepare_cached(
                "INSERT INTO validations (inference_id, revalidation, lane, epoch, run_id, \
                 admitted_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                inference_id.as_str(),
                revalidation,
                lane.as_str(),
                epoch.map(int),
                run_id.map(int),
                millis(at),
            ])?;
        }
        JournalEntry::Epoch { inference_id, revalidation, epoch } => {
            let id = open_row(conn, inference_id.as_str(), revalidation, SystemTime::now())?;
            conn.prepare_cached("UPDATE validations SET epoch = ?2 WHERE id = ?1")?
                .execute(params![id, int(epoch)])?;
        }
        JournalEntry::Attempt { inference_id, revalidation, stage, error, duration, at } => {
            let started = at.checked_sub(duration).unwrap_or(at);
            let id = open_row(conn, inference_id.as_str(), revalidation, started)?;
            conn.prepare_cached(
                "INSERT INTO attempts (validation_id, stage, error, duration_ms, at) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![
                id,
                stage.as_str(),
                error,
                duration_ms(duration),
                millis(at)
            ])?;
        }
        JournalEntry::Submission { msg_id, result, at } => {
            let json = serde_json::to_string(&result)
                .map_err(|err| rusqlite::Error::ToSqlConversionFailure(Box::new(err)))?;
            let updated = conn
                .prepare_cached(
                    "UPDATE submissions SET result = ?2, result_json = ?3, open = ?4, \
                     resolved_at = ?5 WHERE msg_id = ?1",
                )?
                .execute(params![
                    msg_id,
                    result.as_str(),
                    json,
                    !result.closes(),
                    (result.closes()).then(|| millis(at)),
                ])?;
            if updated == 0 {
                debug!(%msg_id, "submission answer without a recorded intent");
            }
        }
        JournalEntry::Finished { event, at } => finish(conn, &event, at)?,
        JournalEntry::RunStarted { run_id, epoch, trigger, at } => {
            conn.prepare_cached(
                "INSERT INTO runs (run_id, epoch, trigger, started_at) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![
                int(run_id),
                int(epoch),
                trigger.as_str(),
                millis(at)
            ])?;
            conn.prepare_cached(
                "INSERT INTO meta (key, value) VALUES (?1, ?2) \
                 ON CONFLICT (key) DO UPDATE SET value = max(value, excluded.value)",
            )?
            .execute(params![RUN_ID_KEY, int(run_id)])?;
        }
        JournalEntry::RunEnded { report, at } => {
            let state = report.state.as_str();
            let detail = match &report.state {
                RunState::Failed(detail) => Some(detail.as_str()),
                _ => None,
            };
            let outcomes = serde_json::to_string(&report.outcomes)
                .map_err(|err| rusqlite::Error::ToSqlConversionFailure(Box::new(err)))?;
            let updated = conn
                .prepare_cached(
                    "UPDATE runs SET ended_at = ?2, state = ?3, detail = ?4, detected = ?5, \
                     admitted = ?6, outcomes = ?7 \
                     WHERE id = (SELECT max(id) FROM runs WHERE run_id = ?1)",
                )?
                .execute(params![
                    int(report.run_id),
                    millis(at),
                    state,
                    detail,
                    int(report.detected),
                    int(report.admitted),
                    outcomes,
                ])?;
            if updated == 0 {
                // Its start was dropped from a full queue: keep the end on its own.
                conn.prepare_cached(
                    "INSERT INTO runs (run_id, epoch, ended_at, state, detail, detected, \
                     admitted, outcomes) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )?
                .execute(params![
                    int(report.run_id),
                    int(report.epoch),
                    millis(at),
                    state,
                    detail,
                    int(report.detected),
                    int(report.admitted),
                    outcomes,
                ])?;
            }
        }
    }
    Ok(())
}

/// The latest unfinished validation row of the key; when there is none (its admission was
/// dropped from a full queue), a row admitted at `admitted_at` with what is known.
fn open_row(
    conn: &Connection,
    inference_id: &str,
    revalidation: bool,
    admitted_at: SystemTime,
) -> rusqlite::Result<i64> {
    let id = conn
        .prepare_cached(
            "SELECT max(id) FROM validations WHERE inference_id = ?1 AND revalidation = ?2 \
             AND finished_at IS NULL",
        )?
        .query_row(params![inference_id, revalidation], |row| row.get::<_, Option<i64>>(0))?;
    if let Some(id) = id {
        return Ok(id);
    }
    conn.prepare_cached(
        "INSERT INTO validations (inference_id, revalidation, admitted_at) VALUES (?1, ?2, ?3)",
    )?
    .execute(params![inference_id, revalidation, millis(admitted_at)])?;
    Ok(conn.last_insert_rowid())
}

fn finish(conn: &Connection, event: &OutcomeEvent, at: SystemTime) -> rusqlite::Result<()> {
    let admitted_at = at.checked_sub(event.elapsed).unwrap_or(at);
    let id = open_row(conn, event.inference_id.as_str(), event.revalidation, admitted_at)?;
    let OutcomeColumns { verdict, value, msg_id, tx_hash, stage, error } =
        OutcomeColumns::of(&event.outcome);
    conn.prepare_cached(
        "UPDATE validations SET lane = ?2, run_id = coalesce(run_id, ?3), finished_at = ?4, \
         outcome = ?5, verdict = ?6, value = ?7, msg_id = ?8, tx_hash = ?9, stage = ?10, \
         error = ?11, attempts = ?12, wait_ms = ?13, elapsed_ms = ?14 WHERE id = ?1",
    )?
    .execute(params![
        id,
        event.lane.as_str(),
        event.run_id.map(int),
        millis(at),
        event.outcome.kind().as_str(),
        verdict,
        value,
        msg_id,
        tx_hash,
        stage,
        error,
        event.attempts,
        event.wait.map(duration_ms),
        duration_ms(event.elapsed),
    ])?;
    Ok(())
}

/// Records the intent; a second intent of the same message (a resend) opens it again.
fn intend(conn: &Connection, intent: &Intent, at: SystemTime) -> Result<(), String> {
    let json = serde_json::to_string(intent).map_err(|err| err.to_string())?;
    conn.prepare_cached(
        "INSERT INTO submissions (msg_id, inference_id, revalidation, epoch, lane, intent, \
         open, intended_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1, ?7) \
         ON CONFLICT (msg_id) DO UPDATE SET epoch = excluded.epoch, lane = excluded.lane, \
         intent = excluded.intent, open = 1, resolved_at = NULL",
    )
    .and_then(|mut statement| {
        statement.execute(params![
            intent.msg.id,
            intent.msg.inference_id.as_str(),
            intent.msg.revalidation,
            int(intent.epoch),
            intent.lane.as_str(),
            json,
            millis(at),
        ])
    })
    .map(drop)
    .map_err(|err| err.to_string())
}

fn set_meta(conn: &Connection, key: &str, value: u64) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO meta (key, value) VALUES (?1, ?2) \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )?
    .execute(params![key, int(value)])?;
    Ok(())
}

/// Deletes history older than `keep_from_epoch`. Validations whose epoch never became known
/// go once admitted before the oldest kept validation with a known epoch; open intents stay.
fn prune(conn: &Connection, keep_from_epoch: u64) -> rusqlite::Result<PruneReport> {
    let keep = int(keep_from_epoch);
    let horizon = conn
        .query_row("SELECT min(admitted_at) FROM validations WHERE epoch >= ?1", [keep], |row| {
            row.get::<_, Option<i64>>(0)
        })
        .optional()?
        .flatten()
        .unwrap_or(i64::MIN);
    let attempts = conn.execute(
        "DELETE FROM attempts WHERE validation_id IN (SELECT id FROM validations \
         WHERE epoch < ?1 OR (epoch IS NULL AND admitted_at < ?2))",
        params![keep, horizon],
    )?;
    let validations = conn.execute(
        "DELETE FROM validations WHERE epoch < ?1 OR (epoch IS NULL AND admitted_at < ?2)",
        params![keep, horizon],
    )?;
    let submissions =
        conn.execute("DELETE FROM submissions WHERE open = 0 AND epoch < ?1", [keep])?;
    let runs = conn.execute("DELETE FROM runs WHERE epoch < ?1", [keep])?;
    let claims = conn.execute("DELETE FROM claims WHERE epoch < ?1", [keep])?;
    Ok(PruneReport {
        validations: count(validations),
        attempts: count(attempts),
        submissions: count(submissions),
        runs: count(runs),
        claims: count(claims),
    })
}

fn duration_ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

fn count(rows: usize) -> u64 {
    u64::try_from(rows).unwrap_or(u64::MAX)
}
