use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use serde_json::Value;
use testkit::{FakeMlNode, Latency, Reply};

/// Bound on each awaited condition.
const BOUND: Duration = Duration::from_secs(20);

/// Waits for `child` to exit, at most `bound`.
pub(crate) fn wait_exit(
    mut child: std::process::Child,
    bound: Duration,
) -> std::process::ExitStatus {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = sender.send(child.wait());
    });
    receiver.recv_timeout(bound).expect("the process did not exit in time").unwrap()
}

#[test]
fn sigterm_exits_0_within_the_grace_period_with_work_in_flight() {
    let mut child = Command::new(crate::binary())
        .args([
            "demo",
            "--hold",
            "--json",
            "--backlog",
            "400",
            "--ml-latency-ms",
            "200",
            "--live-rate",
            "20",
        ])
        .args(["--admin-token-file"])
        .arg(crate::temp_path("admin.token"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let listening: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(listening["event"], "listening");
    // 400 replays of 200 ms on 10 slots take 8 s; the run is at its start now.
    let metrics = listening["metrics_addr"].as_str().unwrap().to_owned();
    let _ = metrics;

    let pid = i32::try_from(child.id()).unwrap();
    // SAFETY: sends a signal to the child this test spawned and still owns.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let sent = Instant::now();
    let status = wait_exit(child, Duration::from_secs(15));
    assert_eq!(status.code(), Some(0));
    assert!(sent.elapsed() < Duration::from_secs(11), "{:?}", sent.elapsed());
    let rest: Vec<String> = stdout.lines().map(Result::unwrap).collect();
    let summary: Value = serde_json::from_str(rest.last().unwrap()).unwrap();
    assert_eq!(summary["interrupted"], true, "{summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_ml_node_never_sees_more_than_the_slots_even_when_replays_hang() {
    let ml = FakeMlNode::start().await;
    ml.set_latency(Latency::Fixed(Duration::from_millis(5)));
    ml.script([
        Reply::Echo,
        Reply::Hang,
        Reply::Echo,
        Reply::Hang,
        Reply::Hang,
        Reply::Echo,
        Reply::Hang,
    ]);
    let url = ml.url();
    let token_file = crate::temp_path("admin.token");
    let output = tokio::task::spawn_blocking(move || {
        Command::new(crate::binary())
            .args([
                "demo",
                "--json",
                "--backlog",
                "60",
                "--slots",
                "3",
                "--replay-timeout-ms",
                "300",
            ])
            .args(["--live-rate", "10", "--ml-node", &url, "--admin-token-file"])
            .arg(token_file)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let summary: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(summary["terminal"], 60, "{summary}");
    assert_eq!(summary["backlog"], 60);
    // An abandoned replay counts until its 300 ms timeout could first have fired (see
    // `testkit::peak_held`); the raw peak is in the message.
    let held = testkit::peak_held(&ml.stays(), Duration::from_millis(250));
    assert!(held <= 3, "{held} held at the node (raw peak {})", ml.peak());
    assert!(ml.disconnects() >= 1, "a hanging replay was abandoned");
    for key in [
        "outcomes",
        "peak_in_flight",
        "elapsed_s",
        "ideal_s",
        "efficiency",
        "live_wait_p99_s",
        "slots",
    ] {
        assert!(!summary[key].is_null(), "{key} in {summary}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_follows_the_chain_recovers_claims_and_stops_on_sigterm() {
    use testkit::{SubmittedMsg, TxEvent};
    use validator_bin::demo::{DemoOptions, Scenario, LIVE_EPOCH};

    const BACKLOG: usize = 4;
    let options =
        DemoOptions { backlog: BACKLOG, slots: 2, ml_latency_ms: 1, ..Default::default() };
    let scenario = Scenario::start(&options).await.unwrap();
    let data_dir = crate::temp_path("data");
    let config = crate::run_config(&scenario, &options, &data_dir, 0);

    let child = Command::new(crate::binary())
        .arg("run")
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let chain = &scenario.chain;
    tokio::time::timeout(BOUND, chain.wait_subscriptions(1)).await.unwrap();

    // The claim height is five blocks ahead: recovery of the previous epoch, then the claim.
    let claim_height = chain.advance(6);
    tokio::time::timeout(BOUND, chain.wait_submitted(BACKLOG + 1)).await.unwrap();
    // A live inference finishes: sampled (every inference is, in this scenario) and validated.
    chain.add_inference("live-run", LIVE_EPOCH, &scenario.executor_address);
    scenario.executor.insert_generated("live-run", LIVE_EPOCH);
    chain.put_inference(scenario.executor.inference("live-run").unwrap());
    chain.produce_block(vec![vec![TxEvent::inference_finished("live-run")]]);
    tokio::time::timeout(BOUND, chain.wait_submitted(BACKLOG + 2)).await.unwrap();

    let submitted = chain.submitted();
    let kinds: Vec<bool> =
        submitted.iter().map(|s| matches!(s.msg, SubmittedMsg::ClaimRewards { .. })).collect();
    assert_eq!(kinds.iter().filter(|claim| **claim).count(), 1);
    assert!(kinds[BACKLOG], "the claim follows the recovered validations: {submitted:?}");
    let token = std::fs::read_to_string(data_dir.join("admin.token")).unwrap();
    assert_eq!(token.trim().len(), 64);

    let pid = i32::try_from(child.id()).unwrap();
    // SAFETY: sends a signal to the child this test spawned and still owns.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let mut child = child;
    let stdout = child.stdout.take().unwrap();
    let status = tokio::task::spawn_blocking(move || wait_exit(child, Duration::from_secs(15)))
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
    let printed = std::io::read_to_string(stdout).unwrap();
    assert!(printed.contains("admin token"), "{printed}");
    let journal =
        validator_bin::storage::SqliteJournal::open(&data_dir, &Default::default()).unwrap();
    let height = chain_source::events::HeightStore::load(&journal).unwrap();
    assert!(height >= claim_height, "the processed height is kept: {height}");
    let runs = journal.recent_runs(10).await.unwrap();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!((runs[0].trigger.as_deref(), runs[0].epoch), (Some("claim"), 9));
}
