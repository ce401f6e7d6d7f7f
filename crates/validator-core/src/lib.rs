//! The bounded validation engine of a decentralized inference network's validator: it replays
//! other participants' inferences on our own ML nodes and reports the results to the chain.
//!
//! Layout:
//! - [`ports`]: the traits adapters implement (chain, payload source, model-lock broker, ML
//!   node, journal), with the domain types they speak in;
//! - [`Engine`]: the entry points (`sample`, `revalidate`, `validate`, `recover`, `outcomes`,
//!   `status`, `shutdown`) over
//!   one process-wide slot limiter with priority lanes, an in-flight dedup set and a recovery
//!   guard;
//! - [`completion`], [`scoring`] and [`sampling`]: pure functions, bit-compatible with the
//!   upstream Go implementation ([`go_json`] writes JSON as Go does);
//! - `testing` (feature `test-util`): in-memory fakes of every port.
//!
//! The crate performs no I/O of its own: every outside effect goes through a port.

pub mod completion;
pub mod config;
pub mod devshard;
mod engine;
pub mod error;
pub mod go_json;
pub mod outcome;
pub mod ports;
pub mod recovery;
pub mod sampling;
mod scheduler;
pub mod scoring;
mod sync;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;

pub use config::{Config, RetryPolicy};
pub use engine::{
    DevshardTicket, Engine, EngineStatus, LaneStatus, PipelineStatus, Ports, ShutdownReport,
};
pub use error::{Error, Result};
pub use outcome::{
    InvalidationReason, Lane, Outcome, OutcomeCounts, OutcomeEvent, OutcomeKind, SkipReason, Stage,
};
pub use recovery::{RecoveryStart, RunHandle, RunReport, RunState, Trigger};
pub use scheduler::Admission;
