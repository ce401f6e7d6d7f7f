//! The event source against `testkit::LoopbackChainNode`, and event decoding against fixtures
//! written from CometBFT's documented JSON (0.38 and 0.34 shapes).

use std::{sync::Arc, time::Duration};

use chain_source::{
    config::EventsConfig,
    events::{
        self, decode_attribute, decode_block_results, decode_frame, ChainEvent, EventStream, Frame,
        HeightStore, MemoryHeightStore, MAX_ATTRIBUTE_BYTES,
    },
    Error,
};
use serde_json::{json, Value};
use testkit::{public_tls, LoopbackChainNode, TxEvent};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

const BOUND: Duration = Duration::from_secs(10);

fn fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(path).unwrap()
}

fn result_of(name: &str) -> Value {
    let answer: Value = serde_json::from_str(&fixture(name)).unwrap();
    answer["result"].clone()
}

#[test]
fn new_block_notifications_decode_in_both_versions() {
    assert_eq!(decode_frame(&fixture("new_block_v0_38.json")).unwrap(), Frame::NewBlock(1_284_001));
    assert_eq!(decode_frame(&fixture("new_block_v0_34.json")).unwrap(), Frame::NewBlock(77));
}

#[test]
fn block_results_of_0_38_flatten_per_transaction() {
    let decoded = decode_block_results(1_284_001, &result_of("block_results_v0_38.json")).unwrap();
    let height = 1_284_001;
    assert_eq!(
        decoded.events,
        vec![
            ChainEvent::InferenceFinished {
                ids: vec![
                    "Vq3d8bK1+2nLx0pQ/fA9c7sYwE4uTgHjRk5mZi1Zy0o=".into(),
                    "second-id-in-the-same-tx".into()
                ],
                height,
            },
            ChainEvent::RevalidationNeeded { inference_id: "disputed-1".into(), height },
            ChainEvent::InferenceFinished { ids: vec!["from-end-block".into()], height },
        ],
        "the failed transaction's events are skipped"
    );
    assert!(decoded.rejected.is_empty());
}

#[test]
fn block_results_of_0_34_decode_base64_attributes() {
    let decoded = decode_block_results(77, &result_of("block_results_v0_34.json")).unwrap();
    assert_eq!(
        decoded.events,
        vec![
            ChainEvent::InferenceFinished { ids: vec!["old-style-id".into()], height: 77 },
            ChainEvent::RevalidationNeeded { inference_id: "disputed-old".into(), height: 77 },
        ]
    );
}

#[test]
fn malformed_and_oversized_attributes_are_typed_and_skipped() {
    let decoded = decode_block_results(90, &result_of("block_results_malformed.json")).unwrap();
    assert_eq!(
        decoded.events,
        vec![ChainEvent::InferenceFinished { ids: vec!["the-good-one".into()], height: 90 }]
    );
    assert!(decoded.rejected.len() >= 4, "{:?}", decoded.rejected);
    assert!(
        decoded.rejected.iter().all(|err| matches!(err, Error::Decode(_))),
        "{:?}",
        decoded.rejected
    );

    let huge = json!({"key": "inference_id", "value": "x".repeat(MAX_ATTRIBUTE_BYTES + 1)});
    assert!(matches!(decode_attribute(&huge), Err(Error::TooLarge { .. })));
    assert!(matches!(decode_block_results(90, &json!("txs")), Err(Error::Decode(_))));
    assert!(matches!(decode_frame("{\"result\": "), Err(Error::Decode(_))));
}

pub(crate) fn config(node: &LoopbackChainNode, window: u64) -> EventsConfig {
    EventsConfig {
        rpc_url: node.url(),
        catch_up_window: window,
        rpc_timeout: Duration::from_secs(5),
        reconnect_base: Duration::from_millis(10),
        reconnect_max: Duration::from_millis(50),
        queue_capacity: 4,
        idle_timeout: Duration::from_secs(5),
        ..EventsConfig::default()
    }
}

/// A source following `config`'s node over plain connections, from a fresh height store.
fn spawn_fresh(config: &EventsConfig) -> EventStream {
    let store = Arc::new(MemoryHeightStore::default());
    events::spawn(config, &public_tls(), store, CancellationToken::new()).unwrap()
}

/// Events until (and with) the NewBlock of `height`.
pub(crate) async fn until(stream: &mut EventStream, height: u64) -> Vec<ChainEvent> {
    let mut events = Vec::new();
    loop {
        let event =
            timeout(BOUND, stream.recv()).await.expect("an event in time").expect("source running");
        let done = event == ChainEvent::NewBlock { height };
        events.push(event);
        if done {
            return events;
        }
    }
}

pub(crate) fn finished(events: &[ChainEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|event| match event {
            ChainEvent::InferenceFinished { ids, .. } => Some(ids.iter().map(ToString::to_string)),
            _ => None,
        })
        .flatten()
        .collect()
}

fn block_heights(events: &[ChainEvent]) -> Vec<u64> {
    events
        .iter()
        .filter_map(|event| match event {
            ChainEvent::NewBlock { height } => Some(*height),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn events_arrive_in_order_across_a_dropped_socket_and_a_gap() {
    let node = LoopbackChainNode::start().await;
    let store = Arc::new(MemoryHeightStore::default());
    let cancel = CancellationToken::new();
    let mut stream =
        events::spawn(&config(&node, 500), &public_tls(), store.clone(), cancel.clone()).unwrap();
    node.wait_subscriptions(1).await;

    node.produce_block(vec![vec![TxEvent::inference_finished("a")]]);
    node.produce_block(vec![
        vec![TxEvent::inference_finished("b")],
        vec![TxEvent::inference_finished("b2")],
    ]);
    node.skip_notifications([4, 5]);
    node.produce_block(vec![vec![TxEvent::inference_finished("c")]]);
    node.produce_block(vec![vec![TxEvent::inference_validation("d", "gonka1v", true)]]);
    node.produce_block(vec![vec![TxEvent::inference_finished("e")]]);
    let first = until(&mut stream, 6).await;

    node.drop_websockets();
    node.produce_block(vec![vec![TxEvent::inference_finished("f")]]);
    node.wait_subscriptions(2).await;
    node.produce_block(vec![vec![TxEvent::inference_finished("g")]]);
    let second = until(&mut stream, 8).await;

    let events: Vec<ChainEvent> = first.into_iter().chain(second).collect();
    let heights: Vec<u64> = events.iter().map(ChainEvent::height).collect();
    assert!(heights.windows(2).all(|pair| pair[0] <= pair[1]), "{heights:?}");
    assert_eq!(block_heights(&events), (1..=8).collect::<Vec<_>>());
    assert_eq!(finished(&events), ["a", "b", "b2", "c", "e", "f", "g"]);
    assert!(
        events.contains(&ChainEvent::RevalidationNeeded { inference_id: "d".into(), height: 5 })
    );
    assert_eq!(store.load(), Some(8));

    cancel.cancel();
    assert_eq!(timeout(BOUND, stream.recv()).await.unwrap(), None);
}

#[tokio::test]
async fn a_lag_over_the_window_restarts_at_tip_minus_window() {
    let node = LoopbackChainNode::start().await;
    node.advance(199);
    let store = Arc::new(MemoryHeightStore::new(Some(100)));
    let mut stream =
        events::spawn(&config(&node, 50), &public_tls(), store.clone(), CancellationToken::new())
            .unwrap();
    let events = until(&mut stream, 200).await;
    assert_eq!(block_heights(&events), (150..=200).collect::<Vec<_>>());
    assert_eq!(node.block_results_requests().first(), Some(&150));
    assert_eq!(store.load(), Some(200));
}

#[tokio::test]
async fn a_lag_within_the_window_resumes_after_the_stored_height() {
    let node = LoopbackChainNode::start().await;
    node.advance(199);
    let store = Arc::new(MemoryHeightStore::new(Some(180)));
    let mut stream =
        events::spawn(&config(&node, 50), &public_tls(), store, CancellationToken::new()).unwrap();
    let events = until(&mut stream, 200).await;
    assert_eq!(block_heights(&events), (181..=200).collect::<Vec<_>>());
}

#[tokio::test]
async fn without_a_stored_height_it_starts_at_the_earliest_available_in_the_window() {
    let node = LoopbackChainNode::start().await;
    node.advance(199);
    node.set_earliest(170);
    let mut stream = spawn_fresh(&config(&node, 50));
    let events = until(&mut stream, 200).await;
    assert_eq!(block_heights(&events).first(), Some(&170));
}

#[tokio::test]
async fn a_stalled_node_is_left_and_its_blocks_backfilled() {
    let node = LoopbackChainNode::start().await;
    let mut config = config(&node, 500);
    config.idle_timeout = Duration::from_millis(300);
    let mut stream = spawn_fresh(&config);
    node.wait_subscriptions(1).await;
    until(&mut stream, 1).await;
    node.set_stalled(true);
    node.produce_block(vec![vec![TxEvent::inference_finished("during-stall")]]);
    node.wait_subscriptions(2).await;
    let events = until(&mut stream, 2).await;
    assert_eq!(finished(&events), ["during-stall"]);
}

#[tokio::test]
async fn base64_attributes_of_older_nodes_are_read() {
    let node = LoopbackChainNode::start().await;
    node.set_base64_attributes(true);
    let mut stream = spawn_fresh(&config(&node, 500));
    node.wait_subscriptions(1).await;
    node.produce_block(vec![vec![
        TxEvent::inference_finished("old"),
        TxEvent::inference_validation("v", "x", true),
    ]]);
    let events = until(&mut stream, 2).await;
    assert_eq!(finished(&events), ["old"]);
    assert!(
        events.contains(&ChainEvent::RevalidationNeeded { inference_id: "v".into(), height: 2 })
    );
}

#[tokio::test]
async fn oversized_frames_are_refused_and_their_blocks_backfilled() {
    let node = LoopbackChainNode::start().await;
    let mut config = config(&node, 500);
    // Large enough for `status` and empty `block_results`, too small for a NewBlock frame.
    config.max_message_bytes = 400;
    let mut stream = spawn_fresh(&config);
    node.wait_subscriptions(1).await;
    until(&mut stream, 1).await;
    node.advance(1);
    node.wait_subscriptions(2).await;
    let events = until(&mut stream, 2).await;
    assert_eq!(block_heights(&events), [2]);
}
