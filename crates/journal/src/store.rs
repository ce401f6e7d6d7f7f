//! [`Store`]: the journal the node runs on, SQLite or PostgreSQL as configured, with one set of
//! methods for both.

use std::{path::Path, sync::Arc};

use async_trait::async_trait;
use validator_core::ports::{
    chain::InferenceId,
    journal::{Intent, Journal, JournalEntry, JournalError},
    Leases, SingleReplica,
};

use crate::{
    Backend, Config, Error, InferenceHistory, PostgresJournal, PruneReport, Result, RunRecord,
    SqliteJournal,
};

/// The configured journal. See [`SqliteJournal`] and [`PostgresJournal`] for what each keeps.
#[derive(Debug)]
pub enum Store {
    /// `{data_dir}/journal.sqlite`, one process.
    Sqlite(SqliteJournal),
    /// A database shared by replicas.
    Postgres(PostgresJournal),
}

impl Store {
    /// Opens the journal `config` names: SQLite in `data_dir` (on the blocking pool; take the
    /// [`DataDirLock`](crate::DataDirLock) first), or PostgreSQL at `storage.url`.
    pub async fn open(data_dir: &Path, config: &Config) -> Result<Self> {
        match config.backend {
            Backend::Sqlite => {
                let (dir, config) = (data_dir.to_owned(), config.clone());
                tokio::task::spawn_blocking(move || SqliteJournal::open(&dir, &config))
                    .await
                    .map_err(|err| Error::Task(err.to_string()))?
                    .map(Store::Sqlite)
            }
            Backend::Postgres => PostgresJournal::connect(config).await.map(Store::Postgres),
        }
    }

    /// Which backend this is.
    pub fn backend(&self) -> Backend {
        match self {
            Store::Sqlite(_) => Backend::Sqlite,
            Store::Postgres(_) => Backend::Postgres,
        }
    }

    /// The leases the engine works under: every lease granted with SQLite (one process), the
    /// shared table with PostgreSQL.
    pub fn leases(&self) -> Arc<dyn Leases> {
        match self {
            Store::Sqlite(_) => Arc::new(SingleReplica),
            Store::Postgres(journal) => Arc::new(journal.clone()),
        }
    }

    /// Writes dropped because the queue was full (or the journal closed), since open.
    pub fn dropped(&self) -> u64 {
        match self {
            Store::Sqlite(journal) => journal.dropped(),
            Store::Postgres(journal) => journal.dropped(),
        }
    }

    /// The last processed block height, if one was stored.
    pub async fn height(&self) -> Result<Option<u64>> {
        match self {
            Store::Sqlite(journal) => journal.height(),
            Store::Postgres(journal) => journal.height().await,
        }
    }

    /// Stores the last processed block height; never waits.
    pub fn store_height(&self, height: u64) {
        match self {
            Store::Sqlite(journal) => journal.store_height(height),
            Store::Postgres(journal) => journal.store_height(height),
        }
    }

    /// Stores the claim record of `epoch`, once committed.
    pub async fn store_claim(&self, epoch: u64, record: String) -> Result<()> {
        match self {
            Store::Sqlite(journal) => journal.store_claim(epoch, record).await,
            Store::Postgres(journal) => journal.store_claim(epoch, record).await,
        }
    }

    /// The stored claim records, by epoch, oldest first.
    pub async fn claims(&self) -> Result<Vec<(u64, String)>> {
        match self {
            Store::Sqlite(journal) => journal.claims(),
            Store::Postgres(journal) => journal.claims().await,
        }
    }

    /// Everything the journal holds about one inference.
    pub async fn history(&self, inference_id: &str) -> Result<InferenceHistory> {
        match self {
            Store::Sqlite(journal) => journal.history(inference_id).await,
            Store::Postgres(journal) => journal.history(inference_id).await,
        }
    }

    /// The latest record of recovery run `run_id`.
    pub async fn run(&self, run_id: u64) -> Result<Option<RunRecord>> {
        match self {
            Store::Sqlite(journal) => journal.run(run_id).await,
            Store::Postgres(journal) => journal.run(run_id).await,
        }
    }

    /// The last `limit` recovery runs, newest first.
    pub async fn recent_runs(&self, limit: usize) -> Result<Vec<RunRecord>> {
        match self {
            Store::Sqlite(journal) => journal.recent_runs(limit).await,
            Store::Postgres(journal) => journal.recent_runs(limit).await,
        }
    }

    /// Deletes the history of epochs before `keep_from_epoch`.
    pub async fn prune(&self, keep_from_epoch: u64) -> Result<PruneReport> {
        match self {
            Store::Sqlite(journal) => journal.prune(keep_from_epoch).await,
            Store::Postgres(journal) => journal.prune(keep_from_epoch).await,
        }
    }

    /// Waits until everything queued before the call is committed.
    pub async fn flush(&self) -> Result<()> {
        match self {
            Store::Sqlite(journal) => journal.flush().await,
            Store::Postgres(journal) => journal.flush().await,
        }
    }

    /// Writes what is queued and stops; with PostgreSQL, hands this replica's leases back.
    pub async fn close(&self) {
        match self {
            Store::Sqlite(journal) => journal.close().await,
            Store::Postgres(journal) => journal.close().await,
        }
    }

    fn journal(&self) -> &dyn Journal {
        match self {
            Store::Sqlite(journal) => journal,
            Store::Postgres(journal) => journal,
        }
    }
}

#[async_trait]
impl Journal for Store {
    fn record(&self, entry: JournalEntry) {
        self.journal().record(entry);
    }

    async fn intend(&self, intent: &Intent) -> Result<(), JournalError> {
        self.journal().intend(intent).await
    }

    async fn open_intents(&self) -> Result<Vec<Intent>, JournalError> {
        self.journal().open_intents().await
    }

    async fn already_sent(
        &self,
        inference_id: &InferenceId,
        revalidation: bool,
    ) -> Result<bool, JournalError> {
        self.journal().already_sent(inference_id, revalidation).await
    }

    fn last_run_id(&self) -> u64 {
        self.journal().last_run_id()
    }

    async fn flush(&self) -> Result<(), JournalError> {
        self.journal().flush().await
    }
}
