//! The strategies. The classic scenarios run the real engine and the two upstream designs
//! modelled in [`crate::baseline`] behind one driver, [`Runner`]; `devshard_sessions` runs the
//! engine and the model of upstream's `devshardd` in [`crate::devshardd`] with its own driver.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use tokio::{task::JoinHandle, time::Instant};
use tokio_util::sync::CancellationToken;
use validator_core::{
    ports::chain::InferenceId, Config, Engine, Lane, OutcomeKind, PipelineStatus, Ports,
    RetryPolicy, RunHandle,
};

use crate::{
    baseline::{Baseline, Design},
    fakes::BACKLOG_EPOCH,
};

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A design under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Strategy {
    /// The real `validator_core::Engine`.
    Ours,
    /// PR #1277: one FIFO semaphore of K slots for every path, held through retry sleeps.
    Pr1277,
    /// Before the fix: one task per item, no limit.
    Unbounded,
    /// Upstream's `devshardd`: per session 20 workers and a 20,000-job queue (devshard only).
    Devshardd,
}

impl Strategy {
    /// Every strategy, in the report's column order.
    pub(crate) const ALL: [Strategy; 4] =
        [Strategy::Ours, Strategy::Pr1277, Strategy::Unbounded, Strategy::Devshardd];

    /// The strategies of the classic scenarios.
    pub(crate) const CLASSIC: [Strategy; 3] =
        [Strategy::Ours, Strategy::Pr1277, Strategy::Unbounded];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Strategy::Ours => "ours",
            Strategy::Pr1277 => "pr1277",
            Strategy::Unbounded => "unbounded",
            Strategy::Devshardd => "devshardd",
        }
    }

    pub(crate) fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|strategy| strategy.name() == name)
    }
}

/// Upstream's retry policy and timeouts (DOMAIN.md 2.3, 2.5, 2.6) with one minute scaled to
/// 10 ms, the same for every strategy: payloads 10 attempts 20 ms + 0-20 ms apart, lock and
/// replay 5 attempts 40 ms apart, replay timeout 50 ms, payload and chain timeouts 5 ms.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    pub(crate) slots: usize,
    pub(crate) payload_retry: RetryPolicy,
    pub(crate) replay_retry: RetryPolicy,
    pub(crate) submit_retry: RetryPolicy,
    pub(crate) payload_timeout: Duration,
    pub(crate) replay_timeout: Duration,
    pub(crate) chain_timeout: Duration,
    /// The engine's bound on buffered payload bytes; `None` keeps its default. The models have
    /// no buffer.
    pub(crate) buffer_bytes: Option<usize>,
}

impl Policy {
    pub(crate) fn scaled(slots: usize) -> Self {
        let ms = Duration::from_millis;
        Self {
            slots,
            payload_retry: RetryPolicy {
                attempts: 10,
                interval: ms(20),
                jitter_min: Duration::ZERO,
                jitter_max: ms(20),
            },
            replay_retry: RetryPolicy::fixed(5, ms(40)),
            submit_retry: RetryPolicy::fixed(5, ms(2)),
            payload_timeout: ms(5),
            replay_timeout: ms(50),
            chain_timeout: ms(5),
            buffer_bytes: None,
        }
    }

    pub(crate) fn to_json(&self) -> serde_json::Value {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        serde_json::json!({
            "slots": self.slots,
            "payload_attempts": self.payload_retry.attempts,
            "payload_interval_ms": ms(self.payload_retry.interval),
            "payload_jitter_ms": [ms(self.payload_retry.jitter_min), ms(self.payload_retry.jitter_max)],
            "replay_attempts": self.replay_retry.attempts,
            "replay_interval_ms": ms(self.replay_retry.interval),
            "submit_attempts": self.submit_retry.attempts,
            "submit_interval_ms": ms(self.submit_retry.interval),
            "payload_timeout_ms": ms(self.payload_timeout),
            "replay_timeout_ms": ms(self.replay_timeout),
            "chain_timeout_ms": ms(self.chain_timeout),
            "buffer_bytes": self.buffer_bytes,
        })
    }

    /// The engine's configuration for this policy; everything not set here is the default.
    /// `recovery_window` is 16 × K: room for the K running attempts, the keys waiting out a
    /// back-off (a few dozen at the `faults` rates) and a ready queue of about 0.3 s of work at
    /// K / S, so a pause of the detection loop between listing pages never idles a slot, for
    /// about 0.2 MB of compact entries.
    pub(crate) fn engine_config(&self) -> Config {
        Config {
            slots: self.slots,
            recovery_window: 16 * self.slots,
            payload_retry: self.payload_retry.clone(),
            replay_retry: self.replay_retry.clone(),
            submit_retry: self.submit_retry.clone(),
            payload_timeout: self.payload_timeout,
            replay_timeout: self.replay_timeout,
            chain_timeout: self.chain_timeout,
            buffer_bytes: self.buffer_bytes,
            jitter_seed: Some(7),
            ..Config::default()
        }
    }
}

/// What a scenario reads about live work, filled the same way for every strategy.
#[derive(Default)]
pub(crate) struct Probe {
    live_waits: Mutex<Vec<Duration>>,
    /// The latest live wait in microseconds; `u64::MAX` before the first.
    latest_live_wait_us: AtomicU64,
    /// Outcome events the collector missed (the stream lagged).
    lagged: AtomicU64,
}

impl Probe {
    fn new() -> Self {
        Self { latest_live_wait_us: AtomicU64::new(u64::MAX), ..Self::default() }
    }

    pub(crate) fn record_live_wait(&self, wait: Duration) {
        let micros = u64::try_from(wait.as_micros()).unwrap_or(u64::MAX - 1);
        self.latest_live_wait_us.store(micros, Ordering::Relaxed);
        self.live_waits.lock().unwrap_or_else(|p| p.into_inner()).push(wait);
    }

    pub(crate) fn live_waits(&self) -> Vec<Duration> {
        self.live_waits.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn latest_live_wait(&self) -> Option<Duration> {
        match self.latest_live_wait_us.load(Ordering::Relaxed) {
            u64::MAX => None,
            micros => Some(Duration::from_micros(micros)),
        }
    }

    pub(crate) fn lagged(&self) -> u64 {
        self.lagged.load(Ordering::Relaxed)
    }
}

/// Counts every strategy reports the same way.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Counts {
    /// Items handed to the strategy.
    pub(crate) admitted: u64,
    /// Items that reached an end (submitted, skipped, gave up, cancelled).
    pub(crate) terminal: u64,
    pub(crate) gave_up: u64,
    pub(crate) cancelled: u64,
    pub(crate) recovery_dispatched: u64,
    pub(crate) live_dispatched: u64,
    /// Most validations holding a slot at once (for `unbounded`: running tasks).
    pub(crate) peak_in_flight: u64,
}

enum Kind {
    Ours(Engine),
    Baseline(Arc<Baseline>),
}

/// One strategy, started on a scenario's ports.
pub(crate) struct Runner {
    kind: Kind,
    probe: Arc<Probe>,
    stop: CancellationToken,
}

/// A recovery run in progress.
pub(crate) enum RecoveryRun {
    Ours(RunHandle),
    Baseline(JoinHandle<String>),
}

impl RecoveryRun {
    /// Waits for the run to end; returns its final state.
    pub(crate) async fn wait(self) -> String {
        match self {
            RecoveryRun::Ours(handle) => format!("{:?}", handle.wait().await.state),
            RecoveryRun::Baseline(join) => {
                join.await.unwrap_or_else(|err| format!("task failed: {err}"))
            }
        }
    }
}

impl Runner {
    /// Starts `strategy` on `ports`. With `collect`, live waits are gathered from the engine's
    /// outcome stream (the baselines record theirs directly).
    pub(crate) fn start(
        strategy: Strategy,
        ports: Ports,
        policy: &Policy,
        collect: bool,
    ) -> Result<Self, BoxError> {
        let probe = Arc::new(Probe::new());
        let stop = CancellationToken::new();
        let kind = match strategy {
            Strategy::Ours => {
                let engine = Engine::start(policy.engine_config(), ports)?;
                if collect {
                    tokio::spawn(collect_outcomes(
                        engine.outcomes(),
                        Arc::clone(&probe),
                        stop.clone(),
                    ));
                }
                Kind::Ours(engine)
            }
            Strategy::Pr1277 | Strategy::Unbounded => {
                let design =
                    if strategy == Strategy::Pr1277 { Design::Pr1277 } else { Design::Unbounded };
                Kind::Baseline(Baseline::new(design, ports, policy.clone(), Arc::clone(&probe)))
            }
            Strategy::Devshardd => {
                return Err("devshardd runs only the devshard_sessions scenario".into());
            }
        };
        Ok(Self { kind, probe, stop })
    }

    /// Starts recovery of the backlog epoch.
    pub(crate) fn recover(&self) -> Result<RecoveryRun, BoxError> {
        let seed = BACKLOG_EPOCH as i64;
        Ok(match &self.kind {
            Kind::Ours(engine) => {
                RecoveryRun::Ours(engine.recover(BACKLOG_EPOCH, seed)?.handle().clone())
            }
            Kind::Baseline(baseline) => {
                RecoveryRun::Baseline(baseline.recover(BACKLOG_EPOCH, seed))
            }
        })
    }

    /// A live item arrives now, already sampled.
    pub(crate) fn live(&self, id: InferenceId) {
        match &self.kind {
            Kind::Ours(engine) => {
                // Refusals (a full live lane) would show up as missing waits.
                let _ = engine.validate(id);
            }
            Kind::Baseline(baseline) => baseline.live(id),
        }
    }

    /// A revalidation is triggered now (DOMAIN.md 3.3).
    pub(crate) fn revalidate(&self, id: InferenceId) {
        match &self.kind {
            Kind::Ours(engine) => {
                // A refusal (a full revalidation lane) would show up as a lost item.
                let _ = engine.revalidate(id);
            }
            Kind::Baseline(baseline) => baseline.revalidate(id),
        }
    }

    /// The engine's two stages and the buffer between them; `None` for the models.
    pub(crate) fn pipeline(&self) -> Option<PipelineStatus> {
        match &self.kind {
            Kind::Ours(engine) => Some(engine.status().pipeline),
            Kind::Baseline(_) => None,
        }
    }

    /// Validations holding a slot now (for `unbounded`: running tasks).
    pub(crate) fn in_flight(&self) -> usize {
        match &self.kind {
            Kind::Ours(engine) => engine.status().slots_in_use,
            Kind::Baseline(baseline) => baseline.in_flight(),
        }
    }

    pub(crate) fn counts(&self) -> Counts {
        match &self.kind {
            Kind::Ours(engine) => {
                let status = engine.status();
                let dispatched = |lane: Lane| {
                    status.lanes.iter().find(|l| l.lane == lane).map_or(0, |l| l.dispatched)
                };
                Counts {
                    admitted: status.admitted,
                    terminal: status.outcomes.total(),
                    gave_up: status.outcomes.get(OutcomeKind::GaveUp),
                    cancelled: status.outcomes.get(OutcomeKind::Cancelled),
                    recovery_dispatched: dispatched(Lane::Recovery),
                    live_dispatched: dispatched(Lane::Live),
                    peak_in_flight: status.slots_peak as u64,
                }
            }
            Kind::Baseline(baseline) => baseline.counts(),
        }
    }

    pub(crate) fn probe(&self) -> &Probe {
        &self.probe
    }

    /// Stops everything and waits, at most `grace`, until every task of the strategy has
    /// ended. Returns the time that took and whether it drained within `grace`.
    pub(crate) async fn shutdown(&self, grace: Duration) -> (Duration, bool) {
        let started = Instant::now();
        let drained = match &self.kind {
            Kind::Ours(engine) => engine.shutdown(grace).await.drained,
            Kind::Baseline(baseline) => baseline.shutdown(grace).await,
        };
        let took = started.elapsed();
        self.stop.cancel();
        (took, drained)
    }
}

/// Records the wait of every live outcome (`OutcomeEvent::wait`: admission to first slot).
async fn collect_outcomes(
    mut outcomes: tokio::sync::broadcast::Receiver<validator_core::OutcomeEvent>,
    probe: Arc<Probe>,
    stop: CancellationToken,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let event = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            event = outcomes.recv() => event,
        };
        match event {
            Ok(event) => {
                if let (Lane::Live, Some(wait)) = (event.lane, event.wait) {
                    probe.record_live_wait(wait);
                }
            }
            Err(RecvError::Lagged(missed)) => {
                probe.lagged.fetch_add(missed, Ordering::Relaxed);
            }
            Err(RecvError::Closed) => return,
        }
    }
}
