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
        logprobs_mode: String::new(),
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
    assert_eq!(deterministic_float(NINETY_PERCENT_SEED, "inferenceId"), dec("0.9059330450735482"));
    assert_eq!(deterministic_float(FIFTY_PERCENT_SEED, "inferenceId"), dec("0.5026670437948725"));
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
        (FIFTY_PERCENT_SEED, 10_000, 100, 200, 30, 20, "0.1", "1.0", "0.0166666666666667", false),
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
    for (seed, traffic, reputation, total, validator, executor, min, max, p, selected) in golden {
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
    assert!(!should_validate(&details("inferenceId", 10_000, 0, 100, 100), "v", 50, &params, 0));
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
    let above = params("0.01", &(r + dec("0.0000000000000001")).to_string(), "0.05", 10_000, 100);
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
                logprobs_mode: String::new(),
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
