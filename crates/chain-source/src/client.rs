//! [`ChainNodeClient`]: the chain port of the engine (queries, seed, submission) and the
//! [`ExecutorDirectory`] of payload retrieval, over one CometBFT RPC client (queries as
//! `abci_query`) and one [`Submitter`].
//!
//! Validations return once the mempool accepted them (the engine's slot is not held for a
//! block); a bounded set of watchers then follows each to its block, counts its result and,
//! on the first `ErrDeprecated` (1161), marks classic validation retired: see
//! [`ChainNodeClient::retired`]. Claims are followed to their block before they return, and
//! their `MsgClaimRewardsResponse` is read: see [`ClaimAnswer`].

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use validator_core::ports::chain::{
    self as port, ChainError, EpochGroup, EpochState, Inference, InferenceId, InferencePage,
    SubmitError, SubmitReceipt, ValidationParameters, ValidationParams,
};

use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::{
    directory::{SigningKeys, START_INFERENCE_MSG_TYPE},
    proto,
    query::{EpochInfo, QueryClient},
    rpc::{NodeStatus, RpcClient, TxResult},
    seed::seed_for_epoch,
    tx::{self, Broadcast, Inclusion, Submitter, TxIdentity},
    Config, Error, ExecutorDirectory, Result, Signer,
};

/// How many broadcast validations are followed to their block at once; beyond that a
/// validation's block result goes unread (counted as `unobserved`).
const MAX_WATCHED: usize = 256;

/// What a claim transaction did, read from its block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimAnswer {
    /// Included, and the chain paid `amount` ngonka.
    Paid {
        /// Coins paid.
        amount: u64,
        /// The chain's description.
        result: String,
        /// The transaction's hash.
        tx_hash: String,
        /// The block that includes it.
        height: u64,
    },
    /// Included with code 0 but nothing paid: the chain refused the claim (rate limit, no
    /// rewards, missed validations, bad seed) and says why in `result`.
    Refused {
        /// The chain's reason.
        result: String,
        /// The transaction's hash.
        tx_hash: String,
        /// The block that includes it.
        height: u64,
    },
    /// Included with a non-zero code.
    Failed {
        /// The ABCI code.
        code: u32,
        /// The module that raised it.
        codespace: String,
        /// The node's log line.
        log: String,
        /// The transaction's hash.
        tx_hash: String,
        /// The block that includes it.
        height: u64,
    },
    /// Included with code 0, but its response is not believable: none, undecodable, or paying
    /// more than was settled.
    Malformed {
        /// What is wrong with it.
        reason: String,
        /// The transaction's hash.
        tx_hash: String,
        /// The block that includes it.
        height: u64,
    },
    /// No block included it before `tx.inclusion_timeout`.
    NotIncluded {
        /// The transaction's hash.
        tx_hash: String,
        /// The last lookup error, when lookups failed rather than found nothing.
        last_error: Option<String>,
    },
}

impl ClaimAnswer {
    /// The transaction's hash.
    pub fn tx_hash(&self) -> &str {
        match self {
            ClaimAnswer::Paid { tx_hash, .. }
            | ClaimAnswer::Refused { tx_hash, .. }
            | ClaimAnswer::Failed { tx_hash, .. }
            | ClaimAnswer::Malformed { tx_hash, .. }
            | ClaimAnswer::NotIncluded { tx_hash, .. } => tx_hash,
        }
    }
}

/// The chain adapter: implements [`validator_core::ports::ChainClient`] and
/// [`ExecutorDirectory`]. Cheap to clone: clones share the connection pools and the submitter.
#[derive(Debug, Clone)]
pub struct ChainNodeClient {
    query: QueryClient,
    rpc: Arc<RpcClient>,
    submitter: Submitter,
    identity: Arc<TxIdentity>,
    inclusion_timeout: Duration,
    poll_interval: Duration,
    watchers: Arc<Semaphore>,
    /// Ends every watcher at once (shutdown).
    watching: CancellationToken,
    retired: watch::Sender<Option<String>>,
    /// Never broadcast: validations are logged and counted as what would have been sent.
    dry_run: bool,
    /// Blocks searched back for a revalidation another process may have sent.
    lookback_blocks: u64,
}

/// The transaction hash a dry run reports for a validation it did not send.
pub const DRY_RUN_TX_HASH: &str = "DRY-RUN";

impl ChainNodeClient {
    /// A client acting for `account_address` with `signer` (the account's own key, or a warm
    /// key the account granted `MsgValidation` and `MsgClaimRewards` through authz and, with
    /// `tx.fee_granter`, a feegrant allowance).
    ///
    /// `https` endpoints speak TLS with `tls`. Validates the configuration and starts the
    /// submitting task, so it must be called within a Tokio runtime.
    pub fn new(
        config: &Config,
        tls: &tls::ClientTls,
        account_address: impl Into<String>,
        signer: Signer,
    ) -> Result<Self> {
        config.validate()?;
        let rpc = Arc::new(RpcClient::new(
            &config.events.rpc_url,
            tls,
            config.events.rpc_timeout,
            config.query.max_response_bytes,
        )?);
        let query = QueryClient::new(&config.query, Arc::clone(&rpc));
        let identity = TxIdentity::new(account_address, signer, &config.tx.address_prefix)?;
        let submitter =
            Submitter::spawn(identity.clone(), &config.tx, Arc::clone(&rpc), query.clone())?;
        Ok(Self {
            query,
            rpc,
            submitter,
            identity: Arc::new(identity),
            inclusion_timeout: config.tx.inclusion_timeout,
            poll_interval: config.tx.poll_interval,
            watchers: Arc::new(Semaphore::new(MAX_WATCHED)),
            watching: CancellationToken::new(),
            retired: watch::Sender::new(None),
            dry_run: false,
            lookback_blocks: config.tx.lookback_blocks,
        })
    }

    /// This client, never broadcasting: [`ChainClient::submit_validation`] logs the message and
    /// answers with the transaction hash [`DRY_RUN_TX_HASH`], and [`Self::claim_rewards`] is
    /// refused ([`Error::DryRun`]). Queries work as usual.
    pub fn dry_run(mut self) -> Self {
        self.dry_run = true;
        self
    }

    /// Whether this client never broadcasts.
    pub fn is_dry_run(&self) -> bool {
        self.dry_run
    }

    /// The query client, for the queries the port does not cover.
    pub fn query(&self) -> &QueryClient {
        &self.query
    }

    /// Whether a block among the last `tx.lookback_blocks` holds `msg` (by its id) from this
    /// account, signed directly or inside `MsgExec`; `None` when the node no longer keeps all
    /// of those blocks.
    pub async fn find_validation(&self, msg: &port::MsgValidation) -> Result<Option<bool>> {
        let status = self.rpc.status().await?;
        let from = status.latest_height.saturating_sub(self.lookback_blocks).max(1);
        if from < status.earliest_height {
            return Ok(None);
        }
        for height in (from..=status.latest_height).rev() {
            for tx in self.rpc.block_txs(height).await? {
                if proto::carries_validation(&tx, &msg.id, &self.identity.account_address) {
                    return Ok(Some(true));
                }
            }
        }
        Ok(Some(false))
    }

    /// Stops following broadcast validations to their blocks (shutdown); results not read yet
    /// go unread.
    pub fn stop_watching(&self) {
        self.watching.cancel();
    }

    /// Why classic validation is retired, once a validation was refused or landed with
    /// `ErrDeprecated` (1161); changes once, from `None`.
    pub fn retired(&self) -> watch::Receiver<Option<String>> {
        self.retired.subscribe()
    }

    /// The signer's address (the account's, or the warm key's).
    pub fn signer_address(&self) -> &str {
        &self.identity.signer_address
    }

    /// The node's heights and sync state (`catching_up`).
    pub async fn node_status(&self) -> Result<NodeStatus> {
        self.rpc.status().await
    }

    /// The latest epoch and its parameters, for the claim schedule.
    pub async fn epoch_info(&self) -> Result<EpochInfo> {
        self.query.epoch_info().await
    }

    /// Signs and broadcasts `MsgClaimRewards{seed, epoch_index}` for the account, follows the
    /// transaction to its block and reads what the claim did. `settled` is what the chain held
    /// for the claim (reward and work coins): a claim said to pay more is
    /// [`ClaimAnswer::Malformed`].
    pub async fn claim_rewards(
        &self,
        seed: i64,
        epoch_index: u64,
        settled: u64,
    ) -> Result<ClaimAnswer> {
        if self.dry_run {
            return Err(Error::DryRun("MsgClaimRewards"));
        }
        let msg = proto::MsgClaimRewards {
            creator: self.identity.account_address.clone(),
            seed,
            epoch_index,
        };
        let broadcast =
            self.submitter.submit(proto::pack(proto::MSG_CLAIM_REWARDS_TYPE_URL, &msg)).await?;
        let tx_hash = broadcast.hash.clone();
        Ok(match self.observe(&broadcast).await {
            Inclusion::Included(result) => read_claim(result, tx_hash, settled),
            Inclusion::NotIncluded { last_error } => {
                ClaimAnswer::NotIncluded { tx_hash, last_error }
            }
        })
    }

    /// What the claim transaction `tx_hash` did, when a block holds it (one lookup, no
    /// waiting); `None` while none does. `settled` bounds a believable payment.
    pub async fn claim_answer(&self, tx_hash: &str, settled: u64) -> Result<Option<ClaimAnswer>> {
        match self.rpc.tx(tx_hash).await {
            Ok(result) => Ok(Some(read_claim(result, tx_hash.to_owned(), settled))),
            Err(Error::NotFound(_)) => Ok(None),
            Err(err) => Err(err),
        }
    }

    async fn observe(&self, broadcast: &Broadcast) -> Inclusion {
        tx::observe(&self.rpc, broadcast, self.inclusion_timeout, self.poll_interval).await
    }

    /// Follows a broadcast validation to its block on a watcher, when one is free.
    fn watch_validation(&self, broadcast: Broadcast) {
        let Ok(permit) = Arc::clone(&self.watchers).try_acquire_owned() else {
            metrics::counter!("validator_validation_tx_total", "result" => "unobserved")
                .increment(1);
            return;
        };
        let client = self.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let inclusion = tokio::select! {
                inclusion = client.observe(&broadcast) => inclusion,
                () = client.watching.cancelled() => return,
            };
            let result = match inclusion {
                Inclusion::Included(result) if result.code == 0 => "included",
                Inclusion::Included(result)
                    if result.codespace == tx::CODESPACE_INFERENCE
                        && result.code == tx::CODE_DEPRECATED =>
                {
                    client.mark_retired(format!(
                        "MsgValidation {} landed with code {} ({}): {}",
                        broadcast.hash, result.code, result.codespace, result.log
                    ));
                    "deprecated"
                }
                Inclusion::Included(result)
                    if result.codespace == tx::CODESPACE_INFERENCE
                        && result.code == tx::CODE_DUPLICATE_VALIDATION =>
                {
                    "duplicate"
                }
                Inclusion::Included(result) => {
                    tracing::warn!(
                        hash = %broadcast.hash, code = result.code, codespace = %result.codespace,
                        log = %result.log, "validation failed in its block"
                    );
                    "failed"
                }
                Inclusion::NotIncluded { .. } => "not_included",
            };
            metrics::counter!("validator_validation_tx_total", "result" => result).increment(1);
        });
    }

    fn mark_retired(&self, reason: String) {
        self.retired.send_if_modified(|retired| {
            if retired.is_some() {
                return false;
            }
            *retired = Some(reason);
            true
        });
    }

    /// Signs and broadcasts one `MsgValidation` as the core built it; returns the hash once the
    /// mempool accepted it, and follows it to its block in the background. Refused without a
    /// broadcast once classic validation is known to be retired.
    pub async fn submit_validation_msg(&self, msg: &port::MsgValidation) -> Result<String> {
        if let Some(reason) = self.retired.borrow().clone() {
            return Err(Error::Deprecated(reason));
        }
        if self.dry_run {
            tracing::info!(
                inference_id = %msg.inference_id,
                revalidation = msg.revalidation,
                value = msg.value_decimal.value,
                exponent = msg.value_decimal.exponent,
                response_hash = %msg.response_hash,
                "dry run: MsgValidation not sent"
            );
            metrics::counter!("validator_dry_run_messages_total", "message" => "validation")
                .increment(1);
            return Ok(DRY_RUN_TX_HASH.to_owned());
        }
        let msg = proto::MsgValidation {
            creator: self.identity.account_address.clone(),
            id: msg.id.clone(),
            inference_id: msg.inference_id.as_str().to_owned(),
            response_payload: String::new(),
            response_hash: msg.response_hash.clone(),
            value: 0.0,
            revalidation: msg.revalidation,
            value_decimal: Some(proto::Decimal {
                value: msg.value_decimal.value,
                exponent: msg.value_decimal.exponent,
            }),
        };
        match self.submitter.submit(proto::pack(proto::MSG_VALIDATION_TYPE_URL, &msg)).await {
            Ok(broadcast) => {
                let hash = broadcast.hash.clone();
                self.watch_validation(broadcast);
                Ok(hash)
            }
            Err(Error::Deprecated(log)) => {
                let reason = format!("MsgValidation refused with code 1161: {log}");
                self.mark_retired(reason.clone());
                Err(Error::Deprecated(reason))
            }
            Err(err) => Err(err),
        }
    }
}

/// What an included claim transaction did: its code, then its `MsgClaimRewardsResponse`.
fn read_claim(result: TxResult, tx_hash: String, settled: u64) -> ClaimAnswer {
    let height = result.height;
    if result.code != 0 {
        return ClaimAnswer::Failed {
            code: result.code,
            codespace: result.codespace,
            log: result.log,
            tx_hash,
            height,
        };
    }
    let response: proto::MsgClaimRewardsResponse =
        match proto::message_response(&result.data, proto::MSG_CLAIM_REWARDS_RESPONSE_TYPE_URL) {
            Ok(Some(response)) => response,
            Ok(None) => {
                let reason = "no MsgClaimRewardsResponse in the result".to_owned();
                return ClaimAnswer::Malformed { reason, tx_hash, height };
            }
            Err(err) => {
                let reason = format!("undecodable result: {err}");
                return ClaimAnswer::Malformed { reason, tx_hash, height };
            }
        };
    if response.amount > settled {
        let reason = format!("says it paid {}, more than the {settled} settled", response.amount);
        return ClaimAnswer::Malformed { reason, tx_hash, height };
    }
    if response.amount == 0 {
        return ClaimAnswer::Refused { result: response.result, tx_hash, height };
    }
    ClaimAnswer::Paid { amount: response.amount, result: response.result, tx_hash, height }
}

fn chain_error(err: Error) -> ChainError {
    match err {
        Error::NotFound(_) => ChainError::NotFound,
        Error::Timeout(_) => ChainError::Timeout,
        other => ChainError::Failed(other.to_string()),
    }
}

fn submit_error(err: Error) -> SubmitError {
    match err {
        Error::DuplicateValidation(_) => SubmitError::Duplicate,
        Error::Deprecated(reason) => SubmitError::Retired(reason),
        Error::TxRejected { code, log } if is_transient_code(code) => {
            SubmitError::Transient(format!("code {code}: {log}"))
        }
        Error::TxRejected { code, log } => SubmitError::Rejected(format!("code {code}: {log}")),
        err @ (Error::Key(_) | Error::InvalidConfig { .. }) => {
            SubmitError::Rejected(err.to_string())
        }
        other => SubmitError::Transient(other.to_string()),
    }
}

/// SDK codes a later attempt may get past: wrong sequence, already in the mempool cache,
/// mempool full.
fn is_transient_code(code: u32) -> bool {
    matches!(code, tx::CODE_WRONG_SEQUENCE | 19 | 20)
}

#[async_trait]
impl validator_core::ports::ChainClient for ChainNodeClient {
    fn account_address(&self) -> &str {
        &self.identity.account_address
    }

    async fn inference(&self, id: &InferenceId) -> Result<Inference, ChainError> {
        self.query.inference(id).await.map_err(chain_error)
    }

    async fn inferences_page(
        &self,
        page_key: Option<Vec<u8>>,
        limit: u32,
    ) -> Result<InferencePage, ChainError> {
        self.query.inferences_page(page_key.as_deref(), limit).await.map_err(chain_error)
    }

    async fn validation_parameters(
        &self,
        ids: &[InferenceId],
    ) -> Result<ValidationParameters, ChainError> {
        self.query
            .validation_parameters(ids, &self.identity.account_address)
            .await
            .map_err(chain_error)
    }

    async fn validated_inferences(&self, epoch: u64) -> Result<Vec<InferenceId>, ChainError> {
        self.query
            .epoch_group_validations(&self.identity.account_address, epoch)
            .await
            .map_err(chain_error)
    }

    async fn epoch_group(&self, epoch: u64, model: &str) -> Result<EpochGroup, ChainError> {
        self.query.epoch_group_data(epoch, model).await.map_err(chain_error)
    }

    async fn current_epoch_group(&self) -> Result<EpochGroup, ChainError> {
        self.query.current_epoch_group_data().await.map_err(chain_error)
    }

    async fn validation_params(&self) -> Result<ValidationParams, ChainError> {
        self.query.validation_params().await.map_err(chain_error)
    }

    async fn epoch_state(&self) -> Result<EpochState, ChainError> {
        let info = self.query.epoch_info().await.map_err(chain_error)?;
        Ok(EpochState { latest_epoch: info.epoch_index })
    }

    /// A validation is in the validated set; a revalidation, which the chain records nowhere, is
    /// looked for in the last `tx.lookback_blocks` blocks ([`ChainNodeClient::find_validation`]).
    async fn validation_recorded(
        &self,
        msg: &port::MsgValidation,
        epoch: u64,
    ) -> Result<Option<bool>, ChainError> {
        if msg.revalidation {
            return self.find_validation(msg).await.map_err(chain_error);
        }
        match self.validated_inferences(epoch).await {
            Ok(ids) => Ok(Some(ids.contains(&msg.inference_id))),
            Err(ChainError::NotFound) => Ok(Some(false)),
            Err(err) => Err(err),
        }
    }

    async fn seed_for_epoch(&self, epoch: u64) -> Result<i64, ChainError> {
        Ok(seed_for_epoch(&self.identity.signer, epoch))
    }

    async fn submit_validation(
        &self,
        msg: &port::MsgValidation,
    ) -> Result<SubmitReceipt, SubmitError> {
        let hash = self.submit_validation_msg(msg).await.map_err(submit_error)?;
        Ok(SubmitReceipt { tx_hash: Some(hash) })
    }
}

#[async_trait]
impl ExecutorDirectory for ChainNodeClient {
    async fn inference_url(&self, executor: &str) -> Result<String> {
        self.query.inference_url(executor).await
    }

    async fn signing_keys(&self, executor: &str) -> Result<SigningKeys> {
        let (account, grantees) = tokio::join!(
            self.query.account_pubkey(executor),
            self.query.grantees(executor, START_INFERENCE_MSG_TYPE),
        );
        let mut keys = Vec::new();
        let mut failures = Vec::new();
        let account_missing = match account {
            Ok(key) => {
                keys.push(key);
                None
            }
            Err(Error::NotFound(what)) => Some(Error::NotFound(what)),
            Err(err) => {
                failures.push(format!("account key: {err}"));
                Some(err)
            }
        };
        match grantees {
            Ok(grantees) => keys.extend(
                grantees.into_iter().map(|grantee| grantee.public_key).filter(|k| !k.is_empty()),
            ),
            Err(Error::NotFound(_)) => {}
            Err(err) => failures.push(format!("grantee keys: {err}")),
        }
        match account_missing {
            Some(err) if keys.is_empty() => Err(err),
            _ => Ok(SigningKeys {
                keys,
                incomplete: (!failures.is_empty()).then(|| failures.join("; ")),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_the_port() {
        assert_eq!(chain_error(Error::NotFound("x".into())), ChainError::NotFound);
        assert_eq!(chain_error(Error::Timeout("x".into())), ChainError::Timeout);
        assert!(matches!(chain_error(Error::Decode("x".into())), ChainError::Failed(_)));
        assert_eq!(submit_error(Error::DuplicateValidation("x".into())), SubmitError::Duplicate);
        let wrong_sequence = Error::TxRejected { code: 32, log: "mismatch".into() };
        assert!(matches!(submit_error(wrong_sequence), SubmitError::Transient(_)));
        let refused = Error::TxRejected { code: 1105, log: "own inference".into() };
        assert!(matches!(submit_error(refused), SubmitError::Rejected(_)));
        assert!(matches!(submit_error(Error::Timeout("x".into())), SubmitError::Transient(_)));
    }
}
