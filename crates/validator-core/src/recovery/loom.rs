//! Model checks of the recovery guard: loom runs each body under every interleaving of the
//! guard's lock and id counter (up to the preemption bound of [`crate::sync::model`]). Run with
//! `RUSTFLAGS="--cfg loom"`; see the README.

use std::{
    panic::{self, AssertUnwindSafe},
    sync::Arc,
};

use loom::{
    sync::atomic::{AtomicUsize, Ordering},
    thread,
};

use super::{RecoveryGuard, RunClaim, RunHandle};
use crate::sync::model;

type Begin = Result<(RunHandle, RunClaim), RunHandle>;

/// `triggers` threads call `try_begin` at once and keep what they get: exactly one run starts,
/// every other trigger gets that run's handle, and the run's release lets a new run start.
fn one_run_per_concurrent_triggers(triggers: u64) {
    model(move || {
        let guard = Arc::new(RecoveryGuard::default());
        let threads: Vec<_> = (0..triggers)
            .map(|epoch| {
                let guard = Arc::clone(&guard);
                thread::spawn(move || guard.try_begin(epoch))
            })
            .collect();
        let results: Vec<Begin> =
            threads.into_iter().map(|thread| thread.join().unwrap()).collect();
        let (started, joined): (Vec<_>, Vec<_>) = results.into_iter().partition(Result::is_ok);
        assert_eq!(started.len(), 1, "{} runs started", started.len());
        let Some(Ok((winner, claim))) = started.into_iter().next() else { unreachable!() };
        for loser in joined {
            let loser = loser.unwrap_err();
            assert_eq!(loser.id(), winner.id());
            assert_eq!(loser.report().epoch, winner.report().epoch);
        }
        assert_eq!(guard.current().map(|run| run.id()), Some(winner.id()));
        drop(claim);
        assert!(guard.current().is_none());
        let (next, _claim) = guard.try_begin(triggers).unwrap();
        assert_ne!(next.id(), winner.id());
    });
}

#[test]
fn two_concurrent_triggers_start_one_run() {
    one_run_per_concurrent_triggers(2);
}

#[test]
fn three_concurrent_triggers_start_one_run() {
    one_run_per_concurrent_triggers(3);
}

/// Three triggers that each run and release at once: runs never overlap, each started run has
/// its own id, and a trigger that lost saw a run that had started.
#[test]
fn runs_that_release_never_overlap() {
    model(|| {
        let guard = Arc::new(RecoveryGuard::default());
        let running = loom::sync::Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..3)
            .map(|epoch| {
                let guard = Arc::clone(&guard);
                let running = running.clone();
                thread::spawn(move || match guard.try_begin(epoch) {
                    Ok((handle, claim)) => {
                        let overlapping = running.fetch_add(1, Ordering::SeqCst);
                        assert_eq!(overlapping, 0, "two recovery runs at once");
                        running.fetch_sub(1, Ordering::SeqCst);
                        drop(claim);
                        Ok(handle.id())
                    }
                    Err(handle) => Err(handle.id()),
                })
            })
            .collect();
        let results: Vec<Result<u64, u64>> =
            threads.into_iter().map(|thread| thread.join().unwrap()).collect();
        let mut started: Vec<u64> = results.iter().filter_map(|r| r.ok()).collect();
        started.sort_unstable();
        started.dedup();
        assert_eq!(started.len(), results.iter().filter(|r| r.is_ok()).count());
        for joined in results.iter().filter_map(|r| r.err()) {
            assert!(started.contains(&joined), "joined run {joined} never started");
        }
        assert!(guard.current().is_none());
    });
}

/// A run panics while it holds the claim, racing a second trigger: unwinding releases the
/// guard, so the panicked run is never current afterwards and a later trigger starts a run.
#[test]
fn a_run_that_panics_releases_the_guard() {
    model(|| {
        let guard = Arc::new(RecoveryGuard::default());
        let panicking = {
            let guard = Arc::clone(&guard);
            thread::spawn(move || {
                let mut held = None;
                let result = panic::catch_unwind(AssertUnwindSafe(|| {
                    if let Ok((handle, _claim)) = guard.try_begin(1) {
                        held = Some(handle.id());
                        // Unwinds without the panic hook, so the model's output stays quiet.
                        panic::resume_unwind(Box::new("recovery run panicked"));
                    }
                }));
                assert_eq!(result.is_err(), held.is_some());
                if let Some(id) = held {
                    assert_ne!(guard.current().map(|run| run.id()), Some(id));
                }
            })
        };
        let other = {
            let guard = Arc::clone(&guard);
            thread::spawn(move || drop(guard.try_begin(2)))
        };
        panicking.join().unwrap();
        other.join().unwrap();
        assert!(guard.current().is_none());
        assert!(guard.try_begin(3).is_ok());
    });
}
