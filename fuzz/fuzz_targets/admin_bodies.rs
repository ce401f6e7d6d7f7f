//! Admin request bodies (`validator_bin::admin::parse_body`): the optional bodies of
//! `POST /admin/v1/recovery` and `POST /admin/v1/claim-reward/recover`.
//!
//! Properties: no panic; heap growth linear in the input; an empty or all-whitespace body is the
//! default request; a decoded request reads back the same from its own fields; a recovery body
//! with a field outside `epoch_index` and `seed` is refused.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};
use validator_bin::admin::{parse_body, ApiError, ClaimRequest, RecoveryRequest};
use validator_fuzz::bounded;

fuzz_target!(|data: &[u8]| {
    bounded("admin_bodies", data.len(), || run(data));
});

fn run(data: &[u8]) {
    let blank = data.iter().all(u8::is_ascii_whitespace);

    let recovery = parse_body::<RecoveryRequest>(data);
    match &recovery {
        Ok(request) => {
            if blank {
                assert_eq!(request, &RecoveryRequest::default());
            }
            let again = json!({"epoch_index": request.epoch_index, "seed": request.seed});
            assert_eq!(
                parse_body::<RecoveryRequest>(again.to_string().as_bytes()).ok().as_ref(),
                Some(request)
            );
        }
        Err(ApiError::BadRequest(_)) => assert!(!blank),
        Err(other) => panic!("a body is the caller's mistake, not {other:?}"),
    }
    if let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(data) {
        if fields.keys().any(|key| key != "epoch_index" && key != "seed") {
            assert!(recovery.is_err(), "unknown field accepted: {fields:?}");
        }
    }

    match parse_body::<ClaimRequest>(data) {
        Ok(request) => {
            if blank {
                assert_eq!(request, ClaimRequest::default());
            }
            let again = json!({
                "seed": request.seed,
                "force_claim": request.force_claim,
                "epoch_index": request.epoch_index,
            });
            assert_eq!(
                parse_body::<ClaimRequest>(again.to_string().as_bytes()).ok(),
                Some(request)
            );
        }
        Err(ApiError::BadRequest(_)) => assert!(!blank),
        Err(other) => panic!("a body is the caller's mistake, not {other:?}"),
    }
}
