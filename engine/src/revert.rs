//! Reverts: the undo data of reversible steps, carried out on schedule (`revert_after`) or on
//! request (`riposte revert RUN_ID`).
//!
//! Every reversible step that changed something leaves a [`Pending`] entry in the KV bucket
//! `<prefix>-reverts`, keyed `<run id>.<step id>`, holding the connector's undo data and, with
//! `revert_after`, when it is due. Every replica runs a [`Scheduler`] that looks for due
//! entries, takes a lease on one by compare-and-set (so one replica does it), undoes it through
//! the connector, audits a `revert` record and deletes the entry. A transient failure is tried
//! again with a doubling delay; a permanent one is audited and the entry dropped (its undo data
//! stays in the audit trail). `riposte revert` makes entries due now and waits for them to go.
//! The bucket is the schedule, so it survives restarts and is shared by replicas.
//!
//! While enforcement is paused (see [`crate::control`]), undos that fall due on their schedule
//! wait in the bucket and are carried out after `riposte resume`; an undo someone asked for
//! with `riposte revert` is that person's act and is carried out.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use chrono::{DateTime, Utc};
use riposte_connectors::{Connector, ConnectorError};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::audit::{AuditRecord, AuditSink, RecordKind};
use crate::clock::Clock;
use crate::control::Switch;
use crate::state::{every, json_entries, json_entry, open_bucket, StateError};

/// An undo waiting to be carried out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pending {
    /// The run.
    pub run_id: String,
    /// The step.
    pub step: String,
    /// The playbook.
    pub playbook: String,
    /// The event the run was for.
    pub event_id: String,
    /// The connector instance.
    pub instance: String,
    /// The action that is undone (without the instance).
    pub action: String,
    /// What the connector needs to undo it.
    pub undo: Value,
    /// When the action was done.
    pub done_at: DateTime<Utc>,
    /// When the undo is due (`None`: only on request).
    #[serde(default)]
    pub due: Option<DateTime<Utc>>,
    /// Who asked for it now, if someone did.
    #[serde(default)]
    pub requested_by: Option<String>,
    /// Failed attempts so far.
    #[serde(default)]
    pub attempts: u32,
    /// The last failure.
    #[serde(default)]
    pub last_error: Option<String>,
    /// The replica carrying it out, and until when it holds it.
    #[serde(default)]
    pub lease: Option<(String, DateTime<Utc>)>,
}

impl Pending {
    /// The KV key: `<run id>.<step id>`.
    pub fn key(&self) -> String {
        key(&self.run_id, &self.step)
    }

    /// The command that undoes it now.
    pub fn command(&self) -> String {
        format!("riposte revert {} --step {}", self.run_id, self.step)
    }
}

/// The KV key of a run's step.
pub fn key(run_id: &str, step: &str) -> String {
    let step: String = step
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{run_id}.{step}")
}

/// How many transient failures an undo survives before it is given up (and audited).
const MAX_ATTEMPTS: u32 = 10;
/// How long a lease lasts beyond the step timeout.
const LEASE_MARGIN: Duration = Duration::from_secs(30);

/// The reverts bucket.
#[derive(Debug, Clone)]
pub struct Reverts {
    kv: kv::Store,
}

fn err(what: &str, e: impl std::fmt::Display) -> StateError {
    StateError(format!("reverts: {what}: {e}"))
}

impl Reverts {
    /// Opens (creating when missing) the bucket `<prefix>-reverts`.
    pub async fn open(
        js: &jetstream::Context,
        prefix: &str,
        replicas: usize,
    ) -> Result<Reverts, StateError> {
        let kv = open_bucket(js, &format!("{prefix}-reverts"), Duration::ZERO, replicas).await?;
        Ok(Reverts { kv })
    }

    /// Records an undo.
    pub async fn record(&self, p: &Pending) -> Result<(), StateError> {
        let value = serde_json::to_vec(p).map_err(|e| err("encode", e))?;
        self.kv
            .put(p.key(), value.into())
            .await
            .map_err(|e| err("store", e))?;
        Ok(())
    }

    /// Every pending undo with its revision, oldest key first.
    pub async fn list(&self) -> Result<Vec<(Pending, u64)>, StateError> {
        json_entries(&self.kv).await
    }

    async fn get(&self, key: &str) -> Result<Option<(Pending, u64)>, StateError> {
        json_entry(&self.kv, key).await
    }

    async fn replace(&self, p: &Pending, revision: u64) -> Result<Option<u64>, StateError> {
        let value = serde_json::to_vec(p).map_err(|e| err("encode", e))?;
        Ok(self.kv.update(p.key(), value.into(), revision).await.ok())
    }

    async fn remove(&self, key: &str, revision: u64) -> Result<(), StateError> {
        self.kv
            .purge_expect_revision(key, Some(revision))
            .await
            .map_err(|e| err("delete", e))
    }

    /// Makes the undos of `run_id` (one step, or all) due now. Returns those it found.
    pub async fn request(
        &self,
        run_id: &str,
        step: Option<&str>,
        by: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<Pending>, StateError> {
        let mut found = Vec::new();
        for (mut p, rev) in self.list().await? {
            if p.run_id != run_id || step.is_some_and(|s| s != p.step) {
                continue;
            }
            p.due = Some(now);
            p.requested_by = Some(by.to_owned());
            p.attempts = 0;
            if self.replace(&p, rev).await?.is_none() {
                // Changed meanwhile (a replica took it): it is being done anyway.
                tracing::debug!(key = %p.key(), "revert request raced with its scheduler");
            }
            found.push(p);
        }
        Ok(found)
    }

    /// Whether an undo is still pending.
    pub async fn contains(&self, run_id: &str, step: &str) -> Result<bool, StateError> {
        Ok(self.get(&key(run_id, step)).await?.is_some())
    }
}

/// Carries out due undos.
#[derive(Debug, Clone)]
pub struct Scheduler {
    /// The bucket.
    pub reverts: Reverts,
    /// Connector instances by name.
    pub connectors: Arc<HashMap<String, Arc<dyn Connector>>>,
    /// Where `revert` records go.
    pub audit: AuditSink,
    /// This replica.
    pub replica: String,
    /// Time.
    pub clock: Arc<dyn Clock>,
    /// Time limit of one undo.
    pub timeout: Duration,
    /// How often the bucket is looked at.
    pub every: Duration,
    /// The kill switch: scheduled undos wait while it is paused.
    pub switch: Switch,
}

impl Scheduler {
    /// Runs until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        every(self.every, shutdown, "revert scheduler", || self.tick()).await;
    }

    /// Carries out what is due now. Returns how many undos were attempted.
    pub async fn tick(&self) -> Result<usize, StateError> {
        let now = self.clock.now();
        let mut done = 0;
        for (mut p, rev) in self.reverts.list().await? {
            let due = p.due.is_some_and(|d| d <= now);
            let free = p.lease.as_ref().is_none_or(|(_, until)| *until <= now);
            let held = p.requested_by.is_none() && self.switch.is_paused();
            if !due || !free || held {
                continue;
            }
            let until = now
                + chrono::Duration::from_std(self.timeout + LEASE_MARGIN)
                    .unwrap_or(chrono::Duration::MAX);
            p.lease = Some((self.replica.clone(), until));
            let Some(rev) = self.reverts.replace(&p, rev).await? else {
                continue; // another replica took it
            };
            done += 1;
            self.carry_out(p, rev).await?;
        }
        Ok(done)
    }

    async fn carry_out(&self, mut p: Pending, rev: u64) -> Result<(), StateError> {
        let started = std::time::Instant::now();
        let result = match self.connectors.get(&p.instance) {
            None => Err(ConnectorError::Permanent(format!(
                "connector instance `{}` is not configured on this engine",
                p.instance
            ))),
            Some(c) => {
                let ctx = riposte_connectors::context::RunContext {
                    run_id: Some(p.run_id.clone()),
                    playbook: Some(p.playbook.clone()),
                    event_id: Some(p.event_id.clone()),
                    step: Some(p.step.clone()),
                    by: p.requested_by.clone(),
                };
                riposte_connectors::context::scope(
                    ctx,
                    tokio::time::timeout(self.timeout, c.revert(&p.action, &p.undo)),
                )
                .await
                .unwrap_or_else(|_| {
                    Err(ConnectorError::Transient(format!(
                        "timed out after {}",
                        humantime::format_duration(self.timeout)
                    )))
                })
            }
        };
        let now = self.clock.now();
        let mut rec = AuditRecord::new(RecordKind::Revert, "ok", now, &self.replica);
        rec.run_id = Some(p.run_id.clone());
        rec.event_id = Some(p.event_id.clone());
        rec.playbook = Some(p.playbook.clone());
        rec.step = Some(p.step.clone());
        rec.action = Some(format!("{}.{}", p.instance, p.action));
        rec.args = Some(p.undo.clone());
        rec.attempts = Some(p.attempts + 1);
        rec.duration_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
        rec.output = Some(serde_json::json!({
            "requested_by": p.requested_by,
            "due": p.due,
        }));
        let key = p.key();
        let retry = match &result {
            Ok(out) => {
                let mut o = out.output.clone();
                if let (Some(map), Some(asked)) = (o.as_object_mut(), rec.output.take()) {
                    if let Some(asked) = asked.as_object() {
                        map.extend(asked.clone());
                    }
                }
                rec.output = Some(o);
                false
            }
            Err(e) if e.is_retryable() && p.attempts + 1 < MAX_ATTEMPTS => {
                rec.outcome = "retrying".to_owned();
                rec.reason = Some(e.to_string());
                true
            }
            Err(e) => {
                rec.outcome = "failed".to_owned();
                rec.reason = Some(e.to_string());
                false
            }
        };
        let mut batch = self.audit.batch(format!("rv:{key}:{}:{}", rev, p.attempts));
        batch.add(rec);
        batch
            .commit()
            .await
            .map_err(|e| StateError(format!("audit: {e}")))?;
        if retry {
            p.attempts += 1;
            p.last_error = result.err().map(|e| e.to_string());
            p.lease = None;
            let wait = Duration::from_secs(2u64.saturating_pow(p.attempts).min(300));
            p.due = Some(now + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX));
            self.reverts.replace(&p, rev).await?;
        } else {
            self.reverts.remove(&key, rev).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn keys_are_kv_safe() {
        assert_eq!(key("r-00ab", "isolate"), "r-00ab.isolate");
        assert_eq!(key("r-00ab", "a.b c"), "r-00ab.a_b_c");
    }
}
