//! The app: builds the adapters and the engine from [`Settings`], runs the chain-event loop, the
//! claim-time dispatcher, the admin API and the metrics listener, and drains on shutdown.
//!
//! Triggers, all through the engine's one recovery guard:
//! - `inference_finished` events go to [`Engine::sample`], `needs_revalidation` events to
//!   [`Engine::revalidate`];
//! - the claim-time dispatcher (DOMAIN.md 3.6 (a)): at the claim height of the current epoch
//!   (`chain_source::schedule::claim_due`) it recovers epoch-1, awaits that run (or the run
//!   another trigger started), then claims the rewards, also when recovery failed;
//! - the periodic reward-recovery checker (DOMAIN.md 3.6 (b)): inside its window of the epoch
//!   (`chain_source::schedule::reward_recovery_due`), at most once per 1000 blocks and one check
//!   at a time, it asks the chain what is still settled for this validator; when coins wait,
//!   it recovers their epoch, awaits the run, then claims (the same path as the dispatcher);
//! - the admin API ([`crate::admin`]).

use std::{
    collections::BTreeMap,
    future::Future,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
};

use anyhow::Context;
use chain_source::{
    events::{ChainEvent, EventStream, HeightStore},
    schedule::{claim_due, reward_recovery_due, EpochSchedule},
    ChainClient, HttpPayloadSource, Signer,
};
use ml_client::{HttpMlNodeClient, NodePool};
use serde::Serialize;
use tokio::{
    net::TcpListener,
    sync::{mpsc, oneshot, watch},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{info, warn};
use validator_core::{Engine, Ports, RecoveryStart, RunReport, ShutdownReport, Trigger};

use crate::{
    settings::{IdentityConfig, Settings},
    storage::{DataDirLock, SqliteJournal},
};

/// The key and account this validator acts as.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The participant's account address.
    pub account_address: String,
    /// The key that signs transactions, payload requests and seeds: the warm key when one is
    /// configured, else the account key.
    pub signer: Signer,
}

impl Identity {
    /// Reads the key files named in `config`. Errors name the file, never its content.
    pub fn load(config: &IdentityConfig) -> anyhow::Result<Self> {
        let path = config.warm_key_file.as_ref().unwrap_or(&config.key_file);
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the key file {}", path.display()))?;
        let signer = Signer::from_hex(text.trim())
            .map_err(|_| anyhow::anyhow!("{} does not hold a 64-hex-digit key", path.display()))?;
        Ok(Self { account_address: config.account_address.clone(), signer })
    }
}

/// One claim: the recovery run before it and the claim's result.
#[derive(Debug, Clone, Serialize)]
pub struct ClaimRecord {
    /// The epoch claimed.
    pub epoch_index: u64,
    /// The seed revealed with the claim.
    pub seed: i64,
    /// The recovery run awaited before the claim, if one ran.
    pub run: Option<RunReport>,
    /// The claim transaction's hash, when it was accepted.
    pub tx_hash: Option<String>,
    /// Why the claim failed, when it did.
    pub error: Option<String>,
}

impl ClaimRecord {
    /// Whether the claim transaction was accepted.
    pub fn claimed(&self) -> bool {
        self.tx_hash.is_some()
    }
}

/// Recovery followed by the reward claim, shared by the dispatcher and the admin API, with an
/// in-memory record of claimed epochs.
pub struct Claimer {
    engine: Engine,
    chain: ChainClient,
    signer: Signer,
    records: Mutex<BTreeMap<u64, ClaimRecord>>,
    changed: watch::Sender<usize>,
    tasks: TaskTracker,
    cancel: CancellationToken,
}

impl Claimer {
    fn new(engine: Engine, chain: ChainClient, signer: Signer, cancel: CancellationToken) -> Self {
        Self {
            engine,
            chain,
            signer,
            records: Mutex::default(),
            changed: watch::Sender::new(0),
            tasks: TaskTracker::new(),
            cancel,
        }
    }

    /// The seed of `epoch` (`chain_source::seed_for_epoch` with this validator's signer).
    pub fn seed(&self, epoch: u64) -> i64 {
        chain_source::seed_for_epoch(&self.signer, epoch)
    }

    /// The epoch before the chain's latest one.
    pub async fn previous_epoch(&self) -> anyhow::Result<u64> {
        let info = self.chain.epoch_info().await.context("querying the latest epoch")?;
        Ok(info.epoch_index.saturating_sub(1))
    }

    /// Whether a claim of `epoch` was accepted.
    pub fn is_claimed(&self, epoch: u64) -> bool {
        self.lock().get(&epoch).is_some_and(ClaimRecord::claimed)
    }

    /// Every claim attempted, by epoch.
    pub fn records(&self) -> Vec<ClaimRecord> {
        self.lock().values().cloned().collect()
    }

    /// Ticks once per finished claim attempt.
    pub fn subscribe(&self) -> watch::Receiver<usize> {
        self.changed.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, ClaimRecord>> {
        self.records.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The periodic reward check on a tracked task: queries what is settled for `address`
    /// and, when coins wait, recovers their epoch then claims. `running` is set by the caller
    /// and cleared when the check ends, however it ends.
    fn spawn_reward_check(self: &Arc<Self>, address: String, running: Arc<AtomicBool>) {
        let claimer = Arc::clone(self);
        self.tasks.spawn(async move {
            let _running = ClearOnDrop(running);
            let settled = tokio::select! {
                settled = tokio::time::timeout(
                    SETTLE_QUERY_TIMEOUT,
                    claimer.chain.query().settle_amount(&address),
                ) => settled,
                () = claimer.cancel.cancelled() => return,
            };
            let settled = match settled {
                Ok(Ok(settled)) => settled,
                Ok(Err(chain_source::Error::NotFound(_))) => {
                    info!("reward check: nothing settled to claim");
                    return;
                }
                Ok(Err(err)) => {
                    warn!(%err, "reward check: settle amount query failed");
                    return;
                }
                Err(_) => {
                    warn!("reward check: settle amount query timed out");
                    return;
                }
            };
            if !settled.has_coins() {
                info!(epoch = settled.epoch_index, "reward check: no coins left to claim");
                return;
            }
            let epoch = settled.epoch_index;
            info!(
                epoch,
                reward_coins = settled.reward_coins,
                work_coins = settled.work_coins,
                "reward check: unclaimed rewards; recovering their epoch, then claiming"
            );
            claimer.recover_then_claim(Trigger::RewardCheck, epoch, claimer.seed(epoch)).await;
        });
    }

    /// Runs [`Claimer::recover_then_claim`] on a tracked task; the receiver gets the record.
    pub fn spawn(
        self: &Arc<Self>,
        trigger: Trigger,
        epoch: u64,
        seed: i64,
    ) -> oneshot::Receiver<ClaimRecord> {
        let (sender, receiver) = oneshot::channel();
        let claimer = Arc::clone(self);
        self.tasks.spawn(async move {
            let record = claimer.recover_then_claim(trigger, epoch, seed).await;
            let _ = sender.send(record);
        });
        receiver
    }

    /// Recovers `epoch` (or joins the run going on), awaits the run, then claims, also when
    /// recovery failed. Epoch 0 (genesis) is claimed without recovery. Shutdown ends it
    /// without claiming.
    pub async fn recover_then_claim(&self, trigger: Trigger, epoch: u64, seed: i64) -> ClaimRecord {
        let mut record =
            ClaimRecord { epoch_index: epoch, seed, run: None, tx_hash: None, error: None };
        // A run of another epoch may hold the guard: await it, then start ours once more.
        for _ in 0..2 {
            if epoch == 0 {
                break;
            }
            let start = match self.engine.recover_from(trigger, epoch, seed) {
                Ok(start) => start,
                Err(err) => {
                    warn!(epoch, %err, "recovery not started before the claim");
                    break;
                }
            };
            let started = matches!(start, RecoveryStart::Started(_));
            let handle = start.handle().clone();
            info!(epoch, run_id = handle.id(), started, "awaiting recovery before the claim");
            let report = tokio::select! {
                report = handle.wait() => report,
                () = self.cancel.cancelled() => {
                    record.error = Some("shut down before the claim".into());
                    return record;
                }
            };
            let done = started || report.epoch == epoch;
            record.run = Some(report);
            if done {
                break;
            }
        }
        let claimed = tokio::select! {
            claimed = self.chain.claim_rewards(seed, epoch) => claimed,
            () = self.cancel.cancelled() => {
                record.error = Some("shut down before the claim".into());
                return record;
            }
        };
        match claimed {
            Ok(hash) => {
                info!(epoch, tx_hash = %hash, "rewards claimed");
                record.tx_hash = Some(hash);
            }
            Err(err) => {
                warn!(epoch, %err, "reward claim failed");
                record.error = Some(err.to_string());
            }
        }
        self.lock().insert(epoch, record.clone());
        self.changed.send_modify(|n| *n += 1);
        record
    }
}

/// What the running app offers: cheap to clone, usable while [`App::run`] runs.
#[derive(Clone)]
pub struct AppHandle {
    /// The engine.
    pub engine: Engine,
    /// The ML node pool.
    pub pool: NodePool,
    /// Recovery-then-claim and the claimed-epochs record.
    pub claimer: Arc<Claimer>,
    /// The chain client.
    pub chain: ChainClient,
    /// The admin API's bound address.
    pub admin_addr: SocketAddr,
    /// The metrics listener's bound address.
    pub metrics_addr: SocketAddr,
    /// The admin bearer token.
    pub token: Arc<str>,
    /// Where the token is kept.
    pub token_file: PathBuf,
    /// The journal: validations, submissions, recovery runs, the last processed height.
    pub journal: Arc<SqliteJournal>,
}

/// The wired node, built and bound but not yet running.
pub struct App {
    settings: Settings,
    identity: Identity,
    handle: AppHandle,
    ml_client: HttpMlNodeClient,
    admin_listener: TcpListener,
    metrics_listener: TcpListener,
    /// Held while the app lives: no second process works on the same data directory.
    _lock: DataDirLock,
    cancel: CancellationToken,
}

/// How the app stopped.
#[derive(Debug, Clone, Serialize)]
pub struct StopReport {
    /// What asked for the stop.
    pub reason: String,
    /// What the engine's drain found and did.
    pub engine: ShutdownReport,
}

impl App {
    /// Locks the data directory, opens the journal, builds the adapters and the engine and
    /// binds both listeners. `settings` must be valid ([`Settings::validate`]). Must be called
    /// within a Tokio runtime.
    ///
    /// The lock comes first: a second process on the same data directory fails with
    /// [`crate::storage::Error::Locked`] before it opens, binds or connects anything.
    pub async fn build(settings: Settings, identity: Identity) -> anyhow::Result<Self> {
        let lock = DataDirLock::acquire(&settings.data_dir)?;
        let journal = {
            let (dir, config) = (settings.data_dir.clone(), settings.storage.clone());
            tokio::task::spawn_blocking(move || SqliteJournal::open(&dir, &config))
                .await
                .context("opening the journal")??
        };
        let journal = Arc::new(journal);
        // Installed before the engine starts, so the gauges it sets at start are recorded.
        crate::telemetry::recorder()?;
        let cancel = CancellationToken::new();
        let chain = ChainClient::new(
            &settings.chain,
            identity.account_address.clone(),
            identity.signer.clone(),
        )
        .context("building the chain client")?;
        let payloads = HttpPayloadSource::new(
            &settings.chain.payloads,
            identity.signer.clone(),
            identity.account_address.clone(),
            Arc::new(chain.clone()),
        )
        .context("building the payload source")?;
        let pool = NodePool::new(&settings.ml).context("building the ML node pool")?;
        let ml_client = HttpMlNodeClient::new(&settings.ml).context("building the ML client")?;
        let ports = Ports {
            chain: Arc::new(chain.clone()),
            payloads: Arc::new(payloads),
            broker: Arc::new(pool.clone()),
            ml: Arc::new(ml_client.clone()),
            journal: Arc::clone(&journal) as Arc<dyn validator_core::ports::Journal>,
        };
        let engine = Engine::start(settings.core.clone(), ports).context("starting the engine")?;
        let claimer = Arc::new(Claimer::new(
            engine.clone(),
            chain.clone(),
            identity.signer.clone(),
            cancel.clone(),
        ));
        let token_file = settings.token_file();
        let token = load_or_create_token(&token_file)?;
        let admin_listener = TcpListener::bind(settings.admin.listen)
            .await
            .with_context(|| format!("binding the admin API to {}", settings.admin.listen))?;
        let metrics_listener =
            TcpListener::bind(settings.metrics.listen).await.with_context(|| {
                format!("binding the metrics listener to {}", settings.metrics.listen)
            })?;
        let handle = AppHandle {
            engine,
            pool,
            claimer,
            chain,
            admin_addr: admin_listener.local_addr()?,
            metrics_addr: metrics_listener.local_addr()?,
            token: token.into(),
            token_file,
            journal,
        };
        Ok(Self {
            settings,
            identity,
            handle,
            ml_client,
            admin_listener,
            metrics_listener,
            _lock: lock,
            cancel,
        })
    }

    /// The running app's handle.
    pub fn handle(&self) -> AppHandle {
        self.handle.clone()
    }

    /// Runs until `shutdown` resolves or the admin API asks to stop, then stops admission,
    /// cancels in-flight work and waits for it within `shutdown_grace`.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<StopReport> {
        let App {
            settings,
            identity,
            handle,
            ml_client,
            admin_listener,
            metrics_listener,
            _lock,
            cancel,
        } = self;
        let tasks = TaskTracker::new();
        let recorder = crate::telemetry::recorder()?;
        let (stop_sender, mut stop_requests) = mpsc::channel::<String>(1);
        let ready = Arc::new(AtomicBool::new(false));

        let admin = crate::admin::router(crate::admin::AdminState {
            app: handle.clone(),
            ready: Arc::clone(&ready),
            shutdown: settings.admin.allow_shutdown.then_some(stop_sender.clone()),
            claim_wait: settings.admin.claim_wait,
            body_limit: settings.admin.body_limit_bytes,
        });
        let admin_cancel = cancel.clone();
        tasks.spawn(async move {
            let served = axum::serve(admin_listener, admin)
                .with_graceful_shutdown(admin_cancel.cancelled_owned())
                .await;
            if let Err(err) = served {
                warn!(%err, "admin API stopped");
            }
        });
        let metrics = crate::telemetry::serve_metrics(
            metrics_listener,
            recorder,
            handle.pool.clone(),
            settings.metrics.refresh_interval,
            cancel.clone(),
        );
        tasks.spawn(async move {
            if let Err(err) = metrics.await {
                warn!(%err, "metrics listener stopped");
            }
        });
        let _probe = handle.pool.spawn_probe(&ml_client, cancel.clone());
        let heights = Arc::clone(&handle.journal) as Arc<dyn HeightStore>;
        let events = chain_source::events::spawn(&settings.chain.events, heights, cancel.clone())
            .context("starting the chain event source")?;
        tasks.spawn(prune_loop(
            Arc::clone(&handle.journal),
            handle.chain.clone(),
            settings.storage.clone(),
            cancel.clone(),
        ));
        let dispatcher = Dispatcher {
            address: identity.account_address.clone(),
            claimer: Arc::clone(&handle.claimer),
            chain: handle.chain.clone(),
            schedule: None,
            refreshed_at: 0,
            launched_at: None,
            last_reward_check: None,
            reward_check: Arc::default(),
        };
        tasks.spawn(event_loop(events, handle.engine.clone(), dispatcher, cancel.clone()));
        ready.store(true, Ordering::Release);
        info!("validator running");

        let reason = tokio::select! {
            () = shutdown => "shutdown requested".to_owned(),
            Some(reason) = stop_requests.recv() => reason,
        };
        drop(stop_sender);
        info!(%reason, "shutting down: admission stops, in-flight work is cancelled");
        ready.store(false, Ordering::Release);
        cancel.cancel();
        let grace = settings.shutdown_grace;
        // One deadline for the engine and the app's own tasks: the grace bounds the whole drain.
        let deadline = tokio::time::Instant::now() + grace;
        let engine = handle.engine.shutdown(grace).await;
        handle.claimer.tasks.close();
        tasks.close();
        let rest = tokio::time::timeout_at(deadline, async {
            handle.claimer.tasks.wait().await;
            tasks.wait().await;
        })
        .await;
        // What the journal still holds is history (intents are committed before they are
        // broadcast), so the grace bounds its last writes too.
        if tokio::time::timeout_at(deadline, handle.journal.close()).await.is_err() {
            warn!("the journal's last history entries were not written within the grace period");
        }
        info!(
            cancelled_queued = engine.cancelled_idle,
            cancelled_running = engine.running,
            drained = engine.drained && rest.is_ok(),
            "stopped"
        );
        Ok(StopReport { reason, engine })
    }
}

/// Prunes the journal every `config.prune_interval`, keeping `config.retention_epochs` epochs
/// before the chain's current one.
async fn prune_loop(
    journal: Arc<SqliteJournal>,
    chain: ChainClient,
    config: crate::storage::StorageConfig,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(config.prune_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let epoch = tokio::select! {
            () = cancel.cancelled() => return,
            info = chain.epoch_info() => match info {
                Ok(info) => info.epoch_index,
                Err(err) => {
                    warn!(%err, "journal pruning skipped: the current epoch is unknown");
                    continue;
                }
            },
        };
        let keep_from = config.keep_from_epoch(epoch);
        match journal.prune(keep_from).await {
            Ok(report) => info!(keep_from, ?report, "journal pruned"),
            Err(err) => warn!(%err, "journal pruning failed"),
        }
    }
}

/// Reads the admin token from `path`, or generates one (32 random bytes, hex) into a new file
/// readable by the owner only.
pub fn load_or_create_token(path: &Path) -> anyhow::Result<String> {
    if let Ok(text) = std::fs::read_to_string(path) {
        let token = text.trim().to_owned();
        if !token.is_empty() {
            return Ok(token);
        }
    }
    use rand::{RngCore as _, SeedableRng as _};
    let mut bytes = [0u8; 32];
    rand::rngs::StdRng::from_os_rng().fill_bytes(&mut bytes);
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the token directory {}", dir.display()))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("creating the admin token file {}", path.display()))?;
    std::io::Write::write_all(&mut file, token.as_bytes())
        .with_context(|| format!("writing the admin token file {}", path.display()))?;
    Ok(token)
}

/// How many blocks the cached epoch schedule is reused before it is queried again.
const SCHEDULE_REFRESH_BLOCKS: u64 = 50;

/// The reward check's bound on its settle-amount query (upstream's 30 s).
const SETTLE_QUERY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Clears its flag when dropped, so a check that ends by any path reopens the next one.
struct ClearOnDrop(Arc<AtomicBool>);

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// The per-block triggers: the claim-time dispatcher (DOMAIN.md 3.6 (a)) and the periodic
/// reward-recovery checker (3.6 (b)).
struct Dispatcher {
    address: String,
    claimer: Arc<Claimer>,
    chain: ChainClient,
    schedule: Option<EpochSchedule>,
    refreshed_at: u64,
    /// The first block the checker saw.
    launched_at: Option<i64>,
    /// The block of the checker's last attempt.
    last_reward_check: Option<i64>,
    /// Set while a reward check runs.
    reward_check: Arc<AtomicBool>,
}

impl Dispatcher {
    async fn on_block(&mut self, height: u64) {
        let signed = i64::try_from(height).unwrap_or(i64::MAX);
        let stale = self.schedule.is_none_or(|schedule| {
            signed >= schedule.next_poc_start()
                || height.saturating_sub(self.refreshed_at) >= SCHEDULE_REFRESH_BLOCKS
        });
        if stale {
            match self.chain.epoch_info().await {
                Ok(info) => {
                    self.schedule = Some(EpochSchedule::from(&info));
                    self.refreshed_at = height;
                }
                Err(err) => warn!(height, %err, "cannot refresh the epoch schedule"),
            }
        }
        let Some(schedule) = self.schedule else { return };
        self.check_rewards(signed, &schedule);
        if !claim_due(&self.address, signed, &schedule) {
            return;
        }
        let epoch = schedule.epoch_index.saturating_sub(1);
        if self.claimer.is_claimed(epoch) {
            info!(epoch, "rewards already claimed");
            return;
        }
        info!(height, epoch, "claim height reached: recovering the previous epoch, then claiming");
        let seed = self.claimer.seed(epoch);
        // The claim runs on its own; the dispatcher does not wait for its record.
        drop(self.claimer.spawn(Trigger::Claim, epoch, seed));
    }

    fn check_rewards(&mut self, height: i64, schedule: &EpochSchedule) {
        let launched_at = *self.launched_at.get_or_insert(height);
        if !reward_recovery_due(height, launched_at, self.last_reward_check, schedule) {
            return;
        }
        if self.reward_check.swap(true, Ordering::AcqRel) {
            return;
        }
        self.last_reward_check = Some(height);
        info!(height, "reward check due");
        self.claimer.spawn_reward_check(self.address.clone(), Arc::clone(&self.reward_check));
    }
}

async fn event_loop(
    mut events: EventStream,
    engine: Engine,
    mut dispatcher: Dispatcher,
    cancel: CancellationToken,
) {
    loop {
        let event = tokio::select! {
            () = cancel.cancelled() => break,
            event = events.recv() => event,
        };
        let Some(event) = event else { break };
        match event {
            ChainEvent::InferenceFinished { ids, height } => {
                if let Err(err) = engine.sample(ids) {
                    warn!(height, %err, "finished inferences not sampled");
                }
            }
            ChainEvent::RevalidationNeeded { inference_id, height } => {
                if let Err(err) = engine.revalidate(inference_id.clone()) {
                    warn!(height, %inference_id, %err, "revalidation not admitted");
                }
            }
            ChainEvent::NewBlock { height } => tokio::select! {
                () = dispatcher.on_block(height) => {}
                () = cancel.cancelled() => break,
            },
        }
    }
    events.join().await;
}
