//! One devshard validation attempt in two stages (LIVE-NETWORK.md 2.2). On a network-stage
//! slot: payloads from the executor's session route, the model's threshold and the replay
//! request; the result waits in the buffer. On a GPU-stage slot: room on an ML node, the replay
//! and the verdict, which goes back to the caller. Like the classic attempt, a failure gives the
//! slot back and requeues the key with a due time (a failed lease or replay keeps its payload);
//! nothing here sleeps or waits for capacity.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use rust_decimal::Decimal;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::{attempt::observe, Inner};
use crate::{
    completion::{self, CompletionResponse},
    devshard::{DevshardJob, DevshardKey, DevshardVerdict, VerdictReason},
    outcome::{Outcome, SkipReason, Stage},
    ports::{
        chain::{ChainError, InferenceId},
        ml_node::{ReplayError, ReplayRequest, ReplayResponse},
        model_lock::{LeaseRequest, LockError, NodeHealth},
        payload_source::{PayloadError, Payloads},
    },
    scheduler::{Attempts, Prepared, Staged, Step},
    scoring,
};

/// What the devshard network stage hands the GPU stage.
struct DevshardPrepared {
    original: CompletionResponse,
    request: ReplayRequest,
    threshold: Decimal,
}

/// What a devshard replay needs from the chain besides the job, read at most once per TTL.
#[derive(Default)]
pub(crate) struct ChainParamsCache {
    thresholds: Mutex<HashMap<ThresholdKey, (Instant, Decimal)>>,
    logprobs_mode: Mutex<Option<(Instant, Arc<str>)>>,
}

/// (epoch, model).
type ThresholdKey = (u64, Arc<str>);

/// How many (epoch, model) thresholds are kept; older epochs are never asked about again.
const MAX_THRESHOLDS: usize = 256;

impl ChainParamsCache {
    /// The model's validation threshold for the epoch (`EpochGroupData(epoch, model)`).
    async fn threshold(&self, inner: &Inner, job: &DevshardJob) -> Result<Decimal, String> {
        let key = (job.epoch_id, Arc::clone(&job.model));
        let ttl = inner.config.chain_params_ttl;
        {
            let cached = self.thresholds.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((at, threshold)) = cached.get(&key) {
                if at.elapsed() < ttl {
                    return Ok(*threshold);
                }
            }
        }
        let group = inner
            .chain_call(inner.ports.chain.epoch_group(job.epoch_id, &job.model))
            .await
            .map_err(|err| format!("epoch group of {} for {}: {err}", job.epoch_id, job.model))?;
        let threshold = group.validation_threshold.ok_or_else(|| {
            format!("no validation threshold for epoch {} model {}", job.epoch_id, job.model)
        })?;
        let mut cached = self.thresholds.lock().unwrap_or_else(|p| p.into_inner());
        if cached.len() >= MAX_THRESHOLDS {
            cached.retain(|_, (at, _)| at.elapsed() < ttl);
        }
        if cached.len() < MAX_THRESHOLDS {
            cached.insert(key, (Instant::now(), threshold));
        }
        Ok(threshold)
    }

    /// The chain's `ValidationParams.logprobs_mode`; empty for the node's default.
    async fn logprobs_mode(&self, inner: &Inner) -> Result<Arc<str>, ChainError> {
        {
            let cached = self.logprobs_mode.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((at, mode)) = cached.as_ref() {
                if at.elapsed() < inner.config.chain_params_ttl {
                    return Ok(Arc::clone(mode));
                }
            }
        }
        let params = inner.chain_call(inner.ports.chain.validation_params()).await?;
        let mode: Arc<str> = params.logprobs_mode.into();
        *self.logprobs_mode.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((Instant::now(), Arc::clone(&mode)));
        Ok(mode)
    }
}

/// Room on ML nodes that attempts have claimed and not yet turned into leases, per model: a
/// GPU-stage attempt claims one of the broker's free slots before it asks for a lease, so
/// concurrent attempts never count the same free slot twice (the broker's count may be lower
/// than our GPU slots when other processes share the nodes). Challenged votes that found no room are
/// remembered for a while, and sampled attempts for the same model leave the next free slot to
/// them: lanes order the ML nodes' slots, not only the engine's.
#[derive(Default)]
pub(crate) struct RoomClaims(Mutex<Claims>);

#[derive(Default)]
struct Claims {
    claimed: HashMap<Arc<str>, usize>,
    /// Challenged votes waiting for room, with their model and when they last looked.
    challenged_waiting: HashMap<DevshardKey, (Arc<str>, Instant)>,
}

impl RoomClaims {
    /// Claims one of `free` slots for `job`'s model, unless every one is claimed, or the job is
    /// sampled and a challenged vote for the model waits (one that looked within `patience`;
    /// an older entry belongs to a vote that ended otherwise). `free` of `None` (the broker
    /// cannot tell) leaves room as far as the broker is concerned.
    fn claim(
        &self,
        job: &DevshardJob,
        free: Option<usize>,
        patience: Duration,
    ) -> Option<RoomClaim<'_>> {
        let mut claims = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let Claims { claimed, challenged_waiting } = &mut *claims;
        if job.challenged {
            challenged_waiting.remove(&job.key);
        } else {
            challenged_waiting.retain(|_, (_, at)| at.elapsed() < patience);
            if challenged_waiting.values().any(|(model, _)| *model == job.model) {
                return None;
            }
        }
        let taken = claimed.entry(Arc::clone(&job.model)).or_default();
        if free.is_some_and(|free| *taken >= free) {
            if job.challenged {
                challenged_waiting
                    .insert(job.key.clone(), (Arc::clone(&job.model), Instant::now()));
            }
            return None;
        }
        *taken += 1;
        Some(RoomClaim { claims: self, model: Arc::clone(&job.model) })
    }
}

/// One claimed slot, given back when dropped: once the lease is taken (the broker then counts
/// it) or the attempt ends without one.
struct RoomClaim<'a> {
    claims: &'a RoomClaims,
    model: Arc<str>,
}

impl Drop for RoomClaim<'_> {
    fn drop(&mut self) {
        let mut claims = self.claims.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(taken) = claims.claimed.get_mut(&self.model) {
            *taken = taken.saturating_sub(1);
            if *taken == 0 {
                claims.claimed.remove(&self.model);
            }
        }
    }
}

pub(super) struct Attempt<'a> {
    inner: &'a Inner,
    job: Arc<DevshardJob>,
    deadline: Instant,
    excluded: Vec<Arc<str>>,
    attempts: Attempts,
}

impl<'a> Attempt<'a> {
    pub(super) fn new(
        inner: &'a Inner,
        job: Arc<DevshardJob>,
        deadline: Instant,
        excluded: Vec<Arc<str>>,
        attempts: Attempts,
    ) -> Self {
        Self { inner, job, deadline, excluded, attempts }
    }

    /// The network stage: payloads, the chain's figures and the replay request.
    pub(super) async fn network(mut self) -> Step {
        if Instant::now() >= self.deadline {
            return gave_up(Stage::Payload, "the job's deadline passed without a verdict".into());
        }
        let lease = crate::scheduler::Key::Devshard(self.job.key.clone()).lease_key();
        if let Err(step) = self.inner.hold(&lease, true, self.attempts).await {
            return step;
        }
        let payloads = match self.fetch_payloads().await {
            Ok(payloads) => payloads,
            Err(step) => return step,
        };
        let started = Instant::now();
        let threshold = match self.inner.devshard_params.threshold(self.inner, &self.job).await {
            Ok(threshold) => threshold,
            Err(error) => return self.retry_chain(error),
        };
        let logprobs_mode = match self.inner.devshard_params.logprobs_mode(self.inner).await {
            Ok(mode) => mode,
            Err(err) => return self.retry_chain(format!("validation params: {err}")),
        };
        observe(Stage::Chain, started);
        let response_bytes = payloads.response.len();
        let inference_id = self.job.key.inference_id;
        let built = super::attempt::parse_off_thread(response_bytes, move || {
            let original = CompletionResponse::from_payload(&payloads.response)?;
            let body = completion::build_devshard_replay(
                &payloads.prompt,
                &original,
                inference_id,
                &logprobs_mode,
            )?;
            Ok::<_, completion::InvalidInference>((original, body))
        })
        .await;
        let (original, body) = match built {
            Ok(Ok(built)) => built,
            Ok(Err(invalid)) => {
                debug!(%invalid, "the executor's payloads cannot be replayed");
                return judged(DevshardVerdict::new(VerdictReason::InvalidInference));
            }
            Err(error) => return gave_up(Stage::Payload, error),
        };
        let request = ReplayRequest {
            inference_id: InferenceId::new(inference_id.to_string()),
            body: Bytes::from(body),
        };
        let bytes = response_bytes + request.body.len();
        let prepared = DevshardPrepared { original, request, threshold };
        Step::Buffer(Staged { prepared: Box::new(prepared), bytes })
    }

    /// The GPU stage: room on a node for the job's model, then the replay and the verdict.
    pub(super) async fn gpu(mut self, prepared: Prepared) -> Step {
        let Ok(prepared) = prepared.downcast::<DevshardPrepared>() else {
            let error = "a devshard key buffered another protocol's payload".to_owned();
            return gave_up(Stage::Replay, error);
        };
        if Instant::now() >= self.deadline {
            return gave_up(Stage::Lock, "the job's deadline passed without a verdict".into());
        }
        let lease = crate::scheduler::Key::Devshard(self.job.key.clone()).lease_key();
        if !self.inner.ports.leases.held(&lease) {
            // Lost while buffered: the network stage asks for it again (or learns who has it).
            return super::share::wait(Duration::ZERO, self.attempts, None);
        }
        let free = self.inner.ports.broker.free_slots(&self.job.model);
        // A waiting vote looks again at least every `lock_wait`; twice that without a look
        // means it ended some other way.
        let patience = self.inner.config.lock_wait.saturating_mul(2);
        let Some(claim) = self.inner.room_claims.claim(&self.job, free, patience) else {
            return self.wait_for_room(prepared);
        };
        self.replay(prepared, claim).await
    }

    async fn fetch_payloads(&mut self) -> Result<Payloads, Step> {
        let config = &self.inner.config;
        let started = Instant::now();
        let fetched = self
            .inner
            .bounded(config.payload_timeout, self.inner.ports.payloads.fetch_devshard(&self.job))
            .await
            .unwrap_or_else(|| Err(PayloadError::Unavailable("payload fetch timed out".into())));
        observe(Stage::Payload, started);
        let err = match fetched {
            Ok(payloads) => return Ok(payloads),
            Err(PayloadError::Gone) => {
                return Err(Step::Terminal(Outcome::Skipped { reason: SkipReason::Gone }));
            }
            Err(PayloadError::HashMismatch(detail)) => {
                debug!(%detail, "devshard payload hash mismatch");
                let mut verdict = DevshardVerdict::new(VerdictReason::HashMismatch);
                verdict.details.push(("detail".into(), detail));
                return Err(judged(verdict));
            }
            Err(err) => err,
        };
        let side = if err.is_local() { "validator" } else { "executor" };
        metrics::counter!("validator_payload_failures_total", "side" => side).increment(1);
        self.attempts.payload += 1;
        if self.attempts.payload < config.payload_retry.attempts {
            debug!(%err, attempt = self.attempts.payload, "devshard payload fetch failed; will retry");
            return Err(self.retry(
                Stage::Payload,
                self.inner.backoff(&config.payload_retry),
                err.to_string(),
                None,
                None,
            ));
        }
        // Upstream votes nothing when the payloads cannot be had; neither do we.
        warn!(%err, "devshard payloads unavailable after every attempt; no verdict");
        Err(gave_up(Stage::Payload, err.to_string()))
    }

    async fn replay(&mut self, prepared: Box<DevshardPrepared>, claim: RoomClaim<'_>) -> Step {
        let wanted = LeaseRequest {
            model: &self.job.model,
            excluded_nodes: &self.excluded,
            escrow_id: Some(&self.job.key.escrow_id),
        };
        let acquired = self.inner.lease(&wanted).await;
        drop(claim);
        let lease = match acquired {
            Ok(lease) => lease,
            Err(LockError::NoNode { .. }) => return self.wait_for_room(prepared),
            Err(err) => return self.retry_replay(err.to_string(), None, prepared),
        };
        let answer = self.inner.replay(&lease, &prepared.request).await;
        let (original, threshold) = (&prepared.original, prepared.threshold);
        let node = Arc::clone(&lease.node().id);
        let (health, step) = match answer {
            Ok(ReplayResponse::Completed(body)) => {
                match scoring::judge_devshard(
                    original,
                    &body,
                    self.job.input_tokens,
                    self.job.output_tokens,
                    threshold,
                ) {
                    Ok(verdict) => (NodeHealth::Healthy, judged(verdict)),
                    Err(err) => {
                        (NodeHealth::BadAnswer, self.retry_replay(err.to_string(), None, prepared))
                    }
                }
            }
            Ok(ReplayResponse::Rejected { status }) => {
                debug!(status, "ML node rejected the replay: valid, as upstream counts it");
                let mut verdict = DevshardVerdict::new(VerdictReason::MlRejected);
                verdict.details.push(("ml_status".into(), status.to_string()));
                (NodeHealth::Healthy, judged(verdict))
            }
            Err(ReplayError::Timeout) => {
                (NodeHealth::TimedOut, self.retry_replay("replay timed out".into(), None, prepared))
            }
            Err(err @ ReplayError::Transport(_)) => {
                (NodeHealth::Failed, self.retry_replay(err.to_string(), Some(node), prepared))
            }
            Err(err @ ReplayError::BadResponse(_)) => {
                (NodeHealth::BadAnswer, self.retry_replay(err.to_string(), None, prepared))
            }
        };
        lease.release(health);
        self.inner.scheduler.room_freed();
        step
    }

    /// No ML capacity now: wait, holding no slot but keeping the payload, until one of our
    /// leases ends or `lock_wait` passes. Not a failure: no retry budget is spent, the deadline
    /// bounds it.
    fn wait_for_room(&self, prepared: Box<DevshardPrepared>) -> Step {
        metrics::counter!("validator_lock_waits_total").increment(1);
        let delay = self.until_deadline(self.inner.config.lock_wait);
        Step::Retry {
            stage: Stage::Lock,
            delay,
            attempts: self.attempts,
            pending_submit: None,
            error: format!("no ML capacity for model {}", self.job.model),
            exclude: None,
            wants_room: true,
            keep: Some(prepared),
        }
    }

    /// A failed chain read, counted against the payload budget as the classic path does.
    fn retry_chain(&mut self, error: String) -> Step {
        self.attempts.payload += 1;
        if self.attempts.payload < self.inner.config.payload_retry.attempts {
            let delay = self.inner.backoff(&self.inner.config.payload_retry);
            self.retry(Stage::Chain, delay, error, None, None)
        } else {
            gave_up(Stage::Chain, error)
        }
    }

    /// A failed lease or replay, counted against the replay budget; the payload is kept for the
    /// next attempt.
    fn retry_replay(
        &mut self,
        error: String,
        exclude: Option<Arc<str>>,
        prepared: Box<DevshardPrepared>,
    ) -> Step {
        self.attempts.replay += 1;
        if self.attempts.replay < self.inner.config.replay_retry.attempts {
            debug!(%error, failures = self.attempts.replay, "devshard lock or replay failed; will retry");
            let delay = self.inner.backoff(&self.inner.config.replay_retry);
            self.retry(Stage::Replay, delay, error, exclude, Some(prepared))
        } else {
            warn!(%error, "devshard lock or replay failed on every attempt; no verdict");
            gave_up(Stage::Replay, error)
        }
    }

    fn retry(
        &self,
        stage: Stage,
        delay: Duration,
        error: String,
        exclude: Option<Arc<str>>,
        keep: Option<Box<DevshardPrepared>>,
    ) -> Step {
        Step::Retry {
            stage,
            delay: self.until_deadline(delay),
            attempts: self.attempts,
            pending_submit: None,
            error,
            exclude,
            wants_room: false,
            keep: keep.map(|prepared| prepared as Prepared),
        }
    }

    /// `delay`, cut short at the deadline so a job never outlives it waiting.
    fn until_deadline(&self, delay: Duration) -> Duration {
        delay.min(self.deadline.saturating_duration_since(Instant::now()))
    }
}

fn judged(verdict: DevshardVerdict) -> Step {
    metrics::counter!(
        "validator_devshard_verdicts_total",
        "verdict" => if verdict.valid() { "valid" } else { "invalid" },
        "reason" => verdict.reason.as_str()
    )
    .increment(1);
    Step::Terminal(Outcome::Judged { verdict })
}

fn gave_up(stage: Stage, error: String) -> Step {
    Step::Terminal(Outcome::GaveUp { stage, error })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devshard::DevshardRequest;

    fn job(id: u64, challenged: bool) -> DevshardJob {
        DevshardJob::new(DevshardRequest {
            inference_id: id,
            model: "m".into(),
            prompt_hash: vec![0; 32],
            response_hash: vec![0; 32],
            escrow_id: "7".into(),
            executor_address: "gonka1qypqxpq9qcrsszg2pvxq6rs0zqg3yyc50htqp7".into(),
            runtime_version: "v4".into(),
            challenged,
            ..DevshardRequest::default()
        })
        .expect("a well-formed job")
    }

    const PATIENCE: Duration = Duration::from_secs(4);

    #[tokio::test(start_paused = true)]
    async fn a_waiting_vote_gets_the_next_free_slot_before_sampled_work() {
        let claims = RoomClaims::default();
        let (sampled, vote) = (job(1, false), job(2, true));
        assert!(claims.claim(&vote, Some(0), PATIENCE).is_none(), "no room: the vote waits");
        assert!(claims.claim(&sampled, Some(1), PATIENCE).is_none(), "room goes to the vote");
        let held = claims.claim(&vote, Some(1), PATIENCE).expect("the vote claims it");
        assert!(claims.claim(&sampled, Some(1), PATIENCE).is_none(), "the one slot is claimed");
        drop(held);
        assert!(claims.claim(&sampled, Some(1), PATIENCE).is_some(), "no vote waits any more");
    }

    #[tokio::test(start_paused = true)]
    async fn a_vote_that_stopped_looking_stops_holding_sampled_work_back() {
        let claims = RoomClaims::default();
        let vote = job(2, true);
        assert!(claims.claim(&vote, Some(0), PATIENCE).is_none());
        tokio::time::advance(PATIENCE).await;
        assert!(claims.claim(&job(1, false), Some(1), PATIENCE).is_some());
        let mut other_model = job(3, false);
        other_model.model = "other".into();
        assert!(claims.claim(&vote, Some(0), PATIENCE).is_none());
        assert!(claims.claim(&other_model, Some(1), PATIENCE).is_some(), "votes wait per model");
    }
}
