//! Approvals: steps that wait for a human decision before they run.
//!
//! When an enforce-mode run reaches a step with `approval`, the runner does not perform it: it
//! stores a [`PendingApproval`] in the KV bucket `<prefix>-approvals`, keyed `<run id>.<step
//! id>`, holding everything the run needs to go on from that step on any replica (the event
//! as the run saw it, with its enrichment; the vars; the reports of the steps so far; the
//! playbook's name and digest), audits the step as `awaiting_approval` and sends the request's
//! notifications. A decision (`riposte approve`, or `POST /v1/approvals/{run}/{step}` on the
//! gateway) is written into the entry by compare-and-set, so two deciders never both win, a
//! decided approval is never decided again, and a name not among the step's `approvers` is
//! refused. Every replica runs a [`Resumer`] that takes decided or timed-out entries under a
//! lease, resumes the run from the step and deletes the entry. The bucket is the wait, so it
//! survives restarts and is shared by replicas. Nothing here runs a connector: the runner does.

pub mod command;
mod resume;

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use thiserror::Error;

pub use resume::Resumer;

use crate::event::Event;
use crate::playbook::OnTimeout;
use crate::runner::StepReport;
use crate::state::{json_entries, json_entry, open_bucket, StateError};

/// A step waiting for a decision, with what its run needs to go on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingApproval {
    /// The run.
    pub run_id: String,
    /// The step that waits.
    pub step: String,
    /// Its position in the playbook's steps.
    pub step_index: usize,
    /// The playbook.
    pub playbook: String,
    /// The playbook file's SHA-256 when the run started: a changed playbook is not resumed.
    pub playbook_digest: String,
    /// `<instance>.<action>` of the step.
    pub action: String,
    /// Its arguments as rendered when approval was asked (what will be done, to what).
    #[serde(default)]
    pub args: Option<Value>,
    /// The event as the run saw it (with its enrichment).
    pub event: Event,
    /// The run's vars.
    #[serde(default)]
    pub vars: serde_json::Map<String, Value>,
    /// The steps before this one, as they ended.
    #[serde(default)]
    pub steps: Vec<StepReport>,
    /// Whether a step before failed (`run.failed`).
    #[serde(default)]
    pub failed: bool,
    /// When approval was asked.
    pub requested_at: DateTime<Utc>,
    /// When the timeout decides.
    pub deadline: DateTime<Utc>,
    /// What the timeout decides.
    pub on_timeout: OnTimeout,
    /// Who may decide; empty: anyone.
    #[serde(default)]
    pub approvers: Vec<String>,
    /// The decision, once made.
    #[serde(default)]
    pub decision: Option<Decision>,
    /// The replica resuming the run, and until when it holds it.
    #[serde(default)]
    pub lease: Option<(String, DateTime<Utc>)>,
}

/// A decision on a pending approval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// Whether the step may run.
    pub approved: bool,
    /// Who decided (`timeout` when nobody did in time).
    pub by: String,
    /// How the decision arrived: `cli`, `http:<credential name>`, `timeout`.
    pub via: String,
    /// Why, as the approver gave it.
    #[serde(default)]
    pub reason: Option<String>,
    /// When.
    pub at: DateTime<Utc>,
    /// Whether the timeout decided.
    #[serde(default)]
    pub timed_out: bool,
}

impl Decision {
    /// The outcome of the `approval` audit record: `approved`, `denied` or `timed_out`.
    pub fn outcome(&self) -> &'static str {
        match (self.timed_out, self.approved) {
            (true, _) => "timed_out",
            (false, true) => "approved",
            (false, false) => "denied",
        }
    }

    /// Why a step that may not run was skipped.
    pub fn skip_reason(&self) -> String {
        if self.timed_out {
            return "approval timed out".to_owned();
        }
        match &self.reason {
            Some(r) => format!("denied by {}: {r}", self.by),
            None => format!("denied by {}", self.by),
        }
    }

    /// What audit records say about it.
    pub fn to_json(&self) -> Value {
        json!({
            "decision": if self.approved { "approve" } else { "deny" },
            "by": if self.timed_out { "timeout".to_owned() } else { self.by.clone() },
            "via": self.via,
            "reason": self.reason,
            "at": self.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "timed_out": self.timed_out,
        })
    }
}

impl PendingApproval {
    /// The KV key: `<run id>.<step id>`.
    pub fn key(&self) -> String {
        crate::revert::key(&self.run_id, &self.step)
    }

    /// The command that approves it (add `--deny` to refuse).
    pub fn command(&self) -> String {
        format!("riposte approve {} {} --as NAME", self.run_id, self.step)
    }

    /// Who may decide, as text.
    pub fn approvers_text(&self) -> String {
        if self.approvers.is_empty() {
            "anyone".to_owned()
        } else {
            self.approvers.join(", ")
        }
    }

    /// The request in one sentence: what waits, to what, who decides, until when, and how.
    pub fn request_text(&self) -> String {
        let args = self
            .args
            .as_ref()
            .map(|a| format!(" with {a}"))
            .unwrap_or_default();
        format!(
            "`{}`{args} waits for approval by {} until {} (then: {}); approve with `{}`, refuse \
             with `{} --deny`",
            self.action,
            self.approvers_text(),
            self.deadline
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            self.on_timeout.as_str(),
            self.command(),
            self.command(),
        )
    }

    /// What the step's audit record says about the request.
    pub fn terms(&self) -> Value {
        json!({
            "approvers": self.approvers,
            "requested_at": self.requested_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "deadline": self.deadline.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "on_timeout": self.on_timeout.as_str(),
            "command": self.command(),
        })
    }

    /// What `riposte approve --list` and `GET /v1/approvals` show.
    pub fn summary(&self) -> Value {
        let mut v = self.terms();
        if let Some(m) = v.as_object_mut() {
            m.insert("run_id".into(), json!(self.run_id));
            m.insert("step".into(), json!(self.step));
            m.insert("playbook".into(), json!(self.playbook));
            m.insert("action".into(), json!(self.action));
            m.insert("args".into(), self.args.clone().unwrap_or(Value::Null));
            m.insert("event_id".into(), json!(self.event.id));
            m.insert("title".into(), json!(self.event.title));
            m.insert(
                "decision".into(),
                self.decision
                    .as_ref()
                    .map_or(Value::Null, Decision::to_json),
            );
        }
        v
    }
}

/// Why a decision was not recorded. Each has its own exit code in `riposte approve`.
#[derive(Debug, Error)]
pub enum DecideError {
    /// Nothing waits under that run and step.
    #[error("no step `{step}` of run {run} waits for approval: it was decided and carried out already, or the run or step id is wrong (see `riposte approve --list`)")]
    Unknown {
        /// The run.
        run: String,
        /// The step.
        step: String,
    },
    /// It was decided before.
    #[error("step `{step}` of run {run} is already decided: {outcome} by {by}")]
    Decided {
        /// The run.
        run: String,
        /// The step.
        step: String,
        /// `approved`, `denied`, `timed_out`.
        outcome: String,
        /// Who decided.
        by: String,
    },
    /// Its deadline passed: the timeout decides.
    #[error("the approval of step `{step}` of run {run} timed out at {deadline}: its timeout decides ({on_timeout})")]
    Expired {
        /// The run.
        run: String,
        /// The step.
        step: String,
        /// When it timed out.
        deadline: String,
        /// What the timeout decides.
        on_timeout: &'static str,
    },
    /// The name is not among the step's approvers.
    #[error("`{name}` may not decide step `{step}` of run {run}: its approvers are {approvers}")]
    NotAnApprover {
        /// The run.
        run: String,
        /// The step.
        step: String,
        /// Who tried.
        name: String,
        /// Who may.
        approvers: String,
    },
    /// The name is not a valid approver name.
    #[error("`{0}` is not a valid approver name: 1 to 64 visible characters without spaces")]
    BadName(String),
    /// KV trouble.
    #[error(transparent)]
    State(#[from] StateError),
}

impl DecideError {
    /// The exit code of `riposte approve` (2 is any other error).
    pub fn exit_code(&self) -> i32 {
        match self {
            DecideError::Unknown { .. } => 3,
            DecideError::Decided { .. } | DecideError::Expired { .. } => 4,
            DecideError::NotAnApprover { .. } | DecideError::BadName(_) => 5,
            DecideError::State(_) => 2,
        }
    }
}

/// How many times a decision's compare-and-set is tried under contention.
const CAS_TRIES: u32 = 32;

/// The approvals bucket.
#[derive(Debug, Clone)]
pub struct Approvals {
    kv: kv::Store,
}

fn err(what: &str, e: impl std::fmt::Display) -> StateError {
    StateError(format!("approvals: {what}: {e}"))
}

impl Approvals {
    /// Opens (creating when missing) the bucket `<prefix>-approvals`.
    pub async fn open(
        js: &jetstream::Context,
        prefix: &str,
        replicas: usize,
    ) -> Result<Approvals, StateError> {
        let kv = open_bucket(js, &format!("{prefix}-approvals"), Duration::ZERO, replicas).await?;
        Ok(Approvals { kv })
    }

    /// Stores a new request. One already stored under the same key is kept as it is (a
    /// redelivered event reaches the same step again; a decision made meanwhile stands).
    pub async fn request(&self, p: &PendingApproval) -> Result<(), StateError> {
        let value = serde_json::to_vec(p).map_err(|e| err("encode", e))?;
        if self.kv.create(p.key(), value.into()).await.is_ok() {
            return Ok(());
        }
        match self.get(&p.run_id, &p.step).await? {
            Some(_) => Ok(()),
            None => Err(err(
                "store",
                format!("cannot store the request `{}`", p.key()),
            )),
        }
    }

    /// Every pending approval with its revision, in key order.
    pub async fn list(&self) -> Result<Vec<(PendingApproval, u64)>, StateError> {
        json_entries(&self.kv).await
    }

    /// One pending approval with its revision.
    pub async fn get(
        &self,
        run_id: &str,
        step: &str,
    ) -> Result<Option<(PendingApproval, u64)>, StateError> {
        json_entry(&self.kv, &crate::revert::key(run_id, step)).await
    }

    /// Replaces an entry if it is still at `revision`; the new revision, or `None` when it
    /// changed meanwhile.
    pub async fn replace(
        &self,
        p: &PendingApproval,
        revision: u64,
    ) -> Result<Option<u64>, StateError> {
        let value = serde_json::to_vec(p).map_err(|e| err("encode", e))?;
        Ok(self.kv.update(p.key(), value.into(), revision).await.ok())
    }

    /// Deletes an entry at `revision`.
    pub async fn remove(&self, key: &str, revision: u64) -> Result<(), StateError> {
        self.kv
            .purge_expect_revision(key, Some(revision))
            .await
            .map_err(|e| err("delete", e))
    }

    /// Records a decision on the step `step` of `run_id`, by compare-and-set: refused when
    /// nothing waits there, when it is decided or past its deadline, or when `decision.by` is
    /// not among its approvers. Returns the entry as decided.
    pub async fn decide(
        &self,
        run_id: &str,
        step: &str,
        decision: Decision,
    ) -> Result<PendingApproval, DecideError> {
        if !crate::playbook::valid_approver(&decision.by) {
            return Err(DecideError::BadName(decision.by));
        }
        for _ in 0..CAS_TRIES {
            let Some((mut p, rev)) = self.get(run_id, step).await? else {
                return Err(DecideError::Unknown {
                    run: run_id.to_owned(),
                    step: step.to_owned(),
                });
            };
            if let Some(d) = &p.decision {
                return Err(DecideError::Decided {
                    run: p.run_id,
                    step: p.step,
                    outcome: d.outcome().to_owned(),
                    by: d.by.clone(),
                });
            }
            if decision.at >= p.deadline {
                return Err(DecideError::Expired {
                    deadline: p
                        .deadline
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    on_timeout: p.on_timeout.as_str(),
                    run: p.run_id,
                    step: p.step,
                });
            }
            if !p.approvers.is_empty() && !p.approvers.contains(&decision.by) {
                return Err(DecideError::NotAnApprover {
                    approvers: p.approvers_text(),
                    run: p.run_id,
                    step: p.step,
                    name: decision.by,
                });
            }
            p.decision = Some(decision.clone());
            if self.replace(&p, rev).await?.is_some() {
                return Ok(p);
            }
        }
        Err(DecideError::State(StateError(format!(
            "approval `{}`: too much contention",
            crate::revert::key(run_id, step)
        ))))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn decision(approved: bool, reason: Option<&str>, timed_out: bool) -> Decision {
        Decision {
            approved,
            by: "alice".into(),
            via: "cli".into(),
            reason: reason.map(str::to_owned),
            at: Utc::now(),
            timed_out,
        }
    }

    #[test]
    fn a_denial_names_who_denied_and_why() {
        assert_eq!(
            decision(false, Some("prod freeze"), false).skip_reason(),
            "denied by alice: prod freeze"
        );
        assert_eq!(
            decision(false, None, false).skip_reason(),
            "denied by alice"
        );
        assert_eq!(
            decision(false, None, true).skip_reason(),
            "approval timed out"
        );
        assert_eq!(decision(true, None, true).outcome(), "timed_out");
        assert_eq!(decision(true, None, false).outcome(), "approved");
        assert_eq!(decision(false, None, false).outcome(), "denied");
    }

    #[test]
    fn exit_codes_tell_the_refusals_apart() {
        let unknown = DecideError::Unknown {
            run: "r".into(),
            step: "s".into(),
        };
        let not = DecideError::NotAnApprover {
            run: "r".into(),
            step: "s".into(),
            name: "mallory".into(),
            approvers: "alice".into(),
        };
        assert_eq!(unknown.exit_code(), 3);
        assert_eq!(not.exit_code(), 5);
        assert_eq!(
            not.to_string(),
            "`mallory` may not decide step `s` of run r: its approvers are alice"
        );
    }
}
