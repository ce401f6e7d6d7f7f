//! The devshard scenario (`--devshard`): session hosts calling the node's gRPC validation
//! service as upstream's hosts do (S sessions, 20 workers each, one inference in ten a
//! challenged vote), the node leasing its ML node through a loopback NodeManager, and the
//! executor serving each session's payloads on the devshard route. A few executors misbehave:
//! some claim more tokens than they produced, some serve payloads that do not match the hashes
//! the session holds, some have pruned theirs.

use std::time::Duration;

use anyhow::Context;
use serde_json::{json, Value};
use testkit::{
    devshard_host::{run_sessions, HostConfig, HostReport, WORKERS_PER_SESSION},
    node_manager::LoopbackNodeManager,
};
use validator_bin::{service::validate_request, settings::Settings};
use validator_core::testing::MODEL;
use validator_proto::validator::v1::ValidateRequest;

use crate::{DemoOptions, Scenario, LIVE_EPOCH};

/// Every this many inferences of a session, one is a challenged vote.
const CHALLENGED_EVERY: u64 = 10;
/// Every this many, the executor claims ten more completion tokens than it produced.
const INFLATED_EVERY: u64 = 17;
/// Every this many, the session's prompt hash is not the one of the stored payload.
const TAMPERED_EVERY: u64 = 23;
/// Every this many, the executor has pruned the payloads (404).
const PRUNED_EVERY: u64 = 29;

/// What the devshard scenario measured.
#[derive(Debug, Clone)]
pub struct DevshardSummary {
    /// What the hosts got back.
    pub hosts: HostReport,
    /// The NodeManager's capacity for the model.
    pub capacity: usize,
    /// Most replays the ML node served at once.
    pub peak_replays: usize,
    /// Most locks the NodeManager held at once.
    pub peak_locks: usize,
    /// Acquires the NodeManager refused for lack of a free node.
    pub rejections: u64,
    /// Replays the ML node served.
    pub replays: usize,
}

impl DevshardSummary {
    /// The summary as one JSON object.
    pub fn to_json(&self) -> Value {
        let verdicts: serde_json::Map<String, Value> = self
            .hosts
            .verdicts
            .iter()
            .map(|((verdict, reason), n)| (format!("{verdict}/{reason}"), json!(n)))
            .collect();
        json!({
            "event": "devshard_summary",
            "calls": self.hosts.calls,
            "verdicts": verdicts,
            "errors": self.hosts.errors,
            "node_capacity": self.capacity,
            "peak_replays": self.peak_replays,
            "peak_locks": self.peak_locks,
            "acquire_rejections": self.rejections,
            "replays": self.replays,
            "challenged_wait_ms": waits(&self.hosts.challenged_waits),
            "sampled_wait_ms": waits(&self.hosts.sampled_waits),
            "elapsed_s": round(self.hosts.elapsed.as_secs_f64()),
        })
    }
}

/// Runs the devshard scenario to its end.
pub async fn run(options: DemoOptions) -> anyhow::Result<()> {
    let capacity = options.node_capacity.max(1);
    let node_manager =
        LoopbackNodeManager::try_start().await.context("starting the fake NodeManager")?;
    let (scenario, app) = Scenario::build_with(
        &DemoOptions { backlog: 0, ..options.clone() },
        |scenario, settings| {
            node_manager.add_node("demo-ml", MODEL, &scenario.ml_url, capacity);
            use_node_manager(settings, &node_manager.url());
        },
    )
    .await?;
    let handle = app.handle();
    let service = handle.service_addr.context("the validation service is off")?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let app_task = tokio::spawn(app.run(async {
        let _ = stopped.await;
    }));

    let sessions = jobs(&scenario, options.sessions, options.inferences_per_session)?;
    if !options.json {
        println!(
            "validator-demo --devshard: {} sessions x {} inferences, {} workers each, one ML node with {} locks",
            options.sessions, options.inferences_per_session, WORKERS_PER_SESSION, capacity
        );
    }
    let config = HostConfig {
        url: format!("http://{service}"),
        token: handle.token.to_string(),
        workers_per_session: WORKERS_PER_SESSION,
        call_timeout: Duration::from_secs(120),
    };
    let hosts = run_sessions(&config, sessions)
        .await
        .map_err(|err| anyhow::anyhow!("the session hosts failed: {err}"))?;
    let stats = node_manager.stats();
    let ml = scenario.ml.as_ref();
    let summary = DevshardSummary {
        hosts,
        capacity,
        peak_replays: ml.map_or(0, |ml| ml.peak()),
        peak_locks: stats.peak_locks,
        rejections: stats.rejections,
        replays: ml.map_or(0, |ml| ml.requests().len()),
    };
    let _ = stop.send(());
    app_task.await.context("the app task")??;
    if options.json {
        println!("{}", summary.to_json());
    } else {
        print_summary(&summary);
    }
    Ok(())
}

/// Points the node's broker at the NodeManager at `url`.
pub fn use_node_manager(settings: &mut Settings, url: &str) {
    settings.ml.broker = ml_client::Broker::NodeManager;
    settings.ml.node_manager.url = Some(url.to_owned());
    // Scaled down like the other back-offs: upstream's 2 s acquire poll and 5 s listing.
    settings.ml.node_manager.capacity_refresh = Duration::from_millis(200);
    settings.core.lock_wait = Duration::from_millis(100);
}

/// Each session's requests, in order, with the scenario's misbehaving executors among them.
fn jobs(
    scenario: &Scenario,
    sessions: usize,
    per_session: usize,
) -> anyhow::Result<Vec<Vec<ValidateRequest>>> {
    let executor = &scenario.executor;
    let mut all = Vec::with_capacity(sessions);
    for session in 0..sessions {
        let escrow = format!("{}", 1000 + session);
        let mut requests = Vec::with_capacity(per_session);
        for n in 1..=per_session as u64 {
            executor.insert_devshard_generated(&escrow, n, LIVE_EPOCH);
            let mut job = executor
                .devshard_job(&escrow, n)
                .context("the executor lost a stored devshard inference")?;
            job.challenged = n % CHALLENGED_EVERY == 0;
            if n % INFLATED_EVERY == 0 {
                job.output_tokens += 10;
            } else if n % TAMPERED_EVERY == 0 {
                job.prompt_hash[0] ^= 0xff;
            } else if n % PRUNED_EVERY == 0 {
                executor.remove_devshard(&escrow, n);
            }
            requests.push(validate_request(&job));
        }
        all.push(requests);
    }
    Ok(all)
}

fn print_summary(summary: &DevshardSummary) {
    let hosts = &summary.hosts;
    println!();
    println!("devshard summary");
    println!("  calls              {} in {:.2} s", hosts.calls, hosts.elapsed.as_secs_f64());
    for ((verdict, reason), n) in &hosts.verdicts {
        println!("  {verdict:<8} {reason:<18} {n}");
    }
    for (code, n) in &hosts.errors {
        println!("  error    {code:<18} {n}");
    }
    println!(
        "  peak replays       {} (NodeManager capacity {}, peak locks {}, {} acquires refused, {} replays)",
        summary.peak_replays, summary.capacity, summary.peak_locks, summary.rejections, summary.replays
    );
    let (challenged, sampled) = (waits(&hosts.challenged_waits), waits(&hosts.sampled_waits));
    println!(
        "  challenged wait    p50 {} ms, p99 {} ms (sampled: p50 {} ms, p99 {} ms)",
        challenged["p50"], challenged["p99"], sampled["p50"], sampled["p99"]
    );
}

/// p50 and p99 of `waits`, in milliseconds.
fn waits(waits: &[Duration]) -> Value {
    let mut ms: Vec<f64> = waits.iter().map(|w| w.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| {
        if ms.is_empty() {
            return 0.0;
        }
        let index = ((ms.len() as f64 - 1.0) * q).round() as usize;
        round(ms[index.min(ms.len() - 1)])
    };
    json!({"p50": at(0.50), "p99": at(0.99), "count": ms.len()})
}

fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
