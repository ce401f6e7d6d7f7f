use std::{sync::Arc, time::Duration};

use ml_client::{HttpMlNodeClient, NodePool};
use testkit::{memory::MemoryPorts, public_tls, Latency, LoopbackMlNode};
use tokio::time::timeout;
use validator_core::{scoring::ValueDecimal, Admission, Config, Engine, Ports};

use crate::{config, node};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_validates_over_http_with_its_slots_as_the_only_bound() {
    let fake = LoopbackMlNode::start().await;
    fake.set_latency(Latency::Fixed(Duration::from_millis(10)));
    // The node takes more than the engine's slots, so the slots are what bounds concurrency.
    let ml_config = config(vec![node("a", &fake, 8)], Duration::from_secs(5));
    let pool = NodePool::new(&ml_config).unwrap();
    let fakes = MemoryPorts::new(Duration::ZERO, 1);
    let ports = Ports {
        ml: Arc::new(HttpMlNodeClient::new(&ml_config, &public_tls()).unwrap()),
        broker: Arc::new(pool.clone()),
        ..fakes.ports()
    };
    let engine = Engine::start(Config { slots: 4, ..Config::default() }, ports).unwrap();

    let ids: Vec<String> = (0..200).map(|i| format!("inf-{i}")).collect();
    for id in &ids {
        fakes.chain.add_inference(id, 10);
    }
    for id in &ids {
        assert_eq!(engine.validate(id.as_str().into()).unwrap(), Admission::Admitted);
    }
    timeout(Duration::from_secs(10), fakes.chain.wait_submitted(200)).await.unwrap();

    let submitted = fakes.chain.submitted();
    assert_eq!(submitted.len(), 200);
    assert!(submitted
        .iter()
        .all(|msg| msg.value_decimal == ValueDecimal { value: 1, exponent: 0 }));
    assert!(submitted.iter().all(|msg| msg.response_hash.len() == 64));
    assert_eq!(fake.requests().len(), 200);
    assert_eq!(fake.peak(), 4);
    assert!(fake.mean_service_time().unwrap() >= Duration::from_millis(10));
    assert_eq!(pool.status()[0].in_use, 0);
    engine.shutdown(Duration::from_secs(1)).await;
}
