//! TLS on the chain adapter's outbound connections, against loopback fakes serving certificates
//! of a `testkit::TestCa`: executors over `https` through the address guard's resolver, the
//! chain node's RPC over `https` and its websocket over `wss`. A certificate the client refuses is
//! the executor's side of a payload failure, and a handshake that never ends stops at the fetch's
//! timeout. Timeouts run in real time: real sockets do not mix with paused time.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use chain_source::{
    config::PayloadsConfig,
    events::{self, ChainEvent, MemoryHeightStore},
    rpc::RpcClient,
    Error, HttpPayloadSource,
};
use testkit::{
    memory::{finished_inference, payloads_for, MemoryPorts, EXECUTOR, SELF_ADDRESS},
    public_tls, Leaf, LoopbackChainNode, LoopbackExecutor, StaticDirectory, TestCa, TxEvent,
};
use tokio::{net::TcpListener, time::timeout};
use tokio_util::sync::CancellationToken;
use validator_core::{
    ports::payload_source::{PayloadError, PayloadSource},
    Config, Engine, Ports,
};

use crate::payloads::{executor_key, guarded_source_with, lookup_to, warm_key, EPOCH};

const BOUND: Duration = Duration::from_secs(10);

/// The executor's host name in its URL and certificate; the tests' resolver maps it to loopback.
const HOST: &str = "executor.test";

/// The path prefix of the executor's `inference_url`, kept in front of the payloads path.
const PREFIX: &str = "/api/v2";

/// An executor over TLS presenting a `leaf` certificate for `names`, storing inference `a`, and
/// a directory listing it at `https://executor.test:{port}/api/v2`.
async fn https_executor(
    ca: &TestCa,
    leaf: Leaf,
    names: &[&str],
) -> (LoopbackExecutor, StaticDirectory) {
    let executor =
        LoopbackExecutor::start_tls(EXECUTOR, executor_key(), ca.server(names, leaf)).await;
    executor.register_requester(SELF_ADDRESS, vec![warm_key().public_key()]);
    executor.insert_generated("a", EPOCH);
    let directory = StaticDirectory::new();
    let url = format!("https://{HOST}:{}{PREFIX}", executor.addr().port());
    directory.insert(EXECUTOR, &url, vec![executor_key().public_key()]);
    (executor, directory)
}

/// A payload source speaking TLS with `tls`, whose resolver answers loopback for every name; the
/// allow-list admits loopback as an operator's private network would be.
fn source(tls: &tls::ClientTls, directory: &StaticDirectory, bound: Duration) -> HttpPayloadSource {
    let config =
        PayloadsConfig { timeout: bound, allow: vec!["127.0.0.0/8".into()], ..Default::default() };
    guarded_source_with(&config, tls, lookup_to("127.0.0.1"), directory)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_executor_is_fetched_under_its_path_prefix_and_validated_by_the_engine() {
    let ca = TestCa::new();
    let (executor, directory) = https_executor(&ca, Leaf::Valid, &[HOST]).await;
    let source = source(&ca.client_tls(), &directory, BOUND);

    let fetched = source.fetch(&executor.inference("a").unwrap()).await.unwrap();
    assert_eq!(fetched, payloads_for("a"));
    let paths: Vec<String> = executor.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, [format!("{PREFIX}/v1/inference/payloads")]);

    let fakes = MemoryPorts::new(Duration::ZERO, 4);
    fakes.chain.add_inference("a", EPOCH);
    fakes.chain.put_inference(executor.inference("a").unwrap());
    let ports = Ports { payloads: Arc::new(source), ..fakes.ports() };
    let engine = Engine::start(Config::default(), ports).unwrap();
    engine.validate("a".into()).unwrap();
    timeout(BOUND, fakes.chain.wait_submitted(1)).await.unwrap();
    let submitted = fakes.chain.submitted();
    assert_eq!((submitted[0].value_decimal.value, submitted[0].value_decimal.exponent), (1, 0));
    assert_eq!(submitted[0].response_hash.len(), 64);
    engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn refused_certificates_say_whose_failure_they_are() {
    let ca = TestCa::new();
    let (with_ca, without_ca) = (ca.client_tls(), public_tls());
    // Under no trusted root (a CA this node lacks, or a self-signed leaf): the node may be the
    // one missing a root, so never the executor's fault. Expired or for another host: the
    // executor's.
    let cases = [
        ("no CA configured", Leaf::Valid, [HOST], &without_ca, "UnknownIssuer", true),
        ("expired", Leaf::Expired, [HOST], &with_ca, "certificate expired", false),
        ("wrong host", Leaf::Valid, ["other.test"], &with_ca, "not valid for name", false),
        ("self-signed", Leaf::SelfSigned, [HOST], &with_ca, "UnknownIssuer", true),
    ];
    for (case, leaf, names, tls, reason, ours) in cases {
        let (executor, directory) = https_executor(&ca, leaf, &names).await;
        let record = executor.inference("a").unwrap();
        let result = timeout(BOUND, source(tls, &directory, BOUND).fetch(&record)).await.unwrap();
        let why = match &result {
            Err(PayloadError::Local(why)) if ours => why,
            Err(PayloadError::Unavailable(why)) if !ours => why,
            other => panic!("{case}: {other:?}"),
        };
        assert!(why.contains(reason), "{case}: {why}");
        assert!(executor.requests().is_empty(), "{case}: no request went over the handshake");
    }
}

#[tokio::test]
async fn a_stalled_tls_handshake_ends_at_the_fetch_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    // Accepts the connection and never answers the client's hello.
    let _held = tokio::spawn(async move {
        let (_socket, _) = listener.accept().await.unwrap();
        std::future::pending::<()>().await;
    });
    let directory = StaticDirectory::new();
    directory.insert(EXECUTOR, &format!("https://{HOST}:{port}"), vec![]);
    let bound = Duration::from_millis(300);
    let source = source(&TestCa::new().client_tls(), &directory, bound);
    let record = finished_inference("a", EPOCH, EXECUTOR);

    let started = Instant::now();
    let result = timeout(BOUND, source.fetch(&record)).await.unwrap();
    let elapsed = started.elapsed();
    assert!(
        matches!(&result, Err(PayloadError::Unavailable(why)) if why.contains("300ms")),
        "{result:?}"
    );
    assert!(elapsed >= bound && elapsed < Duration::from_secs(3), "{elapsed:?}");
}

#[tokio::test]
async fn chain_rpc_over_https_and_events_over_wss() {
    let ca = TestCa::new();
    let node = LoopbackChainNode::start_tls(ca.server(&["127.0.0.1"], Leaf::Valid)).await;
    assert!(node.url().starts_with("https://"), "{}", node.url());

    let rpc = RpcClient::new(&node.url(), &ca.client_tls(), BOUND, 1 << 20).unwrap();
    assert_eq!(rpc.status().await.unwrap().latest_height, 1);
    let untrusting = RpcClient::new(&node.url(), &public_tls(), BOUND, 1 << 20).unwrap();
    let refused = untrusting.status().await;
    assert!(matches!(&refused, Err(Error::Transport(why)) if why.contains("UnknownIssuer")));

    let config = crate::events::config(&node, 500);
    let store = Arc::new(MemoryHeightStore::default());
    let mut stream =
        events::spawn(&config, &ca.client_tls(), store, CancellationToken::new()).unwrap();
    timeout(BOUND, node.wait_subscriptions(1)).await.unwrap();
    node.produce_block(vec![vec![TxEvent::inference_finished("a")]]);
    let events = crate::events::until(&mut stream, 2).await;
    assert_eq!(crate::events::finished(&events), ["a"]);
    assert_eq!(events.last(), Some(&ChainEvent::NewBlock { height: 2 }));
}
