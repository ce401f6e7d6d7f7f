//! The on-chain payload commitments, computed byte for byte as upstream computes them
//! (`common/utils` `CanonicalizeJSON` and `payloadstorage.ComputePromptHash`/`ComputeResponseHash`
//! over `common/completionapi`).
//!
//! - Prompt: SHA-256 hex of the canonical JSON: the payload decoded as Go decodes into `any`
//!   (every number a `float64`), re-encoded by a `json.Encoder` with HTML escaping off: object
//!   keys sorted bytewise, no whitespace, Go's float and string formatting
//!   ([`validator_core::go_json`]), and the encoder's trailing newline.
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
use validator_core::go_json;

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
    go_json::write_value(&value, false, &mut out);
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
                go_json::write_string(line, true, &mut body);
            }
            body.push(']');
        }
    }
    body.push('}');
    Ok(sha256_hex(body.as_bytes()))
}

const HEX: &[u8; 16] = b"0123456789abcdef";

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
