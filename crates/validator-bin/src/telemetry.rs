//! Logs and metrics: the tracing subscriber, and the Prometheus recorder with its own listener.

use std::{
    io::IsTerminal as _,
    sync::{Mutex, OnceLock},
    time::Duration,
};

use anyhow::Context;
use axum::{routing::get, Router};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use ml_client::{Availability, NodePool};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use crate::settings::LogFormat;

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
    Ok(RECORDER.get_or_init(|| handle).clone())
}

/// Serves `GET /metrics` (Prometheus text) on `listener` until `cancel` fires, and refreshes
/// `validator_ml_node_up{node}` from `pool` every `refresh` (also running the recorder's
/// upkeep, which drains histogram samples).
pub async fn serve_metrics(
    listener: TcpListener,
    handle: PrometheusHandle,
    pool: NodePool,
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
                record_nodes(&pool);
                handle.run_upkeep();
            }
        }
    };
    let server = axum::serve(listener, router).with_graceful_shutdown(cancel.cancelled_owned());
    let (served, ()) = tokio::join!(async move { server.await }, refresher);
    served
}

/// Sets `validator_ml_node_up{node}`: 1 when the node takes leases, 0 when it is down or
/// half-open.
pub fn record_nodes(pool: &NodePool) {
    for node in pool.status() {
        let up = if node.availability == Availability::Up { 1.0 } else { 0.0 };
        metrics::gauge!("validator_ml_node_up", "node" => node.id).set(up);
    }
}
