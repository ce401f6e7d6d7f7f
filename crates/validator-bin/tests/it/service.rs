//! The gRPC validation service of a running app, over loopback: the bearer token, the
//! statuses the proto names for malformed requests, and the service still serving after each.

use tonic::{metadata::MetadataValue, transport::Channel, Code, Request};
use validator_core::testing::MODEL;
use validator_demo::DemoOptions;
use validator_proto::validator::v1::{
    validation_service_client::ValidationServiceClient, ValidateRequest,
};

use crate::Running;

const EXECUTOR: &str = "gonka1qypqxpq9qcrsszg2pvxq6rs0zqg3yyc50htqp7";

async fn start() -> Running {
    let options = DemoOptions {
        backlog: 1,
        live_rate: 0.0,
        admin_token_file: Some(crate::temp_path("admin.token")),
        json: true,
        ..DemoOptions::default()
    };
    Running::start(&options, |_, _| {}).await
}

async fn client(running: &Running) -> ValidationServiceClient<Channel> {
    let address = running.app.service_addr.expect("the service is on");
    ValidationServiceClient::connect(format!("http://{address}")).await.unwrap()
}

fn request() -> ValidateRequest {
    ValidateRequest {
        inference_id: 7,
        model: MODEL.into(),
        prompt_hash: vec![1; 32],
        response_hash: vec![2; 32],
        input_tokens: 12,
        output_tokens: 5,
        escrow_id: "42".into(),
        epoch_id: 10,
        executor_address: EXECUTOR.into(),
        runtime_version: "v4".into(),
        challenged: false,
    }
}

/// Makes a well-formed request malformed in one way.
type Spoil = fn(&mut ValidateRequest);

fn authorized(token: &str, body: ValidateRequest) -> Request<ValidateRequest> {
    let mut request = Request::new(body);
    let value = MetadataValue::try_from(format!("Bearer {token}")).unwrap();
    request.metadata_mut().insert("authorization", value);
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_wants_the_token_and_names_each_malformed_field() {
    let running = start().await;
    let token = running.app.token.to_string();
    let mut client = client(&running).await;

    let status = client.validate(Request::new(request())).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let status = client.validate(authorized("wrong", request())).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);

    let rows: Vec<(&str, Spoil)> = vec![
        ("prompt_hash", |r| r.prompt_hash = vec![0; 31]),
        ("response_hash", |r| r.response_hash = vec![0; 33]),
        ("escrow_id", |r| r.escrow_id.clear()),
        ("model", |r| r.model.clear()),
        ("executor_address", |r| r.executor_address = "not-bech32".into()),
        ("inference_id", |r| r.inference_id = 0),
        ("runtime_version", |r| r.runtime_version = format!("v{}", "4".repeat(4096))),
        ("no ML node serves model", |r| r.model = "unknown/model".into()),
    ];
    for (field, spoil) in rows {
        let mut body = request();
        spoil(&mut body);
        let status = client.validate(authorized(&token, body)).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert!(status.message().contains(field), "{field}: {}", status.message());
    }
    // A request far above any real one is refused by the transport, and the service stays up.
    let mut huge = request();
    huge.model = "m".repeat(1 << 20);
    let status = client.validate(authorized(&token, huge)).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    let status = client.validate(authorized(&token, request())).await;
    assert!(
        !matches!(status, Err(ref s) if s.code() == Code::InvalidArgument),
        "a well-formed request is admitted: {status:?}"
    );
    running.stop().await;
}
