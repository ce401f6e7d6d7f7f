//! A model of upstream `devshardd`'s devshard validation (LIVE-NETWORK.md 2.3), written against
//! the same ports as the engine so that only the concurrency design differs.
//!
//! Per session (upstream `devshard/host/host.go`): a FIFO of 20,000 jobs, allocated whole when the
//! host starts as Go's `make(chan validateJob, 20_000)` is, and 20 workers that take jobs from it
//! for as long as the host lives. A full queue drops the job (the host collects it again on a
//! later diff). Sampled validations and challenge votes share the one FIFO. Per job (upstream
//! `ValidateInferenceWithExecutor` and `doWithLockedNode`): one payload fetch, the replay body
//! built, then up to 10 `AcquireMLNode` calls with a 2 s sleep after each refusal, the replay on
//! the granted node, the release, and the verdict against the model's threshold (cached per
//! escrow and model for 10 minutes). The worker holds the payloads and the body from the fetch to
//! the verdict. Nothing process-wide bounds the workers: a participant in S sessions runs 20 × S.
//! Workers run on a background context upstream; here a closed queue ends a worker once it is
//! empty, as a closed Go channel does, and nothing cancels a validation under way.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
};

use bytes::Bytes;
use rust_decimal::Decimal;
use tokio::{
    sync::Semaphore,
    time::{Duration, Instant},
};
use tokio_util::task::TaskTracker;
use validator_core::{
    completion::{self, CompletionResponse},
    devshard::DevshardJob,
    ports::{
        ml_node::{ReplayRequest, ReplayResponse},
        model_lock::{LeaseRequest, NodeHealth},
        payload_source::PayloadError,
    },
    scoring, Ports,
};

/// Validation workers per session host (upstream `defaultValidationWorkers`).
pub(crate) const WORKERS_PER_SESSION: usize = 20;
/// Jobs a session host's queue holds (upstream `defaultValidationQueueSize`).
pub(crate) const QUEUE_PER_SESSION: usize = 20_000;
/// `AcquireMLNode` calls per replay (upstream `maxAcquireAttempts`).
pub(crate) const ACQUIRE_ATTEMPTS: u32 = 10;

/// Upstream's timings, at the bench's scale of one minute to 10 ms.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    /// The sleep after a refused `AcquireMLNode`: 2 s upstream, 1/3 ms here. Tokio's timer
    /// ticks in whole milliseconds, so the sleep lasts until the next tick: about 1 ms.
    pub(crate) acquire_interval: Duration,
    /// The payload fetch's one attempt: 30 s upstream.
    pub(crate) payload_timeout: Duration,
    /// The replay's timeout: 30 min upstream.
    pub(crate) replay_timeout: Duration,
    /// How long a model's threshold is cached per escrow: 10 min upstream.
    pub(crate) threshold_ttl: Duration,
}

impl Timing {
    /// Upstream's values scaled from one minute to 10 ms.
    pub(crate) fn scaled() -> Self {
        Self {
            acquire_interval: Duration::from_micros(333),
            payload_timeout: Duration::from_millis(5),
            replay_timeout: Duration::from_millis(300),
            threshold_ttl: Duration::from_millis(100),
        }
    }
}

/// How one validation ended, as the host sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    /// A verdict: the host signs a `MsgValidation` or `MsgValidationVote`.
    Verdict {
        /// Whether the inference passed.
        valid: bool,
    },
    /// `ErrValidationSkipped`: the executor no longer holds the payloads; no vote.
    Skipped,
    /// Any other error: no vote, and the host collects the inference again on a later diff.
    Failed,
}

/// Where a finished job's answer goes: the bench's session hosts.
pub(crate) trait AnswerSink: Send + Sync + 'static {
    /// `job` of session `session` ended with `answer`.
    fn answered(&self, session: usize, job: &DevshardJob, answer: Answer);
}

/// A job as it waits in a session's queue.
struct Queued {
    session: usize,
    job: DevshardJob,
}

/// One session host's queue: Go's buffered channel, with its buffer allocated up front.
struct Queue {
    jobs: Mutex<VecDeque<Queued>>,
    /// One permit per queued job; closed when the host closes.
    ready: Semaphore,
}

impl Queue {
    fn new() -> Self {
        Self {
            jobs: Mutex::new(VecDeque::with_capacity(QUEUE_PER_SESSION)),
            ready: Semaphore::new(0),
        }
    }

    /// Go's `select { case q <- job: ... default: }`: the job back when the queue is full.
    fn try_push(&self, queued: Queued) -> Option<Queued> {
        let mut jobs = lock(&self.jobs);
        if jobs.len() >= QUEUE_PER_SESSION {
            return Some(queued);
        }
        jobs.push_back(queued);
        drop(jobs);
        self.ready.add_permits(1);
        None
    }

    /// The next job; `None` once the queue is closed and empty (`for job := range q`).
    async fn pop(&self) -> Option<Queued> {
        if let Ok(permit) = self.ready.acquire().await {
            permit.forget();
        }
        lock(&self.jobs).pop_front()
    }

    fn len(&self) -> usize {
        lock(&self.jobs).len()
    }
}

#[derive(Default)]
struct Stats {
    dropped: AtomicU64,
    validating: AtomicU64,
    peak_validating: AtomicU64,
    gave_up_on_node: AtomicU64,
}

/// Counts of one run.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct DevsharddCounts {
    /// Jobs a full queue refused.
    pub(crate) dropped: u64,
    /// Most workers inside a validation at once (each holds its payloads from the fetch on).
    pub(crate) peak_validating: u64,
    /// Validations that ran out of `AcquireMLNode` attempts.
    pub(crate) gave_up_on_node: u64,
    /// Jobs still queued.
    pub(crate) queued: u64,
}

/// Every session host of one participant.
pub(crate) struct Devshardd {
    ports: Ports,
    timing: Timing,
    queues: Vec<Arc<Queue>>,
    /// The threshold resolver's cache: escrow to threshold and when it was fetched.
    thresholds: Mutex<HashMap<Arc<str>, (Decimal, Instant)>>,
    /// The chain's `logprobs_mode`, as upstream's `ChainParamsProvider` caches it.
    logprobs_mode: tokio::sync::OnceCell<String>,
    sink: Arc<dyn AnswerSink>,
    workers: TaskTracker,
    closed: AtomicBool,
    stats: Stats,
}

impl Devshardd {
    /// Starts `sessions` hosts, each with its queue and its 20 workers.
    pub(crate) fn start(
        sessions: usize,
        ports: Ports,
        timing: Timing,
        sink: Arc<dyn AnswerSink>,
    ) -> Arc<Self> {
        let this = Arc::new(Self {
            ports,
            timing,
            queues: (0..sessions).map(|_| Arc::new(Queue::new())).collect(),
            thresholds: Mutex::default(),
            logprobs_mode: tokio::sync::OnceCell::new(),
            sink,
            workers: TaskTracker::new(),
            closed: AtomicBool::new(false),
            stats: Stats::default(),
        });
        for queue in &this.queues {
            for _ in 0..WORKERS_PER_SESSION {
                let (this_, queue) = (Arc::clone(&this), Arc::clone(queue));
                this.workers.spawn(async move {
                    while let Some(Queued { session, job }) = queue.pop().await {
                        let validating = this_.stats.validating.fetch_add(1, Ordering::Relaxed) + 1;
                        this_.stats.peak_validating.fetch_max(validating, Ordering::Relaxed);
                        let answer = this_.validate(&job).await;
                        this_.stats.validating.fetch_sub(1, Ordering::Relaxed);
                        this_.sink.answered(session, &job, answer);
                    }
                });
            }
        }
        this.workers.close();
        this
    }

    /// The host's `enqueueValidation`: `None` once queued, or the job back if the queue was
    /// full (or closed) and dropped it.
    pub(crate) fn enqueue(&self, session: usize, job: DevshardJob) -> Option<DevshardJob> {
        let Some(queue) = self.queues.get(session) else { return Some(job) };
        let dropped = if self.closed.load(Ordering::Relaxed) {
            Some(job)
        } else {
            queue.try_push(Queued { session, job }).map(|queued| queued.job)
        };
        if dropped.is_some() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
        dropped
    }

    /// The hosts' `Close`: queues close, workers finish what is queued, then end. Waits at most
    /// `grace` for them; true if every worker ended.
    pub(crate) async fn close(&self, grace: Duration) -> bool {
        self.closed.store(true, Ordering::Relaxed);
        for queue in &self.queues {
            queue.ready.close();
        }
        tokio::time::timeout(grace, self.workers.wait()).await.is_ok()
    }

    /// The run's counts so far.
    pub(crate) fn counts(&self) -> DevsharddCounts {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        DevsharddCounts {
            dropped: load(&self.stats.dropped),
            peak_validating: load(&self.stats.peak_validating),
            gave_up_on_node: load(&self.stats.gave_up_on_node),
            queued: self.queues.iter().map(|queue| queue.len() as u64).sum(),
        }
    }

    /// Upstream's `ValidateInferenceWithExecutor` for one job.
    async fn validate(&self, job: &DevshardJob) -> Answer {
        let fetched = tokio::time::timeout(
            self.timing.payload_timeout,
            self.ports.payloads.fetch_devshard(job),
        )
        .await;
        let payloads = match fetched {
            Ok(Ok(payloads)) => payloads,
            Ok(Err(PayloadError::Gone)) => return Answer::Skipped,
            Ok(Err(_)) | Err(_) => return Answer::Failed,
        };
        // `BuildValidationBody`; an unusable payload is an error upstream, not a vote.
        let Some(logprobs_mode) = self.logprobs_mode().await else { return Answer::Failed };
        let built = CompletionResponse::from_payload(&payloads.response).and_then(|original| {
            let body = completion::build_devshard_replay(
                &payloads.prompt,
                &original,
                job.key.inference_id,
                logprobs_mode,
            )?;
            Ok((original, body))
        });
        let Ok((original, body)) = built else { return Answer::Failed };
        let request = ReplayRequest { inference_id: job.key.journal_id(), body: Bytes::from(body) };
        let Some(answer) = self.with_locked_node(job, &request).await else {
            return Answer::Failed;
        };
        // `EvaluateValidationResponse`.
        let answer = match answer {
            ReplayResponse::Rejected { .. } => return Answer::Verdict { valid: true },
            ReplayResponse::Completed(answer) => answer,
        };
        let Some(threshold) = self.threshold(job).await else { return Answer::Failed };
        match scoring::judge_devshard(
            &original,
            &answer,
            job.input_tokens,
            job.output_tokens,
            threshold,
        ) {
            Ok(verdict) => Answer::Verdict { valid: verdict.valid() },
            Err(_) => Answer::Failed,
        }
    }

    /// Upstream's `doWithLockedNode`: up to 10 `AcquireMLNode` calls with a sleep after each
    /// refusal; the replay on the granted node; the release whatever the answer. A node that
    /// fails the replay is excluded from the next acquisitions.
    async fn with_locked_node(
        &self,
        job: &DevshardJob,
        request: &ReplayRequest,
    ) -> Option<ReplayResponse> {
        let mut excluded: Vec<Arc<str>> = Vec::new();
        for _ in 0..ACQUIRE_ATTEMPTS {
            let lease = LeaseRequest {
                model: &job.model,
                excluded_nodes: &excluded,
                escrow_id: Some(&job.key.escrow_id),
            };
            let lease = match self.ports.broker.acquire(&lease).await {
                Ok(lease) => lease,
                Err(_) => {
                    tokio::time::sleep(self.timing.acquire_interval).await;
                    continue;
                }
            };
            let answer = tokio::time::timeout(
                self.timing.replay_timeout,
                self.ports.ml.replay(lease.node(), request),
            )
            .await;
            match answer {
                Ok(Ok(answer)) => {
                    lease.release(NodeHealth::Healthy);
                    return Some(answer);
                }
                Ok(Err(_)) | Err(_) => {
                    excluded.push(Arc::clone(&lease.node().id));
                    lease.release(NodeHealth::Failed);
                }
            }
        }
        self.stats.gave_up_on_node.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// The model's threshold for the job's epoch, cached per escrow (upstream's
    /// `ValidationThresholdResolver`; one model in the bench).
    async fn threshold(&self, job: &DevshardJob) -> Option<Decimal> {
        if let Some((threshold, at)) = lock(&self.thresholds).get(&job.key.escrow_id) {
            if at.elapsed() < self.timing.threshold_ttl {
                return Some(*threshold);
            }
        }
        let group = self.ports.chain.epoch_group(job.epoch_id, &job.model).await.ok()?;
        let threshold = group.validation_threshold?;
        lock(&self.thresholds).insert(Arc::clone(&job.key.escrow_id), (threshold, Instant::now()));
        Some(threshold)
    }

    /// The chain's `logprobs_mode`, fetched once.
    async fn logprobs_mode(&self) -> Option<&str> {
        let mode = self
            .logprobs_mode
            .get_or_try_init(|| async {
                self.ports.chain.validation_params().await.map(|params| params.logprobs_mode)
            })
            .await
            .ok()?;
        Some(mode.as_str())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
