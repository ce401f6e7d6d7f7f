//! The fake's REST gateway: the `inference` module's routes and the auth module's account
//! route, answered from the scripted state in the gateway's JSON shapes.

use base64::Engine as _;
use serde_json::{json, Value};
use validator_core::ports::chain::{EpochGroup, Inference, InferenceStatus};

use super::State;

const PREFIX: [&str; 3] = ["productscience", "inference", "inference"];

/// The answer to `GET path?query`: a status and a JSON body.
pub(super) fn get(state: &State, segments: &[String], query: &[(String, String)]) -> (u16, Value) {
    let param =
        |name: &str| query.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str());
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    if let ["cosmos", "auth", "v1beta1", "accounts", address] = segments.as_slice() {
        return match state.accounts.get(*address) {
            Some(account) => ok(json!({"account": {
                "@type": "/cosmos.auth.v1beta1.BaseAccount",
                "address": address,
                "pub_key": null,
                "account_number": account.number.to_string(),
                "sequence": account.sequence.to_string(),
            }})),
            None => not_found(&format!("account {address} not found")),
        };
    }
    let Some(route) = segments.strip_prefix(PREFIX.as_slice()) else {
        return not_found("no route");
    };
    if let Some(&status) = route.first().and_then(|first| state.failing_routes.get(*first)) {
        return (status, json!({"code": 12, "message": "Not Implemented", "details": []}));
    }
    match route {
        ["inference", id] => match state.inferences.get(*id) {
            Some(inference) => ok(json!({"inference": inference_json(inference)})),
            None => not_found("inference not found"),
        },
        ["inference"] => {
            let limit =
                param("pagination.limit").and_then(|limit| limit.parse().ok()).unwrap_or(100usize);
            let start = param("pagination.key")
                .and_then(|key| base64::engine::general_purpose::STANDARD.decode(key).ok())
                .and_then(|key| String::from_utf8(key).ok())
                .unwrap_or_default();
            let mut page: Vec<&Inference> = state
                .inferences
                .range(start..)
                .map(|(_, inference)| inference)
                .take(limit + 1)
                .collect();
            let next_key = (page.len() > limit).then(|| page.pop()).flatten().map(|next| {
                base64::engine::general_purpose::STANDARD.encode(next.inference_id.as_str())
            });
            ok(json!({
                "inference": page.into_iter().map(inference_json).collect::<Vec<_>>(),
                "pagination": {"next_key": next_key, "total": "0"},
            }))
        }
        ["get_inference_validation_parameters", ids, _requester] => {
            let details: Vec<Value> = ids
                .split(',')
                .filter_map(|id| state.details.get(id))
                .map(|details| {
                    json!({
                        "epoch_id": details.epoch_id.to_string(),
                        "inference_id": details.inference_id.as_str(),
                        "executor_id": details.executor_id,
                        "executor_reputation": details.executor_reputation,
                        "traffic_basis": details.traffic_basis.to_string(),
                        "executor_power": details.executor_power.to_string(),
                        "model": details.model,
                        "total_power": details.total_power.to_string(),
                        "created_at_block_height": details.created_at_block_height.to_string(),
                    })
                })
                .collect();
            let powers: Vec<Value> = state
                .validator_powers
                .iter()
                .map(|power| json!({"power": power.power.to_string(), "epoch_index": power.epoch_index.to_string()}))
                .collect();
            ok(json!({
                "validator_powers": powers,
                "current_height": state.tip.to_string(),
                "details": details,
                "parameters": {
                    "min_validation_average": {"value": "1", "exponent": -2},
                    "max_validation_average": {"value": "1", "exponent": 0},
                    "min_validation_halfway": {"value": "5", "exponent": -2},
                    "full_validation_traffic_cutoff": "10000",
                    "min_validation_traffic_cutoff": "100",
                },
            }))
        }
        ["epoch_group_validations", participant, epoch] => {
            let epoch: u64 = epoch.parse().unwrap_or(u64::MAX);
            match state.validated.get(&((*participant).to_owned(), epoch)) {
                Some(ids) => ok(json!({"epoch_group_validations": {
                    "participant": participant,
                    "pocStartBlockHeight": "0",
                    "validatedInferences": ids.iter().collect::<Vec<_>>(),
                }})),
                None => not_found("epoch group validations not found"),
            }
        }
        ["epoch_group_data", epoch] => {
            let epoch: u64 = epoch.parse().unwrap_or(u64::MAX);
            let model = param("model_id").unwrap_or("").to_owned();
            match state.groups.get(&(epoch, model)) {
                Some(group) => ok(json!({"epoch_group_data": group_json(group)})),
                None => not_found("epoch group data not found"),
            }
        }
        ["current_epoch_group_data"] => {
            match state.groups.get(&(state.epoch.index, String::new())) {
                Some(group) => ok(json!({"epoch_group_data": group_json(group)})),
                None => not_found("current epoch group not found"),
            }
        }
        ["participant", address] => match state.participants.get(*address) {
            Some(url) => ok(
                json!({"participant": {"index": address, "address": address, "inference_url": url}}),
            ),
            None => not_found("participant not found"),
        },
        ["inference_participant", address] => match state.accounts.get(*address) {
            Some(account) if !account.public_key.is_empty() => ok(json!({
                "pubkey": base64::engine::general_purpose::STANDARD.encode(&account.public_key),
                "balance": "0",
                "denom": "ngonka",
            })),
            _ => not_found("account has no public key"),
        },
        ["grantees_by_message_type", granter, type_url] => {
            let grantees: Vec<Value> = state
                .grants
                .iter()
                .filter(|(from, _, url)| from == granter && url == type_url)
                .map(|(_, grantee, _)| {
                    let key = state.accounts.get(grantee).map(|account| account.public_key.clone()).unwrap_or_default();
                    json!({"address": grantee, "pub_key": base64::engine::general_purpose::STANDARD.encode(key)})
                })
                .collect();
            ok(json!({"grantees": grantees}))
        }
        ["settle_amount", participant] => match state.settle_amounts.get(*participant) {
            Some(amount) => ok(json!({"settle_amount": {
                "participant": participant,
                "reward_coins": amount.reward_coins.to_string(),
                "work_coins": amount.work_coins.to_string(),
                "epoch_index": amount.epoch_index.to_string(),
                "seed_signature": "",
                "last_claim_attempt": "0",
            }})),
            None => not_found("settle amount not found"),
        },
        ["epoch_info"] => ok(json!({
            "block_height": state.tip.to_string(),
            "params": {"epoch_params": state.epoch.params},
            "latest_epoch": {
                "index": state.epoch.index.to_string(),
                "poc_start_block_height": state.epoch.poc_start_block_height.to_string(),
                "effective_block_height": "0",
            },
            "is_confirmation_poc_active": false,
        })),
        _ => not_found("no route"),
    }
}

fn ok(body: Value) -> (u16, Value) {
    (200, body)
}

fn not_found(message: &str) -> (u16, Value) {
    (404, json!({"code": 5, "message": message, "details": []}))
}

fn inference_json(inference: &Inference) -> Value {
    let status = match inference.status {
        InferenceStatus::Started => "STARTED",
        InferenceStatus::Finished => "FINISHED",
        InferenceStatus::Validated => "VALIDATED",
        InferenceStatus::Invalidated => "INVALIDATED",
        InferenceStatus::Voting => "VOTING",
        InferenceStatus::Expired => "EXPIRED",
    };
    json!({
        "index": inference.inference_id.as_str(),
        "inference_id": inference.inference_id.as_str(),
        "prompt_hash": inference.prompt_hash,
        "prompt_payload": inference.prompt_payload,
        "response_hash": inference.response_hash,
        "response_payload": inference.response_payload,
        "executed_by": inference.executed_by,
        "status": status,
        "model": inference.model,
        "epoch_id": inference.epoch_id.to_string(),
        "validated_by": [],
    })
}

fn group_json(group: &EpochGroup) -> Value {
    json!({
        "epoch_index": group.epoch_index.to_string(),
        "model_id": group.model,
        "sub_group_models": group.sub_group_models,
        "validation_weights": group
            .validation_weights
            .iter()
            .map(|member| json!({"member_address": member, "weight": "1", "reputation": 0}))
            .collect::<Vec<_>>(),
        "model_snapshot": if group.has_model_snapshot { json!({"id": group.model}) } else { Value::Null },
    })
}
