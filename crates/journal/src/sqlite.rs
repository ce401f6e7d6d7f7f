//! The SQLite backend: `{data_dir}/journal.sqlite`, holding the engine's [`Journal`] and the
//! last processed block height.
//!
//! The database runs in WAL mode. One writer thread owns the write connection and is fed by a
//! bounded queue: [`Journal::record`] and [`SqliteJournal::store_height`] never wait (when the
//! queue is full the write is dropped and counted in `validator_journal_dropped_total`), while
//! [`Journal::intend`] waits until the batch holding its intent is committed. Reads go through a
//! second connection on the blocking pool, so neither side blocks an async worker.
//!
//! Tables (timestamps in unix milliseconds, names as the core's `as_str`):
//! - `validations`: one row per admitted validation, with its epoch once known and its terminal
//!   outcome; `attempts`: its failed attempts;
//! - `submissions`: one row per intended `MsgValidation` (keyed by message id), the chain's
//!   last answer and whether the intent is still open;
//! - `runs`: recovery runs; `meta`: the last processed height and the highest run id.
//!
//! The schema is versioned by `PRAGMA user_version`; a database written by a newer validator is
//! refused rather than guessed at.

mod read;
mod schema;
#[cfg(test)]
mod tests;
mod writer;

use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, PoisonError,
    },
    thread::JoinHandle,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use async_trait::async_trait;
use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};
use tracing::error;
use validator_core::ports::{
    chain::InferenceId,
    journal::{Intent, Journal, JournalEntry, JournalError},
};

use writer::{Msg, Writer};

use crate::{shared::Drops, Config, Error, InferenceHistory, PruneReport, Result, RunRecord};

/// The journal's file name in the data directory.
pub const JOURNAL_FILE: &str = "journal.sqlite";

/// How long a connection waits for a lock held by the other connection before failing. The
/// writer and the reader rarely contend in WAL mode (a checkpoint, a reader opening), so this
/// only has to outlast a long commit on a slow disk.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Size the WAL file is truncated back to after a checkpoint, so a burst does not leave a large
/// file behind.
const JOURNAL_SIZE_LIMIT: i64 = 64 * 1024 * 1024;

/// Prepared statements kept per connection: every statement the writer and the reader use.
const STATEMENT_CACHE: usize = 64;

const HEIGHT_KEY: &str = "chain_height";
const RUN_ID_KEY: &str = "last_run_id";

/// The [`Journal`] in `{data_dir}/journal.sqlite`, and the last processed block height. See the
/// module docs.
///
/// [`close`](Self::close) writes everything queued and waits for the writer; dropping the last
/// handle without closing lets the writer finish the queue on its own thread.
#[derive(Debug)]
pub struct SqliteJournal {
    path: PathBuf,
    sender: mpsc::Sender<Msg>,
    writer: Mutex<Option<JoinHandle<()>>>,
    reader: Arc<Reader>,
    last_run_id: AtomicU64,
    drops: Drops,
}

impl SqliteJournal {
    /// Opens (creating or migrating) `{data_dir}/journal.sqlite` and starts its writer thread.
    ///
    /// This blocks on file I/O: call it at start, or on the blocking pool. Take the
    /// [`DataDirLock`] first.
    pub fn open(data_dir: &Path, config: &Config) -> Result<Self> {
        config.validate()?;
        std::fs::create_dir_all(data_dir)
            .map_err(|source| Error::Io { path: data_dir.to_owned(), source })?;
        let path = data_dir.join(JOURNAL_FILE);
        let opening = |source| Error::Open { path: path.clone(), source };

        let mut conn = Connection::open(&path).map_err(opening)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(opening)?;
        schema::check(&conn, &path)?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(opening)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::NoWal { path, mode });
        }
        conn.pragma_update(None, "synchronous", config.synchronous.level()).map_err(opening)?;
        conn.pragma_update(None, "journal_size_limit", JOURNAL_SIZE_LIMIT).map_err(opening)?;
        schema::migrate(&mut conn, &path)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);

        let reader = Connection::open(&path).map_err(opening)?;
        reader.busy_timeout(BUSY_TIMEOUT).map_err(opening)?;
        reader.pragma_update(None, "query_only", true).map_err(opening)?;
        reader.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        let last_run_id = read::last_run_id(&reader)?;

        let (sender, receiver) = mpsc::channel(config.queue_capacity);
        let writer = std::thread::Builder::new()
            .name("journal-writer".into())
            .spawn(move || Writer::new(conn).run(receiver))
            .map_err(|source| Error::Io { path: path.clone(), source })?;

        Ok(Self {
            path,
            sender,
            writer: Mutex::new(Some(writer)),
            reader: Arc::new(Reader { conn: Mutex::new(reader) }),
            last_run_id: AtomicU64::new(last_run_id),
            drops: Drops::new(),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes dropped because the queue was full (or the journal closed), since open.
    pub fn dropped(&self) -> u64 {
        self.drops.count()
    }

    /// The last processed block height, if one was stored. Reads on the calling thread: call it
    /// at start, before the event source follows the chain.
    pub fn height(&self) -> Result<Option<u64>> {
        self.reader.with(read::height)
    }

    /// Stores the last processed block height. Never waits: like history, it is dropped and
    /// counted when the queue is full, and the next height stored replaces it.
    pub fn store_height(&self, height: u64) {
        self.send(Msg::Height(height));
    }

    /// Stores the claim record of `epoch` (replacing the previous one) and returns once it is
    /// committed: the claimer's state survives a restart.
    pub async fn store_claim(&self, epoch: u64, record: String) -> Result<()> {
        let (ack, acked) = oneshot::channel();
        self.sender.send(Msg::Claim { epoch, record, ack }).await.map_err(|_| Error::Closed)?;
        acked.await.map_err(|_| Error::Closed)?.map_err(Error::Write)
    }

    /// The stored claim records, by epoch, oldest first.
    pub fn claims(&self) -> Result<Vec<(u64, String)>> {
        self.reader.with(read::claims)
    }

    /// Every validation of the inference (both revalidation flags) with its attempts and
    /// outcome, and its submissions. Unknown inferences give an empty history.
    pub async fn history(&self, inference_id: &str) -> Result<InferenceHistory> {
        let inference_id = inference_id.to_owned();
        self.read(move |conn| read::history(conn, &inference_id)).await
    }

    /// The latest record of recovery run `run_id`, if the journal has one.
    pub async fn run(&self, run_id: u64) -> Result<Option<RunRecord>> {
        self.read(move |conn| read::run(conn, run_id)).await
    }

    /// The last `limit` recovery runs recorded, newest first.
    pub async fn recent_runs(&self, limit: usize) -> Result<Vec<RunRecord>> {
        self.read(move |conn| read::recent_runs(conn, limit)).await
    }

    /// Deletes the history of epochs before `keep_from_epoch`: validations and their attempts,
    /// closed submissions, and recovery runs. Validations whose epoch never became known go
    /// once admitted before the oldest kept validation with a known epoch. Open intents stay.
    ///
    /// Runs on the writer thread, between two batches.
    pub async fn prune(&self, keep_from_epoch: u64) -> Result<PruneReport> {
        let (ack, acked) = oneshot::channel();
        self.sender.send(Msg::Prune { keep_from_epoch, ack }).await.map_err(|_| Error::Closed)?;
        acked.await.map_err(|_| Error::Closed)?.map_err(Error::Write)
    }

    /// Waits until everything queued before the call is committed.
    pub async fn flush(&self) -> Result<()> {
        let (ack, acked) = oneshot::channel();
        self.sender.send(Msg::Flush { ack }).await.map_err(|_| Error::Closed)?;
        acked.await.map_err(|_| Error::Closed)?.map_err(Error::Write)
    }

    /// Stops taking writes, writes everything already queued, and waits for the writer thread
    /// to finish. Later writes are dropped and intents fail with [`Error::Closed`].
    pub async fn close(&self) {
        // Waiting for room is fine here: the writer is draining the queue.
        let _ = self.sender.send(Msg::Close).await;
        let writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner).take();
        let Some(writer) = writer else { return };
        match tokio::task::spawn_blocking(move || writer.join()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => error!("the journal writer panicked"),
            Err(err) => error!(%err, "waiting for the journal writer failed"),
        }
    }

    async fn read<T, F>(&self, query: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let reader = Arc::clone(&self.reader);
        tokio::task::spawn_blocking(move || reader.with(query))
            .await
            .map_err(|err| Error::Task(err.to_string()))?
    }

    fn send(&self, msg: Msg) {
        if self.sender.try_send(msg).is_err() {
            self.drops.add(1);
        }
    }

    /// Holds the writer inside its next transaction until the returned sender fires or drops.
    #[cfg(test)]
    async fn pause(&self) -> std::sync::mpsc::Sender<()> {
        let (resume_tx, resume) = std::sync::mpsc::channel();
        let (paused, is_paused) = oneshot::channel();
        assert!(self.sender.send(Msg::Pause { paused, resume }).await.is_ok());
        is_paused.await.unwrap();
        resume_tx
    }
}

#[async_trait]
impl Journal for SqliteJournal {
    fn record(&self, entry: JournalEntry) {
        // Counted here rather than by the writer, so ids stay unique even if the entry drops.
        if let JournalEntry::RunStarted { run_id, .. } = &entry {
            self.last_run_id.fetch_max(*run_id, Ordering::Relaxed);
        }
        self.send(Msg::Entry(entry));
    }

    async fn intend(&self, intent: &Intent) -> Result<(), JournalError> {
        let (ack, acked) = oneshot::channel();
        let msg = Msg::Intend { intent: intent.clone(), at: SystemTime::now(), ack };
        self.sender.send(msg).await.map_err(|_| Error::Closed)?;
        acked.await.map_err(|_| Error::Closed)?.map_err(Error::Write)?;
        Ok(())
    }

    async fn open_intents(&self) -> Result<Vec<Intent>, JournalError> {
        Ok(self.read(read::open_intents).await?)
    }

    async fn already_sent(
        &self,
        inference_id: &InferenceId,
        revalidation: bool,
    ) -> Result<bool, JournalError> {
        let inference_id = inference_id.clone();
        Ok(self
            .read(move |conn| read::already_sent(conn, inference_id.as_str(), revalidation))
            .await?)
    }

    fn last_run_id(&self) -> u64 {
        self.last_run_id.load(Ordering::Relaxed)
    }

    async fn flush(&self) -> Result<(), JournalError> {
        Ok(SqliteJournal::flush(self).await?)
    }
}

/// The read connection.
#[derive(Debug)]
struct Reader {
    conn: Mutex<Connection>,
}

impl Reader {
    fn with<T>(&self, query: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        query(&conn)
    }
}

// === helpers ===

/// Unix milliseconds; times before 1970 read as 0.
fn millis(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |since| i64::try_from(since.as_millis()).unwrap_or(i64::MAX))
}

/// SQLite integers are signed; heights, epochs and run ids stay far below `i64::MAX`.
fn int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
