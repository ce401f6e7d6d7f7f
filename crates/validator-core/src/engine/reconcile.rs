//! Start-up reconciliation of the journal's open submission intents: a process that crashed
//! between committing an intent and learning the chain's answer may or may not have sent the
//! message. Before any slot is handed out, each open intent is checked against the chain:
//!
//! - the chain holds it: closed as landed, never sent again;
//! - the chain can tell it does not hold it: sent again with the same message (same id and
//!   value; no replay), through the submission retry path;
//! - the chain cannot tell (revalidations leave no per-validator record): closed unconfirmed,
//!   never sent again. One vote may be lost; none is doubled.

use std::time::{Duration, SystemTime};

use tracing::{info, warn};

use super::Inner;
use crate::{
    ports::journal::{Intent, JournalEntry, SubmissionResult},
    scheduler::{Key, PendingSubmit},
};

/// The first pause after a failed journal read or chain query; doubled up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_secs(1);
/// The longest pause between two tries.
const MAX_PAUSE: Duration = Duration::from_secs(30);

/// Reconciles every open intent. Retries the journal and the chain until they answer: nothing
/// may be sent before this is done. The caller races it against the engine's cancellation.
pub(super) async fn run(inner: &Inner) {
    let journal = &inner.ports.journal;
    let timeout = inner.config.journal_timeout;
    let intents = retry("reading open intents", || async {
        match inner.bounded(timeout, journal.open_intents()).await {
            Some(Ok(intents)) => Ok(intents),
            Some(Err(err)) => Err(err.to_string()),
            None => Err("journal timed out".into()),
        }
    })
    .await;
    if intents.is_empty() {
        return;
    }
    info!(open = intents.len(), "reconciling submissions left open by an earlier run");
    let (mut landed, mut resent, mut unconfirmed) = (0u32, 0u32, 0u32);
    for intent in intents {
        let chain = &inner.ports.chain;
        let recorded = retry("checking an open submission on chain", || async {
            inner
                .chain_call(chain.validation_recorded(&intent.msg, intent.epoch))
                .await
                .map_err(|err| err.to_string())
        })
        .await;
        let result = match recorded {
            Some(true) => {
                landed += 1;
                SubmissionResult::ReconciledLanded
            }
            Some(false) => {
                resent += 1;
                resend(inner, &intent);
                SubmissionResult::ReconciledResent
            }
            None => {
                unconfirmed += 1;
                warn!(
                    inference_id = %intent.msg.inference_id,
                    msg_id = %intent.msg.id,
                    "an open revalidation cannot be confirmed on chain; not sent again"
                );
                SubmissionResult::ReconciledUnconfirmed
            }
        };
        journal.record(JournalEntry::Submission {
            msg_id: intent.msg.id.clone(),
            result,
            at: SystemTime::now(),
        });
    }
    retry("writing the reconciled answers", || async {
        match inner.bounded(timeout, journal.flush()).await {
            Some(result) => result.map_err(|err| err.to_string()),
            None => Err("journal timed out".into()),
        }
    })
    .await;
    info!(landed, resent, unconfirmed, "open submissions reconciled");
}

/// Admits the intent's message for submission as it was built.
fn resend(inner: &Inner, intent: &Intent) {
    let key = Key::Classic(intent.msg.inference_id.clone(), intent.msg.revalidation);
    let pending = PendingSubmit {
        msg: intent.msg.clone(),
        outcome: intent.outcome.clone(),
        epoch: intent.epoch,
        reconcile: false,
    };
    if let Err(err) = inner.scheduler.admit_pending(key, intent.lane, pending) {
        warn!(inference_id = %intent.msg.inference_id, %err, "open submission not resent");
    }
}

/// Calls `call` until it succeeds, pausing with a doubling back-off between failures.
async fn retry<T, F, Fut>(what: &str, call: F) -> T
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let mut pause = FIRST_PAUSE;
    loop {
        match call().await {
            Ok(value) => return value,
            Err(err) => {
                warn!(%err, ?pause, "{what} failed; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_PAUSE);
            }
        }
    }
}
