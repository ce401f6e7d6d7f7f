//! The crate's error type: what can go wrong building the client, the pool or the NodeManager
//! broker, and the NodeManager's failures before they become the port's
//! [`LockError`](validator_core::ports::model_lock::LockError). Failures of a replay are the
//! port's [`ReplayError`](validator_core::ports::ml_node::ReplayError).

use std::time::Duration;

/// Errors of the crate's adapters.
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
    /// The NodeManager broker was built outside a Tokio runtime.
    #[error("the NodeManager broker must be built within a Tokio runtime")]
    NoRuntime,
    /// The NodeManager did not answer within the call timeout.
    #[error("NodeManager {call} timed out after {timeout:?}")]
    Timeout {
        /// The RPC, e.g. `AcquireMLNode`.
        call: &'static str,
        /// The bound that ran out.
        timeout: Duration,
    },
    /// The NodeManager answered a call with an error status, or could not be reached.
    #[error("NodeManager {call} failed: {code:?}: {message}")]
    Rpc {
        /// The RPC, e.g. `AcquireMLNode`.
        call: &'static str,
        /// The gRPC status code.
        code: tonic::Code,
        /// The status message.
        message: String,
    },
    /// The NodeManager granted a lock on a node whose endpoint is no absolute `http` or `https`
    /// URL without query or fragment; the lock was given back at once.
    #[error(
        "NodeManager answered a malformed endpoint {endpoint:?} for node {node_id:?}: \
         expected {allowed}"
    )]
    BadEndpoint {
        /// The node the lock was on.
        node_id: String,
        /// The endpoint as answered.
        endpoint: String,
        /// What is allowed.
        allowed: &'static str,
    },
}

impl Error {
    /// `status`, the answer to `call`, as an [`Error::Rpc`].
    pub(crate) fn rpc(call: &'static str, status: &tonic::Status) -> Self {
        Error::Rpc { call, code: status.code(), message: status.message().to_owned() }
    }
}

/// The crate's result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;
