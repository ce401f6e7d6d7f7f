//! [`RpcClient`]: the three CometBFT JSON-RPC methods the adapter calls over HTTP (`status`,
//! `block_results`, `broadcast_tx_sync`), each bounded by a timeout and read under a size cap.

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

/// A CometBFT JSON-RPC client over HTTP POST, on one pooled connection client.
#[derive(Debug)]
pub struct RpcClient {
    http: reqwest::Client,
    url: Url,
    timeout: Duration,
    max_response_bytes: u64,
    next_id: AtomicU64,
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
        decode_status(&result)
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
        Ok(BroadcastResult {
            code: answer.code,
            codespace: answer.codespace,
            log: answer.log,
            hash: answer.hash,
        })
    }
}

#[derive(Deserialize)]
struct BroadcastWire {
    #[serde(default)]
    code: u32,
    #[serde(default)]
    codespace: String,
    #[serde(default)]
    log: String,
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
