//! The leases in the `leases` table: one row per key (`holder`, `state` `held` or `done`,
//! `expires_at`, the finished work's `outcome`).
//!
//! - **Acquire** is one transaction: `INSERT ... ON CONFLICT DO NOTHING` takes a free key; for a
//!   taken one, `SELECT ... FOR UPDATE` locks the row and decides: done, ours (extended),
//!   expired (taken over: the holder and expiry change, and the key's open intents are read in
//!   the same transaction), or busy. The row lock, not `SKIP LOCKED`, is what serves
//!   correctness here: a second taker must wait and then see the first as the holder, not skip
//!   the row and conclude nothing.
//! - **Time** is the database's clock (`clock_timestamp()`) for every expiry, so replicas with
//!   skewed clocks still agree on who holds what. The replica keeps a local deadline per key,
//!   counted from just before the statement that set the expiry was sent, so its own view
//!   never outlives the database's: [`Leases::held`] answers from it without a round trip.
//! - **Renewal**: a task extends every held key every third of the TTL in one `UPDATE`; keys
//!   the update no longer finds (taken over after a lapse) are lost.

use std::{
    collections::HashSet,
    sync::{atomic::AtomicU64, Mutex, PoisonError, Weak},
    time::{Duration, Instant},
};

use async_trait::async_trait;
use tokio::sync::watch;
use tracing::{info, warn};
use validator_core::{
    ports::{
        lease::{Acquired, LeaseError, LeaseKey, LeaseStatus, OpenIntent, Takeover},
        Leases,
    },
    Outcome,
};

use super::{read::decode_intent, Deadlines, PostgresJournal, Shared};
use crate::{Error, Result};

/// What this replica holds, by its own clock.
pub(super) struct Book {
    enabled: bool,
    ttl: Duration,
    held: Mutex<Deadlines>,
    takeovers: AtomicU64,
    lost: AtomicU64,
}

impl Book {
    pub(super) fn new(enabled: bool, ttl: Duration) -> Self {
        Self {
            enabled,
            ttl,
            held: Mutex::default(),
            takeovers: AtomicU64::new(0),
            lost: AtomicU64::new(0),
        }
    }

    pub(super) fn enabled(&self) -> bool {
        self.enabled
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Deadlines> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn hold(&self, key: &str, sent: Instant) {
        self.lock().insert(key.to_owned(), sent + self.ttl);
        self.gauge();
    }

    fn forget(&self, key: &str) {
        self.lock().remove(key);
        self.gauge();
    }

    fn gauge(&self) {
        let held = self.lock().len();
        metrics::gauge!("validator_leases_held").set(held as f64);
    }

    fn count(counter: &AtomicU64) -> u64 {
        counter.load(std::sync::atomic::Ordering::Relaxed)
    }
}

fn ttl_ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)
}

fn lease_error(err: Error) -> LeaseError {
    LeaseError(err.to_string())
}

impl PostgresJournal {
    async fn acquire_once(&self, key: &LeaseKey) -> Result<Acquired> {
        let replica = self.shared.replica.clone();
        let ttl = ttl_ms(self.shared.book.ttl);
        let key_text = key.as_str().to_owned();
        let classic = key.classic_parts().map(|(id, reval)| (id.to_owned(), reval));
        let sent = Instant::now();
        let acquired = self
            .call(|mut client| async move {
                // Most keys are new: one statement on its own takes them. Only a key with a row
                // needs the transaction that locks the row and reads it.
                let insert = client
                    .prepare_cached(
                        "INSERT INTO leases (key, holder, state, expires_at, taken_at, \
                         updated_at) VALUES ($1, $2, 'held', clock_timestamp() + $3::bigint \
                         * interval '1 millisecond', clock_timestamp(), clock_timestamp()) \
                         ON CONFLICT (key) DO NOTHING",
                    )
                    .await?;
                if client.execute(&insert, &[&key_text, &replica, &ttl]).await? == 1 {
                    return Ok(Acquired::Held { takeover: None });
                }
                // A row deleted between the insert and the lock: insert again, once.
                for _ in 0..2 {
                    let tx = client.transaction().await?;
                    let inserted = tx.execute(&insert, &[&key_text, &replica, &ttl]).await?;
                    if inserted == 1 {
                        tx.commit().await?;
                        return Ok(Acquired::Held { takeover: None });
                    }
                    let Some(row) = tx
                        .query_opt(
                            "SELECT holder, state, expires_at <= clock_timestamp(), \
                             (extract(epoch from greatest(expires_at - clock_timestamp(), \
                             interval '0')) * 1000)::bigint, outcome \
                             FROM leases WHERE key = $1 FOR UPDATE",
                            &[&key_text],
                        )
                        .await?
                    else {
                        tx.commit().await?;
                        continue;
                    };
                    let holder: String = row.get(0);
                    let state: String = row.get(1);
                    let expired: bool = row.get(2);
                    if state == "done" {
                        tx.commit().await?;
                        let outcome = row.get::<_, Option<String>>(4).and_then(|json| {
                            serde_json::from_str::<Outcome>(&json)
                                .inspect_err(|err| warn!(%err, "undecodable outcome of a lease"))
                                .ok()
                        });
                        return Ok(Acquired::Done { outcome, by: holder });
                    }
                    if holder != replica && !expired {
                        tx.commit().await?;
                        let remaining =
                            Duration::from_millis(u64::try_from(row.get::<_, i64>(3)).unwrap_or(0));
                        return Ok(Acquired::Busy { holder, remaining });
                    }
                    tx.execute(
                        "UPDATE leases SET holder = $2, expires_at = clock_timestamp() + \
                         $3::bigint * interval '1 millisecond', updated_at = clock_timestamp(), \
                         taken_at = CASE WHEN holder = $2 THEN taken_at ELSE clock_timestamp() \
                         END WHERE key = $1",
                        &[&key_text, &replica, &ttl],
                    )
                    .await?;
                    if holder == replica {
                        tx.commit().await?;
                        return Ok(Acquired::Held { takeover: None });
                    }
                    let mut open_intents = Vec::new();
                    if let Some((inference_id, revalidation)) = &classic {
                        let rows = tx
                            .query(
                                "SELECT msg_id, intent, \
                                 (extract(epoch from clock_timestamp()) * 1000)::bigint \
                                 - intended_at FROM submissions WHERE inference_id = $1 \
                                 AND revalidation = $2 AND open ORDER BY intended_at, seq",
                                &[inference_id, revalidation],
                            )
                            .await?;
                        for row in &rows {
                            let intent = decode_intent(row.get(0), row.get(1))?;
                            let age = u64::try_from(row.get::<_, i64>(2)).unwrap_or(0);
                            open_intents
                                .push(OpenIntent { intent, age: Duration::from_millis(age) });
                        }
                    }
                    tx.commit().await?;
                    return Ok(Acquired::Held {
                        takeover: Some(Takeover { from: holder, open_intents }),
                    });
                }
                Err(Error::Write("the lease row kept vanishing".into()))
            })
            .await?;
        if let Acquired::Held { takeover } = &acquired {
            self.shared.book.hold(key.as_str(), sent);
            if let Some(takeover) = takeover {
                self.shared.book.takeovers.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                metrics::counter!("validator_lease_takeovers_total").increment(1);
                info!(%key, from = %takeover.from, "lease taken over");
            }
        }
        Ok(acquired)
    }
}

#[async_trait]
impl Leases for PostgresJournal {
    fn replica(&self) -> &str {
        &self.shared.replica
    }

    fn ttl(&self) -> Duration {
        self.shared.book.ttl
    }

    async fn acquire(&self, key: &LeaseKey) -> Result<Acquired, LeaseError> {
        if !self.shared.book.enabled {
            return Ok(Acquired::Held { takeover: None });
        }
        self.acquire_once(key).await.map_err(lease_error)
    }

    fn held(&self, key: &LeaseKey) -> bool {
        if !self.shared.book.enabled {
            return true;
        }
        self.shared.book.lock().get(key.as_str()).is_some_and(|deadline| *deadline > Instant::now())
    }

    async fn release(&self, key: &LeaseKey, outcome: Option<&Outcome>) -> Result<(), LeaseError> {
        if !self.shared.book.enabled {
            return Ok(());
        }
        self.shared.book.forget(key.as_str());
        let replica = self.shared.replica.clone();
        let key = key.as_str().to_owned();
        let outcome = outcome
            .map(serde_json::to_string)
            .transpose()
            .map_err(|err| LeaseError(err.to_string()))?;
        self.call(|client| async move {
            match outcome {
                Some(outcome) => {
                    let statement = client
                        .prepare_cached(
                            "UPDATE leases SET state = 'done', outcome = $3, \
                             expires_at = clock_timestamp(), updated_at = clock_timestamp() \
                             WHERE key = $1 AND holder = $2",
                        )
                        .await?;
                    client.execute(&statement, &[&key, &replica, &outcome]).await?;
                }
                None => {
                    let statement = client
                        .prepare_cached(
                            "DELETE FROM leases WHERE key = $1 AND holder = $2 AND state = 'held'",
                        )
                        .await?;
                    client.execute(&statement, &[&key, &replica]).await?;
                }
            }
            Ok(())
        })
        .await
        .map_err(lease_error)
    }

    fn status(&self) -> LeaseStatus {
        let book = &self.shared.book;
        let now = Instant::now();
        let held = book.lock().values().filter(|deadline| **deadline > now).count();
        LeaseStatus {
            replica: self.shared.replica.clone(),
            shared: book.enabled,
            held,
            leader: self.held(&LeaseKey::leader()),
            takeovers: Book::count(&book.takeovers),
            lost: Book::count(&book.lost),
            ttl_ms: u64::try_from(book.ttl.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

/// Renews every held lease each third of the TTL until `stopped` turns true or the journal is
/// dropped (then, as when the process dies, its leases lapse).
pub(super) async fn renew(shared: Weak<Shared>, mut stopped: watch::Receiver<bool>) {
    let Some(interval) = shared.upgrade().map(|shared| shared.book.ttl / 3) else { return };
    loop {
        tokio::select! {
            _ = stopped.wait_for(|stop| *stop) => return,
            () = tokio::time::sleep(interval) => {}
        }
        let Some(shared) = shared.upgrade() else { return };
        let journal = PostgresJournal { shared };
        if !journal.shared.book.enabled {
            return;
        }
        renew_once(&journal).await;
    }
}

/// One renewal of every held lease.
async fn renew_once(journal: &PostgresJournal) {
    let book = &journal.shared.book;
    {
        let keys: Vec<String> = book.lock().keys().cloned().collect();
        if keys.is_empty() {
            return;
        }
        let sent = Instant::now();
        let replica = journal.shared.replica.clone();
        let ttl = ttl_ms(book.ttl);
        let asked = keys.clone();
        let renewed = journal
            .call(|client| async move {
                let rows = client
                    .query(
                        "UPDATE leases SET expires_at = clock_timestamp() + $3::bigint \
                         * interval '1 millisecond', updated_at = clock_timestamp() \
                         WHERE holder = $1 AND state = 'held' AND key = ANY($2) RETURNING key",
                        &[&replica, &asked, &ttl],
                    )
                    .await?;
                Ok(rows.iter().map(|row| row.get::<_, String>(0)).collect::<HashSet<String>>())
            })
            .await;
        let renewed = match renewed {
            Ok(renewed) => renewed,
            Err(err) => {
                warn!(%err, held = keys.len(), "leases not renewed; they lapse unless renewed in time");
                return;
            }
        };
        let mut lost = Vec::new();
        {
            let mut held = book.lock();
            for key in keys {
                if renewed.contains(&key) {
                    if let Some(deadline) = held.get_mut(&key) {
                        *deadline = (*deadline).max(sent + book.ttl);
                    }
                } else if held.get(&key).is_some_and(|deadline| *deadline <= sent + book.ttl) {
                    // Not taken again since the update was sent: another replica has it.
                    held.remove(&key);
                    lost.push(key);
                }
            }
        }
        book.gauge();
        for key in lost {
            book.lost.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            metrics::counter!("validator_leases_lost_total").increment(1);
            warn!(%key, "lease lost: another replica took it over");
        }
    }
}

/// Hands back every lease this replica holds, for a clean stop.
pub(super) async fn release_all(journal: &PostgresJournal) -> Result<()> {
    let book = &journal.shared.book;
    if !book.enabled {
        return Ok(());
    }
    book.lock().clear();
    book.gauge();
    let replica = journal.shared.replica.clone();
    journal
        .call(|client| async move {
            client
                .execute("DELETE FROM leases WHERE holder = $1 AND state = 'held'", &[&replica])
                .await?;
            Ok(())
        })
        .await
}
