//! Integration tests of the `validator-demo` binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use testkit::{
    process::{temp_path, wait_exit},
    Latency, LoopbackMlNode, Reply,
};

/// The built binary.
fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_validator-demo"))
}

#[test]
fn sigterm_exits_0_within_the_grace_period_with_work_in_flight() {
    let mut child = Command::new(binary())
        .args([
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
        .arg(temp_path("admin.token"))
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
    let ml = LoopbackMlNode::start().await;
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
    let token_file = temp_path("admin.token");
    let output = tokio::task::spawn_blocking(move || {
        Command::new(binary())
            .args(["--json", "--backlog", "60", "--slots", "3", "--replay-timeout-ms", "300"])
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

/// The devshard scenario end to end: session hosts on the gRPC service, leases through the
/// NodeManager. Every call is answered; the replays never exceed the NodeManager's capacity;
/// the misbehaving executors get their verdicts.
#[test]
fn the_devshard_scenario_answers_every_call_within_the_node_managers_capacity() {
    let child = Command::new(binary())
        .args(["--devshard", "--json", "--sessions", "3", "--inferences-per-session", "40"])
        .args(["--node-capacity", "2", "--admin-token-file"])
        .arg(temp_path("admin.token"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    let summary: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(summary["event"], "devshard_summary", "{summary}");
    assert_eq!(summary["calls"], 120, "{summary}");
    assert_eq!(summary["errors"], serde_json::json!({}), "{summary}");
    let verdicts = &summary["verdicts"];
    for (key, n) in [
        ("invalid/inflated_tokens", 6),
        ("invalid/hash_mismatch", 3),
        ("skipped/payload_gone", 3),
        ("valid/similarity_pass", 108),
    ] {
        assert_eq!(verdicts[key], n, "{key}: {summary}");
    }
    assert!(summary["peak_replays"].as_u64().unwrap() <= 2, "{summary}");
    assert!(summary["peak_locks"].as_u64().unwrap() <= 2, "{summary}");
}
