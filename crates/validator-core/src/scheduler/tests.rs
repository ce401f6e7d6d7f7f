use std::time::Duration;

use super::*;
use crate::{Config, OutcomeKind};

fn scheduler(slots: usize, floor: u8) -> Arc<Scheduler> {
    Scheduler::new(
        &Config { slots, recovery_floor_percent: floor, ..Config::default() },
        Arc::new(crate::ports::NoJournal),
    )
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

#[tokio::test(start_paused = true)]
async fn never_hands_out_more_slots_than_capacity() {
    let scheduler = scheduler(3, 25);
    admit_all(&scheduler, Lane::Recovery, "r", 10);
    let (jobs, _) = scheduler.dispatch(Instant::now());
    assert_eq!(jobs.len(), 3);
    assert!(scheduler.dispatch(Instant::now()).0.is_empty());
    let mut jobs = jobs.into_iter();
    jobs.next().unwrap().permit.finish(done());
    let (more, _) = scheduler.dispatch(Instant::now());
    assert_eq!(more.len(), 1);
    assert_eq!(scheduler.snapshot(0).in_use, 3);
    assert_eq!(scheduler.snapshot(0).peak, 3);
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
    let config = Config { slots: 1, recovery_window: 2, live_capacity: 1, ..Config::default() };
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
    running.permit.finish(Step::Retry {
        stage: Stage::Replay,
        delay: Duration::from_secs(1),
        attempts: Attempts::default(),
        pending_submit: None,
        error: "failed".into(),
        exclude: None,
        wants_room: false,
    });
    let snapshot = scheduler.snapshot(10);
    assert_eq!(snapshot.counts.get(OutcomeKind::Cancelled), 3);
    assert_eq!(snapshot.in_use, 0);
    assert!(snapshot.sample_keys.is_empty());
}
