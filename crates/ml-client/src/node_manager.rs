//! [`NodeManagerBroker`]: leases on the API node's ML nodes through its NodeManager gRPC service
//! (LIVE-NETWORK.md 2.2 item 3), the live path's way of sharing GPUs with the API node's own
//! inference traffic.
//!
//! A lease is one `AcquireMLNode` call; giving it back is one `ReleaseMLNode` call with the
//! outcome of the replay, sent from a task of its own so that releasing never blocks. A
//! background task lists the nodes' capacity (`ListNodeCapacity`) every `capacity_refresh`, so
//! that [`ModelLockBroker::free_slots`] answers without a call.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    future::Future,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::Serialize;
use tokio::{runtime::Handle, sync::Notify, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use tracing::{debug, warn};
use validator_core::ports::model_lock::{
    LeaseRelease, LeaseRequest, LockError, MlNode, ModelLease, ModelLockBroker, NodeHealth,
};
use validator_proto::nodemanager::{
    node_manager_client::NodeManagerClient, AcquireMlNodeRequest, ListNodeCapacityRequest,
    ReleaseMlNodeRequest, ReleaseOutcome,
};

use crate::{config::check_url, Config, Error, Result};

/// The status the NodeManager gives a node that serves inference; nodes in any other status
/// (`POC`, `TRAINING`, `STOPPED`, `FAILED`, `UNKNOWN`) take no lock.
pub const SERVING_STATUS: &str = "INFERENCE";

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section only updates maps and counters, so the state is consistent even if
    // a holder panicked.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The release outcome upstream reports for a replay that went as `health` says.
///
/// A call that told nothing (cancelled, or never made) is reported as a transport error, as
/// upstream's devshardd classifies a cancelled call.
pub fn release_outcome(health: NodeHealth) -> ReleaseOutcome {
    match health {
        NodeHealth::Healthy => ReleaseOutcome::Success,
        NodeHealth::Failed | NodeHealth::Unknown => ReleaseOutcome::TransportError,
        NodeHealth::TimedOut => ReleaseOutcome::Timeout,
        NodeHealth::BadAnswer => ReleaseOutcome::ApplicationError,
    }
}

/// A broker over the API node's NodeManager: each lease is a lock the NodeManager granted.
///
/// Never waits for capacity: the NodeManager's `RESOURCE_EXHAUSTED` is an immediate
/// [`LockError::NoNode`], any other failure a [`LockError::Broker`]. Every call is bounded by the
/// configured timeout. Cloning shares the connection, the capacity listing and the locks held.
#[derive(Debug, Clone)]
pub struct NodeManagerBroker {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    client: NodeManagerClient<Channel>,
    url: String,
    timeout: Duration,
    refresh: Duration,
    runtime: Handle,
    state: Mutex<State>,
    /// Fired when a release ends, however it ends.
    released: Notify,
}

#[derive(Debug, Default)]
struct State {
    listing: Option<Listing>,
    /// Locks granted and not yet released, by lease number.
    held: HashMap<u64, Held>,
    /// Leases granted so far; numbers each lease.
    leases: u64,
    /// `AcquireMLNode` calls waiting for their answer.
    waits: usize,
    /// Releases sent so far; numbers each release.
    releases_sent: u64,
    /// The releases still under way, by number.
    releasing: BTreeSet<u64>,
    counters: NodeManagerCounters,
}

#[derive(Debug)]
struct Listing {
    nodes: Vec<NodeCapacity>,
    listed_at: SystemTime,
    /// The leases numbered up to this one were granted before the listing was asked for, so its
    /// lock counts may include them; later ones are not in it.
    leases_before: u64,
    /// Per node, our leases of before the listing given back since it arrived: its lock counts
    /// still hold them, though the locks are free.
    returned: HashMap<Arc<str>, i64>,
}

#[derive(Debug)]
struct Held {
    lock_id: String,
    node_id: Arc<str>,
    model: String,
    since: SystemTime,
}

/// One entry of the NodeManager's capacity listing: a node, one of its models.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeCapacity {
    /// The node's id.
    pub node_id: String,
    /// A model it serves; empty for a node that lists none.
    pub model: String,
    /// Locks the node takes at once.
    pub max_concurrent: i32,
    /// Locks held on the node, across its models, when it was listed.
    pub lock_count: i32,
    /// The node's status; only [`SERVING_STATUS`] takes locks.
    pub status: String,
}

/// A lock this broker holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HeldLock {
    /// The NodeManager's id of the lock.
    pub lock_id: String,
    /// The node it is on.
    pub node_id: String,
    /// The model it was taken for.
    pub model: String,
    /// How long it has been held, in milliseconds.
    pub held_ms: u64,
}

/// What the broker counted since it was built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct NodeManagerCounters {
    /// Locks granted and handed out as leases.
    pub granted: u64,
    /// `RESOURCE_EXHAUSTED` answers: no free node.
    pub rejections: u64,
    /// Acquires that failed otherwise: timeouts, unreachable, other statuses.
    pub failures: u64,
    /// Locks granted on a malformed endpoint, given back at once.
    pub bad_endpoints: u64,
    /// Releases the NodeManager acknowledged.
    pub releases: u64,
    /// Releases the NodeManager answered with `NOT_FOUND`: the lock had been evicted.
    pub lost_locks: u64,
    /// Releases that failed otherwise; the NodeManager evicts the lock after its TTL.
    pub release_failures: u64,
    /// Capacity listings received.
    pub listings: u64,
    /// Capacity listings that failed; the last one received stays in use.
    pub listing_failures: u64,
}

/// The broker's state for the admin status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeManagerStatus {
    /// The NodeManager's URL.
    pub url: String,
    /// When the last capacity listing arrived, in milliseconds since the Unix epoch; `None`
    /// before the first.
    pub listed_at_unix_ms: Option<u64>,
    /// The last capacity listing.
    pub nodes: Vec<NodeCapacity>,
    /// Free slots per model by the last listing, less the leases granted since (see
    /// [`NodeManagerBroker::room`]).
    pub capacity: BTreeMap<String, u64>,
    /// The locks this broker holds now.
    pub locks_held: Vec<HeldLock>,
    /// `AcquireMLNode` calls waiting for their answer now.
    pub lock_waits: usize,
    /// `ReleaseMLNode` calls under way now.
    pub releases_in_flight: usize,
    /// What was counted since the broker was built.
    pub counters: NodeManagerCounters,
}

impl NodeManagerBroker {
    /// A broker over the NodeManager at `config.node_manager.url`, after validating `config`.
    /// Nothing is connected yet: the first call connects, within its timeout.
    ///
    /// Must be called within a Tokio runtime, on which releases and the capacity refresh run.
    pub fn new(config: &Config) -> Result<Self> {
        config.validate()?;
        let section = &config.node_manager;
        let Some(url) = section.url.clone() else {
            return Err(Error::InvalidConfig {
                key: "node_manager.url".into(),
                allowed: "a URL, to use the NodeManager",
            });
        };
        let runtime = Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let endpoint = Endpoint::from_shared(url.clone())
            .map_err(|_| Error::InvalidConfig {
                key: "node_manager.url".into(),
                allowed: "a URL the gRPC client accepts",
            })?
            .connect_timeout(section.timeout)
            .tcp_nodelay(true);
        let shared = Shared {
            client: NodeManagerClient::new(endpoint.connect_lazy()),
            url,
            timeout: section.timeout,
            refresh: section.capacity_refresh,
            runtime,
            state: Mutex::new(State::default()),
            released: Notify::new(),
        };
        Ok(Self { shared: Arc::new(shared) })
    }

    /// Asks for the nodes' capacity once and keeps the answer; on failure the previous listing
    /// stays in use.
    pub async fn refresh_capacity(&self) -> Result<()> {
        self.shared.refresh_capacity().await
    }

    /// Starts listing the nodes' capacity now and every `capacity_refresh`, on a task that ends
    /// when `cancel` fires.
    pub fn spawn_capacity_refresh(&self, cancel: CancellationToken) -> JoinHandle<()> {
        let shared = Arc::clone(&self.shared);
        self.shared.runtime.spawn(async move { shared.refresh_loop(cancel).await })
    }

    /// Free slots for `model` by the last capacity listing: over the nodes listing the model in
    /// [`SERVING_STATUS`], the sum of each node's `max_concurrent - lock_count`, less the leases
    /// on it this broker granted since the listing was asked for and still holds, counting a
    /// node at 0 at least. `None` before the first listing.
    ///
    /// A lease granted while a listing was under way counts against the listing even if its
    /// lock is already in it, so the room is never overstated by this broker's own leases.
    pub fn room(&self, model: &str) -> Option<u64> {
        let state = lock(&self.shared.state);
        state.listing.as_ref().map(|listing| room(listing, &state.held, model))
    }

    /// The broker's state: the last listing, the room per model, the locks held and the counts.
    pub fn status(&self) -> NodeManagerStatus {
        let now = SystemTime::now();
        let state = lock(&self.shared.state);
        let (listed_at_unix_ms, nodes, capacity) = match &state.listing {
            None => (None, Vec::new(), BTreeMap::new()),
            Some(listing) => {
                let mut models: Vec<&str> =
                    listing.nodes.iter().map(|node| node.model.as_str()).collect();
                models.sort_unstable();
                models.dedup();
                let capacity = models
                    .into_iter()
                    .filter(|model| !model.is_empty())
                    .map(|model| (model.to_owned(), room(listing, &state.held, model)))
                    .collect();
                (Some(unix_ms(listing.listed_at)), listing.nodes.clone(), capacity)
            }
        };
        let mut locks_held: Vec<HeldLock> = state
            .held
            .values()
            .map(|held| HeldLock {
                lock_id: held.lock_id.clone(),
                node_id: held.node_id.to_string(),
                model: held.model.clone(),
                held_ms: now.duration_since(held.since).map(millis).unwrap_or(0),
            })
            .collect();
        locks_held.sort_by(|a, b| b.held_ms.cmp(&a.held_ms).then(a.lock_id.cmp(&b.lock_id)));
        NodeManagerStatus {
            url: self.shared.url.clone(),
            listed_at_unix_ms,
            nodes,
            capacity,
            locks_held,
            lock_waits: state.waits,
            releases_in_flight: state.releasing.len(),
            counters: state.counters,
        }
    }

    /// Waits until every release sent so far has been answered or has timed out; for a clean
    /// shutdown, so that the NodeManager gets its locks back before the process exits.
    pub async fn drain_releases(&self) {
        let sent = lock(&self.shared.state).releases_sent;
        self.shared.releases_done(sent).await;
    }
}

#[async_trait::async_trait]
impl ModelLockBroker for NodeManagerBroker {
    /// Waits, at most the call timeout, for this broker's earlier releases to reach the
    /// NodeManager, then makes one `AcquireMLNode` call bounded by the timeout. Without the
    /// wait, a lease given back just before would still count against the nodes' room, and the
    /// NodeManager would refuse the next lease for a slot that is free; upstream releases before
    /// it acquires again, too.
    async fn acquire(&self, request: &LeaseRequest<'_>) -> Result<ModelLease, LockError> {
        let _waiting = Waiting::start(&self.shared);
        let sent = lock(&self.shared.state).releases_sent;
        if tokio::time::timeout(self.shared.timeout, self.shared.releases_done(sent)).await.is_err()
        {
            debug!("earlier releases still under way; acquiring anyway");
        }
        let message = AcquireMlNodeRequest {
            model: request.model.to_owned(),
            excluded_nodes: request.excluded_nodes.iter().map(|id| id.to_string()).collect(),
            escrow_id: request.escrow_id.unwrap_or_default().to_owned(),
        };
        let answer = self
            .shared
            .call("AcquireMLNode", message, |mut client, request| async move {
                client.acquire_ml_node(request).await
            })
            .await;
        let granted = match answer {
            Ok(granted) => granted,
            Err(Error::Rpc { code: tonic::Code::ResourceExhausted, .. }) => {
                lock(&self.shared.state).counters.rejections += 1;
                metrics::counter!("validator_node_manager_rejections_total").increment(1);
                return Err(LockError::NoNode { model: request.model.to_owned() });
            }
            Err(err) => {
                lock(&self.shared.state).counters.failures += 1;
                metrics::counter!("validator_node_manager_acquires_total", "result" => "failed")
                    .increment(1);
                return Err(LockError::Broker(err.to_string()));
            }
        };
        if let Err(allowed) = check_url(&granted.endpoint) {
            let err = Error::BadEndpoint {
                node_id: granted.node_id,
                endpoint: granted.endpoint,
                allowed,
            };
            warn!(%err, "giving the lock back");
            lock(&self.shared.state).counters.bad_endpoints += 1;
            metrics::counter!("validator_node_manager_acquires_total", "result" => "bad_endpoint")
                .increment(1);
            self.shared.spawn_release(granted.lock_id, ReleaseOutcome::ApplicationError);
            return Err(LockError::Broker(err.to_string()));
        }
        // A node without an id is still usable; its endpoint names it in logs and exclusions.
        let node_id: Arc<str> = if granted.node_id.is_empty() {
            granted.endpoint.as_str().into()
        } else {
            granted.node_id.into()
        };
        let lease = {
            let mut state = lock(&self.shared.state);
            state.leases += 1;
            let lease = state.leases;
            state.held.insert(
                lease,
                Held {
                    lock_id: granted.lock_id,
                    node_id: Arc::clone(&node_id),
                    model: request.model.to_owned(),
                    since: SystemTime::now(),
                },
            );
            state.counters.granted += 1;
            metrics::gauge!("validator_node_manager_locks_held").set(state.held.len() as f64);
            lease
        };
        metrics::counter!("validator_node_manager_acquires_total", "result" => "granted")
            .increment(1);
        let node = MlNode { id: node_id, address: granted.endpoint.into() };
        let releaser = NodeManagerRelease { shared: Arc::clone(&self.shared), lease };
        Ok(ModelLease::new(node, Box::new(releaser)))
    }

    /// Whether some node lists `model`, whatever its status, in the last capacity listing; true
    /// before the first listing, so that no work is dropped while the broker has not heard from
    /// the NodeManager yet.
    fn serves(&self, model: &str) -> bool {
        let state = lock(&self.shared.state);
        state.listing.as_ref().is_none_or(|listing| listing.nodes.iter().any(|n| n.model == model))
    }

    /// [`NodeManagerBroker::room`]; unknown before the first listing.
    fn free_slots(&self, model: &str) -> Option<usize> {
        self.room(model).map(|room| usize::try_from(room).unwrap_or(usize::MAX))
    }
}

impl Shared {
    /// One call, bounded by the timeout, which is also sent as the call's gRPC deadline.
    async fn call<M, T, F, Fut>(&self, name: &'static str, message: M, call: F) -> Result<T>
    where
        F: FnOnce(NodeManagerClient<Channel>, tonic::Request<M>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.timeout);
        let timed_out = || Error::Timeout { call: name, timeout: self.timeout };
        match tokio::time::timeout(self.timeout, call(self.client.clone(), request)).await {
            Err(_) => Err(timed_out()),
            // A server that enforces the deadline it was sent answers first: Go's with
            // DEADLINE_EXCEEDED, tonic's with CANCELLED.
            Ok(Err(status))
                if matches!(
                    status.code(),
                    tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
                ) =>
            {
                Err(timed_out())
            }
            Ok(Err(status)) => Err(Error::rpc(name, &status)),
            Ok(Ok(response)) => Ok(response.into_inner()),
        }
    }

    async fn refresh_capacity(&self) -> Result<()> {
        let leases_before = lock(&self.state).leases;
        let answer = self
            .call(
                "ListNodeCapacity",
                ListNodeCapacityRequest {},
                |mut client, request| async move { client.list_node_capacity(request).await },
            )
            .await;
        let mut state = lock(&self.state);
        match answer {
            Ok(list) => {
                let nodes = list
                    .nodes
                    .into_iter()
                    .map(|entry| NodeCapacity {
                        node_id: entry.node_id,
                        model: entry.model,
                        max_concurrent: entry.max_concurrent,
                        lock_count: entry.lock_count,
                        status: entry.status,
                    })
                    .collect();
                state.listing = Some(Listing {
                    nodes,
                    listed_at: SystemTime::now(),
                    leases_before,
                    returned: HashMap::new(),
                });
                state.counters.listings += 1;
                Ok(())
            }
            Err(err) => {
                state.counters.listing_failures += 1;
                metrics::counter!("validator_node_manager_listing_failures_total").increment(1);
                Err(err)
            }
        }
    }

    async fn refresh_loop(&self, cancel: CancellationToken) {
        let mut ticks = tokio::time::interval(self.refresh);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = ticks.tick() => {}
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                refreshed = self.refresh_capacity() => {
                    if let Err(err) = refreshed {
                        warn!(%err, "NodeManager capacity listing failed; keeping the last one");
                    }
                }
            }
        }
    }

    /// Waits until the releases numbered up to `sent` have ended.
    async fn releases_done(&self, sent: u64) {
        loop {
            let released = self.released.notified();
            if lock(&self.state).releasing.first().is_none_or(|first| *first > sent) {
                return;
            }
            released.await;
        }
    }

    /// Gives `lock_id` back on a task of its own, bounded by the timeout.
    fn spawn_release(self: &Arc<Self>, lock_id: String, outcome: ReleaseOutcome) {
        let shared = Arc::clone(self);
        let number = {
            let mut state = lock(&self.state);
            state.releases_sent += 1;
            let number = state.releases_sent;
            state.releasing.insert(number);
            number
        };
        // Made before the task, so that a task dropped unpolled (a runtime shutting down) still
        // ends the release for whoever waits on it.
        let done = Releasing { shared: Arc::clone(&shared), number };
        let release = async move {
            let _done = done;
            let message = ReleaseMlNodeRequest { lock_id, outcome: outcome.into() };
            let lock_id = message.lock_id.clone();
            let answer = shared
                .call("ReleaseMLNode", message, |mut client, request| async move {
                    client.release_ml_node(request).await
                })
                .await;
            let failure = match answer {
                Ok(_) => {
                    debug!(%lock_id, ?outcome, "lock released");
                    let name = outcome.as_str_name().to_ascii_lowercase();
                    metrics::counter!("validator_node_manager_releases_total", "outcome" => name)
                        .increment(1);
                    lock(&shared.state).counters.releases += 1;
                    return;
                }
                Err(Error::Rpc { code: tonic::Code::NotFound, .. }) => {
                    warn!(%lock_id, "the NodeManager no longer knew the lock (evicted?)");
                    lock(&shared.state).counters.lost_locks += 1;
                    "lost"
                }
                Err(err) => {
                    warn!(%lock_id, %err, "release failed; the lock lives until its TTL");
                    lock(&shared.state).counters.release_failures += 1;
                    "failed"
                }
            };
            metrics::counter!("validator_node_manager_release_failures_total", "reason" => failure)
                .increment(1);
        };
        self.runtime.spawn(release);
    }
}

/// The room for `model` in `listing` (see [`NodeManagerBroker::room`]).
fn room(listing: &Listing, held: &HashMap<u64, Held>, model: &str) -> u64 {
    listing
        .nodes
        .iter()
        .filter(|node| node.model == model && node.status == SERVING_STATUS)
        .map(|node| {
            let ours = held
                .iter()
                .filter(|(lease, held)| {
                    **lease > listing.leases_before && *held.node_id == *node.node_id
                })
                .count();
            let returned = listing.returned.get(node.node_id.as_str()).copied().unwrap_or(0);
            let free = (i64::from(node.max_concurrent) - i64::from(node.lock_count) + returned)
                .min(i64::from(node.max_concurrent))
                - i64::try_from(ours).unwrap_or(i64::MAX);
            u64::try_from(free).unwrap_or(0)
        })
        .sum()
}

/// Counts an `AcquireMLNode` call as waiting for its answer while it lives, however it ends.
struct Waiting<'a> {
    shared: &'a Shared,
}

impl<'a> Waiting<'a> {
    fn start(shared: &'a Shared) -> Self {
        let mut state = lock(&shared.state);
        state.waits += 1;
        metrics::gauge!("validator_node_manager_lock_waits").set(state.waits as f64);
        Self { shared }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut state = lock(&self.shared.state);
        state.waits = state.waits.saturating_sub(1);
        metrics::gauge!("validator_node_manager_lock_waits").set(state.waits as f64);
    }
}

/// Marks a release ended however its task ends, and wakes whoever waits for it.
struct Releasing {
    shared: Arc<Shared>,
    number: u64,
}

impl Drop for Releasing {
    fn drop(&mut self) {
        lock(&self.shared.state).releasing.remove(&self.number);
        self.shared.released.notify_waiters();
    }
}

/// Gives a lease's lock back: forgets it at once, so [`NodeManagerBroker::room`] counts the slot
/// free again, and sends the release from a task.
struct NodeManagerRelease {
    shared: Arc<Shared>,
    lease: u64,
}

impl LeaseRelease for NodeManagerRelease {
    fn release(self: Box<Self>, health: NodeHealth) {
        let held = {
            let mut state = lock(&self.shared.state);
            let held = state.held.remove(&self.lease);
            metrics::gauge!("validator_node_manager_locks_held").set(state.held.len() as f64);
            if let (Some(held), Some(listing)) = (&held, state.listing.as_mut()) {
                if self.lease <= listing.leases_before {
                    *listing.returned.entry(Arc::clone(&held.node_id)).or_default() += 1;
                }
            }
            held
        };
        if let Some(held) = held {
            self.shared.spawn_release(held.lock_id, release_outcome(health));
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map(millis).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, model: &str, max: i32, locks: i32, status: &str) -> NodeCapacity {
        NodeCapacity {
            node_id: id.into(),
            model: model.into(),
            max_concurrent: max,
            lock_count: locks,
            status: status.into(),
        }
    }

    fn held(node: &str, model: &str) -> Held {
        Held {
            lock_id: format!("lock-{node}"),
            node_id: node.into(),
            model: model.into(),
            since: SystemTime::now(),
        }
    }

    #[test]
    fn outcomes_follow_upstream() {
        assert_eq!(release_outcome(NodeHealth::Healthy), ReleaseOutcome::Success);
        assert_eq!(release_outcome(NodeHealth::Failed), ReleaseOutcome::TransportError);
        assert_eq!(release_outcome(NodeHealth::TimedOut), ReleaseOutcome::Timeout);
        assert_eq!(release_outcome(NodeHealth::BadAnswer), ReleaseOutcome::ApplicationError);
        assert_eq!(release_outcome(NodeHealth::Unknown), ReleaseOutcome::TransportError);
    }

    #[test]
    fn room_counts_serving_nodes_of_the_model_less_newer_leases() {
        let listing = Listing {
            nodes: vec![
                node("a", "m", 4, 1, SERVING_STATUS),
                node("a", "other", 4, 1, SERVING_STATUS),
                node("b", "m", 2, 5, SERVING_STATUS),
                node("c", "m", 8, 0, "POC"),
                node("d", "m", 2, 0, SERVING_STATUS),
            ],
            listed_at: SystemTime::now(),
            leases_before: 10,
            returned: HashMap::from([(Arc::from("d"), 5)]),
        };
        let mut leases = HashMap::new();
        assert_eq!(room(&listing, &leases, "m"), 3 + 2);
        assert_eq!(room(&listing, &leases, "other"), 3);
        assert_eq!(room(&listing, &leases, "unknown"), 0);
        // A lease from before the listing is in its lock counts already.
        leases.insert(9, held("a", "m"));
        assert_eq!(room(&listing, &leases, "m"), 5);
        // Newer leases take from their node, for every model it serves.
        leases.insert(11, held("a", "m"));
        leases.insert(12, held("d", "m"));
        leases.insert(13, held("d", "m"));
        leases.insert(14, held("d", "m"));
        assert_eq!(room(&listing, &leases, "m"), 2);
        assert_eq!(room(&listing, &leases, "other"), 2);
    }
}
