//! Model checks of the slot limiter, the lane hand-off and the in-flight dedup set: loom runs
//! each body under every interleaving of the scheduler's lock (up to the preemption bound of
//! [`crate::sync::model`]). Run with `RUSTFLAGS="--cfg loom"`; see the README.

use std::sync::Arc;

use loom::{
    sync::atomic::{AtomicUsize, Ordering},
    thread,
};
use tokio::time::Instant;

use super::{Admission, Job, Key, Scheduler, Staged, Step};
use crate::{
    ports::{chain::InferenceId, NoJournal},
    recovery::RecoveryGuard,
    sync::model,
    Config, Lane, Outcome, SkipReason,
};

/// `slots` in each stage.
fn scheduler(slots: usize, floor: u8) -> Arc<Scheduler> {
    Scheduler::new(
        &Config {
            slots,
            fetch_slots: Some(slots),
            recovery_floor_percent: floor,
            // Allocated afresh on every one of the model's executions.
            outcome_buffer: 8,
            ..Config::default()
        },
        Arc::new(NoJournal),
    )
}

fn key(id: &str) -> Key {
    Key::Classic(InferenceId::from(id), false)
}

fn done() -> Step {
    Step::Terminal(Outcome::Skipped { reason: SkipReason::Gone })
}

fn admit(scheduler: &Scheduler, id: &str, lane: Lane) {
    assert_eq!(scheduler.admit(key(id), lane, None).unwrap(), Admission::Admitted);
}

/// Dispatches and finishes until nothing is left ready; returns the lanes in dispatch order.
fn drain(scheduler: &Arc<Scheduler>) -> Vec<Lane> {
    let mut lanes = Vec::new();
    loop {
        let (jobs, _) = scheduler.dispatch(Instant::now());
        if jobs.is_empty() {
            return lanes;
        }
        for job in jobs {
            lanes.push(job.lane);
            job.permit.finish(done());
        }
    }
}

/// Three threads compete for two slots, one of them abandoning its permits (the `Drop` path of a
/// panic or a dropped task): no more than two permits are ever held at once, and every slot and
/// key is returned.
#[test]
fn permits_never_exceed_capacity_and_all_return() {
    model(|| {
        const CAPACITY: usize = 2;
        let scheduler = scheduler(CAPACITY, 25);
        for id in ["a", "b", "c"] {
            admit(&scheduler, id, Lane::Live);
        }
        let held = loom::sync::Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..3)
            .map(|i| {
                let scheduler = Arc::clone(&scheduler);
                let held = held.clone();
                thread::spawn(move || {
                    let (jobs, _) = scheduler.dispatch(Instant::now());
                    for job in jobs {
                        let now_held = held.fetch_add(1, Ordering::SeqCst) + 1;
                        assert!(now_held <= CAPACITY, "{now_held} permits held at once");
                        held.fetch_sub(1, Ordering::SeqCst);
                        if i == 1 {
                            drop(job);
                        } else {
                            job.permit.finish(done());
                        }
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        drain(&scheduler);
        let snapshot = scheduler.snapshot(8);
        assert_eq!(snapshot.in_use, 0);
        assert!(snapshot.peak <= CAPACITY);
        assert_eq!(snapshot.counts.total(), 3);
        assert!(snapshot.sample_keys.is_empty());
    });
}

/// A slot is released while the dispatcher runs and another live key arrives, with recovery,
/// live and revalidation keys queued: the freed slot goes to revalidation, then live, then
/// recovery, and never more than one runs.
#[test]
fn a_released_slot_goes_to_the_highest_lane() {
    model(|| {
        // No recovery floor, so the order is strict.
        let scheduler = scheduler(1, 0);
        admit(&scheduler, "r1", Lane::Recovery);
        let (mut running, _) = scheduler.dispatch(Instant::now());
        let running = running.pop().unwrap();
        admit(&scheduler, "r2", Lane::Recovery);
        admit(&scheduler, "l1", Lane::Live);
        admit(&scheduler, "v1", Lane::Revalidation);

        let release = thread::spawn(move || running.permit.finish(done()));
        let dispatcher = {
            let scheduler = Arc::clone(&scheduler);
            thread::spawn(move || scheduler.dispatch(Instant::now()).0)
        };
        let arrival = {
            let scheduler = Arc::clone(&scheduler);
            thread::spawn(move || admit(&scheduler, "l2", Lane::Live))
        };
        release.join().unwrap();
        arrival.join().unwrap();
        let handed: Vec<Job> = dispatcher.join().unwrap();
        assert!(handed.len() <= 1, "{} jobs in one slot", handed.len());

        let mut order = Vec::new();
        for job in handed {
            order.push(job.lane);
            job.permit.finish(done());
        }
        order.extend(drain(&scheduler));
        use Lane::*;
        assert_eq!(order, [Revalidation, Live, Live, Recovery]);
    });
}

/// Two triggers admit the same key at once: one admission, one duplicate.
#[test]
fn a_key_is_admitted_once_while_in_flight() {
    model(|| {
        let scheduler = scheduler(1, 25);
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let scheduler = Arc::clone(&scheduler);
                thread::spawn(move || scheduler.admit(key("a"), Lane::Live, None).unwrap())
            })
            .collect();
        let mut results: Vec<Admission> =
            threads.into_iter().map(|thread| thread.join().unwrap()).collect();
        results.sort_by_key(|admission| *admission as u8);
        assert_eq!(results, [Admission::Admitted, Admission::AlreadyInFlight]);
        let snapshot = scheduler.snapshot(8);
        assert_eq!(snapshot.admitted, 1);
        assert_eq!(snapshot.pending[Lane::Live.index()], 1);
    });
}

/// Two triggers admit the same key while a dispatcher runs it to a terminal outcome: a second
/// admission happens only once the first one ended, and each admission ends in exactly one
/// outcome.
#[test]
fn a_key_is_admitted_again_only_after_its_outcome() {
    model(|| {
        let scheduler = scheduler(1, 25);
        let mut outcomes = scheduler.subscribe();
        let triggers: Vec<_> = (0..2)
            .map(|_| {
                let scheduler = Arc::clone(&scheduler);
                thread::spawn(move || scheduler.admit(key("a"), Lane::Live, None).unwrap())
            })
            .collect();
        let dispatcher = {
            let scheduler = Arc::clone(&scheduler);
            thread::spawn(move || {
                let (jobs, _) = scheduler.dispatch(Instant::now());
                let finished = jobs.len();
                for job in jobs {
                    job.permit.finish(done());
                }
                finished
            })
        };
        let admitted = triggers
            .into_iter()
            .map(|thread| thread.join().unwrap())
            .filter(|admission| {
                assert!(matches!(admission, Admission::Admitted | Admission::AlreadyInFlight));
                *admission == Admission::Admitted
            })
            .count();
        let finished = dispatcher.join().unwrap();
        let in_flight = usize::from(scheduler.contains(&key("a")));
        assert_eq!(admitted, finished + in_flight);
        let snapshot = scheduler.snapshot(8);
        assert_eq!(snapshot.admitted, admitted as u64);
        assert_eq!(snapshot.counts.total(), finished as u64);
        let mut published = 0;
        while outcomes.try_recv().is_ok() {
            published += 1;
        }
        assert_eq!(published, finished);
        if in_flight == 0 {
            assert_eq!(scheduler.admit(key("a"), Lane::Live, None).unwrap(), Admission::Admitted);
        }
    });
}

/// A recovery run and a live trigger admit the same key at once: one admission, and the run is
/// attached to the key whichever came first, so the run sees its outcome.
#[test]
fn a_recovery_run_joins_the_same_key_in_flight() {
    model(|| {
        let scheduler = scheduler(1, 25);
        let guard = Arc::new(RecoveryGuard::default());
        let (handle, claim) = guard.try_begin(1).unwrap();
        let live = {
            let scheduler = Arc::clone(&scheduler);
            thread::spawn(move || scheduler.admit(key("a"), Lane::Live, None).unwrap())
        };
        let recovery = {
            let scheduler = Arc::clone(&scheduler);
            let tracker = Arc::clone(&claim.tracker);
            thread::spawn(move || {
                scheduler.admit(key("a"), Lane::Recovery, Some(&tracker)).unwrap()
            })
        };
        match (live.join().unwrap(), recovery.join().unwrap()) {
            (Admission::Admitted, Admission::Joined)
            | (Admission::AlreadyInFlight, Admission::Admitted) => {}
            other => panic!("unexpected admissions {other:?}"),
        }
        let (jobs, _) = scheduler.dispatch(Instant::now());
        assert_eq!(jobs.len(), 1);
        for job in jobs {
            assert_eq!(job.run_id, Some(handle.id()));
            job.permit.finish(done());
        }
        assert_eq!(handle.report().outcomes.total(), 1);
    });
}

/// A fetch hands its payload to the buffer while the dispatcher runs and shutdown closes the
/// scheduler: each key ends exactly once, the payload is replayed or dropped, never kept, and
/// both stages' slots and the buffer's counts return to zero.
#[test]
fn a_buffered_payload_ends_once_across_close() {
    model(|| {
        let scheduler = Scheduler::new(
            &Config { slots: 1, fetch_slots: Some(2), outcome_buffer: 8, ..Config::default() },
            Arc::new(NoJournal),
        );
        admit(&scheduler, "a", Lane::Live);
        admit(&scheduler, "b", Lane::Live);
        let (jobs, _) = scheduler.dispatch(Instant::now());
        assert_eq!(jobs.len(), 2, "two fetches ahead of one GPU slot");
        let mut jobs = jobs.into_iter();
        let (a, b) = (jobs.next().unwrap(), jobs.next().unwrap());
        let fetcher = thread::spawn(move || {
            a.permit.finish(Step::Buffer(Staged { prepared: Box::new(()), bytes: 10 }))
        });
        let dispatcher = {
            let scheduler = Arc::clone(&scheduler);
            thread::spawn(move || {
                let (jobs, _) = scheduler.dispatch(Instant::now());
                assert!(jobs.len() <= 1, "one GPU slot");
                for job in jobs {
                    assert!(job.prepared.is_some(), "only the buffered payload can run");
                    job.permit.finish(done());
                }
            })
        };
        let closer = {
            let scheduler = Arc::clone(&scheduler);
            thread::spawn(move || scheduler.close())
        };
        b.permit.finish(done());
        fetcher.join().unwrap();
        dispatcher.join().unwrap();
        closer.join().unwrap();
        let snapshot = scheduler.snapshot(8);
        assert_eq!(snapshot.counts.total(), 2);
        assert_eq!((snapshot.in_use, snapshot.pipeline.fetch_in_use), (0, 0));
        assert_eq!((snapshot.pipeline.buffered, snapshot.pipeline.buffered_bytes), (0, 0));
        assert!(snapshot.sample_keys.is_empty());
    });
}
