//! `HttpPayloadSource` against `testkit::LoopbackExecutor` over loopback HTTP. Tests wait on the
//! fake's signals (requests, disconnects); the only clock waits are the timeouts under test,
//! in real time because real sockets do not mix with paused time.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use chain_source::{
    config::PayloadsConfig,
    payloads::{
        guard::{Guard, GuardedResolver, Lookup},
        hash, wire,
    },
    signer, ExecutorDirectory, HttpPayloadSource, Signer, SigningKeys,
};
use testkit::{
    fixture_payloads,
    memory::{payloads_for, MemoryPorts, EXECUTOR, SELF_ADDRESS},
    public_tls, ExecutorReply, LoopbackExecutor, StaticDirectory,
};
use tokio::time::timeout;
use validator_core::{
    ports::{
        chain::Inference,
        payload_source::{PayloadError, PayloadSource, Payloads},
    },
    Config, Engine, Ports,
};

pub(crate) const EPOCH: u64 = 10;
const BOUND: Duration = Duration::from_secs(5);

pub(crate) fn executor_key() -> Signer {
    Signer::from_bytes(&[0x21; 32]).unwrap()
}

pub(crate) fn grantee_key() -> Signer {
    Signer::from_bytes(&[0x22; 32]).unwrap()
}

/// The validator's warm key, which signs its requests.
pub(crate) fn warm_key() -> Signer {
    Signer::from_bytes(&[0x23; 32]).unwrap()
}

pub(crate) fn loopback_config(timeout: Duration, cap: u64) -> PayloadsConfig {
    PayloadsConfig { timeout, max_response_bytes: cap, allow: vec!["127.0.0.0/8".into()] }
}

struct Setup {
    executor: LoopbackExecutor,
    directory: StaticDirectory,
    source: HttpPayloadSource,
}

async fn setup_with(config: PayloadsConfig) -> Setup {
    let executor = LoopbackExecutor::start(EXECUTOR, executor_key()).await;
    executor.register_requester(SELF_ADDRESS, vec![warm_key().public_key()]);
    let directory = StaticDirectory::new();
    directory.add_executor(&executor, vec![grantee_key().public_key()]);
    let source = HttpPayloadSource::new(
        &config,
        &public_tls(),
        warm_key(),
        SELF_ADDRESS,
        Arc::new(directory.clone()),
    )
    .unwrap();
    Setup { executor, directory, source }
}

async fn setup() -> Setup {
    setup_with(loopback_config(BOUND, 32 * 1024 * 1024)).await
}

impl Setup {
    fn stored(&self, id: &str) -> Inference {
        self.executor.inference(id).unwrap()
    }

    async fn fetch(&self, id: &str) -> Result<Payloads, PayloadError> {
        timeout(BOUND * 2, self.source.fetch(&self.stored(id))).await.unwrap()
    }
}

pub(crate) fn unix_nanos() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as i64
}

#[tokio::test]
async fn valid_payloads_verify_generated_fixture_and_streamed() {
    let s = setup().await;
    s.executor.insert_generated("gen", EPOCH);
    let fixture = fixture_payloads("inference_response.json").unwrap();
    s.executor.insert("fix", EPOCH, fixture.clone());
    let chunk = r#"data: {"choices":[{"delta":{"content":"<ok>"}}]}"#;
    let streamed = Payloads {
        prompt: payloads_for("str").prompt,
        response: serde_json::to_vec(&serde_json::json!({"events": [chunk, "data: [DONE]"]}))
            .unwrap()
            .into(),
    };
    s.executor.insert("str", EPOCH, streamed.clone());

    assert_eq!(s.fetch("gen").await.unwrap(), payloads_for("gen"));
    assert_eq!(s.fetch("fix").await.unwrap(), fixture);
    assert_eq!(s.fetch("str").await.unwrap(), streamed);
    assert!(s.executor.requests().iter().all(|request| request.status == 200));
}

#[tokio::test]
async fn a_flipped_byte_in_either_payload_is_a_hash_mismatch() {
    let s = setup().await;
    s.executor.insert_generated("a", EPOCH);
    s.executor.script("a", [ExecutorReply::FlipPrompt, ExecutorReply::FlipResponse]);
    let prompt = s.fetch("a").await;
    assert!(
        matches!(&prompt, Err(PayloadError::HashMismatch(why)) if why.contains("prompt")),
        "{prompt:?}"
    );
    let response = s.fetch("a").await;
    assert!(
        matches!(&response, Err(PayloadError::HashMismatch(why)) if why.contains("response")),
        "{response:?}"
    );
    s.fetch("a").await.unwrap();
}

#[tokio::test]
async fn an_unrelated_signature_is_retryable_and_a_grantee_signature_passes() {
    let s = setup().await;
    s.executor.insert_generated("a", EPOCH);
    s.executor.script("a", [ExecutorReply::UnrelatedSignature]);
    assert_eq!(s.fetch("a").await, Err(PayloadError::BadSignature));
    s.fetch("a").await.unwrap();

    s.executor.sign_with(grantee_key());
    s.fetch("a").await.unwrap();
    // Without the grant, the grantee's signature is as good as a stranger's.
    s.directory.add_executor(&s.executor, Vec::new());
    assert_eq!(s.fetch("a").await, Err(PayloadError::BadSignature));
}

/// A signature that fails while one of the executor's key lookups failed is the validator's
/// side: the missing key may be the one it signed with. A failed URL or key lookup is too.
#[tokio::test]
async fn key_and_url_lookup_failures_are_the_validators_side() {
    let s = setup().await;
    s.executor.insert_generated("a", EPOCH);
    s.executor.sign_with(grantee_key());
    let partial = |keys: Vec<Vec<u8>>| SigningKeys {
        keys,
        incomplete: Some("grantee keys: status 301".into()),
    };
    // The account key alone, the grantee lookup having failed: not provably a bad signature.
    s.directory.insert_keys(
        EXECUTOR,
        &s.executor.url(),
        partial(vec![executor_key().public_key()]),
    );
    let result = s.fetch("a").await;
    assert!(
        matches!(&result, Err(PayloadError::Local(why)) if why.contains("grantee keys: status 301")),
        "{result:?}"
    );
    // The keys that were found still verify what they signed.
    s.directory.insert_keys(EXECUTOR, &s.executor.url(), partial(vec![grantee_key().public_key()]));
    assert_eq!(s.fetch("a").await.unwrap(), payloads_for("a"));

    let failing = HttpPayloadSource::new(
        &loopback_config(BOUND, 1 << 20),
        &public_tls(),
        warm_key(),
        SELF_ADDRESS,
        Arc::new(FailingDirectory),
    )
    .unwrap();
    let result = failing.fetch(&s.stored("a")).await;
    assert!(
        matches!(&result, Err(PayloadError::Local(why)) if why.contains("timed out")),
        "{result:?}"
    );
}

/// A directory whose chain queries time out.
pub(crate) struct FailingDirectory;

#[async_trait::async_trait]
impl ExecutorDirectory for FailingDirectory {
    async fn inference_url(&self, _: &str) -> chain_source::Result<String> {
        Err(chain_source::Error::Timeout("participant query timed out".into()))
    }

    async fn signing_keys(&self, _: &str) -> chain_source::Result<SigningKeys> {
        Err(chain_source::Error::Timeout("account query timed out".into()))
    }
}

#[tokio::test]
async fn a_404_is_gone_and_adjacent_storage_epochs_are_found() {
    let s = setup().await;
    s.executor.insert_generated("a", EPOCH);
    s.executor.script("a", [ExecutorReply::NotFound]);
    assert_eq!(s.fetch("a").await, Err(PayloadError::Gone));
    let record = s.stored("a");
    s.executor.remove("a");
    assert_eq!(s.source.fetch(&record).await, Err(PayloadError::Gone));

    for (storage, found) in [(EPOCH - 1, true), (EPOCH + 1, true), (EPOCH + 2, false)] {
        s.executor.insert_at("b", EPOCH, storage, payloads_for("b"));
        assert_eq!(s.fetch("b").await.is_ok(), found, "stored under {storage}");
    }
}

#[tokio::test]
async fn other_statuses_redirects_and_directory_failures_are_unavailable() {
    let s = setup().await;
    s.executor.insert_generated("a", EPOCH);
    let target = LoopbackExecutor::start(EXECUTOR, executor_key()).await;
    s.executor.script(
        "a",
        [
            ExecutorReply::Status(500),
            ExecutorReply::Status(503),
            ExecutorReply::Status(401),
            ExecutorReply::Redirect(format!(
                "{}/v1/inference/payloads?inference_id=a",
                target.url()
            )),
        ],
    );
    for expected in ["500", "503", "401", "302"] {
        let result = s.fetch("a").await;
        assert!(
            matches!(&result, Err(PayloadError::Unavailable(why)) if why.contains(expected)),
            "{result:?}"
        );
    }
    assert!(target.requests().is_empty(), "the redirect was not followed");

    let record = s.stored("a");
    s.directory.insert(EXECUTOR, "", vec![executor_key().public_key()]);
    assert!(matches!(s.source.fetch(&record).await, Err(PayloadError::Unavailable(_))));
    let stranger = Inference { executed_by: "gonka1nobody".into(), ..record };
    assert!(matches!(s.source.fetch(&stranger).await, Err(PayloadError::Unavailable(_))));
}

#[tokio::test]
async fn a_stalled_executor_is_abandoned_at_the_timeout() {
    let s = setup_with(loopback_config(Duration::from_millis(200), 1 << 20)).await;
    s.executor.insert_generated("a", EPOCH);
    s.executor.script("a", [ExecutorReply::Hang]);
    let started = Instant::now();
    let result = s.fetch("a").await;
    let elapsed = started.elapsed();
    assert!(
        matches!(&result, Err(PayloadError::Unavailable(why)) if why.contains("200ms")),
        "{result:?}"
    );
    assert!(
        elapsed >= Duration::from_millis(200) && elapsed < Duration::from_secs(3),
        "{elapsed:?}"
    );
    timeout(BOUND, s.executor.wait_disconnects(1)).await.unwrap();
}

#[tokio::test]
async fn dropping_the_fetch_closes_the_connection() {
    let s = setup().await;
    s.executor.insert_generated("a", EPOCH);
    s.executor.script("a", [ExecutorReply::Hang]);
    let record = s.stored("a");
    tokio::select! {
        result = s.source.fetch(&record) => panic!("a stalled fetch finished: {result:?}"),
        () = s.executor.wait_requests(1) => {}
    }
    timeout(BOUND, s.executor.wait_disconnects(1)).await.unwrap();
}

#[tokio::test]
async fn oversize_bodies_are_refused_while_streaming() {
    let s = setup_with(loopback_config(BOUND, 1 << 20)).await;
    s.executor.insert_generated("a", EPOCH);
    let huge = 256 * 1024 * 1024;
    s.executor.script(
        "a",
        [
            ExecutorReply::Oversize { bytes: huge, content_length: true },
            ExecutorReply::Oversize { bytes: huge, content_length: false },
        ],
    );
    for _ in 0..2 {
        let result = s.fetch("a").await;
        assert!(
            matches!(&result, Err(PayloadError::Unavailable(why)) if why.contains("larger than 1048576")),
            "{result:?}"
        );
    }
    // The fake streams as fast as it is read: 256 MiB could not have gone over in this time
    // had the client kept reading; both answers were cut off.
    timeout(BOUND, s.executor.wait_disconnects(2)).await.unwrap();
}

/// DOMAIN.md 8.10: the request carries the four headers, and the signature verifies with the
/// signer key over id + epoch + timestamp + account address.
#[tokio::test]
async fn the_request_is_signed_by_the_signer_key_over_the_documented_bytes() {
    let s = setup().await;
    s.executor.insert_generated("inf/1 ~x", EPOCH);
    let before = unix_nanos();
    s.fetch("inf/1 ~x").await.unwrap();
    let after = unix_nanos();

    let request = s.executor.requests().pop().unwrap();
    assert_eq!(request.path, "/v1/inference/payloads");
    assert_eq!(request.inference_id.as_deref(), Some("inf/1 ~x"));
    assert_eq!(request.header("X-Validator-Address"), Some(SELF_ADDRESS));
    assert_eq!(request.header("X-Epoch-Id"), Some("10"));
    let timestamp: i64 = request.header("X-Timestamp").unwrap().parse().unwrap();
    assert!((before..=after).contains(&timestamp), "nanoseconds now");
    let signature = wire::decode_base64(request.header("Authorization").unwrap()).unwrap();
    assert_eq!(signature.len(), 64);
    let signed = format!("inf/1 ~x10{timestamp}{SELF_ADDRESS}");
    assert!(signer::verify(&warm_key().public_key(), signed.as_bytes(), &signature));
    assert!(!signer::verify(&executor_key().public_key(), signed.as_bytes(), &signature));
}

/// Request headers as the tests build them.
type Headers = Vec<(&'static str, String)>;

/// A change to the headers before sending.
type Change = Box<dyn FnOnce(&mut Headers)>;

/// A GET with the four headers, built by hand, with `change` applied before sending.
async fn raw_get(
    executor: &LoopbackExecutor,
    id: &str,
    change: impl FnOnce(&mut Headers),
) -> (u16, String) {
    let timestamp = unix_nanos();
    let message = wire::request_signed_bytes(id, EPOCH, timestamp, SELF_ADDRESS);
    let mut headers = vec![
        (wire::HEADER_VALIDATOR_ADDRESS, SELF_ADDRESS.to_owned()),
        (wire::HEADER_TIMESTAMP, timestamp.to_string()),
        (wire::HEADER_EPOCH_ID, EPOCH.to_string()),
        (wire::HEADER_AUTHORIZATION, wire::encode_base64(&warm_key().sign(&message))),
    ];
    change(&mut headers);
    let url = wire::request_url(&executor.url(), id).unwrap();
    let mut request = public_tls().http_client_builder().build().unwrap().get(url);
    for (name, value) in headers {
        request = request.header(name, value);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// DOMAIN.md 8.11: the payload fields are base64 on the wire and hashed after decoding.
#[tokio::test]
async fn payloads_are_base64_on_the_wire_and_hashed_decoded() {
    let s = setup().await;
    let hashes = s.executor.insert_generated("a", EPOCH);
    let (status, body) = raw_get(&s.executor, "a", |_| {}).await;
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    let on_wire = json["response_payload"].as_str().unwrap();
    let decoded = wire::decode_base64(on_wire).unwrap();
    assert_eq!(decoded, payloads_for("a").response);
    assert_ne!(hash::sha256_hex(on_wire.as_bytes()), hashes.response_hash);
    assert_eq!(hash::response_hash(&decoded).unwrap(), hashes.response_hash);
    assert_eq!(s.fetch("a").await.unwrap(), payloads_for("a"));
}

#[tokio::test]
async fn the_fake_executor_enforces_the_request_rules() {
    let s = setup().await;
    s.executor.insert_generated("a", EPOCH);
    let old = (unix_nanos() - 61_000_000_000).to_string();
    let ahead = (unix_nanos() + 11_000_000_000).to_string();
    let cases: Vec<(u16, Change)> = vec![
        (400, Box::new(|h| h.retain(|(n, _)| *n != wire::HEADER_VALIDATOR_ADDRESS))),
        (400, Box::new(|h| h.retain(|(n, _)| *n != wire::HEADER_TIMESTAMP))),
        (400, Box::new(|h| h.retain(|(n, _)| *n != wire::HEADER_EPOCH_ID))),
        (401, Box::new(|h| h.retain(|(n, _)| *n != wire::HEADER_AUTHORIZATION))),
        (400, Box::new(move |h| h[1].1 = old)),
        (400, Box::new(move |h| h[1].1 = ahead)),
        (401, Box::new(|h| h[0].1 = "gonka1stranger".into())),
        (401, Box::new(|h| h[3].1 = wire::encode_base64(&[7; 64]))),
        // The inference's real epoch authorises the request, not the header's.
        (200, Box::new(|h| h[2].1 = "99".into())),
    ];
    for (i, (expected, change)) in cases.into_iter().enumerate() {
        let (status, body) = raw_get(&s.executor, "a", change).await;
        assert_eq!(status, expected, "case {i}: {body}");
    }
}

/// DOMAIN.md 8.14: an empty on-chain hash skips that check.
#[tokio::test]
async fn an_empty_on_chain_hash_skips_its_check() {
    let s = setup().await;
    s.executor.insert_generated("a", EPOCH);
    s.executor.script("a", [ExecutorReply::FlipResponse, ExecutorReply::FlipPrompt]);
    let without_response = Inference { response_hash: String::new(), ..s.stored("a") };
    let served = s.source.fetch(&without_response).await.unwrap();
    assert_ne!(served.response, payloads_for("a").response);
    let without_prompt = Inference { prompt_hash: String::new(), ..s.stored("a") };
    let served = s.source.fetch(&without_prompt).await.unwrap();
    assert_ne!(served.prompt, payloads_for("a").prompt);
}

// === the address guard over HTTP ===

pub(crate) fn lookup_to(ip: &'static str) -> Lookup {
    Arc::new(move |_host| {
        Box::pin(async move { Ok(vec![SocketAddr::new(ip.parse().unwrap(), 0)]) })
    })
}

fn guarded_source(
    allow: &[&str],
    lookup: Lookup,
    directory: &StaticDirectory,
) -> HttpPayloadSource {
    let allow: Vec<String> = allow.iter().map(|entry| (*entry).to_owned()).collect();
    let config = PayloadsConfig { allow, ..PayloadsConfig::default() };
    guarded_source_with(&config, &public_tls(), lookup, directory)
}

/// A source with `config` and `tls` whose resolver answers with `lookup`, checked against
/// `config.allow`.
pub(crate) fn guarded_source_with(
    config: &PayloadsConfig,
    tls: &tls::ClientTls,
    lookup: Lookup,
    directory: &StaticDirectory,
) -> HttpPayloadSource {
    let guard = Guard::new(&config.allow).unwrap();
    let resolver = GuardedResolver::with_lookup(Arc::new(guard), lookup);
    HttpPayloadSource::with_resolver(
        config,
        tls,
        warm_key(),
        SELF_ADDRESS,
        Arc::new(directory.clone()),
        resolver,
    )
    .unwrap()
}

#[tokio::test]
async fn the_guard_refuses_internal_executors_unless_allowed() {
    let s = setup().await;
    s.executor.insert_generated("a", EPOCH);
    let record = s.stored("a");
    let port = s.executor.addr().port();
    // The guard's refusals are the validator's own policy, never the executor's fault.
    let refused = |result: &Result<Payloads, PayloadError>, what: &str| matches!(result, Err(PayloadError::Local(why)) if why.contains(what));

    // Literal loopback, in both spellings, without an allow-list.
    let strict = guarded_source(&[], lookup_to("127.0.0.1"), &s.directory);
    for url in [s.executor.url(), format!("http://[::ffff:127.0.0.1]:{port}")] {
        s.directory.insert(EXECUTOR, &url, vec![executor_key().public_key()]);
        let result = strict.fetch(&record).await;
        assert!(refused(&result, "not a public address"), "{url}: {result:?}");
    }
    // A host name whose answer is internal: the resolver refuses it before any connection, for
    // https as for http.
    for scheme in ["http", "https"] {
        s.directory.insert(
            EXECUTOR,
            &format!("{scheme}://executor.test:{port}"),
            vec![executor_key().public_key()],
        );
        let result = strict.fetch(&record).await;
        assert!(refused(&result, "resolves to 127.0.0.1"), "{scheme}: {result:?}");
    }
    s.directory.insert(EXECUTOR, "ftp://8.8.8.8", vec![]);
    assert!(refused(&strict.fetch(&record).await, "scheme ftp"));
    assert!(s.executor.requests().is_empty(), "nothing reached the executor");

    // The allow-list admits the host by name, or loopback by network.
    s.directory.insert(
        EXECUTOR,
        &format!("http://executor.test:{port}"),
        vec![executor_key().public_key()],
    );
    let by_name = guarded_source(&["executor.test"], lookup_to("127.0.0.1"), &s.directory);
    assert_eq!(by_name.fetch(&record).await.unwrap(), payloads_for("a"));
    let by_network = guarded_source(&["127.0.0.0/8"], lookup_to("127.0.0.1"), &s.directory);
    assert_eq!(by_network.fetch(&record).await.unwrap(), payloads_for("a"));

    // A redirect from an allowed host to loopback is not followed.
    let target = LoopbackExecutor::start(EXECUTOR, executor_key()).await;
    target.insert_generated("a", EPOCH);
    s.executor.script(
        "a",
        [ExecutorReply::Redirect(format!("{}/v1/inference/payloads?inference_id=a", target.url()))],
    );
    // The redirect is the executor's answer, not a refusal of ours.
    let result = by_name.fetch(&record).await;
    assert!(
        matches!(&result, Err(PayloadError::Unavailable(why)) if why.contains("302")),
        "{result:?}"
    );
    assert!(target.requests().is_empty());
}

// === the engine end to end ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_validates_over_http_and_invalidates_a_tampered_payload_once() {
    let fakes = MemoryPorts::new(Duration::ZERO, 4);
    let executor = LoopbackExecutor::start(EXECUTOR, executor_key()).await;
    executor.register_requester(SELF_ADDRESS, vec![warm_key().public_key()]);
    let directory = StaticDirectory::new();
    directory.add_executor(&executor, Vec::new());
    let source = HttpPayloadSource::new(
        &loopback_config(BOUND, 32 << 20),
        &public_tls(),
        warm_key(),
        SELF_ADDRESS,
        Arc::new(directory),
    )
    .unwrap();
    let ids = ["e1", "e2", "e3", "tampered"];
    for id in ids {
        fakes.chain.add_inference(id, EPOCH);
        executor.insert_generated(id, EPOCH);
        fakes.chain.put_inference(executor.inference(id).unwrap());
    }
    executor.script("tampered", [ExecutorReply::FlipResponse]);

    let ports = Ports { payloads: Arc::new(source), ..fakes.ports() };
    let engine = Engine::start(Config::default(), ports).unwrap();
    for id in ids {
        engine.validate(id.into()).unwrap();
    }
    timeout(BOUND, fakes.chain.wait_submitted(ids.len())).await.unwrap();

    let mut submitted = fakes.chain.submitted();
    submitted.sort_by(|a, b| a.inference_id.cmp(&b.inference_id));
    assert_eq!(submitted.len(), 4);
    for msg in &submitted[..3] {
        assert_eq!((msg.value_decimal.value, msg.value_decimal.exponent), (1, 0), "{msg:?}");
        assert_eq!(msg.response_hash.len(), 64);
    }
    let tampered = &submitted[3];
    assert_eq!(tampered.inference_id.as_str(), "tampered");
    assert_eq!((tampered.value_decimal.value, tampered.response_hash.as_str()), (0, ""));
    let tampered_requests = executor
        .requests()
        .iter()
        .filter(|r| r.inference_id.as_deref() == Some("tampered"))
        .count();
    assert_eq!(tampered_requests, 1, "a hash mismatch is not retried");
    engine.shutdown(Duration::from_secs(1)).await;
}
