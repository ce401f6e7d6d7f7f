//! A recovery run: detect the validations missed in an epoch (DOMAIN.md 3.4) and execute them
//! (3.5), streaming page by page into the bounded recovery lane so memory does not grow with the
//! backlog, then wait for every one of them to reach a terminal outcome.

use std::{
    collections::HashSet,
    panic::AssertUnwindSafe,
    sync::Arc,
    time::{Duration, SystemTime},
};

use futures_util::FutureExt;
use tracing::{error, info, warn};

use super::{
    share::{LEASE_ERROR_PAUSE, LEASE_MARGIN},
    Inner, PARAMS_BATCH,
};
use crate::{
    outcome::OutcomeKind,
    ports::{
        chain::{ChainError, InferenceId},
        journal::JournalEntry,
        lease::{Acquired, LeaseKey},
    },
    recovery::{RunClaim, RunState, RunTracker, Trigger},
    sampling,
    scheduler::{Admission, Key},
    Error,
};

/// Page size of the inference listing (DOMAIN.md 7).
const PAGE_SIZE: u32 = 1000;

/// A detection query is tried this many times before the run fails: one transient error must
/// not cost a whole epoch's recovery.
const QUERY_ATTEMPTS: u32 = 3;

/// Runs the recovery the claim was granted for. The claim is released when this returns or
/// unwinds, which reopens the guard.
pub(super) async fn run(
    inner: Arc<Inner>,
    claim: RunClaim,
    trigger: Trigger,
    epoch: u64,
    seed: i64,
) {
    let tracker = Arc::clone(&claim.tracker);
    inner.ports.journal.record(JournalEntry::RunStarted {
        run_id: tracker.id(),
        epoch,
        trigger,
        at: SystemTime::now(),
    });
    let work = AssertUnwindSafe(execute(&inner, &tracker, epoch, seed)).catch_unwind();
    let state = tokio::select! {
        biased;
        _ = inner.cancel.cancelled() => RunState::Cancelled,
        state = work => state.unwrap_or_else(|_| RunState::Failed("recovery run panicked".into())),
    };
    let lease = LeaseKey::recovery();
    if inner.ports.leases.held(&lease) {
        let released =
            inner.bounded(inner.config.journal_timeout, inner.ports.leases.release(&lease, None));
        if !matches!(released.await, Some(Ok(()))) {
            warn!("the recovery lease was not released; it will expire");
        }
    }
    // A run that validated nothing it detected did not complete its job, whatever its
    // detection did: it ends failed, saying why.
    let state = match (state, tracker.nothing_validated()) {
        (RunState::Completed, Some(why)) => RunState::Failed(why),
        (state, _) => state,
    };
    // Only final states get here: completed, not_active, failed or cancelled.
    metrics::counter!("validator_recovery_runs_total", "result" => state.as_str()).increment(1);
    tracker.set_state(state);
    let report = tracker.report();
    inner
        .ports
        .journal
        .record(JournalEntry::RunEnded { report: report.clone(), at: SystemTime::now() });
    let (run_id, detected, outcomes) = (report.run_id, report.detected, report.outcomes);
    match &report.state {
        RunState::Failed(why) => {
            error!(run_id, epoch, detected, %outcomes, %why, "recovery run failed")
        }
        state => {
            info!(run_id, epoch, state = state.as_str(), detected, %outcomes, "recovery run ended")
        }
    }
    drop(claim);
}

/// Waits until this replica holds the cluster's recovery lease: one run at a time across the
/// replicas of a shared journal. A run another replica holds is waited out, not joined.
async fn lead(inner: &Inner) {
    let leases = &inner.ports.leases;
    let lease = LeaseKey::recovery();
    let mut said = false;
    loop {
        let pause = match inner.bounded(inner.config.journal_timeout, leases.acquire(&lease)).await
        {
            Some(Ok(Acquired::Held { .. } | Acquired::Done { .. })) => return,
            Some(Ok(Acquired::Busy { holder, remaining })) => {
                if !said {
                    info!(%holder, "another replica runs a recovery; this one waits for it");
                    said = true;
                }
                remaining.min(leases.ttl()).saturating_add(LEASE_MARGIN)
            }
            Some(Err(err)) => {
                warn!(%err, "the recovery lease cannot be taken; trying again");
                LEASE_ERROR_PAUSE
            }
            None => {
                warn!("the recovery lease request timed out; trying again");
                LEASE_ERROR_PAUSE
            }
        };
        tokio::time::sleep(pause).await;
    }
}

async fn execute(inner: &Inner, tracker: &Arc<RunTracker>, epoch: u64, seed: i64) -> RunState {
    lead(inner).await;
    let chain = &inner.ports.chain;
    let address = inner.address().to_owned();

    match query(inner, || chain.current_epoch_group()).await {
        Ok(current) if current.has_member(&address) => {}
        Ok(_) => {
            info!("not active in the current epoch; recovery skipped");
            return RunState::NotActive;
        }
        Err(err) => return RunState::Failed(format!("current epoch group: {err}")),
    }
    let detection = detect(inner, tracker, epoch, seed, &address).await;
    tracker.set_state(RunState::Executing);
    tracker.drained().await;
    match detection {
        Ok(()) => RunState::Completed,
        Err(err) => RunState::Failed(err),
    }
}

async fn detect(
    inner: &Inner,
    tracker: &Arc<RunTracker>,
    epoch: u64,
    seed: i64,
    address: &str,
) -> Result<(), String> {
    let chain = &inner.ports.chain;
    let validated: HashSet<InferenceId> =
        match query(inner, || chain.validated_inferences(epoch)).await {
            Ok(ids) => ids.into_iter().collect(),
            Err(ChainError::NotFound) => HashSet::new(),
            Err(err) => {
                warn!(%err, "validated-set query failed; treated as empty");
                HashSet::new()
            }
        };
    let models = validator_models(inner, epoch, address).await?;
    if models.is_empty() {
        info!("no validation weight in any model subgroup of the epoch");
        return Ok(());
    }

    let mut page_key = None;
    let mut power = None;
    loop {
        if let Some(reason) = inner.retired.get() {
            return Err(format!("classic validation is retired: {reason}"));
        }
        let key = page_key.take();
        let page = query(inner, || chain.inferences_page(key.clone(), PAGE_SIZE))
            .await
            .map_err(|err| format!("inference listing: {err}"))?;
        let candidates: Vec<InferenceId> = page
            .inferences
            .into_iter()
            .filter(|summary| {
                summary.epoch_id == epoch
                    && models.contains(&summary.model)
                    && !validated.contains(&summary.inference_id)
            })
            .map(|summary| summary.inference_id)
            .collect();
        for batch in candidates.chunks(PARAMS_BATCH) {
            let answer = query(inner, || chain.validation_parameters(batch))
                .await
                .map_err(|err| format!("validation parameters: {err}"))?;
            if power.is_none() {
                power = sampling::recovery_validator_power(&answer.validator_powers, epoch);
            }
            let Some(power) = power else { continue };
            for details in &answer.details {
                if details.epoch_id != epoch
                    || !sampling::should_validate(details, address, power, &answer.params, seed)
                {
                    continue;
                }
                if !inner.ports.broker.serves(&details.model) {
                    tracker.detected();
                    tracker.count(OutcomeKind::SkippedModelNotServed);
                    continue;
                }
                let key = Key::Classic(details.inference_id.clone(), false);
                match inner.scheduler.admit_recovery(key, tracker, &inner.cancel).await {
                    Ok(Admission::Admitted | Admission::Joined) => {
                        tracker.detected();
                        tracker.admitted();
                    }
                    Ok(Admission::AlreadyDone) => {
                        tracker.detected();
                        tracker.count(OutcomeKind::SkippedAlreadyValidated);
                    }
                    // Only a run attaches itself to a key, and only one runs at a time: the copy
                    // in flight is this run's own, from a listing that repeats an id.
                    Ok(Admission::AlreadyInFlight) => {}
                    Err(Error::ShuttingDown) => return Err("shutdown during detection".into()),
                    Err(err) => return Err(err.to_string()),
                }
            }
        }
        match page.next_key {
            Some(next) if !next.is_empty() => page_key = Some(next),
            _ => return Ok(()),
        }
    }
}

/// The models whose subgroup in `epoch` gives this validator validation weight.
async fn validator_models(
    inner: &Inner,
    epoch: u64,
    address: &str,
) -> Result<HashSet<String>, String> {
    let chain = &inner.ports.chain;
    let parent = query(inner, || chain.epoch_group(epoch, ""))
        .await
        .map_err(|err| format!("epoch group: {err}"))?;
    let mut models = HashSet::new();
    for model in parent.sub_group_models {
        match query(inner, || chain.epoch_group(epoch, &model)).await {
            Ok(group) if group.has_model_snapshot && group.has_member(address) => {
                models.insert(model);
            }
            Ok(_) | Err(ChainError::NotFound) => {}
            Err(err) => return Err(format!("epoch group of {model}: {err}")),
        }
    }
    Ok(models)
}

/// A detection query with its timeout, tried a few times with a short pause; not-found is an
/// answer, not a failure.
async fn query<T, F, Fut>(inner: &Inner, call: F) -> Result<T, ChainError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, ChainError>>,
{
    let mut attempt = 1;
    loop {
        match inner.chain_call(call()).await {
            Err(err) if err != ChainError::NotFound && attempt < QUERY_ATTEMPTS => {
                warn!(%err, attempt, "detection query failed; retrying");
                tokio::time::sleep(Duration::from_secs(u64::from(attempt))).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}
