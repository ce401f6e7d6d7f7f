//! The fakes every strategy runs on. The broker is validator-core's own [`MemoryBroker`] (or
//! [`NodeManager`], the API node's lock service, for devshard sessions); the chain, payload source
//! and ML node are bench versions of validator-core's fakes that keep no per-item history
//! (validator-core's fakes record every call for inspection, which grows with the backlog and
//! would be measured as the design's memory), generate records from the id, inject the faults
//! of the `faults` scenario, and time each replay. `slow_executors` adds a payload source whose
//! fetches take time ([`TimedPayloads`]) and a [`Timeline`] of what the fakes saw.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::Duration,
};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::time::Instant;
use validator_core::{
    devshard::DevshardJob,
    ports::{
        chain::{
            ChainClient, ChainError, EpochGroup, EpochState, Inference, InferenceId, InferencePage,
            InferenceStatus, InferenceSummary, MsgValidation, SubmitError, SubmitReceipt,
            ValidationDetails, ValidationParameters, ValidationParams, ValidatorPower,
        },
        ml_node::{MlNodeClient, ReplayError, ReplayRequest, ReplayResponse},
        model_lock::{
            LeaseRelease, LeaseRequest, LockError, MlNode, ModelLease, ModelLockBroker, NodeHealth,
        },
        payload_source::{PayloadError, PayloadSource, Payloads},
        Journal, NoJournal,
    },
    testing::{echo_completion, payloads_for, MemoryBroker, EXECUTOR, MODEL, SELF_ADDRESS},
    Ports,
};

/// The epoch whose missed validations the recovery backlog holds.
pub(crate) const BACKLOG_EPOCH: u64 = 9;
/// The current epoch, which live items belong to.
pub(crate) const LIVE_EPOCH: u64 = 10;

const BACKLOG_PREFIX: &str = "inf-";
const LIVE_PREFIX: &str = "live-";
const REVALIDATION_PREFIX: &str = "reval-";

pub(crate) fn backlog_id(index: u64) -> InferenceId {
    InferenceId::new(format!("{BACKLOG_PREFIX}{index:08}"))
}

pub(crate) fn live_id(index: u64) -> InferenceId {
    InferenceId::new(format!("{LIVE_PREFIX}{index:08}"))
}

/// An inference of the current epoch whose invalidation vote needs this validator's
/// revalidation.
pub(crate) fn revalidation_id(index: u64) -> InferenceId {
    InferenceId::new(format!("{REVALIDATION_PREFIX}{index:08}"))
}

fn is_revalidation_id(id: &str) -> bool {
    id.starts_with(REVALIDATION_PREFIX)
}

/// The epoch of a generated id, or `None` for an id the synthetic chain never made.
fn epoch_of(id: &str) -> Option<u64> {
    let (epoch, digits) = if let Some(rest) = id.strip_prefix(BACKLOG_PREFIX) {
        (BACKLOG_EPOCH, rest)
    } else if let Some(rest) = id.strip_prefix(REVALIDATION_PREFIX) {
        (LIVE_EPOCH, rest)
    } else {
        (LIVE_EPOCH, id.strip_prefix(LIVE_PREFIX)?)
    };
    digits.parse::<u64>().ok().map(|_| epoch)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// SplitMix64: a cheap, well-mixed hash of a counter or seed.
pub(crate) fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A stable hash of an id (FNV-1a, then mixed).
pub(crate) fn id_hash(id: &str) -> u64 {
    let fnv = id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    mix(fnv)
}

/// Which items fail, decided by a hash of the id so every strategy sees the same faulty items.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Faults {
    /// Per mille of items whose first payload fetch fails transiently.
    pub(crate) payload_first_fail: u64,
    /// Per mille of items whose first replay hangs until the caller's timeout.
    pub(crate) replay_first_hang: u64,
}

impl Faults {
    pub(crate) fn payload_faulty(&self, id: &str) -> bool {
        id_hash(id) % 1000 < self.payload_first_fail
    }

    pub(crate) fn replay_faulty(&self, id: &str) -> bool {
        mix(id_hash(id)) % 1000 < self.replay_first_hang
    }

    pub(crate) fn healthy(&self, id: &str) -> bool {
        !self.payload_faulty(id) && !self.replay_faulty(id)
    }
}

// === SynthChain ===

/// A chain that stores nothing per inference: the listing, the records and the sampling details
/// are generated from the id, so its memory does not grow with the backlog. Every backlog item
/// is sampled for this validator with probability 1 (reputation 0, low traffic), none is
/// validated yet, and the latest epoch keeps the backlog's epoch fresh.
pub(crate) struct SynthChain {
    backlog: u64,
    faults: Faults,
    /// Accepted ids, to count duplicate submissions; `None` in the memory scenario.
    seen: Option<Mutex<HashSet<InferenceId>>>,
    submitted: AtomicU64,
    healthy_submitted: AtomicU64,
    duplicates: AtomicU64,
}

impl SynthChain {
    pub(crate) fn new(backlog: u64, faults: Faults, track_duplicates: bool) -> Self {
        Self {
            backlog,
            faults,
            seen: track_duplicates.then(Mutex::default),
            submitted: AtomicU64::new(0),
            healthy_submitted: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
        }
    }

    /// Messages accepted (validations and invalidations).
    pub(crate) fn submitted(&self) -> u64 {
        self.submitted.load(Ordering::Relaxed)
    }

    /// Of those, for items the fault plan left alone.
    pub(crate) fn healthy_submitted(&self) -> u64 {
        self.healthy_submitted.load(Ordering::Relaxed)
    }

    /// Second submissions for the same inference (the chain's `ErrDuplicateValidation`).
    pub(crate) fn duplicates(&self) -> u64 {
        self.duplicates.load(Ordering::Relaxed)
    }

    fn details(id: &InferenceId, epoch: u64) -> ValidationDetails {
        ValidationDetails {
            epoch_id: epoch,
            inference_id: id.clone(),
            executor_id: EXECUTOR.into(),
            executor_reputation: 0,
            traffic_basis: 10,
            executor_power: 1,
            model: MODEL.into(),
            total_power: 2,
            created_at_block_height: 1,
        }
    }

    fn group(epoch: u64, model: &str) -> EpochGroup {
        EpochGroup {
            epoch_index: epoch,
            model: model.to_owned(),
            sub_group_models: if model.is_empty() { vec![MODEL.into()] } else { Vec::new() },
            validation_weights: vec![SELF_ADDRESS.into(), EXECUTOR.into()],
            has_model_snapshot: !model.is_empty(),
            validation_threshold: (!model.is_empty()).then(|| rust_decimal::Decimal::new(92, 2)),
        }
    }
}

#[async_trait]
impl ChainClient for SynthChain {
    fn account_address(&self) -> &str {
        SELF_ADDRESS
    }

    async fn inference(&self, id: &InferenceId) -> Result<Inference, ChainError> {
        let epoch = epoch_of(id.as_str()).ok_or(ChainError::NotFound)?;
        Ok(Inference {
            inference_id: id.clone(),
            model: MODEL.into(),
            epoch_id: epoch,
            executed_by: EXECUTOR.into(),
            status: InferenceStatus::Finished,
            prompt_hash: String::new(),
            response_hash: String::new(),
            prompt_payload: String::new(),
            response_payload: String::new(),
        })
    }

    async fn inferences_page(
        &self,
        page_key: Option<Vec<u8>>,
        limit: u32,
    ) -> Result<InferencePage, ChainError> {
        let start = page_key
            .and_then(|key| String::from_utf8(key).ok())
            .and_then(|key| key.parse::<u64>().ok())
            .unwrap_or(0)
            .min(self.backlog);
        let end = start.saturating_add(u64::from(limit)).min(self.backlog);
        let inferences = (start..end)
            .map(|index| InferenceSummary {
                inference_id: backlog_id(index),
                epoch_id: BACKLOG_EPOCH,
                model: MODEL.into(),
            })
            .collect();
        let next_key = (end < self.backlog).then(|| end.to_string().into_bytes());
        Ok(InferencePage { inferences, next_key })
    }

    async fn validation_parameters(
        &self,
        ids: &[InferenceId],
    ) -> Result<ValidationParameters, ChainError> {
        let details = ids
            .iter()
            .filter_map(|id| epoch_of(id.as_str()).map(|epoch| Self::details(id, epoch)))
            .collect();
        Ok(ValidationParameters {
            details,
            validator_powers: vec![
                ValidatorPower { power: 1, epoch_index: BACKLOG_EPOCH },
                ValidatorPower { power: 1, epoch_index: LIVE_EPOCH },
            ],
            current_height: 100,
            params: ValidationParams::default(),
        })
    }

    async fn validated_inferences(&self, _epoch: u64) -> Result<Vec<InferenceId>, ChainError> {
        // Nothing of the backlog was validated before the run; what the run submits is not
        // listed back, so this answer stays constant-size.
        Err(ChainError::NotFound)
    }

    async fn epoch_group(&self, epoch: u64, model: &str) -> Result<EpochGroup, ChainError> {
        if model.is_empty() || model == MODEL {
            Ok(Self::group(epoch, model))
        } else {
            Err(ChainError::NotFound)
        }
    }

    async fn current_epoch_group(&self) -> Result<EpochGroup, ChainError> {
        Ok(Self::group(LIVE_EPOCH, ""))
    }

    async fn validation_params(&self) -> Result<ValidationParams, ChainError> {
        Ok(ValidationParams::default())
    }

    async fn epoch_state(&self) -> Result<EpochState, ChainError> {
        Ok(EpochState { latest_epoch: LIVE_EPOCH })
    }

    async fn seed_for_epoch(&self, epoch: u64) -> Result<i64, ChainError> {
        Ok(epoch as i64)
    }

    async fn submit_validation(&self, msg: &MsgValidation) -> Result<SubmitReceipt, SubmitError> {
        if let Some(seen) = &self.seen {
            if !msg.revalidation && !lock(seen).insert(msg.inference_id.clone()) {
                self.duplicates.fetch_add(1, Ordering::Relaxed);
                return Err(SubmitError::Duplicate);
            }
        }
        self.submitted.fetch_add(1, Ordering::Relaxed);
        if self.faults.healthy(msg.inference_id.as_str()) {
            self.healthy_submitted.fetch_add(1, Ordering::Relaxed);
        }
        Ok(SubmitReceipt { tx_hash: None })
    }
}

// === BenchPayloads ===

/// Serves validator-core's [`payloads_for`] for every id; items picked by [`Faults`] fail their
/// first fetch with a transient error. Devshard jobs get [`devshard_prompt`] and the response of
/// [`payloads_for`], in fresh buffers each time, as a real fetch would; the hash check is the
/// adapter's, and passes here.
pub(crate) struct BenchPayloads {
    faults: Faults,
    failed: Mutex<HashSet<InferenceId>>,
    failures: AtomicU64,
    devshard_fetches: AtomicU64,
    devshard_response: Bytes,
}

impl BenchPayloads {
    pub(crate) fn new(faults: Faults) -> Self {
        Self {
            faults,
            failed: Mutex::default(),
            failures: AtomicU64::new(0),
            devshard_fetches: AtomicU64::new(0),
            devshard_response: payloads_for("devshard").response,
        }
    }

    /// Fetches failed on purpose.
    pub(crate) fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Devshard payload fetches served.
    pub(crate) fn devshard_fetches(&self) -> u64 {
        self.devshard_fetches.load(Ordering::Relaxed)
    }
}

/// Bytes of the user message of a devshard prompt: about 4,000 tokens of context, a modest chat
/// prompt. The payloads a design holds while it waits are what its memory figure measures.
pub(crate) const DEVSHARD_PROMPT_TEXT: usize = 16 * 1024;

/// The prompt of a devshard job: the fields of [`payloads_for`]'s prompt with a
/// [`DEVSHARD_PROMPT_TEXT`]-byte message, and a `bench_job` field, `"{session}/{inference id}"`,
/// that the replay request keeps, so the ML node can tell which job it replays.
pub(crate) fn devshard_prompt(job: &DevshardJob) -> Bytes {
    const WORDS: &str = "lorem ipsum dolor sit amet consectetur adipiscing elit ";
    let mut text = String::with_capacity(DEVSHARD_PROMPT_TEXT + WORDS.len());
    while text.len() < DEVSHARD_PROMPT_TEXT {
        text.push_str(WORDS);
    }
    text.truncate(DEVSHARD_PROMPT_TEXT);
    let session = job.key.escrow_id.strip_prefix(ESCROW_PREFIX).unwrap_or(&job.key.escrow_id);
    Bytes::from(format!(
        concat!(
            r#"{{"model":"{model}","messages":[{{"role":"user","content":"{text}"}}],"#,
            r#""bench_job":"{session}/{id}","seed":42,"logprobs":true,"top_logprobs":3,"#,
            r#""max_tokens":5000,"max_completion_tokens":5000,"temperature":0.7,"stream":true,"#,
            r#""stream_options":{{"include_usage":true}}}}"#
        ),
        model = job.model,
        text = text,
        session = session,
        id = job.key.inference_id,
    ))
}

/// Session `n`'s escrow id is `escrow-{n}`.
pub(crate) const ESCROW_PREFIX: &str = "escrow-";

/// The job a replay request body is for, from its `bench_job` field: (session, inference id).
pub(crate) fn replayed_job(body: &serde_json::Value) -> Option<(usize, u64)> {
    let (session, id) = body["bench_job"].as_str()?.split_once('/')?;
    Some((session.parse().ok()?, id.parse().ok()?))
}

#[async_trait]
impl PayloadSource for BenchPayloads {
    async fn fetch(&self, inference: &Inference) -> Result<Payloads, PayloadError> {
        let id = &inference.inference_id;
        if self.faults.payload_faulty(id.as_str()) && lock(&self.failed).insert(id.clone()) {
            self.failures.fetch_add(1, Ordering::Relaxed);
            return Err(PayloadError::Unavailable("executor unreachable (injected)".into()));
        }
        Ok(payloads_for(id.as_str()))
    }

    async fn fetch_devshard(&self, job: &DevshardJob) -> Result<Payloads, PayloadError> {
        self.devshard_fetches.fetch_add(1, Ordering::Relaxed);
        Ok(Payloads {
            prompt: devshard_prompt(job),
            response: Bytes::copy_from_slice(&self.devshard_response),
        })
    }
}

// === TimedMlNode ===

/// An ML node that answers like validator-core's `MemoryMlNode` (the enforced tokens echoed with the
/// fakes' logprobs, so every replay scores 1) after a fixed latency, without recording requests.
/// It measures the service time it actually gives: tokio rounds timers up to the next
/// millisecond, so the nominal latency understates it. Items picked by [`Faults`] hang on their
/// first replay until the caller's timeout drops the call.
pub(crate) struct TimedMlNode {
    latency: Duration,
    faults: Faults,
    /// Called with each replay's parsed body as it arrives.
    on_start: Option<ReplayHook>,
    /// Answers by inference id, without parsing the request.
    answers: Option<AnswerFn>,
    /// Records every replay's start and end.
    timeline: Option<Arc<Timeline>>,
    hung: Mutex<HashSet<InferenceId>>,
    in_flight: AtomicUsize,
    peak: AtomicUsize,
    served: AtomicU64,
    service_nanos: AtomicU64,
    hangs: AtomicU64,
}

impl TimedMlNode {
    pub(crate) fn new(latency: Duration, faults: Faults) -> Self {
        Self {
            latency,
            faults,
            on_start: None,
            answers: None,
            timeline: None,
            hung: Mutex::default(),
            in_flight: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            served: AtomicU64::new(0),
            service_nanos: AtomicU64::new(0),
            hangs: AtomicU64::new(0),
        }
    }

    /// Calls `hook` with the parsed body of every replay as it arrives.
    pub(crate) fn with_start_hook(mut self, hook: ReplayHook) -> Self {
        self.on_start = Some(hook);
        self
    }

    /// Answers each replay with `answers(inference id)` instead of echoing the parsed request:
    /// for payloads of megabytes, whose parsing here would compete for the cores with the
    /// design under test (a real ML node parses on its own machine). The start hook is not
    /// called.
    pub(crate) fn with_answers(mut self, answers: AnswerFn) -> Self {
        self.answers = Some(answers);
        self
    }

    /// Records every replay's start and end in `timeline`.
    pub(crate) fn with_timeline(mut self, timeline: Arc<Timeline>) -> Self {
        self.timeline = Some(timeline);
        self
    }

    /// Replays answered.
    pub(crate) fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// Replays that hung on purpose.
    pub(crate) fn hangs(&self) -> u64 {
        self.hangs.load(Ordering::Relaxed)
    }

    /// Most replays in flight at once.
    pub(crate) fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    /// The mean time from a replay's arrival to its answer, or the nominal latency before any.
    pub(crate) fn mean_service(&self) -> Duration {
        let served = self.served();
        if served == 0 {
            return self.latency;
        }
        Duration::from_nanos(self.service_nanos.load(Ordering::Relaxed) / served)
    }
}

/// Sees each replay's body as the ML node receives it.
pub(crate) type ReplayHook = Arc<dyn Fn(&serde_json::Value) + Send + Sync>;

/// The ML node's answer to a replay of an inference.
pub(crate) type AnswerFn = Arc<dyn Fn(&InferenceId) -> Bytes + Send + Sync>;

/// One replay in flight, until it answers or its caller drops it.
struct InFlight<'a>(&'a AtomicUsize, Option<&'a Timeline>);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
        if let Some(timeline) = self.1 {
            timeline.replay_ended();
        }
    }
}

#[async_trait]
impl MlNodeClient for TimedMlNode {
    async fn replay(
        &self,
        _node: &MlNode,
        request: &ReplayRequest,
    ) -> Result<ReplayResponse, ReplayError> {
        let started = Instant::now();
        let now = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak.fetch_max(now, Ordering::Relaxed);
        let id = &request.inference_id;
        if let Some(timeline) = &self.timeline {
            timeline.replay_started(id);
        }
        let _in_flight = InFlight(&self.in_flight, self.timeline.as_deref());
        if self.faults.replay_faulty(id.as_str()) && lock(&self.hung).insert(id.clone()) {
            self.hangs.fetch_add(1, Ordering::Relaxed);
            return std::future::pending().await;
        }
        let answer = if let Some(answers) = &self.answers {
            tokio::time::sleep(self.latency).await;
            answers(id)
        } else {
            let body: serde_json::Value = serde_json::from_slice(&request.body)
                .map_err(|err| ReplayError::BadResponse(err.to_string()))?;
            if let Some(hook) = &self.on_start {
                hook(&body);
            }
            tokio::time::sleep(self.latency).await;
            echo_completion(&body)
        };
        let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.service_nanos.fetch_add(nanos, Ordering::Relaxed);
        self.served.fetch_add(1, Ordering::Relaxed);
        Ok(ReplayResponse::Completed(answer))
    }
}

// === TimedPayloads ===

/// What a [`TimedPayloads`] serves for an inference: how long its fetch takes, and its payloads.
pub(crate) type FetchPlan = Arc<dyn Fn(&InferenceId) -> (Duration, Payloads) + Send + Sync>;

/// A payload source whose fetches take the time the plan gives each inference, as executors on
/// slow links do. The plan's payloads are shared templates; each fetch copies them into fresh
/// buffers, as a real fetch receives its bytes, so what a design holds shows in its memory.
/// Revalidations' fetches go to the [`Timeline`].
pub(crate) struct TimedPayloads {
    plan: FetchPlan,
    timeline: Arc<Timeline>,
}

impl TimedPayloads {
    pub(crate) fn new(plan: FetchPlan, timeline: Arc<Timeline>) -> Self {
        Self { plan, timeline }
    }
}

#[async_trait]
impl PayloadSource for TimedPayloads {
    async fn fetch(&self, inference: &Inference) -> Result<Payloads, PayloadError> {
        let id = &inference.inference_id;
        let started = Instant::now();
        let (latency, payloads) = (self.plan)(id);
        tokio::time::sleep(latency).await;
        let fetched = Payloads {
            prompt: Bytes::copy_from_slice(&payloads.prompt),
            response: Bytes::copy_from_slice(&payloads.response),
        };
        self.timeline.fetched(id, started, Instant::now());
        Ok(fetched)
    }

    async fn fetch_devshard(&self, _job: &DevshardJob) -> Result<Payloads, PayloadError> {
        Err(PayloadError::Unavailable("no devshard payloads here".into()))
    }
}

// === Timeline ===

/// What the fakes saw, in time: every change of the replays in flight at the ML node, and for
/// revalidations their trigger, their payload fetch and the start of their first replay. One
/// entry per replay start or end, one map entry per revalidation, so it costs next to nothing
/// beside the payloads.
#[derive(Default)]
pub(crate) struct Timeline {
    busy: Mutex<Busy>,
    priority: Mutex<HashMap<InferenceId, PriorityTimes>>,
}

#[derive(Default)]
struct Busy {
    in_flight: usize,
    changes: Vec<(Instant, usize)>,
}

/// When things happened to one revalidation.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PriorityTimes {
    pub(crate) trigger: Option<Instant>,
    /// The last payload fetch that ended before the first replay: (start, end).
    pub(crate) fetch: Option<(Instant, Instant)>,
    pub(crate) replay_start: Option<Instant>,
}

impl Timeline {
    /// A revalidation of `id` is triggered at `at`.
    pub(crate) fn triggered(&self, id: &InferenceId, at: Instant) {
        lock(&self.priority).entry(id.clone()).or_default().trigger = Some(at);
    }

    fn fetched(&self, id: &InferenceId, started: Instant, ended: Instant) {
        if !is_revalidation_id(id.as_str()) {
            return;
        }
        let mut priority = lock(&self.priority);
        let times = priority.entry(id.clone()).or_default();
        if times.replay_start.is_none() {
            times.fetch = Some((started, ended));
        }
    }

    /// Times are taken under the lock, so the changes come in time order.
    fn replay_started(&self, id: &InferenceId) {
        let at = {
            let mut busy = lock(&self.busy);
            busy.in_flight += 1;
            let (at, in_flight) = (Instant::now(), busy.in_flight);
            busy.changes.push((at, in_flight));
            at
        };
        if is_revalidation_id(id.as_str()) {
            let mut priority = lock(&self.priority);
            let times = priority.entry(id.clone()).or_default();
            times.replay_start.get_or_insert(at);
        }
    }

    fn replay_ended(&self) {
        let mut busy = lock(&self.busy);
        busy.in_flight = busy.in_flight.saturating_sub(1);
        let in_flight = busy.in_flight;
        busy.changes.push((Instant::now(), in_flight));
    }

    /// Every change of the replays in flight: (when, replays in flight from then on).
    pub(crate) fn busy_changes(&self) -> Vec<(Instant, usize)> {
        lock(&self.busy).changes.clone()
    }

    /// The revalidations' times.
    pub(crate) fn priority(&self) -> Vec<PriorityTimes> {
        lock(&self.priority).values().copied().collect()
    }
}

// === NodeManager ===

/// The API node's NodeManager as the devshard path sees it (LIVE-NETWORK.md 2.2 item 3): one
/// node serving [`MODEL`] with a fixed number of locks, `AcquireMLNode` refused when they are all
/// held, and its free locks known without a call (as the NodeManager's capacity listing tells
/// them). Counts grants, refusals and the most locks held at once.
#[derive(Clone)]
pub(crate) struct NodeManager {
    shared: Arc<NodeManagerShared>,
}

struct NodeManagerShared {
    capacity: usize,
    held: AtomicUsize,
    peak: AtomicUsize,
    grants: AtomicU64,
    refusals: AtomicU64,
}

impl NodeManager {
    /// A node with `capacity` locks.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            shared: Arc::new(NodeManagerShared {
                capacity,
                held: AtomicUsize::new(0),
                peak: AtomicUsize::new(0),
                grants: AtomicU64::new(0),
                refusals: AtomicU64::new(0),
            }),
        }
    }

    /// The node's locks.
    pub(crate) fn capacity(&self) -> usize {
        self.shared.capacity
    }

    /// Most locks held at once.
    pub(crate) fn peak(&self) -> usize {
        self.shared.peak.load(Ordering::Relaxed)
    }

    /// Locks granted.
    pub(crate) fn grants(&self) -> u64 {
        self.shared.grants.load(Ordering::Relaxed)
    }

    /// `AcquireMLNode` calls refused because every lock was held.
    pub(crate) fn refusals(&self) -> u64 {
        self.shared.refusals.load(Ordering::Relaxed)
    }
}

struct NodeManagerRelease(Arc<NodeManagerShared>);

impl LeaseRelease for NodeManagerRelease {
    fn release(self: Box<Self>, _health: NodeHealth) {
        self.0.held.fetch_sub(1, Ordering::AcqRel);
    }
}

#[async_trait]
impl ModelLockBroker for NodeManager {
    async fn acquire(&self, request: &LeaseRequest<'_>) -> Result<ModelLease, LockError> {
        let shared = &self.shared;
        let taken = (request.model == MODEL)
            .then(|| {
                shared.held.fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                    (held < shared.capacity).then_some(held + 1)
                })
            })
            .and_then(Result::ok);
        let Some(before) = taken else {
            shared.refusals.fetch_add(1, Ordering::Relaxed);
            return Err(LockError::NoNode { model: request.model.to_owned() });
        };
        shared.peak.fetch_max(before + 1, Ordering::Relaxed);
        shared.grants.fetch_add(1, Ordering::Relaxed);
        let node = MlNode { id: "node-0".into(), address: "memory://node-0".into() };
        Ok(ModelLease::new(node, Box::new(NodeManagerRelease(Arc::clone(shared)))))
    }

    fn serves(&self, model: &str) -> bool {
        model == MODEL
    }

    fn free_slots(&self, model: &str) -> Option<usize> {
        let free = self.shared.capacity.saturating_sub(self.shared.held.load(Ordering::Acquire));
        Some(if self.serves(model) { free } else { 0 })
    }
}

// === Rig ===

/// One scenario's fakes, shared by whichever strategy runs on them.
pub(crate) struct Rig {
    pub(crate) chain: Arc<SynthChain>,
    pub(crate) payloads: Arc<BenchPayloads>,
    pub(crate) broker: MemoryBroker,
    pub(crate) ml: Arc<TimedMlNode>,
    /// Replace `broker` and `ml` in the ports (the HTTP adapter and its node pool in
    /// `http_drain`).
    pub(crate) broker_port: Option<Arc<dyn ModelLockBroker>>,
    pub(crate) ml_port: Option<Arc<dyn MlNodeClient>>,
    /// Replaces `payloads` in the ports ([`TimedPayloads`] in `slow_executors`).
    pub(crate) payloads_port: Option<Arc<dyn PayloadSource>>,
    /// The journal (`NoJournal` unless a scenario measures one).
    pub(crate) journal: Arc<dyn Journal>,
    /// The leases (`SingleReplica` unless a scenario measures shared ones).
    pub(crate) leases: Arc<dyn validator_core::ports::Leases>,
}

impl Rig {
    /// A backlog of `backlog` items, an ML node of `latency` with `node_slots` slots.
    pub(crate) fn new(
        backlog: u64,
        latency: Duration,
        node_slots: usize,
        faults: Faults,
        track_duplicates: bool,
    ) -> Self {
        Self {
            chain: Arc::new(SynthChain::new(backlog, faults, track_duplicates)),
            payloads: Arc::new(BenchPayloads::new(faults)),
            broker: MemoryBroker::new(node_slots),
            ml: Arc::new(TimedMlNode::new(latency, faults)),
            broker_port: None,
            ml_port: None,
            payloads_port: None,
            journal: Arc::new(NoJournal),
            leases: Arc::new(validator_core::ports::SingleReplica),
        }
    }

    pub(crate) fn ports(&self) -> Ports {
        let ml: Arc<dyn MlNodeClient> = match &self.ml_port {
            Some(port) => Arc::clone(port),
            None => Arc::clone(&self.ml) as Arc<dyn MlNodeClient>,
        };
        let broker: Arc<dyn ModelLockBroker> = match &self.broker_port {
            Some(port) => Arc::clone(port),
            None => Arc::new(self.broker.clone()),
        };
        let payloads: Arc<dyn PayloadSource> = match &self.payloads_port {
            Some(port) => Arc::clone(port),
            None => Arc::clone(&self.payloads) as Arc<dyn PayloadSource>,
        };
        Ports {
            chain: Arc::clone(&self.chain) as Arc<dyn ChainClient>,
            payloads,
            broker,
            ml,
            journal: Arc::clone(&self.journal),
            leases: Arc::clone(&self.leases),
        }
    }
}
