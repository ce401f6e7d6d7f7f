//! `ChainNodeClient` (queries, seed, submission) against `testkit::LoopbackChainNode` over loopback.

use std::{sync::Arc, time::Duration};

use base64::Engine as _;
use chain_source::{
    client::ClaimAnswer,
    config::QueryConfig,
    query::QueryClient,
    rpc::RpcClient,
    seed_for_epoch,
    tx::{self, Broadcast, Inclusion},
    ChainNodeClient, Config, Error, ExecutorDirectory, Signer, SigningKeys,
};
use futures_util::future::join_all;
use testkit::{
    memory::{MemoryPorts, EXECUTOR},
    public_tls, LoopbackChainNode, SubmittedMsg,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
    time::timeout,
};
use validator_core::{
    ports::chain::{ChainClient as _, ChainError, EpochGroup, MsgValidation, SubmitError},
    scoring::ValueDecimal,
    Engine, Outcome, Ports,
};

const BOUND: Duration = Duration::from_secs(10);
const VALIDATION: &str = "/inference.inference.MsgValidation";
const CLAIM: &str = "/inference.inference.MsgClaimRewards";

fn config(node: &LoopbackChainNode) -> Config {
    let mut config = Config::default();
    config.events.rpc_url = node.url();
    config.tx.chain_id = testkit::chain_node::CHAIN_ID.into();
    config.tx.address_prefix = testkit::chain_node::ADDRESS_PREFIX.into();
    config.tx.timeout = BOUND;
    config
}

fn account_key() -> Signer {
    Signer::from_bytes(&[0x31; 32]).unwrap()
}

/// A node with the validator's account, and a client signing with the account key.
async fn setup() -> (LoopbackChainNode, ChainNodeClient, String) {
    let node = LoopbackChainNode::start().await;
    let address = node.add_key(&account_key().public_key());
    let client =
        ChainNodeClient::new(&config(&node), &public_tls(), address.clone(), account_key())
            .unwrap();
    (node, client, address)
}

fn validation(id: &str, inference: &str) -> MsgValidation {
    MsgValidation {
        id: id.into(),
        inference_id: inference.into(),
        response_hash: format!("hash-of-{inference}"),
        value_decimal: ValueDecimal { value: 9987, exponent: -4 },
        revalidation: false,
    }
}

#[tokio::test]
async fn queries_read_the_module_routes() {
    let (node, client, address) = setup().await;
    node.add_inference("b", 4, EXECUTOR);
    node.add_inference("a/+=", 4, EXECUTOR);
    node.add_inference("c", 5, EXECUTOR);

    let inference = client.inference(&"a/+=".into()).await.unwrap();
    assert_eq!((inference.epoch_id, inference.executed_by.as_str()), (4, EXECUTOR));
    assert_eq!(client.inference(&"zz".into()).await, Err(ChainError::NotFound));

    let first = client.inferences_page(None, 2).await.unwrap();
    let ids: Vec<_> = first.inferences.iter().map(|i| i.inference_id.to_string()).collect();
    assert_eq!(ids, ["a/+=", "b"]);
    let second = client.inferences_page(first.next_key, 2).await.unwrap();
    assert_eq!(second.inferences.len(), 1);
    assert_eq!(second.next_key, None);

    let params =
        client.validation_parameters(&["a/+=".into(), "c".into(), "nope".into()]).await.unwrap();
    assert_eq!(params.details.len(), 2);
    assert_eq!(params.details[0].total_power, 2);
    assert_eq!(params.params, Default::default());
    assert_eq!(params.validator_powers.len(), 2);

    assert_eq!(client.validated_inferences(4).await, Err(ChainError::NotFound));
    node.set_validated(&address, 4, &["b"]);
    assert_eq!(client.validated_inferences(4).await.unwrap(), vec!["b".into()]);

    let group = EpochGroup {
        epoch_index: 1,
        model: String::new(),
        sub_group_models: vec!["m".into()],
        validation_weights: vec![address.clone()],
        has_model_snapshot: false,
        validation_threshold: None,
    };
    node.set_epoch_group(group.clone());
    let sub = EpochGroup {
        model: "m".into(),
        has_model_snapshot: true,
        validation_threshold: Some(rust_decimal::Decimal::new(935, 3)),
        ..group.clone()
    };
    node.set_epoch_group(sub.clone());
    assert_eq!(client.epoch_group(1, "").await.unwrap(), group);
    assert_eq!(client.epoch_group(1, "m").await.unwrap(), sub);
    assert_eq!(client.current_epoch_group().await.unwrap(), group);
    assert_eq!(client.epoch_state().await.unwrap().latest_epoch, 1);
    assert_eq!(client.validation_params().await.unwrap().logprobs_mode, "");
    node.set_logprobs_mode("raw_logprobs");
    assert_eq!(client.validation_params().await.unwrap().logprobs_mode, "raw_logprobs");
    assert!(!client.node_status().await.unwrap().catching_up);
}

/// An executor account with a grantee for `MsgStartInference`: both keys and the executor's
/// address.
fn executor_with_grantee(node: &LoopbackChainNode) -> (Signer, Signer, String) {
    let executor = Signer::from_bytes(&[0x41; 32]).unwrap();
    let grantee = Signer::from_bytes(&[0x42; 32]).unwrap();
    let executor_address = node.add_key(&executor.public_key());
    let grantee_address = node.add_key(&grantee.public_key());
    node.grant(
        &executor_address,
        &grantee_address,
        chain_source::directory::START_INFERENCE_MSG_TYPE,
    );
    (executor, grantee, executor_address)
}

#[tokio::test]
async fn the_directory_lists_the_executor_and_its_grantees() {
    let (node, client, _) = setup().await;
    let (executor, grantee, executor_address) = executor_with_grantee(&node);
    node.set_participant(&executor_address, "http://executor:8080/");

    assert_eq!(client.inference_url(&executor_address).await.unwrap(), "http://executor:8080/");
    assert!(matches!(client.inference_url("gonka1nobody").await, Err(Error::NotFound(_))));
    let keys = client.signing_keys(&executor_address).await.unwrap();
    assert_eq!(keys, SigningKeys::complete(vec![executor.public_key(), grantee.public_key()]));
    assert!(matches!(client.signing_keys("gonka1nobody").await, Err(Error::NotFound(_))));
}

/// The account key and the grantee keys are looked up independently: one failed lookup leaves
/// the other's keys, marked incomplete; only both failing is an error.
#[tokio::test]
async fn one_failed_key_lookup_leaves_the_other_keys() {
    let (node, client, _) = setup().await;
    let (executor, grantee, executor_address) = executor_with_grantee(&node);

    node.fail_query("GranteesByMessageType", 6);
    let keys = client.signing_keys(&executor_address).await.unwrap();
    assert_eq!(keys.keys, vec![executor.public_key()]);
    assert!(keys.incomplete.as_deref().is_some_and(|why| why.contains("grantee keys")), "{keys:?}");

    node.restore_query("GranteesByMessageType");
    node.fail_query("AccountByAddress", 1);
    let keys = client.signing_keys(&executor_address).await.unwrap();
    assert_eq!(keys.keys, vec![grantee.public_key()]);
    assert!(keys.incomplete.as_deref().is_some_and(|why| why.contains("account key")), "{keys:?}");

    node.fail_query("GranteesByMessageType", 6);
    let result = client.signing_keys(&executor_address).await;
    assert!(result.is_err(), "{result:?}");
}

#[tokio::test]
async fn a_submitted_validation_decodes_to_the_exact_fields() {
    let (node, client, address) = setup().await;
    node.add_inference("inf-1", 3, EXECUTOR);
    let receipt = client.submit_validation(&validation("uuid-1", "inf-1")).await.unwrap();

    let submitted = node.submitted();
    assert_eq!(submitted.len(), 1);
    assert_eq!(submitted[0].signer, address);
    assert!(!submitted[0].via_exec);
    assert_eq!(submitted[0].sequence, 0);
    assert_eq!(receipt.tx_hash.as_deref(), Some(submitted[0].tx_hash.as_str()));
    assert_eq!(
        submitted[0].msg,
        SubmittedMsg::Validation {
            creator: address.clone(),
            id: "uuid-1".into(),
            inference_id: "inf-1".into(),
            response_payload: String::new(),
            response_hash: "hash-of-inf-1".into(),
            value: 0.0,
            revalidation: false,
            value_decimal: Some((9987, -4)),
        }
    );
    assert_eq!(node.sequence(&address), Some(1));

    client.claim_rewards(-77, 3, 0).await.unwrap();
    let claim = &node.submitted()[1];
    assert_eq!(
        claim.msg,
        SubmittedMsg::ClaimRewards { creator: address, seed: -77, epoch_index: 3 }
    );
    assert_eq!(claim.sequence, 1);
}

#[tokio::test]
async fn the_settle_amount_is_read_and_a_claim_of_its_epoch_clears_it() {
    let (node, client, address) = setup().await;
    assert!(matches!(client.query().settle_amount(&address).await, Err(Error::NotFound(_))));

    node.set_epoch(7, 0, Default::default());
    node.set_settle_amount(&address, 6, 1_500, 20);
    let settled = client.query().settle_amount(&address).await.unwrap();
    assert_eq!((settled.participant.as_str(), settled.epoch_index), (address.as_str(), 6));
    assert_eq!((settled.reward_coins, settled.work_coins, settled.total()), (1_500, 20, 1_520));
    assert!(settled.has_coins());

    let answer = client.claim_rewards(11, 5, settled.total()).await.unwrap();
    assert!(
        matches!(&answer, ClaimAnswer::Refused { result, .. } if result.contains("previous epoch")),
        "{answer:?}"
    );
    assert!(client.query().settle_amount(&address).await.is_ok(), "another epoch's claim");
    let answer = client.claim_rewards(11, 6, settled.total()).await.unwrap();
    assert!(matches!(answer, ClaimAnswer::Paid { amount: 1_520, .. }), "{answer:?}");
    assert!(matches!(client.query().settle_amount(&address).await, Err(Error::NotFound(_))));
}

/// A claim within 30 blocks of another attempt lands with code 0 and says "Claim rate
/// limited" only in its response: read as refused, and paid once the 30 blocks have passed.
/// A response paying more than was settled is refused as malformed.
#[tokio::test]
async fn claim_responses_are_read_from_the_block() {
    let (node, client, address) = setup().await;
    node.set_epoch(7, 100, Default::default());
    node.advance(500);
    node.set_settle_amount(&address, 6, 1_000, 0);
    node.set_last_claim_attempt(&address, node.tip() - 5);
    let answer = client.claim_rewards(1, 6, 1_000).await.unwrap();
    let ClaimAnswer::Refused { result, height, tx_hash } = &answer else { panic!("{answer:?}") };
    assert_eq!(result, "Claim rate limited");
    assert_eq!(*height, node.tip());
    assert_eq!(tx_hash, &node.submitted()[0].tx_hash);
    node.advance(30);
    let answer = client.claim_rewards(1, 6, 1_000).await.unwrap();
    assert!(matches!(answer, ClaimAnswer::Paid { amount: 1_000, .. }), "{answer:?}");

    node.set_settle_amount(&address, 6, 1_000, 0);
    node.advance(30);
    let absurd = client.claim_rewards(1, 6, 10).await.unwrap();
    assert!(
        matches!(&absurd, ClaimAnswer::Malformed { reason, .. } if reason.contains("more than")),
        "{absurd:?}"
    );
}

/// A transaction no lookup finds is `NotIncluded` once the inclusion deadline passes, after one
/// second broadcast (which the node answers as already in its cache).
#[tokio::test]
async fn a_transaction_never_found_is_not_included() {
    let node = LoopbackChainNode::start().await;
    let address = node.add_key(&account_key().public_key());
    let mut config = config(&node);
    config.tx.inclusion_timeout = Duration::from_millis(300);
    config.tx.poll_interval = Duration::from_millis(50);
    let client =
        ChainNodeClient::new(&config, &public_tls(), address.clone(), account_key()).unwrap();
    node.hide_transactions(true);
    let answer = client.claim_rewards(1, 0, 0).await.unwrap();
    assert!(matches!(&answer, ClaimAnswer::NotIncluded { last_error: None, .. }), "{answer:?}");
    assert_eq!(node.submitted().len(), 1, "the second broadcast is the same transaction");
    assert_eq!(node.repeated_broadcasts(), 1, "broadcast once more, halfway");
    node.hide_transactions(false);
    assert!(matches!(client.claim_rewards(1, 0, 0).await, Ok(ClaimAnswer::Refused { .. })));
}

/// With classic validation retired, a validation passes `CheckTx` and fails in its block with
/// 1161: the client marks the protocol retired, and refuses the next validation without a
/// broadcast.
#[tokio::test]
async fn a_validation_landing_with_1161_retires_the_classic_protocol() {
    let (node, client, _) = setup().await;
    node.add_inference("inf-1", 3, EXECUTOR);
    node.add_inference("inf-2", 3, EXECUTOR);
    node.retire_classic();
    let mut retired = client.retired();
    client.submit_validation(&validation("uuid-1", "inf-1")).await.unwrap();
    timeout(BOUND, retired.wait_for(Option::is_some)).await.unwrap().unwrap();
    assert!(retired.borrow().as_deref().is_some_and(|why| why.contains("1161")));
    assert_eq!(node.deprecated_rejections(), 1);
    let refused = client.submit_validation(&validation("uuid-2", "inf-2")).await;
    assert!(matches!(refused, Err(SubmitError::Retired(_))), "{refused:?}");
    assert_eq!(node.deprecated_rejections(), 1, "nothing more was broadcast");
    assert!(node.submitted().is_empty());
}

/// Upstream inference ids are base64 signatures with `/`, `+` and `=`: they travel as protobuf
/// fields, so every query finds them as they are.
#[tokio::test]
async fn real_shaped_ids_survive_every_query() {
    let (node, client, address) = setup().await;
    let ids = ["ab/cd+ef==", "//x+/y=", "Zm9v/YmFy+Kw=="];
    for id in ids {
        node.add_inference(id, 3, EXECUTOR);
    }
    node.set_validated(&address, 3, &[ids[1]]);
    for id in ids {
        let inference = client.inference(&id.into()).await.unwrap();
        assert_eq!(inference.inference_id.as_str(), id);
    }
    let ids_wanted: Vec<_> = ids.iter().map(|id| (*id).into()).collect();
    let params = client.validation_parameters(&ids_wanted).await.unwrap();
    assert_eq!(params.details.len(), 3);
    let page = client.inferences_page(None, 2).await.unwrap();
    let next = client.inferences_page(page.next_key.clone(), 2).await.unwrap();
    let mut listed: Vec<String> = page
        .inferences
        .iter()
        .chain(&next.inferences)
        .map(|summary| summary.inference_id.to_string())
        .collect();
    listed.sort();
    let mut expected: Vec<String> = ids.iter().map(|id| (*id).to_owned()).collect();
    expected.sort();
    assert_eq!(listed, expected);
    assert_eq!(next.next_key, None);
    assert_eq!(client.validated_inferences(3).await.unwrap(), vec![ids[1].into()]);
}

#[tokio::test]
async fn ten_concurrent_submissions_land_with_consecutive_sequences() {
    let (node, client, address) = setup().await;
    let ids: Vec<String> = (0..10).map(|i| format!("inf-{i}")).collect();
    for id in &ids {
        node.add_inference(id, 3, EXECUTOR);
    }
    let submissions = ids.iter().enumerate().map(|(i, id)| {
        let client = client.clone();
        let msg = validation(&format!("uuid-{i}"), id);
        tokio::spawn(async move { client.submit_validation(&msg).await })
    });
    for result in timeout(BOUND, join_all(submissions)).await.unwrap() {
        result.unwrap().unwrap();
    }
    let mut sequences: Vec<u64> = node.submitted().iter().map(|s| s.sequence).collect();
    sequences.sort_unstable();
    assert_eq!(sequences, (0..10).collect::<Vec<_>>());
    assert_eq!(node.sequence(&address), Some(10));
}

#[tokio::test]
async fn a_second_validation_is_the_typed_duplicate() {
    let (node, client, address) = setup().await;
    node.add_inference("inf-1", 3, EXECUTOR);
    client.submit_validation(&validation("uuid-1", "inf-1")).await.unwrap();
    let again = client.submit_validation(&validation("uuid-2", "inf-1")).await;
    assert_eq!(again, Err(SubmitError::Duplicate));
    let revalidation = MsgValidation { revalidation: true, ..validation("uuid-3", "inf-1") };
    client.submit_validation(&revalidation).await.unwrap();
    assert_eq!(node.sequence(&address), Some(2), "the refused transaction used no sequence");
    let missing = client.submit_validation(&validation("uuid-4", "unknown")).await;
    assert!(matches!(missing, Err(SubmitError::Rejected(_))), "{missing:?}");
}

#[tokio::test]
async fn a_sequence_moved_by_another_sender_is_relearned() {
    let (node, first, address) = setup().await;
    let second =
        ChainNodeClient::new(&config(&node), &public_tls(), address.clone(), account_key())
            .unwrap();
    for i in 0..6 {
        node.add_inference(&format!("inf-{i}"), 3, EXECUTOR);
    }
    for i in 0..6 {
        let client = if i % 2 == 0 { &first } else { &second };
        client
            .submit_validation(&validation(&format!("uuid-{i}"), &format!("inf-{i}")))
            .await
            .unwrap();
    }
    assert_eq!(node.sequence(&address), Some(6));
    assert_eq!(node.submitted().len(), 6);
}

#[tokio::test]
async fn a_warm_key_signs_inside_msg_exec() {
    let node = LoopbackChainNode::start().await;
    let account = node.add_key(&account_key().public_key());
    let warm = Signer::from_bytes(&[0x32; 32]).unwrap();
    let warm_address = node.add_key(&warm.public_key());
    node.grant(&account, &warm_address, VALIDATION);
    node.add_inference("inf-1", 3, EXECUTOR);
    node.add_inference("inf-0", 3, EXECUTOR);
    let client =
        ChainNodeClient::new(&config(&node), &public_tls(), account.clone(), warm.clone()).unwrap();
    assert_eq!(client.signer_address(), warm_address);

    // The account is the fee granter: without its feegrant allowance the chain refuses.
    let refused = client.submit_validation(&validation("uuid-0", "inf-0")).await;
    assert!(
        matches!(&refused, Err(SubmitError::Rejected(log)) if log.contains("fee-grant not found")),
        "{refused:?}"
    );
    node.grant_fee_allowance(&account, &warm_address);
    client.submit_validation(&validation("uuid-1", "inf-1")).await.unwrap();
    let submitted = &node.submitted()[0];
    assert!(submitted.via_exec);
    assert_eq!(submitted.signer, warm_address);
    assert_eq!(submitted.msg.creator(), account);
    assert_eq!(submitted.fee_granter.as_deref(), Some(account.as_str()));
    assert_eq!(node.sequence(&warm_address), Some(1));
    assert_eq!(node.sequence(&account), Some(0));

    let refused = client.claim_rewards(5, 3, 0).await;
    assert!(matches!(refused, Err(Error::TxRejected { .. })), "no grant for claims: {refused:?}");
    node.grant(&account, &warm_address, CLAIM);
    node.set_epoch(4, 0, Default::default());
    node.set_settle_amount(&account, 3, 70, 0);
    let answer = client.claim_rewards(5, 3, 70).await.unwrap();
    assert!(matches!(answer, ClaimAnswer::Paid { amount: 70, .. }), "inside MsgExec: {answer:?}");

    assert_eq!(client.seed_for_epoch(3).await.unwrap(), seed_for_epoch(&warm, 3));
}

/// Gas as upstream budgets it per message type (plus the per-transaction overhead), fees at the
/// configured price, no fee granter for the account's own key.
#[tokio::test]
async fn gas_and_fees_follow_the_message_type() {
    let node = LoopbackChainNode::start().await;
    let account = node.add_key(&account_key().public_key());
    node.add_inference("inf-1", 3, EXECUTOR);
    node.add_inference("inf-2", 3, EXECUTOR);
    let client =
        ChainNodeClient::new(&config(&node), &public_tls(), account.clone(), account_key())
            .unwrap();
    client.submit_validation(&validation("uuid-1", "inf-1")).await.unwrap();
    client.claim_rewards(5, 3, 0).await.unwrap();
    let submitted = node.submitted();
    assert_eq!(submitted[0].gas_limit, 1_550_000);
    assert_eq!(submitted[1].gas_limit, 750_000);
    assert!(submitted.iter().all(|tx| tx.fee_ngonka == 0 && tx.fee_granter.is_none()));

    let mut priced = config(&node);
    priced.tx.gas.price_ngonka = 2;
    priced.tx.gas.validation = 1_000_000;
    let client =
        ChainNodeClient::new(&priced, &public_tls(), account.clone(), account_key()).unwrap();
    client.submit_validation(&validation("uuid-2", "inf-2")).await.unwrap();
    let last = node.submitted().pop().unwrap();
    assert_eq!((last.gas_limit, last.fee_ngonka), (1_050_000, 2_100_000));

    let mut absurd = config(&node);
    absurd.tx.gas.validation = 2_000_000_000;
    let refused = ChainNodeClient::new(&absurd, &public_tls(), account, account_key());
    assert!(matches!(refused, Err(Error::InvalidConfig { .. })), "{refused:?}");
}

/// A golden seed: a regression value for a fixed key, computed by this implementation (upstream
/// publishes none); the structure is checked in the unit test.
#[test]
fn the_seed_of_a_fixed_key_is_stable() {
    let signer = Signer::from_bytes(&[0x31; 32]).unwrap();
    assert_eq!(seed_for_epoch(&signer, 1), GOLDEN_SEED_EPOCH_1);
}

const GOLDEN_SEED_EPOCH_1: i64 = 4_461_648_686_860_941_798;

/// Serves one HTTP answer with `status` and `body` to every connection.
async fn serve_raw(status: u16, body: String) -> String {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request).await;
            let answer = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(answer.as_bytes()).await;
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn oversized_and_malformed_answers_are_typed_errors() {
    let node = LoopbackChainNode::start().await;
    node.add_inference("inf-1", 3, EXECUTOR);
    let query_at = |url: &str, cap: u64| {
        let rpc = Arc::new(RpcClient::new(url, &public_tls(), BOUND, cap).unwrap());
        (QueryClient::new(&QueryConfig::default(), Arc::clone(&rpc)), rpc)
    };
    let (query, _) = query_at(&node.url(), 32);
    assert_eq!(query.inference(&"inf-1".into()).await, Err(Error::TooLarge { limit: 32 }));

    let answer = |response: serde_json::Value| {
        serde_json::json!({"jsonrpc": "2.0", "id": 1, "result": {"response": response}}).to_string()
    };
    // Field 1 (the inference) holding id "x" and field 11 (status) = 9, which no status has.
    let bogus_status =
        base64::engine::general_purpose::STANDARD.encode([0x0a, 5, 0x12, 1, b'x', 0x58, 9]);
    for body in [
        "not json".to_owned(),
        answer(serde_json::json!({"code": 0, "value": "!!", "height": "5"})),
        answer(serde_json::json!({"code": 0, "value": "/////w==", "height": "5"})),
        answer(serde_json::json!({"code": 0, "value": bogus_status, "height": "5"})),
        answer(serde_json::json!({"code": 0, "value": null, "height": "5"})),
        serde_json::json!({"jsonrpc": "2.0", "id": 1, "result": {"unexpected": true}}).to_string(),
    ] {
        let url = serve_raw(200, body.clone()).await;
        let (query, _) = query_at(&url, 1 << 20);
        let err = query.inference(&"x".into()).await.unwrap_err();
        assert!(matches!(err, Error::Decode(_)), "{body}: {err:?}");
    }
    let url =
        serve_raw(200, answer(serde_json::json!({"code": 18, "codespace": "sdk", "log": "bad"})))
            .await;
    let (query, _) = query_at(&url, 1 << 20);
    let err = query.inference(&"x".into()).await.unwrap_err();
    assert!(matches!(err, Error::Query { code: 18, .. }), "{err:?}");

    // The node says its tip is 10; an answer read at height 10,000 is from the future.
    let status = serde_json::json!({"jsonrpc": "2.0", "id": 1, "result": {
        "sync_info": {"latest_block_height": "10", "earliest_block_height": "1"},
        "response": {"code": 0, "value": null, "height": "10000"}}});
    let url = serve_raw(200, status.to_string()).await;
    let (query, rpc) = query_at(&url, 1 << 20);
    rpc.status().await.unwrap();
    let err = query.epoch_info().await.unwrap_err();
    assert!(
        matches!(&err, Error::Decode(why) if why.contains("past the node's latest")),
        "{err:?}"
    );

    let url = serve_raw(503, "overloaded".to_owned()).await;
    let (query, _) = query_at(&url, 1 << 20);
    assert!(matches!(query.inference(&"x".into()).await, Err(Error::Status { status: 503, .. })));
}

/// A node that accepts connections and never answers; its URL.
async fn silent_node() -> String {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    url
}

#[tokio::test]
async fn a_silent_node_times_out() {
    let url = silent_node().await;
    let config = QueryConfig { timeout: Duration::from_millis(200), ..QueryConfig::default() };
    let query = QueryClient::new(
        &config,
        Arc::new(RpcClient::new(&url, &public_tls(), BOUND, 1 << 20).unwrap()),
    );
    assert!(matches!(query.inference(&"x".into()).await, Err(Error::Timeout(_))));
}

#[tokio::test]
async fn the_engine_submits_through_the_chain_client() {
    let (node, client, address) = setup().await;
    for id in ["e-1", "e-2", "e-3"] {
        node.add_inference(id, 3, EXECUTOR);
    }
    let fakes = MemoryPorts::new(Duration::from_millis(1), 3);
    let ports = Ports { chain: Arc::new(client), ..fakes.ports() };
    let engine = Engine::start(validator_core::Config::default(), ports).unwrap();
    let mut outcomes = engine.outcomes();
    for id in ["e-1", "e-2", "e-3"] {
        engine.validate(id.into()).unwrap();
    }
    let mut submitted = Vec::new();
    while submitted.len() < 3 {
        let Ok(event) = timeout(BOUND, outcomes.recv()).await else {
            panic!("{:#?}", engine.status());
        };
        let event = event.unwrap();
        match event.outcome {
            Outcome::Submitted { value, msg_id, tx_hash, .. } => {
                submitted.push((event.inference_id.to_string(), value, msg_id, tx_hash));
            }
            other => panic!("{}: {other:?}", event.inference_id),
        }
    }
    let on_chain = node.submitted();
    assert_eq!(on_chain.len(), 3);
    for (inference, value, msg_id, tx_hash) in submitted {
        let landed = on_chain
            .iter()
            .find(|s| matches!(&s.msg, SubmittedMsg::Validation { inference_id, .. } if *inference_id == inference))
            .unwrap();
        assert_eq!(Some(landed.tx_hash.clone()), tx_hash);
        let SubmittedMsg::Validation {
            creator,
            id,
            value_decimal,
            revalidation,
            response_payload,
            response_hash,
            ..
        } = &landed.msg
        else {
            unreachable!()
        };
        assert_eq!(creator, &address);
        assert_eq!(id, &msg_id);
        assert!(!revalidation);
        assert!(response_payload.is_empty());
        assert_eq!(response_hash.len(), 64, "sha256 hex of the replay answer");
        let decimal = validator_core::scoring::value_decimal(value);
        assert_eq!(*value_decimal, Some((decimal.value, decimal.exponent)));
    }
    let _ = engine.shutdown(Duration::from_secs(1)).await;
}

/// `tx` answers about another hash, malformed, or never coming: each lookup a typed error, and
/// the transaction ends `NotIncluded` with the last reason once its deadline passes.
#[tokio::test]
async fn bad_tx_answers_end_not_included_with_the_reason() {
    let other = serde_json::json!({"jsonrpc": "2.0", "id": 1, "result": {
        "hash": "FFFF", "height": "3", "tx_result": {"code": 0}}});
    let cases = [
        (serve_raw(200, other.to_string()).await, "FFFF"),
        (serve_raw(200, "{not json".to_owned()).await, "not JSON"),
        (silent_node().await, "timed out"),
    ];
    let broadcast = Broadcast { hash: "ABCD".into(), tx: vec![1, 2, 3] };
    for (url, reason) in cases {
        let rpc = RpcClient::new(&url, &public_tls(), Duration::from_millis(50), 1 << 20).unwrap();
        let inclusion =
            tx::observe(&rpc, &broadcast, Duration::from_millis(300), Duration::from_millis(20))
                .await;
        assert!(
            matches!(&inclusion, Inclusion::NotIncluded { last_error: Some(why) } if why.contains(reason)),
            "{reason}: {inclusion:?}"
        );
    }
}

/// The chain records no revalidation: one another process may have sent is found by reading
/// the last blocks' transactions for its message id, signed by this account.
#[tokio::test]
async fn a_sent_revalidation_is_found_in_the_recent_blocks() {
    let (node, client, _) = setup().await;
    node.add_inference("inf-1", 3, EXECUTOR);
    let sent = MsgValidation { revalidation: true, ..validation("uuid-r", "inf-1") };
    client.submit_validation(&sent).await.unwrap();
    node.advance(3);
    assert_eq!(client.validation_recorded(&sent, 3).await, Ok(Some(true)));
    let unsent = MsgValidation { revalidation: true, ..validation("uuid-other", "inf-1") };
    assert_eq!(client.validation_recorded(&unsent, 3).await, Ok(Some(false)));
    // Blocks the node no longer keeps leave the question open.
    node.set_earliest(node.tip());
    assert_eq!(client.validation_recorded(&unsent, 3).await, Ok(None));
}
