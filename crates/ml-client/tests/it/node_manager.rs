use std::{sync::Arc, time::Duration};

use ml_client::{Config, HttpMlNodeClient, NodeManagerBroker, NodeManagerConfig};
use testkit::{
    memory::MemoryPorts, node_manager::RuntimeConfig, public_tls, LoopbackMlNode,
    LoopbackNodeManager, NodeManagerStats,
};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use validator_core::ports::{
    ml_node::{MlNodeClient, ReplayResponse},
    model_lock::{LeaseRequest, LockError, ModelLease, ModelLockBroker, NodeHealth},
};
use validator_proto::nodemanager::{
    node_manager_client::NodeManagerClient, GetRuntimeConfigRequest,
};

use crate::{request, MODEL};

/// Bound of every wait on the fake.
const BOUND: Duration = Duration::from_secs(5);

fn config(url: &str, call_timeout: Duration) -> Config {
    Config {
        node_manager: NodeManagerConfig {
            url: Some(url.to_owned()),
            timeout: call_timeout,
            capacity_refresh: Duration::from_millis(50),
        },
        ..Config::default()
    }
}

fn broker(fake: &LoopbackNodeManager) -> NodeManagerBroker {
    NodeManagerBroker::new(&config(&fake.url(), BOUND)).unwrap()
}

async fn acquire(broker: &NodeManagerBroker) -> Result<ModelLease, LockError> {
    broker.acquire(&LeaseRequest::model(MODEL)).await
}

async fn wait_for(fake: &LoopbackNodeManager, condition: impl Fn(&NodeManagerStats) -> bool) {
    timeout(BOUND, fake.wait_for(condition)).await.expect("the fake NodeManager got there");
}

#[tokio::test]
async fn a_lease_replays_on_the_granted_endpoint_and_releases_with_its_outcome() {
    let ml = LoopbackMlNode::start().await;
    let fake = LoopbackNodeManager::start().await;
    fake.add_node("node-a", MODEL, &ml.url(), 8);
    let broker = broker(&fake);
    let client = HttpMlNodeClient::new(&Config::default(), &public_tls()).unwrap();

    let lease = broker
        .acquire(&LeaseRequest { escrow_id: Some("42"), ..LeaseRequest::model(MODEL) })
        .await
        .unwrap();
    assert_eq!((&*lease.node().id, &*lease.node().address), ("node-a", ml.url().as_str()));
    let answer = client.replay(lease.node(), &request()).await;
    assert!(matches!(answer, Ok(ReplayResponse::Completed(_))), "{answer:?}");
    assert_eq!(ml.requests()[0].path, "/v1/chat/completions");
    let held = broker.status().locks_held;
    assert_eq!(held.len(), 1);
    assert_eq!(fake.locks()[0].lock_id, held[0].lock_id);
    assert_eq!(fake.locks()[0].escrow_id, "42");
    lease.release(NodeHealth::Healthy);
    assert!(broker.status().locks_held.is_empty(), "forgotten at once");
    wait_for(&fake, |stats| stats.released("SUCCESS") == 1).await;

    let cases = [
        (Some(NodeHealth::Failed), "TRANSPORT_ERROR"),
        (Some(NodeHealth::TimedOut), "TIMEOUT"),
        (Some(NodeHealth::BadAnswer), "APPLICATION_ERROR"),
        (Some(NodeHealth::Unknown), "TRANSPORT_ERROR"),
        // A lease dropped unused reports nothing better than a cancelled call.
        (None, "TRANSPORT_ERROR"),
    ];
    for (health, outcome) in cases {
        let before = fake.stats().released(outcome);
        let lease = acquire(&broker).await.unwrap();
        match health {
            Some(health) => lease.release(health),
            None => drop(lease),
        }
        wait_for(&fake, |stats| stats.released(outcome) == before + 1).await;
    }
    broker.drain_releases().await;
    let status = broker.status();
    assert_eq!((status.counters.granted, status.counters.releases), (6, 6));
    assert_eq!(fake.stats().locks_held, 0);
    assert_eq!(fake.acquire_requests()[0].escrow_id, "42");
    assert_eq!(fake.acquire_requests()[1].escrow_id, "");
}

#[tokio::test]
async fn resource_exhausted_is_no_node_and_counted() {
    let fake = LoopbackNodeManager::start().await;
    fake.add_node("node-a", MODEL, "http://10.0.0.1:5000", 1);
    let broker = broker(&fake);

    let held = acquire(&broker).await.unwrap();
    assert_eq!(acquire(&broker).await.unwrap_err(), LockError::NoNode { model: MODEL.into() });
    // The release goes out on its own task; the next acquire waits for it rather than being
    // refused the slot it frees.
    held.release(NodeHealth::Healthy);
    let again = acquire(&broker).await.unwrap();
    drop(again);
    wait_for(&fake, |stats| stats.locks_held == 0).await;

    // The fake refuses on demand, whatever the room.
    fake.reject_next(2);
    for _ in 0..2 {
        assert!(matches!(acquire(&broker).await, Err(LockError::NoNode { .. })));
    }
    let lease = acquire(&broker).await.unwrap();
    assert_eq!(broker.status().counters.rejections, 3);
    assert_eq!(broker.status().counters.granted, 3);
    assert_eq!(fake.stats().rejections, 3);
    assert_eq!(broker.status().counters.failures, 0);
    drop(lease);
}

#[tokio::test]
async fn excluded_nodes_are_not_handed_out() {
    let fake = LoopbackNodeManager::start().await;
    fake.add_node("node-a", MODEL, "http://10.0.0.1:5000", 4);
    fake.add_node("node-b", MODEL, "http://10.0.0.2:5000", 4);
    let broker = broker(&fake);

    let a: Arc<str> = "node-a".into();
    let b: Arc<str> = "node-b".into();
    let excluding = |nodes: Vec<Arc<str>>| {
        let broker = broker.clone();
        async move {
            let request = LeaseRequest { excluded_nodes: &nodes, ..LeaseRequest::model(MODEL) };
            broker.acquire(&request).await
        }
    };
    for _ in 0..3 {
        let lease = excluding(vec![Arc::clone(&a)]).await.unwrap();
        assert_eq!(&*lease.node().id, "node-b");
    }
    let refused = excluding(vec![a, b]).await;
    assert!(matches!(refused, Err(LockError::NoNode { .. })), "{refused:?}");
    let requests = fake.acquire_requests();
    assert_eq!(requests[0].excluded_nodes, ["node-a"]);
    assert_eq!(requests[3].excluded_nodes, ["node-a", "node-b"]);
}

#[tokio::test]
async fn a_hanging_node_manager_is_a_broker_error_at_the_timeout() {
    let fake = LoopbackNodeManager::start().await;
    fake.add_node("node-a", MODEL, "http://10.0.0.1:5000", 4);
    let broker = NodeManagerBroker::new(&config(&fake.url(), Duration::from_millis(200))).unwrap();
    fake.set_hang(true);

    let result = timeout(BOUND, acquire(&broker)).await.unwrap();
    assert!(
        matches!(&result, Err(LockError::Broker(why)) if why.contains("timed out")),
        "{result:?}"
    );
    let status = broker.status();
    assert_eq!((status.lock_waits, status.counters.failures), (0, 1));
    // The abandoned call goes away on the server too.
    wait_for(&fake, |stats| stats.hanging == 0 && stats.acquires == 0).await;
    let refreshed = broker.refresh_capacity().await;
    assert!(matches!(refreshed, Err(ml_client::Error::Timeout { .. })), "{refreshed:?}");

    fake.set_hang(false);
    acquire(&broker).await.unwrap();
}

#[tokio::test]
async fn an_unreachable_node_manager_is_a_broker_error() {
    let fake = LoopbackNodeManager::start().await;
    let url = fake.url();
    drop(fake);
    let broker = NodeManagerBroker::new(&config(&url, BOUND)).unwrap();
    let result = timeout(BOUND, acquire(&broker)).await.unwrap();
    assert!(matches!(&result, Err(LockError::Broker(_))), "{result:?}");
    assert!(broker.has_room(MODEL), "no listing yet: the broker does not know");
}

#[tokio::test]
async fn a_malformed_endpoint_is_given_back_at_once() {
    let fake = LoopbackNodeManager::start().await;
    fake.add_node("node-a", MODEL, "http://10.0.0.1:5000", 4);
    let broker = broker(&fake);
    let malformed =
        ["", "10.0.0.1:5000", "ftp://10.0.0.1", "http://h:1/?q=1", "http://h:1/#top", "http://"];
    for (i, endpoint) in malformed.into_iter().enumerate() {
        fake.answer_endpoint(Some(endpoint));
        let result = acquire(&broker).await;
        assert!(
            matches!(&result, Err(LockError::Broker(why)) if why.contains("malformed endpoint")),
            "{endpoint:?}: {result:?}"
        );
        wait_for(&fake, |stats| stats.released("APPLICATION_ERROR") == i as u64 + 1).await;
    }
    let status = broker.status();
    assert_eq!(status.counters.bad_endpoints, malformed.len() as u64);
    assert!(status.locks_held.is_empty());
    assert_eq!(fake.stats().locks_held, 0);

    fake.answer_endpoint(None);
    let lease = acquire(&broker).await.unwrap();
    assert_eq!(&*lease.node().address, "http://10.0.0.1:5000");
}

#[tokio::test]
async fn a_lock_lost_by_the_node_manager_is_counted_on_release() {
    let fake = LoopbackNodeManager::start().await;
    fake.add_node("node-a", MODEL, "http://10.0.0.1:5000", 4);
    let broker = broker(&fake);

    let lease = acquire(&broker).await.unwrap();
    assert!(fake.lose_lock(&fake.locks()[0].lock_id));
    lease.release(NodeHealth::Healthy);
    wait_for(&fake, |stats| stats.releases_not_found == 1).await;

    // A lock evicted after its TTL is lost the same way.
    fake.set_lock_ttl(Duration::from_millis(50));
    let lease = acquire(&broker).await.unwrap();
    wait_for(&fake, |stats| stats.evictions == 1 && stats.locks_held == 0).await;
    lease.release(NodeHealth::Healthy);
    wait_for(&fake, |stats| stats.releases_not_found == 2).await;

    broker.drain_releases().await;
    let counters = broker.status().counters;
    assert_eq!((counters.lost_locks, counters.releases, counters.release_failures), (2, 0, 0));
}

#[tokio::test]
async fn room_comes_from_the_listing_less_newer_leases() {
    let fake = LoopbackNodeManager::start().await;
    fake.add_node("node-a", MODEL, "http://10.0.0.1:5000", 2);
    fake.add_node("node-b", MODEL, "http://10.0.0.2:5000", 4);
    fake.set_node_status("node-b", "POC");
    fake.add_node("node-c", "other-model", "http://10.0.0.3:5000", 1);
    let broker = broker(&fake);

    // Before the first listing the broker does not know, and lets work through.
    assert_eq!(broker.room(MODEL), None);
    assert!(broker.has_room(MODEL) && broker.serves("unlisted-model"));

    broker.refresh_capacity().await.unwrap();
    assert_eq!(broker.room(MODEL), Some(2), "node-b is not serving");
    assert!(broker.serves(MODEL) && broker.serves("other-model"));
    assert!(!broker.serves("unlisted-model"));
    assert!(!broker.has_room("unlisted-model"));

    let first = acquire(&broker).await.unwrap();
    assert_eq!(broker.room(MODEL), Some(1));
    let second = acquire(&broker).await.unwrap();
    assert!(!broker.has_room(MODEL));
    assert_eq!(broker.status().capacity[MODEL], 0);
    assert_eq!(broker.status().capacity["other-model"], 1);

    // The next listing counts both locks itself.
    broker.refresh_capacity().await.unwrap();
    assert_eq!(broker.room(MODEL), Some(0));
    let status = broker.status();
    assert_eq!(status.nodes.iter().find(|n| n.node_id == "node-a").unwrap().lock_count, 2);
    assert!(status.listed_at_unix_ms.is_some());

    first.release(NodeHealth::Healthy);
    wait_for(&fake, |stats| stats.locks_held == 1).await;
    broker.refresh_capacity().await.unwrap();
    assert_eq!(broker.room(MODEL), Some(1));
    assert!(broker.has_room(MODEL));
    drop(second);
}

#[tokio::test]
async fn the_capacity_refresh_runs_every_interval_until_cancelled() {
    let fake = LoopbackNodeManager::start().await;
    fake.add_node("node-a", MODEL, "http://10.0.0.1:5000", 2);
    let broker = NodeManagerBroker::new(&config(&fake.url(), Duration::from_millis(200))).unwrap();
    let cancel = CancellationToken::new();
    let task = broker.spawn_capacity_refresh(cancel.clone());

    wait_for(&fake, |stats| stats.listings >= 3).await;
    // The loop asks again only once it has the previous answer, so two have arrived at least.
    assert!(broker.status().counters.listings >= 2);
    assert_eq!(broker.room(MODEL), Some(2));

    // A failed listing keeps the last one, and a task stuck in a call still ends on the token.
    fake.set_hang(true);
    assert!(broker.refresh_capacity().await.is_err());
    assert_eq!(broker.room(MODEL), Some(2));
    assert!(broker.status().counters.listing_failures >= 1);
    wait_for(&fake, |stats| stats.hanging >= 1).await;
    cancel.cancel();
    timeout(BOUND, task).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_validates_through_node_manager_locks() {
    let ml = LoopbackMlNode::start().await;
    let fake = LoopbackNodeManager::start().await;
    fake.add_node("node-a", MODEL, &ml.url(), 2);
    fake.add_node("node-b", MODEL, &ml.url(), 2);
    let ml_config = config(&fake.url(), BOUND);
    let broker = NodeManagerBroker::new(&ml_config).unwrap();
    let fakes = MemoryPorts::new(Duration::ZERO, 1);
    let ports = validator_core::Ports {
        ml: Arc::new(HttpMlNodeClient::new(&ml_config, &public_tls()).unwrap()),
        broker: Arc::new(broker.clone()),
        ..fakes.ports()
    };
    let engine = validator_core::Engine::start(
        validator_core::Config { slots: 4, ..Default::default() },
        ports,
    )
    .unwrap();
    let ids: Vec<String> = (0..40).map(|i| format!("inf-{i}")).collect();
    for id in &ids {
        fakes.chain.add_inference(id, 10);
        engine.validate(id.as_str().into()).unwrap();
    }
    timeout(BOUND * 2, fakes.chain.wait_submitted(ids.len())).await.unwrap();
    wait_for(&fake, |stats| stats.released("SUCCESS") == 40).await;

    let stats = fake.stats();
    assert!(stats.peak_locks <= 4, "one lock per slot: {stats:?}");
    // Each acquire waits for the broker's earlier releases, so no slot a release just freed is
    // refused.
    assert_eq!((stats.granted, stats.rejections, stats.locks_held), (40, 0, 0));
    assert!(ml.peak() <= 4);
    engine.shutdown(Duration::from_secs(1)).await;
}

/// The fake's runtime configuration, as devshardd reads it: whole at first, unchanged while the
/// caller is up to date, and a long-poll that a newer configuration ends.
#[tokio::test]
async fn the_fake_serves_the_runtime_config_as_upstream() {
    let fake = LoopbackNodeManager::start().await;
    fake.set_runtime_config(RuntimeConfig {
        params_block_height: 100,
        current_epoch_id: 7,
        logprobs_mode: "raw_logprobs".into(),
        validation_rate: 5000,
        ..RuntimeConfig::default()
    });
    let mut client = NodeManagerClient::connect(fake.url()).await.unwrap();
    let ask = |height: i64, wait: i32| GetRuntimeConfigRequest {
        client_params_block_height: height,
        max_wait_seconds: wait,
    };

    let first = client.get_runtime_config(ask(0, 0)).await.unwrap().into_inner();
    let config = first.config.unwrap();
    assert!(!first.unchanged);
    assert_eq!((config.logprobs_mode.as_str(), config.current_epoch_id), ("raw_logprobs", 7));
    assert!(config.served_at_unix > 0);
    assert!(client.get_runtime_config(ask(100, 0)).await.unwrap().into_inner().unchanged);

    let mut polling = client.clone();
    let poll = tokio::spawn(async move { polling.get_runtime_config(ask(100, 30)).await });
    wait_for(&fake, |stats| stats.polling == 1).await;
    fake.set_runtime_config(RuntimeConfig {
        params_block_height: 101,
        logprobs_mode: "processed_logprobs".into(),
        ..RuntimeConfig::default()
    });
    let answer = timeout(BOUND, poll).await.unwrap().unwrap().unwrap().into_inner();
    assert_eq!(answer.config.unwrap().logprobs_mode, "processed_logprobs");
}
