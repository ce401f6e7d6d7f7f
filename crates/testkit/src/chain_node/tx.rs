//! The fake's `broadcast_tx_sync` and `tx`: decodes a signed transaction, checks it as the
//! chain's ante handler and the `inference` module would, applies it and indexes its result by
//! hash as the block at the current tip. Its message types are written here from the module's
//! `tx.proto`, independently of the adapter's.
//!
//! As the chain since v0.2.14, with classic validation retired a `MsgValidation` passes
//! `CheckTx` and fails in its block with `ErrDeprecated` (1161). Claims follow the module's
//! claim handler: every outcome lands with code 0 and says what happened in
//! `MsgClaimRewardsResponse{amount, result}` (previous epoch only, one attempt per 30 blocks,
//! nothing paid without a settled amount of that epoch). The one difference: an account that
//! never attempted a claim is not rate-limited at heights below 30.

use base64::Engine as _;
use cosmrs::{
    proto::cosmos::{
        authz::v1beta1::{MsgExec, MsgExecResponse},
        base::abci::v1beta1::TxMsgData,
        crypto::secp256k1::PubKey,
        tx::v1beta1::{AuthInfo, SignDoc, TxBody, TxRaw},
    },
    Any,
};
use prost::Message as _;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{State, Submitted, SubmittedMsg};

#[derive(Clone, PartialEq, prost::Message)]
struct Decimal {
    #[prost(int64, tag = "1")]
    value: i64,
    #[prost(int32, tag = "2")]
    exponent: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
struct MsgValidation {
    #[prost(string, tag = "1")]
    creator: String,
    #[prost(string, tag = "2")]
    id: String,
    #[prost(string, tag = "3")]
    inference_id: String,
    #[prost(string, tag = "4")]
    response_payload: String,
    #[prost(string, tag = "5")]
    response_hash: String,
    #[prost(double, tag = "6")]
    value: f64,
    #[prost(bool, tag = "7")]
    revalidation: bool,
    #[prost(message, optional, tag = "8")]
    value_decimal: Option<Decimal>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct MsgClaimRewardsResponse {
    #[prost(uint64, tag = "1")]
    amount: u64,
    #[prost(string, tag = "2")]
    result: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct MsgClaimRewards {
    #[prost(string, tag = "1")]
    creator: String,
    #[prost(int64, tag = "2")]
    seed: i64,
    #[prost(uint64, tag = "3")]
    epoch_index: u64,
}

/// ABCI code and codespace of `ErrDuplicateValidation`.
pub(super) const DUPLICATE: (u32, &str) = (1143, "inference");
/// ABCI code and codespace of `ErrDeprecated`.
const DEPRECATED: (u32, &str) = (1161, "inference");
/// Blocks between two claim attempts of one account.
const CLAIM_INTERVAL: u64 = 30;

/// A transaction's result as its block holds it.
#[derive(Debug, Clone)]
pub(super) struct TxRecord {
    height: u64,
    code: u32,
    codespace: &'static str,
    log: String,
    /// `TxMsgData`, protobuf.
    data: Vec<u8>,
    tx: String,
}

/// The `block` result for `params.height`: its header's height and every transaction it
/// holds (base64), as CometBFT renders them; the node's error for a height it does not have.
pub(super) fn block(state: &State, params: &Value) -> Result<Value, String> {
    let height = params
        .get("height")
        .and_then(Value::as_str)
        .and_then(|height| height.parse::<u64>().ok())
        .unwrap_or(state.tip);
    if height > state.tip || height < state.earliest {
        return Err(format!(
            "height {height} is not available, lowest height is {}",
            state.earliest
        ));
    }
    let txs: Vec<&str> = state
        .txs
        .values()
        .filter(|record| record.height == height)
        .map(|r| r.tx.as_str())
        .collect();
    Ok(json!({
        "block_id": {"hash": ""},
        "block": {"header": {"height": height.to_string()}, "data": {"txs": txs}},
    }))
}

/// The `tx` result for `params.hash` (base64), or the node's "not found" message.
pub(super) fn lookup(state: &State, params: &Value) -> Result<Value, String> {
    let encoded = params.get("hash").and_then(Value::as_str).unwrap_or("");
    let hash = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map(|bytes| hex_upper(&bytes))
        .map_err(|_| "invalid hash".to_owned())?;
    let record = state
        .txs
        .get(&hash)
        .filter(|_| !state.hide_txs)
        .ok_or_else(|| format!("tx ({hash}) not found"))?;
    Ok(json!({
        "hash": hash,
        "height": record.height.to_string(),
        "index": 0,
        "tx_result": {
            "code": record.code,
            "data": base64::engine::general_purpose::STANDARD.encode(&record.data),
            "log": record.log,
            "info": "",
            "gas_wanted": "0",
            "gas_used": "0",
            "events": [],
            "codespace": record.codespace,
        },
        "tx": record.tx,
    }))
}

struct Rejection {
    code: u32,
    codespace: &'static str,
    log: String,
}

fn reject(code: u32, codespace: &'static str, log: impl Into<String>) -> Rejection {
    Rejection { code, codespace, log: log.into() }
}

/// The `broadcast_tx_sync` result for `tx` (base64), applying it to `state` when accepted; a
/// transaction already seen is the JSON-RPC error CometBFT answers for its mempool cache.
pub(super) fn broadcast(state: &mut State, encoded: &str) -> Result<Value, String> {
    let hash = match base64::engine::general_purpose::STANDARD.decode(encoded) {
        Ok(bytes) => {
            let hash = hex_upper(&Sha256::digest(&bytes));
            if state.txs.contains_key(&hash) {
                state.repeated_broadcasts += 1;
                return Err("error on broadcastTxSync: tx already exists in cache".into());
            }
            match check_and_apply(state, &bytes, &hash) {
                Ok(mut record) => {
                    encoded.clone_into(&mut record.tx);
                    state.txs.insert(hash.clone(), record);
                    return Ok(
                        json!({"code": 0, "data": "", "log": "[]", "codespace": "", "hash": hash}),
                    );
                }
                Err(rejection) => {
                    if (rejection.code, rejection.codespace) == DUPLICATE {
                        state.duplicate_rejections += 1;
                    }
                    return Ok(json!({"code": rejection.code, "data": "", "log": rejection.log,
                        "codespace": rejection.codespace, "hash": hash}));
                }
            }
        }
        Err(_) => String::new(),
    };
    Ok(json!({"code": 2, "data": "", "log": "tx parse error", "codespace": "sdk", "hash": hash}))
}

fn check_and_apply(state: &mut State, bytes: &[u8], hash: &str) -> Result<TxRecord, Rejection> {
    let parse = |what: &str| reject(2, "sdk", format!("tx parse error: {what}"));
    let raw = TxRaw::decode(bytes).map_err(|_| parse("raw"))?;
    let body = TxBody::decode(raw.body_bytes.as_slice()).map_err(|_| parse("body"))?;
    let auth_info =
        AuthInfo::decode(raw.auth_info_bytes.as_slice()).map_err(|_| parse("auth info"))?;
    let [signer_info] = auth_info.signer_infos.as_slice() else {
        return Err(reject(4, "sdk", "expected exactly one signer"));
    };
    let [signature] = raw.signatures.as_slice() else {
        return Err(reject(4, "sdk", "expected exactly one signature"));
    };
    let key = signer_info
        .public_key
        .as_ref()
        .filter(|any| any.type_url == "/cosmos.crypto.secp256k1.PubKey")
        .and_then(|any| PubKey::decode(any.value.as_slice()).ok())
        .ok_or_else(|| reject(4, "sdk", "missing secp256k1 public key"))?
        .key;
    let signer = chain_source::tx::address_of(&key, &state.prefix)
        .map_err(|_| reject(4, "sdk", "bad public key"))?;
    let account = state
        .accounts
        .get(&signer)
        .cloned()
        .ok_or_else(|| reject(9, "sdk", format!("account {signer} not found")))?;
    if !account.public_key.is_empty() && account.public_key != key {
        return Err(reject(4, "sdk", "pubKey does not match signer address"));
    }
    let sign_doc = SignDoc {
        body_bytes: raw.body_bytes.clone(),
        auth_info_bytes: raw.auth_info_bytes.clone(),
        chain_id: state.chain_id.clone(),
        account_number: account.number,
    };
    if !chain_source::signer::verify(&key, &sign_doc.encode_to_vec(), signature) {
        return Err(reject(4, "sdk", "signature verification failed; please verify account number and chain-id: unauthorized"));
    }
    if signer_info.sequence != account.sequence {
        return Err(reject(
            32,
            "sdk",
            format!(
                "account sequence mismatch, expected {}, got {}: incorrect account sequence",
                account.sequence, signer_info.sequence
            ),
        ));
    }
    let fee = auth_info.fee.unwrap_or_default();
    let fee_granter = Some(fee.granter).filter(|granter| !granter.is_empty());
    if let Some(granter) = fee_granter.as_ref().filter(|granter| **granter != signer) {
        if !state.fee_allowances.contains(&(granter.clone(), signer.clone())) {
            return Err(reject(
                38,
                "sdk",
                format!("{granter} does not allow to pay fees for {signer}: fee-grant not found: not found"),
            ));
        }
    }
    let fee_ngonka = fee
        .amount
        .iter()
        .filter(|coin| coin.denom == chain_source::tx::FEE_DENOM)
        .filter_map(|coin| coin.amount.parse::<u128>().ok())
        .sum();
    let mut messages = Vec::new();
    for any in &body.messages {
        if any.type_url == "/cosmos.authz.v1beta1.MsgExec" {
            let exec = MsgExec::decode(any.value.as_slice()).map_err(|_| parse("MsgExec"))?;
            if exec.grantee != signer {
                return Err(reject(4, "sdk", "MsgExec grantee is not the signer"));
            }
            for inner in &exec.msgs {
                let msg = decode_msg(&inner.type_url, &inner.value)?;
                let granted = state.grants.iter().any(|(granter, grantee, type_url)| {
                    granter == msg.creator() && grantee == &signer && type_url == &inner.type_url
                });
                if !granted {
                    return Err(reject(2, "authz", "authorization not found"));
                }
                messages.push((msg, true));
            }
        } else {
            let msg = decode_msg(&any.type_url, &any.value)?;
            if msg.creator() != signer {
                return Err(reject(4, "sdk", "creator is not the signer"));
            }
            messages.push((msg, false));
        }
    }
    let mut validated = Vec::new();
    for (msg, _) in &messages {
        if let SubmittedMsg::Validation {
            creator,
            inference_id,
            revalidation,
            response_payload,
            ..
        } = msg
        {
            let inference = state
                .inferences
                .get(inference_id)
                .ok_or_else(|| reject(1102, "inference", "inference with id not found"))?;
            if !response_payload.is_empty() {
                return Err(reject(1152, "inference", "validation response payload is deprecated"));
            }
            if !revalidation {
                let key = (creator.clone(), inference.epoch_id);
                let already =
                    state.validated.get(&key).is_some_and(|ids| ids.contains(inference_id))
                        || validated.contains(&(key.clone(), inference_id.clone()));
                if already {
                    return Err(reject(
                        DUPLICATE.0,
                        DUPLICATE.1,
                        "participant has already validated this inference",
                    ));
                }
                validated.push((key, inference_id.clone()));
            }
        }
    }
    // From here on the transaction is in the block: the sequence is spent whatever its messages
    // do, and a message that fails fails the whole transaction.
    if let Some(account) = state.accounts.get_mut(&signer) {
        account.sequence += 1;
    }
    let height = state.tip;
    let failed = |(code, codespace): (u32, &'static str), log: &str| TxRecord {
        height,
        code,
        codespace,
        log: log.to_owned(),
        data: Vec::new(),
        tx: String::new(),
    };
    let has_validation =
        messages.iter().any(|(msg, _)| matches!(msg, SubmittedMsg::Validation { .. }));
    if state.classic_retired && has_validation {
        state.deprecated_rejections += 1;
        // Also in the results of the block after the tip, as the event source reads them.
        state.failed_txs.entry(height + 1).or_default().push((DEPRECATED.0, DEPRECATED.1));
        return Ok(failed(
            DEPRECATED,
            "this message type is deprecated: classic inference is deprecated; use devshard",
        ));
    }
    for (key, id) in validated {
        state.validated.entry(key).or_default().insert(id);
    }
    let mut responses = Vec::new();
    for (msg, via_exec) in &messages {
        let (type_url, value) = match msg {
            SubmittedMsg::ClaimRewards { creator, epoch_index, .. } => {
                let response = claim(state, creator, *epoch_index, height);
                state.claim_responses.push((
                    *epoch_index,
                    response.amount,
                    response.result.clone(),
                ));
                ("/inference.inference.MsgClaimRewardsResponse", response.encode_to_vec())
            }
            SubmittedMsg::Validation { .. } => {
                ("/inference.inference.MsgValidationResponse", Vec::new())
            }
        };
        responses.push(if *via_exec {
            let exec = MsgExecResponse { results: vec![value] };
            Any {
                type_url: "/cosmos.authz.v1beta1.MsgExecResponse".into(),
                value: exec.encode_to_vec(),
            }
        } else {
            Any { type_url: type_url.into(), value }
        });
    }
    let data = TxMsgData { msg_responses: responses, ..TxMsgData::default() }.encode_to_vec();
    for (msg, via_exec) in messages {
        state.submitted.push(Submitted {
            signer: signer.clone(),
            via_exec,
            sequence: signer_info.sequence,
            tx_hash: hash.to_owned(),
            gas_limit: fee.gas_limit,
            fee_ngonka,
            fee_granter: fee_granter.clone(),
            msg,
        });
    }
    Ok(TxRecord { height, code: 0, codespace: "", log: "[]".into(), data, tx: String::new() })
}

/// The claim handler: what a `MsgClaimRewards` of `creator` for `epoch` does at `height`.
fn claim(state: &mut State, creator: &str, epoch: u64, height: u64) -> MsgClaimRewardsResponse {
    let refuse = |result: &str| MsgClaimRewardsResponse { amount: 0, result: result.into() };
    // The epoch in effect, as the handler checks: the latest one's PoC stage still belongs to
    // the previous epoch.
    let schedule = chain_source::schedule::EpochSchedule {
        epoch_index: state.epoch.index,
        poc_start_block_height: state.epoch.poc_start_block_height,
        params: state.epoch.params,
    };
    let current = schedule.effective_epoch(i64::try_from(height).unwrap_or(i64::MAX));
    if current == 0 || current - 1 != epoch {
        return refuse("Can't validate claim, current epoch group does not match previous epoch");
    }
    let Some(amount) = state.settle_amounts.get_mut(creator) else {
        return refuse("No rewards for this address");
    };
    if amount.epoch_index != epoch {
        return refuse("No rewards for this block height");
    }
    if amount.last_claim_attempt.is_some_and(|last| height.saturating_sub(last) < CLAIM_INTERVAL) {
        return refuse("Claim rate limited");
    }
    amount.last_claim_attempt = Some(height);
    let total = amount.reward_coins.saturating_add(amount.work_coins);
    if total == 0 {
        return refuse("No rewards for this address");
    }
    state.settle_amounts.remove(creator);
    MsgClaimRewardsResponse { amount: total, result: "Rewards claimed successfully".into() }
}

fn decode_msg(type_url: &str, value: &[u8]) -> Result<SubmittedMsg, Rejection> {
    match type_url {
        "/inference.inference.MsgValidation" => {
            let msg =
                MsgValidation::decode(value).map_err(|_| reject(2, "sdk", "bad MsgValidation"))?;
            Ok(SubmittedMsg::Validation {
                creator: msg.creator,
                id: msg.id,
                inference_id: msg.inference_id,
                response_payload: msg.response_payload,
                response_hash: msg.response_hash,
                value: msg.value,
                revalidation: msg.revalidation,
                value_decimal: msg.value_decimal.map(|decimal| (decimal.value, decimal.exponent)),
            })
        }
        "/inference.inference.MsgClaimRewards" => {
            let msg = MsgClaimRewards::decode(value)
                .map_err(|_| reject(2, "sdk", "bad MsgClaimRewards"))?;
            Ok(SubmittedMsg::ClaimRewards {
                creator: msg.creator,
                seed: msg.seed,
                epoch_index: msg.epoch_index,
            })
        }
        other => Err(reject(6, "sdk", format!("unrecognized message type {other}"))),
    }
}

fn hex_upper(bytes: &[u8]) -> String {
    chain_source::hex::encode(bytes).to_ascii_uppercase()
}
