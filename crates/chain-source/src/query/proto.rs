//! The `inference.inference` query messages the adapter sends over CometBFT `abci_query`, written
//! as prost messages from the module's `query.proto` (and the files it imports) with upstream's
//! field numbers and scalar types. Only the fields the validator reads are declared: prost skips
//! the rest when decoding, and requests carry every field the chain looks at.

use cosmrs::proto::cosmos::base::query::v1beta1::{PageRequest, PageResponse};

use crate::proto::Decimal;

/// gRPC path of `Query/Inference`: one inference by index.
pub const INFERENCE: &str = "/inference.inference.Query/Inference";
/// gRPC path of `Query/InferenceAll`: a page of inferences.
pub const INFERENCE_ALL: &str = "/inference.inference.Query/InferenceAll";
/// gRPC path of `Query/GetInferenceValidationParameters`.
pub const GET_INFERENCE_VALIDATION_PARAMETERS: &str =
    "/inference.inference.Query/GetInferenceValidationParameters";
/// gRPC path of `Query/EpochGroupValidations`: what a participant validated in an epoch.
pub const EPOCH_GROUP_VALIDATIONS: &str = "/inference.inference.Query/EpochGroupValidations";
/// gRPC path of `Query/EpochGroupData`: one epoch's (sub)group.
pub const EPOCH_GROUP_DATA: &str = "/inference.inference.Query/EpochGroupData";
/// gRPC path of `Query/CurrentEpochGroupData`: the current epoch's parent group.
pub const CURRENT_EPOCH_GROUP_DATA: &str = "/inference.inference.Query/CurrentEpochGroupData";
/// gRPC path of `Query/Participant`: one participant by index.
pub const PARTICIPANT: &str = "/inference.inference.Query/Participant";
/// gRPC path of `Query/AccountByAddress`: a participant account's public key.
pub const ACCOUNT_BY_ADDRESS: &str = "/inference.inference.Query/AccountByAddress";
/// gRPC path of `Query/GranteesByMessageType`: the authz grantees of a granter for one message.
pub const GRANTEES_BY_MESSAGE_TYPE: &str = "/inference.inference.Query/GranteesByMessageType";
/// gRPC path of `Query/EpochInfo`: height, module params and the latest epoch.
pub const EPOCH_INFO: &str = "/inference.inference.Query/EpochInfo";
/// gRPC path of `Query/SettleAmount`: a participant's unclaimed rewards.
pub const SETTLE_AMOUNT: &str = "/inference.inference.Query/SettleAmount";
/// gRPC path of `Query/Params`: the module's parameters.
pub const PARAMS: &str = "/inference.inference.Query/Params";
/// gRPC path of the auth module's `Query/Account` (messages from `cosmrs::proto::cosmos::auth`).
pub const AUTH_ACCOUNT: &str = "/cosmos.auth.v1beta1.Query/Account";

/// Request of [`INFERENCE`].
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct QueryGetInferenceRequest {
    /// The inference's store index.
    #[prost(string, tag = "1")]
    pub index: String,
}

/// Response of [`INFERENCE`].
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct QueryGetInferenceResponse {
    /// The inference found.
    #[prost(message, optional, tag = "1")]
    pub inference: Option<Inference>,
}

/// Request of [`INFERENCE_ALL`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct QueryAllInferenceRequest {
    /// Which page to return.
    #[prost(message, optional, tag = "1")]
    pub pagination: Option<PageRequest>,
}

/// Response of [`INFERENCE_ALL`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct QueryAllInferenceResponse {
    /// The page's inferences.
    #[prost(message, repeated, tag = "1")]
    pub inference: Vec<Inference>,
    /// Where the next page starts.
    #[prost(message, optional, tag = "2")]
    pub pagination: Option<PageResponse>,
}

/// `inference.inference.Inference`, reduced to what validation reads.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Inference {
    /// The store index.
    #[prost(string, tag = "1")]
    pub index: String,
    /// The inference id.
    #[prost(string, tag = "2")]
    pub inference_id: String,
    /// Hash of the prompt.
    #[prost(string, tag = "3")]
    pub prompt_hash: String,
    /// The prompt itself (deprecated upstream; empty on newer inferences).
    #[prost(string, tag = "4")]
    pub prompt_payload: String,
    /// Hash of the executor's response.
    #[prost(string, tag = "5")]
    pub response_hash: String,
    /// The response itself (deprecated upstream; empty on newer inferences).
    #[prost(string, tag = "6")]
    pub response_payload: String,
    /// Account of the executor.
    #[prost(string, tag = "10")]
    pub executed_by: String,
    /// `InferenceStatus`: 0 started, 1 finished, 2 validated, 3 invalidated, 4 voting,
    /// 5 expired.
    #[prost(int32, tag = "11")]
    pub status: i32,
    /// The model id.
    #[prost(string, tag = "16")]
    pub model: String,
    /// Index of the epoch the inference finished in (0 while unset).
    #[prost(uint64, tag = "25")]
    pub epoch_id: u64,
}

/// Request of [`GET_INFERENCE_VALIDATION_PARAMETERS`].
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct QueryGetInferenceValidationParametersRequest {
    /// The inference ids asked about.
    #[prost(string, repeated, tag = "1")]
    pub ids: Vec<String>,
    /// The account asking, whose power is reported.
    #[prost(string, tag = "2")]
    pub requester: String,
}

/// Response of [`GET_INFERENCE_VALIDATION_PARAMETERS`].
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct QueryGetInferenceValidationParametersResponse {
    /// The requester's power, per epoch.
    #[prost(message, repeated, tag = "1")]
    pub validator_powers: Vec<ValidatorPower>,
    /// The chain height the answer was computed at.
    #[prost(uint64, tag = "2")]
    pub current_height: u64,
    /// Sampling inputs of each inference found.
    #[prost(message, repeated, tag = "3")]
    pub details: Vec<InferenceValidationDetails>,
    /// The module's validation parameters.
    #[prost(message, optional, tag = "4")]
    pub parameters: Option<ValidationParams>,
}

/// A validator's power in one epoch.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ValidatorPower {
    /// The power.
    #[prost(uint64, tag = "1")]
    pub power: u64,
    /// The epoch it applies to.
    #[prost(uint64, tag = "2")]
    pub epoch_index: u64,
}

/// `inference.inference.InferenceValidationDetails`: the inputs of the sampling decision.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct InferenceValidationDetails {
    /// Index of the epoch the inference belongs to.
    #[prost(uint64, tag = "1")]
    pub epoch_id: u64,
    /// The inference id.
    #[prost(string, tag = "2")]
    pub inference_id: String,
    /// Account of the executor.
    #[prost(string, tag = "3")]
    pub executor_id: String,
    /// The executor's reputation.
    #[prost(int32, tag = "4")]
    pub executor_reputation: i32,
    /// Request count the validation rate is scaled by.
    #[prost(uint64, tag = "5")]
    pub traffic_basis: u64,
    /// The executor's power in the model's group.
    #[prost(uint64, tag = "6")]
    pub executor_power: u64,
    /// The model id.
    #[prost(string, tag = "7")]
    pub model: String,
    /// Total power of the model's group.
    #[prost(uint64, tag = "8")]
    pub total_power: u64,
    /// The height these details were recorded at.
    #[prost(int64, tag = "9")]
    pub created_at_block_height: i64,
}

/// `inference.inference.ValidationParams`, reduced to the sampling inputs.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ValidationParams {
    /// Lowest average validation rate.
    #[prost(message, optional, tag = "4")]
    pub min_validation_average: Option<Decimal>,
    /// Highest average validation rate.
    #[prost(message, optional, tag = "5")]
    pub max_validation_average: Option<Decimal>,
    /// Traffic at or above which the minimum rate applies.
    #[prost(int64, tag = "8")]
    pub full_validation_traffic_cutoff: i64,
    /// Rate at the midpoint of the traffic ramp.
    #[prost(message, optional, tag = "9")]
    pub min_validation_halfway: Option<Decimal>,
    /// Traffic below which the maximum rate applies.
    #[prost(int64, tag = "10")]
    pub min_validation_traffic_cutoff: i64,
    /// The `logprobs_mode` replays ask for; empty for the ML node's default.
    #[prost(string, tag = "26")]
    pub logprobs_mode: String,
}

/// Request of [`EPOCH_GROUP_VALIDATIONS`].
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct QueryGetEpochGroupValidationsRequest {
    /// The participant's account.
    #[prost(string, tag = "1")]
    pub participant: String,
    /// The epoch.
    #[prost(uint64, tag = "2")]
    pub epoch_index: u64,
}

/// Response of [`EPOCH_GROUP_VALIDATIONS`].
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct QueryGetEpochGroupValidationsResponse {
    /// The record found.
    #[prost(message, optional, tag = "1")]
    pub epoch_group_validations: Option<EpochGroupValidations>,
}

/// `inference.inference.EpochGroupValidations`: what a participant validated in an epoch.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct EpochGroupValidations {
    /// The participant's account.
    #[prost(string, tag = "1")]
    pub participant: String,
    /// The epoch.
    #[prost(uint64, tag = "2")]
    pub epoch_index: u64,
    /// Ids of the inferences validated.
    #[prost(string, repeated, tag = "3")]
    pub validated_inferences: Vec<String>,
}

/// Request of [`EPOCH_GROUP_DATA`].
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct QueryGetEpochGroupDataRequest {
    /// The epoch.
    #[prost(uint64, tag = "1")]
    pub epoch_index: u64,
    /// The model's subgroup, or empty for the parent group.
    #[prost(string, tag = "2")]
    pub model_id: String,
}

/// Response of [`EPOCH_GROUP_DATA`].
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct QueryGetEpochGroupDataResponse {
    /// The group found.
    #[prost(message, optional, tag = "1")]
    pub epoch_group_data: Option<EpochGroupData>,
}

/// Request of [`CURRENT_EPOCH_GROUP_DATA`].
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct QueryCurrentEpochGroupDataRequest {}

/// Response of [`CURRENT_EPOCH_GROUP_DATA`].
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct QueryCurrentEpochGroupDataResponse {
    /// The current parent group.
    #[prost(message, optional, tag = "1")]
    pub epoch_group_data: Option<EpochGroupData>,
}

/// `inference.inference.EpochGroupData`, reduced to membership and models.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct EpochGroupData {
    /// The group's members and their weights.
    #[prost(message, repeated, tag = "8")]
    pub validation_weights: Vec<ValidationWeight>,
    /// The model of a subgroup; empty for the parent group.
    #[prost(string, tag = "14")]
    pub model_id: String,
    /// The parent group's per-model subgroups.
    #[prost(string, repeated, tag = "15")]
    pub sub_group_models: Vec<String>,
    /// The epoch.
    #[prost(uint64, tag = "16")]
    pub epoch_index: u64,
    /// The model as it stood when the subgroup formed; set only on subgroups.
    #[prost(message, optional, tag = "17")]
    pub model_snapshot: Option<Model>,
}

/// One member of an epoch group.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ValidationWeight {
    /// The member's account.
    #[prost(string, tag = "1")]
    pub member_address: String,
}

/// `inference.inference.Model`, reduced to its id and validation threshold.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Model {
    /// The model id.
    #[prost(string, tag = "2")]
    pub id: String,
    /// The similarity a devshard validation must exceed.
    #[prost(message, optional, tag = "13")]
    pub validation_threshold: Option<Decimal>,
}

/// Request of [`PARAMS`].
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct QueryParamsRequest {}

/// Response of [`PARAMS`].
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct QueryParamsResponse {
    /// The module's parameters.
    #[prost(message, optional, tag = "1")]
    pub params: Option<Params>,
}

/// Request of [`PARTICIPANT`].
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct QueryGetParticipantRequest {
    /// The participant's store index (its account address).
    #[prost(string, tag = "1")]
    pub index: String,
}

/// Response of [`PARTICIPANT`].
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct QueryGetParticipantResponse {
    /// The participant found.
    #[prost(message, optional, tag = "1")]
    pub participant: Option<Participant>,
}

/// `inference.inference.Participant`, reduced to its address and URL.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Participant {
    /// The store index.
    #[prost(string, tag = "1")]
    pub index: String,
    /// The participant's account.
    #[prost(string, tag = "2")]
    pub address: String,
    /// Base URL of the participant's inference API.
    #[prost(string, tag = "7")]
    pub inference_url: String,
}

/// Request of [`ACCOUNT_BY_ADDRESS`].
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct QueryAccountByAddressRequest {
    /// The account.
    #[prost(string, tag = "1")]
    pub address: String,
}

/// Response of [`ACCOUNT_BY_ADDRESS`].
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct QueryAccountByAddressResponse {
    /// The account's public key, as the chain renders it.
    #[prost(string, tag = "1")]
    pub pubkey: String,
}

/// Request of [`GRANTEES_BY_MESSAGE_TYPE`].
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct QueryGranteesByMessageTypeRequest {
    /// The granting account.
    #[prost(string, tag = "1")]
    pub granter_address: String,
    /// Type URL of the granted message.
    #[prost(string, tag = "2")]
    pub message_type_url: String,
}

/// Response of [`GRANTEES_BY_MESSAGE_TYPE`].
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct QueryGranteesByMessageTypeResponse {
    /// The grantees holding the grant.
    #[prost(message, repeated, tag = "1")]
    pub grantees: Vec<Grantee>,
}

/// An authz grantee.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Grantee {
    /// The grantee's account.
    #[prost(string, tag = "1")]
    pub address: String,
    /// The grantee's public key, as the chain renders it.
    #[prost(string, tag = "2")]
    pub pub_key: String,
}

/// Request of [`EPOCH_INFO`].
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct QueryEpochInfoRequest {}

/// Response of [`EPOCH_INFO`].
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct QueryEpochInfoResponse {
    /// The height the answer was computed at.
    #[prost(int64, tag = "1")]
    pub block_height: i64,
    /// The module's parameters.
    #[prost(message, optional, tag = "2")]
    pub params: Option<Params>,
    /// The latest epoch.
    #[prost(message, optional, tag = "3")]
    pub latest_epoch: Option<Epoch>,
}

/// `inference.inference.Params`, reduced to the epoch and validation groups.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Params {
    /// Epoch timing.
    #[prost(message, optional, tag = "1")]
    pub epoch_params: Option<EpochParams>,
    /// Validation sampling.
    #[prost(message, optional, tag = "2")]
    pub validation_params: Option<ValidationParams>,
}

/// `inference.inference.EpochParams`, reduced to the schedule.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct EpochParams {
    /// Blocks per epoch.
    #[prost(int64, tag = "1")]
    pub epoch_length: i64,
    /// Offset of epoch starts from multiples of the length.
    #[prost(int64, tag = "3")]
    pub epoch_shift: i64,
    /// Blocks of the PoC stage.
    #[prost(int64, tag = "5")]
    pub poc_stage_duration: i64,
    /// Blocks between the PoC stage and its validation.
    #[prost(int64, tag = "7")]
    pub poc_validation_delay: i64,
    /// Blocks of PoC validation.
    #[prost(int64, tag = "8")]
    pub poc_validation_duration: i64,
    /// Blocks between PoC validation and the new validator set.
    #[prost(int64, tag = "9")]
    pub set_new_validators_delay: i64,
    /// Blocks the previous epoch's inferences remain open to validation.
    #[prost(int64, tag = "10")]
    pub inference_validation_cutoff: i64,
}

/// `inference.inference.Epoch`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Epoch {
    /// The epoch index.
    #[prost(uint64, tag = "1")]
    pub index: u64,
    /// Height the epoch's PoC stage started at.
    #[prost(int64, tag = "2")]
    pub poc_start_block_height: i64,
}

/// Request of [`SETTLE_AMOUNT`].
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct QueryGetSettleAmountRequest {
    /// The participant's account.
    #[prost(string, tag = "1")]
    pub participant: String,
}

/// Response of [`SETTLE_AMOUNT`].
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct QueryGetSettleAmountResponse {
    /// The amount found.
    #[prost(message, optional, tag = "1")]
    pub settle_amount: Option<SettleAmount>,
}

/// `inference.inference.SettleAmount`: rewards awaiting a claim.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct SettleAmount {
    /// The participant's account.
    #[prost(string, tag = "1")]
    pub participant: String,
    /// Reward coins owed.
    #[prost(uint64, tag = "2")]
    pub reward_coins: u64,
    /// Work coins owed.
    #[prost(uint64, tag = "3")]
    pub work_coins: u64,
    /// The epoch the amount is for.
    #[prost(uint64, tag = "4")]
    pub epoch_index: u64,
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    #[test]
    fn an_inference_request_is_field_one() {
        let bytes = QueryGetInferenceRequest { index: "a/b+=".into() }.encode_to_vec();
        assert_eq!(bytes, [0x0a, 5, b'a', b'/', b'b', b'+', b'=']);
    }

    #[test]
    fn an_inference_reads_epoch_id_not_the_deprecated_group_id() {
        #[rustfmt::skip]
        let inner = [
            0x0a, 1, b'i',          // 1 index
            0x12, 1, b'x',          // 2 inference_id
            0x52, 1, b'e',          // 10 executed_by
            0x58, 2,                // 11 status = VALIDATED
            0x82, 0x01, 1, b'm',    // 16 model
            0xa8, 0x01, 99,         // 21 epoch_group_id: not declared, skipped
            0xc8, 0x01, 42,         // 25 epoch_id
        ];
        let mut bytes = vec![0x0a, inner.len() as u8];
        bytes.extend_from_slice(&inner);
        let inference =
            QueryGetInferenceResponse::decode(bytes.as_slice()).unwrap().inference.unwrap();
        assert_eq!(
            inference,
            Inference {
                index: "i".into(),
                inference_id: "x".into(),
                executed_by: "e".into(),
                status: 2,
                model: "m".into(),
                epoch_id: 42,
                ..Inference::default()
            }
        );
    }

    #[test]
    fn epoch_info_reads_the_sparse_param_numbers() {
        #[rustfmt::skip]
        let epoch_params = [
            0x08, 15,   // 1 epoch_length
            0x10, 9,    // 2 epoch_multiplier: not declared, skipped
            0x18, 5,    // 3 epoch_shift
            0x28, 3,    // 5 poc_stage_duration
            0x38, 1,    // 7 poc_validation_delay
            0x40, 2,    // 8 poc_validation_duration
            0x48, 6,    // 9 set_new_validators_delay
            0x50, 4,    // 10 inference_validation_cutoff
        ];
        #[rustfmt::skip]
        let validation_params = [
            0x22, 2, 0x08, 1,   // 4 min_validation_average = {value: 1}
            0x40, 0xc8, 0x01,   // 8 full_validation_traffic_cutoff = 200
            0x50, 100,          // 10 min_validation_traffic_cutoff
        ];
        let mut params = vec![0x0a, epoch_params.len() as u8];
        params.extend_from_slice(&epoch_params);
        params.extend_from_slice(&[0x12, validation_params.len() as u8]);
        params.extend_from_slice(&validation_params);
        let mut bytes = vec![0x08, 0xd2, 0x09, 0x12, params.len() as u8]; // 1 block_height = 1234
        bytes.extend_from_slice(&params);
        bytes.extend_from_slice(&[0x1a, 5, 0x08, 7, 0x10, 0xe8, 0x07]); // 3 {index 7, poc 1000}
        bytes.extend_from_slice(&[0x20, 1]); // 4 is_confirmation_poc_active: skipped

        let info = QueryEpochInfoResponse::decode(bytes.as_slice()).unwrap();
        assert_eq!(info.block_height, 1234);
        assert_eq!(info.latest_epoch, Some(Epoch { index: 7, poc_start_block_height: 1000 }));
        let params = info.params.unwrap();
        assert_eq!(
            params.epoch_params,
            Some(EpochParams {
                epoch_length: 15,
                epoch_shift: 5,
                poc_stage_duration: 3,
                poc_validation_delay: 1,
                poc_validation_duration: 2,
                set_new_validators_delay: 6,
                inference_validation_cutoff: 4,
            })
        );
        assert_eq!(
            params.validation_params,
            Some(ValidationParams {
                min_validation_average: Some(Decimal { value: 1, exponent: 0 }),
                full_validation_traffic_cutoff: 200,
                min_validation_traffic_cutoff: 100,
                ..ValidationParams::default()
            })
        );
    }
}
