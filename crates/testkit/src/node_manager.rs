//! [`LoopbackNodeManager`]: the API node's NodeManager gRPC service (LIVE-NETWORK.md 2.2 item 3)
//! over real HTTP/2 on loopback, for the tests of `ml_client::NodeManagerBroker`.
//!
//! It keeps nodes (id, model, endpoint, `max_concurrent`, status) and the locks on them as the
//! API node's broker does: `AcquireMLNode` locks a slot on the least-locked node serving the
//! model in status `INFERENCE` that the request does not exclude, or answers
//! `RESOURCE_EXHAUSTED`; `ReleaseMLNode` forgets the lock and counts its outcome, or answers
//! `NOT_FOUND` for a lock it does not know; a lock not released within its TTL (upstream's
//! default 1200 s) is evicted. `ListNodeCapacity` lists one entry per node and model,
//! `GetRuntimeConfig` answers the configured [`RuntimeConfig`] (long-polling as upstream does),
//! `GetHostEvents` is not served. Fault switches hang every call, answer a malformed endpoint,
//! lose locks and reject the next acquires; counters and [`LoopbackNodeManager::wait_for`]
//! let tests await what the server saw.

use std::{
    collections::{BTreeMap, HashMap},
    io,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tokio::net::TcpListener;
use tokio_util::sync::{CancellationToken, DropGuard};
use tonic::{transport::server::TcpIncoming, Request, Response, Status};
pub use validator_proto::nodemanager::RuntimeConfig;
use validator_proto::nodemanager::{
    node_manager_server::{NodeManager, NodeManagerServer},
    AcquireMlNodeRequest, AcquireMlNodeResponse, GetHostEventsRequest, GetHostEventsResponse,
    GetRuntimeConfigRequest, GetRuntimeConfigResponse, ListNodeCapacityRequest,
    ListNodeCapacityResponse, NodeCapacityEntry, ReleaseMlNodeRequest, ReleaseMlNodeResponse,
    ReleaseOutcome,
};

use crate::watched::Watched;

/// Upstream's default lock TTL (`NodeManagerLockTTLSeconds`).
pub const DEFAULT_LOCK_TTL: Duration = Duration::from_secs(1200);

/// The status of a node that takes locks.
pub const INFERENCE: &str = "INFERENCE";

/// Longest long-poll of `GetRuntimeConfig`, whatever the caller asks for.
const MAX_LONG_POLL: Duration = Duration::from_secs(30);

/// One node the fake hands out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeNode {
    /// The node's id.
    pub id: String,
    /// The model it serves.
    pub model: String,
    /// The base URL granted locks point to.
    pub endpoint: String,
    /// Locks it takes at once.
    pub max_concurrent: usize,
    /// Its status; only [`INFERENCE`] takes locks.
    pub status: String,
}

/// A lock the fake holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeLock {
    /// The lock's id.
    pub lock_id: String,
    /// The node it is on.
    pub node_id: String,
    /// The model asked for.
    pub model: String,
    /// The escrow the acquire named, possibly empty.
    pub escrow_id: String,
}

/// An `AcquireMLNode` request as it arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcquireRecord {
    /// The model asked for.
    pub model: String,
    /// The nodes excluded.
    pub excluded_nodes: Vec<String>,
    /// The escrow named, possibly empty.
    pub escrow_id: String,
}

/// What the fake counted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeManagerStats {
    /// `AcquireMLNode` calls answered (hung ones not included).
    pub acquires: u64,
    /// Locks granted.
    pub granted: u64,
    /// `RESOURCE_EXHAUSTED` answers.
    pub rejections: u64,
    /// Releases of known locks, by outcome name (`SUCCESS`, `TRANSPORT_ERROR`, ...; `UNKNOWN`
    /// for a number outside the enum).
    pub releases: BTreeMap<String, u64>,
    /// Releases of locks the fake did not know, answered `NOT_FOUND`.
    pub releases_not_found: u64,
    /// Locks evicted after their TTL.
    pub evictions: u64,
    /// Locks lost through [`LoopbackNodeManager::lose_lock`] or
    /// [`LoopbackNodeManager::lose_all_locks`].
    pub lost: u64,
    /// Locks held now.
    pub locks_held: usize,
    /// Most locks held at once.
    pub peak_locks: usize,
    /// `ListNodeCapacity` calls answered.
    pub listings: u64,
    /// `GetRuntimeConfig` calls answered.
    pub runtime_config_calls: u64,
    /// Calls held by [`LoopbackNodeManager::set_hang`] now.
    pub hanging: usize,
    /// `GetRuntimeConfig` long-polls waiting for a newer configuration now.
    pub polling: usize,
}

impl NodeManagerStats {
    /// Releases with `outcome` (`"SUCCESS"`, `"TRANSPORT_ERROR"`, ...).
    pub fn released(&self, outcome: &str) -> u64 {
        self.releases.get(outcome).copied().unwrap_or(0)
    }

    /// Releases of known locks, every outcome.
    pub fn released_total(&self) -> u64 {
        self.releases.values().sum()
    }
}

struct State {
    nodes: Vec<FakeNode>,
    locks: HashMap<String, FakeLock>,
    lock_ttl: Duration,
    runtime: RuntimeConfig,
    hang: bool,
    bad_endpoint: Option<String>,
    reject_next: usize,
    acquire_requests: Vec<AcquireRecord>,
    stats: NodeManagerStats,
}

impl State {
    fn lock_count(&self, node_id: &str) -> usize {
        self.locks.values().filter(|lock| lock.node_id == node_id).count()
    }

    fn count_locks(&mut self) {
        self.stats.locks_held = self.locks.len();
        self.stats.peak_locks = self.stats.peak_locks.max(self.locks.len());
    }
}

struct Shared {
    watched: Watched<State>,
    shutdown: CancellationToken,
}

/// The NodeManager service on `127.0.0.1` with an ephemeral port, serving until dropped.
pub struct LoopbackNodeManager {
    addr: SocketAddr,
    shared: Arc<Shared>,
    _shutdown: DropGuard,
}

impl LoopbackNodeManager {
    /// Starts a NodeManager without nodes, locks living [`DEFAULT_LOCK_TTL`].
    ///
    /// # Panics
    ///
    /// If no loopback port can be bound; see [`LoopbackNodeManager::try_start`].
    #[allow(clippy::expect_used)]
    pub async fn start() -> Self {
        Self::try_start().await.expect("bind a loopback port for the fake NodeManager")
    }

    /// Starts a NodeManager, or says why no port could be bound.
    pub async fn try_start() -> io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let shared = Arc::new(Shared {
            watched: Watched::new(State {
                nodes: Vec::new(),
                locks: HashMap::new(),
                lock_ttl: DEFAULT_LOCK_TTL,
                runtime: RuntimeConfig::default(),
                hang: false,
                bad_endpoint: None,
                reject_next: 0,
                acquire_requests: Vec::new(),
                stats: NodeManagerStats::default(),
            }),
            shutdown: shutdown.clone(),
        });
        let service = NodeManagerServer::new(Service { shared: Arc::clone(&shared) });
        let server =
            tonic::transport::Server::builder().add_service(service).serve_with_incoming_shutdown(
                TcpIncoming::from(listener),
                shutdown.clone().cancelled_owned(),
            );
        tokio::spawn(server);
        Ok(Self { addr, shared, _shutdown: shutdown.drop_guard() })
    }

    /// The service's URL, `http://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Adds a node in status [`INFERENCE`] serving `model` at `endpoint`.
    pub fn add_node(&self, id: &str, model: &str, endpoint: &str, max_concurrent: usize) {
        let node = FakeNode {
            id: id.to_owned(),
            model: model.to_owned(),
            endpoint: endpoint.to_owned(),
            max_concurrent,
            status: INFERENCE.to_owned(),
        };
        self.shared.watched.update(|state| state.nodes.push(node));
    }

    /// Sets node `id`'s status (`INFERENCE`, `POC`, `STOPPED`, ...).
    pub fn set_node_status(&self, id: &str, status: &str) {
        self.shared.watched.update(|state| {
            for node in state.nodes.iter_mut().filter(|node| node.id == id) {
                node.status = status.to_owned();
            }
        });
    }

    /// How long locks granted from now on live unreleased before they are evicted.
    pub fn set_lock_ttl(&self, ttl: Duration) {
        self.shared.watched.update(|state| state.lock_ttl = ttl);
    }

    /// What `GetRuntimeConfig` answers from now on; a higher `params_block_height` ends the
    /// long-polls waiting for a change.
    pub fn set_runtime_config(&self, config: RuntimeConfig) {
        self.shared.watched.update(|state| state.runtime = config);
    }

    /// Holds every call from now on, unanswered, until switched off (or the client goes away).
    pub fn set_hang(&self, hang: bool) {
        self.shared.watched.update(|state| state.hang = hang);
    }

    /// Answers granted locks with `endpoint` instead of the node's (a malformed one, say);
    /// `None` goes back to the node's.
    pub fn answer_endpoint(&self, endpoint: Option<&str>) {
        self.shared.watched.update(|state| state.bad_endpoint = endpoint.map(str::to_owned));
    }

    /// Answers the next `n` acquires `RESOURCE_EXHAUSTED`, whatever the nodes' room.
    pub fn reject_next(&self, n: usize) {
        self.shared.watched.update(|state| state.reject_next = n);
    }

    /// Forgets lock `lock_id` as if it had been evicted; whether it was held.
    pub fn lose_lock(&self, lock_id: &str) -> bool {
        self.shared.watched.update(|state| {
            let lost = state.locks.remove(lock_id).is_some();
            if lost {
                state.stats.lost += 1;
                state.count_locks();
            }
            lost
        })
    }

    /// Forgets every lock as if they had been evicted; how many there were.
    pub fn lose_all_locks(&self) -> usize {
        self.shared.watched.update(|state| {
            let lost = state.locks.len();
            state.locks.clear();
            state.stats.lost += lost as u64;
            state.count_locks();
            lost
        })
    }

    /// The locks held now, by lock id.
    pub fn locks(&self) -> Vec<FakeLock> {
        let mut locks: Vec<FakeLock> = self.shared.watched.lock().locks.values().cloned().collect();
        locks.sort_by(|a, b| a.lock_id.cmp(&b.lock_id));
        locks
    }

    /// Every `AcquireMLNode` request, in arrival order.
    pub fn acquire_requests(&self) -> Vec<AcquireRecord> {
        self.shared.watched.lock().acquire_requests.clone()
    }

    /// What the fake counted so far.
    pub fn stats(&self) -> NodeManagerStats {
        self.shared.watched.lock().stats.clone()
    }

    /// Waits until `condition` holds for the counters.
    pub async fn wait_for(&self, condition: impl Fn(&NodeManagerStats) -> bool) {
        self.shared.watched.wait_until(|state| condition(&state.stats)).await;
    }
}

// === serving ===

struct Service {
    shared: Arc<Shared>,
}

impl Service {
    /// Holds the call while the hang switch is on; a shutdown ends it as unavailable.
    async fn hold_if_hanging(&self) -> Result<(), Status> {
        let watched = &self.shared.watched;
        if !watched.lock().hang {
            return Ok(());
        }
        let _hung = Gauge::up(&self.shared, |stats| &mut stats.hanging);
        tokio::select! {
            () = watched.wait_until(|state| !state.hang) => Ok(()),
            () = self.shared.shutdown.cancelled() => Err(Status::unavailable("shutting down")),
        }
    }

    /// Evicts `lock_id` once `ttl` has passed, unless it was released before.
    fn expire(&self, lock_id: String, ttl: Duration) {
        let shared = Arc::clone(&self.shared);
        tokio::spawn(async move {
            tokio::select! {
                () = shared.shutdown.cancelled() => {}
                () = tokio::time::sleep(ttl) => shared.watched.update(|state| {
                    if state.locks.remove(&lock_id).is_some() {
                        state.stats.evictions += 1;
                        state.count_locks();
                    }
                }),
            }
        });
    }
}

/// One more on a gauge of [`NodeManagerStats`] while it lives: the call is counted out however
/// it ends, the client going away included.
struct Gauge<'a> {
    shared: &'a Shared,
    field: fn(&mut NodeManagerStats) -> &mut usize,
}

impl<'a> Gauge<'a> {
    fn up(shared: &'a Shared, field: fn(&mut NodeManagerStats) -> &mut usize) -> Self {
        shared.watched.update(|state| *field(&mut state.stats) += 1);
        Self { shared, field }
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.shared.watched.update(|state| *(self.field)(&mut state.stats) -= 1);
    }
}

#[tonic::async_trait]
impl NodeManager for Service {
    async fn acquire_ml_node(
        &self,
        request: Request<AcquireMlNodeRequest>,
    ) -> Result<Response<AcquireMlNodeResponse>, Status> {
        self.hold_if_hanging().await?;
        let request = request.into_inner();
        let granted = self.shared.watched.update(|state| {
            state.stats.acquires += 1;
            state.acquire_requests.push(AcquireRecord {
                model: request.model.clone(),
                excluded_nodes: request.excluded_nodes.clone(),
                escrow_id: request.escrow_id.clone(),
            });
            if state.reject_next > 0 {
                state.reject_next -= 1;
                state.stats.rejections += 1;
                return None;
            }
            let chosen = state
                .nodes
                .iter()
                .enumerate()
                .filter(|(_, node)| {
                    node.model == request.model
                        && node.status == INFERENCE
                        && !request.excluded_nodes.contains(&node.id)
                })
                .map(|(index, node)| (state.lock_count(&node.id), index, node))
                .filter(|(locks, _, node)| *locks < node.max_concurrent)
                .min_by_key(|(locks, index, _)| (*locks, *index))
                .map(|(_, _, node)| node.clone());
            let Some(node) = chosen else {
                state.stats.rejections += 1;
                return None;
            };
            let lock_id = uuid::Uuid::new_v4().to_string();
            state.locks.insert(
                lock_id.clone(),
                FakeLock {
                    lock_id: lock_id.clone(),
                    node_id: node.id.clone(),
                    model: request.model.clone(),
                    escrow_id: request.escrow_id.clone(),
                },
            );
            state.stats.granted += 1;
            state.count_locks();
            let endpoint = state.bad_endpoint.clone().unwrap_or(node.endpoint);
            Some((AcquireMlNodeResponse { lock_id, endpoint, node_id: node.id }, state.lock_ttl))
        });
        let Some((granted, ttl)) = granted else {
            return Err(Status::resource_exhausted("no nodes available"));
        };
        self.expire(granted.lock_id.clone(), ttl);
        Ok(Response::new(granted))
    }

    async fn release_ml_node(
        &self,
        request: Request<ReleaseMlNodeRequest>,
    ) -> Result<Response<ReleaseMlNodeResponse>, Status> {
        self.hold_if_hanging().await?;
        let request = request.into_inner();
        let outcome = ReleaseOutcome::try_from(request.outcome)
            .map_or("UNKNOWN", |outcome| outcome.as_str_name());
        let known = self.shared.watched.update(|state| {
            if state.locks.remove(&request.lock_id).is_none() {
                state.stats.releases_not_found += 1;
                return false;
            }
            *state.stats.releases.entry(outcome.to_owned()).or_default() += 1;
            state.count_locks();
            true
        });
        if known {
            Ok(Response::new(ReleaseMlNodeResponse {}))
        } else {
            Err(Status::not_found("lock not found"))
        }
    }

    async fn get_runtime_config(
        &self,
        request: Request<GetRuntimeConfigRequest>,
    ) -> Result<Response<GetRuntimeConfigResponse>, Status> {
        self.hold_if_hanging().await?;
        let request = request.into_inner();
        let client_height = request.client_params_block_height;
        let newer = |state: &State| {
            let height = state.runtime.params_block_height;
            client_height == 0 || height == 0 || height > client_height
        };
        let watched = &self.shared.watched;
        let wait = u64::try_from(request.max_wait_seconds).unwrap_or(0);
        if wait > 0 && !newer(&watched.lock()) {
            let bound = Duration::from_secs(wait).min(MAX_LONG_POLL);
            let _polling = Gauge::up(&self.shared, |stats| &mut stats.polling);
            tokio::select! {
                _ = tokio::time::timeout(bound, watched.wait_until(newer)) => {}
                () = self.shared.shutdown.cancelled() => {}
            }
        }
        let answer = watched.update(|state| {
            state.stats.runtime_config_calls += 1;
            if newer(state) {
                let mut config = state.runtime.clone();
                config.served_at_unix = unix_now();
                GetRuntimeConfigResponse { unchanged: false, config: Some(config) }
            } else {
                GetRuntimeConfigResponse { unchanged: true, config: None }
            }
        });
        Ok(Response::new(answer))
    }

    async fn get_host_events(
        &self,
        _request: Request<GetHostEventsRequest>,
    ) -> Result<Response<GetHostEventsResponse>, Status> {
        Err(Status::failed_precondition("host events: not served by the fake"))
    }

    async fn list_node_capacity(
        &self,
        _request: Request<ListNodeCapacityRequest>,
    ) -> Result<Response<ListNodeCapacityResponse>, Status> {
        self.hold_if_hanging().await?;
        let nodes = self.shared.watched.update(|state| {
            state.stats.listings += 1;
            state
                .nodes
                .iter()
                .map(|node| NodeCapacityEntry {
                    node_id: node.id.clone(),
                    model: node.model.clone(),
                    max_concurrent: i32::try_from(node.max_concurrent).unwrap_or(i32::MAX),
                    lock_count: i32::try_from(state.lock_count(&node.id)).unwrap_or(i32::MAX),
                    status: node.status.clone(),
                })
                .collect()
        });
        Ok(Response::new(ListNodeCapacityResponse { nodes, served_at_unix: unix_now() }))
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX))
}
