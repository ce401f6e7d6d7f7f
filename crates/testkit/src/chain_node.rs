//! [`LoopbackChainNode`]: a chain node on loopback speaking what the chain adapter speaks, for its
//! tests, the demo and the chaos tests: one HTTP server (`127.0.0.1:0`) answering
//!
//! - CometBFT JSON-RPC (`POST /`): `status`, `block_results` (0.38 shapes; 0.34 shapes with
//!   base64 attributes on request), `abci_query` (the `inference` module's gRPC queries and the
//!   auth module's account, protobuf), `broadcast_tx_sync`, which decodes the signed
//!   transaction, checks signature, account sequence and authz grants, and records
//!   `MsgValidation` and `MsgClaimRewards` (also inside `MsgExec`), rejecting a second
//!   validation of an inference with the module's `ErrDuplicateValidation` (code 1143,
//!   codespace `inference`), and `tx` by hash with the transaction's result and message
//!   responses;
//! - the websocket (`GET /websocket`): `subscribe`, then one NewBlock notification per new
//!   height, unless the height is set to be skipped or the node is stalled, and any raw frame
//!   queued with [`LoopbackChainNode::send_frame`];
//!
//! The chain is scripted: accounts and keys, grants, participants, inferences, epochs and
//! epoch groups, and blocks with their transactions' events. It can drop every websocket, skip
//! heights in its notifications and stall.

use std::{
    collections::{BTreeMap, BTreeSet},
    convert::Infallible,
    io,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use base64::Engine as _;
use bytes::Bytes;
use chain_source::query::EpochParams;
use futures_util::{SinkExt as _, StreamExt as _};
use http_body_util::{BodyExt as _, Full};
use hyper::{body::Incoming, header, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::{net::TcpListener, sync::Notify};
use tokio_tungstenite::{
    tungstenite::{handshake::derive_accept_key, protocol::Role, Message},
    WebSocketStream,
};
use tokio_util::sync::{CancellationToken, DropGuard};
use validator_core::ports::chain::{EpochGroup, Inference, ValidationDetails, ValidatorPower};

use crate::ca::ServerTls;

mod abci;
mod tx;

/// The chain id the fake signs with.
pub const CHAIN_ID: &str = "gonka-testnet";
/// The bech32 prefix of the fake's addresses.
pub const ADDRESS_PREFIX: &str = "gonka";

/// One event of a scripted transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxEvent {
    /// The event type.
    pub kind: String,
    /// Its attributes, in order.
    pub attributes: Vec<(String, String)>,
}

impl TxEvent {
    /// `inference_finished{inference_id}`.
    pub fn inference_finished(id: &str) -> Self {
        Self {
            kind: "inference_finished".into(),
            attributes: vec![("inference_id".into(), id.into())],
        }
    }

    /// `inference_validation{inference_id, validator, needs_revalidation, passed}`.
    pub fn inference_validation(id: &str, validator: &str, needs_revalidation: bool) -> Self {
        Self {
            kind: "inference_validation".into(),
            attributes: vec![
                ("inference_id".into(), id.into()),
                ("validator".into(), validator.into()),
                ("needs_revalidation".into(), needs_revalidation.to_string()),
                ("passed".into(), (!needs_revalidation).to_string()),
            ],
        }
    }
}

/// A message the fake accepted, decoded with its own copy of the module's messages.
#[derive(Debug, Clone, PartialEq)]
pub enum SubmittedMsg {
    /// `MsgValidation`.
    Validation {
        /// `creator`.
        creator: String,
        /// `id`.
        id: String,
        /// `inference_id`.
        inference_id: String,
        /// `response_payload` (deprecated; the fake rejects a non-empty one).
        response_payload: String,
        /// `response_hash`.
        response_hash: String,
        /// `value` (deprecated).
        value: f64,
        /// `revalidation`.
        revalidation: bool,
        /// `value_decimal` as `(value, exponent)`.
        value_decimal: Option<(i64, i32)>,
    },
    /// `MsgClaimRewards`.
    ClaimRewards {
        /// `creator`.
        creator: String,
        /// `seed`.
        seed: i64,
        /// `epoch_index`.
        epoch_index: u64,
    },
}

impl SubmittedMsg {
    /// The message's `creator`.
    pub fn creator(&self) -> &str {
        match self {
            Self::Validation { creator, .. } | Self::ClaimRewards { creator, .. } => creator,
        }
    }
}

/// An accepted message with its transaction's facts.
#[derive(Debug, Clone, PartialEq)]
pub struct Submitted {
    /// The transaction's signer.
    pub signer: String,
    /// Whether the message came inside an authz `MsgExec`.
    pub via_exec: bool,
    /// The sequence the transaction carried.
    pub sequence: u64,
    /// The transaction hash, upper-case hex.
    pub tx_hash: String,
    /// The transaction's gas limit.
    pub gas_limit: u64,
    /// The transaction's fee, in ngonka.
    pub fee_ngonka: u128,
    /// The transaction's fee granter, when it named one.
    pub fee_granter: Option<String>,
    /// The message.
    pub msg: SubmittedMsg,
}

#[derive(Debug, Clone)]
struct Account {
    number: u64,
    sequence: u64,
    public_key: Vec<u8>,
}

#[derive(Debug, Clone, Default)]
struct Epoch {
    index: u64,
    poc_start_block_height: i64,
    params: EpochParams,
}

struct State {
    chain_id: String,
    prefix: String,
    tip: u64,
    earliest: u64,
    blocks: BTreeMap<u64, Vec<Vec<TxEvent>>>,
    base64_attributes: bool,
    skipped: BTreeSet<u64>,
    /// Raw frames for the websockets, in the order [`LoopbackChainNode::send_frame`] queued them.
    frames: Vec<String>,
    stalled: bool,
    websocket_generation: u64,
    subscriptions: usize,
    block_results_requests: Vec<u64>,
    accounts: BTreeMap<String, Account>,
    grants: Vec<(String, String, String)>,
    /// Feegrant allowances, (granter, grantee).
    fee_allowances: BTreeSet<(String, String)>,
    participants: BTreeMap<String, String>,
    inferences: BTreeMap<String, Inference>,
    details: BTreeMap<String, ValidationDetails>,
    validator_powers: Vec<ValidatorPower>,
    epoch: Epoch,
    groups: BTreeMap<(u64, String), EpochGroup>,
    validated: BTreeMap<(String, u64), BTreeSet<String>>,
    settle_amounts: BTreeMap<String, SettleAmount>,
    /// Query methods (`GranteesByMessageType`, ...) that answer an ABCI error code instead.
    failing_queries: BTreeMap<String, u32>,
    submitted: Vec<Submitted>,
    duplicate_rejections: usize,
    /// Transactions by hash (upper-case hex), with their results.
    txs: BTreeMap<String, tx::TxRecord>,
    /// Whether `tx` answers "not found" for every hash, as a node that indexes nothing.
    hide_txs: bool,
    /// Broadcasts of a transaction the node already had.
    repeated_broadcasts: usize,
    /// Whether `MsgValidation` fails with `ErrDeprecated`, as since v0.2.14.
    classic_retired: bool,
    /// Failed transactions' (code, codespace) by height, for `block_results`.
    failed_txs: BTreeMap<u64, Vec<(u32, &'static str)>>,
    deprecated_rejections: usize,
    /// Every claim's (epoch, amount, result), in order.
    claim_responses: Vec<(u64, u64, String)>,
    /// `ValidationParams.logprobs_mode`.
    logprobs_mode: String,
}

/// Rewards waiting for a participant's claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SettleAmount {
    epoch_index: u64,
    reward_coins: u64,
    work_coins: u64,
    /// The height of the last claim attempt that got past the epoch checks.
    last_claim_attempt: Option<u64>,
}

type Shared = crate::watched::Watched<State>;

/// A chain node on `127.0.0.1` with an ephemeral port, serving until dropped. Starts at height
/// 1, epoch 1, with no accounts.
pub struct LoopbackChainNode {
    addr: SocketAddr,
    tls: bool,
    shared: Arc<Shared>,
    _shutdown: DropGuard,
}

impl LoopbackChainNode {
    /// Starts a node.
    ///
    /// # Panics
    ///
    /// If no loopback port can be bound; see [`LoopbackChainNode::try_start`].
    #[allow(clippy::expect_used)]
    pub async fn start() -> Self {
        Self::try_start().await.expect("bind a loopback port for the fake chain node")
    }

    /// Starts a node, or says why no port could be bound.
    pub async fn try_start() -> io::Result<Self> {
        Self::bind(None).await
    }

    /// As [`LoopbackChainNode::start`], serving the RPC and the websocket over TLS with
    /// `tls`: the URL is `https`, the websocket `wss`.
    ///
    /// # Panics
    ///
    /// If no loopback port can be bound.
    #[allow(clippy::expect_used)]
    pub async fn start_tls(tls: ServerTls) -> Self {
        Self::bind(Some(tls)).await.expect("bind a loopback port for the fake chain node")
    }

    async fn bind(tls: Option<ServerTls>) -> io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                chain_id: CHAIN_ID.into(),
                prefix: ADDRESS_PREFIX.into(),
                tip: 1,
                earliest: 1,
                blocks: BTreeMap::new(),
                base64_attributes: false,
                skipped: BTreeSet::new(),
                frames: Vec::new(),
                stalled: false,
                websocket_generation: 0,
                subscriptions: 0,
                block_results_requests: Vec::new(),
                accounts: BTreeMap::new(),
                grants: Vec::new(),
                fee_allowances: BTreeSet::new(),
                participants: BTreeMap::new(),
                inferences: BTreeMap::new(),
                details: BTreeMap::new(),
                validator_powers: Vec::new(),
                epoch: Epoch { index: 1, ..Epoch::default() },
                groups: BTreeMap::new(),
                validated: BTreeMap::new(),
                settle_amounts: BTreeMap::new(),
                failing_queries: BTreeMap::new(),
                submitted: Vec::new(),
                duplicate_rejections: 0,
                txs: BTreeMap::new(),
                hide_txs: false,
                repeated_broadcasts: 0,
                classic_retired: false,
                failed_txs: BTreeMap::new(),
                deprecated_rejections: 0,
                claim_responses: Vec::new(),
                logprobs_mode: String::new(),
            }),
            changed: Notify::new(),
        });
        let shutdown = CancellationToken::new();
        let handler = {
            let (shared, shutdown) = (Arc::clone(&shared), shutdown.clone());
            move |request| handle(Arc::clone(&shared), shutdown.clone(), request)
        };
        let https = tls.is_some();
        let _shutdown = crate::serve::spawn(listener, tls, shutdown, handler);
        Ok(Self { addr, tls: https, shared, _shutdown })
    }

    /// The base URL of the RPC (`http://127.0.0.1:<port>`, `https` over TLS; the websocket is
    /// under it).
    pub fn url(&self) -> String {
        crate::serve::base_url(self.addr, self.tls)
    }

    // === accounts ===

    /// Registers an account for `public_key` (compressed SEC1) and returns its address.
    pub fn add_key(&self, public_key: &[u8]) -> String {
        let address = chain_source::tx::address_of(public_key, ADDRESS_PREFIX).unwrap_or_default();
        self.shared.update(|state| {
            let number = u64::try_from(state.accounts.len()).unwrap_or(0) + 1;
            state.accounts.entry(address.clone()).or_insert(Account {
                number,
                sequence: 0,
                public_key: public_key.to_vec(),
            });
        });
        address
    }

    /// The next sequence of the account at `address`.
    pub fn sequence(&self, address: &str) -> Option<u64> {
        self.shared.lock().accounts.get(address).map(|account| account.sequence)
    }

    /// Lets `grantee` send messages of `type_url` for `granter` (authz).
    pub fn grant(&self, granter: &str, grantee: &str, type_url: &str) {
        self.shared
            .update(|state| state.grants.push((granter.into(), grantee.into(), type_url.into())));
    }

    /// Lets `granter` pay the fees of `grantee`'s transactions (a feegrant allowance).
    pub fn grant_fee_allowance(&self, granter: &str, grantee: &str) {
        self.shared.update(|state| {
            state.fee_allowances.insert((granter.into(), grantee.into()));
        });
    }

    /// Registers a participant with its `inference_url`.
    pub fn set_participant(&self, address: &str, inference_url: &str) {
        self.shared.update(|state| state.participants.insert(address.into(), inference_url.into()));
    }

    // === inferences and epochs ===

    /// Adds a finished inference of `epoch` executed by `executor`, with sampling details that
    /// make a validator of power 1 choose it (reputation 0, low traffic, p = 1).
    pub fn add_inference(&self, id: &str, epoch: u64, executor: &str) -> Inference {
        let inference = validator_core::testing::finished_inference(id, epoch, executor);
        let details = validator_core::testing::chosen_details(id, epoch, executor, 2);
        self.shared.update(|state| {
            state.inferences.insert(id.into(), inference.clone());
            state.details.insert(id.into(), details);
            let power = ValidatorPower { power: 1, epoch_index: epoch };
            if !state.validator_powers.contains(&power) {
                state.validator_powers.push(power);
            }
        });
        inference
    }

    /// Adds or replaces an inference record.
    pub fn put_inference(&self, inference: Inference) {
        self.shared
            .update(|state| state.inferences.insert(inference.inference_id.to_string(), inference));
    }

    /// Sets the latest epoch, its PoC start height and its parameters.
    pub fn set_epoch(&self, index: u64, poc_start_block_height: i64, params: EpochParams) {
        self.shared.update(|state| state.epoch = Epoch { index, poc_start_block_height, params });
    }

    /// Adds or replaces an epoch group (the parent group when `group.model` is empty).
    pub fn set_epoch_group(&self, group: EpochGroup) {
        self.shared
            .update(|state| state.groups.insert((group.epoch_index, group.model.clone()), group));
    }

    /// Records `ids` as validated by `participant` in `epoch`.
    pub fn set_validated(&self, participant: &str, epoch: u64, ids: &[&str]) {
        self.shared.update(|state| {
            let entry = state.validated.entry((participant.into(), epoch)).or_default();
            entry.extend(ids.iter().map(|id| (*id).to_owned()));
        });
    }

    /// Settles `reward_coins` and `work_coins` of `epoch` for `participant`, answered by the
    /// `SettleAmount` query until a `MsgClaimRewards` of that epoch by the participant pays
    /// them, which removes them as the chain does.
    pub fn set_settle_amount(
        &self,
        participant: &str,
        epoch: u64,
        reward_coins: u64,
        work_coins: u64,
    ) {
        let amount =
            SettleAmount { epoch_index: epoch, reward_coins, work_coins, last_claim_attempt: None };
        self.shared.update(|state| state.settle_amounts.insert(participant.into(), amount));
    }

    /// Records a claim attempt of `participant` at `height`, as another claimer's would: the
    /// chain refuses the next attempt within 30 blocks as "Claim rate limited".
    pub fn set_last_claim_attempt(&self, participant: &str, height: u64) {
        self.shared.update(|state| {
            if let Some(amount) = state.settle_amounts.get_mut(participant) {
                amount.last_claim_attempt = Some(height);
            }
        });
    }

    /// Sets the validation parameters' `logprobs_mode` (empty by default).
    pub fn set_logprobs_mode(&self, mode: &str) {
        self.shared.update(|state| state.logprobs_mode = mode.to_owned());
    }

    /// Retires classic validation, as v0.2.14 did: every `MsgValidation` passes `CheckTx` and
    /// fails in its block with `ErrDeprecated` (1161).
    pub fn retire_classic(&self) {
        self.shared.update(|state| state.classic_retired = true);
    }

    // === blocks ===

    /// Commits a block with one transaction per entry of `txs`; returns its height.
    pub fn produce_block(&self, txs: Vec<Vec<TxEvent>>) -> u64 {
        self.shared.update(|state| {
            state.tip += 1;
            state.blocks.insert(state.tip, txs);
            state.tip
        })
    }

    /// Commits `n` empty blocks; returns the new tip.
    pub fn advance(&self, n: u64) -> u64 {
        self.shared.update(|state| {
            state.tip += n;
            state.tip
        })
    }

    /// The latest height.
    pub fn tip(&self) -> u64 {
        self.shared.lock().tip
    }

    /// Forgets every height below `height` (pruning).
    pub fn set_earliest(&self, height: u64) {
        self.shared.update(|state| state.earliest = height);
    }

    /// Writes attributes in base64 and block events as `begin/end_block_events` (CometBFT 0.34).
    pub fn set_base64_attributes(&self, base64: bool) {
        self.shared.update(|state| state.base64_attributes = base64);
    }

    // === faults ===

    /// Sends no NewBlock notification for these heights (their results stay queryable).
    pub fn skip_notifications(&self, heights: impl IntoIterator<Item = u64>) {
        self.shared.update(|state| state.skipped.extend(heights));
    }

    /// Makes the query `method` (such as `GranteesByMessageType`) answer the ABCI error `code`
    /// (codespace `sdk`) instead of its result.
    pub fn fail_query(&self, method: &str, code: u32) {
        self.shared.update(|state| {
            state.failing_queries.insert(method.to_owned(), code);
        });
    }

    /// Answers `method` normally again after [`LoopbackChainNode::fail_query`].
    pub fn restore_query(&self, method: &str) {
        self.shared.update(|state| {
            state.failing_queries.remove(method);
        });
    }

    /// Makes `tx` answer "not found" for every hash (or stops doing so), as a node whose
    /// transaction index lost them.
    pub fn hide_transactions(&self, hide: bool) {
        self.shared.update(|state| state.hide_txs = hide);
    }

    /// Stops (or resumes) NewBlock notifications, as a stalled node would.
    pub fn set_stalled(&self, stalled: bool) {
        self.shared.update(|state| state.stalled = stalled);
    }

    /// Sends `frame` as it is, as a text message, on every open websocket (after the NewBlocks
    /// still due): a node gone wrong, such as a NewBlock of a height it does not have.
    pub fn send_frame(&self, frame: impl Into<String>) {
        let frame = frame.into();
        self.shared.update(|state| state.frames.push(frame));
    }

    /// Closes every open websocket abruptly.
    pub fn drop_websockets(&self) {
        self.shared.update(|state| state.websocket_generation += 1);
    }

    // === observations ===

    /// Subscriptions received so far.
    pub fn subscriptions(&self) -> usize {
        self.shared.lock().subscriptions
    }

    /// Waits until `n` subscriptions have been received.
    pub async fn wait_subscriptions(&self, n: usize) {
        self.shared.wait_until(|state| state.subscriptions >= n).await;
    }

    /// The heights asked for through `block_results`, in order.
    pub fn block_results_requests(&self) -> Vec<u64> {
        self.shared.lock().block_results_requests.clone()
    }

    /// Every accepted message, in order.
    pub fn submitted(&self) -> Vec<Submitted> {
        self.shared.lock().submitted.clone()
    }

    /// How many transactions were refused because the validator had already validated the
    /// inference: each one a message sent twice.
    pub fn duplicate_rejections(&self) -> usize {
        self.shared.lock().duplicate_rejections
    }

    /// How many times a transaction the node already had was broadcast again.
    pub fn repeated_broadcasts(&self) -> usize {
        self.shared.lock().repeated_broadcasts
    }

    /// How many transactions failed in their block with `ErrDeprecated` (1161).
    pub fn deprecated_rejections(&self) -> usize {
        self.shared.lock().deprecated_rejections
    }

    /// Waits until `n` transactions have failed with `ErrDeprecated` (1161).
    pub async fn wait_deprecated_rejections(&self, n: usize) {
        self.shared.wait_until(|state| state.deprecated_rejections >= n).await;
    }

    /// Every claim's (epoch, amount paid, result), in order.
    pub fn claim_responses(&self) -> Vec<(u64, u64, String)> {
        self.shared.lock().claim_responses.clone()
    }

    /// Waits until `n` claims have been answered.
    pub async fn wait_claims(&self, n: usize) {
        self.shared.wait_until(|state| state.claim_responses.len() >= n).await;
    }

    /// Waits until the accepted messages satisfy `condition`.
    pub async fn wait_for_submitted(&self, condition: impl Fn(&[Submitted]) -> bool) {
        self.shared.wait_until(|state| condition(&state.submitted)).await;
    }

    /// Waits until `n` messages have been accepted.
    pub async fn wait_submitted(&self, n: usize) {
        self.shared.wait_until(|state| state.submitted.len() >= n).await;
    }
}

type Body = Full<Bytes>;

fn respond(status: u16, body: &Value) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    response
}

async fn handle(
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    mut request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    if request.uri().path() == "/websocket" {
        return Ok(upgrade(shared, shutdown, &mut request));
    }
    let body = match request.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => return Ok(respond(400, &json!({"error": "unreadable body"}))),
    };
    let Ok(call) = serde_json::from_slice::<Value>(&body) else {
        return Ok(respond(
            500,
            &json!({"jsonrpc": "2.0", "id": -1, "error": {"code": -32700, "message": "Parse error"}}),
        ));
    };
    let id = call.get("id").cloned().unwrap_or(Value::Null);
    let params = call.get("params").cloned().unwrap_or(Value::Null);
    let answer = match call.get("method").and_then(Value::as_str).unwrap_or("") {
        "status" => Ok(status_json(&shared.lock())),
        "block_results" => block_results(&shared, &params),
        "abci_query" => Ok(abci::query(&shared.lock(), &params)),
        "tx" => tx::lookup(&shared.lock(), &params),
        "block" => tx::block(&shared.lock(), &params),
        "broadcast_tx_sync" => {
            let tx = params.get("tx").and_then(Value::as_str).unwrap_or("").to_owned();
            shared.update(|state| tx::broadcast(state, &tx))
        }
        other => Err(format!("method {other} not found")),
    };
    Ok(match answer {
        Ok(result) => respond(200, &json!({"jsonrpc": "2.0", "id": id, "result": result})),
        Err(data) => respond(
            500,
            &json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32603, "message": "Internal error", "data": data}}),
        ),
    })
}

fn status_json(state: &State) -> Value {
    json!({
        "node_info": {"network": state.chain_id, "version": "0.38.17"},
        "sync_info": {
            "latest_block_height": state.tip.to_string(),
            "earliest_block_height": state.earliest.to_string(),
            "catching_up": false,
        },
    })
}

fn block_results(shared: &Shared, params: &Value) -> Result<Value, String> {
    let height: u64 = match params.get("height") {
        Some(Value::String(text)) => text.parse().map_err(|_| "invalid height".to_owned())?,
        Some(Value::Number(number)) => number.as_u64().ok_or("invalid height")?,
        _ => return Err("height is required".into()),
    };
    shared.update(|state| {
        state.block_results_requests.push(height);
        if height > state.tip {
            return Err(format!(
                "height {height} must be less than or equal to the current blockchain height {}",
                state.tip
            ));
        }
        if height < state.earliest {
            return Err(format!("height {height} is not available, lowest height is {}", state.earliest));
        }
        let encode = |text: &str| {
            if state.base64_attributes {
                base64::engine::general_purpose::STANDARD.encode(text)
            } else {
                text.to_owned()
            }
        };
        let txs: Vec<Value> = state
            .blocks
            .get(&height)
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|events| {
                let events: Vec<Value> = events
                    .iter()
                    .map(|event| {
                        let attributes: Vec<Value> = event
                            .attributes
                            .iter()
                            .map(|(key, value)| json!({"key": encode(key), "value": encode(value), "index": true}))
                            .collect();
                        json!({"type": event.kind, "attributes": attributes})
                    })
                    .collect();
                json!({"code": 0, "data": null, "log": "", "info": "", "gas_wanted": "0",
                    "gas_used": "0", "events": events, "codespace": ""})
            })
            .chain(state.failed_txs.get(&height).into_iter().flatten().map(|(code, codespace)| {
                json!({"code": code, "data": null, "log": "failed", "info": "", "gas_wanted": "0",
                    "gas_used": "0", "events": [], "codespace": codespace})
            }))
            .collect();
        let mut result = json!({
            "height": height.to_string(),
            "txs_results": txs,
            "validator_updates": [],
            "consensus_param_updates": null,
        });
        if state.base64_attributes {
            result["begin_block_events"] = json!([]);
            result["end_block_events"] = json!([]);
        } else {
            result["finalize_block_events"] = json!([]);
            result["app_hash"] = json!("");
        }
        Ok(result)
    })
}

fn new_block_frame(chain_id: &str, height: u64) -> String {
    json!({
        "jsonrpc": "2.0",
        "id": "1",
        "result": {
            "query": "tm.event='NewBlock'",
            "data": {
                "type": "tendermint/event/NewBlock",
                "value": {
                    "block": {
                        "header": {"chain_id": chain_id, "height": height.to_string(), "time": "2026-01-01T00:00:00Z"},
                        "data": {"txs": []},
                        "evidence": {"evidence": []},
                        "last_commit": null,
                    },
                    "block_id": {"hash": "", "parts": {"total": 1, "hash": ""}},
                    "result_finalize_block": {"events": [], "tx_results": [], "validator_updates": [], "app_hash": ""},
                },
            },
            "events": {"tm.event": ["NewBlock"]},
        },
    })
    .to_string()
}

fn upgrade(
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    request: &mut Request<Incoming>,
) -> Response<Body> {
    let Some(key) =
        request.headers().get(header::SEC_WEBSOCKET_KEY).map(|key| key.as_bytes().to_vec())
    else {
        return respond(400, &json!({"error": "not a websocket request"}));
    };
    let upgrading = hyper::upgrade::on(request);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrading.await else { return };
        let socket =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = websocket_session(socket, shared) => {}
        }
    });
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, header::HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, header::HeaderValue::from_static("Upgrade"));
    if let Ok(accept) = header::HeaderValue::from_str(&derive_accept_key(&key)) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    response
}

async fn websocket_session<S>(mut socket: WebSocketStream<S>, shared: Arc<Shared>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let id = loop {
        match socket.next().await {
            Some(Ok(Message::Text(text))) => {
                let Ok(call) = serde_json::from_str::<Value>(text.as_str()) else { continue };
                if call.get("method").and_then(Value::as_str) == Some("subscribe") {
                    break call.get("id").cloned().unwrap_or(Value::Null);
                }
            }
            Some(Ok(_)) => {}
            _ => return,
        }
    };
    let ack = json!({"jsonrpc": "2.0", "id": id, "result": {}}).to_string();
    if socket.send(Message::text(ack)).await.is_err() {
        return;
    }
    let (generation, mut last, mut sent) = shared.update(|state| {
        state.subscriptions += 1;
        (state.websocket_generation, state.tip, state.frames.len())
    });
    loop {
        let changed = shared.changed.notified();
        let frames = {
            let state = shared.lock();
            if state.websocket_generation != generation {
                return;
            }
            let mut frames: Vec<String> = (last + 1..=state.tip)
                .filter(|height| !state.stalled && !state.skipped.contains(height))
                .map(|height| new_block_frame(&state.chain_id, height))
                .collect();
            frames.extend(state.frames.iter().skip(sent).cloned());
            last = state.tip;
            sent = state.frames.len();
            frames
        };
        for frame in frames {
            if socket.send(Message::text(frame)).await.is_err() {
                return;
            }
        }
        tokio::select! {
            () = changed => {}
            incoming = socket.next() => match incoming {
                Some(Ok(Message::Close(_)) | Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
        }
    }
}
