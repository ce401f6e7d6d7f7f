//! When to recover missed validations and claim rewards (DOMAIN.md 3.6 (a) and (b)), as pure
//! functions of the height and the epoch's parameters, so the binary can drive recovery then
//! the claim.

use sha2::{Digest, Sha256};

use crate::query::{EpochInfo, EpochParams};

/// Claims spread over this many blocks after the claim-money stage, by address hash.
pub const CLAIM_DELAY_SPREAD: u64 = 500;
/// No claim delay at or below this height (a young chain).
pub const CLAIM_DELAY_MIN_HEIGHT: i64 = 500;
/// No claim delay when the claim stage is closer than this to the next PoC start.
pub const CLAIM_DELAY_MIN_GAP: i64 = 1000;
/// Reward recovery waits this many blocks after launch.
pub const RECOVERY_AFTER_LAUNCH: i64 = 60;
/// Reward recovery runs at most once per this many blocks.
pub const RECOVERY_INTERVAL: i64 = 1000;
/// Reward recovery starts this many blocks after the claim-money stage.
pub const RECOVERY_AFTER_CLAIM: i64 = 1000;

/// The phase of an epoch a height falls in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Proof-of-compute generation.
    PoC,
    /// Proof-of-compute validation, until the new validators are set.
    PoCValidation,
    /// Inference serving and validation.
    Inference,
}

/// The stage heights of one epoch (upstream `EpochContext`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochSchedule {
    /// The epoch index.
    pub epoch_index: u64,
    /// Height at which its PoC stage started.
    pub poc_start_block_height: i64,
    /// The epoch parameters.
    pub params: EpochParams,
}

impl From<&EpochInfo> for EpochSchedule {
    fn from(info: &EpochInfo) -> Self {
        Self {
            epoch_index: info.epoch_index,
            poc_start_block_height: info.poc_start_block_height,
            params: info.params,
        }
    }
}

// Heights and durations are the chain's answer as it came: the sums saturate, so a malformed
// `EpochInfo` (heights near `i64::MAX`, negative stages) puts stages at the ends of the range
// instead of overflowing.
impl EpochSchedule {
    /// The "set new validators" stage; 0 in epoch 0.
    pub fn set_new_validators(&self) -> i64 {
        if self.epoch_index == 0 {
            return 0;
        }
        let p = &self.params;
        self.poc_start_block_height
            .saturating_add(p.poc_stage_duration)
            .saturating_add(p.poc_validation_delay)
            .saturating_add(p.poc_validation_duration)
            .saturating_add(p.set_new_validators_delay)
    }

    /// The epoch in effect at `height`: the chain's latest epoch starts with its PoC stage, but
    /// the previous one stays in effect until "set new validators" (upstream's effective epoch,
    /// which the claim handler checks claims against). A height before the latest epoch's PoC
    /// start (an answer that does not fit its own height) counts as the latest epoch's.
    pub fn effective_epoch(&self, height: i64) -> u64 {
        let in_poc = height >= self.poc_start_block_height && height < self.set_new_validators();
        if self.epoch_index > 0 && in_poc {
            return self.epoch_index - 1;
        }
        self.epoch_index
    }

    /// The claim-money stage, one block after "set new validators"; 0 in epoch 0.
    pub fn claim_money(&self) -> i64 {
        if self.epoch_index == 0 {
            return 0;
        }
        self.set_new_validators().saturating_add(1)
    }

    /// Where the next epoch's PoC starts.
    pub fn next_poc_start(&self) -> i64 {
        if self.epoch_index == 0 {
            return self.params.epoch_length.saturating_sub(self.params.epoch_shift);
        }
        self.poc_start_block_height.saturating_add(self.params.epoch_length)
    }

    /// The last height at which this epoch's inferences are validated.
    pub fn inference_validation_cutoff(&self) -> i64 {
        self.next_poc_start().saturating_sub(self.params.inference_validation_cutoff)
    }

    /// The phase `height` falls in.
    pub fn phase(&self, height: i64) -> Phase {
        if self.epoch_index == 0 {
            return Phase::Inference;
        }
        if height >= self.next_poc_start() {
            return Phase::PoC;
        }
        if height < self.poc_start_block_height.saturating_add(self.params.poc_stage_duration) {
            return Phase::PoC;
        }
        if height < self.set_new_validators() {
            return Phase::PoCValidation;
        }
        Phase::Inference
    }
}

/// DOMAIN.md 3.6 (a): how many blocks after the claim-money stage `address` claims:
/// `sha256(address)[0..8]` as a big-endian integer, mod 500, plus 1. No delay (0) for an
/// unknown address, at heights up to 500, or when the claim stage is less than 1000 blocks
/// before the next PoC.
pub fn claim_delay(address: &str, height: i64, schedule: &EpochSchedule) -> u64 {
    if address.is_empty() || height <= CLAIM_DELAY_MIN_HEIGHT {
        return 0;
    }
    if schedule.next_poc_start().saturating_sub(schedule.claim_money()) < CLAIM_DELAY_MIN_GAP {
        return 0;
    }
    let digest = Sha256::digest(address.as_bytes());
    let mut head = [0u8; 8];
    head.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(head) % CLAIM_DELAY_SPREAD + 1
}

/// DOMAIN.md 3.6 (a): whether the claim trigger starts recovery then the claim for the
/// previous epoch at `height`: `height - delay == claim_money`.
pub fn claim_due(address: &str, height: i64, schedule: &EpochSchedule) -> bool {
    let delay = i64::try_from(claim_delay(address, height, schedule)).unwrap_or(i64::MAX);
    schedule.epoch_index > 0 && height.saturating_sub(delay) == schedule.claim_money()
}

/// DOMAIN.md 3.6 (b): whether the periodic reward recovery runs at `height`, given when the
/// check was first called (`launched_at`) and its last attempt. The caller also keeps the
/// single-run guard.
pub fn reward_recovery_due(
    height: i64,
    launched_at: i64,
    last_attempt: Option<i64>,
    schedule: &EpochSchedule,
) -> bool {
    height.saturating_sub(launched_at) >= RECOVERY_AFTER_LAUNCH
        && last_attempt.is_none_or(|last| height.saturating_sub(last) >= RECOVERY_INTERVAL)
        && height <= schedule.inference_validation_cutoff()
        && height >= schedule.claim_money().saturating_add(RECOVERY_AFTER_CLAIM)
        && schedule.phase(height) == Phase::Inference
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Mainnet genesis parameters (DOMAIN.md 7), epoch 10 starting at 172 800.
    fn mainnet() -> EpochSchedule {
        EpochSchedule {
            epoch_index: 10,
            poc_start_block_height: 172_800,
            params: EpochParams {
                epoch_length: 17_280,
                epoch_shift: 16_980,
                poc_stage_duration: 60,
                poc_validation_delay: 0,
                poc_validation_duration: 0,
                set_new_validators_delay: 120,
                inference_validation_cutoff: 80,
            },
        }
    }

    #[test]
    fn stages_follow_the_parameters() {
        let schedule = mainnet();
        assert_eq!(schedule.set_new_validators(), 172_980);
        assert_eq!(schedule.claim_money(), 172_981);
        assert_eq!(schedule.next_poc_start(), 190_080);
        assert_eq!(schedule.inference_validation_cutoff(), 190_000);
        assert_eq!(schedule.phase(172_800), Phase::PoC);
        assert_eq!(schedule.phase(172_900), Phase::PoCValidation);
        assert_eq!(schedule.phase(172_980), Phase::Inference);
        assert_eq!(schedule.phase(190_080), Phase::PoC);
        let genesis = EpochSchedule { epoch_index: 0, ..mainnet() };
        assert_eq!((genesis.claim_money(), genesis.next_poc_start()), (0, 300));
    }

    #[test]
    fn the_previous_epoch_is_in_effect_until_new_validators_are_set() {
        let schedule = mainnet();
        assert_eq!(schedule.effective_epoch(172_800), 9);
        assert_eq!(schedule.effective_epoch(172_979), 9);
        assert_eq!(schedule.effective_epoch(172_980), 10);
        assert_eq!(schedule.effective_epoch(172_000), 10, "before its PoC start: taken as is");
        let genesis = EpochSchedule { epoch_index: 0, ..mainnet() };
        assert_eq!(genesis.effective_epoch(5), 0);
    }

    #[test]
    fn the_claim_delay_is_the_address_hash_mod_500_plus_one() {
        let schedule = mainnet();
        // Golden values: sha256(address)[0..8] big-endian mod 500 + 1, computed independently.
        assert_eq!(
            claim_delay("gonka1m3h30wlvsf8llruxtpukdvsy0km2kum8al86ug", 200_000, &schedule),
            28
        );
        assert_eq!(claim_delay("gonka1executor", 200_000, &schedule), 473);
        assert_eq!(claim_delay("", 200_000, &schedule), 0);
        assert_eq!(claim_delay("gonka1executor", 500, &schedule), 0);
        let tight = EpochSchedule {
            params: EpochParams { epoch_length: 1_000, ..schedule.params },
            ..schedule
        };
        assert_eq!(claim_delay("gonka1executor", 200_000, &tight), 0);
    }

    #[test]
    fn the_claim_trigger_fires_at_claim_money_plus_the_delay() {
        let schedule = mainnet();
        let address = "gonka1executor";
        let fire = schedule.claim_money() + 473;
        assert!(claim_due(address, fire, &schedule));
        assert!(!claim_due(address, fire - 1, &schedule));
        assert!(!claim_due(address, fire + 1, &schedule));
        assert!(claim_due("", schedule.claim_money(), &schedule));
        assert!(!claim_due(address, 473, &EpochSchedule { epoch_index: 0, ..schedule }));
    }

    #[test]
    fn malformed_epochs_saturate_instead_of_overflowing() {
        let huge = EpochSchedule {
            epoch_index: 10,
            poc_start_block_height: i64::MAX,
            params: EpochParams { epoch_length: i64::MAX, ..mainnet().params },
        };
        let negative = EpochSchedule {
            epoch_index: 10,
            poc_start_block_height: i64::MIN,
            params: EpochParams {
                epoch_length: i64::MIN,
                poc_stage_duration: -1,
                inference_validation_cutoff: i64::MAX,
                ..mainnet().params
            },
        };
        assert_eq!((huge.claim_money(), huge.next_poc_start()), (i64::MAX, i64::MAX));
        assert_eq!(negative.inference_validation_cutoff(), i64::MIN);
        for schedule in [huge, negative, EpochSchedule { epoch_index: 0, ..negative }] {
            for height in [i64::MIN, -1, 0, 172_981, 1 << 40, i64::MAX] {
                let _ = (schedule.phase(height), claim_due("gonka1executor", height, &schedule));
                assert!(!reward_recovery_due(height, height, None, &schedule));
            }
            for height in [0, 172_981, 1 << 40] {
                assert!(!claim_due("gonka1executor", height, &schedule), "{height}");
            }
        }
    }

    #[test]
    fn reward_recovery_runs_inside_its_window_only() {
        let schedule = mainnet();
        let open = schedule.claim_money() + 1_000;
        assert!(reward_recovery_due(open, 0, None, &schedule));
        assert!(!reward_recovery_due(open - 1, 0, None, &schedule), "too soon after the claim");
        assert!(!reward_recovery_due(open, open - 59, None, &schedule), "too soon after launch");
        assert!(reward_recovery_due(open, open - 60, None, &schedule));
        assert!(
            !reward_recovery_due(open, 0, Some(open - 999), &schedule),
            "too soon after the last"
        );
        assert!(reward_recovery_due(open, 0, Some(open - 1_000), &schedule));
        assert!(reward_recovery_due(190_000, 0, None, &schedule));
        assert!(!reward_recovery_due(190_001, 0, None, &schedule), "past the validation cut-off");
    }
}
