//! Replicas on one shared journal: two engines with their own leases on one lease table, the
//! same chain and executors. Every validation is worked by one of them; a replica that dies has
//! its validations taken over one lease TTL later, and what it left open is reconciled, never
//! sent twice.

use std::{collections::HashMap, sync::Arc, time::Duration};

use testkit::memory::{LeaseTable, MemoryLeases, MemoryMlNode, MemoryPorts, MlScript};
use tokio::{sync::broadcast, time::Instant};
use validator_core::{
    ports::{lease::LeaseKey, Leases},
    Engine, OutcomeEvent, OutcomeKind, Ports,
};

use crate::{config, settle};

const TTL: Duration = Duration::from_secs(15);

/// A replica: its engine, its leases and its outcomes.
struct Replica {
    engine: Engine,
    leases: MemoryLeases,
    outcomes: broadcast::Receiver<OutcomeEvent>,
}

impl Replica {
    fn start(table: &LeaseTable, name: &str, ports: Ports) -> Self {
        let leases = table.replica(name, TTL);
        let ports = Ports { leases: Arc::new(leases.clone()), ..ports };
        let engine = Engine::start(config(4), ports).unwrap();
        let outcomes = engine.outcomes();
        Self { engine, leases, outcomes }
    }

    async fn collect(&mut self, n: usize) -> Vec<OutcomeEvent> {
        let mut events = Vec::with_capacity(n);
        while events.len() < n {
            events.push(self.outcomes.recv().await.unwrap());
        }
        events
    }
}

fn ids(n: usize) -> Vec<String> {
    // Shaped as the chain's ids: base64 with `/`, `+` and `=`.
    (0..n).map(|i| format!("aW5m/{i:03}+Zg==")).collect()
}

/// Each submitted message's inference, counted.
fn submissions(fakes: &MemoryPorts) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for msg in fakes.chain.submitted() {
        *counts.entry(msg.inference_id.as_str().to_owned()).or_default() += 1;
    }
    counts
}

#[tokio::test(start_paused = true)]
async fn two_replicas_sampling_the_same_inferences_submit_each_once() {
    let fakes = MemoryPorts::new(Duration::from_millis(50), 8);
    let table = LeaseTable::new(fakes.journal.clone());
    let ids = ids(40);
    for id in &ids {
        fakes.chain.add_inference(id, 10);
    }
    let mut a = Replica::start(&table, "a", fakes.ports());
    let mut b = Replica::start(&table, "b", fakes.ports());
    let sampled: Vec<_> = ids.iter().map(|id| id.as_str().into()).collect();
    a.engine.sample(sampled.clone()).unwrap();
    b.engine.sample(sampled).unwrap();

    let (from_a, from_b) = (a.collect(ids.len()).await, b.collect(ids.len()).await);
    let counts = submissions(&fakes);
    assert_eq!(counts.len(), ids.len(), "every inference submitted");
    assert!(counts.values().all(|&n| n == 1), "none twice: {counts:?}");
    let kinds = |events: &[OutcomeEvent], kind| {
        events.iter().filter(|event| event.outcome.kind() == kind).count()
    };
    let submitted = kinds(&from_a, OutcomeKind::Submitted) + kinds(&from_b, OutcomeKind::Submitted);
    let elsewhere = kinds(&from_a, OutcomeKind::SkippedWorkedElsewhere)
        + kinds(&from_b, OutcomeKind::SkippedWorkedElsewhere);
    assert_eq!((submitted, elsewhere), (ids.len(), ids.len()), "{from_a:?} {from_b:?}");
    assert_eq!(table.done().len(), ids.len());
    assert_eq!(a.leases.status().held + b.leases.status().held, 0);
}

#[tokio::test(start_paused = true)]
async fn a_dead_replicas_validations_are_taken_over_one_ttl_later() {
    let fakes = MemoryPorts::new(Duration::from_millis(50), 8);
    let table = LeaseTable::new(fakes.journal.clone());
    let ids = ids(6);
    for id in &ids {
        fakes.chain.add_inference(id, 10);
    }
    // Replica a's ML node never answers: it holds its leases until it dies.
    let stuck = MemoryMlNode::new(Duration::ZERO);
    stuck.script(vec![MlScript::Hang; 64]);
    let a = Replica::start(&table, "a", Ports { ml: Arc::new(stuck.clone()), ..fakes.ports() });
    let sampled: Vec<_> = ids.iter().map(|id| id.as_str().into()).collect();
    a.engine.sample(sampled.clone()).unwrap();
    settle(|| a.leases.status().held == ids.len()).await;

    let mut b = Replica::start(&table, "b", fakes.ports());
    b.engine.sample(sampled).unwrap();
    // b finds every lease busy and waits without a slot.
    settle(|| b.engine.status().waiting_to_retry == ids.len()).await;
    assert_eq!(b.engine.status().slots_in_use, 0);
    assert!(fakes.chain.submitted().is_empty());

    let killed = Instant::now();
    table.kill("a");
    let events = b.collect(ids.len()).await;
    let resumed = Instant::now() - killed;
    assert!(events.iter().all(|event| event.outcome.kind() == OutcomeKind::Submitted));
    assert!(resumed >= TTL, "taken over before the lease expired: {resumed:?}");
    assert!(resumed < TTL + Duration::from_secs(1), "taken over late: {resumed:?}");
    assert_eq!(b.leases.takeovers(), ids.len());
    let counts = submissions(&fakes);
    assert_eq!(counts.len(), ids.len());
    assert!(counts.values().all(|&n| n == 1), "{counts:?}");
    a.engine.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn an_open_intent_of_a_dead_replica_is_checked_on_chain_before_it_is_sent_again() {
    let fakes = MemoryPorts::new(Duration::from_millis(50), 8);
    let table = LeaseTable::new(fakes.journal.clone());
    let [landed, lost, warm] = ["bGFuZA/1+x==", "bG9zdA/2+y==", "d2FybQ/3+z=="];
    for id in [landed, lost, warm] {
        fakes.chain.add_inference(id, 10);
    }
    // b is up (its own start-up reconciliation done: its first validation ended) before a
    // leaves anything open, so what a left is found through the takeover alone.
    let mut b = Replica::start(&table, "b", fakes.ports());
    b.engine.sample(vec![warm.into()]).unwrap();
    assert_eq!(b.collect(1).await[0].outcome.kind(), OutcomeKind::Submitted);

    // Replica a committed an intent for each and died: one reached the chain, one did not.
    let a = table.replica("a", TTL);
    for (id, msg_id) in [(landed, "m-landed"), (lost, "m-lost")] {
        a.acquire(&LeaseKey::classic(&id.into(), false)).await.unwrap();
        fakes.journal.leave_open(crate::journal::open_intent(id, false, msg_id));
    }
    fakes.chain.set_validated(10, &[landed]);
    table.kill("a");

    b.engine.sample(vec![landed.into(), lost.into()]).unwrap();
    let events = b.collect(2).await;
    assert!(
        events.iter().all(|event| event.outcome.kind() == OutcomeKind::Submitted),
        "{events:#?}"
    );
    let sent: Vec<_> = fakes
        .chain
        .submitted()
        .into_iter()
        .filter(|msg| msg.inference_id.as_str() != warm)
        .collect();
    assert_eq!(sent.len(), 1, "only the intent missing on chain is sent: {sent:?}");
    assert_eq!((sent[0].id.as_str(), sent[0].inference_id.as_str()), ("m-lost", lost));
    assert_eq!(b.leases.takeovers(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_devshard_job_called_on_two_replicas_is_replayed_once_and_both_callers_get_its_verdict() {
    let fakes = MemoryPorts::new(Duration::from_millis(50), 8);
    fakes.chain.set_epoch_models(crate::devshard::EPOCH, &[testkit::memory::MODEL]);
    let table = LeaseTable::new(fakes.journal.clone());
    let a = Replica::start(&table, "a", fakes.ports());
    let b = Replica::start(&table, "b", fakes.ports());
    let job = crate::devshard::job("42", 7, false);
    let first = a.engine.validate_devshard(job.clone()).unwrap();
    let second = b.engine.validate_devshard(job).unwrap();
    let (first, second) = (first.outcome().await, second.outcome().await);
    assert!(matches!(first, validator_core::Outcome::Judged { .. }), "{first:?}");
    assert_eq!(first, second, "the second caller gets the first replica's verdict");
    assert_eq!(fakes.ml.calls(), 1, "replayed once across the replicas");
}
