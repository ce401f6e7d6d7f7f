//! The recovery guard: at most one recovery run at a time across every trigger, and a handle
//! through which a losing trigger can see and await the run that won.

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::watch;

use crate::{
    outcome::{Outcome, OutcomeCounts, OutcomeKind},
    sync::{AtomicU64, Mutex, MutexGuard, Ordering},
};

/// What started a recovery run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// The claim trigger, before claiming the previous epoch.
    Claim,
    /// The periodic reward check.
    RewardCheck,
    /// An operator, through the admin API.
    Admin,
    /// A direct call of [`crate::Engine::recover`].
    Direct,
}

impl Trigger {
    /// Stable lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Claim => "claim",
            Trigger::RewardCheck => "reward_check",
            Trigger::Admin => "admin",
            Trigger::Direct => "direct",
        }
    }
}

/// Where a recovery run is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "detail", rename_all = "snake_case")]
pub enum RunState {
    /// Detecting missed validations and admitting them.
    Detecting,
    /// Detection is done; waiting for the admitted validations to finish.
    Executing,
    /// Every detected validation reached a terminal outcome.
    Completed,
    /// This validator is not active in the current epoch; nothing was executed.
    NotActive,
    /// Detection failed (the validations already admitted were still awaited), or not one
    /// detected validation could be validated, every one giving up: the message says which.
    Failed(String),
    /// Shutdown cancelled the run.
    Cancelled,
}

impl RunState {
    /// Stable snake-case name, as the `state` tag of its JSON form.
    pub fn as_str(&self) -> &'static str {
        match self {
            RunState::Detecting => "detecting",
            RunState::Executing => "executing",
            RunState::Completed => "completed",
            RunState::NotActive => "not_active",
            RunState::Failed(_) => "failed",
            RunState::Cancelled => "cancelled",
        }
    }

    /// Whether the run has ended.
    pub fn is_final(&self) -> bool {
        !matches!(self, RunState::Detecting | RunState::Executing)
    }
}

/// What a recovery run did, counted per terminal outcome (not "attempted").
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunReport {
    /// The run's id, unique within the process.
    pub run_id: u64,
    /// The epoch being recovered.
    pub epoch: u64,
    /// Where the run is.
    #[serde(flatten)]
    pub state: RunState,
    /// Missed validations found so far.
    pub detected: u64,
    /// Of those, admitted into the engine (or joined to the same validation already in flight).
    pub admitted: u64,
    /// Terminal outcomes of the detected validations.
    pub outcomes: OutcomeCounts,
}

impl RunReport {
    fn new(run_id: u64, epoch: u64) -> Self {
        Self {
            run_id,
            epoch,
            state: RunState::Detecting,
            detected: 0,
            admitted: 0,
            outcomes: OutcomeCounts::default(),
        }
    }
}

/// The run's side of its report: counts outcomes as the scheduler finishes keys.
pub(crate) struct RunTracker {
    id: u64,
    report: watch::Sender<RunReport>,
    /// Why its validations gave up, for the run's summary.
    gave_up: Mutex<GaveUpCauses>,
}

/// The validations of a run that gave up: how many per stage, and the last error.
#[derive(Debug, Default)]
struct GaveUpCauses {
    by_stage: std::collections::BTreeMap<&'static str, u64>,
    last_error: Option<String>,
}

impl RunTracker {
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    pub(crate) fn detected(&self) {
        self.report.send_modify(|report| report.detected += 1);
    }

    pub(crate) fn admitted(&self) {
        self.report.send_if_modified(|report| {
            report.admitted += 1;
            false
        });
    }

    /// Counts one terminal outcome and, for one that gave up, its stage and error.
    pub(crate) fn record(&self, outcome: &Outcome) {
        if let Outcome::GaveUp { stage, error } = outcome {
            let mut causes = self.gave_up.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            *causes.by_stage.entry(stage.as_str()).or_default() += 1;
            causes.last_error = Some(error.clone());
        }
        self.count(outcome.kind());
    }

    /// Counts one terminal outcome of `kind`. Watchers are woken only when that may complete
    /// the run.
    pub(crate) fn count(&self, kind: OutcomeKind) {
        self.report.send_if_modified(|report| {
            report.outcomes.add(kind);
            report.state == RunState::Executing && report.outcomes.total() == report.detected
        });
    }

    pub(crate) fn set_state(&self, state: RunState) {
        self.report.send_modify(|report| report.state = state);
    }

    /// Waits until every detected validation has an outcome.
    pub(crate) async fn drained(&self) {
        let mut report = self.report.subscribe();
        // The sender lives in `self`, so the channel cannot close while this waits.
        let _ = report.wait_for(|report| report.outcomes.total() >= report.detected).await;
    }

    pub(crate) fn report(&self) -> RunReport {
        self.report.borrow().clone()
    }

    /// Why the run validated nothing: `Some` when it detected validations and every one that
    /// ended gave up (or was cancelled) with at least one giving up, naming the count, the
    /// stages and the last error; `None` when anything was validated.
    pub(crate) fn nothing_validated(&self) -> Option<String> {
        let report = self.report();
        let gave_up = report.outcomes.get(OutcomeKind::GaveUp);
        let validated = report
            .outcomes
            .total()
            .saturating_sub(gave_up)
            .saturating_sub(report.outcomes.get(OutcomeKind::Cancelled));
        if report.detected == 0 || gave_up == 0 || validated > 0 {
            return None;
        }
        let causes = self.gave_up.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let stages: Vec<String> =
            causes.by_stage.iter().map(|(stage, n)| format!("{stage} {n}")).collect();
        Some(format!(
            "0 of {} validated: {gave_up} gave up (by stage: {}); last error: {}",
            report.detected,
            stages.join(", "),
            causes.last_error.as_deref().unwrap_or("none recorded"),
        ))
    }
}

/// A view of one recovery run; cheap to clone.
#[derive(Debug, Clone)]
pub struct RunHandle {
    id: u64,
    report: watch::Receiver<RunReport>,
}

impl RunHandle {
    /// The run's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The run's report as it stands.
    pub fn report(&self) -> RunReport {
        self.report.borrow().clone()
    }

    /// Waits for the run to end and returns its final report. A run that died without one (its
    /// task panicked) reports [`RunState::Failed`].
    pub async fn wait(&self) -> RunReport {
        let mut report = self.report.clone();
        let ended = report.wait_for(|report| report.state.is_final()).await.map(|r| r.clone());
        ended.unwrap_or_else(|_| {
            let mut last = report.borrow().clone();
            if !last.state.is_final() {
                last.state = RunState::Failed("recovery run ended without a report".into());
            }
            last
        })
    }
}

/// The answer to a recovery trigger.
#[derive(Debug, Clone)]
pub enum RecoveryStart {
    /// This trigger started a run.
    Started(RunHandle),
    /// A run was already going; this trigger started nothing. Await the handle to join it.
    AlreadyRunning(RunHandle),
}

impl RecoveryStart {
    /// The run's handle, either way.
    pub fn handle(&self) -> &RunHandle {
        match self {
            RecoveryStart::Started(handle) | RecoveryStart::AlreadyRunning(handle) => handle,
        }
    }
}

/// How many finished runs the guard keeps for lookups by id.
const KEPT_RUNS: usize = 32;

#[derive(Default)]
struct Runs {
    current: Option<RunHandle>,
    recent: std::collections::VecDeque<RunHandle>,
}

/// At most one recovery run at a time. See the module docs.
#[derive(Default)]
pub(crate) struct RecoveryGuard {
    runs: Mutex<Runs>,
    next_id: AtomicU64,
}

/// The winning trigger's claim on the guard. Dropping it (on return, error or panic) lets the
/// next trigger run.
pub(crate) struct RunClaim {
    guard: Arc<RecoveryGuard>,
    pub(crate) tracker: Arc<RunTracker>,
}

impl std::fmt::Debug for RunClaim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunClaim").field("run_id", &self.tracker.id).finish()
    }
}

impl Drop for RunClaim {
    fn drop(&mut self) {
        let mut runs = self.guard.lock();
        if runs.current.as_ref().is_some_and(|run| run.id == self.tracker.id) {
            runs.current = None;
        }
    }
}

impl RecoveryGuard {
    /// A guard whose first run id follows `last_run_id` (the journal's, so ids stay unique
    /// across restarts).
    pub(crate) fn after(last_run_id: u64) -> Self {
        Self { runs: Mutex::default(), next_id: AtomicU64::new(last_run_id) }
    }

    fn lock(&self) -> MutexGuard<'_, Runs> {
        self.runs.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Claims the guard for a new run of `epoch`, or returns the running run's handle.
    pub(crate) fn try_begin(
        self: &Arc<Self>,
        epoch: u64,
    ) -> Result<(RunHandle, RunClaim), RunHandle> {
        let mut runs = self.lock();
        if let Some(current) = &runs.current {
            return Err(current.clone());
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let (sender, receiver) = watch::channel(RunReport::new(id, epoch));
        let handle = RunHandle { id, report: receiver };
        runs.current = Some(handle.clone());
        runs.recent.push_back(handle.clone());
        if runs.recent.len() > KEPT_RUNS {
            runs.recent.pop_front();
        }
        let tracker = Arc::new(RunTracker { id, report: sender, gave_up: Mutex::default() });
        Ok((handle, RunClaim { guard: Arc::clone(self), tracker }))
    }

    pub(crate) fn current(&self) -> Option<RunHandle> {
        self.lock().current.clone()
    }

    pub(crate) fn find(&self, run_id: u64) -> Option<RunHandle> {
        self.lock().recent.iter().find(|run| run.id == run_id).cloned()
    }

    pub(crate) fn recent(&self) -> Vec<RunHandle> {
        self.lock().recent.iter().cloned().collect()
    }
}

// Two attributes rather than `all(test, loom)`, so clippy treats it as test code.
#[cfg(test)]
#[cfg(loom)]
mod loom;
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_claim_gets_the_running_handle_and_release_reopens() {
        let guard = Arc::new(RecoveryGuard::default());
        let (first, claim) = guard.try_begin(7).unwrap();
        let second = guard.try_begin(8).unwrap_err();
        assert_eq!(second.id(), first.id());
        assert_eq!(second.report().epoch, 7);
        drop(claim);
        let (third, _claim) = guard.try_begin(8).unwrap();
        assert_ne!(third.id(), first.id());
        assert!(guard.find(first.id()).is_some());
    }

    #[test]
    fn claim_is_released_when_its_holder_panics() {
        let guard = Arc::new(RecoveryGuard::default());
        let holder = Arc::clone(&guard);
        let result = std::thread::spawn(move || {
            let (_handle, _claim) = holder.try_begin(1).unwrap();
            panic!("run panicked");
        })
        .join();
        assert!(result.is_err());
        assert!(guard.current().is_none());
        assert!(guard.try_begin(2).is_ok());
    }

    #[tokio::test]
    async fn waiting_on_a_run_that_died_reports_failure() {
        let guard = Arc::new(RecoveryGuard::default());
        let (handle, claim) = guard.try_begin(1).unwrap();
        drop(claim);
        let report = handle.wait().await;
        assert!(matches!(report.state, RunState::Failed(_)), "{report:?}");
    }
}
