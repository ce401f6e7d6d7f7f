//! The chain adapter's configuration: one section per concern. Durations are whole milliseconds.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use validator_core::config::duration_ms;

/// Configuration of the chain adapter.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The chain node: events over CometBFT RPC and websocket.
    pub events: EventsConfig,
    /// Chain queries.
    pub query: QueryConfig,
    /// Transaction building and submission.
    pub tx: TxConfig,
    /// Payload retrieval from executors.
    pub payloads: PayloadsConfig,
}

impl Config {
    /// Checks the values, naming the first bad one.
    pub fn validate(&self) -> crate::Result<()> {
        self.events.validate()?;
        self.query.validate()?;
        self.tx.validate()?;
        self.payloads.validate()
    }
}

fn bad(key: &str, allowed: &'static str) -> crate::Result<()> {
    Err(crate::Error::InvalidConfig { key: key.to_owned(), allowed })
}

fn positive(key: &str, duration: Duration) -> crate::Result<()> {
    if duration.is_zero() {
        return bad(key, "a positive duration");
    }
    Ok(())
}

/// The CometBFT node the events come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventsConfig {
    /// CometBFT RPC base URL (`http://host:26657`); the websocket is `ws://host:26657/websocket`
    /// (`https` gives `wss`).
    pub rpc_url: String,
    /// How far behind the node's height processing may lag before it restarts at
    /// `current - catch_up_window` (upstream: 500 blocks).
    pub catch_up_window: u64,
    /// Bound of one RPC call.
    #[serde(with = "duration_ms")]
    pub rpc_timeout: Duration,
    /// First reconnect delay; doubled up to `reconnect_max`, with jitter.
    #[serde(with = "duration_ms")]
    pub reconnect_base: Duration,
    /// Longest reconnect delay.
    #[serde(with = "duration_ms")]
    pub reconnect_max: Duration,
    /// Largest websocket message accepted, in bytes.
    pub max_message_bytes: usize,
    /// Events buffered for the consumer; the source waits when it is full.
    pub queue_capacity: usize,
    /// How long the websocket may stay silent before the source assumes the node stalled and
    /// reconnects (blocks come every ~5 s on mainnet).
    #[serde(with = "duration_ms")]
    pub idle_timeout: Duration,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            rpc_url: "http://127.0.0.1:26657".into(),
            catch_up_window: 500,
            rpc_timeout: Duration::from_secs(10),
            reconnect_base: Duration::from_millis(500),
            reconnect_max: Duration::from_secs(10),
            max_message_bytes: 16 * 1024 * 1024,
            queue_capacity: 1024,
            idle_timeout: Duration::from_secs(30),
        }
    }
}

impl EventsConfig {
    pub(crate) fn validate(&self) -> crate::Result<()> {
        match reqwest::Url::parse(&self.rpc_url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {}
            _ => return bad("events.rpc_url", "an http or https URL with a host"),
        }
        if self.catch_up_window == 0 {
            return bad("events.catch_up_window", "at least 1");
        }
        if self.max_message_bytes == 0 {
            return bad("events.max_message_bytes", "at least 1");
        }
        if self.queue_capacity == 0 || self.queue_capacity > 10_000_000 {
            return bad("events.queue_capacity", "1 to 10000000");
        }
        positive("events.rpc_timeout", self.rpc_timeout)?;
        positive("events.idle_timeout", self.idle_timeout)?;
        positive("events.reconnect_base", self.reconnect_base)
    }
}

/// Chain queries, sent as `abci_query` to the node at `events.rpc_url`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueryConfig {
    /// Bound of one query.
    #[serde(with = "duration_ms")]
    pub timeout: Duration,
    /// Largest answer accepted, in bytes.
    pub max_response_bytes: u64,
}

impl Default for QueryConfig {
    fn default() -> Self {
        Self { timeout: Duration::from_secs(10), max_response_bytes: 32 * 1024 * 1024 }
    }
}

impl QueryConfig {
    fn validate(&self) -> crate::Result<()> {
        if self.max_response_bytes == 0 {
            return bad("query.max_response_bytes", "at least 1");
        }
        positive("query.timeout", self.timeout)
    }
}

/// Transaction building and submission.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TxConfig {
    /// The chain id signed into every transaction.
    pub chain_id: String,
    /// Bech32 prefix of account addresses.
    pub address_prefix: String,
    /// Gas and fees, per message type as upstream budgets them.
    pub gas: GasConfig,
    /// With a warm key, name the account as the transaction's fee granter, as upstream does:
    /// the account pays fees through a feegrant allowance to the warm key, which the chain
    /// requires when a granter is named. Turn off where no such allowance exists.
    pub fee_granter: bool,
    /// Bound of one broadcast.
    #[serde(with = "duration_ms")]
    pub timeout: Duration,
    /// How long a broadcast transaction is followed (RPC `tx` by hash) before it counts as not
    /// included; it is broadcast once more halfway through.
    #[serde(with = "duration_ms")]
    pub inclusion_timeout: Duration,
    /// Pause between two lookups of a followed transaction (blocks come every ~6 s).
    #[serde(with = "duration_ms")]
    pub poll_interval: Duration,
    /// Blocks searched back from the tip for a revalidation another process may have sent (an
    /// open intent taken over): the chain keeps no record of revalidations, so their
    /// transactions are read. Cover the chain timeout and the lease TTL (at ~6 s a block, 200
    /// blocks are 20 minutes); 1 to 100000.
    pub lookback_blocks: u64,
}

impl Default for TxConfig {
    fn default() -> Self {
        Self {
            chain_id: "gonka-mainnet".into(),
            address_prefix: "gonka".into(),
            gas: GasConfig::default(),
            fee_granter: true,
            timeout: Duration::from_secs(30),
            inclusion_timeout: Duration::from_secs(60),
            poll_interval: Duration::from_secs(2),
            lookback_blocks: 200,
        }
    }
}

impl TxConfig {
    fn validate(&self) -> crate::Result<()> {
        if self.lookback_blocks == 0 || self.lookback_blocks > 100_000 {
            return bad("tx.lookback_blocks", "1 to 100000");
        }
        if self.chain_id.is_empty() {
            return bad("tx.chain_id", "a non-empty chain id");
        }
        if self.address_prefix.is_empty() {
            return bad("tx.address_prefix", "a non-empty bech32 prefix");
        }
        self.gas.validate()?;
        positive("tx.poll_interval", self.poll_interval)?;
        if self.inclusion_timeout < self.poll_interval {
            return bad("tx.inclusion_timeout", "at least tx.poll_interval");
        }
        positive("tx.timeout", self.timeout)
    }
}

/// Gas wanted per transaction: the message's budget plus a fixed overhead (upstream's static
/// table of v0.2.14), and the fee paid for it. The chain charges fees on the gas wanted, and
/// validations and claims are fee-exempt network duties, so the price is zero by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GasConfig {
    /// Gas for one `MsgValidation` (upstream: 1,500,000).
    pub validation: u64,
    /// Gas for one `MsgClaimRewards` (upstream: 700,000).
    pub claim_rewards: u64,
    /// Gas added to every transaction for the ante handlers and the authz unwrap (upstream:
    /// 50,000).
    pub overhead: u64,
    /// Fee per unit of gas, in ngonka (upstream's `min_gas_price_ngonka`); 0 pays no fee.
    pub price_ngonka: u64,
}

/// The chain's cap on one transaction's gas (upstream `BatchGasLimit`).
pub const MAX_GAS: u64 = 1_000_000_000;

impl Default for GasConfig {
    fn default() -> Self {
        Self { validation: 1_500_000, claim_rewards: 700_000, overhead: 50_000, price_ngonka: 0 }
    }
}

impl GasConfig {
    fn validate(&self) -> crate::Result<()> {
        for (key, budget) in
            [("tx.gas.validation", self.validation), ("tx.gas.claim_rewards", self.claim_rewards)]
        {
            if budget == 0 || budget.saturating_add(self.overhead) > MAX_GAS {
                return bad(key, "at least 1, and with tx.gas.overhead at most 1,000,000,000");
            }
        }
        Ok(())
    }

    /// Gas wanted for a transaction carrying the message of `type_url`: its budget plus the
    /// overhead; a message type without a budget of its own gets the validation's.
    pub fn wanted(&self, type_url: &str) -> u64 {
        let budget = match type_url {
            crate::proto::MSG_CLAIM_REWARDS_TYPE_URL => self.claim_rewards,
            _ => self.validation,
        };
        budget.saturating_add(self.overhead).min(MAX_GAS)
    }

    /// The fee for `gas` wanted, in ngonka.
    pub fn fee(&self, gas: u64) -> u128 {
        u128::from(gas) * u128::from(self.price_ngonka)
    }
}

/// Payload retrieval from executors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PayloadsConfig {
    /// Bound of one fetch attempt (upstream: 30 s).
    #[serde(with = "duration_ms")]
    pub timeout: Duration,
    /// Largest answer accepted, in bytes, checked while reading.
    pub max_response_bytes: u64,
    /// Addresses the outbound guard lets through although private: CIDRs (`10.0.0.0/8`) or
    /// host names. Empty in production; tests and private networks list theirs.
    pub allow: Vec<String>,
}

impl Default for PayloadsConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            max_response_bytes: 32 * 1024 * 1024,
            allow: Vec::new(),
        }
    }
}

impl PayloadsConfig {
    pub(crate) fn validate(&self) -> crate::Result<()> {
        if self.max_response_bytes == 0 {
            return bad("payloads.max_response_bytes", "at least 1");
        }
        crate::payloads::guard::Guard::new(&self.allow)?;
        positive("payloads.timeout", self.timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_name_their_key() {
        Config::default().validate().unwrap();
        let mut config = Config::default();
        config.payloads.timeout = Duration::ZERO;
        assert!(config.validate().unwrap_err().to_string().contains("payloads.timeout"));
        let err = serde_json::from_str::<Config>(r#"{"events": {"rpc_ur": "x"}}"#).unwrap_err();
        assert!(err.to_string().contains("rpc_ur"), "{err}");
    }
}
