//! The scenarios. Each runs one strategy on a fresh multi-threaded runtime (one worker per core)
//! and fresh fakes, and returns its figures as JSON.

use std::{
    io::Read,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::{runtime::Runtime, time::Instant};
use tokio_util::sync::CancellationToken;

use crate::{
    fakes::{live_id, Faults, Rig},
    strategy::{BoxError, Policy, Runner, Strategy},
};

/// Slots, and the ML node's concurrency: the ideal throughput is `K / S`.
pub(crate) const K: usize = 64;
/// The fake ML node's nominal replay latency.
pub(crate) const REPLAY: Duration = Duration::from_millis(20);
/// The replay latency of the memory scenario, short so that a million items drain in minutes.
const MEMORY_REPLAY: Duration = Duration::from_millis(1);
/// Grace given to every shutdown.
const GRACE: Duration = Duration::from_secs(5);
/// A memory child whose resident set passes this is killed (the unbounded design at 1M).
const RSS_CAP_KIB: u64 = 4 * 1024 * 1024;

/// The run's sizes.
#[derive(Debug, Clone)]
pub(crate) struct Sizes {
    pub(crate) quick: bool,
    pub(crate) drain: u64,
    pub(crate) memory: Vec<u64>,
    /// A memory child stops draining after this long and reports what it reached.
    pub(crate) memory_cap: Duration,
    pub(crate) live: Duration,
    pub(crate) faults: u64,
    pub(crate) http_drain: u64,
    /// `devshard_sessions`: the numbers of sessions, smallest first.
    pub(crate) devshard_sessions: Vec<usize>,
    /// `devshard_sessions`: how long jobs arrive.
    pub(crate) devshard_window: Duration,
    /// `devshard_sessions`: how long after the window every job may take to settle.
    pub(crate) devshard_drain: Duration,
    /// `slow_executors`: backlog items (and a tenth as many revalidations).
    pub(crate) slow_executors: u64,
}

impl Sizes {
    pub(crate) fn new(quick: bool) -> Self {
        if quick {
            Self {
                quick,
                drain: 20_000,
                memory: vec![1_000, 100_000],
                memory_cap: Duration::from_secs(30),
                live: Duration::from_secs(6),
                faults: 12_000,
                http_drain: 5_000,
                devshard_sessions: vec![1, 50],
                devshard_window: Duration::from_secs(3),
                devshard_drain: Duration::from_secs(3),
                slow_executors: 2_000,
            }
        } else {
            Self {
                quick,
                drain: 100_000,
                memory: vec![1_000, 10_000, 100_000, 1_000_000],
                memory_cap: Duration::from_secs(120),
                live: Duration::from_secs(30),
                faults: 50_000,
                http_drain: 20_000,
                devshard_sessions: vec![1, 10, 50],
                devshard_window: Duration::from_secs(10),
                devshard_drain: Duration::from_secs(5),
                slow_executors: 5_000,
            }
        }
    }

    pub(crate) fn to_json(&self) -> Value {
        json!({
            "quick": self.quick,
            "drain": self.drain,
            "memory": self.memory,
            "memory_cap_s": self.memory_cap.as_secs_f64(),
            "live_s": self.live.as_secs_f64(),
            "faults": self.faults,
            "http_drain": self.http_drain,
            "devshard_sessions": self.devshard_sessions,
            "devshard_window_s": self.devshard_window.as_secs_f64(),
            "devshard_drain_s": self.devshard_drain.as_secs_f64(),
            "slow_executors": self.slow_executors,
        })
    }
}

/// The machine's cores, as the runtime sees them.
pub(crate) fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A multi-threaded runtime with one worker per core, as every scenario runs on.
pub(crate) fn runtime() -> std::io::Result<Runtime> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(cores()).enable_all().build()
}

/// Rounds for the report: four significant decimals are more than the noise allows.
pub(crate) fn round(x: f64) -> f64 {
    if !x.is_finite() || x == 0.0 {
        return x;
    }
    let scale = 10f64.powi(3 - x.abs().log10().floor() as i32);
    (x * scale).round() / scale
}

/// A duration in seconds, rounded for the report.
pub(crate) fn secs(d: Duration) -> f64 {
    round(d.as_secs_f64())
}

/// Samples the runtime's live task count every 2 ms and keeps the peak.
pub(crate) struct TaskSampler {
    peak: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl TaskSampler {
    /// Starts sampling on the current runtime.
    pub(crate) fn start() -> Self {
        let peak = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let (peak_, stop_) = (Arc::clone(&peak), stop.clone());
        tokio::spawn(async move {
            let handle = tokio::runtime::Handle::current();
            while !stop_.is_cancelled() {
                peak_.fetch_max(handle.metrics().num_alive_tasks(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
        Self { peak, stop }
    }

    /// Stops sampling; the peak, less the bench's own `helpers` tasks.
    pub(crate) fn finish(self, helpers: usize) -> usize {
        self.stop.cancel();
        self.peak.load(Ordering::Relaxed).saturating_sub(helpers)
    }
}

/// The bench's own tasks besides the sampler: the outcome collector, which only `ours` has.
fn collector_tasks(strategy: Strategy) -> usize {
    usize::from(strategy == Strategy::Ours)
}

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current().metrics().num_alive_tasks()
}

// === drain ===

/// What `shutdown` needs from `drain`.
pub(crate) struct Drained {
    pub(crate) elapsed: Duration,
    pub(crate) service: Duration,
}

/// A recovery backlog of B items and nothing else.
pub(crate) fn drain(strategy: Strategy, sizes: &Sizes) -> Result<(Value, Drained), BoxError> {
    runtime()?.block_on(async {
        let policy = Policy::scaled(K);
        let rig = Rig::new(sizes.drain, REPLAY, K, Faults::default(), true);
        let runner = Runner::start(strategy, rig.ports(), &policy, true)?;
        let sampler = TaskSampler::start();
        let started = Instant::now();
        let state = runner.recover()?.wait().await;
        let elapsed = started.elapsed();
        let peak_tasks = sampler.finish(1 + collector_tasks(strategy));
        let service = rig.ml.mean_service();
        let counts = runner.counts();
        runner.shutdown(GRACE).await;
        let submitted = rig.chain.submitted();
        let efficiency =
            submitted as f64 * service.as_secs_f64() / (K as f64 * elapsed.as_secs_f64());
        let figures = json!({
            "items": sizes.drain,
            "efficiency": round(efficiency),
            "completed_share": round(submitted as f64 / sizes.drain as f64),
            "gave_up": counts.gave_up,
            "elapsed_s": secs(elapsed),
            "ideal_s": secs(service * sizes.drain as u32 / K as u32),
            "service_ms": round(service.as_secs_f64() * 1e3),
            "peak_tasks": peak_tasks,
            "peak_in_flight": counts.peak_in_flight,
            "peak_replays": rig.ml.peak(),
            "duplicates": rig.chain.duplicates(),
            "state": state,
        });
        Ok((figures, Drained { elapsed, service }))
    })
}

// === memory ===

/// Each size in a fresh child process; peak RSS per size.
pub(crate) fn memory(strategy: Strategy, sizes: &Sizes) -> Result<Value, BoxError> {
    let mut per_size = serde_json::Map::new();
    let mut peaks = Vec::new();
    let mut killed = false;
    for &items in &sizes.memory {
        let child = run_memory_child(strategy, items, sizes.memory_cap)?;
        if let Some(kib) = child.get("peak_rss_kib").and_then(Value::as_u64) {
            peaks.push(kib);
        }
        killed |= child.get("note").is_some();
        per_size.insert(items.to_string(), child);
    }
    let ratio = match (peaks.first(), peaks.last()) {
        (Some(&small), Some(&large)) if peaks.len() == sizes.memory.len() && small > 0 => {
            json!(round(large as f64 / small as f64))
        }
        _ => Value::Null,
    };
    Ok(json!({
        "replay_ms": MEMORY_REPLAY.as_millis() as u64,
        "rss_ratio_largest_vs_smallest": ratio,
        // A killed child's peak is the last one seen before the kill: a lower bound.
        "ratio_is_lower_bound": killed,
        "sizes": per_size,
    }))
}

fn run_memory_child(strategy: Strategy, items: u64, cap: Duration) -> Result<Value, BoxError> {
    let args = [
        "--memory-child".to_owned(),
        strategy.name().to_owned(),
        items.to_string(),
        cap.as_secs().to_string(),
    ];
    // The child caps its own drain; this guard is for a child that cannot even get there.
    run_child(&args, cap + Duration::from_secs(60))
}

/// Runs this bench binary with `args` and returns the last JSON line the child printed. The
/// child is killed if its resident set passes [`RSS_CAP_KIB`] or it has not exited after
/// `deadline`; the answer then holds the last `VmHWM` seen (`peak_rss_kib`) and a `note`.
pub(crate) fn run_child(args: &[String], deadline: Duration) -> Result<Value, BoxError> {
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let pid = child.id();
    let deadline = Instant::now() + deadline;
    let watch = tokio::runtime::Builder::new_current_thread().enable_time().build()?;
    let (status, killed, last_hwm) = watch.block_on(async {
        let mut last_hwm = None;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok::<_, std::io::Error>((Some(status), None, last_hwm));
            }
            let proc_status = format!("/proc/{pid}/status");
            last_hwm = status_kib(&proc_status, "VmHWM:").or(last_hwm);
            let rss = status_kib(&proc_status, "VmRSS:").unwrap_or(0);
            let reason = if rss > RSS_CAP_KIB {
                Some(format!("killed: resident set passed {} GiB", RSS_CAP_KIB >> 20))
            } else if Instant::now() > deadline {
                Some("killed: no report before the deadline".to_owned())
            } else {
                None
            };
            if let Some(reason) = reason {
                child.kill()?;
                child.wait()?;
                return Ok((None, Some(reason), last_hwm));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })?;
    let mut output = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        stdout.read_to_string(&mut output)?;
    }
    let reported = output.lines().rev().find_map(|line| serde_json::from_str::<Value>(line).ok());
    Ok(match (reported, killed) {
        (Some(report), None) => report,
        (_, killed) => json!({
            "peak_rss_kib": last_hwm,
            "note": killed.unwrap_or_else(|| format!("child exited with {status:?} and no report")),
        }),
    })
}

/// A `kB` field of a `/proc/<pid>/status` file.
pub(crate) fn status_kib(path: &str, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(path).ok()?;
    let line = status.lines().find(|line| line.starts_with(field))?;
    line[field.len()..].trim().trim_end_matches("kB").trim().parse().ok()
}

/// The child side: drain `items` on a synthetic chain, then print the peak RSS as one JSON line.
pub(crate) fn memory_child(args: &[String]) -> Result<(), BoxError> {
    let [strategy, items, cap, ..] = args else {
        return Err("usage: --memory-child <strategy> <items> <cap seconds>".into());
    };
    let strategy = Strategy::from_name(strategy).ok_or("unknown strategy")?;
    let items: u64 = items.parse()?;
    let cap = Duration::from_secs(cap.parse()?);
    let report = runtime()?.block_on(async {
        let policy = Policy::scaled(K);
        let rig = Rig::new(items, MEMORY_REPLAY, K, Faults::default(), false);
        let runner = Runner::start(strategy, rig.ports(), &policy, false)?;
        let started = Instant::now();
        let run = runner.recover()?;
        let finished = tokio::time::timeout(cap, run.wait()).await.is_ok();
        let elapsed = started.elapsed();
        let counts = runner.counts();
        Ok::<_, BoxError>(json!({
            "peak_rss_kib": status_kib("/proc/self/status", "VmHWM:"),
            "finished": finished,
            "submitted": rig.chain.submitted(),
            "gave_up": counts.gave_up,
            "elapsed_s": secs(elapsed),
        }))
    })?;
    println!("{report}");
    // Dropping a runtime that may hold a million tasks takes long and measures nothing.
    std::process::exit(0)
}

// === live ===

/// One sample of the `live` time series.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    pub(crate) t: f64,
    pub(crate) in_flight: usize,
    /// The latest live wait divided by S.
    pub(crate) wait_over_service: Option<f64>,
}

/// A backlog draining at full load while live items arrive at 10% of capacity.
pub(crate) fn live(
    strategy: Strategy,
    sizes: &Sizes,
    service: Duration,
) -> Result<(Value, Vec<Sample>), BoxError> {
    runtime()?.block_on(async {
        let policy = Policy::scaled(K);
        let capacity = K as f64 / service.as_secs_f64();
        let rate = capacity / 10.0;
        let backlog = (capacity * (sizes.live.as_secs_f64() + 2.0)) as u64;
        let rig = Rig::new(backlog, REPLAY, K, Faults::default(), true);
        let runner = Arc::new(Runner::start(strategy, rig.ports(), &policy, true)?);
        let run = runner.recover()?;
        // Full load first: every slot busy with recovery work.
        let loaded = Instant::now();
        while runner.in_flight() < K && loaded.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }

        let started = Instant::now();
        let before = runner.counts();
        let series = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        {
            let (runner, series, stop) = (Arc::clone(&runner), Arc::clone(&series), stop.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(50));
                while !stop.is_cancelled() {
                    tick.tick().await;
                    let sample = Sample {
                        t: started.elapsed().as_secs_f64(),
                        in_flight: runner.in_flight(),
                        wait_over_service: runner
                            .probe()
                            .latest_live_wait()
                            .map(|wait| wait.as_secs_f64() / service.as_secs_f64()),
                    };
                    series.lock().unwrap_or_else(|p| p.into_inner()).push(sample);
                }
            });
        }

        // Poisson arrivals, seeded so every strategy sees the same schedule.
        let mut rng = rand::rngs::SmallRng::seed_from_u64(42);
        let mut at = 0.0;
        let mut triggered = 0;
        loop {
            let uniform: f64 = rng.random_range(f64::EPSILON..1.0);
            at += -uniform.ln() / rate;
            if at >= sizes.live.as_secs_f64() {
                break;
            }
            tokio::time::sleep_until(started + Duration::from_secs_f64(at)).await;
            runner.live(live_id(triggered));
            triggered += 1;
        }
        let window = started.elapsed();
        let after = runner.counts();
        // Let the last live items reach a slot and finish.
        tokio::time::sleep(service * 10 + Duration::from_millis(200)).await;
        stop.cancel();
        runner.shutdown(GRACE).await;
        drop(run);

        let mut waits: Vec<f64> = runner
            .probe()
            .live_waits()
            .iter()
            .map(|wait| wait.as_secs_f64() / service.as_secs_f64())
            .collect();
        waits.sort_by(f64::total_cmp);
        let pct = |p: f64| {
            if waits.is_empty() {
                return Value::Null;
            }
            let index = ((p * waits.len() as f64).ceil() as usize).clamp(1, waits.len()) - 1;
            json!(round(waits[index]))
        };
        let recovery = after.recovery_dispatched - before.recovery_dispatched;
        let live = after.live_dispatched - before.live_dispatched;
        let series: Vec<Sample> = series
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .copied()
            .filter(|sample| sample.t <= window.as_secs_f64())
            .collect();
        let figures = json!({
            "backlog": backlog,
            "live_rate_per_s": round(rate),
            "window_s": secs(window),
            "live_triggered": triggered,
            "live_served": waits.len(),
            "p50_wait_over_service": pct(0.50),
            "p99_wait_over_service": pct(0.99),
            "max_wait_over_service": pct(1.0),
            "recovery_share": round(recovery as f64 / (recovery + live).max(1) as f64),
            "outcomes_lagged": runner.probe().lagged(),
        });
        Ok((figures, series))
    })
}

// === faults ===

/// 20% of items fail their first payload fetch, 5% hang on their first replay.
pub(crate) fn faults(strategy: Strategy, sizes: &Sizes) -> Result<Value, BoxError> {
    runtime()?.block_on(async {
        let policy = Policy::scaled(K);
        let faults = Faults { payload_first_fail: 200, replay_first_hang: 50 };
        let rig = Rig::new(sizes.faults, REPLAY, K, faults, true);
        let runner = Runner::start(strategy, rig.ports(), &policy, true)?;
        let started = Instant::now();
        let state = runner.recover()?.wait().await;
        let elapsed = started.elapsed().as_secs_f64();
        let counts = runner.counts();
        runner.shutdown(GRACE).await;

        let service = rig.ml.mean_service().as_secs_f64();
        let served = rig.chain.submitted();
        let healthy = rig.chain.healthy_submitted();
        let hangs = rig.ml.hangs();
        // What the faulty items cost whatever the design: their own replay, and a hung replay
        // holding a node slot until the timeout.
        let unavoidable = (served - healthy) as f64 * service
            + hangs as f64 * policy.replay_timeout.as_secs_f64();
        let capacity = K as f64 * elapsed;
        let healthy_efficiency = healthy as f64 * service / (capacity - unavoidable);
        let efficiency = (served as f64 * service
            + hangs as f64 * policy.replay_timeout.as_secs_f64())
            / capacity;
        let healthy_items = (0..sizes.faults)
            .filter(|&i| faults.healthy(crate::fakes::backlog_id(i).as_str()))
            .count();
        Ok(json!({
            "items": sizes.faults,
            "healthy_items": healthy_items,
            "healthy_efficiency": round(healthy_efficiency),
            "efficiency": round(efficiency),
            "lost": counts.admitted as i64 - counts.terminal as i64,
            "completed_share": round(served as f64 / sizes.faults as f64),
            "admitted": counts.admitted,
            "submitted": served,
            "gave_up": counts.gave_up,
            "payload_failures": rig.payloads.failures(),
            "hung_replays": hangs,
            "elapsed_s": round(elapsed),
            "service_ms": round(service * 1e3),
            "state": state,
        }))
    })
}

// === shutdown ===

/// Cancels halfway through this strategy's own `drain` and times the stop.
pub(crate) fn shutdown(
    strategy: Strategy,
    sizes: &Sizes,
    drained: &Drained,
) -> Result<Value, BoxError> {
    runtime()?.block_on(async {
        let policy = Policy::scaled(K);
        let rig = Rig::new(sizes.drain, REPLAY, K, Faults::default(), true);
        let runner = Runner::start(strategy, rig.ports(), &policy, true)?;
        let run = runner.recover()?;
        let cut = drained.elapsed / 2;
        tokio::time::sleep(cut).await;
        let in_flight = runner.in_flight();
        let tasks_before = alive_tasks().saturating_sub(collector_tasks(strategy));
        let (took, drained_in_grace) = runner.shutdown(GRACE).await;
        let _ = tokio::time::timeout(GRACE, run.wait()).await;
        // A finished task leaves the runtime's count once its worker releases it.
        tokio::time::sleep(Duration::from_millis(10)).await;
        let counts = runner.counts();
        Ok(json!({
            "seconds": round(took.as_secs_f64()),
            "drained": drained_in_grace,
            "cancelled_at_s": secs(cut),
            "in_flight_at_cancel": in_flight,
            "tasks_at_cancel": tasks_before,
            "tasks_left": alive_tasks(),
            "submitted_before_stop": rig.chain.submitted(),
            "cancelled": counts.cancelled,
        }))
    })
}

// === http_drain ===

/// `drain` over loopback HTTP: the real `HttpMlNodeClient` and `NodePool` against testkit's
/// `LoopbackMlNode`, which measures S from a request's arrival to the last byte of its answer.
pub(crate) fn http_drain(strategy: Strategy, sizes: &Sizes) -> Result<Value, BoxError> {
    http_drain_with(strategy, sizes, None)
}

/// The journal a `http_drain` round runs with.
enum Journaled<'a> {
    /// `SqliteJournal` in a directory, with its `synchronous` setting.
    Sqlite(&'a std::path::Path, journal::Synchronous),
    /// `PostgresJournal` on a database (one replica, leases on).
    Postgres(&'a str),
}

/// `http_drain` of our engine without a journal, with the journal crate's `SqliteJournal` (WAL,
/// `synchronous = full` and `normal`, in temporary directories) and with its `PostgresJournal`
/// (a throwaway server on loopback, `fsync` on, leases on: every validation takes and releases
/// its lease), in alternating rounds so all see the same machine; each cost is one minus the
/// ratio of the median efficiencies.
pub(crate) fn journal_cost(sizes: &Sizes) -> Result<Value, BoxError> {
    use journal::Synchronous;
    const ROUNDS: usize = 5;
    let postgres = testkit::postgres::TempPostgres::start_durable();
    let (mut without, mut full, mut normal, mut pg) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut dropped = 0;
    for round in 0..ROUNDS {
        let plain = http_drain_with(Strategy::Ours, sizes, None)?;
        without.push(plain["efficiency"].as_f64().unwrap_or(0.0));
        for (synchronous, series) in
            [(Synchronous::Full, &mut full), (Synchronous::Normal, &mut normal)]
        {
            let dir = std::env::temp_dir()
                .join(format!("journal-bench-{}-{round}-{synchronous:?}", std::process::id()));
            let journaled =
                http_drain_with(Strategy::Ours, sizes, Some(Journaled::Sqlite(&dir, synchronous)))?;
            std::fs::remove_dir_all(&dir)?;
            series.push(journaled["efficiency"].as_f64().unwrap_or(0.0));
            dropped += journaled["journal_dropped"].as_u64().unwrap_or(0);
        }
        let url = runtime()?.block_on(postgres.create_database(&format!("bench_{round}")));
        let journaled = http_drain_with(Strategy::Ours, sizes, Some(Journaled::Postgres(&url)))?;
        pg.push(journaled["efficiency"].as_f64().unwrap_or(0.0));
        dropped += journaled["journal_dropped"].as_u64().unwrap_or(0);
    }
    let median = |values: &[f64]| {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        sorted[sorted.len() / 2]
    };
    let plain = median(&without);
    Ok(json!({
        "items": sizes.http_drain,
        "rounds": ROUNDS,
        "efficiency_without": without,
        "efficiency_full": full,
        "efficiency_normal": normal,
        "efficiency_postgres": pg,
        "cost_full": round(1.0 - median(&full) / plain),
        "cost_normal": round(1.0 - median(&normal) / plain),
        "cost_postgres": round(1.0 - median(&pg) / plain),
        "journal_dropped": dropped,
    }))
}

fn http_drain_with(
    strategy: Strategy,
    sizes: &Sizes,
    journal: Option<Journaled<'_>>,
) -> Result<Value, BoxError> {
    runtime()?.block_on(async {
        let journal = match journal {
            Some(Journaled::Sqlite(dir, synchronous)) => {
                let config = journal::Config { synchronous, ..Default::default() };
                Some(Arc::new(journal::Store::Sqlite(journal::SqliteJournal::open(dir, &config)?)))
            }
            Some(Journaled::Postgres(url)) => {
                let config = journal::Config {
                    backend: journal::Backend::Postgres,
                    url: Some(url.to_owned()),
                    ..Default::default()
                };
                Some(Arc::new(journal::Store::open(std::path::Path::new("."), &config).await?))
            }
            None => None,
        };
        let policy = Policy::scaled(K);
        let node = testkit::LoopbackMlNode::try_start().await?;
        node.set_latency(testkit::Latency::Fixed(REPLAY));
        let config = ml_client::Config {
            nodes: vec![ml_client::NodeConfig::new(
                "node-0",
                &node.url(),
                &[validator_core::testing::MODEL],
                K,
            )],
            ..ml_client::Config::default()
        };
        let mut rig = Rig::new(sizes.http_drain, REPLAY, K, Faults::default(), true);
        rig.ml_port =
            Some(Arc::new(ml_client::HttpMlNodeClient::new(&config, &tls::ClientTls::public()?)?));
        rig.broker_port = Some(Arc::new(ml_client::NodePool::new(&config)?));
        if let Some(journal) = &journal {
            rig.journal = Arc::clone(journal) as Arc<dyn validator_core::ports::Journal>;
            rig.leases = journal.leases();
        }
        let runner = Runner::start(strategy, rig.ports(), &policy, true)?;
        let started = Instant::now();
        let state = runner.recover()?.wait().await;
        let elapsed = started.elapsed();
        let counts = runner.counts();
        runner.shutdown(GRACE).await;
        let service = node.mean_service_time().unwrap_or(REPLAY);
        let submitted = rig.chain.submitted();
        let efficiency =
            submitted as f64 * service.as_secs_f64() / (K as f64 * elapsed.as_secs_f64());
        let journal_dropped = match journal {
            Some(journal) => {
                journal.close().await;
                journal.dropped()
            }
            None => 0,
        };
        Ok(json!({
            "journal_dropped": journal_dropped,
            "items": sizes.http_drain,
            "efficiency": round(efficiency),
            "completed_share": round(submitted as f64 / sizes.http_drain as f64),
            "gave_up": counts.gave_up,
            "elapsed_s": secs(elapsed),
            "service_ms": round(service.as_secs_f64() * 1e3),
            "peak_in_flight": counts.peak_in_flight,
            "peak_node_requests": node.peak(),
            "disconnects": node.disconnects(),
            "state": state,
        }))
    })
}
