//! The admin API (axum), on its own listener (`127.0.0.1:9200` by default).
//!
//! Routes:
//! - `GET  /healthz`: 200 while the process serves (no token);
//! - `GET  /readyz`: 200 while the app runs, the chain is followed and an ML node (or the
//!   NodeManager) answers, else 503 with the problems (no token);
//! - `GET  /admin/v1/status`: engine status (slots, lanes, in flight, outcomes), ML node pool,
//!   current recovery run, claimed epochs;
//! - `POST /admin/v1/recovery`, optional body `{"epoch_index", "seed"}` (default: the previous
//!   epoch and its seed): `202 {"run_id", "state": "started"}`, or
//!   `409 {"run_id", "state": "already_running"}` naming the run going on;
//! - `GET  /admin/v1/recovery/{run_id}`: the run's state and counts per outcome (from the
//!   journal for runs of an earlier process);
//! - `GET  /admin/v1/recovery?limit=N`: the journal's most recent runs, newest first (default
//!   20, at most 200): id, epoch, trigger, start, end, state, counts;
//! - `GET  /admin/v1/inferences/{inference_id}`: the journal's history of the inference: each
//!   validation (lane, epoch, run), its failed attempts, its outcome, and every submission
//!   intent with the chain's answer; 404 when the journal has none;
//! - `POST /admin/v1/claim-reward/recover`, upstream's request `{"seed"?, "force_claim",
//!   "epoch_index"?}` and response fields `{success, message, epoch_index, seed,
//!   missed_validations, already_claimed, claim_executed}`. Unlike upstream it never holds the
//!   request for the whole recovery: it starts (or joins) the run and waits at most
//!   `admin.claim_wait`; if the run is still going it answers `202` with the run id and the
//!   claim follows in the background when the run ends;
//! - `POST /admin/v1/shutdown`: stops the node as a signal would; served only with
//!   `admin.allow_shutdown`.
//!
//! Every route but `/healthz` and `/readyz` needs `Authorization: Bearer <token>`, compared in
//! constant time. Bodies are capped at `admin.body_limit_bytes`. A caller's mistake is a 4xx
//! with `{"error": ...}`, anything else a 500.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::Context as _;
use axum::{
    body::Bytes,
    extract::{DefaultBodyLimit, Path, Request, State},
    http::{header, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use journal::Store;
use ml_client::NodePool;
use serde::Deserialize;
use serde_json::{json, Value};
use subtle::ConstantTimeEq as _;
use tokio::sync::mpsc;
use validator_core::{Engine, Error as EngineError, Lane, OutcomeKind, RecoveryStart, Trigger};

use crate::{
    claim::{ClaimState, Claimer},
    health::{ml_reachable, ChainProgress},
};

/// What the admin routes work on.
#[derive(Clone)]
pub struct AdminState {
    /// The engine.
    pub engine: Engine,
    /// The ML node pool.
    pub pool: NodePool,
    /// The NodeManager broker, when leases come from the API node.
    pub node_manager: Option<ml_client::NodeManagerBroker>,
    /// Recovery-then-claim and the claimed-epochs record.
    pub claimer: Arc<Claimer>,
    /// The journal's history.
    pub journal: Arc<Store>,
    /// The bearer token every protected route requires.
    pub token: Arc<str>,
    /// The readiness latch.
    pub ready: Arc<AtomicBool>,
    /// Where `POST /admin/v1/shutdown` sends its request; `None` leaves the route out.
    pub shutdown: Option<mpsc::Sender<String>>,
    /// How long the claim route waits for the recovery run.
    pub claim_wait: Duration,
    /// Largest request body, in bytes.
    pub body_limit: usize,
    /// The chain as the node follows it.
    pub chain: Arc<ChainProgress>,
    /// How old the NodeManager's last capacity listing may be for the ML side to count as
    /// reachable.
    pub ml_stale_after: Duration,
}

/// The admin router with every route, the token check and the body cap.
pub fn router(state: AdminState) -> Router {
    let mut protected = Router::new()
        .route("/admin/v1/status", get(status))
        .route("/admin/v1/recovery", post(start_recovery).get(recovery_runs))
        .route("/admin/v1/recovery/{run_id}", get(recovery_run))
        .route("/admin/v1/inferences/{inference_id}", get(inference_history))
        .route("/admin/v1/claim-reward/recover", post(claim_reward_recover));
    if state.shutdown.is_some() {
        protected = protected.route("/admin/v1/shutdown", post(shutdown));
    }
    let protected =
        protected.route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .merge(protected)
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .layer(DefaultBodyLimit::max(state.body_limit))
        .layer(middleware::from_fn(json_client_errors))
        .with_state(state)
}

/// The most of a plain-text rejection kept as the JSON error's message.
const REJECTION_TEXT_LIMIT: usize = 4096;

/// Gives every 4xx a `{"error": ...}` body: the extractors' own rejections (a bad query string,
/// a body over the cap, a wrong method) answer in plain text or with no body at all.
async fn json_client_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json"));
    if !status.is_client_error() || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, REJECTION_TEXT_LIMIT)
        .await
        .ok()
        .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_owned())
        .filter(|text| !text.is_empty())
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("client error").to_lowercase());
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.remove(header::CONTENT_TYPE);
    let json = Json(json!({"error": text})).into_response();
    let (json_parts, json_body) = json.into_parts();
    parts.headers.extend(json_parts.headers);
    Response::from_parts(parts, json_body)
}

/// A failed admin request.
#[derive(Debug)]
pub enum ApiError {
    /// No or a wrong bearer token.
    Unauthorized,
    /// The request is malformed.
    BadRequest(String),
    /// The thing asked for does not exist.
    NotFound(String),
    /// The node is shutting down.
    Unavailable(String),
    /// The request conflicts with the node's state (classic validation is retired).
    Conflict(String),
    /// Something went wrong on our side.
    Internal(anyhow::Error),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            ApiError::Unauthorized => {
                (StatusCode::UNAUTHORIZED, "missing or wrong bearer token".into())
            }
            ApiError::BadRequest(message) => (StatusCode::BAD_REQUEST, message),
            ApiError::NotFound(message) => (StatusCode::NOT_FOUND, message),
            ApiError::Conflict(message) => (StatusCode::CONFLICT, message),
            ApiError::Unavailable(message) => (StatusCode::SERVICE_UNAVAILABLE, message),
            ApiError::Internal(err) => {
                tracing::error!(err = %format!("{err:#}"), "admin request failed");
                (StatusCode::INTERNAL_SERVER_ERROR, format!("{err:#}"))
            }
        };
        let mut response = (status, Json(json!({"error": message}))).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        }
        response
    }
}

fn engine_error(err: EngineError) -> ApiError {
    match err {
        EngineError::ShuttingDown => ApiError::Unavailable(err.to_string()),
        EngineError::ProtocolRetired(_) => ApiError::Conflict(err.to_string()),
        other => ApiError::Internal(other.into()),
    }
}

async fn require_token(
    State(state): State<AdminState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .unwrap_or_default();
    let expected = state.token.as_bytes();
    if bool::from(given.as_bytes().ct_eq(expected)) && !expected.is_empty() {
        Ok(next.run(request).await)
    } else {
        Err(ApiError::Unauthorized)
    }
}

/// Ready while the app runs and admits work, the chain is followed (a block within the idle
/// timeout) and the ML side is reachable; otherwise 503 naming each part that is not.
async fn readyz(State(state): State<AdminState>) -> Response {
    let mut problems = Vec::new();
    if !(state.ready.load(Ordering::Acquire) && state.engine.status().accepting) {
        problems.push("node: not running or not admitting work".to_owned());
    }
    problems.extend(state.chain.problem());
    if let Err(problem) =
        ml_reachable(&state.pool, state.node_manager.as_ref(), state.ml_stale_after)
    {
        problems.push(problem);
    }
    if problems.is_empty() {
        Json(json!({"status": "ready"})).into_response()
    } else {
        let body = json!({"status": "not_ready", "problems": problems});
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

async fn status(State(state): State<AdminState>) -> Json<Value> {
    let engine = state.engine.status();
    let leases = engine.leases.clone();
    let devshard = json!({
        "challenged": engine.lane(Lane::Challenged),
        "live": engine.lane(Lane::Live),
        "verdicts": engine.devshard_verdicts,
        "judged_valid": engine.outcomes.get(OutcomeKind::JudgedValid),
        "judged_invalid": engine.outcomes.get(OutcomeKind::JudgedInvalid),
    });
    Json(json!({
        "version": crate::VERSION,
        "commit": crate::GIT_COMMIT,
        "built": crate::BUILD_DATE,
        "chain": state.chain.report(),
        "ml_reachable": ml_reachable(&state.pool, state.node_manager.as_ref(), state.ml_stale_after)
            .err()
            .map_or(json!(true), |problem| json!(problem)),
        "current_run": engine.current_run,
        "engine": engine,
        "devshard": devshard,
        "nodes": state.pool.status(),
        "node_manager": state.node_manager.as_ref().map(ml_client::NodeManagerBroker::status),
        "claims": state.claimer.records(),
        "ha": {
            "backend": state.journal.backend(),
            "replica": leases.replica,
            "shared": leases.shared,
            "leader": leases.leader,
            "leases_held": leases.held,
            "takeovers": leases.takeovers,
            "leases_lost": leases.lost,
            "lease_ttl_ms": leases.ttl_ms,
        },
    }))
}

/// Parses an optional JSON request body, such as [`RecoveryRequest`] or [`ClaimRequest`]: empty
/// or all-whitespace means the type's default, anything that does not decode is
/// [`ApiError::BadRequest`].
pub fn parse_body<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body)
        .map_err(|err| ApiError::BadRequest(format!("bad request body: {err}")))
}

/// The optional body of `POST /admin/v1/recovery`; unknown fields are refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecoveryRequest {
    /// The epoch to recover; the previous epoch when absent.
    pub epoch_index: Option<u64>,
    /// The epoch's seed; the one the node derives for that epoch when absent.
    pub seed: Option<i64>,
}

async fn start_recovery(
    State(state): State<AdminState>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request: RecoveryRequest = parse_body(&body)?;
    let claimer = &state.claimer;
    let epoch = match request.epoch_index {
        Some(epoch) => epoch,
        None => claimer.previous_epoch().await.map_err(ApiError::Internal)?,
    };
    let seed = request.seed.unwrap_or_else(|| claimer.seed(epoch));
    let start = state.engine.recover_from(Trigger::Admin, epoch, seed).map_err(engine_error)?;
    let response = match &start {
        RecoveryStart::Started(run) => {
            tracing::info!(run_id = run.id(), epoch, "recovery started from the admin API");
            (
                StatusCode::ACCEPTED,
                Json(json!({"run_id": run.id(), "epoch_index": epoch, "state": "started"})),
            )
        }
        RecoveryStart::AlreadyRunning(run) => (
            StatusCode::CONFLICT,
            Json(
                json!({"run_id": run.id(), "epoch_index": run.report().epoch, "state": "already_running"}),
            ),
        ),
    };
    Ok(response.into_response())
}

async fn recovery_run(
    State(state): State<AdminState>,
    Path(run_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let run_id: u64 = run_id
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("run id `{run_id}` is not a number")))?;
    if let Some(run) = state.engine.run(run_id) {
        return Ok(Json(json!(run.report())));
    }
    let run = state
        .journal
        .run(run_id)
        .await
        .map_err(journal_error)?
        .ok_or_else(|| ApiError::NotFound(format!("no recovery run {run_id}")))?;
    Ok(Json(json!(run)))
}

/// The most runs `GET /admin/v1/recovery` lists.
const MAX_RUNS: usize = 200;

/// The query of `GET /admin/v1/recovery`.
#[derive(Debug, Deserialize)]
struct RunsQuery {
    limit: Option<usize>,
}

async fn recovery_runs(
    State(state): State<AdminState>,
    axum::extract::Query(query): axum::extract::Query<RunsQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = query.limit.unwrap_or(20).clamp(1, MAX_RUNS);
    let runs = state.journal.recent_runs(limit).await.map_err(journal_error)?;
    Ok(Json(json!({ "runs": runs })))
}

async fn inference_history(
    State(state): State<AdminState>,
    Path(inference_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let history = state.journal.history(&inference_id).await.map_err(journal_error)?;
    if history.is_empty() {
        return Err(ApiError::NotFound(format!("the journal has no record of `{inference_id}`")));
    }
    Ok(Json(json!(history)))
}

fn journal_error(err: journal::Error) -> ApiError {
    ApiError::Internal(anyhow::Error::new(err).context("reading the journal"))
}

/// The optional body of `POST /admin/v1/claim-reward/recover`, upstream's request; unknown fields
/// are ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ClaimRequest {
    /// The epoch's seed; the one the node derives for that epoch when absent.
    pub seed: Option<i64>,
    /// Claim again even if this epoch's rewards were already claimed.
    #[serde(default)]
    pub force_claim: bool,
    /// The epoch to recover and claim; the previous epoch when absent.
    pub epoch_index: Option<u64>,
}

async fn claim_reward_recover(
    State(state): State<AdminState>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request: ClaimRequest = parse_body(&body)?;
    let claimer = &state.claimer;
    let epoch = match request.epoch_index {
        Some(epoch) => epoch,
        None => claimer.previous_epoch().await.map_err(ApiError::Internal)?,
    };
    let seed = request.seed.unwrap_or_else(|| claimer.seed(epoch));
    let answer = |status: StatusCode,
                  success: bool,
                  message: String,
                  missed: u64,
                  already: bool,
                  executed: bool| {
        (
            status,
            Json(json!({
                "success": success,
                "message": message,
                "epoch_index": epoch,
                "seed": seed,
                "missed_validations": missed,
                "already_claimed": already,
                "claim_executed": executed,
            })),
        )
            .into_response()
    };
    if claimer.is_claimed(epoch) && !request.force_claim {
        return Ok(answer(
            StatusCode::OK,
            false,
            "rewards already claimed for this epoch; set force_claim to claim again".into(),
            0,
            true,
            false,
        ));
    }
    if state.engine.is_stopped() {
        return Err(ApiError::Unavailable("the engine is shutting down".into()));
    }
    let already = claimer.is_claimed(epoch);
    let pending = claimer.spawn(Trigger::Admin, epoch, seed);
    match tokio::time::timeout(state.claim_wait, pending).await {
        Ok(Ok(record)) => {
            let missed = record.run.as_ref().map_or(0, |run| run.detected);
            let result = record.last_result.as_deref().unwrap_or("no answer");
            let message = match (record.state, record.tx_hash()) {
                (ClaimState::Paid, Some(hash)) => {
                    format!("recovery done, {} ngonka claimed in {hash}", record.amount)
                }
                (ClaimState::NothingToClaim, _) => "recovery done, nothing to claim".into(),
                (_, Some(hash)) => format!(
                    "recovery done, claim {hash} not paid ({result}); tried again in 30 blocks"
                ),
                (_, None) => format!("recovery done, no claim sent: {result}"),
            };
            Ok(answer(StatusCode::OK, record.claimed(), message, missed, already, record.claimed()))
        }
        Ok(Err(_)) => Err(ApiError::Unavailable("the claim task ended without a result".into())),
        Err(_) => {
            let run = state.engine.current_run();
            let (run_id, detected) =
                run.map_or((None, 0), |run| (Some(run.id()), run.report().detected));
            let message = match run_id {
                Some(id) => {
                    format!("recovery run {id} still going; the claim follows when it ends")
                }
                None => "recovery still going; the claim follows when it ends".into(),
            };
            let mut response =
                answer(StatusCode::ACCEPTED, true, message, detected, already, false);
            if let Some(id) = run_id {
                response.headers_mut().insert("x-run-id", header::HeaderValue::from(id));
            }
            Ok(response)
        }
    }
}

async fn shutdown(State(state): State<AdminState>) -> Result<Response, ApiError> {
    let Some(sender) = state.shutdown else {
        return Err(ApiError::NotFound("shutdown is not enabled".into()));
    };
    let _ = sender.try_send("admin API request".into());
    Ok((StatusCode::ACCEPTED, Json(json!({"state": "shutting_down"}))).into_response())
}

/// Reads the admin token from `path`, or generates one (32 random bytes, hex) into a new file
/// readable by the owner only; the flag says whether it was created now.
pub fn load_or_create_token(path: &std::path::Path) -> anyhow::Result<(String, bool)> {
    if let Ok(text) = std::fs::read_to_string(path) {
        let token = text.trim().to_owned();
        if !token.is_empty() {
            return Ok((token, false));
        }
    }
    use rand::{RngCore as _, SeedableRng as _};
    let mut bytes = [0u8; 32];
    rand::rngs::StdRng::from_os_rng().fill_bytes(&mut bytes);
    let token = chain_source::hex::encode(&bytes);
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the token directory {}", dir.display()))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("creating the admin token file {}", path.display()))?;
    std::io::Write::write_all(&mut file, token.as_bytes())
        .with_context(|| format!("writing the admin token file {}", path.display()))?;
    Ok((token, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_created_once_then_read() {
        let path = testkit::process::temp_path("admin.token");
        let (token, created) = load_or_create_token(&path).unwrap();
        assert!(created);
        assert_eq!(token.len(), 64);
        assert_eq!(load_or_create_token(&path).unwrap(), (token, false));
    }
}
