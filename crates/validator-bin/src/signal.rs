//! The OS shutdown signal (SIGINT or SIGTERM) as a future; SIGHUP is ignored.

use std::future::Future;

/// A future resolving on the first SIGINT or SIGTERM. The handlers are installed when this is
/// called, not when the future is first polled, so a signal that arrives in between is not
/// lost. If a handler cannot be installed, that signal is not waited for (a warning says so).
/// SIGHUP, whose default action would kill the node without draining, is logged and ignored:
/// the configuration is read at start only. Must be called within a Tokio runtime.
#[cfg(unix)]
pub fn shutdown() -> impl Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt())
        .inspect_err(|err| tracing::warn!(%err, "cannot listen for SIGINT"))
        .ok();
    let mut terminate = signal(SignalKind::terminate())
        .inspect_err(|err| tracing::warn!(%err, "cannot listen for SIGTERM"))
        .ok();
    let mut hangup = signal(SignalKind::hangup())
        .inspect_err(|err| tracing::warn!(%err, "cannot listen for SIGHUP"))
        .ok();
    async move {
        let hangups = async {
            while let Some(stream) = hangup.as_mut() {
                if stream.recv().await.is_none() {
                    break;
                }
                tracing::warn!("SIGHUP ignored: the configuration is read at start only");
            }
            std::future::pending::<()>().await;
        };
        let interrupted = async {
            match interrupt.as_mut() {
                Some(stream) => stream.recv().await,
                None => std::future::pending().await,
            }
        };
        let terminated = async {
            match terminate.as_mut() {
                Some(stream) => stream.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = hangups => {}
            _ = interrupted => tracing::info!("SIGINT received"),
            _ = terminated => tracing::info!("SIGTERM received"),
        }
    }
}

/// A future resolving on Ctrl-C.
#[cfg(not(unix))]
pub fn shutdown() -> impl Future<Output = ()> {
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
