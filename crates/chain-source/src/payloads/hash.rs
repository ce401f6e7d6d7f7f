//! The on-chain payload commitments, computed byte for byte as upstream computes them
//! (`common/utils` `CanonicalizeJSON` and `payloadstorage.ComputePromptHash`/`ComputeResponseHash`
//! over `common/completionapi`).
//!
//! - Prompt: SHA-256 hex of the canonical JSON: the payload decoded as Go decodes into `any`
//!   (every number a `float64`), re-encoded by a `json.Encoder` with HTML escaping off: object
//!   keys sorted bytewise, no whitespace, Go's float and string formatting, and the encoder's
//!   trailing newline.
//! - Response: for a JSON object without an `events` key, SHA-256 hex of the raw bytes; with
//!   `events`, SHA-256 hex of `json.Marshal({"events": [...]})` of the event lines (HTML escaping
//!   on), after checking that every line that is not `[DONE]` or empty decodes as a JSON object.
//!
//! Hex is lowercase (`hex.EncodeToString`). Known differences, all on inputs an honest executor
//! never produces: invalid UTF-8 and unpaired surrogate escapes (Go substitutes U+FFFD, these are
//! refused here), nesting deeper than 128 levels (refused here), and the field-type checks of
//! Go's typed decoding of each response line (only the object shape is checked here).

use serde_json::Value;
use sha2::{Digest, Sha256};

/// Why a payload cannot be hashed; upstream treats it as a hash mismatch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unhashable(pub String);

/// SHA-256 of `bytes`, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut hex = String::with_capacity(64);
    for byte in digest {
        hex.push(HEX[usize::from(byte >> 4)] as char);
        hex.push(HEX[usize::from(byte & 0xf)] as char);
    }
    hex
}

/// The commitment of a prompt payload: SHA-256 hex of [`canonical_json`].
pub fn prompt_hash(prompt: &[u8]) -> Result<String, Unhashable> {
    Ok(sha256_hex(canonical_json(prompt)?.as_bytes()))
}

/// The prompt canonicalisation of upstream's `CanonicalizeJSON`, trailing newline included.
pub fn canonical_json(json: &[u8]) -> Result<String, Unhashable> {
    let value: Value = serde_json::from_slice(json)
        .map_err(|err| Unhashable(format!("prompt is not JSON: {err}")))?;
    let mut out = String::with_capacity(json.len() + 1);
    encode(&value, false, &mut out)?;
    out.push('\n');
    Ok(out)
}

/// The commitment of a response payload, plain or streamed (see the module docs).
pub fn response_hash(response: &[u8]) -> Result<String, Unhashable> {
    let value: Value = serde_json::from_slice(response)
        .map_err(|err| Unhashable(format!("response is not JSON: {err}")))?;
    let events = match &value {
        Value::Null => return Ok(sha256_hex(response)),
        Value::Object(map) => match map.get("events") {
            None => return Ok(sha256_hex(response)),
            Some(events) => events,
        },
        _ => return Err(Unhashable("response is not a JSON object".into())),
    };
    let lines = match events {
        Value::Null => None,
        Value::Array(items) => Some(
            items
                .iter()
                .map(|item| item.as_str().ok_or_else(|| Unhashable("event is not a string".into())))
                .collect::<Result<Vec<_>, _>>()?,
        ),
        _ => return Err(Unhashable("events is not a list".into())),
    };
    for line in lines.iter().flatten() {
        let event = line.trim();
        let event = event.strip_prefix("data:").unwrap_or(event).trim();
        if event == "[DONE]" || event.is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(event) {
            Ok(Value::Object(_) | Value::Null) => {}
            Ok(_) => return Err(Unhashable("event is not a JSON object".into())),
            Err(err) => return Err(Unhashable(format!("event is not JSON: {err}"))),
        }
    }
    let mut body = String::from("{\"events\":");
    match lines {
        None => body.push_str("null"),
        Some(lines) => {
            body.push('[');
            for (i, line) in lines.iter().enumerate() {
                if i > 0 {
                    body.push(',');
                }
                encode_string(line, true, &mut body);
            }
            body.push(']');
        }
    }
    body.push('}');
    Ok(sha256_hex(body.as_bytes()))
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Encodes `value` as Go's `encoding/json` encodes the same value decoded into `any`.
fn encode(value: &Value, escape_html: bool, out: &mut String) -> Result<(), Unhashable> {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(number) => {
            let float = number
                .as_f64()
                .ok_or_else(|| Unhashable(format!("number {number} is not a float64")))?;
            encode_float(float, out)?;
        }
        Value::String(text) => encode_string(text, escape_html, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                encode(item, escape_html, out)?;
            }
            out.push(']');
        }
        Value::Object(map) => {
            // Sorted here rather than relying on the map's order, which a feature of serde_json
            // elsewhere in the build could change to insertion order.
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push('{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                encode_string(key, escape_html, out);
                out.push(':');
                encode(item, escape_html, out)?;
            }
            out.push('}');
        }
    }
    Ok(())
}

/// Go's `float64` encoding: the shortest digits that round-trip, in plain decimal unless the
/// magnitude is below 1e-6 or at least 1e21, then in exponent form with a sign and at least one
/// exponent digit (`1e+21`, `1e-7`).
fn encode_float(float: f64, out: &mut String) -> Result<(), Unhashable> {
    use std::fmt::Write as _;
    if !float.is_finite() {
        return Err(Unhashable(format!("unsupported value {float}")));
    }
    if float.is_sign_negative() {
        out.push('-');
    }
    let abs = float.abs();
    if abs == 0.0 {
        out.push('0');
        return Ok(());
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
        return Ok(());
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
    Ok(())
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

/// Go's string encoding: `"` and `\` escaped, `\b \f \n \r \t` short, other control bytes as
/// `\u00XX`, U+2028 and U+2029 as `\u2028`/`\u2029`, and with `escape_html` also `<`, `>`, `&`.
fn encode_string(text: &str, escape_html: bool, out: &mut String) {
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

    fn canonical(json: &str) -> String {
        canonical_json(json.as_bytes()).unwrap()
    }

    #[test]
    fn sha256_hex_is_lowercase() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn keys_are_sorted_bytewise_at_every_level_without_whitespace_and_with_a_newline() {
        assert_eq!(
            canonical(
                r#" { "b" : 1, "a" : { "d" : [ 3, { "z": null, "Z": true } ], "c" : "x" }, "B": false } "#
            ),
            "{\"B\":false,\"a\":{\"c\":\"x\",\"d\":[3,{\"Z\":true,\"z\":null}]},\"b\":1}\n"
        );
        assert_eq!(canonical("[]"), "[]\n");
        assert_eq!(canonical("\"s\""), "\"s\"\n");
        assert_eq!(canonical(r#"{"a":1,"a":2}"#), "{\"a\":2}\n", "the last duplicate wins");
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
            assert_eq!(canonical(input), format!("{expected}\n"), "{input}");
        }
        assert!(canonical_json(b"1e400").is_err(), "out of float64 range, as Go refuses");
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
            encode_float(float, &mut text).unwrap();
            proptest::prop_assert_eq!(text.parse::<f64>().unwrap(), float, "{}", text);
        }
    }

    #[test]
    fn strings_are_escaped_as_go_does_without_html_escaping() {
        let cases = [
            (r#""<a&b>""#, r#""<a&b>""#),
            (r#""q\"b\\s\/""#, r#""q\"b\\s/""#),
            (r#""\b\f\n\r\t""#, r#""\b\f\n\r\t""#),
            (r#""\u0001\u001f\u007f""#, "\"\\u0001\\u001f\u{7f}\""),
            (r#""\u2028\u2029""#, r#""\u2028\u2029""#),
            (r#""é😀\u00e9""#, "\"é😀é\""),
        ];
        for (input, expected) in cases {
            assert_eq!(canonical(input), format!("{expected}\n"), "{input}");
        }
    }

    #[test]
    fn the_prompt_hash_covers_the_canonical_form_not_the_bytes() {
        let a = prompt_hash(br#"{"b": 1, "a": 2.0}"#).unwrap();
        assert_eq!(a, prompt_hash(b"{\"a\":2,\"b\":1}").unwrap());
        assert_eq!(a, sha256_hex(b"{\"a\":2,\"b\":1}\n"));
        assert!(matches!(prompt_hash(b"{\"a\":"), Err(Unhashable(_))));
        assert!(prompt_hash(b"").is_err());
    }

    #[test]
    fn a_plain_response_hashes_its_raw_bytes() {
        let body = br#"{"id": "x", "choices": [] }"#;
        assert_eq!(response_hash(body).unwrap(), sha256_hex(body));
        assert_eq!(response_hash(b"null").unwrap(), sha256_hex(b"null"));
        for bad in [&b"[1]"[..], b"\"s\"", b"{", b""] {
            assert!(response_hash(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_streamed_response_hashes_the_go_marshalled_events_with_html_escaping() {
        let body = br#"{ "events": ["data: {\"choices\":[{\"delta\":{\"content\":\"<a&b>\"}}]}", "", "data: [DONE]"] }"#;
        let expected = r#"{"events":["data: {\"choices\":[{\"delta\":{\"content\":\"\u003ca\u0026b\u003e\"}}]}","","data: [DONE]"]}"#;
        assert_eq!(response_hash(body).unwrap(), sha256_hex(expected.as_bytes()));
        assert_eq!(
            response_hash(br#"{"events":null}"#).unwrap(),
            sha256_hex(br#"{"events":null}"#)
        );
        assert_eq!(response_hash(br#"{"events":[]}"#).unwrap(), sha256_hex(br#"{"events":[]}"#));
        assert_eq!(
            response_hash("{\"events\":[\"\u{2028}\"]}".as_bytes()).unwrap(),
            sha256_hex(br#"{"events":["\u2028"]}"#)
        );
        for bad in [
            &br#"{"events":"x"}"#[..],
            br#"{"events":[1]}"#,
            br#"{"events":["data: {not json"]}"#,
            br#"{"events":["data: [1]"]}"#,
        ] {
            assert!(response_hash(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
