use std::time::Duration;

use serde_json::{json, Value};
use testkit::Reply;
use validator_demo::{DemoOptions, BACKLOG_EPOCH};

use crate::Running;

const BACKLOG: usize = 8;

/// An app on the fakes whose replays all hang, so a recovery run stays in flight.
async fn start() -> Running {
    let options = DemoOptions {
        backlog: BACKLOG,
        slots: 2,
        replay_timeout_ms: 60_000,
        live_rate: 0.0,
        admin_token_file: Some(crate::temp_path("admin.token")),
        json: true,
        ..DemoOptions::default()
    };
    Running::start(&options, |scenario, _| {
        scenario.ml.as_ref().unwrap().script(std::iter::repeat_n(Reply::Hang, 64));
    })
    .await
}

fn client() -> reqwest::Client {
    testkit::public_tls().http_client_builder().timeout(Duration::from_secs(10)).build().unwrap()
}

async fn send(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let body = response.text().await.unwrap();
    (status, serde_json::from_str(&body).unwrap_or(Value::String(body)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_is_enforced_except_on_health() {
    let running = start().await;
    let app = &running.app;
    let base = format!("http://{}", app.admin_addr);
    let http = client();
    let (status, _) = send(http.get(format!("{base}/healthz"))).await;
    assert_eq!(status, 200);
    let (status, body) = send(http.get(format!("{base}/admin/v1/status"))).await;
    assert_eq!(status, 401);
    assert!(body["error"].is_string());
    let (status, _) = send(http.get(format!("{base}/admin/v1/status")).bearer_auth("wrong")).await;
    assert_eq!(status, 401);
    let (status, _) = send(http.post(format!("{base}/admin/v1/recovery"))).await;
    assert_eq!(status, 401);
    let (status, body) =
        send(http.get(format!("{base}/admin/v1/status")).bearer_auth(&*app.token)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["engine"]["slots_capacity"], 2);
    assert_eq!(body["nodes"][0]["id"], "demo-ml");
    let (status, _) =
        send(http.get(format!("{base}/admin/v1/recovery/nope")).bearer_auth(&*app.token)).await;
    assert_eq!(status, 400);
    let (status, _) =
        send(http.get(format!("{base}/admin/v1/recovery/999")).bearer_auth(&*app.token)).await;
    assert_eq!(status, 404);
    let (status, _) = send(
        http.post(format!("{base}/admin/v1/recovery"))
            .bearer_auth(&*app.token)
            .body(vec![b' '; 100 * 1024]),
    )
    .await;
    assert_eq!(status, 413, "bodies are capped");
    // Every client error is JSON with an `error`, the extractors' rejections too.
    for (request, expected) in [
        (http.get(format!("{base}/admin/v1/recovery?limit=many")), 400),
        (http.get(format!("{base}/admin/v1/recovery?limit=-1")), 400),
        (http.delete(format!("{base}/admin/v1/status")), 405),
        (http.post(format!("{base}/admin/v1/recovery")).body(vec![b' '; 100 * 1024]), 413),
        (http.get(format!("{base}/nowhere")), 404),
    ] {
        let (status, body) = send(request.bearer_auth(&*app.token)).await;
        assert_eq!(status, expected, "{body}");
        assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "{status}: {body}");
    }

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&app.token_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_simultaneous_triggers_start_one_run() {
    let running = start().await;
    let (scenario, app) = (&running.scenario, &running.app);
    let base = format!("http://{}", app.admin_addr);
    let http = client();
    let trigger = || {
        send(
            http.post(format!("{base}/admin/v1/recovery"))
                .bearer_auth(&*app.token)
                .body(json!({"epoch_index": BACKLOG_EPOCH}).to_string()),
        )
    };
    let (a, b) = tokio::join!(trigger(), trigger());
    let mut answers = [a, b];
    answers.sort_by_key(|(status, _)| *status);
    let [(started, first), (conflict, second)] = answers;
    assert_eq!((started, conflict), (202, 409), "{first} {second}");
    assert_eq!(first["state"], "started");
    assert_eq!(second["state"], "already_running");
    assert_eq!(first["run_id"], second["run_id"]);

    // The replays hang, so the run is still going: a lookup shows its counts.
    scenario.ml.as_ref().unwrap().wait_in_flight(2).await;
    let run_id = first["run_id"].as_u64().unwrap();
    let (status, run) =
        send(http.get(format!("{base}/admin/v1/recovery/{run_id}")).bearer_auth(&*app.token)).await;
    assert_eq!(status, 200, "{run}");
    assert_eq!(run["run_id"], run_id);
    assert_eq!(run["epoch"], BACKLOG_EPOCH);
    assert!(run["outcomes"].is_object(), "{run}");

    let (status, body) =
        send(http.get(format!("{base}/admin/v1/status")).bearer_auth(&*app.token)).await;
    assert_eq!(status, 200);
    assert_eq!(body["current_run"]["run_id"], run_id);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_prometheus_text() {
    let running = start().await;
    let (scenario, app) = (&running.scenario, &running.app);
    app.engine.recover(BACKLOG_EPOCH, 1).unwrap();
    scenario.ml.as_ref().unwrap().wait_in_flight(2).await;
    validator_bin::telemetry::record_nodes(&app.pool);
    let (status, body) = send(client().get(format!("http://{}/metrics", app.metrics_addr))).await;
    assert_eq!(status, 200);
    let text = body.as_str().unwrap();
    let mut names = std::collections::BTreeSet::new();
    let (mut typed, mut helped) =
        (std::collections::BTreeSet::new(), std::collections::BTreeSet::new());
    for line in text.lines().filter(|line| !line.is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            typed.insert(rest.split_whitespace().next().unwrap().to_owned());
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let mut words = rest.split_whitespace();
            helped.insert(words.next().unwrap().to_owned());
            assert!(words.next().is_some(), "an empty help: {line}");
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.split_whitespace();
            let kind = words.next().unwrap();
            assert!(matches!(kind, "HELP" | "TYPE"), "{line}");
            if kind == "TYPE" {
                let _name = words.next().unwrap();
                let ty = words.next().unwrap();
                assert!(
                    matches!(ty, "counter" | "gauge" | "histogram" | "summary" | "untyped"),
                    "{line}"
                );
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap();
        assert!(value.parse::<f64>().is_ok() || matches!(value, "+Inf" | "-Inf" | "NaN"), "{line}");
        let name = series.split('{').next().unwrap();
        assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'), "{line}");
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                assert!(labels.starts_with('{') && labels.ends_with('}'), "{line}");
                for pair in labels[1..labels.len() - 1].split("\",").filter(|p| !p.is_empty()) {
                    let (key, value) = pair.split_once('=').unwrap();
                    assert!(key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "{line}");
                    assert!(value.starts_with('"'), "{line}");
                }
            }
        }
        names.insert(name.to_owned());
    }
    for expected in [
        "validator_slots_capacity",
        "validator_slots_in_use",
        "validator_ml_node_up",
        "validator_build_info",
    ] {
        assert!(names.contains(expected), "{expected} missing from:\n{text}");
    }
    let unhelped: Vec<_> = typed.difference(&helped).collect();
    assert!(unhelped.is_empty(), "no # HELP for {unhelped:?}");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_and_status_follow_the_chain() {
    let running = start().await;
    let (scenario, app) = (&running.scenario, &running.app);
    let base = format!("http://{}", app.admin_addr);
    let height = scenario.chain.produce_block(Vec::new());
    tokio::time::timeout(Duration::from_secs(10), app.chain_progress.wait_for_height(height))
        .await
        .unwrap();
    let (status, body) = send(client().get(format!("{base}/readyz"))).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) =
        send(client().get(format!("{base}/admin/v1/status")).bearer_auth(&*app.token)).await;
    assert_eq!(status, 200);
    assert!(body["chain"]["height"].as_u64().unwrap() >= height, "{body}");
    assert_eq!(body["chain"]["followed"], true, "{body}");
    assert_eq!(body["ml_reachable"], true, "{body}");
    assert!(body["version"].as_str().unwrap().contains("commit"), "{body}");
    running.stop().await;
}
