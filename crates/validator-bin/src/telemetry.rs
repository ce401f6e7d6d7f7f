//! Logs and metrics: the tracing subscriber, and the Prometheus recorder with its own listener.

use std::{
    io::IsTerminal as _,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use anyhow::Context;
use axum::{routing::get, Router};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use ml_client::{Availability, NodeManagerBroker, NodePool};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use crate::{
    health::{ml_reachable, ChainProgress},
    settings::LogFormat,
};

/// Installs the global tracing subscriber on stderr: `RUST_LOG` if set, else `default_filter`;
/// human-readable (coloured on a terminal) or JSON lines. A second call does nothing.
pub fn init_logs(format: LogFormat, default_filter: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(default_filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Pretty => builder.with_ansi(std::io::stderr().is_terminal()).try_init(),
    };
}

/// Bucket bounds of every `*_seconds` histogram: from 1 ms to 10 min, covering a payload fetch
/// on loopback as well as a replay at its upstream 5-minute bound.
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
    600.0,
];

/// A metric's kind, for its description.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every metric the node exports, with the `# HELP` line it is scraped with.
const METRICS: &[(Kind, &str, &str)] = &[
    (Kind::Gauge, "validator_build_info", "Always 1; version, commit and build date as labels."),
    (Kind::Gauge, "validator_replica_info", "Always 1; this replica's id and journal backend."),
    (Kind::Gauge, "validator_chain_height", "The last block seen."),
    (Kind::Gauge, "validator_chain_block_age_seconds", "Seconds since the last block arrived."),
    (Kind::Gauge, "validator_epoch", "The current epoch, by the chain's epoch schedule."),
    (Kind::Counter, "validator_dry_run_messages_total", "Messages a dry run did not send."),
    (Kind::Gauge, "validator_ml_reachable", "1 while an ML node (or the NodeManager) answers."),
    (Kind::Gauge, "validator_slots_capacity", "Slots of each stage (gpu, network)."),
    (Kind::Gauge, "validator_slots_in_use", "Slots of each stage held now."),
    (Kind::Gauge, "validator_fetch_slots_in_use", "Network-stage slots fetching payloads now."),
    (Kind::Gauge, "validator_queue_depth", "Validations waiting in each lane."),
    (Kind::Gauge, "validator_buffer_payloads", "Verified payloads waiting for a GPU slot."),
    (Kind::Gauge, "validator_buffer_bytes", "Bytes of verified payloads waiting for a GPU slot."),
    (Kind::Counter, "validator_buffer_expired_total", "Buffered payloads fetched again: too old."),
    (Kind::Histogram, "validator_lane_wait_seconds", "Wait from admission to a slot, per lane."),
    (Kind::Histogram, "validator_stage_duration_seconds", "Duration of each validation stage."),
    (Kind::Counter, "validator_outcomes_total", "Terminal outcomes of validations, per kind."),
    (Kind::Counter, "validator_retries_total", "Retries scheduled, per stage."),
    (Kind::Counter, "validator_intake_failures_total", "Validations the engine could not admit."),
    (Kind::Counter, "validator_payload_failures_total", "Payload fetches that failed, per cause."),
    (
        Kind::Counter,
        "validator_gpu_idle_slot_microseconds_total",
        "GPU slot time spent idle while work was queued.",
    ),
    (Kind::Counter, "validator_recovery_runs_total", "Recovery runs ended, per state."),
    (Kind::Counter, "validator_validation_tx_total", "MsgValidation transactions, per result."),
    (Kind::Counter, "validator_tx_lookup_failures_total", "Failed lookups of sent transactions."),
    (Kind::Gauge, "validator_classic_retired", "1 once the chain refused classic MsgValidation."),
    (Kind::Counter, "validator_claims_total", "Reward claims, per result."),
    (Kind::Gauge, "validator_claim_state", "1 for each kept epoch's claim state, 0 for the rest."),
    (Kind::Gauge, "validator_unclaimed_ngonka", "Rewards of the epoch being claimed, in ngonka."),
    (Kind::Gauge, "validator_ml_node_up", "1 while an ML node is reachable, per node."),
    (Kind::Counter, "validator_lock_waits_total", "Devshard replays that waited for a lock."),
    (Kind::Gauge, "validator_node_manager_locks_held", "NodeManager locks held now."),
    (Kind::Gauge, "validator_node_manager_lock_waits", "Replays waiting for a NodeManager lock."),
    (Kind::Counter, "validator_node_manager_acquires_total", "NodeManager locks acquired."),
    (Kind::Counter, "validator_node_manager_rejections_total", "NodeManager acquires refused."),
    (Kind::Counter, "validator_node_manager_releases_total", "NodeManager locks released."),
    (
        Kind::Counter,
        "validator_node_manager_release_failures_total",
        "NodeManager releases that failed.",
    ),
    (
        Kind::Counter,
        "validator_node_manager_listing_failures_total",
        "NodeManager node listings that failed.",
    ),
    (Kind::Counter, "validator_service_calls_total", "Validation service calls, per status."),
    (Kind::Counter, "validator_devshard_verdicts_total", "Devshard verdicts, per reason."),
    (Kind::Counter, "validator_journal_dropped_total", "History entries a full queue dropped."),
    (Kind::Gauge, "validator_leader", "1 while this replica holds the leader lease."),
    (Kind::Gauge, "validator_leases_held", "Validation leases this replica holds."),
    (Kind::Counter, "validator_lease_takeovers_total", "Expired leases taken over."),
    (Kind::Counter, "validator_leases_lost_total", "Leases that lapsed before renewal."),
    (Kind::Counter, "validator_leader_takeovers_total", "Times this replica became leader."),
];

/// Gives every metric of [`METRICS`] its help text.
fn describe_metrics() {
    for &(kind, name, help) in METRICS {
        match kind {
            Kind::Counter => metrics::describe_counter!(name, help),
            Kind::Gauge => metrics::describe_gauge!(name, help),
            Kind::Histogram => metrics::describe_histogram!(name, help),
        }
    }
}

static RECORDER: OnceLock<PrometheusHandle> = OnceLock::new();
static INSTALL: Mutex<()> = Mutex::new(());

/// The process-wide Prometheus recorder, installed on first use. Every app in the process
/// shares it (the `metrics` facade has one global recorder).
pub fn recorder() -> anyhow::Result<PrometheusHandle> {
    if let Some(handle) = RECORDER.get() {
        return Ok(handle.clone());
    }
    let _installing = INSTALL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(handle) = RECORDER.get() {
        return Ok(handle.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
        .context("histogram buckets")?
        .install_recorder()
        .context("installing the metrics recorder")?;
    let handle = RECORDER.get_or_init(|| handle).clone();
    describe_metrics();
    metrics::gauge!(
        "validator_build_info",
        "version" => env!("CARGO_PKG_VERSION"),
        "commit" => crate::GIT_COMMIT,
        "built" => crate::BUILD_DATE,
    )
    .set(1.0);
    Ok(handle)
}

/// Serves `GET /metrics` (Prometheus text) on `listener` until `cancel` fires, and refreshes
/// `validator_ml_node_up{node}` from `pool` and the chain's block age from `chain` every
/// `refresh` (also running the recorder's upkeep, which drains histogram samples).
pub async fn serve_metrics(
    listener: TcpListener,
    handle: PrometheusHandle,
    gauges: Gauges,
    refresh: Duration,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let render = handle.clone();
    let router = Router::new().route("/metrics", get(move || std::future::ready(render.render())));
    let refresher = {
        let cancel = cancel.clone();
        async move {
            let mut tick = tokio::time::interval(refresh);
            loop {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    _ = tick.tick() => {}
                }
                gauges.record();
                handle.run_upkeep();
            }
        }
    };
    let server = axum::serve(listener, router).with_graceful_shutdown(cancel.cancelled_owned());
    let (served, ()) = tokio::join!(async move { server.await }, refresher);
    served
}

/// What the metrics listener reads again every `metrics.refresh_interval`.
pub struct Gauges {
    /// The ML node pool: `validator_ml_node_up{node}`.
    pub pool: NodePool,
    /// The NodeManager broker, when leases come from it.
    pub node_manager: Option<NodeManagerBroker>,
    /// How old the NodeManager's listing may be for the ML side to count as reachable.
    pub ml_stale_after: Duration,
    /// The chain as followed: `validator_chain_block_age_seconds`.
    pub chain: Arc<ChainProgress>,
}

impl Gauges {
    /// Sets the node, reachability and chain gauges from their sources now.
    pub fn record(&self) {
        record_nodes(&self.pool);
        let reachable =
            ml_reachable(&self.pool, self.node_manager.as_ref(), self.ml_stale_after).is_ok();
        metrics::gauge!("validator_ml_reachable").set(if reachable { 1.0 } else { 0.0 });
        self.chain.report();
    }
}

/// Gives the series the alert rules (deploy/prometheus/alerts.yml) read a value from the start,
/// as Prometheus advises for counters with known labels: a rule over a series that appears
/// only with its first event cannot tell "none yet" from "not exported".
pub fn initialise_series() {
    for result in ["paid", "refused", "failed", "not_included", "error", "expired"] {
        metrics::counter!("validator_claims_total", "result" => result).increment(0);
    }
    metrics::counter!("validator_journal_dropped_total").increment(0);
    metrics::gauge!("validator_unclaimed_ngonka").increment(0.0);
    metrics::gauge!("validator_classic_retired").increment(0.0);
}

/// Sets `validator_ml_node_up{node}`: 1 when the node takes leases, 0 when it is down or
/// half-open.
pub fn record_nodes(pool: &NodePool) {
    for node in pool.status() {
        let up = if node.availability == Availability::Up { 1.0 } else { 0.0 };
        metrics::gauge!("validator_ml_node_up", "node" => node.id).set(up);
    }
}
