//! Runs one playbook for one event: admission (dedup, limits), vars, steps, notifications,
//! each decision recorded in the audit trail.
//!
//! Owns the run's order of business and its safety rules: guards (protected namespaces,
//! containers and labels are never acted on by a destructive action), the global limit on
//! destructive actions, plan mode (dry-run playbooks, `riposte test`, enforcement paused by the
//! kill switch), the step ledger (no side effect twice across a redelivery), retries with
//! backoff and per-attempt timeouts. It knows connectors only through their trait, and never
//! touches the bus: what it decides goes to an [`AuditBatch`].

mod approval;
mod ledger;
mod message;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rhai::{Dynamic, Scope};
use riposte_connectors::{check_args, Connector, ConnectorError, Subject};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use thiserror::Error;

use crate::audit::{AuditBatch, AuditError, AuditRecord, RecordKind};
use crate::clock::Clock;
use crate::config::{GlobalLimits, Protect};
use crate::control::Switch;
use crate::event::Event;
use crate::grouping::{group_key, Groups};
use crate::matcher::EventView;
use crate::metrics::Metrics;
use crate::playbook::{Mode, OnError, Playbook, Step};
use crate::revert::Pending;
use crate::script::{glob_match, json_to_dynamic, Sandbox};
use crate::state::{kv_key, Claim, StateError, StateStore};

/// A run could not be carried to its end because shared state or the audit trail failed; the
/// event is left unacknowledged so it is delivered again.
#[derive(Debug, Error)]
pub enum RunError {
    /// KV trouble.
    #[error(transparent)]
    State(#[from] StateError),
    /// Audit trouble.
    #[error(transparent)]
    Audit(#[from] AuditError),
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    /// Every step that ran succeeded.
    Ok,
    /// A step failed.
    Failed,
    /// Only planned (dry-run or plan mode).
    Planned,
    /// Suppressed by the dedup window.
    Suppressed,
    /// Refused by the playbook's limit.
    Limited,
    /// Stopped at a step that waits for a human decision; resumed once it is made.
    AwaitingApproval,
}

impl RunOutcome {
    /// The name used in audit records and `run.outcome`.
    pub fn as_str(self) -> &'static str {
        match self {
            RunOutcome::Ok => "ok",
            RunOutcome::Failed => "failed",
            RunOutcome::Planned => "planned",
            RunOutcome::Suppressed => "suppressed",
            RunOutcome::Limited => "limited",
            RunOutcome::AwaitingApproval => "awaiting_approval",
        }
    }
}

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepOutcome {
    /// It ran and succeeded.
    Ok,
    /// It failed (after its retries).
    Failed,
    /// It did not run (its `when`, a guard, a limit, or an earlier failure).
    Skipped,
    /// It was planned, not run.
    Planned,
    /// A notification that joined its group: the group's notice is sent later.
    Deferred,
    /// It waits for a human decision (`approval`) and has not run.
    AwaitingApproval,
}

impl StepOutcome {
    /// The name used in audit records and `steps.<id>.outcome`.
    pub fn as_str(self) -> &'static str {
        match self {
            StepOutcome::Ok => "ok",
            StepOutcome::Failed => "failed",
            StepOutcome::Skipped => "skipped",
            StepOutcome::Planned => "planned",
            StepOutcome::Deferred => "deferred",
            StepOutcome::AwaitingApproval => "awaiting_approval",
        }
    }
}

/// What happened to one step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepReport {
    /// Step id.
    pub id: String,
    /// `<instance>.<action>`.
    pub action: String,
    /// How it ended.
    pub outcome: StepOutcome,
    /// Rendered arguments (absent when rendering failed or the step was skipped early).
    pub args: Option<Value>,
    /// The connector's output, or the plan.
    pub output: Option<Value>,
    /// Why it failed or was skipped.
    pub reason: Option<String>,
    /// Whether it was a notification.
    pub notify: bool,
    /// For a reversible step that changed something: when it is undone and how to undo it now.
    pub revert: Option<Value>,
    /// For a step with `approval`: the request's terms, or the decision it ran (or was skipped)
    /// under.
    #[serde(default)]
    pub approval: Option<Value>,
}

/// What happened in one run.
#[derive(Debug, Clone, PartialEq)]
pub struct RunReport {
    /// The run id.
    pub run_id: String,
    /// The playbook.
    pub playbook: String,
    /// How it ended.
    pub outcome: RunOutcome,
    /// Steps then notifications.
    pub steps: Vec<StepReport>,
    /// Why it failed, was suppressed or limited.
    pub reason: Option<String>,
}

/// Settings of the runner.
#[derive(Debug, Clone)]
pub struct RunnerSettings {
    /// Time limit of a step without its own `timeout`.
    pub step_timeout: Duration,
    /// Guards.
    pub protect: Protect,
    /// Global limit on destructive actions.
    pub limits: GlobalLimits,
    /// This replica's name, in audit records.
    pub replica: String,
    /// Plan every action instead of running it (`riposte test`, `explain`).
    pub plan_only: bool,
}

/// Runs playbooks.
#[derive(Debug, Clone)]
pub struct Runner {
    sandbox: Sandbox,
    connectors: Arc<HashMap<String, Arc<dyn Connector>>>,
    state: Arc<dyn StateStore>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    settings: RunnerSettings,
    grouping: Option<Groups>,
    switch: Switch,
}

impl Runner {
    /// A runner over built connector instances and a state store.
    pub fn new(
        sandbox: Sandbox,
        connectors: HashMap<String, Arc<dyn Connector>>,
        state: Arc<dyn StateStore>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        settings: RunnerSettings,
    ) -> Self {
        Runner {
            sandbox,
            connectors: Arc::new(connectors),
            state,
            clock,
            metrics,
            settings,
            grouping: None,
            switch: Switch::default(),
        }
    }

    /// Follows the kill switch: while it is paused, runs of enforcing playbooks are planned
    /// (see [`crate::control`]).
    pub fn with_switch(mut self, switch: Switch) -> Self {
        self.switch = switch;
        self
    }

    /// Why a run of `pb` starting now is planned because enforcement is paused, if it is (not
    /// for runs planned anyway).
    fn paused_for(&self, pb: &Playbook) -> Option<String> {
        if self.settings.plan_only || pb.mode == Mode::DryRun {
            return None;
        }
        self.switch.paused()
    }

    /// Groups notifications that take the enriched notice (see [`crate::grouping`]).
    pub fn with_grouping(mut self, groups: Groups) -> Self {
        self.grouping = Some(groups);
        self
    }

    /// The sandbox expressions run in.
    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }

    /// The connector instances, by name.
    pub fn connectors(&self) -> Arc<HashMap<String, Arc<dyn Connector>>> {
        self.connectors.clone()
    }

    /// The runner's settings.
    pub fn settings(&self) -> &RunnerSettings {
        &self.settings
    }

    fn record(&self, kind: RecordKind, outcome: &str, run: &RunCtx<'_>) -> AuditRecord {
        let mut r = AuditRecord::new(kind, outcome, self.clock.now(), &self.settings.replica);
        r.run_id = Some(run.run_id.to_owned());
        r.event_id = Some(run.view.event.id.clone());
        r.playbook = Some(run.pb.name.clone());
        r.dry_run = run.plan;
        r
    }

    /// Runs `pb` for the event in `view` as run `run_id`, recording every decision in `audit`.
    pub async fn run(
        &self,
        pb: &Playbook,
        view: &EventView<'_>,
        run_id: &str,
        audit: &mut AuditBatch,
    ) -> Result<RunReport, RunError> {
        let started = Instant::now();
        let paused = self.paused_for(pb);
        let plan = self.settings.plan_only || pb.mode == Mode::DryRun || paused.is_some();
        let mut run = RunCtx {
            pb,
            view,
            run_id,
            plan,
            paused,
            vars: rhai::Map::new(),
            steps: rhai::Map::new(),
            reports: Vec::new(),
            failed: false,
            outcome: None,
            approved: None,
        };
        let mut report = RunReport {
            run_id: run_id.to_owned(),
            playbook: pb.name.clone(),
            outcome: RunOutcome::Ok,
            steps: Vec::new(),
            reason: None,
        };
        if let Err(reason) = self.eval_vars(&mut run) {
            return Ok(self.finish(
                run,
                report,
                RunOutcome::Failed,
                Some(reason),
                audit,
                started,
            ));
        }
        if let Some(outcome) = self.admit(&run, audit, &mut report).await? {
            self.metrics.count_run(outcome.as_str());
            report.outcome = outcome;
            return Ok(report);
        }
        self.proceed(run, report, 0, audit, started).await
    }

    /// Runs the steps from index `from` on, then the notifications, and ends the run; stops
    /// at a step that waits for approval (see [`approval`]).
    async fn proceed(
        &self,
        mut run: RunCtx<'_>,
        report: RunReport,
        from: usize,
        audit: &mut AuditBatch,
        started: Instant,
    ) -> Result<RunReport, RunError> {
        let pb = run.pb;
        let mut aborted: Option<String> = None;
        for (index, step) in pb.steps.iter().enumerate().skip(from) {
            if let Some(why) = &aborted {
                let r = StepReport {
                    id: step.id.clone(),
                    action: step.action.to_string(),
                    outcome: StepOutcome::Skipped,
                    args: None,
                    output: None,
                    reason: Some(format!("not run: {why}")),
                    notify: false,
                    revert: None,
                    approval: None,
                };
                self.emit_step(&mut run, step, r, None, audit);
                continue;
            }
            let (r, attempts) = self.step(&mut run, step, false, audit).await?;
            if r.outcome == StepOutcome::AwaitingApproval {
                return self.ask(run, report, step, index, r, audit, started).await;
            }
            let failed = r.outcome == StepOutcome::Failed;
            self.emit_step(&mut run, step, r, attempts, audit);
            if failed && step.on_error == OnError::Abort {
                aborted = Some(format!("step `{}` failed", step.id));
            }
        }
        let outcome = if run.failed {
            RunOutcome::Failed
        } else if run.plan {
            RunOutcome::Planned
        } else {
            RunOutcome::Ok
        };
        for step in &pb.notify {
            let (r, attempts) = self.notify(&mut run, step, outcome, audit).await?;
            self.emit_step(&mut run, step, r, attempts, audit);
        }
        let reason = aborted;
        Ok(self.finish(run, report, outcome, reason, audit, started))
    }

    fn finish(
        &self,
        run: RunCtx<'_>,
        mut report: RunReport,
        outcome: RunOutcome,
        reason: Option<String>,
        audit: &mut AuditBatch,
        started: Instant,
    ) -> RunReport {
        let elapsed = started.elapsed();
        let mut rec = self.record(RecordKind::Run, outcome.as_str(), &run);
        rec.reason = reason.clone().or_else(|| run.paused.clone());
        if run.paused.is_some() {
            self.metrics.runs_planned_paused.inc();
        }
        rec.duration_ms = Some(elapsed.as_secs_f64() * 1000.0);
        audit.add(rec);
        self.metrics.count_run(outcome.as_str());
        self.metrics.run_latency.observe(elapsed.as_secs_f64());
        report.outcome = outcome;
        report.reason = reason;
        report.steps = run.reports;
        report
    }

    /// Dedup and the playbook's limit. `Some(outcome)` when the run may not go on.
    async fn admit(
        &self,
        run: &RunCtx<'_>,
        audit: &mut AuditBatch,
        report: &mut RunReport,
    ) -> Result<Option<RunOutcome>, RunError> {
        let pb = run.pb;
        let now = self.clock.now();
        if let Some((key, window)) = &pb.dedup {
            let mut scope = run.scope(false);
            let rendered = match key.render_string(&self.sandbox, &mut scope) {
                Ok(k) => k,
                Err(e) => {
                    // Without its key a run could repeat what the window exists to prevent:
                    // it does not run.
                    let reason = format!("the dedup key failed: {e}");
                    let mut rec = self.record(RecordKind::Run, RunOutcome::Failed.as_str(), run);
                    rec.reason = Some(reason.clone());
                    audit.add(rec);
                    report.reason = Some(reason);
                    return Ok(Some(RunOutcome::Failed));
                }
            };
            let claim = self
                .state
                .claim(&kv_key(&pb.name, &rendered), run.run_id, *window, now)
                .await?;
            if let Claim::Held { by, until } = claim {
                let reason = format!(
                    "dedup key `{rendered}` is held by run {by} until {}",
                    until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                );
                let mut rec = self.record(RecordKind::Dedup, "suppressed", run);
                rec.reason = Some(reason.clone());
                audit.add(rec);
                report.reason = Some(reason);
                return Ok(Some(RunOutcome::Suppressed));
            }
        }
        if let Some((max, per)) = pb.limits {
            if !self
                .state
                .take_slot(&format!("playbook.{}", pb.name), max, per, now)
                .await?
            {
                let reason = format!(
                    "playbook limit reached: {max} runs per {}",
                    humantime::format_duration(per)
                );
                let mut rec = self.record(RecordKind::Limit, "limited", run);
                rec.reason = Some(reason.clone());
                audit.add(rec);
                report.reason = Some(reason);
                return Ok(Some(RunOutcome::Limited));
            }
        }
        Ok(None)
    }

    fn eval_vars(&self, run: &mut RunCtx<'_>) -> Result<(), String> {
        for (name, value) in &run.pb.vars {
            let mut scope = run.scope(false);
            let v = value
                .render(&self.sandbox, &mut scope)
                .map_err(|e| format!("var `{name}` failed: {e}"))?;
            run.vars.insert(name.as_str().into(), json_to_dynamic(&v));
        }
        Ok(())
    }

    fn emit_step(
        &self,
        run: &mut RunCtx<'_>,
        step: &Step,
        r: StepReport,
        attempts: Option<u32>,
        audit: &mut AuditBatch,
    ) {
        let kind = if r.notify {
            RecordKind::Notify
        } else {
            RecordKind::Step
        };
        let mut rec = self.record(kind, r.outcome.as_str(), run);
        rec.step = Some(step.id.clone());
        rec.action = Some(r.action.clone());
        rec.args = r.args.clone();
        rec.output = r.output.clone();
        rec.reason = r.reason.clone().or_else(|| {
            run.paused
                .clone()
                .filter(|_| r.outcome == StepOutcome::Planned)
        });
        rec.revert = r.revert.clone();
        rec.approval = r.approval.clone();
        rec.attempts = attempts;
        audit.add(rec);
        self.metrics.count_step(r.outcome.as_str());
        if r.outcome == StepOutcome::Failed && !r.notify {
            run.failed = true;
        }
        let mut entry = rhai::Map::new();
        entry.insert(
            "outcome".into(),
            Dynamic::from(r.outcome.as_str().to_owned()),
        );
        entry.insert(
            "output".into(),
            r.output.as_ref().map_or(Dynamic::UNIT, json_to_dynamic),
        );
        run.steps
            .insert(step.id.as_str().into(), Dynamic::from_map(entry));
        run.reports.push(r);
    }

    async fn notify(
        &self,
        run: &mut RunCtx<'_>,
        step: &Step,
        outcome: RunOutcome,
        audit: &mut AuditBatch,
    ) -> Result<(StepReport, Option<u32>), RunError> {
        run.outcome = Some(outcome);
        self.step(run, step, true, audit).await
    }

    /// Decides, renders, guards and runs (or plans) one step.
    async fn step(
        &self,
        run: &mut RunCtx<'_>,
        step: &Step,
        notify: bool,
        audit: &mut AuditBatch,
    ) -> Result<(StepReport, Option<u32>), RunError> {
        let mut r = StepReport {
            id: step.id.clone(),
            action: step.action.to_string(),
            outcome: StepOutcome::Skipped,
            args: None,
            output: None,
            reason: None,
            notify,
            revert: None,
            approval: run.approved_here(step),
        };
        let mut scope = run.scope(true);
        if let Some(when) = &step.when {
            match self.sandbox.eval_bool(when, &mut scope) {
                Ok(true) => {}
                Ok(false) => {
                    r.reason = Some("`when` is false".to_owned());
                    return Ok((r, None));
                }
                Err(e) => {
                    r.outcome = StepOutcome::Failed;
                    r.reason = Some(format!("`when` failed: {e}"));
                    return Ok((r, None));
                }
            }
        }
        let args = match &step.with {
            Some(t) => t.render(&self.sandbox, &mut scope),
            None => Ok(message::default_message(run, step)),
        };
        let args = match args {
            Ok(Value::Object(mut map)) => {
                message::fill(run, step, &mut map);
                map
            }
            Ok(_) => serde_json::Map::new(),
            Err(e) => {
                r.outcome = StepOutcome::Failed;
                r.reason = Some(format!("arguments failed: {e}"));
                return Ok((r, None));
            }
        };
        r.args = Some(Value::Object(args.clone()));
        if let Err(e) = check_args(step.action.spec, &args) {
            r.outcome = StepOutcome::Failed;
            r.reason = Some(e.to_string());
            return Ok((r, None));
        }
        let Some(connector) = self.connectors.get(&step.action.instance) else {
            r.outcome = StepOutcome::Failed;
            r.reason = Some(format!(
                "connector instance `{}` is not configured on this engine",
                step.action.instance
            ));
            return Ok((r, None));
        };
        if step.action.spec.destructive {
            if let Some(why) = self.protected(run.view, &args) {
                r.reason = Some(format!("guard: {why}"));
                return Ok((r, None));
            }
        }
        // A pause that comes in the middle of a run plans the rest of its steps.
        if !run.plan && !notify {
            if let Some(why) = self.paused_for(run.pb) {
                run.plan = true;
                run.paused = Some(why);
            }
        }
        // While enforcement is paused, notifications still go out (saying the run was planned).
        if run.plan && !(notify && run.paused.is_some()) {
            let planned = if self.settings.plan_only {
                connector.describe(&step.action.action, &args)
            } else {
                connector.plan(&step.action.action, &args).await
            };
            match planned {
                Ok(p) => {
                    r.outcome = StepOutcome::Planned;
                    let plan = match &step.approval {
                        Some(a) => {
                            r.approval = Some(approval::planned_terms(a));
                            format!("{} {}", p.description, approval::planned_text(a))
                        }
                        None => p.description,
                    };
                    r.output = Some(json!({ "plan": plan }));
                }
                Err(ConnectorError::Refused(why)) => {
                    r.reason = Some(format!("guard: {why}"));
                }
                Err(e) => {
                    r.outcome = StepOutcome::Failed;
                    r.reason = Some(e.to_string());
                }
            }
            return Ok((r, None));
        }
        if step.approval.is_some() && r.approval.is_none() {
            let size = serde_json::to_vec(run.view.event).map_or(usize::MAX, |v| v.len());
            if size > approval::MAX_EVENT_BYTES {
                r.outcome = StepOutcome::Failed;
                r.reason = Some(format!(
                    "cannot wait for approval: the event is {size} bytes as JSON, over the {} \
                     a pending approval may keep",
                    approval::MAX_EVENT_BYTES
                ));
            } else {
                r.outcome = StepOutcome::AwaitingApproval;
            }
            return Ok((r, None));
        }
        if let Some(groups) = self.grouping.as_ref().filter(|_| notify && step.grouped) {
            if step.action.spec.takes_notice() {
                return self.defer(groups, run, step, r, args).await;
            }
        }
        let ledgered = ledger::has_side_effects(step.action.spec);
        // A destructive step done before a redelivery takes no second slot of the limit.
        if ledgered && step.action.spec.destructive {
            if let Some(attempts) = self.ledger_before(run, step, &mut r).await? {
                return Ok((r, attempts));
            }
        }
        if step.action.spec.destructive {
            let l = &self.settings.limits;
            if !self
                .state
                .take_slot(
                    "global.destructive",
                    l.max_destructive_actions,
                    l.per.get(),
                    self.clock.now(),
                )
                .await?
            {
                let why = format!(
                    "global limit reached: {} destructive actions per {}",
                    l.max_destructive_actions, l.per
                );
                let mut rec = self.record(RecordKind::Limit, "limited", run);
                rec.step = Some(step.id.clone());
                rec.action = Some(r.action.clone());
                rec.reason = Some(why.clone());
                audit.add(rec);
                r.reason = Some(why);
                return Ok((r, None));
            }
            let mut rec = self.record(RecordKind::StepStarted, "started", run);
            rec.step = Some(step.id.clone());
            rec.action = Some(r.action.clone());
            rec.args = r.args.clone();
            audit.publish_now(run.run_id, rec).await?;
        }
        if ledgered {
            if let Some(attempts) = self.ledger_start(run, step, &mut r).await? {
                return Ok((r, attempts));
            }
        }
        let ctx = riposte_connectors::context::RunContext {
            run_id: Some(run.run_id.to_owned()),
            playbook: Some(run.pb.name.clone()),
            event_id: Some(run.view.event.id.clone()),
            step: Some(step.id.clone()),
            by: run
                .approved_here(step)
                .and_then(|d| d.get("by").and_then(Value::as_str).map(str::to_owned)),
        };
        let (result, attempts, retried) =
            riposte_connectors::context::scope(ctx, self.attempt(connector.as_ref(), step, &args))
                .await;
        for (n, why) in retried {
            let mut rec = self.record(RecordKind::Attempt, "retrying", run);
            rec.step = Some(step.id.clone());
            rec.action = Some(r.action.clone());
            rec.attempts = Some(n);
            rec.reason = Some(why);
            audit.add(rec);
        }
        match result {
            Ok(out) => {
                r.outcome = StepOutcome::Ok;
                r.output = Some(out.output);
                if let (Some(undo), true) = (out.undo, step.action.spec.reversible) {
                    r.revert = Some(self.keep_undo(run, step, undo).await?);
                }
            }
            Err(ConnectorError::Refused(why)) => {
                r.reason = Some(format!("guard: {why}"));
            }
            Err(e) => {
                r.outcome = StepOutcome::Failed;
                r.reason = Some(e.to_string());
            }
        }
        if ledgered {
            self.ledger_finish(run, step, &r, attempts).await?;
        }
        Ok((r, Some(attempts)))
    }

    /// Adds a notification to its group instead of sending it.
    async fn defer(
        &self,
        groups: &Groups,
        run: &mut RunCtx<'_>,
        step: &Step,
        mut r: StepReport,
        args: riposte_connectors::Args,
    ) -> Result<(StepReport, Option<u32>), RunError> {
        let mut reason = None;
        let resolve = match &step.resolve_when {
            None => false,
            Some(ast) => {
                let mut scope = run.scope(true);
                self.sandbox.eval_bool(ast, &mut scope).unwrap_or_else(|e| {
                    reason = Some(format!("`resolve_when` failed: {e}"));
                    false
                })
            }
        };
        let action = step.action.to_string();
        let key = group_key(&groups.settings().by, &run.pb.name, &action, run.view.event);
        let g = groups
            .defer(
                &key,
                &run.pb.name,
                &step.action.instance,
                &step.action.action,
                args,
                run.run_id,
                &run.view.event.id,
                resolve,
                self.clock.now(),
            )
            .await?;
        r.outcome = StepOutcome::Deferred;
        r.reason = reason;
        r.output = Some(json!({
            "group": key,
            "events": g.events,
            "notice_at": g.next.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "resolves": resolve,
        }));
        Ok((r, None))
    }

    /// Records the undo of a reversible step that changed something; returns what the step's
    /// audit record says about it.
    async fn keep_undo(
        &self,
        run: &RunCtx<'_>,
        step: &Step,
        undo: Value,
    ) -> Result<Value, RunError> {
        let now = self.clock.now();
        let due = step
            .revert_after
            .and_then(|d| chrono::Duration::from_std(d).ok())
            .map(|d| now + d);
        let pending = Pending {
            run_id: run.run_id.to_owned(),
            step: step.id.clone(),
            playbook: run.pb.name.clone(),
            event_id: run.view.event.id.clone(),
            instance: step.action.instance.clone(),
            action: step.action.action.clone(),
            undo,
            done_at: now,
            due,
            requested_by: None,
            attempts: 0,
            last_error: None,
            lease: None,
        };
        self.state.record_revert(&pending).await?;
        Ok(json!({
            "due": due.map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            "command": pending.command(),
        }))
    }

    /// The event with what connectors know of the container, pod or node it names
    /// (`event.enrichment.<instance>`), for the playbooks about to run it, or `None` when there
    /// is nothing to add. Only the instances those playbooks' steps use are asked (every one
    /// when a playbook reads `event.enrichment`), so events whose playbooks only log or publish
    /// cost no outside call. Not in plan-only mode, which calls nothing outside.
    pub async fn enrich(&self, event: &Event, playbooks: &[Arc<Playbook>]) -> Option<Event> {
        if self.settings.plan_only {
            return None;
        }
        let subject = subject_of(event)?;
        let every = playbooks.iter().any(|p| p.uses_enrichment);
        let used: std::collections::BTreeSet<&str> = playbooks
            .iter()
            .flat_map(|p| p.steps.iter().chain(&p.notify))
            .map(|s| s.action.instance.as_str())
            .collect();
        let mut names: Vec<&String> = self
            .connectors
            .keys()
            .filter(|n| every || used.contains(n.as_str()))
            .collect();
        names.sort();
        let mut enriched = event.clone();
        for name in names {
            let Some(c) = self.connectors.get(name) else {
                continue;
            };
            if let Some(facts) = c.enrich(&subject).await {
                fill_container(&mut enriched, &facts);
                fill_pod(&mut enriched, &facts);
                enriched.enrichment.entry(name.clone()).or_insert(facts);
            }
        }
        (!enriched.enrichment.is_empty()).then_some(enriched)
    }

    /// Runs an action with its retries and per-attempt timeout. Returns the last result, the
    /// number of attempts, and each failed attempt that was tried again (number, reason).
    async fn attempt(
        &self,
        connector: &dyn Connector,
        step: &Step,
        args: &riposte_connectors::Args,
    ) -> (
        Result<riposte_connectors::Output, ConnectorError>,
        u32,
        Vec<(u32, String)>,
    ) {
        let mut retried = Vec::new();
        let limit = step.timeout.unwrap_or(self.settings.step_timeout);
        let mut backoff = step.backoff;
        let mut attempt = 1;
        loop {
            let result =
                match tokio::time::timeout(limit, connector.run(&step.action.action, args)).await {
                    Ok(r) => r,
                    Err(_) => Err(ConnectorError::Transient(format!(
                        "timed out after {}",
                        humantime::format_duration(limit)
                    ))),
                };
            match result {
                Err(e) if e.is_retryable() && attempt < step.attempts => {
                    tracing::warn!(step = %step.id, attempt, error = %e, "step failed, retrying");
                    retried.push((attempt, e.to_string()));
                    tokio::time::sleep(backoff).await;
                    backoff = backoff.saturating_mul(2);
                    attempt += 1;
                }
                other => return (other, attempt, retried),
            }
        }
    }

    /// Why a destructive action may not touch what this event is about, if it may not.
    fn protected(&self, view: &EventView<'_>, args: &riposte_connectors::Args) -> Option<String> {
        let p = &self.settings.protect;
        let e = view.event;
        let mut namespaces: Vec<&str> = Vec::new();
        let mut containers: Vec<&str> = Vec::new();
        if let Some(pod) = &e.resource.pod {
            namespaces.extend(pod.namespace.as_deref());
            for (k, v) in &pod.labels {
                if p.labels.get(k) == Some(v) {
                    return Some(format!("pod label `{k}={v}` is protected"));
                }
            }
        }
        if let Some(c) = &e.resource.container {
            containers.extend(c.name.as_deref());
        }
        namespaces.extend(args.get("namespace").and_then(Value::as_str));
        containers.extend(args.get("container").and_then(Value::as_str));
        if let Some(ns) = namespaces
            .iter()
            .find(|ns| p.namespaces.iter().any(|x| x == *ns))
        {
            return Some(format!("namespace `{ns}` is protected"));
        }
        for c in containers {
            let name = c.trim_start_matches('/');
            if let Some(g) = p.containers.iter().find(|g| glob_match(g, name)) {
                return Some(format!("container `{name}` is protected (`{g}`)"));
            }
        }
        None
    }
}

/// What an event names that connectors can look up: a container, a pod, a node. `None` when
/// it names none of them.
pub fn subject_of(event: &Event) -> Option<Subject> {
    let r = &event.resource;
    let pod = r.pod.as_ref();
    let subject = Subject {
        container_id: r.container.as_ref().and_then(|c| c.id.clone()),
        pod: pod.and_then(|p| p.name.clone()),
        namespace: pod.and_then(|p| p.namespace.clone()),
        node: r.node.as_ref().and_then(|n| n.name.clone()),
    };
    (subject != Subject::default()).then_some(subject)
}

/// Fills the container's name and image from enrichment facts when the producer left them out.
fn fill_container(event: &mut Event, facts: &Value) {
    let Some(c) = event.resource.container.as_mut() else {
        return;
    };
    let text = |k: &str| facts.get(k).and_then(Value::as_str).map(str::to_owned);
    if c.name.is_none() {
        c.name = text("name");
    }
    if c.image.is_none() {
        c.image = text("image");
    }
}

/// Fills the pod's labels and the node from Kubernetes enrichment facts when the producer left
/// them out, so guards and notifications see them.
fn fill_pod(event: &mut Event, facts: &Value) {
    if facts.get("pod").is_none() {
        return;
    }
    if let Some(p) = event.resource.pod.as_mut() {
        if p.labels.is_empty() {
            if let Some(m) = facts.get("labels").and_then(Value::as_object) {
                p.labels = m
                    .iter()
                    .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
                    .collect();
            }
        }
        if p.uid.is_none() {
            p.uid = facts.get("uid").and_then(Value::as_str).map(str::to_owned);
        }
    }
    if event
        .resource
        .node
        .as_ref()
        .is_none_or(|n| n.name.is_none())
    {
        if let Some(node) = facts.get("node").and_then(Value::as_str) {
            event.resource.node = Some(crate::event::Node {
                name: Some(node.to_owned()),
            });
        }
    }
}

/// The state of one run in progress.
struct RunCtx<'a> {
    pb: &'a Playbook,
    view: &'a EventView<'a>,
    run_id: &'a str,
    plan: bool,
    /// Why the run is planned because enforcement is paused (kill switch), when it is.
    paused: Option<String>,
    vars: rhai::Map,
    steps: rhai::Map,
    reports: Vec<StepReport>,
    failed: bool,
    outcome: Option<RunOutcome>,
    /// The step resumed after a decision to run it, and that decision (for its records).
    approved: Option<(String, Value)>,
}

impl RunCtx<'_> {
    /// The decision `step` runs under, when it is the step resumed after approval.
    fn approved_here(&self, step: &Step) -> Option<Value> {
        self.approved
            .as_ref()
            .filter(|(id, _)| *id == step.id)
            .map(|(_, v)| v.clone())
    }

    /// A scope with `event` and `vars`, plus `steps` and `run` when `full`.
    fn scope(&self, full: bool) -> Scope<'static> {
        let mut scope = self.view.scope();
        scope.push_constant_dynamic("vars", Dynamic::from_map(self.vars.clone()));
        if full {
            scope.push_constant_dynamic("steps", Dynamic::from_map(self.steps.clone()));
            let mut run = rhai::Map::new();
            run.insert("id".into(), Dynamic::from(self.run_id.to_owned()));
            run.insert("playbook".into(), Dynamic::from(self.pb.name.clone()));
            let outcome = self.outcome.map_or(
                if self.failed { "failed" } else { "running" },
                RunOutcome::as_str,
            );
            run.insert("outcome".into(), Dynamic::from(outcome.to_owned()));
            run.insert("failed".into(), Dynamic::from_bool(self.failed));
            run.insert("dry_run".into(), Dynamic::from_bool(self.plan));
            scope.push_constant_dynamic("run", Dynamic::from_map(run));
        }
        scope
    }
}

#[cfg(test)]
mod tests;
