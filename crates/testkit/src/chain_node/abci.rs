//! The fake's `abci_query`: the `inference` module's gRPC queries and the auth module's account
//! query, protobuf in and out, answered from the scripted state as the SDK's query router does
//! (a gRPC `NotFound` becomes the SDK's `ErrKeyNotFound`, code 38).

use base64::Engine as _;
use chain_source::query::proto;
use cosmrs::proto::cosmos::{
    auth::v1beta1::{BaseAccount, QueryAccountRequest, QueryAccountResponse},
    base::query::v1beta1::PageResponse,
};
use prost::Message;
use serde_json::{json, Value};
use validator_core::ports::chain::{EpochGroup, Inference, InferenceStatus};

use super::State;

/// ABCI code of the SDK's `ErrKeyNotFound`.
const KEY_NOT_FOUND: u32 = 38;
/// ABCI code of the SDK's `ErrUnknownRequest`.
const UNKNOWN_REQUEST: u32 = 6;
/// ABCI code of the SDK's `ErrInvalidRequest`.
const INVALID_REQUEST: u32 = 18;

/// The `abci_query` result for `params` (`path`, hex `data`).
pub(super) fn query(state: &State, params: &Value) -> Value {
    let path = params.get("path").and_then(Value::as_str).unwrap_or("");
    let data = params.get("data").and_then(Value::as_str).and_then(chain_source::hex::decode);
    let answer = match data {
        Some(data) => answer(state, path, &data),
        None => Err((INVALID_REQUEST, "data is not hex".to_owned())),
    };
    let (code, log, value) = match answer {
        Ok(value) => (0, String::new(), base64::engine::general_purpose::STANDARD.encode(value)),
        Err((code, log)) => (code, log, String::new()),
    };
    json!({"response": {
        "code": code, "log": log, "info": "", "index": "0", "key": null,
        "value": if value.is_empty() { Value::Null } else { Value::String(value) },
        "proofOps": null, "height": state.tip.to_string(),
        "codespace": if code == 0 { "" } else { "sdk" },
    }})
}

type Answer = Result<Vec<u8>, (u32, String)>;

fn answer(state: &State, path: &str, data: &[u8]) -> Answer {
    let method = path.rsplit('/').next().unwrap_or("");
    if let Some(&code) = state.failing_queries.get(method) {
        return Err((code, format!("{method}: refused by the scripted fault")));
    }
    match path {
        proto::INFERENCE => {
            let request: proto::QueryGetInferenceRequest = decode(data)?;
            let inference = state.inferences.get(&request.index).ok_or_else(not_found)?;
            encode(&proto::QueryGetInferenceResponse {
                inference: Some(inference_proto(inference)),
            })
        }
        proto::INFERENCE_ALL => {
            let request: proto::QueryAllInferenceRequest = decode(data)?;
            let page = request.pagination.unwrap_or_default();
            let limit = usize::try_from(page.limit).unwrap_or(usize::MAX).clamp(1, 1000);
            let start = String::from_utf8(page.key).unwrap_or_default();
            let mut inferences: Vec<&Inference> = state
                .inferences
                .range(start..)
                .map(|(_, inference)| inference)
                .take(limit + 1)
                .collect();
            let next_key = if inferences.len() > limit {
                inferences.pop().map(|next| next.inference_id.as_str().as_bytes().to_vec())
            } else {
                None
            };
            encode(&proto::QueryAllInferenceResponse {
                inference: inferences.into_iter().map(inference_proto).collect(),
                pagination: Some(PageResponse { next_key: next_key.unwrap_or_default(), total: 0 }),
            })
        }
        proto::GET_INFERENCE_VALIDATION_PARAMETERS => {
            let request: proto::QueryGetInferenceValidationParametersRequest = decode(data)?;
            let details = request
                .ids
                .iter()
                .filter_map(|id| state.details.get(id))
                .map(|details| proto::InferenceValidationDetails {
                    epoch_id: details.epoch_id,
                    inference_id: details.inference_id.as_str().to_owned(),
                    executor_id: details.executor_id.clone(),
                    executor_reputation: details.executor_reputation,
                    traffic_basis: details.traffic_basis,
                    executor_power: details.executor_power,
                    model: details.model.clone(),
                    total_power: details.total_power,
                    created_at_block_height: details.created_at_block_height,
                })
                .collect();
            encode(&proto::QueryGetInferenceValidationParametersResponse {
                validator_powers: state
                    .validator_powers
                    .iter()
                    .map(|power| proto::ValidatorPower {
                        power: power.power,
                        epoch_index: power.epoch_index,
                    })
                    .collect(),
                current_height: state.tip,
                details,
                parameters: Some(validation_params(state)),
            })
        }
        proto::EPOCH_GROUP_VALIDATIONS => {
            let request: proto::QueryGetEpochGroupValidationsRequest = decode(data)?;
            let ids = state
                .validated
                .get(&(request.participant.clone(), request.epoch_index))
                .ok_or_else(not_found)?;
            encode(&proto::QueryGetEpochGroupValidationsResponse {
                epoch_group_validations: Some(proto::EpochGroupValidations {
                    participant: request.participant,
                    epoch_index: request.epoch_index,
                    validated_inferences: ids.iter().cloned().collect(),
                }),
            })
        }
        proto::EPOCH_GROUP_DATA => {
            let request: proto::QueryGetEpochGroupDataRequest = decode(data)?;
            let group =
                state.groups.get(&(request.epoch_index, request.model_id)).ok_or_else(not_found)?;
            encode(&proto::QueryGetEpochGroupDataResponse {
                epoch_group_data: Some(group_proto(group)),
            })
        }
        proto::CURRENT_EPOCH_GROUP_DATA => {
            let group =
                state.groups.get(&(state.epoch.index, String::new())).ok_or_else(not_found)?;
            encode(&proto::QueryCurrentEpochGroupDataResponse {
                epoch_group_data: Some(group_proto(group)),
            })
        }
        proto::PARTICIPANT => {
            let request: proto::QueryGetParticipantRequest = decode(data)?;
            let url = state.participants.get(&request.index).ok_or_else(not_found)?;
            encode(&proto::QueryGetParticipantResponse {
                participant: Some(proto::Participant {
                    index: request.index.clone(),
                    address: request.index,
                    inference_url: url.clone(),
                }),
            })
        }
        proto::ACCOUNT_BY_ADDRESS => {
            let request: proto::QueryAccountByAddressRequest = decode(data)?;
            let account = state
                .accounts
                .get(&request.address)
                .filter(|account| !account.public_key.is_empty())
                .ok_or_else(not_found)?;
            encode(&proto::QueryAccountByAddressResponse {
                pubkey: base64::engine::general_purpose::STANDARD.encode(&account.public_key),
            })
        }
        proto::GRANTEES_BY_MESSAGE_TYPE => {
            let request: proto::QueryGranteesByMessageTypeRequest = decode(data)?;
            let grantees = state
                .grants
                .iter()
                .filter(|(granter, _, url)| {
                    *granter == request.granter_address && *url == request.message_type_url
                })
                .map(|(_, grantee, _)| proto::Grantee {
                    address: grantee.clone(),
                    pub_key: state
                        .accounts
                        .get(grantee)
                        .map(|account| {
                            base64::engine::general_purpose::STANDARD.encode(&account.public_key)
                        })
                        .unwrap_or_default(),
                })
                .collect();
            encode(&proto::QueryGranteesByMessageTypeResponse { grantees })
        }
        proto::SETTLE_AMOUNT => {
            let request: proto::QueryGetSettleAmountRequest = decode(data)?;
            let amount = state.settle_amounts.get(&request.participant).ok_or_else(not_found)?;
            encode(&proto::QueryGetSettleAmountResponse {
                settle_amount: Some(proto::SettleAmount {
                    participant: request.participant,
                    reward_coins: amount.reward_coins,
                    work_coins: amount.work_coins,
                    epoch_index: amount.epoch_index,
                }),
            })
        }
        proto::EPOCH_INFO => encode(&proto::QueryEpochInfoResponse {
            block_height: i64::try_from(state.tip).unwrap_or(i64::MAX),
            params: Some(proto::Params {
                epoch_params: Some(state.epoch.params.into()),
                validation_params: Some(validation_params(state)),
            }),
            latest_epoch: Some(proto::Epoch {
                index: state.epoch.index,
                poc_start_block_height: state.epoch.poc_start_block_height,
            }),
        }),
        proto::PARAMS => encode(&proto::QueryParamsResponse {
            params: Some(proto::Params {
                epoch_params: Some(state.epoch.params.into()),
                validation_params: Some(validation_params(state)),
            }),
        }),
        proto::AUTH_ACCOUNT => {
            let request: QueryAccountRequest = decode(data)?;
            let account = state.accounts.get(&request.address).ok_or_else(not_found)?;
            let base = BaseAccount {
                address: request.address,
                pub_key: None,
                account_number: account.number,
                sequence: account.sequence,
            };
            encode(&QueryAccountResponse {
                account: Some(cosmrs::Any {
                    type_url: "/cosmos.auth.v1beta1.BaseAccount".into(),
                    value: base.encode_to_vec(),
                }),
            })
        }
        other => Err((UNKNOWN_REQUEST, format!("unknown query path {other}"))),
    }
}

fn decode<M: Message + Default>(data: &[u8]) -> Result<M, (u32, String)> {
    M::decode(data).map_err(|err| (INVALID_REQUEST, format!("bad request: {err}")))
}

#[allow(clippy::unnecessary_wraps)]
fn encode(message: &impl Message) -> Answer {
    Ok(message.encode_to_vec())
}

fn not_found() -> (u32, String) {
    (KEY_NOT_FOUND, "rpc error: code = NotFound desc = not found: key not found".into())
}

fn inference_proto(inference: &Inference) -> proto::Inference {
    let status = match inference.status {
        InferenceStatus::Started => 0,
        InferenceStatus::Finished => 1,
        InferenceStatus::Validated => 2,
        InferenceStatus::Invalidated => 3,
        InferenceStatus::Voting => 4,
        InferenceStatus::Expired => 5,
    };
    proto::Inference {
        index: inference.inference_id.as_str().to_owned(),
        inference_id: inference.inference_id.as_str().to_owned(),
        prompt_hash: inference.prompt_hash.clone(),
        prompt_payload: inference.prompt_payload.clone(),
        response_hash: inference.response_hash.clone(),
        response_payload: inference.response_payload.clone(),
        executed_by: inference.executed_by.clone(),
        status,
        model: inference.model.clone(),
        epoch_id: inference.epoch_id,
    }
}

/// The chain's default validation parameters, with the node's `logprobs_mode`.
fn validation_params(state: &State) -> proto::ValidationParams {
    proto::ValidationParams {
        min_validation_average: Some(decimal(1, -2)),
        max_validation_average: Some(decimal(1, 0)),
        min_validation_halfway: Some(decimal(5, -2)),
        full_validation_traffic_cutoff: 10_000,
        min_validation_traffic_cutoff: 100,
        logprobs_mode: state.logprobs_mode.clone(),
    }
}

fn decimal(value: i64, exponent: i32) -> chain_source::proto::Decimal {
    chain_source::proto::Decimal { value, exponent }
}

/// A decimal as the chain stores it: the mantissa and a non-positive exponent.
fn decimal_proto(value: rust_decimal::Decimal) -> chain_source::proto::Decimal {
    let mantissa = i64::try_from(value.mantissa()).unwrap_or(i64::MAX);
    let exponent = -i32::try_from(value.scale()).unwrap_or(0);
    decimal(mantissa, exponent)
}

fn group_proto(group: &EpochGroup) -> proto::EpochGroupData {
    proto::EpochGroupData {
        validation_weights: group
            .validation_weights
            .iter()
            .map(|member| proto::ValidationWeight { member_address: member.clone() })
            .collect(),
        model_id: group.model.clone(),
        sub_group_models: group.sub_group_models.clone(),
        epoch_index: group.epoch_index,
        model_snapshot: group.has_model_snapshot.then(|| proto::Model {
            id: group.model.clone(),
            validation_threshold: group.validation_threshold.map(decimal_proto),
        }),
    }
}
