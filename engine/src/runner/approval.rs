//! The runner's side of approvals: stopping a run at a step that waits for a human decision,
//! and going on from that step once the decision is made (see [`crate::approval`]).
//!
//! Stopping stores everything the run needs to go on (through the state store), audits the
//! step as `awaiting_approval` with the request's terms, sends the request's notifications at
//! once (never grouped: someone has to act) with `run.outcome == "awaiting_approval"`, and
//! ends the run's record as `awaiting_approval`. Going on rebuilds the run from what was
//! stored and carries it to its end like any run.

use std::time::Instant;

use rhai::Dynamic;
use serde_json::{json, Value};

use super::{RunCtx, RunError, RunOutcome, RunReport, Runner, StepOutcome, StepReport};
use crate::approval::{Decision, PendingApproval};
use crate::audit::{AuditBatch, RecordKind};
use crate::matcher::EventView;
use crate::playbook::{Approval, Playbook, Step};
use crate::script::json_to_dynamic;

/// The largest event a pending approval keeps (as JSON): its KV entry must stay under NATS's
/// default 1 MiB message size with the rest of the run.
pub(super) const MAX_EVENT_BYTES: usize = 512 * 1024;

/// What a plan says about a step's approval.
pub(super) fn planned_terms(a: &Approval) -> Value {
    json!({
        "approvers": a.approvers,
        "timeout": humantime::format_duration(a.timeout).to_string(),
        "on_timeout": a.on_timeout.as_str(),
    })
}

/// The plan's words for it: `(needs approval by alice, bob within 15m; on timeout: deny)`.
pub(super) fn planned_text(a: &Approval) -> String {
    let who = if a.approvers.is_empty() {
        "anyone".to_owned()
    } else {
        a.approvers.join(", ")
    };
    format!(
        "(needs approval by {who} within {}; on timeout: {})",
        humantime::format_duration(a.timeout),
        a.on_timeout.as_str()
    )
}

impl Runner {
    /// Stops the run at `step` (number `index`), which waits for approval: stores the request,
    /// audits it and sends its notifications.
    #[expect(
        clippy::too_many_arguments,
        reason = "the run so far, the step, and where the run's records and timing go"
    )]
    pub(super) async fn ask(
        &self,
        mut run: RunCtx<'_>,
        report: RunReport,
        step: &Step,
        index: usize,
        mut r: StepReport,
        audit: &mut AuditBatch,
        started: Instant,
    ) -> Result<RunReport, RunError> {
        let Some(approval) = &step.approval else {
            return Ok(self.finish(run, report, RunOutcome::Failed, None, audit, started));
        };
        let now = self.clock.now();
        let vars = run
            .vars
            .iter()
            .map(|(k, v)| {
                let value = rhai::serde::from_dynamic::<Value>(v).unwrap_or(Value::Null);
                (k.to_string(), value)
            })
            .collect();
        let pending = PendingApproval {
            run_id: run.run_id.to_owned(),
            step: step.id.clone(),
            step_index: index,
            playbook: run.pb.name.clone(),
            playbook_digest: run.pb.digest.clone(),
            action: step.action.to_string(),
            args: r.args.clone(),
            event: run.view.event.clone(),
            vars,
            steps: run.reports.iter().filter(|s| !s.notify).cloned().collect(),
            failed: run.failed,
            requested_at: now,
            deadline: now
                + chrono::Duration::from_std(approval.timeout).unwrap_or(chrono::Duration::MAX),
            on_timeout: approval.on_timeout,
            approvers: approval.approvers.clone(),
            decision: None,
            lease: None,
        };
        self.state.record_approval(&pending).await?;
        r.reason = Some(pending.request_text());
        r.approval = Some(pending.terms());
        self.emit_step(&mut run, step, r, None, audit);
        run.outcome = Some(RunOutcome::AwaitingApproval);
        let requests: Vec<Step> = match &approval.notify {
            Some(own) => own.clone(),
            None => run
                .pb
                .notify
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    let mut n = n.clone();
                    n.id = format!("{}.request-{}", step.id, i + 1);
                    n
                })
                .collect(),
        };
        for mut n in requests {
            n.grouped = false;
            let (nr, attempts) = self.step(&mut run, &n, true, audit).await?;
            self.emit_step(&mut run, &n, nr, attempts, audit);
        }
        let reason = format!(
            "step `{}` waits for approval until {}",
            step.id,
            pending
                .deadline
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
        Ok(self.finish(
            run,
            report,
            RunOutcome::AwaitingApproval,
            Some(reason),
            audit,
            started,
        ))
    }

    /// Goes on with a run that waited for approval, from its step, under `decision`: runs
    /// the step when approved, records it skipped otherwise, then the rest of the playbook and
    /// its notifications. `pb` must be the playbook the run started with (the caller checks
    /// its digest); `view` holds the stored event.
    pub async fn resume(
        &self,
        pb: &Playbook,
        view: &EventView<'_>,
        saved: &PendingApproval,
        decision: &Decision,
        audit: &mut AuditBatch,
    ) -> Result<RunReport, RunError> {
        let started = Instant::now();
        let mut steps = rhai::Map::new();
        for s in &saved.steps {
            let mut entry = rhai::Map::new();
            entry.insert(
                "outcome".into(),
                Dynamic::from(s.outcome.as_str().to_owned()),
            );
            entry.insert(
                "output".into(),
                s.output.as_ref().map_or(Dynamic::UNIT, json_to_dynamic),
            );
            steps.insert(s.id.as_str().into(), Dynamic::from_map(entry));
        }
        // A decision taken while enforcement is paused resumes the run in plan mode.
        let paused = self.paused_for(pb);
        let mut run = RunCtx {
            pb,
            view,
            run_id: &saved.run_id,
            plan: paused.is_some(),
            paused,
            vars: saved
                .vars
                .iter()
                .map(|(k, v)| (k.as_str().into(), json_to_dynamic(v)))
                .collect(),
            steps,
            reports: saved.steps.clone(),
            failed: saved.failed,
            outcome: None,
            approved: None,
        };
        let report = RunReport {
            run_id: saved.run_id.clone(),
            playbook: pb.name.clone(),
            outcome: RunOutcome::Ok,
            steps: Vec::new(),
            reason: None,
        };
        let mut decided = decision.to_json();
        if let Some(m) = decided.as_object_mut() {
            m.insert(
                "requested_at".into(),
                json!(saved
                    .requested_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            );
        }
        let mut rec = self.record(RecordKind::Approval, decision.outcome(), &run);
        rec.step = Some(saved.step.clone());
        rec.action = Some(saved.action.clone());
        rec.args = saved.args.clone();
        rec.reason = decision.reason.clone();
        rec.approval = Some(decided.clone());
        audit.add(rec);
        let Some(step) = pb.steps.get(saved.step_index) else {
            return Ok(self.finish(run, report, RunOutcome::Failed, None, audit, started));
        };
        if decision.approved {
            run.approved = Some((step.id.clone(), decided));
            return self
                .proceed(run, report, saved.step_index, audit, started)
                .await;
        }
        let r = StepReport {
            id: step.id.clone(),
            action: step.action.to_string(),
            outcome: StepOutcome::Skipped,
            args: saved.args.clone(),
            output: None,
            reason: Some(decision.skip_reason()),
            notify: false,
            revert: None,
            approval: Some(decided),
        };
        self.emit_step(&mut run, step, r, None, audit);
        self.proceed(run, report, saved.step_index + 1, audit, started)
            .await
    }
}
