//! [`LoopbackExecutor`]: the executor side of the payload endpoints (DOMAIN.md 2.3, 6.1, and
//! LIVE-NETWORK.md 2.2 item 1) over real HTTP on loopback, and [`StaticDirectory`], an in-memory
//! [`ExecutorDirectory`].
//!
//! The fake answers `GET …/v1/inference/payloads?inference_id=…` as an executor's API node does:
//! it requires the four headers (400, or 401 for `Authorization`), refuses timestamps older than
//! 60 s or more than 10 s ahead (400), checks the requester's signature over the inference's
//! real epoch (not the header's) against the requester's registered keys (401), looks the
//! payloads up under that epoch, then epoch-1, then epoch+1 (404 when absent), and signs its
//! answer with the executor key.
//!
//! It answers `GET …/devshard/{version}/sessions/{escrow}/payloads?inference_id={decimal}` as
//! upstream's devshard host does: the same headers and timestamp rules, the requester's
//! signature over the decimal id and the header's epoch, the payloads stored under
//! `devshard:{escrow}:{id}` looked up under the header's epoch and its neighbours, then the
//! escrow's epoch and its neighbours, then epoch 0 (404 when absent), and the answer signed over
//! the decimal id. Payloads are stored as the devshard host stores them: the prompt as canonical
//! JSON without a trailing newline, the response as the completion's bytes.
//!
//! Scripted [`ExecutorReply`]s, per inference or for the next requests on either route, make it
//! serve tampered payloads, foreign signatures, errors, stalls, oversize bodies or redirects.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    io,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use async_trait::async_trait;
use bytes::Bytes;
use chain_source::{
    payloads::{
        hash,
        wire::{self, PayloadResponse},
    },
    signer, ExecutorDirectory, Signer, SigningKeys,
};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, StreamBody};
use hyper::{
    body::{Frame, Incoming},
    header, Request, Response, StatusCode,
};
use serde_json::json;
use tokio::net::TcpListener;

use crate::{ca::ServerTls, serve::percent_decode, watched::Watched};
use sha2::{Digest, Sha256};
use tokio_util::sync::{CancellationToken, DropGuard};
use validator_core::{
    devshard::{DevshardJob, DevshardKey},
    ports::{
        chain::{Inference, InferenceStatus},
        payload_source::Payloads,
    },
    testing::{payloads_for, MODEL},
};

/// Oldest request timestamp the executor accepts (upstream: 60 s).
pub const MAX_REQUEST_AGE: Duration = Duration::from_secs(60);

/// Furthest a request timestamp may lie ahead (upstream: 10 s).
pub const MAX_REQUEST_LEAD: Duration = Duration::from_secs(10);

/// The devshard runtime the fake's sessions run, a segment of their payload path.
pub const DEVSHARD_RUNTIME: &str = "v4";

/// Size of the chunks of an oversize body.
const FILLER_CHUNK: usize = 64 * 1024;

static FILLER: [u8; FILLER_CHUNK] = [b' '; FILLER_CHUNK];

/// Where the ML-node response fixtures live.
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/fixtures/ml-node/");

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A scripted answer to one authorised payload request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecutorReply {
    /// The stored payloads, signed (what unscripted requests get).
    Serve,
    /// The stored payloads with one byte of the prompt flipped, signed as served.
    FlipPrompt,
    /// The stored payloads with one byte of the response flipped, signed as served.
    FlipResponse,
    /// The stored payloads signed by a key nobody registered.
    UnrelatedSignature,
    /// 404, as for an absent payload.
    NotFound,
    /// This status (500 if it is not a valid one) with a short text body.
    Status(u16),
    /// Never answers; the request stays in flight until the client goes away.
    Hang,
    /// 200 with `bytes` bytes of filler, in 64 KiB chunks, announced in `Content-Length` or
    /// not (chunked).
    Oversize {
        /// Body length.
        bytes: u64,
        /// Whether the length is announced up front.
        content_length: bool,
    },
    /// 302 to this location.
    Redirect(String),
}

/// The on-chain commitment of stored payloads, as the chain's `Inference` record holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnChainHashes {
    /// SHA-256 hex of the canonical prompt.
    pub prompt_hash: String,
    /// SHA-256 hex of the response, plain or in the streamed form.
    pub response_hash: String,
}

impl OnChainHashes {
    /// The commitment of `payloads`.
    ///
    /// # Panics
    ///
    /// If a payload cannot be hashed; test payloads always can.
    #[allow(clippy::expect_used)]
    pub fn of(payloads: &Payloads) -> Self {
        Self {
            prompt_hash: hash::prompt_hash(&payloads.prompt).expect("the prompt is JSON"),
            response_hash: hash::response_hash(&payloads.response).expect("the response is JSON"),
        }
    }
}

/// What a devshard job carries about stored payloads: the raw SHA-256 of their bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DevshardHashes {
    /// SHA-256 of the prompt's bytes.
    pub prompt_hash: [u8; 32],
    /// SHA-256 of the response's bytes.
    pub response_hash: [u8; 32],
}

impl DevshardHashes {
    /// The hashes of `payloads`.
    pub fn of(payloads: &Payloads) -> Self {
        Self {
            prompt_hash: Sha256::digest(&payloads.prompt).into(),
            response_hash: Sha256::digest(&payloads.response).into(),
        }
    }
}

/// Where a devshard host stores an inference's payloads (upstream's `PayloadKey`):
/// `devshard:{escrow}:{inference_id}`.
pub fn devshard_key(escrow: &str, inference_id: u64) -> String {
    format!("devshard:{escrow}:{inference_id}")
}

/// The generated payloads of [`payloads_for`]`(devshard_key(escrow, inference_id))` as a devshard
/// host stores them: the prompt canonicalised (keys sorted, no whitespace, no trailing newline),
/// the response as the completion's bytes.
///
/// # Panics
///
/// Never: the generated prompt is JSON.
#[allow(clippy::expect_used)]
pub fn devshard_payloads(escrow: &str, inference_id: u64) -> Payloads {
    let generated = payloads_for(&devshard_key(escrow, inference_id));
    let canonical = hash::canonical_json(&generated.prompt).expect("the prompt is JSON");
    Payloads {
        prompt: Bytes::from(canonical.trim_end_matches('\n').to_owned()),
        response: generated.response,
    }
}

/// A request that reached the endpoint, with the status it was answered with (0 while pending
/// or for a stall).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutorRequest {
    /// The path requested.
    pub path: String,
    /// The `inference_id` query parameter, decoded.
    pub inference_id: Option<String>,
    /// The request headers, names lowercase (the first value of each).
    pub headers: BTreeMap<String, String>,
    /// The status answered.
    pub status: u16,
}

impl ExecutorRequest {
    /// A header by its lowercase name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(&name.to_ascii_lowercase()).map(String::as_str)
    }
}

struct Stored {
    inference_epoch: u64,
    storage_epoch: u64,
    payloads: Payloads,
}

struct State {
    signing_key: Signer,
    stored: HashMap<String, Stored>,
    requesters: HashMap<String, Vec<Vec<u8>>>,
    scripted: HashMap<String, VecDeque<ExecutorReply>>,
    next: VecDeque<ExecutorReply>,
    requests: Vec<ExecutorRequest>,
    disconnects: usize,
}

struct Shared {
    address: String,
    account_key: Signer,
    watched: Watched<State>,
}

/// An executor's payload endpoint on `127.0.0.1` with an ephemeral port, serving until dropped.
pub struct LoopbackExecutor {
    addr: SocketAddr,
    tls: bool,
    shared: Arc<Shared>,
    _shutdown: DropGuard,
}

impl LoopbackExecutor {
    /// Starts an executor with account `address` whose account key is `key`; it signs its
    /// answers with that key until [`LoopbackExecutor::sign_with`] says otherwise.
    ///
    /// # Panics
    ///
    /// If no loopback port can be bound; see [`LoopbackExecutor::try_start`].
    #[allow(clippy::expect_used)]
    pub async fn start(address: &str, key: Signer) -> Self {
        Self::try_start(address, key).await.expect("bind a loopback port for the fake executor")
    }

    /// Starts an executor, or says why no port could be bound.
    pub async fn try_start(address: &str, key: Signer) -> io::Result<Self> {
        Self::bind(address, key, None).await
    }

    /// As [`LoopbackExecutor::start`], serving over TLS with `tls`: the URL is `https`.
    ///
    /// # Panics
    ///
    /// If no loopback port can be bound.
    #[allow(clippy::expect_used)]
    pub async fn start_tls(address: &str, key: Signer, tls: ServerTls) -> Self {
        Self::bind(address, key, Some(tls))
            .await
            .expect("bind a loopback port for the fake executor")
    }

    async fn bind(address: &str, key: Signer, tls: Option<ServerTls>) -> io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            address: address.to_owned(),
            account_key: key.clone(),
            watched: Watched::new(State {
                signing_key: key,
                stored: HashMap::new(),
                requesters: HashMap::new(),
                scripted: HashMap::new(),
                next: VecDeque::new(),
                requests: Vec::new(),
                disconnects: 0,
            }),
        });
        let shutdown = CancellationToken::new();
        let handler = {
            let shared = Arc::clone(&shared);
            move |request| handle(Arc::clone(&shared), request)
        };
        let https = tls.is_some();
        let _shutdown = crate::serve::spawn(listener, tls, shutdown, handler);
        Ok(Self { addr, tls: https, shared, _shutdown })
    }

    /// The base URL, `http://127.0.0.1:{port}` (`https` over TLS): the executor's
    /// `inference_url`.
    pub fn url(&self) -> String {
        crate::serve::base_url(self.addr, self.tls)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The executor's account address.
    pub fn address(&self) -> &str {
        &self.shared.address
    }

    /// The executor's account key (compressed SEC1).
    pub fn public_key(&self) -> Vec<u8> {
        self.shared.account_key.public_key()
    }

    /// Lets `requester` fetch payloads when its requests are signed by one of `keys` (its
    /// account key and its grantees'); unregistered requesters get 401.
    pub fn register_requester(&self, requester: &str, keys: Vec<Vec<u8>>) {
        self.shared.watched.update(|state| state.requesters.insert(requester.to_owned(), keys));
    }

    /// Signs answers with `key` from now on (a grantee's warm key, or an unrelated one).
    pub fn sign_with(&self, key: Signer) {
        self.shared.watched.update(|state| state.signing_key = key);
    }

    /// Stores `payloads` for inference `id` of `epoch`, under that epoch, and returns their
    /// on-chain commitment.
    pub fn insert(&self, id: &str, epoch: u64, payloads: Payloads) -> OnChainHashes {
        self.insert_at(id, epoch, epoch, payloads)
    }

    /// Stores `payloads` for inference `id` of `inference_epoch` under `storage_epoch` (an
    /// executor that stored them at an epoch boundary).
    pub fn insert_at(
        &self,
        id: &str,
        inference_epoch: u64,
        storage_epoch: u64,
        payloads: Payloads,
    ) -> OnChainHashes {
        let hashes = OnChainHashes::of(&payloads);
        let stored = Stored { inference_epoch, storage_epoch, payloads };
        self.shared.watched.update(|state| state.stored.insert(id.to_owned(), stored));
        hashes
    }

    /// Stores the generated payloads of [`payloads_for`]`(id)`.
    pub fn insert_generated(&self, id: &str, epoch: u64) -> OnChainHashes {
        self.insert(id, epoch, payloads_for(id))
    }

    /// Forgets the payloads of `id`.
    pub fn remove(&self, id: &str) {
        self.shared.watched.update(|state| state.stored.remove(id));
    }

    /// The commitment of the payloads stored for `id`.
    pub fn hashes(&self, id: &str) -> Option<OnChainHashes> {
        self.shared.watched.lock().stored.get(id).map(|stored| OnChainHashes::of(&stored.payloads))
    }

    /// The payloads stored for `id`.
    pub fn payloads(&self, id: &str) -> Option<Payloads> {
        self.shared.watched.lock().stored.get(id).map(|stored| stored.payloads.clone())
    }

    /// The chain's record of the stored inference `id`: finished, executed by this executor,
    /// carrying the stored payloads' commitment, on the fakes' model.
    pub fn inference(&self, id: &str) -> Option<Inference> {
        let state = self.shared.watched.lock();
        let stored = state.stored.get(id)?;
        let hashes = OnChainHashes::of(&stored.payloads);
        Some(Inference {
            inference_id: id.into(),
            model: MODEL.into(),
            epoch_id: stored.inference_epoch,
            executed_by: self.shared.address.clone(),
            status: InferenceStatus::Finished,
            prompt_hash: hashes.prompt_hash,
            response_hash: hashes.response_hash,
            prompt_payload: String::new(),
            response_payload: String::new(),
        })
    }

    /// Stores `payloads` for devshard inference `inference_id` of `escrow`, whose epoch is
    /// `epoch`, under that epoch; returns what its job carries.
    pub fn insert_devshard(
        &self,
        escrow: &str,
        inference_id: u64,
        epoch: u64,
        payloads: Payloads,
    ) -> DevshardHashes {
        self.insert_devshard_at(escrow, inference_id, epoch, epoch, payloads)
    }

    /// Stores `payloads` for devshard inference `inference_id` of `escrow` (whose epoch is
    /// `escrow_epoch`) under `storage_epoch`.
    pub fn insert_devshard_at(
        &self,
        escrow: &str,
        inference_id: u64,
        escrow_epoch: u64,
        storage_epoch: u64,
        payloads: Payloads,
    ) -> DevshardHashes {
        let hashes = DevshardHashes::of(&payloads);
        let stored = Stored { inference_epoch: escrow_epoch, storage_epoch, payloads };
        let key = devshard_key(escrow, inference_id);
        self.shared.watched.update(|state| state.stored.insert(key, stored));
        hashes
    }

    /// Stores the generated [`devshard_payloads`] of `escrow` and `inference_id`.
    pub fn insert_devshard_generated(
        &self,
        escrow: &str,
        inference_id: u64,
        epoch: u64,
    ) -> DevshardHashes {
        self.insert_devshard(escrow, inference_id, epoch, devshard_payloads(escrow, inference_id))
    }

    /// Forgets the devshard payloads of `escrow` and `inference_id`.
    pub fn remove_devshard(&self, escrow: &str, inference_id: u64) {
        self.remove(&devshard_key(escrow, inference_id));
    }

    /// The job a session host hands the engine for the stored devshard inference: executed by
    /// this executor on the fakes' model in runtime [`DEVSHARD_RUNTIME`], with the stored
    /// payloads' hashes, the escrow's epoch and the response's usage as the claimed tokens.
    pub fn devshard_job(&self, escrow: &str, inference_id: u64) -> Option<DevshardJob> {
        let state = self.shared.watched.lock();
        let stored = state.stored.get(&devshard_key(escrow, inference_id))?;
        let hashes = DevshardHashes::of(&stored.payloads);
        let usage = serde_json::from_slice::<serde_json::Value>(&stored.payloads.response)
            .ok()
            .and_then(|response| response.get("usage").cloned())
            .unwrap_or_default();
        let tokens = |field: &str| usage.get(field).and_then(serde_json::Value::as_u64);
        Some(DevshardJob {
            key: DevshardKey { escrow_id: escrow.into(), inference_id },
            model: MODEL.into(),
            prompt_hash: hashes.prompt_hash,
            response_hash: hashes.response_hash,
            input_tokens: tokens("prompt_tokens").unwrap_or(0),
            output_tokens: tokens("completion_tokens").unwrap_or(0),
            epoch_id: stored.inference_epoch,
            executor_address: self.shared.address.as_str().into(),
            runtime_version: DEVSHARD_RUNTIME.into(),
            challenged: false,
        })
    }

    /// Queues replies for the next authorised requests for devshard inference `inference_id` of
    /// `escrow`, one each, in order.
    pub fn script_devshard(
        &self,
        escrow: &str,
        inference_id: u64,
        replies: impl IntoIterator<Item = ExecutorReply>,
    ) {
        self.script(&devshard_key(escrow, inference_id), replies);
    }

    /// Queues replies for the next authorised requests for inference `id`, one each, in order.
    pub fn script(&self, id: &str, replies: impl IntoIterator<Item = ExecutorReply>) {
        self.shared
            .watched
            .update(|state| state.scripted.entry(id.to_owned()).or_default().extend(replies));
    }

    /// Queues replies for the next authorised requests, on either route, for an inference
    /// without replies of its own.
    pub fn script_next(&self, replies: impl IntoIterator<Item = ExecutorReply>) {
        self.shared.watched.update(|state| state.next.extend(replies));
    }

    /// Every request to the endpoint, in arrival order.
    pub fn requests(&self) -> Vec<ExecutorRequest> {
        self.shared.watched.lock().requests.clone()
    }

    /// Requests whose client went away before the answer was complete.
    pub fn disconnects(&self) -> usize {
        self.shared.watched.lock().disconnects
    }

    /// Waits until at least `n` requests have arrived.
    pub async fn wait_requests(&self, n: usize) {
        self.shared.watched.wait_until(|state| state.requests.len() >= n).await;
    }

    /// Waits until at least `n` clients went away mid-answer.
    pub async fn wait_disconnects(&self, n: usize) {
        self.shared.watched.wait_until(|state| state.disconnects >= n).await;
    }
}

/// The payloads of an executor that served a response fixture of `../shared/fixtures/ml-node`
/// (`inference_response.json`, ...): the fixture's bytes as the response, and a chat request
/// for the fixture's model, as the executor's API node rewrites it, as the prompt.
pub fn fixture_payloads(name: &str) -> io::Result<Payloads> {
    let response = std::fs::read(format!("{FIXTURES}{name}"))?;
    let parsed: serde_json::Value = serde_json::from_slice(&response)
        .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err))?;
    let model = parsed.get("model").and_then(serde_json::Value::as_str).unwrap_or(MODEL);
    let prompt = json!({
        "model": model,
        "messages": [
            {"role": "system", "content": "Answer from the context."},
            {"role": "user", "content": "To whom did the Virgin Mary allegedly appear in 1858 in Lourdes France?"},
        ],
        "seed": 1_742_626_074,
        "temperature": 0.6,
        "logprobs": true,
        "top_logprobs": 3,
        "max_tokens": 100,
        "max_completion_tokens": 100,
        "skip_special_tokens": false,
    });
    Ok(Payloads { prompt: Bytes::from(prompt.to_string()), response: Bytes::from(response) })
}

// === StaticDirectory ===

/// An executor's inference URL and signing keys.
type DirectoryEntry = (String, SigningKeys);

/// An in-memory [`ExecutorDirectory`]: executor address to inference URL and signing keys.
/// Cloning shares the map.
#[derive(Debug, Clone, Default)]
pub struct StaticDirectory {
    entries: Arc<Mutex<HashMap<String, DirectoryEntry>>>,
}

impl StaticDirectory {
    /// An empty directory: every executor is unknown.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `executor`'s inference URL and signing keys (its account key, then its grantees').
    pub fn insert(&self, executor: &str, url: &str, keys: Vec<Vec<u8>>) {
        self.insert_keys(executor, url, SigningKeys::complete(keys));
    }

    /// Sets `executor`'s inference URL and signing keys as a lookup left them, complete or not.
    pub fn insert_keys(&self, executor: &str, url: &str, keys: SigningKeys) {
        lock(&self.entries).insert(executor.to_owned(), (url.to_owned(), keys));
    }

    /// Registers `fake` under its address, with its account key and `grantee_keys`.
    pub fn add_executor(&self, fake: &LoopbackExecutor, grantee_keys: Vec<Vec<u8>>) {
        let mut keys = vec![fake.public_key()];
        keys.extend(grantee_keys);
        self.insert(fake.address(), &fake.url(), keys);
    }
}

#[async_trait]
impl ExecutorDirectory for StaticDirectory {
    async fn inference_url(&self, executor: &str) -> chain_source::Result<String> {
        lock(&self.entries)
            .get(executor)
            .map(|(url, _)| url.clone())
            .ok_or_else(|| chain_source::Error::NotFound(format!("participant {executor}")))
    }

    async fn signing_keys(&self, executor: &str) -> chain_source::Result<SigningKeys> {
        lock(&self.entries)
            .get(executor)
            .map(|(_, keys)| keys.clone())
            .ok_or_else(|| chain_source::Error::NotFound(format!("account {executor}")))
    }
}

// === serving ===

type Body = UnsyncBoxBody<Bytes, io::Error>;

/// Counts the answer as abandoned by the client unless it was handed over in full.
struct Answering {
    shared: Arc<Shared>,
    finished: bool,
}

impl Answering {
    fn finish(&mut self) {
        self.finished = true;
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        if !self.finished {
            self.shared.watched.update(|state| state.disconnects += 1);
        }
    }
}

async fn handle(shared: Arc<Shared>, request: Request<Incoming>) -> io::Result<Response<Body>> {
    let path = request.uri().path().to_owned();
    let inference_id = request.uri().query().and_then(|query| query_param(query, "inference_id"));
    let headers: BTreeMap<String, String> = request
        .headers()
        .keys()
        .filter_map(|name| {
            let value = request.headers().get(name)?.to_str().ok()?;
            Some((name.as_str().to_owned(), value.to_owned()))
        })
        .collect();
    let index = shared.watched.update(|state| {
        state.requests.push(ExecutorRequest {
            path: path.clone(),
            inference_id: inference_id.clone(),
            headers: headers.clone(),
            status: 0,
        });
        state.requests.len() - 1
    });
    let answering = Answering { shared: Arc::clone(&shared), finished: false };
    let (response, hang) = answer(&shared, &path, inference_id.as_deref(), &headers);
    if hang {
        // Never completes; `answering` counts the disconnect when hyper drops this future.
        std::future::pending::<()>().await;
    }
    let status = response.0.as_u16();
    shared.watched.update(|state| {
        if let Some(request) = state.requests.get_mut(index) {
            request.status = status;
        }
    });
    Ok(build(response, answering))
}

/// What to answer: a status, a body plan and the content length to announce; and whether to
/// stall instead.
type Plan = (StatusCode, BodyPlan, Vec<(header::HeaderName, String)>);

enum BodyPlan {
    Whole(Bytes),
    Filler { bytes: u64, content_length: bool },
}

fn text(status: StatusCode, message: &str) -> Plan {
    (status, BodyPlan::Whole(Bytes::from(format!("{{\"message\":\"{message}\"}}"))), Vec::new())
}

/// Which payload route a path is, under any prefix of the executor's `inference_url`.
enum Route {
    Classic,
    Devshard { escrow: String },
}

fn route(path: &str) -> Option<Route> {
    if path.ends_with(&format!("/{}", wire::PAYLOADS_PATH)) {
        return Some(Route::Classic);
    }
    let segments: Vec<&str> = path.split('/').collect();
    match segments.as_slice() {
        [.., "devshard", version, "sessions", escrow, "payloads"]
            if !version.is_empty() && !escrow.is_empty() =>
        {
            Some(Route::Devshard { escrow: percent_decode(escrow, false) })
        }
        _ => None,
    }
}

/// Whether `storage` is `epoch` or next to it.
fn adjacent(storage: u64, epoch: u64) -> bool {
    storage == epoch || Some(storage) == epoch.checked_sub(1) || storage == epoch + 1
}

fn answer(
    shared: &Shared,
    path: &str,
    inference_id: Option<&str>,
    headers: &BTreeMap<String, String>,
) -> (Plan, bool) {
    let Some(route) = route(path) else {
        return (text(StatusCode::NOT_FOUND, "not found"), false);
    };
    let header = |name: &str| headers.get(&name.to_ascii_lowercase()).filter(|v| !v.is_empty());
    let Some(id) = inference_id.filter(|id| !id.is_empty()) else {
        return (text(StatusCode::BAD_REQUEST, "inference_id required"), false);
    };
    let (Some(requester), Some(timestamp), Some(epoch)) = (
        header(wire::HEADER_VALIDATOR_ADDRESS),
        header(wire::HEADER_TIMESTAMP),
        header(wire::HEADER_EPOCH_ID),
    ) else {
        return (text(StatusCode::BAD_REQUEST, "header required"), false);
    };
    let Some(signature) = header(wire::HEADER_AUTHORIZATION) else {
        return (text(StatusCode::UNAUTHORIZED, "Authorization header required"), false);
    };
    let (Ok(timestamp), Ok(header_epoch)) = (timestamp.parse::<i64>(), epoch.parse::<u64>()) else {
        return (text(StatusCode::BAD_REQUEST, "invalid header"), false);
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| i64::try_from(elapsed.as_nanos()).unwrap_or(i64::MAX));
    let age = now.saturating_sub(timestamp);
    if age > MAX_REQUEST_AGE.as_nanos() as i64 {
        return (text(StatusCode::BAD_REQUEST, "request timestamp too old"), false);
    }
    if age < -(MAX_REQUEST_LEAD.as_nanos() as i64) {
        return (text(StatusCode::BAD_REQUEST, "request timestamp in the future"), false);
    }

    let mut state = shared.watched.lock();
    let (key, epoch) = match &route {
        // The inference's real epoch authorises the request, whatever the header says.
        Route::Classic => {
            (id.to_owned(), state.stored.get(id).map_or(header_epoch, |s| s.inference_epoch))
        }
        // A devshard host checks the header's epoch.
        Route::Devshard { escrow } => (format!("devshard:{escrow}:{id}"), header_epoch),
    };
    let Some(keys) = state.requesters.get(requester) else {
        return (text(StatusCode::UNAUTHORIZED, "validator not found"), false);
    };
    let message = wire::request_signed_bytes(id, epoch, timestamp, requester);
    let valid = wire::decode_base64(signature)
        .is_some_and(|signature| keys.iter().any(|key| signer::verify(key, &message, &signature)));
    if !valid {
        return (text(StatusCode::UNAUTHORIZED, "invalid signature"), false);
    }
    if matches!(route, Route::Devshard { .. }) && id.parse::<u64>().is_err() {
        return (text(StatusCode::INTERNAL_SERVER_ERROR, "invalid inference_id"), false);
    }

    let reply = match state.scripted.get_mut(&key).and_then(VecDeque::pop_front) {
        Some(reply) => reply,
        None => state.next.pop_front().unwrap_or(ExecutorReply::Serve),
    };
    let found = state.stored.get(&key).filter(|stored| {
        let storage = stored.storage_epoch;
        match route {
            Route::Classic => adjacent(storage, epoch),
            Route::Devshard { .. } => {
                adjacent(storage, epoch)
                    || adjacent(storage, stored.inference_epoch)
                    || storage == 0
            }
        }
    });
    let (mut prompt, mut response) = match (&reply, found) {
        (ExecutorReply::Hang, _) => return (text(StatusCode::OK, ""), true),
        (ExecutorReply::Status(status), _) => {
            let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return (text(status, "scripted status"), false);
        }
        (ExecutorReply::Oversize { bytes, content_length }, _) => {
            let plan = BodyPlan::Filler { bytes: *bytes, content_length: *content_length };
            return ((StatusCode::OK, plan, Vec::new()), false);
        }
        (ExecutorReply::Redirect(location), _) => {
            let mut plan = text(StatusCode::FOUND, "moved");
            plan.2.push((header::LOCATION, location.clone()));
            return (plan, false);
        }
        (ExecutorReply::NotFound, _) | (_, None) => {
            return (text(StatusCode::NOT_FOUND, "payload not found"), false)
        }
        (_, Some(stored)) => (stored.payloads.prompt.to_vec(), stored.payloads.response.to_vec()),
    };
    match reply {
        ExecutorReply::FlipPrompt => flip(&mut prompt),
        ExecutorReply::FlipResponse => flip(&mut response),
        _ => {}
    }
    let key = match reply {
        ExecutorReply::UnrelatedSignature => unrelated_key(),
        _ => state.signing_key.clone(),
    };
    drop(state);
    let message = wire::executor_signed_bytes(id, &prompt, &response, &shared.address);
    let body = PayloadResponse {
        inference_id: id.to_owned(),
        prompt_payload: Bytes::from(prompt),
        response_payload: Bytes::from(response),
        executor_signature: wire::encode_base64(&key.sign(&message)),
    };
    match serde_json::to_vec(&body) {
        Ok(json) => ((StatusCode::OK, BodyPlan::Whole(Bytes::from(json)), Vec::new()), false),
        Err(_) => (text(StatusCode::INTERNAL_SERVER_ERROR, "failed to encode"), false),
    }
}

/// Flips the low bit of the middle byte: the payload changes, its length does not.
fn flip(bytes: &mut [u8]) {
    let middle = bytes.len() / 2;
    if let Some(byte) = bytes.get_mut(middle) {
        *byte ^= 1;
    }
}

/// A key no directory lists.
#[allow(clippy::expect_used)]
fn unrelated_key() -> Signer {
    Signer::from_bytes(&[0x5a; 32]).expect("0x5a.. is below the curve order")
}

fn build(plan: Plan, mut answering: Answering) -> Response<Body> {
    let (status, body, extra) = plan;
    let (length, body) = match body {
        BodyPlan::Whole(bytes) => {
            answering.finish();
            (
                Some(bytes.len() as u64),
                BodyExt::boxed_unsync(
                    http_body_util::Full::new(bytes).map_err(|never| match never {}),
                ),
            )
        }
        BodyPlan::Filler { bytes, content_length } => {
            let frames = futures_util::stream::unfold(
                (bytes, answering),
                |(left, mut answering)| async move {
                    if left == 0 {
                        answering.finish();
                        return None;
                    }
                    let n = left.min(FILLER_CHUNK as u64);
                    let frame = Frame::data(Bytes::from_static(&FILLER[..n as usize]));
                    Some((Ok::<_, io::Error>(frame), (left - n, answering)))
                },
            );
            (content_length.then_some(bytes), BodyExt::boxed_unsync(StreamBody::new(frames)))
        }
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    if let Some(length) = length {
        headers.insert(header::CONTENT_LENGTH, header::HeaderValue::from(length));
    }
    for (name, value) in extra {
        if let Ok(value) = header::HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
    response
}

/// The first value of `key` in a query string, `+` and `%XX` decoded.
fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(name, true) == key).then(|| percent_decode(value, true))
    })
}
