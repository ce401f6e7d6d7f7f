//! The leader among replicas on one shared journal: the replica holding the `leader` lease does
//! the duties that must not run twice (the reward claim, the periodic reward check, journal
//! pruning). Every replica asks for the lease every third of its TTL; the holder's renewals keep
//! it (the journal renews every lease it holds), and when the holder dies another replica takes
//! it over one TTL after the holder's last renewal. A process alone on its journal is always
//! the leader.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use validator_core::ports::{
    lease::{Acquired, LeaseKey},
    Leases,
};

/// The shortest pause between two requests for the lease, whatever the TTL.
const MIN_ASK_INTERVAL: Duration = Duration::from_millis(100);

/// Added to the holder's remaining time before asking again, so the question lands after the
/// expiry rather than just before it.
const EXPIRY_MARGIN: Duration = Duration::from_millis(20);

/// Whether this replica is the leader, and how it became so.
pub struct Leadership {
    leases: Arc<dyn Leases>,
    key: LeaseKey,
    /// Times this replica became the leader.
    gained: AtomicU64,
}

impl Leadership {
    /// Leadership through `leases`.
    pub fn new(leases: Arc<dyn Leases>) -> Self {
        Self { leases, key: LeaseKey::leader(), gained: AtomicU64::new(0) }
    }

    /// Whether the leases are shared with other replicas.
    pub fn shared(&self) -> bool {
        self.leases.status().shared
    }

    /// Whether this replica holds the leader lease now.
    pub fn is_leader(&self) -> bool {
        self.leases.held(&self.key)
    }

    /// How many times this replica became the leader since start.
    pub fn gained(&self) -> u64 {
        self.gained.load(Ordering::Acquire)
    }

    /// Asks for the lease until `cancel` fires: every third of the TTL while another replica
    /// holds it, and again whenever this replica's hold lapses. Returns at once when the leases
    /// are not shared.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        if !self.shared() {
            metrics::gauge!("validator_leader").set(1.0);
            return;
        }
        let interval = (self.leases.ttl() / 3).max(MIN_ASK_INTERVAL);
        let mut leading = false;
        loop {
            let mut pause = interval;
            if !self.is_leader() {
                if leading {
                    warn!("this replica lost the leader lease");
                    leading = false;
                }
                if let Some(remaining) = self.ask().await {
                    // Ask again just after the holder's lease would expire, if that is sooner.
                    pause = pause.min(remaining.saturating_add(EXPIRY_MARGIN));
                }
            }
            let now = self.is_leader();
            if now && !leading {
                self.gained.fetch_add(1, Ordering::AcqRel);
                leading = true;
            }
            metrics::gauge!("validator_leader").set(if now { 1.0 } else { 0.0 });
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Asks for the lease once; the holder's remaining time when another replica holds it.
    async fn ask(&self) -> Option<Duration> {
        let timeout = self.leases.ttl() / 3;
        match tokio::time::timeout(timeout, self.leases.acquire(&self.key)).await {
            Ok(Ok(Acquired::Held { takeover: Some(takeover) })) => {
                metrics::counter!("validator_leader_takeovers_total").increment(1);
                info!(from = %takeover.from, "this replica took the leader lease over");
            }
            Ok(Ok(Acquired::Held { takeover: None })) => info!("this replica is the leader"),
            Ok(Ok(Acquired::Busy { remaining, .. })) => return Some(remaining),
            Ok(Ok(Acquired::Done { .. })) => {}
            Ok(Err(err)) => warn!(%err, "cannot ask for the leader lease"),
            Err(_) => warn!("the leader lease request timed out"),
        }
        None
    }
}
