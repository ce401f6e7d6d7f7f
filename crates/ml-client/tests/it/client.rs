use std::time::{Duration, Instant};

use bytes::Bytes;
use ml_client::{Config, HttpMlNodeClient};
use testkit::{
    memory::{echo_completion, payloads_for},
    public_tls, Leaf, LoopbackMlNode, Reply, TestCa,
};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use validator_core::{
    ports::{
        ml_node::{MlNodeClient, ReplayError, ReplayResponse},
        model_lock::MlNode,
    },
    scoring,
};

use crate::{config, ml_node, request};

fn client(timeout: Duration) -> HttpMlNodeClient {
    HttpMlNodeClient::new(&config(Vec::new(), timeout), &public_tls()).unwrap()
}

async fn replay_once(fake: &LoopbackMlNode, reply: Reply) -> Result<ReplayResponse, ReplayError> {
    fake.script([reply]);
    client(Duration::from_secs(5)).replay(&ml_node(fake), &request()).await
}

#[tokio::test]
async fn replay_posts_the_enforced_body_and_keeps_the_exact_answer() {
    let fake = LoopbackMlNode::start().await;
    let answer = client(Duration::from_secs(5)).replay(&ml_node(&fake), &request()).await;

    let recorded = fake.requests().pop().unwrap();
    assert_eq!(recorded.method, "POST");
    assert_eq!(recorded.path, "/v1/chat/completions");
    assert_eq!(recorded.content_type.as_deref(), Some("application/json"));
    let body = recorded.body.as_object().unwrap();
    let prompt: serde_json::Value = serde_json::from_slice(&payloads_for("x").prompt).unwrap();
    for (key, value) in prompt.as_object().unwrap() {
        match key.as_str() {
            "stream" => assert_eq!(body["stream"], false),
            "stream_options" => assert!(!body.contains_key("stream_options")),
            _ => assert_eq!(&body[key], value, "prompt field {key}"),
        }
    }
    assert_eq!(body["skip_special_tokens"], false);
    let tokens: Vec<&str> = body["enforced_tokens"]["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["token"].as_str().unwrap())
        .collect();
    assert_eq!(tokens, testkit::memory::TOKENS);
    assert_eq!(
        body["enforced_tokens"]["tokens"][1]["top_tokens"],
        serde_json::json!(["11", "12", "13"])
    );

    let ReplayResponse::Completed(bytes) = answer.unwrap() else { panic!("not completed") };
    assert_eq!(bytes, echo_completion(&recorded.body), "the exact bytes the node sent");
    let score = scoring::compare(&payloads_for("x").response, &bytes).unwrap();
    assert_eq!(score.value, 1.0);
}

#[tokio::test]
async fn an_https_node_is_replayed_on_with_the_ca_and_refused_without_it() {
    let ca = TestCa::new();
    let fake = LoopbackMlNode::start_tls(ca.server(&["127.0.0.1"], Leaf::Valid)).await;
    assert!(fake.url().starts_with("https://"), "{}", fake.url());
    let config = config(Vec::new(), Duration::from_secs(5));

    let trusting = HttpMlNodeClient::new(&config, &ca.client_tls()).unwrap();
    let answer = trusting.replay(&ml_node(&fake), &request()).await.unwrap();
    let ReplayResponse::Completed(bytes) = answer else { panic!("not completed: {answer:?}") };
    assert_eq!(scoring::compare(&payloads_for("x").response, &bytes).unwrap().value, 1.0);

    let untrusting = HttpMlNodeClient::new(&config, &public_tls()).unwrap();
    let refused = untrusting.replay(&ml_node(&fake), &request()).await;
    assert!(
        matches!(&refused, Err(ReplayError::Transport(why)) if why.contains("UnknownIssuer")),
        "{refused:?}"
    );
    assert_eq!(fake.requests().len(), 1, "the refused handshake carried no request");
}

#[tokio::test]
async fn rejections_400_and_422_are_a_pass() {
    let fake = LoopbackMlNode::start().await;
    for status in [400, 422] {
        let answer = replay_once(&fake, Reply::status(status)).await;
        assert_eq!(answer, Ok(ReplayResponse::Rejected { status }));
    }
}

#[tokio::test]
async fn other_error_statuses_are_transport_failures_with_a_short_excerpt() {
    let fake = LoopbackMlNode::start().await;
    let long_body = Bytes::from(format!("upstream exploded {}", "x".repeat(64 * 1024)));
    for status in [500, 503, 404, 401] {
        let answer = replay_once(&fake, Reply::Status(status, long_body.clone())).await;
        let Err(ReplayError::Transport(message)) = answer else { panic!("{answer:?}") };
        assert!(message.contains(&status.to_string()), "{message}");
        assert!(message.contains("upstream exploded"), "{message}");
        assert!(message.len() < 400, "excerpt too long: {} bytes", message.len());
    }
}

#[tokio::test]
async fn a_2xx_body_that_is_not_json_is_a_bad_response() {
    let fake = LoopbackMlNode::start().await;
    for reply in [Reply::Malformed, Reply::Body(Bytes::new())] {
        let answer = replay_once(&fake, reply).await;
        assert!(matches!(answer, Err(ReplayError::BadResponse(_))), "{answer:?}");
    }
}

#[tokio::test]
async fn broken_connections_are_transport_failures() {
    let fake = LoopbackMlNode::start().await;
    for reply in [Reply::Truncated, Reply::Reset] {
        let answer = replay_once(&fake, reply.clone()).await;
        assert!(matches!(answer, Err(ReplayError::Transport(_))), "{reply:?}: {answer:?}");
    }

    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let node = MlNode { id: "gone".into(), address: address.into() };
    let answer = client(Duration::from_secs(5)).replay(&node, &request()).await;
    assert!(matches!(answer, Err(ReplayError::Transport(_))), "{answer:?}");
}

#[tokio::test]
async fn a_hung_node_times_out_and_the_connection_is_dropped() {
    let fake = LoopbackMlNode::start().await;
    fake.script([Reply::Hang]);
    let started = Instant::now();
    let answer = client(Duration::from_millis(200)).replay(&ml_node(&fake), &request()).await;
    assert_eq!(answer, Err(ReplayError::Timeout));
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(200) && elapsed < Duration::from_secs(2),
        "{elapsed:?}"
    );
    timeout(Duration::from_secs(1), fake.wait_disconnects(1)).await.unwrap();
}

#[tokio::test]
async fn a_slow_drip_is_bounded_by_the_same_timeout() {
    let fake = LoopbackMlNode::start().await;
    fake.script([Reply::Drip { chunk: 64, every: Duration::from_millis(50) }]);
    let started = Instant::now();
    let answer = client(Duration::from_millis(200)).replay(&ml_node(&fake), &request()).await;
    assert_eq!(answer, Err(ReplayError::Timeout));
    assert!(started.elapsed() < Duration::from_secs(2));
    timeout(Duration::from_secs(1), fake.wait_disconnects(1)).await.unwrap();

    // The same drip within the timeout is read to the end.
    fake.script([Reply::Drip { chunk: 512, every: Duration::from_millis(10) }]);
    let answer = client(Duration::from_secs(5)).replay(&ml_node(&fake), &request()).await;
    assert!(matches!(answer, Ok(ReplayResponse::Completed(_))), "{answer:?}");
}

#[tokio::test]
async fn dropping_the_replay_aborts_the_request_within_100_ms() {
    let fake = LoopbackMlNode::start().await;
    let client = client(Duration::from_secs(300));

    // As a task the engine aborts.
    fake.script([Reply::Hang]);
    let task = tokio::spawn({
        let client = client.clone();
        let node = ml_node(&fake);
        async move { client.replay(&node, &request()).await }
    });
    fake.wait_requests(1).await;
    task.abort();
    timeout(Duration::from_millis(100), fake.wait_disconnects(1))
        .await
        .expect("the fake saw the client go away within 100 ms");

    // As the engine's race against its cancellation token.
    fake.script([Reply::Hang]);
    let cancel = CancellationToken::new();
    let node = ml_node(&fake);
    let request = request();
    let replay = client.replay(&node, &request);
    let cancelled = async {
        fake.wait_requests(2).await;
        cancel.cancel();
    };
    let (answer, ()) = tokio::join!(
        async {
            tokio::select! {
                () = cancel.cancelled() => None,
                answer = replay => Some(answer),
            }
        },
        cancelled
    );
    assert_eq!(answer, None);
    timeout(Duration::from_millis(100), fake.wait_disconnects(2))
        .await
        .expect("the fake saw the client go away within 100 ms");
}

#[tokio::test]
async fn oversize_bodies_are_refused_without_reading_them_whole() {
    let fake = LoopbackMlNode::start().await;
    let cap = 1024 * 1024;
    let client = HttpMlNodeClient::new(
        &Config { max_response_bytes: cap, ..config(Vec::new(), Duration::from_secs(5)) },
        &public_tls(),
    )
    .unwrap();
    // Far more than loopback socket buffers hold, so finishing would mean reading it all.
    let huge = 1 << 30;
    for (n, content_length) in [(1, true), (2, false)] {
        fake.script([Reply::Oversize { bytes: huge, content_length }]);
        let started = Instant::now();
        let answer = client.replay(&ml_node(&fake), &request()).await;
        let Err(ReplayError::BadResponse(message)) = answer else { panic!("{answer:?}") };
        assert!(message.contains("larger than"), "{message}");
        assert!(started.elapsed() < Duration::from_secs(2));
        timeout(Duration::from_secs(1), fake.wait_disconnects(n))
            .await
            .expect("the fake saw the client stop before the end of the body");
    }
    assert_eq!(fake.mean_service_time(), None, "no oversize body was sent in full");
}

#[tokio::test]
async fn a_body_at_the_cap_is_accepted_and_one_byte_more_is_not() {
    let fake = LoopbackMlNode::start().await;
    let cap = 1024;
    let client = HttpMlNodeClient::new(
        &Config { max_response_bytes: cap, ..config(Vec::new(), Duration::from_secs(5)) },
        &public_tls(),
    )
    .unwrap();
    let json_of_len = |len: usize| Bytes::from(format!("\"{}\"", " ".repeat(len - 2)));
    fake.script([Reply::Body(json_of_len(1024)), Reply::Body(json_of_len(1025))]);
    let answer = client.replay(&ml_node(&fake), &request()).await;
    assert_eq!(answer, Ok(ReplayResponse::Completed(json_of_len(1024))));
    let answer = client.replay(&ml_node(&fake), &request()).await;
    assert!(matches!(answer, Err(ReplayError::BadResponse(_))), "{answer:?}");
}

#[tokio::test]
async fn the_fakes_random_latency_stays_within_its_bounds() {
    let fake = LoopbackMlNode::start().await;
    let (min, max) = (Duration::from_millis(5), Duration::from_millis(25));
    fake.set_latency(testkit::Latency::Uniform { min, max, seed: 7 });
    let client = client(Duration::from_secs(5));
    for _ in 0..5 {
        let started = Instant::now();
        let answer = client.replay(&ml_node(&fake), &request()).await;
        assert!(answer.is_ok(), "{answer:?}");
        assert!(started.elapsed() >= min);
    }
    let mean = fake.mean_service_time().unwrap();
    assert!(mean >= min && mean < max + Duration::from_millis(50), "{mean:?}");
}
