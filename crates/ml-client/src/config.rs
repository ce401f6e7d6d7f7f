//! The crate's configuration. Plain serde data: only the binary knows where it comes from.

use std::{collections::HashSet, time::Duration};

use serde::{Deserialize, Serialize};

/// Configuration of the [`HttpMlNodeClient`](crate::HttpMlNodeClient), the
/// [`NodePool`](crate::NodePool) and the [`NodeManagerBroker`](crate::NodeManagerBroker).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where leases on ML nodes come from: the local `nodes` pool, or the API node's
    /// NodeManager (`node_manager.url`).
    pub broker: Broker,
    /// The ML nodes leases are taken on with the `pool` broker. Empty means no model is served.
    pub nodes: Vec<NodeConfig>,
    /// Bound of one replay, from connecting until the last byte of the answer, in milliseconds.
    /// Upstream's shared client uses 5 min (DOMAIN.md 2.6).
    #[serde(with = "validator_core::config::duration_ms")]
    pub request_timeout: Duration,
    /// Bound of establishing a connection to a node, the TLS handshake included, in milliseconds,
    /// within `request_timeout`.
    #[serde(with = "validator_core::config::duration_ms")]
    pub connect_timeout: Duration,
    /// Largest answer body accepted, in bytes; a longer one is refused while it is read.
    pub max_response_bytes: u64,
    /// Per-node health tracking and the optional background probe.
    pub health: HealthConfig,
    /// The API node's NodeManager, the broker of the live path's leases.
    pub node_manager: NodeManagerConfig,
}

/// Which broker hands out leases on ML nodes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Broker {
    /// The local [`NodePool`](crate::NodePool) over `nodes`.
    #[default]
    Pool,
    /// The API node's NodeManager, shared with its own inference traffic
    /// ([`NodeManagerBroker`](crate::NodeManagerBroker)).
    NodeManager,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            nodes: Vec::new(),
            request_timeout: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(10),
            // A completion of 5000 tokens with 20 top logprobs each is a few MiB; 64 MiB leaves
            // room for larger answers while bounding what one replay may hold in memory.
            max_response_bytes: 64 * 1024 * 1024,
            health: HealthConfig::default(),
            node_manager: NodeManagerConfig::default(),
            broker: Broker::Pool,
        }
    }
}

/// One ML node (a vLLM-based inference server).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Stable identifier of the node, unique in the pool; used in logs, metrics and status.
    pub id: String,
    /// Base URL of the node's inference server, `http://host:port` (or `https://`).
    pub url: String,
    /// Models the node serves, by name (as the chain's inference records name them).
    pub models: Vec<String>,
    /// Replays the node takes at once (upstream's `MaxConcurrent`). At least 1.
    pub max_concurrent: usize,
    /// Node version path segment, inserted as `/{version}` after the URL; left out when empty.
    #[serde(default)]
    pub version: String,
    /// Inference path segment (upstream's `inference_segment`), appended after the version.
    #[serde(default)]
    pub segment: String,
}

impl NodeConfig {
    /// A node with no version or segment.
    pub fn new(id: &str, url: &str, models: &[&str], max_concurrent: usize) -> Self {
        Self {
            id: id.to_owned(),
            url: url.to_owned(),
            models: models.iter().map(|m| (*m).to_owned()).collect(),
            max_concurrent,
            version: String::new(),
            segment: String::new(),
        }
    }

    /// The base the replay is posted under (`{base}/v1/chat/completions`):
    /// `{url}/{version}{segment}`, or `{url}{segment}` when the version is empty, as upstream's
    /// `InferenceUrlWithVersion` builds it.
    pub fn base_url(&self) -> String {
        let mut base = self.url.trim_end_matches('/').to_owned();
        let version = self.version.trim_matches('/');
        if !version.is_empty() {
            base.push('/');
            base.push_str(version);
        }
        let segment = self.segment.trim_matches('/');
        if !segment.is_empty() {
            base.push('/');
            base.push_str(segment);
        }
        base
    }
}

/// Per-node health: consecutive failures take a node out of rotation for a cool-down that
/// doubles with each further failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthConfig {
    /// Consecutive failed calls (timeouts, transport errors, 5xx) that mark a node down.
    /// At least 1.
    pub failure_threshold: u32,
    /// Cool-down after reaching the threshold, in milliseconds; doubled for each further
    /// failure.
    #[serde(with = "validator_core::config::duration_ms")]
    pub cooldown_base: Duration,
    /// Longest cool-down, in milliseconds.
    #[serde(with = "validator_core::config::duration_ms")]
    pub cooldown_max: Duration,
    /// Path of each node's health endpoint, relative to its `url` (e.g. `/health`). Unset turns
    /// the background probe off.
    pub probe_path: Option<String>,
    /// Time between two probe rounds, in milliseconds.
    #[serde(with = "validator_core::config::duration_ms")]
    pub probe_interval: Duration,
    /// Bound of one probe request, in milliseconds.
    #[serde(with = "validator_core::config::duration_ms")]
    pub probe_timeout: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            // Three in a row rules out a single unlucky request while still reacting within
            // seconds when a node dies under load.
            failure_threshold: 3,
            cooldown_base: Duration::from_secs(10),
            // A node that stays down is retried every 5 min at most, the length of one replay.
            cooldown_max: Duration::from_secs(300),
            probe_path: None,
            probe_interval: Duration::from_secs(10),
            probe_timeout: Duration::from_secs(2),
        }
    }
}

/// The API node's NodeManager gRPC service (LIVE-NETWORK.md 2.2 item 3), which hands out locks
/// on the ML nodes the API node owns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeManagerConfig {
    /// The service's URL, `http://host:port` (upstream's compose network serves it on port 9400,
    /// without TLS). Unset: no NodeManager.
    pub url: Option<String>,
    /// Bound of each call (acquire, release, capacity listing), in milliseconds, connecting
    /// included. Upstream bounds each acquire by 2 s.
    #[serde(with = "validator_core::config::duration_ms")]
    pub timeout: Duration,
    /// Time between two capacity listings, in milliseconds. Upstream polls every 5 s.
    #[serde(with = "validator_core::config::duration_ms")]
    pub capacity_refresh: Duration,
}

impl Default for NodeManagerConfig {
    fn default() -> Self {
        Self {
            url: None,
            timeout: Duration::from_secs(2),
            capacity_refresh: Duration::from_secs(5),
        }
    }
}

impl Config {
    /// Checks the values, naming the first bad one.
    pub fn validate(&self) -> crate::Result<()> {
        let bad =
            |key: String, allowed: &'static str| Err(crate::Error::InvalidConfig { key, allowed });
        let mut ids = HashSet::new();
        for (index, node) in self.nodes.iter().enumerate() {
            let key = |field: &str| format!("nodes[{index}].{field}");
            if node.id.is_empty() {
                return bad(key("id"), "a non-empty string");
            }
            if !ids.insert(node.id.as_str()) {
                return bad(key("id"), "an id no other node has");
            }
            if let Err(allowed) = check_url(&node.url) {
                return bad(key("url"), allowed);
            }
            if node.models.is_empty() || node.models.iter().any(String::is_empty) {
                return bad(key("models"), "at least one non-empty model name");
            }
            if node.max_concurrent == 0 || node.max_concurrent > 100_000 {
                return bad(key("max_concurrent"), "1 to 100000");
            }
        }
        for (key, timeout) in [
            ("request_timeout", self.request_timeout),
            ("connect_timeout", self.connect_timeout),
            ("health.cooldown_base", self.health.cooldown_base),
            ("health.probe_interval", self.health.probe_interval),
            ("health.probe_timeout", self.health.probe_timeout),
            ("node_manager.timeout", self.node_manager.timeout),
            ("node_manager.capacity_refresh", self.node_manager.capacity_refresh),
        ] {
            if timeout.is_zero() {
                return bad(key.to_owned(), "a positive duration");
            }
        }
        if self.max_response_bytes == 0 {
            return bad("max_response_bytes".to_owned(), "at least 1");
        }
        if self.health.failure_threshold == 0 {
            return bad("health.failure_threshold".to_owned(), "at least 1");
        }
        if self.health.cooldown_max < self.health.cooldown_base {
            return bad("health.cooldown_max".to_owned(), "at least health.cooldown_base");
        }
        if let Some(path) = &self.health.probe_path {
            if !path.starts_with('/') {
                return bad("health.probe_path".to_owned(), "a path starting with `/`");
            }
        }
        if self.broker == Broker::NodeManager && self.node_manager.url.is_none() {
            return bad("node_manager.url".to_owned(), "a URL when `broker` is `node_manager`");
        }
        if let Some(url) = &self.node_manager.url {
            if let Err(allowed) = check_url(url) {
                return bad("node_manager.url".to_owned(), allowed);
            }
            if !url.starts_with("http://") {
                return bad(
                    "node_manager.url".to_owned(),
                    "an http:// URL (the service has no TLS)",
                );
            }
        }
        Ok(())
    }
}

/// Checks an ML node's base URL: absolute, `http` or `https`, with a host, without query or
/// fragment. On failure, what is allowed.
pub(crate) fn check_url(url: &str) -> Result<(), &'static str> {
    let parsed = reqwest::Url::parse(url).map_err(|_| "an absolute http:// or https:// URL")?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err("an http:// or https:// URL");
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("a URL with a host");
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err("a URL without query or fragment");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> NodeConfig {
        NodeConfig::new("a", "http://10.0.0.1:5000", &["m"], 4)
    }

    #[test]
    fn defaults_are_upstreams_and_valid() {
        let config = Config::default();
        config.validate().unwrap();
        assert_eq!(config.request_timeout, Duration::from_secs(300));
        assert_eq!(config.max_response_bytes, 64 * 1024 * 1024);
        assert_eq!(config.health.probe_path, None);
    }

    #[test]
    fn base_url_leaves_the_version_out_when_empty() {
        let mut node = node();
        assert_eq!(node.base_url(), "http://10.0.0.1:5000");
        node.segment = "/api/v1".into();
        assert_eq!(node.base_url(), "http://10.0.0.1:5000/api/v1");
        node.version = "v3.0.8".into();
        assert_eq!(node.base_url(), "http://10.0.0.1:5000/v3.0.8/api/v1");
        node.segment = String::new();
        node.url = "http://10.0.0.1:5000/".into();
        assert_eq!(node.base_url(), "http://10.0.0.1:5000/v3.0.8");
    }

    #[test]
    fn bad_values_name_their_key() {
        type Change = fn(&mut Config);
        let cases: [(Change, &str); 14] = [
            (|c| c.nodes[0].max_concurrent = 0, "nodes[0].max_concurrent"),
            (|c| c.nodes[0].url = "10.0.0.1:5000".into(), "nodes[0].url"),
            (|c| c.nodes[0].url = "ftp://10.0.0.1".into(), "nodes[0].url"),
            (|c| c.nodes[0].url = "not a url".into(), "nodes[0].url"),
            (|c| c.nodes[0].models.clear(), "nodes[0].models"),
            (|c| c.nodes.push(node()), "nodes[1].id"),
            (|c| c.request_timeout = Duration::ZERO, "request_timeout"),
            (|c| c.max_response_bytes = 0, "max_response_bytes"),
            (|c| c.health.failure_threshold = 0, "health.failure_threshold"),
            (|c| c.health.cooldown_max = Duration::from_millis(1), "health.cooldown_max"),
            (|c| c.health.probe_path = Some("health".into()), "health.probe_path"),
            (|c| c.node_manager.url = Some("https://dapi:9400".into()), "node_manager.url"),
            (|c| c.node_manager.url = Some("dapi:9400".into()), "node_manager.url"),
            (|c| c.node_manager.timeout = Duration::ZERO, "node_manager.timeout"),
        ];
        for (change, key) in cases {
            let mut config = Config { nodes: vec![node()], ..Config::default() };
            config.node_manager.url = Some("http://dapi:9400".into());
            config.validate().unwrap();
            change(&mut config);
            let err = config.validate().unwrap_err();
            assert!(err.to_string().contains(&format!("`{key}`")), "{key}: {err}");
        }
    }

    #[test]
    fn durations_are_milliseconds_and_unknown_keys_are_refused() {
        let config: Config = serde_json::from_str(
            r#"{"request_timeout": 1500, "nodes": [{"id": "a", "url": "http://h:1",
                "models": ["m"], "max_concurrent": 2, "version": "v1"}],
                "health": {"probe_path": "/health"}}"#,
        )
        .unwrap();
        assert_eq!(config.request_timeout, Duration::from_millis(1500));
        assert_eq!(config.nodes[0].version, "v1");
        assert_eq!(config.health.failure_threshold, 3);
        config.validate().unwrap();

        let err = serde_json::from_str::<Config>(r#"{"timeout": 3}"#).unwrap_err();
        assert!(err.to_string().contains("timeout"), "{err}");
        let err = serde_json::from_str::<Config>(
            r#"{"nodes": [{"id": "a", "url": "http://h:1", "models": [], "max_concurent": 1}]}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("max_concurent"), "{err}");
    }
}
