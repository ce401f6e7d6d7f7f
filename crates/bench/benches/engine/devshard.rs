//! `devshard_sessions`: a participant in S devshard sessions validates what their hosts hand it,
//! one NodeManager shared by everything. Each (strategy, S) runs in a child process of the bench
//! so that its peak RSS is its own; the parent compares the smallest S with the largest.
//!
//! The session hosts are the bench's (the same for every strategy): every millisecond each host
//! gets a diff; new inferences of the session become jobs for this participant as a Poisson
//! process, and a host collects, on each diff, its new jobs and those whose validation ended
//! without a vote (upstream's `collectValidationJobs`, which skips an inference only while it
//! is queued or running), in a shuffled order as Go's map iteration gives them. What a strategy
//! does with a collected job is the design under test.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::Duration,
};

use rand::{seq::SliceRandom, Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::task::TaskTracker;
use validator_bin::service::{validate_request, ValidationHandler};
use validator_core::{
    devshard::{DevshardJob, DevshardKey},
    Config, Engine, Lane,
};
use validator_proto::validator::v1::validate_response::Verdict;

use crate::{
    devshardd::{self, Answer, AnswerSink, Devshardd, Timing},
    fakes::{mix, replayed_job, Faults, NodeManager, Rig, TimedMlNode, ESCROW_PREFIX, LIVE_EPOCH},
    scenarios::{round, run_child, runtime, secs, status_kib, Sizes, TaskSampler, REPLAY},
    strategy::{BoxError, Policy, Strategy},
};

/// Locks of the NodeManager's one node.
pub(crate) const NODE_CAPACITY: usize = 8;
/// Jobs offered per second, all sessions together, as a share of the node's nominal capacity
/// (`NODE_CAPACITY` / `REPLAY`). The node then stays saturated through the window (it serves
/// about 7% less, at the measured service time), as `live` keeps every slot busy.
pub(crate) const LOAD: f64 = 1.0;
/// Per mille of jobs that are challenged (mandatory votes).
pub(crate) const CHALLENGED_PER_MILLE: u64 = 100;
/// How often each session host gets a diff: one request every 6 s at one minute to 10 ms.
const DIFF_EVERY: Duration = Duration::from_millis(1);
/// A stopped strategy's time to answer what it admitted.
const STOP_GRACE: Duration = Duration::from_secs(1);
/// A valid bech32 account (the executor of every job).
const EXECUTOR: &str = "gonka1qypqxpq9qcrsszg2pvxq6rs0zqg3yyc50htqp7";

/// The strategies this scenario compares.
pub(crate) const STRATEGIES: [Strategy; 2] = [Strategy::Ours, Strategy::Devshardd];

/// The engine's configuration here: the classic scenarios' scaled policy with K =
/// [`NODE_CAPACITY`] slots (slots match the node, as K slots match K node slots there), and the
/// devshard settings scaled the same way, one minute to 10 ms: `lock_wait` 2 s, the deadline
/// 30 min, the chain parameters' TTL 10 min. `BENCH_DEVSHARD_SLOTS` sets other slots, to see
/// the engine with more slots than the node has locks free (as when inference traffic holds
/// some of them).
pub(crate) fn engine_config() -> Config {
    let slots = std::env::var("BENCH_DEVSHARD_SLOTS")
        .ok()
        .and_then(|slots| slots.trim().parse().ok())
        .filter(|&slots| slots > 0)
        .unwrap_or(NODE_CAPACITY);
    Config {
        lock_wait: Duration::from_micros(333),
        devshard_deadline: Duration::from_millis(300),
        chain_params_ttl: Duration::from_millis(100),
        ..Policy::scaled(slots).engine_config()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Whether job `id` of session `session` is challenged; the same for every strategy.
fn challenged(session: usize, id: u64) -> bool {
    mix(mix(session as u64) ^ id) % 1000 < CHALLENGED_PER_MILLE
}

/// Job `id` of session `session`.
fn job(session: usize, id: u64) -> DevshardJob {
    DevshardJob {
        key: DevshardKey {
            escrow_id: format!("{ESCROW_PREFIX}{session}").into(),
            inference_id: id,
        },
        model: validator_core::testing::MODEL.into(),
        // The fake payload source plays the adapter, whose hash check passes.
        prompt_hash: [1; 32],
        response_hash: [2; 32],
        // What the fake ML node's answer reports: no inflation.
        input_tokens: 12,
        output_tokens: 5,
        epoch_id: LIVE_EPOCH,
        executor_address: EXECUTOR.into(),
        runtime_version: "v4".into(),
        challenged: challenged(session, id),
    }
}

/// Draws a Poisson count of mean `mean` (Knuth's method; the means here are below 1).
fn poisson(rng: &mut rand::rngs::SmallRng, mean: f64) -> u64 {
    let limit = (-mean).exp();
    let mut product: f64 = rng.random();
    let mut count = 0;
    while product > limit {
        count += 1;
        product *= rng.random::<f64>();
    }
    count
}

// === Hosts ===

/// What the session hosts know, shared with the strategies' answer paths and the ML node.
struct Hosts {
    /// Per session, jobs to collect again at the next diff.
    again: Vec<Mutex<Vec<DevshardJob>>>,
    /// Challenged jobs not yet replayed: when the host first collected them.
    challenged_arrivals: Mutex<HashMap<(usize, u64), Instant>>,
    /// Challenged jobs' waits from first collection to the start of their first replay.
    challenged_waits: Mutex<Vec<Duration>>,
    /// Jobs handed to the strategy (calls made, jobs offered to a queue).
    handed: AtomicU64,
    /// Of those, the ones that came back: an answer, or a refusal.
    returned: AtomicU64,
    /// Answers, with or without a vote.
    answered: AtomicU64,
    refused: AtomicU64,
    valid: AtomicU64,
    invalid: AtomicU64,
    skipped: AtomicU64,
    without_vote: AtomicU64,
    /// Jobs that reached a vote or a skip.
    settled: AtomicU64,
}

impl Hosts {
    fn new(sessions: usize) -> Self {
        Self {
            again: (0..sessions).map(|_| Mutex::default()).collect(),
            challenged_arrivals: Mutex::default(),
            challenged_waits: Mutex::default(),
            handed: AtomicU64::new(0),
            returned: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            valid: AtomicU64::new(0),
            invalid: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            without_vote: AtomicU64::new(0),
            settled: AtomicU64::new(0),
        }
    }

    /// The ML node received a replay of job `id` of `session`.
    fn replay_started(&self, session: usize, id: u64) {
        let arrived = lock(&self.challenged_arrivals).remove(&(session, id));
        if let Some(arrived) = arrived {
            lock(&self.challenged_waits).push(arrived.elapsed());
        }
    }

    /// The strategy did not take `job`: collected again at the next diff.
    fn refused(&self, session: usize, job: DevshardJob) {
        self.returned.fetch_add(1, Ordering::Relaxed);
        self.refused.fetch_add(1, Ordering::Relaxed);
        self.collect_again(session, job);
    }

    fn collect_again(&self, session: usize, job: DevshardJob) {
        if let Some(again) = self.again.get(session) {
            lock(again).push(job);
        }
    }

    fn count(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

impl AnswerSink for Hosts {
    fn answered(&self, session: usize, job: &DevshardJob, answer: Answer) {
        self.returned.fetch_add(1, Ordering::Relaxed);
        self.answered.fetch_add(1, Ordering::Relaxed);
        let counter = match answer {
            Answer::Verdict { valid: true } => &self.valid,
            Answer::Verdict { valid: false } => &self.invalid,
            Answer::Skipped => &self.skipped,
            Answer::Failed => {
                self.without_vote.fetch_add(1, Ordering::Relaxed);
                self.collect_again(session, job.clone());
                return;
            }
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.settled.fetch_add(1, Ordering::Relaxed);
    }
}

// === Strategies ===

/// A strategy started on the scenario's ports.
enum Design {
    /// The engine behind the validation service's handler; one task per call in flight, as
    /// the gRPC server runs one per request.
    Ours {
        engine: Engine,
        handler: ValidationHandler,
        calls: TaskTracker,
    },
    Devshardd(Arc<Devshardd>),
}

impl Design {
    fn start(
        strategy: Strategy,
        sessions: usize,
        rig: &Rig,
        hosts: &Arc<Hosts>,
    ) -> Result<Self, BoxError> {
        match strategy {
            Strategy::Ours => {
                let engine = Engine::start(engine_config(), rig.ports())?;
                let handler = ValidationHandler::new(engine.clone(), "bench".into());
                Ok(Design::Ours { engine, handler, calls: TaskTracker::new() })
            }
            Strategy::Devshardd => Ok(Design::Devshardd(Devshardd::start(
                sessions,
                rig.ports(),
                Timing::scaled(),
                Arc::clone(hosts) as Arc<dyn AnswerSink>,
            ))),
            other => Err(format!("{} does not run devshard sessions", other.name()).into()),
        }
    }

    /// The host hands `job` over.
    fn submit(&self, hosts: &Arc<Hosts>, session: usize, job: DevshardJob) {
        match self {
            Design::Ours { handler, calls, .. } => {
                hosts.handed.fetch_add(1, Ordering::Relaxed);
                let (handler, hosts) = (handler.clone(), Arc::clone(hosts));
                calls.spawn(async move {
                    let answer = match handler.validate(validate_request(&job)).await {
                        Ok(response) => match Verdict::try_from(response.verdict) {
                            Ok(Verdict::Valid) => Answer::Verdict { valid: true },
                            Ok(Verdict::Invalid) => Answer::Verdict { valid: false },
                            _ => Answer::Skipped,
                        },
                        // The lane is full: not admitted, collected again at the next diff.
                        Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                            hosts.refused(session, job);
                            return;
                        }
                        Err(_) => Answer::Failed,
                    };
                    hosts.answered(session, &job, answer);
                });
            }
            Design::Devshardd(devshardd) => {
                hosts.handed.fetch_add(1, Ordering::Relaxed);
                if let Some(job) = devshardd.enqueue(session, job) {
                    // A full queue drops the job at once.
                    hosts.refused(session, job);
                }
            }
        }
    }

    /// Stops the strategy and gives it `grace` to answer what it admitted.
    async fn stop(&self, grace: Duration) -> bool {
        match self {
            Design::Ours { engine, calls, .. } => {
                let drained = engine.shutdown(grace).await.drained;
                calls.close();
                drained && tokio::time::timeout(grace, calls.wait()).await.is_ok()
            }
            Design::Devshardd(devshardd) => devshardd.close(grace).await,
        }
    }

    /// The design's own counts.
    fn details(&self) -> Value {
        match self {
            Design::Ours { engine, .. } => {
                let status = engine.status();
                let dispatched = |lane: Lane| status.lane(lane).map_or(0, |lane| lane.dispatched);
                let in_flight: usize = status.lanes.iter().map(|lane| lane.in_flight).sum();
                json!({
                    "slots_peak": status.slots_peak,
                    "challenged_dispatched": dispatched(Lane::Challenged),
                    "live_dispatched": dispatched(Lane::Live),
                    "in_flight_at_stop": in_flight,
                })
            }
            Design::Devshardd(devshardd) => {
                let counts = devshardd.counts();
                json!({
                    "gave_up_on_node": counts.gave_up_on_node,
                    "peak_validating": counts.peak_validating,
                    "queue_drops": counts.dropped,
                    "queued_at_stop": counts.queued,
                })
            }
        }
    }

    /// Validation workers or slots.
    fn workers(&self, sessions: usize) -> usize {
        match self {
            Design::Ours { .. } => engine_config().slots,
            Design::Devshardd(_) => devshardd::WORKERS_PER_SESSION * sessions,
        }
    }
}

/// The scenario's set-up, for the report's `meta`.
pub(crate) fn meta() -> Value {
    let config = engine_config();
    json!({
        "node_capacity": NODE_CAPACITY,
        "load": LOAD,
        "challenged_per_mille": CHALLENGED_PER_MILLE,
        "diff_every_ms": DIFF_EVERY.as_secs_f64() * 1e3,
        "engine_slots": config.slots,
        "engine_lock_wait_ms": config.lock_wait.as_secs_f64() * 1e3,
        "engine_deadline_ms": config.devshard_deadline.as_secs_f64() * 1e3,
        "devshardd_workers_per_session": devshardd::WORKERS_PER_SESSION,
        "devshardd_queue_per_session": devshardd::QUEUE_PER_SESSION,
        "devshardd_acquire_attempts": devshardd::ACQUIRE_ATTEMPTS,
        "devshardd_acquire_interval_ms": Timing::scaled().acquire_interval.as_secs_f64() * 1e3,
    })
}

// === Parent ===

/// Runs every S in a child process and compares the smallest with the largest.
pub(crate) fn devshard_sessions(strategy: Strategy, sizes: &Sizes) -> Result<Value, BoxError> {
    let mut per_size = serde_json::Map::new();
    let mut runs = Vec::new();
    for &sessions in &sizes.devshard_sessions {
        let args = [
            "--devshard-child".to_owned(),
            strategy.name().to_owned(),
            sessions.to_string(),
            sizes.devshard_window.as_millis().to_string(),
            sizes.devshard_drain.as_millis().to_string(),
        ];
        let deadline = sizes.devshard_window + sizes.devshard_drain + Duration::from_secs(60);
        let child = run_child(&args, deadline)?;
        per_size.insert(sessions.to_string(), child.clone());
        runs.push(child);
    }
    let figure = |run: &Value, key: &str| run.get(key).and_then(Value::as_f64);
    let ratio = |key: &str| match (runs.first(), runs.last()) {
        (Some(small), Some(large)) if runs.len() == sizes.devshard_sessions.len() => {
            match (figure(small, key), figure(large, key)) {
                (Some(small), Some(large)) if small > 0.0 => json!(round(large / small)),
                _ => Value::Null,
            }
        }
        _ => Value::Null,
    };
    // The worst over the sizes: a goal holds only if it holds at every S.
    let worst = |key: &str| {
        runs.iter()
            .map(|run| figure(run, key))
            .try_fold(f64::NEG_INFINITY, |worst, value| value.map(|value| worst.max(value)))
            .map_or(Value::Null, |worst| json!(round(worst)))
    };
    let most = |key: &str| -> Option<u64> {
        runs.iter()
            .map(|run| run.get(key).and_then(Value::as_u64))
            .try_fold(0, |most, value| value.map(|value| most.max(value)))
    };
    let lost: Option<u64> = runs.iter().map(|run| run.get("lost").and_then(Value::as_u64)).sum();
    Ok(json!({
        "peak_tasks_ratio_largest_vs_smallest": ratio("peak_tasks"),
        "rss_ratio_largest_vs_smallest": ratio("peak_rss_kib"),
        "ml_over_capacity": most("ml_over_capacity"),
        "acquire_rejections_per_replay": worst("acquire_rejections_per_replay"),
        "challenged_p99_wait_over_service": worst("challenged_p99_wait_over_service"),
        "lost": lost,
        "node_capacity": NODE_CAPACITY,
        "load": LOAD,
        "sessions": per_size,
    }))
}

// === Child ===

/// The child side: one strategy at one S; prints its figures as one JSON line.
pub(crate) fn devshard_child(args: &[String]) -> Result<(), BoxError> {
    let [strategy, sessions, window_ms, drain_ms, ..] = args else {
        return Err("usage: --devshard-child <strategy> <sessions> <window ms> <drain ms>".into());
    };
    let strategy = Strategy::from_name(strategy).ok_or("unknown strategy")?;
    let sessions: usize = sessions.parse()?;
    let window = Duration::from_millis(window_ms.parse()?);
    let drain = Duration::from_millis(drain_ms.parse()?);
    let report = runtime()?.block_on(run(strategy, sessions.max(1), window, drain))?;
    println!("{report}");
    // Dropping a runtime with a thousand idle workers measures nothing.
    std::process::exit(0)
}

async fn run(
    strategy: Strategy,
    sessions: usize,
    window: Duration,
    drain: Duration,
) -> Result<Value, BoxError> {
    let hosts = Arc::new(Hosts::new(sessions));
    let mut rig = Rig::new(0, REPLAY, NODE_CAPACITY, Faults::default(), false);
    let watch = Arc::clone(&hosts);
    rig.ml = Arc::new(TimedMlNode::new(REPLAY, Faults::default()).with_start_hook(Arc::new(
        move |body: &Value| {
            if let Some((session, id)) = replayed_job(body) {
                watch.replay_started(session, id);
            }
        },
    )));
    let node_manager = NodeManager::new(NODE_CAPACITY);
    rig.broker_port = Some(Arc::new(node_manager.clone()));

    let sampler = TaskSampler::start();
    let design = Design::start(strategy, sessions, &rig, &hosts)?;
    let started = Instant::now();
    let rate = LOAD * NODE_CAPACITY as f64 / REPLAY.as_secs_f64();
    let mean_per_diff = rate * DIFF_EVERY.as_secs_f64() / sessions as f64;
    let mut arrivals: Vec<rand::rngs::SmallRng> =
        (0..sessions).map(|s| rand::rngs::SmallRng::seed_from_u64(mix(42 + s as u64))).collect();
    let mut order = rand::rngs::SmallRng::seed_from_u64(7);
    let mut next_id = vec![0_u64; sessions];
    let (mut generated, mut challenged_generated) = (0_u64, 0_u64);
    let diffs = (window.as_secs_f64() / DIFF_EVERY.as_secs_f64()).round() as u64;
    let mut tick = tokio::time::interval(DIFF_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut settled_at = None;
    for diff in 0.. {
        tick.tick().await;
        let arriving = diff < diffs;
        if !arriving {
            if Hosts::count(&hosts.settled) == generated {
                settled_at = Some(started.elapsed());
                break;
            }
            if started.elapsed() > window + drain {
                break;
            }
        }
        for (session, rng) in arrivals.iter_mut().enumerate() {
            let mut batch = std::mem::take(&mut *lock(&hosts.again[session]));
            let new = if arriving { poisson(rng, mean_per_diff) } else { 0 };
            for _ in 0..new {
                next_id[session] += 1;
                let job = job(session, next_id[session]);
                if job.challenged {
                    challenged_generated += 1;
                    lock(&hosts.challenged_arrivals)
                        .insert((session, job.key.inference_id), Instant::now());
                }
                generated += 1;
                batch.push(job);
            }
            batch.shuffle(&mut order);
            for job in batch {
                design.submit(&hosts, session, job);
            }
        }
    }
    let elapsed = started.elapsed();
    // The bench's own task: the sampler.
    let peak_tasks = sampler.finish(1);
    let queued = design.details();
    let stopped = design.stop(STOP_GRACE).await;

    let service = rig.ml.mean_service();
    let replays = rig.ml.served();
    let mut waits: Vec<f64> = lock(&hosts.challenged_waits)
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
    let count = Hosts::count;
    let votes = count(&hosts.valid) + count(&hosts.invalid);
    let fetches = rig.payloads.devshard_fetches();
    let refusals = node_manager.refusals();
    let efficiency =
        replays as f64 * service.as_secs_f64() / (NODE_CAPACITY as f64 * elapsed.as_secs_f64());
    Ok(json!({
        "sessions": sessions,
        "workers": design.workers(sessions),
        "window_s": secs(window),
        "rate_per_s": round(rate),
        "generated": generated,
        "challenged_generated": challenged_generated,
        "votes": votes,
        "invalid_votes": count(&hosts.invalid),
        "skipped": count(&hosts.skipped),
        "answers_without_vote": count(&hosts.without_vote),
        "refused": count(&hosts.refused),
        "handed": count(&hosts.handed),
        "answered": count(&hosts.answered),
        "lost": count(&hosts.handed).saturating_sub(count(&hosts.returned)),
        "stopped_in_grace": stopped,
        "completed_share": round(count(&hosts.settled) as f64 / generated.max(1) as f64),
        "settled_s": settled_at.map(secs),
        "elapsed_s": secs(elapsed),
        "efficiency": round(efficiency),
        "peak_tasks": peak_tasks,
        "peak_rss_kib": status_kib("/proc/self/status", "VmHWM:"),
        "replays": replays,
        "service_ms": round(service.as_secs_f64() * 1e3),
        "ml_peak": rig.ml.peak(),
        "ml_over_capacity": rig.ml.peak().saturating_sub(node_manager.capacity()),
        "node_peak_locks": node_manager.peak(),
        "acquires": node_manager.grants(),
        "acquire_rejections": refusals,
        "acquire_rejections_per_replay": round(refusals as f64 / replays.max(1) as f64),
        "payload_fetches": fetches,
        "payload_fetches_per_vote": round(fetches as f64 / votes.max(1) as f64),
        "challenged_served": waits.len(),
        "challenged_p50_wait_over_service": pct(0.50),
        "challenged_p99_wait_over_service": pct(0.99),
        "challenged_max_wait_over_service": pct(1.0),
        "design": queued,
    }))
}
