//! [`QueryClient`]: the `inference` module's queries (and the auth module's account query) as
//! CometBFT `abci_query` calls, protobuf in and out, as the upstream API node sends them
//! (DOMAIN.md 2.2-2.4, 3.4, 6.5).
//!
//! Ids travel as protobuf fields, never in a URL path, so real inference ids (base64 with `/`,
//! `+` and `=`) and message type URLs reach the chain as they are. Every call is bounded by the
//! configured timeout and read under the size cap; the SDK's "key not found" is
//! [`Error::NotFound`], any other non-zero code [`Error::Query`].

use std::{sync::Arc, time::Duration};

use cosmrs::proto::cosmos::{
    auth::v1beta1::{QueryAccountRequest, QueryAccountResponse},
    base::query::v1beta1::PageRequest,
};
use prost::Message;
use validator_core::ports::chain::{
    EpochGroup, Inference, InferenceId, InferencePage, ValidationParameters, ValidationParams,
};

use crate::{config::QueryConfig, rpc::RpcClient, Error, Result};

pub mod proto;
mod wire;

pub use wire::{BaseAccount, EpochInfo, EpochParams, Grantee, SettleAmount};

/// Chain queries over `abci_query`. Cloning shares the RPC client.
#[derive(Debug, Clone)]
pub struct QueryClient {
    rpc: Arc<RpcClient>,
    timeout: Duration,
}

impl QueryClient {
    /// A client sending its queries through `rpc`, each bounded by `config.timeout`.
    pub fn new(config: &QueryConfig, rpc: Arc<RpcClient>) -> Self {
        Self { rpc, timeout: config.timeout }
    }

    /// `Inference{index=id}`.
    pub async fn inference(&self, id: &InferenceId) -> Result<Inference> {
        let request = proto::QueryGetInferenceRequest { index: id.as_str().to_owned() };
        let answer: proto::QueryGetInferenceResponse =
            self.query(proto::INFERENCE, &request).await?;
        wire::inference(answer.inference.ok_or_else(|| missing("inference"))?)
    }

    /// `InferenceAll`: one page of at most `limit` inferences from `page_key`.
    pub async fn inferences_page(
        &self,
        page_key: Option<&[u8]>,
        limit: u32,
    ) -> Result<InferencePage> {
        let request = proto::QueryAllInferenceRequest {
            pagination: Some(PageRequest {
                key: page_key.map(<[u8]>::to_vec).unwrap_or_default(),
                limit: u64::from(limit),
                ..PageRequest::default()
            }),
        };
        let answer: proto::QueryAllInferenceResponse =
            self.query(proto::INFERENCE_ALL, &request).await?;
        // The listing needs ids, epochs and models only: a record this node cannot read
        // otherwise (an unknown status) still counts.
        let inferences = answer.inference.into_iter().map(wire::summary).collect::<Result<_>>()?;
        let next_key = answer.pagination.map(|page| page.next_key).filter(|key| !key.is_empty());
        Ok(InferencePage { inferences, next_key })
    }

    /// `GetInferenceValidationParameters{ids, requester}`.
    pub async fn validation_parameters(
        &self,
        ids: &[InferenceId],
        requester: &str,
    ) -> Result<ValidationParameters> {
        let request = proto::QueryGetInferenceValidationParametersRequest {
            ids: ids.iter().map(|id| id.as_str().to_owned()).collect(),
            requester: requester.to_owned(),
        };
        let answer = self.query(proto::GET_INFERENCE_VALIDATION_PARAMETERS, &request).await?;
        wire::validation_parameters(answer)
    }

    /// `EpochGroupValidations{participant, epoch_index}`: the ids `participant` validated.
    pub async fn epoch_group_validations(
        &self,
        participant: &str,
        epoch: u64,
    ) -> Result<Vec<InferenceId>> {
        let request = proto::QueryGetEpochGroupValidationsRequest {
            participant: participant.to_owned(),
            epoch_index: epoch,
        };
        let answer: proto::QueryGetEpochGroupValidationsResponse =
            self.query(proto::EPOCH_GROUP_VALIDATIONS, &request).await?;
        Ok(answer
            .epoch_group_validations
            .map(|validations| validations.validated_inferences)
            .unwrap_or_default()
            .into_iter()
            .map(Into::into)
            .collect())
    }

    /// `EpochGroupData{epoch_index, model_id}`; an empty model gives the parent group.
    pub async fn epoch_group_data(&self, epoch: u64, model: &str) -> Result<EpochGroup> {
        let request =
            proto::QueryGetEpochGroupDataRequest { epoch_index: epoch, model_id: model.to_owned() };
        let answer: proto::QueryGetEpochGroupDataResponse =
            self.query(proto::EPOCH_GROUP_DATA, &request).await?;
        wire::epoch_group(answer.epoch_group_data.ok_or_else(|| missing("epoch_group_data"))?)
    }

    /// `CurrentEpochGroupData`.
    pub async fn current_epoch_group_data(&self) -> Result<EpochGroup> {
        let answer: proto::QueryCurrentEpochGroupDataResponse = self
            .query(proto::CURRENT_EPOCH_GROUP_DATA, &proto::QueryCurrentEpochGroupDataRequest {})
            .await?;
        wire::epoch_group(answer.epoch_group_data.ok_or_else(|| missing("epoch_group_data"))?)
    }

    /// `Participant{index=address}`'s `inference_url`; [`Error::NotFound`] when it has none.
    pub async fn inference_url(&self, address: &str) -> Result<String> {
        let request = proto::QueryGetParticipantRequest { index: address.to_owned() };
        let answer: proto::QueryGetParticipantResponse =
            self.query(proto::PARTICIPANT, &request).await?;
        let url = answer.participant.map(|participant| participant.inference_url);
        match url {
            Some(url) if !url.is_empty() => Ok(url),
            _ => Err(Error::NotFound(format!("participant {address} has no inference_url"))),
        }
    }

    /// `AccountByAddress`: the account's public key, compressed SEC1 bytes.
    pub async fn account_pubkey(&self, address: &str) -> Result<Vec<u8>> {
        let request = proto::QueryAccountByAddressRequest { address: address.to_owned() };
        let answer: proto::QueryAccountByAddressResponse =
            self.query(proto::ACCOUNT_BY_ADDRESS, &request).await?;
        if answer.pubkey.is_empty() {
            return Err(Error::NotFound(format!("account {address} has no public key")));
        }
        wire::decode_pubkey(&answer.pubkey)
    }

    /// `GranteesByMessageType`: the accounts `granter` authorised for `message_type_url`.
    pub async fn grantees(&self, granter: &str, message_type_url: &str) -> Result<Vec<Grantee>> {
        let request = proto::QueryGranteesByMessageTypeRequest {
            granter_address: granter.to_owned(),
            message_type_url: message_type_url.to_owned(),
        };
        let answer: proto::QueryGranteesByMessageTypeResponse =
            self.query(proto::GRANTEES_BY_MESSAGE_TYPE, &request).await?;
        answer.grantees.into_iter().map(wire::grantee).collect()
    }

    /// `Params`: the module's current validation parameters.
    pub async fn validation_params(&self) -> Result<ValidationParams> {
        let answer: proto::QueryParamsResponse =
            self.query(proto::PARAMS, &proto::QueryParamsRequest {}).await?;
        match answer.params.and_then(|params| params.validation_params) {
            Some(params) => wire::validation_params(params),
            None => Err(missing("params.validation_params")),
        }
    }

    /// `EpochInfo`: the latest epoch, its parameters and the height of the answer.
    pub async fn epoch_info(&self) -> Result<EpochInfo> {
        let answer = self.query(proto::EPOCH_INFO, &proto::QueryEpochInfoRequest {}).await?;
        Ok(wire::epoch_info(answer))
    }

    /// `SettleAmount{participant}`: the rewards waiting for `participant`'s claim;
    /// [`Error::NotFound`] when nothing is settled for it.
    pub async fn settle_amount(&self, participant: &str) -> Result<SettleAmount> {
        let request = proto::QueryGetSettleAmountRequest { participant: participant.to_owned() };
        let answer: proto::QueryGetSettleAmountResponse =
            self.query(proto::SETTLE_AMOUNT, &request).await?;
        Ok(wire::settle_amount(answer.settle_amount.unwrap_or_default()))
    }

    /// The auth module's account record: number and next sequence.
    pub async fn account(&self, address: &str) -> Result<BaseAccount> {
        let request = QueryAccountRequest { address: address.to_owned() };
        let answer: QueryAccountResponse = self.query(proto::AUTH_ACCOUNT, &request).await?;
        wire::base_account(answer.account.ok_or_else(|| missing("account"))?)
    }

    async fn query<Q: Message, A: Message + Default>(&self, path: &str, request: &Q) -> Result<A> {
        let data = request.encode_to_vec();
        let answer = tokio::time::timeout(self.timeout, self.rpc.abci_query(path, &data))
            .await
            .unwrap_or_else(|_| Err(Error::Timeout(format!("query {path}"))))?;
        A::decode(answer.value.as_slice()).map_err(|err| Error::Decode(format!("{path}: {err}")))
    }
}

fn missing(field: &str) -> Error {
    Error::Decode(format!("answer without {field}"))
}
