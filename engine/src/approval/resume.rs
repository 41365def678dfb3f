//! The resumer every replica runs: it takes decided or timed-out approvals and carries their
//! runs on.
//!
//! Each tick looks at the whole bucket. An entry that is decided, or past its deadline (the
//! timeout then decides, as the step's `on_timeout` says), and that no live lease holds, is
//! taken by compare-and-set with a lease, so one replica resumes it; the lease is renewed
//! while the run goes on, so a replica that dies lets another take it over once the lease
//! runs out. The run's records are committed as one audit message, then the entry is deleted.
//! A run whose playbook is gone or changed since approval was asked is not resumed: that is
//! audited and the entry dropped.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{Approvals, Decision, PendingApproval};
use crate::audit::{AuditBatch, AuditRecord, AuditSink, RecordKind};
use crate::clock::Clock;
use crate::matcher::EventView;
use crate::playbook::{OnTimeout, Playbook};
use crate::runner::Runner;
use crate::state::{every, StateError};

/// How long a lease lasts without renewal.
const LEASE: Duration = Duration::from_secs(30);
/// How often a lease is renewed while its run goes on.
const RENEW: Duration = Duration::from_secs(10);

/// Resumes runs whose approval is decided or timed out.
#[derive(Debug, Clone)]
pub struct Resumer {
    /// The bucket.
    pub approvals: Approvals,
    /// Runs the rest of the playbook.
    pub runner: Runner,
    /// The loaded playbooks.
    pub playbooks: Vec<Arc<Playbook>>,
    /// Whether playbooks read `event.data` (see [`crate::matcher::Matcher::needs_data`]).
    pub needs_data: bool,
    /// Where the resumed runs' records go.
    pub audit: AuditSink,
    /// This replica.
    pub replica: String,
    /// Time.
    pub clock: Arc<dyn Clock>,
    /// How often the bucket is looked at.
    pub every: Duration,
}

impl Resumer {
    /// Runs until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        every(self.every, shutdown, "approval resumer", || self.tick()).await;
    }

    /// Resumes every run that may go on now. Returns how many it took.
    pub async fn tick(&self) -> Result<usize, StateError> {
        let now = self.clock.now();
        let mut taken = 0;
        for (mut p, rev) in self.approvals.list().await? {
            let due = p.decision.is_some() || p.deadline <= now;
            let free = p.lease.as_ref().is_none_or(|(_, until)| *until <= now);
            if !due || !free {
                continue;
            }
            if p.decision.is_none() {
                p.decision = Some(Decision {
                    approved: p.on_timeout == OnTimeout::Approve,
                    by: "timeout".to_owned(),
                    via: "timeout".to_owned(),
                    reason: None,
                    at: now,
                    timed_out: true,
                });
            }
            p.lease = Some((self.replica.clone(), lease_end(now)));
            let Some(rev) = self.approvals.replace(&p, rev).await? else {
                continue; // another replica took it, or it was decided meanwhile
            };
            taken += 1;
            self.carry_out(p, rev).await?;
        }
        Ok(taken)
    }

    async fn carry_out(&self, p: PendingApproval, mut rev: u64) -> Result<(), StateError> {
        let Some(decision) = p.decision.clone() else {
            return Ok(());
        };
        let key = p.key();
        let mut batch = self
            .audit
            .batch(format!("ap:{key}:{}", decision.at.timestamp_micros()));
        let found = self.playbooks.iter().find(|pb| pb.name == p.playbook);
        match found.filter(|pb| pb.digest == p.playbook_digest) {
            Some(pb) => {
                let view = EventView::new(&p.event, self.needs_data);
                let span = tracing::info_span!("resume", run_id = %p.run_id, step = %p.step, decision = decision.outcome());
                let mut held = p.clone();
                let work = self
                    .runner
                    .resume(pb, &view, &p, &decision, &mut batch)
                    .instrument(span);
                tokio::pin!(work);
                let mut renew = tokio::time::interval(RENEW);
                renew.tick().await;
                let result = loop {
                    tokio::select! {
                        r = &mut work => break r,
                        _ = renew.tick() => {
                            held.lease = Some((self.replica.clone(), lease_end(self.clock.now())));
                            match self.approvals.replace(&held, rev).await {
                                Ok(Some(next)) => rev = next,
                                Ok(None) => tracing::warn!(%key, "approval lease lost while its run went on"),
                                Err(e) => tracing::warn!(%key, error = %e, "approval lease not renewed"),
                            }
                        }
                    }
                };
                result.map_err(|e| StateError(format!("resuming run {}: {e}", p.run_id)))?;
            }
            None => {
                let at = (self.clock.now(), self.replica.as_str());
                not_resumed(&p, &decision, found.is_some(), at, &mut batch);
            }
        }
        batch
            .commit()
            .await
            .map_err(|e| StateError(format!("audit: {e}")))?;
        self.approvals.remove(&key, rev).await
    }
}

fn lease_end(now: chrono::DateTime<chrono::Utc>) -> chrono::DateTime<chrono::Utc> {
    now + chrono::Duration::from_std(LEASE).unwrap_or(chrono::Duration::MAX)
}

/// Records why a decided run cannot go on: its playbook is gone or was changed.
fn not_resumed(
    p: &PendingApproval,
    decision: &Decision,
    changed: bool,
    (now, replica): (chrono::DateTime<chrono::Utc>, &str),
    batch: &mut AuditBatch,
) {
    let why = if changed {
        format!(
            "playbook `{}` changed since approval was asked; the run is not resumed (send the \
             event again to run the new playbook)",
            p.playbook
        )
    } else {
        format!(
            "playbook `{}` is not loaded on this engine; the run is not resumed",
            p.playbook
        )
    };
    tracing::warn!(run_id = %p.run_id, step = %p.step, "{why}");
    let base = |kind: RecordKind, outcome: &str| {
        let mut r = AuditRecord::new(kind, outcome, now, replica);
        r.run_id = Some(p.run_id.clone());
        r.event_id = Some(p.event.id.clone());
        r.playbook = Some(p.playbook.clone());
        r
    };
    let mut rec = base(RecordKind::Approval, decision.outcome());
    rec.step = Some(p.step.clone());
    rec.action = Some(p.action.clone());
    rec.reason = decision.reason.clone();
    rec.approval = Some(decision.to_json());
    batch.add(rec);
    let mut rec = base(RecordKind::Step, "skipped");
    rec.step = Some(p.step.clone());
    rec.action = Some(p.action.clone());
    rec.args = p.args.clone();
    rec.reason = Some(format!("not run: {why}"));
    rec.approval = Some(decision.to_json());
    batch.add(rec);
    let mut rec = base(RecordKind::Run, "failed");
    rec.reason = Some(why);
    batch.add(rec);
}
