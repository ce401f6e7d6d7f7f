//! The gateway's JSON answers and their mapping to the port's types. Integers are accepted as
//! strings or numbers and enums as names or numbers, because protobuf JSON allows both.

use base64::Engine as _;
use rust_decimal::Decimal;
use serde::{de, Deserialize, Deserializer, Serialize};
use serde_json::Value;
use validator_core::ports::chain::{
    EpochGroup, Inference, InferenceStatus, ValidationDetails, ValidationParameters,
    ValidationParams, ValidatorPower,
};

use crate::{Error, Result};

fn int<'de, D: Deserializer<'de>, T: TryFrom<i128>>(deserializer: D) -> Result<T, D::Error> {
    let value = Value::deserialize(deserializer)?;
    let wide: i128 = match &value {
        Value::Null => 0,
        Value::String(text) if text.is_empty() => 0,
        Value::String(text) => {
            text.parse().map_err(|_| de::Error::custom(format!("not an integer: {text:?}")))?
        }
        Value::Number(number) => number
            .as_i64()
            .map(i128::from)
            .or_else(|| number.as_u64().map(i128::from))
            .ok_or_else(|| de::Error::custom(format!("not an integer: {number}")))?,
        other => return Err(de::Error::custom(format!("not an integer: {other}"))),
    };
    T::try_from(wide).map_err(|_| de::Error::custom(format!("integer out of range: {wide}")))
}

fn text<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(deserializer)?.unwrap_or_default())
}

fn list<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Vec<T>, D::Error> {
    Ok(Option::<Vec<T>>::deserialize(deserializer)?.unwrap_or_default())
}

// === inferences ===

#[derive(Deserialize)]
pub(super) struct InferenceAnswer {
    pub(super) inference: InferenceWire,
}

#[derive(Deserialize)]
pub(super) struct InferenceListAnswer {
    #[serde(default, deserialize_with = "list")]
    pub(super) inference: Vec<InferenceWire>,
    #[serde(default)]
    pub(super) pagination: Pagination,
}

#[derive(Deserialize, Default)]
pub(super) struct Pagination {
    #[serde(default, deserialize_with = "text")]
    next_key: String,
}

impl Pagination {
    pub(super) fn next_key(&self) -> Result<Option<Vec<u8>>> {
        if self.next_key.is_empty() {
            return Ok(None);
        }
        base64::engine::general_purpose::STANDARD
            .decode(&self.next_key)
            .map(Some)
            .map_err(|err| Error::Decode(format!("pagination.next_key: {err}")))
    }
}

#[derive(Deserialize)]
pub(super) struct InferenceWire {
    #[serde(default, deserialize_with = "text")]
    index: String,
    #[serde(default, deserialize_with = "text")]
    inference_id: String,
    #[serde(default, deserialize_with = "text")]
    prompt_hash: String,
    #[serde(default, deserialize_with = "text")]
    prompt_payload: String,
    #[serde(default, deserialize_with = "text")]
    response_hash: String,
    #[serde(default, deserialize_with = "text")]
    response_payload: String,
    #[serde(default, deserialize_with = "text")]
    executed_by: String,
    #[serde(default)]
    status: Value,
    #[serde(default, deserialize_with = "text")]
    model: String,
    #[serde(default, deserialize_with = "int")]
    epoch_id: u64,
}

impl InferenceWire {
    pub(super) fn into_domain(self) -> Result<Inference> {
        let id = if self.inference_id.is_empty() { self.index } else { self.inference_id };
        if id.is_empty() {
            return Err(Error::Decode("inference without an id".into()));
        }
        Ok(Inference {
            inference_id: id.into(),
            model: self.model,
            epoch_id: self.epoch_id,
            executed_by: self.executed_by,
            status: status(&self.status)?,
            prompt_hash: self.prompt_hash,
            response_hash: self.response_hash,
            prompt_payload: self.prompt_payload,
            response_payload: self.response_payload,
        })
    }
}

fn status(value: &Value) -> Result<InferenceStatus> {
    let status = match value {
        Value::Null => InferenceStatus::Started,
        Value::String(name) => match name.as_str() {
            "STARTED" => InferenceStatus::Started,
            "FINISHED" => InferenceStatus::Finished,
            "VALIDATED" => InferenceStatus::Validated,
            "INVALIDATED" => InferenceStatus::Invalidated,
            "VOTING" => InferenceStatus::Voting,
            "EXPIRED" => InferenceStatus::Expired,
            other => return Err(Error::Decode(format!("unknown inference status {other:?}"))),
        },
        Value::Number(number) => match number.as_u64() {
            Some(0) => InferenceStatus::Started,
            Some(1) => InferenceStatus::Finished,
            Some(2) => InferenceStatus::Validated,
            Some(3) => InferenceStatus::Invalidated,
            Some(4) => InferenceStatus::Voting,
            Some(5) => InferenceStatus::Expired,
            _ => return Err(Error::Decode(format!("unknown inference status {number}"))),
        },
        other => return Err(Error::Decode(format!("unknown inference status {other}"))),
    };
    Ok(status)
}

// === validation parameters ===

#[derive(Deserialize)]
pub(super) struct ValidationParametersAnswer {
    #[serde(default, deserialize_with = "list")]
    validator_powers: Vec<PowerWire>,
    #[serde(default, deserialize_with = "int")]
    current_height: i64,
    #[serde(default, deserialize_with = "list")]
    details: Vec<DetailsWire>,
    #[serde(default)]
    parameters: Option<ValidationParamsWire>,
}

#[derive(Deserialize)]
struct PowerWire {
    #[serde(default, deserialize_with = "int")]
    power: u64,
    #[serde(default, deserialize_with = "int")]
    epoch_index: u64,
}

#[derive(Deserialize)]
struct DetailsWire {
    #[serde(default, deserialize_with = "int")]
    epoch_id: u64,
    #[serde(default, deserialize_with = "text")]
    inference_id: String,
    #[serde(default, deserialize_with = "text")]
    executor_id: String,
    #[serde(default, deserialize_with = "int")]
    executor_reputation: i32,
    #[serde(default, deserialize_with = "int")]
    traffic_basis: u64,
    #[serde(default, deserialize_with = "int")]
    executor_power: u64,
    #[serde(default, deserialize_with = "text")]
    model: String,
    #[serde(default, deserialize_with = "int")]
    total_power: u64,
    #[serde(default, deserialize_with = "int")]
    created_at_block_height: i64,
}

/// A protobuf `inference.inference.Decimal`: `value × 10^exponent`.
#[derive(Deserialize, Serialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct DecimalWire {
    #[serde(default, deserialize_with = "int")]
    value: i64,
    #[serde(default, deserialize_with = "int")]
    exponent: i32,
}

impl DecimalWire {
    fn to_decimal(self, field: &str) -> Result<Decimal> {
        let bad = || {
            Error::Decode(format!(
                "{field}: {}e{} does not fit a decimal",
                self.value, self.exponent
            ))
        };
        if self.exponent <= 0 {
            let scale = u32::try_from(-i64::from(self.exponent)).map_err(|_| bad())?;
            return Decimal::try_new(self.value, scale).map_err(|_| bad());
        }
        let mut decimal = Decimal::from(self.value);
        for _ in 0..self.exponent {
            decimal = decimal.checked_mul(Decimal::TEN).ok_or_else(bad)?;
        }
        Ok(decimal)
    }
}

#[derive(Deserialize)]
struct ValidationParamsWire {
    #[serde(default)]
    min_validation_average: Option<DecimalWire>,
    #[serde(default)]
    max_validation_average: Option<DecimalWire>,
    #[serde(default)]
    min_validation_halfway: Option<DecimalWire>,
    #[serde(default, deserialize_with = "int")]
    full_validation_traffic_cutoff: u64,
    #[serde(default, deserialize_with = "int")]
    min_validation_traffic_cutoff: u64,
}

impl ValidationParamsWire {
    fn into_domain(self) -> Result<ValidationParams> {
        let defaults = ValidationParams::default();
        let decimal = |wire: Option<DecimalWire>, field: &str, default: Decimal| {
            wire.map_or(Ok(default), |wire| wire.to_decimal(field))
        };
        Ok(ValidationParams {
            min_validation_average: decimal(
                self.min_validation_average,
                "min_validation_average",
                defaults.min_validation_average,
            )?,
            max_validation_average: decimal(
                self.max_validation_average,
                "max_validation_average",
                defaults.max_validation_average,
            )?,
            min_validation_halfway: decimal(
                self.min_validation_halfway,
                "min_validation_halfway",
                defaults.min_validation_halfway,
            )?,
            full_validation_traffic_cutoff: self.full_validation_traffic_cutoff,
            min_validation_traffic_cutoff: self.min_validation_traffic_cutoff,
        })
    }
}

impl ValidationParametersAnswer {
    pub(super) fn into_domain(self) -> Result<ValidationParameters> {
        Ok(ValidationParameters {
            details: self
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
            validator_powers: self
                .validator_powers
                .into_iter()
                .map(|power| ValidatorPower { power: power.power, epoch_index: power.epoch_index })
                .collect(),
            current_height: self.current_height,
            params: match self.parameters {
                Some(params) => params.into_domain()?,
                None => ValidationParams::default(),
            },
        })
    }
}

// === epoch groups ===

#[derive(Deserialize)]
pub(super) struct EpochGroupValidationsAnswer {
    pub(super) epoch_group_validations: EpochGroupValidationsWire,
}

#[derive(Deserialize)]
pub(super) struct EpochGroupValidationsWire {
    #[serde(
        default,
        alias = "validated_inferences",
        rename = "validatedInferences",
        deserialize_with = "list"
    )]
    pub(super) validated_inferences: Vec<String>,
}

#[derive(Deserialize)]
pub(super) struct EpochGroupAnswer {
    pub(super) epoch_group_data: EpochGroupWire,
}

#[derive(Deserialize)]
pub(super) struct EpochGroupWire {
    #[serde(default, deserialize_with = "int")]
    epoch_index: u64,
    #[serde(default, deserialize_with = "text")]
    model_id: String,
    #[serde(default, deserialize_with = "list")]
    sub_group_models: Vec<String>,
    #[serde(default, deserialize_with = "list")]
    validation_weights: Vec<WeightWire>,
    #[serde(default)]
    model_snapshot: Value,
}

#[derive(Deserialize)]
struct WeightWire {
    #[serde(default, deserialize_with = "text")]
    member_address: String,
}

impl EpochGroupWire {
    pub(super) fn into_domain(self) -> EpochGroup {
        EpochGroup {
            epoch_index: self.epoch_index,
            model: self.model_id,
            sub_group_models: self.sub_group_models,
            validation_weights: self
                .validation_weights
                .into_iter()
                .map(|weight| weight.member_address)
                .collect(),
            has_model_snapshot: self.model_snapshot.is_object(),
        }
    }
}

// === participants and keys ===

#[derive(Deserialize)]
pub(super) struct ParticipantAnswer {
    pub(super) participant: ParticipantWire,
}

#[derive(Deserialize)]
pub(super) struct ParticipantWire {
    #[serde(default, deserialize_with = "text")]
    pub(super) inference_url: String,
}

#[derive(Deserialize)]
pub(super) struct AccountPubkeyAnswer {
    #[serde(default, deserialize_with = "text")]
    pub(super) pubkey: String,
}

/// An account authorised by another for a message type, with its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grantee {
    /// The grantee's address.
    pub address: String,
    /// The grantee's public key, compressed SEC1 bytes; empty when the chain has none yet.
    pub public_key: Vec<u8>,
}

#[derive(Deserialize)]
pub(super) struct GranteesAnswer {
    #[serde(default, deserialize_with = "list")]
    pub(super) grantees: Vec<GranteeWire>,
}

#[derive(Deserialize)]
pub(super) struct GranteeWire {
    #[serde(default, deserialize_with = "text")]
    address: String,
    #[serde(default, deserialize_with = "text")]
    pub_key: String,
}

impl GranteeWire {
    pub(super) fn into_domain(self) -> Result<Grantee> {
        let public_key =
            if self.pub_key.is_empty() { Vec::new() } else { decode_pubkey(&self.pub_key)? };
        Ok(Grantee { address: self.address, public_key })
    }
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
    #[serde(default, deserialize_with = "int")]
    pub epoch_length: i64,
    /// Offset of the PoC stage start within the block count.
    #[serde(default, deserialize_with = "int")]
    pub epoch_shift: i64,
    /// Blocks of the PoC stage.
    #[serde(default, deserialize_with = "int")]
    pub poc_stage_duration: i64,
    /// Blocks between the end of PoC and the start of PoC validation.
    #[serde(default, deserialize_with = "int")]
    pub poc_validation_delay: i64,
    /// Blocks of PoC validation.
    #[serde(default, deserialize_with = "int")]
    pub poc_validation_duration: i64,
    /// Blocks between the end of PoC validation and "set new validators".
    #[serde(default, deserialize_with = "int")]
    pub set_new_validators_delay: i64,
    /// Blocks before the next PoC start after which inferences are no longer validated.
    #[serde(default, deserialize_with = "int")]
    pub inference_validation_cutoff: i64,
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

#[derive(Deserialize)]
pub(super) struct EpochInfoAnswer {
    #[serde(default, deserialize_with = "int")]
    block_height: i64,
    #[serde(default)]
    params: ParamsWire,
    #[serde(default)]
    latest_epoch: EpochWire,
}

#[derive(Deserialize, Default)]
struct ParamsWire {
    #[serde(default)]
    epoch_params: Option<EpochParams>,
}

#[derive(Deserialize, Default)]
struct EpochWire {
    #[serde(default, deserialize_with = "int")]
    index: u64,
    #[serde(default, deserialize_with = "int")]
    poc_start_block_height: i64,
}

impl EpochInfoAnswer {
    pub(super) fn into_domain(self) -> EpochInfo {
        EpochInfo {
            block_height: self.block_height,
            epoch_index: self.latest_epoch.index,
            poc_start_block_height: self.latest_epoch.poc_start_block_height,
            params: self.params.epoch_params.unwrap_or_default(),
        }
    }
}

// === settle amounts ===

/// What the chain holds for a participant to claim (`SettleAmount`): the rewards of one epoch,
/// set at the epoch's settlement and removed by a successful claim.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct SettleAmount {
    /// The participant's address.
    #[serde(default, deserialize_with = "text")]
    pub participant: String,
    /// Reward coins waiting to be claimed.
    #[serde(default, deserialize_with = "int")]
    pub reward_coins: u64,
    /// Work coins waiting to be claimed.
    #[serde(default, deserialize_with = "int")]
    pub work_coins: u64,
    /// The epoch the amounts were settled for.
    #[serde(default, deserialize_with = "int")]
    pub epoch_index: u64,
}

impl SettleAmount {
    /// Whether anything is left to claim (upstream's `reward_coins + work_coins > 0`).
    pub fn has_coins(&self) -> bool {
        self.reward_coins.saturating_add(self.work_coins) > 0
    }
}

#[derive(Deserialize)]
pub(super) struct SettleAmountAnswer {
    #[serde(default)]
    pub(super) settle_amount: SettleAmount,
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

/// The base account inside `{"account": ...}`, whatever account type wraps it (vesting accounts
/// nest it one or two levels down).
pub(super) fn base_account(answer: &Value) -> Result<BaseAccount> {
    fn find(value: &Value, depth: usize) -> Option<&Value> {
        if value.get("account_number").is_some() {
            return Some(value);
        }
        if depth == 0 {
            return None;
        }
        value.as_object()?.values().find_map(|inner| find(inner, depth - 1))
    }
    let account = answer
        .get("account")
        .and_then(|account| find(account, 3))
        .ok_or_else(|| Error::Decode("account answer has no account_number".into()))?;
    #[derive(Deserialize)]
    struct Numbers {
        #[serde(default, deserialize_with = "int")]
        account_number: u64,
        #[serde(default, deserialize_with = "int")]
        sequence: u64,
    }
    let numbers =
        Numbers::deserialize(account).map_err(|err| Error::Decode(format!("account: {err}")))?;
    Ok(BaseAccount { account_number: numbers.account_number, sequence: numbers.sequence })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn decimals_convert_exactly() {
        let wire = |value, exponent| DecimalWire { value, exponent };
        assert_eq!(wire(1, -2).to_decimal("x").unwrap(), Decimal::new(1, 2));
        assert_eq!(wire(5, 1).to_decimal("x").unwrap(), Decimal::from(50));
        assert!(wire(1, -40).to_decimal("x").is_err());
        assert!(wire(i64::MAX, 30).to_decimal("x").is_err());
    }

    #[test]
    fn inferences_accept_names_numbers_and_strings() {
        let wire: InferenceWire = serde_json::from_value(json!({
            "index": "i1", "inference_id": "i1", "status": "VOTING", "epoch_id": "12",
            "model": "m", "executed_by": "gonka1x", "prompt_hash": null
        }))
        .unwrap();
        let inference = wire.into_domain().unwrap();
        assert_eq!(inference.status, InferenceStatus::Voting);
        assert_eq!(inference.epoch_id, 12);
        let wire: InferenceWire =
            serde_json::from_value(json!({"index": "i2", "status": 2, "epoch_id": 3})).unwrap();
        assert_eq!(wire.into_domain().unwrap().status, InferenceStatus::Validated);
        let wire: InferenceWire = serde_json::from_value(json!({"status": "BOGUS"})).unwrap();
        assert!(matches!(wire.into_domain(), Err(Error::Decode(_))));
        assert!(serde_json::from_value::<InferenceWire>(json!({"epoch_id": "x"})).is_err());
        assert!(serde_json::from_value::<InferenceWire>(json!({"epoch_id": "-1"})).is_err());
    }

    #[test]
    fn base_accounts_are_found_inside_vesting_accounts() {
        let plain = json!({"account": {"@type": "/cosmos.auth.v1beta1.BaseAccount",
            "account_number": "7", "sequence": "3"}});
        assert_eq!(base_account(&plain).unwrap(), BaseAccount { account_number: 7, sequence: 3 });
        let vesting = json!({"account": {"@type": "/cosmos.vesting.v1beta1.DelayedVestingAccount",
            "base_vesting_account": {"base_account": {"account_number": "9", "sequence": "0"}}}});
        assert_eq!(base_account(&vesting).unwrap().account_number, 9);
        assert!(matches!(base_account(&json!({"account": {}})), Err(Error::Decode(_))));
    }

    #[test]
    fn public_keys_must_be_secp256k1() {
        assert!(decode_pubkey("!!").is_err());
        assert!(decode_pubkey("AAAA").is_err());
    }
}
