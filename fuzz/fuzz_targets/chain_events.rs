//! Chain event decoding (`chain_source::events`): websocket frames, `block_results` answers (the
//! JSON-RPC envelope's `result`, or the whole document when it has none) and single attributes,
//! in the CometBFT 0.34 and 0.38 shapes.
//!
//! Properties: no panic; heap growth linear in the input; every decoded event carries the
//! height asked for; a finished-inference event names at least one inference; no decoded
//! attribute is longer than `MAX_ATTRIBUTE_BYTES`.
#![no_main]

use chain_source::events::{
    decode_attribute, decode_block_results, decode_frame, ChainEvent, MAX_ATTRIBUTE_BYTES,
};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use validator_fuzz::bounded;

fuzz_target!(|data: &[u8]| {
    bounded("chain_events", data.len(), || run(data));
});

fn run(data: &[u8]) {
    // Websocket text frames are UTF-8 by the protocol.
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = decode_frame(text);
    }

    let Ok(answer) = serde_json::from_slice::<Value>(data) else { return };
    let result = answer.get("result").unwrap_or(&answer);
    let height = result
        .get("height")
        .and_then(|height| match height {
            Value::String(text) => text.parse().ok(),
            other => other.as_u64(),
        })
        .unwrap_or(1);
    if let Ok(decoded) = decode_block_results(height, result) {
        for event in &decoded.events {
            assert_eq!(event.height(), height);
            match event {
                ChainEvent::InferenceFinished { ids, .. } => {
                    assert!(!ids.is_empty());
                    for id in ids {
                        assert!(id.as_str().len() <= MAX_ATTRIBUTE_BYTES);
                    }
                }
                ChainEvent::RevalidationNeeded { inference_id, .. } => {
                    assert!(inference_id.as_str().len() <= MAX_ATTRIBUTE_BYTES);
                }
                ChainEvent::NewBlock { .. } => panic!("block_results never yields NewBlock"),
            }
        }
    }
    // Mismatched heights are refused, not misattributed.
    if let Ok(decoded) = decode_block_results(height.wrapping_add(1), result) {
        assert!(decoded.events.iter().all(|event| event.height() == height.wrapping_add(1)));
    }

    for attribute in [&answer, result] {
        if let Ok(Some((key, value))) = decode_attribute(attribute) {
            assert!(key == "inference_id" || key == "needs_revalidation");
            assert!(value.len() <= MAX_ATTRIBUTE_BYTES);
        }
    }
}
