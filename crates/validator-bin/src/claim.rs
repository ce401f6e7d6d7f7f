//! Recovery followed by the reward claim (DOMAIN.md 3.6): the [`Claimer`] that the claim
//! trigger, the reward check and the admin API share, and its in-memory record of claims.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use anyhow::Context;
use chain_source::{ChainNodeClient, Signer};
use serde::Serialize;
use tokio::sync::{oneshot, watch};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{info, warn};
use validator_core::{Engine, RecoveryStart, RunReport, Trigger};

/// The reward check's bound on its settle-amount query (upstream's 30 s).
const SETTLE_QUERY_TIMEOUT: Duration = Duration::from_secs(30);

/// One claim: the recovery run before it and the claim's result.
#[derive(Debug, Clone, Serialize)]
pub struct ClaimRecord {
    /// The epoch claimed.
    pub epoch_index: u64,
    /// The seed revealed with the claim.
    pub seed: i64,
    /// The recovery run awaited before the claim, if one ran.
    pub run: Option<RunReport>,
    /// The claim transaction's hash, when it was accepted.
    pub tx_hash: Option<String>,
    /// Why the claim failed, when it did.
    pub error: Option<String>,
}

impl ClaimRecord {
    /// Whether the claim transaction was accepted.
    pub fn claimed(&self) -> bool {
        self.tx_hash.is_some()
    }
}

/// Recovery followed by the reward claim, shared by the claim trigger, the reward check and the
/// admin API, with an in-memory record of claimed epochs.
pub struct Claimer {
    engine: Engine,
    chain: ChainNodeClient,
    signer: Signer,
    records: Mutex<BTreeMap<u64, ClaimRecord>>,
    changed: watch::Sender<usize>,
    tasks: TaskTracker,
    cancel: CancellationToken,
}

impl Claimer {
    pub(crate) fn new(
        engine: Engine,
        chain: ChainNodeClient,
        signer: Signer,
        cancel: CancellationToken,
    ) -> Self {
        Self {
            engine,
            chain,
            signer,
            records: Mutex::default(),
            changed: watch::Sender::new(0),
            tasks: TaskTracker::new(),
            cancel,
        }
    }

    /// The seed of `epoch` (`chain_source::seed_for_epoch` with this validator's signer).
    pub fn seed(&self, epoch: u64) -> i64 {
        chain_source::seed_for_epoch(&self.signer, epoch)
    }

    /// The epoch before the chain's latest one.
    pub async fn previous_epoch(&self) -> anyhow::Result<u64> {
        let info = self.chain.epoch_info().await.context("querying the latest epoch")?;
        Ok(info.epoch_index.saturating_sub(1))
    }

    /// Whether a claim of `epoch` was accepted.
    pub fn is_claimed(&self, epoch: u64) -> bool {
        self.lock().get(&epoch).is_some_and(ClaimRecord::claimed)
    }

    /// Every claim attempted, by epoch.
    pub fn records(&self) -> Vec<ClaimRecord> {
        self.lock().values().cloned().collect()
    }

    /// Ticks once per finished claim attempt.
    pub fn subscribe(&self) -> watch::Receiver<usize> {
        self.changed.subscribe()
    }

    /// The tasks the claimer spawned, for the app's drain.
    pub(crate) fn tasks(&self) -> &TaskTracker {
        &self.tasks
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, ClaimRecord>> {
        self.records.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The periodic reward check on a tracked task: queries what is settled for `address`
    /// and, when coins wait, recovers their epoch then claims. `running` is set by the caller
    /// and cleared when the check ends, however it ends.
    pub(crate) fn spawn_reward_check(self: &Arc<Self>, address: String, running: Arc<AtomicBool>) {
        let claimer = Arc::clone(self);
        self.tasks.spawn(async move {
            let _running = ClearOnDrop(running);
            let settled = tokio::select! {
                settled = tokio::time::timeout(
                    SETTLE_QUERY_TIMEOUT,
                    claimer.chain.query().settle_amount(&address),
                ) => settled,
                () = claimer.cancel.cancelled() => return,
            };
            let settled = match settled {
                Ok(Ok(settled)) => settled,
                Ok(Err(chain_source::Error::NotFound(_))) => {
                    info!("reward check: nothing settled to claim");
                    return;
                }
                Ok(Err(err)) => {
                    warn!(%err, "reward check: settle amount query failed");
                    return;
                }
                Err(_) => {
                    warn!("reward check: settle amount query timed out");
                    return;
                }
            };
            if !settled.has_coins() {
                info!(epoch = settled.epoch_index, "reward check: no coins left to claim");
                return;
            }
            let epoch = settled.epoch_index;
            info!(
                epoch,
                reward_coins = settled.reward_coins,
                work_coins = settled.work_coins,
                "reward check: unclaimed rewards; recovering their epoch, then claiming"
            );
            claimer.recover_then_claim(Trigger::RewardCheck, epoch, claimer.seed(epoch)).await;
        });
    }

    /// Runs [`Claimer::recover_then_claim`] on a tracked task; the receiver gets the record.
    pub fn spawn(
        self: &Arc<Self>,
        trigger: Trigger,
        epoch: u64,
        seed: i64,
    ) -> oneshot::Receiver<ClaimRecord> {
        let (sender, receiver) = oneshot::channel();
        let claimer = Arc::clone(self);
        self.tasks.spawn(async move {
            let record = claimer.recover_then_claim(trigger, epoch, seed).await;
            let _ = sender.send(record);
        });
        receiver
    }

    /// Recovers `epoch` (or joins the run going on), awaits the run, then claims, also when
    /// recovery failed. Epoch 0 (genesis) is claimed without recovery. Shutdown ends it
    /// without claiming.
    pub async fn recover_then_claim(&self, trigger: Trigger, epoch: u64, seed: i64) -> ClaimRecord {
        let mut record =
            ClaimRecord { epoch_index: epoch, seed, run: None, tx_hash: None, error: None };
        // A run of another epoch may hold the guard: await it, then start ours once more.
        for _ in 0..2 {
            if epoch == 0 {
                break;
            }
            let start = match self.engine.recover_from(trigger, epoch, seed) {
                Ok(start) => start,
                Err(err) => {
                    warn!(epoch, %err, "recovery not started before the claim");
                    break;
                }
            };
            let started = matches!(start, RecoveryStart::Started(_));
            let handle = start.handle().clone();
            info!(epoch, run_id = handle.id(), started, "awaiting recovery before the claim");
            let report = tokio::select! {
                report = handle.wait() => report,
                () = self.cancel.cancelled() => {
                    record.error = Some("shut down before the claim".into());
                    return record;
                }
            };
            let done = started || report.epoch == epoch;
            record.run = Some(report);
            if done {
                break;
            }
        }
        let claimed = tokio::select! {
            claimed = self.chain.claim_rewards(seed, epoch) => claimed,
            () = self.cancel.cancelled() => {
                record.error = Some("shut down before the claim".into());
                return record;
            }
        };
        match claimed {
            Ok(hash) => {
                info!(epoch, tx_hash = %hash, "rewards claimed");
                record.tx_hash = Some(hash);
            }
            Err(err) => {
                warn!(epoch, %err, "reward claim failed");
                record.error = Some(err.to_string());
            }
        }
        self.lock().insert(epoch, record.clone());
        self.changed.send_modify(|n| *n += 1);
        record
    }
}

/// Clears its flag when dropped, so a check that ends by any path reopens the next one.
struct ClearOnDrop(Arc<AtomicBool>);

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}
