//! Payload decoding and hashing (`chain_source::payloads::{wire, hash}`): Go-compatible base64,
//! the executor's answer JSON, the prompt canonicalisation and both commitments, and the request
//! URL built from an on-chain `inference_url`.
//!
//! Properties: no panic; heap growth linear in the input; base64 and the answer JSON round-trip;
//! canonical JSON is a fixed point and the prompt hash is its SHA-256; a committed hash always
//! matches its own payloads.
#![no_main]

use chain_source::payloads::{check_hashes, guard::Guard, hash, wire};
use libfuzzer_sys::fuzz_target;
use validator_core::ports::chain::{Inference, InferenceStatus};
use validator_fuzz::{bounded, split};

fuzz_target!(|data: &[u8]| {
    bounded("payload_decode", data.len(), || run(data));
});

fn run(data: &[u8]) {
    let text = String::from_utf8_lossy(data);

    // Base64 as Go reads `[]byte`: whatever decodes re-encodes to something that decodes alike.
    if let Some(decoded) = wire::decode_base64(&text) {
        assert_eq!(wire::decode_base64(&wire::encode_base64(&decoded)), Some(decoded));
    }
    assert_eq!(wire::decode_base64(&wire::encode_base64(data)).as_deref(), Some(data));

    // The executor's answer round-trips through its own encoding.
    if let Ok(answer) = serde_json::from_slice::<wire::PayloadResponse>(data) {
        let json = serde_json::to_vec(&answer).expect("an answer encodes");
        let again: wire::PayloadResponse = serde_json::from_slice(&json).expect("and decodes");
        assert_eq!(again, answer);
    }

    // Canonical JSON is a fixed point, and the prompt commitment is its hash.
    match hash::canonical_json(data) {
        Ok(canonical) => {
            assert!(canonical.ends_with('\n'));
            assert_eq!(hash::canonical_json(canonical.as_bytes()).as_deref(), Ok(&*canonical));
            assert_eq!(hash::prompt_hash(data), Ok(hash::sha256_hex(canonical.as_bytes())));
        }
        Err(_) => assert!(hash::prompt_hash(data).is_err()),
    }
    if let Ok(hex) = hash::response_hash(data) {
        assert_eq!(hex.len(), 64);
        assert!(hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    }

    // Two payloads against their own commitments: whatever hashes, matches.
    let (prompt, response) = split(data);
    let inference = Inference {
        inference_id: "fuzz".into(),
        model: String::new(),
        epoch_id: 1,
        executed_by: "gonka1executor".into(),
        status: InferenceStatus::Finished,
        prompt_hash: hash::prompt_hash(prompt).unwrap_or_else(|_| "0".repeat(64)),
        response_hash: hash::response_hash(response).unwrap_or_else(|_| "0".repeat(64)),
        prompt_payload: String::new(),
        response_payload: String::new(),
    };
    let hashable = hash::prompt_hash(prompt).is_ok() && hash::response_hash(response).is_ok();
    assert_eq!(check_hashes(&inference, prompt, response).is_ok(), hashable);
    let _ = wire::executor_signed_bytes("fuzz", prompt, response, "gonka1executor");

    // The request URL from a chain-supplied base, and the address guard on it.
    let (base, id) = split(data);
    if let Ok(url) = wire::request_url(&String::from_utf8_lossy(base), &String::from_utf8_lossy(id))
    {
        assert!(url.path().ends_with(wire::PAYLOADS_PATH));
        let guard = Guard::new::<&str>(&[]).expect("an empty allow-list is valid");
        let _ = guard.check_url(&url);
    }
}
