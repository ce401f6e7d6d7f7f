//! Chaos test of the whole app (event source, block triggers, engine, payload source, node pool, ML
//! client, journal, admin and metrics listeners) against `LoopbackChainNode`, `LoopbackExecutor` and two
//! `LoopbackMlNode`s on loopback: a recovery of 2,000 missed validations plus live traffic and
//! revalidations, with faults injected at seeded moments:
//!
//! - replays on ML node A that hang (freed by the replay timeout), reset the connection or answer
//!   5xx, scripted per request from the seed;
//! - an executor that flaps: bursts of 5xx answers to payload requests;
//! - the chain's websocket dropped twice (the second time after the app re-subscribed);
//! - ML node B failing its replays and health checks until the pool marks it down, then healthy
//!   again until the pool takes it back;
//! - a shutdown at a seeded moment, mid-recovery or once everything drained.
//!
//! Moments are counted in outcomes, not wall time, so a seed replays the same fault plan; the
//! interleaving of the real HTTP calls still varies from run to run. After each seed it asserts:
//! every admitted validation ended in exactly one outcome, and only outcomes after the shutdown
//! began are cancellations; no `MsgValidation` reached the fake chain twice and every one matches
//! its key's outcome; the app never had more replays outstanding on an ML node than its
//! `max_concurrent`, nor on both together than the slots (see `peak_held`);
//! the runtime's live task count is back to where it was before the fakes and the app started;
//! the app returned within its shutdown grace. Every assertion names the seed.
//!
//! `cargo test -p validator-bin --test chaos` runs seeds 0 to 19; `CHAOS_SEEDS=N` runs seeds 0 to
//! N-1, `CHAOS_SEED=k` seed k alone. Run with `--nocapture` for one line per seed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use ml_client::{Availability, NodeConfig};
use rand::{rngs::StdRng, Rng, SeedableRng};
use testkit::{
    ExecutorReply, Latency, LoopbackChainNode, LoopbackExecutor, LoopbackMlNode, Reply, Stay,
    SubmittedMsg, TxEvent,
};
use tokio::{
    sync::{
        broadcast::{
            self,
            error::{RecvError, TryRecvError},
        },
        oneshot,
    },
    time::Instant,
};
use validator_bin::{
    app::{AppHandle, StopReport},
    settings::Settings,
};
use validator_core::{testing::MODEL, Outcome, OutcomeEvent, OutcomeKind};
use validator_demo::{inference_id, DemoOptions, Scenario, BACKLOG_EPOCH, DISPUTED, LIVE_EPOCH};

/// Missed validations of the previous epoch, recovered at the claim height.
const BACKLOG: usize = 2_000;
/// Live inferences finished on chain while the backlog drains.
const LIVE: usize = 200;
/// Every validation the scenario admits when nothing stops it.
const EXPECTED: usize = BACKLOG + LIVE + DISPUTED;
/// Engine slots.
const SLOTS: usize = 8;
/// Replays each ML node takes at once: the two together take exactly the slots, so with node B
/// down only half the slots find a node.
const NODE_SLOTS: usize = SLOTS / 2;
/// Bound of one replay: a hanging replay gives its slot back after this.
const REPLAY_TIMEOUT_MS: u64 = 200;
/// How long before a replay reaches the node its client may have started the replay's timer:
/// connecting and sending the request, on loopback, with room for a loaded machine.
const SEND_LEAD: Duration = Duration::from_millis(50);
/// The app's shutdown grace.
const GRACE: Duration = Duration::from_millis(2_000);
/// What `App::run` may take beyond the grace: waking the task that awaits it and closing the
/// journal, whose writer only has the last batch left.
const GRACE_MARGIN: Duration = Duration::from_millis(250);
/// A seed that has not reached its shutdown after this is stuck.
const SEED_BOUND: Duration = Duration::from_secs(60);
/// Scripted replies of ML node A: more than it is ever asked for.
const A_SCRIPT: usize = 4_000;
/// Seeds run when neither `CHAOS_SEEDS` nor `CHAOS_SEED` is set.
const DEFAULT_SEEDS: u64 = 20;
/// Blocks produced right after the app subscribes: the claim height is the sixth.
const FIRST_BLOCKS: usize = 6;

#[test]
fn the_app_survives_seeded_faults_during_recovery_and_live_traffic() {
    let seeds = seeds();
    let started = std::time::Instant::now();
    let mut reports = Vec::new();
    for &seed in &seeds {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let report = runtime.block_on(run_seed(seed));
        eprintln!("{report}");
        reports.push(report);
    }
    eprintln!("{} seeds in {:.1} s", seeds.len(), started.elapsed().as_secs_f64());
    // The faults only prove something if they happened; across a full run each one did, in at
    // least one seed (a single seed may shut down before its faults come due).
    if seeds.len() >= 10 {
        let any = |check: fn(&SeedReport) -> bool| reports.iter().any(check);
        assert!(
            any(|r| r.a_faults[0] > 0 && r.a_disconnects > 0),
            "no hanging replay was abandoned"
        );
        assert!(any(|r| r.a_faults[1] > 0), "no replay was reset");
        assert!(any(|r| r.a_faults[2] > 0), "no replay answered 5xx");
        assert!(any(|r| r.executor_errors > 0), "the executor never flapped");
        assert!(any(|r| r.ws_drops == 2 && r.subscriptions >= 3), "no websocket dropped twice");
        assert!(
            any(|r| r.b_down_at.is_some() && r.b_back_at.is_some()),
            "node B never went down and back"
        );
        assert!(any(|r| r.cancelled > 0), "no shutdown caught work in flight");
        assert!(any(|r| r.ran_to_the_end), "no seed ran to the end");
    }
}

/// `CHAOS_SEED=k` alone, else seeds `0..CHAOS_SEEDS` (default 20).
fn seeds() -> Vec<u64> {
    let read = |name: &str| {
        std::env::var(name).ok().map(|value| {
            value.trim().parse::<u64>().unwrap_or_else(|_| panic!("{name}={value} is not a number"))
        })
    };
    if let Some(seed) = read("CHAOS_SEED") {
        return vec![seed];
    }
    (0..read("CHAOS_SEEDS").unwrap_or(DEFAULT_SEEDS)).collect()
}

/// The faults of one seed, and when they strike.
#[derive(Debug)]
struct Plan {
    /// Replies of ML node A, in the order its requests arrive.
    a_replies: Vec<Reply>,
    /// Executor flaps: after this many outcomes, the next payload requests answer these 5xx.
    flaps: Vec<(usize, Vec<ExecutorReply>)>,
    /// The websocket drops, after this many outcomes (the second also waits for the app to
    /// have re-subscribed).
    ws_drops: [usize; 2],
    /// After this many outcomes, node B fails its health checks and its next replays.
    b_fail_at: usize,
    /// Replays node B fails: enough to reach the pool's threshold of three in a row even when
    /// replays that were already running succeed in between.
    b_failures: usize,
    /// Outcomes between the pool marking B down and B answering again.
    b_heal_after: usize,
    /// A block every this many outcomes.
    block_every: usize,
    /// Shutdown after this many outcomes; at `EXPECTED` or more, once everything drained.
    shutdown_at: usize,
}

impl Plan {
    fn draw(rng: &mut StdRng) -> Self {
        let five_hundred = |rng: &mut StdRng| [500, 502, 503][rng.random_range(0..3)];
        let a_replies = (0..A_SCRIPT)
            .map(|_| match rng.random_range(0..1_000) {
                0..8 => Reply::Hang,
                8..20 => Reply::Reset,
                20..35 => Reply::status(five_hundred(rng)),
                _ => Reply::Echo,
            })
            .collect();
        let flaps = (0..rng.random_range(2..=4))
            .map(|_| {
                let at = rng.random_range(0..1_200);
                let burst = rng.random_range(10..=60);
                (at, (0..burst).map(|_| ExecutorReply::Status(five_hundred(rng))).collect())
            })
            .collect();
        let first_drop = rng.random_range(20..400);
        Self {
            a_replies,
            flaps,
            ws_drops: [first_drop, first_drop + rng.random_range(30..400)],
            b_fail_at: rng.random_range(50..600),
            b_failures: rng.random_range(6..=12),
            b_heal_after: rng.random_range(20..200),
            block_every: rng.random_range(5..=15),
            shutdown_at: rng.random_range(200..=EXPECTED + EXPECTED / 5),
        }
    }
}

/// What happened in one seed, for the log line and the run-wide coverage checks.
struct SeedReport {
    seed: u64,
    elapsed: Duration,
    outcomes: usize,
    submitted: u64,
    cancelled: u64,
    shutdown_at: usize,
    ran_to_the_end: bool,
    stop: Duration,
    /// Hangs, resets and 5xx node A was asked to serve.
    a_faults: [usize; 3],
    a_disconnects: usize,
    /// Raw peaks at nodes A and B ([`LoopbackMlNode::peak`]), then what [`peak_held`] finds at A,
    /// B and both, then the engine's slots.
    peaks: [usize; 6],
    executor_errors: usize,
    ws_drops: usize,
    subscriptions: usize,
    b_down_at: Option<usize>,
    b_back_at: Option<usize>,
}

impl std::fmt::Display for SeedReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [hangs, resets, errors] = self.a_faults;
        let [raw_a, raw_b, a, b, both, slots] = self.peaks;
        write!(
            f,
            "seed {}: {:.2} s, {} outcomes ({} submitted, {} cancelled), shutdown after {} \
             outcomes{} took {} ms; node A {hangs} hangs ({} abandoned), {resets} resets, \
             {errors} 5xx; executor {} 5xx; {} websocket drops, {} subscriptions; node B down \
             at {:?}, back at {:?}; peaks A {a} (raw {raw_a}) B {b} (raw {raw_b}) both {both} \
             slots {slots}",
            self.seed,
            self.elapsed.as_secs_f64(),
            self.outcomes,
            self.submitted,
            self.cancelled,
            self.shutdown_at,
            if self.ran_to_the_end { " (all done)" } else { "" },
            self.stop.as_millis(),
            self.a_disconnects,
            self.executor_errors,
            self.ws_drops,
            self.subscriptions,
            self.b_down_at,
            self.b_back_at,
        )
    }
}

/// Adjusts the demo's settings: two ML nodes (the demo's fake as A, `node_b` as B), a deep
/// outcome stream, a fast health probe and this seed's jitter.
fn configure(settings: &mut Settings, node_b: &LoopbackMlNode, seed: u64) {
    settings.shutdown_grace = GRACE;
    settings.core.jitter_seed = Some(seed);
    // Far more than a seed's outcomes: the test's receiver never lags.
    settings.core.outcome_buffer = 1 << 16;
    let url_a = settings.ml.nodes[0].url.clone();
    settings.ml.nodes = vec![
        NodeConfig::new("ml-a", &url_a, &[MODEL], NODE_SLOTS),
        NodeConfig::new("ml-b", &node_b.url(), &[MODEL], NODE_SLOTS),
    ];
    settings.ml.health.probe_interval = Duration::from_millis(50);
    settings.ml.health.probe_timeout = Duration::from_millis(100);
}

/// Scripts a finished inference on the chain and its payloads at the executor.
fn add_inference(chain: &LoopbackChainNode, executor: &LoopbackExecutor, id: &str, epoch: u64) {
    chain.add_inference(id, epoch, executor.address());
    executor.insert_generated(id, epoch);
    chain.put_inference(executor.inference(id).unwrap());
}

/// Where node B stands in its fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NodeB {
    Serving,
    Failing,
    Down { seen_at: usize },
    Healed,
    Back,
}

/// Counts outcomes per key and checks them as they arrive.
#[derive(Default)]
struct Tally {
    events: usize,
    per_key: HashMap<(String, bool), Vec<Outcome>>,
    /// Cancellations seen before the shutdown began.
    early_cancellations: Vec<String>,
}

impl Tally {
    fn record(&mut self, event: OutcomeEvent, shutting_down: bool) {
        self.events += 1;
        let key = (event.inference_id.as_str().to_owned(), event.revalidation);
        if event.outcome == Outcome::Cancelled && !shutting_down {
            self.early_cancellations.push(key.0.clone());
        }
        self.per_key.entry(key).or_default().push(event.outcome);
    }
}

/// Drives the chain and the faults from the outcome stream.
struct Driver<'a> {
    plan: Plan,
    rng: StdRng,
    chain: &'a LoopbackChainNode,
    executor: &'a LoopbackExecutor,
    node_b: &'a LoopbackMlNode,
    app: &'a AppHandle,
    tally: Tally,
    shutting_down: bool,
    live_sent: usize,
    disputed_sent: usize,
    next_block_at: usize,
    flaps_done: usize,
    ws_drops: usize,
    subscriptions_at_drop: usize,
    node_b_state: NodeB,
    b_down_at: Option<usize>,
    b_back_at: Option<usize>,
    claimed: bool,
}

impl Driver<'_> {
    /// A block with `live` new live inferences (as many as are left) and the next disputed
    /// inference while any is left.
    fn produce_block(&mut self, live: usize) {
        let mut txs = Vec::new();
        for _ in 0..live.min(LIVE - self.live_sent) {
            let id = inference_id("live", self.live_sent);
            add_inference(self.chain, self.executor, &id, LIVE_EPOCH);
            txs.push(vec![TxEvent::inference_finished(&id)]);
            self.live_sent += 1;
        }
        if self.disputed_sent < DISPUTED {
            let id = inference_id("disputed", self.disputed_sent);
            txs.push(vec![TxEvent::inference_validation(&id, "gonka1othervalidator", true)]);
            self.disputed_sent += 1;
        }
        self.chain.produce_block(txs);
    }

    fn on_outcome(&mut self, event: OutcomeEvent) {
        self.tally.record(event, self.shutting_down);
        let n = self.tally.events;
        while let Some((at, replies)) = self.plan.flaps.get(self.flaps_done) {
            if n < *at {
                break;
            }
            self.executor.script_next(replies.iter().cloned());
            self.flaps_done += 1;
        }
        if self.ws_drops == 0 && n >= self.plan.ws_drops[0] {
            self.subscriptions_at_drop = self.chain.subscriptions();
            self.chain.drop_websockets();
            self.ws_drops = 1;
        } else if self.ws_drops == 1
            && n >= self.plan.ws_drops[1]
            && self.chain.subscriptions() > self.subscriptions_at_drop
        {
            self.chain.drop_websockets();
            self.ws_drops = 2;
        }
        self.step_node_b(n);
        if n >= self.next_block_at {
            self.next_block_at = n + self.plan.block_every;
            let live = self.rng.random_range(0..=3);
            self.produce_block(live);
        }
    }

    fn step_node_b(&mut self, n: usize) {
        let availability = || self.app.pool.status()[1].availability;
        self.node_b_state = match self.node_b_state {
            NodeB::Serving if n >= self.plan.b_fail_at => {
                self.node_b.set_healthy(false);
                let failures = (0..self.plan.b_failures).map(|i| match i % 2 {
                    0 => Reply::status(503),
                    _ => Reply::Reset,
                });
                self.node_b.script(failures);
                NodeB::Failing
            }
            NodeB::Failing if availability() == Availability::Down => {
                self.b_down_at = Some(n);
                NodeB::Down { seen_at: n }
            }
            NodeB::Down { seen_at } if n >= seen_at + self.plan.b_heal_after => {
                self.node_b.set_healthy(true);
                NodeB::Healed
            }
            NodeB::Healed if availability() == Availability::Up => {
                self.b_back_at = Some(n);
                NodeB::Back
            }
            state => state,
        };
    }

    /// Once recovery is done and the claim went out, the live inferences still unsent go out
    /// in one block, so the run's end does not depend on outcomes that no longer come.
    fn on_claim(&mut self) {
        if self.claimed || !self.app.claimer.is_claimed(BACKLOG_EPOCH) {
            return;
        }
        self.claimed = true;
        while self.live_sent < LIVE || self.disputed_sent < DISPUTED {
            self.produce_block(LIVE);
        }
    }

    fn all_done(&self) -> bool {
        self.claimed && self.tally.events >= EXPECTED
    }

    fn should_stop(&self) -> bool {
        if self.plan.shutdown_at >= EXPECTED {
            self.all_done()
        } else {
            self.tally.events >= self.plan.shutdown_at
        }
    }
}

async fn run_seed(seed: u64) -> SeedReport {
    let started = Instant::now();
    let metrics = tokio::runtime::Handle::current().metrics();
    let baseline = metrics.num_alive_tasks();
    let mut rng = StdRng::seed_from_u64(seed);
    let plan = Plan::draw(&mut rng);
    let shutdown_at = plan.shutdown_at;
    let options = DemoOptions {
        backlog: BACKLOG,
        slots: SLOTS,
        replay_timeout_ms: REPLAY_TIMEOUT_MS,
        live_rate: 0.0,
        json: true,
        ..DemoOptions::default()
    };
    let node_b = LoopbackMlNode::start().await;
    let (scenario, app) =
        Scenario::build_with(&options, |_, settings| configure(settings, &node_b, seed))
            .await
            .unwrap_or_else(|err| panic!("seed {seed}: starting the fakes and the app: {err:#}"));
    let data_dir = scenario.data_dir.clone();
    let node_a = scenario.ml.as_ref().unwrap();
    for (node, offset) in [(node_a, 0), (&node_b, 1)] {
        let (min, max) = (Duration::from_millis(1), Duration::from_millis(3));
        node.set_latency(Latency::Uniform { min, max, seed: seed * 2 + offset });
    }
    node_a.script(plan.a_replies.clone());
    let handle = app.handle();
    let mut outcomes = handle.engine.outcomes();
    let mut claims = handle.claimer.subscribe();
    let (stop, stopped) = oneshot::channel::<()>();
    let mut task = tokio::spawn(async move {
        let report = app
            .run(async {
                let _ = stopped.await;
            })
            .await;
        (report, Instant::now())
    });
    let deadline = started + SEED_BOUND;
    tokio::time::timeout_at(deadline, scenario.chain.wait_subscriptions(1))
        .await
        .unwrap_or_else(|_| panic!("seed {seed}: the app never subscribed to the chain"));

    let mut driver = Driver {
        plan,
        rng,
        chain: &scenario.chain,
        executor: &scenario.executor,
        node_b: &node_b,
        app: &handle,
        tally: Tally::default(),
        shutting_down: false,
        live_sent: 0,
        disputed_sent: 0,
        next_block_at: 0,
        flaps_done: 0,
        ws_drops: 0,
        subscriptions_at_drop: 0,
        node_b_state: NodeB::Serving,
        b_down_at: None,
        b_back_at: None,
        claimed: false,
    };
    for _ in 0..FIRST_BLOCKS {
        let live = driver.rng.random_range(1..=3);
        driver.produce_block(live);
    }
    driver.next_block_at = driver.plan.block_every;
    while !driver.should_stop() {
        tokio::select! {
            event = outcomes.recv() => match event {
                Ok(event) => driver.on_outcome(event),
                Err(RecvError::Lagged(lost)) => panic!("seed {seed}: the test lost {lost} outcomes"),
                Err(RecvError::Closed) => panic!("seed {seed}: the outcome stream closed"),
            },
            changed = claims.changed() => {
                changed.unwrap_or_else(|_| panic!("seed {seed}: the claimer went away"));
                driver.on_claim();
            }
            ended = &mut task => panic!("seed {seed}: the app stopped on its own: {ended:?}"),
            () = tokio::time::sleep_until(deadline) => panic!(
                "seed {seed}: stuck after {} outcomes (live sent {}, claimed {}): {:?}",
                driver.tally.events,
                driver.live_sent,
                driver.claimed,
                handle.engine.status()
            ),
        }
    }

    // The shutdown, and the drain it must finish within the grace.
    driver.shutting_down = true;
    let asked = Instant::now();
    stop.send(()).unwrap();
    let (stopped, returned) = tokio::time::timeout(GRACE * 3, &mut task)
        .await
        .unwrap_or_else(|_| panic!("seed {seed}: the app did not stop within three graces"))
        .unwrap_or_else(|err| panic!("seed {seed}: the app task failed: {err}"));
    let stop_took = returned - asked;
    let stopped: StopReport =
        stopped.unwrap_or_else(|err| panic!("seed {seed}: the app failed: {err:#}"));
    assert!(
        stop_took <= GRACE + GRACE_MARGIN,
        "seed {seed}: the app took {stop_took:?} to stop, grace {GRACE:?}: {stopped:?}"
    );
    assert!(stopped.engine.drained, "seed {seed}: engine tasks outlived the grace: {stopped:?}");
    assert!(handle.engine.is_stopped(), "seed {seed}: engine tasks still running after stop");
    drain(&mut outcomes, &mut driver.tally, seed);

    let status = handle.engine.status();
    let report = SeedReport {
        seed,
        elapsed: Duration::ZERO,
        outcomes: driver.tally.events,
        submitted: status.outcomes.get(OutcomeKind::Submitted),
        cancelled: status.outcomes.get(OutcomeKind::Cancelled),
        shutdown_at,
        ran_to_the_end: shutdown_at >= EXPECTED,
        stop: stop_took,
        a_faults: a_faults(&driver.plan.a_replies, node_a.requests().len()),
        a_disconnects: node_a.disconnects(),
        peaks: {
            let (stays_a, stays_b) = (node_a.stays(), node_b.stays());
            let both: Vec<Stay> = stays_a.iter().chain(&stays_b).copied().collect();
            [
                node_a.peak(),
                node_b.peak(),
                peak_held(&stays_a),
                peak_held(&stays_b),
                peak_held(&both),
                status.slots_peak,
            ]
        },
        executor_errors: scenario
            .executor
            .requests()
            .iter()
            .filter(|request| request.status >= 500)
            .count(),
        ws_drops: driver.ws_drops,
        subscriptions: scenario.chain.subscriptions(),
        b_down_at: driver.b_down_at,
        b_back_at: driver.b_back_at,
    };

    check_outcomes(seed, &driver.tally, &handle, report.ran_to_the_end);
    check_chain(seed, &driver.tally, &scenario.chain);
    let [_, _, peak_a, peak_b, peak_both, peak_slots] = report.peaks;
    assert!(peak_a <= NODE_SLOTS, "seed {seed}: node A had {peak_a} replays at once");
    assert!(peak_b <= NODE_SLOTS, "seed {seed}: node B had {peak_b} replays at once");
    assert!(peak_both <= SLOTS, "seed {seed}: the ML nodes had {peak_both} replays at once");
    assert!(peak_slots <= SLOTS, "seed {seed}: {peak_slots} slots in use at once");

    // Every task the fakes and the app started ends once they are gone: the app's own on
    // `App::run`, the adapters' (submitter, pooled connections) with their last handle, the
    // fakes' (accept loops, connections, websockets) with the fakes.
    drop(driver);
    drop((handle, outcomes, claims, task, node_b, scenario));
    let settle = Instant::now() + Duration::from_secs(5);
    // The runtime signals no task exit; what is left are exits already under way (a connection
    // task reading its EOF), so yield to them until the count is back, within a bound.
    while metrics.num_alive_tasks() != baseline && Instant::now() < settle {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        metrics.num_alive_tasks(),
        baseline,
        "seed {seed}: live tasks after the app and the fakes are gone vs before they started"
    );
    let _ = std::fs::remove_dir_all(&data_dir);
    SeedReport { elapsed: started.elapsed(), ..report }
}

/// Takes the outcomes published until the app stopped.
fn drain(outcomes: &mut broadcast::Receiver<OutcomeEvent>, tally: &mut Tally, seed: u64) {
    loop {
        match outcomes.try_recv() {
            Ok(event) => tally.record(event, true),
            Err(TryRecvError::Empty | TryRecvError::Closed) => return,
            Err(TryRecvError::Lagged(lost)) => panic!("seed {seed}: the test lost {lost} outcomes"),
        }
    }
}

/// The most replays the app had outstanding at once on the nodes whose `stays` these are
/// ([`testkit::peak_held`]): an abandoned replay counts until its timeout could first have
/// fired, the timeout after its arrival less [`SEND_LEAD`].
fn peak_held(stays: &[Stay]) -> usize {
    testkit::peak_held(stays, Duration::from_millis(REPLAY_TIMEOUT_MS) - SEND_LEAD)
}

/// Hangs, resets and 5xx among the first `served` scripted replies of node A.
fn a_faults(replies: &[Reply], served: usize) -> [usize; 3] {
    let served = &replies[..served.min(replies.len())];
    let count = |check: fn(&Reply) -> bool| served.iter().filter(|reply| check(reply)).count();
    [
        count(|reply| *reply == Reply::Hang),
        count(|reply| *reply == Reply::Reset),
        count(|reply| matches!(reply, Reply::Status(..))),
    ]
}

/// Every admitted key ended exactly once, cancellations only after the shutdown began, and the
/// engine's counts agree with the stream.
fn check_outcomes(seed: u64, tally: &Tally, app: &AppHandle, ran_to_the_end: bool) {
    let status = app.engine.status();
    let twice: Vec<_> = tally.per_key.iter().filter(|(_, outcomes)| outcomes.len() > 1).collect();
    assert!(twice.is_empty(), "seed {seed}: keys with more than one outcome: {twice:?}");
    assert!(
        tally.early_cancellations.is_empty(),
        "seed {seed}: cancelled before the shutdown: {:?}",
        tally.early_cancellations
    );
    assert_eq!(
        status.admitted,
        tally.per_key.len() as u64,
        "seed {seed}: keys admitted vs keys with an outcome on the stream"
    );
    assert_eq!(
        status.outcomes.total(),
        tally.events as u64,
        "seed {seed}: outcomes counted vs outcomes on the stream"
    );
    let in_flight: usize = status.lanes.iter().map(|lane| lane.in_flight).sum();
    assert_eq!(in_flight, 0, "seed {seed}: keys still in flight after the stop: {status:?}");
    assert_eq!(status.slots_in_use, 0, "seed {seed}: slots still held after the stop");
    if ran_to_the_end {
        let expected: HashSet<(String, bool)> = (0..BACKLOG)
            .map(|i| (inference_id("backlog", i), false))
            .chain((0..LIVE).map(|i| (inference_id("live", i), false)))
            .chain((0..DISPUTED).map(|i| (inference_id("disputed", i), true)))
            .collect();
        let ended: HashSet<(String, bool)> = tally.per_key.keys().cloned().collect();
        assert_eq!(ended, expected, "seed {seed}: the keys that ended vs the scenario's");
        let claimed = app.claimer.records();
        assert!(
            claimed.iter().any(|record| record.epoch_index == BACKLOG_EPOCH && record.claimed()),
            "seed {seed}: the backlog's epoch was not claimed: {claimed:?}"
        );
    }
}

/// No key validated twice on chain, no duplicate refused, and every message on chain is the one
/// its key's outcome names, or belongs to a key the shutdown cancelled mid-broadcast.
fn check_chain(seed: u64, tally: &Tally, chain: &LoopbackChainNode) {
    assert_eq!(chain.duplicate_rejections(), 0, "seed {seed}: the chain refused a duplicate");
    let mut on_chain: HashMap<(String, bool), Vec<String>> = HashMap::new();
    for submitted in chain.submitted() {
        if let SubmittedMsg::Validation { id, inference_id, revalidation, .. } = submitted.msg {
            on_chain.entry((inference_id, revalidation)).or_default().push(id);
        }
    }
    let twice: Vec<_> = on_chain.iter().filter(|(_, ids)| ids.len() > 1).collect();
    assert!(twice.is_empty(), "seed {seed}: MsgValidation sent twice: {twice:?}");
    for (key, outcomes) in &tally.per_key {
        let msg_id = match outcomes.first() {
            Some(Outcome::Submitted { msg_id, .. } | Outcome::Invalidated { msg_id, .. }) => msg_id,
            _ => continue,
        };
        assert_eq!(
            on_chain.get(key),
            Some(&vec![msg_id.clone()]),
            "seed {seed}: {key:?} ended submitted, but its message is not on chain"
        );
    }
    for (key, ids) in &on_chain {
        let outcome = tally.per_key.get(key).and_then(|outcomes| outcomes.first());
        let matches = match outcome {
            Some(Outcome::Submitted { msg_id, .. } | Outcome::Invalidated { msg_id, .. }) => {
                ids == &vec![msg_id.clone()]
            }
            // The submitter broadcasts a message it has taken even when the attempt that
            // handed it over is cancelled; the journal's intent covers it on restart.
            Some(Outcome::Cancelled) => true,
            _ => false,
        };
        assert!(matches, "seed {seed}: {key:?} is on chain as {ids:?} but ended {outcome:?}");
    }
}
