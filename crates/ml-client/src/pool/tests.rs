use std::time::Duration;

use tokio::time::advance;
use validator_core::ports::model_lock::{LockError, ModelLockBroker, NodeHealth};

use super::{Availability, NodePool};
use crate::{Config, HealthConfig, NodeConfig};

fn pool(nodes: Vec<NodeConfig>) -> NodePool {
    let health = HealthConfig {
        failure_threshold: 2,
        cooldown_base: Duration::from_secs(1),
        cooldown_max: Duration::from_secs(4),
        ..HealthConfig::default()
    };
    NodePool::new(&Config { nodes, health, ..Config::default() }).unwrap()
}

fn node(id: &str, models: &[&str], max_concurrent: usize) -> NodeConfig {
    NodeConfig::new(id, &format!("http://{id}.local:5000"), models, max_concurrent)
}

fn leased_ids(pool: &NodePool, model: &str, n: usize) -> (Vec<String>, Vec<super::ModelLease>) {
    let leases: Vec<_> = (0..n).map(|_| pool.lease(model).unwrap()).collect();
    (leases.iter().map(|lease| lease.node().id.to_string()).collect(), leases)
}

fn in_use(pool: &NodePool) -> Vec<usize> {
    pool.status().iter().map(|node| node.in_use).collect()
}

fn availability(pool: &NodePool, index: usize) -> Availability {
    pool.status()[index].availability
}

#[test]
fn leases_go_to_the_least_busy_node_serving_the_model() {
    let pool = pool(vec![node("a", &["m"], 2), node("b", &["m", "n"], 3), node("c", &["n"], 9)]);
    let (ids, mut leases) = leased_ids(&pool, "m", 5);
    assert_eq!(ids, ["a", "b", "a", "b", "b"]);
    assert_eq!(in_use(&pool), [2, 3, 0]);
    assert_eq!(pool.lease("m").unwrap_err(), LockError::NoNode { model: "m".into() });

    // A slot freed on `a` makes it the least busy again.
    let freed = leases.iter().position(|lease| &*lease.node().id == "a").unwrap();
    drop(leases.swap_remove(freed));
    assert_eq!(&*pool.lease("m").unwrap().node().id, "a");

    drop(leases);
    assert_eq!(in_use(&pool), [0, 0, 0]);
}

#[test]
fn equally_busy_nodes_take_turns() {
    let pool = pool(vec![node("a", &["m"], 1), node("b", &["m"], 1)]);
    let ids: Vec<String> = (0..4).map(|_| pool.lease("m").unwrap().node().id.to_string()).collect();
    assert_eq!(ids, ["a", "b", "a", "b"]);
}

#[test]
fn lease_hands_out_the_versioned_base_and_the_configured_id() {
    let mut config = node("a", &["m"], 1);
    config.version = "v3.0.8".into();
    config.segment = "/api".into();
    let pool = pool(vec![config]);
    let lease = pool.lease("m").unwrap();
    assert_eq!(&*lease.node().id, "a");
    assert_eq!(&*lease.node().address, "http://a.local:5000/v3.0.8/api");
}

#[test]
fn serves_names_every_configured_model_and_no_node_is_immediate() {
    let pool = pool(vec![node("a", &["m"], 1), node("b", &["n"], 1)]);
    assert!(pool.serves("m") && pool.serves("n"));
    assert!(!pool.serves("other"));
    assert_eq!(pool.lease("other").unwrap_err(), LockError::NoNode { model: "other".into() });
    assert!(!NodePool::new(&Config::default()).unwrap().serves("m"));
}

#[test]
fn zero_max_concurrent_is_refused() {
    let config = Config { nodes: vec![node("a", &["m"], 0)], ..Config::default() };
    let err = NodePool::new(&config).unwrap_err();
    assert!(err.to_string().contains("nodes[0].max_concurrent"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn consecutive_failures_take_a_node_down_for_a_doubling_capped_cooldown() {
    let pool = pool(vec![node("a", &["m"], 4)]);
    let fail = |pool: &NodePool| pool.lease("m").unwrap().release(NodeHealth::Failed);

    fail(&pool);
    assert_eq!(availability(&pool, 0), Availability::Up);
    fail(&pool);
    let status = &pool.status()[0];
    assert_eq!(status.availability, Availability::Down);
    assert_eq!(status.consecutive_failures, 2);
    assert_eq!(status.down_remaining_ms, Some(1000));
    assert!(status.down_until_unix_ms.is_some());
    assert!(matches!(pool.lease("m"), Err(LockError::NoNode { .. })));

    advance(Duration::from_millis(999)).await;
    assert!(pool.lease("m").is_err());
    advance(Duration::from_millis(1)).await;
    assert_eq!(availability(&pool, 0), Availability::HalfOpen);
    assert_eq!(pool.status()[0].down_remaining_ms, None);

    // Half-open: one trial lease at a time; its failure doubles the cool-down.
    let trial = pool.lease("m").unwrap();
    assert!(pool.lease("m").is_err());
    trial.release(NodeHealth::Failed);
    assert_eq!(pool.status()[0].down_remaining_ms, Some(2000));

    advance(Duration::from_secs(2)).await;
    fail(&pool);
    assert_eq!(pool.status()[0].down_remaining_ms, Some(4000));
    advance(Duration::from_secs(4)).await;
    fail(&pool);
    assert_eq!(pool.status()[0].down_remaining_ms, Some(4000), "capped at cooldown_max");

    // A success brings it fully back, and the next trip starts from the base again.
    advance(Duration::from_secs(4)).await;
    pool.lease("m").unwrap().release(NodeHealth::Healthy);
    let status = &pool.status()[0];
    assert_eq!((status.availability, status.consecutive_failures), (Availability::Up, 0));
    assert_eq!(in_use(&pool), [0]);
    let (_, leases) = leased_ids(&pool, "m", 4);
    assert!(pool.lease("m").is_err(), "all four slots usable again");
    drop(leases);
    fail(&pool);
    fail(&pool);
    assert_eq!(pool.status()[0].down_remaining_ms, Some(1000));
}

#[tokio::test(start_paused = true)]
async fn failures_of_calls_already_running_do_not_extend_the_cooldown() {
    let pool = pool(vec![node("a", &["m"], 4)]);
    let (_, leases) = leased_ids(&pool, "m", 4);
    let mut leases = leases.into_iter();
    leases.next().unwrap().release(NodeHealth::Failed);
    leases.next().unwrap().release(NodeHealth::Failed);
    advance(Duration::from_millis(500)).await;
    leases.next().unwrap().release(NodeHealth::Failed);
    let status = &pool.status()[0];
    assert_eq!(status.consecutive_failures, 3);
    assert_eq!(status.down_remaining_ms, Some(500));
    // A call that succeeds while the node is down shows it answers: it is back at once.
    leases.next().unwrap().release(NodeHealth::Healthy);
    assert_eq!(availability(&pool, 0), Availability::Up);
}

#[tokio::test(start_paused = true)]
async fn unknown_changes_nothing_and_healthy_resets_the_count() {
    let pool = pool(vec![node("a", &["m"], 1), node("b", &["m"], 1)]);
    pool.lease("m").unwrap().release(NodeHealth::Failed);
    drop(pool.lease("m").unwrap());
    pool.lease("m").unwrap().release(NodeHealth::Unknown);
    let failures: Vec<u32> = pool.status().iter().map(|n| n.consecutive_failures).collect();
    assert_eq!(failures, [1, 0]);

    let lease = pool.lease("m").unwrap();
    assert_eq!(&*lease.node().id, "b");
    lease.release(NodeHealth::Failed);
    // `a` again, healthy this time: its count starts over.
    let lease = pool.lease("m").unwrap();
    assert_eq!(&*lease.node().id, "a");
    lease.release(NodeHealth::Healthy);
    let failures: Vec<u32> = pool.status().iter().map(|n| n.consecutive_failures).collect();
    assert_eq!(failures, [0, 1]);
    assert!(pool.status().iter().all(|n| n.availability == Availability::Up));
}

#[tokio::test(start_paused = true)]
async fn a_down_node_is_skipped_while_another_serves_the_model() {
    let pool = pool(vec![node("a", &["m"], 4), node("b", &["m"], 4)]);
    for (id, health) in
        [("a", NodeHealth::Failed), ("b", NodeHealth::Healthy), ("a", NodeHealth::Failed)]
    {
        let lease = pool.lease("m").unwrap();
        assert_eq!(&*lease.node().id, id);
        lease.release(health);
    }
    assert_eq!(availability(&pool, 0), Availability::Down);
    let (ids, leases) = leased_ids(&pool, "m", 4);
    assert_eq!(ids, ["b"; 4]);
    assert!(pool.lease("m").is_err());
    drop(leases);
    advance(Duration::from_secs(1)).await;
    assert_eq!(&*pool.lease("m").unwrap().node().id, "a");
}

#[test]
fn status_serializes_for_the_admin_endpoint() {
    let pool = pool(vec![node("a", &["m", "l"], 2)]);
    let _lease = pool.lease("m").unwrap();
    let json = serde_json::to_value(pool.status()).unwrap();
    assert_eq!(
        json,
        serde_json::json!([{
            "id": "a",
            "url": "http://a.local:5000",
            "address": "http://a.local:5000",
            "models": ["l", "m"],
            "in_use": 1,
            "max_concurrent": 2,
            "availability": "up",
            "consecutive_failures": 0,
            "down_until_unix_ms": null,
            "down_remaining_ms": null,
        }])
    );
}
