//! Crash test of replicas on one PostgreSQL journal: three `validator run` processes against
//! the loopback chain, executor and ML node, recovering a backlog (the leader's claim trigger)
//! while live inferences finish and disputed ones need revalidation, with one replica killed
//! with SIGKILL at a seeded moment and started again later.
//!
//! After each seed it checks: every detected validation (the backlog, every live inference,
//! every revalidation) was accepted by the chain exactly once; no `MsgValidation` was refused as
//! a duplicate; the reward claim was sent once; work resumed within one lease TTL of the kill:
//! the first of the killed replica's leases was taken over within [`TTL`] plus [`SLACK`] (the
//! taker's wake-up and round trip on a machine running three replicas, the fakes and PostgreSQL
//! on two cores), and every one of them within two TTLs (a killed leader's recovery keys are
//! found again by the new leader's detection, which starts once the recovery lease expired),
//! both by the database's clock. The same run with `storage.leases = false` must break at
//! least one of these, or the test proves nothing.
//!
//! `cargo test -p validator-bin --test ha` runs seeds 0 to 9; `HA_SEEDS=N` runs seeds 0 to N-1,
//! `HA_SEED=k` seed k alone. Run with `--nocapture` for one line per seed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{LazyLock, Mutex},
    time::Duration,
};

use rand::{rngs::StdRng, Rng, SeedableRng};
use testkit::{postgres::TempPostgres, process::temp_path, SubmittedMsg, TxEvent};
use tokio::time::Instant;
use validator_core::RetryPolicy;
use validator_demo::{inference_id, DemoOptions, Scenario, DISPUTED, LIVE_EPOCH};

/// Missed validations of the previous epoch, recovered by the leader at the claim height.
const BACKLOG: usize = 200;
/// Live inferences finished while the backlog drains.
const LIVE: usize = 60;
/// Replicas.
const REPLICAS: usize = 3;
/// The lease TTL.
const TTL: Duration = Duration::from_millis(2_000);
/// What a takeover may take beyond the TTL: the taker's wake-up and its database round trip,
/// on a machine running three replicas, the fakes and PostgreSQL on two cores.
const SLACK: Duration = Duration::from_millis(1_000);
/// A seed that has not finished after this is stuck.
const SEED_BOUND: Duration = Duration::from_secs(120);
/// Time between two blocks.
const BLOCK_INTERVAL: Duration = Duration::from_millis(50);
/// Seeds run when neither `HA_SEEDS` nor `HA_SEED` is set.
const DEFAULT_SEEDS: u64 = 10;

/// One PostgreSQL server for the whole binary; seeds run one at a time, each on its own
/// database.
static POSTGRES: LazyLock<Mutex<TempPostgres>> =
    LazyLock::new(|| Mutex::new(TempPostgres::start()));

#[test]
fn three_replicas_survive_sigkill_of_any_one_without_losing_or_repeating_work() {
    let postgres = POSTGRES.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let started = std::time::Instant::now();
    let mut reports = Vec::new();
    for seed in seeds() {
        let report = runtime().block_on(run_seed(&postgres, seed, true));
        eprintln!("{report}");
        assert!(report.violations.is_empty(), "seed {seed}: {:#?}", report.violations);
        reports.push(report);
    }
    let first: Vec<Duration> = reports.iter().filter_map(|r| r.takeover_min).collect();
    let last: Vec<Duration> = reports.iter().filter_map(|r| r.takeover_max).collect();
    let most = |takeovers: &[Duration]| {
        takeovers.iter().max().map_or_else(|| "-".to_owned(), |d| format!("{} ms", d.as_millis()))
    };
    eprintln!(
        "{} seeds in {:.1} s; after the kill, the first lease taken over within {} at most, \
         the last within {}",
        reports.len(),
        started.elapsed().as_secs_f64(),
        most(&first),
        most(&last),
    );
    if reports.len() >= 10 {
        assert!(
            reports.iter().any(|r| r.leader_killed && r.taken_over > 0),
            "no seed killed a leader at work"
        );
        assert!(
            reports.iter().any(|r| !r.leader_killed && r.taken_over > 0),
            "no seed killed another replica at work"
        );
    }
}

#[test]
fn without_leases_the_same_run_repeats_work() {
    let postgres = POSTGRES.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let report = runtime().block_on(run_seed(&postgres, 0, false));
    eprintln!("without leases: {report}");
    assert!(
        report.violations.iter().any(|v| v.contains("twice") || v.contains("duplicate")),
        "replicas without leases sent nothing twice, so the crash test could not catch it: {:#?}",
        report.violations
    );
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// `HA_SEED=k` alone, else seeds `0..HA_SEEDS` (default 10).
fn seeds() -> Vec<u64> {
    let read = |name: &str| {
        std::env::var(name).ok().map(|value| {
            value.trim().parse::<u64>().unwrap_or_else(|_| panic!("{name}={value} is not a number"))
        })
    };
    if let Some(seed) = read("HA_SEED") {
        return vec![seed];
    }
    (0..read("HA_SEEDS").unwrap_or(DEFAULT_SEEDS)).collect()
}

/// What one seed did and what it broke.
struct SeedReport {
    seed: u64,
    leases: bool,
    elapsed: Duration,
    victim: usize,
    leader_killed: bool,
    killed_after: usize,
    restarted_after: Duration,
    leases_at_kill: usize,
    taken_over: usize,
    takeover_min: Option<Duration>,
    takeover_max: Option<Duration>,
    accepted: usize,
    claims: usize,
    violations: Vec<String>,
}

impl std::fmt::Display for SeedReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seed {} (leases {}): {:.1} s; replica {}{} killed after {} validations with {} \
             leases, restarted {} ms later; {} taken over{}; {} validations and {} claim(s) \
             accepted; {} violation(s)",
            self.seed,
            if self.leases { "on" } else { "off" },
            self.elapsed.as_secs_f64(),
            self.victim,
            if self.leader_killed { " (the leader)" } else { "" },
            self.killed_after,
            self.leases_at_kill,
            self.restarted_after.as_millis(),
            self.taken_over,
            match (self.takeover_min, self.takeover_max) {
                (Some(first), Some(last)) => format!(
                    ", the first {} ms and the last {} ms after the kill",
                    first.as_millis(),
                    last.as_millis()
                ),
                _ => String::new(),
            },
            self.accepted,
            self.claims,
            self.violations.len(),
        )
    }
}

/// One `validator run` process.
struct Replica {
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Replica {
    fn spawn(config: PathBuf, log: PathBuf) -> Self {
        let mut replica = Self { config, log, child: None };
        replica.start();
        replica
    }

    fn start(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_validator"))
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "warn,validator_core=info,validator_bin=info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    fn signal(&mut self, signal: i32) {
        if let Some(child) = &self.child {
            let pid = i32::try_from(child.id()).unwrap();
            // SAFETY: sends a signal to a child this test spawned and has not reaped.
            unsafe { libc::kill(pid, signal) };
        }
    }

    fn kill(&mut self) {
        self.signal(libc::SIGKILL);
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }

    fn stop(&mut self) -> Option<i32> {
        self.signal(libc::SIGTERM);
        let child = self.child.take()?;
        testkit::process::wait_exit(child, Duration::from_secs(20)).code()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Writes replica `index`'s configuration: the demo's settings on this scenario, PostgreSQL
/// storage, its own data directory and ports.
fn configure(
    scenario: &Scenario,
    options: &DemoOptions,
    url: &str,
    leases: bool,
    index: usize,
    dir: &Path,
) -> PathBuf {
    let mut settings = scenario.settings(options);
    let key_file = dir.join("validator.key");
    std::fs::create_dir_all(dir).unwrap();
    let _ = std::fs::remove_file(&key_file);
    validator_bin::keys::write_key_file(&key_file, &[0x11; 32]).unwrap();
    settings.data_dir = dir.join("data");
    settings.admin.token_file = None;
    settings.identity.account_address = scenario.address.clone();
    settings.identity.key_file = key_file;
    settings.shutdown_grace = Duration::from_secs(5);
    // Three processes sign with one account: a sequence taken by another replica is re-learned
    // and the submission tried again, so give it room.
    settings.core.submit_retry = RetryPolicy::fixed(50, Duration::from_millis(100));
    settings.storage.backend = journal::Backend::Postgres;
    settings.storage.url = Some(url.to_owned());
    settings.storage.pool_size = 4;
    settings.storage.lease_ttl = TTL;
    settings.storage.leases = leases;
    settings.storage.replica_id = Some(format!("r{index}"));
    let config = dir.join("validator.toml");
    std::fs::write(&config, toml::to_string(&settings).unwrap()).unwrap();
    config
}

async fn run_seed(postgres: &TempPostgres, seed: u64, leases: bool) -> SeedReport {
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed);
    let options =
        DemoOptions { backlog: BACKLOG, slots: 4, ml_latency_ms: 5, ..DemoOptions::default() };
    let scenario = Scenario::start(&options).await.unwrap();
    let chain = &scenario.chain;
    let url = postgres.create_database(&format!("ha_{seed}_{leases}")).await;
    let (db, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);

    let root = temp_path(&format!("ha-{seed}-{leases}"));
    let mut replicas: Vec<Replica> = (0..REPLICAS)
        .map(|index| {
            let dir = root.join(format!("r{index}"));
            let config = configure(&scenario, &options, &url, leases, index, &dir);
            Replica::spawn(config, dir.join("stderr.log"))
        })
        .collect();
    if tokio::time::timeout(Duration::from_secs(30), chain.wait_subscriptions(REPLICAS))
        .await
        .is_err()
    {
        let logs: Vec<String> =
            replicas.iter().map(|r| std::fs::read_to_string(&r.log).unwrap_or_default()).collect();
        panic!("the replicas did not all subscribe to the chain; their logs:\n{}", logs.join("\n"));
    }

    // Half the seeds kill the leader (claims, recovery), half another replica.
    let kill_leader = rng.random_bool(0.5);
    let other = rng.random_range(1..REPLICAS);
    let mut victim = 0;
    let kill_at = rng.random_range(10..BACKLOG / 2);
    let restart_after = Duration::from_millis(rng.random_range(500..3 * TTL.as_millis() as u64));
    let disputed: Vec<String> = (0..DISPUTED).map(|i| inference_id("disputed", i)).collect();
    let live: Vec<String> = (0..LIVE).map(|i| inference_id("live", i)).collect();
    let backlog: Vec<String> = (0..BACKLOG).map(|i| inference_id("backlog", i)).collect();

    // The claim height is five blocks ahead: the leader recovers the backlog, then claims.
    chain.advance(6);
    let mut live_sent = 0;
    let mut disputed_sent = 0;
    let mut killed: Option<(Instant, Vec<String>, String, f64)> = None;
    let mut restarted = false;
    let mut violations = Vec::new();
    let validations = |chain: &testkit::LoopbackChainNode| {
        chain
            .submitted()
            .iter()
            .filter(|s| matches!(s.msg, SubmittedMsg::Validation { .. }))
            .count()
    };
    let expected = BACKLOG + LIVE + DISPUTED;
    let mut done_since: Option<Instant> = None;
    loop {
        if started.elapsed() > SEED_BOUND {
            violations.push(format!(
                "stuck: {} of {expected} validations accepted after {SEED_BOUND:?}",
                validations(chain)
            ));
            break;
        }
        let mut txs = Vec::new();
        if live_sent < LIVE {
            for id in &live[live_sent..(live_sent + 2).min(LIVE)] {
                add_inference(&scenario, id);
                txs.push(vec![TxEvent::inference_finished(id)]);
                live_sent += 1;
            }
        }
        if disputed_sent < DISPUTED && live_sent % 10 == 0 {
            let id = &disputed[disputed_sent];
            txs.push(vec![TxEvent::inference_validation(id, "gonka1othervalidator", true)]);
            disputed_sent += 1;
        }
        chain.produce_block(txs);

        let accepted = validations(chain);
        if killed.is_none() && accepted >= kill_at {
            let leader = db
                .query_opt("SELECT holder FROM leases WHERE key = 'leader'", &[])
                .await
                .unwrap()
                .and_then(|row| {
                    let holder: String = row.get(0);
                    holder.strip_prefix('r')?.split('-').next()?.parse::<usize>().ok()
                })
                .unwrap_or(0);
            victim = if kill_leader { leader } else { (leader + other) % REPLICAS };
            replicas[victim].kill();
            let at = Instant::now();
            let db_now = db_millis(&db).await;
            let prefix = format!("r{victim}-%");
            let rows = db
                .query(
                    "SELECT key, holder FROM leases WHERE holder LIKE $1 AND state = 'held'",
                    &[&prefix],
                )
                .await
                .unwrap();
            let keys = rows.iter().map(|row| row.get::<_, String>(0)).collect();
            let holder = rows.first().map(|row| row.get::<_, String>(1)).unwrap_or_default();
            killed = Some((at, keys, holder, db_now));
        }
        if let Some((at, ..)) = &killed {
            if !restarted && at.elapsed() >= restart_after {
                replicas[victim].start();
                restarted = true;
            }
        }
        let finished = live_sent == LIVE && disputed_sent == DISPUTED && accepted >= expected;
        if finished && restarted {
            // Two more TTLs: replicas still waiting on leases finish, and would send now if
            // they were going to send twice.
            let since = *done_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= 2 * TTL {
                break;
            }
        }
        tokio::time::sleep(BLOCK_INTERVAL).await;
    }

    // Takeovers, by the database's clock: when each lease the killed replica held passed to
    // another replica.
    let (mut leases_at_kill, mut taken_over) = (0, 0);
    let (mut takeover_min, mut takeover_max): (Option<Duration>, Option<Duration>) = (None, None);
    if let Some((_, keys, holder, killed_at)) = &killed {
        leases_at_kill = keys.len();
        for key in keys {
            let row = db
                .query_opt(
                    "SELECT holder, (extract(epoch from taken_at) * 1000)::float8 FROM leases \
                     WHERE key = $1",
                    &[key],
                )
                .await
                .unwrap();
            let Some(row) = row else { continue };
            let now_holder: String = row.get(0);
            if now_holder == *holder {
                continue;
            }
            let taken_ms: f64 = row.get(1);
            let delay = Duration::from_secs_f64(((taken_ms - killed_at) / 1000.0).max(0.0));
            taken_over += 1;
            takeover_max = Some(takeover_max.map_or(delay, |max| max.max(delay)));
            takeover_min = Some(takeover_min.map_or(delay, |min| min.min(delay)));
            if delay > 2 * TTL {
                violations.push(format!("{key} taken over {delay:?} after the kill"));
            }
        }
    }
    if let Some(first) = takeover_min {
        if first > TTL + SLACK {
            violations.push(format!("work resumed {first:?} after the kill"));
        }
    }
    for replica in &mut replicas {
        let code = replica.stop();
        if code != Some(0) {
            violations.push(format!("a replica exited with {code:?} on SIGTERM"));
        }
    }

    let mut counts: HashMap<(String, bool), usize> = HashMap::new();
    let mut claims = 0;
    for submitted in chain.submitted() {
        match submitted.msg {
            SubmittedMsg::Validation { inference_id, revalidation, .. } => {
                *counts.entry((inference_id, revalidation)).or_default() += 1;
            }
            SubmittedMsg::ClaimRewards { .. } => claims += 1,
        }
    }
    let wanted = backlog
        .iter()
        .chain(&live)
        .map(|id| (id.clone(), false))
        .chain(disputed.iter().map(|id| (id.clone(), true)));
    for key in wanted {
        match counts.get(&key).copied().unwrap_or(0) {
            1 => {}
            0 => violations.push(format!("{key:?} never accepted")),
            n => violations.push(format!("{key:?} accepted {n} times: sent twice")),
        }
    }
    if chain.duplicate_rejections() > 0 {
        violations
            .push(format!("{} MsgValidation refused as a duplicate", chain.duplicate_rejections()));
    }
    if claims != 1 {
        violations.push(format!("{claims} claims accepted, not one"));
    }
    SeedReport {
        seed,
        leases,
        elapsed: started.elapsed(),
        victim,
        leader_killed: kill_leader,
        takeover_min,
        killed_after: kill_at,
        restarted_after: restart_after,
        leases_at_kill,
        taken_over,
        takeover_max,
        accepted: counts.values().sum(),
        claims,
        violations,
    }
}

/// The database's clock, in unix milliseconds.
async fn db_millis(db: &tokio_postgres::Client) -> f64 {
    let row = db
        .query_one("SELECT (extract(epoch from clock_timestamp()) * 1000)::float8", &[])
        .await
        .unwrap();
    row.get(0)
}

/// Scripts a finished inference on the chain and its payloads at the executor.
fn add_inference(scenario: &Scenario, id: &str) {
    scenario.chain.add_inference(id, LIVE_EPOCH, &scenario.executor_address);
    scenario.executor.insert_generated(id, LIVE_EPOCH);
    scenario.chain.put_inference(scenario.executor.inference(id).unwrap());
}
