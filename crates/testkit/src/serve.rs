//! What the fake servers share: the HTTP/1 accept loop, over plain TCP or TLS (one task per
//! connection, all of them ended by the fake's shutdown token; websocket upgrades allowed), and
//! URL decoding.

use std::{error::Error as StdError, future::Future, net::SocketAddr};

use hyper::{body::Incoming, Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
};
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::ca::ServerTls;

/// The base URL of a fake bound to `addr`: `https` when it speaks TLS.
pub(crate) fn base_url(addr: SocketAddr, tls: bool) -> String {
    format!("{}://{addr}", if tls { "https" } else { "http" })
}

/// Starts [`serve`] on its own task; the fake keeps the guard, and dropping it ends the accept
/// loop and every connection.
pub(crate) fn spawn<H, Fut, B, E>(
    listener: TcpListener,
    tls: Option<ServerTls>,
    shutdown: CancellationToken,
    handler: H,
) -> DropGuard
where
    H: Fn(Request<Incoming>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<Response<B>, E>> + Send + 'static,
    E: Into<Box<dyn StdError + Send + Sync>> + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    tokio::spawn(serve(listener, tls, shutdown.clone(), handler));
    shutdown.drop_guard()
}

/// Serves `handler` on every connection `listener` accepts until `shutdown` fires, after a TLS
/// handshake when `tls` is given. The handshake runs on the connection's task, so a client that
/// stalls in it holds up no one else.
pub(crate) async fn serve<H, Fut, B, E>(
    listener: TcpListener,
    tls: Option<ServerTls>,
    shutdown: CancellationToken,
    handler: H,
) where
    H: Fn(Request<Incoming>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<Response<B>, E>> + Send + 'static,
    E: Into<Box<dyn StdError + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
        };
        let handler = handler.clone();
        let shutdown = shutdown.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let connection = async move {
                match tls {
                    None => serve_connection(stream, handler).await,
                    // A failed handshake is the client's refusal of the certificate, or a
                    // client that is not speaking TLS: nothing to answer.
                    Some(tls) => {
                        if let Ok(stream) = tls.acceptor().accept(stream).await {
                            serve_connection(stream, handler).await;
                        }
                    }
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = connection => {}
            }
        });
    }
}

/// Serves HTTP/1 on one connection until it closes.
async fn serve_connection<S, H, Fut, B, E>(stream: S, handler: H)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<Response<B>, E>> + Send + 'static,
    E: Into<Box<dyn StdError + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let service = hyper::service::service_fn(handler);
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades()
        .await;
}

/// `text` with `%XX` escapes decoded, and `+` as a space when it is part of a query string.
pub(crate) fn percent_decode(text: &str, query: bool) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        let escaped = bytes
            .get(i + 1..i + 3)
            .and_then(|pair| std::str::from_utf8(pair).ok())
            .and_then(|pair| u8::from_str_radix(pair, 16).ok());
        match (byte, escaped) {
            (b'%', Some(decoded)) => {
                out.push(decoded);
                i += 3;
                continue;
            }
            (b'+', _) if query => out.push(b' '),
            (byte, _) => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn decodes_escapes_and_query_spaces() {
        assert_eq!(percent_decode("a%2Fb+c%zz%", false), "a/b+c%zz%");
        assert_eq!(percent_decode("a%2Fb+c", true), "a/b c");
    }
}
