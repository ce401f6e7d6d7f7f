//! [`HttpPayloadSource`]: one signed, verified, bounded fetch of an inference's payloads from
//! its executor (DOMAIN.md 2.3, 6.1-6.3), as upstream's `RetrievePayloadsFromExecutor` does it,
//! or of a devshard inference's from its executor's session route (LIVE-NETWORK.md 2.2 item 1),
//! as upstream's `FetchPayloadsFromExecutor` does it. The two differ in the path, the id signed
//! (the devshard inference id in decimal) and the hash check (raw SHA-256 of the bytes, against
//! the job's hashes, for devshard); everything else is shared.
//!
//! - [`wire`]: the URL, headers, signed byte strings and the answer's JSON;
//! - [`hash`]: the prompt and response commitments, byte for byte as upstream computes them;
//! - [`guard`]: the outbound address guard and the checking DNS resolver.
//!
//! Each failure says whose it is. The executor's ([`PayloadError::Unavailable`],
//! [`PayloadError::BadSignature`], [`PayloadError::HashMismatch`], [`PayloadError::Gone`]): no
//! answer (a refused connection, a TLS handshake that fails or stalls, a certificate that is
//! expired or for another host), an error status, a malformed or oversized answer, a wrong
//! signature checked against every key it may sign with, payloads that do not hash to the
//! commitment, or no inference URL on chain. The validator's own ([`PayloadError::Local`]): a
//! failed chain query for the URL or keys, a signature that fails while some of the executor's
//! keys could not be looked up, a certificate under no root this node trusts (self-signed
//! included: the node may lack the CA, `tls.ca_file`), the address guard's refusal (an internal
//! address, a scheme other than `http` and `https`), the resolver, a request the client cannot
//! build. The TLS configuration is built before the source, so it cannot fail a
//! fetch.

pub mod guard;
pub mod hash;
pub mod wire;

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use async_trait::async_trait;
use reqwest::StatusCode;
use sha2::{Digest, Sha256};
use tokio::time::{timeout_at, Instant};
use validator_core::{
    devshard::DevshardJob,
    ports::{
        chain::Inference,
        payload_source::{PayloadError, PayloadSource, Payloads},
    },
};

use self::{
    guard::{Guard, GuardedResolver},
    wire::PayloadResponse,
};
use crate::{config::PayloadsConfig, http, signer, ExecutorDirectory, Signer};

/// Fetches payloads from executors over HTTP or HTTPS and verifies them against the executor's
/// keys and the on-chain commitment.
///
/// Each fetch is bounded by the configured timeout, directory lookups and the last byte included,
/// and dropping the fetch future closes its connection. Answers are read chunk by chunk under the
/// size cap. Cloning shares the connection pool.
#[derive(Clone)]
pub struct HttpPayloadSource {
    http: reqwest::Client,
    guard: Arc<Guard>,
    signer: Signer,
    account_address: String,
    directory: Arc<dyn ExecutorDirectory>,
    timeout: Duration,
    max_response_bytes: u64,
}

impl std::fmt::Debug for HttpPayloadSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpPayloadSource")
            .field("account_address", &self.account_address)
            .field("guard", &self.guard)
            .field("timeout", &self.timeout)
            .field("max_response_bytes", &self.max_response_bytes)
            .finish_non_exhaustive()
    }
}

impl HttpPayloadSource {
    /// A source signing its requests with `signer` (the warm key) on behalf of
    /// `account_address`, learning executors' URLs and keys from `directory`, and speaking TLS
    /// with `tls` to `https` executors.
    pub fn new(
        config: &PayloadsConfig,
        tls: &tls::ClientTls,
        signer: Signer,
        account_address: impl Into<String>,
        directory: Arc<dyn ExecutorDirectory>,
    ) -> crate::Result<Self> {
        let guard = Arc::new(Guard::new(&config.allow)?);
        let resolver = GuardedResolver::system(Arc::clone(&guard));
        Self::with_resolver(config, tls, signer, account_address, directory, resolver)
    }

    /// As [`HttpPayloadSource::new`], resolving host names with `resolver` (tests inject a lookup
    /// instead of real DNS). The resolver's own guard checks resolved addresses; `config.allow`
    /// is still what literal-IP URLs are checked against.
    pub fn with_resolver(
        config: &PayloadsConfig,
        tls: &tls::ClientTls,
        signer: Signer,
        account_address: impl Into<String>,
        directory: Arc<dyn ExecutorDirectory>,
        resolver: GuardedResolver,
    ) -> crate::Result<Self> {
        config.validate()?;
        let http = tls
            .http_client_builder()
            // A redirect would lead to an address the guard never saw (literal IPs are not
            // resolved); upstream's executors do not redirect.
            .redirect(reqwest::redirect::Policy::none())
            // A proxy would connect on our behalf to whatever the URL names, past the resolver.
            // For `https` too, every address connected to comes from the resolver, which checks
            // them all.
            .no_proxy()
            .dns_resolver(Arc::new(resolver))
            .build()
            .map_err(|err| crate::Error::Transport(err.to_string()))?;
        Ok(Self {
            http,
            guard: Arc::new(Guard::new(&config.allow)?),
            signer,
            account_address: account_address.into(),
            directory,
            timeout: config.timeout,
            max_response_bytes: config.max_response_bytes,
        })
    }

    /// One signed GET of `url` (made from the executor's `inference_url`) for `id` of
    /// `epoch_id`, bounded by `deadline`, whose 200 answer `verify` checks against the keys that
    /// may sign for `executor`. The chain lookups (URL and signing keys, together) come first,
    /// so running out of time in them is the validator's side, and the executor has the rest of
    /// the time: running out while it answers is the executor's.
    async fn fetch_once(
        &self,
        target: Target<'_>,
        url: impl FnOnce(&str) -> crate::Result<reqwest::Url>,
        verify: impl FnOnce(&[Vec<u8>], &[u8]) -> Result<Payloads, PayloadError>,
        deadline: Instant,
    ) -> Result<Payloads, PayloadError> {
        let Target { executor, id, epoch_id } = target;
        let lookups = async {
            tokio::join!(
                self.directory.inference_url(executor),
                self.directory.signing_keys(executor)
            )
        };
        let (base, keys) = timeout_at(deadline, lookups)
            .await
            .map_err(|_| local(format!("the chain lookups for {executor} timed out")))?;
        let base = match base {
            Ok(base) => base,
            Err(crate::Error::NotFound(what)) => {
                return Err(unavailable(format!("executor {executor} is unknown: {what}")));
            }
            Err(err) => return Err(local(format!("no inference URL for {executor}: {err}"))),
        };
        if base.trim().is_empty() {
            return Err(unavailable(format!("executor {executor} has no inference URL")));
        }
        let url = url(&base).map_err(|err| unavailable(err.to_string()))?;
        self.guard.check_url(&url).map_err(|err| local(err.to_string()))?;
        let keys = keys.map_err(|err| local(format!("no signing keys for {executor}: {err}")))?;

        let timestamp = unix_nanos();
        let message = wire::request_signed_bytes(id, epoch_id, timestamp, &self.account_address);
        let signature = wire::encode_base64(&self.signer.sign(&message));
        let request = self
            .http
            .get(url)
            .header(wire::HEADER_VALIDATOR_ADDRESS, &self.account_address)
            .header(wire::HEADER_TIMESTAMP, timestamp.to_string())
            .header(wire::HEADER_EPOCH_ID, epoch_id.to_string())
            .header(wire::HEADER_AUTHORIZATION, signature);
        let answered = async {
            let response = request.send().await.map_err(from_reqwest)?;
            let status = response.status();
            if status == StatusCode::NOT_FOUND {
                return Err(PayloadError::Gone);
            }
            if status != StatusCode::OK {
                let excerpt = http::read_excerpt(response).await;
                return Err(unavailable(format!("executor answered {status}: {excerpt}")));
            }
            http::read_capped(response, self.max_response_bytes)
                .await
                .map_err(|err| unavailable(err.to_string()))
        };
        let body = timeout_at(deadline, answered).await.unwrap_or_else(|_| {
            Err(unavailable(format!("executor did not answer within {:?}", self.timeout)))
        })?;
        match verify(&keys.keys, &body) {
            Err(PayloadError::BadSignature) if keys.incomplete.is_some() => Err(local(format!(
                "the signature verifies with none of the keys looked up ({})",
                keys.incomplete.unwrap_or_default()
            ))),
            verified => verified,
        }
    }
}

/// Whose payloads one fetch asks for: the executor, the id the request and the answer sign,
/// and the epoch the request signs and names in its header.
#[derive(Debug, Clone, Copy)]
struct Target<'a> {
    executor: &'a str,
    id: &'a str,
    epoch_id: u64,
}

#[async_trait]
impl PayloadSource for HttpPayloadSource {
    async fn fetch(&self, inference: &Inference) -> Result<Payloads, PayloadError> {
        let id = inference.inference_id.as_str();
        let target = Target { executor: &inference.executed_by, id, epoch_id: inference.epoch_id };
        self.fetch_once(
            target,
            |base| wire::request_url(base, id),
            |keys, body| verify_response(inference, keys, body),
            Instant::now() + self.timeout,
        )
        .await
    }

    /// The session route (LIVE-NETWORK.md 2.2 item 1): the inference id in decimal is what the
    /// request and the executor's answer sign, as upstream's devshardd signs it; the job's
    /// epoch is the request's.
    async fn fetch_devshard(&self, job: &DevshardJob) -> Result<Payloads, PayloadError> {
        // The job's segments were checked on the way in; `.` and `..` pass that check but would
        // be resolved away in the path, asking for another route than the session's.
        for segment in [&*job.runtime_version, &*job.key.escrow_id] {
            if matches!(segment, "" | "." | "..") || segment.contains('/') {
                return Err(local(format!("{segment:?} cannot be a path segment")));
            }
        }
        let id = job.key.inference_id.to_string();
        let target = Target { executor: &job.executor_address, id: &id, epoch_id: job.epoch_id };
        self.fetch_once(
            target,
            |base| {
                wire::devshard_request_url(
                    base,
                    &job.runtime_version,
                    &job.key.escrow_id,
                    job.key.inference_id,
                )
            },
            |keys, body| verify_devshard_response(job, keys, body),
            Instant::now() + self.timeout,
        )
        .await
    }
}

/// Verifies an executor's 200 answer `body` for `inference`: decodes it, checks the inference id,
/// the executor signature against `keys` (any one suffices), then the on-chain hashes (an empty
/// hash skips its check).
pub fn verify_response(
    inference: &Inference,
    keys: &[Vec<u8>],
    body: &[u8],
) -> Result<Payloads, PayloadError> {
    let answer =
        decode_signed(body, inference.inference_id.as_str(), &inference.executed_by, keys)?;
    check_hashes(inference, &answer.prompt_payload, &answer.response_payload)?;
    Ok(Payloads { prompt: answer.prompt_payload, response: answer.response_payload })
}

/// Verifies an executor's 200 answer `body` for devshard `job`: decodes it, checks the inference
/// id (decimal), the executor signature against `keys` (any one suffices), then the raw SHA-256
/// of each payload against the job's hashes.
pub fn verify_devshard_response(
    job: &DevshardJob,
    keys: &[Vec<u8>],
    body: &[u8],
) -> Result<Payloads, PayloadError> {
    let id = job.key.inference_id.to_string();
    let answer = decode_signed(body, &id, &job.executor_address, keys)?;
    check_devshard_hashes(job, &answer.prompt_payload, &answer.response_payload)?;
    Ok(Payloads { prompt: answer.prompt_payload, response: answer.response_payload })
}

/// Decodes an answer for `id` and checks that `executor`, or one of its grantees, signed it:
/// the payloads of another inference, or a signature by none of `keys`, are refused.
fn decode_signed(
    body: &[u8],
    id: &str,
    executor: &str,
    keys: &[Vec<u8>],
) -> Result<PayloadResponse, PayloadError> {
    let answer: PayloadResponse = serde_json::from_slice(body)
        .map_err(|err| unavailable(format!("malformed payload answer: {err}")))?;
    if answer.inference_id != id {
        return Err(unavailable(format!(
            "answer is for inference {:?}, not {id:?}",
            answer.inference_id
        )));
    }
    let message =
        wire::executor_signed_bytes(id, &answer.prompt_payload, &answer.response_payload, executor);
    if !verify_executor_signature(keys, &message, &answer.executor_signature) {
        return Err(PayloadError::BadSignature);
    }
    Ok(answer)
}

/// Compares the payloads with the inference's on-chain commitment (upstream
/// `VerifyPayloadHashes`): a mismatch or an unhashable payload is [`PayloadError::HashMismatch`].
pub fn check_hashes(
    inference: &Inference,
    prompt: &[u8],
    response: &[u8],
) -> Result<(), PayloadError> {
    if !inference.prompt_hash.is_empty() {
        let actual = hash::prompt_hash(prompt)
            .map_err(|err| PayloadError::HashMismatch(format!("prompt cannot be hashed: {err}")))?;
        if actual != inference.prompt_hash {
            return Err(PayloadError::HashMismatch(format!(
                "prompt hash {actual}, on chain {}",
                inference.prompt_hash
            )));
        }
    }
    if !inference.response_hash.is_empty() {
        let actual = hash::response_hash(response).map_err(|err| {
            PayloadError::HashMismatch(format!("response cannot be hashed: {err}"))
        })?;
        if actual != inference.response_hash {
            return Err(PayloadError::HashMismatch(format!(
                "response hash {actual}, on chain {}",
                inference.response_hash
            )));
        }
    }
    Ok(())
}

/// Compares the raw SHA-256 of each payload's bytes with the devshard job's, byte for byte, as
/// upstream's `FetchPayloadsFromExecutor` does: no canonical JSON, nothing skipped.
pub fn check_devshard_hashes(
    job: &DevshardJob,
    prompt: &[u8],
    response: &[u8],
) -> Result<(), PayloadError> {
    for (what, payload, expected) in
        [("prompt", prompt, &job.prompt_hash), ("response", response, &job.response_hash)]
    {
        let actual: [u8; 32] = Sha256::digest(payload).into();
        if actual != *expected {
            return Err(PayloadError::HashMismatch(format!(
                "{what} sha256 {}, expected {}",
                crate::hex::encode(&actual),
                crate::hex::encode(expected)
            )));
        }
    }
    Ok(())
}

/// Whether the base64 `signature` over `message` verifies with any of `keys`. High-S
/// signatures are refused, as the Cosmos SDK's secp256k1 verifier refuses them.
pub fn verify_executor_signature(keys: &[Vec<u8>], message: &[u8], signature: &str) -> bool {
    let Some(signature) = wire::decode_base64(signature) else { return false };
    keys.iter().any(|key| signer::verify(key, message, &signature))
}

fn unavailable(reason: impl Into<String>) -> PayloadError {
    PayloadError::Unavailable(reason.into())
}

fn local(reason: impl Into<String>) -> PayloadError {
    PayloadError::Local(reason.into())
}

fn unix_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| i64::try_from(elapsed.as_nanos()).unwrap_or(i64::MAX))
}

/// A failed request: the validator's own when the request could not be built, the resolver
/// (the system's, or the guard's check of its answer) failed, or the executor's certificate
/// chains to no root this node trusts; else the executor's.
fn from_reqwest(err: reqwest::Error) -> PayloadError {
    let ours = err.is_builder() || resolver_failed(&err) || tls::is_untrusted_issuer(&err);
    let message = http::from_reqwest(err).to_string();
    if ours {
        local(message)
    } else {
        unavailable(message)
    }
}

/// Whether `err` comes from [`GuardedResolver`], whose errors reach the client as the crate's.
fn resolver_failed(err: &reqwest::Error) -> bool {
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        if cause.downcast_ref::<crate::Error>().is_some() {
            return true;
        }
        source = cause.source();
    }
    false
}

#[cfg(test)]
mod tests;
