//! The per-block triggers, both through the engine's one recovery guard via the [`Claimer`]:
//! - the claim trigger (DOMAIN.md 3.6 (a)): at the claim height of the current epoch
//!   (`chain_source::schedule::claim_due`) it recovers epoch-1, awaits that run (or the run
//!   another trigger started), then claims the rewards, also when recovery failed;
//! - the periodic reward check (DOMAIN.md 3.6 (b)): inside its window of the epoch
//!   (`chain_source::schedule::reward_recovery_due`), at most once per 1000 blocks and one check
//!   at a time, it asks the chain what is still settled for this validator; when coins wait,
//!   it recovers their epoch, awaits the run, then claims.
//!
//! `follow_chain` feeds the chain's events to them and to the engine: `inference_finished` to
//! [`Engine::sample`], `needs_revalidation` to [`Engine::revalidate`], every new block to
//! `BlockTriggers::on_block`.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};

use chain_source::{
    events::{ChainEvent, EventStream},
    schedule::{claim_delay, claim_due, reward_recovery_due, EpochSchedule},
    ChainNodeClient,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use validator_core::{Engine, Error as EngineError, Trigger};

use crate::{claim::Claimer, health::ChainProgress, leader::Leadership};

/// How many blocks the cached epoch schedule is reused before it is queried again.
const SCHEDULE_REFRESH_BLOCKS: u64 = 50;

/// The per-block triggers: the claim trigger (DOMAIN.md 3.6 (a)) and the periodic reward check
/// (3.6 (b)).
pub(crate) struct BlockTriggers {
    address: String,
    claimer: Arc<Claimer>,
    chain: ChainNodeClient,
    schedule: Option<EpochSchedule>,
    refreshed_at: u64,
    /// The first block the reward check saw.
    launched_at: Option<i64>,
    /// The block of the reward check's last attempt.
    last_reward_check: Option<i64>,
    /// Set while a reward check runs.
    reward_check: Arc<AtomicBool>,
    /// Whether this replica does the claim duties now.
    leadership: Arc<Leadership>,
    /// How many times this replica had become the leader at the last block.
    leader_gains: u64,
    /// The chain as followed: every block and the epoch are reported to it.
    progress: Arc<ChainProgress>,
}

impl BlockTriggers {
    /// Triggers for the validator at `address`, claiming through `claimer` while this replica
    /// is the leader.
    pub(crate) fn new(
        address: String,
        claimer: Arc<Claimer>,
        chain: ChainNodeClient,
        leadership: Arc<Leadership>,
        progress: Arc<ChainProgress>,
    ) -> Self {
        Self {
            progress,
            leadership,
            leader_gains: 0,
            address,
            claimer,
            chain,
            schedule: None,
            refreshed_at: 0,
            launched_at: None,
            last_reward_check: None,
            reward_check: Arc::default(),
        }
    }

    async fn on_block(&mut self, height: u64) {
        self.progress.block(height);
        let signed = i64::try_from(height).unwrap_or(i64::MAX);
        let stale = self.schedule.is_none_or(|schedule| {
            signed >= schedule.next_poc_start()
                || height.saturating_sub(self.refreshed_at) >= SCHEDULE_REFRESH_BLOCKS
        });
        if stale {
            match self.chain.epoch_info().await {
                Ok(info) => {
                    self.schedule = Some(EpochSchedule::from(&info));
                    self.refreshed_at = height;
                    self.progress.epoch(info.epoch_index);
                }
                Err(err) => warn!(height, %err, "cannot refresh the epoch schedule"),
            }
        }
        let Some(schedule) = self.schedule else { return };
        if !self.leadership.is_leader() {
            return;
        }
        let gains = self.leadership.gained();
        if gains != self.leader_gains {
            self.leader_gains = gains;
            if self.leadership.shared() {
                self.take_over_claim(signed, &schedule).await;
            }
        }
        self.claimer.retry_due(height, schedule.effective_epoch(signed));
        self.check_rewards(signed, &schedule);
        if !claim_due(&self.address, signed, &schedule) {
            return;
        }
        let epoch = schedule.epoch_index.saturating_sub(1);
        if self.claimer.is_settled(epoch) {
            info!(epoch, "the epoch's claim is already settled");
            return;
        }
        info!(height, epoch, "claim height reached: recovering the previous epoch, then claiming");
        let seed = self.claimer.seed(epoch);
        // The claim runs on its own; the triggers do not wait for its record.
        drop(self.claimer.spawn(Trigger::Claim, epoch, seed));
    }

    /// A replica that just became the leader picks up the claim duty where the previous leader
    /// left it: if this epoch's claim height has passed and the previous epoch's claim, as the
    /// shared journal records it, is not settled while the chain still takes it, it recovers
    /// and claims now rather than wait for the reward check.
    async fn take_over_claim(&mut self, height: i64, schedule: &EpochSchedule) {
        if let Err(err) = self.claimer.reload().await {
            warn!(%err, "the claim records could not be read again; using those in memory");
        }
        let delay = i64::try_from(claim_delay(&self.address, height, schedule)).unwrap_or(i64::MAX);
        let epoch = schedule.epoch_index.saturating_sub(1);
        let passed =
            schedule.epoch_index > 0 && height.saturating_sub(delay) > schedule.claim_money();
        let open = epoch.saturating_add(1) == schedule.effective_epoch(height);
        if !passed || !open || self.claimer.is_settled(epoch) {
            return;
        }
        info!(
            height,
            epoch,
            "leader now: the previous epoch's claim is not settled; recovering, then claiming"
        );
        let seed = self.claimer.seed(epoch);
        drop(self.claimer.spawn(Trigger::Claim, epoch, seed));
    }

    fn check_rewards(&mut self, height: i64, schedule: &EpochSchedule) {
        let launched_at = *self.launched_at.get_or_insert(height);
        if !reward_recovery_due(height, launched_at, self.last_reward_check, schedule) {
            return;
        }
        if self.reward_check.swap(true, Ordering::AcqRel) {
            return;
        }
        self.last_reward_check = Some(height);
        info!(height, "reward check due");
        self.claimer.spawn_reward_check(self.address.clone(), Arc::clone(&self.reward_check));
    }
}

/// Feeds the chain's events to the engine and the block triggers until `cancel` fires or the
/// stream ends, then waits for the event source to stop.
pub(crate) async fn follow_chain(
    mut events: EventStream,
    engine: Engine,
    mut triggers: BlockTriggers,
    cancel: CancellationToken,
) {
    loop {
        let event = tokio::select! {
            () = cancel.cancelled() => break,
            event = events.recv() => event,
        };
        let Some(event) = event else { break };
        match event {
            ChainEvent::InferenceFinished { ids, height } => match engine.sample(ids) {
                Ok(()) => {}
                // Said once, at WARN, when it happened.
                Err(EngineError::ProtocolRetired(_)) => {
                    debug!(height, "classic sampling is retired")
                }
                Err(err) => warn!(height, %err, "finished inferences not sampled"),
            },
            ChainEvent::RevalidationNeeded { inference_id, height } => {
                match engine.revalidate(inference_id.clone()) {
                    Ok(_) => {}
                    Err(EngineError::ProtocolRetired(_)) => {
                        debug!(height, %inference_id, "classic revalidation is retired");
                    }
                    Err(err) => warn!(height, %inference_id, %err, "revalidation not admitted"),
                }
            }
            ChainEvent::ClassicRefused { height } => {
                engine.retire_classic(format!(
                    "a transaction in block {height} failed with code 1161 (ErrDeprecated): the \
                     chain refuses classic messages"
                ));
            }
            ChainEvent::NewBlock { height } => tokio::select! {
                () = triggers.on_block(height) => {}
                () = cancel.cancelled() => break,
            },
        }
    }
    events.join().await;
}
