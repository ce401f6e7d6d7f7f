//! The crate's error type.

/// Errors of the engine's entry points.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A configuration value is out of range.
    #[error("invalid config value for `{key}`: expected {allowed}")]
    InvalidConfig {
        /// The offending key.
        key: &'static str,
        /// What is allowed.
        allowed: &'static str,
    },
    /// The engine is shutting down and admits nothing more.
    #[error("engine is shutting down")]
    ShuttingDown,
    /// The lane holds as much unfinished work as it may; the work was not admitted.
    #[error("{lane} lane is full")]
    LaneFull {
        /// The full lane.
        lane: crate::Lane,
    },
    /// The sampling intake queue is full; the ids were not admitted.
    #[error("sampling intake is full")]
    IntakeFull,
    /// No ML node serves the model of a devshard job; it was not admitted.
    #[error("no ML node serves model {0}")]
    ModelNotServed(String),
    /// The chain no longer accepts classic validations; classic work is not admitted.
    #[error("classic validation is retired on this chain: {0}")]
    ProtocolRetired(String),
}

/// The crate's result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;
