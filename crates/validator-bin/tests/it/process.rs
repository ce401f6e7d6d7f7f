use std::{
    process::{Command, Stdio},
    time::Duration,
};

use testkit::process::wait_exit;

/// Bound on each awaited condition.
const BOUND: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_follows_the_chain_recovers_claims_and_stops_on_sigterm() {
    use testkit::{SubmittedMsg, TxEvent};
    use validator_demo::{DemoOptions, Scenario, LIVE_EPOCH};

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
    // SIGHUP (a closed terminal, a reload habit) neither kills the node nor stops its work.
    let pid = i32::try_from(child.id()).unwrap();
    // SAFETY: sends a signal to the child this test spawned and still owns.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);

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

    // SAFETY: sends a signal to the child this test spawned and still owns.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let mut child = child;
    let stdout = child.stdout.take().unwrap();
    let status = tokio::task::spawn_blocking(move || wait_exit(child, Duration::from_secs(15)))
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
    let printed = std::io::read_to_string(stdout).unwrap();
    assert!(printed.contains(&format!("admin token: {}", token.trim())), "{printed}");
    let journal = journal::SqliteJournal::open(&data_dir, &Default::default()).unwrap();
    let height = journal.height().unwrap().unwrap();
    assert!(height >= claim_height, "the processed height is kept: {height}");
    let runs = journal.recent_runs(10).await.unwrap();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!((runs[0].trigger.as_deref(), runs[0].epoch), (Some("claim"), 9));
}
