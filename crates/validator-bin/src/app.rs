//! The app: builds the adapters and the engine from [`Settings`], runs the chain-event loop with
//! the block triggers ([`crate::triggers`]), the admin API ([`crate::admin`]), the metrics
//! listener and the journal's pruning, and drains on shutdown.

use std::{
    future::Future,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use anyhow::Context;
use chain_source::{events::HeightStore, ChainNodeClient, HttpPayloadSource, Signer};
use journal::{Backend, DataDirLock, Store};
use ml_client::{Broker, HttpMlNodeClient, NodeManagerBroker, NodePool};
use serde::Serialize;
use tokio::{net::TcpListener, sync::mpsc};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{info, warn};
use validator_core::{Engine, Ports, ShutdownReport};

use crate::{
    admin::{load_or_create_token, AdminState},
    claim::Claimer,
    health::ChainProgress,
    keys,
    leader::Leadership,
    settings::{IdentityConfig, Settings},
    triggers::{follow_chain, BlockTriggers},
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
    /// Reads and checks the key files named in `config` (see [`keys::read_key_file`]): the
    /// account key, when given, must be the key of `account_address` under `prefix`; it is
    /// required unless a warm key signs, and then it is better kept off the server. Errors name
    /// the file and the fix, never its content.
    pub fn load(config: &IdentityConfig, prefix: &str) -> anyhow::Result<Self> {
        let account_key = if config.key_file.as_os_str().is_empty() {
            None
        } else {
            let key = keys::read_key_file(&config.key_file)?;
            let address = keys::address(&key, prefix)?;
            if address != config.account_address {
                anyhow::bail!(
                    "identity.key_file {} holds the key of {address}, not of \
                     identity.account_address {}: set one of them to match the other",
                    config.key_file.display(),
                    config.account_address
                );
            }
            Some(key)
        };
        let signer = match (&config.warm_key_file, account_key) {
            (Some(path), _) => keys::read_key_file(path)?,
            (None, Some(key)) => key,
            (None, None) => anyhow::bail!(
                "identity.key_file is required unless identity.warm_key_file is set \
                 (`validator keys import` writes one)"
            ),
        };
        Ok(Self { account_address: config.account_address.clone(), signer })
    }
}

/// The least age of the NodeManager's listing at which the ML side stops counting as
/// reachable, whatever `ml.node_manager.capacity_refresh` is.
const ML_STALE_AFTER_MIN: std::time::Duration = std::time::Duration::from_secs(15);

/// The messages a warm key sends for its account, each under an authz grant of the account.
const GRANTED_MESSAGES: [&str; 2] =
    [chain_source::proto::MSG_VALIDATION_TYPE_URL, chain_source::proto::MSG_CLAIM_REWARDS_TYPE_URL];

/// Checks on chain that `account` granted `warm` every message of [`GRANTED_MESSAGES`]; an
/// error names the missing ones and the command that grants them. A query that fails (the
/// chain node unreachable) is a warning, not a refusal: the grants are then learnt from the
/// first submission's answer.
pub async fn check_grants(
    chain: &ChainNodeClient,
    account: &str,
    warm: &str,
) -> anyhow::Result<()> {
    let mut missing = Vec::new();
    for type_url in GRANTED_MESSAGES {
        match chain.query().grantees(account, type_url).await {
            Ok(grantees) if grantees.iter().any(|grantee| grantee.address == warm) => {}
            Ok(_) => missing.push(type_url),
            Err(err) => {
                warn!(%err, type_url, "the warm key's grants could not be checked");
                return Ok(());
            }
        }
    }
    if missing.is_empty() {
        info!(%warm, %account, "the warm key holds the account's grants");
        return Ok(());
    }
    anyhow::bail!(
        "the warm key {warm} holds no authz grant of {account} for {}: grant them where the \
         account key is, with `inferenced tx inference grant-ml-ops-permissions ACCOUNT_KEY \
         {warm} --from ACCOUNT_KEY`",
        missing.join(", ")
    )
}

/// What the running app offers: cheap to clone, usable while [`App::run`] runs.
#[derive(Clone)]
pub struct AppHandle {
    /// The engine.
    pub engine: Engine,
    /// The ML node pool (empty unless `ml.broker` is `pool`).
    pub pool: NodePool,
    /// The NodeManager broker, when `ml.broker` is `node_manager`.
    pub node_manager: Option<NodeManagerBroker>,
    /// Recovery-then-claim and the claimed-epochs record.
    pub claimer: Arc<Claimer>,
    /// The chain client.
    pub chain: ChainNodeClient,
    /// The admin API's bound address.
    pub admin_addr: SocketAddr,
    /// The metrics listener's bound address.
    pub metrics_addr: SocketAddr,
    /// The validation service's bound address, when it is on.
    pub service_addr: Option<SocketAddr>,
    /// The admin bearer token.
    pub token: Arc<str>,
    /// Where the token is kept.
    pub token_file: PathBuf,
    /// Whether this start created the token (and its file).
    pub token_created: bool,
    /// The journal: validations, submissions, recovery runs, the last processed height.
    pub journal: Arc<Store>,
    /// Whether this replica is the leader (always, when alone on its journal).
    pub leadership: Arc<Leadership>,
    /// The chain as the node follows it: last block, its age, the epoch.
    pub chain_progress: Arc<ChainProgress>,
}

/// The wired node, built and bound but not yet running.
pub struct App {
    settings: Settings,
    identity: Identity,
    handle: AppHandle,
    ml_client: HttpMlNodeClient,
    /// For the event source, which starts with [`App::run`].
    tls: tls::ClientTls,
    admin_listener: TcpListener,
    metrics_listener: TcpListener,
    service_listener: Option<TcpListener>,
    /// Held while the app lives: no second process works on the same data directory (SQLite
    /// only; replicas on PostgreSQL may share a host and a directory).
    _lock: Option<DataDirLock>,
    /// The last processed block height when the app was built.
    height: Option<u64>,
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
    /// With SQLite the lock comes first: a second process on the same data directory fails with
    /// [`journal::Error::Locked`] before it opens, binds or connects anything.
    pub async fn build(settings: Settings, identity: Identity) -> anyhow::Result<Self> {
        let lock = match settings.storage.backend {
            Backend::Sqlite => Some(DataDirLock::acquire(&settings.data_dir)?),
            Backend::Postgres => None,
        };
        let journal = Arc::new(
            Store::open(&settings.data_dir, &settings.storage)
                .await
                .context("opening the journal")?,
        );
        let height = journal.height().await.unwrap_or_else(|err| {
            warn!(%err, "cannot read the last processed height; starting from the tip");
            None
        });
        let leases = journal.leases();
        let leadership = Arc::new(Leadership::new(Arc::clone(&leases)));
        if leadership.shared() {
            info!(replica = leases.replica(), "replica on a shared journal: leases on");
        } else if settings.storage.backend == Backend::Postgres {
            warn!("storage.leases is off: replicas on this database will duplicate work");
        }
        // Installed before the engine starts, so the gauges it sets at start are recorded.
        crate::telemetry::recorder()?;
        crate::telemetry::initialise_series();
        let backend = match settings.storage.backend {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        };
        metrics::gauge!(
            "validator_replica_info",
            "replica" => leases.replica().to_owned(),
            "backend" => backend,
        )
        .set(1.0);
        let cancel = CancellationToken::new();
        let tls = settings.tls.client_tls()?;
        let chain = ChainNodeClient::new(
            &settings.chain,
            &tls,
            identity.account_address.clone(),
            identity.signer.clone(),
        )
        .context("building the chain client")?;
        let chain = if settings.dry_run {
            warn!("dry run: nothing is broadcast; validations and claims are logged as not sent");
            chain.dry_run()
        } else {
            chain
        };
        let signer_address = keys::address(&identity.signer, &settings.chain.tx.address_prefix)?;
        if signer_address != identity.account_address {
            check_grants(&chain, &identity.account_address, &signer_address).await?;
        }
        crate::guard::watch_for_other_signers(
            &chain,
            &signer_address,
            settings.identity.guard_blocks,
            &cancel,
        )
        .await?;
        let payloads = HttpPayloadSource::new(
            &settings.chain.payloads,
            &tls,
            identity.signer.clone(),
            identity.account_address.clone(),
            Arc::new(chain.clone()),
        )
        .context("building the payload source")?;
        let pool = NodePool::new(&settings.ml).context("building the ML node pool")?;
        let node_manager = match settings.ml.broker {
            Broker::Pool => None,
            Broker::NodeManager => Some(
                NodeManagerBroker::new(&settings.ml).context("building the NodeManager broker")?,
            ),
        };
        let broker: Arc<dyn validator_core::ports::ModelLockBroker> = match &node_manager {
            Some(node_manager) => Arc::new(node_manager.clone()),
            None => Arc::new(pool.clone()),
        };
        let ml_client =
            HttpMlNodeClient::new(&settings.ml, &tls).context("building the ML client")?;
        let ports = Ports {
            chain: Arc::new(chain.clone()),
            payloads: Arc::new(payloads),
            broker,
            ml: Arc::new(ml_client.clone()),
            journal: Arc::clone(&journal) as Arc<dyn validator_core::ports::Journal>,
            leases,
        };
        let engine = Engine::start(settings.core.clone(), ports).context("starting the engine")?;
        let claimer = Arc::new(
            Claimer::new(
                engine.clone(),
                chain.clone(),
                identity.signer.clone(),
                Arc::clone(&journal),
                Arc::clone(&leadership),
                cancel.clone(),
            )
            .await?,
        );
        let token_file = settings.token_file();
        let (token, token_created) = load_or_create_token(&token_file)?;
        let admin_listener = TcpListener::bind(settings.admin.listen)
            .await
            .with_context(|| format!("binding the admin API to {}", settings.admin.listen))?;
        let metrics_listener =
            TcpListener::bind(settings.metrics.listen).await.with_context(|| {
                format!("binding the metrics listener to {}", settings.metrics.listen)
            })?;
        let service_listener = match crate::service::listen_address(&settings.service.listen)? {
            Some(address) => Some(
                TcpListener::bind(address)
                    .await
                    .with_context(|| format!("binding the validation service to {address}"))?,
            ),
            None => None,
        };
        let handle = AppHandle {
            engine,
            pool,
            node_manager,
            claimer,
            chain,
            admin_addr: admin_listener.local_addr()?,
            metrics_addr: metrics_listener.local_addr()?,
            service_addr: service_listener.as_ref().map(TcpListener::local_addr).transpose()?,
            token: token.into(),
            token_file,
            token_created,
            journal,
            leadership,
            chain_progress: Arc::new(ChainProgress::new(settings.chain.events.idle_timeout)),
        };
        Ok(Self {
            settings,
            identity,
            handle,
            ml_client,
            tls,
            admin_listener,
            metrics_listener,
            service_listener,
            _lock: lock,
            height,
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
            tls,
            admin_listener,
            metrics_listener,
            service_listener,
            _lock,
            height,
            cancel,
        } = self;
        let tasks = TaskTracker::new();
        let recorder = crate::telemetry::recorder()?;
        let (stop_sender, mut stop_requests) = mpsc::channel::<String>(1);
        let ready = Arc::new(AtomicBool::new(false));

        let ml_stale_after =
            (settings.ml.node_manager.capacity_refresh * 3).max(ML_STALE_AFTER_MIN);
        let admin = crate::admin::router(AdminState {
            engine: handle.engine.clone(),
            pool: handle.pool.clone(),
            node_manager: handle.node_manager.clone(),
            claimer: Arc::clone(&handle.claimer),
            journal: Arc::clone(&handle.journal),
            token: Arc::clone(&handle.token),
            ready: Arc::clone(&ready),
            shutdown: settings.admin.allow_shutdown.then_some(stop_sender.clone()),
            claim_wait: settings.admin.claim_wait,
            body_limit: settings.admin.body_limit_bytes,
            chain: Arc::clone(&handle.chain_progress),
            ml_stale_after,
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
        if let Some(listener) = service_listener {
            let handler = crate::service::ValidationHandler::new(
                handle.engine.clone(),
                Arc::clone(&handle.token),
            );
            let service_cancel = cancel.clone();
            tasks.spawn(async move {
                if let Err(err) = crate::service::serve(listener, handler, service_cancel).await {
                    warn!(%err, "validation service stopped");
                }
            });
        }
        let metrics = crate::telemetry::serve_metrics(
            metrics_listener,
            recorder,
            crate::telemetry::Gauges {
                pool: handle.pool.clone(),
                node_manager: handle.node_manager.clone(),
                ml_stale_after,
                chain: Arc::clone(&handle.chain_progress),
            },
            settings.metrics.refresh_interval,
            cancel.clone(),
        );
        tasks.spawn(async move {
            if let Err(err) = metrics.await {
                warn!(%err, "metrics listener stopped");
            }
        });
        let _probe = handle.pool.spawn_probe(&ml_client, cancel.clone());
        if let Some(node_manager) = &handle.node_manager {
            tasks.spawn(node_manager.spawn_capacity_refresh(cancel.clone()));
        }
        tasks.spawn(Arc::clone(&handle.leadership).run(cancel.clone()));
        let heights =
            Arc::new(JournalHeights { journal: Arc::clone(&handle.journal), loaded: height });
        let events =
            chain_source::events::spawn(&settings.chain.events, &tls, heights, cancel.clone())
                .context("starting the chain event source")?;
        tasks.spawn(prune_loop(
            Arc::clone(&handle.journal),
            Arc::clone(&handle.leadership),
            handle.chain.clone(),
            settings.storage.clone(),
            cancel.clone(),
        ));
        let triggers = BlockTriggers::new(
            identity.account_address.clone(),
            Arc::clone(&handle.claimer),
            handle.chain.clone(),
            Arc::clone(&handle.leadership),
            Arc::clone(&handle.chain_progress),
        );
        tasks.spawn(follow_chain(events, handle.engine.clone(), triggers, cancel.clone()));
        tasks.spawn(stop_when_retired(
            handle.chain.retired(),
            handle.engine.clone(),
            cancel.clone(),
        ));
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
        handle.chain.stop_watching();
        handle.claimer.tasks().close();
        tasks.close();
        let rest = tokio::time::timeout_at(deadline, async {
            handle.claimer.tasks().wait().await;
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
/// before the chain's current one; on a shared journal only the leader prunes.
async fn prune_loop(
    journal: Arc<Store>,
    leadership: Arc<Leadership>,
    chain: ChainNodeClient,
    config: journal::Config,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(config.prune_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if !leadership.is_leader() {
            continue;
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

/// Stops the engine's classic work once the chain adapter learns that the chain refuses classic
/// validations (a `MsgValidation` refused or landed with 1161).
async fn stop_when_retired(
    mut retired: tokio::sync::watch::Receiver<Option<String>>,
    engine: Engine,
    cancel: CancellationToken,
) {
    let reason = tokio::select! {
        reason = retired.wait_for(Option::is_some) => match reason {
            Ok(reason) => reason.clone().unwrap_or_default(),
            Err(_) => return,
        },
        () = cancel.cancelled() => return,
    };
    engine.retire_classic(reason);
}

/// The journal as the event source's [`HeightStore`]: the height read when the app was built,
/// and every processed height stored (on a shared journal, the highest any replica reached).
struct JournalHeights {
    journal: Arc<Store>,
    loaded: Option<u64>,
}

impl HeightStore for JournalHeights {
    fn load(&self) -> Option<u64> {
        self.loaded
    }

    fn store(&self, height: u64) {
        self.journal.store_height(height);
    }
}
