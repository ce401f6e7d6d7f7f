//! [`LoopbackMlNode`]: an ML node served over real HTTP on loopback, for tests of the HTTP adapter,
//! the demo and benchmarks.
//!
//! It answers `POST …/v1/chat/completions` with [`echo_completion`] of the request (so a replay
//! of a payload made by [`payloads_for`](crate::memory::payloads_for) scores exactly 1), after a
//! configurable latency, unless a scripted [`Reply`] says otherwise. `GET /health` answers 200
//! (or 503 after [`LoopbackMlNode::set_healthy`]`(false)`). Any other path answers 404.

use std::{
    collections::VecDeque,
    io,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, StreamBody};
use hyper::{
    body::{Frame, Incoming},
    header, Request, Response, StatusCode,
};
use rand::{rngs::SmallRng, Rng, SeedableRng};
use serde_json::Value;
use tokio::{net::TcpListener, sync::Notify, time::Instant};
use tokio_util::sync::{CancellationToken, DropGuard};
use validator_core::testing::echo_completion;

use crate::ca::ServerTls;

/// The health path the fake answers.
pub const HEALTH_PATH: &str = "/health";

/// The chat-completions path suffix the fake answers.
const COMPLETIONS_SUFFIX: &str = "/v1/chat/completions";

/// Size of the chunks of an [`Reply::Oversize`] body.
const FILLER_CHUNK: usize = 64 * 1024;

static FILLER: [u8; FILLER_CHUNK] = [b' '; FILLER_CHUNK];

/// How long the fake waits before it answers a chat-completion request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Latency {
    /// The same wait for every request.
    Fixed(Duration),
    /// A uniform random wait in `min..=max`, drawn from a generator seeded with `seed`.
    Uniform {
        /// Shortest wait.
        min: Duration,
        /// Longest wait.
        max: Duration,
        /// Seed of the generator.
        seed: u64,
    },
}

/// A scripted answer to one chat-completion request. Every reply but [`Reply::Hang`] comes
/// after the configured [`Latency`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// 200 with the echo completion (what unscripted requests get).
    Echo,
    /// Never answers; the request stays in flight until the client goes away.
    Hang,
    /// This status (500 if it is not a valid one) with this body.
    Status(u16, Bytes),
    /// 200 with these body bytes.
    Body(Bytes),
    /// 200 with a body that is not JSON.
    Malformed,
    /// 200 announcing the echo completion's length, then half of it, then the connection
    /// closes.
    Truncated,
    /// 200 with `bytes` bytes of filler, streamed in 64 KiB chunks as fast as the client
    /// reads, announced in `Content-Length` or not (chunked).
    Oversize {
        /// Body length.
        bytes: u64,
        /// Whether the length is announced up front.
        content_length: bool,
    },
    /// 200 with the echo completion sent `chunk` bytes at a time, `every` apart.
    Drip {
        /// Bytes per write.
        chunk: usize,
        /// Pause before each write after the first.
        every: Duration,
    },
    /// The connection closes without an answer.
    Reset,
}

impl Reply {
    /// `status` with a short JSON error body, as vLLM answers errors.
    pub fn status(status: u16) -> Self {
        Self::Status(status, Bytes::from(format!(r#"{{"error":"scripted status {status}"}}"#)))
    }
}

/// One chat-completion request's stay at the node, from arrival to the end of its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stay {
    /// When it arrived (its headers were read).
    pub arrived: Instant,
    /// When the last byte of its answer was handed over, or its client went away; `None` while
    /// it is in flight.
    pub ended: Option<Instant>,
    /// Whether its client went away before the answer was complete.
    pub abandoned: bool,
}

/// The most requests a client had outstanding at once among `stays`, counting an abandoned
/// request only until `held_at_most` after its arrival (its client's timeout, less a margin for
/// the time the request took to arrive).
///
/// A client that gives up on a hanging request frees its own bound at once; its HTTP stack
/// closes the connection a moment later, and the server sees the close later still. A request
/// sent on another connection in between reaches the server while the abandoned one still runs
/// there, so the server's raw peak can exceed the client's bound through no fault of the client.
/// Every other request counts from its arrival to the last byte of its answer.
pub fn peak_held(stays: &[Stay], held_at_most: Duration) -> usize {
    let mut edges: Vec<(Instant, i32)> = Vec::with_capacity(stays.len() * 2);
    for stay in stays {
        let bound = stay.arrived + held_at_most;
        let ended = match stay.ended {
            Some(ended) if !stay.abandoned => ended,
            ended => ended.unwrap_or(bound).min(bound),
        };
        edges.push((stay.arrived, 1));
        edges.push((ended, -1));
    }
    // An end and an arrival at the same instant: the end first.
    edges.sort();
    let (mut now, mut peak) = (0i32, 0i32);
    for (_, change) in edges {
        now += change;
        peak = peak.max(now);
    }
    usize::try_from(peak).unwrap_or(0)
}

/// A request the fake received (health checks are only counted).
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedRequest {
    /// HTTP method.
    pub method: String,
    /// Request path.
    pub path: String,
    /// The `Content-Type` header, if any.
    pub content_type: Option<String>,
    /// The body, parsed as JSON; `Null` when it is not JSON.
    pub body: Value,
}

struct State {
    script: VecDeque<Reply>,
    latency: Latency,
    rng: SmallRng,
    healthy: bool,
    requests: Vec<RecordedRequest>,
    stays: Vec<Stay>,
    health_checks: usize,
    in_flight: usize,
    peak: usize,
    disconnects: usize,
    completed: usize,
    service_total: Duration,
}

type Shared = crate::watched::Watched<State>;

/// An ML node on `127.0.0.1` with an ephemeral port, serving until dropped.
///
/// Records every chat-completion request, the current and peak number of requests in flight
/// (from arrival until the last byte of the answer is handed to the connection), how many
/// ended because the client went away, and the mean service time of the others.
pub struct LoopbackMlNode {
    addr: SocketAddr,
    tls: bool,
    shared: Arc<Shared>,
    _shutdown: DropGuard,
}

impl LoopbackMlNode {
    /// Starts a node answering at once.
    ///
    /// # Panics
    ///
    /// If no loopback port can be bound; see [`LoopbackMlNode::try_start`].
    #[allow(clippy::expect_used)]
    pub async fn start() -> Self {
        Self::try_start().await.expect("bind a loopback port for the fake ML node")
    }

    /// Starts a node answering at once, or says why no port could be bound.
    pub async fn try_start() -> io::Result<Self> {
        Self::bind(None).await
    }

    /// As [`LoopbackMlNode::start`], serving over TLS with `tls`: the URL is `https`.
    ///
    /// # Panics
    ///
    /// If no loopback port can be bound.
    #[allow(clippy::expect_used)]
    pub async fn start_tls(tls: ServerTls) -> Self {
        Self::bind(Some(tls)).await.expect("bind a loopback port for the fake ML node")
    }

    async fn bind(tls: Option<ServerTls>) -> io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                script: VecDeque::new(),
                latency: Latency::Fixed(Duration::ZERO),
                rng: SmallRng::seed_from_u64(0),
                healthy: true,
                requests: Vec::new(),
                stays: Vec::new(),
                health_checks: 0,
                in_flight: 0,
                peak: 0,
                disconnects: 0,
                completed: 0,
                service_total: Duration::ZERO,
            }),
            changed: Notify::new(),
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

    /// The base URL, `http://127.0.0.1:{port}` (`https` over TLS).
    pub fn url(&self) -> String {
        crate::serve::base_url(self.addr, self.tls)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Queues replies for the next chat-completion requests, one each, in order.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.shared.update(|state| state.script.extend(replies));
    }

    /// Sets the wait before each answer (default none).
    pub fn set_latency(&self, latency: Latency) {
        self.shared.update(|state| {
            if let Latency::Uniform { seed, .. } = latency {
                state.rng = SmallRng::seed_from_u64(seed);
            }
            state.latency = latency;
        });
    }

    /// Makes the health path answer 200 (`true`, the default) or 503.
    pub fn set_healthy(&self, healthy: bool) {
        self.shared.update(|state| state.healthy = healthy);
    }

    /// Every request received, health checks aside, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.lock().requests.clone()
    }

    /// Health checks received.
    pub fn health_checks(&self) -> usize {
        self.shared.lock().health_checks
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.shared.lock().in_flight
    }

    /// Most requests in flight at once.
    pub fn peak(&self) -> usize {
        self.shared.lock().peak
    }

    /// Every chat-completion request's stay, in arrival order: the exact concurrency seen by
    /// the node over time, for checks finer than [`LoopbackMlNode::peak`].
    pub fn stays(&self) -> Vec<Stay> {
        self.shared.lock().stays.clone()
    }

    /// Requests whose client went away before the answer was complete.
    pub fn disconnects(&self) -> usize {
        self.shared.lock().disconnects
    }

    /// Mean time from arrival to the last byte of the answer over the requests answered in
    /// full; `None` before the first.
    pub fn mean_service_time(&self) -> Option<Duration> {
        let state = self.shared.lock();
        let completed = u32::try_from(state.completed).ok().filter(|n| *n > 0)?;
        Some(state.service_total / completed)
    }

    /// Waits until at least `n` requests (health checks aside) have been received.
    pub async fn wait_requests(&self, n: usize) {
        self.shared.wait_until(|state| state.requests.len() >= n).await;
    }

    /// Waits until at least `n` requests are in flight at once.
    pub async fn wait_in_flight(&self, n: usize) {
        self.shared.wait_until(|state| state.in_flight >= n).await;
    }

    /// Waits until at least `n` clients went away mid-request.
    pub async fn wait_disconnects(&self, n: usize) {
        self.shared.wait_until(|state| state.disconnects >= n).await;
    }

    /// Waits until at least `n` health checks have been answered.
    pub async fn wait_health_checks(&self, n: usize) {
        self.shared.wait_until(|state| state.health_checks >= n).await;
    }
}

type Body = UnsyncBoxBody<Bytes, io::Error>;

/// One chat-completion request from arrival to the end of its answer. Dropped unfinished, it
/// counts as a client that went away.
struct InFlight {
    shared: Arc<Shared>,
    arrived: Instant,
    /// Index of its [`Stay`].
    stay: usize,
    finished: bool,
}

impl InFlight {
    fn new(shared: Arc<Shared>) -> Self {
        // Stamped under the lock, so the stays order events as the in-flight count saw them.
        let (arrived, stay) = shared.update(|state| {
            let arrived = Instant::now();
            state.in_flight += 1;
            state.peak = state.peak.max(state.in_flight);
            state.stays.push(Stay { arrived, ended: None, abandoned: false });
            (arrived, state.stays.len() - 1)
        });
        Self { shared, arrived, stay, finished: false }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let finished = self.finished;
        self.shared.update(|state| {
            let ended = Instant::now();
            let elapsed = ended - self.arrived;
            state.in_flight -= 1;
            if let Some(stay) = state.stays.get_mut(self.stay) {
                stay.ended = Some(ended);
                stay.abandoned = !finished;
            }
            if finished {
                state.completed += 1;
                state.service_total += elapsed;
            } else {
                state.disconnects += 1;
            }
        });
    }
}

async fn handle(shared: Arc<Shared>, request: Request<Incoming>) -> io::Result<Response<Body>> {
    if request.uri().path() == HEALTH_PATH {
        let healthy = shared.update(|state| {
            state.health_checks += 1;
            state.healthy
        });
        let status = if healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
        return Ok(whole(status, Bytes::from_static(b"ok"), None));
    }
    let mut in_flight = InFlight::new(Arc::clone(&shared));
    let method = request.method().to_string();
    let path = request.uri().path().to_owned();
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let body = request.into_body().collect().await.map_err(io::Error::other)?.to_bytes();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let is_completion = method == "POST" && path.ends_with(COMPLETIONS_SUFFIX);
    let (reply, wait) = shared.update(|state| {
        state.requests.push(RecordedRequest { method, path, content_type, body: body.clone() });
        let reply = if is_completion { state.script.pop_front() } else { None };
        let wait = match state.latency {
            Latency::Fixed(wait) => wait,
            Latency::Uniform { min, max, .. } => {
                let (min, max) = (min.min(max), min.max(max));
                state.rng.random_range(min..=max)
            }
        };
        (reply.unwrap_or(Reply::Echo), wait)
    });
    if !is_completion {
        return Ok(whole(StatusCode::NOT_FOUND, Bytes::from_static(b"not found"), Some(in_flight)));
    }
    if reply == Reply::Hang {
        return std::future::pending().await;
    }
    tokio::time::sleep(wait).await;
    let ok = StatusCode::OK;
    let response = match reply {
        Reply::Echo | Reply::Hang => whole(ok, echo_completion(&body), Some(in_flight)),
        Reply::Status(status, bytes) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            whole(status, bytes, Some(in_flight))
        }
        Reply::Body(bytes) => whole(ok, bytes, Some(in_flight)),
        Reply::Malformed => {
            whole(ok, Bytes::from_static(b"{\"choices\": [ not json"), Some(in_flight))
        }
        Reply::Truncated => {
            let full = echo_completion(&body);
            let steps = vec![Step::Data(full.slice(..full.len() / 2)), Step::Fail];
            respond(ok, steps, Some(full.len() as u64), Some(in_flight))
        }
        Reply::Oversize { bytes, content_length } => {
            respond(ok, vec![Step::Filler(bytes)], content_length.then_some(bytes), Some(in_flight))
        }
        Reply::Drip { chunk, every } => {
            let full = echo_completion(&body);
            let chunk = chunk.max(1);
            let mut steps = Vec::new();
            for start in (0..full.len()).step_by(chunk) {
                if start > 0 {
                    steps.push(Step::Wait(every));
                }
                steps.push(Step::Data(full.slice(start..(start + chunk).min(full.len()))));
            }
            respond(ok, steps, Some(full.len() as u64), Some(in_flight))
        }
        Reply::Reset => {
            in_flight.finished = true;
            return Err(io::Error::new(io::ErrorKind::ConnectionReset, "scripted reset"));
        }
    };
    Ok(response)
}

/// One piece of an answer body.
enum Step {
    Data(Bytes),
    /// This many filler bytes, in chunks.
    Filler(u64),
    Wait(Duration),
    /// Aborts the connection.
    Fail,
}

struct Plan {
    steps: VecDeque<Step>,
    in_flight: Option<InFlight>,
}

impl Plan {
    fn finish(&mut self) {
        if let Some(mut in_flight) = self.in_flight.take() {
            in_flight.finished = true;
        }
    }
}

/// A complete answer of `bytes`.
fn whole(status: StatusCode, bytes: Bytes, in_flight: Option<InFlight>) -> Response<Body> {
    let length = bytes.len() as u64;
    respond(status, vec![Step::Data(bytes)], Some(length), in_flight)
}

/// An answer whose body plays `steps`, announced as `content_length` bytes, or chunked when
/// `None`. The request counts as answered when the last piece is handed over: with a known
/// length, the connection may not ask for the end of the body.
fn respond(
    status: StatusCode,
    steps: Vec<Step>,
    content_length: Option<u64>,
    in_flight: Option<InFlight>,
) -> Response<Body> {
    let plan = Plan { steps: steps.into(), in_flight };
    let frames = futures_util::stream::unfold(plan, |mut plan| async move {
        loop {
            let Some(step) = plan.steps.pop_front() else {
                plan.finish();
                return None;
            };
            let item = match step {
                Step::Wait(wait) => {
                    tokio::time::sleep(wait).await;
                    continue;
                }
                Step::Fail => {
                    plan.finish();
                    Err(io::Error::new(io::ErrorKind::UnexpectedEof, "scripted truncation"))
                }
                Step::Data(bytes) => Ok(Frame::data(bytes)),
                Step::Filler(left) => {
                    let n = left.min(FILLER_CHUNK as u64);
                    if left > n {
                        plan.steps.push_front(Step::Filler(left - n));
                    }
                    Ok(Frame::data(Bytes::from_static(&FILLER[..n as usize])))
                }
            };
            if plan.steps.is_empty() {
                plan.finish();
            }
            return Some((item, plan));
        }
    });
    let mut response = Response::new(BodyExt::boxed_unsync(StreamBody::new(frames)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    if let Some(length) = content_length {
        headers.insert(header::CONTENT_LENGTH, header::HeaderValue::from(length));
    }
    response
}
