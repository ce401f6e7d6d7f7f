//! A driver that calls a validation service as upstream's devshard hosts would: `S` sessions,
//! each with its own queue of inferences and 20 workers calling `Validate` one inference at a
//! time, a share of them mandatory votes on challenged inferences. It records what came back
//! and how long each call waited.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{sync::mpsc, task::JoinSet, time::Instant};
use tonic::{metadata::MetadataValue, transport::Channel, Code, Request};
use validator_proto::validator::v1::{
    validate_response::Verdict, validation_service_client::ValidationServiceClient, ValidateRequest,
};

/// Upstream's validation workers per session host.
pub const WORKERS_PER_SESSION: usize = 20;

/// How the hosts call the service.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// The service's address, `http://127.0.0.1:port`.
    pub url: String,
    /// The bearer token.
    pub token: String,
    /// Workers per session.
    pub workers_per_session: usize,
    /// Bound of one call; upstream's hosts wait as long as the validation takes.
    pub call_timeout: Duration,
}

/// What the hosts saw.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostReport {
    /// Calls made.
    pub calls: usize,
    /// Answers per (verdict, reason): `valid`, `invalid` or `skipped`, and the reason tag.
    pub verdicts: BTreeMap<(String, String), usize>,
    /// Errors per gRPC status code name.
    pub errors: BTreeMap<String, usize>,
    /// Call durations of challenged votes, in call order.
    pub challenged_waits: Vec<Duration>,
    /// Call durations of sampled validations, in call order.
    pub sampled_waits: Vec<Duration>,
    /// From the first call to the last answer.
    pub elapsed: Duration,
}

impl HostReport {
    /// Answers with `verdict` (`valid`, `invalid`, `skipped`), over every reason.
    pub fn count(&self, verdict: &str) -> usize {
        self.verdicts.iter().filter(|((v, _), _)| v == verdict).map(|(_, n)| n).sum()
    }
}

/// Runs one session host per entry of `sessions`, each working through its inferences with
/// `config.workers_per_session` workers, and returns once every call has an answer.
pub async fn run_sessions(
    config: &HostConfig,
    sessions: Vec<Vec<ValidateRequest>>,
) -> Result<HostReport, Box<dyn std::error::Error + Send + Sync>> {
    let channel = Channel::from_shared(config.url.clone())?.connect().await?;
    let report = Arc::new(Mutex::new(HostReport::default()));
    let started = Instant::now();
    let mut hosts = JoinSet::new();
    for jobs in sessions {
        let (queue, receiver) = mpsc::channel(jobs.len().max(1));
        for job in jobs {
            // The queue holds every job of the session; a send cannot fail while the receiver
            // lives.
            let _ = queue.try_send(job);
        }
        drop(queue);
        let receiver = Arc::new(tokio::sync::Mutex::new(receiver));
        for _ in 0..config.workers_per_session.max(1) {
            let client = ValidationServiceClient::new(channel.clone());
            let receiver = Arc::clone(&receiver);
            let report = Arc::clone(&report);
            let config = config.clone();
            hosts.spawn(async move {
                let mut client = client;
                loop {
                    let Some(job) = receiver.lock().await.recv().await else { break };
                    call(&mut client, &config, job, &report).await;
                }
            });
        }
    }
    while hosts.join_next().await.is_some() {}
    let mut report = report.lock().map(|report| report.clone()).unwrap_or_default();
    report.elapsed = started.elapsed();
    Ok(report)
}

async fn call(
    client: &mut ValidationServiceClient<Channel>,
    config: &HostConfig,
    job: ValidateRequest,
    report: &Mutex<HostReport>,
) {
    let challenged = job.challenged;
    let mut request = Request::new(job);
    request.set_timeout(config.call_timeout);
    if let Ok(value) = MetadataValue::try_from(format!("Bearer {}", config.token)) {
        request.metadata_mut().insert("authorization", value);
    }
    let started = Instant::now();
    let answer = client.validate(request).await;
    let waited = started.elapsed();
    let Ok(mut report) = report.lock() else { return };
    report.calls += 1;
    if challenged {
        report.challenged_waits.push(waited);
    } else {
        report.sampled_waits.push(waited);
    }
    match answer {
        Ok(response) => {
            let response = response.into_inner();
            let verdict = match Verdict::try_from(response.verdict) {
                Ok(Verdict::Valid) => "valid",
                Ok(Verdict::Invalid) => "invalid",
                Ok(Verdict::Skipped) => "skipped",
                _ => "unspecified",
            };
            *report.verdicts.entry((verdict.to_owned(), response.reason)).or_default() += 1;
        }
        Err(status) => {
            *report.errors.entry(code_name(status.code()).to_owned()).or_default() += 1;
        }
    }
}

fn code_name(code: Code) -> &'static str {
    match code {
        Code::InvalidArgument => "invalid_argument",
        Code::ResourceExhausted => "resource_exhausted",
        Code::Unavailable => "unavailable",
        Code::Unauthenticated => "unauthenticated",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::Cancelled => "cancelled",
        _ => "other",
    }
}
