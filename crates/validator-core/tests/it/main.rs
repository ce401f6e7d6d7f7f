//! End-to-end scenarios of the engine through its public API, on the in-memory fakes. Timers
//! run on paused tokio time; tests await signals (outcomes, submissions), never sleep.
#![allow(clippy::unwrap_used, clippy::expect_used)]

// Devshard jobs: verdicts to the caller, joins, the challenged lane, ML capacity waits.
mod devshard;
// The journal: write-ahead intents, reconciliation after a crash, history.
mod journal;
// Payload retrieval: retries, back-off, invalidations, legacy payloads, staleness.
mod payloads;
// Random interleavings of every entry point against a model of the engine.
mod property;
// Recovery runs: detection, the guard, joining, not-active.
mod recovery;
// Lock, replay, comparison and the submitted message.
mod replay;
// Replicas on one shared journal: leases, takeovers, open intents of a dead replica.
mod replicas;
// Slots, lanes, dedup, panics and shutdown.
mod scheduling;

use std::time::Duration;

use testkit::memory::MemoryPorts;
use tokio::sync::broadcast;
use validator_core::{Config, Engine, OutcomeEvent, RetryPolicy};

/// The engine on fakes, with a receiver of its outcomes.
pub(crate) struct Harness {
    pub(crate) fakes: MemoryPorts,
    pub(crate) engine: Engine,
    pub(crate) outcomes: broadcast::Receiver<OutcomeEvent>,
}

/// Upstream's timings, a seeded jitter, and room for every outcome on the stream.
pub(crate) fn config(slots: usize) -> Config {
    Config {
        slots,
        jitter_seed: Some(7),
        outcome_buffer: 1 << 16,
        payload_retry: RetryPolicy::payload_default(),
        replay_retry: RetryPolicy::replay_default(),
        ..Config::default()
    }
}

impl Harness {
    pub(crate) fn new(config: Config, fakes: MemoryPorts) -> Self {
        let engine = Engine::start(config, fakes.ports()).expect("valid config");
        let outcomes = engine.outcomes();
        Self { fakes, engine, outcomes }
    }

    /// MemoryPorts with an ML node of `latency` and as many node slots as engine slots.
    pub(crate) fn with_slots(slots: usize, latency: Duration) -> Self {
        Self::new(config(slots), MemoryPorts::new(latency, slots))
    }

    pub(crate) async fn next_outcome(&mut self) -> OutcomeEvent {
        self.outcomes.recv().await.expect("outcome stream open")
    }

    pub(crate) async fn collect(&mut self, n: usize) -> Vec<OutcomeEvent> {
        let mut events = Vec::with_capacity(n);
        while events.len() < n {
            events.push(self.next_outcome().await);
        }
        events
    }
}

/// Lets the engine's tasks run until `condition` holds. Tests run on a single-threaded runtime
/// with paused time, so this neither sleeps nor moves the clock: it only yields to the tasks
/// that are ready, and fails if they settle without the condition holding.
pub(crate) async fn settle(condition: impl Fn() -> bool) {
    for _ in 0..100_000 {
        if condition() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("the engine settled without the condition holding");
}
