//! Work shared between replicas (the `Leases` port): several validator processes on one shared
//! journal each follow the chain and admit the same validations, and a lease per validation key
//! makes sure exactly one of them works it.
//!
//! A lease is taken before a key's first attempt, renewed by the implementation while it is
//! held, and released at the key's terminal outcome, which the implementation keeps so another
//! replica asking later learns the work is done. A lease not renewed for [`Leases::ttl`] (its
//! holder died or lost the database) can be taken over by another replica; the taker learns
//! which submission intents the previous holder left open, so it reconciles them instead of
//! sending a second message. The engine checks [`Leases::held`] before it replays and before it
//! commits an intent, and an implementation that can fences the intent itself on the lease.
//!
//! [`SingleReplica`] is the implementation for a process alone on its journal: every lease is
//! granted at once and nothing is stored.

use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;

use super::{chain::InferenceId, journal::Intent};
use crate::Outcome;

/// What a lease is taken on: one validation, the cluster's recovery run, or a named duty.
///
/// The text form is stable and is what implementations store: `c/{revalidation}/{inference id}`
/// for a classic validation (`0` or `1`), `d/{escrow id}/{inference id}` for a devshard one,
/// `recovery` for the recovery run and `leader` for the claim duty.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseKey(String);

impl LeaseKey {
    /// A classic validation: the inference and whether it is a revalidation.
    pub fn classic(inference_id: &InferenceId, revalidation: bool) -> Self {
        Self(format!("c/{}/{}", u8::from(revalidation), inference_id.as_str()))
    }

    /// A devshard validation: the escrow (session) and the inference in it.
    pub fn devshard(escrow_id: &str, inference_id: u64) -> Self {
        Self(format!("d/{escrow_id}/{inference_id}"))
    }

    /// The recovery run: one at a time across the cluster.
    pub fn recovery() -> Self {
        Self("recovery".into())
    }

    /// The leader's duties (the reward claim and the reward check): one replica at a time.
    pub fn leader() -> Self {
        Self("leader".into())
    }

    /// The stored text form.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The classic validation this key names, if it names one.
    pub fn classic_parts(&self) -> Option<(&str, bool)> {
        let rest = self.0.strip_prefix("c/")?;
        let (flag, id) = rest.split_once('/')?;
        match flag {
            "0" => Some((id, false)),
            "1" => Some((id, true)),
            _ => None,
        }
    }
}

impl std::fmt::Display for LeaseKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The answer to [`Leases::acquire`].
#[derive(Debug, Clone, PartialEq)]
pub enum Acquired {
    /// This replica holds the lease now (it took it, already held it, or took it over).
    Held {
        /// Set when the lease was taken over from another replica whose lease expired.
        takeover: Option<Takeover>,
    },
    /// Another replica holds the lease.
    Busy {
        /// The holder's replica id.
        holder: String,
        /// How long its lease lasts unless it renews it.
        remaining: Duration,
    },
    /// A replica finished the work.
    Done {
        /// Its terminal outcome, when recorded.
        outcome: Option<Outcome>,
        /// The replica that finished it.
        by: String,
    },
}

/// A lease taken over from a replica that stopped renewing it.
#[derive(Debug, Clone, PartialEq)]
pub struct Takeover {
    /// The previous holder's replica id.
    pub from: String,
    /// The submission intents of the key still open (committed, no answer recorded), oldest
    /// first: the previous holder may have broadcast them.
    pub open_intents: Vec<OpenIntent>,
}

/// An open intent and how long ago it was committed.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenIntent {
    /// The intent.
    pub intent: Intent,
    /// Time since its commit, by the journal's clock.
    pub age: Duration,
}

/// What this replica's leases look like, for the status report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LeaseStatus {
    /// This replica's id.
    pub replica: String,
    /// Whether the leases are shared with other replicas (false: this process is alone).
    pub shared: bool,
    /// Leases this replica holds.
    pub held: usize,
    /// Whether it holds the leader lease.
    pub leader: bool,
    /// Leases taken over from other replicas since start.
    pub takeovers: u64,
    /// Leases this replica lost (not renewed in time) since start.
    pub lost: u64,
    /// The lease time-to-live, in milliseconds.
    pub ttl_ms: u64,
}

/// A lease could not be read or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("lease: {0}")]
pub struct LeaseError(pub String);

/// Leases on validation keys, the recovery run and the leader's duties. See the module docs.
#[async_trait]
pub trait Leases: Send + Sync + 'static {
    /// This replica's id.
    fn replica(&self) -> &str;

    /// How long a lease lasts without renewal.
    fn ttl(&self) -> Duration;

    /// Takes the lease on `key` for this replica, atomically: granted when nobody holds it, when
    /// this replica holds it, or when its holder's lease expired (a takeover).
    async fn acquire(&self, key: &LeaseKey) -> Result<Acquired, LeaseError>;

    /// Whether this replica still holds the lease, as far as its last renewal shows: false once
    /// the lease may have expired in the shared store. Never waits.
    fn held(&self, key: &LeaseKey) -> bool;

    /// Gives the lease up: with the key's terminal outcome the work is done and later
    /// acquisitions answer [`Acquired::Done`]; without one another replica may take it at once.
    async fn release(&self, key: &LeaseKey, outcome: Option<&Outcome>) -> Result<(), LeaseError>;

    /// The status report.
    fn status(&self) -> LeaseStatus;
}

/// The leases of a process alone on its journal: every lease is granted, nothing is stored.
#[derive(Debug, Clone, Copy, Default)]
pub struct SingleReplica;

#[async_trait]
impl Leases for SingleReplica {
    fn replica(&self) -> &str {
        "single"
    }

    fn ttl(&self) -> Duration {
        Duration::MAX
    }

    async fn acquire(&self, _key: &LeaseKey) -> Result<Acquired, LeaseError> {
        Ok(Acquired::Held { takeover: None })
    }

    fn held(&self, _key: &LeaseKey) -> bool {
        true
    }

    async fn release(&self, _key: &LeaseKey, _outcome: Option<&Outcome>) -> Result<(), LeaseError> {
        Ok(())
    }

    fn status(&self) -> LeaseStatus {
        LeaseStatus { replica: self.replica().into(), leader: true, ..LeaseStatus::default() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_keys_round_trip_ids_with_slashes() {
        let id = InferenceId::from("ab/c+d=");
        let key = LeaseKey::classic(&id, true);
        assert_eq!(key.as_str(), "c/1/ab/c+d=");
        assert_eq!(key.classic_parts(), Some(("ab/c+d=", true)));
        assert_eq!(LeaseKey::classic(&id, false).classic_parts(), Some(("ab/c+d=", false)));
        assert_eq!(LeaseKey::devshard("7", 3).classic_parts(), None);
        assert_eq!(LeaseKey::recovery().classic_parts(), None);
    }
}
