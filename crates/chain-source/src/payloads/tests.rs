use proptest::prelude::*;
use validator_core::{ports::chain::InferenceStatus, testing::payloads_for};

use bytes::Bytes;
use k256::ecdsa::Signature;

use super::*;

const EXECUTOR: &str = "gonka1executor";

fn executor_key() -> Signer {
    Signer::from_bytes(&[3; 32]).unwrap()
}

fn inference(id: &str, prompt: &[u8], response: &[u8]) -> Inference {
    Inference {
        inference_id: id.into(),
        model: "m".into(),
        epoch_id: 4,
        executed_by: EXECUTOR.into(),
        status: InferenceStatus::Finished,
        prompt_hash: hash::prompt_hash(prompt).unwrap(),
        response_hash: hash::response_hash(response).unwrap(),
        prompt_payload: String::new(),
        response_payload: String::new(),
    }
}

fn signed_body(id: &str, prompt: &[u8], response: &[u8], key: &Signer) -> Vec<u8> {
    let message = wire::executor_signed_bytes(id, prompt, response, EXECUTOR);
    let answer = PayloadResponse {
        inference_id: id.into(),
        prompt_payload: Bytes::copy_from_slice(prompt),
        response_payload: Bytes::copy_from_slice(response),
        executor_signature: wire::encode_base64(&key.sign(&message)),
    };
    serde_json::to_vec(&answer).unwrap()
}

#[test]
fn a_valid_answer_verifies_with_any_listed_key() {
    let payloads = payloads_for("a");
    let inference = inference("a", &payloads.prompt, &payloads.response);
    let body = signed_body("a", &payloads.prompt, &payloads.response, &executor_key());
    let other = Signer::from_bytes(&[9; 32]).unwrap().public_key();
    let keys = vec![other.clone(), executor_key().public_key()];
    assert_eq!(verify_response(&inference, &keys, &body).unwrap(), payloads);
    assert_eq!(verify_response(&inference, &[other], &body), Err(PayloadError::BadSignature));
    assert_eq!(verify_response(&inference, &[], &body), Err(PayloadError::BadSignature));
}

#[test]
fn malformed_answers_and_foreign_ids_are_unavailable() {
    let payloads = payloads_for("a");
    let inference = inference("a", &payloads.prompt, &payloads.response);
    let keys = vec![executor_key().public_key()];
    let foreign = signed_body("b", &payloads.prompt, &payloads.response, &executor_key());
    for body in [&b"not json"[..], b"[]", br#"{"prompt_payload":"%%"}"#, &foreign] {
        let result = verify_response(&inference, &keys, body);
        assert!(matches!(result, Err(PayloadError::Unavailable(_))), "{result:?}");
    }
}

#[test]
fn high_s_and_garbled_signatures_are_refused() {
    use k256::elliptic_curve::{ops::Neg, scalar::IsHigh};
    let message = b"m";
    let key = executor_key();
    let low = Signature::from_slice(&key.sign(message)).unwrap();
    let (r, s) = low.split_scalars();
    let high = Signature::from_scalars(r, s.as_ref().neg()).unwrap();
    assert!(bool::from(high.s().is_high()));
    let keys = [key.public_key()];
    assert!(verify_executor_signature(&keys, message, &wire::encode_base64(&low.to_bytes())));
    assert!(!verify_executor_signature(&keys, message, &wire::encode_base64(&high.to_bytes())));
    for garbled in ["", "%%", "AAAA", &wire::encode_base64(&[0; 64])] {
        assert!(!verify_executor_signature(&keys, message, garbled), "{garbled}");
    }
}

/// DOMAIN.md 8.14: an empty on-chain hash skips that check.
#[test]
fn empty_on_chain_hashes_skip_their_check() {
    let payloads = payloads_for("a");
    let mut inference = inference("a", b"{}", b"{}");
    assert!(matches!(
        check_hashes(&inference, &payloads.prompt, &payloads.response),
        Err(PayloadError::HashMismatch(_))
    ));
    inference.prompt_hash.clear();
    assert!(matches!(
        check_hashes(&inference, &payloads.prompt, &payloads.response),
        Err(PayloadError::HashMismatch(message)) if message.starts_with("response")
    ));
    inference.response_hash.clear();
    check_hashes(&inference, &payloads.prompt, &payloads.response).unwrap();
    check_hashes(&inference, b"not json", b"").unwrap();
}

#[test]
fn unhashable_payloads_are_hash_mismatches() {
    let mut inference = inference("a", b"{}", b"{}");
    let result = check_hashes(&inference, b"{broken", b"{}");
    assert!(matches!(result, Err(PayloadError::HashMismatch(m)) if m.contains("cannot be hashed")));
    inference.prompt_hash.clear();
    let result = check_hashes(&inference, b"", b"[1]");
    assert!(matches!(result, Err(PayloadError::HashMismatch(m)) if m.contains("cannot be hashed")));
}

fn streamed_response() -> Vec<u8> {
    let chunk = r#"data: {"choices":[{"delta":{"content":"Hi"},"logprobs":{"content":[{"token":"Hi","logprob":-0.1,"top_logprobs":[]}]}}]}"#;
    serde_json::to_vec(&serde_json::json!({"events": [chunk, "data: [DONE]"]})).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Any single-byte change to a signed answer either fails verification or decodes to exactly
    /// the payloads that were signed (a change Go's decoding also ignores, such as the unused
    /// trailing bits of a base64 quantum): a changed payload is never accepted.
    #[test]
    fn a_changed_byte_never_yields_different_payloads(
        streamed in any::<bool>(),
        index in any::<prop::sample::Index>(),
        xor in 1u8..=255,
    ) {
        let prompt = payloads_for("p").prompt;
        let response = if streamed { Bytes::from(streamed_response()) } else { payloads_for("p").response };
        let inference = inference("p", &prompt, &response);
        let keys = vec![executor_key().public_key()];
        let mut body = signed_body("p", &prompt, &response, &executor_key());
        let position = index.index(body.len());
        body[position] ^= xor;
        if let Ok(payloads) = verify_response(&inference, &keys, &body) {
            prop_assert_eq!(payloads.prompt, prompt);
            prop_assert_eq!(payloads.response, response);
        }
    }

    /// Any single-byte change to either served payload fails: with the executor's original
    /// signature as a bad signature, re-signed by the executor as a hash mismatch (the response
    /// hash covers every byte; a prompt change that canonicalisation erases is no change).
    #[test]
    fn a_changed_payload_byte_fails_verification(
        in_prompt in any::<bool>(),
        index in any::<prop::sample::Index>(),
        xor in 1u8..=255,
    ) {
        let original = payloads_for("p");
        let inference = inference("p", &original.prompt, &original.response);
        let keys = vec![executor_key().public_key()];
        let (mut prompt, mut response) = (original.prompt.to_vec(), original.response.to_vec());
        let target = if in_prompt { &mut prompt } else { &mut response };
        let position = index.index(target.len());
        target[position] ^= xor;

        let message = wire::executor_signed_bytes("p", &original.prompt, &original.response, EXECUTOR);
        let stale = PayloadResponse {
            inference_id: "p".into(),
            prompt_payload: Bytes::from(prompt.clone()),
            response_payload: Bytes::from(response.clone()),
            executor_signature: wire::encode_base64(&executor_key().sign(&message)),
        };
        let body = serde_json::to_vec(&stale).unwrap();
        prop_assert_eq!(verify_response(&inference, &keys, &body), Err(PayloadError::BadSignature));

        let resigned = signed_body("p", &prompt, &response, &executor_key());
        match verify_response(&inference, &keys, &resigned) {
            Err(PayloadError::HashMismatch(_)) => {}
            Ok(_) => prop_assert!(
                in_prompt && hash::canonical_json(&prompt).ok() == hash::canonical_json(&original.prompt).ok(),
                "a changed payload was accepted"
            ),
            other => prop_assert!(false, "unexpected {:?}", other),
        }
    }
}
