//! What readiness, the admin status and the metrics say about the parts the node depends on:
//! the chain it follows ([`ChainProgress`]) and the ML nodes it replays on ([`ml_reachable`]).

use std::{
    sync::{Mutex, PoisonError},
    time::Duration,
};

use ml_client::{Availability, NodeManagerBroker, NodePool};
use serde::Serialize;
use tokio::{sync::watch, time::Instant};

/// The chain as the node follows it: the last block seen and when, and the current epoch.
/// Updated by the block triggers; read by readiness, the status route and the metrics.
#[derive(Debug)]
pub struct ChainProgress {
    /// How long without a block before the chain counts as not followed
    /// (`chain.events.idle_timeout`).
    idle: Duration,
    seen: Mutex<Seen>,
    heights: watch::Sender<u64>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    at: Option<Instant>,
    epoch: Option<u64>,
}

/// What [`ChainProgress::report`] says.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ChainReport {
    /// The last block seen; `None` before the first.
    pub height: Option<u64>,
    /// Seconds since that block arrived: how far behind the chain this node may be.
    pub seconds_since_block: Option<f64>,
    /// Whether a block arrived within the idle timeout.
    pub followed: bool,
    /// The current epoch, once the epoch schedule was read.
    pub epoch: Option<u64>,
}

impl ChainProgress {
    /// Progress that counts the chain as followed while a block arrived within `idle`.
    pub fn new(idle: Duration) -> Self {
        Self { idle, seen: Mutex::default(), heights: watch::Sender::new(0) }
    }

    /// A block at `height` arrived now.
    pub fn block(&self, height: u64) {
        self.lock().at = Some(Instant::now());
        self.heights.send_replace(height);
        metrics::gauge!("validator_chain_height").set(height as f64);
    }

    /// The epoch schedule says the current epoch is `epoch`.
    pub fn epoch(&self, epoch: u64) {
        self.lock().epoch = Some(epoch);
        metrics::gauge!("validator_epoch").set(epoch as f64);
    }

    /// The chain's state now; also refreshes `validator_chain_block_age_seconds`.
    pub fn report(&self) -> ChainReport {
        let seen = *self.lock();
        let age = seen.at.map(|at| at.elapsed());
        if let Some(age) = age {
            metrics::gauge!("validator_chain_block_age_seconds").set(age.as_secs_f64());
        }
        let height = *self.heights.borrow();
        ChainReport {
            height: seen.at.map(|_| height),
            seconds_since_block: age.map(|age| (age.as_secs_f64() * 10.0).round() / 10.0),
            followed: age.is_some_and(|age| age <= self.idle),
            epoch: seen.epoch,
        }
    }

    /// Why the chain does not count as followed, or `None` when it does.
    pub fn problem(&self) -> Option<String> {
        let report = self.report();
        match report.seconds_since_block {
            _ if report.followed => None,
            None => Some("chain: no block seen yet".into()),
            Some(age) => Some(format!(
                "chain: no block for {age:.0} s (idle timeout {} s)",
                self.idle.as_secs()
            )),
        }
    }

    /// Resolves once a block at `height` or later was seen.
    pub async fn wait_for_height(&self, height: u64) {
        let mut heights = self.heights.subscribe();
        let _ = heights.wait_for(|seen| *seen >= height).await;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Whether the node can replay: with a NodeManager, a capacity listing arrived within
/// `stale_after`; with its own pool, at least one node is up. `Err` says which part is not.
pub fn ml_reachable(
    pool: &NodePool,
    node_manager: Option<&NodeManagerBroker>,
    stale_after: Duration,
) -> Result<(), String> {
    if let Some(broker) = node_manager {
        let status = broker.status();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX));
        return match status.listed_at_unix_ms {
            None => Err(format!("ml: the NodeManager at {} has not answered yet", status.url)),
            Some(at) if now.saturating_sub(at) > millis(stale_after) => Err(format!(
                "ml: the NodeManager at {} last answered {} s ago",
                status.url,
                now.saturating_sub(at) / 1000
            )),
            Some(_) => Ok(()),
        };
    }
    let nodes = pool.status();
    if nodes.iter().any(|node| node.availability == Availability::Up) {
        Ok(())
    } else {
        Err(format!("ml: none of the {} ML nodes is up", nodes.len()))
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_chain_counts_as_followed_while_blocks_arrive_within_the_idle_timeout() {
        let progress = ChainProgress::new(Duration::from_secs(30));
        assert_eq!(progress.problem().as_deref(), Some("chain: no block seen yet"));
        progress.block(7);
        progress.epoch(3);
        let report = progress.report();
        assert_eq!((report.height, report.epoch, report.followed), (Some(7), Some(3), true));
        progress.wait_for_height(7).await;
        assert!(progress.problem().is_none());
        tokio::time::advance(Duration::from_secs(31)).await;
        assert_eq!(
            progress.problem().as_deref(),
            Some("chain: no block for 31 s (idle timeout 30 s)")
        );
        progress.block(8);
        assert!(progress.problem().is_none());
    }
}
