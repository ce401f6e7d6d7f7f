use std::{
    panic::{catch_unwind, AssertUnwindSafe},
    time::Duration,
};

use ml_client::{Availability, Config, HealthConfig, HttpMlNodeClient, NodePool};
use testkit::{public_tls, Latency, LoopbackMlNode, Reply};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use validator_core::ports::{
    ml_node::{MlNodeClient, ReplayError, ReplayResponse},
    model_lock::{LockError, NodeHealth},
};

use crate::{config, health_of, node, request, MODEL};

fn adapters(config: &Config) -> (NodePool, HttpMlNodeClient) {
    (NodePool::new(config).unwrap(), HttpMlNodeClient::new(config, &public_tls()).unwrap())
}

/// Leases a node, replays on it and releases the lease as the engine does; returns the node.
async fn call(
    pool: &NodePool,
    client: &HttpMlNodeClient,
) -> (String, Result<ReplayResponse, ReplayError>) {
    let lease = pool.lease(MODEL).unwrap();
    let id = lease.node().id.to_string();
    let answer = client.replay(lease.node(), &request()).await;
    lease.release(health_of(&answer));
    (id, answer)
}

fn in_use(pool: &NodePool) -> usize {
    pool.status().iter().map(|node| node.in_use).sum()
}

#[tokio::test]
async fn a_hung_node_is_abandoned_after_the_timeout_and_the_lease_released() {
    let fake = LoopbackMlNode::start().await;
    fake.script([Reply::Hang]);
    let (pool, client) = adapters(&config(vec![node("a", &fake, 1)], Duration::from_millis(200)));

    let (_, answer) = call(&pool, &client).await;
    assert_eq!(answer, Err(ReplayError::Timeout));
    let status = &pool.status()[0];
    assert_eq!((status.in_use, status.consecutive_failures), (0, 1));
    timeout(Duration::from_secs(1), fake.wait_disconnects(1)).await.unwrap();

    // The one slot is free again: the next replay gets it and succeeds.
    let (_, answer) = call(&pool, &client).await;
    assert!(matches!(answer, Ok(ReplayResponse::Completed(_))), "{answer:?}");
    assert_eq!(pool.status()[0].consecutive_failures, 0);
}

#[tokio::test]
async fn the_node_version_and_segment_are_in_the_path() {
    let fake = LoopbackMlNode::start().await;
    let mut versioned = node("a", &fake, 1);
    versioned.version = "v3.0.8".into();
    versioned.segment = "/api".into();
    let mut unversioned = node("b", &fake, 1);
    unversioned.segment = "/api".into();
    let (pool, client) = adapters(&config(vec![versioned, unversioned], Duration::from_secs(5)));
    for _ in 0..2 {
        let (_, answer) = call(&pool, &client).await;
        assert!(answer.is_ok(), "{answer:?}");
    }
    let paths: Vec<String> = fake.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/v3.0.8/api/v1/chat/completions", "/api/v1/chat/completions"]);
}

#[tokio::test]
async fn a_down_node_is_skipped_and_comes_back_after_its_cooldown() {
    let (a, b) = (LoopbackMlNode::start().await, LoopbackMlNode::start().await);
    let cooldown = Duration::from_millis(300);
    let config = Config {
        health: HealthConfig {
            failure_threshold: 2,
            cooldown_base: cooldown,
            ..HealthConfig::default()
        },
        ..config(vec![node("a", &a, 4), node("b", &b, 4)], Duration::from_secs(5))
    };
    let (pool, client) = adapters(&config);
    a.script([Reply::status(500), Reply::status(503)]);

    // Equally idle nodes take turns: a fails, b answers, a fails again and goes down.
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(call(&pool, &client).await.0);
    }
    assert_eq!(ids, ["a", "b", "a"]);
    let status = &pool.status()[0];
    assert_eq!(status.availability, Availability::Down);
    assert_eq!(status.consecutive_failures, 2);

    for _ in 0..4 {
        let (id, answer) = call(&pool, &client).await;
        assert_eq!(id, "b", "a down node takes no lease");
        assert!(answer.is_ok());
    }
    assert_eq!(a.requests().len(), 2);

    // The cool-down is the subject: the clock is paused and moved past it, then released for
    // the real sockets.
    let left = pool.status()[0].down_remaining_ms.unwrap();
    assert!(left <= 300);
    tokio::time::pause();
    tokio::time::advance(Duration::from_millis(left + 1)).await;
    tokio::time::resume();
    assert_eq!(pool.status()[0].availability, Availability::HalfOpen);
    let (id, answer) = call(&pool, &client).await;
    assert_eq!(id, "a");
    assert!(answer.is_ok(), "{answer:?}");
    let status = &pool.status()[0];
    assert_eq!((status.availability, status.consecutive_failures), (Availability::Up, 0));
}

#[tokio::test]
async fn the_probe_brings_a_node_back_and_takes_a_failing_one_down() {
    let (a, b) = (LoopbackMlNode::start().await, LoopbackMlNode::start().await);
    let config = Config {
        health: HealthConfig {
            failure_threshold: 2,
            cooldown_base: Duration::from_secs(60),
            probe_path: Some(testkit::ml_node::HEALTH_PATH.into()),
            probe_interval: Duration::from_millis(20),
            probe_timeout: Duration::from_millis(500),
            ..HealthConfig::default()
        },
        ..config(vec![node("a", &a, 1), node("b", &b, 1)], Duration::from_secs(5))
    };
    let (pool, client) = adapters(&config);
    // Take `a` down through failed leases; `b`'s leases tell nothing.
    for _ in 0..2 {
        let (first, second) = (pool.lease(MODEL).unwrap(), pool.lease(MODEL).unwrap());
        assert_eq!((&*first.node().id, &*second.node().id), ("a", "b"));
        first.release(NodeHealth::Failed);
        drop(second);
    }
    assert_eq!(pool.status()[0].availability, Availability::Down);
    b.set_healthy(false);

    let cancel = CancellationToken::new();
    let probe = pool.spawn_probe(&client, cancel.clone()).unwrap();
    // A round is recorded before the next starts: b's third check means two rounds are in.
    b.wait_health_checks(3).await;
    let availability: Vec<Availability> =
        pool.status().iter().map(|node| node.availability).collect();
    assert_eq!(availability, [Availability::Up, Availability::Down]);
    assert!(a.health_checks() >= 2);
    assert!(a.requests().is_empty() && b.requests().is_empty(), "probes are not replays");

    cancel.cancel();
    timeout(Duration::from_secs(1), probe).await.unwrap().unwrap();
    let unprobed = NodePool::new(&Config::default()).unwrap();
    assert!(unprobed.spawn_probe(&client, CancellationToken::new()).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_busy_selection_holds_under_concurrent_leases() {
    let (a, b) = (LoopbackMlNode::start().await, LoopbackMlNode::start().await);
    for fake in [&a, &b] {
        fake.set_latency(Latency::Fixed(Duration::from_millis(300)));
    }
    let (pool, client) =
        adapters(&config(vec![node("a", &a, 4), node("b", &b, 4)], Duration::from_secs(5)));
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (pool, client) = (pool.clone(), client.clone());
            tokio::spawn(async move { call(&pool, &client).await })
        })
        .collect();
    a.wait_in_flight(4).await;
    b.wait_in_flight(4).await;
    assert_eq!(pool.lease(MODEL).unwrap_err(), LockError::NoNode { model: MODEL.into() });
    for task in tasks {
        let (_, answer) = task.await.unwrap();
        assert!(answer.is_ok(), "{answer:?}");
    }
    assert_eq!((a.peak(), b.peak()), (4, 4));
    assert_eq!(in_use(&pool), 0);
}

#[tokio::test]
async fn two_nodes_serving_one_model_share_sequential_load() {
    let (a, b) = (LoopbackMlNode::start().await, LoopbackMlNode::start().await);
    let (pool, client) =
        adapters(&config(vec![node("a", &a, 4), node("b", &b, 4)], Duration::from_secs(5)));
    for _ in 0..10 {
        assert!(call(&pool, &client).await.1.is_ok());
    }
    assert_eq!((a.requests().len(), b.requests().len()), (5, 5));
}

#[tokio::test]
async fn leases_are_released_on_every_path() {
    let fake = LoopbackMlNode::start().await;
    // One slot, and failures never take the node down: a leaked lease shows as "no node".
    let config = Config {
        health: HealthConfig { failure_threshold: u32::MAX, ..HealthConfig::default() },
        ..config(vec![node("a", &fake, 1)], Duration::from_millis(200))
    };
    let (pool, client) = adapters(&config);
    let released = |path: &str| {
        assert_eq!(in_use(&pool), 0, "{path}");
        drop(pool.lease(MODEL).unwrap_or_else(|err| panic!("{path}: {err}")));
    };

    let replies = [
        ("success", Reply::Echo),
        ("rejected", Reply::status(422)),
        ("server error", Reply::status(500)),
        ("bad response", Reply::Malformed),
        ("reset", Reply::Reset),
        ("timeout", Reply::Hang),
    ];
    for (path, reply) in replies {
        fake.script([reply]);
        let _answer = call(&pool, &client).await;
        released(path);
    }

    drop(pool.lease(MODEL).unwrap());
    released("dropped unused");

    // The replay future dropped mid-flight, lease and all, as on shutdown.
    fake.script([Reply::Hang]);
    let seen = fake.requests().len();
    let task = tokio::spawn({
        let (pool, client) = (pool.clone(), client.clone());
        async move { call(&pool, &client).await }
    });
    fake.wait_requests(seen + 1).await;
    assert_eq!(in_use(&pool), 1);
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    released("aborted");

    let panicked = catch_unwind(AssertUnwindSafe(|| {
        let _lease = pool.lease(MODEL).unwrap();
        panic!("caller bug");
    }));
    assert!(panicked.is_err());
    released("panic in the caller");

    let task = tokio::spawn({
        let (pool, client) = (pool.clone(), client.clone());
        async move {
            let lease = pool.lease(MODEL).unwrap();
            let _answer = client.replay(lease.node(), &crate::request()).await;
            panic!("caller bug while holding {lease:?}");
        }
    });
    assert!(task.await.unwrap_err().is_panic());
    released("panic in a task holding the lease");
}
