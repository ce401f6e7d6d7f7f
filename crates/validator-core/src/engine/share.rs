//! Work shared between replicas on one journal: a validation's lease is taken before its first
//! attempt and checked again before its replay and its submission, and given up with the key's
//! terminal outcome ([`Leases`](crate::ports::Leases)).
//!
//! A key whose lease another replica holds waits, holding no slot and spending no retry budget,
//! until that lease would expire; then it asks again, and either learns the work is done or
//! takes the lease over. Waiting for a lease is not a failed attempt and is not journaled as
//! one.

use std::time::Duration;

use tracing::{debug, info, warn};

use super::Inner;
use crate::{
    outcome::{Outcome, SkipReason, Stage},
    ports::lease::{Acquired, LeaseKey, Takeover},
    scheduler::{Attempts, Key, PendingSubmit, Step},
};

/// Added to a lease's remaining time before asking again, so the question lands after the
/// expiry rather than just before it.
pub(super) const LEASE_MARGIN: Duration = Duration::from_millis(20);

/// The pause after a lease request failed (the shared store is down or slow): the key waits
/// without a slot and asks again.
pub(super) const LEASE_ERROR_PAUSE: Duration = Duration::from_secs(1);

impl Key {
    /// The lease this key is worked under.
    pub(crate) fn lease_key(&self) -> LeaseKey {
        match self {
            Key::Classic(id, revalidation) => LeaseKey::classic(id, *revalidation),
            Key::Devshard(key) => LeaseKey::devshard(&key.escrow_id, key.inference_id),
        }
    }
}

impl Inner {
    /// Makes sure this replica holds `key`'s lease. `Ok(None)`: held, go on; `Ok(Some)`: just
    /// taken over from a replica that stopped renewing it; `Err(step)`: stop here (wait for the
    /// holder, or end because another replica finished the work: a devshard key ends with that
    /// replica's outcome, so its callers get the verdict).
    pub(super) async fn hold(
        &self,
        key: &LeaseKey,
        devshard: bool,
        attempts: Attempts,
    ) -> Result<Option<Takeover>, Step> {
        let leases = &self.ports.leases;
        if leases.held(key) {
            return Ok(None);
        }
        let acquired = self.bounded(self.config.journal_timeout, leases.acquire(key)).await;
        match acquired {
            Some(Ok(Acquired::Held { takeover })) => {
                if let Some(takeover) = &takeover {
                    info!(
                        %key,
                        from = %takeover.from,
                        open_intents = takeover.open_intents.len(),
                        "lease taken over from a replica that stopped renewing it"
                    );
                }
                Ok(takeover)
            }
            Some(Ok(Acquired::Busy { holder, remaining })) => {
                debug!(%key, %holder, ?remaining, "another replica works this validation");
                let delay = remaining.min(leases.ttl()).saturating_add(LEASE_MARGIN);
                Err(wait(delay, attempts, None))
            }
            Some(Ok(Acquired::Done { outcome, by })) => {
                debug!(%key, %by, "another replica finished this validation");
                let outcome = match outcome {
                    Some(outcome) if devshard => outcome,
                    _ => Outcome::Skipped { reason: SkipReason::WorkedElsewhere },
                };
                Err(Step::Terminal(outcome))
            }
            Some(Err(err)) => {
                warn!(%key, %err, "lease not taken; the validation waits");
                Err(wait(LEASE_ERROR_PAUSE, attempts, None))
            }
            None => {
                warn!(%key, "lease request timed out; the validation waits");
                Err(wait(LEASE_ERROR_PAUSE, attempts, None))
            }
        }
    }

    /// Gives `key`'s lease up at its terminal outcome, if this replica holds it: a finished key
    /// is marked done with its outcome; a cancelled one is left for another replica to take.
    pub(super) async fn release_lease(&self, key: &Key, outcome: &Outcome) {
        let leases = &self.ports.leases;
        let key = key.lease_key();
        if !leases.held(&key) {
            return;
        }
        let done = (!matches!(outcome, Outcome::Cancelled)).then_some(outcome);
        match self.bounded(self.config.journal_timeout, leases.release(&key, done)).await {
            Some(Ok(())) => {}
            Some(Err(err)) => warn!(%key, %err, "lease not released; it will expire"),
            None => warn!(%key, "lease release timed out; it will expire"),
        }
    }
}

/// What to do with an open intent a taken-over lease came with: the oldest one is checked on
/// chain and sent again only if it is not there, once any broadcast its writer may have started
/// has surely ended (a broadcast is bounded by the chain timeout after its intent commits).
/// `None` when the takeover left no intent open.
pub(super) fn reconcile_step(
    takeover: &Takeover,
    chain_timeout: Duration,
) -> Option<(Duration, PendingSubmit)> {
    let open = takeover.open_intents.first()?;
    if takeover.open_intents.len() > 1 {
        // One holder commits one message per key and its resends reuse the id; several open
        // intents mean an older one was left behind: the oldest is the one that may have landed.
        warn!(
            open = takeover.open_intents.len(),
            "several open intents for one validation; reconciling the oldest"
        );
    }
    let settle = chain_timeout.saturating_add(LEASE_MARGIN).saturating_sub(open.age);
    let pending = PendingSubmit {
        msg: open.intent.msg.clone(),
        outcome: open.intent.outcome.clone(),
        epoch: open.intent.epoch,
        reconcile: true,
    };
    Some((settle, pending))
}

/// A wait for a lease: no slot, no retry budget, not journaled as a failed attempt.
pub(super) fn wait(
    delay: Duration,
    attempts: Attempts,
    pending_submit: Option<Box<PendingSubmit>>,
) -> Step {
    Step::Retry {
        stage: Stage::Lease,
        delay,
        attempts,
        pending_submit,
        error: String::new(),
        exclude: None,
        wants_room: false,
        keep: None,
    }
}
