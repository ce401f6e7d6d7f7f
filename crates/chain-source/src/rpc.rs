//! [`RpcClient`]: the CometBFT JSON-RPC methods the adapter calls over HTTP (`status`,
//! `block_results`, `abci_query`, `broadcast_tx_sync`, `tx`), each bounded by a timeout and read
//! under a size cap.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use base64::Engine as _;
use reqwest::{header, Url};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::{http, Error, Result};

/// The node's height range and sync state (`status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeStatus {
    /// The latest committed height.
    pub latest_height: u64,
    /// The oldest height whose results the node still holds.
    pub earliest_height: u64,
    /// Whether the node is still syncing (`catching_up`).
    pub catching_up: bool,
}

/// The `CheckTx` answer of `broadcast_tx_sync`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BroadcastResult {
    /// ABCI code; 0 means the mempool accepted the transaction.
    pub code: u32,
    /// The module that raised a non-zero code (`sdk`, `inference`, ...).
    pub codespace: String,
    /// The node's log line.
    pub log: String,
    /// The transaction hash, upper-case hex.
    pub hash: String,
}

/// A transaction as a block holds it (`tx` by hash): where it landed and what it returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxResult {
    /// The transaction hash, upper-case hex.
    pub hash: String,
    /// The block that includes it.
    pub height: u64,
    /// ABCI code of its execution (`DeliverTx`); 0 means every message succeeded.
    pub code: u32,
    /// The module that raised a non-zero code.
    pub codespace: String,
    /// The node's log line.
    pub log: String,
    /// The execution's data: a `TxMsgData` holding one response per message.
    pub data: Vec<u8>,
}

/// An `abci_query` answer whose code is 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbciAnswer {
    /// The protobuf-encoded response.
    pub value: Vec<u8>,
    /// The height the state was read at.
    pub height: u64,
}

/// The SDK's `ErrKeyNotFound`: what a query's gRPC `NotFound` becomes over ABCI.
const CODE_KEY_NOT_FOUND: u32 = 38;

/// How far past the latest height the node reported an answer may claim to have been read: a
/// few blocks of slack for a node that advanced between two calls.
const HEIGHT_SLACK: u64 = 100;

/// A CometBFT JSON-RPC client over HTTP POST, on one pooled connection client.
#[derive(Debug)]
pub struct RpcClient {
    http: reqwest::Client,
    url: Url,
    timeout: Duration,
    max_response_bytes: u64,
    next_id: AtomicU64,
    /// The latest height the node reported (`status`); 0 until known.
    latest_height: AtomicU64,
}

impl RpcClient {
    /// A client of the node at `url` (`http://host:26657` or `https://…`), speaking TLS with
    /// `tls`.
    pub fn new(
        url: &str,
        tls: &tls::ClientTls,
        timeout: Duration,
        max_response_bytes: u64,
    ) -> Result<Self> {
        let url = Url::parse(url).map_err(|_| Error::InvalidConfig {
            key: "events.rpc_url".into(),
            allowed: "an http or https URL",
        })?;
        Ok(Self {
            http: http::client(tls, timeout)?,
            url,
            timeout,
            max_response_bytes,
            next_id: AtomicU64::new(1),
            latest_height: AtomicU64::new(0),
        })
    }

    /// The node's base URL.
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// Calls `method` with `params` and returns the `result` member of the answer.
    pub async fn call(&self, method: &str, params: Value) -> Result<Value> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let request = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        let call = async {
            let response = self
                .http
                .post(self.url.clone())
                .header(header::CONTENT_TYPE, "application/json")
                .body(request.to_string())
                .send()
                .await
                .map_err(http::from_reqwest)?;
            let status = response.status();
            let body = http::read_capped(response, self.max_response_bytes).await?;
            // CometBFT answers JSON-RPC errors with a 500 and an error object; prefer the object.
            match decode_answer(&body) {
                Err(Error::Decode(_)) if !status.is_success() => {
                    Err(Error::Status { status: status.as_u16(), body: http::excerpt(&body) })
                }
                answer => answer,
            }
        };
        tokio::time::timeout(self.timeout, call)
            .await
            .unwrap_or_else(|_| Err(Error::Timeout(format!("rpc {method}"))))
    }

    /// `status`: the node's height range and sync state.
    pub async fn status(&self) -> Result<NodeStatus> {
        let result = self.call("status", json!({})).await?;
        let status = decode_status(&result)?;
        self.latest_height.fetch_max(status.latest_height, Ordering::Relaxed);
        Ok(status)
    }

    /// `abci_query` of the gRPC method `path` with the protobuf request `data`, at the latest
    /// height. A non-zero code is [`Error::NotFound`] for the SDK's "key not found" and
    /// [`Error::Query`] otherwise. An answer read at a height past the node's latest (from
    /// `status`, asked again when an answer is ahead of the one known) is refused; when the node
    /// cannot say its height, the answer stands.
    pub async fn abci_query(&self, path: &str, data: &[u8]) -> Result<AbciAnswer> {
        let params =
            json!({"path": path, "data": crate::hex::encode(data), "height": "0", "prove": false});
        let result = self.call("abci_query", params).await?;
        let answer = decode_abci_answer(path, &result)?;
        let ahead = |latest: u64| answer.height > latest.saturating_add(HEIGHT_SLACK);
        let mut latest = self.latest_height.load(Ordering::Relaxed);
        if latest == 0 || ahead(latest) {
            if let Ok(status) = self.status().await {
                latest = status.latest_height;
            }
        }
        if latest > 0 && ahead(latest) {
            return Err(Error::Decode(format!(
                "{path}: answered at height {}, past the node's latest {latest}",
                answer.height
            )));
        }
        Ok(answer)
    }

    /// `tx` by hash: the transaction's result once a block includes it; [`Error::NotFound`]
    /// while none does, [`Error::TxIndexDisabled`] when the node keeps no transaction index.
    /// An answer about another hash is refused.
    pub async fn tx(&self, hash: &str) -> Result<TxResult> {
        let bytes = crate::hex::decode(hash)
            .filter(|bytes| !bytes.is_empty())
            .ok_or_else(|| Error::Decode(format!("transaction hash {hash:?} is not hex")))?;
        let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
        match self.call("tx", json!({"hash": encoded, "prove": false})).await {
            Ok(result) => decode_tx(hash, &result),
            Err(Error::Rpc(message)) if message.contains("not found") => {
                Err(Error::NotFound(format!("transaction {hash}")))
            }
            Err(Error::Rpc(message)) if message.contains("indexing is disabled") => {
                Err(Error::TxIndexDisabled)
            }
            Err(err) => Err(err),
        }
    }

    /// The transactions of the block at `height`, as signed bytes (`block`).
    pub async fn block_txs(&self, height: u64) -> Result<Vec<Vec<u8>>> {
        let result = self.call("block", json!({"height": height.to_string()})).await?;
        let txs = result
            .pointer("/block/data/txs")
            .map(|txs| txs.as_array().cloned().unwrap_or_default())
            .ok_or_else(|| Error::Decode(format!("block {height}: no block.data.txs")))?;
        txs.iter()
            .map(|tx| {
                tx.as_str()
                    .and_then(|text| base64::engine::general_purpose::STANDARD.decode(text).ok())
                    .ok_or_else(|| Error::Decode(format!("block {height}: a tx is not base64")))
            })
            .collect()
    }

    /// `block_results` of `height`, undecoded; see [`crate::events::decode_block_results`].
    pub async fn block_results(&self, height: u64) -> Result<Value> {
        self.call("block_results", json!({"height": height.to_string()})).await
    }

    /// `broadcast_tx_sync`: hands the signed transaction to the node's mempool and returns its
    /// `CheckTx` answer.
    pub async fn broadcast_tx_sync(&self, tx: &[u8]) -> Result<BroadcastResult> {
        let encoded = base64::engine::general_purpose::STANDARD.encode(tx);
        let result = self.call("broadcast_tx_sync", json!({"tx": encoded})).await?;
        let answer: BroadcastWire = serde_json::from_value(result)
            .map_err(|err| Error::Decode(format!("broadcast_tx_sync answer: {err}")))?;
        let AbciCode { code, codespace, log } = answer.result;
        Ok(BroadcastResult { code, codespace, log, hash: answer.hash })
    }
}

/// What every ABCI answer carries: a code, the module that raised it, the node's log line.
#[derive(Deserialize, Default)]
struct AbciCode {
    #[serde(default)]
    code: u32,
    #[serde(default)]
    codespace: String,
    #[serde(default)]
    log: String,
}

#[derive(Deserialize)]
struct AbciWire {
    #[serde(flatten)]
    result: AbciCode,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    height: Option<Value>,
}

/// A base64 field that may be absent, null or empty (no bytes).
fn optional_base64(text: Option<&str>, what: &str) -> Result<Vec<u8>> {
    match text {
        None | Some("") => Ok(Vec::new()),
        Some(text) => base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|err| Error::Decode(format!("{what} is not base64: {err}"))),
    }
}

fn decode_abci_answer(path: &str, result: &Value) -> Result<AbciAnswer> {
    let response = result
        .get("response")
        .ok_or_else(|| Error::Decode(format!("{path}: abci_query answer has no response")))?;
    let wire: AbciWire = serde_json::from_value(response.clone())
        .map_err(|err| Error::Decode(format!("{path}: abci_query answer: {err}")))?;
    let AbciCode { code, codespace, log } = wire.result;
    if code == CODE_KEY_NOT_FOUND && codespace == crate::tx::CODESPACE_SDK {
        return Err(Error::NotFound(format!("{path}: {log}")));
    }
    if code != 0 {
        return Err(Error::Query { code, codespace, log: http::excerpt(log.as_bytes()) });
    }
    let value = optional_base64(wire.value.as_deref(), &format!("{path}: value"))?;
    let height = match &wire.height {
        None => 0,
        Some(_) => height_field(response, "height")?,
    };
    Ok(AbciAnswer { value, height })
}

#[derive(Deserialize)]
struct TxWire {
    #[serde(default)]
    hash: String,
    #[serde(default)]
    tx_result: TxResultWire,
}

#[derive(Deserialize, Default)]
struct TxResultWire {
    #[serde(flatten)]
    result: AbciCode,
    #[serde(default)]
    data: Option<String>,
}

fn decode_tx(hash: &str, result: &Value) -> Result<TxResult> {
    let wire: TxWire = serde_json::from_value(result.clone())
        .map_err(|err| Error::Decode(format!("tx answer: {err}")))?;
    if !wire.hash.eq_ignore_ascii_case(hash) {
        return Err(Error::Decode(format!("asked for transaction {hash}, got {:?}", wire.hash)));
    }
    let data = optional_base64(wire.tx_result.data.as_deref(), "tx data")?;
    let AbciCode { code, codespace, log } = wire.tx_result.result;
    Ok(TxResult {
        hash: wire.hash.to_ascii_uppercase(),
        height: height_field(result, "height")?,
        code,
        codespace,
        log,
        data,
    })
}

#[derive(Deserialize)]
struct BroadcastWire {
    #[serde(flatten)]
    result: AbciCode,
    #[serde(default)]
    hash: String,
}

/// The `result` of a JSON-RPC answer, or its `error` as [`Error::Rpc`].
pub(crate) fn decode_answer(body: &[u8]) -> Result<Value> {
    let mut answer: Value = serde_json::from_slice(body)
        .map_err(|err| Error::Decode(format!("rpc answer is not JSON: {err}")))?;
    if let Some(error) = answer.get("error").filter(|error| !error.is_null()) {
        let message = error.get("message").and_then(Value::as_str).unwrap_or("error");
        let data = error.get("data").and_then(Value::as_str).unwrap_or("");
        return Err(Error::Rpc(format!("{message}: {data}").trim_end_matches(": ").to_owned()));
    }
    match answer.get_mut("result") {
        Some(result) => Ok(result.take()),
        None => Err(Error::Decode("rpc answer has neither result nor error".into())),
    }
}

fn decode_status(result: &Value) -> Result<NodeStatus> {
    let sync = result
        .get("sync_info")
        .ok_or_else(|| Error::Decode("status answer has no sync_info".into()))?;
    Ok(NodeStatus {
        latest_height: height_field(sync, "latest_block_height")?,
        earliest_height: height_field(sync, "earliest_block_height").unwrap_or(1).max(1),
        catching_up: sync.get("catching_up").and_then(Value::as_bool).unwrap_or(false),
    })
}

/// A height written as a decimal string (or, leniently, a number).
pub(crate) fn height_field(value: &Value, field: &str) -> Result<u64> {
    match value.get(field) {
        Some(Value::String(text)) => {
            text.parse().map_err(|_| Error::Decode(format!("{field} is not a height: {text:?}")))
        }
        Some(Value::Number(number)) => {
            number.as_u64().ok_or_else(|| Error::Decode(format!("{field} is not a height")))
        }
        _ => Err(Error::Decode(format!("missing {field}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_and_errors_decode() {
        let ok = decode_answer(br#"{"jsonrpc":"2.0","id":1,"result":{"a":1}}"#).unwrap();
        assert_eq!(ok, json!({"a": 1}));
        let err = decode_answer(
            br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32603,"message":"Internal error","data":"height 9 is not available"}}"#,
        )
        .unwrap_err();
        assert_eq!(err, Error::Rpc("Internal error: height 9 is not available".into()));
        assert!(matches!(decode_answer(b"<html>"), Err(Error::Decode(_))));
        assert!(matches!(decode_answer(b"{}"), Err(Error::Decode(_))));
    }

    #[test]
    fn abci_answers_decode_and_refuse_errors() {
        let ok = json!({"response": {"code": 0, "value": "CgNhYmM=", "height": "41"}});
        assert_eq!(
            decode_abci_answer("/q", &ok).unwrap(),
            AbciAnswer { value: b"\n\x03abc".to_vec(), height: 41 }
        );
        let empty = json!({"response": {"code": 0, "value": null, "height": "3"}});
        assert!(decode_abci_answer("/q", &empty).unwrap().value.is_empty());
        let missing = json!({"response": {"code": 38, "codespace": "sdk", "log": "not found"}});
        assert!(matches!(decode_abci_answer("/q", &missing), Err(Error::NotFound(_))));
        let refused = json!({"response": {"code": 6, "codespace": "sdk", "log": "unknown"}});
        assert!(matches!(decode_abci_answer("/q", &refused), Err(Error::Query { code: 6, .. })));
        let junk = json!({"response": {"code": 0, "value": "!!", "height": "1"}});
        assert!(matches!(decode_abci_answer("/q", &junk), Err(Error::Decode(_))));
        assert!(matches!(decode_abci_answer("/q", &json!({})), Err(Error::Decode(_))));
    }

    #[test]
    fn tx_answers_must_name_the_hash_asked() {
        let answer = json!({"hash": "ABCD", "height": "12",
            "tx_result": {"code": 1161, "codespace": "inference", "log": "retired", "data": "AQ=="}});
        let result = decode_tx("abcd", &answer).unwrap();
        assert_eq!((result.height, result.code, result.data), (12, 1161, vec![1]));
        assert!(matches!(decode_tx("FFFF", &answer), Err(Error::Decode(_))));
        assert!(matches!(decode_tx("ABCD", &json!({"hash": "ABCD"})), Err(Error::Decode(_))));
    }

    #[test]
    fn status_reads_heights_and_sync_state() {
        let status = decode_status(&json!({"sync_info": {
            "latest_block_height": "1200", "earliest_block_height": "3", "catching_up": true
        }}))
        .unwrap();
        assert_eq!(
            status,
            NodeStatus { latest_height: 1200, earliest_height: 3, catching_up: true }
        );
        assert!(matches!(decode_status(&json!({})), Err(Error::Decode(_))));
        let bad = json!({"sync_info": {"latest_block_height": "x"}});
        assert!(matches!(decode_status(&bad), Err(Error::Decode(_))));
    }
}
