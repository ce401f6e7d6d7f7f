//! The durable record of what the engine did (the `Journal` port): each admitted validation, its
//! failed attempts and terminal outcome, recovery runs, and the write-ahead intent committed
//! before every submission, so a restarted process never sends a second `MsgValidation` for a
//! (inference, revalidation) it may already have sent.
//!
//! History entries go through [`Journal::record`], which never waits: an implementation queues
//! them (bounded) and writes them in the background. Only the intent is awaited, because the
//! broadcast must not start before it is durable.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::chain::{InferenceId, MsgValidation};
use crate::{
    outcome::{Lane, Outcome, OutcomeEvent, Stage},
    recovery::{RunReport, Trigger},
};

/// One entry of the journal's history.
#[derive(Debug, Clone)]
pub enum JournalEntry {
    /// A validation was admitted into a lane.
    Admitted {
        /// The inference.
        inference_id: InferenceId,
        /// Whether it is a revalidation.
        revalidation: bool,
        /// Its lane.
        lane: Lane,
        /// The epoch, when known at admission (recovery).
        epoch: Option<u64>,
        /// The recovery run that admitted it.
        run_id: Option<u64>,
        /// When.
        at: SystemTime,
    },
    /// The inference record was read: its epoch is known.
    Epoch {
        /// The inference.
        inference_id: InferenceId,
        /// Whether it is a revalidation.
        revalidation: bool,
        /// The inference's epoch.
        epoch: u64,
    },
    /// One attempt failed and the validation waits to retry.
    Attempt {
        /// The inference.
        inference_id: InferenceId,
        /// Whether it is a revalidation.
        revalidation: bool,
        /// The stage that failed.
        stage: Stage,
        /// The error, as text.
        error: String,
        /// How long the attempt held its slot.
        duration: Duration,
        /// When it ended.
        at: SystemTime,
    },
    /// The answer to a submission whose intent was recorded.
    Submission {
        /// The message id of the intent.
        msg_id: String,
        /// What the chain said.
        result: SubmissionResult,
        /// When.
        at: SystemTime,
    },
    /// The validation reached its terminal outcome.
    Finished {
        /// The outcome event, as the engine's stream publishes it.
        event: OutcomeEvent,
        /// When.
        at: SystemTime,
    },
    /// A recovery run started.
    RunStarted {
        /// The run id.
        run_id: u64,
        /// The epoch it recovers.
        epoch: u64,
        /// What started it.
        trigger: Trigger,
        /// When.
        at: SystemTime,
    },
    /// A recovery run ended.
    RunEnded {
        /// Its final report.
        report: RunReport,
        /// When.
        at: SystemTime,
    },
}

/// What became of one broadcast.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum SubmissionResult {
    /// Accepted by the chain.
    Landed {
        /// The transaction hash, when the adapter reports one.
        tx_hash: Option<String>,
    },
    /// The chain already holds a validation of this inference from us.
    Duplicate,
    /// Refused for good; nothing was recorded on chain.
    Rejected {
        /// Why.
        error: String,
    },
    /// Failed in a way that leaves it open whether the message reached the chain (timeout,
    /// lost connection): the intent stays open and is reconciled.
    Uncertain {
        /// Why.
        error: String,
    },
    /// Found on chain when the intent was reconciled after a restart.
    ReconciledLanded,
    /// Not found on chain after a restart; sent again with the same message.
    ReconciledResent,
    /// Cannot be confirmed after a restart (the chain keeps no per-validator record of
    /// revalidations): closed without sending again.
    ReconciledUnconfirmed,
}

impl SubmissionResult {
    /// Stable snake-case name, as the `result` tag of its JSON form.
    pub fn as_str(&self) -> &'static str {
        match self {
            SubmissionResult::Landed { .. } => "landed",
            SubmissionResult::Duplicate => "duplicate",
            SubmissionResult::Rejected { .. } => "rejected",
            SubmissionResult::Uncertain { .. } => "uncertain",
            SubmissionResult::ReconciledLanded => "reconciled_landed",
            SubmissionResult::ReconciledResent => "reconciled_resent",
            SubmissionResult::ReconciledUnconfirmed => "reconciled_unconfirmed",
        }
    }

    /// Whether this answer closes the intent.
    pub fn closes(&self) -> bool {
        !matches!(self, SubmissionResult::Uncertain { .. } | SubmissionResult::ReconciledResent)
    }
}

/// The intent to submit one message, committed before the broadcast.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Intent {
    /// The message exactly as it will be sent; a resend after a restart reuses it.
    pub msg: MsgValidation,
    /// The inference's epoch, to reconcile against the chain's validated set.
    pub epoch: u64,
    /// The lane the validation ran in.
    pub lane: Lane,
    /// The outcome a landed message reports.
    pub outcome: Outcome,
}

/// The journal failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("journal: {0}")]
pub struct JournalError(pub String);

/// The durable record of the engine's work. See the module docs.
#[async_trait]
pub trait Journal: Send + Sync + 'static {
    /// Queues a history entry. Never waits; an implementation that cannot keep up drops the
    /// entry and counts it rather than stall the engine.
    fn record(&self, entry: JournalEntry);

    /// Commits the intent to send `intent.msg`, durably, before the broadcast starts.
    async fn intend(&self, intent: &Intent) -> Result<(), JournalError>;

    /// Intents whose last answer leaves them open, oldest first.
    async fn open_intents(&self) -> Result<Vec<Intent>, JournalError>;

    /// Whether a message for the key was sent before, so it is not sent again: a submission of
    /// it landed, the chain reported it as a duplicate, or it may have landed and cannot be
    /// confirmed ([`SubmissionResult::ReconciledUnconfirmed`]).
    async fn already_sent(
        &self,
        inference_id: &InferenceId,
        revalidation: bool,
    ) -> Result<bool, JournalError>;

    /// The highest recovery run id recorded, so run ids stay unique across restarts.
    fn last_run_id(&self) -> u64;

    /// Waits until every entry recorded so far is durable. The engine calls it after
    /// reconciling, so a later lookup by [`Journal::already_sent`] sees the reconciled answers.
    async fn flush(&self) -> Result<(), JournalError> {
        Ok(())
    }
}

/// A journal that keeps nothing: intents succeed at once and nothing is known of earlier
/// processes. The default for embedders that do not need durability.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoJournal;

#[async_trait]
impl Journal for NoJournal {
    fn record(&self, _entry: JournalEntry) {}

    async fn intend(&self, _intent: &Intent) -> Result<(), JournalError> {
        Ok(())
    }

    async fn open_intents(&self) -> Result<Vec<Intent>, JournalError> {
        Ok(Vec::new())
    }

    async fn already_sent(
        &self,
        _inference_id: &InferenceId,
        _revalidation: bool,
    ) -> Result<bool, JournalError> {
        Ok(false)
    }

    fn last_run_id(&self) -> u64 {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recovery::RunState;

    #[test]
    fn names_are_the_json_tags() {
        for result in [
            SubmissionResult::Landed { tx_hash: None },
            SubmissionResult::Duplicate,
            SubmissionResult::Rejected { error: "e".into() },
            SubmissionResult::Uncertain { error: "e".into() },
            SubmissionResult::ReconciledLanded,
            SubmissionResult::ReconciledResent,
            SubmissionResult::ReconciledUnconfirmed,
        ] {
            let json = serde_json::to_value(&result).unwrap_or_default();
            assert_eq!(json["result"], result.as_str());
        }
        for state in [
            RunState::Detecting,
            RunState::Executing,
            RunState::Completed,
            RunState::NotActive,
            RunState::Failed("why".into()),
            RunState::Cancelled,
        ] {
            let json = serde_json::to_value(&state).unwrap_or_default();
            assert_eq!(json["state"], state.as_str());
        }
    }
}
