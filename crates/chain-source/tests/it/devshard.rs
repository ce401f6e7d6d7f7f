use std::{collections::BTreeSet, sync::Arc, time::Duration};

use bytes::Bytes;
use chain_source::{
    config::PayloadsConfig,
    payloads::{hash, wire},
    signer, HttpPayloadSource, SigningKeys,
};
use sha2::{Digest, Sha256};
use testkit::{
    devshard_payloads, fixture_payloads,
    memory::{payloads_for, SELF_ADDRESS},
    public_tls, ExecutorReply, LoopbackExecutor, StaticDirectory,
};
use tokio::time::timeout;
use validator_core::{
    devshard::DevshardJob,
    ports::payload_source::{PayloadError, PayloadSource, Payloads},
};

use crate::payloads::{
    executor_key, grantee_key, guarded_source_with, lookup_to, loopback_config, unix_nanos,
    warm_key, FailingDirectory, EPOCH,
};

/// A bech32 account, as devshard requests carry them.
const EXECUTOR: &str = "gonka1qypqxpq9qcrsszg2pvxq6rs0zqg3yyc50htqp7";
const ESCROW: &str = "42";
const BOUND: Duration = Duration::from_secs(5);

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
    fn job(&self, id: u64) -> DevshardJob {
        self.executor.devshard_job(ESCROW, id).unwrap()
    }

    async fn fetch(&self, job: &DevshardJob) -> Result<Payloads, PayloadError> {
        timeout(BOUND * 2, self.source.fetch_devshard(job)).await.unwrap()
    }
}

#[tokio::test]
async fn session_payloads_verify_generated_and_fixture() {
    let s = setup().await;
    let hashes = s.executor.insert_devshard_generated(ESCROW, 7, EPOCH);
    let fixture = fixture_payloads("inference_response.json").unwrap();
    s.executor.insert_devshard(ESCROW, 8, EPOCH, fixture.clone());

    let job = s.job(7);
    assert_eq!((job.prompt_hash, job.response_hash), (hashes.prompt_hash, hashes.response_hash));
    let served = s.fetch(&job).await.unwrap();
    assert_eq!(served, devshard_payloads(ESCROW, 7));
    // Stored as a devshard host stores them: the canonical prompt without a trailing newline.
    assert!(!served.prompt.ends_with(b"\n"));
    let canonical = hash::canonical_json(&payloads_for("devshard:42:7").prompt).unwrap();
    assert_eq!(served.prompt, canonical.trim_end().as_bytes());
    assert_eq!(s.fetch(&s.job(8)).await.unwrap(), fixture);
}

/// The request is the classic one on another path: the same four headers, the decimal id signed
/// with the job's epoch, and the id in the query.
#[tokio::test]
async fn the_request_carries_exactly_the_classic_headers_and_signs_the_decimal_id() {
    let s = setup().await;
    s.executor.insert_devshard_generated(ESCROW, 7, EPOCH);
    s.executor.insert_generated("classic", EPOCH);
    let before = unix_nanos();
    s.fetch(&s.job(7)).await.unwrap();
    let after = unix_nanos();
    s.source.fetch(&s.executor.inference("classic").unwrap()).await.unwrap();

    let requests = s.executor.requests();
    let (devshard, classic) = (&requests[0], &requests[1]);
    assert_eq!(devshard.path, "/devshard/v4/sessions/42/payloads");
    assert_eq!(devshard.inference_id.as_deref(), Some("7"));
    let names = |request: &testkit::ExecutorRequest| -> BTreeSet<String> {
        request.headers.keys().cloned().collect()
    };
    assert_eq!(names(devshard), names(classic));
    for name in ["x-validator-address", "x-timestamp", "x-epoch-id", "authorization"] {
        assert!(names(devshard).contains(name), "{name}");
    }
    assert_eq!(devshard.header("X-Validator-Address"), Some(SELF_ADDRESS));
    assert_eq!(devshard.header("X-Epoch-Id"), Some("10"));
    let timestamp: i64 = devshard.header("X-Timestamp").unwrap().parse().unwrap();
    assert!((before..=after).contains(&timestamp), "nanoseconds now");
    let signature = wire::decode_base64(devshard.header("Authorization").unwrap()).unwrap();
    let signed = format!("710{timestamp}{SELF_ADDRESS}");
    assert!(signer::verify(&warm_key().public_key(), signed.as_bytes(), &signature));
}

#[tokio::test]
async fn payloads_whose_raw_bytes_differ_are_a_hash_mismatch() {
    let s = setup().await;
    s.executor.insert_devshard_generated(ESCROW, 7, EPOCH);
    s.executor.script_devshard(ESCROW, 7, [ExecutorReply::FlipPrompt, ExecutorReply::FlipResponse]);
    for what in ["prompt", "response"] {
        let result = s.fetch(&s.job(7)).await;
        assert!(
            matches!(&result, Err(PayloadError::HashMismatch(why)) if why.starts_with(what)),
            "{what}: {result:?}"
        );
    }
    s.fetch(&s.job(7)).await.unwrap();

    // A job whose hashes are not those of the served bytes.
    let mut job = s.job(7);
    job.response_hash[0] ^= 1;
    assert!(matches!(s.fetch(&job).await, Err(PayloadError::HashMismatch(_))));

    // The same JSON in another spelling is another payload: no canonical form is taken.
    let spelled = Payloads {
        prompt: Bytes::from_static(br#"{"model": "m", "messages": []}"#),
        response: payloads_for("x").response,
    };
    s.executor.insert_devshard(ESCROW, 9, EPOCH, spelled.clone());
    let mut job = s.job(9);
    let canonical = hash::canonical_json(&spelled.prompt).unwrap();
    job.prompt_hash = Sha256::digest(canonical.trim_end().as_bytes()).into();
    let result = s.fetch(&job).await;
    assert!(
        matches!(&result, Err(PayloadError::HashMismatch(why)) if why.starts_with("prompt")),
        "{result:?}"
    );
}

#[tokio::test]
async fn signatures_are_checked_against_the_executors_keys_as_for_classic() {
    let s = setup().await;
    s.executor.insert_devshard_generated(ESCROW, 7, EPOCH);
    s.executor.script_devshard(ESCROW, 7, [ExecutorReply::UnrelatedSignature]);
    assert_eq!(s.fetch(&s.job(7)).await, Err(PayloadError::BadSignature));

    s.executor.sign_with(grantee_key());
    s.fetch(&s.job(7)).await.unwrap();
    let partial =
        SigningKeys { keys: vec![executor_key().public_key()], incomplete: Some("grants".into()) };
    s.directory.insert_keys(EXECUTOR, &s.executor.url(), partial);
    let result = s.fetch(&s.job(7)).await;
    assert!(
        matches!(&result, Err(PayloadError::Local(why)) if why.contains("grants")),
        "{result:?}"
    );
    s.directory.add_executor(&s.executor, Vec::new());
    assert_eq!(s.fetch(&s.job(7)).await, Err(PayloadError::BadSignature));
}

#[tokio::test]
async fn a_404_is_gone_and_adjacent_storage_epochs_are_found() {
    let s = setup().await;
    s.executor.insert_devshard_generated(ESCROW, 7, EPOCH);
    let job = s.job(7);
    s.executor.script_devshard(ESCROW, 7, [ExecutorReply::NotFound]);
    assert_eq!(s.fetch(&job).await, Err(PayloadError::Gone));
    s.executor.remove_devshard(ESCROW, 7);
    assert_eq!(s.fetch(&job).await, Err(PayloadError::Gone));
    let other_escrow = DevshardJob {
        key: validator_core::devshard::DevshardKey { escrow_id: "43".into(), inference_id: 7 },
        ..job.clone()
    };
    assert_eq!(s.fetch(&other_escrow).await, Err(PayloadError::Gone));

    for (storage, found) in [(EPOCH - 1, true), (EPOCH + 1, true), (0, true), (EPOCH + 3, false)] {
        s.executor.insert_devshard_at(ESCROW, 7, EPOCH, storage, devshard_payloads(ESCROW, 7));
        assert_eq!(s.fetch(&job).await.is_ok(), found, "stored under {storage}");
    }
}

#[tokio::test]
async fn statuses_redirects_and_the_directory_map_as_for_classic() {
    let s = setup().await;
    s.executor.insert_devshard_generated(ESCROW, 7, EPOCH);
    let target = LoopbackExecutor::start(EXECUTOR, executor_key()).await;
    target.insert_devshard_generated(ESCROW, 7, EPOCH);
    let redirect = format!("{}/devshard/v4/sessions/42/payloads?inference_id=7", target.url());
    s.executor.script_devshard(
        ESCROW,
        7,
        [ExecutorReply::Status(500), ExecutorReply::Status(401), ExecutorReply::Redirect(redirect)],
    );
    for expected in ["500", "401", "302"] {
        let result = s.fetch(&s.job(7)).await;
        assert!(
            matches!(&result, Err(PayloadError::Unavailable(why)) if why.contains(expected)),
            "{result:?}"
        );
    }
    assert!(target.requests().is_empty(), "the redirect was not followed");

    let job = s.job(7);
    s.directory.insert(EXECUTOR, "", vec![executor_key().public_key()]);
    assert!(matches!(s.fetch(&job).await, Err(PayloadError::Unavailable(_))));
    let stranger = DevshardJob { executor_address: "gonka1nobody".into(), ..job.clone() };
    assert!(matches!(s.fetch(&stranger).await, Err(PayloadError::Unavailable(_))));

    let failing = HttpPayloadSource::new(
        &loopback_config(BOUND, 1 << 20),
        &public_tls(),
        warm_key(),
        SELF_ADDRESS,
        Arc::new(FailingDirectory),
    )
    .unwrap();
    let result = failing.fetch_devshard(&job).await;
    assert!(
        matches!(&result, Err(PayloadError::Local(why)) if why.contains("timed out")),
        "{result:?}"
    );
}

#[tokio::test]
async fn path_segments_that_would_leave_the_session_route_are_refused_locally() {
    let s = setup().await;
    s.executor.insert_devshard_generated(ESCROW, 7, EPOCH);
    let job = s.job(7);
    for escrow in [".", ".."] {
        let bad = DevshardJob {
            key: validator_core::devshard::DevshardKey {
                escrow_id: escrow.into(),
                inference_id: 7,
            },
            ..job.clone()
        };
        assert!(matches!(s.fetch(&bad).await, Err(PayloadError::Local(_))), "{escrow}");
    }
    assert!(s.executor.requests().is_empty());
}

#[tokio::test]
async fn a_stalled_executor_is_abandoned_at_the_timeout() {
    let s = setup_with(loopback_config(Duration::from_millis(200), 1 << 20)).await;
    s.executor.insert_devshard_generated(ESCROW, 7, EPOCH);
    s.executor.script_devshard(ESCROW, 7, [ExecutorReply::Hang]);
    let result = s.fetch(&s.job(7)).await;
    assert!(
        matches!(&result, Err(PayloadError::Unavailable(why)) if why.contains("200ms")),
        "{result:?}"
    );
    timeout(BOUND, s.executor.wait_disconnects(1)).await.unwrap();
}

#[tokio::test]
async fn a_100_mb_answer_is_refused_while_streaming() {
    let s = setup_with(loopback_config(BOUND, 1 << 20)).await;
    s.executor.insert_devshard_generated(ESCROW, 7, EPOCH);
    let huge = 100 * 1024 * 1024;
    s.executor.script_devshard(
        ESCROW,
        7,
        [
            ExecutorReply::Oversize { bytes: huge, content_length: true },
            ExecutorReply::Oversize { bytes: huge, content_length: false },
        ],
    );
    for _ in 0..2 {
        let result = s.fetch(&s.job(7)).await;
        assert!(
            matches!(&result, Err(PayloadError::Unavailable(why)) if why.contains("larger than 1048576")),
            "{result:?}"
        );
    }
    timeout(BOUND, s.executor.wait_disconnects(2)).await.unwrap();
}

#[tokio::test]
async fn the_guard_refuses_internal_executors() {
    let s = setup().await;
    s.executor.insert_devshard_generated(ESCROW, 7, EPOCH);
    let job = s.job(7);
    let strict = PayloadsConfig::default();
    let port = s.executor.addr().port();
    let source = guarded_source_with(&strict, &public_tls(), lookup_to("127.0.0.1"), &s.directory);
    for url in [s.executor.url(), format!("http://executor.test:{port}")] {
        s.directory.insert(EXECUTOR, &url, vec![executor_key().public_key()]);
        let result = source.fetch_devshard(&job).await;
        assert!(
            matches!(&result, Err(PayloadError::Local(why)) if why.contains("public address")),
            "{url}: {result:?}"
        );
    }
    assert!(s.executor.requests().is_empty(), "nothing reached the executor");

    let allowed = PayloadsConfig { allow: vec!["executor.test".into()], ..strict };
    let source = guarded_source_with(&allowed, &public_tls(), lookup_to("127.0.0.1"), &s.directory);
    assert_eq!(source.fetch_devshard(&job).await.unwrap(), devshard_payloads(ESCROW, 7));
}
