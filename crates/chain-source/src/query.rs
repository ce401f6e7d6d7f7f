//! [`QueryClient`]: the `inference` module's queries (and the auth module's account query) over
//! the Cosmos REST gateway, as HTTP(S) GETs answered in JSON (DOMAIN.md 2.2-2.4, 3.4, 6.5).
//!
//! Routes are the module's `google.api.http` annotations under [`INFERENCE_ROUTE`]. The gateway
//! writes protobuf JSON with the proto field names: 64-bit integers as strings, enums as names,
//! bytes as base64. Every call is bounded by the configured timeout and read under the size cap;
//! a 404 (or a gRPC `NotFound` code in the body) is [`Error::NotFound`].

use std::time::Duration;

use base64::Engine as _;
use reqwest::Url;
use serde::de::DeserializeOwned;
use validator_core::ports::chain::{
    EpochGroup, Inference, InferenceId, InferencePage, InferenceSummary, ValidationParameters,
};

use crate::{config::QueryConfig, http, Error, Result};

mod wire;

pub use wire::{BaseAccount, EpochInfo, EpochParams, Grantee, SettleAmount};

/// Path prefix of the `inference` module's REST routes.
pub const INFERENCE_ROUTE: &str = "/productscience/inference/inference";

/// The gRPC status code of "not found", as the gateway writes it into error bodies.
const GRPC_NOT_FOUND: u64 = 5;

/// Chain queries over the REST gateway. Cloning shares the connection pool.
#[derive(Debug, Clone)]
pub struct QueryClient {
    http: reqwest::Client,
    base: Url,
    timeout: Duration,
    max_response_bytes: u64,
}

impl QueryClient {
    /// A client of the gateway at `config.url`, after validating the section, speaking TLS with
    /// `tls` to an `https` gateway.
    pub fn new(config: &QueryConfig, tls: &tls::ClientTls) -> Result<Self> {
        let base = Url::parse(&config.url).map_err(|_| Error::InvalidConfig {
            key: "query.url".into(),
            allowed: "an http or https URL",
        })?;
        if base.cannot_be_a_base() {
            return Err(Error::InvalidConfig {
                key: "query.url".into(),
                allowed: "an http or https URL",
            });
        }
        Ok(Self {
            http: http::client(tls, config.timeout)?,
            base,
            timeout: config.timeout,
            max_response_bytes: config.max_response_bytes,
        })
    }

    /// `Inference{index=id}`.
    pub async fn inference(&self, id: &InferenceId) -> Result<Inference> {
        let answer: wire::InferenceAnswer =
            self.get(&inference_path(&["inference", id.as_str()]), &[]).await?;
        answer.inference.into_domain()
    }

    /// `InferenceAll`: one page of at most `limit` inferences from `page_key`.
    pub async fn inferences_page(
        &self,
        page_key: Option<&[u8]>,
        limit: u32,
    ) -> Result<InferencePage> {
        let mut query = vec![("pagination.limit", limit.to_string())];
        if let Some(key) = page_key {
            query.push(("pagination.key", base64::engine::general_purpose::STANDARD.encode(key)));
        }
        let answer: wire::InferenceListAnswer =
            self.get(&inference_path(&["inference"]), &query).await?;
        let inferences = answer
            .inference
            .into_iter()
            .map(|inference| {
                inference.into_domain().map(|inference| InferenceSummary {
                    inference_id: inference.inference_id,
                    epoch_id: inference.epoch_id,
                    model: inference.model,
                })
            })
            .collect::<Result<_>>()?;
        Ok(InferencePage { inferences, next_key: answer.pagination.next_key()? })
    }

    /// `GetInferenceValidationParameters{ids, requester}`.
    pub async fn validation_parameters(
        &self,
        ids: &[InferenceId],
        requester: &str,
    ) -> Result<ValidationParameters> {
        let joined = ids.iter().map(InferenceId::as_str).collect::<Vec<_>>().join(",");
        let path = inference_path(&["get_inference_validation_parameters", &joined, requester]);
        let answer: wire::ValidationParametersAnswer = self.get(&path, &[]).await?;
        answer.into_domain()
    }

    /// `EpochGroupValidations{participant, epoch_index}`: the ids `participant` validated.
    pub async fn epoch_group_validations(
        &self,
        participant: &str,
        epoch: u64,
    ) -> Result<Vec<InferenceId>> {
        let epoch = epoch.to_string();
        let path = inference_path(&["epoch_group_validations", participant, &epoch]);
        let answer: wire::EpochGroupValidationsAnswer = self.get(&path, &[]).await?;
        Ok(answer
            .epoch_group_validations
            .validated_inferences
            .into_iter()
            .map(Into::into)
            .collect())
    }

    /// `EpochGroupData{epoch_index, model_id}`; an empty model gives the parent group.
    pub async fn epoch_group_data(&self, epoch: u64, model: &str) -> Result<EpochGroup> {
        let epoch = epoch.to_string();
        let query = [("model_id", model.to_owned())];
        let answer: wire::EpochGroupAnswer =
            self.get(&inference_path(&["epoch_group_data", &epoch]), &query).await?;
        Ok(answer.epoch_group_data.into_domain())
    }

    /// `CurrentEpochGroupData`.
    pub async fn current_epoch_group_data(&self) -> Result<EpochGroup> {
        let answer: wire::EpochGroupAnswer =
            self.get(&inference_path(&["current_epoch_group_data"]), &[]).await?;
        Ok(answer.epoch_group_data.into_domain())
    }

    /// `Participant{index=address}`'s `inference_url`; [`Error::NotFound`] when it has none.
    pub async fn inference_url(&self, address: &str) -> Result<String> {
        let answer: wire::ParticipantAnswer =
            self.get(&inference_path(&["participant", address]), &[]).await?;
        let url = answer.participant.inference_url;
        if url.is_empty() {
            return Err(Error::NotFound(format!("participant {address} has no inference_url")));
        }
        Ok(url)
    }

    /// `AccountByAddress`: the account's public key, compressed SEC1 bytes.
    pub async fn account_pubkey(&self, address: &str) -> Result<Vec<u8>> {
        let answer: wire::AccountPubkeyAnswer =
            self.get(&inference_path(&["inference_participant", address]), &[]).await?;
        if answer.pubkey.is_empty() {
            return Err(Error::NotFound(format!("account {address} has no public key")));
        }
        wire::decode_pubkey(&answer.pubkey)
    }

    /// `GranteesByMessageType`: the accounts `granter` authorised for `message_type_url`.
    pub async fn grantees(&self, granter: &str, message_type_url: &str) -> Result<Vec<Grantee>> {
        let path = inference_path(&["grantees_by_message_type", granter, message_type_url]);
        let answer: wire::GranteesAnswer = self.get(&path, &[]).await?;
        answer.grantees.into_iter().map(wire::GranteeWire::into_domain).collect()
    }

    /// `EpochInfo`: the latest epoch, its parameters and the height of the answer.
    pub async fn epoch_info(&self) -> Result<EpochInfo> {
        let answer: wire::EpochInfoAnswer = self.get(&inference_path(&["epoch_info"]), &[]).await?;
        Ok(answer.into_domain())
    }

    /// `SettleAmount{participant}`: the rewards waiting for `participant`'s claim;
    /// [`Error::NotFound`] when nothing is settled for it.
    pub async fn settle_amount(&self, participant: &str) -> Result<SettleAmount> {
        let answer: wire::SettleAmountAnswer =
            self.get(&inference_path(&["settle_amount", participant]), &[]).await?;
        Ok(answer.settle_amount)
    }

    /// The auth module's account record: number and next sequence.
    pub async fn account(&self, address: &str) -> Result<BaseAccount> {
        let path = ["cosmos", "auth", "v1beta1", "accounts", address].map(str::to_owned);
        let answer: serde_json::Value = self.get(&path, &[]).await?;
        wire::base_account(&answer)
    }

    async fn get<T: DeserializeOwned>(
        &self,
        segments: &[String],
        query: &[(&str, String)],
    ) -> Result<T> {
        let mut url = self.base.clone();
        {
            let mut path = url.path_segments_mut().map_err(|()| Error::InvalidConfig {
                key: "query.url".into(),
                allowed: "an http or https URL",
            })?;
            path.pop_if_empty();
            for segment in segments {
                path.push(segment);
            }
        }
        if !query.is_empty() {
            url.query_pairs_mut()
                .extend_pairs(query.iter().map(|(key, value)| (*key, value.as_str())));
        }
        let what = url.path().to_owned();
        let call = async {
            let response = self.http.get(url).send().await.map_err(http::from_reqwest)?;
            let status = response.status();
            let body = http::read_capped(response, self.max_response_bytes).await?;
            if status.is_success() {
                return serde_json::from_slice(&body)
                    .map_err(|err| Error::Decode(format!("{what}: {err}")));
            }
            if status == reqwest::StatusCode::NOT_FOUND || grpc_code(&body) == Some(GRPC_NOT_FOUND)
            {
                return Err(Error::NotFound(format!("{what}: {}", http::excerpt(&body))));
            }
            Err(Error::Status { status: status.as_u16(), body: http::excerpt(&body) })
        };
        tokio::time::timeout(self.timeout, call)
            .await
            .unwrap_or_else(|_| Err(Error::Timeout(format!("query {}", segments.join("/")))))
    }
}

fn inference_path(segments: &[&str]) -> Vec<String> {
    INFERENCE_ROUTE
        .split('/')
        .filter(|segment| !segment.is_empty())
        .chain(segments.iter().copied())
        .map(str::to_owned)
        .collect()
}

fn grpc_code(body: &[u8]) -> Option<u64> {
    serde_json::from_slice::<serde_json::Value>(body).ok()?.get("code")?.as_u64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_the_module_routes() {
        assert_eq!(
            inference_path(&["inference", "a/b"]),
            ["productscience", "inference", "inference", "inference", "a/b"]
        );
    }

    #[test]
    fn bad_urls_are_config_errors() {
        let tls = tls::ClientTls::public().unwrap();
        let config = QueryConfig { url: "not a url".into(), ..QueryConfig::default() };
        assert!(matches!(QueryClient::new(&config, &tls), Err(Error::InvalidConfig { .. })));
        let config = QueryConfig { url: "mailto:x@y".into(), ..QueryConfig::default() };
        assert!(matches!(QueryClient::new(&config, &tls), Err(Error::InvalidConfig { .. })));
    }

    #[test]
    fn grpc_not_found_is_read_from_the_body() {
        assert_eq!(grpc_code(br#"{"code":5,"message":"not found","details":[]}"#), Some(5));
        assert_eq!(grpc_code(b"junk"), None);
    }
}
