use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    time::Duration,
};

use rand::{Rng as _, SeedableRng as _};
use serde_json::json;
use testkit::{LoopbackChainNode, Submitted, SubmittedMsg, TxEvent};
use tokio::time::timeout;
use validator_demo::{inference_id, DemoOptions, Scenario, BACKLOG_EPOCH, DISPUTED};

const BOUND: Duration = Duration::from_secs(30);
const BACKLOG: usize = 40;

fn spawn_run(config: &Path, stderr: Stdio) -> Child {
    Command::new(crate::binary())
        .arg("run")
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap()
}

/// `validator run` to its exit, with its output.
fn run_to_end(config: &Path) -> std::process::Output {
    Command::new(crate::binary())
        .arg("run")
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

fn send_signal(child: &Child, signal: i32) {
    let pid = i32::try_from(child.id()).unwrap();
    // SAFETY: signals a child this test spawned and has not waited for yet.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
}

async fn wait_exit(child: Child) -> ExitStatus {
    tokio::task::spawn_blocking(move || testkit::process::wait_exit(child, BOUND)).await.unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The (inference, revalidation) of every accepted `MsgValidation`, with how often it landed.
fn validations(chain: &LoopbackChainNode) -> BTreeMap<(String, bool), usize> {
    let mut counts = BTreeMap::new();
    for submitted in chain.submitted() {
        if let SubmittedMsg::Validation { inference_id, revalidation, .. } = submitted.msg {
            *counts.entry((inference_id, revalidation)).or_default() += 1;
        }
    }
    counts
}

fn backlog_done(submitted: &[Submitted]) -> bool {
    let backlog: BTreeSet<String> = (0..BACKLOG).map(|i| inference_id("backlog", i)).collect();
    let validated: BTreeSet<&str> = submitted
        .iter()
        .filter_map(|s| match &s.msg {
            SubmittedMsg::Validation { inference_id, revalidation: false, .. }
                if backlog.contains(inference_id) =>
            {
                Some(inference_id.as_str())
            }
            _ => None,
        })
        .collect();
    validated.len() == BACKLOG
}

/// One block per disputed inference, each with a `needs_revalidation` event.
fn disputes(chain: &LoopbackChainNode) {
    for i in 0..DISPUTED {
        let id = inference_id("disputed", i);
        chain.produce_block(vec![vec![TxEvent::inference_validation(&id, "gonka1other", true)]]);
    }
}

/// One seed: a node killed with SIGKILL after a seeded number of accepted messages, while it
/// recovers the backlog and revalidates disputed inferences, then restarted on the same data
/// directory and asked to recover the epoch again.
async fn kill_and_restart(seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let options = DemoOptions {
        backlog: BACKLOG,
        slots: 4,
        ml_latency_ms: rng.random_range(1..8),
        live_rate: 0.0,
        ..DemoOptions::default()
    };
    let scenario = Scenario::start(&options).await.unwrap();
    let chain = &scenario.chain;
    let data_dir = crate::temp_path("crash-data");
    let admin_port = free_port();
    let config = crate::run_config(&scenario, &options, &data_dir, admin_port);

    let first = spawn_run(&config, Stdio::null());
    timeout(BOUND, chain.wait_subscriptions(1)).await.unwrap();
    // The disputed inferences' revalidation events, then the claim height (five blocks after
    // the start): recovery of the backlog epoch.
    disputes(chain);
    chain.advance(1);
    let kill_after = rng.random_range(1..=BACKLOG + DISPUTED);
    timeout(BOUND, chain.wait_submitted(kill_after)).await.unwrap();
    send_signal(&first, libc::SIGKILL);
    wait_exit(first).await;
    let at_kill = chain.submitted().len();

    let second = spawn_run(&config, Stdio::null());
    timeout(BOUND, chain.wait_subscriptions(2)).await.unwrap();
    // Other validators keep disputing the same inferences: the restarted node hears of them
    // again, and only its journal knows which revalidations it already sent (the chain keeps
    // no per-validator record of revalidations).
    disputes(chain);
    let token = std::fs::read_to_string(data_dir.join("admin.token")).unwrap();
    let response = crate::http_client()
        .post(format!("http://127.0.0.1:{admin_port}/admin/v1/recovery"))
        .bearer_auth(token.trim())
        .body(json!({"epoch_index": BACKLOG_EPOCH}).to_string())
        .timeout(BOUND)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202, "seed {seed}");
    timeout(BOUND, chain.wait_for_submitted(backlog_done)).await.unwrap_or_else(|_| {
        panic!("seed {seed}: the backlog was not finished: {:?}", validations(chain))
    });
    send_signal(&second, libc::SIGTERM);
    assert_eq!(wait_exit(second).await.code(), Some(0), "seed {seed}");

    let counts = validations(chain);
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "seed {seed} (killed after {kill_after}): sent twice: {twice:?}");
    assert_eq!(chain.duplicate_rejections(), 0, "seed {seed}: a recorded validation was resent");
    assert!(chain.submitted().len() >= at_kill);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_at_any_point_never_sends_a_validation_twice() {
    let seeds: u64 = std::env::var("CRASH_SEEDS").ok().and_then(|n| n.parse().ok()).unwrap_or(10);
    for seed in 0..seeds {
        kill_and_restart(seed).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_on_the_same_data_directory_exits_73_before_connecting() {
    let options = DemoOptions { backlog: 2, slots: 1, live_rate: 0.0, ..DemoOptions::default() };
    let scenario = Scenario::start(&options).await.unwrap();
    let data_dir = crate::temp_path("locked-data");
    let config = crate::run_config(&scenario, &options, &data_dir, 0);
    let first = spawn_run(&config, Stdio::null());
    timeout(BOUND, scenario.chain.wait_subscriptions(1)).await.unwrap();

    let second = run_to_end(&config);
    assert_eq!(second.status.code(), Some(73));
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("another validator process"), "{stderr}");
    assert!(stderr.contains(&data_dir.display().to_string()), "{stderr}");
    assert_eq!(scenario.chain.subscriptions(), 1, "the second process connected");

    send_signal(&first, libc::SIGTERM);
    assert_eq!(wait_exit(first).await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_journal_schema_is_refused_with_a_clear_message() {
    let options = DemoOptions { backlog: 1, slots: 1, live_rate: 0.0, ..DemoOptions::default() };
    let scenario = Scenario::start(&options).await.unwrap();
    let data_dir = crate::temp_path("future-data");
    let config = crate::run_config(&scenario, &options, &data_dir, 0);
    std::fs::create_dir_all(&data_dir).unwrap();
    {
        let db = rusqlite::Connection::open(data_dir.join("journal.sqlite")).unwrap();
        db.pragma_update(None, "user_version", 999).unwrap();
    }
    let output = run_to_end(&config);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("999"), "{stderr}");
    assert_eq!(scenario.chain.subscriptions(), 0);
}
