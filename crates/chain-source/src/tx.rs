//! [`Submitter`]: builds, signs (secp256k1, `SIGN_MODE_DIRECT`) and broadcasts transactions
//! (`broadcast_tx_sync`), one at a time, keeping the signer's account number and sequence.
//!
//! One task owns the sequence and handles submissions in arrival order, so concurrent callers
//! never sign with the same sequence and the node sees them in sequence order; no lock is held
//! while a broadcast is in flight. A `sequence mismatch` answer (or a failure that leaves the
//! sequence unknown) makes the task re-learn it, from the node's log line or the account query,
//! and retry. When the signer is not the account (a warm key), every message is wrapped in an
//! authz `MsgExec` signed by the grantee, with the account as fee granter unless
//! `tx.fee_granter` is off. Gas is budgeted per message type ([`GasConfig`]).
//!
//! A transaction the mempool accepted may still fail in its block (the chain's message
//! handlers run only there): [`observe`] follows it by hash until a block includes it or
//! `tx.inclusion_timeout` passes, broadcasting it once more halfway, and reads its result.

use std::{sync::Arc, time::Duration};

use cosmrs::{
    crypto::PublicKey,
    tendermint::chain,
    tx::{Body, Fee, SignDoc, SignerInfo},
    AccountId, Any, Coin,
};
use prost::Message as _;
use tokio::sync::{mpsc, oneshot};

use crate::{
    config::GasConfig,
    proto,
    query::{BaseAccount, QueryClient},
    rpc::{RpcClient, TxResult},
    Error, Result, Signer,
};

/// ABCI code of the SDK's `ErrWrongSequence` (codespace `sdk`).
pub const CODE_WRONG_SEQUENCE: u32 = 32;
/// ABCI code of the `inference` module's `ErrDuplicateValidation`.
pub const CODE_DUPLICATE_VALIDATION: u32 = 1143;
/// ABCI code of the `inference` module's `ErrDeprecated`: since v0.2.14 the chain refuses
/// classic `MsgValidation` with it (LIVE-NETWORK.md section 1).
pub const CODE_DEPRECATED: u32 = 1161;
/// The SDK's codespace.
pub const CODESPACE_SDK: &str = "sdk";
/// The `inference` module's codespace.
pub const CODESPACE_INFERENCE: &str = "inference";

/// The denomination fees are paid in.
pub const FEE_DENOM: &str = "ngonka";

/// How many times one submission is signed and broadcast before a sequence mismatch is given
/// back to the caller: one stale sequence, one re-learned from the node, one from the account.
const MAX_ATTEMPTS: usize = 3;

/// Submissions waiting for the submitting task; callers wait for room beyond this.
const QUEUE: usize = 64;

/// The identity transactions are signed with.
#[derive(Debug, Clone)]
pub struct TxIdentity {
    /// The account messages are created by (`creator`).
    pub account_address: String,
    /// The key that signs; its address is the account's, or a grantee's (warm key).
    pub signer: Signer,
    /// The signer's bech32 address.
    pub signer_address: String,
}

impl TxIdentity {
    /// The identity of `signer` acting for `account_address`; the signer's address is derived
    /// with `prefix`.
    pub fn new(account_address: impl Into<String>, signer: Signer, prefix: &str) -> Result<Self> {
        let signer_address = address_of(&signer.public_key(), prefix)?;
        Ok(Self { account_address: account_address.into(), signer, signer_address })
    }

    /// Whether the signer is a grantee of the account (messages go inside `MsgExec`).
    pub fn is_warm(&self) -> bool {
        self.signer_address != self.account_address
    }
}

/// The bech32 account address of a compressed secp256k1 public key.
pub fn address_of(public_key: &[u8], prefix: &str) -> Result<String> {
    let key = k256::ecdsa::VerifyingKey::from_sec1_bytes(public_key)
        .map_err(|err| Error::Key(err.to_string()))?;
    PublicKey::from(key)
        .account_id(prefix)
        .map(|id| id.to_string())
        .map_err(|err| Error::Key(err.to_string()))
}

/// A transaction the node's mempool accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broadcast {
    /// Its hash, upper-case hex.
    pub hash: String,
    /// The signed bytes, for a second broadcast.
    pub tx: Vec<u8>,
}

/// How a followed transaction ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inclusion {
    /// A block includes it; its result code may still be non-zero.
    Included(TxResult),
    /// No block included it within the deadline.
    NotIncluded {
        /// The last lookup error, when lookups failed rather than found nothing.
        last_error: Option<String>,
    },
}

/// What [`Submitter::submit`] sends: one message, created by the account.
struct Request {
    msg: Any,
    reply: oneshot::Sender<Result<Broadcast>>,
}

struct Context {
    identity: TxIdentity,
    chain_id: chain::Id,
    gas: GasConfig,
    /// The account, named as fee granter of a warm key's transactions.
    fee_granter: Option<AccountId>,
    rpc: Arc<RpcClient>,
    query: QueryClient,
}

/// Signs and broadcasts messages through one submitting task. Cloning shares the task; the task
/// ends when the last clone is dropped.
#[derive(Clone)]
pub struct Submitter {
    requests: mpsc::Sender<Request>,
    timeout: Duration,
}

impl std::fmt::Debug for Submitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Submitter").field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

impl Submitter {
    /// Starts the submitting task on the current Tokio runtime.
    pub fn spawn(
        identity: TxIdentity,
        config: &crate::config::TxConfig,
        rpc: Arc<RpcClient>,
        query: QueryClient,
    ) -> Result<Self> {
        let chain_id: chain::Id = config.chain_id.parse().map_err(|_| Error::InvalidConfig {
            key: "tx.chain_id".into(),
            allowed: "a chain id of at most 50 characters",
        })?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::Transport("no Tokio runtime to run the submitter on".into()))?;
        let (requests, inbox) = mpsc::channel(QUEUE);
        let fee_granter = if identity.is_warm() && config.fee_granter {
            Some(identity.account_address.parse::<AccountId>().map_err(|_| {
                Error::InvalidConfig {
                    key: "identity.account_address".into(),
                    allowed: "a bech32 account address",
                }
            })?)
        } else {
            None
        };
        let context = Context { identity, chain_id, gas: config.gas, fee_granter, rpc, query };
        runtime.spawn(run(context, inbox));
        Ok(Self { requests, timeout: config.timeout })
    }

    /// Signs and broadcasts `msg` (created by the account; wrapped in `MsgExec` for a warm key)
    /// and returns the transaction once the node's mempool accepted it.
    ///
    /// Bounded by the configured timeout, waiting for earlier submissions included. Dropping the
    /// future before the task takes the message withdraws it; once taken, it is broadcast.
    pub async fn submit(&self, msg: Any) -> Result<Broadcast> {
        let submit = async {
            let (reply, answer) = oneshot::channel();
            self.requests
                .send(Request { msg, reply })
                .await
                .map_err(|_| Error::Transport("the submitter has stopped".into()))?;
            answer.await.map_err(|_| Error::Transport("the submitter has stopped".into()))?
        };
        tokio::time::timeout(self.timeout, submit)
            .await
            .unwrap_or_else(|_| Err(Error::Timeout("transaction submission".into())))
    }
}

async fn run(context: Context, mut inbox: mpsc::Receiver<Request>) {
    let mut account: Option<BaseAccount> = None;
    while let Some(request) = inbox.recv().await {
        if request.reply.is_closed() {
            continue;
        }
        let result = submit_one(&context, &mut account, request.msg).await;
        // The caller may have timed out meanwhile; the transaction stands either way.
        let _ = request.reply.send(result);
    }
}

async fn submit_one(
    context: &Context,
    account: &mut Option<BaseAccount>,
    msg: Any,
) -> Result<Broadcast> {
    let gas = context.gas.wanted(&msg.type_url);
    let msg = if context.identity.is_warm() {
        proto::exec(&context.identity.signer_address, vec![msg])
    } else {
        msg
    };
    let mut last = None;
    for _ in 0..MAX_ATTEMPTS {
        let current = match *account {
            Some(current) => current,
            None => {
                let fresh = context.query.account(&context.identity.signer_address).await?;
                *account = Some(fresh);
                fresh
            }
        };
        let tx = sign(context, &msg, current, gas)?;
        let answer = match context.rpc.broadcast_tx_sync(&tx).await {
            Ok(answer) => answer,
            Err(err) => {
                // The transaction may or may not have reached the mempool.
                *account = None;
                return Err(err);
            }
        };
        if answer.code == 0 {
            *account = Some(BaseAccount { sequence: current.sequence + 1, ..current });
            return Ok(Broadcast { hash: answer.hash, tx });
        }
        if answer.codespace == CODESPACE_SDK && answer.code == CODE_WRONG_SEQUENCE {
            tracing::debug!(log = %answer.log, "sequence mismatch, re-learning the sequence");
            *account = expected_sequence(&answer.log)
                .filter(|expected| *expected != current.sequence)
                .map(|sequence| BaseAccount { sequence, ..current });
            last = Some(Error::TxRejected { code: answer.code, log: answer.log });
            continue;
        }
        if answer.codespace == CODESPACE_INFERENCE && answer.code == CODE_DUPLICATE_VALIDATION {
            return Err(Error::DuplicateValidation(answer.log));
        }
        if answer.codespace == CODESPACE_INFERENCE && answer.code == CODE_DEPRECATED {
            return Err(Error::Deprecated(answer.log));
        }
        return Err(Error::TxRejected { code: answer.code, log: answer.log });
    }
    Err(last.unwrap_or_else(|| Error::TxRejected { code: CODE_WRONG_SEQUENCE, log: String::new() }))
}

/// Follows the broadcast transaction by hash until a block includes it or `timeout` passes,
/// looking every `poll`; halfway through, a transaction not yet found is broadcast once more
/// (a node may drop it from its mempool). Lookup failures (a malformed answer, an answer about
/// another hash, a timeout) are counted and the lookups go on.
pub async fn observe(
    rpc: &RpcClient,
    broadcast: &Broadcast,
    timeout: Duration,
    poll: Duration,
) -> Inclusion {
    let deadline = tokio::time::Instant::now() + timeout;
    let rebroadcast_at = tokio::time::Instant::now() + timeout / 2;
    let mut rebroadcast = false;
    let mut last_error = None;
    loop {
        match tokio::time::timeout_at(deadline, rpc.tx(&broadcast.hash)).await {
            Ok(Ok(result)) => return Inclusion::Included(result),
            Ok(Err(Error::NotFound(_))) => last_error = None,
            Ok(Err(err @ Error::TxIndexDisabled)) => {
                return Inclusion::NotIncluded { last_error: Some(err.to_string()) }
            }
            Ok(Err(err)) => {
                metrics::counter!("validator_tx_lookup_failures_total").increment(1);
                tracing::debug!(hash = %broadcast.hash, %err, "transaction lookup failed");
                last_error = Some(err.to_string());
            }
            Err(_) => break,
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            break;
        }
        if !rebroadcast && now >= rebroadcast_at {
            rebroadcast = true;
            let again = tokio::time::timeout_at(deadline, rpc.broadcast_tx_sync(&broadcast.tx))
                .await
                .unwrap_or_else(|_| Err(Error::Timeout("second broadcast".into())));
            match again {
                Ok(answer) if answer.code == 0 => {
                    tracing::info!(hash = %broadcast.hash, "transaction not seen yet; broadcast it again");
                }
                Ok(answer) => tracing::debug!(
                    hash = %broadcast.hash, code = answer.code, log = %answer.log,
                    "second broadcast refused"
                ),
                Err(err) => {
                    tracing::debug!(hash = %broadcast.hash, %err, "second broadcast failed")
                }
            }
        }
        tokio::time::sleep_until((now + poll).min(deadline)).await;
    }
    Inclusion::NotIncluded { last_error }
}

fn sign(context: &Context, msg: &Any, account: BaseAccount, gas: u64) -> Result<Vec<u8>> {
    let failed =
        |err: cosmrs::ErrorReport| Error::Key(format!("cannot build the transaction: {err}"));
    let key = k256::ecdsa::VerifyingKey::from_sec1_bytes(&context.identity.signer.public_key())
        .map_err(|err| Error::Key(err.to_string()))?;
    let body = Body::new(vec![msg.clone()], String::new(), 0u32);
    let amount = match context.gas.fee(gas) {
        0 => Vec::new(),
        amount => {
            let denom = FEE_DENOM.parse().map_err(failed)?;
            vec![Coin { denom, amount }]
        }
    };
    let fee = Fee { amount, gas_limit: gas, payer: None, granter: context.fee_granter.clone() };
    let auth_info =
        SignerInfo::single_direct(Some(PublicKey::from(key)), account.sequence).auth_info(fee);
    let sign_doc = SignDoc::new(&body, &auth_info, &context.chain_id, account.account_number)
        .map_err(failed)?;
    let body_bytes = sign_doc.body_bytes.clone();
    let auth_info_bytes = sign_doc.auth_info_bytes.clone();
    let sign_bytes = sign_doc.into_bytes().map_err(failed)?;
    let signature = context.identity.signer.sign(&sign_bytes);
    let raw = cosmrs::proto::cosmos::tx::v1beta1::TxRaw {
        body_bytes,
        auth_info_bytes,
        signatures: vec![signature.to_vec()],
    };
    Ok(raw.encode_to_vec())
}

/// The sequence the node expects, from its log line
/// (`account sequence mismatch, expected 7, got 5: incorrect account sequence`).
fn expected_sequence(log: &str) -> Option<u64> {
    let rest = log.split("expected ").nth(1)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_expected_sequence_is_read_from_the_log() {
        let log = "account sequence mismatch, expected 7, got 5: incorrect account sequence";
        assert_eq!(expected_sequence(log), Some(7));
        assert_eq!(expected_sequence("incorrect account sequence"), None);
        assert_eq!(expected_sequence("expected x"), None);
    }

    #[test]
    fn addresses_are_bech32_of_the_key_hash() {
        let signer = Signer::from_bytes(&[7; 32]).unwrap();
        let address = address_of(&signer.public_key(), "gonka").unwrap();
        assert!(address.starts_with("gonka1"), "{address}");
        assert_eq!(address.len(), "gonka1".len() + 38);
        assert!(matches!(address_of(b"junk", "gonka"), Err(Error::Key(_))));
        let identity = TxIdentity::new(address.clone(), signer.clone(), "gonka").unwrap();
        assert!(!identity.is_warm());
        let warm = TxIdentity::new("gonka1other", signer, "gonka").unwrap();
        assert!(warm.is_warm());
    }
}
