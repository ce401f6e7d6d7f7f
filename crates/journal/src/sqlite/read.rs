//! Reads, on the read connection: what the engine asks (open intents at start, whether a
//! revalidation was already sent, the last run id, the last height) and what the admin API shows
//! (histories, runs).

use rusqlite::{params, Connection, OptionalExtension as _, Row};
use validator_core::{
    ports::journal::{Intent, SubmissionResult},
    OutcomeKind,
};

use super::{HEIGHT_KEY, RUN_ID_KEY};
use crate::{
    AttemptRecord, Error, InferenceHistory, OutcomeRecord, Result, RunRecord, SubmissionRecord,
    ValidationRecord,
};

// === queries ===

pub(super) fn open_intents(conn: &Connection) -> Result<Vec<Intent>> {
    let mut statement = conn.prepare_cached(
        "SELECT msg_id, intent FROM submissions WHERE open = 1 ORDER BY intended_at, rowid",
    )?;
    let mut rows = statement.query([])?;
    let mut intents = Vec::new();
    while let Some(row) = rows.next()? {
        intents.push(decode_intent(&row.get::<_, String>(0)?, &row.get::<_, String>(1)?)?);
    }
    Ok(intents)
}

pub(super) fn already_sent(
    conn: &Connection,
    inference_id: &str,
    revalidation: bool,
) -> Result<bool> {
    let submitted = [
        SubmissionResult::Landed { tx_hash: None }.as_str(),
        SubmissionResult::Duplicate.as_str(),
        SubmissionResult::ReconciledLanded.as_str(),
        SubmissionResult::ReconciledUnconfirmed.as_str(),
    ];
    let outcomes = [
        OutcomeKind::Submitted,
        OutcomeKind::InvalidatedUnavailable,
        OutcomeKind::InvalidatedHashMismatch,
        OutcomeKind::SkippedAlreadyValidated,
    ]
    .map(OutcomeKind::as_str);
    let found: bool = conn
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM submissions WHERE inference_id = ?1 \
             AND revalidation = ?2 AND result IN (?3, ?4, ?5, ?6)) \
             OR EXISTS (SELECT 1 FROM validations WHERE inference_id = ?1 \
             AND revalidation = ?2 AND outcome IN (?7, ?8, ?9, ?10))",
        )?
        .query_row(
            params![
                inference_id,
                revalidation,
                submitted[0],
                submitted[1],
                submitted[2],
                submitted[3],
                outcomes[0],
                outcomes[1],
                outcomes[2],
                outcomes[3],
            ],
            |row| row.get(0),
        )?;
    Ok(found)
}

pub(super) fn last_run_id(conn: &Connection) -> Result<u64> {
    let id: Option<i64> = conn.query_row(
        "SELECT max(id) FROM (SELECT max(run_id) AS id FROM runs \
         UNION ALL SELECT value FROM meta WHERE key = ?1)",
        [RUN_ID_KEY],
        |row| row.get(0),
    )?;
    Ok(id.map_or(0, uint))
}

pub(super) fn height(conn: &Connection) -> Result<Option<u64>> {
    let height: Option<i64> = conn
        .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
        .query_row([HEIGHT_KEY], |row| row.get(0))
        .optional()?;
    Ok(height.map(uint))
}

pub(super) fn claims(conn: &Connection) -> Result<Vec<(u64, String)>> {
    let mut statement = conn.prepare_cached("SELECT epoch, record FROM claims ORDER BY epoch")?;
    let rows = statement.query_map([], |row| Ok((uint(row.get(0)?), row.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub(super) fn history(conn: &Connection, inference_id: &str) -> Result<InferenceHistory> {
    let mut ids = Vec::new();
    let mut validations = Vec::new();
    let mut statement = conn.prepare_cached(
        "SELECT id, revalidation, lane, epoch, run_id, admitted_at, finished_at, outcome, \
         verdict, value, msg_id, tx_hash, stage, error, attempts, wait_ms, elapsed_ms \
         FROM validations WHERE inference_id = ?1 ORDER BY id",
    )?;
    let mut rows = statement.query([inference_id])?;
    while let Some(row) = rows.next()? {
        ids.push(row.get::<_, i64>(0)?);
        validations.push(validation(row)?);
    }

    let mut statement = conn.prepare_cached(
        "SELECT a.validation_id, a.stage, a.error, a.duration_ms, a.at FROM attempts a \
         JOIN validations v ON v.id = a.validation_id WHERE v.inference_id = ?1 ORDER BY a.id",
    )?;
    let mut rows = statement.query([inference_id])?;
    while let Some(row) = rows.next()? {
        let id: i64 = row.get(0)?;
        let attempt = AttemptRecord {
            stage: row.get(1)?,
            error: row.get(2)?,
            duration_ms: uint(row.get(3)?),
            at_ms: uint(row.get(4)?),
        };
        if let Some(index) = ids.iter().position(|&v| v == id) {
            validations[index].attempts.push(attempt);
        }
    }

    let mut submissions = Vec::new();
    let mut statement = conn.prepare_cached(
        "SELECT msg_id, intent, result_json, open, intended_at, resolved_at \
         FROM submissions WHERE inference_id = ?1 ORDER BY intended_at, rowid",
    )?;
    let mut rows = statement.query([inference_id])?;
    while let Some(row) = rows.next()? {
        let msg_id: String = row.get(0)?;
        let result: Option<String> = row.get(2)?;
        submissions.push(SubmissionRecord {
            intent: decode_intent(&msg_id, &row.get::<_, String>(1)?)?,
            result: result
                .map(|json| serde_json::from_str(&json))
                .transpose()
                .map_err(|source| Error::Decode { what: format!("answer to {msg_id}"), source })?,
            open: row.get(3)?,
            intended_at_ms: uint(row.get(4)?),
            resolved_at_ms: row.get::<_, Option<i64>>(5)?.map(uint),
            replica: None,
        });
    }

    Ok(InferenceHistory { inference_id: inference_id.to_owned(), validations, submissions })
}

fn validation(row: &Row<'_>) -> Result<ValidationRecord> {
    let kind: Option<String> = row.get(7)?;
    let outcome = match kind {
        Some(kind) => Some(OutcomeRecord {
            kind,
            verdict: row.get(8)?,
            value: row.get(9)?,
            msg_id: row.get(10)?,
            tx_hash: row.get(11)?,
            stage: row.get(12)?,
            error: row.get(13)?,
            attempts: row.get::<_, Option<u32>>(14)?.unwrap_or(0),
            wait_ms: row.get::<_, Option<i64>>(15)?.map(uint),
            elapsed_ms: row.get::<_, Option<i64>>(16)?.map_or(0, uint),
            finished_at_ms: row.get::<_, Option<i64>>(6)?.map_or(0, uint),
        }),
        None => None,
    };
    Ok(ValidationRecord {
        revalidation: row.get(1)?,
        lane: row.get(2)?,
        epoch: row.get::<_, Option<i64>>(3)?.map(uint),
        run_id: row.get::<_, Option<i64>>(4)?.map(uint),
        admitted_at_ms: uint(row.get(5)?),
        attempts: Vec::new(),
        outcome,
        replica: None,
    })
}

pub(super) fn recent_runs(conn: &Connection, limit: usize) -> Result<Vec<RunRecord>> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    runs(
        conn,
        "SELECT run_id, epoch, trigger, started_at, ended_at, state, detail, detected, \
         admitted, outcomes FROM runs ORDER BY id DESC LIMIT ?1",
        limit,
    )
}

/// The latest record of run `run_id`.
pub(super) fn run(conn: &Connection, run_id: u64) -> Result<Option<RunRecord>> {
    let runs = runs(
        conn,
        "SELECT run_id, epoch, trigger, started_at, ended_at, state, detail, detected, \
         admitted, outcomes FROM runs WHERE run_id = ?1 ORDER BY id DESC LIMIT 1",
        i64::try_from(run_id).unwrap_or(i64::MAX),
    )?;
    Ok(runs.into_iter().next())
}

fn runs(conn: &Connection, sql: &str, param: i64) -> Result<Vec<RunRecord>> {
    let mut statement = conn.prepare_cached(sql)?;
    let mut rows = statement.query([param])?;
    let mut runs = Vec::new();
    while let Some(row) = rows.next()? {
        let run_id = uint(row.get(0)?);
        let outcomes: Option<String> = row.get(9)?;
        runs.push(RunRecord {
            run_id,
            epoch: uint(row.get(1)?),
            trigger: row.get(2)?,
            started_at_ms: row.get::<_, Option<i64>>(3)?.map(uint),
            ended_at_ms: row.get::<_, Option<i64>>(4)?.map(uint),
            state: row.get(5)?,
            detail: row.get(6)?,
            detected: row.get::<_, Option<i64>>(7)?.map(uint),
            admitted: row.get::<_, Option<i64>>(8)?.map(uint),
            outcomes: outcomes
                .map(|json| serde_json::from_str(&json))
                .transpose()
                .map_err(|source| Error::Decode { what: format!("run {run_id}"), source })?
                .unwrap_or_default(),
            replica: None,
        });
    }
    Ok(runs)
}

fn decode_intent(msg_id: &str, json: &str) -> Result<Intent> {
    serde_json::from_str(json)
        .map_err(|source| Error::Decode { what: format!("intent {msg_id}"), source })
}

/// Stored integers are written from `u64` values below `i64::MAX`; a negative one reads as 0.
fn uint(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}
