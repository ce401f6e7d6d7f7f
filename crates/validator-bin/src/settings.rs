//! The node's settings: every crate's own `Config`, plus the binary's listeners, identity, data
//! directory and logs.
//!
//! Precedence, lowest first: built-in defaults, the TOML file, then environment variables
//! prefixed `VALIDATOR_` with `__` between levels (`VALIDATOR_CORE__SLOTS=12` sets
//! `core.slots`). Durations are whole milliseconds, as in every crate's `Config`.
//!
//! No secret lives in the settings: keys and the admin token are read from files whose paths
//! are configured here, and those files' contents are never printed or logged. Of the files the
//! settings name, the CA file (`tls.ca_file`) is read when they are loaded, so that
//! `check-config` refuses a bad one too.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use figment::{
    providers::{Env, Format, Serialized, Toml},
    Figment,
};
use serde::{Deserialize, Serialize};
use validator_core::config::duration_ms;

/// The prefix of environment variables that set settings.
const ENV_PREFIX: &str = "VALIDATOR_";

/// The top level of [`Settings`]: an environment variable must start with one of them.
const TOP_LEVEL: &[&str] = &[
    "data_dir",
    "dry_run",
    "shutdown_grace",
    "core",
    "ml",
    "chain",
    "admin",
    "service",
    "metrics",
    "identity",
    "log",
    "storage",
    "tls",
];

/// Whether an environment key (prefix stripped; levels split by `__` or already by `.`) starts
/// with a top-level setting.
fn names_a_setting(key: &str) -> bool {
    let first = key.split("__").next().and_then(|first| first.split('.').next()).unwrap_or("");
    TOP_LEVEL.iter().any(|top| top.eq_ignore_ascii_case(first))
}

/// Everything the node is configured with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Directory for the node's state: the journal (`journal.sqlite`: validations, submissions,
    /// recovery runs, the last processed height), the single-instance `LOCK` and, unless
    /// `admin.token_file` says otherwise, the admin token. Default `/var/lib/validator` (the
    /// systemd unit's `StateDirectory`).
    pub data_dir: PathBuf,
    /// Never broadcast (`validator run --dry-run`): follow, sample, fetch, replay and score as
    /// usual, and log, journal and count what would have been sent. Only with the SQLite
    /// journal: on a shared one a dry run would take work from the real replicas.
    pub dry_run: bool,
    /// How long shutdown waits for in-flight work before giving up on it, in milliseconds.
    #[serde(with = "duration_ms")]
    pub shutdown_grace: Duration,
    /// The validation engine.
    pub core: validator_core::Config,
    /// The ML nodes.
    pub ml: ml_client::Config,
    /// The chain node and executors.
    pub chain: chain_source::Config,
    /// The admin API.
    pub admin: AdminConfig,
    /// The gRPC validation service.
    pub service: ServiceConfig,
    /// The Prometheus listener.
    pub metrics: MetricsConfig,
    /// Who this validator is.
    pub identity: IdentityConfig,
    /// Logs.
    pub log: LogConfig,
    /// The journal.
    pub storage: journal::Config,
    /// TLS of every outbound connection.
    pub tls: TlsConfig,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("/var/lib/validator"),
            dry_run: false,
            shutdown_grace: Duration::from_secs(10),
            core: validator_core::Config::default(),
            ml: ml_client::Config::default(),
            chain: chain_source::Config::default(),
            admin: AdminConfig::default(),
            service: ServiceConfig::default(),
            metrics: MetricsConfig::default(),
            identity: IdentityConfig::default(),
            log: LogConfig::default(),
            storage: journal::Config::default(),
            tls: TlsConfig::default(),
        }
    }
}

/// The admin API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Address the admin API listens on.
    pub listen: SocketAddr,
    /// File holding the bearer token; generated (mode 0600) at first start. Unset means
    /// `{data_dir}/admin.token`.
    pub token_file: Option<PathBuf>,
    /// Largest request body accepted, in bytes.
    pub body_limit_bytes: usize,
    /// How long `POST /admin/v1/claim-reward/recover` waits for the recovery run before it
    /// answers with the run id and leaves the claim to a background task, in milliseconds.
    #[serde(with = "duration_ms")]
    pub claim_wait: Duration,
    /// Whether `POST /admin/v1/shutdown` is served (off by default).
    pub allow_shutdown: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9200)),
            token_file: None,
            body_limit_bytes: 64 * 1024,
            claim_wait: Duration::from_secs(30),
            allow_shutdown: false,
        }
    }
}

/// The gRPC validation service (`validator.v1.ValidationService`), which devshard session
/// hosts call. It requires the admin bearer token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceConfig {
    /// Address the service listens on; empty turns the service off. Default
    /// `127.0.0.1:9300`.
    pub listen: String,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self { listen: "127.0.0.1:9300".into() }
    }
}

/// The Prometheus listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address `GET /metrics` is served on.
    pub listen: SocketAddr,
    /// How often `validator_ml_node_up` is refreshed from the node pool, in milliseconds.
    #[serde(with = "duration_ms")]
    pub refresh_interval: Duration,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            refresh_interval: Duration::from_secs(5),
        }
    }
}

/// Who this validator is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdentityConfig {
    /// The participant's bech32 account address.
    pub account_address: String,
    /// File holding the account key (64 hex digits, mode 0600; `validator keys import` writes
    /// it). Its address must be `account_address`. Not needed with a warm key: keep the
    /// account's cold key off the server then.
    pub key_file: PathBuf,
    /// File holding a warm key (the same format) the account granted `MsgValidation` and
    /// `MsgClaimRewards` (and, with `chain.tx.fee_granter`, a feegrant allowance); when set it
    /// signs instead of the account key.
    pub warm_key_file: Option<PathBuf>,
    /// Blocks watched at start, before anything is sent, for a transaction of the signing key
    /// this node did not send (another process holding the same key): the node refuses to start
    /// (exit 78) when one appears. 0 skips the check.
    pub guard_blocks: u64,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            account_address: String::new(),
            key_file: PathBuf::new(),
            warm_key_file: None,
            guard_blocks: 10,
        }
    }
}

/// Log output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `pretty` (human-readable, coloured on a terminal) or `json` (one object per line).
    pub format: LogFormat,
    /// Filter directives used when `RUST_LOG` is unset (`info`, `validator_core=debug`, ...).
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: LogFormat::Pretty, filter: "info".into() }
    }
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// TLS of every outbound connection: chain RPC and websocket, executors and ML nodes.
/// `https` (and `wss`) URLs are verified against the public roots (Mozilla's, built in; the OS
/// certificate store is not read), plus the CA file's certificates when one is set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// A PEM file of one or more CA certificates to trust as well, for endpoints under a private
    /// PKI. Unset trusts the public roots only.
    pub ca_file: Option<PathBuf>,
}

impl TlsConfig {
    /// Reads the CA file, if one is set, and builds the client TLS configuration every adapter
    /// is given; a missing or unusable file is an error naming it.
    pub fn client_tls(&self) -> Result<tls::ClientTls, ConfigError> {
        let Some(path) = &self.ca_file else {
            return tls::ClientTls::public().map_err(|err| ConfigError(format!("tls: {err}")));
        };
        let bad = |why: String| ConfigError(format!("`tls.ca_file`: {}: {why}", path.display()));
        let pem = std::fs::read(path).map_err(|err| bad(format!("cannot be read: {err}")))?;
        tls::ClientTls::with_ca_pem(&pem).map_err(|err| bad(err.to_string()))
    }
}

/// A configuration that cannot be used, with the key at fault where known.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid configuration: {}", self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Settings {
    /// Merges the defaults, `file` (if given; it must exist) and the `VALIDATOR_` environment,
    /// validates, and checks the CA file (`tls.ca_file`). Reads nothing else and binds nothing.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(file) = file {
            if !file.is_file() {
                return Err(ConfigError(format!("no configuration file at {}", file.display())));
            }
            figment = figment.merge(Toml::file_exact(file));
        }
        figment = figment.merge(
            Env::prefixed(ENV_PREFIX).split("__").filter(|key| names_a_setting(key.as_str())),
        );
        let settings = Self::from_figment(&figment)?;
        settings.tls.client_tls()?;
        Ok(settings)
    }

    /// Environment variables under the `VALIDATOR_` prefix whose first level names no setting
    /// (`VALIDATOR_PORT`, as a Kubernetes Service named `validator` injects): [`Settings::load`]
    /// ignores them, so the caller can warn. An unknown key under a known section is still an
    /// error.
    pub fn ignored_environment() -> Vec<String> {
        let mut names: Vec<String> = std::env::vars_os()
            .filter_map(|(name, _)| name.into_string().ok())
            .filter(|name| name.strip_prefix(ENV_PREFIX).is_some_and(|rest| !names_a_setting(rest)))
            .collect();
        names.sort();
        names
    }

    /// Parses settings from TOML text alone (defaults for the rest), then validates; reads no
    /// file.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let figment =
            Figment::from(Serialized::defaults(Settings::default())).merge(Toml::string(text));
        Self::from_figment(&figment)
    }

    fn from_figment(figment: &Figment) -> Result<Self, ConfigError> {
        let settings: Settings = figment.extract().map_err(|err| {
            let messages: Vec<String> = err.into_iter().map(describe).collect();
            ConfigError(messages.join("; "))
        })?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks every section, naming the first bad key with its section prefix.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.core.validate().map_err(|err| ConfigError(format!("core: {err}")))?;
        self.ml.validate().map_err(|err| ConfigError(format!("ml: {err}")))?;
        self.chain.validate().map_err(|err| ConfigError(format!("chain: {err}")))?;
        self.storage.validate().map_err(|err| ConfigError(err.to_string()))?;
        // The engine's bound on a fetch is a backstop that counts against the executor: the
        // payload source's own deadline, which tells its chain lookups from the executor's
        // answer, must end first.
        if self.chain.payloads.timeout > self.core.payload_timeout {
            return Err(ConfigError(
                "`chain.payloads.timeout`: allowed is at most `core.payload_timeout`".into(),
            ));
        }
        crate::service::listen_address(&self.service.listen)
            .map_err(|err| ConfigError(format!("`service.listen`: {err}")))?;
        if self.dry_run && self.storage.backend != journal::Backend::Sqlite {
            return Err(ConfigError(
                "`dry_run`: allowed only with `storage.backend = \"sqlite\"`: on a shared \
                 journal a dry run would take work from the real replicas"
                    .into(),
            ));
        }
        if self.shutdown_grace.is_zero() {
            return Err(ConfigError("`shutdown_grace`: allowed is a positive duration".into()));
        }
        if self.admin.body_limit_bytes == 0 {
            return Err(ConfigError("`admin.body_limit_bytes`: allowed is at least 1".into()));
        }
        if self.metrics.refresh_interval.is_zero() {
            return Err(ConfigError(
                "`metrics.refresh_interval`: allowed is a positive duration".into(),
            ));
        }
        if self.log.filter.parse::<tracing_subscriber::EnvFilter>().is_err() {
            return Err(ConfigError(
                "`log.filter`: allowed is tracing filter directives such as `info`".into(),
            ));
        }
        Ok(())
    }

    /// Checks what only `validator run` needs: an identity.
    pub fn validate_for_run(&self) -> Result<(), ConfigError> {
        if self.identity.account_address.is_empty() {
            return Err(ConfigError(
                "`identity.account_address`: allowed is the participant's bech32 address".into(),
            ));
        }
        if self.identity.key_file.as_os_str().is_empty() && self.identity.warm_key_file.is_none() {
            return Err(ConfigError(
                "`identity.key_file`: allowed is the path of a key file (`validator keys \
                 import` writes one); it may be left out only with `identity.warm_key_file`"
                    .into(),
            ));
        }
        Ok(())
    }

    /// The settings as TOML. They hold no secret (see the module docs); key and token files
    /// appear by path only.
    pub fn to_toml(&self) -> anyhow::Result<String> {
        let mut shown = self.clone();
        if let Some(url) = &mut shown.storage.url {
            *url = journal::redact(url);
        }
        Ok(toml::to_string(&shown)?)
    }

    /// Where the admin token is kept.
    pub fn token_file(&self) -> PathBuf {
        self.admin.token_file.clone().unwrap_or_else(|| self.data_dir.join("admin.token"))
    }
}

fn describe(err: figment::Error) -> String {
    let key = err.path.join(".");
    let hint = if key.ends_with("timeout")
        || key.ends_with("interval")
        || key.ends_with("_ttl")
        || key.ends_with("grace")
        || key.ends_with("cooldown_base")
        || key.ends_with("cooldown_max")
        || key.ends_with("jitter_min")
        || key.ends_with("jitter_max")
        || key.ends_with("claim_wait")
    {
        " (durations are whole milliseconds)"
    } else {
        ""
    };
    if key.is_empty() {
        format!("{}{hint}", err.kind)
    } else {
        format!("`{key}`: {}{hint}", err.kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_round_trip_through_toml() {
        let text = Settings::default().to_toml().unwrap();
        assert_eq!(Settings::from_toml(&text).unwrap(), Settings::default());
    }

    #[test]
    fn the_environment_filter_knows_every_top_level_setting() {
        let value = toml::Value::try_from(Settings::default()).unwrap();
        let mut keys: Vec<&str> = value.as_table().unwrap().keys().map(String::as_str).collect();
        let mut known = TOP_LEVEL.to_vec();
        keys.sort_unstable();
        known.sort_unstable();
        assert_eq!(keys, known);
        assert!(names_a_setting("CORE__SLOTS") && names_a_setting("core.slots"));
        assert!(names_a_setting("DATA_DIR"));
        assert!(!names_a_setting("PORT") && !names_a_setting("SERVICE_HOST"));
        assert!(!names_a_setting("PORT_8080_TCP__ADDR"));
    }

    #[test]
    fn absurd_sizes_are_refused() {
        for text in [
            "[core]\nslots = 100000000000",
            "[core]\nlive_capacity = 100000000000",
            "[storage]\npool_size = 100000",
            "[storage]\nqueue_capacity = 100000000000",
        ] {
            assert!(Settings::from_toml(text).is_err(), "{text}");
        }
    }

    #[test]
    fn bad_values_name_their_key() {
        for (text, needle) in [
            ("[core]\nslotz = 3", "slotz"),
            ("[core]\nslots = -3", "core.slots"),
            ("[core]\nslots = 0", "slots"),
            ("[core]\nreplay_timeout = \"5m\"", "core.replay_timeout"),
            ("[ml]\nrequest_timeout = 0", "request_timeout"),
            ("[chain.payloads]\ntimeout = 60000", "chain.payloads.timeout"),
        ] {
            let err = Settings::from_toml(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }
}
