//! [`HttpMlNodeClient`]: the replay request over HTTP or HTTPS (DOMAIN.md 2.6).

use std::{error::Error as _, time::Duration};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use reqwest::{header, StatusCode};
use validator_core::ports::{
    ml_node::{MlNodeClient, ReplayError, ReplayRequest, ReplayResponse},
    model_lock::MlNode,
};

use crate::{Config, Error, Result};

/// The path of the chat-completions endpoint under a node's base address.
pub const CHAT_COMPLETIONS_PATH: &str = "/v1/chat/completions";

/// How much of an error body goes into a [`ReplayError::Transport`] message: enough for the
/// node's error text, not enough to flood a log line.
const EXCERPT_BYTES: usize = 256;

/// The most a body buffer reserves up front, whatever `Content-Length` claims: a node that
/// announces a large body and sends little should not cost that much memory.
const MAX_PREALLOCATION: u64 = 1024 * 1024;

/// Posts replay requests to ML nodes over one shared, pooled HTTP/1.1 client.
///
/// Each replay is bounded by the configured request timeout, from connecting until the last
/// byte of the answer, and dropping the replay future closes its connection at once. Answers are
/// read chunk by chunk up to the configured size cap. Cloning shares the connection pool.
#[derive(Debug, Clone)]
pub struct HttpMlNodeClient {
    http: reqwest::Client,
    request_timeout: Duration,
    max_response_bytes: u64,
}

impl HttpMlNodeClient {
    /// A client with the timeouts and size cap of `config`, after validating it, speaking TLS
    /// with `tls` to `https` nodes.
    pub fn new(config: &Config, tls: &tls::ClientTls) -> Result<Self> {
        config.validate()?;
        let http = tls
            .http_client_builder()
            .connect_timeout(config.connect_timeout)
            // Only the binary reads the environment, so no proxy settings are taken from it;
            // ML nodes are reached directly.
            .no_proxy()
            // A redirect from an ML node is a misconfiguration; surface it as a failure rather
            // than re-posting the body somewhere else.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(Error::Client)?;
        Ok(Self {
            http,
            request_timeout: config.request_timeout,
            max_response_bytes: config.max_response_bytes,
        })
    }

    /// The URL a replay on a node with base `address` is posted to.
    pub fn completions_url(address: &str) -> String {
        format!("{}{CHAT_COMPLETIONS_PATH}", address.trim_end_matches('/'))
    }

    /// Whether `url` answers a GET with a 2xx status within `timeout`.
    pub async fn probe(&self, url: &str, timeout: Duration) -> bool {
        let request = self.http.get(url).send();
        matches!(
            tokio::time::timeout(timeout, request).await,
            Ok(Ok(response)) if response.status().is_success()
        )
    }

    async fn post(&self, url: &str, body: Bytes) -> Result<ReplayResponse, ReplayError> {
        let response = self
            .http
            .post(url)
            .header(header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(from_reqwest)?;
        let status = response.status();
        if status == StatusCode::BAD_REQUEST || status == StatusCode::UNPROCESSABLE_ENTITY {
            return Ok(ReplayResponse::Rejected { status: status.as_u16() });
        }
        if !status.is_success() {
            let excerpt = excerpt(response).await;
            return Err(ReplayError::Transport(format!("ML node answered {status}: {excerpt}")));
        }
        let body = read_capped(response, self.max_response_bytes).await?;
        serde_json::from_slice::<serde::de::IgnoredAny>(&body)
            .map_err(|err| ReplayError::BadResponse(format!("answer is not JSON: {err}")))?;
        Ok(ReplayResponse::Completed(body))
    }
}

#[async_trait]
impl MlNodeClient for HttpMlNodeClient {
    async fn replay(
        &self,
        node: &MlNode,
        request: &ReplayRequest,
    ) -> Result<ReplayResponse, ReplayError> {
        let url = Self::completions_url(&node.address);
        tokio::time::timeout(self.request_timeout, self.post(&url, request.body.clone()))
            .await
            .unwrap_or(Err(ReplayError::Timeout))
    }
}

/// Reads the body up to `cap` bytes, refusing it as soon as it is known to be longer: from its
/// `Content-Length` before reading anything, or from the chunk that crosses the cap. Returning
/// early drops the response, which closes the connection instead of draining it.
async fn read_capped(mut response: reqwest::Response, cap: u64) -> Result<Bytes, ReplayError> {
    let too_large = || ReplayError::BadResponse(format!("answer is larger than {cap} bytes"));
    let announced = response.content_length();
    if announced.is_some_and(|len| len > cap) {
        return Err(too_large());
    }
    let reserve = announced.unwrap_or(0).min(MAX_PREALLOCATION);
    let mut body = BytesMut::with_capacity(usize::try_from(reserve).unwrap_or(0));
    while let Some(chunk) = response.chunk().await.map_err(from_reqwest)? {
        let len = u64::try_from(body.len() + chunk.len()).unwrap_or(u64::MAX);
        if len > cap {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// The start of an error body, read no further than [`EXCERPT_BYTES`]; a failure while reading
/// it keeps what arrived.
async fn excerpt(mut response: reqwest::Response) -> String {
    let mut excerpt = Vec::new();
    while excerpt.len() < EXCERPT_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => excerpt.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    excerpt.truncate(EXCERPT_BYTES);
    String::from_utf8_lossy(&excerpt).trim().to_owned()
}

fn from_reqwest(err: reqwest::Error) -> ReplayError {
    if err.is_timeout() {
        return ReplayError::Timeout;
    }
    // reqwest's own message names the URL; the cause (refused, reset, closed early) is further
    // down the source chain.
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    ReplayError::Transport(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_url_appends_the_path_once() {
        assert_eq!(
            HttpMlNodeClient::completions_url("http://h:5000"),
            "http://h:5000/v1/chat/completions"
        );
        assert_eq!(
            HttpMlNodeClient::completions_url("http://h:5000/v3.0.8/api/"),
            "http://h:5000/v3.0.8/api/v1/chat/completions"
        );
    }

    #[test]
    fn a_valid_config_builds_a_client() {
        let tls = tls::ClientTls::public().unwrap();
        HttpMlNodeClient::new(&Config::default(), &tls).unwrap();
        let config = Config { max_response_bytes: 0, ..Config::default() };
        assert!(matches!(HttpMlNodeClient::new(&config, &tls), Err(Error::InvalidConfig { .. })));
    }
}
