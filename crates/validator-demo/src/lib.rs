//! The demo: the real app (engine, chain client, payload source, node pool, ML client,
//! event stream, admin API, metrics) against loopback fakes of a chain node, an executor and an
//! ML node, all in this process.
//!
//! The fake chain holds a recovery backlog in the previous epoch (inferences carrying the
//! executor's real payload hashes, this validator active and holding weight), then produces
//! blocks carrying `inference_finished` events at `--live-rate` and a few `needs_revalidation`
//! events. At the claim height the app's claim trigger detects the missed validations, recovers
//! them, then claims; the demo ends when the claim is done and every live validation and
//! revalidation has an outcome. Retry back-offs are scaled from minutes to milliseconds.

pub mod devshard;

use std::{
    collections::BTreeMap,
    io::IsTerminal as _,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use chain_source::{query::EpochParams, Signer};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use ml_client::NodeConfig;
use rust_decimal::Decimal;
use serde_json::json;
use testkit::{
    ExecutorReply, Latency, LoopbackChainNode, LoopbackExecutor, LoopbackMlNode, TxEvent,
};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use validator_core::{
    ports::chain::EpochGroup, testing::MODEL, Lane, OutcomeCounts, OutcomeKind, RetryPolicy,
    RunReport,
};

use validator_bin::{
    app::{App, Identity},
    claim::ClaimRecord,
    settings::Settings,
};

/// The model's devshard validation threshold in the demo's epochs, as mainnet models have
/// (0.90-0.94).
const MODEL_THRESHOLD: Decimal = Decimal::from_parts(92, 0, 0, false, 2);

/// The demo's flags.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoOptions {
    /// Missed validations waiting in the previous epoch.
    #[arg(long, default_value_t = 2000)]
    pub backlog: usize,
    /// Engine slots (validations at once).
    #[arg(long, default_value_t = 10)]
    pub slots: usize,
    /// The fake ML node's answer time, in milliseconds.
    #[arg(long, default_value_t = 20)]
    pub ml_latency_ms: u64,
    /// Replay on this ML node (`http://host:port`, serving the fakes' model) instead of the
    /// fake one.
    #[arg(long)]
    pub ml_node: Option<String>,
    /// Bound of one replay, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    pub replay_timeout_ms: u64,
    /// Live `inference_finished` events per second while the backlog drains.
    #[arg(long, default_value_t = 50.0)]
    pub live_rate: f64,
    /// Keep serving the admin API and metrics after the demo, until SIGINT or SIGTERM.
    #[arg(long)]
    pub hold: bool,
    /// Admin API address (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub admin_addr: SocketAddr,
    /// Metrics address (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub metrics_addr: SocketAddr,
    /// Validation service (gRPC) address (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub service_addr: SocketAddr,
    /// Admin token file (default: a file in the system's temporary directory).
    #[arg(long)]
    pub admin_token_file: Option<PathBuf>,
    /// No progress bars; a `listening` JSON line at start and one summary JSON line at the end.
    #[arg(long)]
    pub json: bool,
    /// Run the devshard scenario instead: session hosts calling the gRPC validation service,
    /// ML nodes leased through a NodeManager.
    #[arg(long)]
    pub devshard: bool,
    /// Devshard sessions (with `--devshard`).
    #[arg(long, default_value_t = 10)]
    pub sessions: usize,
    /// Inferences per devshard session (with `--devshard`).
    #[arg(long, default_value_t = 40)]
    pub inferences_per_session: usize,
    /// Locks the fake NodeManager's one ML node grants at once (with `--devshard`).
    #[arg(long, default_value_t = 4)]
    pub node_capacity: usize,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            backlog: 2000,
            slots: 10,
            ml_latency_ms: 20,
            ml_node: None,
            replay_timeout_ms: 5000,
            live_rate: 50.0,
            hold: false,
            admin_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            metrics_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            service_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin_token_file: None,
            json: false,
            devshard: false,
            sessions: 10,
            inferences_per_session: 40,
            node_capacity: 4,
        }
    }
}

/// The epoch whose validations were missed.
pub const BACKLOG_EPOCH: u64 = 9;
/// The current epoch.
pub const LIVE_EPOCH: u64 = 10;

/// The id of the scenario's `n`th inference of `kind` (`backlog`, `validated`, `disputed`,
/// `live`), shaped as upstream's: the base64 of a 64-byte signature, so ids carry `/`, `+` and
/// `=` as on the live network.
pub fn inference_id(kind: &str, n: usize) -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    let digest = sha2::Sha512::digest(format!("{kind}-{n}").as_bytes());
    base64::engine::general_purpose::STANDARD.encode(digest)
}

/// The rewards settled for the validator in the backlog epoch, paid by its claim.
pub const BACKLOG_REWARD_NGONKA: u64 = 1_000_000;
/// Disputed inferences every validator revalidates.
pub const DISPUTED: usize = 5;
/// The scenario's epoch parameters: stages one block long, no delays, a long inference phase.
pub const EPOCH_PARAMS: EpochParams = EpochParams {
    epoch_length: 100_000,
    epoch_shift: 0,
    poc_stage_duration: 1,
    poc_validation_delay: 0,
    poc_validation_duration: 1,
    set_new_validators_delay: 0,
    inference_validation_cutoff: 0,
};
/// Blocks between the start and the claim height.
const CLAIM_AFTER_BLOCKS: i64 = 5;
/// Time between two fake blocks.
const BLOCK_INTERVAL: Duration = Duration::from_millis(20);

/// The fakes the demo's app runs against.
pub struct Scenario {
    /// The fake chain node.
    pub chain: LoopbackChainNode,
    /// The fake executor serving the payloads.
    pub executor: LoopbackExecutor,
    /// The fake ML node, unless `--ml-node` named another.
    pub ml: Option<LoopbackMlNode>,
    /// The ML node replays go to: the fake's URL or `--ml-node`.
    pub ml_url: String,
    /// A fresh temporary data directory for the app's journal.
    pub data_dir: PathBuf,
    /// This validator's account address.
    pub address: String,
    /// The executor's account address.
    pub executor_address: String,
}

/// The demo's settings: fakes on loopback, back-offs scaled down.
pub fn settings(options: &DemoOptions, chain_url: &str, ml_url: &str, fake_ml: bool) -> Settings {
    let mut settings = Settings::default();
    let replay_timeout = Duration::from_millis(options.replay_timeout_ms.max(1));
    settings.core.slots = options.slots;
    // The demo's chain makes blocks only when its scenario says so: no double-signer watch.
    settings.identity.guard_blocks = 0;
    settings.core.payload_retry = RetryPolicy {
        attempts: 10,
        interval: Duration::from_millis(50),
        jitter_min: Duration::from_millis(1),
        jitter_max: Duration::from_millis(50),
    };
    settings.core.replay_retry = RetryPolicy::fixed(5, Duration::from_millis(100));
    settings.core.submit_retry = RetryPolicy::fixed(5, Duration::from_millis(50));
    settings.core.replay_timeout = replay_timeout;
    settings.core.payload_timeout = Duration::from_secs(5);
    settings.chain.payloads.timeout = settings.core.payload_timeout;
    settings.core.chain_timeout = Duration::from_secs(5);
    // Blocks come every 20 to 50 ms here: a revalidation sent before a takeover is searched
    // for across the chain timeout and the lease TTL.
    settings.chain.tx.lookback_blocks = 1_000;
    let mut node = NodeConfig::new("demo-ml", ml_url, &[MODEL], options.slots);
    node.max_concurrent = options.slots.max(1);
    settings.ml.nodes = vec![node];
    settings.ml.request_timeout = replay_timeout;
    settings.ml.connect_timeout = replay_timeout.min(Duration::from_secs(2));
    settings.ml.health.cooldown_base = Duration::from_millis(100);
    settings.ml.health.cooldown_max = Duration::from_millis(500);
    if fake_ml {
        settings.ml.health.probe_path = Some(testkit::ml_node::HEALTH_PATH.into());
        settings.ml.health.probe_interval = Duration::from_millis(500);
    }
    settings.chain.events.rpc_url = chain_url.into();
    settings.chain.events.reconnect_base = Duration::from_millis(50);
    settings.chain.events.reconnect_max = Duration::from_millis(500);
    settings.chain.tx.chain_id = testkit::chain_node::CHAIN_ID.into();
    // The fake indexes a transaction as soon as it accepts it.
    settings.chain.tx.poll_interval = Duration::from_millis(50);
    settings.chain.tx.inclusion_timeout = Duration::from_secs(5);
    settings.chain.tx.address_prefix = testkit::chain_node::ADDRESS_PREFIX.into();
    settings.chain.payloads.allow = vec!["127.0.0.0/8".into()];
    settings.admin.listen = options.admin_addr;
    settings.metrics.listen = options.metrics_addr;
    settings.service.listen = options.service_addr.to_string();
    settings.metrics.refresh_interval = Duration::from_millis(500);
    let dir = std::env::temp_dir().join(format!("validator-demo-{}", std::process::id()));
    settings.admin.token_file =
        Some(options.admin_token_file.clone().unwrap_or_else(|| dir.join("admin.token")));
    settings.data_dir = dir;
    settings
}

impl Scenario {
    /// Starts the fakes, scripts the epochs and the backlog, and builds the app on them (bound,
    /// not yet running).
    pub async fn build(options: &DemoOptions) -> anyhow::Result<(Self, App)> {
        Self::build_with(options, |_, _| {}).await
    }

    /// [`Scenario::build`], with `prepare` scripting the fakes further and adjusting the
    /// settings before the app is built.
    pub async fn build_with(
        options: &DemoOptions,
        prepare: impl FnOnce(&Self, &mut Settings),
    ) -> anyhow::Result<(Self, App)> {
        let scenario = Self::start(options).await?;
        let mut settings = scenario.settings(options);
        prepare(&scenario, &mut settings);
        settings.validate()?;
        let identity =
            Identity { account_address: scenario.address.clone(), signer: validator_key()? };
        let app = App::build(settings, identity).await?;
        // The app follows the chain from where the scenario stands, not from its first block.
        let journal = &app.handle().journal;
        journal.store_height(scenario.chain.tip());
        journal.flush().await?;
        Ok((scenario, app))
    }

    /// The app's settings on these fakes ([`settings`]), with this scenario's data directory.
    pub fn settings(&self, options: &DemoOptions) -> Settings {
        let mut settings = settings(options, &self.chain.url(), &self.ml_url, self.ml.is_some());
        settings.data_dir = self.data_dir.clone();
        if options.admin_token_file.is_none() {
            settings.admin.token_file = Some(self.data_dir.join("admin.token"));
        }
        settings
    }

    /// Starts the fakes and scripts the epochs and the backlog, for an app built here or a
    /// `validator run` process signing with [`validator_key`].
    pub async fn start(options: &DemoOptions) -> anyhow::Result<Self> {
        if options.slots == 0 {
            bail!("--slots must be at least 1");
        }
        let chain = LoopbackChainNode::try_start().await.context("starting the fake chain node")?;
        let address = chain.add_key(&validator_key()?.public_key());
        let executor_key = Signer::from_bytes(&[0x22; 32])?;
        let executor_address = chain.add_key(&executor_key.public_key());
        let executor = LoopbackExecutor::try_start(&executor_address, executor_key)
            .await
            .context("starting the fake executor")?;
        chain.set_participant(&executor_address, &executor.url());
        executor.register_requester(&address, vec![validator_key()?.public_key()]);

        // Delays are 0 below height 500, so the claim comes exactly at the claim-money height.
        let poc_start = i64::try_from(chain.tip()).unwrap_or(1) + CLAIM_AFTER_BLOCKS - 3;
        chain.set_epoch(LIVE_EPOCH, poc_start, EPOCH_PARAMS);
        chain.set_settle_amount(&address, BACKLOG_EPOCH, BACKLOG_REWARD_NGONKA, 0);
        for epoch in [BACKLOG_EPOCH, LIVE_EPOCH] {
            let parent = EpochGroup {
                epoch_index: epoch,
                model: String::new(),
                sub_group_models: vec![MODEL.into()],
                validation_weights: vec![address.clone()],
                has_model_snapshot: false,
                validation_threshold: None,
            };
            chain.set_epoch_group(EpochGroup {
                model: MODEL.into(),
                has_model_snapshot: true,
                validation_threshold: Some(MODEL_THRESHOLD),
                ..parent.clone()
            });
            chain.set_epoch_group(parent);
        }
        for i in 0..options.backlog {
            let id = inference_id("backlog", i);
            add_inference(&chain, &executor, &id, BACKLOG_EPOCH)?;
            // One executor in twenty is briefly unreachable: its first fetch fails and is retried.
            if i % 20 == 7 {
                executor.script(&id, [ExecutorReply::Status(503)]);
            }
        }
        // Validations already on chain: detection leaves them out.
        let validated: Vec<String> =
            (0..options.backlog / 20).map(|i| inference_id("validated", i)).collect();
        for id in &validated {
            add_inference(&chain, &executor, id, BACKLOG_EPOCH)?;
        }
        let validated: Vec<&str> = validated.iter().map(String::as_str).collect();
        chain.set_validated(&address, BACKLOG_EPOCH, &validated);
        for i in 0..DISPUTED {
            add_inference(&chain, &executor, &inference_id("disputed", i), LIVE_EPOCH)?;
        }

        let (ml, ml_url) = match &options.ml_node {
            Some(url) => (None, url.clone()),
            None => {
                let ml = LoopbackMlNode::try_start().await.context("starting the fake ML node")?;
                ml.set_latency(Latency::Fixed(Duration::from_millis(options.ml_latency_ms)));
                let url = ml.url();
                (Some(ml), url)
            }
        };
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let data_dir = std::env::temp_dir().join(format!(
            "validator-demo-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        Ok(Self { chain, executor, ml, ml_url, address, executor_address, data_dir })
    }
}

/// The demo validator's key (a fixed test key; the fake chain knows its account).
pub fn validator_key() -> anyhow::Result<Signer> {
    Ok(Signer::from_bytes(&[0x11; 32])?)
}

fn add_inference(
    chain: &LoopbackChainNode,
    executor: &LoopbackExecutor,
    id: &str,
    epoch: u64,
) -> anyhow::Result<()> {
    chain.add_inference(id, epoch, executor.address());
    executor.insert_generated(id, epoch);
    let record = executor.inference(id).context("the executor lost a stored inference")?;
    chain.put_inference(record);
    Ok(())
}

/// Produces a block every [`BLOCK_INTERVAL`]: live finished inferences at `rate` per second
/// until `stop_live`, and one disputed inference per block for the first blocks.
async fn produce_blocks(
    chain: Arc<LoopbackChainNode>,
    executor: Arc<LoopbackExecutor>,
    rate: f64,
    live_sent: Arc<AtomicUsize>,
    disputed_sent: Arc<AtomicUsize>,
    stop_live: CancellationToken,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(BLOCK_INTERVAL);
    let mut owed = 0.0;
    let mut block = 0usize;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        block += 1;
        let mut txs = Vec::new();
        if !stop_live.is_cancelled() && rate > 0.0 {
            owed += rate * BLOCK_INTERVAL.as_secs_f64();
            while owed >= 1.0 {
                owed -= 1.0;
                let id = inference_id("live", live_sent.load(Ordering::Relaxed));
                if add_inference(&chain, &executor, &id, LIVE_EPOCH).is_err() {
                    continue;
                }
                txs.push(vec![TxEvent::inference_finished(&id)]);
                live_sent.fetch_add(1, Ordering::Relaxed);
            }
        }
        let disputed = disputed_sent.load(Ordering::Relaxed);
        if block.is_multiple_of(3) && disputed < DISPUTED {
            let id = inference_id("disputed", disputed);
            txs.push(vec![TxEvent::inference_validation(&id, "gonka1othervalidator", true)]);
            disputed_sent.fetch_add(1, Ordering::Relaxed);
        }
        chain.produce_block(txs);
    }
}

struct Bars {
    recovery: ProgressBar,
    live: ProgressBar,
    revalidation: ProgressBar,
}

impl Bars {
    fn new(backlog: usize, visible: bool) -> Self {
        let multi = MultiProgress::with_draw_target(if visible {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        });
        let style = ProgressStyle::with_template("{prefix:>13} [{bar:40}] {pos:>5}/{len:5} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        let bar = |name: &str, len: usize| {
            let bar = multi.add(ProgressBar::new(len as u64).with_style(style.clone()));
            bar.set_prefix(name.to_owned());
            bar
        };
        Self {
            recovery: bar("recovery", backlog),
            live: bar("live", 0),
            revalidation: bar("revalidation", DISPUTED),
        }
    }

    fn finish(&self) {
        for bar in [&self.recovery, &self.live, &self.revalidation] {
            bar.finish();
        }
    }
}

/// Runs the demo to its end (and, with `--hold`, until SIGINT or SIGTERM).
pub async fn run(options: DemoOptions) -> anyhow::Result<()> {
    if options.devshard {
        return devshard::run(options).await;
    }
    let (scenario, app) = Scenario::build(&options).await?;
    let Scenario { chain, executor, ml, data_dir, .. } = scenario;
    let chain = Arc::new(chain);
    let executor = Arc::new(executor);
    let handle = app.handle();
    let signalled = CancellationToken::new();
    let signal = validator_bin::signal::shutdown();
    {
        let signalled = signalled.clone();
        tokio::spawn(async move {
            signal.await;
            signalled.cancel();
        });
    }
    let listening = json!({
        "event": "listening",
        "admin_addr": handle.admin_addr.to_string(),
        "metrics_addr": handle.metrics_addr.to_string(),
        "admin_token": &*handle.token,
        "admin_token_file": handle.token_file.display().to_string(),
    });
    if options.json {
        println!("{listening}");
    } else {
        println!("validator-demo: loopback fakes of a chain node, an executor and an ML node; retry back-offs scaled from minutes to milliseconds");
        println!(
            "  admin API  http://{}  (token {} , kept in {})",
            handle.admin_addr,
            handle.token,
            handle.token_file.display()
        );
        println!("  metrics    http://{}/metrics", handle.metrics_addr);
    }

    let demo_done = CancellationToken::new();
    let app_stop = {
        let (signalled, demo_done) = (signalled.clone(), demo_done.clone());
        async move {
            tokio::select! {
                () = signalled.cancelled() => {}
                () = demo_done.cancelled() => {}
            }
        }
    };
    let mut outcomes = handle.engine.outcomes();
    let mut claims = handle.claimer.subscribe();
    let mut app_task = tokio::spawn(app.run(app_stop));
    tokio::select! {
        () = chain.wait_subscriptions(1) => {}
        () = tokio::time::sleep(Duration::from_secs(10)) => bail!("the event source never subscribed to the fake chain"),
        () = signalled.cancelled() => {}
    }

    let visible = !options.json && std::io::stderr().is_terminal();
    let bars = Bars::new(options.backlog, visible);
    let (live_sent, disputed_sent) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (stop_live, stop_blocks) = (CancellationToken::new(), CancellationToken::new());
    let producer = tokio::spawn(produce_blocks(
        Arc::clone(&chain),
        Arc::clone(&executor),
        options.live_rate,
        Arc::clone(&live_sent),
        Arc::clone(&disputed_sent),
        stop_live.clone(),
        stop_blocks.clone(),
    ));
    let started = Instant::now();
    let mut recovery_elapsed = None;
    let mut claim: Option<ClaimRecord> = None;
    let mut done_by_lane = [0usize; 3];
    let mut live_waits = Vec::new();
    let mut interrupted = false;
    let mut app_result = None;
    let mut refresh = tokio::time::interval(Duration::from_millis(100));
    let tail_bound = Duration::from_millis(options.replay_timeout_ms.saturating_mul(6))
        + Duration::from_secs(10);
    let mut tail_deadline = None;
    loop {
        tokio::select! {
            event = outcomes.recv() => match event {
                Ok(event) => {
                    match event.lane {
                        Lane::Recovery => bars.recovery.inc(1),
                        Lane::Live => {
                            bars.live.inc(1);
                            live_waits.push(event.wait.unwrap_or_default());
                        }
                        // The classic scenario has no devshard votes; they would count as votes.
                        Lane::Revalidation | Lane::Challenged => bars.revalidation.inc(1),
                    }
                    done_by_lane[event.lane.index_for_demo()] += 1;
                }
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => break,
            },
            changed = claims.changed() => {
                if changed.is_err() { break; }
                if let Some(record) = handle.claimer.records().into_iter().find(|r| r.epoch_index == BACKLOG_EPOCH) {
                    recovery_elapsed = Some(started.elapsed());
                    claim = Some(record);
                    stop_live.cancel();
                    tail_deadline = Some(tokio::time::Instant::now() + tail_bound);
                }
            }
            _ = refresh.tick() => {
                bars.live.set_length(live_sent.load(Ordering::Relaxed) as u64);
                if let Some(run) = handle.engine.current_run() {
                    bars.recovery.set_message(format!("run {} detected {}", run.id(), run.report().detected));
                }
                if tail_deadline.is_some_and(|deadline| tokio::time::Instant::now() >= deadline) {
                    break;
                }
            }
            () = signalled.cancelled() => { interrupted = true; break; }
            result = &mut app_task => { app_result = Some(result); break; }
        }
        let live_done = done_by_lane[1] >= live_sent.load(Ordering::Relaxed);
        let disputed_done =
            done_by_lane[0] >= DISPUTED && disputed_sent.load(Ordering::Relaxed) >= DISPUTED;
        if claim.is_some() && live_done && disputed_done {
            break;
        }
    }
    stop_live.cancel();
    bars.finish();
    let elapsed = started.elapsed();
    let status = handle.engine.status();
    let run: Option<RunReport> = claim
        .as_ref()
        .and_then(|c| c.run.clone())
        .or_else(|| handle.engine.runs().last().map(|run| run.report()));
    let mean_replay = ml
        .as_ref()
        .and_then(LoopbackMlNode::mean_service_time)
        .unwrap_or(Duration::from_millis(options.ml_latency_ms));
    let recovery_elapsed = recovery_elapsed.unwrap_or(elapsed).as_secs_f64();
    let ideal = options.backlog as f64 * mean_replay.as_secs_f64() / options.slots as f64;
    live_waits.sort();
    let percentile = |p: f64| -> f64 {
        let index = ((live_waits.len() as f64 - 1.0) * p).round().max(0.0) as usize;
        live_waits.get(index).map_or(0.0, Duration::as_secs_f64)
    };
    let peak = ml.as_ref().map_or(status.slots_peak, LoopbackMlNode::peak);
    let terminal = run.as_ref().map_or(0, |run| run.outcomes.total());
    let summary = json!({
        "backlog": options.backlog,
        "slots": options.slots,
        "terminal": terminal,
        "detected": run.as_ref().map_or(0, |run| run.detected),
        "outcomes": status.outcomes,
        "recovery_outcomes": run.as_ref().map(|run| run.outcomes),
        "recovery_state": run.as_ref().map(|run| json!(run)["state"].clone()),
        "live_sent": live_sent.load(Ordering::Relaxed),
        "live_done": done_by_lane[1],
        "revalidations_done": done_by_lane[0],
        "claim_tx": claim.as_ref().and_then(|c| c.tx_hash().map(str::to_owned)),
        "claim_state": claim.as_ref().map(|c| json!(c.state)),
        "claim_amount_ngonka": claim.as_ref().map(|c| c.amount),
        "claim_result": claim.as_ref().and_then(|c| c.last_result.clone()),
        "peak_in_flight": peak,
        "peak_measured_at": if ml.is_some() { "fake ML node" } else { "engine slots" },
        "elapsed_s": recovery_elapsed,
        "total_s": elapsed.as_secs_f64(),
        "mean_replay_s": mean_replay.as_secs_f64(),
        "ideal_s": ideal,
        "efficiency": if recovery_elapsed > 0.0 { ideal / recovery_elapsed } else { 0.0 },
        "live_wait_p50_s": percentile(0.50),
        "live_wait_p99_s": percentile(0.99),
        "interrupted": interrupted,
        "note": "loopback fakes; retry back-offs scaled from minutes to milliseconds",
    });
    if options.json {
        println!("{summary}");
    } else {
        print_table(
            &options,
            &summary,
            &status.outcomes,
            run.as_ref(),
            peak,
            ideal,
            recovery_elapsed,
            percentile(0.5),
            percentile(0.99),
        );
    }

    if options.hold && !interrupted && app_result.is_none() {
        if !options.json {
            println!("holding: admin API and metrics stay up until SIGINT or SIGTERM");
        }
        tokio::select! {
            () = signalled.cancelled() => {}
            result = &mut app_task => app_result = Some(result),
        }
    }
    demo_done.cancel();
    stop_blocks.cancel();
    let _ = producer.await;
    let stopped = match app_result {
        Some(result) => result,
        None => app_task.await,
    };
    let stopped = stopped.context("the app task")??;
    if let Err(err) = std::fs::remove_dir_all(&data_dir) {
        tracing::warn!(%err, dir = %data_dir.display(), "the demo's data directory is left behind");
    }
    if !options.json {
        println!(
            "stopped ({}): {} queued and {} running validations cancelled, drained {}",
            stopped.reason,
            stopped.engine.cancelled_idle,
            stopped.engine.running,
            stopped.engine.drained
        );
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn print_table(
    options: &DemoOptions,
    summary: &serde_json::Value,
    outcomes: &OutcomeCounts,
    run: Option<&RunReport>,
    peak: usize,
    ideal: f64,
    elapsed: f64,
    p50: f64,
    p99: f64,
) {
    println!();
    println!(
        "  backlog            {} missed validations, {} slots, ML latency {} ms",
        options.backlog, options.slots, options.ml_latency_ms
    );
    if let Some(run) = run {
        println!(
            "  recovery run       {} of epoch {}: {} detected, {} terminal, {}",
            run.run_id,
            run.epoch,
            run.detected,
            run.outcomes.total(),
            summary["recovery_state"]
        );
    }
    println!(
        "  claim              {} {} ngonka ({}) in {}",
        summary["claim_state"],
        summary["claim_amount_ngonka"],
        summary["claim_result"],
        summary["claim_tx"]
    );
    println!("  outcomes (all lanes)");
    let counts: BTreeMap<&str, u64> = OutcomeKind::ALL
        .iter()
        .map(|kind| (kind.as_str(), outcomes.get(*kind)))
        .filter(|(_, n)| *n > 0)
        .collect();
    for (kind, n) in counts {
        println!("    {kind:<28} {n:>6}");
    }
    println!(
        "  live               {} sent, {} done; revalidations {} done",
        summary["live_sent"], summary["live_done"], summary["revalidations_done"]
    );
    println!(
        "  peak in flight     {peak} of {} slots ({})",
        options.slots,
        summary["peak_measured_at"].as_str().unwrap_or_default()
    );
    println!("  elapsed            {elapsed:.2} s vs ideal {ideal:.2} s (backlog x mean replay {:.1} ms / slots): efficiency {:.0} %", summary["mean_replay_s"].as_f64().unwrap_or_default() * 1e3, if elapsed > 0.0 { ideal / elapsed * 100.0 } else { 0.0 });
    println!("  live wait          p50 {:.1} ms, p99 {:.1} ms", p50 * 1e3, p99 * 1e3);
    println!("  (retry back-offs scaled from minutes to milliseconds)");
}

trait LaneIndex {
    fn index_for_demo(self) -> usize;
}

impl LaneIndex for Lane {
    fn index_for_demo(self) -> usize {
        match self {
            Lane::Revalidation | Lane::Challenged => 0,
            Lane::Live => 1,
            Lane::Recovery => 2,
        }
    }
}
