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
use journal::Store;
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{debug, error, info, warn};
use validator_core::{Engine, RecoveryStart, RunReport, Trigger};

use crate::leader::Leadership;

/// The reward check's bound on its settle-amount query (upstream's 30 s).
const SETTLE_QUERY_TIMEOUT: Duration = Duration::from_secs(30);

/// Blocks the chain wants between two claim attempts of one account.
pub const CLAIM_INTERVAL_BLOCKS: u64 = 30;

/// How many epochs' claim records the claimer keeps in memory (and shows in the status).
const KEPT_EPOCHS: u64 = 32;

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

impl ClaimState {
    /// Every state.
    pub const ALL: [ClaimState; 4] =
        [ClaimState::Pending, ClaimState::Paid, ClaimState::NothingToClaim, ClaimState::Expired];

    /// Stable snake-case name, as in JSON and the `state` label.
    pub fn as_str(self) -> &'static str {
        match self {
            ClaimState::Pending => "pending",
            ClaimState::Paid => "paid",
            ClaimState::NothingToClaim => "nothing_to_claim",
            ClaimState::Expired => "expired",
        }
    }
}

/// Sets `validator_claim_state{epoch, state}`: 1 for the record's state, 0 for the others.
fn record_state_metric(record: &ClaimRecord) {
    let epoch = record.epoch_index.to_string();
    for state in ClaimState::ALL {
        let value = if state == record.state { 1.0 } else { 0.0 };
        metrics::gauge!("validator_claim_state", "epoch" => epoch.clone(), "state" => state.as_str())
            .set(value);
    }
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
    journal: Arc<Store>,
    leadership: Arc<Leadership>,
    records: Mutex<BTreeMap<u64, ClaimRecord>>,
    /// Set while a claim attempt runs: attempts never overlap.
    attempting: AtomicBool,
    changed: watch::Sender<usize>,
    tasks: TaskTracker,
    cancel: CancellationToken,
}

impl Claimer {
    /// A claimer that starts from the claim records the journal holds. Only the leader sends
    /// claims.
    pub(crate) async fn new(
        engine: Engine,
        chain: ChainNodeClient,
        signer: Signer,
        journal: Arc<Store>,
        leadership: Arc<Leadership>,
        cancel: CancellationToken,
    ) -> anyhow::Result<Self> {
        let records = read_records(&journal).await?;
        Ok(Self {
            engine,
            chain,
            signer,
            journal,
            leadership,
            records: Mutex::new(records),
            attempting: AtomicBool::new(false),
            changed: watch::Sender::new(0),
            tasks: TaskTracker::new(),
            cancel,
        })
    }

    /// Reads the claim records again from the journal, where another replica that was the
    /// leader may have written since: a replica that becomes the leader starts from them. A
    /// settled record in memory stays settled.
    pub(crate) async fn reload(&self) -> anyhow::Result<()> {
        let stored = read_records(&self.journal).await?;
        let mut records = self.lock();
        for (epoch, record) in stored {
            let settled = records.get(&epoch).is_some_and(ClaimRecord::is_settled);
            if !settled {
                records.insert(epoch, record);
            }
        }
        Ok(())
    }

    /// The seed of `epoch` (`chain_source::seed_for_epoch` with this validator's signer).
    pub fn seed(&self, epoch: u64) -> i64 {
        chain_source::seed_for_epoch(&self.signer, epoch)
    }

    /// The epoch the chain takes claims for: the one before the epoch in effect (the latest
    /// epoch's PoC stage still belongs to the previous one).
    pub async fn previous_epoch(&self) -> anyhow::Result<u64> {
        let info = self.chain.epoch_info().await.context("querying the latest epoch")?;
        let schedule = chain_source::schedule::EpochSchedule::from(&info);
        Ok(schedule.effective_epoch(info.block_height).saturating_sub(1))
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
                Err(validator_core::Error::ProtocolRetired(_)) => {
                    debug!(epoch, "classic validation is retired: claiming without recovery");
                    break;
                }
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
        self.attempt(epoch, seed, run, None).await
    }

    /// Marks the pending claims whose window closed as expired, and spawns one more attempt for
    /// the pending claim of the epoch before `effective_epoch` (the one the chain accepts at
    /// `height`) once its last attempt is 30 blocks behind.
    pub(crate) fn retry_due(self: &Arc<Self>, height: u64, effective_epoch: u64) {
        let mut due = None;
        let mut expired = Vec::new();
        for record in self.lock().values_mut() {
            if record.state != ClaimState::Pending {
                continue;
            }
            if record.epoch_index.saturating_add(1) < effective_epoch {
                record.state = ClaimState::Expired;
                expired.push(record.clone());
                continue;
            }
            let ready = record
                .last_attempt_height
                .is_none_or(|last| height >= last.saturating_add(CLAIM_INTERVAL_BLOCKS));
            if record.epoch_index.saturating_add(1) == effective_epoch && ready {
                due = Some((record.epoch_index, record.seed));
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
        if let Some((epoch, seed)) = due {
            if self.attempting.load(Ordering::Acquire) {
                return;
            }
            info!(height, epoch, "claim not paid yet: trying again");
            let claimer = Arc::clone(self);
            self.tasks.spawn(async move {
                claimer.attempt(epoch, seed, None, Some(height)).await;
            });
        }
    }

    fn current(&self, epoch: u64, seed: i64) -> ClaimRecord {
        self.lock().get(&epoch).cloned().unwrap_or_else(|| ClaimRecord::new(epoch, seed))
    }

    /// One claim attempt of `epoch` at `height` (the tip when not given), unless one is running,
    /// the claim is paid or expired, or its last attempt is less than 30 blocks behind: reads
    /// what is settled, claims it, reads the answer from the block, stores the record. When
    /// nothing is settled any more, an earlier claim transaction that was not seen landing is
    /// looked up before the claim counts as having had nothing to claim.
    async fn attempt(
        &self,
        epoch: u64,
        seed: i64,
        run: Option<RunReport>,
        height: Option<u64>,
    ) -> ClaimRecord {
        if self.attempting.swap(true, Ordering::AcqRel) {
            info!(epoch, "a claim attempt is already running");
            return self.current(epoch, seed);
        }
        let _attempting = ClearOnDrop(&self.attempting);
        if !self.leadership.is_leader() {
            info!(epoch, "another replica is the leader and claims; nothing sent");
            return self.current(epoch, seed);
        }
        let mut record = self.current(epoch, seed);
        if run.is_some() {
            record.run = run;
        }
        if matches!(record.state, ClaimState::Paid | ClaimState::Expired) {
            info!(epoch, state = ?record.state, "the epoch's claim is settled; nothing sent");
            return record;
        }
        let height = match height {
            Some(height) => Some(height),
            None => self.tip().await,
        };
        if let (Some(height), Some(last)) = (height, record.last_attempt_height) {
            let next = last.saturating_add(CLAIM_INTERVAL_BLOCKS);
            if height < next {
                info!(epoch, height, next, "the chain takes one claim per 30 blocks; not yet");
                return record;
            }
        }
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
                if !self.find_paid(&mut record).await && record.state == ClaimState::Pending {
                    info!(epoch, "nothing settled to claim for this epoch");
                    record.state = ClaimState::NothingToClaim;
                    record.last_result = Some("nothing settled to claim".into());
                }
                return self.store(record).await;
            }
            Err(err) => {
                warn!(epoch, %err, "settle amount query failed; the claim is tried again in 30 blocks");
                record.last_attempt_height = height;
                record.last_result = Some(format!("settle amount query failed: {err}"));
                metrics::counter!("validator_claims_total", "result" => "error").increment(1);
                return self.store(record).await;
            }
        };
        record.unclaimed = Some(total);
        metrics::gauge!("validator_unclaimed_ngonka").set(total as f64);
        if self.chain.is_dry_run() {
            // Said, counted and tried again in 30 blocks; the record stays in memory only, so
            // a real run on the same journal still claims the epoch.
            info!(epoch, total, "dry run: MsgClaimRewards not sent");
            metrics::counter!("validator_dry_run_messages_total", "message" => "claim_rewards")
                .increment(1);
            record.last_attempt_height = height;
            record.last_result = Some("dry run: not sent".into());
            record_state_metric(&record);
            self.lock().insert(record.epoch_index, record.clone());
            self.changed.send_modify(|n| *n += 1);
            return record;
        }
        let answer = tokio::select! {
            answer = self.chain.claim_rewards(seed, epoch, total) => answer,
            () = self.cancel.cancelled() => return record,
        };
        record.attempts += 1;
        let result = match answer {
            Ok(answer) => {
                record.tx_hashes.push(answer.tx_hash().to_owned());
                self.apply(&mut record, answer, total, height)
            }
            Err(err) => {
                warn!(epoch, %err, "reward claim failed; trying again in 30 blocks");
                record.last_attempt_height = height;
                record.last_result = Some(err.to_string());
                "error"
            }
        };
        metrics::counter!("validator_claims_total", "result" => result).increment(1);
        self.store(record).await
    }

    /// Updates `record` with what the chain did with its claim; returns the metric label.
    fn apply(
        &self,
        record: &mut ClaimRecord,
        answer: ClaimAnswer,
        total: u64,
        height: Option<u64>,
    ) -> &'static str {
        let epoch = record.epoch_index;
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
            ClaimAnswer::Malformed { reason, tx_hash, height } => {
                warn!(epoch, %tx_hash, height, %reason, "the claim's answer is not believable; trying again in 30 blocks");
                record.last_attempt_height = Some(height);
                record.last_result = Some(format!("malformed answer: {reason}"));
                "malformed"
            }
            ClaimAnswer::NotIncluded { tx_hash, last_error } => {
                warn!(epoch, %tx_hash, ?last_error, "the claim was not seen landing; trying again in 30 blocks");
                record.last_attempt_height = height;
                record.last_result = Some(match last_error {
                    Some(error) => format!("not seen in a block: {error}"),
                    None => "not seen in a block".into(),
                });
                "not_included"
            }
        }
    }

    /// Looks up the record's earlier claim transactions, newest first: one that a block holds
    /// and that was paid makes the claim paid (a claim not seen landing may still have landed).
    async fn find_paid(&self, record: &mut ClaimRecord) -> bool {
        let hashes: Vec<String> = record.tx_hashes.iter().rev().cloned().collect();
        for hash in hashes {
            let found = tokio::select! {
                found = self.chain.claim_answer(&hash, u64::MAX) => found,
                () = self.cancel.cancelled() => return false,
            };
            if let Ok(Some(ClaimAnswer::Paid { amount, result, height, .. })) = found {
                info!(epoch = record.epoch_index, amount, tx_hash = %hash, "an earlier claim was paid");
                record.state = ClaimState::Paid;
                record.amount = amount;
                record.last_attempt_height = Some(height);
                record.last_result = Some(result);
                metrics::counter!("validator_claims_total", "result" => "paid").increment(1);
                return true;
            }
        }
        false
    }

    fn engine_address(&self) -> String {
        validator_core::ports::ChainClient::account_address(&self.chain).to_owned()
    }

    async fn tip(&self) -> Option<u64> {
        self.chain.node_status().await.ok().map(|status| status.latest_height)
    }

    /// Keeps the record in memory and in the journal, and says so to subscribers. A settled
    /// state is never undone: a record that is paid or expired by now keeps that state whatever
    /// an attempt that started earlier found. Only the last [`KEPT_EPOCHS`] epochs stay in
    /// memory; the journal keeps them for as long as its retention.
    async fn store(&self, mut record: ClaimRecord) -> ClaimRecord {
        {
            let mut records = self.lock();
            if let Some(existing) = records.get(&record.epoch_index) {
                let settled = matches!(existing.state, ClaimState::Paid | ClaimState::Expired);
                if settled && existing.state != record.state && record.state != ClaimState::Paid {
                    record.state = existing.state;
                    record.amount = record.amount.max(existing.amount);
                }
            }
            record_state_metric(&record);
            records.insert(record.epoch_index, record.clone());
            if let Some(&newest) = records.keys().next_back() {
                records.retain(|epoch, _| epoch.saturating_add(KEPT_EPOCHS) > newest);
            }
        }
        match serde_json::to_string(&record) {
            Ok(text) => {
                if let Err(err) = self.journal.store_claim(record.epoch_index, text).await {
                    warn!(epoch = record.epoch_index, %err, "claim record not written to the journal");
                }
            }
            Err(err) => warn!(epoch = record.epoch_index, %err, "claim record not serialisable"),
        }
        self.changed.send_modify(|n| *n += 1);
        record
    }
}

/// The claim records the journal holds, by epoch; unreadable ones are skipped with a warning.
async fn read_records(journal: &Store) -> anyhow::Result<BTreeMap<u64, ClaimRecord>> {
    let mut records = BTreeMap::new();
    for (epoch, text) in journal.claims().await.context("reading the claim records")? {
        match serde_json::from_str::<ClaimRecord>(&text) {
            Ok(record) => {
                records.insert(epoch, record);
            }
            Err(err) => warn!(epoch, %err, "unreadable claim record in the journal; ignored"),
        }
    }
    Ok(records)
}

/// Clears its flag when dropped, so a check or an attempt that ends by any path reopens the
/// next one.
struct ClearOnDrop<F: std::ops::Deref<Target = AtomicBool>>(F);

impl<F: std::ops::Deref<Target = AtomicBool>> Drop for ClearOnDrop<F> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}
