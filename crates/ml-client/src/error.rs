//! The crate's error type: what can go wrong building the client or the pool. Failures of a
//! replay are the port's [`ReplayError`](validator_core::ports::ml_node::ReplayError).

/// Errors of building the [`HttpMlNodeClient`](crate::HttpMlNodeClient) or the
/// [`NodePool`](crate::NodePool).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is out of range.
    #[error("invalid config value for `{key}`: expected {allowed}")]
    InvalidConfig {
        /// The offending key, e.g. `nodes[2].max_concurrent`.
        key: String,
        /// What is allowed.
        allowed: &'static str,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client")]
    Client(#[source] reqwest::Error),
}

/// The crate's result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;
