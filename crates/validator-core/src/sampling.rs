//! Deterministic validation sampling (DOMAIN.md 2.2): whether this validator must re-run an
//! inference.
//!
//! The chain runs the same decision again when it checks a reward claim, so a validator that
//! decides differently from the Go original either misses validations it is punished for or
//! does work nobody asked for. Every function here therefore reproduces the upstream arithmetic
//! exactly, including its integer conversions (gonka-ai/gonka:
//! `inference-chain/x/inference/calculations/should_validate.go` and `min_validation_average.go`,
//! `decentralized-api/internal/validation/inference_validation.go`).
//!
//! # Arithmetic
//!
//! Upstream computes with shopspring/decimal, whose rounding `rust_decimal` does not reproduce, so
//! the decision is computed on a small exact decimal type with shopspring's semantics (the
//! private module `exact`) and converted to [`Decimal`] only on the way out. Both values the
//! decision compares, the draw and the probability, have 16 decimal places, so their `Decimal`
//! forms are exact whenever they lie in `[0, 1]`.

mod exact;

use rust_decimal::Decimal;
use sha2::{Digest, Sha256};

use self::exact::Exact;
use crate::ports::chain::{ValidationDetails, ValidationParams, ValidatorPower};

/// Decimal places every division keeps: shopspring/decimal's `DivisionPrecision`, whose default
/// of 16 upstream never changes (its golden values have 16 places).
pub const DIVISION_PRECISION: u32 = 16;

/// `10^DIVISION_PRECISION`: one unit of the draw's last place is `1 / DRAW_UNITS`.
const DRAW_UNITS: u128 = 10_000_000_000_000_000;

/// `DeterministicFloat(seed, inferenceId)` (DOMAIN.md 2.2 step 7): the draw compared with the
/// validation probability.
///
/// SHA-256 of the ASCII text `"<seed>:<inference_id>"` (seed in signed base 10, so negative
/// seeds start with `-`), first 8 bytes read as a big-endian `u64`, divided by `2^64 - 1` and
/// rounded to 16 decimal places, half away from zero. The result lies in `[0, 1]`; it is exactly
/// 1 for the few hashes within half a unit of the 16th place of `2^64 - 1`.
pub fn deterministic_float(seed: i64, inference_id: &str) -> Decimal {
    draw(seed, inference_id).to_decimal()
}

/// `CalculateMinimumValidationAverage(traffic_basis)` (DOMAIN.md 2.2 step 4): the validation
/// average for an executor with `traffic_basis` recent requests and the best reputation.
///
/// Piecewise linear in the traffic, with upstream's order of operations and roundings:
/// - above `full_validation_traffic_cutoff` (`full`): `min_validation_average`;
/// - at or above `full / 2` (an exact half when `full` is odd): from `min_validation_halfway`
///   at `full / 2` down to `min_validation_average` at `full`, the fraction
///   `(full - traffic) / (full / 2)` rounded to 16 places;
/// - above `min_validation_traffic_cutoff` (`min`): from `max_validation_average` at `min`
///   down to `min_validation_halfway` at `full / 2`, the fraction
///   `(full / 2 - traffic) / (full / 2 - min)` rounded to 16 places;
/// - otherwise `max_validation_average`.
///
/// As upstream, the traffic (`uint64` on chain) and both cutoffs are read as Go `int64`:
/// values above `i64::MAX` wrap to negative (a traffic basis of `u64::MAX` counts as -1, so it
/// gets the maximum average). The result is exact whenever `Decimal` can hold it: it has the
/// parameters' decimal places plus 16, so the chain's two-place parameters give at most 18.
/// Otherwise it is rounded half away from zero to fit, or saturated at [`Decimal::MAX`] /
/// [`Decimal::MIN`].
pub fn minimum_validation_average(traffic_basis: u64, params: &ValidationParams) -> Decimal {
    match min_average(go_int64(traffic_basis), params) {
        Some(average) => average.to_decimal(),
        // Unreachable: both divisors are non-zero on the branches that divide.
        None => params.max_validation_average,
    }
}

/// The executor's target validation average (DOMAIN.md 2.2 step 5):
/// `max - (max - min_avg) * reputation / 100`, exact.
///
/// Reputation 100 gives `min_avg`, reputation 0 gives `max_validation_average`. Like upstream,
/// a reputation outside `0..=100` is not clamped: the line is extended, so a negative reputation
/// gives a target above the maximum and a reputation above 100 one below `min_avg`, possibly
/// negative (never selected). Results that `Decimal` cannot hold are rounded or saturated as in
/// [`minimum_validation_average`].
pub fn target_validation_average(
    min_avg: Decimal,
    reputation: i32,
    params: &ValidationParams,
) -> Decimal {
    target_average(&Exact::from_decimal(min_avg), reputation, params).to_decimal()
}

/// The probability that this validator must validate the inference (DOMAIN.md 2.2 step 6):
/// `min(1, target * validator_power / (total_power - executor_power))`, the division rounded to
/// 16 places, half away from zero.
///
/// As upstream, the three powers are truncated to their low 32 bits (Go `uint32(x)`) before
/// use. Zero when the inference is not eligible: `total_power <= executor_power`, checked first
/// on the chain's 64-bit values (as the API node does) and again on the truncated ones (as
/// `ShouldValidate` does). A negative target gives a negative probability, which never selects
/// (rounded like [`minimum_validation_average`] in the rare case it has too many digits).
pub fn validation_probability(
    details: &ValidationDetails,
    validator_power: u64,
    params: &ValidationParams,
) -> Decimal {
    probability(details, validator_power, params).map_or(Decimal::ZERO, |p| p.to_decimal())
}

/// Whether this validator must validate the inference (DOMAIN.md 2.2 steps 1, 2 and 4-8).
///
/// False when `own_address` executed it, when it is not eligible (see
/// [`validation_probability`]), and otherwise exactly when
/// `deterministic_float(seed, inference_id) < validation_probability(..)`: strictly less, so a
/// draw equal to the probability does not select. Step 3, the model filter, is the caller's.
pub fn should_validate(
    details: &ValidationDetails,
    own_address: &str,
    validator_power: u64,
    params: &ValidationParams,
    seed: i64,
) -> bool {
    if details.executor_id == own_address {
        return false;
    }
    probability(details, validator_power, params)
        .is_some_and(|p| draw(seed, details.inference_id.as_str()) < p)
}

/// The validator power the live path samples with (DOMAIN.md 2.2): the first entry whose epoch
/// is the inference's, else the last entry, since sampling with some power beats skipping.
///
/// `None` for an empty list; upstream then samples with power 0, which never selects.
pub fn live_validator_power(powers: &[ValidatorPower], inference_epoch: u64) -> Option<u64> {
    powers
        .iter()
        .find(|entry| entry.epoch_index == inference_epoch)
        .or_else(|| powers.last())
        .map(|entry| entry.power)
}

/// The validator power recovery detection samples with (DOMAIN.md 2.2): only an entry of
/// `epoch` counts (the last one, should the chain send several); `None` if there is none.
pub fn recovery_validator_power(powers: &[ValidatorPower], epoch: u64) -> Option<u64> {
    powers.iter().rev().find(|entry| entry.epoch_index == epoch).map(|entry| entry.power)
}

/// Go's `int64(x)` of a `uint64`: the bits are kept, so values above `i64::MAX` turn negative.
/// The cutoffs are `int64` on chain, so this also restores them from our `u64` fields.
fn go_int64(value: u64) -> i64 {
    value as i64
}

/// Go's `uint32(x)`: the low 32 bits.
fn go_uint32(value: u64) -> u32 {
    value as u32
}

/// The draw of [`deterministic_float`] as an exact value with 16 decimal places.
fn draw(seed: i64, inference_id: &str) -> Exact {
    let digest = Sha256::new()
        .chain_update(seed.to_string())
        .chain_update(b":")
        .chain_update(inference_id)
        .finalize();
    let hash = digest.iter().take(8).fold(0u64, |acc, &byte| (acc << 8) | u64::from(byte));
    Exact::from_u128(draw_units(hash), -i64::from(DIVISION_PRECISION))
}

/// `hash / (2^64 - 1)` in units of the 16th decimal place, rounded half away from zero.
fn draw_units(hash: u64) -> u128 {
    // Below 2^64 * 2^54, so the product, and twice the remainder, fit in a u128.
    let numerator = u128::from(hash) * DRAW_UNITS;
    let denominator = u128::from(u64::MAX);
    let quotient = numerator / denominator;
    if 2 * (numerator % denominator) >= denominator {
        quotient + 1
    } else {
        quotient
    }
}

/// `CalculateMinimumValidationAverage`; `None` only for a zero divisor, which its branches rule
/// out.
fn min_average(traffic: i64, params: &ValidationParams) -> Option<Exact> {
    let full = go_int64(params.full_validation_traffic_cutoff);
    let min_average = Exact::from_decimal(params.min_validation_average);
    if traffic >= full {
        return Some(min_average);
    }
    let halfway_average = Exact::from_decimal(params.min_validation_halfway);
    let max_average = Exact::from_decimal(params.max_validation_average);
    let traffic = Exact::from_i128(i128::from(traffic), 0);
    let full = Exact::from_i128(i128::from(full), 0);
    let halfway = full.div_round(&Exact::from_i128(2, 0))?;
    if traffic >= halfway {
        let fraction = full.sub(&traffic).div_round(&halfway)?;
        return Some(halfway_average.sub(&min_average).mul(&fraction).add(&min_average));
    }
    let min_cutoff =
        Exact::from_i128(i128::from(go_int64(params.min_validation_traffic_cutoff)), 0);
    if traffic > min_cutoff {
        let fraction = halfway.sub(&traffic).div_round(&halfway.sub(&min_cutoff))?;
        return Some(halfway_average.add(&max_average.sub(&halfway_average).mul(&fraction)));
    }
    Some(max_average)
}

/// `max - (max - min_avg) * reputation / 100`, exact.
fn target_average(min_avg: &Exact, reputation: i32, params: &ValidationParams) -> Exact {
    let max_average = Exact::from_decimal(params.max_validation_average);
    let reputation = Exact::from_i128(i128::from(reputation), -2);
    max_average.sub(&max_average.sub(min_avg).mul(&reputation))
}

/// The exact probability of [`validation_probability`]; `None` when the inference is not
/// eligible.
fn probability(
    details: &ValidationDetails,
    validator_power: u64,
    params: &ValidationParams,
) -> Option<Exact> {
    // The API node checks the chain's u64 powers; ShouldValidate checks them again after the
    // uint32 casts, where the truncated total can be at or below the truncated executor power.
    if details.total_power <= details.executor_power {
        return None;
    }
    let others = go_uint32(details.total_power)
        .checked_sub(go_uint32(details.executor_power))
        .filter(|others| *others > 0)?;
    let min_avg = min_average(go_int64(details.traffic_basis), params)?;
    let target = target_average(&min_avg, details.executor_reputation, params);
    let validator_power = Exact::from_u128(u128::from(go_uint32(validator_power)), 0);
    let p = target.mul(&validator_power).div_round(&Exact::from_u128(u128::from(others), 0))?;
    Some(p.min(Exact::from_i128(1, 0)))
}

#[cfg(test)]
mod tests;
