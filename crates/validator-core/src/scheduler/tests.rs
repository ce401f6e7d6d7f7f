use std::time::Duration;

use super::*;
use crate::{Config, OutcomeKind};

/// `slots` in each stage.
fn scheduler(slots: usize, floor: u8) -> Arc<Scheduler> {
    pipeline(Config {
        slots,
        fetch_slots: Some(slots),
        recovery_floor_percent: floor,
        ..Config::default()
    })
}

fn pipeline(config: Config) -> Arc<Scheduler> {
    Scheduler::new(&config, Arc::new(crate::ports::NoJournal))
}

fn key(id: &str) -> Key {
    Key::Classic(InferenceId::from(id), false)
}

fn admit_all(scheduler: &Scheduler, lane: Lane, prefix: &str, n: usize) {
    for i in 0..n {
        assert_eq!(
            scheduler.admit(key(&format!("{prefix}{i}")), lane, None).unwrap(),
            Admission::Admitted
        );
    }
}

fn done() -> Step {
    Step::Terminal(Outcome::Skipped { reason: crate::SkipReason::Gone })
}

/// A verified payload of `bytes`.
fn staged(bytes: usize) -> Step {
    Step::Buffer(Staged { prepared: Box::new(()), bytes })
}

fn retry(delay: Duration, keep: Option<Prepared>) -> Step {
    Step::Retry {
        stage: Stage::Replay,
        delay,
        attempts: Attempts::default(),
        pending_submit: None,
        error: "failed".into(),
        exclude: None,
        wants_room: false,
        keep,
    }
}

const MIB: usize = 1 << 20;

#[tokio::test(start_paused = true)]
async fn never_hands_out_more_slots_than_capacity_and_keeps_room_for_higher_lanes() {
    let scheduler = scheduler(4, 25);
    admit_all(&scheduler, Lane::Recovery, "r", 10);
    let (jobs, _) = scheduler.dispatch(Instant::now());
    assert_eq!(jobs.len(), 2, "recovery may use half of the network slots");
    assert!(scheduler.dispatch(Instant::now()).0.is_empty());
    admit_all(&scheduler, Lane::Live, "l", 2);
    let (live, _) = scheduler.dispatch(Instant::now());
    assert_eq!(live.len(), 1, "live three quarters");
    admit_all(&scheduler, Lane::Revalidation, "v", 2);
    let (priority, _) = scheduler.dispatch(Instant::now());
    assert_eq!(priority.len(), 1);
    assert_eq!(priority[0].lane, Lane::Revalidation);
    let mut jobs = jobs.into_iter();
    jobs.next().unwrap().permit.finish(done());
    let (more, _) = scheduler.dispatch(Instant::now());
    assert_eq!(more.len(), 1);
    assert_eq!(more[0].lane, Lane::Revalidation);
    assert_eq!(scheduler.snapshot(0).pipeline.fetch_in_use, 4);
    assert_eq!(scheduler.snapshot(0).pipeline.fetch_peak, 4);
}

#[tokio::test(start_paused = true)]
async fn a_fetched_payload_waits_in_the_buffer_for_a_gpu_slot() {
    let scheduler = pipeline(Config { slots: 1, fetch_slots: Some(4), ..Config::default() });
    admit_all(&scheduler, Lane::Revalidation, "v", 2);
    let (fetches, _) = scheduler.dispatch(Instant::now());
    assert_eq!(fetches.len(), 2);
    assert!(fetches.iter().all(|job| job.prepared.is_none()), "network-stage jobs");
    assert!(fetches.iter().all(|job| job.first_wait.is_none()), "the wait runs to the GPU");
    for job in fetches {
        job.permit.finish(staged(3 * MIB));
    }
    let (mut replays, _) = scheduler.dispatch(Instant::now());
    assert_eq!(replays.len(), 1, "one GPU slot");
    let replay = replays.pop().unwrap();
    assert!(replay.prepared.is_some());
    assert!(replay.first_wait.is_some());
    let snapshot = scheduler.snapshot(0);
    assert_eq!((snapshot.in_use, snapshot.pipeline.fetch_in_use), (1, 0));
    assert_eq!((snapshot.pipeline.buffered, snapshot.pipeline.buffered_bytes), (1, 3 * MIB));
    assert_eq!(snapshot.pipeline.buffered_peak_bytes, 6 * MIB);

    // The score goes back to the network stage for submission, ahead of its lane.
    let pending = PendingSubmit {
        msg: MsgValidation {
            id: "m".into(),
            inference_id: replay.key.journal_id(),
            response_hash: String::new(),
            value_decimal: crate::scoring::value_decimal(1.0),
            revalidation: true,
        },
        outcome: Outcome::Cancelled,
        epoch: 1,
        reconcile: false,
    };
    let scored = replay.key.clone();
    replay.permit.finish(Step::Submit(Box::new(pending)));
    let (jobs, _) = scheduler.dispatch(Instant::now());
    let submit = jobs.iter().find(|job| job.key == scored).expect("the submission");
    assert!(submit.prepared.is_none() && submit.pending_submit.is_some());
    assert_eq!(submit.attempts.total, 1, "replay and submission are one attempt");
    assert!(jobs.iter().any(|job| job.prepared.is_some()), "the other payload replays");
}

#[tokio::test(start_paused = true)]
async fn fetching_ahead_stops_at_the_buffers_count_and_bytes() {
    let scheduler = pipeline(Config {
        slots: 1,
        fetch_slots: Some(8),
        buffer_capacity: Some(4),
        buffer_bytes: Some(16 * MIB),
        ..Config::default()
    });
    admit_all(&scheduler, Lane::Live, "l", 20);
    let replays = |jobs: &[Job]| jobs.iter().filter(|job| job.prepared.is_some()).count();
    let (fetches, _) = scheduler.dispatch(Instant::now());
    // Live work may fill three quarters of the buffer's four payloads.
    assert_eq!(fetches.len(), 3);
    for job in fetches {
        job.permit.finish(staged(4 * MIB));
    }
    // One replays; two wait; the count has room for one more fetch, and the bytes too: 8 MiB
    // buffered, 4 MiB expected of the fetch (every recent payload weighed 4 MiB), 4 MiB kept
    // for priority.
    let (jobs, _) = scheduler.dispatch(Instant::now());
    assert_eq!((replays(&jobs), jobs.len()), (1, 2));
    let mut jobs = jobs.into_iter();
    let replay = jobs.next().filter(|job| job.prepared.is_some()).expect("GPU job first");
    jobs.next().unwrap().permit.finish(staged(8 * MIB));
    replay.permit.finish(done());
    // Now 4 + 8 MiB wait, and a fetch is expected to bring 8 MiB (the recent mean, plus
    // headroom for one as large as the 8 MiB one): no room until the buffer drains.
    let (jobs, _) = scheduler.dispatch(Instant::now());
    assert_eq!((replays(&jobs), jobs.len()), (1, 1));
    let snapshot = scheduler.snapshot(0).pipeline;
    assert_eq!((snapshot.buffered, snapshot.buffered_bytes), (2, 12 * MIB));
    assert_eq!(snapshot.buffered_peak_bytes, 16 * MIB);
    assert!(snapshot.buffered_peak_bytes <= snapshot.buffer_bytes_capacity);
}

#[tokio::test(start_paused = true)]
async fn a_buffered_payload_past_its_age_is_fetched_again() {
    let scheduler = pipeline(Config {
        slots: 1,
        fetch_slots: Some(4),
        buffer_max_age: Duration::from_secs(60),
        ..Config::default()
    });
    admit_all(&scheduler, Lane::Revalidation, "v", 2);
    let (fetches, _) = scheduler.dispatch(Instant::now());
    let (first, second) = (fetches[0].key.clone(), fetches[1].key.clone());
    for job in fetches {
        job.permit.finish(staged(MIB));
    }
    let (mut replays, _) = scheduler.dispatch(Instant::now());
    let replay = replays.pop().unwrap();
    assert_eq!(replay.key, first);
    tokio::time::advance(Duration::from_secs(60)).await;
    replay.permit.finish(done());
    let (mut jobs, _) = scheduler.dispatch(Instant::now());
    let refetch = jobs.pop().unwrap();
    assert_eq!(refetch.key, second);
    assert!(refetch.prepared.is_none(), "fetched again, not replayed stale");
    let snapshot = scheduler.snapshot(0).pipeline;
    assert_eq!((snapshot.buffered, snapshot.buffered_bytes, snapshot.expired), (0, 0, 1));
}

#[tokio::test(start_paused = true)]
async fn a_refused_lease_waits_without_a_slot_and_keeps_its_payload() {
    let scheduler = pipeline(Config { slots: 1, fetch_slots: Some(2), ..Config::default() });
    admit_all(&scheduler, Lane::Live, "l", 1);
    let (mut jobs, _) = scheduler.dispatch(Instant::now());
    jobs.pop().unwrap().permit.finish(staged(2 * MIB));
    let (mut jobs, _) = scheduler.dispatch(Instant::now());
    let replay = jobs.pop().unwrap();
    let prepared = replay.prepared.expect("a GPU-stage job");
    let job = Job { prepared: None, ..replay };
    let mut step = retry(Duration::from_secs(5), Some(prepared));
    if let Step::Retry { attempts, .. } = &mut step {
        *attempts = job.attempts;
    }
    job.permit.finish(step);
    let snapshot = scheduler.snapshot(0);
    assert_eq!((snapshot.in_use, snapshot.pipeline.fetch_in_use), (0, 0));
    assert_eq!(snapshot.pipeline.buffered_bytes, 2 * MIB, "the payload is kept, counted");
    assert!(scheduler.dispatch(Instant::now()).0.is_empty());
    tokio::time::advance(Duration::from_secs(5)).await;
    let (mut jobs, _) = scheduler.dispatch(Instant::now());
    let again = jobs.pop().unwrap();
    assert!(again.prepared.is_some(), "replayed again without a fetch");
    assert_eq!(again.attempts.total, 2, "fetched and replayed, then replayed again");
}

#[tokio::test(start_paused = true)]
async fn gpu_idle_time_counts_only_while_work_is_fetching_or_buffered() {
    let scheduler = pipeline(Config { slots: 2, fetch_slots: Some(4), ..Config::default() });
    tokio::time::advance(Duration::from_secs(10)).await;
    admit_all(&scheduler, Lane::Revalidation, "v", 1);
    let (mut jobs, _) = scheduler.dispatch(Instant::now());
    tokio::time::advance(Duration::from_secs(3)).await;
    jobs.pop().unwrap().permit.finish(staged(MIB));
    let (mut jobs, _) = scheduler.dispatch(Instant::now());
    tokio::time::advance(Duration::from_secs(1)).await;
    jobs.pop().unwrap().permit.finish(done());
    let idle = scheduler.snapshot(0).pipeline.gpu_idle_slot_seconds;
    assert!((idle - 6.0).abs() < 1e-9, "two idle slots for the 3 s fetch: {idle}");
}

#[tokio::test(start_paused = true)]
async fn close_drops_buffered_payloads() {
    let scheduler = pipeline(Config {
        slots: 1,
        fetch_slots: Some(4),
        buffer_capacity: Some(8),
        ..Config::default()
    });
    admit_all(&scheduler, Lane::Revalidation, "v", 3);
    let (fetches, _) = scheduler.dispatch(Instant::now());
    assert_eq!(fetches.len(), 3);
    let mut fetches = fetches.into_iter();
    let fetching = fetches.next().unwrap();
    for job in fetches {
        job.permit.finish(staged(MIB));
    }
    let (mut replays, _) = scheduler.dispatch(Instant::now());
    assert_eq!(replays.len(), 1);
    let replaying = replays.pop().unwrap();
    assert!(replaying.prepared.is_some());
    assert_eq!(scheduler.close(), 1, "the one buffered payload's key");
    fetching.permit.finish(staged(MIB));
    let prepared = replaying.prepared;
    let job = Job { prepared: None, ..replaying };
    job.permit.finish(retry(Duration::from_secs(1), prepared));
    let snapshot = scheduler.snapshot(10);
    assert_eq!(snapshot.counts.get(OutcomeKind::Cancelled), 3);
    assert_eq!((snapshot.in_use, snapshot.pipeline.fetch_in_use), (0, 0));
    assert_eq!((snapshot.pipeline.buffered, snapshot.pipeline.buffered_bytes), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn revalidation_before_live_before_recovery_with_strict_priority() {
    let scheduler = scheduler(1, 0);
    admit_all(&scheduler, Lane::Recovery, "r", 2);
    admit_all(&scheduler, Lane::Live, "l", 2);
    admit_all(&scheduler, Lane::Revalidation, "v", 2);
    let mut order = Vec::new();
    for _ in 0..6 {
        let (mut jobs, _) = scheduler.dispatch(Instant::now());
        let job = jobs.pop().unwrap();
        order.push(job.lane);
        job.permit.finish(done());
    }
    use Lane::*;
    assert_eq!(order, [Revalidation, Revalidation, Live, Live, Recovery, Recovery]);
}

#[tokio::test(start_paused = true)]
async fn recovery_gets_its_floor_share_under_steady_live_load() {
    let scheduler = scheduler(1, 25);
    admit_all(&scheduler, Lane::Recovery, "r", 1000);
    admit_all(&scheduler, Lane::Live, "l", 1000);
    let mut recovery = 0;
    for _ in 0..400 {
        let (mut jobs, _) = scheduler.dispatch(Instant::now());
        let job = jobs.pop().unwrap();
        if job.lane == Lane::Recovery {
            recovery += 1;
        }
        job.permit.finish(done());
    }
    assert_eq!(recovery, 100, "25% of 400 dispatches");
}

#[tokio::test(start_paused = true)]
async fn a_key_is_in_flight_once_and_recent_submissions_are_not_redone() {
    let scheduler = scheduler(2, 25);
    assert_eq!(scheduler.admit(key("a"), Lane::Live, None).unwrap(), Admission::Admitted);
    assert_eq!(
        scheduler.admit(key("a"), Lane::Recovery, None).unwrap(),
        Admission::AlreadyInFlight
    );
    // The revalidation of the same inference is a different key.
    let revalidation = Key::Classic(InferenceId::from("a"), true);
    assert_eq!(
        scheduler.admit(revalidation, Lane::Revalidation, None).unwrap(),
        Admission::Admitted
    );

    let (jobs, _) = scheduler.dispatch(Instant::now());
    assert_eq!(jobs.len(), 2);
    for job in jobs {
        let submitted = Outcome::Submitted {
            verdict: crate::scoring::Verdict::Similarity,
            value: 1.0,
            msg_id: "m".into(),
            tx_hash: None,
        };
        job.permit.finish(Step::Terminal(submitted));
    }
    assert!(!scheduler.contains(&key("a")));
    assert_eq!(scheduler.admit(key("a"), Lane::Live, None).unwrap(), Admission::AlreadyDone);
}

#[tokio::test(start_paused = true)]
async fn a_retrying_key_holds_no_slot_and_comes_back_when_due() {
    let scheduler = scheduler(1, 25);
    admit_all(&scheduler, Lane::Live, "l", 2);
    let (mut jobs, _) = scheduler.dispatch(Instant::now());
    let job = jobs.pop().unwrap();
    let first = job.key.clone();
    job.permit.finish(Step::Retry {
        stage: Stage::Payload,
        delay: Duration::from_secs(120),
        attempts: Attempts { payload: 1, total: 1, ..Attempts::default() },
        pending_submit: None,
        error: "failed".into(),
        exclude: None,
        wants_room: false,
        keep: None,
    });
    // The slot went to the other key at once.
    let (mut jobs, next_due) = scheduler.dispatch(Instant::now());
    let other = jobs.pop().unwrap();
    assert_ne!(other.key, first);
    assert_eq!(next_due, Some(Instant::now() + Duration::from_secs(120)));
    other.permit.finish(done());

    assert!(scheduler.dispatch(Instant::now()).0.is_empty());
    tokio::time::advance(Duration::from_secs(120)).await;
    let (mut jobs, _) = scheduler.dispatch(Instant::now());
    let again = jobs.pop().unwrap();
    assert_eq!(again.key, first);
    assert_eq!(again.attempts.payload, 1);
    assert_eq!(again.first_wait, None, "lane wait is measured on the first dispatch only");
    again.permit.finish(done());
}

#[tokio::test(start_paused = true)]
async fn lanes_are_bounded_and_recovery_admission_waits_for_room() {
    let config = Config {
        slots: 1,
        fetch_slots: Some(1),
        recovery_window: 2,
        live_capacity: 1,
        ..Config::default()
    };
    let scheduler = Scheduler::new(&config, Arc::new(crate::ports::NoJournal));
    admit_all(&scheduler, Lane::Live, "l", 1);
    assert_eq!(
        scheduler.admit(key("l9"), Lane::Live, None).unwrap_err(),
        Error::LaneFull { lane: Lane::Live }
    );
    admit_all(&scheduler, Lane::Recovery, "r", 2);

    let guard = Arc::new(crate::recovery::RecoveryGuard::default());
    let (_handle, claim) = guard.try_begin(1).unwrap();
    let tracker = Arc::clone(&claim.tracker);
    let cancel = tokio_util::sync::CancellationToken::new();
    let waiting = {
        let scheduler = Arc::clone(&scheduler);
        let cancel = cancel.clone();
        tokio::spawn(async move { scheduler.admit_recovery(key("r9"), &tracker, &cancel).await })
    };
    tokio::task::yield_now().await;
    assert!(!waiting.is_finished());

    // Finishing the live key frees the slot for a recovery key; finishing that makes room.
    let (mut jobs, _) = scheduler.dispatch(Instant::now());
    jobs.pop().unwrap().permit.finish(done());
    let (mut jobs, _) = scheduler.dispatch(Instant::now());
    let recovery = jobs.pop().unwrap();
    assert_eq!(recovery.lane, Lane::Recovery);
    recovery.permit.finish(done());
    assert_eq!(waiting.await.unwrap().unwrap(), Admission::Admitted);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_permit_frees_its_slot_and_ends_its_key() {
    let scheduler = scheduler(1, 25);
    let mut outcomes = scheduler.subscribe();
    admit_all(&scheduler, Lane::Live, "l", 1);
    let (jobs, _) = scheduler.dispatch(Instant::now());
    drop(jobs);
    assert_eq!(scheduler.snapshot(0).in_use, 0);
    assert!(!scheduler.contains(&key("l0")));
    let event = outcomes.recv().await.unwrap();
    assert!(matches!(event.outcome, Outcome::GaveUp { .. }), "{event:?}");
}

#[tokio::test(start_paused = true)]
async fn close_cancels_idle_keys_and_running_ones_end_once() {
    let scheduler = scheduler(1, 25);
    admit_all(&scheduler, Lane::Recovery, "r", 3);
    let (mut jobs, _) = scheduler.dispatch(Instant::now());
    let running = jobs.pop().unwrap();
    assert_eq!(scheduler.close(), 2);
    assert_eq!(scheduler.admit(key("x"), Lane::Live, None).unwrap_err(), Error::ShuttingDown);
    // A retry asked for after close ends the key as cancelled instead.
    running.permit.finish(retry(Duration::from_secs(1), None));
    let snapshot = scheduler.snapshot(10);
    assert_eq!(snapshot.counts.get(OutcomeKind::Cancelled), 3);
    assert_eq!(snapshot.in_use, 0);
    assert!(snapshot.sample_keys.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_scored_replay_trades_its_gpu_slot_for_a_free_network_slot() {
    let scheduler = pipeline(Config { slots: 1, fetch_slots: Some(1), ..Config::default() });
    admit_all(&scheduler, Lane::Live, "l", 2);
    let (mut jobs, _) = scheduler.dispatch(Instant::now());
    jobs.pop().unwrap().permit.finish(staged(MIB));
    let (mut jobs, _) = scheduler.dispatch(Instant::now());
    let (mut replay, fetch) = match (jobs.pop(), jobs.pop()) {
        (Some(a), Some(b)) if a.prepared.is_some() => (a, b),
        (Some(a), Some(b)) => (b, a),
        other => panic!("a replay and a fetch: {:?}", other.0.map(|job| job.key)),
    };
    assert!(!replay.permit.trade_for_network(), "the one network slot is taken");
    fetch.permit.finish(done());
    assert!(replay.permit.trade_for_network());
    let snapshot = scheduler.snapshot(0);
    assert_eq!((snapshot.in_use, snapshot.pipeline.fetch_in_use), (0, 1));
    assert!(!replay.permit.trade_for_network(), "a network permit stays one");
    replay.permit.finish(done());
    let snapshot = scheduler.snapshot(0);
    assert_eq!((snapshot.in_use, snapshot.pipeline.fetch_in_use), (0, 0));
    assert_eq!(snapshot.counts.total(), 2);
}
