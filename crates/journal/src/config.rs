//! The journal's settings.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use validator_core::config::duration_ms;

use crate::{Error, Result};

/// The journal's settings (`[storage]`). Durations are whole milliseconds.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the journal lives: SQLite in the data directory, or a PostgreSQL database that
    /// several replicas share.
    pub backend: Backend,
    /// The PostgreSQL database (`postgres://user[:password]@host[:port]/database`), for the
    /// `postgres` backend. Never logged with its password.
    pub url: Option<String>,
    /// A file holding the PostgreSQL password, so that neither the URL nor the configuration
    /// carries it. Read by the binary at start into [`Config::password`].
    pub password_file: Option<std::path::PathBuf>,
    /// The password read from `password_file`; never serialised or logged.
    #[serde(skip)]
    pub password: Option<String>,
    /// PostgreSQL connections this replica keeps.
    pub pool_size: usize,
    /// Bound of every PostgreSQL call (and of connecting), in milliseconds.
    #[serde(with = "duration_ms")]
    pub timeout: Duration,
    /// A prefix for this replica's id (letters, digits, `.`, `_`, `-`); each start appends a
    /// random suffix, so a restarted process is a new replica. Unset: the host name.
    pub replica_id: Option<String>,
    /// How long a lease lasts without renewal, in milliseconds: a dead replica's work is taken
    /// over this long after its last renewal. Renewed every third of it.
    #[serde(with = "duration_ms")]
    pub lease_ttl: Duration,
    /// Whether replicas on PostgreSQL take leases. Off only to show what they prevent: replicas
    /// without leases work the same validations and send them twice.
    pub leases: bool,
    /// SQLite's `synchronous` under WAL: `full` makes every commit durable at once; `normal`
    /// may lose the last commits on a power loss (never on a process crash) for fewer fsyncs.
    pub synchronous: Synchronous,
    /// Messages the writer's queue holds. History entries beyond it are dropped and counted;
    /// intents wait for room.
    pub queue_capacity: usize,
    /// Epochs of history kept: a prune keeps the current epoch and this many before it.
    pub retention_epochs: u64,
    /// How often history is pruned, in milliseconds.
    #[serde(with = "duration_ms")]
    pub prune_interval: Duration,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("backend", &self.backend)
            .field("url", &self.url.as_deref().map(redact))
            .field("password_file", &self.password_file)
            .field("pool_size", &self.pool_size)
            .field("timeout", &self.timeout)
            .field("replica_id", &self.replica_id)
            .field("lease_ttl", &self.lease_ttl)
            .field("leases", &self.leases)
            .field("synchronous", &self.synchronous)
            .field("queue_capacity", &self.queue_capacity)
            .field("retention_epochs", &self.retention_epochs)
            .field("prune_interval", &self.prune_interval)
            .finish()
    }
}

/// The URL with its password replaced by `***`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let Some((credentials, host)) = rest.rsplit_once('@') else { return url.to_owned() };
    match credentials.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

/// The most connections one replica may keep.
const MAX_POOL_SIZE: usize = 256;

/// The shortest lease TTL: renewals every third of it must fit between two database round
/// trips.
const MIN_LEASE_TTL: Duration = Duration::from_millis(300);

impl Default for Config {
    fn default() -> Self {
        Self {
            backend: Backend::Sqlite,
            url: None,
            password_file: None,
            password: None,
            pool_size: 8,
            timeout: Duration::from_secs(5),
            replica_id: None,
            lease_ttl: Duration::from_secs(15),
            leases: true,
            synchronous: Synchronous::Full,
            queue_capacity: 65_536,
            retention_epochs: 8,
            prune_interval: Duration::from_secs(3600),
        }
    }
}

/// The most history entries the writer's queue holds: far more than a burst needs, far below
/// what would exhaust memory.
const MAX_QUEUE_CAPACITY: usize = 10_000_000;

impl Config {
    /// Checks the values a journal cannot run with.
    pub fn validate(&self) -> Result<()> {
        if !(1..=MAX_QUEUE_CAPACITY).contains(&self.queue_capacity) {
            return Err(Error::Config(format!(
                "storage.queue_capacity must be between 1 and {MAX_QUEUE_CAPACITY}"
            )));
        }
        if self.prune_interval.is_zero() {
            return Err(Error::Config("storage.prune_interval must be positive".into()));
        }
        if let Some(id) = &self.replica_id {
            let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
            if id.is_empty() || id.len() > 64 || !id.chars().all(allowed) {
                return Err(Error::Config(
                    "storage.replica_id must be 1 to 64 letters, digits, '.', '_' or '-'".into(),
                ));
            }
        }
        match (self.backend, &self.url) {
            (Backend::Sqlite, Some(_)) => {
                return Err(Error::Config(
                    "storage.url is for backend = \"postgres\"; SQLite lives in data_dir".into(),
                ));
            }
            (Backend::Postgres, None) => {
                return Err(Error::Config(
                    "backend = \"postgres\" needs storage.url \
                     (postgres://user:password@host:5432/database)"
                        .into(),
                ));
            }
            (Backend::Postgres, Some(url)) => {
                self.postgres_config(url)?;
            }
            (Backend::Sqlite, None) => {}
        }
        if !(1..=MAX_POOL_SIZE).contains(&self.pool_size) {
            return Err(Error::Config(format!(
                "storage.pool_size must be between 1 and {MAX_POOL_SIZE}"
            )));
        }
        if self.timeout.is_zero() {
            return Err(Error::Config("storage.timeout must be positive".into()));
        }
        if self.lease_ttl < MIN_LEASE_TTL {
            return Err(Error::Config(format!(
                "storage.lease_ttl must be at least {} ms",
                MIN_LEASE_TTL.as_millis()
            )));
        }
        Ok(())
    }

    /// The PostgreSQL connection settings of `url`, refused when they cannot be used: not a
    /// `postgres://` URL, no host, or TLS required (this build connects without TLS).
    pub(crate) fn postgres_config(&self, url: &str) -> Result<tokio_postgres::Config> {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(Error::Config(format!(
                "storage.url must be a postgres:// URL, not {}",
                redact(url)
            )));
        }
        let mut config: tokio_postgres::Config = url.parse().map_err(|err| {
            Error::Config(format!("storage.url {} does not parse: {err}", redact(url)))
        })?;
        if config.get_hosts().is_empty() {
            return Err(Error::Config(format!("storage.url {} names no host", redact(url))));
        }
        if config.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
            return Err(Error::Config(format!(
                "storage.url {} requires TLS (sslmode=require), which this build does not \
                 speak: connect over a private network or a local socket, or drop sslmode",
                redact(url)
            )));
        }
        config.ssl_mode(tokio_postgres::config::SslMode::Disable);
        if let Some(password) = &self.password {
            config.password(password.as_bytes());
        }
        config.connect_timeout(self.timeout);
        config.application_name("validator");
        Ok(config)
    }

    /// The oldest epoch a prune keeps while `current_epoch` is the chain's current epoch.
    pub fn keep_from_epoch(&self, current_epoch: u64) -> u64 {
        current_epoch.saturating_sub(self.retention_epochs)
    }
}

/// Where the journal lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// `{data_dir}/journal.sqlite`, for one process.
    Sqlite,
    /// A PostgreSQL database several replicas share (`storage.url`).
    Postgres,
}

/// SQLite's `synchronous` setting, as far as WAL mode makes a difference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Synchronous {
    /// Every commit is on disk before it is acknowledged.
    Full,
    /// Commits reach the disk at checkpoints; a power loss may undo the last ones.
    Normal,
}

impl Synchronous {
    /// The pragma's numeric value.
    pub(crate) fn level(self) -> i64 {
        match self {
            Synchronous::Full => 2,
            Synchronous::Normal => 1,
        }
    }
}
