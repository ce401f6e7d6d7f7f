use std::str::FromStr;

use super::*;

fn dec(text: &str) -> Decimal {
    Decimal::from_str(text).expect("decimal literal")
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
