//! The ports: the traits through which the engine reaches the outside world.
//!
//! Every port is object-safe (`async_trait`), so adapters are chosen at run time and plugged in
//! behind `Arc<dyn Port>`. Every call may be dropped mid-flight: the engine bounds each call with a
//! timeout and drops the future on shutdown, so implementations must be cancel-safe.

pub mod chain;
pub mod journal;
pub mod lease;
pub mod ml_node;
pub mod model_lock;
pub mod payload_source;

pub use chain::ChainClient;
pub use journal::{Journal, NoJournal};
pub use lease::{Leases, SingleReplica};
pub use ml_node::MlNodeClient;
pub use model_lock::ModelLockBroker;
pub use payload_source::PayloadSource;
