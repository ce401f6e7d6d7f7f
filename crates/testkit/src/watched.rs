//! State shared between a fake server's connection tasks and its test-facing handle, with a
//! signal on every change so tests await conditions instead of polling.

use std::sync::{Mutex, MutexGuard};

use tokio::sync::Notify;

/// A fake's state behind a lock, and a signal fired after every [`update`](Watched::update).
pub(crate) struct Watched<S> {
    pub(crate) state: Mutex<S>,
    pub(crate) changed: Notify,
}

impl<S> Watched<S> {
    /// Wraps `state`.
    pub(crate) fn new(state: S) -> Self {
        Self { state: Mutex::new(state), changed: Notify::new() }
    }

    /// Locks the state. A panicking test thread cannot leave it half-updated in a way that
    /// matters to a fake, so poisoning is ignored.
    pub(crate) fn lock(&self) -> MutexGuard<'_, S> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Changes the state and wakes every waiter.
    pub(crate) fn update<R>(&self, change: impl FnOnce(&mut S) -> R) -> R {
        let result = change(&mut self.lock());
        self.changed.notify_waiters();
        result
    }

    /// Waits until `condition` holds.
    pub(crate) async fn wait_until(&self, condition: impl Fn(&S) -> bool) {
        loop {
            let changed = self.changed.notified();
            if condition(&self.lock()) {
                return;
            }
            changed.await;
        }
    }
}
