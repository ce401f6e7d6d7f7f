//! The process-wide slot limiter with priority lanes, the delayed (retry) queue and the in-flight
//! dedup set, in one structure so their invariants hold under one lock:
//!
//! - a validation attempt runs only while it owns a [`SlotPermit`]; at most `capacity` exist;
//! - a key (inference id, revalidation flag) is in flight at most once, from admission to its
//!   terminal outcome, whether it is queued, waiting to retry or running;
//! - every admitted key ends in exactly one [`OutcomeEvent`];
//! - a key waiting to retry holds no slot.
//!
//! The lock is a `std::sync::Mutex` that is never held across an await or while calling out,
//! except into the journal's `record`, which only queues and never waits.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap, HashSet, VecDeque},
    sync::Arc,
    time::Duration,
};

use tokio::{
    sync::{broadcast, watch, Notify},
    time::Instant,
};

use crate::{
    devshard::{DevshardJob, DevshardKey, VerdictCounts},
    outcome::{Lane, Outcome, OutcomeCounts, OutcomeEvent, Stage},
    ports::{
        chain::{InferenceId, MsgValidation},
        journal::JournalEntry,
        Journal,
    },
    recovery::RunTracker,
    sync::{Mutex, MutexGuard},
    Error,
};

/// The dedup key: a classic inference is validated and revalidated independently; a devshard
/// inference is keyed by its escrow and its number there.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Key {
    Classic(InferenceId, bool),
    Devshard(DevshardKey),
}

impl Key {
    /// The id the journal and the outcome stream know the key by.
    pub(crate) fn journal_id(&self) -> InferenceId {
        match self {
            Key::Classic(id, _) => id.clone(),
            Key::Devshard(key) => key.journal_id(),
        }
    }

    pub(crate) fn revalidation(&self) -> bool {
        matches!(self, Key::Classic(_, true))
    }
}

/// What a devshard key carries through its attempts, besides its key.
#[derive(Debug)]
pub(crate) struct DevshardWork {
    pub(crate) job: Arc<DevshardJob>,
    /// When the job gives up, whatever it is waiting for.
    pub(crate) deadline: Instant,
    /// Where the verdict goes: every caller waiting on the key holds a receiver.
    pub(crate) reply: watch::Sender<Option<Outcome>>,
    /// Nodes whose replays failed at the transport level, not to be leased again for this job.
    pub(crate) excluded: Vec<Arc<str>>,
}

/// Where a devshard key's one outcome arrives.
pub(crate) type Reply = watch::Receiver<Option<Outcome>>;

/// The most nodes one devshard job excludes; enough for any real pool, and a bound on memory.
const MAX_EXCLUDED: usize = 8;

/// How many recently submitted keys are remembered, so a late duplicate trigger does not redo a
/// validation the chain already holds. It only has to cover the moments until the chain's own
/// validated set is downloaded again (`Config::validated_set_ttl`); a fixed size keeps memory
/// independent of the backlog (about 400 KB).
const RECENT_CAPACITY: usize = 4_096;

/// Attempts started per stage, carried across retries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Attempts {
    pub(crate) payload: u16,
    /// Whether a payload attempt failed on the validator's own side ([`PayloadError::Local`]):
    /// then running out of payload attempts gives up instead of invalidating.
    ///
    /// [`PayloadError::Local`]: crate::ports::payload_source::PayloadError::Local
    pub(crate) payload_local: bool,
    pub(crate) replay: u16,
    pub(crate) submit: u16,
    pub(crate) total: u32,
}

/// A finished result waiting to be submitted again: kept so a failed broadcast never redoes the
/// replay. Small (an id, a hash and a number).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PendingSubmit {
    pub(crate) msg: MsgValidation,
    pub(crate) outcome: Outcome,
    /// The inference's epoch, for the journal's intent.
    pub(crate) epoch: u64,
}

/// What an attempt asks the scheduler to do with its key.
#[derive(Debug)]
pub(crate) enum Step {
    /// Requeue after `delay`, without a slot.
    Retry {
        stage: Stage,
        delay: Duration,
        attempts: Attempts,
        pending_submit: Option<Box<PendingSubmit>>,
        /// What failed, for the journal.
        error: String,
        /// A node not to lease again for this key.
        exclude: Option<Arc<str>>,
        /// Whether the key waits for ML capacity: it is readied early when one of our leases
        /// ends, rather than only at `delay`.
        wants_room: bool,
    },
    /// The key is done.
    Terminal(Outcome),
}

/// The result of an admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Queued.
    Admitted,
    /// Already in flight; it will run once. A recovery run was attached to it.
    Joined,
    /// Already in flight; it will run once.
    AlreadyInFlight,
    /// Finished with a submission moments ago; not run again.
    AlreadyDone,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Ready,
    Delayed,
    Running,
}

struct Entry {
    lane: Lane,
    phase: Phase,
    run: Option<Arc<RunTracker>>,
    admitted_at: Instant,
    /// Time from admission to the first slot; `None` until first dispatched.
    first_wait: Option<Duration>,
    attempts: Attempts,
    pending_submit: Option<Box<PendingSubmit>>,
    devshard: Option<DevshardWork>,
    /// The sequence number of the key's live entry in the delayed heap; older ones are stale.
    delay_seq: u64,
}

struct Delayed {
    due: Instant,
    seq: u64,
    key: Key,
}

impl PartialEq for Delayed {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for Delayed {}
impl PartialOrd for Delayed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Delayed {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

#[derive(Default)]
struct Recent {
    order: VecDeque<Key>,
    set: HashSet<Key>,
}

impl Recent {
    fn insert(&mut self, key: Key) {
        if self.set.insert(key.clone()) {
            self.order.push_back(key);
            if self.order.len() > RECENT_CAPACITY {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }
}

struct State {
    open: bool,
    entries: HashMap<Key, Entry>,
    ready: [VecDeque<Key>; Lane::COUNT],
    delayed: BinaryHeap<Reverse<Delayed>>,
    seq: u64,
    /// Delayed keys waiting for ML capacity, readied early by [`Scheduler::room_freed`].
    room_waiters: Vec<Key>,
    pending: [usize; Lane::COUNT],
    in_use: usize,
    peak: usize,
    credit: u32,
    dispatched: [u64; Lane::COUNT],
    counts: OutcomeCounts,
    verdicts: VerdictCounts,
    admitted: u64,
    recent: Recent,
}

/// One dispatched attempt: the key, its carried state and the slot it runs in.
pub(crate) struct Job {
    pub(crate) key: Key,
    pub(crate) lane: Lane,
    pub(crate) attempts: Attempts,
    pub(crate) pending_submit: Option<Box<PendingSubmit>>,
    pub(crate) run_id: Option<u64>,
    /// A devshard job, its deadline and the nodes it excludes.
    pub(crate) devshard: Option<(Arc<DevshardJob>, Instant, Vec<Arc<str>>)>,
    /// Time the key waited for its first slot, on its first dispatch only.
    pub(crate) first_wait: Option<Duration>,
    pub(crate) permit: SlotPermit,
}

/// Ownership of one slot, for one key. Dropping it without [`SlotPermit::finish`] (a panic
/// unwinding, a dropped task) still frees the slot and ends the key as given up, so neither
/// leaks.
pub(crate) struct SlotPermit {
    scheduler: Arc<Scheduler>,
    key: Option<Key>,
}

impl SlotPermit {
    /// Frees the slot and applies `step` to the key.
    pub(crate) fn finish(mut self, step: Step) {
        if let Some(key) = self.key.take() {
            self.scheduler.complete(key, step);
        }
    }
}

impl Drop for SlotPermit {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let step = Step::Terminal(Outcome::GaveUp {
                stage: Stage::Chain,
                error: "validation attempt abandoned".into(),
            });
            self.scheduler.complete(key, step);
        }
    }
}

/// A snapshot of the scheduler, for status reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Snapshot {
    pub(crate) open: bool,
    pub(crate) in_use: usize,
    pub(crate) capacity: usize,
    pub(crate) peak: usize,
    pub(crate) ready: [usize; Lane::COUNT],
    pub(crate) pending: [usize; Lane::COUNT],
    pub(crate) delayed: usize,
    pub(crate) dispatched: [u64; Lane::COUNT],
    pub(crate) counts: OutcomeCounts,
    pub(crate) verdicts: VerdictCounts,
    pub(crate) admitted: u64,
    pub(crate) sample_keys: Vec<Key>,
}

/// See the module docs.
pub(crate) struct Scheduler {
    state: Mutex<State>,
    /// Wakes the dispatcher: a slot was freed, work arrived, or the state closed.
    pub(crate) wake: Notify,
    /// Wakes a recovery admission waiting for room in the recovery window.
    recovery_room: Notify,
    outcomes: broadcast::Sender<OutcomeEvent>,
    journal: Arc<dyn Journal>,
    capacity: usize,
    floor_percent: u32,
    bounds: [usize; Lane::COUNT],
}

impl Scheduler {
    pub(crate) fn new(config: &crate::Config, journal: Arc<dyn Journal>) -> Arc<Self> {
        let (outcomes, _) = broadcast::channel(config.outcome_buffer);
        Arc::new(Self {
            state: Mutex::new(State {
                open: true,
                entries: HashMap::new(),
                ready: Default::default(),
                delayed: BinaryHeap::new(),
                seq: 0,
                room_waiters: Vec::new(),
                pending: [0; Lane::COUNT],
                in_use: 0,
                peak: 0,
                credit: 0,
                dispatched: [0; Lane::COUNT],
                counts: OutcomeCounts::default(),
                verdicts: VerdictCounts::default(),
                admitted: 0,
                recent: Recent::default(),
            }),
            wake: Notify::new(),
            recovery_room: Notify::new(),
            outcomes,
            journal,
            capacity: config.slots,
            floor_percent: u32::from(config.recovery_floor_percent),
            bounds: [
                config.challenged_capacity,
                config.revalidation_capacity,
                config.live_capacity,
                config.recovery_window,
            ],
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock can only come from a bug in this module; the state
        // is still consistent enough to drain, so poisoning is ignored.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<OutcomeEvent> {
        self.outcomes.subscribe()
    }

    /// Admits `key` into `lane` without waiting. A recovery `run` is attached to the key, or to
    /// the already-running copy of it when that has none.
    pub(crate) fn admit(
        &self,
        key: Key,
        lane: Lane,
        run: Option<&Arc<RunTracker>>,
    ) -> Result<Admission, Error> {
        self.admit_with(key, lane, run, None, None).map(|(admission, _)| admission)
    }

    /// Admits a devshard job into `lane`, or joins the copy in flight. Either way the receiver
    /// gets the key's one outcome.
    pub(crate) fn admit_devshard(
        &self,
        job: Arc<DevshardJob>,
        lane: Lane,
        deadline: Instant,
    ) -> Result<(Admission, Reply), Error> {
        let key = Key::Devshard(job.key.clone());
        let (reply, receiver) = watch::channel(None);
        let work = DevshardWork { job, deadline, reply, excluded: Vec::new() };
        let (admission, joined) = self.admit_with(key, lane, None, None, Some(work))?;
        Ok((admission, joined.unwrap_or(receiver)))
    }

    /// Admits a message built by an earlier process, to be submitted without a replay.
    pub(crate) fn admit_pending(
        &self,
        key: Key,
        lane: Lane,
        pending: PendingSubmit,
    ) -> Result<Admission, Error> {
        self.admit_with(key, lane, None, Some(Box::new(pending)), None)
            .map(|(admission, _)| admission)
    }

    /// Admits `key`; for a key already in flight, the second value subscribes to its reply
    /// when it has one.
    fn admit_with(
        &self,
        key: Key,
        lane: Lane,
        run: Option<&Arc<RunTracker>>,
        pending_submit: Option<Box<PendingSubmit>>,
        devshard: Option<DevshardWork>,
    ) -> Result<(Admission, Option<Reply>), Error> {
        let mut state = self.lock();
        if !state.open {
            return Err(Error::ShuttingDown);
        }
        if let Some(entry) = state.entries.get_mut(&key) {
            let joined = entry.devshard.as_ref().map(|work| work.reply.subscribe());
            let admission = match (run, &entry.run) {
                (Some(run), None) => {
                    entry.run = Some(Arc::clone(run));
                    Admission::Joined
                }
                _ => Admission::AlreadyInFlight,
            };
            return Ok((admission, joined));
        }
        if state.recent.set.contains(&key) {
            return Ok((Admission::AlreadyDone, None));
        }
        if state.pending[lane.index()] >= self.bounds[lane.index()] {
            return Err(Error::LaneFull { lane });
        }
        state.pending[lane.index()] += 1;
        state.admitted += 1;
        state.ready[lane.index()].push_back(key.clone());
        state.entries.insert(
            key.clone(),
            Entry {
                lane,
                phase: Phase::Ready,
                run: run.cloned(),
                admitted_at: Instant::now(),
                first_wait: None,
                attempts: Attempts::default(),
                pending_submit,
                devshard,
                delay_seq: 0,
            },
        );
        let depth = state.pending[lane.index()];
        let run = run.map(|run| run.report());
        // Recorded before the lock is released, so the dispatcher cannot finish the key (and
        // the journal see its outcome) before its admission; `record` never waits.
        self.journal.record(JournalEntry::Admitted {
            inference_id: key.journal_id(),
            revalidation: key.revalidation(),
            lane,
            epoch: run.as_ref().map(|run| run.epoch),
            run_id: run.as_ref().map(|run| run.run_id),
            at: std::time::SystemTime::now(),
        });
        drop(state);
        gauge_depth(lane, depth);
        self.wake.notify_one();
        Ok((Admission::Admitted, None))
    }

    /// Admits a recovery key, waiting for room in the recovery window. Returns
    /// [`Error::ShuttingDown`] if `cancel` fires first.
    pub(crate) async fn admit_recovery(
        &self,
        key: Key,
        run: &Arc<RunTracker>,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> Result<Admission, Error> {
        loop {
            let room = self.recovery_room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            match self.admit(key.clone(), Lane::Recovery, Some(run)) {
                Err(Error::LaneFull { .. }) => {
                    tokio::select! {
                        biased;
                        _ = cancel.cancelled() => return Err(Error::ShuttingDown),
                        _ = room => {}
                    }
                }
                other => return other,
            }
        }
    }

    /// Moves due retries to their lanes and hands out as many slots as are free, highest lane
    /// first within the recovery floor. Returns the jobs and the next retry's due time.
    pub(crate) fn dispatch(self: &Arc<Self>, now: Instant) -> (Vec<Job>, Option<Instant>) {
        let mut jobs = Vec::new();
        let mut state = self.lock();
        while state.delayed.peek().is_some_and(|Reverse(d)| d.due <= now) {
            let Some(Reverse(delayed)) = state.delayed.pop() else { break };
            if let Some(entry) = state.entries.get_mut(&delayed.key) {
                if entry.phase != Phase::Delayed || entry.delay_seq != delayed.seq {
                    continue;
                }
                entry.phase = Phase::Ready;
                let lane = entry.lane;
                state.ready[lane.index()].push_back(delayed.key);
            }
        }
        while state.open && state.in_use < self.capacity {
            let Some(lane) = self.pick(&mut state) else { break };
            let Some(key) = state.ready[lane.index()].pop_front() else { break };
            let Some(entry) = state.entries.get_mut(&key) else { continue };
            entry.phase = Phase::Running;
            entry.attempts.total += 1;
            let first_wait = match entry.first_wait {
                Some(_) => None,
                None => Some(now - entry.admitted_at),
            };
            entry.first_wait = entry.first_wait.or(first_wait);
            let job = Job {
                key: key.clone(),
                lane,
                attempts: entry.attempts,
                pending_submit: entry.pending_submit.take(),
                run_id: entry.run.as_ref().map(|run| run.id()),
                devshard: entry
                    .devshard
                    .as_ref()
                    .map(|work| (Arc::clone(&work.job), work.deadline, work.excluded.clone())),
                first_wait,
                permit: SlotPermit { scheduler: Arc::clone(self), key: Some(key) },
            };
            state.in_use += 1;
            state.peak = state.peak.max(state.in_use);
            state.dispatched[lane.index()] += 1;
            jobs.push(job);
        }
        let next_due = state.delayed.peek().map(|Reverse(d)| d.due);
        let in_use = state.in_use;
        drop(state);
        if !jobs.is_empty() {
            metrics::gauge!("validator_slots_in_use").set(in_use as f64);
        }
        (jobs, next_due)
    }

    /// Revalidation before live before recovery, except that recovery gets `floor_percent` of
    /// the dispatches while it competes: each competing dispatch earns recovery that much credit,
    /// and a full 100 buys recovery the next one.
    fn pick(&self, state: &mut State) -> Option<Lane> {
        let recovery_ready = !state.ready[Lane::Recovery.index()].is_empty();
        let higher = [Lane::Challenged, Lane::Revalidation, Lane::Live]
            .into_iter()
            .find(|lane| !state.ready[lane.index()].is_empty());
        match (higher, recovery_ready) {
            (None, true) => Some(Lane::Recovery),
            (None, false) => None,
            (Some(lane), false) => Some(lane),
            (Some(lane), true) => {
                state.credit += self.floor_percent;
                if state.credit >= 100 {
                    state.credit -= 100;
                    Some(Lane::Recovery)
                } else {
                    Some(lane)
                }
            }
        }
    }

    /// Frees a slot and applies the attempt's step.
    fn complete(&self, key: Key, step: Step) {
        let mut state = self.lock();
        state.in_use = state.in_use.saturating_sub(1);
        let in_use = state.in_use;
        let terminal = match step {
            Step::Retry { stage, delay, attempts, pending_submit, exclude, wants_room, .. }
                if state.open =>
            {
                metrics::counter!("validator_retries_total", "stage" => stage.as_str())
                    .increment(1);
                let due = Instant::now() + delay;
                let seq = state.seq;
                state.seq += 1;
                if let Some(entry) = state.entries.get_mut(&key) {
                    entry.phase = Phase::Delayed;
                    entry.attempts = attempts;
                    entry.pending_submit = pending_submit;
                    entry.delay_seq = seq;
                    if let (Some(work), Some(node)) = (entry.devshard.as_mut(), exclude) {
                        if !work.excluded.contains(&node) && work.excluded.len() < MAX_EXCLUDED {
                            work.excluded.push(node);
                        }
                    }
                    if wants_room {
                        state.room_waiters.push(key.clone());
                    }
                    state.delayed.push(Reverse(Delayed { due, seq, key }));
                }
                None
            }
            Step::Retry { .. } => self.end(&mut state, key, Outcome::Cancelled),
            Step::Terminal(outcome) => self.end(&mut state, key, outcome),
        };
        drop(state);
        metrics::gauge!("validator_slots_in_use").set(in_use as f64);
        if let Some(finished) = terminal {
            self.publish(finished);
        }
        self.wake.notify_one();
    }

    /// One of our leases ended, so ML capacity may be free: keys waiting for room go back to
    /// the front of their lanes, so the highest lane gets the room first.
    pub(crate) fn room_freed(&self) {
        let mut state = self.lock();
        if state.room_waiters.is_empty() {
            return;
        }
        let waiters = std::mem::take(&mut state.room_waiters);
        let mut readied = false;
        for key in waiters.into_iter().rev() {
            let Some(entry) = state.entries.get_mut(&key) else { continue };
            if entry.phase != Phase::Delayed {
                continue;
            }
            entry.phase = Phase::Ready;
            // Invalidates the key's entry in the delayed heap.
            entry.delay_seq = u64::MAX;
            let lane = entry.lane;
            state.ready[lane.index()].push_front(key);
            readied = true;
        }
        drop(state);
        if readied {
            self.wake.notify_one();
        }
    }

    /// Removes `key` and records its outcome; the caller publishes it once the lock is released.
    fn end(&self, state: &mut State, key: Key, outcome: Outcome) -> Option<Finished> {
        let entry = state.entries.remove(&key)?;
        state.pending[entry.lane.index()] -= 1;
        let kind = outcome.kind();
        state.counts.add(kind);
        if let Outcome::Judged { verdict } = &outcome {
            state.verdicts.add(verdict.reason);
        }
        if matches!(outcome, Outcome::Submitted { .. } | Outcome::Invalidated { .. }) {
            state.recent.insert(key.clone());
        }
        Some(Finished {
            depth: state.pending[entry.lane.index()],
            reply: entry.devshard.map(|work| work.reply),
            event: OutcomeEvent {
                inference_id: key.journal_id(),
                revalidation: key.revalidation(),
                lane: entry.lane,
                run_id: entry.run.as_ref().map(|run| run.id()),
                outcome,
                attempts: entry.attempts.total,
                wait: entry.first_wait,
                elapsed: entry.admitted_at.elapsed(),
            },
            run: entry.run,
        })
    }

    fn publish(&self, finished: Finished) {
        let Finished { event, run, depth, reply } = finished;
        if let Some(reply) = reply {
            // No receiver left is fine: every caller stopped waiting, the outcome still counts.
            reply.send_replace(Some(event.outcome.clone()));
        }
        let kind = event.outcome.kind();
        metrics::counter!("validator_outcomes_total", "outcome" => kind.as_str()).increment(1);
        gauge_depth(event.lane, depth);
        if event.lane == Lane::Recovery {
            self.recovery_room.notify_one();
        }
        if let Some(run) = run {
            run.record(kind);
        }
        self.journal.record(JournalEntry::Finished {
            event: event.clone(),
            at: std::time::SystemTime::now(),
        });
        // No receiver is fine: counts and run reports do not depend on the stream.
        let _ = self.outcomes.send(event);
    }

    /// Stops admission and ends every key that is not running as cancelled. Running keys end
    /// when their attempts return.
    pub(crate) fn close(&self) -> usize {
        let mut state = self.lock();
        state.open = false;
        let idle: Vec<Key> = state
            .entries
            .iter()
            .filter(|(_, entry)| entry.phase != Phase::Running)
            .map(|(key, _)| key.clone())
            .collect();
        state.ready = Default::default();
        state.delayed.clear();
        state.room_waiters.clear();
        let finished: Vec<Finished> = idle
            .into_iter()
            .filter_map(|key| self.end(&mut state, key, Outcome::Cancelled))
            .collect();
        drop(state);
        let cancelled = finished.len();
        for event in finished {
            self.publish(event);
        }
        self.wake.notify_one();
        self.recovery_room.notify_one();
        cancelled
    }

    pub(crate) fn snapshot(&self, sample: usize) -> Snapshot {
        let state = self.lock();
        Snapshot {
            open: state.open,
            in_use: state.in_use,
            capacity: self.capacity,
            peak: state.peak,
            ready: std::array::from_fn(|lane| state.ready[lane].len()),
            pending: state.pending,
            delayed: state.entries.values().filter(|entry| entry.phase == Phase::Delayed).count(),
            dispatched: state.dispatched,
            counts: state.counts,
            verdicts: state.verdicts,
            admitted: state.admitted,
            sample_keys: state.entries.keys().take(sample).cloned().collect(),
        }
    }

    /// Whether `key` is admitted and not yet finished.
    #[cfg(test)]
    pub(crate) fn contains(&self, key: &Key) -> bool {
        self.lock().entries.contains_key(key)
    }
}

struct Finished {
    event: OutcomeEvent,
    run: Option<Arc<RunTracker>>,
    depth: usize,
    reply: Option<watch::Sender<Option<Outcome>>>,
}

fn gauge_depth(lane: Lane, depth: usize) {
    metrics::gauge!("validator_queue_depth", "lane" => lane.as_str()).set(depth as f64);
}

// Two attributes rather than `all(test, loom)`, so clippy treats it as test code.
#[cfg(test)]
#[cfg(loom)]
mod loom;
#[cfg(test)]
mod tests;
