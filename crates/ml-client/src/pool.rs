//! [`NodePool`]: leases on the configured ML nodes, with per-node health (DOMAIN.md 2.5).
//!
//! A node is *up*, *down* (cooling down after `failure_threshold` consecutive failures, skipped
//! by leases) or *half-open* (cool-down over, on trial). A half-open node takes one lease at a
//! time; the first success brings it fully back, a failure sends it down again for twice the
//! previous cool-down, up to `cooldown_max`.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::Serialize;
use tokio::{task::JoinHandle, time::Instant};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use validator_core::ports::model_lock::{
    LeaseRelease, LeaseRequest, LockError, MlNode, ModelLease, ModelLockBroker, NodeHealth,
};

use crate::{Config, HttpMlNodeClient, Result};

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section only updates counters, so the state is consistent even if a
    // holder panicked.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Where a node stands in the rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Availability {
    /// Takes leases up to its `max_concurrent`.
    Up,
    /// Cooling down after consecutive failures; skipped by leases.
    Down,
    /// Cool-down over: takes one lease at a time until a success brings it up or a failure
    /// sends it down again.
    HalfOpen,
}

/// One node's state, as [`NodePool::status`] reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeStatus {
    /// The node's configured id.
    pub id: String,
    /// The node's configured URL.
    pub url: String,
    /// The base replays are posted under (URL, version and segment).
    pub address: String,
    /// Models the node serves.
    pub models: Vec<String>,
    /// Leases held now.
    pub in_use: usize,
    /// Leases the node takes at once.
    pub max_concurrent: usize,
    /// Whether the node takes leases.
    pub availability: Availability,
    /// Failed calls or probes since the last success.
    pub consecutive_failures: u32,
    /// End of the running cool-down, in milliseconds since the Unix epoch.
    pub down_until_unix_ms: Option<u64>,
    /// Time left in the running cool-down, in milliseconds.
    pub down_remaining_ms: Option<u64>,
}

/// A broker over the configured ML nodes: a lease takes a slot on the least-busy eligible node
/// serving the model, and gives it back when dropped.
///
/// Eligible means serving the model, below its `max_concurrent`, and not down. Among equally
/// busy nodes the one leased least recently wins, so nodes serving one model share the load
/// even when leases never overlap. Never waits: no eligible node is an immediate
/// [`LockError::NoNode`]. Cloning shares the pool.
#[derive(Debug, Clone)]
pub struct NodePool {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    nodes: Vec<Node>,
    models: HashSet<String>,
    policy: Policy,
    probe: Option<Probe>,
    state: Mutex<PoolState>,
}

#[derive(Debug)]
struct Node {
    id: Arc<str>,
    url: String,
    address: Arc<str>,
    models: HashSet<String>,
    max_concurrent: usize,
}

#[derive(Debug, Clone, Copy)]
struct Policy {
    failure_threshold: u32,
    cooldown_base: Duration,
    cooldown_max: Duration,
}

#[derive(Debug, Clone)]
struct Probe {
    path: String,
    interval: Duration,
    timeout: Duration,
}

#[derive(Debug, Default)]
struct PoolState {
    nodes: Vec<NodeState>,
    /// Leases granted so far; stamps each node's latest lease for the tie-break.
    leases: u64,
}

#[derive(Debug, Default, Clone)]
struct NodeState {
    in_use: usize,
    last_leased: u64,
    failures: u32,
    /// Times the node went down since its last success; sets the cool-down's length.
    trips: u32,
    down_until: Option<Instant>,
}

impl NodeState {
    fn availability(&self, now: Instant) -> Availability {
        match self.down_until {
            None => Availability::Up,
            Some(until) if now < until => Availability::Down,
            Some(_) => Availability::HalfOpen,
        }
    }

    /// Records how a call or probe went; returns the transition worth logging.
    fn record(&mut self, health: NodeHealth, policy: Policy, now: Instant) -> Option<Transition> {
        match health {
            NodeHealth::Unknown => None,
            NodeHealth::Healthy | NodeHealth::BadAnswer => {
                let was_down = self.down_until.take().is_some();
                self.failures = 0;
                self.trips = 0;
                was_down.then_some(Transition::Up)
            }
            NodeHealth::Failed | NodeHealth::TimedOut => {
                self.failures = self.failures.saturating_add(1);
                let trip = match self.availability(now) {
                    Availability::Up => self.failures >= policy.failure_threshold,
                    // Calls that were already running when the node went down fail too; they
                    // neither lengthen nor restart the cool-down.
                    Availability::Down => false,
                    Availability::HalfOpen => true,
                };
                if !trip {
                    return None;
                }
                let cooldown = policy.cooldown(self.trips);
                self.trips = self.trips.saturating_add(1);
                self.down_until = Some(now + cooldown);
                Some(Transition::Down { failures: self.failures, cooldown })
            }
        }
    }
}

impl Policy {
    /// The cool-down after `trips` earlier trips without a success in between.
    fn cooldown(self, trips: u32) -> Duration {
        let factor = 1u32.checked_shl(trips.min(31)).unwrap_or(u32::MAX);
        self.cooldown_base.saturating_mul(factor).min(self.cooldown_max)
    }
}

enum Transition {
    Up,
    Down { failures: u32, cooldown: Duration },
}

impl NodePool {
    /// A pool over the nodes of `config`, after validating it. Every node starts up.
    pub fn new(config: &Config) -> Result<Self> {
        config.validate()?;
        let nodes: Vec<Node> = config
            .nodes
            .iter()
            .map(|node| Node {
                id: node.id.as_str().into(),
                url: node.url.clone(),
                address: node.base_url().into(),
                models: node.models.iter().cloned().collect(),
                max_concurrent: node.max_concurrent,
            })
            .collect();
        let health = &config.health;
        let shared = Shared {
            models: nodes.iter().flat_map(|node| node.models.iter().cloned()).collect(),
            policy: Policy {
                failure_threshold: health.failure_threshold,
                cooldown_base: health.cooldown_base,
                cooldown_max: health.cooldown_max,
            },
            probe: health.probe_path.as_ref().map(|path| Probe {
                path: path.clone(),
                interval: health.probe_interval,
                timeout: health.probe_timeout,
            }),
            state: Mutex::new(PoolState {
                nodes: vec![NodeState::default(); nodes.len()],
                leases: 0,
            }),
            nodes,
        };
        Ok(Self { shared: Arc::new(shared) })
    }

    /// Every node's state, in configuration order.
    pub fn status(&self) -> Vec<NodeStatus> {
        let now = Instant::now();
        let wall = SystemTime::now();
        let state = lock(&self.shared.state);
        self.shared
            .nodes
            .iter()
            .zip(&state.nodes)
            .map(|(node, node_state)| {
                let remaining = node_state
                    .down_until
                    .map(|until| until.saturating_duration_since(now))
                    .filter(|left| !left.is_zero());
                let mut models: Vec<String> = node.models.iter().cloned().collect();
                models.sort();
                NodeStatus {
                    id: node.id.to_string(),
                    url: node.url.clone(),
                    address: node.address.to_string(),
                    models,
                    in_use: node_state.in_use,
                    max_concurrent: node.max_concurrent,
                    availability: node_state.availability(now),
                    consecutive_failures: node_state.failures,
                    down_until_unix_ms: remaining.map(|left| unix_ms(wall + left)),
                    down_remaining_ms: remaining.map(millis),
                }
            })
            .collect()
    }

    /// Starts probing every node's health endpoint (`{url}{probe_path}`) every
    /// `probe_interval` through `client`, on a task that ends when `cancel` fires. A 2xx answer
    /// counts as a success, anything else as a failure. `None` when no probe path is set.
    ///
    /// Must be called within a Tokio runtime.
    pub fn spawn_probe(
        &self,
        client: &HttpMlNodeClient,
        cancel: CancellationToken,
    ) -> Option<JoinHandle<()>> {
        let probe = self.shared.probe.clone()?;
        let shared = Arc::clone(&self.shared);
        let client = client.clone();
        Some(tokio::spawn(async move { shared.probe_loop(client, probe, cancel).await }))
    }
}

impl Shared {
    fn record(&self, index: usize, health: NodeHealth) {
        let transition = {
            let mut state = lock(&self.state);
            let Some(node_state) = state.nodes.get_mut(index) else { return };
            node_state.record(health, self.policy, Instant::now())
        };
        let Some(node) = self.nodes.get(index) else { return };
        match transition {
            Some(Transition::Up) => info!(node = %node.id, "ML node is back up"),
            Some(Transition::Down { failures, cooldown }) => warn!(
                node = %node.id,
                failures,
                cooldown_ms = millis(cooldown),
                "ML node marked down"
            ),
            None => {}
        }
    }

    fn release(&self, index: usize, health: NodeHealth) {
        {
            let mut state = lock(&self.state);
            if let Some(node_state) = state.nodes.get_mut(index) {
                node_state.in_use = node_state.in_use.saturating_sub(1);
            }
        }
        self.record(index, health);
    }

    async fn probe_loop(&self, client: HttpMlNodeClient, probe: Probe, cancel: CancellationToken) {
        let urls: Vec<String> = self
            .nodes
            .iter()
            .map(|node| format!("{}{}", node.url.trim_end_matches('/'), probe.path))
            .collect();
        let mut ticks = tokio::time::interval(probe.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let round = urls.iter().map(|url| client.probe(url, probe.timeout));
            let results = tokio::select! {
                () = cancel.cancelled() => return,
                results = futures_util::future::join_all(round) => results,
            };
            for (index, healthy) in results.into_iter().enumerate() {
                self.record(index, if healthy { NodeHealth::Healthy } else { NodeHealth::Failed });
            }
        }
    }
}

#[async_trait::async_trait]
impl ModelLockBroker for NodePool {
    async fn acquire(&self, request: &LeaseRequest<'_>) -> Result<ModelLease, LockError> {
        self.lease_excluding(request.model, request.excluded_nodes)
    }

    fn serves(&self, model: &str) -> bool {
        self.shared.models.contains(model)
    }

    /// Free slots on the nodes serving `model` that would be leased now: up nodes' free slots,
    /// and one on a half-open node that is idle.
    fn free_slots(&self, model: &str) -> Option<usize> {
        let now = Instant::now();
        let state = lock(&self.shared.state);
        let free = self
            .shared
            .nodes
            .iter()
            .zip(&state.nodes)
            .filter(|(node, _)| node.models.contains(model))
            .map(|(node, node_state)| match node_state.availability(now) {
                Availability::Up => node.max_concurrent.saturating_sub(node_state.in_use),
                Availability::HalfOpen => usize::from(node_state.in_use == 0),
                Availability::Down => 0,
            })
            .sum();
        Some(free)
    }
}

impl NodePool {
    /// Takes a slot on the least-busy eligible node serving `model`, at once.
    pub fn lease(&self, model: &str) -> Result<ModelLease, LockError> {
        self.lease_excluding(model, &[])
    }

    /// [`lease`](NodePool::lease), passing over the nodes in `excluded`.
    pub fn lease_excluding(
        &self,
        model: &str,
        excluded: &[Arc<str>],
    ) -> Result<ModelLease, LockError> {
        let now = Instant::now();
        let index = {
            let mut guard = lock(&self.shared.state);
            let state = &mut *guard;
            let chosen = self
                .shared
                .nodes
                .iter()
                .zip(&state.nodes)
                .enumerate()
                .filter(|(_, (node, node_state))| {
                    node.models.contains(model)
                        && !excluded.contains(&node.id)
                        && node_state.in_use < node.max_concurrent
                        && match node_state.availability(now) {
                            Availability::Up => true,
                            Availability::HalfOpen => node_state.in_use == 0,
                            Availability::Down => false,
                        }
                })
                .min_by_key(|(_, (_, node_state))| (node_state.in_use, node_state.last_leased))
                .map(|(index, _)| index);
            let Some(index) = chosen else {
                return Err(LockError::NoNode { model: model.to_owned() });
            };
            state.leases += 1;
            let stamp = state.leases;
            if let Some(node_state) = state.nodes.get_mut(index) {
                node_state.in_use += 1;
                node_state.last_leased = stamp;
            }
            index
        };
        let node = &self.shared.nodes[index];
        let leased = MlNode { id: Arc::clone(&node.id), address: Arc::clone(&node.address) };
        Ok(ModelLease::new(
            leased,
            Box::new(PoolRelease { shared: Arc::clone(&self.shared), index }),
        ))
    }
}

/// Gives a lease's slot back and records the call's health; never blocks beyond the pool's
/// short critical section.
struct PoolRelease {
    shared: Arc<Shared>,
    index: usize,
}

impl LeaseRelease for PoolRelease {
    fn release(self: Box<Self>, health: NodeHealth) {
        self.shared.release(self.index, health);
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map(millis).unwrap_or(0)
}

#[cfg(test)]
mod tests;
