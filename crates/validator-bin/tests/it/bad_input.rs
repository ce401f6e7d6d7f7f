//! The bad-input table: every kind of malformed input, delivered through the public entry point
//! that meets it in production, with the typed outcome or error it must produce. After each row
//! the node must still serve: `/healthz` answers 200, the engine reports its status, a normal
//! validation is submitted, and a revalidation event on the chain is followed to its submission.
//!
//! One app runs on the loopback fakes for the whole table; adapter-level rows use their own
//! clients against the same fakes or against [`RawServer`], which answers byte for byte. Bodies
//! of 100 MB are never built: they are announced in `Content-Length` (or sent chunked) and
//! streamed lazily, as long as the other side reads.

use std::{
    mem::discriminant,
    net::SocketAddr,
    ops::RangeInclusive,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use base64::{engine::general_purpose::STANDARD as BASE64, Engine as _};
use chain_source::{
    config::{PayloadsConfig, QueryConfig},
    events::{decode_block_results, decode_frame, Frame},
    payloads::{hash, wire},
    query::{EpochParams, QueryClient},
    rpc::RpcClient,
    schedule::{claim_due, reward_recovery_due, EpochSchedule},
    Error as ChainErr, HttpPayloadSource, Signer,
};
use ml_client::NodeManagerBroker;
use serde_json::{json, Value};
use testkit::LoopbackNodeManager;
use testkit::{ExecutorReply, Reply, StaticDirectory, TxEvent};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::broadcast::error::RecvError,
};
use tonic::{transport::Channel, Code};
use validator_core::ports::model_lock::{
    LeaseRequest, LockError, ModelLockBroker as _, NodeHealth,
};
use validator_core::{
    ports::{
        chain::{Inference, InferenceStatus},
        payload_source::{PayloadError, PayloadSource as _},
    },
    scoring::Verdict,
    testing::{payloads_for, MODEL},
    Admission, InvalidationReason, Outcome, OutcomeEvent, RetryPolicy, RunState, SkipReason, Stage,
};
use validator_demo::{validator_key, DemoOptions, EPOCH_PARAMS, LIVE_EPOCH};
use validator_proto::validator::v1::{
    validate_response::Verdict as Answered, validation_service_client::ValidationServiceClient,
    ValidateRequest,
};

use crate::Running;

/// Bound on anything the table waits for; reaching it fails the row.
const BOUND: Duration = Duration::from_secs(10);
/// 100 MB, the size of the oversized bodies.
const HUNDRED_MB: u64 = 100 * 1024 * 1024;
/// 1 MiB, the length of the oversized ids.
const ONE_MIB: usize = 1024 * 1024;
/// Nesting depth of the deep JSON documents.
const DEPTH: usize = 10_000;
/// Attempts per stage: two, so retried failures end quickly.
const ATTEMPTS: u16 = 2;
/// Blocks after which the app's block triggers read the epoch schedule again.
const SCHEDULE_REFRESH_BLOCKS: u64 = 50;
/// How far ahead of the tip the next PoC stage is put, in blocks.
const FAR_AHEAD: i64 = 50_000;

// === the table ===

/// One row: what is sent, how, and what must come back.
struct Case {
    name: &'static str,
    input: Input,
    expect: Expect,
}

/// How the input is delivered, by entry point.
enum Input {
    /// A request to the app's admin API on a raw connection, so a refused head or body is seen
    /// as the server answers it.
    Admin { method: &'static str, path: String, headers: Vec<String>, body: Body },
    /// One fetch by `HttpPayloadSource` of inference `id`, whose executor answers `answer`.
    Payload { id: String, answer: Answer },
    /// The app validates a fresh inference of the raw executor (registered on the chain, no
    /// payload hashes on record), which serves this.
    EngineWithPayload(Served),
    /// The app validates a fresh inference; our ML node answers each replay attempt with these.
    Replay(Vec<Reply>),
    /// One query by `QueryClient` to a gateway answering `answer`.
    Query { call: QueryCall, answer: Answer },
    /// A block with one transaction carrying these events, produced by the chain the app
    /// follows; the events are also decoded from the node's `block_results`.
    Block(Vec<TxEvent>),
    /// A raw text frame on the websocket of the chain the app follows; also decoded directly.
    Frame(String),
    /// The chain's latest epoch (as `EpochInfo` answers it), read by the app's block triggers.
    Epoch { poc_start: i64, params: EpochParams },
    /// A call on the app's engine.
    Engine(Call),
    /// A `Validate` call on the app's gRPC service for a fresh devshard inference stored at
    /// the scenario's executor: the request spoilt by `spoil`, the executor's next answer
    /// `executor`, and our ML node answering each replay attempt with `replies`.
    Devshard { spoil: Spoil, executor: Option<ExecutorReply>, replies: Vec<Reply> },
    /// A lease through a `NodeManagerBroker` on a loopback NodeManager with this fault.
    NodeManager(NodeManagerFault),
}

/// Makes a well-formed devshard request malformed in one way.
type Spoil = fn(&mut ValidateRequest);

/// What the loopback NodeManager does wrong.
enum NodeManagerFault {
    /// Grants locks on a node whose endpoint is not a URL.
    MalformedEndpoint,
    /// Never answers.
    Hangs,
    /// Forgets the lock it granted, as if its TTL had evicted it, before we release it.
    LosesLock,
}

/// A request body for the admin API.
enum Body {
    Empty,
    Bytes(Vec<u8>),
    /// Filler announced in `Content-Length` and written as long as the server reads.
    Declared(u64),
    /// Filler in chunks, no length announced, written as long as the server reads.
    Chunked(u64),
}

/// What a raw peer (an executor or a gateway) answers: status 200 and this.
#[derive(Clone)]
enum Answer {
    /// This body.
    Body(Vec<u8>),
    /// Filler announced in `Content-Length` and written as long as the client reads.
    Declared(u64),
    /// Filler in chunks, no length announced, written as long as the client reads.
    Chunked(u64),
    /// The fake executor's scripted reply, through its HTTP server.
    Fake(ExecutorReply),
}

/// What the raw executor serves for the fresh inference of an engine row.
enum Served {
    /// This body, as it is.
    Body(Vec<u8>),
    /// A correctly signed answer with the fakes' prompt and this response payload.
    Response(Vec<u8>),
}

enum QueryCall {
    EpochInfo,
    Inference(&'static str),
}

enum Call {
    Validate(String),
    Revalidate(String),
    /// Sampled; a well-formed id sampled next fences the intake.
    Sample(Vec<String>),
    Recover(u64),
}

/// The typed result a row must produce.
enum Expect {
    /// This status with `{"error": "..."}` containing the text: the admin API's own refusal.
    Refused(u16, &'static str),
    /// This status, body as the HTTP stack writes it (axum's or hyper's own refusals).
    Status(u16),
    /// Accepted (202 from the admin API, or started by the engine); the run then ends in this
    /// state (variant), its message containing the text.
    Run(RunState, &'static str),
    /// This payload error (variant), its message containing the text.
    Payload(PayloadError, &'static str),
    /// This chain adapter error (variant), its message containing the text.
    Chain(ChainErr, &'static str),
    /// Decoded: an epoch with this index.
    Epoch(u64),
    /// Decoded: this many events, and these attribute errors (variants, in order).
    Events(usize, Vec<ChainErr>),
    /// Decoded: this frame, or this error (variant).
    Frame(Result<Frame, ChainErr>),
    /// The schedule computed from the epoch: neither the claim nor the reward check is due.
    NothingDue,
    /// The validation ends submitted with this verdict and a value in the range.
    Submitted(Verdict, RangeInclusive<f64>),
    /// The validation ends in this invalidation.
    Invalidated(InvalidationReason),
    /// The validation ends skipped for this reason.
    Skipped(SkipReason),
    /// The validation gives up at this stage, its error containing the text.
    GaveUp(Stage, &'static str),
    /// Sampling accepted the ids and admitted none of them.
    NoneAdmitted,
    /// The service answered this gRPC status, its message containing the text.
    Grpc(Code, &'static str),
    /// The service answered this verdict (`VALID`, `INVALID`, `SKIPPED`) with this reason.
    Judged(Answered, &'static str),
    /// The broker refused the lease with this error (variant), its message containing the
    /// text.
    Lock(LockError, &'static str),
    /// The broker leased, and the lost lock's release was counted as lost.
    LostRelease,
}

fn case(name: &'static str, input: Input, expect: Expect) -> Case {
    Case { name, input, expect }
}

fn admin(method: &'static str, path: &str, body: Body) -> Input {
    Input::Admin { method, path: path.to_owned(), headers: Vec::new(), body }
}

fn json_body(text: &str) -> Body {
    Body::Bytes(text.as_bytes().to_vec())
}

/// `[[[…]]]`, `DEPTH` deep.
/// A JSON-RPC `abci_query` answer holding `response`.
fn abci(response: Value) -> Vec<u8> {
    json!({"jsonrpc": "2.0", "id": 1, "result": {"response": response}}).to_string().into_bytes()
}

/// An `abci_query` answer of `EpochInfo` with the latest epoch `index`.
fn epoch_info_answer(index: u64) -> Vec<u8> {
    use prost::Message as _;
    let answer = chain_source::query::proto::QueryEpochInfoResponse {
        block_height: 7,
        params: None,
        latest_epoch: Some(chain_source::query::proto::Epoch { index, poc_start_block_height: 1 }),
    };
    abci(json!({"code": 0, "height": "7", "value": BASE64.encode(answer.encode_to_vec())}))
}

fn deep_array() -> String {
    format!("{}{}", "[".repeat(DEPTH), "]".repeat(DEPTH))
}

/// `{"a":{"a":…1…}}`, `DEPTH` deep.
fn deep_object() -> String {
    format!("{}1{}", r#"{"a":"#.repeat(DEPTH), "}".repeat(DEPTH))
}

/// A chat completion for `payloads_for(id)` (the fakes' tokens) whose first top logprob is
/// written as `literal`: `NaN`, `Infinity` and `1e999` are not JSON numbers a float holds.
fn completion_with_logprob(literal: &str) -> Vec<u8> {
    const MARK: f64 = 12_345.5;
    let mut completion: Value = serde_json::from_slice(&payloads_for("x").response).unwrap();
    completion["choices"][0]["logprobs"]["content"][0]["top_logprobs"][0]["logprob"] = json!(MARK);
    completion.to_string().replace(&MARK.to_string(), literal).into_bytes()
}

fn table() -> Vec<Case> {
    let mib_id = "i".repeat(ONE_MIB);
    let recovery = "/admin/v1/recovery";
    let claim = "/admin/v1/claim-reward/recover";
    let unavailable = || PayloadError::Unavailable(String::new());
    let mismatch = || PayloadError::HashMismatch(String::new());
    let decode = || ChainErr::Decode(String::new());
    let good_prompt = payloads_for("raw").prompt.to_vec();
    let good_response = payloads_for("raw").response.to_vec();
    let frame = |height: &str| {
        format!(
            r#"{{"jsonrpc":"2.0","id":"1","result":{{"data":{{"type":"tendermint/event/NewBlock","value":{{"block":{{"header":{{"height":{height}}}}}}}}}}}}}"#
        )
    };
    let event = |kind: &str, attributes: &[(&str, &str)]| TxEvent {
        kind: kind.into(),
        attributes: attributes.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect(),
    };
    vec![
        // --- the admin API ---
        case(
            "recovery epoch_index -1",
            admin("POST", recovery, json_body(r#"{"epoch_index": -1}"#)),
            Expect::Refused(400, "invalid value: integer `-1`"),
        ),
        case(
            "recovery epoch_index 1e30",
            admin("POST", recovery, json_body(r#"{"epoch_index": 1e30}"#)),
            Expect::Refused(400, "invalid type: floating point"),
        ),
        case(
            "recovery epoch_index \"x\"",
            admin("POST", recovery, json_body(r#"{"epoch_index": "x"}"#)),
            Expect::Refused(400, "invalid type: string"),
        ),
        case(
            "recovery epoch_index 2^64",
            admin("POST", recovery, json_body(r#"{"epoch_index": 18446744073709551616}"#)),
            Expect::Refused(400, "bad request body"),
        ),
        case(
            "recovery seed NaN (not JSON)",
            admin("POST", recovery, json_body(r#"{"seed": NaN}"#)),
            Expect::Refused(400, "bad request body"),
        ),
        case(
            "recovery unknown field",
            admin("POST", recovery, json_body(r#"{"epoch_index": 1, "epoch": 2}"#)),
            Expect::Refused(400, "unknown field `epoch`"),
        ),
        case(
            "recovery body not UTF-8",
            admin("POST", recovery, Body::Bytes(vec![0xff, 0xfe, b'{', 0x80])),
            Expect::Refused(400, "bad request body"),
        ),
        case(
            "recovery array nested 10,000 deep",
            admin("POST", recovery, json_body(&deep_array())),
            Expect::Refused(400, "invalid type: sequence"),
        ),
        case(
            "recovery object nested 10,000 deep",
            admin("POST", recovery, json_body(&deep_object())),
            Expect::Refused(400, "unknown field `a`"),
        ),
        case(
            "recovery body of 100 MB, Content-Length",
            admin("POST", recovery, Body::Declared(HUNDRED_MB)),
            Expect::Status(413),
        ),
        case(
            "recovery body of 100 MB, chunked",
            admin("POST", recovery, Body::Chunked(HUNDRED_MB)),
            Expect::Status(413),
        ),
        case(
            "recovery epoch_index u64::MAX",
            admin("POST", recovery, json_body(r#"{"epoch_index": 18446744073709551615}"#)),
            Expect::Run(RunState::Failed(String::new()), "epoch group"),
        ),
        case(
            "claim force_claim \"yes\"",
            admin("POST", claim, json_body(r#"{"force_claim": "yes"}"#)),
            Expect::Refused(400, "invalid type: string"),
        ),
        case(
            "claim epoch_index -1",
            admin("POST", claim, json_body(r#"{"epoch_index": -1}"#)),
            Expect::Refused(400, "invalid value: integer `-1`"),
        ),
        case(
            "claim seed 1e99",
            admin("POST", claim, json_body(r#"{"seed": 1e99}"#)),
            Expect::Refused(400, "invalid type: floating point"),
        ),
        case(
            "claim seed 2^63",
            admin("POST", claim, json_body(r#"{"seed": 9223372036854775808}"#)),
            Expect::Refused(400, "bad request body"),
        ),
        case(
            "claim body nested 10,000 deep",
            admin("POST", claim, json_body(&deep_array())),
            Expect::Refused(400, "invalid type: sequence"),
        ),
        case(
            "inference history, id of 1 MiB",
            admin("GET", &format!("/admin/v1/inferences/{mib_id}"), Body::Empty),
            Expect::Status(431),
        ),
        case(
            "inference history, id of 60 KiB",
            admin("GET", &format!("/admin/v1/inferences/{}", "i".repeat(60 * 1024)), Body::Empty),
            Expect::Refused(404, "the journal has no record"),
        ),
        case(
            "inference history, id not UTF-8",
            admin("GET", "/admin/v1/inferences/%FF%FE", Body::Empty),
            Expect::Status(400),
        ),
        case(
            "recovery run id -1",
            admin("GET", "/admin/v1/recovery/-1", Body::Empty),
            Expect::Refused(400, "is not a number"),
        ),
        case(
            "recovery run id 2^64",
            admin("GET", "/admin/v1/recovery/18446744073709551616", Body::Empty),
            Expect::Refused(400, "is not a number"),
        ),
        case(
            "recovery list limit -5",
            admin("GET", "/admin/v1/recovery?limit=-5", Body::Empty),
            Expect::Status(400),
        ),
        case(
            "header of 1 MiB",
            Input::Admin {
                method: "GET",
                path: "/healthz".into(),
                headers: vec![format!("x-filler: {mib_id}")],
                body: Body::Empty,
            },
            Expect::Status(431),
        ),
        // --- payloads from the executor ---
        case(
            "payload prompt_payload not base64",
            Input::Payload {
                id: "raw-b64".into(),
                answer: Answer::Body(with_field(
                    &signed_answer("raw-b64", &good_prompt, &good_response),
                    "prompt_payload",
                    json!("%%% not base64 %%%"),
                )),
            },
            Expect::Payload(unavailable(), "illegal base64"),
        ),
        case(
            "payload response_payload base64 without padding",
            Input::Payload {
                id: "raw-pad".into(),
                answer: Answer::Body(with_field(
                    &signed_answer("raw-pad", &good_prompt, &good_response),
                    "response_payload",
                    json!("eHk"),
                )),
            },
            Expect::Payload(unavailable(), "illegal base64"),
        ),
        case(
            "payload signature not base64",
            Input::Payload {
                id: "raw-sig".into(),
                answer: Answer::Body(with_field(
                    &signed_answer("raw-sig", &good_prompt, &good_response),
                    "executor_signature",
                    json!("!!!"),
                )),
            },
            Expect::Payload(PayloadError::BadSignature, ""),
        ),
        case(
            "payload answer nested 10,000 deep",
            Input::Payload {
                id: "raw-deep".into(),
                answer: Answer::Body(deep_array().into_bytes()),
            },
            Expect::Payload(unavailable(), "malformed payload answer"),
        ),
        case(
            "payload answer with an unknown field nested 10,000 deep",
            Input::Payload {
                id: "raw-deep-field".into(),
                answer: Answer::Body(with_raw_field(
                    &signed_answer("raw-deep-field", &good_prompt, &good_response),
                    "extra",
                    &deep_array(),
                )),
            },
            Expect::Payload(mismatch(), "response hash"),
        ),
        case(
            "payload answer of 100 MB, Content-Length",
            Input::Payload { id: "raw-huge".into(), answer: Answer::Declared(HUNDRED_MB) },
            Expect::Payload(unavailable(), "answer larger than 33554432 bytes"),
        ),
        case(
            "payload answer of 100 MB, chunked",
            Input::Payload { id: "raw-huge-chunked".into(), answer: Answer::Chunked(HUNDRED_MB) },
            Expect::Payload(unavailable(), "answer larger than 33554432 bytes"),
        ),
        case(
            "payload answer of 100 MB from the fake executor, Content-Length",
            Input::Payload {
                id: "fake-huge".into(),
                answer: Answer::Fake(ExecutorReply::Oversize {
                    bytes: HUNDRED_MB,
                    content_length: true,
                }),
            },
            Expect::Payload(unavailable(), "answer larger than 33554432 bytes"),
        ),
        case(
            "payload signed prompt nested 10,000 deep",
            Input::Payload {
                id: "raw-deep-prompt".into(),
                answer: Answer::Body(signed_answer(
                    "raw-deep-prompt",
                    deep_object().as_bytes(),
                    &good_response,
                )),
            },
            Expect::Payload(mismatch(), "prompt cannot be hashed"),
        ),
        case(
            "payload signed response with a NaN logprob",
            Input::Payload {
                id: "raw-nan".into(),
                answer: Answer::Body(signed_answer(
                    "raw-nan",
                    &good_prompt,
                    &completion_with_logprob("NaN"),
                )),
            },
            Expect::Payload(mismatch(), "response cannot be hashed"),
        ),
        case(
            "payload inference_id of the wrong type",
            Input::Payload {
                id: "raw-type".into(),
                answer: Answer::Body(br#"{"inference_id": 5}"#.to_vec()),
            },
            Expect::Payload(unavailable(), "invalid type: integer"),
        ),
        case(
            "payload inference id of 1 MiB",
            Input::Payload { id: mib_id.clone(), answer: Answer::Fake(ExecutorReply::Serve) },
            // The request cannot be built: the validator's side, never the executor's fault.
            Expect::Payload(PayloadError::Local(String::new()), "builder error"),
        ),
        case(
            "payload not base64, through the engine",
            Input::EngineWithPayload(Served::Body(
                br#"{"prompt_payload": "%%%", "response_payload": "%%%"}"#.to_vec(),
            )),
            Expect::Invalidated(InvalidationReason::PayloadUnavailable),
        ),
        case(
            "executor response with a 1e999 logprob, through the engine",
            Input::EngineWithPayload(Served::Response(completion_with_logprob("1e999"))),
            Expect::Submitted(Verdict::Invalid, 0.0..=0.0),
        ),
        // --- our ML node's answers and their scoring ---
        case(
            "replay answer with a NaN logprob",
            Input::Replay(vec![Reply::Body(completion_with_logprob("NaN").into()); 2]),
            Expect::GaveUp(Stage::Replay, "answer is not JSON"),
        ),
        case(
            "replay answer with an Infinity logprob",
            Input::Replay(vec![Reply::Body(completion_with_logprob("Infinity").into()); 2]),
            Expect::GaveUp(Stage::Replay, "answer is not JSON"),
        ),
        case(
            "replay answer with a 1e999 logprob",
            Input::Replay(vec![Reply::Body(completion_with_logprob("1e999").into()); 2]),
            Expect::GaveUp(Stage::Replay, "number out of range"),
        ),
        case(
            "replay answer with a -1.7e308 logprob",
            Input::Replay(vec![Reply::Body(completion_with_logprob("-1.7e308").into())]),
            Expect::Submitted(Verdict::Similarity, 0.0..=1.0),
        ),
        case(
            "replay answer nested 10,000 deep",
            Input::Replay(vec![Reply::Body(deep_array().into()); 2]),
            Expect::GaveUp(Stage::Replay, "not a chat completion"),
        ),
        case(
            "replay answer of 100 MB, Content-Length",
            Input::Replay(vec![Reply::Oversize { bytes: HUNDRED_MB, content_length: true }; 2]),
            Expect::GaveUp(Stage::Replay, "answer is larger than"),
        ),
        case(
            "replay answer of 100 MB, chunked",
            Input::Replay(vec![Reply::Oversize { bytes: HUNDRED_MB, content_length: false }; 2]),
            Expect::GaveUp(Stage::Replay, "answer is larger than"),
        ),
        // --- chain queries ---
        case(
            "abci_query answer with code 18",
            Input::Query {
                call: QueryCall::EpochInfo,
                answer: Answer::Body(abci(json!({"code": 18, "codespace": "sdk", "log": "bad"}))),
            },
            Expect::Chain(
                ChainErr::Query { code: 0, codespace: String::new(), log: String::new() },
                "code 18",
            ),
        ),
        case(
            "abci_query value that is not base64",
            Input::Query {
                call: QueryCall::EpochInfo,
                answer: Answer::Body(abci(json!({"code": 0, "value": "*not*", "height": "3"}))),
            },
            Expect::Chain(decode(), "value is not base64"),
        ),
        case(
            "abci_query value that is not protobuf",
            Input::Query {
                call: QueryCall::EpochInfo,
                answer: Answer::Body(abci(json!({"code": 0, "value": "/////w==", "height": "3"}))),
            },
            Expect::Chain(decode(), "EpochInfo"),
        ),
        case(
            "abci_query inference of status 9",
            Input::Query {
                call: QueryCall::Inference("q-1"),
                answer: Answer::Body(abci(json!({"code": 0, "height": "3",
                    "value": BASE64.encode([0x0a, 5, 0x12, 1, b'x', 0x58, 9])}))),
            },
            Expect::Chain(decode(), "unknown inference status 9"),
        ),
        case(
            "abci_query epoch_info index u64::MAX",
            Input::Query {
                call: QueryCall::EpochInfo,
                answer: Answer::Body(epoch_info_answer(u64::MAX)),
            },
            Expect::Epoch(u64::MAX),
        ),
        case(
            "query answer of 100 MB, Content-Length",
            Input::Query { call: QueryCall::EpochInfo, answer: Answer::Declared(HUNDRED_MB) },
            Expect::Chain(ChainErr::TooLarge { limit: 0 }, "33554432"),
        ),
        case(
            "epoch with PoC start and length i64::MAX, read by the block triggers",
            Input::Epoch {
                poc_start: i64::MAX,
                params: EpochParams {
                    epoch_length: i64::MAX,
                    poc_stage_duration: i64::MAX,
                    ..EPOCH_PARAMS
                },
            },
            Expect::NothingDue,
        ),
        case(
            "epoch with PoC start i64::MIN and negative stages, read by the block triggers",
            Input::Epoch {
                poc_start: i64::MIN,
                params: EpochParams {
                    epoch_length: i64::MIN,
                    poc_stage_duration: -1,
                    inference_validation_cutoff: i64::MAX,
                    ..EPOCH_PARAMS
                },
            },
            Expect::NothingDue,
        ),
        // --- chain events ---
        case(
            "event with unknown attributes",
            Input::Block(vec![event(
                "inference_validation",
                &[
                    ("colour", "blue"),
                    ("inference_id", "FRESH"),
                    ("needs_revalidation", "true"),
                    ("", ""),
                ],
            )]),
            Expect::Events(1, vec![]),
        ),
        case(
            "event with only unknown attributes",
            Input::Block(vec![event("inference_finished", &[("colour", "blue")])]),
            Expect::Events(0, vec![decode()]),
        ),
        case(
            "event attribute key in base64, value not base64",
            Input::Block(vec![event(
                "inference_finished",
                &[("aW5mZXJlbmNlX2lk", "!!not base64!!")],
            )]),
            Expect::Events(0, vec![decode(), decode()]),
        ),
        case(
            "event attribute value of 1 MiB",
            Input::Block(vec![event("inference_finished", &[("inference_id", &mib_id)])]),
            Expect::Events(0, vec![ChainErr::TooLarge { limit: 0 }, decode()]),
        ),
        case(
            "event of an unknown type",
            Input::Block(vec![event("bogus", &[("inference_id", "x")])]),
            Expect::Events(0, vec![]),
        ),
        case(
            "NewBlock height \"-5\"",
            Input::Frame(frame(r#""-5""#)),
            Expect::Frame(Err(decode())),
        ),
        case(
            "NewBlock height 2^64",
            Input::Frame(frame(r#""18446744073709551616""#)),
            Expect::Frame(Err(decode())),
        ),
        case("NewBlock height 1e30", Input::Frame(frame("1e30")), Expect::Frame(Err(decode()))),
        case(
            "NewBlock height u64::MAX, a height the node does not have",
            Input::Frame(frame(r#""18446744073709551615""#)),
            Expect::Frame(Ok(Frame::NewBlock(u64::MAX))),
        ),
        case(
            "websocket frame nested 10,000 deep",
            Input::Frame(deep_array()),
            Expect::Frame(Err(decode())),
        ),
        case("websocket frame not JSON", Input::Frame("NaN".into()), Expect::Frame(Err(decode()))),
        // --- the engine's entry points ---
        // Ids travel as protobuf fields: the chain is asked about them as they are.
        case(
            "validate an id of 1 MiB",
            Input::Engine(Call::Validate(mib_id.clone())),
            Expect::Skipped(SkipReason::Gone),
        ),
        case(
            "revalidate an id of 1 MiB",
            Input::Engine(Call::Revalidate(mib_id.clone())),
            Expect::Skipped(SkipReason::Gone),
        ),
        case(
            "validate an empty id",
            Input::Engine(Call::Validate(String::new())),
            Expect::Skipped(SkipReason::Gone),
        ),
        case(
            "validate an id the chain does not know",
            Input::Engine(Call::Validate("no-such-inference".into())),
            Expect::Skipped(SkipReason::Gone),
        ),
        case(
            "sample an id of 1 MiB",
            Input::Engine(Call::Sample(vec![mib_id.clone()])),
            Expect::NoneAdmitted,
        ),
        case(
            "sample an empty id",
            Input::Engine(Call::Sample(vec![String::new()])),
            Expect::NoneAdmitted,
        ),
        case(
            "recover epoch u64::MAX",
            Input::Engine(Call::Recover(u64::MAX)),
            Expect::Run(RunState::Failed(String::new()), "epoch group"),
        ),
        // --- devshard: the gRPC service, the executor's session route, our ML node ---
        devshard(
            "devshard: a prompt hash of 31 bytes",
            |r| r.prompt_hash.truncate(31),
            "prompt_hash",
        ),
        devshard(
            "devshard: a response hash of 64 bytes",
            |r| r.response_hash.resize(64, 0),
            "response_hash",
        ),
        devshard("devshard: an empty escrow id", |r| r.escrow_id.clear(), "escrow_id"),
        devshard(
            "devshard: an escrow id with a slash",
            |r| r.escrow_id = "a/../b".into(),
            "escrow_id",
        ),
        devshard("devshard: an empty model", |r| r.model.clear(), "model"),
        devshard(
            "devshard: an unknown model",
            |r| r.model = "no/such-model".into(),
            "no ML node serves",
        ),
        devshard(
            "devshard: a non-bech32 executor",
            |r| r.executor_address = "gonka1notbech32".into(),
            "executor_address",
        ),
        devshard("devshard: inference id 0", |r| r.inference_id = 0, "inference_id"),
        devshard(
            "devshard: a 4 KiB runtime version",
            |r| r.runtime_version = format!("v{}", "4".repeat(4096)),
            "runtime_version",
        ),
        case(
            "devshard: a 1 MiB runtime version",
            Input::Devshard {
                spoil: |r| r.runtime_version = "v".repeat(ONE_MIB),
                executor: None,
                replies: Vec::new(),
            },
            Expect::Grpc(Code::OutOfRange, "message length too large"),
        ),
        case(
            "devshard: payloads whose hash differs from the session's",
            Input::Devshard {
                spoil: |r| r.prompt_hash[0] ^= 0xff,
                executor: None,
                replies: Vec::new(),
            },
            Expect::Judged(Answered::Invalid, "hash_mismatch"),
        ),
        case(
            "devshard: the executor serves a flipped response",
            Input::Devshard {
                spoil: |_| {},
                executor: Some(ExecutorReply::FlipResponse),
                replies: Vec::new(),
            },
            Expect::Judged(Answered::Invalid, "hash_mismatch"),
        ),
        case(
            "devshard: a foreign signature on every attempt",
            Input::Devshard {
                spoil: |_| {},
                executor: Some(ExecutorReply::UnrelatedSignature),
                replies: Vec::new(),
            },
            Expect::Grpc(Code::Unavailable, "signature"),
        ),
        case(
            "devshard: 100 MB of payloads",
            Input::Devshard {
                spoil: |_| {},
                executor: Some(ExecutorReply::Oversize {
                    bytes: HUNDRED_MB,
                    content_length: false,
                }),
                replies: Vec::new(),
            },
            Expect::Grpc(Code::Unavailable, "payload"),
        ),
        case(
            "devshard: a redirect",
            Input::Devshard {
                spoil: |_| {},
                executor: Some(ExecutorReply::Redirect("http://169.254.169.254/".into())),
                replies: Vec::new(),
            },
            Expect::Grpc(Code::Unavailable, "payload"),
        ),
        case(
            "devshard: pruned payloads (404)",
            Input::Devshard {
                spoil: |_| {},
                executor: Some(ExecutorReply::NotFound),
                replies: Vec::new(),
            },
            Expect::Judged(Answered::Skipped, "payload_gone"),
        ),
        case(
            "devshard: claimed completion tokens 10 above the replay's",
            Input::Devshard {
                spoil: |r| r.output_tokens += 10,
                executor: None,
                replies: Vec::new(),
            },
            Expect::Judged(Answered::Invalid, "inflated_tokens"),
        ),
        case(
            "devshard: our ML node answers NaN logprobs",
            Input::Devshard {
                spoil: |_| {},
                executor: None,
                replies: vec![Reply::Body(completion_with_logprob("NaN").into()); 2],
            },
            Expect::Grpc(Code::Unavailable, "replay"),
        ),
        case(
            "devshard: our ML node answers 100 MB",
            Input::Devshard {
                spoil: |_| {},
                executor: None,
                replies: vec![Reply::Oversize { bytes: HUNDRED_MB, content_length: false }; 2],
            },
            Expect::Grpc(Code::Unavailable, "larger than"),
        ),
        case(
            "devshard: our ML node refuses the replay with 422",
            Input::Devshard {
                spoil: |_| {},
                executor: None,
                replies: vec![Reply::Status(422, Default::default())],
            },
            Expect::Judged(Answered::Valid, "ml_rejected"),
        ),
        // --- the NodeManager the live path leases through ---
        case(
            "NodeManager answers a malformed endpoint",
            Input::NodeManager(NodeManagerFault::MalformedEndpoint),
            Expect::Lock(LockError::Broker(String::new()), "endpoint"),
        ),
        case(
            "NodeManager hangs",
            Input::NodeManager(NodeManagerFault::Hangs),
            Expect::Lock(LockError::Broker(String::new()), "timed out"),
        ),
        case(
            "NodeManager loses a lock",
            Input::NodeManager(NodeManagerFault::LosesLock),
            Expect::LostRelease,
        ),
    ]
}

fn devshard(name: &'static str, spoil: Spoil, field: &'static str) -> Case {
    case(
        name,
        Input::Devshard { spoil, executor: None, replies: Vec::new() },
        Expect::Grpc(Code::InvalidArgument, field),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_inputs_get_typed_answers_and_the_node_keeps_serving() {
    let started = Instant::now();
    let mut env = Env::start().await;
    env.still_serves("before the table").await;
    for case in table() {
        let row = Instant::now();
        env.run(&case).await;
        env.still_serves(case.name).await;
        eprintln!("{:>6} ms  {}", row.elapsed().as_millis(), case.name);
    }
    eprintln!("bad-input table: {} ms", started.elapsed().as_millis());
    env.stop().await;
}

// === the environment ===

/// The raw executor's account key.
const RAW_KEY: [u8; 32] = [0x33; 32];

struct Env {
    running: Running,
    outcomes: tokio::sync::broadcast::Receiver<OutcomeEvent>,
    /// Payloads over a directory naming the scenario's executor and the raw executor.
    payloads: HttpPayloadSource,
    raw: RawServer,
    /// The raw executor's address on the chain.
    raw_executor: String,
    rpc: RpcClient,
    service: ValidationServiceClient<Channel>,
    next: usize,
}

impl Env {
    async fn start() -> Self {
        let options = DemoOptions {
            backlog: 0,
            slots: 2,
            ml_latency_ms: 0,
            live_rate: 0.0,
            admin_token_file: Some(crate::temp_path("admin.token")),
            json: true,
            ..DemoOptions::default()
        };
        // The PoC stage is put far ahead: no claim during the table.
        let running = Running::start(&options, |scenario, settings| {
            let tip = i64::try_from(scenario.chain.tip()).unwrap();
            scenario.chain.set_epoch(LIVE_EPOCH, tip + FAR_AHEAD, EPOCH_PARAMS);
            let quick = RetryPolicy::fixed(ATTEMPTS, Duration::from_millis(5));
            settings.core.payload_retry = quick.clone();
            settings.core.replay_retry = quick.clone();
            settings.core.submit_retry = quick;
        })
        .await;
        let outcomes = running.app.engine.outcomes();
        let scenario = &running.scenario;
        scenario.chain.wait_subscriptions(1).await;

        let raw = RawServer::start().await;
        let raw_key = Signer::from_bytes(&RAW_KEY).unwrap();
        let raw_executor = scenario.chain.add_key(&raw_key.public_key());
        scenario.chain.set_participant(&raw_executor, &raw.url());
        let directory = StaticDirectory::new();
        directory.add_executor(&scenario.executor, Vec::new());
        directory.insert(&raw_executor, &raw.url(), vec![raw_key.public_key()]);
        let config =
            PayloadsConfig { allow: vec!["127.0.0.0/8".into()], ..PayloadsConfig::default() };
        let payloads = HttpPayloadSource::new(
            &config,
            &testkit::public_tls(),
            validator_key().unwrap(),
            scenario.address.clone(),
            Arc::new(directory),
        )
        .unwrap();
        let rpc =
            RpcClient::new(&scenario.chain.url(), &testkit::public_tls(), BOUND, 64 << 20).unwrap();
        let service_addr = running.app.service_addr.expect("the validation service is on");
        let service =
            ValidationServiceClient::connect(format!("http://{service_addr}")).await.unwrap();
        Self { running, outcomes, payloads, raw, raw_executor, rpc, service, next: 0 }
    }

    async fn stop(self) {
        self.running.stop().await;
    }

    fn fresh_id(&mut self, tag: &str) -> String {
        self.next += 1;
        format!("bad-input-{tag}-{}", self.next)
    }

    /// A finished inference of the live epoch, with payloads at the scenario's executor.
    fn add_inference(&mut self, tag: &str) -> String {
        let id = self.fresh_id(tag);
        let (chain, executor) = (&self.running.scenario.chain, &self.running.scenario.executor);
        chain.add_inference(&id, LIVE_EPOCH, executor.address());
        executor.insert_generated(&id, LIVE_EPOCH);
        chain.put_inference(executor.inference(&id).unwrap());
        id
    }

    /// The outcome of `id`'s validation (or revalidation), from the engine's outcome stream.
    async fn outcome_of(&mut self, id: &str) -> Outcome {
        let wait = async {
            loop {
                match self.outcomes.recv().await {
                    Ok(event) if event.inference_id.as_str() == id => return event.outcome,
                    Ok(_) | Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => panic!("the engine's outcome stream closed"),
                }
            }
        };
        let shown = &id[..id.len().min(40)];
        match tokio::time::timeout(BOUND, wait).await {
            Ok(outcome) => outcome,
            Err(_) => {
                let status = self.running.app.engine.status();
                panic!(
                    "no outcome for {shown}… within {BOUND:?}: {} in use, {} admitted, outcomes {:?}",
                    status.slots_in_use, status.admitted, status.outcomes
                )
            }
        }
    }

    async fn admin(
        &self,
        method: &str,
        path: &str,
        headers: &[String],
        body: &Body,
    ) -> (u16, String) {
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nhost: validator\r\nauthorization: Bearer {}\r\nconnection: close\r\n",
            self.running.app.token
        );
        for header in headers {
            head.push_str(header);
            head.push_str("\r\n");
        }
        let body = match body {
            Body::Empty => Outgoing::Bytes(Vec::new()),
            Body::Bytes(bytes) => {
                head.push_str(&format!(
                    "content-type: application/json\r\ncontent-length: {}\r\n",
                    bytes.len()
                ));
                Outgoing::Bytes(bytes.clone())
            }
            Body::Declared(len) => {
                head.push_str(&format!("content-length: {len}\r\n"));
                Outgoing::Filler(*len)
            }
            Body::Chunked(len) => {
                head.push_str("transfer-encoding: chunked\r\n");
                Outgoing::Chunked(*len)
            }
        };
        head.push_str("\r\n");
        exchange(self.running.app.admin_addr, head.into_bytes(), body).await
    }

    /// The node still serves: health, status, a validation and a chain event each go through.
    async fn still_serves(&mut self, after: &str) {
        let (status, body) = self.admin("GET", "/healthz", &[], &Body::Empty).await;
        assert_eq!(status, 200, "after {after}: /healthz answered {body}");
        let status = self.running.app.engine.status();
        assert!(status.accepting, "after {after}: the engine stopped admitting");

        let id = self.add_inference("ok");
        assert_eq!(self.running.app.engine.validate(id.clone().into()), Ok(Admission::Admitted));
        let outcome = self.outcome_of(&id).await;
        assert!(
            matches!(outcome, Outcome::Submitted { verdict: Verdict::Similarity, value, .. } if value == 1.0),
            "after {after}: a normal validation ended {outcome:?}"
        );

        let id = self.add_inference("event");
        self.running.scenario.chain.produce_block(vec![vec![TxEvent::inference_validation(
            &id,
            "gonka1other",
            true,
        )]]);
        let outcome = self.outcome_of(&id).await;
        assert!(
            matches!(outcome, Outcome::Submitted { .. }),
            "after {after}: a revalidation event ended {outcome:?}"
        );
    }

    async fn run(&mut self, case: &Case) {
        let name = case.name;
        match (&case.input, &case.expect) {
            (Input::Admin { method, path, headers, body }, expect) => {
                let (status, text) = self.admin(method, path, headers, body).await;
                match expect {
                    Expect::Refused(expected, message) => {
                        assert_eq!(status, *expected, "{name}: {text}");
                        let body: Value = serde_json::from_str(&text)
                            .unwrap_or_else(|_| panic!("{name}: not JSON: {text}"));
                        let error =
                            body["error"].as_str().unwrap_or_else(|| panic!("{name}: {text}"));
                        assert!(error.contains(message), "{name}: {error}");
                    }
                    Expect::Status(expected) => {
                        assert_eq!(status, *expected, "{name}: {}", excerpt(&text));
                    }
                    Expect::Run(state, message) => {
                        assert_eq!(status, 202, "{name}: {text}");
                        let body: Value = serde_json::from_str(&text).unwrap();
                        let run =
                            self.running.app.engine.run(body["run_id"].as_u64().unwrap()).unwrap();
                        self.run_ends(name, run, state, message).await;
                    }
                    _ => panic!("{name}: no such expectation for the admin API"),
                }
            }
            (Input::Payload { id, answer }, Expect::Payload(expected, message)) => {
                let inference = self.serve_payload(id, answer);
                let fetched = tokio::time::timeout(BOUND, self.payloads.fetch(&inference))
                    .await
                    .unwrap_or_else(|_| panic!("{name}: the fetch did not end"));
                match fetched {
                    Err(err) => {
                        let text = err.to_string();
                        assert_eq!(
                            discriminant(&err),
                            discriminant(expected),
                            "{name}: {}",
                            excerpt(&text)
                        );
                        assert!(text.contains(message), "{name}: {}", excerpt(&text));
                    }
                    Ok(payloads) => panic!("{name}: fetched {} bytes", payloads.response.len()),
                }
                // The same source goes on fetching well-formed answers.
                let id = self.add_inference("payload");
                let inference = self.running.scenario.executor.inference(&id).unwrap();
                assert_eq!(
                    self.payloads.fetch(&inference).await,
                    Ok(payloads_for(&id)),
                    "after {name}"
                );
            }
            (Input::EngineWithPayload(served), expect) => {
                let id = self.fresh_id("raw");
                self.raw.set(Answer::Body(match served {
                    Served::Body(body) => body.clone(),
                    Served::Response(response) => {
                        signed_answer(&id, &payloads_for(&id).prompt, response)
                    }
                }));
                let mut inference = validator_core::testing::finished_inference(
                    &id,
                    LIVE_EPOCH,
                    &self.raw_executor,
                );
                inference.model = MODEL.into();
                self.running.scenario.chain.put_inference(inference);
                assert_eq!(
                    self.running.app.engine.validate(id.clone().into()),
                    Ok(Admission::Admitted)
                );
                let outcome = self.outcome_of(&id).await;
                check_outcome(name, &outcome, expect);
            }
            (Input::Devshard { spoil, executor, replies }, expect) => {
                self.next += 1;
                let escrow = format!("bad-input-{}", self.next);
                let scenario = &self.running.scenario;
                scenario.executor.insert_devshard_generated(&escrow, 1, LIVE_EPOCH);
                let job = scenario.executor.devshard_job(&escrow, 1).unwrap();
                if let Some(reply) = executor {
                    let replies = std::iter::repeat_n(reply.clone(), usize::from(ATTEMPTS));
                    scenario.executor.script_devshard(&escrow, 1, replies);
                }
                scenario.ml.as_ref().unwrap().script(replies.iter().cloned());
                let mut request = validator_bin::service::validate_request(&job);
                spoil(&mut request);
                let mut call = tonic::Request::new(request);
                let token = format!("Bearer {}", self.running.app.token);
                call.metadata_mut().insert("authorization", token.parse().unwrap());
                let Ok(answer) = tokio::time::timeout(BOUND, self.service.validate(call)).await
                else {
                    panic!("{name}: no answer");
                };
                match (answer, expect) {
                    (Err(status), Expect::Grpc(code, message)) => {
                        assert_eq!(status.code(), *code, "{name}: {}", excerpt(status.message()));
                        assert!(
                            status.message().contains(message),
                            "{name}: {}",
                            excerpt(status.message())
                        );
                    }
                    (Ok(response), Expect::Judged(verdict, reason)) => {
                        let response = response.into_inner();
                        assert_eq!(response.verdict(), *verdict, "{name}: {response:?}");
                        assert_eq!(response.reason, *reason, "{name}");
                    }
                    (answer, _) => panic!("{name}: {}", excerpt(&format!("{answer:?}"))),
                }
            }
            (Input::NodeManager(fault), expect) => {
                let node_manager = LoopbackNodeManager::start().await;
                node_manager.add_node("bad-input-node", MODEL, "http://127.0.0.1:9", 2);
                let mut config = ml_client::Config {
                    broker: ml_client::Broker::NodeManager,
                    ..ml_client::Config::default()
                };
                config.node_manager.url = Some(node_manager.url());
                config.node_manager.timeout = Duration::from_millis(300);
                let broker = NodeManagerBroker::new(&config).unwrap();
                let wanted = LeaseRequest::model(MODEL);
                match (fault, expect) {
                    (NodeManagerFault::LosesLock, Expect::LostRelease) => {
                        let lease = broker.acquire(&wanted).await.unwrap();
                        assert_eq!(node_manager.lose_all_locks(), 1, "{name}");
                        lease.release(NodeHealth::Healthy);
                        broker.drain_releases().await;
                        assert_eq!(broker.status().counters.lost_locks, 1, "{name}");
                    }
                    (fault, Expect::Lock(expected, message)) => {
                        match fault {
                            NodeManagerFault::MalformedEndpoint => {
                                node_manager.answer_endpoint(Some("not a url"));
                            }
                            NodeManagerFault::Hangs => node_manager.set_hang(true),
                            NodeManagerFault::LosesLock => unreachable!("{name}"),
                        }
                        let err = broker.acquire(&wanted).await.unwrap_err();
                        assert_eq!(discriminant(&err), discriminant(expected), "{name}: {err}");
                        assert!(err.to_string().contains(message), "{name}: {err}");
                        node_manager.answer_endpoint(None);
                        node_manager.set_hang(false);
                    }
                    _ => panic!("{name}: the fault and the expectation do not go together"),
                }
                // The broker goes on leasing once the NodeManager behaves.
                let lease = broker.acquire(&wanted).await;
                assert!(lease.is_ok(), "{name}: {lease:?}");
            }
            (Input::Replay(replies), expect) => {
                let id = self.add_inference("replay");
                self.running.scenario.ml.as_ref().unwrap().script(replies.iter().cloned());
                assert_eq!(
                    self.running.app.engine.validate(id.clone().into()),
                    Ok(Admission::Admitted)
                );
                let outcome = self.outcome_of(&id).await;
                check_outcome(name, &outcome, expect);
            }
            (Input::Query { call, answer }, expect) => {
                self.raw.set(answer.clone());
                let rpc = RpcClient::new(
                    &self.raw.url(),
                    &testkit::public_tls(),
                    BOUND,
                    QueryConfig::default().max_response_bytes,
                )
                .unwrap();
                let query = QueryClient::new(&QueryConfig::default(), Arc::new(rpc));
                let result = match call {
                    QueryCall::EpochInfo => query.epoch_info().await.map(|info| info.epoch_index),
                    QueryCall::Inference(id) => {
                        query.inference(&(*id).into()).await.map(|i| i.epoch_id)
                    }
                };
                match (result, expect) {
                    (Err(err), Expect::Chain(expected, message)) => {
                        let text = err.to_string();
                        assert_eq!(
                            discriminant(&err),
                            discriminant(expected),
                            "{name}: {}",
                            excerpt(&text)
                        );
                        assert!(text.contains(message), "{name}: {}", excerpt(&text));
                    }
                    (Ok(epoch), Expect::Epoch(expected)) => assert_eq!(epoch, *expected, "{name}"),
                    (result, _) => panic!("{name}: {}", excerpt(&format!("{result:?}"))),
                }
                // The same client goes on decoding well-formed answers.
                self.raw.set(Answer::Body(epoch_info_answer(3)));
                assert_eq!(
                    query.epoch_info().await.map(|info| info.epoch_index),
                    Ok(3),
                    "after {name}"
                );
            }
            (Input::Block(events), Expect::Events(count, rejected)) => {
                let id = self.add_inference("attr");
                let events: Vec<TxEvent> = events
                    .iter()
                    .map(|event| TxEvent {
                        kind: event.kind.clone(),
                        attributes: event
                            .attributes
                            .iter()
                            .map(|(k, v)| {
                                (k.clone(), if v == "FRESH" { id.clone() } else { v.clone() })
                            })
                            .collect(),
                    })
                    .collect();
                let height = self.running.scenario.chain.produce_block(vec![events]);
                let results = self.rpc.block_results(height).await.unwrap();
                let decoded = decode_block_results(height, &results).unwrap();
                assert_eq!(decoded.events.len(), *count, "{name}: {decoded:?}");
                let kinds: Vec<_> = decoded.rejected.iter().map(discriminant).collect();
                let expected: Vec<_> = rejected.iter().map(discriminant).collect();
                assert_eq!(kinds, expected, "{name}: {:?}", decoded.rejected);
                if *count > 0 {
                    // The revalidation the event asks for, decoded past its unknown attributes.
                    let outcome = self.outcome_of(&id).await;
                    assert!(matches!(outcome, Outcome::Submitted { .. }), "{name}: {outcome:?}");
                }
            }
            (Input::Frame(text), Expect::Frame(expected)) => {
                let decoded = decode_frame(text);
                match (&decoded, expected) {
                    (Ok(frame), Ok(expected)) => assert_eq!(frame, expected, "{name}"),
                    (Err(err), Err(expected)) => {
                        assert_eq!(discriminant(err), discriminant(expected), "{name}: {err}");
                    }
                    _ => panic!("{name}: {decoded:?}"),
                }
                self.running.scenario.chain.send_frame(text.clone());
            }
            (Input::Epoch { poc_start, params }, Expect::NothingDue) => {
                let chain = &self.running.scenario.chain;
                chain.set_epoch(LIVE_EPOCH, *poc_start, *params);
                let info = self.running.app.chain.epoch_info().await.unwrap();
                assert_eq!(
                    (info.poc_start_block_height, info.params),
                    (*poc_start, *params),
                    "{name}"
                );
                let schedule = EpochSchedule::from(&info);
                let height = i64::try_from(chain.tip()).unwrap();
                assert!(!claim_due(&self.running.scenario.address, height, &schedule), "{name}");
                for at in [height, i64::MIN, i64::MAX] {
                    assert!(!reward_recovery_due(at, 0, Some(at), &schedule), "{name}: at {at}");
                    let _ = schedule.phase(at);
                    let _ = claim_due(&self.running.scenario.address, at, &schedule);
                }
                // The block triggers read the epoch again once their copy is this many blocks old; the
                // revalidation that follows shows it got past these blocks.
                chain.advance(SCHEDULE_REFRESH_BLOCKS + 1);
                let id = self.add_inference("epoch");
                self.running.scenario.chain.produce_block(vec![vec![
                    TxEvent::inference_validation(&id, "gonka1other", true),
                ]]);
                let outcome = self.outcome_of(&id).await;
                assert!(matches!(outcome, Outcome::Submitted { .. }), "{name}: {outcome:?}");
                let tip = i64::try_from(self.running.scenario.chain.tip()).unwrap();
                self.running.scenario.chain.set_epoch(LIVE_EPOCH, tip + FAR_AHEAD, EPOCH_PARAMS);
            }
            (Input::Engine(call), expect) => self.call(name, call, expect).await,
            _ => panic!("{name}: the input and the expectation do not go together"),
        }
    }

    async fn call(&mut self, name: &str, call: &Call, expect: &Expect) {
        let engine = self.running.app.engine.clone();
        match (call, expect) {
            (Call::Validate(id), _) => {
                assert_eq!(engine.validate(id.clone().into()), Ok(Admission::Admitted), "{name}");
                let outcome = self.outcome_of(id).await;
                check_outcome(name, &outcome, expect);
            }
            (Call::Revalidate(id), _) => {
                assert_eq!(engine.revalidate(id.clone().into()), Ok(Admission::Admitted), "{name}");
                let outcome = self.outcome_of(id).await;
                check_outcome(name, &outcome, expect);
            }
            (Call::Sample(ids), Expect::NoneAdmitted) => {
                let before = engine.status().admitted;
                let ids = ids.iter().cloned().map(Into::into).collect();
                assert_eq!(engine.sample(ids), Ok(()), "{name}");
                // The intake takes batches in order: once this one is validated, the one before
                // has been decided on.
                let fence = self.add_inference("fence");
                assert_eq!(engine.sample(vec![fence.clone().into()]), Ok(()), "{name}");
                let outcome = self.outcome_of(&fence).await;
                assert!(matches!(outcome, Outcome::Submitted { .. }), "{name}: {outcome:?}");
                assert_eq!(
                    engine.status().admitted,
                    before + 1,
                    "{name}: only the fence was admitted"
                );
            }
            (Call::Recover(epoch), Expect::Run(state, message)) => {
                let start = engine.recover(*epoch, 1).unwrap();
                assert!(matches!(start, validator_core::RecoveryStart::Started(_)), "{name}");
                self.run_ends(name, start.handle().clone(), state, message).await;
            }
            _ => panic!("{name}: the call and the expectation do not go together"),
        }
    }

    async fn run_ends(
        &self,
        name: &str,
        run: validator_core::RunHandle,
        expected: &RunState,
        message: &str,
    ) {
        let report = tokio::time::timeout(BOUND, run.wait())
            .await
            .unwrap_or_else(|_| panic!("{name}: the run did not end"));
        assert_eq!(discriminant(&report.state), discriminant(expected), "{name}: {report:?}");
        if let RunState::Failed(why) = &report.state {
            assert!(why.contains(message), "{name}: {why}");
        }
    }

    /// The inference whose payloads `answer` serves, scripted on the right executor.
    fn serve_payload(&self, id: &str, answer: &Answer) -> Inference {
        let executor = &self.running.scenario.executor;
        match answer {
            Answer::Fake(reply) => {
                executor.script(id, [reply.clone()]);
                let mut inference =
                    validator_core::testing::finished_inference(id, LIVE_EPOCH, executor.address());
                inference.model = MODEL.into();
                inference
            }
            raw => {
                self.raw.set(raw.clone());
                let prompt_hash = hash::prompt_hash(&payloads_for("raw").prompt).unwrap();
                Inference {
                    inference_id: id.into(),
                    model: MODEL.into(),
                    epoch_id: LIVE_EPOCH,
                    executed_by: self.raw_executor.clone(),
                    status: InferenceStatus::Finished,
                    prompt_hash,
                    response_hash: "0".repeat(64),
                    prompt_payload: String::new(),
                    response_payload: String::new(),
                }
            }
        }
    }
}

fn check_outcome(name: &str, outcome: &Outcome, expect: &Expect) {
    let ok = match (expect, outcome) {
        (Expect::Submitted(verdict, range), Outcome::Submitted { verdict: v, value, .. }) => {
            v == verdict && range.contains(value)
        }
        (Expect::Invalidated(reason), Outcome::Invalidated { reason: r, .. }) => r == reason,
        (Expect::Skipped(reason), Outcome::Skipped { reason: r }) => r == reason,
        (Expect::GaveUp(stage, message), Outcome::GaveUp { stage: s, error }) => {
            s == stage && error.contains(message)
        }
        _ => false,
    };
    assert!(ok, "{name}: ended {}", excerpt(&format!("{outcome:?}")));
}

fn excerpt(text: &str) -> &str {
    let mut end = text.len().min(300);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The raw executor's signed answer for `id` serving `prompt` and `response`.
fn signed_answer(id: &str, prompt: &[u8], response: &[u8]) -> Vec<u8> {
    let key = Signer::from_bytes(&RAW_KEY).unwrap();
    let address = executor_address();
    let message = wire::executor_signed_bytes(id, prompt, response, &address);
    json!({
        "inference_id": id,
        "prompt_payload": wire::encode_base64(prompt),
        "response_payload": wire::encode_base64(response),
        "executor_signature": wire::encode_base64(&key.sign(&message)),
    })
    .to_string()
    .into_bytes()
}

/// The raw executor's address, as the fake chain derives it from its key.
fn executor_address() -> String {
    let key = Signer::from_bytes(&RAW_KEY).unwrap();
    chain_source::tx::address_of(&key.public_key(), testkit::chain_node::ADDRESS_PREFIX).unwrap()
}

/// `answer` with `field` set to `value`.
fn with_field(answer: &[u8], field: &str, value: Value) -> Vec<u8> {
    let mut answer: Value = serde_json::from_slice(answer).unwrap();
    answer[field] = value;
    answer.to_string().into_bytes()
}

/// `answer` (a JSON object) with `field` first, its value written as `raw`, which a
/// [`Value`] could not hold.
fn with_raw_field(answer: &[u8], field: &str, raw: &str) -> Vec<u8> {
    let rest = answer.strip_prefix(b"{").unwrap();
    let mut out = format!("{{\"{field}\":{raw},").into_bytes();
    out.extend_from_slice(rest);
    out
}

// === raw HTTP on loopback ===

/// What a raw exchange writes after the head.
enum Outgoing {
    Bytes(Vec<u8>),
    Filler(u64),
    Chunked(u64),
}

static FILLER: [u8; 64 * 1024] = [b' '; 64 * 1024];

/// Writes `outgoing` lazily: as much as the peer reads, up to its length. Write errors end it
/// (the peer refused the rest and closed).
async fn write_body(writer: &mut (impl tokio::io::AsyncWrite + Unpin), outgoing: Outgoing) {
    let mut left = match outgoing {
        Outgoing::Bytes(bytes) => {
            let _ = writer.write_all(&bytes).await;
            return;
        }
        Outgoing::Filler(len) | Outgoing::Chunked(len) => len,
    };
    let chunked = matches!(outgoing, Outgoing::Chunked(_));
    while left > 0 {
        let n = left.min(FILLER.len() as u64) as usize;
        let written = if chunked {
            let mut chunk = format!("{n:x}\r\n").into_bytes();
            chunk.extend_from_slice(&FILLER[..n]);
            chunk.extend_from_slice(b"\r\n");
            writer.write_all(&chunk).await
        } else {
            writer.write_all(&FILLER[..n]).await
        };
        if written.is_err() {
            return;
        }
        left -= n as u64;
    }
    if chunked {
        let _ = writer.write_all(b"0\r\n\r\n").await;
    }
}

/// One request on a fresh connection: writes `head` then `body` while reading the answer, and
/// returns the answer's status and body.
async fn exchange(addr: SocketAddr, head: Vec<u8>, body: Outgoing) -> (u16, String) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let writing = tokio::spawn(async move {
        if writer.write_all(&head).await.is_ok() {
            write_body(&mut writer, body).await;
        }
        writer
    });
    let reading = async {
        let mut answer = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if let Some(total) = complete_length(&answer) {
                if answer.len() >= total {
                    break;
                }
            }
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
        answer
    };
    let answer = tokio::time::timeout(BOUND, reading).await.expect("the server answers");
    writing.abort();
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        panic!("no HTTP answer: {:?}", excerpt(&text));
    });
    (status, body.to_owned())
}

/// The full length of an answer with a `content-length`, once its head has arrived.
fn complete_length(answer: &[u8]) -> Option<usize> {
    let end = answer.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&answer[..end]).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|value| value.trim().parse::<usize>().ok())?;
    Some(end + length)
}

/// An HTTP server on loopback that answers every request with the [`Answer`] set last, byte
/// for byte and without looking at the request beyond its head.
struct RawServer {
    addr: SocketAddr,
    answer: Arc<Mutex<Arc<Answer>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawServer {
    async fn start() -> Self {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let answer = Arc::new(Mutex::new(Arc::new(Answer::Body(b"{}".to_vec()))));
        let current = Arc::clone(&answer);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let answer = Arc::clone(&current.lock().unwrap());
                tokio::spawn(answer_raw(stream, answer));
            }
        });
        Self { addr, answer, task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn set(&self, answer: Answer) {
        *self.answer.lock().unwrap() = Arc::new(answer);
    }
}

async fn answer_raw(mut stream: TcpStream, answer: Arc<Answer>) {
    let mut request = Vec::new();
    let mut buf = [0u8; 8192];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let (length, body) = match &*answer {
        Answer::Body(bytes) => {
            (format!("content-length: {}", bytes.len()), Outgoing::Bytes(bytes.clone()))
        }
        Answer::Declared(len) => (format!("content-length: {len}"), Outgoing::Filler(*len)),
        Answer::Chunked(len) => ("transfer-encoding: chunked".to_owned(), Outgoing::Chunked(*len)),
        Answer::Fake(_) => return,
    };
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n{length}\r\nconnection: close\r\n\r\n"
    );
    if stream.write_all(head.as_bytes()).await.is_ok() {
        write_body(&mut stream, body).await;
    }
}
