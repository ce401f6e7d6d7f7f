//! What the fake servers share: the HTTP/1 accept loop (one task per connection, all of them
//! ended by the fake's shutdown token; websocket upgrades allowed) and URL decoding.

use std::{error::Error as StdError, future::Future};

use hyper::{body::Incoming, Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::{CancellationToken, DropGuard};

/// Starts [`serve`] on its own task; the fake keeps the guard, and dropping it ends the accept
/// loop and every connection.
pub(crate) fn spawn<H, Fut, B, E>(
    listener: TcpListener,
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
    tokio::spawn(serve(listener, shutdown.clone(), handler));
    shutdown.drop_guard()
}

/// Serves `handler` on every connection `listener` accepts until `shutdown` fires.
pub(crate) async fn serve<H, Fut, B, E>(
    listener: TcpListener,
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
        tokio::spawn(async move {
            let service = hyper::service::service_fn(handler);
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::select! {
                () = shutdown.cancelled() => {}
                _ = connection => {}
            }
        });
    }
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
