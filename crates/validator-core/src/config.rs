//! The engine's configuration. Plain serde data: only the binary knows where it comes from.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How one stage retries a failed attempt. A failed attempt gives its slot back and waits in the
/// delayed queue; it never sleeps holding a slot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts in all, the first included. At least 1.
    pub attempts: u16,
    /// Fixed wait before the next attempt.
    #[serde(with = "duration_ms")]
    pub interval: Duration,
    /// Upper bound of the uniform random wait added to `interval`; the lower bound is
    /// `jitter_min`.
    #[serde(with = "duration_ms")]
    pub jitter_max: Duration,
    /// Lower bound of the random wait; ignored when `jitter_max` is zero.
    #[serde(with = "duration_ms")]
    pub jitter_min: Duration,
}

impl RetryPolicy {
    /// Upstream's payload retrieval: 10 attempts, 2 min plus 1-120 s apart (DOMAIN.md 2.3).
    pub fn payload_default() -> Self {
        Self {
            attempts: 10,
            interval: Duration::from_secs(120),
            jitter_min: Duration::from_secs(1),
            jitter_max: Duration::from_secs(120),
        }
    }

    /// Upstream's lock-and-replay loop: 5 attempts, 4 min apart (DOMAIN.md 2.5).
    pub fn replay_default() -> Self {
        Self::fixed(5, Duration::from_secs(240))
    }

    /// Submission of a finished result: 5 attempts, 10 s apart. Upstream hands the message to a
    /// tx manager that retries on its own; here the retry is visible and bounded.
    pub fn submit_default() -> Self {
        Self::fixed(5, Duration::from_secs(10))
    }

    /// `attempts` attempts, `interval` apart, no jitter.
    pub fn fixed(attempts: u16, interval: Duration) -> Self {
        Self { attempts, interval, jitter_min: Duration::ZERO, jitter_max: Duration::ZERO }
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self::replay_default()
    }
}

/// Configuration of the [`Engine`](crate::Engine).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Replays that may run at once across every lane: the GPU stage's slot count, sized to the
    /// ML nodes' capacity. Upstream's `maxConcurrentValidations` is 10.
    pub slots: usize,
    /// Network-stage attempts (payload fetch and verification, chain reads, submissions) that
    /// may run at once; `None` is four times `slots`: recovery may use half of them, enough to
    /// keep the GPU stage fed when fetches take on average up to twice as long as replays.
    pub fetch_slots: Option<usize>,
    /// Verified payloads waiting for a GPU slot, with the fetches that will add to them, held at
    /// most; `None` is four times `slots`.
    pub buffer_capacity: Option<usize>,
    /// Bytes of verified payloads waiting for a GPU slot held at most; `None` is 16 MiB per
    /// slot (two payloads of a 5,000-token answer with 20 top logprobs).
    pub buffer_bytes: Option<usize>,
    /// A buffered payload older than this is dropped and fetched again when its turn comes.
    /// The default outlasts the lock-and-replay retry schedule (4 × 4 min), so a payload is
    /// fetched once however often its lease is refused.
    #[serde(with = "duration_ms")]
    pub buffer_max_age: Duration,
    /// Share of dispatches, in percent, that recovery is guaranteed while it has ready work and
    /// live or revalidation work competes. 0 gives strict priority.
    pub recovery_floor_percent: u8,
    /// Admitted, not yet finished live validations held at most; more are refused at admission.
    pub live_capacity: usize,
    /// Admitted, not yet finished revalidations held at most.
    pub revalidation_capacity: usize,
    /// Admitted, not yet finished devshard votes on challenged inferences held at most.
    pub challenged_capacity: usize,
    /// Recovery items held at most (queued, waiting to retry or running). Detection waits for
    /// room, so memory does not grow with the backlog.
    pub recovery_window: usize,
    /// Batches of sampled ids waiting for their sampling decision; `sample` refuses more.
    pub intake_capacity: usize,
    /// Payload retrieval retries.
    pub payload_retry: RetryPolicy,
    /// Lock-and-replay retries (no node, ML node failure, unparsable answer).
    pub replay_retry: RetryPolicy,
    /// Submission retries.
    pub submit_retry: RetryPolicy,
    /// Bound of one payload fetch attempt, on top of the adapter's own timeout.
    #[serde(with = "duration_ms")]
    pub payload_timeout: Duration,
    /// Bound of one ML replay (DOMAIN.md 2.6: 5 min).
    #[serde(with = "duration_ms")]
    pub replay_timeout: Duration,
    /// Bound of one chain query or submission.
    #[serde(with = "duration_ms")]
    pub chain_timeout: Duration,
    /// Bound of one call the engine awaits from the journal or the leases (an intent, a
    /// lookup, taking or giving up a lease), on top of the adapter's own timeout.
    #[serde(with = "duration_ms")]
    pub journal_timeout: Duration,
    /// Bound of one lease request to the model-lock broker (a NodeManager call).
    #[serde(with = "duration_ms")]
    pub lock_timeout: Duration,
    /// How long a devshard job waiting for ML capacity waits before it looks again, unless one
    /// of our own leases ends first (upstream polls `AcquireMLNode` every 2 s). The wait holds
    /// no slot and counts against no retry budget; the job's deadline bounds it.
    #[serde(with = "duration_ms")]
    pub lock_wait: Duration,
    /// The longest a devshard job may take from admission to its verdict, across every retry
    /// and wait; past it the job gives up without a verdict.
    #[serde(with = "duration_ms")]
    pub devshard_deadline: Duration,
    /// How long a model's validation threshold and the chain's `logprobs_mode` are reused
    /// before they are read again (upstream caches thresholds 10 min).
    #[serde(with = "duration_ms")]
    pub chain_params_ttl: Duration,
    /// How long a downloaded set of already-validated ids is reused before it is fetched again.
    #[serde(with = "duration_ms")]
    pub validated_set_ttl: Duration,
    /// A 404 from the executor skips the inference at once (newer upstream behaviour). When
    /// false, a 404 is retried like any transient failure and ends in an invalidation.
    pub payload_gone_is_final: bool,
    /// Seed of the retry jitter; `None` seeds from the OS.
    pub jitter_seed: Option<u64>,
    /// Capacity of the outcome stream; a receiver that falls further behind loses the oldest.
    pub outcome_buffer: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            slots: 10,
            fetch_slots: None,
            buffer_capacity: None,
            buffer_bytes: None,
            buffer_max_age: Duration::from_secs(1800),
            recovery_floor_percent: 25,
            live_capacity: 10_000,
            revalidation_capacity: 1_000,
            challenged_capacity: 10_000,
            recovery_window: 4_096,
            intake_capacity: 1_024,
            payload_retry: RetryPolicy::payload_default(),
            replay_retry: RetryPolicy::replay_default(),
            submit_retry: RetryPolicy::submit_default(),
            payload_timeout: Duration::from_secs(30),
            replay_timeout: Duration::from_secs(300),
            chain_timeout: Duration::from_secs(30),
            journal_timeout: Duration::from_secs(10),
            lock_timeout: Duration::from_secs(10),
            lock_wait: Duration::from_secs(2),
            devshard_deadline: Duration::from_secs(30 * 60),
            chain_params_ttl: Duration::from_secs(600),
            validated_set_ttl: Duration::from_secs(30),
            payload_gone_is_final: true,
            jitter_seed: None,
            outcome_buffer: 4_096,
        }
    }
}

/// The most slots of either stage: beyond any real deployment, and far below what would
/// exhaust memory in bookkeeping.
pub const MAX_SLOTS: usize = 100_000;

/// The most entries of any queue or buffer the engine sizes from its configuration (lanes,
/// intake, outcome buffer): far beyond a real backlog, far below what would exhaust memory.
pub const MAX_QUEUE: usize = 10_000_000;

impl Config {
    /// The network stage's slot count.
    pub fn fetch_slots(&self) -> usize {
        self.fetch_slots.unwrap_or(self.slots.saturating_mul(4))
    }

    /// The buffer's bound in payloads (waiting and being fetched).
    pub fn buffer_capacity(&self) -> usize {
        self.buffer_capacity.unwrap_or(self.slots.saturating_mul(4))
    }

    /// The buffer's bound in bytes.
    pub fn buffer_bytes(&self) -> usize {
        self.buffer_bytes.unwrap_or(self.slots.saturating_mul(16 << 20))
    }

    /// Checks the values, naming the first bad one.
    pub fn validate(&self) -> crate::Result<()> {
        let bad = |key: &'static str, allowed: &'static str| {
            Err(crate::Error::InvalidConfig { key, allowed })
        };
        if self.slots == 0 || self.slots > MAX_SLOTS {
            return bad("slots", "1 to 100000");
        }
        if self.fetch_slots.is_some_and(|n| n == 0 || n > MAX_SLOTS) {
            return bad("fetch_slots", "1 to 100000");
        }
        if self.buffer_capacity.is_some_and(|n| n == 0 || n > MAX_SLOTS) {
            return bad("buffer_capacity", "1 to 100000");
        }
        if self.buffer_bytes.is_some_and(|n| n < 1 << 20) {
            return bad("buffer_bytes", "at least 1048576 (1 MiB)");
        }
        if self.recovery_floor_percent > 100 {
            return bad("recovery_floor_percent", "0 to 100");
        }
        if self.live_capacity == 0 || self.live_capacity > MAX_QUEUE {
            return bad("live_capacity", "1 to 10000000");
        }
        if self.revalidation_capacity == 0 || self.revalidation_capacity > MAX_QUEUE {
            return bad("revalidation_capacity", "1 to 10000000");
        }
        if self.challenged_capacity == 0 || self.challenged_capacity > MAX_QUEUE {
            return bad("challenged_capacity", "1 to 10000000");
        }
        if self.recovery_window == 0 || self.recovery_window > MAX_QUEUE {
            return bad("recovery_window", "1 to 10000000");
        }
        if self.intake_capacity == 0 || self.intake_capacity > MAX_QUEUE {
            return bad("intake_capacity", "1 to 10000000");
        }
        if self.outcome_buffer == 0 || self.outcome_buffer > MAX_QUEUE {
            return bad("outcome_buffer", "1 to 10000000");
        }
        for (key, policy) in [
            ("payload_retry.attempts", &self.payload_retry),
            ("replay_retry.attempts", &self.replay_retry),
            ("submit_retry.attempts", &self.submit_retry),
        ] {
            if policy.attempts == 0 {
                return bad(key, "at least 1");
            }
        }
        for (key, policy) in [
            ("payload_retry.jitter_min", &self.payload_retry),
            ("replay_retry.jitter_min", &self.replay_retry),
            ("submit_retry.jitter_min", &self.submit_retry),
        ] {
            if policy.jitter_max > Duration::ZERO && policy.jitter_min > policy.jitter_max {
                return bad(key, "at most jitter_max");
            }
        }
        for (key, timeout) in [
            ("payload_timeout", self.payload_timeout),
            ("replay_timeout", self.replay_timeout),
            ("chain_timeout", self.chain_timeout),
            ("journal_timeout", self.journal_timeout),
            ("lock_timeout", self.lock_timeout),
            ("lock_wait", self.lock_wait),
            ("devshard_deadline", self.devshard_deadline),
            ("buffer_max_age", self.buffer_max_age),
        ] {
            if timeout.is_zero() {
                return bad(key, "a positive duration");
            }
        }
        Ok(())
    }
}

/// Durations as whole milliseconds on the wire, so configuration files stay plain numbers. Use
/// with `#[serde(with = "validator_core::config::duration_ms")]`; every crate's `Config` does.
pub mod duration_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes `d` as whole milliseconds (saturating).
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    /// Reads whole milliseconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_upstreams_and_valid() {
        let config = Config::default();
        config.validate().unwrap();
        assert_eq!(config.slots, 10);
        assert_eq!(config.payload_retry.attempts, 10);
        assert_eq!(config.replay_retry.interval, Duration::from_secs(240));
        assert_eq!(config.replay_timeout, Duration::from_secs(300));
    }

    #[test]
    fn bad_values_name_their_key() {
        let config = Config { slots: 0, ..Config::default() };
        let err = config.validate().unwrap_err();
        assert!(err.to_string().contains("slots"), "{err}");

        let mut config = Config::default();
        config.replay_retry.attempts = 0;
        assert!(config.validate().unwrap_err().to_string().contains("replay_retry.attempts"));
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = serde_json::from_str::<Config>(r#"{"slotz": 3}"#).unwrap_err();
        assert!(err.to_string().contains("slotz"), "{err}");
    }
}
