//! Random interleavings of validate / revalidate / sample / recover / failures / time / shutdown,
//! checked against a model: neither stage's permits exceed its capacity, the buffer between them
//! stays bounded and ends empty, no key is in flight twice, and every admitted validation ends
//! in exactly one outcome.

use std::{collections::HashMap, time::Duration};

use proptest::prelude::*;
use testkit::memory::{MemoryPorts, MlScript, MODEL};
use tokio::sync::broadcast::error::TryRecvError;
use validator_core::{
    ports::{ml_node::ReplayError, payload_source::PayloadError},
    Admission, Config, Engine, OutcomeEvent, RetryPolicy,
};

const KEYS: u8 = 12;
const SLOTS: usize = 3;
const FETCH_SLOTS: usize = 4;
const BUFFER: usize = 4;

#[derive(Debug, Clone)]
enum Op {
    Validate(u8),
    Revalidate(u8),
    Sample(u8),
    Recover,
    FailPayload(u8),
    FailReplay,
    HangReplay,
    Advance(u16),
    Shutdown,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..KEYS).prop_map(Op::Validate),
        2 => (0..KEYS).prop_map(Op::Revalidate),
        2 => (0..KEYS).prop_map(Op::Sample),
        1 => Just(Op::Recover),
        2 => (0..KEYS).prop_map(Op::FailPayload),
        1 => Just(Op::FailReplay),
        1 => Just(Op::HangReplay),
        3 => (0u16..400).prop_map(Op::Advance),
        1 => Just(Op::Shutdown),
    ]
}

/// The model: which keys the test itself admitted and has not seen end.
#[derive(Default)]
struct Model {
    in_flight: HashMap<(String, bool), ()>,
    events: Vec<OutcomeEvent>,
}

impl Model {
    fn observe(&mut self, event: OutcomeEvent) {
        self.in_flight.remove(&(event.inference_id.to_string(), event.revalidation));
        self.events.push(event);
    }

    fn admitted(&mut self, key: (String, bool), admission: Admission) -> Result<(), TestCaseError> {
        match admission {
            Admission::Admitted => {
                prop_assert!(
                    self.in_flight.insert(key.clone(), ()).is_none(),
                    "{key:?} admitted while in flight"
                );
            }
            Admission::AlreadyInFlight | Admission::Joined | Admission::AlreadyDone => {}
        }
        Ok(())
    }
}

fn engine_config() -> Config {
    Config {
        slots: SLOTS,
        fetch_slots: Some(FETCH_SLOTS),
        buffer_capacity: Some(BUFFER),
        // Within reach of the test's time steps, so payloads also expire and are fetched again.
        buffer_max_age: Duration::from_secs(150),
        jitter_seed: Some(3),
        outcome_buffer: 1 << 14,
        replay_timeout: Duration::from_secs(30),
        payload_retry: RetryPolicy { attempts: 3, ..RetryPolicy::payload_default() },
        replay_retry: RetryPolicy::fixed(3, Duration::from_secs(60)),
        ..Config::default()
    }
}

async fn run_case(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let fakes = MemoryPorts::new(Duration::from_millis(700), SLOTS + 2);
    fakes.chain.set_epoch_models(9, &[MODEL]);
    for k in 0..KEYS {
        fakes.chain.add_inference(&format!("k{k}"), 9);
    }
    let engine = Engine::start(engine_config(), fakes.ports()).unwrap();
    let mut outcomes = engine.outcomes();
    let mut model = Model::default();
    let mut shut_down = false;

    let drain = |model: &mut Model,
                 outcomes: &mut tokio::sync::broadcast::Receiver<OutcomeEvent>| loop {
        match outcomes.try_recv() {
            Ok(event) => model.observe(event),
            Err(TryRecvError::Empty | TryRecvError::Closed) => break,
            Err(TryRecvError::Lagged(n)) => panic!("lost {n} outcomes"),
        }
    };

    for op in ops {
        drain(&mut model, &mut outcomes);
        match op {
            Op::Validate(k) | Op::Revalidate(k) => {
                let revalidation = matches!(op, Op::Revalidate(_));
                let id = format!("k{k}");
                let result = if revalidation {
                    engine.revalidate(id.clone().into())
                } else {
                    engine.validate(id.clone().into())
                };
                match result {
                    Ok(admission) => model.admitted((id, revalidation), admission)?,
                    Err(err) => prop_assert!(shut_down, "refused before shutdown: {err}"),
                }
            }
            Op::Sample(k) => {
                let result = engine.sample(vec![format!("k{k}").into()]);
                prop_assert!(result.is_ok() || shut_down);
            }
            Op::Recover => {
                let result = engine.recover(9, 5);
                prop_assert!(result.is_ok() || shut_down);
            }
            Op::FailPayload(k) => {
                fakes.payloads.script(&format!("k{k}"), [PayloadError::Unavailable("flap".into())])
            }
            Op::FailReplay => {
                fakes.ml.script([MlScript::Fail(ReplayError::Transport("reset".into()))])
            }
            Op::HangReplay => fakes.ml.script([MlScript::Hang]),
            Op::Advance(secs) => tokio::time::sleep(Duration::from_secs(u64::from(secs))).await,
            Op::Shutdown => {
                let report = engine.shutdown(Duration::from_secs(5)).await;
                prop_assert!(report.drained);
                shut_down = true;
            }
        }
        let status = engine.status();
        prop_assert!(status.slots_in_use <= SLOTS);
        prop_assert!(status.pipeline.fetch_in_use <= FETCH_SLOTS);
        // Fetches start only with room; a payload back from a failed lease or replay may add one
        // per GPU slot.
        prop_assert!(status.pipeline.buffered <= BUFFER + SLOTS, "{:?}", status.pipeline);
    }
    if !shut_down {
        let report = engine.shutdown(Duration::from_secs(5)).await;
        prop_assert!(report.drained);
    }
    drain(&mut model, &mut outcomes);

    let status = engine.status();
    prop_assert!(engine.is_stopped());
    prop_assert!(fakes.ml.peak() <= SLOTS, "ML peak {}", fakes.ml.peak());
    prop_assert!(status.slots_peak <= SLOTS);
    prop_assert_eq!(status.slots_in_use, 0);
    prop_assert!(status.pipeline.fetch_peak <= FETCH_SLOTS);
    prop_assert_eq!(status.pipeline.fetch_in_use, 0);
    prop_assert_eq!((status.pipeline.buffered, status.pipeline.buffered_bytes), (0, 0));
    prop_assert!(status.lanes.iter().all(|lane| lane.in_flight == 0));
    prop_assert_eq!(fakes.broker.held(), 0);
    // Every admitted validation (by the test, the sampler or recovery) ended exactly once.
    prop_assert_eq!(status.admitted, status.outcomes.total());
    prop_assert_eq!(model.events.len() as u64, status.admitted);
    prop_assert!(model.in_flight.is_empty(), "never ended: {:?}", model.in_flight);
    // The chain saw at most one non-revalidation message per inference.
    let mut seen = std::collections::HashSet::new();
    for msg in fakes.chain.submitted().iter().filter(|m| !m.revalidation) {
        prop_assert!(seen.insert(msg.inference_id.clone()), "duplicate {:?}", msg.inference_id);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn random_interleavings_keep_the_invariants(ops in proptest::collection::vec(op(), 1..40)) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(run_case(ops))?;
    }
}
