//! What both backends do the same way: count the history a full queue drops, and lay an
//! outcome out in the `validations` table's columns.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use tracing::warn;
use validator_core::Outcome;

/// How often a full queue is reported in the log; every drop is counted in the metric.
const DROP_WARNING_INTERVAL: Duration = Duration::from_secs(1);

/// Writes dropped because the queue was full (or the journal closed): counted, put in the
/// metric, and said in the log at most once a second.
#[derive(Debug)]
pub(crate) struct Drops {
    dropped: AtomicU64,
    started: Instant,
    next_warning_ms: AtomicU64,
}

impl Drops {
    pub(crate) fn new() -> Self {
        Self {
            dropped: AtomicU64::new(0),
            started: Instant::now(),
            next_warning_ms: AtomicU64::new(0),
        }
    }

    /// Drops since start.
    pub(crate) fn count(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Counts `n` more drops.
    pub(crate) fn add(&self, n: u64) {
        let dropped = self.dropped.fetch_add(n, Ordering::Relaxed) + n;
        metrics::counter!("validator_journal_dropped_total").increment(n);
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let due = self.next_warning_ms.load(Ordering::Relaxed);
        let interval = u64::try_from(DROP_WARNING_INTERVAL.as_millis()).unwrap_or(u64::MAX);
        if now >= due
            && self
                .next_warning_ms
                .compare_exchange(
                    due,
                    now.saturating_add(interval),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            warn!(dropped, "journal queue full, closed or unwritable: history dropped");
        }
    }
}

/// An outcome's columns in `validations`: verdict, value, message id, transaction hash, stage
/// and error, each when the outcome has one.
pub(crate) struct OutcomeColumns<'a> {
    pub(crate) verdict: Option<&'a str>,
    pub(crate) value: Option<f64>,
    pub(crate) msg_id: Option<&'a String>,
    pub(crate) tx_hash: Option<&'a String>,
    pub(crate) stage: Option<&'static str>,
    pub(crate) error: Option<&'a String>,
}

impl<'a> OutcomeColumns<'a> {
    pub(crate) fn of(outcome: &'a Outcome) -> Self {
        let none = Self {
            verdict: None,
            value: None,
            msg_id: None,
            tx_hash: None,
            stage: None,
            error: None,
        };
        match outcome {
            Outcome::Submitted { verdict, value, msg_id, tx_hash } => Self {
                verdict: Some(verdict.as_str()),
                value: Some(*value),
                msg_id: Some(msg_id),
                tx_hash: tx_hash.as_ref(),
                ..none
            },
            Outcome::Invalidated { msg_id, tx_hash, .. } => {
                Self { msg_id: Some(msg_id), tx_hash: tx_hash.as_ref(), ..none }
            }
            Outcome::GaveUp { stage, error } => {
                Self { stage: Some(stage.as_str()), error: Some(error), ..none }
            }
            // A devshard verdict is kept with its reason tag as the verdict and its similarity
            // as the value; nothing of it went to the chain.
            Outcome::Judged { verdict } => {
                Self { verdict: Some(verdict.reason.as_str()), value: verdict.similarity, ..none }
            }
            Outcome::Skipped { .. } | Outcome::Cancelled => none,
        }
    }
}
