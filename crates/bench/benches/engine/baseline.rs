//! Models of the two upstream designs (DOMAIN.md 4.1 and 4.2), written against the same ports as
//! the engine so that only the concurrency design differs:
//!
//! - [`Design::Pr1277`]: one FIFO semaphore of K slots shared by recovery and live work. The slot
//!   is taken before the validation's task is spawned and held until the validation returns,
//!   retry sleeps included. No lanes, no in-process dedup. Recovery detects the whole backlog
//!   first, then one loop acquires a slot per item (back-pressure); each live item and each
//!   revalidation gets its own dispatcher task that waits for a slot.
//! - [`Design::Unbounded`]: the pre-fix design, one task per item and no limit; only the broker's
//!   try-lock bounds the ML node.
//!
//! Both run upstream's validation loop (2.3-2.8): up to 10 payload attempts with a sleep between,
//! the duplicate check on chain, then up to 5 lock + replay attempts with a sleep between, and one
//! submission. Both observe a cancellation token at every await. Upstream's sleeps ignore its
//! context (DOMAIN.md 5.7), so a faithful model would shut down slower, not faster.

use std::{
    collections::HashSet,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    task::JoinHandle,
    time::{Duration, Instant},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use validator_core::{
    completion,
    ports::{
        chain::{
            ChainError, Inference, InferenceId, InferenceStatus, InferenceSummary, MsgValidation,
        },
        ml_node::{ReplayRequest, ReplayResponse},
        model_lock::LeaseRequest,
        model_lock::NodeHealth,
        payload_source::PayloadError,
    },
    sampling, scoring, Ports, RetryPolicy,
};

use crate::{
    fakes::id_hash,
    strategy::{Counts, Policy, Probe},
};

/// Page size of the inference listing and batch size of the parameters query (DOMAIN.md 7).
const PAGE: usize = 1000;

/// Which upstream design.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Design {
    Pr1277,
    Unbounded,
}

#[derive(Default)]
struct Stats {
    admitted: AtomicU64,
    terminal: AtomicU64,
    gave_up: AtomicU64,
    cancelled: AtomicU64,
    recovery_dispatched: AtomicU64,
    live_dispatched: AtomicU64,
    running: AtomicU64,
    peak_running: AtomicU64,
}

/// How one validation ended.
enum End {
    Submitted,
    Skipped,
    GaveUp,
    Cancelled,
}

/// Shutdown began while waiting.
struct Cancelled;

pub(crate) struct Baseline {
    design: Design,
    ports: Ports,
    policy: Policy,
    slots: Option<Arc<Semaphore>>,
    cancel: CancellationToken,
    tasks: TaskTracker,
    stats: Stats,
    probe: Arc<Probe>,
}

impl Baseline {
    pub(crate) fn new(
        design: Design,
        ports: Ports,
        policy: Policy,
        probe: Arc<Probe>,
    ) -> Arc<Self> {
        let slots = (design == Design::Pr1277).then(|| Arc::new(Semaphore::new(policy.slots)));
        Arc::new(Self {
            design,
            ports,
            policy,
            slots,
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
            stats: Stats::default(),
            probe,
        })
    }

    /// Starts a recovery run: detect the whole backlog, then execute it.
    pub(crate) fn recover(self: &Arc<Self>, epoch: u64, seed: i64) -> JoinHandle<String> {
        let this = Arc::clone(self);
        self.tasks.spawn(async move { this.run_recovery(epoch, seed).await })
    }

    async fn run_recovery(self: Arc<Self>, epoch: u64, seed: i64) -> String {
        let detected = tokio::select! {
            biased;
            _ = self.cancel.cancelled() => return "Cancelled".into(),
            detected = self.detect(epoch, seed) => detected,
        };
        let missed = match detected {
            Ok(missed) => missed,
            Err(err) => return format!("Failed({err})"),
        };
        let total = missed.len() as u64;
        self.stats.admitted.fetch_add(total, Ordering::Relaxed);
        let run = TaskTracker::new();
        let mut dispatched = 0;
        for summary in missed {
            let Ok(permit) = self.acquire().await else { break };
            dispatched += 1;
            self.stats.recovery_dispatched.fetch_add(1, Ordering::Relaxed);
            let validation = Arc::clone(&self).validate(summary.inference_id, permit, false, None);
            self.tasks.spawn(run.track_future(validation));
        }
        let undispatched = total - dispatched;
        self.stats.cancelled.fetch_add(undispatched, Ordering::Relaxed);
        self.stats.terminal.fetch_add(undispatched, Ordering::Relaxed);
        run.close();
        run.wait().await;
        if self.cancel.is_cancelled() {
            "Cancelled".into()
        } else {
            "Completed".into()
        }
    }

    /// DOMAIN.md 3.4: the whole backlog, collected before anything runs. The model keeps only
    /// the listing's summaries; upstream keeps full inference records, so this is a lower bound
    /// on its memory.
    async fn detect(&self, epoch: u64, seed: i64) -> Result<Vec<InferenceSummary>, ChainError> {
        let chain = &self.ports.chain;
        let address = chain.account_address().to_owned();
        let validated: HashSet<InferenceId> = match chain.validated_inferences(epoch).await {
            Ok(ids) => ids.into_iter().collect(),
            Err(_) => HashSet::new(),
        };
        let parent = chain.epoch_group(epoch, "").await?;
        let mut models = HashSet::new();
        for model in parent.sub_group_models {
            if let Ok(group) = chain.epoch_group(epoch, &model).await {
                if group.has_model_snapshot && group.has_member(&address) {
                    models.insert(model);
                }
            }
        }
        let mut missed = Vec::new();
        let mut page_key = None;
        loop {
            let page = chain.inferences_page(page_key.take(), PAGE as u32).await?;
            let candidates: Vec<InferenceId> = page
                .inferences
                .into_iter()
                .filter(|s| {
                    s.epoch_id == epoch
                        && models.contains(&s.model)
                        && !validated.contains(&s.inference_id)
                })
                .map(|s| s.inference_id)
                .collect();
            for batch in candidates.chunks(PAGE) {
                let answer = chain.validation_parameters(batch).await?;
                let Some(power) =
                    sampling::recovery_validator_power(&answer.validator_powers, epoch)
                else {
                    continue;
                };
                for details in &answer.details {
                    if details.epoch_id == epoch
                        && sampling::should_validate(details, &address, power, &answer.params, seed)
                    {
                        missed.push(InferenceSummary {
                            inference_id: details.inference_id.clone(),
                            epoch_id: details.epoch_id,
                            model: details.model.clone(),
                        });
                    }
                }
            }
            match page.next_key {
                Some(next) if !next.is_empty() => page_key = Some(next),
                _ => return Ok(missed),
            }
        }
    }

    /// A live item arrives now.
    pub(crate) fn live(self: &Arc<Self>, id: InferenceId) {
        self.arrive(id, false);
    }

    /// A revalidation arrives now (DOMAIN.md 3.3): the same dispatch as a live item, with no
    /// duplicate check and the revalidation flag on the message. It counts as neither a live
    /// nor a recovery dispatch, and its wait is not a live wait.
    pub(crate) fn revalidate(self: &Arc<Self>, id: InferenceId) {
        self.arrive(id, true);
    }

    fn arrive(self: &Arc<Self>, id: InferenceId, revalidation: bool) {
        let trigger = Instant::now();
        self.stats.admitted.fetch_add(1, Ordering::Relaxed);
        match self.design {
            Design::Pr1277 => {
                let this = Arc::clone(self);
                self.tasks.spawn(async move {
                    match this.acquire().await {
                        Ok(permit) => {
                            if !revalidation {
                                this.probe.record_live_wait(trigger.elapsed());
                                this.stats.live_dispatched.fetch_add(1, Ordering::Relaxed);
                            }
                            let validation =
                                Arc::clone(&this).validate(id, permit, revalidation, None);
                            this.tasks.spawn(validation);
                        }
                        Err(Cancelled) => {
                            this.stats.cancelled.fetch_add(1, Ordering::Relaxed);
                            this.stats.terminal.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
            Design::Unbounded => {
                let live_trigger = (!revalidation).then_some(trigger);
                if !revalidation {
                    self.stats.live_dispatched.fetch_add(1, Ordering::Relaxed);
                }
                self.tasks.spawn(Arc::clone(self).validate(id, None, revalidation, live_trigger));
            }
        }
    }

    /// A slot (PR #1277), or nothing to wait for (unbounded).
    async fn acquire(&self) -> Result<Option<OwnedSemaphorePermit>, Cancelled> {
        let Some(slots) = &self.slots else { return Ok(None) };
        tokio::select! {
            biased;
            _ = self.cancel.cancelled() => Err(Cancelled),
            permit = Arc::clone(slots).acquire_owned() => permit.map(Some).map_err(|_| Cancelled),
        }
    }

    /// One validation, holding `permit` from start to end.
    async fn validate(
        self: Arc<Self>,
        id: InferenceId,
        permit: Option<OwnedSemaphorePermit>,
        revalidation: bool,
        live_trigger: Option<Instant>,
    ) {
        let running = self.stats.running.fetch_add(1, Ordering::Relaxed) + 1;
        self.stats.peak_running.fetch_max(running, Ordering::Relaxed);
        let end = tokio::select! {
            biased;
            _ = self.cancel.cancelled() => End::Cancelled,
            end = self.flow(&id, revalidation, live_trigger) => end,
        };
        drop(permit);
        match end {
            End::Submitted | End::Skipped => {}
            End::GaveUp => {
                self.stats.gave_up.fetch_add(1, Ordering::Relaxed);
            }
            End::Cancelled => {
                self.stats.cancelled.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.stats.terminal.fetch_add(1, Ordering::Relaxed);
        self.stats.running.fetch_sub(1, Ordering::Relaxed);
    }

    /// Upstream's flow for one inference (DOMAIN.md 2.3-2.8), sleeps and all.
    async fn flow(
        &self,
        id: &InferenceId,
        revalidation: bool,
        mut live_trigger: Option<Instant>,
    ) -> End {
        let chain = &self.ports.chain;
        let inference = match self.chain_call(chain.inference(id)).await {
            Ok(inference) => inference,
            Err(ChainError::NotFound) => return End::Skipped,
            Err(_) => return End::GaveUp,
        };

        let policy = &self.policy.payload_retry;
        let mut payloads = None;
        for attempt in 1..=policy.attempts {
            if let Ok(state) = self.chain_call(chain.epoch_state()).await {
                if state.is_stale(inference.epoch_id) {
                    return End::Skipped;
                }
            }
            let fetched = tokio::time::timeout(
                self.policy.payload_timeout,
                self.ports.payloads.fetch(&inference),
            )
            .await
            .unwrap_or_else(|_| Err(PayloadError::Unavailable("timed out".into())));
            match fetched {
                Ok(fetched) => {
                    payloads = Some(fetched);
                    break;
                }
                Err(PayloadError::Gone) => return End::Skipped,
                Err(PayloadError::HashMismatch(_)) => {
                    return self.invalidate(&inference, revalidation).await;
                }
                Err(_) => {}
            }
            if attempt < policy.attempts {
                tokio::time::sleep(backoff(policy, id, attempt)).await;
            }
        }
        let Some(payloads) = payloads else {
            return self.invalidate(&inference, revalidation).await;
        };

        if !revalidation {
            let validated = self.chain_call(chain.validated_inferences(inference.epoch_id)).await;
            if validated.is_ok_and(|validated| validated.contains(id)) {
                return End::Skipped;
            }
        }

        let built =
            completion::CompletionResponse::from_payload(&payloads.response).and_then(|original| {
                let body = completion::classic_replay(&payloads.prompt, &original)?.body;
                Ok((original, body))
            });
        let Ok((original, body)) = built else {
            return self.submit(&inference, revalidation, String::new(), 0.0).await;
        };
        let request = ReplayRequest { inference_id: id.clone(), body: Bytes::from(body) };

        let policy = &self.policy.replay_retry;
        for attempt in 1..=policy.attempts {
            if let Some((value, hash)) =
                self.lock_and_replay(&inference, &original, &request, &mut live_trigger).await
            {
                return self.submit(&inference, revalidation, hash, value).await;
            }
            if attempt < policy.attempts {
                tokio::time::sleep(backoff(policy, id, attempt)).await;
            }
        }
        End::GaveUp
    }

    /// One lock + replay + comparison; `None` on any failure (all retried alike upstream).
    async fn lock_and_replay(
        &self,
        inference: &Inference,
        original: &completion::CompletionResponse,
        request: &ReplayRequest,
        live_trigger: &mut Option<Instant>,
    ) -> Option<(f64, String)> {
        let lease = self.ports.broker.acquire(&LeaseRequest::model(&inference.model)).await.ok()?;
        if let Some(trigger) = live_trigger.take() {
            // Without slots the ML node's lease is the only limit: the live wait ends here.
            self.probe.record_live_wait(trigger.elapsed());
        }
        let answer = tokio::time::timeout(
            self.policy.replay_timeout,
            self.ports.ml.replay(lease.node(), request),
        )
        .await;
        // Upstream always releases with a success outcome.
        lease.release(NodeHealth::Healthy);
        match answer {
            Ok(Ok(ReplayResponse::Completed(body))) => {
                let score = scoring::compare_parsed(original, &body).ok()?;
                Some((score.value, scoring::response_hash(&body)))
            }
            Ok(Ok(ReplayResponse::Rejected { .. })) => {
                Some((scoring::Score::rejected_by_node().value, String::new()))
            }
            Ok(Err(_)) | Err(_) => None,
        }
    }

    /// Re-checks the status, then submits value 0 unless already invalidated.
    async fn invalidate(&self, inference: &Inference, revalidation: bool) -> End {
        match self.chain_call(self.ports.chain.inference(&inference.inference_id)).await {
            Ok(current) if current.status == InferenceStatus::Invalidated => End::Skipped,
            _ => self.submit(inference, revalidation, String::new(), 0.0).await,
        }
    }

    async fn submit(
        &self,
        inference: &Inference,
        revalidation: bool,
        response_hash: String,
        value: f64,
    ) -> End {
        let msg = MsgValidation {
            id: uuid::Uuid::new_v4().to_string(),
            inference_id: inference.inference_id.clone(),
            response_hash,
            value_decimal: scoring::value_decimal(value),
            revalidation,
        };
        let submitted = tokio::time::timeout(
            self.policy.chain_timeout,
            self.ports.chain.submit_validation(&msg),
        )
        .await;
        match submitted {
            Ok(Ok(_)) => End::Submitted,
            Ok(Err(validator_core::ports::chain::SubmitError::Duplicate)) => End::Skipped,
            Ok(Err(_)) | Err(_) => End::GaveUp,
        }
    }

    async fn chain_call<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, ChainError>>,
    ) -> Result<T, ChainError> {
        tokio::time::timeout(self.policy.chain_timeout, call)
            .await
            .unwrap_or(Err(ChainError::Timeout))
    }

    pub(crate) fn in_flight(&self) -> usize {
        match &self.slots {
            Some(slots) => self.policy.slots - slots.available_permits(),
            None => self.stats.running.load(Ordering::Relaxed) as usize,
        }
    }

    pub(crate) fn counts(&self) -> Counts {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        Counts {
            admitted: load(&self.stats.admitted),
            terminal: load(&self.stats.terminal),
            gave_up: load(&self.stats.gave_up),
            cancelled: load(&self.stats.cancelled),
            recovery_dispatched: load(&self.stats.recovery_dispatched),
            live_dispatched: load(&self.stats.live_dispatched),
            peak_in_flight: load(&self.stats.peak_running),
        }
    }

    /// Cancels everything; true if every task ended within `grace`.
    pub(crate) async fn shutdown(&self, grace: Duration) -> bool {
        self.cancel.cancel();
        self.tasks.close();
        tokio::time::timeout(grace, self.tasks.wait()).await.is_ok()
    }
}

/// The wait before the next attempt: the interval plus jitter drawn from the id and attempt, so
/// runs repeat.
fn backoff(policy: &RetryPolicy, id: &InferenceId, attempt: u16) -> Duration {
    if policy.jitter_max.is_zero() {
        return policy.interval;
    }
    let mut rng = rand::rngs::SmallRng::seed_from_u64(id_hash(id.as_str()) ^ u64::from(attempt));
    let low = policy.jitter_min.as_micros() as u64;
    let high = (policy.jitter_max.as_micros() as u64).max(low);
    policy.interval + Duration::from_micros(rng.random_range(low..=high))
}
