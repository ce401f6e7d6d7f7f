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
//! Upstream computes with shopspring/decimal: addition, subtraction and multiplication are exact
//! (big integers), and only `Div` rounds, to [`DIVISION_PRECISION`] decimal places, half away
//! from zero, from the exact quotient. `rust_decimal` keeps at most 28 significant digits and
//! rounds inside `*` and `/`, so composing its operators rounds twice and can move a result
//! across the midpoint of the 16th place (a hash exists for which `h / (2^64-1)` does exactly
//! that; see the tests). The decision is therefore computed on a small exact decimal type
//! (`Exact`, private) and converted to [`Decimal`] only on the way out. Both values the decision
//! compares, the draw and the probability, have 16 decimal places, so their `Decimal` forms are
//! exact whenever they lie in `[0, 1]`.

use std::cmp::Ordering;

use rust_decimal::Decimal;
use sha2::{Digest, Sha256};

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

/// An exact decimal, `(-1)^negative * mag * 10^exp`, with shopspring/decimal's semantics: exact
/// `add`, `sub`, `mul` and comparisons, and `div_round` as its `Div`.
#[derive(Debug, Clone)]
struct Exact {
    negative: bool,
    mag: Mag,
    exp: i64,
}

impl Exact {
    fn new(negative: bool, mag: Mag, exp: i64) -> Self {
        Self { negative: negative && !mag.is_zero(), mag, exp }
    }

    fn from_i128(value: i128, exp: i64) -> Self {
        Self::new(value < 0, Mag::from_u128(value.unsigned_abs()), exp)
    }

    fn from_u128(value: u128, exp: i64) -> Self {
        Self::new(false, Mag::from_u128(value), exp)
    }

    fn from_decimal(value: Decimal) -> Self {
        Self::from_i128(value.mantissa(), -i64::from(value.scale()))
    }

    /// The magnitude expressed in units of `10^exp`; `exp` must not exceed `self.exp`.
    fn mag_at(&self, exp: i64) -> Mag {
        self.mag.mul_pow10(self.exp.saturating_sub(exp).unsigned_abs())
    }

    fn add(&self, other: &Self) -> Self {
        let exp = self.exp.min(other.exp);
        let (a, b) = (self.mag_at(exp), other.mag_at(exp));
        if self.negative == other.negative {
            Self::new(self.negative, a.add(&b), exp)
        } else if a >= b {
            Self::new(self.negative, a.sub(&b), exp)
        } else {
            Self::new(other.negative, b.sub(&a), exp)
        }
    }

    fn sub(&self, other: &Self) -> Self {
        self.add(&Self::new(!other.negative, other.mag.clone(), other.exp))
    }

    fn mul(&self, other: &Self) -> Self {
        Self::new(
            self.negative != other.negative,
            self.mag.mul(&other.mag),
            self.exp.saturating_add(other.exp),
        )
    }

    /// shopspring's `DivRound(divisor, 16)`: the exact quotient truncated to 16 decimal places,
    /// then moved one unit away from zero if the dropped remainder is at least half a unit.
    /// `None` for a zero divisor (upstream panics).
    fn div_round(&self, divisor: &Self) -> Option<Self> {
        let precision = i64::from(DIVISION_PRECISION);
        // self / divisor * 10^16 = (self.mag / divisor.mag) * 10^shift.
        let shift = self.exp.saturating_sub(divisor.exp).saturating_add(precision);
        let (numerator, denominator) = if shift >= 0 {
            (self.mag.mul_pow10(shift.unsigned_abs()), divisor.mag.clone())
        } else {
            (self.mag.clone(), divisor.mag.mul_pow10(shift.unsigned_abs()))
        };
        let quotient = numerator.div_round_half_up(&denominator)?;
        Some(Self::new(self.negative != divisor.negative, quotient, -precision))
    }

    /// The nearest `Decimal`: exact when the value fits 96 bits of mantissa and 28 decimal
    /// places, else rounded half away from zero to fit, else saturated.
    fn to_decimal(&self) -> Decimal {
        let saturated = if self.negative { Decimal::MIN } else { Decimal::MAX };
        let (mag, scale) = if self.exp > 0 {
            if self.exp > 29 && !self.mag.is_zero() {
                return saturated;
            }
            (self.mag.mul_pow10(self.exp.unsigned_abs()), 0)
        } else {
            (self.mag.clone(), self.exp.unsigned_abs())
        };
        // A magnitude of `bits` bits is at least 2^(bits - 1), so at least
        // floor((bits - 97) * log10(2)) digits must go before it can fit in 96 bits.
        let by_size = mag.bit_len().saturating_sub(97).saturating_mul(30_102) / 100_000;
        let by_scale = scale.saturating_sub(u64::from(Decimal::MAX_SCALE));
        let mut dropped = by_size.max(by_scale);
        while dropped <= scale {
            let rounded = mag.div_round_half_up(&Mag::from_u128(1).mul_pow10(dropped));
            if let Some(mantissa) = rounded
                .and_then(|rounded| rounded.to_u128())
                .filter(|mantissa| *mantissa <= MAX_MANTISSA)
                .and_then(|mantissa| i128::try_from(mantissa).ok())
            {
                let mantissa = if self.negative { -mantissa } else { mantissa };
                return u32::try_from(scale - dropped)
                    .ok()
                    .and_then(|scale| Decimal::try_from_i128_with_scale(mantissa, scale).ok())
                    .unwrap_or(saturated);
            }
            dropped += 1;
        }
        saturated
    }
}

/// The largest `Decimal` mantissa, `2^96 - 1`.
const MAX_MANTISSA: u128 = (1 << 96) - 1;

impl PartialEq for Exact {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Exact {}

impl PartialOrd for Exact {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Exact {
    fn cmp(&self, other: &Self) -> Ordering {
        fn sign(value: &Exact) -> i8 {
            match (value.mag.is_zero(), value.negative) {
                (true, _) => 0,
                (false, true) => -1,
                (false, false) => 1,
            }
        }
        sign(self).cmp(&sign(other)).then_with(|| {
            let exp = self.exp.min(other.exp);
            let by_magnitude = self.mag_at(exp).cmp(&other.mag_at(exp));
            if self.negative {
                by_magnitude.reverse()
            } else {
                by_magnitude
            }
        })
    }
}

/// An unsigned integer of any size: little-endian 64-bit limbs without high zero limbs, so the
/// derived equality is numeric equality. The values here stay within a few hundred bits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Mag(Vec<u64>);

impl Mag {
    fn from_u128(value: u128) -> Self {
        let mut mag = Self(vec![value as u64, (value >> 64) as u64]);
        mag.trim();
        mag
    }

    fn to_u128(&self) -> Option<u128> {
        match *self.0.as_slice() {
            [] => Some(0),
            [low] => Some(u128::from(low)),
            [low, high] => Some(u128::from(low) | (u128::from(high) << 64)),
            _ => None,
        }
    }

    fn trim(&mut self) {
        while self.0.last() == Some(&0) {
            self.0.pop();
        }
    }

    fn is_zero(&self) -> bool {
        self.0.is_empty()
    }

    fn bit_len(&self) -> u64 {
        self.0.last().map_or(0, |top| {
            (self.0.len() as u64).saturating_mul(64).saturating_sub(u64::from(top.leading_zeros()))
        })
    }

    fn bit(&self, index: u64) -> bool {
        usize::try_from(index / 64)
            .ok()
            .and_then(|limb| self.0.get(limb))
            .is_some_and(|limb| (limb >> (index % 64)) & 1 == 1)
    }

    fn set_bit(&mut self, index: u64) {
        if let Some(limb) = usize::try_from(index / 64).ok().and_then(|limb| self.0.get_mut(limb)) {
            *limb |= 1 << (index % 64);
        }
    }

    /// `self = 2 * self + bit`.
    fn shift_in(&mut self, bit: bool) {
        let mut carry = u64::from(bit);
        for limb in &mut self.0 {
            let out = *limb >> 63;
            *limb = (*limb << 1) | carry;
            carry = out;
        }
        if carry != 0 {
            self.0.push(carry);
        }
    }

    fn add(&self, other: &Self) -> Self {
        let (long, short) =
            if self.0.len() >= other.0.len() { (self, other) } else { (other, self) };
        let mut sum = Vec::with_capacity(long.0.len() + 1);
        let mut carry = false;
        for (index, &a) in long.0.iter().enumerate() {
            let b = short.0.get(index).copied().unwrap_or(0);
            let (partial, overflow_a) = a.overflowing_add(b);
            let (limb, overflow_b) = partial.overflowing_add(u64::from(carry));
            sum.push(limb);
            carry = overflow_a || overflow_b;
        }
        if carry {
            sum.push(1);
        }
        Self(sum)
    }

    /// `self - other`; `other` must not exceed `self`.
    fn sub(&self, other: &Self) -> Self {
        let mut difference = Vec::with_capacity(self.0.len());
        let mut borrow = false;
        for (index, &a) in self.0.iter().enumerate() {
            let b = other.0.get(index).copied().unwrap_or(0);
            let (partial, underflow_a) = a.overflowing_sub(b);
            let (limb, underflow_b) = partial.overflowing_sub(u64::from(borrow));
            difference.push(limb);
            borrow = underflow_a || underflow_b;
        }
        let mut difference = Self(difference);
        difference.trim();
        difference
    }

    fn mul(&self, other: &Self) -> Self {
        let mut product = vec![0u64; self.0.len() + other.0.len()];
        for (offset, &a) in self.0.iter().enumerate() {
            let mut carry = 0u128;
            let mut slots = product.iter_mut().skip(offset);
            for &b in &other.0 {
                if let Some(slot) = slots.next() {
                    // At most (2^64-1)^2 + 2 * (2^64-1) = 2^128 - 1: no overflow.
                    let wide = u128::from(a) * u128::from(b) + u128::from(*slot) + carry;
                    *slot = wide as u64;
                    carry = wide >> 64;
                }
            }
            if let Some(slot) = slots.next() {
                *slot = carry as u64;
            }
        }
        let mut product = Self(product);
        product.trim();
        product
    }

    fn mul_small(&self, factor: u64) -> Self {
        let mut product = Vec::with_capacity(self.0.len() + 1);
        let mut carry = 0u128;
        for &limb in &self.0 {
            // At most (2^64-1)^2 + (2^64-1) < 2^128: no overflow.
            let wide = u128::from(limb) * u128::from(factor) + carry;
            product.push(wide as u64);
            carry = wide >> 64;
        }
        product.push(carry as u64);
        let mut product = Self(product);
        product.trim();
        product
    }

    fn mul_pow10(&self, mut exponent: u64) -> Self {
        const TEN_POW_19: u64 = 10_000_000_000_000_000_000;
        if self.is_zero() {
            return Self::default();
        }
        let mut product = self.clone();
        while exponent >= 19 {
            product = product.mul_small(TEN_POW_19);
            exponent -= 19;
        }
        // exponent < 19 here, so the power fits in a u64.
        product.mul_small(10u64.pow(exponent as u32))
    }

    /// Quotient and remainder; `None` for a zero divisor.
    fn div_rem(&self, divisor: &Self) -> Option<(Self, Self)> {
        if divisor.is_zero() {
            return None;
        }
        if let (Some(a), Some(b)) = (self.to_u128(), divisor.to_u128()) {
            return Some((Self::from_u128(a / b), Self::from_u128(a % b)));
        }
        // Binary long division: a few hundred bits at most, so simplicity beats speed.
        let mut quotient = Self(vec![0; self.0.len()]);
        let mut remainder = Self::default();
        for index in (0..self.bit_len()).rev() {
            remainder.shift_in(self.bit(index));
            if remainder >= *divisor {
                remainder = remainder.sub(divisor);
                quotient.set_bit(index);
            }
        }
        quotient.trim();
        Some((quotient, remainder))
    }

    /// `self / divisor` rounded to the nearest integer, halves up; `None` for a zero divisor.
    fn div_round_half_up(&self, divisor: &Self) -> Option<Self> {
        let (quotient, remainder) = self.div_rem(divisor)?;
        Some(if remainder.add(&remainder) >= *divisor {
            quotient.add(&Self::from_u128(1))
        } else {
            quotient
        })
    }
}

impl PartialOrd for Mag {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Mag {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.len().cmp(&other.0.len()).then_with(|| self.0.iter().rev().cmp(other.0.iter().rev()))
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use rust_decimal::RoundingStrategy;

    use super::*;
    use crate::ports::chain::InferenceId;

    const NINETY_PERCENT_SEED: i64 = 5_798_067_479_865_859_744;
    const FIFTY_PERCENT_SEED: i64 = 6_669_939_700_021_626_378;
    const TEN_PERCENT_SEED: i64 = 2_925_341_513_999_858_939;

    fn dec(text: &str) -> Decimal {
        Decimal::from_str(text).expect("decimal literal")
    }

    fn params(min: &str, max: &str, halfway: &str, full: u64, min_cutoff: u64) -> ValidationParams {
        ValidationParams {
            min_validation_average: dec(min),
            max_validation_average: dec(max),
            min_validation_halfway: dec(halfway),
            full_validation_traffic_cutoff: full,
            min_validation_traffic_cutoff: min_cutoff,
        }
    }

    fn details(
        id: &str,
        traffic_basis: u64,
        reputation: i32,
        total_power: u64,
        executor_power: u64,
    ) -> ValidationDetails {
        ValidationDetails {
            epoch_id: 7,
            inference_id: InferenceId::from(id),
            executor_id: "gonka1executor".to_owned(),
            executor_reputation: reputation,
            traffic_basis,
            executor_power,
            model: "Qwen/QwQ-32B".to_owned(),
            total_power,
            created_at_block_height: 1,
        }
    }

    fn units(value: i128) -> Exact {
        Exact::from_i128(value, -i64::from(DIVISION_PRECISION))
    }

    #[test]
    fn draw_is_sha256_of_signed_seed_and_id_over_u64_max() {
        for seed in [12_345, -12_345, 0, i64::MIN, i64::MAX] {
            let id = "inference-1";
            let text = format!("{seed}:{id}");
            assert_eq!(text.starts_with('-'), seed < 0);
            let digest = Sha256::digest(text.as_bytes());
            let mut prefix = [0u8; 8];
            prefix.copy_from_slice(&digest[..8]);
            let hash = u128::from(u64::from_be_bytes(prefix));
            let max = u128::from(u64::MAX);
            let scaled = hash * DRAW_UNITS;
            let expected = scaled / max + u128::from(2 * (scaled % max) >= max);
            let expected = Decimal::from_i128_with_scale(expected as i128, 16);
            assert_eq!(deterministic_float(seed, id), expected, "seed {seed}");
        }
    }

    #[test]
    fn draw_matches_upstream_golden_values() {
        // Upstream TestDeterministicFloat (calculations/should_validate_test.go).
        let golden = [
            (12_345, "inference-1", "0.5498462437774096"),
            (67_890, "inference-2", "0.1626630352875919"),
            (0, "inference-3", "0.8815494969577052"),
            (-12_345, "inference-4", "0.0456115115524204"),
            (
                999_999_999,
                "very-long-inference-identifier-string-just-to-be-sure",
                "0.9774181254878734",
            ),
        ];
        for (seed, id, expected) in golden {
            assert_eq!(deterministic_float(seed, id), dec(expected), "{seed}:{id}");
            assert_eq!(deterministic_float(seed, id).to_string(), expected);
        }
        // The named seeds of upstream's calculations tests draw just above 90%, 50% and 10%
        // for "inferenceId" (values from an exact-fraction reference).
        assert_eq!(
            deterministic_float(NINETY_PERCENT_SEED, "inferenceId"),
            dec("0.9059330450735482")
        );
        assert_eq!(
            deterministic_float(FIFTY_PERCENT_SEED, "inferenceId"),
            dec("0.5026670437948725")
        );
        assert_eq!(deterministic_float(TEN_PERCENT_SEED, "inferenceId"), dec("0.1031426985074543"));
    }

    #[test]
    fn draw_rounds_once_where_rust_decimal_rounds_twice() {
        // h / (2^64-1) = 0.13266137617530804999...: the 16th place rounds down. rust_decimal's
        // division keeps 28 digits, ...08050000000000, and rounding that again goes up.
        let hash: u64 = 2_447_170_454_772_017_274;
        assert_eq!(draw_units(hash), 1_326_613_761_753_080);
        let naive = (Decimal::from(hash) / Decimal::from(u64::MAX))
            .round_dp_with_strategy(16, RoundingStrategy::MidpointAwayFromZero);
        assert_eq!(naive, dec("0.1326613761753081"));
        assert_eq!(draw_units(0), 0);
        assert_eq!(draw_units(u64::MAX), DRAW_UNITS);
        assert_eq!(draw_units(u64::MAX - 922), DRAW_UNITS);
    }

    #[test]
    fn minimum_average_matches_upstream_table() {
        // Upstream TestMinimumValidationAverage (calculations/min_validation_average_test.go).
        let golden = [
            (10_000, 10_000, 100, "0.01"),
            (100, 10_000, 100, "1"),
            (5_000, 10_000, 100, "0.05"),
            (7_500, 10_000, 100, "0.03"),
            (6_250, 10_000, 100, "0.04"),
            (2_550, 10_000, 100, "0.525"),
            (3_775, 10_000, 100, "0.2875"),
            (255, 1_000, 10, "0.525"),
        ];
        for (traffic, full, min_cutoff, expected) in golden {
            let params = params("0.01", "1.0", "0.05", full, min_cutoff);
            assert_eq!(
                minimum_validation_average(traffic, &params),
                dec(expected),
                "traffic {traffic}"
            );
        }
    }

    #[test]
    fn minimum_average_is_continuous_at_the_cutoffs() {
        // Golden values from an exact-fraction reference of the upstream formula.
        let params = ValidationParams::default();
        let golden = [
            (0, "1"),
            (100, "1"),
            (101, "0.999806122448979555"),
            (102, "0.999612244897959205"),
            (4_999, "0.050193877551020445"),
            (5_000, "0.05"),
            (5_001, "0.049992"),
            (9_999, "0.010008"),
            (10_000, "0.01"),
            (10_001, "0.01"),
            (u64::from(u32::MAX), "0.01"),
        ];
        for (traffic, expected) in golden {
            assert_eq!(
                minimum_validation_average(traffic, &params),
                dec(expected),
                "traffic {traffic}"
            );
        }
        // No jumps anywhere: the steepest step is 0.95 / 4900 per request, below the halfway.
        let mut previous = minimum_validation_average(0, &params);
        for traffic in 1..=10_001 {
            let current = minimum_validation_average(traffic, &params);
            assert!(current <= previous, "not monotonic at {traffic}");
            assert!(previous - current < dec("0.0002"), "jump at {traffic}");
            previous = current;
        }
    }

    #[test]
    fn odd_full_cutoff_uses_an_exact_half() {
        let params = params("0.01", "1", "0.05", 9_999, 100);
        let golden = [
            (4_999, "0.050096948668231435"),
            (5_000, "0.049995999599959996"),
            (5_001, "0.049987998799879988"),
            (9_998, "0.010008000800080008"),
            (9_999, "0.01"),
        ];
        for (traffic, expected) in golden {
            assert_eq!(minimum_validation_average(traffic, &params), dec(expected));
        }
    }

    #[test]
    fn traffic_and_cutoffs_are_read_as_go_int64() {
        let params = ValidationParams::default();
        // int64(2^64-1) = -1 and int64(2^63) = i64::MIN: below every cutoff.
        assert_eq!(minimum_validation_average(u64::MAX, &params), Decimal::ONE);
        assert_eq!(minimum_validation_average(1 << 63, &params), Decimal::ONE);
        assert_eq!(minimum_validation_average(i64::MAX as u64, &params), dec("0.01"));
        // A full cutoff of u64::MAX is -1 on chain: every non-negative traffic is above it.
        let params = ValidationParams {
            full_validation_traffic_cutoff: u64::MAX,
            ..ValidationParams::default()
        };
        assert_eq!(minimum_validation_average(0, &params), dec("0.01"));
    }

    #[test]
    fn target_follows_reputation_without_clamping() {
        let params = ValidationParams::default();
        let busy = minimum_validation_average(10_001, &params);
        assert_eq!(target_validation_average(busy, 100, &params), dec("0.01"));
        assert_eq!(target_validation_average(busy, 0, &params), Decimal::ONE);
        assert_eq!(target_validation_average(busy, 50, &params), dec("0.505"));
        assert_eq!(target_validation_average(busy, 101, &params), dec("0.0001"));
        assert_eq!(target_validation_average(busy, 200, &params), dec("-0.98"));
        assert_eq!(target_validation_average(busy, -100, &params), dec("1.99"));
        let quiet = minimum_validation_average(100, &params);
        for reputation in [0, 37, 100] {
            assert_eq!(target_validation_average(quiet, reputation, &params), Decimal::ONE);
        }
    }

    #[test]
    fn matches_upstream_should_validate_table() {
        // Upstream TestShouldValidate (calculations/should_validate_test.go); it checks the
        // probability to 1%, here exactly. Columns: seed, traffic, reputation, total,
        // validator, executor power, min and max average, probability, selected.
        let golden = [
            (FIFTY_PERCENT_SEED, 10_000, 0, 100, 50, 10, "0.1", "1.0", "0.5555555555555556", true),
            (
                FIFTY_PERCENT_SEED,
                10_000,
                100,
                200,
                30,
                20,
                "0.1",
                "1.0",
                "0.0166666666666667",
                false,
            ),
            (TEN_PERCENT_SEED, 10_000, 50, 300, 100, 50, "0.1", "1.0", "0.22", true),
            (FIFTY_PERCENT_SEED, 10_000, 100, 150, 50, 50, "0.1", "1.0", "0.05", false),
            (FIFTY_PERCENT_SEED, 10_000, 100, 100, 50, 50, "0.5", "1.0", "0.5", false),
            (NINETY_PERCENT_SEED, 10_000, 0, 150, 50, 50, "0.5", "1.0", "0.5", false),
            (NINETY_PERCENT_SEED, 10_000, 0, 100, 50, 50, "0.5", "1.0", "1", true),
            (NINETY_PERCENT_SEED, 10_000, 100, 100, 50, 50, "0.5", "1.0", "0.5", false),
            (NINETY_PERCENT_SEED, 10_000, 0, 100, 50, 50, "0.5", "100.0", "1", true),
            (FIFTY_PERCENT_SEED, 100, 100, 100, 50, 10, "0.1", "1.0", "0.5555555555555556", true),
            (FIFTY_PERCENT_SEED, 5_000, 100, 150, 50, 50, "0.01", "1.0", "0.025", false),
        ];
        for (seed, traffic, reputation, total, validator, executor, min, max, p, selected) in golden
        {
            let params = params(min, max, "0.05", 10_000, 100);
            let details = details("inferenceId", traffic, reputation, total, executor);
            assert_eq!(validation_probability(&details, validator, &params), dec(p), "{details:?}");
            assert_eq!(
                should_validate(&details, "gonka1validator", validator, &params, seed),
                selected,
                "{details:?}"
            );
        }
        // Upstream TestShouldValidate_DivisionByZeroGuard.
        let params = params("0.1", "1.0", "0.05", 10_000, 100);
        assert!(!should_validate(
            &details("inferenceId", 10_000, 0, 100, 100),
            "v",
            50,
            &params,
            0
        ));
        assert!(!should_validate(&details("inferenceId", 10_000, 0, 50, 100), "v", 25, &params, 0));
    }

    #[test]
    fn self_executed_is_never_chosen() {
        let params = ValidationParams::default();
        for index in 0..200 {
            let details = details(&format!("inference-{index}"), 0, 0, 100, 10);
            assert_eq!(validation_probability(&details, 90, &params), Decimal::ONE);
            assert!(!should_validate(&details, "gonka1executor", 90, &params, index));
        }
    }

    #[test]
    fn total_at_or_below_executor_power_is_never_chosen() {
        let params = ValidationParams::default();
        // (total, executor): equal, below, zero, and 2^32+5 vs 10, which passes the u64
        // check but not the uint32 one (5 <= 10).
        let cases = [(100, 100), (50, 100), (0, 0), (0, 5), ((1 << 32) + 5, 10), (1 << 32, 0)];
        for (total, executor) in cases {
            for index in 0..100 {
                let details = details(&format!("id-{index}"), 0, 0, total, executor);
                assert_eq!(validation_probability(&details, u64::MAX, &params), Decimal::ZERO);
                assert!(!should_validate(&details, "v", u64::MAX, &params, index));
            }
        }
    }

    #[test]
    fn powers_are_truncated_to_u32_like_upstream() {
        let params = ValidationParams::default();
        // uint32: total 2^32+100 -> 100, executor 50, validator 2^32+7 -> 7: p = 7 / 50.
        let details = details("inferenceId", 0, 0, (1 << 32) + 100, 50);
        assert_eq!(validation_probability(&details, (1 << 32) + 7, &params), dec("0.14"));
        // A validator power of exactly 2^32 truncates to 0.
        assert_eq!(validation_probability(&details, 1 << 32, &params), Decimal::ZERO);
    }

    #[test]
    fn zero_reputation_low_traffic_full_power_selects_everything() {
        let params = ValidationParams::default();
        let min_avg = minimum_validation_average(100, &params);
        assert_eq!(target_validation_average(min_avg, 0, &params), Decimal::ONE);
        for index in 0..1_000 {
            let details = details(&format!("inference-{index}"), 100, 0, 1_000, 400);
            assert_eq!(validation_probability(&details, 600, &params), Decimal::ONE);
            assert!(should_validate(&details, "v", 600, &params, i64::from(index) - 500));
        }
    }

    #[test]
    fn busy_trusted_executor_gets_the_minimum_target() {
        let params = ValidationParams::default();
        let min_avg = minimum_validation_average(10_001, &params);
        assert_eq!(min_avg, dec("0.01"));
        assert_eq!(target_validation_average(min_avg, 100, &params), dec("0.01"));
        let details = details("inferenceId", 10_001, 100, 1_000, 0);
        assert_eq!(validation_probability(&details, 1_000, &params), dec("0.01"));
    }

    #[test]
    fn probability_is_capped_at_one() {
        let params = params("0.5", "100", "0.75", 10_000, 100);
        let details = details("inferenceId", 0, 0, 100, 50);
        assert_eq!(validation_probability(&details, 50, &params), Decimal::ONE);
        assert_eq!(validation_probability(&details, 1, &params), Decimal::ONE);
        let params = ValidationParams::default();
        assert_eq!(validation_probability(&details, u64::from(u32::MAX), &params), Decimal::ONE);
    }

    #[test]
    fn draw_equal_to_probability_is_not_chosen() {
        let (seed, id) = (FIFTY_PERCENT_SEED, "inferenceId");
        let r = deterministic_float(seed, id);
        // Traffic 0 and reputation 0 make the target the maximum average; powers 1 of 1 make
        // p the target itself, rounded to 16 places, which r already is.
        let details = details(id, 0, 0, 2, 1);
        let at = params("0.01", &r.to_string(), "0.05", 10_000, 100);
        assert_eq!(validation_probability(&details, 1, &at), r);
        assert!(!should_validate(&details, "v", 1, &at, seed));
        let above =
            params("0.01", &(r + dec("0.0000000000000001")).to_string(), "0.05", 10_000, 100);
        assert!(should_validate(&details, "v", 1, &above, seed));
        let draw = draw(seed, id);
        assert!(draw >= draw.clone());
    }

    #[test]
    fn divisions_round_half_away_from_zero_at_the_16th_place() {
        let two_e16 = Exact::from_i128(20_000_000_000_000_000, 0);
        let one = Exact::from_i128(1, 0);
        let minus_one = Exact::from_i128(-1, 0);
        assert_eq!(one.div_round(&two_e16), Some(units(1)));
        assert_eq!(minus_one.div_round(&two_e16), Some(units(-1)));
        assert_eq!(one.div_round(&Exact::from_i128(20_000_000_000_000_001, 0)), Some(units(0)));
        let three = Exact::from_i128(3, 0);
        let two = Exact::from_i128(2, 0);
        assert_eq!(two.div_round(&three), Some(units(6_666_666_666_666_667)));
        assert_eq!(
            two.div_round(&three.sub(&Exact::from_i128(6, 0))),
            Some(units(-6_666_666_666_666_667))
        );
        assert_eq!(one.div_round(&Exact::from_i128(0, 3)), None);
        // 1 / 131072 = 0.00000762939453125 exactly: a tie at the 17th place. Go rounds it up;
        // rust_decimal's default rounding (banker's) would round it down.
        let details = details("inferenceId", 0, 0, 131_072 + 9, 9);
        let p = validation_probability(&details, 1, &ValidationParams::default());
        assert_eq!(p, dec("0.0000076293945313"));
        assert_eq!(dec("0.00000762939453125").round_dp(16), dec("0.0000076293945312"));
    }

    #[test]
    fn live_and_recovery_power_selection() {
        let power = |power, epoch_index| ValidatorPower { power, epoch_index };
        let powers = [power(10, 4), power(20, 5), power(30, 6)];
        assert_eq!(live_validator_power(&powers, 5), Some(20));
        assert_eq!(live_validator_power(&powers, 9), Some(30));
        assert_eq!(live_validator_power(&[], 5), None);
        assert_eq!(recovery_validator_power(&powers, 5), Some(20));
        assert_eq!(recovery_validator_power(&powers, 9), None);
        assert_eq!(recovery_validator_power(&[], 5), None);
        // Duplicates: the live path stops at the first match, recovery keeps the last.
        let duplicated = [power(1, 5), power(2, 5), power(3, 6)];
        assert_eq!(live_validator_power(&duplicated, 5), Some(1));
        assert_eq!(recovery_validator_power(&duplicated, 5), Some(2));
    }

    #[test]
    fn matches_exact_reference_vectors() {
        // Generated by an exact-fraction (Python) model of upstream ShouldValidate with
        // shopspring's DivRound, int64/uint32 casts included. Columns: seed, id, traffic,
        // reputation, total, executor, validator power, min, max, halfway, full cutoff,
        // min cutoff, probability in units of 1e-16 (None: not eligible), selected.
        type Vector = (
            i64,
            &'static str,
            u64,
            i32,
            u64,
            u64,
            u64,
            &'static str,
            &'static str,
            &'static str,
            u64,
            u64,
            Option<i128>,
            bool,
        );
        #[rustfmt::skip]
        let vectors: [Vector; 56] = [
            (-5040757828609028052, "9f2c1e3a-7b4d-4c2e-8f1a-0d3b5e6c7a8b", 99, 9, 748930, 15286, 461522, "0.5", "1", "0.05", 10000, 100, Some(6290816799428606), false),
            (9223372036854775807, "ü-ñ-✓", 99, 26, 936592, 108328, 318340, "0.01", "1.0", "0.05", 10000, 100, Some(3843460539151768), false),
            (-8132852119641968273, "ü-ñ-✓", 99, 37, 942054, 927231, 374, "0.1", "1", "0.05", 10000, 100, Some(252310598394387), false),
            (-12345, "", 4999, 5, 759502, 386950, 304918, "0.1", "1", "0.05", 10000, 100, Some(7795887576439131), false),
            (-9223372036854775808, "inferenceId", 7500, 74, 210123, 21392, 155762, "0.01", "1", "0.05", 10000, 100, Some(2329031075975860), true),
            (-12345, "inference-96808", 10000, 38, 249375, 136306, 25165, "0.5", "1", "0.05", 10000, 100, Some(1802762030264706), false),
            (-12345, "", 5001, 16, 688252, 494231, 170660, "0.1", "1", "0.05", 10000, 100, Some(7458983978847651), false),
            (-6700564374026786473, "ü-ñ-✓", 0, 98, 536823, 77632, 133464, "0.5", "1", "0.05", 10000, 100, Some(2906502958463907), false),
            (-9223372036854775808, "inference-337967", 0, 21, 82057, 62958, 11798, "0.1", "1", "0.05", 10000, 100, Some(6177286768940782), false),
            (9223372036854775807, "", 18446744073709551615, 101, 8540562423, 8540562427, 3019299680, "0.5", "1", "0.05", 18446744073709551615, 0, None, false),
            (3013321878524940528, "inference-933281", 1, 63, 328557, 284869, 26819, "0.01", "1", "0.05", 10000, 100, Some(6138756637978392), true),
            (-3470582857208124275, "inferenceId", 5000, 54, 311327, 215767, 41564, "0.1", "1", "0.05", 10000, 100, Some(2118215571368774), true),
            (-12345, "ü-ñ-✓", 5001, 31, 780738, 372843, 23237, "0.5", "1", "0.05", 10000, 100, Some(401925785123623), false),
            (-9223372036854775808, "9f2c1e3a-7b4d-4c2e-8f1a-0d3b5e6c7a8b", 2550, 7, 167548, 111351, 44631, "0.1", "1", "0.05", 10000, 100, Some(7677815408295817), true),
            (12345, "inference-140119", 99, 22, 176256, 107960, 14389, "0.01", "1", "0.05", 10000, 100, Some(2106858381164343), true),
            (9223372036854775807, "inferenceId", 9223372036854775808, 0, 4294967396, 3045390400, 1, "0.25", "100", "0.75", 10000, 18446744073709551516, None, false),
            (12345, "ü-ñ-✓", 100, 99, 300681, 231751, 51098, "0.01", "1.0", "0.05", 10000, 100, Some(7413027709270274), false),
            (-12345, "", 5001, 150, 100, 19, 50, "0.01", "1", "0.05", 18446744073709551615, 100, Some(-2993827160493827), false),
            (9223372036854775807, "inferenceId", 7500, 13, 526293, 197182, 32401, "0.5", "1", "0.05", 10000, 100, Some(891711481840473), false),
            (-9223372036854775808, "", 5988, 88, 913091, 171859, 678409, "0.5", "1", "0.05", 10000, 100, Some(2217177737690763), false),
            (4896978965327995535, "inference-779630", 9223372036854775807, 2147483647, 100, 95, 2399324667, "0.01", "1", "0.05", 10000, 10, Some(-102019702828629832870200000000000), false),
            (-9223372036854775808, "inference-891510", 99, 100, 18446744073709551615, 13935492495885356182, 1, "0.01", "1.0", "0.05", 18446744073709551615, 5000, Some(42384), false),
            (1650425659436980842, "inference-749244", 100, 15, 585783, 21062, 532394, "0.1", "1", "0.05", 10000, 100, Some(9427558033081823), true),
            (12345, "inferenceId", 4859, 82, 725480, 411203, 125107, "0.1", "1", "0.05", 10000, 100, Some(968987893839654), false),
            (9223372036854775807, "", 2550, -2147483648, 4294967396, 1244601216, 50, "0.25", "100", "0.75", 3, 20000, None, false),
            (-12345, "", 5001, 0, 1099511640121, 404249336268, 4294967299, "0.1", "1", "0.05", 0, 100, None, false),
            (9223372036854775807, "inference-576769", 7500, 0, 1099511640121, 601588476301, 1, "0.01", "1.0", "0.05", 0, 18446744073709551516, None, false),
            (-8448994723816568453, "", 5001, 50, 294920, 129488, 112885, "0.5", "1", "0.05", 10000, 100, Some(3582723102241404), false),
            (9223372036854775807, "inference-215469", 10000, 74, 364761, 294475, 34240, "0.01", "1", "0.05", 10000, 100, Some(1302645761602595), true),
            (12345, "inference-371450", 10001, 91, 831080, 662820, 146943, "0.01", "1", "0.05", 10000, 100, Some(865449381908950), false),
            (9223372036854775807, "", 101, 24, 17796, 623, 12594, "0.01", "1", "0.05", 10000, 100, Some(7333263840604081), true),
            (-9223372036854775808, "", 99, 9, 524023, 9173, 300817, "0.01", "1.0", "0.05", 10000, 100, Some(5842808585024764), false),
            (-9223372036854775808, "ü-ñ-✓", 2550, 99, 610526, 570761, 23769, "0.01", "1.0", "0.05", 10000, 100, Some(3166510184835911), false),
            (-6152140319420276822, "9f2c1e3a-7b4d-4c2e-8f1a-0d3b5e6c7a8b", 4999, 58, 284644, 246343, 32191, "0.01", "1", "0.05", 10000, 100, Some(3774673988956435), false),
            (-12345, "9f2c1e3a-7b4d-4c2e-8f1a-0d3b5e6c7a8b", 99, 65, 773211, 46255, 298507, "0.1", "1", "0.05", 10000, 100, Some(4106259526023583), false),
            (-2184301443305624869, "", 9223372036854775807, 100, 4294967396, 4294967399, 1, "0.1", "1", "0.05", 1, 100, None, false),
            (-1947803605775840183, "ü-ñ-✓", 5001, 76, 825397, 556703, 180681, "0.5", "1", "0.05", 10000, 100, Some(1869847357231646), false),
            (-1824438706356278323, "inference-804661", 1, 72, 352717, 278737, 20590, "0.1", "1", "0.05", 10000, 100, Some(2783184644498513), false),
            (9223372036854775807, "9f2c1e3a-7b4d-4c2e-8f1a-0d3b5e6c7a8b", 1, 17, 683389, 272499, 343862, "0.5", "1", "0.05", 10000, 100, Some(8368711820681934), true),
            (-3086299152477967780, "9f2c1e3a-7b4d-4c2e-8f1a-0d3b5e6c7a8b", 6549, 69, 934889, 439116, 243419, "0.1", "1", "0.05", 10000, 100, Some(1743933859123026), false),
            (8595545824859130199, "ü-ñ-✓", 5001, 14, 968219, 207596, 372541, "0.1", "1", "0.05", 10000, 100, Some(4246434417016051), false),
            (12345, "", 0, -1, 4294967295, 1074619159, 50, "0.01", "1.0", "0.05", 10000, 100, Some(155262717), false),
            (9223372036854775807, "inferenceId", 101, 42, 994101, 936790, 20799, "0.5", "1", "0.05", 10000, 100, Some(3628850721003447), false),
            (12345, "inference-759208", 100, 22, 933757, 428226, 51962, "0.5", "1", "0.05", 10000, 100, Some(1027869705319753), false),
            (-4187677963052383013, "", 0, 2147483647, 300, 159, 18446744073709551615, "0.01", "1", "0.05", 1, 20000, Some(10000000000000000), true),
            (12345, "inference-965309", 9999, 39, 15149, 13213, 1257, "0.1", "1", "0.05", 10000, 100, Some(4213781496384298), false),
            (150181465172262825, "inference-243905", 100, 36, 210403, 1433, 163381, "0.5", "1", "0.05", 10000, 100, Some(7818394984926066), true),
            (-1687669703444525649, "9f2c1e3a-7b4d-4c2e-8f1a-0d3b5e6c7a8b", 101, 101, 1000000, 206387, 793613, "0.1", "1", "0.05", 0, 0, Some(910000000000000), false),
            (-12345, "", 2550, 45, 831303, 416439, 58062, "0.5", "1", "0.05", 10000, 100, Some(1100390670195534), false),
            (-1262825208622657891, "", 7500, 86, 945280, 311772, 146758, "0.1", "1", "0.05", 10000, 100, Some(473743204505705), false),
            (-9223372036854775808, "inferenceId", 101, 0, 16087888561, 5044446163, 50, "0.25", "100", "0.75", 18446744073709551615, 5000, Some(20378985499), false),
            (6827157635769536596, "inferenceId", 100, -2147483648, 4294967295, 2728124979, 1566842316, "0.0000001", "0.999", "0.333", 3, 100, Some(10000000000000000), true),
            (9223372036854775807, "", 99, -50, 4294967295, 4294967295, 18446744073709551615, "0.0000001", "0.999", "0.333", 10000, 5000, None, false),
            (-12345, "ü-ñ-✓", 100, 100, 635022, 594403, 15455, "0.5", "1", "0.05", 10000, 100, Some(3804869642285630), false),
            (9223372036854775807, "", 9999, 79, 945995, 940488, 189, "0.01", "1.0", "0.05", 10000, 100, Some(74785354058471), false),
            (-2363066180458983693, "inference-637084", 16703, 40, 165783, 134876, 22668, "0.1", "1", "0.05", 10000, 100, Some(4693926942116673), true),
        ];
        for (
            seed,
            id,
            traffic,
            reputation,
            total,
            executor,
            validator,
            min,
            max,
            halfway,
            full,
            min_cutoff,
            p,
            selected,
        ) in vectors
        {
            let params = params(min, max, halfway, full, min_cutoff);
            let details = details(id, traffic, reputation, total, executor);
            assert_eq!(probability(&details, validator, &params), p.map(units), "{details:?}");
            assert_eq!(
                should_validate(&details, "v", validator, &params, seed),
                selected,
                "{details:?}"
            );
        }
    }

    #[test]
    fn extreme_inputs_do_not_panic() {
        let decimals = [
            Decimal::ZERO,
            Decimal::ONE,
            Decimal::MAX,
            Decimal::MIN,
            Decimal::new(1, 28),
            Decimal::new(-7, 28),
            dec("0.3333333333333333333333333333"),
        ];
        let counts = [0, 1, 100, u64::from(u32::MAX), 1 << 32, i64::MAX as u64, u64::MAX];
        let reputations = [i32::MIN, -1, 0, 100, 101, i32::MAX];
        let mut checked = 0u32;
        for (index, &min) in decimals.iter().enumerate() {
            let max = decimals[(index + 2) % decimals.len()];
            let halfway = decimals[(index + 5) % decimals.len()];
            for &cutoff in &counts {
                let params = ValidationParams {
                    min_validation_average: min,
                    max_validation_average: max,
                    min_validation_halfway: halfway,
                    full_validation_traffic_cutoff: cutoff,
                    min_validation_traffic_cutoff: cutoff.rotate_left(7),
                };
                for &traffic in &counts {
                    let _ = minimum_validation_average(traffic, &params);
                    for &reputation in &reputations {
                        let _ = target_validation_average(max, reputation, &params);
                        let total = traffic.rotate_right(3);
                        let details = details("x", traffic, reputation, total, cutoff);
                        let p = validation_probability(&details, u64::MAX, &params);
                        assert!(p <= Decimal::ONE);
                        let _ = should_validate(&details, "v", total, &params, i64::MIN);
                        checked += 1;
                    }
                }
            }
        }
        assert_eq!(checked, 7 * 7 * 7 * 6);
    }

    #[test]
    fn exact_converts_to_decimal_exactly_rounded_or_saturated() {
        assert_eq!(Exact::from_i128(12_345, -3).to_decimal(), dec("12.345"));
        assert_eq!(Exact::from_i128(-5, 2).to_decimal(), dec("-500"));
        // 29 and 30 decimal places: rounded half away from zero to 28.
        assert_eq!(Exact::from_i128(15, -29).to_decimal(), Decimal::new(2, 28));
        assert_eq!(Exact::from_i128(-15, -29).to_decimal(), Decimal::new(-2, 28));
        assert_eq!(Exact::from_i128(149, -30).to_decimal(), Decimal::new(1, 28));
        // 2^96 needs one digit fewer; too large values saturate.
        let big = Exact::from_u128(1 << 96, -1);
        assert_eq!(
            big.to_decimal(),
            Decimal::from_i128_with_scale(7_922_816_251_426_433_759_354_395_034, 0)
        );
        assert_eq!(Exact::from_u128(1 << 96, 0).to_decimal(), Decimal::MAX);
        assert_eq!(Exact::from_i128(-(1 << 100), 0).to_decimal(), Decimal::MIN);
        assert_eq!(Exact::from_i128(3, 40).to_decimal(), Decimal::MAX);
        assert_eq!(Exact::from_i128(0, 40).to_decimal(), Decimal::ZERO);
        assert_eq!(Exact::from_i128(0, -60).to_decimal(), Decimal::ZERO);
        for value in [Decimal::MAX, Decimal::MIN, Decimal::new(-1, 28), dec("0.05")] {
            assert_eq!(Exact::from_decimal(value).to_decimal(), value);
        }
    }

    #[test]
    fn magnitudes_agree_with_native_arithmetic() {
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..2_000 {
            let a = u128::from(next()) << (next() % 64) | u128::from(next());
            let b = u128::from(next()) >> (next() % 64);
            let (ma, mb) = (Mag::from_u128(a), Mag::from_u128(b));
            assert_eq!(ma.cmp(&mb), a.cmp(&b));
            if let Some(sum) = a.checked_add(b) {
                assert_eq!(ma.add(&mb), Mag::from_u128(sum));
            }
            if a >= b {
                assert_eq!(ma.sub(&mb), Mag::from_u128(a - b));
            }
            if let Some(product) = a.checked_mul(b) {
                assert_eq!(ma.mul(&mb), Mag::from_u128(product));
            }
            match ma.div_rem(&mb) {
                Some((q, r)) => {
                    assert_eq!((q, r), (Mag::from_u128(a / b), Mag::from_u128(a % b)));
                }
                None => assert_eq!(b, 0),
            }
            // Multi-limb division: (a * c + r) / c gives back a and r.
            let c = Mag::from_u128(u128::from(next()) << 64 | u128::from(next() | 1));
            let r = Mag::from_u128(u128::from(next())); // below c, which has a non-zero high limb
            let n = ma.mul(&c).add(&r);
            assert_eq!(n.div_rem(&c), Some((ma.clone(), r)));
        }
        assert_eq!(
            Mag::from_u128(7).mul_pow10(40).div_rem(&Mag::from_u128(1).mul_pow10(40)),
            Some((Mag::from_u128(7), Mag::default()))
        );
    }
}
