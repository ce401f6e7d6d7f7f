//! Reads: what the engine asks (this replica's open intents, whether any replica sent a
//! message, the last run id) and what the admin API shows (histories, runs), with SQLite's
//! answers plus the replica that wrote each record.

use deadpool_postgres::GenericClient;
use tokio_postgres::Row;
use validator_core::{
    ports::journal::{Intent, SubmissionResult},
    OutcomeKind,
};

use super::uint;
use crate::{
    AttemptRecord, Error, InferenceHistory, OutcomeRecord, Result, RunRecord, SubmissionRecord,
    ValidationRecord,
};

pub(super) async fn open_intents(conn: &impl GenericClient, replica: &str) -> Result<Vec<Intent>> {
    let rows = conn
        .query(
            "SELECT msg_id, intent FROM submissions WHERE open AND replica = $1 \
             ORDER BY intended_at, seq",
            &[&replica],
        )
        .await?;
    rows.iter()
        .map(|row| decode_intent(&row.get::<_, String>(0), &row.get::<_, String>(1)))
        .collect()
}

pub(super) async fn already_sent(
    conn: &impl GenericClient,
    inference_id: &str,
    revalidation: bool,
) -> Result<bool> {
    let submitted: Vec<&str> = [
        SubmissionResult::Landed { tx_hash: None }.as_str(),
        SubmissionResult::Duplicate.as_str(),
        SubmissionResult::ReconciledLanded.as_str(),
        SubmissionResult::ReconciledUnconfirmed.as_str(),
    ]
    .to_vec();
    let outcomes: Vec<&str> = [
        OutcomeKind::Submitted,
        OutcomeKind::InvalidatedUnavailable,
        OutcomeKind::InvalidatedHashMismatch,
        OutcomeKind::SkippedAlreadyValidated,
    ]
    .map(OutcomeKind::as_str)
    .to_vec();
    let row = conn
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM submissions WHERE inference_id = $1 \
             AND revalidation = $2 AND result = ANY($3)) \
             OR EXISTS (SELECT 1 FROM validations WHERE inference_id = $1 \
             AND revalidation = $2 AND outcome = ANY($4))",
            &[&inference_id, &revalidation, &submitted, &outcomes],
        )
        .await?;
    Ok(row.get(0))
}

pub(super) async fn last_run_id(conn: &impl GenericClient) -> Result<u64> {
    let row = conn.query_one("SELECT max(run_id) FROM runs", &[]).await?;
    Ok(row.get::<_, Option<i64>>(0).map_or(0, uint))
}

pub(super) async fn history(
    conn: &impl GenericClient,
    inference_id: &str,
) -> Result<InferenceHistory> {
    let mut ids = Vec::new();
    let mut validations = Vec::new();
    let rows = conn
        .query(
            "SELECT id, revalidation, lane, epoch, run_id, admitted_at, finished_at, outcome, \
             verdict, value, msg_id, tx_hash, stage, error, attempts, wait_ms, elapsed_ms, \
             replica FROM validations WHERE inference_id = $1 ORDER BY id",
            &[&inference_id],
        )
        .await?;
    for row in &rows {
        ids.push(row.get::<_, i64>(0));
        validations.push(validation(row));
    }

    let rows = conn
        .query(
            "SELECT a.validation_id, a.stage, a.error, a.duration_ms, a.at FROM attempts a \
             JOIN validations v ON v.id = a.validation_id WHERE v.inference_id = $1 \
             ORDER BY a.id",
            &[&inference_id],
        )
        .await?;
    for row in &rows {
        let id: i64 = row.get(0);
        let attempt = AttemptRecord {
            stage: row.get(1),
            error: row.get(2),
            duration_ms: uint(row.get(3)),
            at_ms: uint(row.get(4)),
        };
        if let Some(index) = ids.iter().position(|&v| v == id) {
            validations[index].attempts.push(attempt);
        }
    }

    let mut submissions = Vec::new();
    let rows = conn
        .query(
            "SELECT msg_id, intent, result_json, open, intended_at, resolved_at, replica \
             FROM submissions WHERE inference_id = $1 ORDER BY intended_at, seq",
            &[&inference_id],
        )
        .await?;
    for row in &rows {
        let msg_id: String = row.get(0);
        let result: Option<String> = row.get(2);
        submissions.push(SubmissionRecord {
            intent: decode_intent(&msg_id, &row.get::<_, String>(1))?,
            result: result
                .map(|json| serde_json::from_str(&json))
                .transpose()
                .map_err(|source| Error::Decode { what: format!("answer to {msg_id}"), source })?,
            open: row.get(3),
            intended_at_ms: uint(row.get(4)),
            resolved_at_ms: row.get::<_, Option<i64>>(5).map(uint),
            replica: Some(row.get(6)),
        });
    }

    Ok(InferenceHistory { inference_id: inference_id.to_owned(), validations, submissions })
}

fn validation(row: &Row) -> ValidationRecord {
    let kind: Option<String> = row.get(7);
    let outcome = kind.map(|kind| OutcomeRecord {
        kind,
        verdict: row.get(8),
        value: row.get(9),
        msg_id: row.get(10),
        tx_hash: row.get(11),
        stage: row.get(12),
        error: row.get(13),
        attempts: row.get::<_, Option<i32>>(14).map_or(0, |n| u32::try_from(n).unwrap_or(0)),
        wait_ms: row.get::<_, Option<i64>>(15).map(uint),
        elapsed_ms: row.get::<_, Option<i64>>(16).map_or(0, uint),
        finished_at_ms: row.get::<_, Option<i64>>(6).map_or(0, uint),
    });
    ValidationRecord {
        revalidation: row.get(1),
        lane: row.get(2),
        epoch: row.get::<_, Option<i64>>(3).map(uint),
        run_id: row.get::<_, Option<i64>>(4).map(uint),
        admitted_at_ms: uint(row.get(5)),
        attempts: Vec::new(),
        outcome,
        replica: Some(row.get(17)),
    }
}

const RUN_COLUMNS: &str = "run_id, epoch, trigger, started_at, ended_at, state, detail, \
                           detected, admitted, outcomes, replica";

pub(super) async fn recent_runs(conn: &impl GenericClient, limit: usize) -> Result<Vec<RunRecord>> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let sql = format!("SELECT {RUN_COLUMNS} FROM runs ORDER BY id DESC LIMIT $1");
    runs(&conn.query(&sql, &[&limit]).await?)
}

/// The latest record of run `run_id`.
pub(super) async fn run(conn: &impl GenericClient, run_id: u64) -> Result<Option<RunRecord>> {
    let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE run_id = $1 ORDER BY id DESC LIMIT 1");
    let id = i64::try_from(run_id).unwrap_or(i64::MAX);
    Ok(runs(&conn.query(&sql, &[&id]).await?)?.into_iter().next())
}

fn runs(rows: &[Row]) -> Result<Vec<RunRecord>> {
    rows.iter()
        .map(|row| {
            let run_id = uint(row.get(0));
            let outcomes: Option<String> = row.get(9);
            Ok(RunRecord {
                run_id,
                epoch: uint(row.get(1)),
                trigger: row.get(2),
                started_at_ms: row.get::<_, Option<i64>>(3).map(uint),
                ended_at_ms: row.get::<_, Option<i64>>(4).map(uint),
                state: row.get(5),
                detail: row.get(6),
                detected: row.get::<_, Option<i64>>(7).map(uint),
                admitted: row.get::<_, Option<i64>>(8).map(uint),
                outcomes: outcomes
                    .map(|json| serde_json::from_str(&json))
                    .transpose()
                    .map_err(|source| Error::Decode { what: format!("run {run_id}"), source })?
                    .unwrap_or_default(),
                replica: Some(row.get(10)),
            })
        })
        .collect()
}

pub(super) fn decode_intent(msg_id: &str, json: &str) -> Result<Intent> {
    serde_json::from_str(json)
        .map_err(|source| Error::Decode { what: format!("intent {msg_id}"), source })
}
