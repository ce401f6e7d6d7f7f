//! JSON written byte for byte as Go's `encoding/json` writes a value it decoded into `any`: what
//! upstream sends to an ML node after it edited a request as a `map[string]interface{}`.
//!
//! - Object keys are sorted bytewise, at every level, and nothing is indented.
//! - Every number is a `float64` (Go decodes JSON numbers into `any` as `float64`), written with
//!   the shortest digits that read back, in plain decimal unless the magnitude is below 1e-6 or at
//!   least 1e21 (`1e-7`, `1e+21`).
//! - Strings escape `"` and `\`, `\b \f \n \r \t` in short form, other control characters and
//!   U+2028/U+2029 as `\u00XX`/`\u2028`, and, with HTML escaping (`json.Marshal`'s default),
//!   `<`, `>` and `&` as `\u003c`, `\u003e` and `\u0026`.

use std::fmt::Write as _;

use serde_json::Value;

const HEX: &[u8; 16] = b"0123456789abcdef";

/// `value` as `json.Marshal` writes it (HTML escaping on).
pub fn marshal(value: &Value) -> Vec<u8> {
    let mut out = String::new();
    write_value(value, true, &mut out);
    out.into_bytes()
}

/// Appends `value` to `out` as Go writes it; `escape_html` as `json.Encoder.SetEscapeHTML`.
pub fn write_value(value: &Value, escape_html: bool, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(number) => match number.as_f64() {
            Some(float) => write_float(float, out),
            // Only serde_json's `arbitrary_precision` feature gives a number no f64; Go would
            // have refused to decode it, so its own text is as good as any.
            None => {
                let _ = write!(out, "{number}");
            }
        },
        Value::String(text) => write_string(text, escape_html, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(item, escape_html, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            // Sorted here rather than relying on the map's order, which serde_json's
            // `preserve_order` feature, if anything in the build turned it on, would change.
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push('{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(key, escape_html, out);
                out.push(':');
                write_value(item, escape_html, out);
            }
            out.push('}');
        }
    }
}

/// Appends Go's encoding of the `float64` `float`. A `Value` never holds a NaN or an infinity;
/// given one, this writes `null` where Go would fail.
pub fn write_float(float: f64, out: &mut String) {
    if !float.is_finite() {
        out.push_str("null");
        return;
    }
    if float.is_sign_negative() {
        out.push('-');
    }
    let abs = float.abs();
    if abs == 0.0 {
        out.push('0');
        return;
    }
    let (digits, exponent) = shortest_digits(abs);
    if !(1e-6..1e21).contains(&abs) {
        let (first, rest) = digits.split_at(1);
        out.push_str(first);
        if !rest.is_empty() {
            out.push('.');
            out.push_str(rest);
        }
        let sign = if exponent < 0 { '-' } else { '+' };
        let _ = write!(out, "e{sign}{}", exponent.unsigned_abs());
        return;
    }
    let count = i32::try_from(digits.len()).unwrap_or(i32::MAX);
    if exponent >= count - 1 {
        out.push_str(&digits);
        out.extend(std::iter::repeat_n('0', usize::try_from(exponent - (count - 1)).unwrap_or(0)));
    } else if exponent >= 0 {
        let (whole, fraction) = digits.split_at(usize::try_from(exponent + 1).unwrap_or(0));
        let _ = write!(out, "{whole}.{fraction}");
    } else {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', usize::try_from(-exponent - 1).unwrap_or(0)));
        out.push_str(&digits);
    }
}

/// The shortest decimal digits that read back as `abs` (positive, finite) and their decimal
/// exponent (`abs = d.ddd × 10^exponent`). When two candidates of that length are equally close
/// to the exact value, Go's formatter writes the one whose last digit is even; Rust's may write
/// the other (`1125899906842624.25` is `…624.2` in Go), so a tie is settled here as Go does.
fn shortest_digits(abs: f64) -> (String, i32) {
    let formatted = format!("{abs:e}");
    let (mantissa, exponent) = formatted.split_once('e').unwrap_or((&formatted, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let n = digits.len();
    if !may_tie(abs, n) {
        return (digits, exponent);
    }
    // The exact value, digit for digit (a float64 has at most 767 significant decimal digits).
    let exact = format!("{abs:.800e}");
    let exact_digits: String = exact
        .split_once('e')
        .map_or("", |(mantissa, _)| mantissa)
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    let exact_digits = exact_digits.trim_end_matches('0');
    let is_tie = exact_digits.len() == n + 1 && exact_digits.ends_with('5');
    let Some(lower) = is_tie.then(|| exact_digits.get(..n)).flatten() else {
        return (digits, exponent);
    };
    let (Ok(lower), Ok(written)) = (lower.parse::<u64>(), digits.parse::<u64>()) else {
        return (digits, exponent);
    };
    let even = if lower % 2 == 0 { lower } else { lower + 1 };
    if even == written {
        return (digits, exponent);
    }
    let scale = exponent - i32::try_from(n).unwrap_or(0) + 1;
    let reads_back = format!("{even}e{scale}").parse::<f64>().is_ok_and(|value| value == abs);
    if !reads_back {
        return (digits, exponent);
    }
    // A carry (…9 + 1) lengthens the digits by one: the exponent grows with them.
    let even = even.to_string();
    let carried = i32::try_from(even.len()).unwrap_or(0) - i32::try_from(n).unwrap_or(0);
    (even.trim_end_matches('0').to_owned(), exponent + carried)
}

/// Whether `abs`'s exact decimal expansion can be as short as `n + 1` significant digits, as a
/// tie between two `n`-digit candidates needs; a cheap test that spares the exact expansion for
/// almost every float (a logprob's runs to some fifty digits). Fifteen digits or fewer never
/// tie: two such decimals never read as the same float64.
fn may_tie(abs: f64, n: usize) -> bool {
    if n < 16 {
        return false;
    }
    let bits = abs.to_bits();
    let biased = i32::try_from((bits >> 52) & 0x7ff).unwrap_or(0);
    let fraction = bits & ((1 << 52) - 1);
    let (mut mantissa, mut exponent) =
        if biased == 0 { (fraction, -1074) } else { (fraction | 1 << 52, biased - 1075) };
    let zeros = mantissa.trailing_zeros();
    mantissa >>= zeros;
    exponent += i32::try_from(zeros).unwrap_or(0);
    if mantissa == 0 || exponent >= 0 {
        // An integer: its digits are exact, and only above 2^53 can they outrun the shortest.
        return abs >= 9_007_199_254_740_992.0;
    }
    // An odd mantissa over 2^-exponent has exactly -exponent digits after the point, of which
    // the leading zeros (below 1) are not significant; one digit of slack for the logarithm.
    let leading_zeros = if abs < 1.0 { (-abs.log10()).floor() as i32 } else { 0 };
    let significant = -exponent - leading_zeros - 1;
    significant <= i32::try_from(n).unwrap_or(i32::MAX) + 1
}

/// Appends Go's encoding of the string `text`; `escape_html` as `json.Encoder.SetEscapeHTML`.
pub fn write_string(text: &str, escape_html: bool, out: &mut String) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' if escape_html => push_unicode_escape(c, out),
            c if u32::from(c) < 0x20 => push_unicode_escape(c, out),
            '\u{2028}' | '\u{2029}' => push_unicode_escape(c, out),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn push_unicode_escape(c: char, out: &mut String) {
    let code = u32::from(c);
    out.push_str("\\u");
    for shift in [12, 8, 4, 0] {
        out.push(HEX[((code >> shift) & 0xf) as usize] as char);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn go(json: &str) -> String {
        let value: Value = serde_json::from_str(json).unwrap();
        let mut out = String::new();
        write_value(&value, false, &mut out);
        out
    }

    #[test]
    fn keys_are_sorted_bytewise_at_every_level_without_whitespace() {
        assert_eq!(
            go(
                r#" { "b" : 1, "a" : { "d" : [ 3, { "z": null, "Z": true } ], "c" : "x" }, "B": false } "#
            ),
            r#"{"B":false,"a":{"c":"x","d":[3,{"Z":true,"z":null}]},"b":1}"#
        );
        assert_eq!(go("[]"), "[]");
        assert_eq!(go(r#"{"a":1,"a":2}"#), r#"{"a":2}"#, "the last duplicate wins, as in Go");
    }

    #[test]
    fn numbers_are_float64_in_go_format() {
        let cases = [
            ("1", "1"),
            ("1.0", "1"),
            ("-0", "-0"),
            ("-0.0", "-0"),
            ("0.5", "0.5"),
            ("1e2", "100"),
            ("0.000001", "0.000001"),
            ("0.0000001", "1e-7"),
            ("1.5e-10", "1.5e-10"),
            ("123456789012345678", "123456789012345680"),
            ("12345678901234567890123", "1.2345678901234568e+22"),
            ("1e20", "100000000000000000000"),
            ("1e21", "1e+21"),
            ("-2.5e300", "-2.5e+300"),
            ("0.1", "0.1"),
            ("-1.2345", "-1.2345"),
            ("5000", "5000"),
            // The shortest digits, padded with zeros: -2^63 reads back from fewer digits.
            ("-9223372036854775808", "-9223372036854776000"),
            // Halfway between two 17-digit decimals: Go writes the even last digit.
            ("1125899906842624.25", "1125899906842624.2"),
            ("1125899906842624.75", "1125899906842624.8"),
            ("-1125899906842624.25", "-1125899906842624.2"),
            ("2251799813685248.5", "2251799813685248.5"),
            ("0.3", "0.3"),
            ("123.456", "123.456"),
            ("1.7976931348623157e308", "1.7976931348623157e+308"),
            ("5e-324", "5e-324"),
        ];
        for (input, expected) in cases {
            assert_eq!(go(input), expected, "{input}");
        }
        let mut out = String::new();
        write_float(f64::NAN, &mut out);
        assert_eq!(out, "null");
    }

    #[test]
    fn only_short_expansions_are_checked_for_ties() {
        let halfway = 2f64.powi(50) + 0.25;
        assert!(may_tie(halfway, 17));
        assert!(!may_tie(halfway, 15));
        assert!(!may_tie(-0.123_456_789_012_345_67_f64.abs(), 17), "a logprob's expansion is long");
        assert!(!may_tie(0.1, 17));
        assert!(may_tie(123_456_789_012_345_680.0, 17), "integers above 2^53");
    }

    proptest::proptest! {
        #[test]
        fn every_float_reads_back_as_itself(bits in proptest::prelude::any::<u64>()) {
            let float = f64::from_bits(bits);
            proptest::prop_assume!(float.is_finite());
            let mut text = String::new();
            write_float(float, &mut text);
            proptest::prop_assert_eq!(text.parse::<f64>().unwrap(), float, "{}", text);
        }
    }

    #[test]
    fn strings_are_escaped_as_go_does() {
        let cases = [
            (r#""<a&b>""#, r#""<a&b>""#),
            (r#""q\"b\\s\/""#, r#""q\"b\\s/""#),
            (r#""\b\f\n\r\t""#, r#""\b\f\n\r\t""#),
            (r#""\u0001\u001f\u007f""#, "\"\\u0001\\u001f\u{7f}\""),
            (r#""\u2028\u2029""#, r#""\u2028\u2029""#),
            (r#""é😀\u00e9""#, "\"é😀é\""),
        ];
        for (input, expected) in cases {
            assert_eq!(go(input), expected, "{input}");
        }
        let value = serde_json::json!({"<k>": "a<b>&c"});
        assert_eq!(
            String::from_utf8(marshal(&value)).unwrap(),
            r#"{"\u003ck\u003e":"a\u003cb\u003e\u0026c"}"#,
            "json.Marshal escapes HTML in keys and values"
        );
    }
}
