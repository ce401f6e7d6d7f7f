//! What the journal shows of its history: the records behind the admin API's history routes,
//! the same for every backend.

use std::collections::BTreeMap;

use serde::Serialize;
use validator_core::ports::journal::{Intent, SubmissionResult};

/// Everything the journal holds about one inference.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InferenceHistory {
    /// The inference.
    pub inference_id: String,
    /// Its validations (both revalidation flags), oldest first.
    pub validations: Vec<ValidationRecord>,
    /// Its submissions, oldest intent first.
    pub submissions: Vec<SubmissionRecord>,
}

impl InferenceHistory {
    /// Whether the journal holds nothing about the inference.
    pub fn is_empty(&self) -> bool {
        self.validations.is_empty() && self.submissions.is_empty()
    }
}

/// One admitted validation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ValidationRecord {
    /// Whether it was a revalidation.
    pub revalidation: bool,
    /// Its lane (`Lane::as_str`); unknown only when its admission was never recorded and it has
    /// not finished.
    pub lane: Option<String>,
    /// The inference's epoch, once known.
    pub epoch: Option<u64>,
    /// The recovery run that admitted it.
    pub run_id: Option<u64>,
    /// When it was admitted, in unix milliseconds.
    pub admitted_at_ms: u64,
    /// Its failed attempts, in order.
    pub attempts: Vec<AttemptRecord>,
    /// Its terminal outcome, once reached.
    pub outcome: Option<OutcomeRecord>,
    /// The replica that worked it, on a shared journal.
    pub replica: Option<String>,
}

/// One failed attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AttemptRecord {
    /// The stage that failed (`Stage::as_str`).
    pub stage: String,
    /// The error, as text.
    pub error: String,
    /// How long the attempt held its slot, in milliseconds.
    pub duration_ms: u64,
    /// When it ended, in unix milliseconds.
    pub at_ms: u64,
}

/// A terminal outcome.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutcomeRecord {
    /// The outcome's kind (`OutcomeKind::as_str`).
    pub kind: String,
    /// How the comparison came out (`Verdict::as_str`), for a submitted validation.
    pub verdict: Option<String>,
    /// The similarity submitted, for a submitted validation.
    pub value: Option<f64>,
    /// The `MsgValidation` id, for a submission or an invalidation.
    pub msg_id: Option<String>,
    /// The carrying transaction, when known.
    pub tx_hash: Option<String>,
    /// The stage of the last failure, when it gave up.
    pub stage: Option<String>,
    /// The last error, when it gave up.
    pub error: Option<String>,
    /// Attempts started.
    pub attempts: u32,
    /// Time from admission to its first slot, in milliseconds; `None` if it never got one.
    pub wait_ms: Option<u64>,
    /// Time from admission to the outcome, in milliseconds.
    pub elapsed_ms: u64,
    /// When it finished, in unix milliseconds.
    pub finished_at_ms: u64,
}

/// One intended submission and the chain's last answer to it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SubmissionRecord {
    /// The intent, with the message exactly as sent.
    pub intent: Intent,
    /// The last answer, if any arrived.
    pub result: Option<SubmissionResult>,
    /// Whether the intent awaits an answer that closes it.
    pub open: bool,
    /// When the intent was committed, in unix milliseconds.
    pub intended_at_ms: u64,
    /// When an answer closed it, in unix milliseconds.
    pub resolved_at_ms: Option<u64>,
    /// The replica that committed it last, on a shared journal.
    pub replica: Option<String>,
}

/// One recovery run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunRecord {
    /// The run id.
    pub run_id: u64,
    /// The epoch it recovered.
    pub epoch: u64,
    /// What started it (`Trigger::as_str`); `None` if its start was not recorded.
    pub trigger: Option<String>,
    /// When it started, in unix milliseconds.
    pub started_at_ms: Option<u64>,
    /// When it ended, in unix milliseconds; `None` while it runs (or if the process stopped
    /// before it ended).
    pub ended_at_ms: Option<u64>,
    /// Its final state (`detecting`, `executing`, `completed`, `not_active`, `failed`,
    /// `cancelled`), once ended.
    pub state: Option<String>,
    /// The failure, for a failed run.
    pub detail: Option<String>,
    /// Missed validations detected.
    pub detected: Option<u64>,
    /// Of those, admitted.
    pub admitted: Option<u64>,
    /// Terminal outcomes, by `OutcomeKind::as_str`.
    pub outcomes: BTreeMap<String, u64>,
    /// The replica that ran it, on a shared journal.
    pub replica: Option<String>,
}

/// What one prune deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PruneReport {
    /// Validation rows.
    pub validations: u64,
    /// Attempt rows.
    pub attempts: u64,
    /// Closed submissions.
    pub submissions: u64,
    /// Recovery runs.
    pub runs: u64,
    /// Claim records.
    pub claims: u64,
}
