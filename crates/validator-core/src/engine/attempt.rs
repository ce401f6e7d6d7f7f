//! One classic validation attempt, in two stages (DOMAIN.md 2.3-2.8, 5.2). On a network-stage
//! slot: inference record, staleness, payloads and their verification, duplicate check, the
//! replay request; the result waits in the buffer. On a GPU-stage slot: staleness again, lease,
//! replay, scoring. The score goes back to the network stage for submission. A failure gives the
//! slot back and requeues the key with a due time (a failed lease or replay keeps its payload);
//! nothing here sleeps.

use std::{
    collections::{HashMap, HashSet},
    panic::AssertUnwindSafe,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use futures_util::FutureExt;
use rand::Rng;
use tokio::time::Instant;
use tracing::{debug, info_span, warn, Instrument};

use super::{share, Inner};
use crate::{
    completion,
    config::RetryPolicy,
    outcome::{InvalidationReason, Lane, Outcome, SkipReason, Stage},
    ports::{
        chain::{ChainError, Inference, InferenceId, InferenceStatus, MsgValidation, SubmitError},
        journal::{Intent, JournalEntry, SubmissionResult},
        lease::{LeaseKey, Takeover},
        ml_node::{ReplayRequest, ReplayResponse},
        model_lock::{LeaseRequest, NodeHealth},
        payload_source::{PayloadError, Payloads},
    },
    scheduler::{Attempts, Job, Key, PendingSubmit, Prepared, Staged, Step},
    scoring,
};

/// What the classic network stage hands the GPU stage.
struct ClassicPrepared {
    inference: Inference,
    original: completion::CompletionResponse,
    request: ReplayRequest,
    empty_sentinel: bool,
}

/// Payloads at least this large are parsed on the blocking pool, not on a runtime worker.
const PARSE_OFF_THREAD: usize = 256 << 10;

/// Runs dispatched jobs: this one, then, while it held a GPU slot, the next buffered payload
/// the freed slot goes to, without waiting for the dispatcher.
pub(super) async fn run(inner: Arc<Inner>, job: Job) {
    let mut next = Some(job);
    while let Some(job) = next {
        next = run_one(&inner, job).await;
    }
}

/// Runs one job to its step and hands the slot back. A GPU-stage job whose result is ready
/// trades its slot for a free network slot and submits at once; without one, the result queues
/// for the network stage. Returns the next job for a GPU slot this freed.
async fn run_one(inner: &Arc<Inner>, job: Job) -> Option<Job> {
    let Job {
        key,
        lane,
        mut prepared,
        attempts,
        mut pending_submit,
        run_id,
        devshard,
        first_wait,
        mut permit,
    } = job;
    if let Some(wait) = first_wait {
        metrics::histogram!("validator_lane_wait_seconds", "lane" => lane.as_str())
            .record(wait.as_secs_f64());
    }
    let journal_id = key.journal_id();
    let started = Instant::now();
    let step = loop {
        let work = match (&key, &devshard) {
            (Key::Classic(id, revalidation), _) => {
                let span = info_span!("validation", inference_id = %id, lane = lane.as_str(), revalidation, run_id);
                let attempt = Attempt { inner, id, revalidation: *revalidation, lane, attempts };
                match prepared.take() {
                    None => attempt.network(pending_submit.take()).instrument(span).boxed(),
                    Some(prepared) => attempt.gpu(prepared).instrument(span).boxed(),
                }
            }
            (Key::Devshard(devshard_key), Some((job, deadline, excluded))) => {
                let span = info_span!("devshard", escrow_id = %devshard_key.escrow_id, inference_id = devshard_key.inference_id, lane = lane.as_str());
                let attempt = super::devshard::Attempt::new(
                    inner,
                    Arc::clone(job),
                    *deadline,
                    excluded.clone(),
                    attempts,
                );
                match prepared.take() {
                    None => attempt.network().instrument(span).boxed(),
                    Some(prepared) => attempt.gpu(prepared).instrument(span).boxed(),
                }
            }
            (Key::Devshard(_), None) => {
                let error = "devshard key without its job".to_owned();
                async move { Step::Terminal(Outcome::GaveUp { stage: Stage::Chain, error }) }
                    .boxed()
            }
        };
        let step = tokio::select! {
            biased;
            _ = inner.cancel.cancelled() => Step::Terminal(Outcome::Cancelled),
            result = AssertUnwindSafe(work).catch_unwind() => result.unwrap_or_else(|panic| {
                let error = panic_message(&panic);
                warn!(inference_id = %journal_id, %error, "validation attempt panicked");
                Step::Terminal(Outcome::GaveUp { stage: Stage::Chain, error })
            }),
        };
        match step {
            Step::Submit(pending) if permit.trade_for_network() => pending_submit = Some(pending),
            step => break step,
        }
    };
    match &step {
        Step::Terminal(outcome) => inner.release_lease(&key, outcome).await,
        Step::Retry { stage: Stage::Lease, .. } => {}
        Step::Retry { stage, error, .. } => inner.ports.journal.record(JournalEntry::Attempt {
            inference_id: journal_id,
            revalidation: key.revalidation(),
            stage: *stage,
            error: error.clone(),
            duration: started.elapsed(),
            at: SystemTime::now(),
        }),
        Step::Buffer(_) | Step::Submit(_) => {}
    }
    permit.finish_and_next(step)
}

pub(super) fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    format!("panicked: {text}")
}

struct Attempt<'a> {
    inner: &'a Inner,
    id: &'a InferenceId,
    revalidation: bool,
    lane: Lane,
    attempts: Attempts,
}

impl Attempt<'_> {
    /// The network stage: a pending submission, or everything up to a verified payload and its
    /// replay request.
    async fn network(mut self, pending_submit: Option<Box<PendingSubmit>>) -> Step {
        if self.inner.retired.get().is_some() {
            return skip(SkipReason::ProtocolRetired);
        }
        if let Some(pending) = pending_submit {
            return self.submit(*pending).await;
        }
        match self.inner.hold(&self.lease_key(), false, self.attempts).await {
            Ok(None) => {}
            Ok(Some(takeover)) => {
                if let Some(step) = self.take_over(&takeover).await {
                    return step;
                }
            }
            Err(step) => return step,
        }
        if self.attempts.check_sent {
            if let Some(step) = self.check_sent().await {
                return step;
            }
        }
        let journal = &self.inner.ports.journal;
        // The chain's validated set answers for validations (checked after the payload fetch);
        // only the journal remembers which revalidations an earlier process sent.
        if self.revalidation {
            let timeout = self.inner.config.journal_timeout;
            match self.inner.bounded(timeout, journal.already_sent(self.id, true)).await {
                Some(Ok(true)) => {
                    debug!("revalidation sent by an earlier run of this validator");
                    return skip(SkipReason::AlreadyValidated);
                }
                Some(Ok(false)) => {}
                Some(Err(err)) => warn!(%err, "journal lookup failed; validating"),
                None => warn!("journal lookup timed out; validating"),
            }
        }
        let chain = &self.inner.ports.chain;
        let started = Instant::now();
        let inference = match self.inner.chain_call(chain.inference(self.id)).await {
            Ok(inference) => inference,
            Err(ChainError::NotFound) => return skip(SkipReason::Gone),
            Err(err) => return self.retry_payload(err.to_string()),
        };
        if self.attempts.total <= 1 {
            journal.record(JournalEntry::Epoch {
                inference_id: self.id.clone(),
                revalidation: self.revalidation,
                epoch: inference.epoch_id,
            });
        }
        // Unknown epoch state counts as not stale, as upstream.
        if let Ok(epoch) = self.inner.chain_call(chain.epoch_state()).await {
            if epoch.is_stale(inference.epoch_id) {
                return skip(SkipReason::EpochStale);
            }
        }
        observe(Stage::Chain, started);

        let Some(payloads) = (match self.fetch_payloads(&inference).await {
            Ok(payloads) => payloads,
            Err(step) => return step,
        }) else {
            return self.invalidate(&inference, InvalidationReason::PayloadUnavailable).await;
        };

        if !self.revalidation && self.inner.validated.contains(self.inner, &inference).await {
            return skip(SkipReason::AlreadyValidated);
        }
        if inference.status == InferenceStatus::Started {
            return self.retry_replay("inference is not finished".into(), None);
        }
        // The payload fetch may have taken long enough for the chain to be found retired.
        if self.inner.retired.get().is_some() {
            return skip(SkipReason::ProtocolRetired);
        }
        let response_bytes = payloads.response.len();
        let built = parse_off_thread(response_bytes, move || {
            let original = completion::CompletionResponse::from_payload(&payloads.response)?;
            let replay = completion::classic_replay(&payloads.prompt, &original)?;
            Ok::<_, completion::InvalidInference>((original, replay))
        })
        .await;
        let built = match built {
            Ok(built) => built,
            Err(error) => return Step::Terminal(Outcome::GaveUp { stage: Stage::Payload, error }),
        };
        let (original, replay) = match built {
            Ok(built) => built,
            Err(invalid) => {
                debug!(%invalid, "invalid inference: submitting value 0");
                let score = scoring::Score::invalid_inference();
                return self.submit_score(&inference, score, String::new()).await;
            }
        };
        let request =
            ReplayRequest { inference_id: self.id.clone(), body: Bytes::from(replay.body) };
        let bytes = response_bytes + request.body.len();
        let prepared =
            ClassicPrepared { inference, original, request, empty_sentinel: replay.empty_sentinel };
        Step::Buffer(Staged { prepared: Box::new(prepared), bytes })
    }

    /// The GPU stage: the staleness rule again (the payload may have waited in the buffer
    /// across an epoch), then lease, replay and scoring.
    async fn gpu(self, prepared: Prepared) -> Step {
        let Ok(prepared) = prepared.downcast::<ClassicPrepared>() else {
            let error = "a classic key buffered another protocol's payload".to_owned();
            return Step::Terminal(Outcome::GaveUp { stage: Stage::Replay, error });
        };
        if self.inner.retired.get().is_some() {
            return skip(SkipReason::ProtocolRetired);
        }
        if !self.inner.ports.leases.held(&self.lease_key()) {
            // Lost while buffered: the network stage asks for it again (or learns who has it).
            return share::wait(Duration::ZERO, self.attempts, None);
        }
        if let Some(epoch) = self.inner.epoch_state().await {
            if epoch.is_stale(prepared.inference.epoch_id) {
                return skip(SkipReason::EpochStale);
            }
        }
        self.replay(prepared).await
    }

    /// `Ok(Some)` payloads to go on with; `Ok(None)` when every attempt failed and there is no
    /// legacy copy (invalidate); `Err(step)` to stop here.
    async fn fetch_payloads(&mut self, inference: &Inference) -> Result<Option<Payloads>, Step> {
        let config = &self.inner.config;
        let started = Instant::now();
        let fetched = self
            .inner
            .bounded(config.payload_timeout, self.inner.ports.payloads.fetch(inference))
            .await
            .unwrap_or_else(|| Err(PayloadError::Unavailable("payload fetch timed out".into())));
        observe(Stage::Payload, started);
        let err = match fetched {
            Ok(payloads) => return Ok(Some(payloads)),
            Err(PayloadError::Gone) if config.payload_gone_is_final => {
                return Err(skip(SkipReason::Gone));
            }
            Err(PayloadError::HashMismatch(detail)) => {
                debug!(%detail, "payload hash mismatch");
                return Err(self.invalidate(inference, InvalidationReason::HashMismatch).await);
            }
            Err(err) => err,
        };
        let side = if err.is_local() { "validator" } else { "executor" };
        metrics::counter!("validator_payload_failures_total", "side" => side).increment(1);
        self.attempts.payload += 1;
        self.attempts.payload_local |= err.is_local();
        if self.attempts.payload < config.payload_retry.attempts {
            debug!(%err, attempt = self.attempts.payload, "payload fetch failed; will retry");
            return Err(self.retry(Stage::Payload, &config.payload_retry, err.to_string()));
        }
        if inference.has_legacy_payloads() {
            debug!("payloads unavailable; using the legacy copy on chain");
            return Ok(Some(Payloads {
                prompt: Bytes::copy_from_slice(inference.prompt_payload.as_bytes()),
                response: Bytes::copy_from_slice(inference.response_payload.as_bytes()),
            }));
        }
        if self.attempts.payload_local {
            warn!(%err, "payloads not fetched, partly for a validator-side failure; giving up");
            return Err(Step::Terminal(Outcome::GaveUp {
                stage: Stage::Payload,
                error: err.to_string(),
            }));
        }
        warn!(%err, "payloads unavailable after every attempt");
        Ok(None)
    }

    /// Lease, replay and scoring; the score goes to the network stage for submission. A failed
    /// lease or replay keeps the payload for the next attempt.
    async fn replay(&self, prepared: Box<ClassicPrepared>) -> Step {
        let lease = match self.inner.lease(&LeaseRequest::model(&prepared.inference.model)).await {
            Ok(lease) => lease,
            Err(err) => return self.retry_replay(err.to_string(), Some(prepared)),
        };
        let answer = self.inner.replay(&lease, &prepared.request).await;
        let inference = &prepared.inference;
        let body = match answer {
            Ok(ReplayResponse::Completed(body)) => {
                lease.release(NodeHealth::Healthy);
                body
            }
            Ok(ReplayResponse::Rejected { status }) => {
                lease.release(NodeHealth::Healthy);
                debug!(status, "ML node rejected the replay: counted as a pass");
                let score = scoring::Score::rejected_by_node();
                return Step::Submit(Box::new(self.scored(inference, score, String::new())));
            }
            Err(err) => {
                let health =
                    if err.is_node_failure() { NodeHealth::Failed } else { NodeHealth::Healthy };
                lease.release(health);
                return self.retry_replay(err.to_string(), Some(prepared));
            }
        };
        let pending =
            match scoring::score_classic_answer(&prepared.original, prepared.empty_sentinel, &body)
            {
                Ok(score) if score.verdict == scoring::Verdict::Invalid => {
                    debug!("the executor failed a prompt our node serves: submitting value 0");
                    self.scored(inference, score, String::new())
                }
                Ok(score) => self.scored(inference, score, scoring::response_hash(&body)),
                Err(err) => return self.retry_replay(err.to_string(), Some(prepared)),
            };
        Step::Submit(Box::new(pending))
    }

    /// The message and outcome of a score, ready to submit.
    fn scored(
        &self,
        inference: &Inference,
        score: scoring::Score,
        response_hash: String,
    ) -> PendingSubmit {
        let msg = self.message(response_hash, score.value);
        let outcome = Outcome::Submitted {
            verdict: score.verdict,
            value: score.value,
            msg_id: msg.id.clone(),
            tx_hash: None,
        };
        PendingSubmit { msg, outcome, epoch: inference.epoch_id, reconcile: false }
    }

    async fn submit_score(
        &mut self,
        inference: &Inference,
        score: scoring::Score,
        response_hash: String,
    ) -> Step {
        let pending = self.scored(inference, score, response_hash);
        self.submit(pending).await
    }

    /// Checks the chain status, then submits value 0 unless the inference is already
    /// invalidated.
    async fn invalidate(&mut self, inference: &Inference, reason: InvalidationReason) -> Step {
        let current =
            self.inner.chain_call(self.inner.ports.chain.inference(&inference.inference_id));
        match current.await {
            Ok(current) if current.status == InferenceStatus::Invalidated => {
                return skip(SkipReason::AlreadyInvalidated);
            }
            Err(ChainError::NotFound) => return skip(SkipReason::Gone),
            _ => {}
        }
        let msg = self.message(String::new(), 0.0);
        let outcome = Outcome::Invalidated { reason, msg_id: msg.id.clone(), tx_hash: None };
        self.submit(PendingSubmit { msg, outcome, epoch: inference.epoch_id, reconcile: false })
            .await
    }

    fn message(&self, response_hash: String, value: f64) -> MsgValidation {
        MsgValidation {
            id: uuid::Uuid::new_v4().to_string(),
            inference_id: self.id.clone(),
            response_hash,
            value_decimal: scoring::value_decimal(value),
            revalidation: self.revalidation,
        }
    }

    /// Commits the intent to the journal, then broadcasts; a journal failure sends nothing and
    /// counts as a failed submission.
    async fn submit(&mut self, pending: PendingSubmit) -> Step {
        if self.inner.retired.get().is_some() {
            return skip(SkipReason::ProtocolRetired);
        }
        let key = self.lease_key();
        if !self.inner.ports.leases.held(&key) {
            match self.inner.hold(&key, false, self.attempts).await {
                Ok(None) => {}
                // Another replica held it in between: what it left open wins over our result.
                Ok(Some(takeover)) => {
                    if let Some(step) = self.take_over(&takeover).await {
                        return step;
                    }
                }
                Err(step) => return step,
            }
        }
        if pending.reconcile {
            match self.reconcile(&pending).await {
                Ok(()) => {}
                Err(step) => return step,
            }
        }
        self.attempts.submit += 1;
        let started = Instant::now();
        let timeout = self.inner.config.chain_timeout;
        let journal = &self.inner.ports.journal;
        let intent = Intent {
            msg: pending.msg.clone(),
            epoch: pending.epoch,
            lane: self.lane,
            outcome: pending.outcome.clone(),
        };
        let intended =
            self.inner.bounded(self.inner.config.journal_timeout, journal.intend(&intent));
        let submitted = match intended.await {
            Some(Ok(())) => {
                let submitted = self
                    .inner
                    .bounded(timeout, self.inner.ports.chain.submit_validation(&pending.msg))
                    .await
                    .unwrap_or_else(|| Err(SubmitError::Transient("submission timed out".into())));
                journal.record(JournalEntry::Submission {
                    msg_id: pending.msg.id.clone(),
                    result: submission_result(&submitted),
                    at: SystemTime::now(),
                });
                submitted
            }
            Some(Err(err)) => Err(SubmitError::Transient(format!("not sent: {err}"))),
            None => Err(SubmitError::Transient("not sent: journal timed out".into())),
        };
        observe(Stage::Submit, started);
        match submitted {
            Ok(receipt) => {
                let mut outcome = pending.outcome;
                if let Outcome::Submitted { tx_hash, .. } | Outcome::Invalidated { tx_hash, .. } =
                    &mut outcome
                {
                    *tx_hash = receipt.tx_hash;
                }
                Step::Terminal(outcome)
            }
            Err(SubmitError::Duplicate) => skip(SkipReason::AlreadyValidated),
            Err(SubmitError::Retired(reason)) => {
                self.inner.retire(reason);
                skip(SkipReason::ProtocolRetired)
            }
            Err(SubmitError::Rejected(error)) => {
                Step::Terminal(Outcome::GaveUp { stage: Stage::Submit, error })
            }
            Err(SubmitError::Transient(error)) => {
                let policy = &self.inner.config.submit_retry;
                if self.attempts.submit < policy.attempts {
                    debug!(%error, "submission failed; will retry");
                    let delay = self.inner.backoff(policy);
                    Step::Retry {
                        stage: Stage::Submit,
                        delay,
                        attempts: self.attempts,
                        pending_submit: Some(Box::new(pending)),
                        error,
                        exclude: None,
                        wants_room: false,
                        keep: None,
                    }
                } else {
                    Step::Terminal(Outcome::GaveUp { stage: Stage::Submit, error })
                }
            }
        }
    }

    fn lease_key(&self) -> LeaseKey {
        LeaseKey::classic(self.id, self.revalidation)
    }

    /// What a lease taken over from another replica asks for first: its open intent checked on
    /// chain (and sent again only if absent) once its broadcast must have ended; with none open,
    /// the shared journal's word on whether the previous holder's message landed.
    async fn take_over(&mut self, takeover: &Takeover) -> Option<Step> {
        let chain_timeout = self.inner.config.chain_timeout;
        if let Some((settle, pending)) = share::reconcile_step(takeover, chain_timeout) {
            return Some(share::wait(settle, self.attempts, Some(Box::new(pending))));
        }
        self.attempts.check_sent = true;
        self.check_sent().await
    }

    /// Whether the shared journal says a message for this key was sent: then the key ends. A
    /// journal that cannot answer makes the key wait and ask again, never send blind.
    async fn check_sent(&mut self) -> Option<Step> {
        let timeout = self.inner.config.journal_timeout;
        let journal = &self.inner.ports.journal;
        match self.inner.bounded(timeout, journal.already_sent(self.id, self.revalidation)).await {
            Some(Ok(true)) => Some(skip(SkipReason::AlreadyValidated)),
            Some(Ok(false)) => {
                self.attempts.check_sent = false;
                None
            }
            Some(Err(err)) => {
                warn!(%err, "taken-over validation: the journal cannot say whether it was sent");
                Some(share::wait(share::LEASE_ERROR_PAUSE, self.attempts, None))
            }
            None => {
                warn!("taken-over validation: the journal timed out saying whether it was sent");
                Some(share::wait(share::LEASE_ERROR_PAUSE, self.attempts, None))
            }
        }
    }

    /// An intent another process left open: `Ok` to send it (again), or the step that ends or
    /// retries the key. The chain says whether it landed; what it says is journaled.
    async fn reconcile(&mut self, pending: &PendingSubmit) -> Result<(), Step> {
        let chain = &self.inner.ports.chain;
        let recorded =
            self.inner.chain_call(chain.validation_recorded(&pending.msg, pending.epoch));
        let result = match recorded.await {
            Ok(Some(false)) => return Ok(()),
            Ok(Some(true)) => SubmissionResult::ReconciledLanded,
            Ok(None) => SubmissionResult::ReconciledUnconfirmed,
            Err(err) => {
                debug!(%err, "open intent not checked on chain; will retry");
                let delay = self.inner.backoff(&self.inner.config.submit_retry);
                let pending = Box::new(pending.clone());
                return Err(share::wait(delay, self.attempts, Some(pending)));
            }
        };
        self.inner.ports.journal.record(JournalEntry::Submission {
            msg_id: pending.msg.id.clone(),
            result: result.clone(),
            at: SystemTime::now(),
        });
        Err(match result {
            SubmissionResult::ReconciledLanded => Step::Terminal(pending.outcome.clone()),
            _ => {
                warn!(msg_id = %pending.msg.id, "an open revalidation cannot be confirmed on chain; not sent again");
                skip(SkipReason::AlreadyValidated)
            }
        })
    }

    /// Counts a failed chain query against the payload budget, as upstream's one loop around
    /// them; the failure is the validator's own, so running out gives up rather than invalidates.
    fn retry_payload(&mut self, error: String) -> Step {
        self.attempts.payload += 1;
        self.attempts.payload_local = true;
        if self.attempts.payload < self.inner.config.payload_retry.attempts {
            debug!(%error, "chain query failed; will retry");
            self.retry(Stage::Payload, &self.inner.config.payload_retry, error)
        } else {
            Step::Terminal(Outcome::GaveUp { stage: Stage::Chain, error })
        }
    }

    /// Counts a failed lock or replay (one budget for both, as upstream's one loop around them);
    /// `keep` is the payload to replay again, if this was the GPU stage.
    fn retry_replay(&self, error: String, keep: Option<Box<ClassicPrepared>>) -> Step {
        let mut attempts = self.attempts;
        attempts.replay += 1;
        if attempts.replay < self.inner.config.replay_retry.attempts {
            debug!(%error, failures = attempts.replay, "lock or replay failed; will retry");
            Step::Retry {
                stage: Stage::Replay,
                delay: self.inner.backoff(&self.inner.config.replay_retry),
                attempts,
                pending_submit: None,
                error,
                exclude: None,
                wants_room: false,
                keep: keep.map(|prepared| prepared as Prepared),
            }
        } else {
            warn!(%error, "lock or replay failed on every attempt; giving up");
            Step::Terminal(Outcome::GaveUp { stage: Stage::Replay, error })
        }
    }

    fn retry(&self, stage: Stage, policy: &RetryPolicy, error: String) -> Step {
        Step::Retry {
            stage,
            delay: self.inner.backoff(policy),
            attempts: self.attempts,
            pending_submit: None,
            error,
            exclude: None,
            wants_room: false,
            keep: None,
        }
    }
}

/// Runs `parse` on the blocking pool when the payload is large, so a multi-megabyte JSON parse
/// never stalls a runtime worker; small ones parse in place. `Err` is the validator's own
/// failure (the parse panicked), never the executor's.
pub(super) async fn parse_off_thread<T: Send + 'static>(
    bytes: usize,
    parse: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    if bytes < PARSE_OFF_THREAD {
        return Ok(parse());
    }
    tokio::task::spawn_blocking(parse)
        .await
        .map_err(|err| format!("payload parse did not finish: {err}"))
}

fn submission_result(
    submitted: &Result<crate::ports::chain::SubmitReceipt, SubmitError>,
) -> SubmissionResult {
    match submitted {
        Ok(receipt) => SubmissionResult::Landed { tx_hash: receipt.tx_hash.clone() },
        Err(SubmitError::Duplicate) => SubmissionResult::Duplicate,
        Err(SubmitError::Rejected(error) | SubmitError::Retired(error)) => {
            SubmissionResult::Rejected { error: error.clone() }
        }
        Err(SubmitError::Transient(error)) => SubmissionResult::Uncertain { error: error.clone() },
    }
}

fn skip(reason: SkipReason) -> Step {
    Step::Terminal(Outcome::Skipped { reason })
}

pub(super) fn observe(stage: Stage, started: Instant) {
    metrics::histogram!("validator_stage_duration_seconds", "stage" => stage.as_str())
        .record(started.elapsed().as_secs_f64());
}

impl Inner {
    /// The wait before the next attempt: the interval plus uniform jitter in
    /// `[jitter_min, jitter_max]`.
    pub(crate) fn backoff(&self, policy: &RetryPolicy) -> Duration {
        if policy.jitter_max.is_zero() {
            return policy.interval;
        }
        let low = policy.jitter_min.as_millis() as u64;
        let high = (policy.jitter_max.as_millis() as u64).max(low);
        let mut rng = self.jitter.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        policy.interval + Duration::from_millis(rng.random_range(low..=high))
    }
}

/// The ids this validator already validated, per epoch, downloaded at most once per TTL instead
/// of once per validation (upstream's O(n²) over a backlog). What this process submitted since
/// the last download is covered by the scheduler's set of recently finished keys.
pub(crate) struct ValidatedCache {
    ttl: Duration,
    epochs: Mutex<HashMap<u64, Downloaded>>,
}

/// One epoch's downloaded set and when it was fetched.
type Downloaded = (Instant, Arc<HashSet<InferenceId>>);

impl ValidatedCache {
    pub(crate) fn new(ttl: Duration) -> Self {
        Self { ttl, epochs: Mutex::default() }
    }

    /// Whether `inference` is already validated by us. A failing query counts as "not
    /// validated", as upstream.
    pub(crate) async fn contains(&self, inner: &Inner, inference: &Inference) -> bool {
        let id = &inference.inference_id;
        let epoch = inference.epoch_id;
        let cached = {
            let epochs = self.epochs.lock().unwrap_or_else(|p| p.into_inner());
            epochs
                .get(&epoch)
                .filter(|(at, _)| at.elapsed() < self.ttl)
                .map(|(_, set)| Arc::clone(set))
        };
        if let Some(set) = cached {
            return set.contains(id);
        }
        let set: HashSet<InferenceId> =
            match inner.chain_call(inner.ports.chain.validated_inferences(epoch)).await {
                Ok(ids) => ids.into_iter().collect(),
                Err(ChainError::NotFound) => HashSet::new(),
                Err(err) => {
                    debug!(%err, "validated-set query failed; treated as not validated");
                    return false;
                }
            };
        let found = set.contains(id);
        let mut epochs = self.epochs.lock().unwrap_or_else(|p| p.into_inner());
        // Keep only the last few epochs: older ones are stale and never asked about again.
        epochs.retain(|cached, _| cached.saturating_add(3) > epoch);
        epochs.insert(epoch, (Instant::now(), Arc::new(set)));
        found
    }
}
