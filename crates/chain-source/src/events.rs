//! The chain event source (DOMAIN.md 3.1): a websocket subscription to `tm.event='NewBlock'`,
//! then `block_results` of every new height over JSON-RPC, flattened into [`ChainEvent`]s and
//! delivered in height order through a bounded queue.
//!
//! - Every height from the starting point to the node's tip is processed exactly once: a
//!   NewBlock that skips heights, a reconnect, or a slow consumer only delays heights, and the
//!   gap is backfilled over RPC.
//! - The last fully processed height (all its events queued) goes to a [`HeightStore`]. On start
//!   (and whenever processing falls behind), if that height is more than `catch_up_window`
//!   blocks behind the tip, or unknown, processing restarts at
//!   `max(tip - catch_up_window, earliest available)`; the skipped heights are recovery's job.
//! - A dropped, failed or silent (`idle_timeout`) websocket is reconnected after a capped,
//!   jittered exponential back-off, and the subscription renewed.
//! - Websocket frames and messages are capped at `max_message_bytes`, and so are RPC answers.

use std::{
    ops::ControlFlow,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::{SinkExt as _, StreamExt as _};
use rand::{rngs::SmallRng, Rng as _, SeedableRng as _};
use reqwest::Url;
use tokio::{net::TcpStream, sync::mpsc, task::JoinHandle};
use tokio_tungstenite::{
    tungstenite::{self, protocol::WebSocketConfig, Message},
    Connector, MaybeTlsStream, WebSocketStream,
};
use tokio_util::sync::CancellationToken;
use validator_core::ports::chain::InferenceId;

use crate::{config::EventsConfig, rpc::RpcClient, Error, Result};

mod decode;

pub use decode::{
    decode_attribute, decode_block_results, decode_frame, BlockEvents, Frame, MAX_ATTRIBUTE_BYTES,
    NEW_BLOCK_EVENT,
};

/// The subscription request, exactly as upstream sends it.
pub const SUBSCRIBE: &str =
    r#"{"jsonrpc":"2.0","method":"subscribe","id":"1","params":["tm.event='NewBlock'"]}"#;

/// One thing the chain did, in the order the source delivers them: for each height, its
/// transactions' events (in transaction order), then the block's own, then [`ChainEvent::NewBlock`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainEvent {
    /// Inferences finished in one transaction (`inference_finished.inference_id`): sampling
    /// candidates.
    InferenceFinished {
        /// The finished inferences.
        ids: Vec<InferenceId>,
        /// The block height.
        height: u64,
    },
    /// A validation failed and opened an invalidation vote (`inference_validation` with
    /// `needs_revalidation == "true"`): every synced participant revalidates.
    RevalidationNeeded {
        /// The disputed inference.
        inference_id: InferenceId,
        /// The block height.
        height: u64,
    },
    /// A transaction of this block failed with the `inference` module's `ErrDeprecated` (1161):
    /// the chain refuses classic messages, whoever sent them (LIVE-NETWORK.md section 1). Seen
    /// here without a transaction index.
    ClassicRefused {
        /// The block height.
        height: u64,
    },
    /// Every event of this height has been delivered.
    NewBlock {
        /// The block height.
        height: u64,
    },
}

impl ChainEvent {
    /// The height the event belongs to.
    pub fn height(&self) -> u64 {
        match self {
            Self::InferenceFinished { height, .. }
            | Self::RevalidationNeeded { height, .. }
            | Self::ClassicRefused { height }
            | Self::NewBlock { height } => *height,
        }
    }
}

/// Where the source keeps the last fully processed height, so a restart resumes after it. The
/// binary stores it durably; [`MemoryHeightStore`] keeps it in memory.
///
/// `store` is called once per block, from the source's task; keep it quick.
pub trait HeightStore: Send + Sync + 'static {
    /// The last fully processed height, if any.
    fn load(&self) -> Option<u64>;
    /// Records `height` as fully processed.
    fn store(&self, height: u64);
}

/// A [`HeightStore`] in memory.
#[derive(Debug, Default)]
pub struct MemoryHeightStore {
    height: Mutex<Option<u64>>,
}

impl MemoryHeightStore {
    /// A store that starts at `height`.
    pub fn new(height: Option<u64>) -> Self {
        Self { height: Mutex::new(height) }
    }
}

impl HeightStore for MemoryHeightStore {
    fn load(&self) -> Option<u64> {
        *self.height.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn store(&self, height: u64) {
        *self.height.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(height);
    }
}

/// The receiving end of a running source. Dropping it stops the source.
#[derive(Debug)]
pub struct EventStream {
    events: mpsc::Receiver<ChainEvent>,
    task: Option<JoinHandle<()>>,
}

impl EventStream {
    /// The next event; `None` once the source stopped (cancelled).
    pub async fn recv(&mut self) -> Option<ChainEvent> {
        self.events.recv().await
    }

    /// Waits for the source's task to end (after cancellation).
    pub async fn join(mut self) {
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Starts the event source on the current Tokio runtime: it runs until `cancel` fires or the
/// [`EventStream`] is dropped. RPC over `https` and the websocket over `wss` speak TLS with
/// `tls`.
pub fn spawn(
    config: &EventsConfig,
    tls: &tls::ClientTls,
    store: Arc<dyn HeightStore>,
    cancel: CancellationToken,
) -> Result<EventStream> {
    config.validate()?;
    let max_bytes = u64::try_from(config.max_message_bytes).unwrap_or(u64::MAX);
    let rpc = RpcClient::new(&config.rpc_url, tls, config.rpc_timeout, max_bytes)?;
    let websocket_url = websocket_url(rpc.url())?;
    let runtime = tokio::runtime::Handle::try_current()
        .map_err(|_| Error::Transport("no Tokio runtime to run the event source on".into()))?;
    let (sender, events) = mpsc::channel(config.queue_capacity);
    let source = Source {
        config: config.clone(),
        rpc,
        websocket_url,
        connector: Connector::Rustls(tls.rustls_config()),
        store,
        sender,
        cancel,
        next: None,
        earliest: 1,
        rng: SmallRng::from_os_rng(),
    };
    let task = runtime.spawn(source.run());
    Ok(EventStream { events, task: Some(task) })
}

/// `ws://host:port/<path>/websocket` for the RPC URL `http://host:port/<path>`, `wss://…` for
/// `https://…`.
pub fn websocket_url(rpc_url: &Url) -> Result<String> {
    let mut url = rpc_url.clone();
    let scheme = match url.scheme() {
        "http" | "ws" => "ws",
        "https" | "wss" => "wss",
        _ => {
            return Err(Error::InvalidConfig {
                key: "events.rpc_url".into(),
                allowed: "an http or https URL",
            })
        }
    };
    url.set_scheme(scheme).map_err(|()| Error::InvalidConfig {
        key: "events.rpc_url".into(),
        allowed: "an http or https URL",
    })?;
    let path = format!("{}/websocket", url.path().trim_end_matches('/'));
    url.set_path(&path);
    Ok(url.to_string())
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

struct Source {
    config: EventsConfig,
    rpc: RpcClient,
    websocket_url: String,
    /// TLS for a `wss` URL; unused for `ws`.
    connector: Connector,
    store: Arc<dyn HeightStore>,
    sender: mpsc::Sender<ChainEvent>,
    cancel: CancellationToken,
    /// The next height to process, once known.
    next: Option<u64>,
    /// The oldest height the node still holds, as of the last `status`.
    earliest: u64,
    rng: SmallRng,
}

impl Source {
    async fn run(mut self) {
        let mut failures = 0u32;
        loop {
            match self.session(&mut failures).await {
                Ok(ControlFlow::Break(())) => return,
                Ok(ControlFlow::Continue(())) => {}
                Err(err) => tracing::warn!(error = %err, "chain event source: reconnecting"),
            }
            failures = failures.saturating_add(1);
            let delay = self.backoff(failures);
            tokio::select! {
                () = self.cancel.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// `reconnect_base × 2^(failures-1)`, capped at `reconnect_max`, drawn uniformly from its
    /// upper half so that many validators do not reconnect in step.
    fn backoff(&mut self, failures: u32) -> Duration {
        let exponent = failures.saturating_sub(1).min(16);
        let delay = self
            .config
            .reconnect_base
            .saturating_mul(1 << exponent)
            .min(self.config.reconnect_max.max(self.config.reconnect_base));
        let half = delay / 2;
        half + half.mul_f64(self.rng.random::<f64>())
    }

    /// One connection: connect, subscribe, catch up to the tip, then follow NewBlocks until the
    /// socket fails (an error: reconnect) or the source is told to stop (`Break`).
    async fn session(&mut self, failures: &mut u32) -> Result<ControlFlow<()>> {
        // The handshake's future holds a TLS connection's buffers (some 20 KiB), once per
        // connection: on the heap rather than in the source's task.
        let Some(mut socket) = self.cancellable(Box::pin(self.connect())).await? else {
            return Ok(ControlFlow::Break(()));
        };
        let Some(status) = self.cancellable(self.rpc.status()).await? else {
            return Ok(ControlFlow::Break(()));
        };
        self.earliest = status.earliest_height;
        if self.catch_up(status.latest_height).await?.is_break() {
            return Ok(ControlFlow::Break(()));
        }
        *failures = 0;
        loop {
            let frame = tokio::select! {
                () = self.cancel.cancelled() => return Ok(ControlFlow::Break(())),
                frame = tokio::time::timeout(self.config.idle_timeout, socket.next()) => frame,
            };
            let message = match frame {
                Err(_) => {
                    return Err(Error::Timeout("websocket: no message within idle_timeout".into()))
                }
                Ok(None) => return Err(Error::Transport("websocket closed".into())),
                Ok(Some(Err(err))) => {
                    return Err(websocket_error(err, self.config.max_message_bytes))
                }
                Ok(Some(Ok(message))) => message,
            };
            let text = match message {
                Message::Text(text) => text,
                Message::Close(_) => {
                    return Err(Error::Transport("websocket closed by the node".into()))
                }
                _ => continue,
            };
            match decode_frame(text.as_str()) {
                Ok(Frame::NewBlock(height)) => {
                    if self.catch_up(height).await?.is_break() {
                        return Ok(ControlFlow::Break(()));
                    }
                }
                Ok(Frame::Other) => {}
                // A lost NewBlock costs nothing: the next one backfills its height.
                Err(err) => tracing::warn!(error = %err, "chain event source: skipping a frame"),
            }
        }
    }

    async fn connect(&self) -> Result<Socket> {
        let limit = self.config.max_message_bytes;
        let config =
            WebSocketConfig::default().max_message_size(Some(limit)).max_frame_size(Some(limit));
        let connect = tokio_tungstenite::connect_async_tls_with_config(
            self.websocket_url.as_str(),
            Some(config),
            true,
            Some(self.connector.clone()),
        );
        let (mut socket, _) = tokio::time::timeout(self.config.rpc_timeout, connect)
            .await
            .map_err(|_| Error::Timeout("websocket connect".into()))?
            .map_err(|err| websocket_error(err, limit))?;
        tokio::time::timeout(self.config.rpc_timeout, socket.send(Message::text(SUBSCRIBE)))
            .await
            .map_err(|_| Error::Timeout("websocket subscribe".into()))?
            .map_err(|err| websocket_error(err, limit))?;
        Ok(socket)
    }

    /// Processes every height up to `tip` not processed yet, applying the catch-up window.
    async fn catch_up(&mut self, tip: u64) -> Result<ControlFlow<()>> {
        let mut next = match self.next {
            Some(next) => next,
            None => self.store.load().map_or(0, |last| last.saturating_add(1)),
        };
        let window = self.config.catch_up_window;
        let last = next.checked_sub(1).filter(|last| *last > 0);
        if last.is_none_or(|last| tip.saturating_sub(last) > window) {
            let restart = tip.saturating_sub(window).max(self.earliest).max(1);
            if restart > next {
                tracing::warn!(
                    from = next,
                    to = restart,
                    "chain event source: lag over the catch-up window, skipping ahead"
                );
            }
            next = next.max(restart);
        }
        next = next.max(self.earliest);
        // The cursor moves only past heights processed: a tip the node cannot serve (a NewBlock
        // of a bogus height) costs a failed fetch and a reconnect, and must not drag the cursor
        // beyond every height the chain will ever reach.
        while next <= tip {
            if self.process(next).await?.is_break() {
                return Ok(ControlFlow::Break(()));
            }
            next += 1;
            self.next = Some(next);
        }
        Ok(ControlFlow::Continue(()))
    }

    async fn process(&mut self, height: u64) -> Result<ControlFlow<()>> {
        let Some(result) = self.cancellable(self.rpc.block_results(height)).await? else {
            return Ok(ControlFlow::Break(()));
        };
        let decoded = decode_block_results(height, &result)?;
        for err in &decoded.rejected {
            tracing::warn!(height, error = %err, "chain event source: skipping an attribute");
        }
        for event in decoded.events.into_iter().chain([ChainEvent::NewBlock { height }]) {
            let sent = tokio::select! {
                () = self.cancel.cancelled() => return Ok(ControlFlow::Break(())),
                sent = self.sender.send(event) => sent,
            };
            if sent.is_err() {
                return Ok(ControlFlow::Break(()));
            }
        }
        self.store.store(height);
        Ok(ControlFlow::Continue(()))
    }

    /// Runs `future` unless the source is cancelled first (`None`).
    async fn cancellable<T>(
        &self,
        future: impl std::future::Future<Output = Result<T>>,
    ) -> Result<Option<T>> {
        tokio::select! {
            () = self.cancel.cancelled() => Ok(None),
            result = future => result.map(Some),
        }
    }
}

fn websocket_error(err: tungstenite::Error, limit: usize) -> Error {
    match err {
        tungstenite::Error::Capacity(_) => {
            Error::TooLarge { limit: u64::try_from(limit).unwrap_or(u64::MAX) }
        }
        other => Error::Transport(format!("websocket: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_websocket_url_follows_the_rpc_url() {
        let url = |text: &str| websocket_url(&Url::parse(text).unwrap());
        assert_eq!(url("http://node:26657").unwrap(), "ws://node:26657/websocket");
        assert_eq!(url("https://node/rpc/").unwrap(), "wss://node/rpc/websocket");
        assert!(url("ftp://node").is_err());
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let config = EventsConfig {
            reconnect_base: Duration::from_millis(100),
            reconnect_max: Duration::from_millis(1000),
            ..EventsConfig::default()
        };
        let (sender, _events) = mpsc::channel(1);
        let tls = tls::ClientTls::public().unwrap();
        let mut source = Source {
            rpc: RpcClient::new(&config.rpc_url, &tls, config.rpc_timeout, 1).unwrap(),
            config,
            websocket_url: String::new(),
            connector: Connector::Rustls(tls.rustls_config()),
            store: Arc::new(MemoryHeightStore::default()),
            sender,
            cancel: CancellationToken::new(),
            next: None,
            earliest: 1,
            rng: SmallRng::seed_from_u64(1),
        };
        for (failures, cap) in [(1, 100), (2, 200), (3, 400), (4, 800), (5, 1000), (40, 1000)] {
            let delay = source.backoff(failures);
            let cap = Duration::from_millis(cap);
            assert!(delay >= cap / 2 && delay <= cap, "{failures}: {delay:?}");
        }
    }
}
