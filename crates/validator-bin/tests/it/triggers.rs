use std::time::Duration;

use serde_json::{json, Value};
use testkit::{Submitted, SubmittedMsg};
use validator_bin::{
    app::AppHandle,
    claim::{ClaimRecord, ClaimState},
};
use validator_core::{ports::chain::EpochGroup, OutcomeKind, RunState};
use validator_demo::{
    inference_id, DemoOptions, Scenario, BACKLOG_EPOCH, BACKLOG_REWARD_NGONKA, EPOCH_PARAMS,
    LIVE_EPOCH,
};

use crate::Running;

const BACKLOG: usize = 8;
const BOUND: Duration = Duration::from_secs(20);

/// The demo's fakes with a small backlog and no live traffic; `script` adjusts the chain before
/// the app starts following it.
async fn start(script: impl FnOnce(&Scenario)) -> Running {
    start_with(BACKLOG, 1, script).await
}

async fn start_with(backlog: usize, ml_latency_ms: u64, script: impl FnOnce(&Scenario)) -> Running {
    Running::start(&options(backlog, ml_latency_ms), |scenario, _| script(scenario)).await
}

/// The demo with a backlog, two slots and no live traffic.
fn options(backlog: usize, ml_latency_ms: u64) -> DemoOptions {
    DemoOptions {
        backlog,
        ml_latency_ms,
        slots: 2,
        live_rate: 0.0,
        admin_token_file: Some(crate::temp_path("admin.token")),
        json: true,
        ..DemoOptions::default()
    }
}

/// The next claim record.
async fn next_claim(running: &Running, previous: usize) -> ClaimRecord {
    let mut changed = running.app.claimer.subscribe();
    tokio::time::timeout(BOUND, changed.wait_for(|n| *n > previous)).await.unwrap().unwrap();
    running.app.claimer.records().pop().unwrap()
}

/// The claims the chain accepted.
fn claims(running: &Running) -> Vec<Submitted> {
    let submitted = running.scenario.chain.submitted();
    submitted.into_iter().filter(|s| matches!(s.msg, SubmittedMsg::ClaimRewards { .. })).collect()
}

fn claimed_epoch(submitted: &Submitted) -> u64 {
    match submitted.msg {
        SubmittedMsg::ClaimRewards { epoch_index, .. } => epoch_index,
        SubmittedMsg::Validation { .. } => panic!("not a claim: {submitted:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_claim_trigger_recovers_the_previous_epoch_then_claims() {
    let running = start(|_| {}).await;
    // The demo's claim-money height is five blocks ahead; below height 500 there is no delay.
    running.scenario.chain.advance(6);
    let record = next_claim(&running, 0).await;

    assert_eq!(record.epoch_index, BACKLOG_EPOCH);
    assert!(record.claimed(), "{record:?}");
    let run = record.run.as_ref().unwrap();
    assert_eq!((run.epoch, &run.state), (BACKLOG_EPOCH, &RunState::Completed));
    assert_eq!(run.outcomes.get(OutcomeKind::Submitted), BACKLOG as u64);
    let submitted = running.scenario.chain.submitted();
    let claim_at =
        submitted.iter().position(|s| matches!(s.msg, SubmittedMsg::ClaimRewards { .. })).unwrap();
    assert_eq!(claim_at, BACKLOG, "every recovered validation lands before the claim");
    assert_eq!(claimed_epoch(&submitted[claim_at]), BACKLOG_EPOCH);

    // The journal's answers on the admin API.
    let app = &running.app;
    app.journal.flush().await.unwrap();
    let get = |path: String| async move {
        let response = crate::http_client()
            .get(format!("http://{}{path}", app.admin_addr))
            .bearer_auth(&*app.token)
            .timeout(BOUND)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, serde_json::from_str::<Value>(&response.text().await.unwrap()).unwrap())
    };
    // The backlog's ids are upstream-shaped: base64 with `/`, `+` and `=`, all recovered.
    let ids: String = (0..BACKLOG).map(|i| inference_id("backlog", i)).collect();
    assert!(ids.contains('/') && ids.contains('+') && ids.contains('='), "{ids}");
    let escaped =
        inference_id("backlog", 3).replace('/', "%2F").replace('+', "%2B").replace('=', "%3D");
    let (status, history) = get(format!("/admin/v1/inferences/{escaped}")).await;
    assert_eq!(status, 200, "{history}");
    let validation = &history["validations"][0];
    assert_eq!((&validation["lane"], &validation["epoch"]), (&json!("recovery"), &json!(9)));
    assert_eq!(validation["run_id"], run.run_id);
    assert_eq!(validation["outcome"]["kind"], "submitted", "{history}");
    let submission = &history["submissions"][0];
    assert_eq!(submission["result"]["result"], "landed", "{history}");
    assert_eq!(submission["intent"]["msg"]["id"], validation["outcome"]["msg_id"]);
    let (status, _) = get("/admin/v1/inferences/never-seen".into()).await;
    assert_eq!(status, 404);
    let (status, runs) = get("/admin/v1/recovery".into()).await;
    assert_eq!(status, 200);
    assert_eq!(runs["runs"][0]["run_id"], run.run_id, "{runs}");
    assert_eq!(runs["runs"][0]["trigger"], "claim");
    assert_eq!(runs["runs"][0]["state"], "completed");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_claim_trigger_claims_even_when_recovery_fails() {
    // Epoch 12 is current and this validator is in it, but the chain has no group for epoch
    // 11: detection fails at once.
    let running = start(|scenario| {
        let chain = &scenario.chain;
        let poc_start = i64::try_from(chain.tip()).unwrap() + 2;
        chain.set_epoch(12, poc_start, EPOCH_PARAMS);
        chain.set_settle_amount(&scenario.address, 11, 500, 0);
        chain.set_epoch_group(EpochGroup {
            epoch_index: 12,
            model: String::new(),
            sub_group_models: vec![],
            validation_weights: vec![scenario.address.clone()],
            has_model_snapshot: false,
            validation_threshold: None,
        });
    })
    .await;
    running.scenario.chain.advance(6);
    let record = next_claim(&running, 0).await;

    assert_eq!(record.epoch_index, 11);
    let run = record.run.as_ref().unwrap();
    assert_eq!(run.epoch, 11);
    assert!(matches!(run.state, RunState::Failed(_)), "{run:?}");
    assert!(record.claimed(), "the claim goes out after a failed recovery: {record:?}");
    let claims = claims(&running);
    assert_eq!(claims.len(), 1);
    assert_eq!(claimed_epoch(&claims[0]), 11);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reward_check_recovers_the_settled_epoch_then_claims() {
    // The app starts 1200 blocks into the epoch: past the claim trigger's height and inside
    // the reward check's window (claim money + 1000 onwards), which opens 60 blocks after the first block the app sees.
    let running = start(|scenario| {
        let chain = &scenario.chain;
        let tip = i64::try_from(chain.advance(1_200)).unwrap();
        chain.set_epoch(LIVE_EPOCH, tip - 1_100, EPOCH_PARAMS);
        chain.set_settle_amount(&scenario.address, BACKLOG_EPOCH, 1_000, 0);
    })
    .await;
    running.scenario.chain.advance(61);
    let record = next_claim(&running, 0).await;

    assert_eq!(record.epoch_index, BACKLOG_EPOCH);
    assert!(record.claimed(), "{record:?}");
    let run = record.run.as_ref().unwrap();
    assert_eq!((run.epoch, &run.state), (BACKLOG_EPOCH, &RunState::Completed));
    assert_eq!(run.outcomes.get(OutcomeKind::Submitted), BACKLOG as u64);
    let claims = claims(&running);
    assert_eq!(claims.len(), 1, "{claims:?}");
    let query = running.app.chain.query();
    assert!(query.settle_amount(&running.scenario.address).await.is_err(), "claimed coins go");
    running.stop().await;
}

async fn claim_reward_recover(app: &AppHandle, body: Option<Value>) -> Value {
    let mut request = crate::http_client()
        .post(format!("http://{}/admin/v1/claim-reward/recover", app.admin_addr))
        .bearer_auth(&*app.token)
        .timeout(BOUND);
    if let Some(body) = body {
        request = request.body(body.to_string());
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    serde_json::from_str(&response.text().await.unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_claim_answers_already_claimed_without_running_recovery() {
    let running = start(|_| {}).await;
    let app = &running.app;

    let first = claim_reward_recover(app, None).await;
    assert_eq!(first["success"], true, "{first}");
    assert_eq!(first["epoch_index"], BACKLOG_EPOCH);
    assert_eq!(first["missed_validations"], BACKLOG);
    assert_eq!(
        (&first["already_claimed"], &first["claim_executed"]),
        (&json!(false), &json!(true))
    );
    assert_eq!(app.engine.runs().len(), 1);

    let again = claim_reward_recover(app, Some(json!({"force_claim": false}))).await;
    assert_eq!(again["success"], false, "{again}");
    assert_eq!(again["already_claimed"], true);
    assert_eq!(again["claim_executed"], false);
    assert_eq!(app.engine.runs().len(), 1, "no recovery ran");
    assert_eq!(claims(&running).len(), 1, "no claim was sent");

    // Forced, recovery runs again, but a paid claim is never sent twice.
    let forced = claim_reward_recover(app, Some(json!({"force_claim": true}))).await;
    assert_eq!(forced["already_claimed"], true, "{forced}");
    assert_eq!(app.engine.runs().len(), 2);
    assert_eq!(claims(&running).len(), 1, "{forced}");
    running.stop().await;
}

/// A claim the chain rate-limits lands with code 0 and "Claim rate limited" in its response:
/// the claimer reads that, keeps the claim pending, tries again once 30 blocks have passed,
/// and is paid; the record says so, and the journal keeps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_claim_is_tried_again_after_30_blocks_then_paid() {
    let running = start(|scenario| {
        let chain = &scenario.chain;
        chain.set_last_claim_attempt(&scenario.address, chain.tip());
    })
    .await;
    running.scenario.chain.advance(6);
    let record = next_claim(&running, 0).await;
    assert_eq!(record.state, ClaimState::Pending, "{record:?}");
    assert_eq!(record.last_result.as_deref(), Some("Claim rate limited"));
    assert_eq!(record.attempts, 1);
    let first_at = record.last_attempt_height.unwrap();

    running.scenario.chain.advance(29);
    running.scenario.chain.advance(1);
    let record = next_claim(&running, 1).await;
    assert!(record.claimed(), "{record:?}");
    assert_eq!((record.attempts, record.amount), (2, BACKLOG_REWARD_NGONKA));
    assert!(record.last_attempt_height.unwrap() >= first_at + 30, "{record:?}");
    assert_eq!(record.tx_hashes.len(), 2);
    let responses = running.scenario.chain.claim_responses();
    assert_eq!(responses.len(), 2, "{responses:?}");
    assert_eq!(
        responses[1],
        (BACKLOG_EPOCH, BACKLOG_REWARD_NGONKA, "Rewards claimed successfully".into())
    );
    let stored = running.app.journal.claims().await.unwrap();
    assert!(stored
        .iter()
        .any(|(epoch, text)| *epoch == BACKLOG_EPOCH && text.contains("\"paid\"")));
    running.stop().await;
}

/// With classic validation retired (every `MsgValidation` lands with 1161), the first such
/// landing stops classic work: the rest of the backlog ends as `protocol retired` without
/// replays or broadcasts, admission is refused, and the claim still goes out and is paid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retired_classic_protocol_stops_validation_but_not_the_claim() {
    const BIG: usize = 40;
    let running = start_with(BIG, 20, |scenario| scenario.chain.retire_classic()).await;
    running.scenario.chain.advance(6);
    let record = next_claim(&running, 0).await;

    assert!(record.claimed(), "{record:?}");
    let run = record.run.as_ref().unwrap();
    let retired = run.outcomes.get(OutcomeKind::SkippedProtocolRetired);
    let sent = running.scenario.chain.deprecated_rejections();
    assert!((1..=6).contains(&sent), "{sent} validations sent after retirement");
    assert!(retired as usize >= BIG - 6, "{run:?}");
    assert_eq!(
        run.outcomes.get(OutcomeKind::Submitted) as usize + retired as usize,
        BIG,
        "{run:?}"
    );
    let engine = &running.app.engine;
    assert!(engine.retired().is_some_and(|why| why.contains("1161")));
    assert!(engine.validate("later".into()).is_err());
    running.stop().await;
}

/// Without a transaction index (no validation can be looked up by hash), a 1161 is still
/// learned: from the failed transaction in the next block's results, which the event source
/// reads anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1161_is_learned_from_block_results_without_a_transaction_index() {
    let running = start_with(40, 20, |scenario| {
        scenario.chain.retire_classic();
        scenario.chain.hide_transactions(true);
    })
    .await;
    let mut outcomes = running.app.engine.outcomes();
    let chain = &running.scenario.chain;
    chain.advance(6);
    tokio::time::timeout(BOUND, chain.wait_deprecated_rejections(1)).await.unwrap();
    chain.advance(1);
    let retired = tokio::time::timeout(BOUND, async {
        loop {
            let event = outcomes.recv().await.unwrap();
            if event.outcome.kind() == OutcomeKind::SkippedProtocolRetired {
                break;
            }
        }
    })
    .await;
    assert!(retired.is_ok(), "no key ended as protocol retired");
    let why = running.app.engine.retired().unwrap_or_default().to_owned();
    assert!(why.contains("failed with code 1161"), "{why}");
    running.stop().await;
}

/// `--dry-run`: recovery fetches, replays and scores as usual, but neither the validations nor
/// the claim reach the chain; the claim is not recorded as made, so a real run still makes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_validates_and_sends_nothing() {
    let running = Running::start(&options(BACKLOG, 1), |_, settings| settings.dry_run = true).await;
    running.scenario.chain.advance(6);
    let record = next_claim(&running, 0).await;
    assert_eq!(record.epoch_index, BACKLOG_EPOCH);
    assert!(!record.claimed(), "{record:?}");
    assert_eq!(record.last_result.as_deref(), Some("dry run: not sent"), "{record:?}");
    let run = record.run.as_ref().unwrap();
    assert_eq!(run.outcomes.get(OutcomeKind::Submitted), BACKLOG as u64, "{run:?}");
    assert!(running.scenario.chain.submitted().is_empty(), "nothing reached the chain");
    assert_eq!(running.scenario.ml.as_ref().unwrap().requests().len(), BACKLOG, "all replayed");
    assert!(running.app.journal.claims().await.unwrap().is_empty(), "no claim record kept");
    running.stop().await;
}
