//! Recovery followed by the reward claim (DOMAIN.md 3.6, LIVE-NETWORK.md section 1): the
//! [`Claimer`] that the claim trigger, the reward check and the admin API share, and its record
//! of each epoch's claim, kept in the journal.
//!
//! Every claim lands with code 0; what it did is read from its block
//! ([`chain_source::client::ClaimAnswer`]). A claim that was refused, failed or never landed
//! stays pending and is tried again by [`Claimer::retry_due`], no sooner than 30 blocks after
//! the last attempt (the chain's rate limit) and only while the epoch's window is open (the
//! chain accepts claims of the previous epoch only). Before each attempt the settled amount is
//! read again: nothing left means nothing to send. A paid claim is never sent again.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use anyhow::Context;
use chain_source::{client::ClaimAnswer, ChainNodeClient, Signer};
use journal::SqliteJournal;
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{error, info, warn};
use validator_core::{Engine, RecoveryStart, RunReport, Trigger};

/// The reward check's bound on its settle-amount query (upstream's 30 s).
const SETTLE_QUERY_TIMEOUT: Duration = Duration::from_secs(30);

/// Blocks the chain wants between two claim attempts of one account.
pub const CLAIM_INTERVAL_BLOCKS: u64 = 30;

/// Where an epoch's claim stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClaimState {
    /// Not paid yet; tried again while the epoch's window is open.
    Pending,
    /// The chain paid the rewards.
    Paid,
    /// The chain held nothing to claim for the epoch.
    NothingToClaim,
    /// The window closed before a claim was paid: the epoch's rewards are lost.
    Expired,
}

/// One epoch's claim: the recovery run before it and every attempt's result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClaimRecord {
    /// The epoch claimed.
    pub epoch_index: u64,
    /// The seed revealed with the claim.
    pub seed: i64,
    /// Where the claim stands.
    pub state: ClaimState,
    /// Claim transactions sent.
    pub attempts: u32,
    /// The block of the last attempt (its inclusion, or the tip when it did not land).
    pub last_attempt_height: Option<u64>,
    /// Coins paid, in ngonka.
    pub amount: u64,
    /// What the chain held for the claim when last read, in ngonka.
    pub unclaimed: Option<u64>,
    /// The chain's answer to the last attempt ("Claim rate limited", ...), or why it failed.
    pub last_result: Option<String>,
    /// Every claim transaction's hash, oldest first.
    pub tx_hashes: Vec<String>,
    /// The recovery run awaited before the first claim, if one ran (not kept across restarts).
    #[serde(skip_deserializing)]
    pub run: Option<RunReport>,
}

impl ClaimRecord {
    fn new(epoch_index: u64, seed: i64) -> Self {
        Self {
            epoch_index,
            seed,
            state: ClaimState::Pending,
            attempts: 0,
            last_attempt_height: None,
            amount: 0,
            unclaimed: None,
            last_result: None,
            tx_hashes: Vec::new(),
            run: None,
        }
    }

    /// Whether the chain paid the claim.
    pub fn claimed(&self) -> bool {
        self.state == ClaimState::Paid
    }

    /// Whether nothing more will be sent for the epoch (paid, nothing to claim, or expired).
    pub fn is_settled(&self) -> bool {
        self.state != ClaimState::Pending
    }

    /// The last claim transaction's hash.
    pub fn tx_hash(&self) -> Option<&str> {
        self.tx_hashes.last().map(String::as_str)
    }
}

/// Recovery followed by the reward claim, shared by the claim trigger, the reward check and the
/// admin API, with the claim record of each epoch.
pub struct Claimer {
    engine: Engine,
    chain: ChainNodeClient,
    signer: Signer,
    journal: Arc<SqliteJournal>,
    records: Mutex<BTreeMap<u64, ClaimRecord>>,
    /// Set while a claim attempt runs: attempts never overlap.
    attempting: AtomicBool,
    changed: watch::Sender<usize>,
    tasks: TaskTracker,
    cancel: CancellationToken,
}

impl Claimer {
    /// A claimer that starts from the claim records the journal holds.
    pub(crate) fn new(
        engine: Engine,
        chain: ChainNodeClient,
        signer: Signer,
        journal: Arc<SqliteJournal>,
        cancel: CancellationToken,
    ) -> anyhow::Result<Self> {
        let mut records = BTreeMap::new();
        for (epoch, text) in journal.claims().context("reading the claim records")? {
            match serde_json::from_str::<ClaimRecord>(&text) {
                Ok(record) => {
                    records.insert(epoch, record);
                }
                Err(err) => warn!(epoch, %err, "unreadable claim record in the journal; ignored"),
            }
        }
        Ok(Self {
            engine,
            chain,
            signer,
            journal,
            records: Mutex::new(records),
            attempting: AtomicBool::new(false),
            changed: watch::Sender::new(0),
            tasks: TaskTracker::new(),
            cancel,
        })
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

    /// Whether the claim of `epoch` was paid.
    pub fn is_claimed(&self, epoch: u64) -> bool {
        self.lock().get(&epoch).is_some_and(ClaimRecord::claimed)
    }

    /// Whether nothing more will be sent for `epoch`.
    pub fn is_settled(&self, epoch: u64) -> bool {
        self.lock().get(&epoch).is_some_and(ClaimRecord::is_settled)
    }

    /// Every epoch's claim record, oldest first.
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
        let mut run = None;
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
                () = self.cancel.cancelled() => return self.current(epoch, seed),
            };
            let done = started || report.epoch == epoch;
            run = Some(report);
            if done {
                break;
            }
        }
        self.attempt(epoch, seed, run).await
    }

    /// Spawns one more attempt for each pending claim whose epoch's window is still open (the
    /// chain's latest epoch is `current_epoch`) and whose last attempt is 30 blocks behind
    /// `height`; marks the pending claims of closed windows as expired.
    pub(crate) fn retry_due(self: &Arc<Self>, height: u64, current_epoch: u64) {
        let mut due = Vec::new();
        let mut expired = Vec::new();
        for record in self.lock().values_mut() {
            if record.state != ClaimState::Pending || record.attempts == 0 {
                continue;
            }
            if record.epoch_index.saturating_add(1) < current_epoch {
                record.state = ClaimState::Expired;
                expired.push(record.clone());
                continue;
            }
            let ready = record
                .last_attempt_height
                .is_none_or(|last| height >= last.saturating_add(CLAIM_INTERVAL_BLOCKS));
            if record.epoch_index.saturating_add(1) == current_epoch && ready {
                due.push((record.epoch_index, record.seed));
            }
        }
        for record in expired {
            error!(
                epoch = record.epoch_index,
                attempts = record.attempts,
                last_result = record.last_result.as_deref().unwrap_or(""),
                "the claim window closed before the rewards were paid: the epoch's rewards are lost"
            );
            metrics::counter!("validator_claims_total", "result" => "expired").increment(1);
            let claimer = Arc::clone(self);
            self.tasks.spawn(async move { claimer.store(record).await });
        }
        for (epoch, seed) in due {
            if self.attempting.load(Ordering::Acquire) {
                break;
            }
            info!(height, epoch, "claim not paid yet: trying again");
            let claimer = Arc::clone(self);
            self.tasks.spawn(async move {
                claimer.attempt(epoch, seed, None).await;
            });
        }
    }

    fn current(&self, epoch: u64, seed: i64) -> ClaimRecord {
        self.lock().get(&epoch).cloned().unwrap_or_else(|| ClaimRecord::new(epoch, seed))
    }

    /// One claim attempt of `epoch`, unless one is running or the claim is already paid: reads
    /// what is settled, claims it, reads the answer from the block, stores the record.
    async fn attempt(&self, epoch: u64, seed: i64, run: Option<RunReport>) -> ClaimRecord {
        let mut record = self.current(epoch, seed);
        if run.is_some() {
            record.run = run;
        }
        if record.claimed() {
            info!(epoch, "rewards already paid for this epoch; nothing sent");
            return record;
        }
        if self.attempting.swap(true, Ordering::AcqRel) {
            info!(epoch, "a claim attempt is already running");
            return record;
        }
        let _attempting = ClearOnDrop(&self.attempting);
        let address = self.engine_address();
        let settled = tokio::select! {
            settled = tokio::time::timeout(
                SETTLE_QUERY_TIMEOUT,
                self.chain.query().settle_amount(&address),
            ) => settled.unwrap_or_else(|_| Err(chain_source::Error::Timeout("settle amount".into()))),
            () = self.cancel.cancelled() => return record,
        };
        let total = match settled {
            Ok(settled) if settled.epoch_index == epoch && settled.has_coins() => settled.total(),
            Ok(_) | Err(chain_source::Error::NotFound(_)) => {
                record.unclaimed = Some(0);
                metrics::gauge!("validator_unclaimed_ngonka").set(0.0);
                if record.state == ClaimState::Pending && record.amount == 0 {
                    info!(epoch, "nothing settled to claim for this epoch");
                    record.state = ClaimState::NothingToClaim;
                    record.last_result = Some("nothing settled to claim".into());
                }
                return self.store(record).await;
            }
            Err(err) => {
                warn!(epoch, %err, "settle amount query failed; the claim is tried again later");
                record.last_result = Some(format!("settle amount query failed: {err}"));
                metrics::counter!("validator_claims_total", "result" => "error").increment(1);
                return self.store(record).await;
            }
        };
        record.unclaimed = Some(total);
        metrics::gauge!("validator_unclaimed_ngonka").set(total as f64);
        let answer = tokio::select! {
            answer = self.chain.claim_rewards(seed, epoch, total) => answer,
            () = self.cancel.cancelled() => return record,
        };
        record.attempts += 1;
        let result = match answer {
            Ok(answer) => {
                record.tx_hashes.push(answer.tx_hash().to_owned());
                match answer {
                    ClaimAnswer::Paid { amount, result, tx_hash, height } => {
                        info!(epoch, amount, %tx_hash, height, "rewards claimed and paid");
                        record.state = ClaimState::Paid;
                        record.amount = amount;
                        record.unclaimed = Some(total.saturating_sub(amount));
                        record.last_attempt_height = Some(height);
                        record.last_result = Some(result);
                        metrics::gauge!("validator_unclaimed_ngonka").set(0.0);
                        "paid"
                    }
                    ClaimAnswer::Refused { result, tx_hash, height } => {
                        warn!(epoch, %tx_hash, height, %result, "the chain refused the claim; trying again in 30 blocks");
                        record.last_attempt_height = Some(height);
                        record.last_result = Some(result);
                        "refused"
                    }
                    ClaimAnswer::Failed { code, codespace, log, tx_hash, height } => {
                        warn!(epoch, %tx_hash, height, code, %codespace, %log, "the claim failed in its block; trying again in 30 blocks");
                        record.last_attempt_height = Some(height);
                        record.last_result = Some(format!("code {code} ({codespace}): {log}"));
                        "failed"
                    }
                    ClaimAnswer::NotIncluded { tx_hash, last_error } => {
                        warn!(epoch, %tx_hash, ?last_error, "the claim did not land; trying again in 30 blocks");
                        record.last_attempt_height = self.tip().await;
                        record.last_result = Some("not included".into());
                        "not_included"
                    }
                }
            }
            Err(err) => {
                warn!(epoch, %err, "reward claim failed; trying again in 30 blocks");
                record.last_attempt_height = self.tip().await;
                record.last_result = Some(err.to_string());
                "error"
            }
        };
        metrics::counter!("validator_claims_total", "result" => result).increment(1);
        self.store(record).await
    }

    fn engine_address(&self) -> String {
        validator_core::ports::ChainClient::account_address(&self.chain).to_owned()
    }

    async fn tip(&self) -> Option<u64> {
        self.chain.node_status().await.ok().map(|status| status.latest_height)
    }

    /// Keeps the record in memory and in the journal, and says so to subscribers.
    async fn store(&self, record: ClaimRecord) -> ClaimRecord {
        match serde_json::to_string(&record) {
            Ok(text) => {
                if let Err(err) = self.journal.store_claim(record.epoch_index, text).await {
                    warn!(epoch = record.epoch_index, %err, "claim record not written to the journal");
                }
            }
            Err(err) => warn!(epoch = record.epoch_index, %err, "claim record not serialisable"),
        }
        self.lock().insert(record.epoch_index, record.clone());
        self.changed.send_modify(|n| *n += 1);
        record
    }
}

/// Clears its flag when dropped, so a check or an attempt that ends by any path reopens the
/// next one.
struct ClearOnDrop<F: std::ops::Deref<Target = AtomicBool>>(F);

impl<F: std::ops::Deref<Target = AtomicBool>> Drop for ClearOnDrop<F> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}
