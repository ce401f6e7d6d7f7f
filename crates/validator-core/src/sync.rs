//! The locks and atomics of the scheduler and the recovery guard: std's, or loom's when the
//! crate's tests are built with `--cfg loom`, so the model checks in `scheduler/loom.rs` and
//! `recovery/loom.rs` explore every interleaving of them.
//!
//! `Arc` is std's in both builds: the scheduler and the guard are shared through it with the rest
//! of the crate, which would otherwise need loom too, and reference counting is not what the
//! models check. The tokio types beside these locks (`Notify`, `broadcast`, `watch`, `Instant`)
//! are not loom-aware either: loom runs them, but does not interleave their internals.

#[cfg(all(test, loom))]
pub(crate) use loom::sync::{
    atomic::{AtomicU64, Ordering},
    Mutex, MutexGuard,
};
#[cfg(not(all(test, loom)))]
pub(crate) use std::sync::{
    atomic::{AtomicU64, Ordering},
    Mutex, MutexGuard,
};

/// Runs `f` under loom's model checker with a preemption bound of 3 unless
/// `LOOM_MAX_PREEMPTIONS` sets another: bugs seldom need more than two or three preemptions, and
/// unbounded the three-thread models do not finish within a quarter of an hour.
#[cfg(all(test, loom))]
pub(crate) fn model<F>(f: F)
where
    F: Fn() + Sync + Send + 'static,
{
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(3);
    }
    builder.check(f);
}
