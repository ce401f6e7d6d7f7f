//! The process-wide slot limiters of the two stages with priority lanes, the buffer of verified
//! payloads between them, the delayed (retry) queue and the in-flight dedup set, in one structure
//! so their invariants hold under one lock:
//!
//! - a key's work runs only while it owns a [`SlotPermit`] of one stage: the network stage
//!   (payload fetch and verification, chain reads, submission; at most `fetch_capacity`
//!   permits) or the GPU stage (lease, replay, scoring; at most `capacity` permits);
//! - the network stage fetches ahead only while the buffer has room: payloads waiting for a GPU
//!   slot plus fetches in flight stay within the buffer's count, and their bytes within its byte
//!   bound; recovery may use half of the network slots and of the buffer, live three quarters,
//!   challenged votes and revalidations all of them, so a higher lane always finds room;
//! - both stages serve the highest lane first (within the recovery floor), so priority work is
//!   fetched first and replayed first;
//! - a key (inference id, revalidation flag) is in flight at most once, from admission to its
//!   terminal outcome, whether it is queued, fetching, buffered, waiting to retry or replaying;
//! - every admitted key ends in exactly one [`OutcomeEvent`];
//! - a key waiting to retry holds no slot of either stage; one waiting to retry a lease keeps
//!   its buffered payload.
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
    engine::PipelineStatus,
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
    /// Set when the key's lease was taken over and the shared journal could not yet say
    /// whether the previous holder sent its message: asked again before anything else.
    pub(crate) check_sent: bool,
}

/// A finished result waiting to be submitted again: kept so a failed broadcast never redoes the
/// replay. Small (an id, a hash and a number).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PendingSubmit {
    pub(crate) msg: MsgValidation,
    pub(crate) outcome: Outcome,
    /// The inference's epoch, for the journal's intent.
    pub(crate) epoch: u64,
    /// An intent another process committed and may have broadcast (left open by a restart or
    /// by a replica whose lease was taken over): checked on chain before it is sent again.
    pub(crate) reconcile: bool,
}

/// The two stages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StageKind {
    /// Payload fetch and verification, chain reads, submission.
    Network,
    /// Lease, replay, scoring.
    Gpu,
}

/// What the network stage prepared for the GPU stage (a parsed original and its replay
/// request). The scheduler only keeps it and counts its bytes; the engine knows its type.
pub(crate) type Prepared = Box<dyn std::any::Any + Send>;

/// A verified payload ready for the GPU stage, and what it weighs.
pub(crate) struct Staged {
    pub(crate) prepared: Prepared,
    /// The payload's bytes, as the buffer counts them.
    pub(crate) bytes: usize,
}

impl std::fmt::Debug for Staged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Staged").field("bytes", &self.bytes).finish_non_exhaustive()
    }
}

/// What an attempt asks the scheduler to do with its key.
#[derive(Debug)]
pub(crate) enum Step {
    /// The network stage verified the payload: buffer it for a GPU slot.
    Buffer(Staged),
    /// The GPU stage scored the replay: submit the result on the network stage.
    Submit(Box<PendingSubmit>),
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
        /// The GPU stage's prepared payload, kept for the next replay attempt instead of being
        /// fetched again; it waits in the buffer.
        keep: Option<Prepared>,
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
    /// Queued for the network stage.
    Ready,
    /// Holding a network-stage slot.
    Fetching,
    /// Its payload buffered, queued for the GPU stage.
    Buffered,
    /// Waiting out a back-off, holding no slot (perhaps a buffered payload).
    Delayed,
    /// Holding a GPU-stage slot.
    Running,
}

impl Phase {
    fn holds_slot(self) -> bool {
        matches!(self, Phase::Fetching | Phase::Running)
    }
}

struct Entry {
    lane: Lane,
    phase: Phase,
    run: Option<Arc<RunTracker>>,
    admitted_at: Instant,
    /// Time from admission to the first GPU slot; `None` until then.
    first_wait: Option<Duration>,
    attempts: Attempts,
    pending_submit: Option<Box<PendingSubmit>>,
    devshard: Option<DevshardWork>,
    /// The sequence number of the key's live entry in the delayed heap; older ones are stale.
    delay_seq: u64,
    /// The verified payload waiting for the GPU stage (buffered or delayed), if any.
    staged: Option<Prepared>,
    /// The payload's bytes, from the fetch until the GPU stage is done with it.
    bytes: usize,
    /// When the payload was verified.
    staged_at: Instant,
    /// The next network dispatch submits the GPU stage's fresh result: the same attempt.
    fresh_submit: bool,
    /// The next GPU dispatch replays a kept payload again: a new attempt.
    replay_again: bool,
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
    /// Keys with a buffered payload, queued for the GPU stage, per lane.
    staged: [VecDeque<Key>; Lane::COUNT],
    pending: [usize; Lane::COUNT],
    /// GPU-stage slots in use.
    in_use: usize,
    peak: usize,
    fetch_in_use: usize,
    fetch_peak: usize,
    /// Network-stage attempts that may end with a payload for the buffer.
    fetching: usize,
    /// Keys holding a payload outside the GPU stage (buffered or delayed), and its bytes.
    buffered: usize,
    buffered_bytes: usize,
    buffered_peak_bytes: usize,
    /// The sizes of the latest payloads, from which fetches in flight are estimated.
    recent_sizes: SizeWindow,
    expired: u64,
    /// GPU slot-seconds idle while work was buffered or fetching, integrated up to `idle_mark`.
    gpu_idle: f64,
    idle_mark: Instant,
    /// Recovery's floor credit, per stage.
    credit: [u32; 2],
    dispatched: [u64; Lane::COUNT],
    counts: OutcomeCounts,
    verdicts: VerdictCounts,
    admitted: u64,
    recent: Recent,
}

impl State {
    /// Counts a payload of `bytes` into the buffer.
    fn buffer_in(&mut self, bytes: usize) {
        self.buffered += 1;
        self.buffered_bytes += bytes;
        self.buffered_peak_bytes = self.buffered_peak_bytes.max(self.buffered_bytes);
    }
}

/// The sizes of the last [`SIZE_WINDOW`] payloads, so the estimate follows the mix of the moment.
struct SizeWindow {
    sizes: [usize; SIZE_WINDOW],
    next: usize,
    sum: usize,
    max: usize,
}

/// How many payload sizes the estimate of a fetch in flight looks back over.
const SIZE_WINDOW: usize = 32;

impl SizeWindow {
    fn new(initial: usize) -> Self {
        let initial = initial.min(usize::MAX / SIZE_WINDOW);
        Self { sizes: [initial; SIZE_WINDOW], next: 0, sum: initial * SIZE_WINDOW, max: initial }
    }

    fn push(&mut self, size: usize) {
        let size = size.min(usize::MAX / SIZE_WINDOW);
        let old = std::mem::replace(&mut self.sizes[self.next], size);
        self.sum = self.sum - old + size;
        self.next = (self.next + 1) % SIZE_WINDOW;
        if size >= self.max {
            self.max = size;
        } else if old == self.max {
            self.max = self.sizes.iter().copied().max().unwrap_or(0);
        }
    }

    /// The bytes `fetches` payloads in flight are expected to bring: the mean size each, plus
    /// headroom for one as large as the largest recent one. A sum of many payloads stays near
    /// its mean; one outlier among them is covered.
    fn expected(&self, fetches: usize) -> usize {
        let mean = self.sum / SIZE_WINDOW;
        fetches.saturating_mul(mean).saturating_add(self.max - mean)
    }
}

/// One dispatched attempt: the key, its carried state and the slot it runs in.
pub(crate) struct Job {
    pub(crate) key: Key,
    pub(crate) lane: Lane,
    /// The buffered payload: `Some` for a GPU-stage job, `None` for a network-stage one.
    pub(crate) prepared: Option<Prepared>,
    pub(crate) attempts: Attempts,
    pub(crate) pending_submit: Option<Box<PendingSubmit>>,
    pub(crate) run_id: Option<u64>,
    /// A devshard job, its deadline and the nodes it excludes.
    pub(crate) devshard: Option<(Arc<DevshardJob>, Instant, Vec<Arc<str>>)>,
    /// Time the key waited for its first GPU slot, on that dispatch only.
    pub(crate) first_wait: Option<Duration>,
    pub(crate) permit: SlotPermit,
}

/// Ownership of one slot, for one key. Dropping it without [`SlotPermit::finish`] (a panic
/// unwinding, a dropped task) still frees the slot and ends the key as given up, so neither
/// leaks.
pub(crate) struct SlotPermit {
    scheduler: Arc<Scheduler>,
    key: Option<Key>,
    stage: StageKind,
    /// A network-stage attempt counted as a fetch in flight against the buffer's room.
    fetching: bool,
}

impl SlotPermit {
    /// For a GPU-stage permit: trades the GPU slot for a network slot if one is free, so the
    /// result is submitted without queueing; `false` leaves the permit as it was.
    pub(crate) fn trade_for_network(&mut self) -> bool {
        let Some(key) = &self.key else { return false };
        if self.stage != StageKind::Gpu || !self.scheduler.trade_for_network(key) {
            return false;
        }
        self.stage = StageKind::Network;
        true
    }

    /// [`finish`](SlotPermit::finish), then for a GPU-stage permit the next buffered payload's
    /// job, if one waits, to run in the same task.
    pub(crate) fn finish_and_next(self, step: Step) -> Option<Job> {
        let gpu = self.stage == StageKind::Gpu;
        let scheduler = Arc::clone(&self.scheduler);
        self.finish(step);
        if gpu {
            scheduler.next_gpu()
        } else {
            None
        }
    }

    /// Frees the slot and applies `step` to the key.
    pub(crate) fn finish(mut self, step: Step) {
        if let Some(key) = self.key.take() {
            self.scheduler.complete(key, self.stage, self.fetching, step);
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
            self.scheduler.complete(key, self.stage, self.fetching, step);
        }
    }
}

/// A snapshot of the scheduler, for status reports.
#[derive(Debug, Clone, Default, PartialEq)]
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
    pub(crate) pipeline: PipelineStatus,
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
    fetch_capacity: usize,
    buffer_capacity: usize,
    buffer_bytes: usize,
    max_age: Duration,
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
                staged: Default::default(),
                pending: [0; Lane::COUNT],
                in_use: 0,
                peak: 0,
                fetch_in_use: 0,
                fetch_peak: 0,
                fetching: 0,
                buffered: 0,
                buffered_bytes: 0,
                buffered_peak_bytes: 0,
                recent_sizes: SizeWindow::new(
                    config.buffer_bytes() / config.buffer_capacity().max(1),
                ),
                expired: 0,
                gpu_idle: 0.0,
                idle_mark: Instant::now(),
                credit: [0; 2],
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
            fetch_capacity: config.fetch_slots(),
            buffer_capacity: config.buffer_capacity(),
            buffer_bytes: config.buffer_bytes(),
            max_age: config.buffer_max_age,
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
                staged: None,
                bytes: 0,
                staged_at: Instant::now(),
                fresh_submit: false,
                replay_again: false,
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

    /// Moves due retries to their queues, drops buffered payloads past their age, and hands out
    /// the free slots of both stages, highest lane first within the recovery floor: GPU slots
    /// to buffered payloads, network slots to keys that need a fetch (while the buffer has
    /// room) or a submission. Returns the jobs and the next retry's due time.
    pub(crate) fn dispatch(self: &Arc<Self>, now: Instant) -> (Vec<Job>, Option<Instant>) {
        let mut jobs = Vec::new();
        let mut state = self.lock();
        self.tick(&mut state, now);
        while state.delayed.peek().is_some_and(|Reverse(d)| d.due <= now) {
            let Some(Reverse(delayed)) = state.delayed.pop() else { break };
            if let Some(entry) = state.entries.get_mut(&delayed.key) {
                if entry.phase != Phase::Delayed || entry.delay_seq != delayed.seq {
                    continue;
                }
                let lane = entry.lane;
                if entry.staged.is_some() {
                    entry.phase = Phase::Buffered;
                    state.staged[lane.index()].push_back(delayed.key);
                } else {
                    entry.phase = Phase::Ready;
                    state.ready[lane.index()].push_back(delayed.key);
                }
            }
        }
        if state.open {
            self.dispatch_gpu(&mut state, now, &mut jobs, usize::MAX);
            self.dispatch_network(&mut state, now, &mut jobs);
        }
        let next_due = state.delayed.peek().map(|Reverse(d)| d.due);
        let (in_use, fetch_in_use) = (state.in_use, state.fetch_in_use);
        drop(state);
        if !jobs.is_empty() {
            metrics::gauge!("validator_slots_in_use").set(in_use as f64);
            metrics::gauge!("validator_fetch_slots_in_use").set(fetch_in_use as f64);
        }
        (jobs, next_due)
    }

    /// Hands free GPU slots to buffered payloads, at most `limit` of them.
    fn dispatch_gpu(
        self: &Arc<Self>,
        state: &mut State,
        now: Instant,
        jobs: &mut Vec<Job>,
        limit: usize,
    ) {
        let mut handed = 0;
        while state.in_use < self.capacity && handed < limit {
            let waiting = std::array::from_fn(|lane| !state.staged[lane].is_empty());
            let Some(lane) = self.pick(waiting, &mut state.credit[1]) else { break };
            let Some(key) = state.staged[lane.index()].pop_front() else { break };
            let Some(entry) = state.entries.get_mut(&key) else { continue };
            let Some(prepared) = entry.staged.take() else { continue };
            let bytes = std::mem::take(&mut entry.bytes);
            state.buffered -= 1;
            state.buffered_bytes -= bytes;
            if now.saturating_duration_since(entry.staged_at) >= self.max_age {
                // Too old to trust: dropped, and fetched again ahead of its lane.
                entry.phase = Phase::Ready;
                state.expired += 1;
                state.ready[lane.index()].push_front(key);
                metrics::counter!("validator_buffer_expired_total").increment(1);
                continue;
            }
            entry.bytes = bytes;
            entry.phase = Phase::Running;
            // The first replay continues the fetch's attempt; a replay of a kept payload is a
            // new one.
            let counts = std::mem::take(&mut entry.replay_again);
            let job = self.job(entry, key, lane, now, counts, Some(prepared));
            state.in_use += 1;
            state.peak = state.peak.max(state.in_use);
            handed += 1;
            jobs.push(job);
        }
    }

    fn dispatch_network(self: &Arc<Self>, state: &mut State, now: Instant, jobs: &mut Vec<Job>) {
        loop {
            let eligible = std::array::from_fn(|lane| {
                let lane = Lane::ALL[lane];
                let Some(key) = state.ready[lane.index()].front() else { return false };
                let submits = state.entries.get(key).is_some_and(|e| e.pending_submit.is_some());
                self.network_room(state, lane, !submits)
            });
            let Some(lane) = self.pick(eligible, &mut state.credit[0]) else { break };
            let Some(key) = state.ready[lane.index()].pop_front() else { break };
            let Some(entry) = state.entries.get_mut(&key) else { continue };
            entry.phase = Phase::Fetching;
            // The GPU stage's fresh result is submitted as part of the same attempt.
            let counts = !std::mem::take(&mut entry.fresh_submit);
            let fetches = entry.pending_submit.is_none();
            let job = self.job(entry, key, lane, now, counts, None);
            state.fetch_in_use += 1;
            state.fetch_peak = state.fetch_peak.max(state.fetch_in_use);
            state.fetching += usize::from(fetches);
            state.dispatched[lane.index()] += 1;
            jobs.push(job);
        }
    }

    /// Whether a `lane` key may take a network slot now: a free slot (the higher lanes' share
    /// kept, [`Lane::kept_from`]) and, for a fetch, room in the buffer for what the fetches in flight and
    /// this one are expected to bring ([`SizeWindow::expected`]). With nothing buffered or
    /// fetching, one fetch always goes, so a payload larger than the whole bound is fetched
    /// alone rather than never.
    fn network_room(&self, state: &State, lane: Lane, fetch: bool) -> bool {
        if !self.network_slot_free(state, lane) {
            return false;
        }
        if !fetch {
            return true;
        }
        if state.buffered == 0 && state.fetching == 0 {
            return true;
        }
        let count = state.buffered + state.fetching;
        let bytes = state.buffered_bytes + state.recent_sizes.expected(state.fetching + 1);
        // The bytes kept for the higher lanes match the payloads kept, at the bound's average.
        let kept = lane.kept_from(self.buffer_capacity);
        let kept_bytes = self.buffer_bytes / self.buffer_capacity.max(1) * kept;
        count + kept < self.buffer_capacity && bytes + kept_bytes <= self.buffer_bytes
    }

    /// The next buffered payload for a GPU slot just freed, highest lane first: the task that
    /// freed it goes on with it, without a trip through the dispatcher.
    fn next_gpu(self: &Arc<Self>) -> Option<Job> {
        let now = Instant::now();
        let mut state = self.lock();
        if !state.open {
            return None;
        }
        self.tick(&mut state, now);
        let mut jobs = Vec::with_capacity(1);
        self.dispatch_gpu(&mut state, now, &mut jobs, 1);
        let in_use = state.in_use;
        drop(state);
        if !jobs.is_empty() {
            metrics::gauge!("validator_slots_in_use").set(in_use as f64);
        }
        jobs.pop()
    }

    /// Whether a network slot is free for `lane`, with the share of the higher lanes kept.
    fn network_slot_free(&self, state: &State, lane: Lane) -> bool {
        let kept = lane.kept_from(self.fetch_capacity);
        state.fetch_in_use + kept < self.fetch_capacity
    }

    /// Trades `key`'s GPU slot for a network slot, if one is free for its lane: the GPU stage's
    /// result is submitted at once, without a trip through the queue. The GPU slot goes back to
    /// the dispatcher either way the caller goes on.
    fn trade_for_network(&self, key: &Key) -> bool {
        let now = Instant::now();
        let mut state = self.lock();
        let Some(lane) = state.entries.get(key).map(|entry| entry.lane) else { return false };
        if !state.open || !self.network_slot_free(&state, lane) {
            return false;
        }
        self.tick(&mut state, now);
        if let Some(entry) = state.entries.get_mut(key) {
            entry.phase = Phase::Fetching;
            entry.bytes = 0;
        }
        state.in_use = state.in_use.saturating_sub(1);
        state.fetch_in_use += 1;
        state.fetch_peak = state.fetch_peak.max(state.fetch_in_use);
        let (in_use, fetch_in_use) = (state.in_use, state.fetch_in_use);
        drop(state);
        metrics::gauge!("validator_slots_in_use").set(in_use as f64);
        metrics::gauge!("validator_fetch_slots_in_use").set(fetch_in_use as f64);
        self.wake.notify_one();
        true
    }

    /// Builds the job for `key`'s entry: a GPU-stage job with its `prepared` payload, else a
    /// network-stage one (counted as a fetch unless it submits). Counts a new attempt if
    /// `counts`, and, on the first GPU slot, the wait since admission: what stood between the
    /// key and the ML node.
    fn job(
        self: &Arc<Self>,
        entry: &mut Entry,
        key: Key,
        lane: Lane,
        now: Instant,
        counts: bool,
        prepared: Option<Prepared>,
    ) -> Job {
        let stage = if prepared.is_some() { StageKind::Gpu } else { StageKind::Network };
        let fetching = stage == StageKind::Network && entry.pending_submit.is_none();
        entry.attempts.total += u32::from(counts);
        let first_wait = match (entry.first_wait, stage) {
            (None, StageKind::Gpu) => Some(now - entry.admitted_at),
            _ => None,
        };
        entry.first_wait = entry.first_wait.or(first_wait);
        Job {
            key: key.clone(),
            lane,
            prepared,
            attempts: entry.attempts,
            pending_submit: entry.pending_submit.take(),
            run_id: entry.run.as_ref().map(|run| run.id()),
            devshard: entry
                .devshard
                .as_ref()
                .map(|work| (Arc::clone(&work.job), work.deadline, work.excluded.clone())),
            first_wait,
            permit: SlotPermit { scheduler: Arc::clone(self), key: Some(key), stage, fetching },
        }
    }

    /// Challenged before revalidation before live before recovery, except that recovery gets
    /// `floor_percent` of a stage's dispatches while it competes: each competing dispatch earns
    /// recovery that much credit, and a full 100 buys recovery the next one.
    fn pick(&self, ready: [bool; Lane::COUNT], credit: &mut u32) -> Option<Lane> {
        let recovery_ready = ready[Lane::Recovery.index()];
        let higher = [Lane::Challenged, Lane::Revalidation, Lane::Live]
            .into_iter()
            .find(|lane| ready[lane.index()]);
        match (higher, recovery_ready) {
            (None, true) => Some(Lane::Recovery),
            (None, false) => None,
            (Some(lane), false) => Some(lane),
            (Some(lane), true) => {
                *credit += self.floor_percent;
                if *credit >= 100 {
                    *credit -= 100;
                    Some(Lane::Recovery)
                } else {
                    Some(lane)
                }
            }
        }
    }

    /// Adds the GPU slot-seconds left idle since the last mark while work was buffered or being
    /// fetched.
    fn tick(&self, state: &mut State, now: Instant) {
        let elapsed = now.saturating_duration_since(state.idle_mark);
        state.idle_mark = now.max(state.idle_mark);
        let waiting = state.fetching > 0 || state.staged.iter().any(|queue| !queue.is_empty());
        let idle = self.capacity.saturating_sub(state.in_use);
        if waiting && idle > 0 && !elapsed.is_zero() {
            let seconds = idle as f64 * elapsed.as_secs_f64();
            state.gpu_idle += seconds;
            metrics::counter!("validator_gpu_idle_slot_microseconds_total")
                .increment((seconds * 1e6) as u64);
        }
    }

    /// Frees a slot of `stage` and applies the attempt's step.
    fn complete(&self, key: Key, stage: StageKind, fetching: bool, step: Step) {
        let now = Instant::now();
        let mut state = self.lock();
        self.tick(&mut state, now);
        match stage {
            StageKind::Gpu => state.in_use = state.in_use.saturating_sub(1),
            StageKind::Network => state.fetch_in_use = state.fetch_in_use.saturating_sub(1),
        }
        if fetching {
            state.fetching = state.fetching.saturating_sub(1);
        }
        let (in_use, fetch_in_use) = (state.in_use, state.fetch_in_use);
        let terminal = match step {
            Step::Buffer(staged) if state.open => {
                let lane = state.entries.get(&key).map(|entry| entry.lane);
                if let (Some(entry), Some(lane)) = (state.entries.get_mut(&key), lane) {
                    entry.phase = Phase::Buffered;
                    entry.staged = Some(staged.prepared);
                    entry.bytes = staged.bytes;
                    entry.staged_at = now;
                    state.buffer_in(staged.bytes);
                    state.recent_sizes.push(staged.bytes);
                    state.staged[lane.index()].push_back(key);
                }
                None
            }
            Step::Submit(pending) if state.open => {
                let lane = state.entries.get(&key).map(|entry| entry.lane);
                if let (Some(entry), Some(lane)) = (state.entries.get_mut(&key), lane) {
                    entry.phase = Phase::Ready;
                    entry.pending_submit = Some(pending);
                    entry.bytes = 0;
                    entry.fresh_submit = true;
                    state.ready[lane.index()].push_front(key);
                }
                None
            }
            Step::Retry {
                stage,
                delay,
                attempts,
                pending_submit,
                exclude,
                wants_room,
                keep,
                ..
            } if state.open => {
                metrics::counter!("validator_retries_total", "stage" => stage.as_str())
                    .increment(1);
                let due = now + delay;
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
                    let kept = keep.is_some();
                    entry.staged = keep;
                    entry.replay_again = kept;
                    if !kept {
                        entry.bytes = 0;
                    }
                    let bytes = entry.bytes;
                    if kept {
                        state.buffer_in(bytes);
                    }
                    if wants_room {
                        state.room_waiters.push(key.clone());
                    }
                    state.delayed.push(Reverse(Delayed { due, seq, key }));
                }
                None
            }
            Step::Terminal(outcome) => self.end(&mut state, key, outcome),
            Step::Buffer(_) | Step::Submit(_) | Step::Retry { .. } => {
                self.end(&mut state, key, Outcome::Cancelled)
            }
        };
        let (buffered, buffered_bytes) = (state.buffered, state.buffered_bytes);
        drop(state);
        metrics::gauge!("validator_slots_in_use").set(in_use as f64);
        metrics::gauge!("validator_fetch_slots_in_use").set(fetch_in_use as f64);
        metrics::gauge!("validator_buffer_payloads").set(buffered as f64);
        metrics::gauge!("validator_buffer_bytes").set(buffered_bytes as f64);
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
        self.tick(&mut state, Instant::now());
        let waiters = std::mem::take(&mut state.room_waiters);
        let mut readied = false;
        for key in waiters.into_iter().rev() {
            let Some(entry) = state.entries.get_mut(&key) else { continue };
            if entry.phase != Phase::Delayed {
                continue;
            }
            // Invalidates the key's entry in the delayed heap.
            entry.delay_seq = u64::MAX;
            let lane = entry.lane;
            if entry.staged.is_some() {
                entry.phase = Phase::Buffered;
                state.staged[lane.index()].push_front(key);
            } else {
                entry.phase = Phase::Ready;
                state.ready[lane.index()].push_front(key);
            }
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
        if entry.staged.is_some() {
            state.buffered -= 1;
            state.buffered_bytes -= entry.bytes;
        }
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
            run.record(&event.outcome);
        }
        self.journal.record(JournalEntry::Finished {
            event: event.clone(),
            at: std::time::SystemTime::now(),
        });
        // No receiver is fine: counts and run reports do not depend on the stream.
        let _ = self.outcomes.send(event);
    }

    /// Stops admission and ends every key that holds no slot as cancelled, buffered payloads
    /// dropped. Keys holding a slot of either stage end when their attempts return.
    pub(crate) fn close(&self) -> usize {
        let mut state = self.lock();
        self.tick(&mut state, Instant::now());
        state.open = false;
        let idle: Vec<Key> = state
            .entries
            .iter()
            .filter(|(_, entry)| !entry.phase.holds_slot())
            .map(|(key, _)| key.clone())
            .collect();
        state.ready = Default::default();
        state.staged = Default::default();
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
            pipeline: PipelineStatus {
                fetch_in_use: state.fetch_in_use,
                fetch_capacity: self.fetch_capacity,
                fetch_peak: state.fetch_peak,
                buffered: state.buffered,
                buffered_bytes: state.buffered_bytes,
                buffered_peak_bytes: state.buffered_peak_bytes,
                buffer_capacity: self.buffer_capacity,
                buffer_bytes_capacity: self.buffer_bytes,
                expired: state.expired,
                gpu_idle_slot_seconds: state.gpu_idle,
            },
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
