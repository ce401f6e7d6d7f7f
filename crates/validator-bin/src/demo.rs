//! `validator demo`: a recovery backlog, live sampled validations arriving meanwhile, and a few
//! revalidations, run by the real engine on in-memory fakes of the chain, the executors and the
//! ML node. Retry back-offs are scaled down from minutes to milliseconds so it ends in seconds.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use validator_core::{
    ports::payload_source::PayloadError,
    testing::{Fakes, MODEL},
    Config, Engine, Lane, OutcomeKind, RecoveryStart, RetryPolicy,
};

/// The demo's flags.
pub(crate) struct Options {
    backlog: usize,
    slots: usize,
    ml_latency: Duration,
    live_rate: f64,
    json: bool,
}

impl Options {
    pub(crate) fn parse(args: &[String]) -> anyhow::Result<Self> {
        let mut options = Self {
            backlog: 2000,
            slots: 10,
            ml_latency: Duration::from_millis(20),
            live_rate: 50.0,
            json: false,
        };
        let mut args = args.iter();
        while let Some(flag) = args.next() {
            let mut value = || args.next().with_context(|| format!("{flag} needs a value"));
            match flag.as_str() {
                "--backlog" => options.backlog = value()?.parse().context("--backlog")?,
                "--slots" => options.slots = value()?.parse().context("--slots")?,
                "--ml-latency-ms" => {
                    options.ml_latency =
                        Duration::from_millis(value()?.parse().context("--ml-latency-ms")?);
                }
                "--live-rate" => options.live_rate = value()?.parse().context("--live-rate")?,
                "--json" => options.json = true,
                other => bail!("unknown flag `{other}`"),
            }
        }
        if options.slots == 0 {
            bail!("--slots must be at least 1");
        }
        if !(options.live_rate >= 0.0 && options.live_rate.is_finite()) {
            bail!("--live-rate must be a non-negative number");
        }
        Ok(options)
    }
}

const BACKLOG_EPOCH: u64 = 9;
const LIVE_EPOCH: u64 = 10;
const DISPUTED: usize = 5;

pub(crate) async fn run(options: Options) -> anyhow::Result<()> {
    let fakes = Fakes::new(options.ml_latency, options.slots);
    fakes.chain.set_epoch_models(BACKLOG_EPOCH, &[MODEL]);
    for i in 0..options.backlog {
        let id = format!("backlog-{i:06}");
        fakes.chain.add_inference(&id, BACKLOG_EPOCH);
        // One in twenty executors is briefly unreachable: its first fetch fails and is retried.
        if i % 20 == 0 {
            fakes.payloads.script(&id, [PayloadError::Unavailable("connection refused".into())]);
        }
    }
    let config = Config {
        slots: options.slots,
        payload_retry: RetryPolicy {
            interval: Duration::from_millis(50),
            jitter_min: Duration::from_millis(1),
            jitter_max: Duration::from_millis(50),
            ..RetryPolicy::payload_default()
        },
        replay_retry: RetryPolicy::fixed(5, Duration::from_millis(100)),
        submit_retry: RetryPolicy::fixed(5, Duration::from_millis(50)),
        ..Config::default()
    };
    let engine = Engine::start(config, fakes.ports())?;
    let mut outcomes = engine.outcomes();
    let started = Instant::now();
    let RecoveryStart::Started(run) = engine.recover(BACKLOG_EPOCH, 7)? else {
        bail!("a recovery run was already going");
    };
    let mut live =
        tokio::spawn(feed_live(engine.clone(), fakes.clone(), options.live_rate, run.clone()));
    for i in 0..DISPUTED {
        let id = format!("disputed-{i}");
        fakes.chain.add_inference(&id, LIVE_EPOCH);
        engine.revalidate(id.into())?;
    }

    // Every sampled id is chosen (the fakes make p = 1), so the demo ends when the backlog, the
    // live ids sent and the revalidations all have an outcome.
    let mut live_waits = Vec::new();
    let (mut finished, mut live_sent) = (0, None);
    while live_sent.is_none_or(|sent| finished < options.backlog + sent + DISPUTED) {
        tokio::select! {
            event = outcomes.recv() => {
                let event = event.context("outcome stream")?;
                if event.lane == Lane::Live {
                    live_waits.push(event.wait.unwrap_or_default());
                }
                finished += 1;
            }
            sent = &mut live, if live_sent.is_none() => live_sent = Some(sent.context("live feeder")?),
        }
    }
    let report = run.wait().await;
    let live_sent = live_sent.unwrap_or_default();
    let elapsed = started.elapsed();
    let status = engine.status();
    engine.shutdown(Duration::from_secs(5)).await;
    live_waits.sort();
    let percentile = |p: f64| -> f64 {
        let index = ((live_waits.len() as f64 - 1.0) * p).round().max(0.0) as usize;
        live_waits.get(index).map_or(0.0, Duration::as_secs_f64)
    };

    // Ideal: every replay back to back on every slot, for all the work done.
    let ideal = finished as f64 * options.ml_latency.as_secs_f64() / options.slots as f64;
    let summary = serde_json::json!({
        "backlog": options.backlog,
        "slots": options.slots,
        "terminal": status.outcomes.total(),
        "outcomes": status.outcomes,
        "recovery": report,
        "live_sampled": live_sent,
        "peak_in_flight": fakes.ml.peak(),
        "elapsed_s": elapsed.as_secs_f64(),
        "ideal_s": ideal,
        "efficiency": if elapsed.as_secs_f64() > 0.0 { ideal / elapsed.as_secs_f64() } else { 0.0 },
        "live_wait_p50_s": percentile(0.50),
        "live_wait_p99_s": percentile(0.99),
        "dispatched": status.lanes.iter().map(|lane| (lane.lane.as_str(), lane.dispatched)).collect::<std::collections::BTreeMap<_, _>>(),
        "note": "in-memory fakes; retry back-offs scaled from minutes to milliseconds",
    });
    if options.json {
        println!("{summary}");
    } else {
        println!(
            "validator demo: in-memory fakes, retry back-offs scaled from minutes to milliseconds"
        );
        println!(
            "  backlog {} items, {} slots, ML latency {:?}",
            options.backlog, options.slots, options.ml_latency
        );
        println!(
            "  recovery run {}: {:?}, detected {}",
            report.run_id, report.state, report.detected
        );
        for kind in OutcomeKind::ALL {
            let n = status.outcomes.get(kind);
            if n > 0 {
                println!("  {:<28} {n}", kind.as_str());
            }
        }
        for lane in &status.lanes {
            println!("  dispatched {:<14} {}", lane.lane.as_str(), lane.dispatched);
        }
        println!("  peak in flight at the ML node {} of {} slots", fakes.ml.peak(), options.slots);
        println!(
            "  elapsed {:.2} s, ideal {ideal:.2} s (all {finished} replays back to back on every slot)",
            elapsed.as_secs_f64()
        );
        println!(
            "  live wait for a slot: p50 {:.1} ms, p99 {:.1} ms ({live_sent} live validations)",
            percentile(0.50) * 1e3,
            percentile(0.99) * 1e3
        );
    }
    Ok(())
}

/// Sends live `inference_finished` events at `rate` per second until the recovery run ends.
async fn feed_live(
    engine: Engine,
    fakes: Fakes,
    rate: f64,
    run: validator_core::RunHandle,
) -> usize {
    if rate <= 0.0 {
        return 0;
    }
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    let mut sent = 0;
    while !run.report().state.is_final() {
        tick.tick().await;
        let id = format!("live-{sent:06}");
        fakes.chain.add_inference(&id, LIVE_EPOCH);
        if engine.sample(vec![id.into()]).is_ok() {
            sent += 1;
        }
    }
    sent
}
