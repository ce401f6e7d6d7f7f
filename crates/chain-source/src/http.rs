//! What the JSON-RPC client and the payload client share: one way to build the pooled client, to
//! read an answer under a size cap, and to turn reqwest's errors into the crate's.

use std::{error::Error as _, time::Duration};

use bytes::{Bytes, BytesMut};

use crate::{Error, Result};

/// The most a body buffer reserves up front, whatever `Content-Length` claims: a peer that
/// announces a large body and sends little should not cost that much memory.
const MAX_PREALLOCATION: u64 = 1024 * 1024;

/// How much of an error body goes into [`Error::Status`]: enough for the node's message, not
/// enough to flood a log line.
const EXCERPT_BYTES: usize = 256;

/// A pooled HTTP/1.1 client for chain endpoints, `http` or `https`.
pub(crate) fn client(tls: &tls::ClientTls, connect_timeout: Duration) -> Result<reqwest::Client> {
    tls.http_client_builder()
        .connect_timeout(connect_timeout)
        // Only the binary reads the environment, so no proxy settings are taken from it.
        .no_proxy()
        // A redirect from a chain node is a misconfiguration, not something to follow.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|err| Error::Transport(chain(&err)))
}

/// Reads the body up to `cap` bytes, refusing it as soon as it is known to be longer: from its
/// `Content-Length` before reading anything, or from the chunk that crosses the cap.
pub(crate) async fn read_capped(mut response: reqwest::Response, cap: u64) -> Result<Bytes> {
    if response.content_length().is_some_and(|len| len > cap) {
        return Err(Error::TooLarge { limit: cap });
    }
    let reserve = response.content_length().unwrap_or(0).min(MAX_PREALLOCATION);
    let mut body = BytesMut::with_capacity(usize::try_from(reserve).unwrap_or(0));
    while let Some(chunk) = response.chunk().await.map_err(from_reqwest)? {
        let len = u64::try_from(body.len() + chunk.len()).unwrap_or(u64::MAX);
        if len > cap {
            return Err(Error::TooLarge { limit: cap });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// The start of an error body, lossy UTF-8, no longer than [`EXCERPT_BYTES`].
pub(crate) fn excerpt(body: &[u8]) -> String {
    let end = body.len().min(EXCERPT_BYTES);
    String::from_utf8_lossy(body.get(..end).unwrap_or_default()).trim().to_owned()
}

/// [`excerpt`] of an answer whose body is not needed otherwise: reads no further than
/// [`EXCERPT_BYTES`], and keeps what arrived if reading fails.
pub(crate) async fn read_excerpt(mut response: reqwest::Response) -> String {
    let mut prefix = Vec::new();
    while prefix.len() < EXCERPT_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => prefix.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    excerpt(&prefix)
}

/// reqwest's error with its source chain, as the crate's error.
pub(crate) fn from_reqwest(err: reqwest::Error) -> Error {
    if err.is_timeout() {
        return Error::Timeout(
            err.url().map_or_else(|| "request".to_owned(), |url| url.path().to_owned()),
        );
    }
    Error::Transport(chain(&err))
}

fn chain(err: &reqwest::Error) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}
