//! The PostgreSQL backend: one database shared by several replicas, holding the engine's
//! [`Journal`], the last processed block height, the claim records and the [`Leases`] that
//! share the work between the replicas (`leases.rs`).
//!
//! A pool of `storage.pool_size` connections (deadpool, tokio-postgres without TLS) serves
//! every call, each bounded by `storage.timeout`, so a database that is down or slow fails calls
//! rather than stalls them. As with SQLite, [`Journal::record`] and
//! [`PostgresJournal::store_height`] never wait: a writer task drains a bounded queue into one
//! transaction per batch, and a full queue drops history and counts it
//! (`validator_journal_dropped_total`). [`Journal::intend`] commits on its own connection at
//! once, fenced on the validation's lease: the insert happens only if the database sees this
//! replica holding the lease unexpired.
//!
//! The tables are SQLite's with a `replica` column on what each replica writes (its
//! validations, submissions and runs), plus `leases`. What a replica reconciles at start
//! (`open_intents`) is its own; a restarted process is a new replica and starts with none, the
//! intents of a dead replica being handed over with its leases. `already_sent` asks across
//! replicas. The schema is versioned in `schema_version`; a database written by a newer
//! validator is refused.

mod leases;
mod read;
mod schema;
mod writer;

use std::{
    collections::HashMap,
    future::Future,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, PoisonError,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Timeouts};
use tokio::{
    sync::{mpsc, oneshot, watch},
    task::JoinHandle,
};
use tracing::{error, info, warn};
use validator_core::ports::{
    chain::InferenceId,
    journal::{Intent, Journal, JournalEntry, JournalError},
    lease::LeaseKey,
};

use writer::Msg;

use crate::{
    config::redact, shared::Drops, Config, Error, InferenceHistory, PruneReport, Result, RunRecord,
};

const HEIGHT_KEY: &str = "chain_height";

/// The [`Journal`] and [`Leases`](validator_core::ports::Leases) on a PostgreSQL database
/// several replicas share. See the module docs. Cheap to clone: clones share the pool, the
/// queue and the leases.
#[derive(Clone)]
pub struct PostgresJournal {
    shared: Arc<Shared>,
}

struct Shared {
    location: String,
    replica: String,
    pool: Pool,
    timeout: Duration,
    sender: mpsc::Sender<Msg>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    stop: watch::Sender<bool>,
    last_run_id: AtomicU64,
    drops: Arc<Drops>,
    book: leases::Book,
}

impl std::fmt::Debug for PostgresJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresJournal")
            .field("location", &self.shared.location)
            .field("replica", &self.shared.replica)
            .finish_non_exhaustive()
    }
}

impl PostgresJournal {
    /// Connects to `config.url`, migrates the schema, and starts the writer and the lease
    /// renewal tasks on the current Tokio runtime.
    pub async fn connect(config: &Config) -> Result<Self> {
        config.validate()?;
        let url = config
            .url
            .as_deref()
            .ok_or_else(|| Error::Config("backend = \"postgres\" needs storage.url".into()))?;
        let location = redact(url);
        let pg = config.postgres_config(url)?;
        let manager = Manager::from_config(
            pg,
            tokio_postgres::NoTls,
            ManagerConfig { recycling_method: RecyclingMethod::Fast },
        );
        let timeouts = Timeouts {
            wait: Some(config.timeout),
            create: Some(config.timeout),
            recycle: Some(config.timeout),
        };
        let pool = Pool::builder(manager)
            .max_size(config.pool_size)
            .timeouts(timeouts)
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|err| Error::Pool(err.to_string()))?;
        let timeout = config.timeout;
        let mut client = bounded(timeout, async {
            pool.get().await.map_err(|err| Error::Pool(err.to_string()))
        })
        .await?;
        let found = bounded(timeout, schema::migrate(&mut client, &location)).await?;
        if found < schema::known_version() {
            info!(from = found, to = schema::known_version(), "journal schema migrated");
        }
        let last_run_id = bounded(timeout, read::last_run_id(&client)).await?;
        drop(client);

        let replica = replica_id(config.replica_id.as_deref());
        let (sender, receiver) = mpsc::channel(config.queue_capacity);
        let (stop, stopped) = watch::channel(false);
        let drops = Arc::new(Drops::new());
        let shared = Arc::new(Shared {
            location,
            replica: replica.clone(),
            pool: pool.clone(),
            timeout,
            sender,
            tasks: Mutex::new(Vec::new()),
            stop,
            last_run_id: AtomicU64::new(last_run_id),
            drops: Arc::clone(&drops),
            book: leases::Book::new(config.leases, config.lease_ttl),
        });
        let journal = Self { shared };
        let writer = writer::Writer::new(pool, replica, timeout, drops);
        let renewal = leases::renew(Arc::downgrade(&journal.shared), stopped);
        let mut tasks = journal.shared.tasks.lock().unwrap_or_else(PoisonError::into_inner);
        tasks.push(tokio::spawn(writer.run(receiver)));
        tasks.push(tokio::spawn(renewal));
        drop(tasks);
        Ok(journal)
    }

    /// The database, as its URL without the password.
    pub fn location(&self) -> &str {
        &self.shared.location
    }

    /// This replica's id: the configured prefix (or the host name) and a random suffix.
    pub fn replica(&self) -> &str {
        &self.shared.replica
    }

    /// Writes dropped because the queue was full (or the journal closed), since start.
    pub fn dropped(&self) -> u64 {
        self.shared.drops.count()
    }

    /// The last processed block height any replica stored.
    pub async fn height(&self) -> Result<Option<u64>> {
        self.call(|client| async move {
            let row =
                client.query_opt("SELECT value FROM meta WHERE key = $1", &[&HEIGHT_KEY]).await?;
            Ok(row.map(|row| uint(row.get(0))))
        })
        .await
    }

    /// Stores the last processed block height, never moving it backwards (replicas follow the
    /// chain independently). Never waits: queued, and dropped and counted when the queue is
    /// full.
    pub fn store_height(&self, height: u64) {
        self.send(Msg::Height(height));
    }

    /// Stores the claim record of `epoch` (replacing the previous one) and returns once it is
    /// committed.
    pub async fn store_claim(&self, epoch: u64, record: String) -> Result<()> {
        self.call(|client| async move {
            client
                .execute(
                    "INSERT INTO claims (epoch, record, updated_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (epoch) DO UPDATE SET record = $2, updated_at = $3",
                    &[&int(epoch), &record, &millis(SystemTime::now())],
                )
                .await?;
            Ok(())
        })
        .await
    }

    /// The stored claim records, by epoch, oldest first.
    pub async fn claims(&self) -> Result<Vec<(u64, String)>> {
        self.call(|client| async move {
            let rows = client.query("SELECT epoch, record FROM claims ORDER BY epoch", &[]).await?;
            Ok(rows.iter().map(|row| (uint(row.get(0)), row.get(1))).collect())
        })
        .await
    }

    /// Every validation of the inference (both revalidation flags, every replica) with its
    /// attempts and outcome, and its submissions.
    pub async fn history(&self, inference_id: &str) -> Result<InferenceHistory> {
        let inference_id = inference_id.to_owned();
        self.call(|client| async move { read::history(&client, &inference_id).await }).await
    }

    /// The latest record of recovery run `run_id`, if the journal has one.
    pub async fn run(&self, run_id: u64) -> Result<Option<RunRecord>> {
        self.call(|client| async move { read::run(&client, run_id).await }).await
    }

    /// The last `limit` recovery runs recorded, newest first.
    pub async fn recent_runs(&self, limit: usize) -> Result<Vec<RunRecord>> {
        self.call(|client| async move { read::recent_runs(&client, limit).await }).await
    }

    /// Deletes the history of epochs before `keep_from_epoch`, as SQLite's prune does, and the
    /// finished leases last touched before the oldest kept validation's admission. Open
    /// intents and held leases stay.
    pub async fn prune(&self, keep_from_epoch: u64) -> Result<PruneReport> {
        self.call(|mut client| async move { writer::prune(&mut client, keep_from_epoch).await })
            .await
    }

    /// Waits until everything queued before the call is committed.
    pub async fn flush(&self) -> Result<()> {
        let (ack, acked) = oneshot::channel();
        self.shared.sender.send(Msg::Flush { ack }).await.map_err(|_| Error::Closed)?;
        acked.await.map_err(|_| Error::Closed)?.map_err(Error::Write)
    }

    /// Writes what is queued, hands every lease this replica holds back (other replicas take
    /// them at once rather than after a TTL), and stops the tasks. Later writes are dropped.
    pub async fn close(&self) {
        let _ = self.shared.sender.send(Msg::Close).await;
        let _ = self.shared.stop.send(true);
        if let Err(err) = leases::release_all(self).await {
            warn!(%err, "leases not handed back; other replicas take them when they expire");
        }
        let tasks: Vec<_> =
            std::mem::take(&mut *self.shared.tasks.lock().unwrap_or_else(PoisonError::into_inner));
        for task in tasks {
            if let Err(err) = task.await {
                error!(%err, "a journal task failed");
            }
        }
        self.shared.pool.close();
    }

    /// Runs `call` on a pooled connection, the whole bounded by `storage.timeout`.
    async fn call<T, F, Fut>(&self, call: F) -> Result<T>
    where
        F: FnOnce(deadpool_postgres::Object) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let pool = &self.shared.pool;
        bounded(self.shared.timeout, async move {
            let client = pool.get().await.map_err(|err| Error::Pool(err.to_string()))?;
            call(client).await
        })
        .await
    }

    fn send(&self, msg: Msg) {
        if self.shared.sender.try_send(msg).is_err() {
            self.shared.drops.add(1);
        }
    }
}

#[async_trait]
impl Journal for PostgresJournal {
    fn record(&self, entry: JournalEntry) {
        if let JournalEntry::RunStarted { run_id, .. } = &entry {
            self.shared.last_run_id.fetch_max(*run_id, Ordering::Relaxed);
        }
        self.send(Msg::Entry(entry));
    }

    async fn intend(&self, intent: &Intent) -> Result<(), JournalError> {
        let key = LeaseKey::classic(&intent.msg.inference_id, intent.msg.revalidation);
        let json = serde_json::to_string(intent).map_err(|err| JournalError(err.to_string()))?;
        let replica = self.shared.replica.clone();
        let unfenced = !self.shared.book.enabled();
        let key_text = key.as_str().to_owned();
        let written = self
            .call(|client| async move {
                let statement = client
                    .prepare_cached(
                        "INSERT INTO submissions (msg_id, replica, inference_id, revalidation, \
                         epoch, lane, intent, open, intended_at) \
                         SELECT $1, $2, $3, $4, $5, $6, $7, true, \
                         (extract(epoch from clock_timestamp()) * 1000)::bigint \
                         WHERE $8 OR EXISTS (SELECT 1 FROM leases WHERE key = $9 \
                         AND holder = $2 AND state = 'held' AND expires_at > clock_timestamp()) \
                         ON CONFLICT (msg_id) DO UPDATE SET replica = excluded.replica, \
                         epoch = excluded.epoch, lane = excluded.lane, intent = excluded.intent, \
                         open = true, resolved_at = NULL, intended_at = excluded.intended_at",
                    )
                    .await?;
                let rows = client
                    .execute(
                        &statement,
                        &[
                            &intent.msg.id,
                            &replica,
                            &intent.msg.inference_id.as_str(),
                            &intent.msg.revalidation,
                            &int(intent.epoch),
                            &intent.lane.as_str(),
                            &json,
                            &unfenced,
                            &key_text,
                        ],
                    )
                    .await?;
                Ok(rows)
            })
            .await?;
        if written == 0 {
            return Err(JournalError(format!(
                "the lease on {key} is not held by this replica: intent not committed"
            )));
        }
        Ok(())
    }

    async fn open_intents(&self) -> Result<Vec<Intent>, JournalError> {
        let replica = self.shared.replica.clone();
        Ok(self.call(|client| async move { read::open_intents(&client, &replica).await }).await?)
    }

    async fn already_sent(
        &self,
        inference_id: &InferenceId,
        revalidation: bool,
    ) -> Result<bool, JournalError> {
        let inference_id = inference_id.clone();
        Ok(self
            .call(|client| async move {
                read::already_sent(&client, inference_id.as_str(), revalidation).await
            })
            .await?)
    }

    fn last_run_id(&self) -> u64 {
        self.shared.last_run_id.load(Ordering::Relaxed)
    }

    async fn flush(&self) -> Result<(), JournalError> {
        Ok(PostgresJournal::flush(self).await?)
    }
}

/// `future` bounded by `timeout`.
async fn bounded<T>(timeout: Duration, future: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(timeout, future).await.unwrap_or(Err(Error::Timeout(timeout)))
}

/// `{prefix}-{8 hex digits}`, the prefix defaulting to the host name.
fn replica_id(prefix: Option<&str>) -> String {
    let host = || {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|name| name.trim().to_owned())
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| "replica".to_owned())
    };
    let prefix = prefix.map_or_else(host, str::to_owned);
    let suffix: u32 =
        rand::Rng::random(&mut <rand::rngs::StdRng as rand::SeedableRng>::from_os_rng());
    format!("{prefix}-{suffix:08x}")
}

/// Unix milliseconds; times before 1970 read as 0.
fn millis(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |since| i64::try_from(since.as_millis()).unwrap_or(i64::MAX))
}

/// Heights, epochs and run ids stay far below `i64::MAX`.
fn int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Stored integers are written from `u64` values; a negative one reads as 0.
fn uint(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// Keys held and their local deadlines, for the lease book.
type Deadlines = HashMap<String, Instant>;
