//! Lanes, stages and the typed terminal outcome every admitted validation ends in.

use std::{fmt, time::Duration};

use serde::{Deserialize, Serialize, Serializer};

use crate::{devshard::DevshardVerdict, ports::chain::InferenceId, scoring::Verdict};

/// The lanes of work, in priority order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Lane {
    /// Mandatory devshard votes on challenged inferences: every group member must vote.
    Challenged,
    /// Revalidations of disputed inferences: votes that matter within the epoch.
    Revalidation,
    /// Live sampled validations, classic and devshard.
    Live,
    /// Recovery of missed validations.
    Recovery,
}

impl Lane {
    /// Every lane, highest priority first.
    pub const ALL: [Lane; 4] = [Lane::Challenged, Lane::Revalidation, Lane::Live, Lane::Recovery];

    /// How many lanes there are.
    pub(crate) const COUNT: usize = Lane::ALL.len();

    /// Stable lower-case name, for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Lane::Challenged => "challenged",
            Lane::Revalidation => "revalidation",
            Lane::Live => "live",
            Lane::Recovery => "recovery",
        }
    }

    /// How much of `bound` (network slots, buffered payloads or bytes) this lane leaves to the
    /// lanes above it: recovery half, live a quarter, challenged votes and revalidations none. A
    /// live item never finds the buffer full of recovery payloads.
    pub(crate) fn kept_from(self, bound: usize) -> usize {
        match self {
            Lane::Challenged | Lane::Revalidation => 0,
            Lane::Live => bound / 4,
            Lane::Recovery => bound / 2,
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Lane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stage of one validation attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Querying the inference record and epoch state.
    Chain,
    /// Fetching payloads from the executor.
    Payload,
    /// Taking a lease on an ML node.
    Lock,
    /// Replaying on the ML node and scoring.
    Replay,
    /// Submitting the result.
    Submit,
    /// Taking the validation's lease, or waiting for the replica that holds it (replicas on a
    /// shared journal).
    Lease,
}

impl Stage {
    /// Stable lower-case name, for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Chain => "chain",
            Stage::Payload => "payload",
            Stage::Lock => "lock",
            Stage::Replay => "replay",
            Stage::Submit => "submit",
            Stage::Lease => "lease",
        }
    }
}

/// Why an inference was invalidated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InvalidationReason {
    /// Every payload attempt failed (`ErrPayloadUnavailable`).
    PayloadUnavailable,
    /// The payload did not match the on-chain hashes (`ErrHashMismatch`).
    HashMismatch,
}

/// Why an inference was skipped without a submission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// The chain or the executor no longer has it.
    Gone,
    /// Its epoch is two or more behind the latest.
    EpochStale,
    /// This validator already validated it.
    AlreadyValidated,
    /// It is already invalidated; an invalidation would be a no-op.
    AlreadyInvalidated,
    /// None of our ML nodes serves its model.
    ModelNotServed,
    /// The chain no longer accepts classic validations (the protocol is retired).
    ProtocolRetired,
    /// Another replica on the shared journal worked it.
    WorkedElsewhere,
}

/// How one admitted validation ended. Every admitted validation ends in exactly one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// A validation was submitted.
    Submitted {
        /// How the comparison came out.
        verdict: Verdict,
        /// The similarity submitted.
        value: f64,
        /// The `MsgValidation` id.
        msg_id: String,
        /// The carrying transaction, when known.
        tx_hash: Option<String>,
    },
    /// An invalidation (value 0) was submitted.
    Invalidated {
        /// Why.
        reason: InvalidationReason,
        /// The `MsgValidation` id.
        msg_id: String,
        /// The carrying transaction, when known.
        tx_hash: Option<String>,
    },
    /// Nothing was submitted, for a reason that needs none.
    Skipped {
        /// Why.
        reason: SkipReason,
    },
    /// Every attempt failed; nothing was submitted.
    GaveUp {
        /// The stage of the last failure.
        stage: Stage,
        /// The last error.
        error: String,
    },
    /// Shutdown cancelled it; nothing partial was submitted.
    Cancelled,
    /// A devshard verdict, returned to the caller (nothing goes to the chain).
    Judged {
        /// The verdict.
        verdict: DevshardVerdict,
    },
}

impl Outcome {
    /// The outcome's kind.
    pub fn kind(&self) -> OutcomeKind {
        match self {
            Outcome::Submitted { .. } => OutcomeKind::Submitted,
            Outcome::Invalidated { reason: InvalidationReason::PayloadUnavailable, .. } => {
                OutcomeKind::InvalidatedUnavailable
            }
            Outcome::Invalidated { reason: InvalidationReason::HashMismatch, .. } => {
                OutcomeKind::InvalidatedHashMismatch
            }
            Outcome::Skipped { reason } => match reason {
                SkipReason::Gone => OutcomeKind::SkippedGone,
                SkipReason::EpochStale => OutcomeKind::SkippedEpochStale,
                SkipReason::AlreadyValidated => OutcomeKind::SkippedAlreadyValidated,
                SkipReason::AlreadyInvalidated => OutcomeKind::SkippedAlreadyInvalidated,
                SkipReason::ModelNotServed => OutcomeKind::SkippedModelNotServed,
                SkipReason::ProtocolRetired => OutcomeKind::SkippedProtocolRetired,
                SkipReason::WorkedElsewhere => OutcomeKind::SkippedWorkedElsewhere,
            },
            Outcome::GaveUp { .. } => OutcomeKind::GaveUp,
            Outcome::Cancelled => OutcomeKind::Cancelled,
            Outcome::Judged { verdict } if verdict.valid() => OutcomeKind::JudgedValid,
            Outcome::Judged { .. } => OutcomeKind::JudgedInvalid,
        }
    }
}

/// The kinds of [`Outcome`], flat, for counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutcomeKind {
    /// [`Outcome::Submitted`].
    Submitted,
    /// [`Outcome::Invalidated`] for unavailable payloads.
    InvalidatedUnavailable,
    /// [`Outcome::Invalidated`] for a hash mismatch.
    InvalidatedHashMismatch,
    /// [`Outcome::Skipped`]: gone.
    SkippedGone,
    /// [`Outcome::Skipped`]: epoch stale.
    SkippedEpochStale,
    /// [`Outcome::Skipped`]: already validated.
    SkippedAlreadyValidated,
    /// [`Outcome::Skipped`]: already invalidated.
    SkippedAlreadyInvalidated,
    /// [`Outcome::Skipped`]: model not served.
    SkippedModelNotServed,
    /// [`Outcome::Skipped`]: the classic protocol is retired.
    SkippedProtocolRetired,
    /// [`Outcome::Skipped`]: another replica worked it.
    SkippedWorkedElsewhere,
    /// [`Outcome::GaveUp`].
    GaveUp,
    /// [`Outcome::Cancelled`].
    Cancelled,
    /// [`Outcome::Judged`] valid.
    JudgedValid,
    /// [`Outcome::Judged`] invalid.
    JudgedInvalid,
}

impl OutcomeKind {
    /// Every kind, in a stable order.
    pub const ALL: [OutcomeKind; 14] = [
        OutcomeKind::Submitted,
        OutcomeKind::InvalidatedUnavailable,
        OutcomeKind::InvalidatedHashMismatch,
        OutcomeKind::SkippedGone,
        OutcomeKind::SkippedEpochStale,
        OutcomeKind::SkippedAlreadyValidated,
        OutcomeKind::SkippedAlreadyInvalidated,
        OutcomeKind::SkippedModelNotServed,
        OutcomeKind::SkippedProtocolRetired,
        OutcomeKind::SkippedWorkedElsewhere,
        OutcomeKind::GaveUp,
        OutcomeKind::Cancelled,
        OutcomeKind::JudgedValid,
        OutcomeKind::JudgedInvalid,
    ];

    /// Stable snake-case name, for logs, metric labels and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeKind::Submitted => "submitted",
            OutcomeKind::InvalidatedUnavailable => "invalidated_unavailable",
            OutcomeKind::InvalidatedHashMismatch => "invalidated_hash_mismatch",
            OutcomeKind::SkippedGone => "skipped_gone",
            OutcomeKind::SkippedEpochStale => "skipped_epoch_stale",
            OutcomeKind::SkippedAlreadyValidated => "skipped_already_validated",
            OutcomeKind::SkippedAlreadyInvalidated => "skipped_already_invalidated",
            OutcomeKind::SkippedModelNotServed => "skipped_model_not_served",
            OutcomeKind::SkippedProtocolRetired => "skipped_protocol_retired",
            OutcomeKind::SkippedWorkedElsewhere => "skipped_worked_elsewhere",
            OutcomeKind::GaveUp => "gave_up",
            OutcomeKind::Cancelled => "cancelled",
            OutcomeKind::JudgedValid => "judged_valid",
            OutcomeKind::JudgedInvalid => "judged_invalid",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Counts per [`OutcomeKind`]. Serialises as a map from kind name to count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutcomeCounts([u64; OutcomeKind::ALL.len()]);

impl OutcomeCounts {
    /// Counts one more of `kind`.
    pub fn add(&mut self, kind: OutcomeKind) {
        self.0[kind.index()] += 1;
    }

    /// The count of `kind`.
    pub fn get(&self, kind: OutcomeKind) -> u64 {
        self.0[kind.index()]
    }

    /// The sum over every kind.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// Non-zero counts, in [`OutcomeKind::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (OutcomeKind, u64)> + '_ {
        OutcomeKind::ALL.into_iter().map(|k| (k, self.get(k))).filter(|(_, n)| *n > 0)
    }
}

/// `submitted=3 gave_up=1`, the non-zero counts; `none` when there are none.
impl fmt::Display for OutcomeCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut any = false;
        for (kind, n) in self.iter() {
            if any {
                f.write_str(" ")?;
            }
            write!(f, "{}={n}", kind.as_str())?;
            any = true;
        }
        if !any {
            f.write_str("none")?;
        }
        Ok(())
    }
}

impl Serialize for OutcomeCounts {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter().map(|(k, n)| (k.as_str(), n)))
    }
}

/// One terminal outcome, as the engine emits it on its outcome stream.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutcomeEvent {
    /// The inference; a devshard job's is [`DevshardKey::journal_id`](crate::devshard::DevshardKey::journal_id).
    pub inference_id: InferenceId,
    /// Whether this was a revalidation.
    pub revalidation: bool,
    /// The lane it ran in.
    pub lane: Lane,
    /// The recovery run it belonged to, if any.
    pub run_id: Option<u64>,
    /// How it ended.
    pub outcome: Outcome,
    /// Attempts started (all stages).
    pub attempts: u32,
    /// Time from admission to its first GPU-stage slot (its fetch and the buffer included);
    /// `None` if it never got one (it ended on the network stage, or was cancelled first).
    pub wait: Option<Duration>,
    /// Time from admission to the outcome.
    pub elapsed: Duration,
}
