//! The engine: entry points, the dispatcher that hands out slots, and the sampling intake.

mod attempt;
mod detect;
mod devshard;
mod reconcile;
mod share;

use std::{collections::HashMap, future::Future, sync::Arc, time::Duration};

use serde::Serialize;
use tokio::{sync::mpsc, time::Instant};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{debug, warn, Instrument};

use crate::{
    devshard::{DevshardJob, VerdictCounts},
    outcome::{Lane, Outcome, OutcomeCounts, OutcomeEvent},
    ports::{
        chain::{ChainError, EpochState, InferenceId},
        lease::LeaseStatus,
        ml_node::{ReplayError, ReplayRequest, ReplayResponse},
        model_lock::{LeaseRequest, LockError, ModelLease},
        ChainClient, Journal, Leases, MlNodeClient, ModelLockBroker, PayloadSource,
    },
    recovery::{RecoveryGuard, RecoveryStart, RunHandle, RunReport, Trigger},
    sampling,
    scheduler::{Admission, Key, Scheduler},
    Config, Error, Result,
};

/// The adapters the engine runs on.
#[derive(Clone)]
pub struct Ports {
    /// Chain queries and submission.
    pub chain: Arc<dyn ChainClient>,
    /// Payload retrieval from executors.
    pub payloads: Arc<dyn PayloadSource>,
    /// Leases on ML nodes.
    pub broker: Arc<dyn ModelLockBroker>,
    /// Replays on ML nodes.
    pub ml: Arc<dyn MlNodeClient>,
    /// The durable record of the engine's work and its write-ahead submissions;
    /// [`NoJournal`](crate::ports::NoJournal) keeps nothing.
    pub journal: Arc<dyn Journal>,
    /// Which replica works which validation, when several share the journal;
    /// [`SingleReplica`](crate::ports::SingleReplica) for a process alone.
    pub leases: Arc<dyn Leases>,
}

/// The most ids one `GetInferenceValidationParameters` call carries (DOMAIN.md 7).
const PARAMS_BATCH: usize = 1000;

/// How long the GPU stage reuses the chain's epoch state: epochs last hours, and a replay is
/// worth far more than the read.
const EPOCH_STATE_TTL: Duration = Duration::from_secs(10);

/// How many in-flight keys a status report lists.
const STATUS_SAMPLE_KEYS: usize = 64;

/// The validation engine. Cheap to clone; every clone drives the same engine.
///
/// Work enters through [`sample`](Engine::sample), [`revalidate`](Engine::revalidate) and
/// [`recover`](Engine::recover); none of them waits for a slot. Every admitted validation ends
/// in exactly one [`Outcome`](crate::Outcome), published on [`outcomes`](Engine::outcomes).
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) config: Config,
    pub(crate) ports: Ports,
    pub(crate) scheduler: Arc<Scheduler>,
    pub(crate) guard: Arc<RecoveryGuard>,
    pub(crate) cancel: CancellationToken,
    pub(crate) tasks: TaskTracker,
    pub(crate) validated: attempt::ValidatedCache,
    pub(crate) jitter: std::sync::Mutex<rand::rngs::SmallRng>,
    /// Set once the chain is known to refuse classic validations: why.
    pub(crate) retired: std::sync::OnceLock<String>,
    pub(crate) devshard_params: devshard::ChainParamsCache,
    pub(crate) room_claims: devshard::RoomClaims,
    /// The chain's epoch state as last read, for the GPU stage's staleness check.
    epoch_state: std::sync::Mutex<Option<(Instant, EpochState)>>,
    intake: mpsc::Sender<Vec<InferenceId>>,
}

/// Slots and lanes as they stand.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EngineStatus {
    /// Whether the engine still admits work.
    pub accepting: bool,
    /// Slots running an attempt now.
    pub slots_in_use: usize,
    /// The slot count.
    pub slots_capacity: usize,
    /// The most slots ever in use at once.
    pub slots_peak: usize,
    /// Per lane, highest priority first.
    pub lanes: Vec<LaneStatus>,
    /// Keys waiting to retry, across lanes.
    pub waiting_to_retry: usize,
    /// Up to 64 of the keys in flight, as (inference id, revalidation).
    pub in_flight_sample: Vec<(InferenceId, bool)>,
    /// Validations admitted so far; each ends in exactly one of `outcomes`.
    pub admitted: u64,
    /// Outcomes so far.
    pub outcomes: OutcomeCounts,
    /// The recovery run going on, if any.
    pub current_run: Option<RunReport>,
    /// Why classic validation stopped, once the chain refused it as retired.
    pub retired: Option<String>,
    /// Devshard verdicts so far, per reason.
    pub devshard_verdicts: VerdictCounts,
    /// The two stages and the buffer between them.
    pub pipeline: PipelineStatus,
    /// This replica and its leases.
    pub leases: LeaseStatus,
}

/// The network stage, the GPU stage and the buffer of verified payloads between them. The GPU
/// stage's slots are [`EngineStatus::slots_in_use`] and [`EngineStatus::slots_capacity`].
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PipelineStatus {
    /// Network-stage slots in use: payload fetches, chain reads and submissions running now.
    pub fetch_in_use: usize,
    /// The network stage's slot count.
    pub fetch_capacity: usize,
    /// The most network-stage slots ever in use at once.
    pub fetch_peak: usize,
    /// Verified payloads waiting for a GPU slot (queued or waiting to retry a lease).
    pub buffered: usize,
    /// Their bytes.
    pub buffered_bytes: usize,
    /// The most bytes ever buffered at once.
    pub buffered_peak_bytes: usize,
    /// The buffer's bound in payloads, fetches in flight included.
    pub buffer_capacity: usize,
    /// The buffer's bound in bytes.
    pub buffer_bytes_capacity: usize,
    /// Buffered payloads dropped for age, to be fetched again.
    pub expired: u64,
    /// GPU slot-seconds left idle while work was buffered or being fetched: how far the
    /// network stage fell behind.
    pub gpu_idle_slot_seconds: f64,
}

impl EngineStatus {
    /// The figures of `lane`.
    pub fn lane(&self, lane: Lane) -> Option<&LaneStatus> {
        self.lanes.iter().find(|status| status.lane == lane)
    }
}

/// A caller's claim on a devshard job's outcome, from
/// [`validate_devshard`](Engine::validate_devshard).
#[derive(Debug)]
pub struct DevshardTicket {
    /// Whether the job was admitted now or joined one in flight.
    pub admission: Admission,
    outcome: tokio::sync::watch::Receiver<Option<Outcome>>,
}

impl DevshardTicket {
    /// Waits for the job's outcome: [`Outcome::Judged`] with a verdict,
    /// [`Outcome::Skipped`] (the executor no longer holds the payloads), [`Outcome::GaveUp`]
    /// or [`Outcome::Cancelled`]. Dropping the future stops this caller's wait only; the job
    /// still ends in exactly one outcome.
    pub async fn outcome(mut self) -> Outcome {
        match self.outcome.wait_for(Option::is_some).await {
            Ok(outcome) => outcome.clone().unwrap_or(Outcome::Cancelled),
            Err(_) => Outcome::Cancelled,
        }
    }
}

/// One lane's figures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LaneStatus {
    /// The lane.
    pub lane: Lane,
    /// Admitted and not finished (queued, waiting to retry, or running).
    pub in_flight: usize,
    /// Queued and ready for a slot.
    pub ready: usize,
    /// Attempts dispatched so far.
    pub dispatched: u64,
}

/// What shutdown found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ShutdownReport {
    /// Keys that were queued or waiting to retry, ended as cancelled.
    pub cancelled_idle: usize,
    /// Slots in use when shutdown began: attempts that were cancelled or allowed to finish.
    pub running: usize,
    /// Whether every task ended within the grace period.
    pub drained: bool,
}

impl Engine {
    /// Builds the engine and starts its dispatcher and sampling intake on the current tokio
    /// runtime.
    ///
    /// Before the first slot is handed out, the dispatcher reconciles the journal's open
    /// submission intents with the chain (a crashed process may or may not have sent them), so
    /// nothing is sent twice; work admitted meanwhile waits in its lane.
    pub fn start(config: Config, ports: Ports) -> Result<Self> {
        config.validate()?;
        use rand::SeedableRng;
        let jitter = match config.jitter_seed {
            Some(seed) => rand::rngs::SmallRng::seed_from_u64(seed),
            None => rand::rngs::SmallRng::from_os_rng(),
        };
        let (intake, intake_rx) = mpsc::channel(config.intake_capacity);
        let last_run_id = ports.journal.last_run_id();
        let inner = Arc::new(Inner {
            scheduler: Scheduler::new(&config, Arc::clone(&ports.journal)),
            validated: attempt::ValidatedCache::new(config.validated_set_ttl),
            jitter: std::sync::Mutex::new(jitter),
            retired: std::sync::OnceLock::new(),
            devshard_params: devshard::ChainParamsCache::default(),
            room_claims: devshard::RoomClaims::default(),
            epoch_state: std::sync::Mutex::new(None),
            config,
            ports,
            guard: Arc::new(RecoveryGuard::after(last_run_id)),
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
            intake,
        });
        metrics::gauge!("validator_slots_capacity").set(inner.config.slots as f64);
        inner.tasks.spawn(dispatch_loop(Arc::clone(&inner)));
        inner.tasks.spawn(intake_loop(Arc::clone(&inner), intake_rx));
        Ok(Self { inner })
    }

    /// Queues live sampled validation of `ids` (from one `inference_finished` event). Returns at
    /// once: the sampling decision (DOMAIN.md 2.2, with the seed of each inference's own epoch)
    /// runs in the background and admits the chosen ids into the live lane.
    pub fn sample(&self, ids: Vec<InferenceId>) -> Result<()> {
        self.inner.admitting()?;
        if ids.is_empty() {
            return Ok(());
        }
        self.inner.intake.try_send(ids).map_err(|err| match err {
            mpsc::error::TrySendError::Full(_) => Error::IntakeFull,
            mpsc::error::TrySendError::Closed(_) => Error::ShuttingDown,
        })
    }

    /// Admits a revalidation of `id` into the revalidation lane, without sampling. Returns at
    /// once.
    pub fn revalidate(&self, id: InferenceId) -> Result<Admission> {
        self.inner.admitting()?;
        self.inner.scheduler.admit(Key::Classic(id, true), Lane::Revalidation, None)
    }

    /// Admits a live validation of `id` that the caller already decided on, skipping sampling.
    pub fn validate(&self, id: InferenceId) -> Result<Admission> {
        self.inner.admitting()?;
        self.inner.scheduler.admit(Key::Classic(id, false), Lane::Live, None)
    }

    /// Admits a devshard job: a challenged one into the challenged lane, ahead of everything,
    /// a sampled one into the live lane. A job already in flight under the same (escrow,
    /// inference) is joined: it runs once and every caller gets its outcome. Returns at once;
    /// the ticket waits for the verdict. Not affected by the classic protocol's retirement.
    pub fn validate_devshard(&self, job: DevshardJob) -> Result<DevshardTicket> {
        if self.inner.cancel.is_cancelled() {
            return Err(Error::ShuttingDown);
        }
        if !self.inner.ports.broker.serves(&job.model) {
            return Err(Error::ModelNotServed(job.model.to_string()));
        }
        let lane = if job.challenged { Lane::Challenged } else { Lane::Live };
        let deadline = Instant::now() + self.inner.config.devshard_deadline;
        let (admission, outcome) =
            self.inner.scheduler.admit_devshard(Arc::new(job), lane, deadline)?;
        Ok(DevshardTicket { admission, outcome })
    }

    /// Starts recovery of the validations missed in `epoch`, sampled with `seed`, unless a run
    /// is already going: then nothing starts and the running run's handle comes back.
    pub fn recover(&self, epoch: u64, seed: i64) -> Result<RecoveryStart> {
        self.recover_from(Trigger::Direct, epoch, seed)
    }

    /// [`recover`](Engine::recover), naming what started the run for the journal.
    pub fn recover_from(&self, trigger: Trigger, epoch: u64, seed: i64) -> Result<RecoveryStart> {
        self.inner.admitting()?;
        let (handle, claim) = match self.inner.guard.try_begin(epoch) {
            Ok(started) => started,
            Err(running) => {
                metrics::counter!("validator_recovery_runs_total", "result" => "already_running")
                    .increment(1);
                return Ok(RecoveryStart::AlreadyRunning(running));
            }
        };
        let inner = Arc::clone(&self.inner);
        let span = tracing::info_span!("recovery", run_id = handle.id(), epoch);
        self.inner.tasks.spawn(detect::run(inner, claim, trigger, epoch, seed).instrument(span));
        Ok(RecoveryStart::Started(handle))
    }

    /// Stops classic validation for good: the chain refuses it as retired (`reason` says how
    /// that was learned). Nothing more is admitted or recovered; queued and running keys end as
    /// [`SkipReason::ProtocolRetired`](crate::SkipReason::ProtocolRetired) before their next
    /// lease or broadcast. Returns whether this call was the one that stopped it.
    pub fn retire_classic(&self, reason: impl Into<String>) -> bool {
        self.inner.retire(reason.into())
    }

    /// Why classic validation stopped, once it has.
    pub fn retired(&self) -> Option<&str> {
        self.inner.retired.get().map(String::as_str)
    }

    /// The recovery run going on, if any.
    pub fn current_run(&self) -> Option<RunHandle> {
        self.inner.guard.current()
    }

    /// A recent recovery run by id (the last 32 are kept).
    pub fn run(&self, run_id: u64) -> Option<RunHandle> {
        self.inner.guard.find(run_id)
    }

    /// The recent recovery runs, oldest first.
    pub fn runs(&self) -> Vec<RunHandle> {
        self.inner.guard.recent()
    }

    /// Subscribes to terminal outcomes. A receiver that falls more than
    /// [`Config::outcome_buffer`] behind loses the oldest; [`status`](Engine::status) counts
    /// stay exact regardless.
    pub fn outcomes(&self) -> tokio::sync::broadcast::Receiver<OutcomeEvent> {
        self.inner.scheduler.subscribe()
    }

    /// Slots, lanes, in-flight keys and the current run.
    pub fn status(&self) -> EngineStatus {
        let snapshot = self.inner.scheduler.snapshot(STATUS_SAMPLE_KEYS);
        EngineStatus {
            accepting: snapshot.open,
            slots_in_use: snapshot.in_use,
            slots_capacity: snapshot.capacity,
            slots_peak: snapshot.peak,
            lanes: Lane::ALL
                .into_iter()
                .map(|lane| LaneStatus {
                    lane,
                    in_flight: snapshot.pending[lane.index()],
                    ready: snapshot.ready[lane.index()],
                    dispatched: snapshot.dispatched[lane.index()],
                })
                .collect(),
            waiting_to_retry: snapshot.delayed,
            in_flight_sample: snapshot
                .sample_keys
                .iter()
                .map(|key| (key.journal_id(), key.revalidation()))
                .collect(),
            admitted: snapshot.admitted,
            outcomes: snapshot.counts,
            current_run: self.inner.guard.current().map(|run| run.report()),
            retired: self.inner.retired.get().cloned(),
            devshard_verdicts: snapshot.verdicts,
            pipeline: snapshot.pipeline,
            leases: self.inner.ports.leases.status(),
        }
    }

    /// Stops admission, cancels back-off timers, queued work and in-flight calls through one
    /// token, and returns once every task has ended or `grace` has passed.
    pub async fn shutdown(&self, grace: Duration) -> ShutdownReport {
        let running = self.inner.scheduler.snapshot(0).in_use;
        self.inner.cancel.cancel();
        let cancelled_idle = self.inner.scheduler.close();
        self.inner.tasks.close();
        let drained = tokio::time::timeout(grace, self.inner.tasks.wait()).await.is_ok();
        if !drained {
            warn!(?grace, "engine tasks still running after the shutdown grace period");
        }
        ShutdownReport { cancelled_idle, running, drained }
    }

    /// Whether every engine task has ended (after [`shutdown`](Engine::shutdown)).
    pub fn is_stopped(&self) -> bool {
        self.inner.tasks.is_closed() && self.inner.tasks.is_empty()
    }
}

impl Inner {
    /// `Ok` while the engine admits classic work.
    fn admitting(&self) -> Result<()> {
        if self.cancel.is_cancelled() {
            return Err(Error::ShuttingDown);
        }
        match self.retired.get() {
            Some(reason) => Err(Error::ProtocolRetired(reason.clone())),
            None => Ok(()),
        }
    }

    /// See [`Engine::retire_classic`].
    pub(crate) fn retire(&self, reason: String) -> bool {
        let mut first = false;
        self.retired.get_or_init(|| {
            first = true;
            reason
        });
        if first {
            metrics::gauge!("validator_classic_retired").set(1.0);
            warn!(
                reason = self.retired.get().map_or("", String::as_str),
                "the chain refuses classic validations: classic sampling, revalidation and \
                 recovery stop; claims go on"
            );
        }
        first
    }

    /// Runs one outbound call bounded by `timeout`; `None` on timeout.
    pub(crate) async fn bounded<T>(
        &self,
        timeout: Duration,
        call: impl Future<Output = T>,
    ) -> Option<T> {
        tokio::time::timeout(timeout, call).await.ok()
    }

    /// A chain query bounded by the chain timeout.
    pub(crate) async fn chain_call<T>(
        &self,
        call: impl Future<Output = Result<T, ChainError>>,
    ) -> Result<T, ChainError> {
        self.bounded(self.config.chain_timeout, call).await.unwrap_or(Err(ChainError::Timeout))
    }

    /// One lease request to the broker, bounded by the lock timeout; a granted lease is timed as
    /// the lock stage.
    pub(crate) async fn lease(&self, wanted: &LeaseRequest<'_>) -> Result<ModelLease, LockError> {
        let started = Instant::now();
        let acquired = self
            .bounded(self.config.lock_timeout, self.ports.broker.acquire(wanted))
            .await
            .unwrap_or_else(|| Err(LockError::Broker("lease request timed out".into())));
        if acquired.is_ok() {
            attempt::observe(crate::Stage::Lock, started);
        }
        acquired
    }

    /// One replay on the leased node, bounded by the replay timeout and timed as the replay
    /// stage.
    pub(crate) async fn replay(
        &self,
        lease: &ModelLease,
        request: &ReplayRequest,
    ) -> Result<ReplayResponse, ReplayError> {
        let started = Instant::now();
        let answer = self
            .bounded(self.config.replay_timeout, self.ports.ml.replay(lease.node(), request))
            .await
            .unwrap_or(Err(ReplayError::Timeout));
        attempt::observe(crate::Stage::Replay, started);
        answer
    }

    /// The chain's epoch state, read at most once per [`EPOCH_STATE_TTL`]; `None` when the
    /// chain cannot tell (counted as not stale, as upstream).
    pub(crate) async fn epoch_state(&self) -> Option<EpochState> {
        {
            let cached = self.epoch_state.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((at, state)) = *cached {
                if at.elapsed() < EPOCH_STATE_TTL {
                    return Some(state);
                }
            }
        }
        let state = self.chain_call(self.ports.chain.epoch_state()).await.ok()?;
        *self.epoch_state.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), state));
        Some(state)
    }

    pub(crate) fn address(&self) -> &str {
        self.ports.chain.account_address()
    }
}

/// Hands free slots to ready work, and sleeps until a slot frees, work arrives or a retry
/// falls due. The slot is taken here, before the attempt's task is spawned.
async fn dispatch_loop(inner: Arc<Inner>) {
    tokio::select! {
        biased;
        _ = inner.cancel.cancelled() => return,
        () = reconcile::run(&inner) => {}
    }
    loop {
        let woken = inner.scheduler.wake.notified();
        let (jobs, next_due) = inner.scheduler.dispatch(Instant::now());
        for job in jobs {
            inner.tasks.spawn(attempt::run(Arc::clone(&inner), job));
        }
        let due = next_due.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            biased;
            _ = inner.cancel.cancelled() => break,
            _ = woken => {}
            _ = tokio::time::sleep_until(due) => {}
        }
    }
}

/// Makes the live sampling decision for each queued batch and admits the chosen ids.
async fn intake_loop(inner: Arc<Inner>, mut batches: mpsc::Receiver<Vec<InferenceId>>) {
    let mut seeds: HashMap<u64, i64> = HashMap::new();
    loop {
        let batch = tokio::select! {
            biased;
            _ = inner.cancel.cancelled() => break,
            batch = batches.recv() => match batch {
                Some(batch) => batch,
                None => break,
            },
        };
        for chunk in batch.chunks(PARAMS_BATCH) {
            // Batches queued before the chain was found retired are dropped unqueried.
            if inner.retired.get().is_some() {
                break;
            }
            tokio::select! {
                biased;
                _ = inner.cancel.cancelled() => return,
                () = sample_chunk(&inner, chunk, &mut seeds) => {}
            }
        }
    }
}

async fn sample_chunk(inner: &Inner, ids: &[InferenceId], seeds: &mut HashMap<u64, i64>) {
    let chain = &inner.ports.chain;
    let answer = match inner.chain_call(chain.validation_parameters(ids)).await {
        Ok(answer) => answer,
        Err(err) => {
            warn!(%err, ids = ids.len(), "validation parameters query failed; sampled ids dropped");
            metrics::counter!("validator_intake_failures_total").increment(1);
            return;
        }
    };
    for details in &answer.details {
        if !inner.ports.broker.serves(&details.model) {
            debug!(inference_id = %details.inference_id, model = %details.model, "model not served");
            continue;
        }
        let Some(power) =
            sampling::live_validator_power(&answer.validator_powers, details.epoch_id)
        else {
            continue;
        };
        let seed = match seeds.get(&details.epoch_id) {
            Some(seed) => *seed,
            None => match inner.chain_call(chain.seed_for_epoch(details.epoch_id)).await {
                Ok(seed) => {
                    // Seeds of old epochs are never needed again; keep the map tiny.
                    seeds.retain(|epoch, _| epoch.saturating_add(2) >= details.epoch_id);
                    seeds.insert(details.epoch_id, seed);
                    seed
                }
                Err(err) => {
                    warn!(%err, epoch = details.epoch_id, "no seed for epoch; inference not sampled");
                    continue;
                }
            },
        };
        if !sampling::should_validate(details, inner.address(), power, &answer.params, seed) {
            continue;
        }
        let key = Key::Classic(details.inference_id.clone(), false);
        match inner.scheduler.admit(key, Lane::Live, None) {
            Ok(admission) => {
                debug!(inference_id = %details.inference_id, ?admission, "sampled for validation");
            }
            Err(err) => {
                warn!(inference_id = %details.inference_id, %err, "sampled id not admitted")
            }
        }
    }
}
