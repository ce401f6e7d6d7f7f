//! `slow_executors`: an ML node of K slots against executors whose payloads take as long to
//! fetch as a replay takes to run, or three times as long, with payloads of up to 8 MB. A
//! recovery backlog drains while revalidations arrive at a fixed interval. A design that holds
//! an ML slot through the fetch leaves the node idle most of the time; one that fetches ahead
//! into a bounded buffer keeps it busy.
//!
//! Each strategy runs in a child process of the bench (`--slow-executors-child <strategy>
//! <items> <revalidations>`), so its peak RSS is its own. The fakes record every change of the
//! replays in flight ([`Timeline`]); the busy fraction and its time series are exact integrals
//! of that step function, not samples.

use std::{fmt::Write as _, sync::Arc, time::Duration};

use bytes::Bytes;
use serde_json::{json, Value};
use tokio::time::Instant;
use validator_core::{
    completion::{self, CompletionResponse},
    ports::{chain::InferenceId, payload_source::Payloads},
    scoring,
    testing::MODEL,
    Config,
};

use crate::{
    fakes::{
        id_hash, mix, revalidation_id, Faults, PriorityTimes, Rig, TimedMlNode, TimedPayloads,
        Timeline,
    },
    scenarios::{cores, round, run_child, runtime, secs, status_kib, Sizes},
    strategy::{BoxError, Policy, Runner, Strategy},
};

/// The ML node's concurrency, the engine's GPU slots and `pr1277`'s semaphore.
pub(crate) const K: usize = 16;
/// R, the ML node's nominal replay time. With K = 16 the node finishes 80 replays a second at
/// most, and the JSON work of the payload mix then takes about a seventh of 2 cores
/// (`meta.slow_executors.engine_cpu_share`), so the cores do not set the pace.
pub(crate) const REPLAY: Duration = Duration::from_millis(200);
/// Percent of executors that are slow: their payload fetch takes `SLOW_FACTOR` × R, the
/// others' R. The mean fetch is then 1.6 R, and a design that holds a slot from fetch to
/// replay keeps the node busy R / (1.6 R + R), about 0.38 of the time.
const SLOW_PERCENT: u64 = 30;
const SLOW_FACTOR: u32 = 3;
/// A revalidation is triggered every R / 2, one for every `ITEMS_PER_REVALIDATION` backlog
/// items: 1/8 of the node's capacity, all triggered within the first 80% of the time the
/// backlog alone takes at full speed.
const REVALIDATION_EVERY: Duration = Duration::from_millis(100);
pub(crate) const ITEMS_PER_REVALIDATION: u64 = 10;
/// Points of the busy-fraction series.
const SERIES_POINTS: usize = 100;
/// Grace given to the shutdown at the end.
const GRACE: Duration = Duration::from_secs(5);
/// How long the run may take, after the backlog's recovery run ended, for the revalidations to
/// end.
const SETTLE: Duration = Duration::from_secs(30);

/// The strategies this scenario compares. `devshardd`'s model serves devshard jobs handed over
/// by session hosts; it has no recovery backlog and no revalidations (docs/benchmarks.md).
pub(crate) const STRATEGIES: [Strategy; 2] = [Strategy::Ours, Strategy::Pr1277];

// === Payloads ===

/// The shape of one payload template: an answer of `tokens` positions with `top` logprobs each,
/// served for `per_mille` of the inferences.
struct Shape {
    name: &'static str,
    tokens: usize,
    top: usize,
    per_mille: u64,
}

/// Mostly short chat answers, some of about 1 MB, a few of about 8 MB: a 5,000-token answer
/// with 20 top logprobs. The large ones are rare because their JSON work (about 0.13 s of a
/// core each) would otherwise set the pace on 2 cores.
const SHAPES: [Shape; 3] = [
    Shape { name: "small", tokens: 200, top: 5, per_mille: 930 },
    Shape { name: "medium", tokens: 600, top: 20, per_mille: 60 },
    Shape { name: "large", tokens: 5_000, top: 20, per_mille: 10 },
];
const LARGE: usize = 2;

/// One template: the prompt and the executor's response, built once and shared. The ML node's
/// answer to its replay is the response itself: the enforced tokens with the original's
/// logprobs, a perfect replay (as `testing::echo_completion` gives for `testing::payloads_for`),
/// so every replay scores 1 ([`meta`] checks it).
struct Template {
    prompt: Bytes,
    response: Bytes,
}

struct Templates(Vec<Template>);

impl Templates {
    fn build() -> Self {
        Self(
            SHAPES
                .iter()
                .enumerate()
                .map(|(at, shape)| Template::build(shape, at as u64))
                .collect(),
        )
    }

    /// The template an inference's executor serves, chosen by a hash of the id.
    fn of(&self, id: &InferenceId) -> &Template {
        &self.0[shape_of(id)]
    }

    /// The buffer's byte bound: six large payloads' worth. The engine counts the fetches in
    /// flight at the recent mean size each plus one as large as the largest recent payload, and
    /// lets the recovery lane use half of the bound, so with about 25 fetches in flight and a
    /// large payload among the recent ones, the recovery lane's half leaves little more than the
    /// pipeline needs; the payloads actually buffered, about 1.5 MB on average, stay far below.
    fn buffer_bytes(&self) -> usize {
        6 * self.0[LARGE].bytes()
    }
}

fn shape_of(id: &InferenceId) -> usize {
    let draw = mix(id_hash(id.as_str())) % 1000;
    let mut below = 0;
    for (at, shape) in SHAPES.iter().enumerate() {
        below += shape.per_mille;
        if draw < below {
            return at;
        }
    }
    SHAPES.len() - 1
}

/// How long the payload fetch of an inference takes: R, or `SLOW_FACTOR` × R for the slow
/// executors (chosen by a hash of the id, the same for every strategy).
fn fetch_time(id: &InferenceId) -> Duration {
    if id_hash(id.as_str()) % 100 < SLOW_PERCENT {
        REPLAY * SLOW_FACTOR
    } else {
        REPLAY
    }
}

impl Template {
    /// A prompt as `testing::payloads_for` writes one, and a plain chat completion whose tokens
    /// and top tokens are token ids, with logprobs in full precision as an ML node writes them
    /// (they make most of a payload's bytes). Written straight into a string: building 8 MB as
    /// a `serde_json::Value` would take a few times its size in memory, in the child whose peak
    /// RSS is measured.
    fn build(shape: &Shape, seed: u64) -> Self {
        let prompt = json!({
            "model": MODEL,
            "messages": [{"role": "user", "content": format!("question {}", shape.name)}],
            "seed": 42,
            "logprobs": true,
            "top_logprobs": shape.top,
            "max_tokens": 5000,
            "max_completion_tokens": 5000,
            "temperature": 0.7,
            "stream": true,
            "stream_options": {"include_usage": true},
        });
        let mut text = String::new();
        let mut content = String::with_capacity(shape.tokens * (shape.top + 1) * 80);
        for position in 0..shape.tokens {
            let draw = mix((seed << 32) | position as u64);
            // Six-digit ids, as a large vocabulary's are.
            let id = 100_000 + draw % 50_000;
            let token = id.to_string();
            text.push_str(&token);
            if position > 0 {
                content.push(',');
            }
            write_entry(&mut content, &token, logprob(draw, 0), false);
            content.push_str(",\"top_logprobs\":[");
            for rank in 0..shape.top {
                if rank > 0 {
                    content.push(',');
                }
                let top = (id + rank as u64).to_string();
                write_entry(&mut content, &top, logprob(draw, rank), true);
            }
            content.push_str("]}");
        }
        let response = format!(
            concat!(
                r#"{{"choices":[{{"finish_reason":"stop","index":0,"logprobs":{{"content":[{content}]}},"#,
                r#""message":{{"content":"{text}","role":"assistant"}}}}],"created":1742626074,"#,
                r#""id":"chatcmpl-bench","model":"{model}","object":"chat.completion","#,
                r#""usage":{{"completion_tokens":{tokens},"prompt_tokens":12}}}}"#
            ),
            content = content,
            text = text,
            model = MODEL,
            tokens = shape.tokens,
        );
        Self { prompt: Bytes::from(prompt.to_string()), response: Bytes::from(response) }
    }

    fn payloads(&self) -> Payloads {
        Payloads { prompt: self.prompt.clone(), response: self.response.clone() }
    }

    fn bytes(&self) -> usize {
        self.prompt.len() + self.response.len()
    }
}

/// The logprob at `rank` of a position: decreasing with the rank, with all of an `f64`'s digits.
fn logprob(draw: u64, rank: usize) -> f64 {
    let fraction = (mix(draw ^ rank as u64) >> 11) as f64 / (1u64 << 53) as f64;
    -(rank as f64 * 1.5 + fraction)
}

/// `{"token":…,"logprob":…,"bytes":[…]` (closed with `}` when `close`).
fn write_entry(out: &mut String, token: &str, logprob: f64, close: bool) {
    let _ = write!(out, r#"{{"token":"{token}","logprob":{logprob},"bytes":["#);
    for (at, byte) in token.bytes().enumerate() {
        let _ = write!(out, "{}{byte}", if at > 0 { "," } else { "" });
    }
    out.push(']');
    if close {
        out.push('}');
    }
}

/// The scenario's policy: the classic scenarios' scaled retries, timeouts of 10 R for a fetch
/// and a replay (far above any fetch or replay here: the scenario measures scheduling, not
/// timeouts) and the buffer's byte bound.
fn policy(buffer_bytes: usize) -> Policy {
    Policy {
        payload_timeout: REPLAY * 10,
        replay_timeout: REPLAY * 10,
        buffer_bytes: Some(buffer_bytes),
        ..Policy::scaled(K)
    }
}

/// The set-up, for `meta.slow_executors`. Builds the templates, checks that the engine's own
/// functions build a replay of each and score the ML fake's answer as valid, and times the JSON
/// work one item costs the engine: parsing the response, building the replay body, parsing and
/// scoring the answer, hashing it.
pub(crate) fn meta() -> Result<Value, BoxError> {
    let templates = Templates::build();
    let config: Config = policy(templates.buffer_bytes()).engine_config();
    let mut shapes = Vec::new();
    let mut cpu_per_item = 0.0;
    for (shape, template) in SHAPES.iter().zip(&templates.0) {
        let mut best = f64::INFINITY;
        for _ in 0..3 {
            let started = std::time::Instant::now();
            let original = CompletionResponse::from_payload(&template.response)?;
            let replay = completion::classic_replay(&template.prompt, &original)?;
            let score = scoring::score_classic_answer(
                &original,
                replay.empty_sentinel,
                &template.response,
            )?;
            let _ = scoring::response_hash(&template.response);
            best = best.min(started.elapsed().as_secs_f64());
            if score.verdict != scoring::Verdict::Similarity || score.value != 1.0 {
                return Err(format!("{} template scores {score:?}", shape.name).into());
            }
        }
        cpu_per_item += best * shape.per_mille as f64 / 1000.0;
        shapes.push(json!({
            "name": shape.name,
            "tokens": shape.tokens,
            "top_logprobs": shape.top,
            "per_mille": shape.per_mille,
            "payload_bytes": template.bytes(),
            "engine_cpu_ms": round(best * 1e3),
        }));
    }
    let replays_per_s = K as f64 / REPLAY.as_secs_f64();
    Ok(json!({
        "k": K,
        "replay_ms": REPLAY.as_millis() as u64,
        "slow_percent": SLOW_PERCENT,
        "slow_fetch_over_replay": SLOW_FACTOR,
        "revalidation_every_ms": REVALIDATION_EVERY.as_millis() as u64,
        "items_per_revalidation": ITEMS_PER_REVALIDATION,
        "shapes": shapes,
        "engine_cpu_ms_per_item": round(cpu_per_item * 1e3),
        // The share of the machine's cores that JSON work takes with the node at full speed.
        "engine_cpu_share": round(cpu_per_item * replays_per_s / cores() as f64),
        "payload_timeout_ms": config.payload_timeout.as_millis() as u64,
        "replay_timeout_ms": config.replay_timeout.as_millis() as u64,
        "engine_slots": config.slots,
        "engine_fetch_slots": config.fetch_slots(),
        "engine_buffer_capacity": config.buffer_capacity(),
        "engine_buffer_bytes": config.buffer_bytes(),
        "engine_buffer_max_age_ms": config.buffer_max_age.as_millis() as u64,
    }))
}

// === Parent ===

/// One busy-fraction point: seconds since the first admission, and the mean of replays in
/// flight over K across the bin around it.
pub(crate) type BusyPoint = (f64, f64);

/// Runs `strategy` in a child process; its figures, and its busy-fraction series for the chart.
pub(crate) fn slow_executors(
    strategy: Strategy,
    sizes: &Sizes,
) -> Result<(Value, Vec<BusyPoint>), BoxError> {
    let items = sizes.slow_executors;
    let revalidations = items / ITEMS_PER_REVALIDATION;
    let args = [
        "--slow-executors-child".to_owned(),
        strategy.name().to_owned(),
        items.to_string(),
        revalidations.to_string(),
    ];
    // Three times what a design that holds its slot through the fetch takes, and a minute.
    let mean_fetch =
        REPLAY.as_secs_f64() * (1.0 + (f64::from(SLOW_FACTOR) - 1.0) * SLOW_PERCENT as f64 / 100.0);
    let held = (items + revalidations) as f64 * (mean_fetch + REPLAY.as_secs_f64()) / K as f64;
    let deadline = Duration::from_secs_f64(3.0 * held) + SETTLE + Duration::from_secs(60);
    let mut figures = run_child(&args, deadline)?;
    let series = figures
        .as_object_mut()
        .and_then(|figures| figures.remove("series"))
        .and_then(|series| serde_json::from_value(series).ok())
        .unwrap_or_default();
    Ok((figures, series))
}

// === Child ===

/// The child side: one strategy; prints its figures and series as one JSON line.
pub(crate) fn slow_executors_child(args: &[String]) -> Result<(), BoxError> {
    let [strategy, items, revalidations, ..] = args else {
        return Err("usage: --slow-executors-child <strategy> <items> <revalidations>".into());
    };
    let strategy = Strategy::from_name(strategy).ok_or("unknown strategy")?;
    let report = runtime()?.block_on(run(strategy, items.parse()?, revalidations.parse()?))?;
    println!("{report}");
    std::process::exit(0)
}

async fn run(strategy: Strategy, items: u64, revalidations: u64) -> Result<Value, BoxError> {
    let templates = Arc::new(Templates::build());
    let policy = policy(templates.buffer_bytes());
    let timeline = Arc::new(Timeline::default());
    let mut rig = Rig::new(items, REPLAY, K, Faults::default(), true);
    let answers = Arc::clone(&templates);
    rig.ml = Arc::new(
        TimedMlNode::new(REPLAY, Faults::default())
            .with_answers(Arc::new(move |id: &InferenceId| answers.of(id).response.clone()))
            .with_timeline(Arc::clone(&timeline)),
    );
    let plan = Arc::clone(&templates);
    rig.payloads_port = Some(Arc::new(TimedPayloads::new(
        Arc::new(move |id: &InferenceId| (fetch_time(id), plan.of(id).payloads())),
        Arc::clone(&timeline),
    )));
    let runner = Arc::new(Runner::start(strategy, rig.ports(), &policy, false)?);

    let started = Instant::now();
    let recovery = runner.recover()?;
    let triggers = {
        let (runner, timeline) = (Arc::clone(&runner), Arc::clone(&timeline));
        tokio::spawn(async move {
            for index in 0..revalidations {
                let at = started + REVALIDATION_EVERY * (index as u32 + 1);
                tokio::time::sleep_until(at).await;
                let id = revalidation_id(index);
                timeline.triggered(&id, Instant::now());
                runner.revalidate(id);
            }
        })
    };
    let state = recovery.wait().await;
    triggers.await?;
    let settle = Instant::now();
    loop {
        let counts = runner.counts();
        if counts.terminal >= counts.admitted || settle.elapsed() > SETTLE {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let wall = started.elapsed();
    let counts = runner.counts();
    let pipeline = runner.pipeline();
    runner.shutdown(GRACE).await;

    let service = rig.ml.mean_service().as_secs_f64();
    let changes: Vec<(f64, usize)> = timeline
        .busy_changes()
        .into_iter()
        .map(|(at, in_flight)| (at.saturating_duration_since(started).as_secs_f64(), in_flight))
        .collect();
    let busy_until = changes.last().map_or(0.0, |&(at, _)| at);
    let ml_busy = busy_fraction(&changes, busy_until);
    let series = busy_series(&changes, busy_until, SERIES_POINTS);
    let (waits, raw) = priority_waits(&timeline.priority(), service);
    let pct =
        |values: &[f64], p: f64| percentile(values, p).map_or(Value::Null, |v| json!(round(v)));
    let pipeline_figure = |figure: fn(&validator_core::PipelineStatus) -> Value| {
        pipeline.as_ref().map_or(Value::Null, figure)
    };
    Ok(json!({
        "items": items,
        "revalidations": revalidations,
        "k": K,
        "replay_ms": REPLAY.as_millis() as u64,
        "ml_busy": round(ml_busy),
        "buffer_peak_over_cap": pipeline_figure(|p| {
            if p.buffer_bytes_capacity == 0 {
                Value::Null
            } else {
                json!(round(p.buffered_peak_bytes as f64 / p.buffer_bytes_capacity as f64))
            }
        }),
        "p99_priority_wait_over_service": pct(&waits, 0.99),
        "p99_priority_trigger_to_replay_over_service": pct(&raw, 0.99),
        "p50_priority_wait_over_service": pct(&waits, 0.50),
        "priority_replayed": raw.len(),
        "peak_rss_mib": status_kib("/proc/self/status", "VmHWM:")
            .map_or(Value::Null, |kib| json!(round(kib as f64 / 1024.0))),
        "lost": counts.admitted as i64 - counts.terminal as i64,
        "gpu_idle_slot_seconds": pipeline_figure(|p| json!(round(p.gpu_idle_slot_seconds))),
        "fetch_peak": pipeline_figure(|p| json!(p.fetch_peak)),
        "buffered_peak_bytes": pipeline_figure(|p| json!(p.buffered_peak_bytes)),
        "buffer_bytes_capacity": pipeline_figure(|p| json!(p.buffer_bytes_capacity)),
        "expired": pipeline_figure(|p| json!(p.expired)),
        "submitted": rig.chain.submitted(),
        "gave_up": counts.gave_up,
        "service_ms": round(service * 1e3),
        "busy_window_s": round(busy_until),
        "wall_s": secs(wall),
        "state": state,
        "series": series,
    }))
}

// === Figures ===

/// The time-averaged replays in flight over K from 0 (the first admission) to `until`, from
/// the step function `changes`: (seconds, replays in flight from then on), in time order.
fn busy_fraction(changes: &[(f64, usize)], until: f64) -> f64 {
    if until <= 0.0 {
        return 0.0;
    }
    let area: f64 = changes
        .windows(2)
        .map(|pair| pair[0].1 as f64 * (pair[1].0.min(until) - pair[0].0.min(until)))
        .sum();
    area / (K as f64 * until)
}

/// The busy fraction over `points` equal bins of [0, `until`], each the exact mean over its
/// bin, placed at the bin's middle.
fn busy_series(changes: &[(f64, usize)], until: f64, points: usize) -> Vec<BusyPoint> {
    if until <= 0.0 || points == 0 {
        return Vec::new();
    }
    let width = until / points as f64;
    let mut area = vec![0.0; points];
    for pair in changes.windows(2) {
        let ((from, in_flight), (to, _)) = (pair[0], pair[1]);
        if in_flight == 0 || to <= from {
            continue;
        }
        let first = ((from / width) as usize).min(points - 1);
        let last = ((to / width) as usize).min(points - 1);
        for (bin, bin_area) in area.iter_mut().enumerate().take(last + 1).skip(first) {
            let (start, end) = (bin as f64 * width, (bin + 1) as f64 * width);
            let overlap = to.min(end) - from.max(start);
            if overlap > 0.0 {
                *bin_area += in_flight as f64 * overlap;
            }
        }
    }
    area.iter()
        .enumerate()
        .map(|(bin, area)| ((bin as f64 + 0.5) * width, area / (K as f64 * width)))
        .collect()
}

/// Per revalidation that reached a replay, over `service`: the trigger to the replay's start
/// less the item's own payload fetch, and the trigger to the replay's start.
fn priority_waits(times: &[PriorityTimes], service: f64) -> (Vec<f64>, Vec<f64>) {
    let (mut waits, mut raw) = (Vec::new(), Vec::new());
    for times in times {
        let (Some(trigger), Some(replay)) = (times.trigger, times.replay_start) else { continue };
        let to_replay = replay.saturating_duration_since(trigger).as_secs_f64();
        raw.push(to_replay / service);
        if let Some((fetch_start, fetch_end)) = times.fetch {
            let fetch = fetch_end.saturating_duration_since(fetch_start).as_secs_f64();
            waits.push((to_replay - fetch) / service);
        }
    }
    (waits, raw)
}

fn percentile(values: &[f64], p: f64) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let index = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len().max(1)) - 1;
    sorted.get(index).copied()
}
