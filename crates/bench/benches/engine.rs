//! `cargo bench -p bench --bench engine`: the engine against models of the upstream designs
//! (PR #1277's shared semaphore and the unbounded pre-fix design on the classic path,
//! `devshardd`'s per-session workers on the devshard path), scenario by scenario, on the same
//! in-process fakes. Prints a table, writes `target/bench/engine.json` and the charts
//! `docs/benchmarks-live.svg` (`live`) and `docs/benchmarks-slow-executors.svg`
//! (`slow_executors`). `BENCH_QUICK=1` runs the small sizes; `BENCH_SCENARIOS`
//! (comma-separated) runs a subset. See `docs/benchmarks.md` for what each figure means.

#[path = "engine/baseline.rs"]
mod baseline;
#[path = "engine/devshard.rs"]
mod devshard;
#[path = "engine/devshardd.rs"]
mod devshardd;
#[path = "engine/fakes.rs"]
mod fakes;
#[path = "engine/report.rs"]
mod report;
#[path = "engine/scenarios.rs"]
mod scenarios;
#[path = "engine/slow_executors.rs"]
mod slow_executors;
#[path = "engine/strategy.rs"]
mod strategy;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::Instant,
};

use serde_json::{json, Map, Value};

use crate::{
    scenarios::{Sizes, K},
    strategy::{BoxError, Policy, Strategy},
};

const SCENARIOS: [&str; 9] = [
    "drain",
    "memory",
    "live",
    "faults",
    "shutdown",
    "http_drain",
    "journal_cost",
    "devshard_sessions",
    "slow_executors",
];

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|arg| arg == "--memory-child") {
        return scenarios::memory_child(&args[at + 1..]);
    }
    if let Some(at) = args.iter().position(|arg| arg == "--devshard-child") {
        return devshard::devshard_child(&args[at + 1..]);
    }
    if let Some(at) = args.iter().position(|arg| arg == "--slow-executors-child") {
        return slow_executors::slow_executors_child(&args[at + 1..]);
    }
    // `cargo bench` passes `--bench`; `cargo test --benches` does not, and the benchmark takes
    // minutes even optimised, so it only runs under `cargo bench`.
    if !args.iter().any(|arg| arg == "--bench") {
        println!("the engine benchmark runs under `cargo bench -p bench --bench engine`");
        return Ok(());
    }
    let quick = std::env::var("BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let selected: Vec<String> = match std::env::var("BENCH_SCENARIOS") {
        Ok(list) if !list.trim().is_empty() => {
            list.split(',').map(|name| name.trim().to_owned()).collect()
        }
        _ => SCENARIOS.iter().map(|name| (*name).to_owned()).collect(),
    };
    let runs = |name: &str| selected.iter().any(|selected| selected == name);
    let sizes = Sizes::new(quick);
    let root = workspace_root();
    let wall = Instant::now();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

    let mut results: HashMap<Strategy, Map<String, Value>> = HashMap::new();
    let mut put = |strategy: Strategy, scenario: &str, figures: Value| {
        eprintln!("{:>9} {scenario:<10} {figures}", strategy.name());
        results.entry(strategy).or_default().insert(scenario.to_owned(), figures);
    };

    // `drain` also calibrates S for `live` and the cancel point of `shutdown`.
    let mut drained = HashMap::new();
    if runs("drain") || runs("live") || runs("shutdown") {
        for strategy in Strategy::CLASSIC {
            let (figures, result) = scenarios::drain(strategy, &sizes)?;
            put(strategy, "drain", figures);
            drained.insert(strategy, result);
        }
    }
    if runs("memory") {
        for strategy in Strategy::CLASSIC {
            put(strategy, "memory", scenarios::memory(strategy, &sizes)?);
        }
    }
    let mut series = Vec::new();
    let mut live_window = 0.0;
    if runs("live") {
        let service = drained.get(&Strategy::Ours).map_or(scenarios::REPLAY, |d| d.service);
        for strategy in Strategy::CLASSIC {
            let (figures, samples) = scenarios::live(strategy, &sizes, service)?;
            live_window = figures["window_s"].as_f64().unwrap_or(live_window);
            put(strategy, "live", figures);
            if strategy != Strategy::Unbounded {
                series.push((strategy, samples));
            }
        }
    }
    if runs("faults") {
        for strategy in Strategy::CLASSIC {
            put(strategy, "faults", scenarios::faults(strategy, &sizes)?);
        }
    }
    if runs("http_drain") {
        for strategy in Strategy::CLASSIC {
            put(strategy, "http_drain", scenarios::http_drain(strategy, &sizes)?);
        }
    }
    if runs("journal_cost") {
        put(Strategy::Ours, "journal_cost", scenarios::journal_cost(&sizes)?);
    }
    if runs("shutdown") {
        for strategy in Strategy::CLASSIC {
            if let Some(drain) = drained.get(&strategy) {
                put(strategy, "shutdown", scenarios::shutdown(strategy, &sizes, drain)?);
            }
        }
    }
    if runs("devshard_sessions") {
        for strategy in devshard::STRATEGIES {
            put(strategy, "devshard_sessions", devshard::devshard_sessions(strategy, &sizes)?);
        }
    }
    let mut busy_series = Vec::new();
    let mut slow_executors_meta = Value::Null;
    if runs("slow_executors") {
        slow_executors_meta = slow_executors::meta()?;
        for strategy in slow_executors::STRATEGIES {
            let (figures, series) = slow_executors::slow_executors(strategy, &sizes)?;
            put(strategy, "slow_executors", figures);
            busy_series.push((strategy, series));
        }
    }

    let policy = Policy::scaled(K);
    let mut document = Map::new();
    document.insert(
        "meta".into(),
        json!({
            "cores": scenarios::cores(),
            "quick": quick,
            "slots": K,
            "replay_ms": scenarios::REPLAY.as_millis() as u64,
            "sizes": sizes.to_json(),
            "engine_recovery_window": policy.engine_config().recovery_window,
            "devshard": devshard::meta(),
            "slow_executors": slow_executors_meta,
            "policy": policy.to_json(),
            "loadavg_at_start": load.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
            "wall_s": scenarios::round(wall.elapsed().as_secs_f64()),
        }),
    );
    for strategy in Strategy::ALL {
        document.insert(
            strategy.name().into(),
            Value::Object(results.remove(&strategy).unwrap_or_default()),
        );
    }
    let document = Value::Object(document);

    let shown: Vec<&str> = SCENARIOS.iter().copied().filter(|name| runs(name)).collect();
    println!("\n{}", report::table(&document, &shown));
    println!("wall time: {:.1} s on {} cores", wall.elapsed().as_secs_f64(), scenarios::cores());

    let out = target_dir(&root).join("bench");
    std::fs::create_dir_all(&out)?;
    let json_path = out.join("engine.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&document)?)?;
    println!("wrote {}", json_path.display());
    if !series.is_empty() {
        let chart_path = root.join("docs").join("benchmarks-live.svg");
        std::fs::create_dir_all(root.join("docs"))?;
        report::chart(&chart_path, &series, live_window)?;
        println!("wrote {}", chart_path.display());
    }
    if !busy_series.is_empty() {
        let chart_path = root.join("docs").join("benchmarks-slow-executors.svg");
        std::fs::create_dir_all(root.join("docs"))?;
        report::busy_chart(&chart_path, &busy_series)?;
        println!("wrote {}", chart_path.display());
    }
    Ok(())
}

/// The workspace root: two levels above this package.
fn workspace_root() -> PathBuf {
    let package = Path::new(env!("CARGO_MANIFEST_DIR"));
    package.ancestors().nth(2).unwrap_or(package).to_path_buf()
}

/// `CARGO_TARGET_DIR` (relative to the workspace root if relative), else `<root>/target`.
fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => root.join(dir),
        _ => root.join("target"),
    }
}
