//! The executor's payload endpoints on the wire (DOMAIN.md 6.1, LIVE-NETWORK.md 2.2 item 1): the
//! request URLs of the classic route and of a devshard session's, the headers, the signed byte
//! strings, and the answer's JSON with Go's `[]byte` base64 fields. Both routes share everything
//! but the path.

use base64::{
    alphabet,
    engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
    Engine as _,
};
use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The endpoint's path under an executor's `inference_url` (upstream joins it with
/// `url.JoinPath`).
pub const PAYLOADS_PATH: &str = "v1/inference/payloads";

/// The devshard session route's path under an executor's `inference_url`, as upstream's
/// `VersionedSessionPayloadPath` builds it:
/// `devshard/{runtime_version}/sessions/{escrow_id}/payloads`.
pub fn devshard_path(runtime_version: &str, escrow_id: &str) -> String {
    format!("devshard/{runtime_version}/sessions/{escrow_id}/payloads")
}

/// The requester's account address.
pub const HEADER_VALIDATOR_ADDRESS: &str = "X-Validator-Address";
/// Unix time of the request in nanoseconds, decimal.
pub const HEADER_TIMESTAMP: &str = "X-Timestamp";
/// The inference's epoch, decimal.
pub const HEADER_EPOCH_ID: &str = "X-Epoch-Id";
/// The base64 signature of [`request_signed_bytes`].
pub const HEADER_AUTHORIZATION: &str = "Authorization";

/// Go's `base64.StdEncoding` as its JSON decoder uses it for `[]byte`: padding required,
/// non-zero trailing bits accepted (the encoding is not `Strict`).
const GO_STD: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::RequireCanonical),
);

/// Standard base64 with padding, as Go encodes `[]byte` and signatures.
pub fn encode_base64(bytes: &[u8]) -> String {
    GO_STD.encode(bytes)
}

/// Decodes standard base64 as Go's `base64.StdEncoding` does, which skips `\r` and `\n`.
pub fn decode_base64(text: &str) -> Option<Vec<u8>> {
    if text.contains(['\r', '\n']) {
        let cleaned: String = text.chars().filter(|c| !matches!(c, '\r' | '\n')).collect();
        return GO_STD.decode(cleaned).ok();
    }
    GO_STD.decode(text).ok()
}

/// The bytes upstream's `calculations.Sign` signs for a "developer" signature: the payload,
/// then the decimal epoch if positive, then the decimal timestamp if positive, then the
/// address (`getDevBytes`).
pub fn signed_bytes(payload: &str, epoch_id: u64, timestamp_ns: i64, address: &str) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(payload.len() + address.len() + 40);
    bytes.extend_from_slice(payload.as_bytes());
    if epoch_id > 0 {
        bytes.extend_from_slice(epoch_id.to_string().as_bytes());
    }
    if timestamp_ns > 0 {
        bytes.extend_from_slice(timestamp_ns.to_string().as_bytes());
    }
    bytes.extend_from_slice(address.as_bytes());
    bytes
}

/// What the validator signs for a payload request (DOMAIN.md 2.3 step 3).
pub fn request_signed_bytes(
    inference_id: &str,
    epoch_id: u64,
    timestamp_ns: i64,
    account_address: &str,
) -> Vec<u8> {
    signed_bytes(inference_id, epoch_id, timestamp_ns, account_address)
}

/// What the executor signs over the payloads it serves: the inference id and the lowercase hex
/// SHA-256 of both payloads, then its account address; no epoch, no timestamp
/// (`signPayloadResponse`, `VerifyExecutorPayloadSignature`).
pub fn executor_signed_bytes(
    inference_id: &str,
    prompt: &[u8],
    response: &[u8],
    executor_address: &str,
) -> Vec<u8> {
    let payload = format!(
        "{inference_id}{}{}",
        super::hash::sha256_hex(prompt),
        super::hash::sha256_hex(response)
    );
    signed_bytes(&payload, 0, 0, executor_address)
}

/// The classic request URL: [`payload_url`] with [`PAYLOADS_PATH`].
pub fn request_url(inference_url: &str, inference_id: &str) -> crate::Result<reqwest::Url> {
    payload_url(inference_url, PAYLOADS_PATH, inference_id)
}

/// A devshard session's request URL: [`payload_url`] with [`devshard_path`] and the inference id
/// in decimal.
pub fn devshard_request_url(
    inference_url: &str,
    runtime_version: &str,
    escrow_id: &str,
    inference_id: u64,
) -> crate::Result<reqwest::Url> {
    let path = devshard_path(runtime_version, escrow_id);
    payload_url(inference_url, &path, &inference_id.to_string())
}

/// A request URL as upstream's `BuildPayloadRequestURL` makes it: the base's path joined with
/// `path` and cleaned (`url.JoinPath`), and `inference_id` set in the query, whose pairs are then
/// encoded sorted by key with Go's `url.QueryEscape`.
pub fn payload_url(
    inference_url: &str,
    path: &str,
    inference_id: &str,
) -> crate::Result<reqwest::Url> {
    let bad = |why: &str| crate::Error::Decode(format!("inference URL {inference_url:?}: {why}"));
    let mut url = reqwest::Url::parse(inference_url.trim()).map_err(|err| bad(&err.to_string()))?;
    if url.cannot_be_a_base() {
        return Err(bad("not a base URL"));
    }
    let path = join_path(url.path(), path);
    url.set_path(&path);
    let mut pairs: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(key, _)| key != "inference_id")
        .map(|(key, value)| (key.into_owned(), value.into_owned()))
        .collect();
    pairs.push(("inference_id".into(), inference_id.into()));
    pairs.sort_by(|a, b| a.0.cmp(&b.0));
    let query = pairs
        .iter()
        .map(|(key, value)| format!("{}={}", query_escape(key), query_escape(value)))
        .collect::<Vec<_>>()
        .join("&");
    url.set_query(Some(&query));
    Ok(url)
}

/// `path.Join(base, elem)` on an absolute path: `.` and empty segments dropped, `..` applied.
fn join_path(base: &str, elem: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    for segment in base.split('/').chain(elem.split('/')) {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            segment => segments.push(segment),
        }
    }
    format!("/{}", segments.join("/"))
}

/// Go's `url.QueryEscape`: unreserved bytes kept, space as `+`, the rest `%XX` upper case.
fn query_escape(text: &str) -> String {
    const UPPER: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(text.len());
    for &byte in text.as_bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(char::from(byte));
            }
            b' ' => out.push('+'),
            _ => {
                out.push('%');
                out.push(char::from(UPPER[usize::from(byte >> 4)]));
                out.push(char::from(UPPER[usize::from(byte & 0xf)]));
            }
        }
    }
    out
}

/// The executor's 200 answer (upstream `PayloadResponse`). The payloads are raw bytes here and
/// standard base64 on the wire; a missing or `null` payload is empty, as in Go.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayloadResponse {
    /// The inference the payloads belong to.
    #[serde(default)]
    pub inference_id: String,
    /// The prompt payload.
    #[serde(default, with = "go_bytes")]
    pub prompt_payload: Bytes,
    /// The response payload.
    #[serde(default, with = "go_bytes")]
    pub response_payload: Bytes,
    /// Base64 signature of [`executor_signed_bytes`] by the executor or a grantee.
    #[serde(default)]
    pub executor_signature: String,
}

mod go_bytes {
    use super::*;

    pub(super) fn serialize<S: Serializer>(
        bytes: &Bytes,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&encode_base64(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Bytes, D::Error> {
        let text = Option::<String>::deserialize(deserializer)?;
        match text {
            None => Ok(Bytes::new()),
            Some(text) => decode_base64(&text)
                .map(Bytes::from)
                .ok_or_else(|| serde::de::Error::custom("illegal base64 data")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_urls_join_and_clean_the_path_as_go_does() {
        let cases = [
            ("http://h:8080", "http://h:8080/v1/inference/payloads?inference_id=abc"),
            ("http://h:8080/", "http://h:8080/v1/inference/payloads?inference_id=abc"),
            ("http://h/api/", "http://h/api/v1/inference/payloads?inference_id=abc"),
            ("http://h//api//x/../", "http://h/api/v1/inference/payloads?inference_id=abc"),
            ("http://h/?z=1&a=2", "http://h/v1/inference/payloads?a=2&inference_id=abc&z=1"),
            ("http://h/?inference_id=old", "http://h/v1/inference/payloads?inference_id=abc"),
            (" http://h ", "http://h/v1/inference/payloads?inference_id=abc"),
        ];
        for (base, expected) in cases {
            assert_eq!(request_url(base, "abc").unwrap().as_str(), expected, "{base}");
        }
        assert!(request_url("not a url", "abc").is_err());
        assert!(request_url("mailto:x@y", "abc").is_err());
    }

    #[test]
    fn devshard_urls_put_version_and_escrow_in_the_path_and_the_decimal_id_in_the_query() {
        let cases = [
            ("http://h:8080", "http://h:8080/devshard/v4/sessions/42/payloads?inference_id=7"),
            ("http://h/api/", "http://h/api/devshard/v4/sessions/42/payloads?inference_id=7"),
            ("https://h/?z=1", "https://h/devshard/v4/sessions/42/payloads?inference_id=7&z=1"),
        ];
        for (base, expected) in cases {
            assert_eq!(devshard_request_url(base, "v4", "42", 7).unwrap().as_str(), expected);
        }
        let url = devshard_request_url("http://h", "v12", "escrow-1.a_b", u64::MAX).unwrap();
        assert_eq!(url.path(), "/devshard/v12/sessions/escrow-1.a_b/payloads");
        assert_eq!(url.query(), Some("inference_id=18446744073709551615"));
    }

    #[test]
    fn inference_ids_are_query_escaped_as_go_does() {
        let url = request_url("http://h", "a b/c+d~e*f=g&é").unwrap();
        assert_eq!(url.query(), Some("inference_id=a+b%2Fc%2Bd~e%2Af%3Dg%26%C3%A9"));
        assert_eq!(
            url.query_pairs().next().map(|(_, v)| v.into_owned()).as_deref(),
            Some("a b/c+d~e*f=g&é")
        );
    }

    #[test]
    fn signed_bytes_leave_out_zero_epoch_and_timestamp() {
        assert_eq!(
            request_signed_bytes("inf", 7, 1_700_000_000_000_000_001, "gonka1v"),
            b"inf71700000000000000001gonka1v"
        );
        assert_eq!(request_signed_bytes("inf", 0, 12, "a"), b"inf12a");
        assert_eq!(request_signed_bytes("inf", 3, 0, "a"), b"inf3a");
        assert_eq!(signed_bytes("p", 0, -5, "a"), b"pa");
        let bytes = executor_signed_bytes("i", b"", b"abc", "gonka1e");
        let expected = "ie3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\
                        ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015adgonka1e";
        assert_eq!(String::from_utf8(bytes).unwrap(), expected);
    }

    #[test]
    fn payload_fields_are_go_base64() {
        let answer = PayloadResponse {
            inference_id: "i".into(),
            prompt_payload: Bytes::from_static(b"{\"a\":1}"),
            response_payload: Bytes::from_static(b"xy"),
            executor_signature: "sig".into(),
        };
        let json = serde_json::to_string(&answer).unwrap();
        assert_eq!(
            json,
            r#"{"inference_id":"i","prompt_payload":"eyJhIjoxfQ==","response_payload":"eHk=","executor_signature":"sig"}"#
        );
        assert_eq!(serde_json::from_str::<PayloadResponse>(&json).unwrap(), answer);

        let lenient: PayloadResponse =
            serde_json::from_str(r#"{"prompt_payload":"eH\r\nk=","response_payload":null,"x":1}"#)
                .unwrap();
        assert_eq!(lenient.prompt_payload, Bytes::from_static(b"xy"));
        assert!(lenient.response_payload.is_empty());
        // Trailing bits that are not zero decode as in Go; missing padding does not.
        assert_eq!(decode_base64("eHl="), Some(b"xy".to_vec()));
        assert_eq!(decode_base64("eHk"), None);
        assert_eq!(decode_base64("eH!="), None);
        assert!(serde_json::from_str::<PayloadResponse>(r#"{"prompt_payload":"%%"}"#).is_err());
        assert!(serde_json::from_str::<PayloadResponse>(r#"{"prompt_payload":5}"#).is_err());
    }
}
