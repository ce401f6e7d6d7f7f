//! In-memory fakes of every port, with inspectable state and scripted failures, for this crate's
//! tests and (through the `test-util` feature) for other crates' tests.
//!
//! The fakes agree on one deterministic logprob per (token, rank), so a replay of a payload made
//! by [`payloads_for`] on [`MemoryMlNode`] scores exactly 1.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::Duration,
};

use async_trait::async_trait;
use bytes::Bytes;
use serde_json::{json, Value};
use tokio::{sync::Notify, time::Instant};

use crate::ports::{
    chain::{
        ChainClient, ChainError, EpochGroup, EpochState, Inference, InferenceId, InferencePage,
        InferenceStatus, InferenceSummary, MsgValidation, SubmitError, SubmitReceipt,
        ValidationDetails, ValidationParameters, ValidationParams, ValidatorPower,
    },
    journal::{Intent, Journal, JournalEntry, JournalError, SubmissionResult},
    ml_node::{MlNodeClient, ReplayError, ReplayRequest, ReplayResponse},
    model_lock::{
        LeaseRelease, LeaseRequest, LockError, MlNode, ModelLease, ModelLockBroker, NodeHealth,
    },
    payload_source::{PayloadError, PayloadSource, Payloads},
};
use crate::{devshard::DevshardJob, Outcome};

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The model every fake serves unless told otherwise.
pub const MODEL: &str = "Qwen/QwQ-32B";

/// The validator's own address in the fakes.
pub const SELF_ADDRESS: &str = "gonka1validator";

/// The executor of the fakes' inferences.
pub const EXECUTOR: &str = "gonka1executor";

/// The logprob both sides of the fakes give `token` at `rank` in a top list.
pub fn fake_logprob(token: &str, rank: usize) -> f64 {
    let spread = token.bytes().map(f64::from).sum::<f64>() % 7.0;
    -(rank as f64) * 1.5 - spread / 10.0
}

fn completion(positions: &[(String, Vec<String>)]) -> Value {
    let content: Vec<Value> = positions
        .iter()
        .map(|(token, top)| {
            let top: Vec<Value> = top
                .iter()
                .enumerate()
                .map(|(rank, t)| json!({"token": t, "logprob": fake_logprob(t, rank), "bytes": t.as_bytes()}))
                .collect();
            json!({"token": token, "logprob": fake_logprob(token, 0), "bytes": token.as_bytes(), "top_logprobs": top})
        })
        .collect();
    let text: String = positions.iter().map(|(token, _)| token.as_str()).collect();
    json!({
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 1_742_626_074,
        "model": MODEL,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": {"content": content},
            "finish_reason": "stop",
        }],
        "usage": {"prompt_tokens": 12, "completion_tokens": positions.len()},
    })
}

/// The validation threshold [`MemoryChain::set_epoch_models`] gives each model.
pub const THRESHOLD: rust_decimal::Decimal = rust_decimal::Decimal::from_parts(90, 0, 0, false, 2);

/// The token ids of the original [`payloads_for`] makes (Qwen's ids for "Okay", ",", " the",
/// " answer", "."): the executor asks for token ids, and classic validation refuses text.
pub const TOKENS: [&str; 5] = ["32313", "11", "279", "4226", "13"];

/// A prompt and an original response for `id`, as an executor would serve them: the [`TOKENS`],
/// three top logprobs each (the token, then the next two ids).
pub fn payloads_for(id: &str) -> Payloads {
    let prompt = json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": format!("question {id}")}],
        "seed": 42,
        "logprobs": true,
        "top_logprobs": 3,
        "max_tokens": 5000,
        "max_completion_tokens": 5000,
        "temperature": 0.7,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    let positions: Vec<(String, Vec<String>)> = TOKENS
        .iter()
        .map(|token| {
            let id: u64 = token.parse().unwrap_or_default();
            let top = vec![id.to_string(), (id + 1).to_string(), (id + 2).to_string()];
            ((*token).to_owned(), top)
        })
        .collect();
    Payloads {
        prompt: Bytes::from(prompt.to_string()),
        response: Bytes::from(completion(&positions).to_string()),
    }
}

/// A finished inference of `epoch` on [`MODEL`] executed by `executor`, with no committed hashes
/// and no legacy payloads.
pub fn finished_inference(id: &str, epoch: u64, executor: &str) -> Inference {
    Inference {
        inference_id: id.into(),
        model: MODEL.into(),
        epoch_id: epoch,
        executed_by: executor.into(),
        status: InferenceStatus::Finished,
        prompt_hash: String::new(),
        response_hash: String::new(),
        prompt_payload: String::new(),
        response_payload: String::new(),
    }
}

/// Sampling details of an inference by `executor` with reputation 0, low traffic and executor
/// power 1: a validator of power 1 chooses it with probability `1 / (total_power - 1)` (certainly
/// at the default `total_power` of 2).
pub fn chosen_details(id: &str, epoch: u64, executor: &str, total_power: u64) -> ValidationDetails {
    ValidationDetails {
        epoch_id: epoch,
        inference_id: id.into(),
        executor_id: executor.into(),
        executor_reputation: 0,
        traffic_basis: 10,
        executor_power: 1,
        model: MODEL.into(),
        total_power,
        created_at_block_height: 1,
    }
}

// === MemoryChain ===

/// Chain state the fake serves, scripted by the test.
#[derive(Default)]
struct ChainState {
    inferences: BTreeMap<InferenceId, Inference>,
    details: HashMap<InferenceId, ValidationDetails>,
    validator_powers: Vec<ValidatorPower>,
    params: ValidationParams,
    validated: HashMap<u64, Vec<InferenceId>>,
    groups: HashMap<(u64, String), EpochGroup>,
    current_group: Option<EpochGroup>,
    latest_epoch: Option<u64>,
    seeds: HashMap<u64, i64>,
    submitted: Vec<MsgValidation>,
    recorded: HashSet<(InferenceId, bool)>,
    submit_failures: VecDeque<SubmitError>,
    inference_failures: usize,
    panic_on_listing: bool,
    queries: HashMap<&'static str, usize>,
}

/// An in-memory chain: inference records, sampling parameters, epoch groups, and a record of
/// every submitted `MsgValidation`. It rejects a second non-revalidation submission for the same
/// inference as the chain does (`ErrDuplicateValidation`).
#[derive(Clone, Default)]
pub struct MemoryChain {
    state: Arc<Mutex<ChainState>>,
    submitted: Arc<Notify>,
}

impl MemoryChain {
    /// A chain at epoch 10 where [`SELF_ADDRESS`] is active and holds weight for [`MODEL`].
    pub fn new() -> Self {
        let chain = Self::default();
        {
            let mut state = lock(&chain.state);
            state.latest_epoch = Some(10);
            state.current_group = Some(EpochGroup {
                epoch_index: 10,
                validation_weights: vec![SELF_ADDRESS.into(), EXECUTOR.into()],
                ..EpochGroup::default()
            });
        }
        chain
    }

    /// Adds a finished inference of `epoch` with the default model, and sampling details that
    /// make every validator with power 1 choose it (reputation 0, low traffic, p = 1).
    pub fn add_inference(&self, id: &str, epoch: u64) -> Inference {
        let inference = finished_inference(id, epoch, EXECUTOR);
        let details = chosen_details(id, epoch, EXECUTOR, 2);
        let mut state = lock(&self.state);
        state.inferences.insert(id.into(), inference.clone());
        state.details.insert(id.into(), details);
        for power in [ValidatorPower { power: 1, epoch_index: epoch }] {
            if !state.validator_powers.contains(&power) {
                state.validator_powers.push(power);
            }
        }
        inference
    }

    /// Replaces an inference record (status, legacy payloads, ...).
    pub fn put_inference(&self, inference: Inference) {
        lock(&self.state).inferences.insert(inference.inference_id.clone(), inference);
    }

    /// Changes the status of an inference.
    pub fn set_status(&self, id: &str, status: InferenceStatus) {
        if let Some(inference) = lock(&self.state).inferences.get_mut(&InferenceId::from(id)) {
            inference.status = status;
        }
    }

    /// Replaces the sampling details of an inference.
    pub fn set_details(&self, details: ValidationDetails) {
        lock(&self.state).details.insert(details.inference_id.clone(), details);
    }

    /// Replaces this validator's powers.
    pub fn set_validator_powers(&self, powers: Vec<ValidatorPower>) {
        lock(&self.state).validator_powers = powers;
    }

    /// Marks ids as already validated by this validator in `epoch`.
    pub fn set_validated(&self, epoch: u64, ids: &[&str]) {
        lock(&self.state).validated.insert(epoch, ids.iter().map(|id| (*id).into()).collect());
    }

    /// Makes [`SELF_ADDRESS`] hold weight for `models` in `epoch`.
    pub fn set_epoch_models(&self, epoch: u64, models: &[&str]) {
        let mut state = lock(&self.state);
        state.groups.insert(
            (epoch, String::new()),
            EpochGroup {
                epoch_index: epoch,
                sub_group_models: models.iter().map(|m| (*m).to_owned()).collect(),
                ..EpochGroup::default()
            },
        );
        for model in models {
            state.groups.insert(
                (epoch, (*model).to_owned()),
                EpochGroup {
                    epoch_index: epoch,
                    model: (*model).to_owned(),
                    validation_weights: vec![SELF_ADDRESS.into(), EXECUTOR.into()],
                    has_model_snapshot: true,
                    validation_threshold: Some(THRESHOLD),
                    ..EpochGroup::default()
                },
            );
        }
    }

    /// Whether [`SELF_ADDRESS`] is active in the current epoch.
    pub fn set_active(&self, active: bool) {
        let mut state = lock(&self.state);
        if let Some(group) = &mut state.current_group {
            group.validation_weights.retain(|member| member != SELF_ADDRESS);
            if active {
                group.validation_weights.push(SELF_ADDRESS.into());
            }
        }
    }

    /// Sets the latest epoch; `None` makes the epoch-state query fail.
    pub fn set_latest_epoch(&self, epoch: Option<u64>) {
        lock(&self.state).latest_epoch = epoch;
    }

    /// Sets the seed returned for `epoch` (default: the epoch number).
    pub fn set_seed(&self, epoch: u64, seed: i64) {
        lock(&self.state).seeds.insert(epoch, seed);
    }

    /// Makes the next submissions fail with these errors, in order.
    pub fn fail_submissions(&self, errors: impl IntoIterator<Item = SubmitError>) {
        lock(&self.state).submit_failures.extend(errors);
    }

    /// Makes the next `n` inference queries fail.
    pub fn fail_inference_queries(&self, n: usize) {
        lock(&self.state).inference_failures = n;
    }

    /// Makes the inference listing panic, as a buggy adapter might.
    pub fn panic_on_listing(&self, panic: bool) {
        lock(&self.state).panic_on_listing = panic;
    }

    /// Every message submitted and accepted so far.
    pub fn submitted(&self) -> Vec<MsgValidation> {
        lock(&self.state).submitted.clone()
    }

    /// How many times a query ran, by method name.
    pub fn queries(&self, method: &str) -> usize {
        lock(&self.state).queries.get(method).copied().unwrap_or(0)
    }

    /// Waits until at least `n` messages were accepted.
    pub async fn wait_submitted(&self, n: usize) {
        loop {
            let notified = self.submitted.notified();
            if lock(&self.state).submitted.len() >= n {
                return;
            }
            notified.await;
        }
    }

    fn count(&self, method: &'static str) -> MutexGuard<'_, ChainState> {
        let mut state = lock(&self.state);
        *state.queries.entry(method).or_default() += 1;
        state
    }
}

#[async_trait]
impl ChainClient for MemoryChain {
    fn account_address(&self) -> &str {
        SELF_ADDRESS
    }

    async fn inference(&self, id: &InferenceId) -> Result<Inference, ChainError> {
        let mut state = self.count("inference");
        if state.inference_failures > 0 {
            state.inference_failures -= 1;
            return Err(ChainError::Failed("scripted failure".into()));
        }
        state.inferences.get(id).cloned().ok_or(ChainError::NotFound)
    }

    async fn inferences_page(
        &self,
        page_key: Option<Vec<u8>>,
        limit: u32,
    ) -> Result<InferencePage, ChainError> {
        let state = self.count("inferences_page");
        if state.panic_on_listing {
            drop(state);
            panic!("scripted panic in the inference listing");
        }
        let start = page_key
            .and_then(|key| String::from_utf8(key).ok())
            .and_then(|key| key.parse::<usize>().ok())
            .unwrap_or(0);
        let limit = limit as usize;
        let inferences: Vec<InferenceSummary> = state
            .inferences
            .values()
            .skip(start)
            .take(limit)
            .map(|inference| InferenceSummary {
                inference_id: inference.inference_id.clone(),
                epoch_id: inference.epoch_id,
                model: inference.model.clone(),
            })
            .collect();
        let next = start + inferences.len();
        let next_key = (next < state.inferences.len()).then(|| next.to_string().into_bytes());
        Ok(InferencePage { inferences, next_key })
    }

    async fn validation_parameters(
        &self,
        ids: &[InferenceId],
    ) -> Result<ValidationParameters, ChainError> {
        let state = self.count("validation_parameters");
        Ok(ValidationParameters {
            details: ids.iter().filter_map(|id| state.details.get(id).cloned()).collect(),
            validator_powers: state.validator_powers.clone(),
            current_height: 100,
            params: state.params.clone(),
        })
    }

    async fn validated_inferences(&self, epoch: u64) -> Result<Vec<InferenceId>, ChainError> {
        let state = self.count("validated_inferences");
        state.validated.get(&epoch).cloned().ok_or(ChainError::NotFound)
    }

    async fn epoch_group(&self, epoch: u64, model: &str) -> Result<EpochGroup, ChainError> {
        let state = self.count("epoch_group");
        state.groups.get(&(epoch, model.to_owned())).cloned().ok_or(ChainError::NotFound)
    }

    async fn current_epoch_group(&self) -> Result<EpochGroup, ChainError> {
        let state = self.count("current_epoch_group");
        state.current_group.clone().ok_or(ChainError::NotFound)
    }

    async fn validation_params(&self) -> Result<ValidationParams, ChainError> {
        let state = self.count("validation_params");
        Ok(state.params.clone())
    }

    async fn epoch_state(&self) -> Result<EpochState, ChainError> {
        let state = self.count("epoch_state");
        state
            .latest_epoch
            .map(|latest_epoch| EpochState { latest_epoch })
            .ok_or_else(|| ChainError::Failed("epoch state unknown".into()))
    }

    async fn seed_for_epoch(&self, epoch: u64) -> Result<i64, ChainError> {
        let state = self.count("seed_for_epoch");
        Ok(state.seeds.get(&epoch).copied().unwrap_or(epoch as i64))
    }

    async fn submit_validation(&self, msg: &MsgValidation) -> Result<SubmitReceipt, SubmitError> {
        let mut state = self.count("submit_validation");
        if let Some(err) = state.submit_failures.pop_front() {
            return Err(err);
        }
        let key = (msg.inference_id.clone(), msg.revalidation);
        if !msg.revalidation && !state.recorded.insert(key) {
            return Err(SubmitError::Duplicate);
        }
        // The chain appends accepted validations to the validator's set of the inference's epoch.
        if !msg.revalidation {
            if let Some(epoch) = state.inferences.get(&msg.inference_id).map(|i| i.epoch_id) {
                state.validated.entry(epoch).or_default().push(msg.inference_id.clone());
            }
        }
        state.submitted.push(msg.clone());
        let tx_hash = format!("TX{}", state.submitted.len());
        drop(state);
        self.submitted.notify_waiters();
        Ok(SubmitReceipt { tx_hash: Some(tx_hash) })
    }
}

/// The completion an ML node answers to the replay request `body`: the enforced tokens, each
/// with the [`fake_logprob`]s of its top tokens, so it scores exactly 1 against the original
/// made by [`payloads_for`].
pub fn echo_completion(body: &Value) -> Bytes {
    let positions: Vec<(String, Vec<String>)> = body["enforced_tokens"]["tokens"]
        .as_array()
        .map(|tokens| {
            tokens
                .iter()
                .map(|t| {
                    let token = t["token"].as_str().unwrap_or_default().to_owned();
                    let top = t["top_tokens"]
                        .as_array()
                        .map(|top| {
                            top.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect()
                        })
                        .unwrap_or_default();
                    (token, top)
                })
                .collect()
        })
        .unwrap_or_default();
    Bytes::from(completion(&positions).to_string())
}

// === MemoryPayloads ===

#[derive(Default)]
struct PayloadState {
    payloads: HashMap<InferenceId, Payloads>,
    scripts: HashMap<InferenceId, VecDeque<PayloadError>>,
    calls: HashMap<InferenceId, Vec<Instant>>,
    hang: bool,
}

/// An in-memory payload source. Serves [`payloads_for`] for every id unless scripted: a queue
/// of errors per id is served first, one per call.
#[derive(Clone, Default)]
pub struct MemoryPayloads {
    state: Arc<Mutex<PayloadState>>,
    called: Arc<Notify>,
}

impl MemoryPayloads {
    /// Serves `payloads` for `id` instead of the default.
    pub fn set(&self, id: &str, payloads: Payloads) {
        lock(&self.state).payloads.insert(id.into(), payloads);
    }

    /// Makes the next fetches of `id` fail with `errors`, in order.
    pub fn script(&self, id: &str, errors: impl IntoIterator<Item = PayloadError>) {
        lock(&self.state).scripts.entry(id.into()).or_default().extend(errors);
    }

    /// Makes every fetch hang until it is dropped.
    pub fn hang(&self, hang: bool) {
        lock(&self.state).hang = hang;
    }

    /// When each fetch of `id` started.
    pub fn calls(&self, id: &str) -> Vec<Instant> {
        lock(&self.state).calls.get(&InferenceId::from(id)).cloned().unwrap_or_default()
    }

    /// Waits until `id` was fetched at least `n` times.
    pub async fn wait_calls(&self, id: &str, n: usize) {
        loop {
            let called = self.called.notified();
            if self.calls(id).len() >= n {
                return;
            }
            called.await;
        }
    }
}

#[async_trait]
impl PayloadSource for MemoryPayloads {
    async fn fetch(&self, inference: &Inference) -> Result<Payloads, PayloadError> {
        self.serve(&inference.inference_id).await
    }

    /// Serves the job under its [`journal_id`](crate::devshard::DevshardKey::journal_id), so
    /// [`set`](MemoryPayloads::set) and [`script`](MemoryPayloads::script) address it by that.
    async fn fetch_devshard(&self, job: &DevshardJob) -> Result<Payloads, PayloadError> {
        self.serve(&job.key.journal_id()).await
    }
}

impl MemoryPayloads {
    async fn serve(&self, id: &InferenceId) -> Result<Payloads, PayloadError> {
        let result = {
            let mut state = lock(&self.state);
            state.calls.entry(id.clone()).or_default().push(Instant::now());
            if state.hang {
                None
            } else if let Some(err) = state.scripts.get_mut(id).and_then(VecDeque::pop_front) {
                Some(Err(err))
            } else {
                Some(Ok(state
                    .payloads
                    .get(id)
                    .cloned()
                    .unwrap_or_else(|| payloads_for(id.as_str()))))
            }
        };
        self.called.notify_waiters();
        match result {
            Some(result) => result,
            None => std::future::pending().await,
        }
    }
}

// === MemoryBroker ===

struct BrokerShared {
    models: Mutex<HashSet<String>>,
    max_concurrent: usize,
    held: AtomicUsize,
    peak: AtomicUsize,
    failures: AtomicUsize,
}

/// A broker over one node serving a set of models with `max_concurrent` slots. Records the
/// current and peak number of leases and how many were released as failed.
#[derive(Clone)]
pub struct MemoryBroker {
    shared: Arc<BrokerShared>,
}

impl MemoryBroker {
    /// One node serving [`MODEL`] with `max_concurrent` slots.
    pub fn new(max_concurrent: usize) -> Self {
        Self {
            shared: Arc::new(BrokerShared {
                models: Mutex::new(HashSet::from([MODEL.to_owned()])),
                max_concurrent,
                held: AtomicUsize::new(0),
                peak: AtomicUsize::new(0),
                failures: AtomicUsize::new(0),
            }),
        }
    }

    /// Replaces the models served.
    pub fn set_models(&self, models: &[&str]) {
        *lock(&self.shared.models) = models.iter().map(|m| (*m).to_owned()).collect();
    }

    /// Leases held now.
    pub fn held(&self) -> usize {
        self.shared.held.load(Ordering::SeqCst)
    }

    /// Most leases held at once.
    pub fn peak(&self) -> usize {
        self.shared.peak.load(Ordering::SeqCst)
    }

    /// Leases released with [`NodeHealth::Failed`].
    pub fn failures(&self) -> usize {
        self.shared.failures.load(Ordering::SeqCst)
    }
}

struct MemoryRelease(Arc<BrokerShared>);

impl LeaseRelease for MemoryRelease {
    fn release(self: Box<Self>, health: NodeHealth) {
        self.0.held.fetch_sub(1, Ordering::SeqCst);
        if health == NodeHealth::Failed {
            self.0.failures.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[async_trait]
impl ModelLockBroker for MemoryBroker {
    async fn acquire(&self, request: &LeaseRequest<'_>) -> Result<ModelLease, LockError> {
        self.lease(request.model)
    }

    fn serves(&self, model: &str) -> bool {
        lock(&self.shared.models).contains(model)
    }

    fn free_slots(&self, model: &str) -> Option<usize> {
        if !self.serves(model) {
            return Some(0);
        }
        Some(self.shared.max_concurrent.saturating_sub(self.shared.held.load(Ordering::SeqCst)))
    }
}

impl MemoryBroker {
    /// Takes a slot at once, or fails with [`LockError::NoNode`].
    pub fn lease(&self, model: &str) -> Result<ModelLease, LockError> {
        let no_node = || LockError::NoNode { model: model.to_owned() };
        if !self.serves(model) {
            return Err(no_node());
        }
        let shared = &self.shared;
        shared
            .held
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |held| {
                (held < shared.max_concurrent).then_some(held + 1)
            })
            .map_err(|_| no_node())?;
        shared.peak.fetch_max(shared.held.load(Ordering::SeqCst), Ordering::SeqCst);
        let node = MlNode { id: "node-0".into(), address: "mem://node-0".into() };
        Ok(ModelLease::new(node, Box::new(MemoryRelease(Arc::clone(shared)))))
    }
}

// === MemoryMlNode ===

/// A scripted answer of [`MemoryMlNode`].
#[derive(Debug, Clone, PartialEq)]
pub enum MlScript {
    /// Never answers.
    Hang,
    /// Fails with this error.
    Fail(ReplayError),
    /// Answers 400/422.
    Reject(u16),
    /// Answers this body.
    Body(Bytes),
}

#[derive(Default)]
struct MlState {
    script: VecDeque<MlScript>,
    requests: Vec<Value>,
}

/// An in-memory ML node: echoes the enforced tokens with the logprobs of [`fake_logprob`] after
/// a fixed latency, or follows a script. Records requests and the current and peak concurrency.
#[derive(Clone)]
pub struct MemoryMlNode {
    state: Arc<Mutex<MlState>>,
    latency: Duration,
    in_flight: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    calls: Arc<AtomicUsize>,
}

impl MemoryMlNode {
    /// A node answering after `latency`.
    pub fn new(latency: Duration) -> Self {
        Self {
            state: Arc::default(),
            latency,
            in_flight: Arc::default(),
            peak: Arc::default(),
            calls: Arc::default(),
        }
    }

    /// Queues scripted answers for the next calls.
    pub fn script(&self, answers: impl IntoIterator<Item = MlScript>) {
        lock(&self.state).script.extend(answers);
    }

    /// Replays in flight now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Most replays in flight at once.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }

    /// Replays started.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Every request body received, parsed.
    pub fn requests(&self) -> Vec<Value> {
        lock(&self.state).requests.clone()
    }
}

struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl MlNodeClient for MemoryMlNode {
    async fn replay(
        &self,
        _node: &MlNode,
        request: &ReplayRequest,
    ) -> Result<ReplayResponse, ReplayError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        let _in_flight = InFlight(Arc::clone(&self.in_flight));
        let body: Value = serde_json::from_slice(&request.body)
            .map_err(|err| ReplayError::BadResponse(err.to_string()))?;
        let script = {
            let mut state = lock(&self.state);
            state.requests.push(body.clone());
            state.script.pop_front()
        };
        tokio::time::sleep(self.latency).await;
        match script {
            None => Ok(ReplayResponse::Completed(echo_completion(&body))),
            Some(MlScript::Body(bytes)) => Ok(ReplayResponse::Completed(bytes)),
            Some(MlScript::Reject(status)) => Ok(ReplayResponse::Rejected { status }),
            Some(MlScript::Fail(err)) => Err(err),
            Some(MlScript::Hang) => std::future::pending().await,
        }
    }
}

/// The five fakes, wired together, and the [`Ports`](crate::Ports) over them.
#[derive(Clone)]
pub struct MemoryPorts {
    /// The chain.
    pub chain: MemoryChain,
    /// The payload source.
    pub payloads: MemoryPayloads,
    /// The broker.
    pub broker: MemoryBroker,
    /// The ML node.
    pub ml: MemoryMlNode,
    /// The journal.
    pub journal: MemoryJournal,
}

impl MemoryPorts {
    /// MemoryPorts with an ML node of the given latency and a broker as wide as `slots`.
    pub fn new(latency: Duration, broker_slots: usize) -> Self {
        Self {
            chain: MemoryChain::new(),
            payloads: MemoryPayloads::default(),
            broker: MemoryBroker::new(broker_slots),
            ml: MemoryMlNode::new(latency),
            journal: MemoryJournal::default(),
        }
    }

    /// The ports over these fakes.
    pub fn ports(&self) -> crate::Ports {
        crate::Ports {
            chain: Arc::new(self.chain.clone()),
            payloads: Arc::new(self.payloads.clone()),
            broker: Arc::new(self.broker.clone()),
            ml: Arc::new(self.ml.clone()),
            journal: Arc::new(self.journal.clone()),
            leases: Arc::new(crate::ports::SingleReplica),
        }
    }
}

/// A [`Journal`] in memory: every entry kept, intents tracked to their answers, and a switch
/// that makes intents fail. Clones share the state, so a second engine on a clone sees what
/// the first one wrote, as a restarted process sees its journal file.
#[derive(Clone, Default)]
pub struct MemoryJournal {
    state: Arc<Mutex<JournalState>>,
}

#[derive(Default)]
struct JournalState {
    entries: Vec<JournalEntry>,
    /// Intents by message id, in commit order, with their last answer.
    intents: Vec<(Intent, Option<SubmissionResult>)>,
    fail_intents: bool,
}

impl MemoryJournal {
    /// Every history entry recorded, in order.
    pub fn entries(&self) -> Vec<JournalEntry> {
        lock(&self.state).entries.clone()
    }

    /// Every intent committed, with its last answer.
    pub fn intents(&self) -> Vec<(Intent, Option<SubmissionResult>)> {
        lock(&self.state).intents.clone()
    }

    /// Makes [`Journal::intend`] fail (or succeed again).
    pub fn fail_intents(&self, fail: bool) {
        lock(&self.state).fail_intents = fail;
    }

    /// Commits an intent directly, as a crashed process left it.
    pub fn leave_open(&self, intent: Intent) {
        lock(&self.state).intents.push((intent, None));
    }
}

#[async_trait]
impl Journal for MemoryJournal {
    fn record(&self, entry: JournalEntry) {
        let mut state = lock(&self.state);
        if let JournalEntry::Submission { msg_id, result, .. } = &entry {
            if let Some((_, last)) =
                state.intents.iter_mut().rev().find(|(intent, _)| &intent.msg.id == msg_id)
            {
                *last = Some(result.clone());
            }
        }
        state.entries.push(entry);
    }

    async fn intend(&self, intent: &Intent) -> Result<(), JournalError> {
        let mut state = lock(&self.state);
        if state.fail_intents {
            return Err(JournalError("disk full".into()));
        }
        if !state.intents.iter().any(|(known, _)| known.msg.id == intent.msg.id) {
            state.intents.push((intent.clone(), None));
        }
        Ok(())
    }

    async fn open_intents(&self) -> Result<Vec<Intent>, JournalError> {
        let state = lock(&self.state);
        Ok(state
            .intents
            .iter()
            .filter(|(_, last)| last.as_ref().is_none_or(|result| !result.closes()))
            .map(|(intent, _)| intent.clone())
            .collect())
    }

    async fn already_sent(
        &self,
        inference_id: &InferenceId,
        revalidation: bool,
    ) -> Result<bool, JournalError> {
        let state = lock(&self.state);
        let landed = state.intents.iter().any(|(intent, last)| {
            intent.msg.inference_id == *inference_id
                && intent.msg.revalidation == revalidation
                && matches!(
                    last,
                    Some(
                        SubmissionResult::Landed { .. }
                            | SubmissionResult::Duplicate
                            | SubmissionResult::ReconciledLanded
                            | SubmissionResult::ReconciledUnconfirmed
                    )
                )
        });
        Ok(landed)
    }

    fn last_run_id(&self) -> u64 {
        lock(&self.state)
            .entries
            .iter()
            .filter_map(|entry| match entry {
                JournalEntry::RunStarted { run_id, .. } => Some(*run_id),
                _ => None,
            })
            .max()
            .unwrap_or(0)
    }
}

/// The shared lease store of in-memory replicas: a stand-in for the database several
/// processes share. A live replica's leases never expire (its renewals always land); after
/// [`LeaseTable::kill`] its leases expire one TTL later, by Tokio's clock, so paused-time tests
/// can step over the expiry. A takeover lists the journal's open intents of the key with age
/// zero (the taker waits out a whole broadcast before it checks them).
#[derive(Clone, Default)]
pub struct LeaseTable {
    state: Arc<Mutex<LeaseRows>>,
    journal: MemoryJournal,
}

#[derive(Default)]
struct LeaseRows {
    rows: HashMap<String, LeaseRow>,
    dead: HashMap<String, Instant>,
}

struct LeaseRow {
    holder: String,
    done: Option<Option<Outcome>>,
}

impl LeaseTable {
    /// A table whose takeovers read open intents from `journal`, the replicas' shared journal.
    pub fn new(journal: MemoryJournal) -> Self {
        Self { state: Arc::default(), journal }
    }

    /// A replica on this table, named `name`, whose leases expire `ttl` after it dies.
    pub fn replica(&self, name: &str, ttl: Duration) -> MemoryLeases {
        MemoryLeases { table: self.clone(), name: name.to_owned(), ttl, takeovers: Arc::default() }
    }

    /// Stops `name`'s renewals, as a killed process: its leases expire one TTL from now.
    pub fn kill(&self, name: &str) {
        lock(&self.state).dead.insert(name.to_owned(), Instant::now());
    }

    /// The keys finished (marked done) and by whom.
    pub fn done(&self) -> Vec<(String, String)> {
        let state = lock(&self.state);
        let mut done: Vec<_> = state
            .rows
            .iter()
            .filter(|(_, row)| row.done.is_some())
            .map(|(key, row)| (key.clone(), row.holder.clone()))
            .collect();
        done.sort();
        done
    }
}

/// One replica's view of a [`LeaseTable`].
#[derive(Clone)]
pub struct MemoryLeases {
    table: LeaseTable,
    name: String,
    ttl: Duration,
    takeovers: Arc<AtomicUsize>,
}

impl MemoryLeases {
    /// Leases this replica took over from dead ones.
    pub fn takeovers(&self) -> usize {
        self.takeovers.load(Ordering::Relaxed)
    }

    fn expires_at(&self, rows: &LeaseRows, holder: &str) -> Option<Instant> {
        rows.dead.get(holder).map(|died| *died + self.ttl)
    }
}

#[async_trait]
impl crate::ports::Leases for MemoryLeases {
    fn replica(&self) -> &str {
        &self.name
    }

    fn ttl(&self) -> Duration {
        self.ttl
    }

    async fn acquire(
        &self,
        key: &crate::ports::lease::LeaseKey,
    ) -> Result<crate::ports::lease::Acquired, crate::ports::lease::LeaseError> {
        use crate::ports::lease::{Acquired, OpenIntent, Takeover};
        let takeover = {
            let mut state = lock(&self.table.state);
            if state.dead.contains_key(&self.name) {
                return Err(crate::ports::lease::LeaseError("this replica is dead".into()));
            }
            let expiry = state.rows.get(key.as_str()).map(|row| {
                (row.holder.clone(), self.expires_at(&state, &row.holder), row.done.clone())
            });
            let takeover = match expiry {
                None => None,
                Some((by, _, Some(outcome))) => return Ok(Acquired::Done { outcome, by }),
                Some((holder, _, None)) if holder == self.name => None,
                Some((holder, Some(expires), None)) if expires <= Instant::now() => Some(holder),
                Some((holder, expires, None)) => {
                    let remaining =
                        expires.map_or(self.ttl, |at| at.saturating_duration_since(Instant::now()));
                    return Ok(Acquired::Busy { holder, remaining });
                }
            };
            state.rows.insert(
                key.as_str().to_owned(),
                LeaseRow { holder: self.name.clone(), done: None },
            );
            takeover
        };
        let Some(from) = takeover else { return Ok(Acquired::Held { takeover: None }) };
        self.takeovers.fetch_add(1, Ordering::Relaxed);
        let open = self.table.journal.open_intents().await.unwrap_or_default();
        let open_intents = open
            .into_iter()
            .filter(|intent| {
                key.classic_parts()
                    == Some((intent.msg.inference_id.as_str(), intent.msg.revalidation))
            })
            .map(|intent| OpenIntent { intent, age: Duration::ZERO })
            .collect();
        Ok(Acquired::Held { takeover: Some(Takeover { from, open_intents }) })
    }

    fn held(&self, key: &crate::ports::lease::LeaseKey) -> bool {
        let state = lock(&self.table.state);
        !state.dead.contains_key(&self.name)
            && state
                .rows
                .get(key.as_str())
                .is_some_and(|row| row.holder == self.name && row.done.is_none())
    }

    async fn release(
        &self,
        key: &crate::ports::lease::LeaseKey,
        outcome: Option<&Outcome>,
    ) -> Result<(), crate::ports::lease::LeaseError> {
        let mut state = lock(&self.table.state);
        let ours = state.rows.get(key.as_str()).is_some_and(|row| row.holder == self.name);
        if ours {
            match outcome {
                Some(outcome) => {
                    if let Some(row) = state.rows.get_mut(key.as_str()) {
                        row.done = Some(Some(outcome.clone()));
                    }
                }
                None => {
                    state.rows.remove(key.as_str());
                }
            }
        }
        Ok(())
    }

    fn status(&self) -> crate::ports::lease::LeaseStatus {
        let state = lock(&self.table.state);
        let held =
            state.rows.values().filter(|row| row.holder == self.name && row.done.is_none()).count();
        crate::ports::lease::LeaseStatus {
            replica: self.name.clone(),
            shared: true,
            held,
            leader: false,
            takeovers: self.takeovers() as u64,
            lost: 0,
            ttl_ms: u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX),
        }
    }
}
