//! Decoding of CometBFT's JSON: the websocket's `NewBlock` notifications and `block_results`,
//! flattened into [`ChainEvent`]s (DOMAIN.md 3.1-3.3, 6.5).
//!
//! `block_results` carries the events of each transaction (`txs_results[i].events`) and, since
//! CometBFT 0.38, the block's own (`finalize_block_events`; `begin_block_events` and
//! `end_block_events` before). Attribute keys and values are plain strings since 0.37 and base64
//! before; both are accepted, per attribute.

use base64::Engine as _;
use serde_json::Value;
use validator_core::ports::chain::InferenceId;

use super::ChainEvent;
use crate::{rpc::height_field, Error, Result};

/// The websocket event type of a new block.
pub const NEW_BLOCK_EVENT: &str = "tendermint/event/NewBlock";

/// Longest attribute key or value accepted, in bytes; inference ids and addresses are far
/// shorter, and a longer one is a malformed or hostile answer.
pub const MAX_ATTRIBUTE_BYTES: usize = 4096;

/// Event type of a finished inference.
const INFERENCE_FINISHED: &str = "inference_finished";
/// Event type of a validation.
const INFERENCE_VALIDATION: &str = "inference_validation";
/// The attribute keys read; any other attribute is skipped undecoded.
const KEYS: [&str; 2] = ["inference_id", "needs_revalidation"];

/// What one websocket frame says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A new block at this height.
    NewBlock(u64),
    /// The answer to the subscription, or a notification of another kind.
    Other,
}

/// Decodes one websocket text frame.
pub fn decode_frame(text: &str) -> Result<Frame> {
    let message: Value = serde_json::from_str(text)
        .map_err(|err| Error::Decode(format!("websocket frame is not JSON: {err}")))?;
    if let Some(error) = message.get("error").filter(|error| !error.is_null()) {
        return Err(Error::Rpc(error.to_string()));
    }
    let data = message.get("result").and_then(|result| result.get("data"));
    let Some(data) = data else { return Ok(Frame::Other) };
    if data.get("type").and_then(Value::as_str) != Some(NEW_BLOCK_EVENT) {
        return Ok(Frame::Other);
    }
    let header = data
        .get("value")
        .and_then(|value| value.get("block"))
        .and_then(|block| block.get("header"))
        .ok_or_else(|| Error::Decode("NewBlock without block.header".into()))?;
    Ok(Frame::NewBlock(height_field(header, "height")?))
}

/// The events of one `block_results` answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockEvents {
    /// The events, in transaction order, then the block's own.
    pub events: Vec<ChainEvent>,
    /// Attributes or events that could not be decoded and were skipped.
    pub rejected: Vec<Error>,
}

/// Flattens `block_results` of `height` into events. Failed transactions (non-zero code) are
/// skipped: the chain discards their message events. A block that is not `block_results` at all
/// is an error (the height is fetched again); a transaction or a group of the block's own
/// events that is malformed is skipped and listed in `rejected`, so one bad entry never stops
/// the source at that height.
pub fn decode_block_results(height: u64, result: &Value) -> Result<BlockEvents> {
    if !result.is_object() {
        return Err(Error::Decode("block_results is not an object".into()));
    }
    if let Ok(answered) = height_field(result, "height") {
        if answered != height {
            return Err(Error::Decode(format!("block_results of {answered}, asked for {height}")));
        }
    }
    let mut decoded = BlockEvents::default();
    let mut refused = false;
    for tx in list(result, "txs_results")? {
        let code = tx.get("code").and_then(Value::as_u64).unwrap_or(0);
        if code != 0 {
            let codespace = tx.get("codespace").and_then(Value::as_str).unwrap_or("");
            refused |= code == u64::from(crate::tx::CODE_DEPRECATED)
                && codespace == crate::tx::CODESPACE_INFERENCE;
            continue;
        }
        match list(tx, "events") {
            Ok(events) => decode_group(height, events, &mut decoded),
            Err(err) => decoded.rejected.push(err),
        }
    }
    if refused {
        decoded.events.push(ChainEvent::ClassicRefused { height });
    }
    for field in ["finalize_block_events", "begin_block_events", "end_block_events"] {
        match list(result, field) {
            Ok(events) => decode_group(height, events, &mut decoded),
            Err(err) => decoded.rejected.push(err),
        }
    }
    Ok(decoded)
}

fn list<'a>(value: &'a Value, field: &str) -> Result<&'a [Value]> {
    match value.get(field) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(items)) => Ok(items),
        Some(_) => Err(Error::Decode(format!("{field} is not a list"))),
    }
}

/// One transaction's (or the block's) events: all finished ids of the group in one event, and
/// one revalidation per `inference_validation` event that asks for it.
fn decode_group(height: u64, events: &[Value], decoded: &mut BlockEvents) {
    let mut finished = Vec::new();
    let mut revalidations = Vec::new();
    for event in events {
        let kind = event.get("type").and_then(Value::as_str).unwrap_or("");
        if kind != INFERENCE_FINISHED && kind != INFERENCE_VALIDATION {
            continue;
        }
        let attributes = match list(event, "attributes") {
            Ok(attributes) => attributes,
            Err(err) => {
                decoded.rejected.push(err);
                continue;
            }
        };
        let mut id = None;
        let mut needs_revalidation = false;
        for attribute in attributes {
            match decode_attribute(attribute) {
                Ok(Some((key, value))) if key == "inference_id" => id = Some(value),
                Ok(Some((key, value))) if key == "needs_revalidation" => {
                    needs_revalidation = value == "true";
                }
                Ok(_) => {}
                Err(err) => decoded.rejected.push(err),
            }
        }
        match (kind, id) {
            (INFERENCE_FINISHED, Some(id)) => finished.push(InferenceId::from(id)),
            (INFERENCE_VALIDATION, Some(id)) if needs_revalidation => {
                revalidations
                    .push(ChainEvent::RevalidationNeeded { inference_id: id.into(), height });
            }
            (_, None) => {
                decoded.rejected.push(Error::Decode(format!("{kind} without inference_id")))
            }
            _ => {}
        }
    }
    if !finished.is_empty() {
        decoded.events.push(ChainEvent::InferenceFinished { ids: finished, height });
    }
    decoded.events.extend(revalidations);
}

/// One attribute as `(key, value)` when its key is one the adapter reads, plain or base64;
/// `None` for other keys.
pub fn decode_attribute(attribute: &Value) -> Result<Option<(String, String)>> {
    let key = attribute.get("key").and_then(Value::as_str).unwrap_or("");
    let value = match attribute.get("value") {
        None | Some(Value::Null) => "",
        Some(Value::String(value)) => value.as_str(),
        Some(_) => return Err(Error::Decode("attribute value is not a string".into())),
    };
    if key.len() > MAX_ATTRIBUTE_BYTES || value.len() > MAX_ATTRIBUTE_BYTES {
        return Err(Error::TooLarge { limit: MAX_ATTRIBUTE_BYTES as u64 });
    }
    if KEYS.contains(&key) {
        return Ok(Some((key.to_owned(), value.to_owned())));
    }
    let Some(decoded_key) = from_base64(key) else { return Ok(None) };
    if !KEYS.contains(&decoded_key.as_str()) {
        return Ok(None);
    }
    let decoded_value = from_base64(value).ok_or_else(|| {
        Error::Decode(format!("attribute {decoded_key} has a key in base64 but not its value"))
    })?;
    Ok(Some((decoded_key, decoded_value)))
}

fn from_base64(text: &str) -> Option<String> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(text).ok()?;
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn attributes_decode_plain_or_base64() {
        let plain = json!({"key": "inference_id", "value": "abc", "index": true});
        assert_eq!(decode_attribute(&plain).unwrap(), Some(("inference_id".into(), "abc".into())));
        let encoded = json!({"key": "aW5mZXJlbmNlX2lk", "value": "YWJj"});
        assert_eq!(
            decode_attribute(&encoded).unwrap(),
            Some(("inference_id".into(), "abc".into()))
        );
        assert_eq!(decode_attribute(&json!({"key": "other", "value": "x"})).unwrap(), None);
        let broken = json!({"key": "aW5mZXJlbmNlX2lk", "value": "!!"});
        assert!(matches!(decode_attribute(&broken), Err(Error::Decode(_))));
        let long = json!({"key": "inference_id", "value": "x".repeat(MAX_ATTRIBUTE_BYTES + 1)});
        assert!(matches!(decode_attribute(&long), Err(Error::TooLarge { .. })));
        assert!(matches!(
            decode_attribute(&json!({"key": "inference_id", "value": 5})),
            Err(Error::Decode(_))
        ));
    }

    #[test]
    fn frames_other_than_new_block_are_ignored() {
        assert_eq!(
            decode_frame(r#"{"jsonrpc":"2.0","id":"1","result":{}}"#).unwrap(),
            Frame::Other
        );
        assert!(matches!(decode_frame("nope"), Err(Error::Decode(_))));
        assert!(matches!(decode_frame(r#"{"error":{"code":-32600}}"#), Err(Error::Rpc(_))));
        let headless = r#"{"result":{"data":{"type":"tendermint/event/NewBlock","value":{}}}}"#;
        assert!(matches!(decode_frame(headless), Err(Error::Decode(_))));
    }

    #[test]
    fn malformed_block_results_are_errors() {
        assert!(decode_block_results(1, &json!([])).is_err());
        assert!(decode_block_results(1, &json!({"txs_results": 5})).is_err());
        assert!(decode_block_results(2, &json!({"height": "3"})).is_err());
        let empty = decode_block_results(1, &json!({"height": "1", "txs_results": null})).unwrap();
        assert_eq!(empty, BlockEvents::default());
    }

    #[test]
    fn a_transaction_refused_with_1161_is_reported_once_per_block() {
        let deprecated = json!({"code": 1161, "codespace": "inference", "events": []});
        let other = json!({"code": 1161, "codespace": "bank", "events": []});
        let result = json!({"height": "9", "txs_results": [deprecated.clone(), other, deprecated]});
        let decoded = decode_block_results(9, &result).unwrap();
        assert_eq!(decoded.events, [ChainEvent::ClassicRefused { height: 9 }]);
        let result =
            json!({"height": "9", "txs_results": [{"code": 1143, "codespace": "inference"}]});
        assert!(decode_block_results(9, &result).unwrap().events.is_empty());
    }

    #[test]
    fn a_malformed_transaction_is_skipped_not_the_block() {
        let finished = json!({"type": "inference_finished",
            "attributes": [{"key": "inference_id", "value": "kept"}]});
        let result = json!({"height": "4", "txs_results": [
            {"code": 0, "events": "not a list"},
            {"code": 0, "events": [finished]},
        ], "finalize_block_events": 7});
        let decoded = decode_block_results(4, &result).unwrap();
        assert_eq!(
            decoded.events,
            [ChainEvent::InferenceFinished { ids: vec!["kept".into()], height: 4 }]
        );
        assert_eq!(decoded.rejected.len(), 2, "{:?}", decoded.rejected);
    }
}
