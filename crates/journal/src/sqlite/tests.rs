use std::{
    path::PathBuf,
    sync::atomic::AtomicUsize,
    time::{Duration, Instant, SystemTime},
};

use validator_core::{
    ports::{chain::MsgValidation, journal::SubmissionResult},
    recovery::{RunReport, RunState, Trigger},
    scoring::{ValueDecimal, Verdict},
    Lane, Outcome, OutcomeCounts, OutcomeEvent, OutcomeKind, SkipReason, Stage,
};

use super::*;
use crate::{Config, DataDirLock, Error, Synchronous};

/// A directory under the system's temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "validator-storage-{name}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        Self(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn open(dir: &TempDir) -> SqliteJournal {
    SqliteJournal::open(dir.path(), &Config::default()).unwrap()
}

fn at(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

fn id(name: &str) -> InferenceId {
    InferenceId::from(name)
}

fn intent(msg_id: &str, inference: &str, epoch: u64) -> Intent {
    Intent {
        msg: MsgValidation {
            id: msg_id.to_owned(),
            inference_id: id(inference),
            response_hash: "ab".repeat(32),
            value_decimal: ValueDecimal { value: 9987, exponent: -4 },
            revalidation: false,
        },
        epoch,
        lane: Lane::Live,
        outcome: submitted(msg_id),
    }
}

fn submitted(msg_id: &str) -> Outcome {
    Outcome::Submitted {
        verdict: Verdict::Similarity,
        value: 0.9987,
        msg_id: msg_id.to_owned(),
        tx_hash: Some("HASH".into()),
    }
}

fn admitted(inference: &str, revalidation: bool, epoch: Option<u64>, ms: u64) -> JournalEntry {
    JournalEntry::Admitted {
        inference_id: id(inference),
        revalidation,
        lane: if revalidation { Lane::Revalidation } else { Lane::Live },
        epoch,
        run_id: None,
        at: at(ms),
    }
}

fn finished(inference: &str, revalidation: bool, outcome: Outcome, ms: u64) -> JournalEntry {
    JournalEntry::Finished {
        event: OutcomeEvent {
            inference_id: id(inference),
            revalidation,
            lane: if revalidation { Lane::Revalidation } else { Lane::Live },
            run_id: None,
            outcome,
            attempts: 1,
            wait: Some(Duration::from_millis(5)),
            elapsed: Duration::from_millis(50),
        },
        at: at(ms),
    }
}

fn answer(msg_id: &str, result: SubmissionResult) -> JournalEntry {
    JournalEntry::Submission { msg_id: msg_id.to_owned(), result, at: at(2_000) }
}

fn ids(intents: &[Intent]) -> Vec<&str> {
    intents.iter().map(|intent| intent.msg.id.as_str()).collect()
}

#[tokio::test]
async fn an_intent_is_durable_before_its_ack_and_open_until_closed() {
    let dir = TempDir::new("intent");
    let journal = open(&dir);
    journal.intend(&intent("m1", "inf-1", 3)).await.unwrap();

    // Another connection sees the row: it was committed before `intend` returned.
    let other = Connection::open(dir.path().join(JOURNAL_FILE)).unwrap();
    let count: i64 = other
        .query_row("SELECT count(*) FROM submissions WHERE msg_id = 'm1' AND open = 1", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(count, 1);
    let open_intents = journal.open_intents().await.unwrap();
    assert_eq!(open_intents, vec![intent("m1", "inf-1", 3)]);

    journal.intend(&intent("m2", "inf-2", 3)).await.unwrap();
    journal.intend(&intent("m3", "inf-3", 3)).await.unwrap();
    journal.record(answer("m1", SubmissionResult::Landed { tx_hash: Some("T".into()) }));
    journal.record(answer("m2", SubmissionResult::Uncertain { error: "timeout".into() }));
    journal.record(answer("m3", SubmissionResult::ReconciledResent));
    journal.flush().await.unwrap();
    assert_eq!(ids(&journal.open_intents().await.unwrap()), ["m2", "m3"]);

    journal.record(answer("m2", SubmissionResult::Duplicate));
    journal.flush().await.unwrap();
    assert_eq!(ids(&journal.open_intents().await.unwrap()), ["m3"]);
    assert!(journal.already_sent(&id("inf-1"), false).await.unwrap());
    assert!(journal.already_sent(&id("inf-2"), false).await.unwrap());
    assert!(!journal.already_sent(&id("inf-3"), false).await.unwrap());
    journal.close().await;

    // A restart sees the same open intents.
    let journal = open(&dir);
    assert_eq!(journal.open_intents().await.unwrap(), vec![intent("m3", "inf-3", 3)]);
    journal.close().await;
}

#[tokio::test]
async fn already_sent_follows_finished_outcomes() {
    let dir = TempDir::new("already-sent");
    let journal = open(&dir);
    journal.record(admitted("a", false, None, 1_000));
    journal.record(finished("a", false, submitted("m-a"), 1_100));
    journal.record(admitted("b", false, None, 1_000));
    journal.record(finished("b", false, Outcome::Skipped { reason: SkipReason::Gone }, 1_100));
    // Admission dropped: the outcome still lands, on a row of its own.
    journal.record(finished(
        "c",
        true,
        Outcome::Skipped { reason: SkipReason::AlreadyValidated },
        1_100,
    ));
    journal.flush().await.unwrap();

    assert!(journal.already_sent(&id("a"), false).await.unwrap());
    assert!(!journal.already_sent(&id("a"), true).await.unwrap());
    assert!(!journal.already_sent(&id("b"), false).await.unwrap());
    assert!(journal.already_sent(&id("c"), true).await.unwrap());
    assert!(!journal.already_sent(&id("unknown"), false).await.unwrap());

    let c = journal.history("c").await.unwrap();
    assert_eq!(c.validations.len(), 1);
    assert_eq!(c.validations[0].admitted_at_ms, 1_050);
    assert_eq!(c.validations[0].lane.as_deref(), Some("revalidation"));
    journal.close().await;
}

#[tokio::test]
async fn history_holds_validations_attempts_and_submissions_in_order() {
    let dir = TempDir::new("history");
    let journal = open(&dir);
    journal.record(admitted("x", false, None, 1_000));
    journal.record(JournalEntry::Epoch { inference_id: id("x"), revalidation: false, epoch: 7 });
    for (stage, error, ms) in [(Stage::Payload, "503", 1_200), (Stage::Replay, "timeout", 1_900)] {
        journal.record(JournalEntry::Attempt {
            inference_id: id("x"),
            revalidation: false,
            stage,
            error: error.into(),
            duration: Duration::from_millis(100),
            at: at(ms),
        });
    }
    journal.intend(&intent("mx", "x", 7)).await.unwrap();
    journal.record(answer("mx", SubmissionResult::Landed { tx_hash: Some("T".into()) }));
    journal.record(finished("x", false, submitted("mx"), 2_100));
    journal.record(admitted("x", true, Some(7), 3_000));
    journal.record(admitted("other", false, None, 3_000));
    journal.flush().await.unwrap();

    let history = journal.history("x").await.unwrap();
    assert_eq!(history.inference_id, "x");
    assert_eq!(history.validations.len(), 2);
    let first = &history.validations[0];
    assert!(!first.revalidation);
    assert_eq!(first.epoch, Some(7));
    assert_eq!(first.lane.as_deref(), Some("live"));
    let attempts: Vec<_> =
        first.attempts.iter().map(|a| (a.stage.as_str(), a.error.as_str(), a.at_ms)).collect();
    assert_eq!(attempts, [("payload", "503", 1_200), ("replay", "timeout", 1_900)]);
    assert_eq!(first.attempts[0].duration_ms, 100);
    let outcome = first.outcome.as_ref().unwrap();
    assert_eq!(outcome.kind, OutcomeKind::Submitted.as_str());
    assert_eq!(outcome.verdict.as_deref(), Some("similarity"));
    assert_eq!(outcome.value, Some(0.9987));
    assert_eq!(outcome.msg_id.as_deref(), Some("mx"));
    assert_eq!(outcome.tx_hash.as_deref(), Some("HASH"));
    assert_eq!((outcome.wait_ms, outcome.elapsed_ms, outcome.finished_at_ms), (Some(5), 50, 2_100));
    let second = &history.validations[1];
    assert!(second.revalidation && second.attempts.is_empty() && second.outcome.is_none());

    assert_eq!(history.submissions.len(), 1);
    let submission = &history.submissions[0];
    assert_eq!(submission.intent, intent("mx", "x", 7));
    assert_eq!(submission.result, Some(SubmissionResult::Landed { tx_hash: Some("T".into()) }));
    assert!(!submission.open);
    assert_eq!(submission.resolved_at_ms, Some(2_000));
    serde_json::to_string(&history).unwrap();

    assert!(journal.history("nothing").await.unwrap().is_empty());
    journal.close().await;
}

#[tokio::test]
async fn runs_heights_and_claims_survive_a_restart() {
    let dir = TempDir::new("runs");
    let journal = open(&dir);
    assert_eq!(journal.last_run_id(), 0);
    assert_eq!(journal.height().unwrap(), None);
    journal.record(JournalEntry::RunStarted {
        run_id: 4,
        epoch: 9,
        trigger: Trigger::Claim,
        at: at(1_000),
    });
    assert_eq!(journal.last_run_id(), 4);
    let mut outcomes = OutcomeCounts::default();
    outcomes.add(OutcomeKind::Submitted);
    outcomes.add(OutcomeKind::Submitted);
    let report = RunReport {
        run_id: 4,
        epoch: 9,
        state: RunState::Completed,
        detected: 2,
        admitted: 2,
        outcomes,
    };
    journal.record(JournalEntry::RunEnded { report, at: at(5_000) });
    journal.record(JournalEntry::RunStarted {
        run_id: 5,
        epoch: 10,
        trigger: Trigger::Admin,
        at: at(6_000),
    });
    journal.store_height(120);
    journal.store_height(121);
    journal.store_claim(9, r#"{"state":"pending"}"#.into()).await.unwrap();
    journal.store_claim(9, r#"{"state":"paid"}"#.into()).await.unwrap();
    journal.store_claim(8, r#"{"state":"paid"}"#.into()).await.unwrap();
    journal.close().await;

    let journal = open(&dir);
    assert_eq!(journal.last_run_id(), 5);
    assert_eq!(journal.height().unwrap(), Some(121));
    assert_eq!(
        journal.claims().unwrap(),
        [(8, r#"{"state":"paid"}"#.to_owned()), (9, r#"{"state":"paid"}"#.to_owned())]
    );
    let runs = journal.recent_runs(10).await.unwrap();
    assert_eq!(runs.iter().map(|run| run.run_id).collect::<Vec<_>>(), [5, 4]);
    assert_eq!(runs[0].state, None);
    assert_eq!(runs[0].trigger.as_deref(), Some("admin"));
    let run = &runs[1];
    assert_eq!(run.state.as_deref(), Some("completed"));
    assert_eq!((run.started_at_ms, run.ended_at_ms), (Some(1_000), Some(5_000)));
    assert_eq!((run.detected, run.admitted), (Some(2), Some(2)));
    assert_eq!(run.outcomes.get("submitted"), Some(&2));
    assert_eq!(journal.recent_runs(1).await.unwrap().len(), 1);
    assert_eq!(journal.run(4).await.unwrap().as_ref(), Some(run));
    assert_eq!(journal.run(6).await.unwrap(), None);
    journal.close().await;
}

#[tokio::test]
async fn a_newer_schema_is_refused() {
    let dir = TempDir::new("schema");
    open(&dir).close().await;
    let newer = schema::known_version() + 1;
    Connection::open(dir.path().join(JOURNAL_FILE))
        .unwrap()
        .pragma_update(None, "user_version", newer)
        .unwrap();

    let err = SqliteJournal::open(dir.path(), &Config::default()).unwrap_err();
    assert!(
        matches!(err, Error::SchemaTooNew { found, known, .. }
            if found == newer && known == schema::known_version()),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains(&format!("schema version {newer}")), "{text}");
    assert!(text.contains(&format!("up to {}", schema::known_version())), "{text}");
    assert!(text.contains("newer validator") && text.contains("another database"), "{text}");
    let _: anyhow::Error = err.into();
}

#[test]
fn the_data_directory_is_locked_once() {
    let dir = TempDir::new("lock");
    let data_dir = dir.path().join("nested");
    let first = DataDirLock::acquire(&data_dir).unwrap();
    assert_eq!(first.dir(), data_dir);
    let err = DataDirLock::acquire(&data_dir).unwrap_err();
    assert!(matches!(&err, Error::Locked { path } if *path == data_dir), "{err:?}");
    assert!(err.to_string().contains("another validator process"), "{err}");
    assert!(err.to_string().contains(&data_dir.display().to_string()), "{err}");
    drop(first);
    let _again = DataDirLock::acquire(&data_dir).unwrap();
}

#[tokio::test]
async fn prune_deletes_old_history_but_keeps_open_intents() {
    let dir = TempDir::new("prune");
    let journal = open(&dir);
    journal.record(admitted("old-null", false, None, 1_000));
    journal.record(admitted("old", false, Some(1), 2_000));
    journal.record(JournalEntry::Attempt {
        inference_id: id("old"),
        revalidation: false,
        stage: Stage::Chain,
        error: "x".into(),
        duration: Duration::ZERO,
        at: at(2_100),
    });
    journal.record(admitted("kept", false, Some(5), 3_000));
    journal.record(admitted("new-null", false, None, 4_000));
    journal.intend(&intent("open-old", "o1", 1)).await.unwrap();
    journal.intend(&intent("closed-old", "o2", 1)).await.unwrap();
    journal.intend(&intent("closed-new", "o3", 5)).await.unwrap();
    journal.record(answer("closed-old", SubmissionResult::Rejected { error: "no".into() }));
    journal.record(answer("closed-new", SubmissionResult::Duplicate));
    for (run_id, epoch) in [(1, 1), (2, 5)] {
        journal.record(JournalEntry::RunStarted {
            run_id,
            epoch,
            trigger: Trigger::Claim,
            at: at(1_000),
        });
    }

    journal.store_claim(1, "{}".into()).await.unwrap();
    journal.store_claim(5, "{}".into()).await.unwrap();

    let report = journal.prune(3).await.unwrap();
    assert_eq!(
        report,
        PruneReport { validations: 2, attempts: 1, submissions: 1, runs: 1, claims: 1 }
    );
    assert_eq!(journal.claims().unwrap(), [(5, "{}".to_owned())]);
    assert_eq!(ids(&journal.open_intents().await.unwrap()), ["open-old"]);
    assert!(journal.history("old").await.unwrap().is_empty());
    assert!(journal.history("old-null").await.unwrap().is_empty());
    assert_eq!(journal.history("kept").await.unwrap().validations.len(), 1);
    assert_eq!(journal.history("new-null").await.unwrap().validations.len(), 1);
    assert_eq!(journal.history("o3").await.unwrap().submissions.len(), 1);
    assert_eq!(journal.recent_runs(10).await.unwrap().len(), 1);
    // Pruning every run keeps run ids unique after a restart.
    journal.prune(100).await.unwrap();
    assert_eq!(ids(&journal.open_intents().await.unwrap()), ["open-old"]);
    journal.close().await;
    assert_eq!(open(&dir).last_run_id(), 2);
}

#[tokio::test]
async fn close_writes_everything_queued() {
    let dir = TempDir::new("close");
    let journal = open(&dir);
    let resume = journal.pause().await;
    for n in 0..500 {
        journal.record(admitted(&format!("q{n}"), false, Some(1), 1_000));
    }
    let closing = journal.close();
    drop(resume);
    closing.await;
    assert_eq!(journal.dropped(), 0);
    journal.record(admitted("late", false, Some(1), 1_000));
    assert_eq!(journal.dropped(), 1);
    assert!(matches!(journal.intend(&intent("m", "late", 1)).await, Err(JournalError(_))));

    let journal = open(&dir);
    let count: i64 = journal
        .read(|conn| Ok(conn.query_row("SELECT count(*) FROM validations", [], |r| r.get(0))?))
        .await
        .unwrap();
    assert_eq!(count, 500);
    journal.close().await;
}

#[tokio::test]
async fn a_full_queue_drops_and_counts() {
    let dir = TempDir::new("full");
    let config = Config { queue_capacity: 4, ..Config::default() };
    let journal = SqliteJournal::open(dir.path(), &config).unwrap();
    let resume = journal.pause().await;
    for n in 0..10 {
        journal.record(admitted(&format!("f{n}"), false, Some(1), 1_000));
    }
    assert_eq!(journal.dropped(), 6);
    drop(resume);
    journal.flush().await.unwrap();
    for n in 0..10 {
        let name = format!("f{n}");
        let expected = usize::from(n < 4);
        assert_eq!(journal.history(&name).await.unwrap().validations.len(), expected, "{name}");
    }
    journal.close().await;
}

#[test]
fn config_reads_and_checks() {
    let config: Config =
        toml::from_str("synchronous = \"normal\"\nprune_interval = 60000").unwrap();
    assert_eq!(config.synchronous, Synchronous::Normal);
    assert_eq!(config.prune_interval, Duration::from_secs(60));
    assert_eq!(config.queue_capacity, 65_536);
    assert_eq!(config.keep_from_epoch(20), 12);
    assert_eq!(config.keep_from_epoch(3), 0);
    assert!(toml::from_str::<Config>("sync = \"full\"").is_err());
    let zero = Config { queue_capacity: 0, ..Config::default() };
    assert!(matches!(zero.validate(), Err(Error::Config(_))));
}

/// Throughput with `synchronous = full`, printed rather than asserted:
/// `cargo test -p journal --lib sqlite::tests::throughput -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check"]
async fn throughput() {
    let dir = TempDir::new("throughput");
    let journal = Arc::new(open(&dir));
    const N: u64 = 10_000;

    let started = Instant::now();
    for n in 0..N {
        let name = format!("t{n}");
        journal.record(admitted(&name, false, Some(1), 1_000));
        journal.record(finished(&name, false, submitted(&name), 1_100));
    }
    journal.flush().await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(journal.dropped(), 0);
    println!(
        "{N} admitted + finished: {elapsed:?}, {:.0} entries/s",
        (2 * N) as f64 / elapsed.as_secs_f64()
    );

    let sequential = 500;
    let started = Instant::now();
    for n in 0..sequential {
        journal.intend(&intent(&format!("s{n}"), &format!("s{n}"), 1)).await.unwrap();
    }
    let elapsed = started.elapsed();
    println!(
        "{sequential} sequential intents: {elapsed:?}, {:.0} intents/s",
        f64::from(sequential) / elapsed.as_secs_f64()
    );

    let (tasks, each) = (64, 50);
    let started = Instant::now();
    let mut handles = Vec::new();
    for task in 0..tasks {
        let journal = Arc::clone(&journal);
        handles.push(tokio::spawn(async move {
            for n in 0..each {
                let name = format!("c{task}-{n}");
                journal.intend(&intent(&name, &name, 1)).await.unwrap();
            }
        }));
    }
    for handle in handles {
        handle.await.unwrap();
    }
    let elapsed = started.elapsed();
    println!(
        "{} intents from {tasks} concurrent tasks: {elapsed:?}, {:.0} intents/s",
        tasks * each,
        f64::from(tasks * each) / elapsed.as_secs_f64()
    );
    journal.close().await;
}
