//! The query answers' protobuf messages mapped to the port's types and the crate's own.

use base64::Engine as _;
use cosmrs::{
    proto::cosmos::{auth::v1beta1 as auth, vesting::v1beta1 as vesting},
    Any,
};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use validator_core::ports::chain::{
    EpochGroup, Inference, InferenceStatus, InferenceSummary, ValidationDetails,
    ValidationParameters, ValidationParams, ValidatorPower,
};

use super::proto;
use crate::{Error, Result};

// === inferences ===

/// The inference's id: `inference_id`, or its store `index` when that is empty.
fn inference_id(index: String, inference_id: String) -> Result<String> {
    let id = if inference_id.is_empty() { index } else { inference_id };
    if id.is_empty() {
        return Err(Error::Decode("inference without an id".into()));
    }
    Ok(id)
}

pub(super) fn inference(wire: proto::Inference) -> Result<Inference> {
    Ok(Inference {
        inference_id: inference_id(wire.index, wire.inference_id)?.into(),
        model: wire.model,
        epoch_id: wire.epoch_id,
        executed_by: wire.executed_by,
        status: status(wire.status)?,
        prompt_hash: wire.prompt_hash,
        response_hash: wire.response_hash,
        prompt_payload: wire.prompt_payload,
        response_payload: wire.response_payload,
    })
}

/// The listing's view of an inference: its id, epoch and model.
pub(super) fn summary(wire: proto::Inference) -> Result<InferenceSummary> {
    Ok(InferenceSummary {
        inference_id: inference_id(wire.index, wire.inference_id)?.into(),
        epoch_id: wire.epoch_id,
        model: wire.model,
    })
}

fn status(value: i32) -> Result<InferenceStatus> {
    Ok(match value {
        0 => InferenceStatus::Started,
        1 => InferenceStatus::Finished,
        2 => InferenceStatus::Validated,
        3 => InferenceStatus::Invalidated,
        4 => InferenceStatus::Voting,
        5 => InferenceStatus::Expired,
        other => return Err(Error::Decode(format!("unknown inference status {other}"))),
    })
}

// === validation parameters ===

fn decimal(wire: Option<crate::proto::Decimal>, field: &str, default: Decimal) -> Result<Decimal> {
    let Some(wire) = wire else { return Ok(default) };
    let bad = || {
        Error::Decode(format!("{field}: {}e{} does not fit a decimal", wire.value, wire.exponent))
    };
    if wire.exponent <= 0 {
        let scale = u32::try_from(-i64::from(wire.exponent)).map_err(|_| bad())?;
        return Decimal::try_new(wire.value, scale).map_err(|_| bad());
    }
    let mut decimal = Decimal::from(wire.value);
    for _ in 0..wire.exponent {
        decimal = decimal.checked_mul(Decimal::TEN).ok_or_else(bad)?;
    }
    Ok(decimal)
}

fn cutoff(value: i64, field: &str) -> Result<u64> {
    u64::try_from(value).map_err(|_| Error::Decode(format!("{field} is negative: {value}")))
}

pub(super) fn validation_params(wire: proto::ValidationParams) -> Result<ValidationParams> {
    let defaults = ValidationParams::default();
    Ok(ValidationParams {
        min_validation_average: decimal(
            wire.min_validation_average,
            "min_validation_average",
            defaults.min_validation_average,
        )?,
        max_validation_average: decimal(
            wire.max_validation_average,
            "max_validation_average",
            defaults.max_validation_average,
        )?,
        min_validation_halfway: decimal(
            wire.min_validation_halfway,
            "min_validation_halfway",
            defaults.min_validation_halfway,
        )?,
        full_validation_traffic_cutoff: cutoff(
            wire.full_validation_traffic_cutoff,
            "full_validation_traffic_cutoff",
        )?,
        min_validation_traffic_cutoff: cutoff(
            wire.min_validation_traffic_cutoff,
            "min_validation_traffic_cutoff",
        )?,
        logprobs_mode: wire.logprobs_mode,
    })
}

pub(super) fn validation_parameters(
    wire: proto::QueryGetInferenceValidationParametersResponse,
) -> Result<ValidationParameters> {
    Ok(ValidationParameters {
        details: wire
            .details
            .into_iter()
            .map(|details| ValidationDetails {
                epoch_id: details.epoch_id,
                inference_id: details.inference_id.into(),
                executor_id: details.executor_id,
                executor_reputation: details.executor_reputation,
                traffic_basis: details.traffic_basis,
                executor_power: details.executor_power,
                model: details.model,
                total_power: details.total_power,
                created_at_block_height: details.created_at_block_height,
            })
            .collect(),
        validator_powers: wire
            .validator_powers
            .into_iter()
            .map(|power| ValidatorPower { power: power.power, epoch_index: power.epoch_index })
            .collect(),
        current_height: i64::try_from(wire.current_height)
            .map_err(|_| Error::Decode(format!("current_height {}", wire.current_height)))?,
        params: match wire.parameters {
            Some(params) => validation_params(params)?,
            None => ValidationParams::default(),
        },
    })
}

// === epoch groups ===

pub(super) fn epoch_group(wire: proto::EpochGroupData) -> Result<EpochGroup> {
    let validation_threshold = match &wire.model_snapshot {
        Some(model) if model.validation_threshold.is_some() => {
            Some(decimal(model.validation_threshold, "validation_threshold", Decimal::ZERO)?)
        }
        _ => None,
    };
    Ok(EpochGroup {
        epoch_index: wire.epoch_index,
        model: wire.model_id,
        sub_group_models: wire.sub_group_models,
        validation_weights: wire
            .validation_weights
            .into_iter()
            .map(|weight| weight.member_address)
            .collect(),
        has_model_snapshot: wire.model_snapshot.is_some(),
        validation_threshold,
    })
}

// === participants and keys ===

/// An account authorised by another for a message type, with its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grantee {
    /// The grantee's address.
    pub address: String,
    /// The grantee's public key, compressed SEC1 bytes; empty when the chain has none yet.
    pub public_key: Vec<u8>,
}

pub(super) fn grantee(wire: proto::Grantee) -> Result<Grantee> {
    let public_key =
        if wire.pub_key.is_empty() { Vec::new() } else { decode_pubkey(&wire.pub_key)? };
    Ok(Grantee { address: wire.address, public_key })
}

/// A base64 public key as the module writes it (the key's raw bytes).
pub(super) fn decode_pubkey(encoded: &str) -> Result<Vec<u8>> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|err| Error::Decode(format!("public key is not base64: {err}")))?;
    if k256::PublicKey::from_sec1_bytes(&bytes).is_err() {
        return Err(Error::Decode("public key is not a secp256k1 key".into()));
    }
    Ok(bytes)
}

// === epochs ===

/// The epoch parameters that place the stages of an epoch (`inference.inference.EpochParams`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct EpochParams {
    /// Blocks per epoch.
    pub epoch_length: i64,
    /// Offset of the PoC stage start within the block count.
    pub epoch_shift: i64,
    /// Blocks of the PoC stage.
    pub poc_stage_duration: i64,
    /// Blocks between the end of PoC and the start of PoC validation.
    pub poc_validation_delay: i64,
    /// Blocks of PoC validation.
    pub poc_validation_duration: i64,
    /// Blocks between the end of PoC validation and "set new validators".
    pub set_new_validators_delay: i64,
    /// Blocks before the next PoC start after which inferences are no longer validated.
    pub inference_validation_cutoff: i64,
}

impl From<proto::EpochParams> for EpochParams {
    fn from(wire: proto::EpochParams) -> Self {
        Self {
            epoch_length: wire.epoch_length,
            epoch_shift: wire.epoch_shift,
            poc_stage_duration: wire.poc_stage_duration,
            poc_validation_delay: wire.poc_validation_delay,
            poc_validation_duration: wire.poc_validation_duration,
            set_new_validators_delay: wire.set_new_validators_delay,
            inference_validation_cutoff: wire.inference_validation_cutoff,
        }
    }
}

impl From<EpochParams> for proto::EpochParams {
    fn from(params: EpochParams) -> Self {
        Self {
            epoch_length: params.epoch_length,
            epoch_shift: params.epoch_shift,
            poc_stage_duration: params.poc_stage_duration,
            poc_validation_delay: params.poc_validation_delay,
            poc_validation_duration: params.poc_validation_duration,
            set_new_validators_delay: params.set_new_validators_delay,
            inference_validation_cutoff: params.inference_validation_cutoff,
        }
    }
}

/// The chain's latest epoch and its parameters (`EpochInfo`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EpochInfo {
    /// Height of the answer.
    pub block_height: i64,
    /// Index of the latest epoch.
    pub epoch_index: u64,
    /// Height at which the latest epoch's PoC stage started.
    pub poc_start_block_height: i64,
    /// The epoch parameters.
    pub params: EpochParams,
}

pub(super) fn epoch_info(wire: proto::QueryEpochInfoResponse) -> EpochInfo {
    let epoch = wire.latest_epoch.unwrap_or_default();
    EpochInfo {
        block_height: wire.block_height,
        epoch_index: epoch.index,
        poc_start_block_height: epoch.poc_start_block_height,
        params: wire
            .params
            .and_then(|params| params.epoch_params)
            .map(Into::into)
            .unwrap_or_default(),
    }
}

// === settle amounts ===

/// What the chain holds for a participant to claim (`SettleAmount`): the rewards of one epoch,
/// set at the epoch's settlement and removed by a successful claim.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SettleAmount {
    /// The participant's address.
    pub participant: String,
    /// Reward coins waiting to be claimed.
    pub reward_coins: u64,
    /// Work coins waiting to be claimed.
    pub work_coins: u64,
    /// The epoch the amounts were settled for.
    pub epoch_index: u64,
}

impl SettleAmount {
    /// Whether anything is left to claim (upstream's `reward_coins + work_coins > 0`).
    pub fn has_coins(&self) -> bool {
        self.total() > 0
    }

    /// Reward and work coins together.
    pub fn total(&self) -> u64 {
        self.reward_coins.saturating_add(self.work_coins)
    }
}

pub(super) fn settle_amount(wire: proto::SettleAmount) -> SettleAmount {
    SettleAmount {
        participant: wire.participant,
        reward_coins: wire.reward_coins,
        work_coins: wire.work_coins,
        epoch_index: wire.epoch_index,
    }
}

// === accounts ===

/// The signing facts of an account (`cosmos.auth.v1beta1.BaseAccount`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseAccount {
    /// The account number signed into every transaction.
    pub account_number: u64,
    /// The sequence the next transaction must carry.
    pub sequence: u64,
}

/// The base account inside the auth query's `Any`, whatever account type wraps it (vesting
/// accounts nest it in their base vesting account).
pub(super) fn base_account(account: Any) -> Result<BaseAccount> {
    fn decode<M: prost::Message + Default>(value: &[u8]) -> Result<M> {
        M::decode(value).map_err(|err| Error::Decode(format!("account: {err}")))
    }
    let from_vesting = |base: Option<vesting::BaseVestingAccount>| {
        base.and_then(|base| base.base_account)
            .ok_or_else(|| Error::Decode("vesting account without a base account".into()))
    };
    let base: auth::BaseAccount = match account.type_url.as_str() {
        "/cosmos.auth.v1beta1.BaseAccount" => decode(&account.value)?,
        "/cosmos.vesting.v1beta1.ContinuousVestingAccount" => from_vesting(
            decode::<vesting::ContinuousVestingAccount>(&account.value)?.base_vesting_account,
        )?,
        "/cosmos.vesting.v1beta1.DelayedVestingAccount" => from_vesting(
            decode::<vesting::DelayedVestingAccount>(&account.value)?.base_vesting_account,
        )?,
        "/cosmos.vesting.v1beta1.PeriodicVestingAccount" => from_vesting(
            decode::<vesting::PeriodicVestingAccount>(&account.value)?.base_vesting_account,
        )?,
        "/cosmos.vesting.v1beta1.PermanentLockedAccount" => from_vesting(
            decode::<vesting::PermanentLockedAccount>(&account.value)?.base_vesting_account,
        )?,
        other => return Err(Error::Decode(format!("account of unknown type {other:?}"))),
    };
    Ok(BaseAccount { account_number: base.account_number, sequence: base.sequence })
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    #[test]
    fn decimals_convert_exactly() {
        let wire = |value, exponent| Some(crate::proto::Decimal { value, exponent });
        assert_eq!(decimal(wire(1, -2), "x", Decimal::ZERO).unwrap(), Decimal::new(1, 2));
        assert_eq!(decimal(wire(5, 1), "x", Decimal::ZERO).unwrap(), Decimal::from(50));
        assert_eq!(decimal(None, "x", Decimal::ONE).unwrap(), Decimal::ONE);
        assert!(decimal(wire(1, -40), "x", Decimal::ZERO).is_err());
        assert!(decimal(wire(i64::MAX, 30), "x", Decimal::ZERO).is_err());
    }

    #[test]
    fn inferences_need_an_id_and_a_known_status() {
        let wire = proto::Inference {
            index: "a/b+c=".into(),
            status: 4,
            epoch_id: 12,
            ..proto::Inference::default()
        };
        let inference = inference(wire).unwrap();
        assert_eq!(inference.inference_id.as_str(), "a/b+c=");
        assert_eq!(inference.status, InferenceStatus::Voting);
        assert_eq!(inference.epoch_id, 12);
        let bad = proto::Inference { index: "x".into(), status: 9, ..proto::Inference::default() };
        assert!(matches!(super::inference(bad), Err(Error::Decode(_))));
        assert!(matches!(super::inference(proto::Inference::default()), Err(Error::Decode(_))));
    }

    #[test]
    fn base_accounts_are_found_inside_vesting_accounts() {
        let base = auth::BaseAccount { account_number: 9, sequence: 3, ..Default::default() };
        let plain = Any {
            type_url: "/cosmos.auth.v1beta1.BaseAccount".into(),
            value: base.encode_to_vec(),
        };
        assert_eq!(base_account(plain).unwrap(), BaseAccount { account_number: 9, sequence: 3 });
        let delayed = vesting::DelayedVestingAccount {
            base_vesting_account: Some(vesting::BaseVestingAccount {
                base_account: Some(base),
                ..Default::default()
            }),
        };
        let wrapped = Any {
            type_url: "/cosmos.vesting.v1beta1.DelayedVestingAccount".into(),
            value: delayed.encode_to_vec(),
        };
        assert_eq!(base_account(wrapped).unwrap().account_number, 9);
        let unknown = Any { type_url: "/x.Y".into(), value: Vec::new() };
        assert!(matches!(base_account(unknown), Err(Error::Decode(_))));
        let junk = Any { type_url: "/cosmos.auth.v1beta1.BaseAccount".into(), value: vec![0xff] };
        assert!(matches!(base_account(junk), Err(Error::Decode(_))));
    }

    #[test]
    fn public_keys_must_be_secp256k1() {
        assert!(decode_pubkey("!!").is_err());
        assert!(decode_pubkey("AAAA").is_err());
    }

    #[test]
    fn negative_cutoffs_are_refused() {
        let params = proto::ValidationParams {
            full_validation_traffic_cutoff: -1,
            ..proto::ValidationParams::default()
        };
        assert!(matches!(validation_params(params), Err(Error::Decode(_))));
    }
}
