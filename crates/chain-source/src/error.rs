//! The crate's error type.

/// Errors of the chain adapter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A configuration value is out of range.
    #[error("invalid config value for `{key}`: expected {allowed}")]
    InvalidConfig {
        /// The offending key.
        key: String,
        /// What is allowed.
        allowed: &'static str,
    },
    /// The chain has no such record.
    #[error("not found: {0}")]
    NotFound(String),
    /// A call did not finish in time.
    #[error("{0} timed out")]
    Timeout(String),
    /// The connection failed.
    #[error("transport error: {0}")]
    Transport(String),
    /// The peer answered with an unexpected HTTP status.
    #[error("status {status}: {body}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// A short excerpt of the body.
        body: String,
    },
    /// An answer, frame or event could not be decoded.
    #[error("malformed answer: {0}")]
    Decode(String),
    /// An answer or frame exceeded its size cap.
    #[error("answer larger than {limit} bytes")]
    TooLarge {
        /// The cap.
        limit: u64,
    },
    /// The node answered a JSON-RPC call with an error object.
    #[error("rpc error: {0}")]
    Rpc(String),
    /// The node refused an `abci_query` with a non-zero code.
    #[error("query refused with code {code} ({codespace}): {log}")]
    Query {
        /// The ABCI code.
        code: u32,
        /// The module that raised it.
        codespace: String,
        /// A short excerpt of the node's log line.
        log: String,
    },
    /// Key material is unusable.
    #[error("bad key: {0}")]
    Key(String),
    /// A signature did not verify.
    #[error("bad signature")]
    BadSignature,
    /// A URL was refused by the outbound address guard.
    #[error("refused address: {0}")]
    Refused(String),
    /// The chain rejected a transaction.
    #[error("transaction rejected with code {code}: {log}")]
    TxRejected {
        /// The ABCI code.
        code: u32,
        /// The node's log line.
        log: String,
    },
    /// The chain already holds this validator's validation of the inference
    /// (`ErrDuplicateValidation`, code 1143 of the `inference` codespace).
    #[error("duplicate validation: {0}")]
    DuplicateValidation(String),
    /// The node keeps no transaction index (`tx_index = "null"`): no transaction can be looked
    /// up by hash.
    #[error("the node's transaction index is disabled (tx_index)")]
    TxIndexDisabled,
    /// The chain refuses the message type as deprecated (`ErrDeprecated`, code 1161 of the
    /// `inference` codespace): classic validation is retired.
    #[error("message type deprecated: {0}")]
    Deprecated(String),
    /// The client is a dry run and broadcasts nothing; the message names what was not sent.
    #[error("dry run: {0} not sent")]
    DryRun(&'static str),
}

/// The crate's result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;
