//! Exact decimal arithmetic with the semantics of shopspring/decimal, which upstream computes the
//! sampling decision with: addition, subtraction and multiplication are exact (big integers), and
//! only `Div` rounds, to [`DIVISION_PRECISION`] decimal places, half away from zero, from the
//! exact quotient.
//!
//! `rust_decimal` keeps at most 28 significant digits and rounds inside `*` and `/`, so composing
//! its operators rounds twice and can move a result across the midpoint of the 16th place (a hash
//! exists for which `h / (2^64-1)` does exactly that; see the sampling tests).

use std::cmp::Ordering;

use rust_decimal::Decimal;

use super::DIVISION_PRECISION;

/// An exact decimal, `(-1)^negative * mag * 10^exp`.
#[derive(Debug, Clone)]
pub(super) struct Exact {
    negative: bool,
    mag: Mag,
    exp: i64,
}

impl Exact {
    fn new(negative: bool, mag: Mag, exp: i64) -> Self {
        Self { negative: negative && !mag.is_zero(), mag, exp }
    }

    pub(super) fn from_i128(value: i128, exp: i64) -> Self {
        Self::new(value < 0, Mag::from_u128(value.unsigned_abs()), exp)
    }

    pub(super) fn from_u128(value: u128, exp: i64) -> Self {
        Self::new(false, Mag::from_u128(value), exp)
    }

    pub(super) fn from_decimal(value: Decimal) -> Self {
        Self::from_i128(value.mantissa(), -i64::from(value.scale()))
    }

    /// The magnitude expressed in units of `10^exp`; `exp` must not exceed `self.exp`.
    fn mag_at(&self, exp: i64) -> Mag {
        self.mag.mul_pow10(self.exp.saturating_sub(exp).unsigned_abs())
    }

    pub(super) fn add(&self, other: &Self) -> Self {
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

    pub(super) fn sub(&self, other: &Self) -> Self {
        self.add(&Self::new(!other.negative, other.mag.clone(), other.exp))
    }

    pub(super) fn mul(&self, other: &Self) -> Self {
        Self::new(
            self.negative != other.negative,
            self.mag.mul(&other.mag),
            self.exp.saturating_add(other.exp),
        )
    }

    /// shopspring's `DivRound(divisor, 16)`: the exact quotient truncated to 16 decimal places,
    /// then moved one unit away from zero if the dropped remainder is at least half a unit.
    /// `None` for a zero divisor (upstream panics).
    pub(super) fn div_round(&self, divisor: &Self) -> Option<Self> {
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
    pub(super) fn to_decimal(&self) -> Decimal {
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
mod tests;
