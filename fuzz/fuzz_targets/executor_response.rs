//! Executor answers (`chain_source::payloads::verify_response`, what `HttpPayloadSource` does
//! with a 200 body): the answer JSON, the executor's signature and the on-chain hash checks.
//!
//! Each input is used as the raw answer body, then its payloads are served in a correctly signed
//! answer so that the hash checks run on them: the answer's own payloads when the input decodes
//! as one, else the input split at a `0xff` byte into a prompt and a response. It also feeds the
//! signature check arbitrary keys and signatures.
//!
//! Properties: no panic; heap growth linear in the input; a correctly signed answer is accepted
//! exactly when its payloads hash (the inference committing to their own hashes), with the
//! payloads unchanged, and is otherwise a hash mismatch, never another error.
#![no_main]

use std::sync::LazyLock;

use chain_source::{
    payloads::{hash, verify_executor_signature, verify_response, wire},
    Signer,
};
use libfuzzer_sys::fuzz_target;
use validator_core::ports::{
    chain::{Inference, InferenceStatus},
    payload_source::PayloadError,
};
use validator_fuzz::{bounded, split};

const INFERENCE_ID: &str = "fuzz-inference";
const EXECUTOR: &str = "gonka1executor";

static EXECUTOR_KEY: LazyLock<(Signer, Vec<Vec<u8>>)> = LazyLock::new(|| {
    let signer = Signer::from_bytes(&[7; 32]).expect("a valid secret");
    let keys = vec![signer.public_key()];
    (signer, keys)
});

fuzz_target!(|data: &[u8]| {
    let (signer, keys) = &*EXECUTOR_KEY;
    bounded("executor_response", data.len(), || run(data, signer, keys));
});

fn run(data: &[u8], signer: &Signer, keys: &[Vec<u8>]) {
    // The raw body, as read from the executor.
    let _ = verify_response(&inference("", ""), keys, data);

    // The same payloads in a correctly signed answer: only the hashes can refuse it now. Signing
    // is the slow part, so each input is signed once.
    match serde_json::from_slice::<wire::PayloadResponse>(data) {
        Ok(answer) => signed_answer_is_checked_by_hash(
            &answer.prompt_payload,
            &answer.response_payload,
            signer,
            keys,
        ),
        Err(_) => {
            let (prompt, response) = split(data);
            signed_answer_is_checked_by_hash(prompt, response, signer, keys);
        }
    }

    // Arbitrary keys and signatures: an answer either way, never a panic.
    let (key, rest) = data.split_at(data.len().min(33));
    let signature = String::from_utf8_lossy(rest);
    let _ = verify_executor_signature(&[key.to_vec(), rest.to_vec()], data, &signature);
}

fn signed_answer_is_checked_by_hash(
    prompt: &[u8],
    response: &[u8],
    signer: &Signer,
    keys: &[Vec<u8>],
) {
    let message = wire::executor_signed_bytes(INFERENCE_ID, prompt, response, EXECUTOR);
    let answer = wire::PayloadResponse {
        inference_id: INFERENCE_ID.to_owned(),
        prompt_payload: prompt.to_vec().into(),
        response_payload: response.to_vec().into(),
        executor_signature: wire::encode_base64(&signer.sign(&message)),
    };
    let body = serde_json::to_vec(&answer).expect("an answer encodes");
    let prompt_hash = hash::prompt_hash(prompt);
    let response_hash = hash::response_hash(response);
    let hashable = prompt_hash.is_ok() && response_hash.is_ok();
    let committed = inference(
        &prompt_hash.unwrap_or_else(|_| "0".repeat(64)),
        &response_hash.unwrap_or_else(|_| "0".repeat(64)),
    );
    match verify_response(&committed, keys, &body) {
        Ok(payloads) => {
            assert!(hashable, "unhashable payloads were accepted");
            assert_eq!(payloads.prompt, prompt);
            assert_eq!(payloads.response, response);
        }
        Err(PayloadError::HashMismatch(reason)) => {
            assert!(!hashable, "hashable payloads refused: {reason}");
        }
        Err(other) => panic!("a correctly signed answer was refused: {other}"),
    }
}

fn inference(prompt_hash: &str, response_hash: &str) -> Inference {
    Inference {
        inference_id: INFERENCE_ID.into(),
        model: String::new(),
        epoch_id: 1,
        executed_by: EXECUTOR.to_owned(),
        status: InferenceStatus::Finished,
        prompt_hash: prompt_hash.to_owned(),
        response_hash: response_hash.to_owned(),
        prompt_payload: String::new(),
        response_payload: String::new(),
    }
}
