//! The PostgreSQL backend against a real server on loopback (`testkit::postgres`): schema
//! versions, history, intents and their fence, and the leases between replicas. Each test
//! takes its own database; replicas are several `PostgresJournal`s on it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    sync::{Arc, LazyLock},
    time::{Duration, SystemTime},
};

use journal::{Backend, Config, Error, PostgresJournal, Store};
use testkit::postgres::TempPostgres;
use validator_core::{
    ports::{
        chain::MsgValidation,
        journal::{Intent, Journal, JournalEntry, SubmissionResult},
        lease::{Acquired, LeaseKey},
        Leases,
    },
    recovery::Trigger,
    scoring::{ValueDecimal, Verdict},
    Lane, Outcome, OutcomeEvent, SkipReason,
};

static POSTGRES: LazyLock<TempPostgres> = LazyLock::new(TempPostgres::start);

/// Ids as the chain makes them: base64 with `/`, `+` and `=`.
const ID: &str = "aW5m/ZXJl+bmNl==";

fn config(url: &str, ttl_ms: u64) -> Config {
    Config {
        backend: Backend::Postgres,
        url: Some(url.to_owned()),
        pool_size: 4,
        timeout: Duration::from_secs(5),
        lease_ttl: Duration::from_millis(ttl_ms),
        ..Config::default()
    }
}

async fn database(name: &str) -> String {
    POSTGRES.create_database(name).await
}

async fn replica(url: &str, ttl_ms: u64) -> PostgresJournal {
    PostgresJournal::connect(&config(url, ttl_ms)).await.unwrap()
}

fn intent(msg_id: &str, inference: &str) -> Intent {
    Intent {
        msg: MsgValidation {
            id: msg_id.into(),
            inference_id: inference.into(),
            response_hash: "ab".repeat(32),
            value_decimal: ValueDecimal { value: 1, exponent: 0 },
            revalidation: false,
        },
        epoch: 10,
        lane: Lane::Live,
        outcome: Outcome::Submitted {
            verdict: Verdict::Similarity,
            value: 1.0,
            msg_id: msg_id.into(),
            tx_hash: None,
        },
    }
}

fn key() -> LeaseKey {
    LeaseKey::classic(&ID.into(), false)
}

/// Asks for `key` until the answer is `Held`, pausing a tenth of the TTL between asks.
async fn acquire_when_free(journal: &PostgresJournal, key: &LeaseKey) -> Acquired {
    for _ in 0..200 {
        match journal.acquire(key).await.unwrap() {
            Acquired::Busy { remaining, .. } => {
                tokio::time::sleep(remaining.max(Duration::from_millis(10))).await
            }
            answer => return answer,
        }
    }
    panic!("the lease never came free");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schema_is_migrated_once_and_a_newer_one_is_refused() {
    let url = database("schema").await;
    let a = replica(&url, 1000).await;
    let b = replica(&url, 1000).await;
    assert_ne!(a.replica(), b.replica(), "every start is a new replica");
    a.close().await;
    b.close().await;
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let version: i32 =
        client.query_one("SELECT version FROM schema_version", &[]).await.unwrap().get(0);
    assert_eq!(version, 1);
    client.execute("UPDATE schema_version SET version = 99", &[]).await.unwrap();
    let err = PostgresJournal::connect(&config(&url, 1000)).await.unwrap_err();
    assert!(matches!(err, Error::SchemaTooNew { found: 99, known: 1, .. }), "{err}");
    assert!(!err.to_string().contains("secret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_runs_claims_and_heights_round_trip_and_prune() {
    let url = database("history").await;
    let a = replica(&url, 1000).await;
    let b = replica(&url, 1000).await;
    let now = SystemTime::now();
    a.record(JournalEntry::Admitted {
        inference_id: ID.into(),
        revalidation: false,
        lane: Lane::Live,
        epoch: None,
        run_id: None,
        at: now,
    });
    a.record(JournalEntry::Epoch { inference_id: ID.into(), revalidation: false, epoch: 10 });
    a.record(JournalEntry::Attempt {
        inference_id: ID.into(),
        revalidation: false,
        stage: validator_core::Stage::Payload,
        error: "executor restarting".into(),
        duration: Duration::from_millis(7),
        at: now,
    });
    a.record(JournalEntry::Finished {
        event: OutcomeEvent {
            inference_id: ID.into(),
            revalidation: false,
            lane: Lane::Live,
            run_id: None,
            outcome: Outcome::Skipped { reason: SkipReason::WorkedElsewhere },
            attempts: 2,
            wait: None,
            elapsed: Duration::from_millis(30),
        },
        at: now,
    });
    a.record(JournalEntry::RunStarted { run_id: 4, epoch: 9, trigger: Trigger::Claim, at: now });
    a.store_height(120);
    b.store_height(100);
    a.flush().await.unwrap();
    b.flush().await.unwrap();
    assert_eq!(a.height().await.unwrap(), Some(120), "the height never moves backwards");

    let history = b.history(ID).await.unwrap();
    assert_eq!(history.validations.len(), 1);
    let validation = &history.validations[0];
    assert_eq!((validation.epoch, validation.replica.as_deref()), (Some(10), Some(a.replica())));
    assert_eq!(validation.attempts.len(), 1);
    assert_eq!(validation.outcome.as_ref().unwrap().kind, "skipped_worked_elsewhere");
    let runs = b.recent_runs(5).await.unwrap();
    assert_eq!(
        (runs[0].run_id, runs[0].epoch, runs[0].replica.as_deref()),
        (4, 9, Some(a.replica()))
    );
    assert_eq!(b.run(4).await.unwrap().unwrap().trigger.as_deref(), Some("claim"));

    a.store_claim(9, "{\"state\":\"paid\"}".into()).await.unwrap();
    assert_eq!(b.claims().await.unwrap(), vec![(9, "{\"state\":\"paid\"}".to_owned())]);

    let report = b.prune(11).await.unwrap();
    assert_eq!((report.validations, report.attempts, report.runs, report.claims), (1, 1, 1, 1));
    assert!(b.history(ID).await.unwrap().is_empty());
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intent_commits_only_under_its_lease_and_each_replica_reconciles_its_own() {
    let url = database("intents").await;
    let a = replica(&url, 60_000).await;
    let b = replica(&url, 60_000).await;
    let err = a.intend(&intent("m-1", ID)).await.unwrap_err();
    assert!(err.0.contains("not held"), "{err}");
    assert!(a.open_intents().await.unwrap().is_empty(), "the fence wrote nothing");

    assert_eq!(a.acquire(&key()).await.unwrap(), Acquired::Held { takeover: None });
    a.intend(&intent("m-1", ID)).await.unwrap();
    assert!(b.intend(&intent("m-2", ID)).await.is_err(), "b does not hold the lease");
    assert_eq!(a.open_intents().await.unwrap(), vec![intent("m-1", ID)]);
    assert!(b.open_intents().await.unwrap().is_empty(), "b reconciles only its own");

    assert!(!b.already_sent(&ID.into(), false).await.unwrap());
    a.record(JournalEntry::Submission {
        msg_id: "m-1".into(),
        result: SubmissionResult::Landed { tx_hash: Some("AB".into()) },
        at: SystemTime::now(),
    });
    a.flush().await.unwrap();
    assert!(a.open_intents().await.unwrap().is_empty());
    assert!(b.already_sent(&ID.into(), false).await.unwrap(), "sent is known across replicas");
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_is_busy_then_done_or_free_for_the_other_replica() {
    let url = database("leases").await;
    let a = replica(&url, 60_000).await;
    let b = replica(&url, 60_000).await;
    assert_eq!(a.acquire(&key()).await.unwrap(), Acquired::Held { takeover: None });
    assert!(a.held(&key()));
    assert_eq!(a.acquire(&key()).await.unwrap(), Acquired::Held { takeover: None }, "held again");
    let Acquired::Busy { holder, remaining } = b.acquire(&key()).await.unwrap() else { panic!() };
    assert_eq!(holder, a.replica());
    assert!(remaining > Duration::from_secs(50) && remaining <= Duration::from_secs(60));
    assert!(!b.held(&key()));

    let outcome = Outcome::Skipped { reason: SkipReason::Gone };
    a.release(&key(), Some(&outcome)).await.unwrap();
    assert!(!a.held(&key()));
    assert_eq!(
        b.acquire(&key()).await.unwrap(),
        Acquired::Done { outcome: Some(outcome), by: a.replica().to_owned() }
    );

    let other = LeaseKey::devshard("42", 7);
    a.acquire(&other).await.unwrap();
    a.release(&other, None).await.unwrap();
    assert_eq!(b.acquire(&other).await.unwrap(), Acquired::Held { takeover: None });
    assert_eq!(b.status().held, 1);
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_is_taken_over_with_its_open_intent_and_the_old_holder_is_fenced() {
    let url = database("takeover").await;
    let ttl = 400;
    let a = replica(&url, ttl).await;
    let b = replica(&url, ttl).await;
    a.acquire(&key()).await.unwrap();
    a.intend(&intent("m-1", ID)).await.unwrap();
    // a stops renewing without handing anything back, as a killed process.
    drop(a);

    let a2 = replica(&url, ttl).await; // an unrelated third replica, to show takeovers are counted per taker
    let Acquired::Held { takeover: Some(takeover) } = acquire_when_free(&b, &key()).await else {
        panic!("expected a takeover")
    };
    assert_eq!(takeover.open_intents.len(), 1);
    assert_eq!(takeover.open_intents[0].intent, intent("m-1", ID));
    assert!(takeover.open_intents[0].age >= Duration::from_millis(ttl));
    assert_eq!(b.status().takeovers, 1);
    assert_eq!(a2.status().takeovers, 0);
    b.close().await;
    a2.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_keeps_a_lease_and_a_lease_taken_over_is_lost_to_its_old_holder() {
    let url = database("renewal").await;
    let ttl = 400;
    let a = replica(&url, ttl).await;
    let b = replica(&url, ttl).await;
    a.acquire(&key()).await.unwrap();
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_millis(3 * ttl) {
        assert!(matches!(b.acquire(&key()).await.unwrap(), Acquired::Busy { .. }));
        tokio::time::sleep(Duration::from_millis(ttl / 4)).await;
    }
    assert!(a.held(&key()), "renewed across three TTLs");

    // The row is forced to expire, as if a's renewals had stopped reaching the database.
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client
        .execute("UPDATE leases SET expires_at = clock_timestamp() - interval '1 second'", &[])
        .await
        .unwrap();
    let Acquired::Held { takeover: Some(takeover) } = b.acquire(&key()).await.unwrap() else {
        panic!("expected a takeover")
    };
    assert_eq!(takeover.from, a.replica());
    assert!(a.intend(&intent("m-a", ID)).await.is_err(), "the old holder is fenced");
    b.intend(&intent("m-b", ID)).await.unwrap();
    for _ in 0..100 {
        if !a.held(&key()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(ttl / 4)).await;
    }
    assert!(!a.held(&key()), "the renewal found the lease gone");
    assert_eq!(a.status().lost, 1);
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_sixteen_concurrent_takers_exactly_one_gets_the_lease() {
    let url = database("race").await;
    let mut replicas = Vec::new();
    for _ in 0..4 {
        replicas.push(Arc::new(replica(&url, 60_000).await));
    }
    let mut tasks = Vec::new();
    for i in 0..16 {
        let journal = Arc::clone(&replicas[i % 4]);
        tasks.push(tokio::spawn(async move {
            let answer = journal.acquire(&key()).await.unwrap();
            (journal.replica().to_owned(), answer)
        }));
    }
    let mut holders = std::collections::HashSet::new();
    for task in tasks {
        if let (replica, Acquired::Held { .. }) = task.await.unwrap() {
            holders.insert(replica);
        }
    }
    assert_eq!(holders.len(), 1, "{holders:?}");
    for journal in replicas {
        journal.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_replica_hands_its_leases_back_and_leases_off_means_no_fence() {
    let url = database("handover").await;
    let a = replica(&url, 60_000).await;
    let b = replica(&url, 60_000).await;
    a.acquire(&key()).await.unwrap();
    a.close().await;
    assert_eq!(b.acquire(&key()).await.unwrap(), Acquired::Held { takeover: None });
    b.close().await;

    let off =
        PostgresJournal::connect(&Config { leases: false, ..config(&url, 1000) }).await.unwrap();
    assert!(!off.status().shared);
    off.intend(&intent("m-off", "b3Zm/Zg==")).await.unwrap();
    assert!(off.held(&key()));
    off.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_fails_calls_within_the_timeout() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("postgres://validator:secret@127.0.0.1:{port}/none");
    let config = Config { timeout: Duration::from_millis(500), ..config(&url, 1000) };
    let started = std::time::Instant::now();
    let err = Store::open(std::path::Path::new("/nonexistent"), &config).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    assert!(!err.to_string().contains("secret"), "{err}");

    let url = database("down").await;
    let journal = replica(&url, 1000).await;
    // The database goes away under a running replica: calls fail, they do not hang.
    let (client, connection) =
        tokio_postgres::connect(POSTGRES.url(), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client.batch_execute("ALTER DATABASE down ALLOW_CONNECTIONS false").await.unwrap();
    client
        .batch_execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'down'",
        )
        .await
        .unwrap();
    let started = std::time::Instant::now();
    assert!(journal.acquire(&key()).await.is_err());
    assert!(journal.intend(&intent("m-down", ID)).await.is_err());
    assert!(started.elapsed() < Duration::from_secs(12), "{:?}", started.elapsed());
    client.batch_execute("ALTER DATABASE down ALLOW_CONNECTIONS true").await.unwrap();
    journal.close().await;
}

#[test]
fn settings_are_checked_and_the_password_never_shows() {
    let good = config("postgres://validator:secret@db:5432/validator", 15_000);
    good.validate().unwrap();
    assert!(!format!("{good:?}").contains("secret"));
    let cases = [
        (Config { url: None, ..good.clone() }, "needs storage.url"),
        (Config { url: Some("mysql://db/x".into()), ..good.clone() }, "postgres://"),
        (
            Config { url: Some("postgres://u:secret@db/x?sslmode=require".into()), ..good.clone() },
            "TLS",
        ),
        (Config { pool_size: 0, ..good.clone() }, "pool_size"),
        (Config { lease_ttl: Duration::from_millis(10), ..good.clone() }, "lease_ttl"),
        (Config { replica_id: Some("a b".into()), ..good.clone() }, "replica_id"),
        (Config { backend: Backend::Sqlite, ..good.clone() }, "storage.url is for"),
    ];
    for (config, expected) in cases {
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains(expected), "{err}");
        assert!(!err.contains("secret"), "{err}");
    }
}
