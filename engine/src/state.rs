//! Shared run state: dedup claims, limit counters, the undos of reversible steps, and the steps
//! that wait for approval.
//!
//! Kept in JetStream KV buckets ([`KvState`]) so every replica sees the same dedup windows and
//! limits; a dedup key held by a run is granted again to the same run, so a redelivered event is
//! not suppressed by its own first delivery. [`MemoryState`] serves `riposte test` and `explain`,
//! which need no server. Values carry their own expiry, so windows of any length work whatever the
//! bucket's age limit.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::approval::{Approvals, PendingApproval};
use crate::revert::{Pending, Reverts};

/// The state store could not be reached or answered wrongly. The event is not acknowledged, so
/// it is delivered again.
#[derive(Debug, Error)]
#[error("state store: {0}")]
pub struct StateError(pub String);

/// The answer to a dedup claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This run holds the key now.
    Granted,
    /// Another run holds it until the given time.
    Held {
        /// The run holding it.
        by: String,
        /// Until when.
        until: DateTime<Utc>,
    },
}

/// Shared run state.
#[async_trait]
pub trait StateStore: Send + Sync + std::fmt::Debug {
    /// Claims a dedup key for `window`; a key held by the same run counts as granted.
    async fn claim(
        &self,
        key: &str,
        run_id: &str,
        window: Duration,
        now: DateTime<Utc>,
    ) -> Result<Claim, StateError>;
    /// Takes one slot of a limit (`max` per `per`, fixed windows). False when none is left.
    async fn take_slot(
        &self,
        scope: &str,
        max: u32,
        per: Duration,
        now: DateTime<Utc>,
    ) -> Result<bool, StateError>;
    /// Keeps the undo of a reversible step until it is carried out.
    async fn record_revert(&self, pending: &Pending) -> Result<(), StateError>;
    /// Keeps a step that waits for approval until it is decided and the run resumed.
    async fn record_approval(&self, pending: &PendingApproval) -> Result<(), StateError>;
    /// The step ledger's entry for step `step` of run `run_id`, if there is one.
    async fn step_entry(&self, run_id: &str, step: &str) -> Result<Option<StepEntry>, StateError>;
    /// Marks a step started: creates its ledger entry, only if there is none. `Some(entry)`
    /// when another delivery of the run got there first.
    async fn step_started(
        &self,
        run_id: &str,
        step: &str,
        entry: &StepEntry,
    ) -> Result<Option<StepEntry>, StateError>;
    /// Marks a step finished, with its outcome.
    async fn step_finished(
        &self,
        run_id: &str,
        step: &str,
        entry: &StepEntry,
    ) -> Result<(), StateError>;
}

/// Where a step with side effects stands in the step ledger: written `started` before the
/// action and `finished` after it, so a redelivered event does not perform it twice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepEntry {
    /// `started` or `finished`.
    pub state: StepState,
    /// The replica that performed it.
    pub replica: String,
    /// When the entry was written.
    pub at: DateTime<Utc>,
    /// How it ended (`ok`, `failed`, `skipped`), once finished.
    #[serde(default)]
    pub outcome: Option<String>,
    /// The connector's output, once finished.
    #[serde(default)]
    pub output: Option<serde_json::Value>,
    /// Why it failed or was skipped.
    #[serde(default)]
    pub reason: Option<String>,
    /// What the step's audit record said about its undo.
    #[serde(default)]
    pub revert: Option<serde_json::Value>,
    /// Attempts made.
    #[serde(default)]
    pub attempts: Option<u32>,
}

/// The state of a step in the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    /// The action was begun; it may or may not have been carried out.
    Started,
    /// The action ended and its outcome is recorded.
    Finished,
}

/// The ledger key of step `step` of run `run_id`: `<run id>.<step id>` (the step id hashed
/// when it holds characters a key may not).
pub fn step_key(run_id: &str, step: &str) -> String {
    let plain = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    if plain(run_id) && plain(step) {
        format!("{run_id}.{step}")
    } else {
        kv_key(run_id, step)
    }
}

/// Opens a KV bucket, creating it (one value per key, entries kept `max_age`, zero: forever,
/// `replicas` copies) when it does not exist. An existing bucket is left as it is.
pub async fn open_bucket(
    js: &jetstream::Context,
    name: &str,
    max_age: Duration,
    replicas: usize,
) -> Result<kv::Store, StateError> {
    let store = match js.get_key_value(name).await {
        Ok(mut store) => {
            warn_replicas(&mut store, name, replicas).await;
            store
        }
        Err(_) => crate::bus::patiently(&format!("bucket `{name}`"), || {
            js.create_key_value(kv::Config {
                bucket: name.to_owned(),
                history: 1,
                max_age,
                num_replicas: replicas,
                ..Default::default()
            })
        })
        .await
        .map_err(|e| StateError(format!("cannot create bucket `{name}`: {e}")))?,
    };
    // On a cluster, a bucket just created (or one whose node has just come back) answers reads
    // only once its copies have a leader.
    crate::bus::patiently(&format!("bucket `{name}`"), || store.entry("ready"))
        .await
        .map_err(|e| StateError(format!("bucket `{name}` does not answer: {e}")))?;
    Ok(store)
}

/// Logs that an existing bucket keeps another number of replicas than configured.
async fn warn_replicas(store: &mut kv::Store, name: &str, replicas: usize) {
    if let Ok(status) = store.status().await {
        let has = status.info.config.num_replicas;
        if has != replicas {
            tracing::warn!(
                bucket = %name,
                replicas = has,
                configured = replicas,
                "the bucket exists with another number of replicas; left as it is"
            );
        }
    }
}

/// One live entry of a bucket, decoded, with its revision.
pub async fn json_entry<T: serde::de::DeserializeOwned>(
    kv: &kv::Store,
    key: &str,
) -> Result<Option<(T, u64)>, StateError> {
    let entry = kv.entry(key).await.map_err(|e| kv_err("read", e))?;
    Ok(entry
        .filter(|e| e.operation == kv::Operation::Put)
        .and_then(|e| {
            serde_json::from_slice::<T>(&e.value)
                .ok()
                .map(|v| (v, e.revision))
        }))
}

/// Every live entry of a bucket, decoded, with its revision, in key order.
pub async fn json_entries<T: serde::de::DeserializeOwned>(
    kv: &kv::Store,
) -> Result<Vec<(T, u64)>, StateError> {
    let latest = riposte_connectors::kvscan::latest(kv)
        .await
        .map_err(StateError)?;
    Ok(latest
        .into_values()
        .filter_map(|(value, revision)| {
            serde_json::from_slice::<T>(&value)
                .ok()
                .map(|v| (v, revision))
        })
        .collect())
}

/// Calls `tick` every `period` until `shutdown`, logging its failures as `what`: the loop of
/// the background workers every replica runs (reverts, notification groups).
pub async fn every<F, Fut>(
    period: Duration,
    shutdown: tokio_util::sync::CancellationToken,
    what: &str,
    mut tick: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<usize, StateError>>,
{
    loop {
        if let Err(e) = tick().await {
            tracing::warn!(error = %e, "{what}");
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(period) => {}
        }
    }
}

/// A KV-safe key: readable prefix plus a hash of the free-form part.
pub fn kv_key(prefix: &str, free: &str) -> String {
    let digest = Sha256::digest(free.as_bytes());
    let safe: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!(
        "{safe}.{}",
        hex::encode(digest.get(..16).unwrap_or(&digest))
    )
}

fn window_index(now: DateTime<Utc>, per: Duration) -> i64 {
    let ms = i64::try_from(per.as_millis()).unwrap_or(i64::MAX).max(1);
    now.timestamp_millis().div_euclid(ms)
}

#[derive(Debug, Serialize, Deserialize)]
struct Held {
    run: String,
    until: DateTime<Utc>,
}

impl Held {
    /// `run` holds a key from `now` for `window`.
    fn new(run: &str, now: DateTime<Utc>, window: Duration) -> Held {
        Held {
            run: run.to_owned(),
            until: now + chrono::Duration::from_std(window).unwrap_or(chrono::Duration::MAX),
        }
    }

    /// The refusal this holder gives `run` at `now`: `None` when its window is over or it is
    /// the same run (a redelivery).
    fn refuses(&self, run: &str, now: DateTime<Utc>) -> Option<Claim> {
        (self.until > now && self.run != run).then(|| Claim::Held {
            by: self.run.clone(),
            until: self.until,
        })
    }
}

/// State in memory, for commands that run without NATS.
#[derive(Debug, Default)]
pub struct MemoryState {
    claims: Mutex<HashMap<String, Held>>,
    slots: Mutex<HashMap<(String, i64), u32>>,
    reverts: Mutex<Vec<Pending>>,
    approvals: Mutex<Vec<PendingApproval>>,
    steps: Mutex<HashMap<String, StepEntry>>,
}

impl MemoryState {
    /// The undos recorded so far.
    pub fn reverts(&self) -> Vec<Pending> {
        self.reverts.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// The approval requests recorded so far.
    pub fn approvals(&self) -> Vec<PendingApproval> {
        self.approvals.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

fn poisoned<T>(_: T) -> StateError {
    StateError("memory state lock poisoned".to_owned())
}

#[async_trait]
impl StateStore for MemoryState {
    async fn claim(
        &self,
        key: &str,
        run_id: &str,
        window: Duration,
        now: DateTime<Utc>,
    ) -> Result<Claim, StateError> {
        let mut claims = self.claims.lock().map_err(poisoned)?;
        if let Some(refusal) = claims.get(key).and_then(|h| h.refuses(run_id, now)) {
            return Ok(refusal);
        }
        claims.insert(key.to_owned(), Held::new(run_id, now, window));
        Ok(Claim::Granted)
    }

    async fn take_slot(
        &self,
        scope: &str,
        max: u32,
        per: Duration,
        now: DateTime<Utc>,
    ) -> Result<bool, StateError> {
        let mut slots = self.slots.lock().map_err(poisoned)?;
        let used = slots
            .entry((scope.to_owned(), window_index(now, per)))
            .or_insert(0);
        if *used >= max {
            return Ok(false);
        }
        *used += 1;
        Ok(true)
    }

    async fn record_revert(&self, pending: &Pending) -> Result<(), StateError> {
        self.reverts.lock().map_err(poisoned)?.push(pending.clone());
        Ok(())
    }

    async fn record_approval(&self, pending: &PendingApproval) -> Result<(), StateError> {
        self.approvals
            .lock()
            .map_err(poisoned)?
            .push(pending.clone());
        Ok(())
    }

    async fn step_entry(&self, run_id: &str, step: &str) -> Result<Option<StepEntry>, StateError> {
        let steps = self.steps.lock().map_err(poisoned)?;
        Ok(steps.get(&step_key(run_id, step)).cloned())
    }

    async fn step_started(
        &self,
        run_id: &str,
        step: &str,
        entry: &StepEntry,
    ) -> Result<Option<StepEntry>, StateError> {
        let mut steps = self.steps.lock().map_err(poisoned)?;
        let key = step_key(run_id, step);
        if let Some(held) = steps.get(&key) {
            return Ok(Some(held.clone()));
        }
        steps.insert(key, entry.clone());
        Ok(None)
    }

    async fn step_finished(
        &self,
        run_id: &str,
        step: &str,
        entry: &StepEntry,
    ) -> Result<(), StateError> {
        let mut steps = self.steps.lock().map_err(poisoned)?;
        steps.insert(step_key(run_id, step), entry.clone());
        Ok(())
    }
}

/// State in JetStream KV buckets, shared by every replica.
#[derive(Debug, Clone)]
pub struct KvState {
    dedup: kv::Store,
    limits: kv::Store,
    reverts: Reverts,
    approvals: Approvals,
    steps: kv::Store,
}

/// How many times a compare-and-set is tried under contention.
const CAS_TRIES: u32 = 64;

/// Waits a little before compare-and-set attempt `n` (n ≥ 1) after losing a race: a few
/// hundred microseconds growing with `n`, spread by the clock's nanoseconds so that the
/// writers that lost do not all come back at once.
async fn cas_pause(n: u32) {
    if n == 0 {
        return;
    }
    let spread = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_nanos() % 1000));
    let micros = 200 * u64::from(n.min(20)) + spread;
    tokio::time::sleep(Duration::from_micros(micros)).await;
}
/// How long run, dedup and limit entries are kept at most.
const KEEP: Duration = Duration::from_secs(30 * 24 * 3600);
/// How long step ledger entries are kept: as long as the events stream keeps an event that
/// could be delivered again.
pub const STEPS_KEEP: Duration = Duration::from_secs(7 * 24 * 3600);

impl KvState {
    /// Opens (creating when missing, with `replicas` copies) the buckets `<prefix>-dedup`,
    /// `<prefix>-limits`, `<prefix>-reverts`, `<prefix>-approvals` and `<prefix>-steps`.
    pub async fn open(
        js: &jetstream::Context,
        prefix: &str,
        replicas: usize,
    ) -> Result<KvState, StateError> {
        Ok(KvState {
            dedup: open_bucket(js, &format!("{prefix}-dedup"), KEEP, replicas).await?,
            limits: open_bucket(js, &format!("{prefix}-limits"), KEEP, replicas).await?,
            reverts: Reverts::open(js, prefix, replicas).await?,
            approvals: Approvals::open(js, prefix, replicas).await?,
            steps: open_bucket(js, &format!("{prefix}-steps"), STEPS_KEEP, replicas).await?,
        })
    }

    /// The reverts bucket.
    pub fn reverts(&self) -> &Reverts {
        &self.reverts
    }

    /// The approvals bucket.
    pub fn approvals(&self) -> &Approvals {
        &self.approvals
    }
}

fn kv_err(what: &str, e: impl std::fmt::Display) -> StateError {
    StateError(format!("{what}: {e}"))
}

#[async_trait]
impl StateStore for KvState {
    async fn claim(
        &self,
        key: &str,
        run_id: &str,
        window: Duration,
        now: DateTime<Utc>,
    ) -> Result<Claim, StateError> {
        let value: bytes::Bytes = serde_json::to_vec(&Held::new(run_id, now, window))
            .map_err(|e| kv_err("encode dedup claim", e))?
            .into();
        for n in 0..CAS_TRIES {
            cas_pause(n).await;
            let entry = self
                .dedup
                .entry(key)
                .await
                .map_err(|e| kv_err("read dedup key", e))?;
            let live = entry.as_ref().filter(|e| e.operation == kv::Operation::Put);
            match live {
                None => {
                    let created = match &entry {
                        None => self.dedup.create(key, value.clone()).await.is_ok(),
                        Some(e) => self
                            .dedup
                            .update(key, value.clone(), e.revision)
                            .await
                            .is_ok(),
                    };
                    if created {
                        return Ok(Claim::Granted);
                    }
                }
                Some(e) => {
                    let held: Option<Held> = serde_json::from_slice(&e.value).ok();
                    if let Some(refusal) = held.and_then(|h| h.refuses(run_id, now)) {
                        return Ok(refusal);
                    }
                    if self
                        .dedup
                        .update(key, value.clone(), e.revision)
                        .await
                        .is_ok()
                    {
                        return Ok(Claim::Granted);
                    }
                }
            }
        }
        Err(StateError(format!(
            "dedup key `{key}`: too much contention"
        )))
    }

    async fn take_slot(
        &self,
        scope: &str,
        max: u32,
        per: Duration,
        now: DateTime<Utc>,
    ) -> Result<bool, StateError> {
        let key = kv_key(scope, &window_index(now, per).to_string());
        for n in 0..CAS_TRIES {
            cas_pause(n).await;
            let entry = self
                .limits
                .entry(&key)
                .await
                .map_err(|e| kv_err("read limit counter", e))?;
            let (used, revision) = match &entry {
                Some(e) if e.operation == kv::Operation::Put => (
                    std::str::from_utf8(&e.value)
                        .ok()
                        .and_then(|s| s.parse::<u32>().ok())
                        .unwrap_or(0),
                    Some(e.revision),
                ),
                Some(e) => (0, Some(e.revision)),
                None => (0, None),
            };
            if used >= max {
                return Ok(false);
            }
            let next: bytes::Bytes = (used + 1).to_string().into_bytes().into();
            let ok = match revision {
                None => self.limits.create(&key, next).await.is_ok(),
                Some(r) => self.limits.update(&key, next, r).await.is_ok(),
            };
            if ok {
                return Ok(true);
            }
        }
        Err(StateError(format!("limit `{scope}`: too much contention")))
    }

    async fn record_revert(&self, pending: &Pending) -> Result<(), StateError> {
        self.reverts.record(pending).await
    }

    async fn record_approval(&self, pending: &PendingApproval) -> Result<(), StateError> {
        self.approvals.request(pending).await
    }

    async fn step_entry(&self, run_id: &str, step: &str) -> Result<Option<StepEntry>, StateError> {
        Ok(json_entry(&self.steps, &step_key(run_id, step))
            .await?
            .map(|(e, _)| e))
    }

    async fn step_started(
        &self,
        run_id: &str,
        step: &str,
        entry: &StepEntry,
    ) -> Result<Option<StepEntry>, StateError> {
        let key = step_key(run_id, step);
        let value: bytes::Bytes = serde_json::to_vec(entry)
            .map_err(|e| kv_err("encode step entry", e))?
            .into();
        match self.steps.create(&key, value).await {
            Ok(_) => Ok(None),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                match json_entry::<StepEntry>(&self.steps, &key).await? {
                    Some((held, _)) => Ok(Some(held)),
                    None => Err(StateError(format!(
                        "step ledger `{key}`: created elsewhere but unreadable"
                    ))),
                }
            }
            Err(e) => Err(kv_err("mark step started", e)),
        }
    }

    async fn step_finished(
        &self,
        run_id: &str,
        step: &str,
        entry: &StepEntry,
    ) -> Result<(), StateError> {
        let value: bytes::Bytes = serde_json::to_vec(entry)
            .map_err(|e| kv_err("encode step entry", e))?
            .into();
        self.steps
            .put(step_key(run_id, step), value)
            .await
            .map_err(|e| kv_err("mark step finished", e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().into()
    }

    #[tokio::test]
    async fn a_dedup_key_is_held_for_its_window_except_for_its_own_run() {
        let s = MemoryState::default();
        let w = Duration::from_secs(600);
        let now = t("2026-01-01T00:00:00Z");
        assert_eq!(s.claim("k", "r1", w, now).await.unwrap(), Claim::Granted);
        assert_eq!(s.claim("k", "r1", w, now).await.unwrap(), Claim::Granted);
        assert!(matches!(
            s.claim("k", "r2", w, now).await.unwrap(),
            Claim::Held { .. }
        ));
        let later = t("2026-01-01T00:10:01Z");
        assert_eq!(s.claim("k", "r2", w, later).await.unwrap(), Claim::Granted);
    }

    #[tokio::test]
    async fn limits_count_per_fixed_window() {
        let s = MemoryState::default();
        let per = Duration::from_secs(60);
        let now = t("2026-01-01T00:00:00Z");
        assert!(s.take_slot("p", 2, per, now).await.unwrap());
        assert!(s.take_slot("p", 2, per, now).await.unwrap());
        assert!(!s.take_slot("p", 2, per, now).await.unwrap());
        assert!(s
            .take_slot("p", 2, per, t("2026-01-01T00:01:00Z"))
            .await
            .unwrap());
    }

    #[test]
    fn kv_keys_are_safe() {
        let k = kv_key("dedup.my playbook", "anything: goes/here");
        assert!(
            k.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
            "{k}"
        );
    }
}
