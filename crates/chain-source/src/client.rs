//! [`ChainNodeClient`]: the chain port of the engine (queries, seed, submission) and the
//! [`ExecutorDirectory`] of payload retrieval, over one REST query client, one CometBFT RPC
//! client and one [`Submitter`].

use std::sync::Arc;

use async_trait::async_trait;
use validator_core::ports::chain::{
    self as port, ChainError, EpochGroup, EpochState, Inference, InferenceId, InferencePage,
    SubmitError, SubmitReceipt, ValidationParameters,
};

use crate::{
    directory::{SigningKeys, START_INFERENCE_MSG_TYPE},
    proto,
    query::{EpochInfo, QueryClient},
    rpc::{NodeStatus, RpcClient},
    seed::seed_for_epoch,
    tx::{self, Submitter, TxIdentity},
    Config, Error, ExecutorDirectory, Result, Signer,
};

/// The chain adapter: implements [`validator_core::ports::ChainClient`] and
/// [`ExecutorDirectory`]. Cheap to clone: clones share the connection pools and the submitter.
#[derive(Debug, Clone)]
pub struct ChainNodeClient {
    query: QueryClient,
    rpc: Arc<RpcClient>,
    submitter: Submitter,
    identity: Arc<TxIdentity>,
}

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
        let query = QueryClient::new(&config.query, tls)?;
        let rpc = Arc::new(RpcClient::new(
            &config.events.rpc_url,
            tls,
            config.events.rpc_timeout,
            config.query.max_response_bytes,
        )?);
        let identity = TxIdentity::new(account_address, signer, &config.tx.address_prefix)?;
        let submitter =
            Submitter::spawn(identity.clone(), &config.tx, Arc::clone(&rpc), query.clone())?;
        Ok(Self { query, rpc, submitter, identity: Arc::new(identity) })
    }

    /// The REST query client, for the queries the port does not cover.
    pub fn query(&self) -> &QueryClient {
        &self.query
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

    /// Signs and broadcasts `MsgClaimRewards{seed, epoch_index}` for the account; returns the
    /// transaction hash.
    pub async fn claim_rewards(&self, seed: i64, epoch_index: u64) -> Result<String> {
        let msg = proto::MsgClaimRewards {
            creator: self.identity.account_address.clone(),
            seed,
            epoch_index,
        };
        self.submitter.submit(proto::pack(proto::MSG_CLAIM_REWARDS_TYPE_URL, &msg)).await
    }

    /// Signs and broadcasts one `MsgValidation` as the core built it; returns the hash.
    pub async fn submit_validation_msg(&self, msg: &port::MsgValidation) -> Result<String> {
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
        self.submitter.submit(proto::pack(proto::MSG_VALIDATION_TYPE_URL, &msg)).await
    }
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

    async fn epoch_state(&self) -> Result<EpochState, ChainError> {
        let info = self.query.epoch_info().await.map_err(chain_error)?;
        Ok(EpochState { latest_epoch: info.epoch_index })
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
