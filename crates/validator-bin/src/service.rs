//! The validation service: `validator.v1.ValidationService` (the project's
//! `validation_service.proto`) over gRPC, so that devshard session hosts, or any other node
//! implementation, hand their validations to this node's one engine and its one process-wide
//! bound on replays.
//!
//! [`ValidationHandler::validate`] is the whole method without the transport: it checks the
//! request, admits the job (or joins the one in flight under the same key) and waits for its
//! outcome. The gRPC layer only adds the bearer token check. A caller that goes away stops
//! waiting; the job still ends in exactly one outcome.

// tonic's `Status` is the error of every gRPC method; boxing it here would only unbox it again.
#![allow(clippy::result_large_err)]

use std::{collections::HashMap, net::SocketAddr, sync::Arc};

use subtle::ConstantTimeEq as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::{debug, warn};
use validator_core::{
    devshard::{DevshardJob, DevshardRequest},
    Engine, Error as EngineError, Outcome, SkipReason,
};
use validator_proto::validator::v1::{
    validate_response::Verdict,
    validation_service_server::{ValidationService, ValidationServiceServer},
    ValidateRequest, ValidateResponse,
};

/// The largest request the service decodes. A `ValidateRequest` is a few hundred bytes.
const MAX_REQUEST_BYTES: usize = 16 * 1024;

/// HTTP/2 streams one connection may have open at once; a host has one call per validation
/// waiting, and the engine's lanes bound what is admitted.
const MAX_CONCURRENT_STREAMS: u32 = 4_096;

/// The method's logic, callable without the network.
#[derive(Clone)]
pub struct ValidationHandler {
    engine: Engine,
    token: Arc<str>,
}

impl ValidationHandler {
    /// A handler driving `engine`, requiring `token` as the bearer token over gRPC.
    pub fn new(engine: Engine, token: Arc<str>) -> Self {
        Self { engine, token }
    }

    /// Checks `request`, admits or joins its job and answers once the job's outcome is known.
    /// Errors are the statuses the proto names: `INVALID_ARGUMENT` for a malformed request or a
    /// model no ML node serves, `RESOURCE_EXHAUSTED` when the job's lane is full,
    /// `UNAVAILABLE` when the engine is shutting down or reached no verdict.
    pub async fn validate(&self, request: ValidateRequest) -> Result<ValidateResponse, Status> {
        let challenged = request.challenged;
        let job = DevshardJob::new(DevshardRequest {
            inference_id: request.inference_id,
            model: request.model,
            prompt_hash: request.prompt_hash,
            response_hash: request.response_hash,
            input_tokens: request.input_tokens,
            output_tokens: request.output_tokens,
            escrow_id: request.escrow_id,
            epoch_id: request.epoch_id,
            executor_address: request.executor_address,
            runtime_version: request.runtime_version,
            challenged,
        })
        .map_err(|err| refuse(Status::invalid_argument(err.to_string()), "invalid_argument"))?;
        let ticket = self.engine.validate_devshard(job).map_err(|err| match err {
            EngineError::LaneFull { lane } => refuse(
                Status::resource_exhausted(format!("the {lane} queue is full; retry later")),
                "queue_full",
            ),
            EngineError::ModelNotServed(model) => refuse(
                Status::invalid_argument(format!("no ML node serves model {model}")),
                "unknown_model",
            ),
            EngineError::ShuttingDown => {
                refuse(Status::unavailable("the engine is shutting down"), "shutting_down")
            }
            other => refuse(Status::internal(other.to_string()), "internal"),
        })?;
        let outcome = ticket.outcome().await;
        answer(outcome)
    }
}

/// The request a caller sends for `job`: the inverse of the check [`ValidationHandler::validate`]
/// makes, for session hosts built on this crate (the demo's, the bench's).
pub fn validate_request(job: &DevshardJob) -> ValidateRequest {
    ValidateRequest {
        inference_id: job.key.inference_id,
        model: job.model.to_string(),
        prompt_hash: job.prompt_hash.to_vec(),
        response_hash: job.response_hash.to_vec(),
        input_tokens: job.input_tokens,
        output_tokens: job.output_tokens,
        escrow_id: job.key.escrow_id.to_string(),
        epoch_id: job.epoch_id,
        executor_address: job.executor_address.to_string(),
        runtime_version: job.runtime_version.to_string(),
        challenged: job.challenged,
    }
}

/// Counts a refused call and returns its status.
fn refuse(status: Status, result: &'static str) -> Status {
    metrics::counter!("validator_service_calls_total", "result" => result).increment(1);
    status
}

/// The response, or the status, for a job's outcome.
fn answer(outcome: Outcome) -> Result<ValidateResponse, Status> {
    let response = match outcome {
        Outcome::Judged { verdict } => {
            let valid = verdict.valid();
            ValidateResponse {
                verdict: if valid { Verdict::Valid } else { Verdict::Invalid } as i32,
                reason: verdict.reason.as_str().to_owned(),
                similarity: verdict.similarity.unwrap_or(0.0),
                threshold: verdict.threshold.unwrap_or_default(),
                details: verdict.details.into_iter().collect::<HashMap<_, _>>(),
            }
        }
        Outcome::Skipped { reason: SkipReason::Gone } => ValidateResponse {
            verdict: Verdict::Skipped as i32,
            reason: "payload_gone".into(),
            ..ValidateResponse::default()
        },
        Outcome::GaveUp { stage, error } => {
            debug!(stage = stage.as_str(), %error, "no verdict");
            return Err(refuse(
                Status::unavailable(format!(
                    "no verdict after retries ({}): {error}",
                    stage.as_str()
                )),
                "no_verdict",
            ));
        }
        Outcome::Cancelled => {
            return Err(refuse(Status::unavailable("the engine is shutting down"), "cancelled"));
        }
        other => {
            warn!(?other, "a devshard job ended in a classic outcome");
            return Err(refuse(Status::internal("unexpected outcome"), "internal"));
        }
    };
    let result = match Verdict::try_from(response.verdict) {
        Ok(Verdict::Valid) => "valid",
        Ok(Verdict::Invalid) => "invalid",
        _ => "skipped",
    };
    metrics::counter!("validator_service_calls_total", "result" => result).increment(1);
    Ok(response)
}

#[tonic::async_trait]
impl ValidationService for ValidationHandler {
    async fn validate(
        &self,
        request: Request<ValidateRequest>,
    ) -> Result<Response<ValidateResponse>, Status> {
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .unwrap_or_default();
        if !bool::from(presented.as_bytes().ct_eq(self.token.as_bytes())) {
            return Err(refuse(
                Status::unauthenticated("missing or wrong bearer token"),
                "unauthenticated",
            ));
        }
        ValidationHandler::validate(self, request.into_inner()).await.map(Response::new)
    }
}

/// Serves `handler` on `listener` until `cancel` fires.
pub async fn serve(
    listener: TcpListener,
    handler: ValidationHandler,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let service = ValidationServiceServer::new(handler)
        .max_decoding_message_size(MAX_REQUEST_BYTES)
        .max_encoding_message_size(MAX_REQUEST_BYTES);
    tonic::transport::Server::builder()
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, cancel.cancelled_owned())
        .await?;
    Ok(())
}

/// The address the service listens on: `service.listen`, empty for none.
pub fn listen_address(listen: &str) -> anyhow::Result<Option<SocketAddr>> {
    let listen = listen.trim();
    if listen.is_empty() {
        return Ok(None);
    }
    listen.parse().map(Some).map_err(|_| {
        anyhow::anyhow!("service.listen {listen:?} is not an address such as 127.0.0.1:9300")
    })
}
