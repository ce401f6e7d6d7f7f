//! The `inference.inference` messages this crate sends, written from the module's `tx.proto`
//! and `params.proto` as prost messages (the module publishes no Rust crate). Everything else on
//! the wire (transactions, authz `MsgExec`) comes from `cosmrs`.

use cosmrs::Any;
use prost::Message;

/// Type URL of [`MsgValidation`].
pub const MSG_VALIDATION_TYPE_URL: &str = "/inference.inference.MsgValidation";
/// Type URL of [`MsgClaimRewards`].
pub const MSG_CLAIM_REWARDS_TYPE_URL: &str = "/inference.inference.MsgClaimRewards";
/// Type URL of [`MsgClaimRewardsResponse`].
pub const MSG_CLAIM_REWARDS_RESPONSE_TYPE_URL: &str =
    "/inference.inference.MsgClaimRewardsResponse";
/// Type URL of authz's `MsgExec`, the wrapper a grantee signs.
pub const MSG_EXEC_TYPE_URL: &str = "/cosmos.authz.v1beta1.MsgExec";

/// `inference.inference.Decimal`: `value × 10^exponent`.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct Decimal {
    /// The coefficient.
    #[prost(int64, tag = "1")]
    pub value: i64,
    /// The power of ten.
    #[prost(int32, tag = "2")]
    pub exponent: i32,
}

/// `inference.inference.MsgValidation` (DOMAIN.md 2.8).
#[derive(Clone, PartialEq, prost::Message)]
pub struct MsgValidation {
    /// The account the validation is credited to.
    #[prost(string, tag = "1")]
    pub creator: String,
    /// A UUIDv4 chosen by the validator.
    #[prost(string, tag = "2")]
    pub id: String,
    /// The inference validated.
    #[prost(string, tag = "3")]
    pub inference_id: String,
    /// Deprecated; must stay empty or the chain rejects the message.
    #[prost(string, tag = "4")]
    pub response_payload: String,
    /// SHA-256 hex of the validator's response body.
    #[prost(string, tag = "5")]
    pub response_hash: String,
    /// Deprecated float similarity; left at 0.
    #[prost(double, tag = "6")]
    pub value: f64,
    /// Whether this answers an invalidation vote.
    #[prost(bool, tag = "7")]
    pub revalidation: bool,
    /// The similarity as a decimal.
    #[prost(message, optional, tag = "8")]
    pub value_decimal: Option<Decimal>,
}

/// `inference.inference.MsgClaimRewards`: reveals the epoch's seed and claims its rewards.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct MsgClaimRewards {
    /// The claiming account.
    #[prost(string, tag = "1")]
    pub creator: String,
    /// The epoch's sampling seed.
    #[prost(int64, tag = "2")]
    pub seed: i64,
    /// The epoch claimed.
    #[prost(uint64, tag = "3")]
    pub epoch_index: u64,
}

/// `inference.inference.MsgClaimRewardsResponse`: what a claim really did. Every claim lands with
/// code 0; a refused one says so here, with `amount` 0 and the reason in `result`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct MsgClaimRewardsResponse {
    /// Coins paid out, in ngonka.
    #[prost(uint64, tag = "1")]
    pub amount: u64,
    /// The chain's description of the outcome ("Rewards claimed", "Claim rate limited", ...).
    #[prost(string, tag = "2")]
    pub result: String,
}

/// Type URL of authz's `MsgExecResponse`, the response of a grantee's `MsgExec`.
pub const MSG_EXEC_RESPONSE_TYPE_URL: &str = "/cosmos.authz.v1beta1.MsgExecResponse";

/// The response of the transaction's one message, `type_url`, from its result data (an SDK
/// `TxMsgData`), looking inside a grantee's `MsgExecResponse`. `None` when the data holds none.
pub fn message_response<M: prost::Message + Default>(
    data: &[u8],
    type_url: &str,
) -> Result<Option<M>, prost::DecodeError> {
    let data = cosmrs::proto::cosmos::base::abci::v1beta1::TxMsgData::decode(data)?;
    for response in data.msg_responses {
        if response.type_url == type_url {
            return M::decode(response.value.as_slice()).map(Some);
        }
        if response.type_url == MSG_EXEC_RESPONSE_TYPE_URL {
            let exec = cosmrs::proto::cosmos::authz::v1beta1::MsgExecResponse::decode(
                response.value.as_slice(),
            )?;
            if let Some(inner) = exec.results.first() {
                return M::decode(inner.as_slice()).map(Some);
            }
        }
    }
    Ok(None)
}

/// `msg` packed as an `Any` under `type_url`.
pub(crate) fn pack(type_url: &str, msg: &impl prost::Message) -> Any {
    Any { type_url: type_url.to_owned(), value: msg.encode_to_vec() }
}

/// Whether the signed transaction `tx` carries a `MsgValidation` of id `id` whose creator is
/// `creator`, on its own or inside an authz `MsgExec`. Bytes that do not decode carry none.
pub fn carries_validation(tx: &[u8], id: &str, creator: &str) -> bool {
    use cosmrs::proto::cosmos::{
        authz::v1beta1::MsgExec,
        tx::v1beta1::{TxBody, TxRaw},
    };
    let Ok(raw) = TxRaw::decode(tx) else { return false };
    let Ok(body) = TxBody::decode(raw.body_bytes.as_slice()) else { return false };
    let matches = |any: &Any| {
        any.type_url == MSG_VALIDATION_TYPE_URL
            && MsgValidation::decode(any.value.as_slice())
                .is_ok_and(|msg| msg.id == id && msg.creator == creator)
    };
    body.messages.iter().any(|any| {
        matches(any)
            || (any.type_url == MSG_EXEC_TYPE_URL
                && MsgExec::decode(any.value.as_slice())
                    .is_ok_and(|exec| exec.msgs.iter().any(matches)))
    })
}

/// `msgs` wrapped in an authz `MsgExec` signed by `grantee`.
pub(crate) fn exec(grantee: &str, msgs: Vec<Any>) -> Any {
    let exec = cosmrs::proto::cosmos::authz::v1beta1::MsgExec { grantee: grantee.to_owned(), msgs };
    Any { type_url: MSG_EXEC_TYPE_URL.to_owned(), value: exec.encode_to_vec() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msg_validation_has_the_upstream_field_numbers() {
        let msg = MsgValidation {
            creator: "c".into(),
            id: "i".into(),
            inference_id: "x".into(),
            response_hash: "h".into(),
            revalidation: true,
            value_decimal: Some(Decimal { value: 9987, exponent: -4 }),
            ..MsgValidation::default()
        };
        let bytes = msg.encode_to_vec();
        // Field 1 "c", 2 "i", 3 "x", 5 "h", 7 true, 8 {1: 9987, 2: -4 (zigzag-free varint)}.
        assert_eq!(&bytes[..12], &[0x0a, 1, b'c', 0x12, 1, b'i', 0x1a, 1, b'x', 0x2a, 1, b'h']);
        assert_eq!(&bytes[12..14], &[0x38, 1]);
        assert_eq!(bytes[14], 0x42);
        assert_eq!(MsgValidation::decode(bytes.as_slice()).unwrap(), msg);
    }

    #[test]
    fn claim_responses_are_found_directly_or_inside_exec() {
        let response = MsgClaimRewardsResponse { amount: 0, result: "Claim rate limited".into() };
        let direct = cosmrs::proto::cosmos::base::abci::v1beta1::TxMsgData {
            msg_responses: vec![pack(MSG_CLAIM_REWARDS_RESPONSE_TYPE_URL, &response)],
            ..Default::default()
        };
        let found: Option<MsgClaimRewardsResponse> =
            message_response(&direct.encode_to_vec(), MSG_CLAIM_REWARDS_RESPONSE_TYPE_URL).unwrap();
        assert_eq!(found, Some(response.clone()));
        let exec = cosmrs::proto::cosmos::authz::v1beta1::MsgExecResponse {
            results: vec![response.encode_to_vec()],
        };
        let wrapped = cosmrs::proto::cosmos::base::abci::v1beta1::TxMsgData {
            msg_responses: vec![pack(MSG_EXEC_RESPONSE_TYPE_URL, &exec)],
            ..Default::default()
        };
        let found: Option<MsgClaimRewardsResponse> =
            message_response(&wrapped.encode_to_vec(), MSG_CLAIM_REWARDS_RESPONSE_TYPE_URL)
                .unwrap();
        assert_eq!(found, Some(response));
        let none: Option<MsgClaimRewardsResponse> =
            message_response(&[], MSG_CLAIM_REWARDS_RESPONSE_TYPE_URL).unwrap();
        assert_eq!(none, None);
        assert!(message_response::<MsgClaimRewardsResponse>(&[0xff], "x").is_err());
    }

    #[test]
    fn a_zero_decimal_is_still_sent() {
        let msg =
            MsgValidation { value_decimal: Some(Decimal::default()), ..MsgValidation::default() };
        let decoded = MsgValidation::decode(msg.encode_to_vec().as_slice()).unwrap();
        assert_eq!(decoded.value_decimal, Some(Decimal { value: 0, exponent: 0 }));
    }
}
