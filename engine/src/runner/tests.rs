#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::collections::VecDeque;
use std::sync::Mutex;

use async_trait::async_trait;
use riposte_connectors::{ActionSpec, Args, Output, Plan};

use super::*;
use crate::audit::AuditSink;
use crate::clock::FixedClock;
use crate::config::Config;
use crate::event::Source;
use crate::playbook::{load_file, Catalog};

/// A connector that answers from a script, optionally after a delay.
#[derive(Debug, Default)]
struct Scripted {
    answers: Mutex<VecDeque<Result<Output, ConnectorError>>>,
    calls: Mutex<u32>,
    delay: Option<Duration>,
}

#[async_trait]
impl Connector for Scripted {
    fn actions(&self) -> &'static [ActionSpec] {
        riposte_connectors::log::ACTIONS
    }
    fn describe(&self, _: &str, _: &Args) -> Result<Plan, ConnectorError> {
        Ok(Plan {
            description: "would act".into(),
        })
    }
    async fn run(&self, _: &str, _: &Args) -> Result<Output, ConnectorError> {
        *self.calls.lock().unwrap() += 1;
        if let Some(d) = self.delay {
            tokio::time::sleep(d).await;
        }
        self.answers
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or_else(|| Ok(Output::default()))
    }
}

/// The same parameters as `log.info`, but destructive.
static DESTRUCTIVE: ActionSpec = ActionSpec {
    name: "info",
    description: "a destructive stand-in",
    params: riposte_connectors::log::ACTIONS[0].params,
    destructive: true,
    reversible: false,
    message_param: None,
};

/// Loads playbook `p` whose `spec:` is `yaml`, as `riposte check` would.
fn load(yaml: &str) -> Result<Playbook, Vec<crate::playbook::Problem>> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.yaml");
    std::fs::write(
        &file,
        format!("apiVersion: riposte/v1\nkind: Playbook\nmetadata: {{ name: p }}\nspec:\n{yaml}"),
    )
    .unwrap();
    load_file(
        &file,
        &Catalog::from_config(&Config::default_with_bindings()),
        &Sandbox::new(Arc::new(crate::clock::SystemClock)),
    )
}

fn playbook(yaml: &str) -> Playbook {
    load(yaml).unwrap()
}

fn runner(connector: Arc<Scripted>, config: &Config) -> Runner {
    let clock: Arc<dyn Clock> = Arc::new(FixedClock::new(chrono::Utc::now()));
    let mut connectors: HashMap<String, Arc<dyn Connector>> = HashMap::new();
    connectors.insert("log".into(), connector);
    Runner::new(
        Sandbox::new(clock.clone()),
        connectors,
        Arc::new(crate::state::MemoryState::default()),
        clock,
        Arc::new(Metrics::new()),
        crate::engine::runner_settings(config, false),
    )
}

fn event(namespace: &str) -> crate::event::Event {
    let payload = serde_json::json!({
        "rule": "Terminal shell in container", "priority": "Critical", "output": "x",
        "time": "2026-01-01T00:00:00Z",
        "output_fields": {"container.id": "c1", "container.name": "web", "k8s.ns.name": namespace, "k8s.pod.name": "web-1"}
    });
    crate::formats::normalize(
        Source::Falco,
        payload.to_string().as_bytes(),
        chrono::Utc::now(),
    )
    .unwrap()
    .remove(0)
}

async fn run(r: &Runner, pb: &Playbook, e: &crate::event::Event) -> (RunReport, Vec<AuditRecord>) {
    run_as(r, pb, e, "r-1").await
}

/// [`run`] as run `id` (the same id again is a redelivery).
async fn run_as(
    r: &Runner,
    pb: &Playbook,
    e: &crate::event::Event,
    id: &str,
) -> (RunReport, Vec<AuditRecord>) {
    let sink = AuditSink::memory();
    let mut batch = sink.batch("t");
    let view = EventView::new(e, true);
    let report = r.run(pb, &view, id, &mut batch).await.unwrap();
    batch.commit().await.unwrap();
    (report, sink.recorded())
}

#[tokio::test(start_paused = true)]
async fn transient_failures_are_retried_with_doubling_backoff() {
    let c = Arc::new(Scripted::default());
    c.answers.lock().unwrap().extend([
        Err(ConnectorError::Transient("busy".into())),
        Err(ConnectorError::Transient("busy".into())),
    ]);
    let pb = playbook("  match: {}\n  steps:\n    - { id: a, action: log.info, with: { message: hi }, retry: { attempts: 3, backoff: 1s } }\n");
    let started = tokio::time::Instant::now();
    let (report, records) = run(&runner(c.clone(), &Config::default()), &pb, &event("shop")).await;
    assert_eq!(report.outcome, RunOutcome::Ok);
    assert_eq!(*c.calls.lock().unwrap(), 3);
    assert_eq!(started.elapsed(), Duration::from_secs(3));
    let step = records
        .iter()
        .find(|r| r.record == RecordKind::Step)
        .unwrap();
    assert_eq!((step.outcome.as_str(), step.attempts), ("ok", Some(3)));
    let retried: Vec<(Option<u32>, Option<&str>)> = records
        .iter()
        .filter(|r| r.record == RecordKind::Attempt)
        .map(|r| (r.attempts, r.reason.as_deref()))
        .collect();
    assert_eq!(
        retried,
        vec![(Some(1), Some("busy")), (Some(2), Some("busy"))],
        "every failed attempt is on record"
    );
}

#[tokio::test(start_paused = true)]
async fn a_step_that_hangs_is_timed_out_and_counts_as_transient() {
    let c = Arc::new(Scripted {
        delay: Some(Duration::from_secs(3600)),
        ..Default::default()
    });
    let pb = playbook("  match: {}\n  steps:\n    - { id: a, action: log.info, with: { message: hi }, timeout: 2s, retry: { attempts: 2, backoff: 1s } }\n");
    let (report, records) = run(&runner(c.clone(), &Config::default()), &pb, &event("shop")).await;
    assert_eq!(report.outcome, RunOutcome::Failed);
    assert_eq!(*c.calls.lock().unwrap(), 2);
    let step = records
        .iter()
        .find(|r| r.record == RecordKind::Step)
        .unwrap();
    assert_eq!(step.reason.as_deref(), Some("timed out after 2s"));
}

#[tokio::test]
async fn a_permanent_failure_aborts_the_run_but_notifications_still_go_out() {
    let c = Arc::new(Scripted::default());
    c.answers
        .lock()
        .unwrap()
        .push_back(Err(ConnectorError::Permanent("refused".into())));
    let pb = playbook("  match: {}\n  steps:\n    - { id: a, action: log.info, with: { message: hi }, retry: { attempts: 5 } }\n    - { id: b, action: log.info, with: { message: hi } }\n  notify:\n    - { action: log.info, when: run.failed }\n");
    let (report, _) = run(&runner(c.clone(), &Config::default()), &pb, &event("shop")).await;
    assert_eq!(report.outcome, RunOutcome::Failed);
    let outcomes: Vec<(&str, StepOutcome)> = report
        .steps
        .iter()
        .map(|s| (s.id.as_str(), s.outcome))
        .collect();
    assert_eq!(
        outcomes,
        vec![
            ("a", StepOutcome::Failed),
            ("b", StepOutcome::Skipped),
            ("notify-1", StepOutcome::Ok)
        ]
    );
    assert_eq!(
        report.steps[1].reason.as_deref(),
        Some("not run: step `a` failed")
    );
    assert_eq!(
        *c.calls.lock().unwrap(),
        2,
        "no retry of a permanent failure; the notification ran"
    );
}

#[tokio::test]
async fn on_error_continue_goes_on_with_the_next_step() {
    let c = Arc::new(Scripted::default());
    c.answers
        .lock()
        .unwrap()
        .push_back(Err(ConnectorError::Permanent("refused".into())));
    let pb = playbook("  match: {}\n  steps:\n    - { id: a, action: log.info, with: { message: hi }, on_error: continue }\n    - { id: b, action: log.info, when: 'steps.a.outcome == \"failed\"', with: { message: 'after ${{ steps.a.outcome }}' } }\n");
    let (report, _) = run(&runner(c, &Config::default()), &pb, &event("shop")).await;
    assert_eq!(report.outcome, RunOutcome::Failed);
    assert_eq!(report.steps[1].outcome, StepOutcome::Ok);
    assert_eq!(
        report.steps[1].args,
        Some(serde_json::json!({"message": "after failed"}))
    );
}

#[tokio::test]
async fn destructive_actions_respect_guards_and_the_global_limit() {
    let c = Arc::new(Scripted::default());
    let mut pb = playbook(
        "  match: {}\n  steps:\n    - { id: a, action: log.info, with: { message: hi } }\n",
    );
    pb.steps[0].action.spec = &DESTRUCTIVE;
    let mut config = Config::default();
    config.limits.max_destructive_actions = 1;
    let r = runner(c.clone(), &config);

    let (report, _) = run(&r, &pb, &event("kube-system")).await;
    assert_eq!(report.steps[0].outcome, StepOutcome::Skipped);
    assert_eq!(
        report.steps[0].reason.as_deref(),
        Some("guard: namespace `kube-system` is protected")
    );

    let (report, records) = run_as(&r, &pb, &event("shop"), "r-2").await;
    assert_eq!(report.steps[0].outcome, StepOutcome::Ok);
    assert!(
        records.iter().any(|x| x.record == RecordKind::StepStarted),
        "a destructive step is on record before it runs"
    );

    // The same run again (a redelivery) is not performed again and takes no slot.
    let (report, _) = run_as(&r, &pb, &event("shop"), "r-2").await;
    assert_eq!(report.steps[0].outcome, StepOutcome::Ok);
    assert!(report.steps[0]
        .reason
        .as_deref()
        .unwrap()
        .starts_with("already done by replica"));

    let (report, records) = run_as(&r, &pb, &event("shop"), "r-3").await;
    assert_eq!(report.steps[0].outcome, StepOutcome::Skipped);
    assert!(report.steps[0]
        .reason
        .as_deref()
        .unwrap()
        .starts_with("global limit reached: 1 destructive actions per"));
    assert!(records.iter().any(|x| x.record == RecordKind::Limit));
    assert_eq!(*c.calls.lock().unwrap(), 1);
}

#[tokio::test]
async fn a_dedup_key_that_fails_stops_the_run_before_any_action() {
    let c = Arc::new(Scripted::default());
    let pb = playbook("  match: {}\n  dedup: { key: '${{ event.labels.nothing.deeper }}', window: 5m }\n  steps:\n    - { id: a, action: log.info, with: { message: hi } }\n");
    let (report, records) = run(&runner(c.clone(), &Config::default()), &pb, &event("shop")).await;
    assert_eq!(report.outcome, RunOutcome::Failed);
    assert!(report
        .reason
        .as_deref()
        .unwrap()
        .starts_with("the dedup key failed"));
    assert_eq!(*c.calls.lock().unwrap(), 0);
    assert_eq!(records.len(), 1);
}

#[tokio::test]
async fn dry_run_playbooks_plan_and_never_act() {
    let c = Arc::new(Scripted::default());
    let pb = playbook("  mode: dry-run\n  match: {}\n  steps:\n    - { id: a, action: log.info, with: { message: hi } }\n");
    let (report, records) = run(&runner(c.clone(), &Config::default()), &pb, &event("shop")).await;
    assert_eq!(report.outcome, RunOutcome::Planned);
    assert_eq!(*c.calls.lock().unwrap(), 0);
    assert!(records.iter().all(|r| r.dry_run));
}

/// `pause`-like: destructive and reversible.
static REVERSIBLE: ActionSpec = ActionSpec {
    name: "info",
    description: "a reversible stand-in",
    params: riposte_connectors::log::ACTIONS[0].params,
    destructive: true,
    reversible: true,
    message_param: None,
};

#[tokio::test]
async fn a_reversible_step_that_changed_something_leaves_its_undo_with_its_due_time() {
    let c = Arc::new(Scripted::default());
    c.answers.lock().unwrap().extend([
        Ok(Output {
            output: serde_json::json!({ "changed": true }),
            undo: Some(serde_json::json!({ "container": "c1" })),
        }),
        Ok(Output {
            output: serde_json::json!({ "changed": false }),
            undo: None,
        }),
    ]);
    let mut pb = playbook(
        "  match: {}\n  steps:\n    - { id: a, action: log.info, with: { message: hi } }\n    - { id: b, action: log.info, with: { message: hi } }\n",
    );
    for s in &mut pb.steps {
        s.action.spec = &REVERSIBLE;
    }
    pb.steps[0].revert_after = Some(Duration::from_secs(7200));
    let state = Arc::new(crate::state::MemoryState::default());
    let clock = Arc::new(FixedClock::new(chrono::Utc::now()));
    let mut connectors: HashMap<String, Arc<dyn Connector>> = HashMap::new();
    connectors.insert("log".into(), c);
    let r = Runner::new(
        Sandbox::new(clock.clone()),
        connectors,
        state.clone(),
        clock.clone(),
        Arc::new(Metrics::new()),
        crate::engine::runner_settings(&Config::default(), false),
    );
    let (report, records) = run(&r, &pb, &event("shop")).await;
    assert_eq!(report.outcome, RunOutcome::Ok);
    let kept = state.reverts();
    assert_eq!(
        kept.len(),
        1,
        "only the step that changed something: {kept:?}"
    );
    let p = &kept[0];
    assert_eq!(
        (p.run_id.as_str(), p.step.as_str(), p.action.as_str()),
        ("r-1", "a", "info")
    );
    assert_eq!(p.undo, serde_json::json!({ "container": "c1" }));
    assert_eq!(p.due, Some(clock.now() + chrono::Duration::hours(2)));
    let step = records
        .iter()
        .find(|x| x.record == RecordKind::Step && x.step.as_deref() == Some("a"))
        .unwrap();
    assert_eq!(
        step.revert.as_ref().unwrap()["command"],
        "riposte revert r-1 --step a"
    );
}

#[tokio::test]
async fn a_connector_refusal_is_a_skipped_step_with_the_guard_reason() {
    let c = Arc::new(Scripted::default());
    c.answers
        .lock()
        .unwrap()
        .push_back(Err(ConnectorError::Refused(
            "container `x` is the engine's own".into(),
        )));
    let mut pb = playbook(
        "  match: {}\n  steps:\n    - { id: a, action: log.info, with: { message: hi } }\n    - { id: b, action: log.info, with: { message: hi } }\n",
    );
    pb.steps[0].action.spec = &DESTRUCTIVE;
    let (report, _) = run(&runner(c, &Config::default()), &pb, &event("shop")).await;
    assert_eq!(report.steps[0].outcome, StepOutcome::Skipped);
    assert_eq!(
        report.steps[0].reason.as_deref(),
        Some("guard: container `x` is the engine's own")
    );
    assert_eq!(
        report.steps[1].outcome,
        StepOutcome::Ok,
        "a refusal is not a failure"
    );
    assert_eq!(report.outcome, RunOutcome::Ok);
}

#[test]
fn revert_after_is_refused_on_an_action_without_an_inverse() {
    let problems = load("  match: {}\n  steps:\n    - id: a\n      action: log.info\n      with: { message: hi }\n      revert_after: 1h\n").unwrap_err();
    assert!(
        problems.iter().any(|p| p.line == 10
            && p.message == "`revert_after` needs a reversible action; `log.info` has no inverse"),
        "{problems:?}"
    );
}

const APPROVAL_STEPS: &str = "  match: {}\n  vars: { who: \"event.resource.container.id\" }\n  steps:\n    - { id: a, action: log.info, with: { message: first } }\n    - id: b\n      action: log.info\n      with: { message: \"act on ${{ vars.who }}\" }\n      approval: { timeout: 15m, approvers: [alice, bob] }\n    - { id: c, action: log.info, when: 'steps.b.outcome == \"skipped\" || steps.b.outcome == \"ok\"', with: { message: \"after ${{ steps.b.outcome }}\" } }\n  notify:\n    - action: log.info\n";

fn runner_with(c: Arc<Scripted>, state: Arc<crate::state::MemoryState>) -> Runner {
    let clock = Arc::new(FixedClock::new(chrono::Utc::now()));
    let mut connectors: HashMap<String, Arc<dyn Connector>> = HashMap::new();
    connectors.insert("log".into(), c);
    Runner::new(
        Sandbox::new(clock.clone()),
        connectors,
        state,
        clock,
        Arc::new(Metrics::new()),
        crate::engine::runner_settings(&Config::default(), false),
    )
}

async fn resume(
    r: &Runner,
    pb: &Playbook,
    saved: &crate::approval::PendingApproval,
    approved: bool,
) -> (RunReport, Vec<AuditRecord>) {
    let decision = crate::approval::Decision {
        approved,
        by: "bob".into(),
        via: "cli".into(),
        reason: Some("not now".into()),
        at: chrono::Utc::now(),
        timed_out: false,
    };
    let sink = AuditSink::memory();
    let mut batch = sink.batch("t");
    let view = EventView::new(&saved.event, true);
    let report = r
        .resume(pb, &view, saved, &decision, &mut batch)
        .await
        .unwrap();
    batch.commit().await.unwrap();
    (report, sink.recorded())
}

#[tokio::test]
async fn a_step_with_approval_stops_the_run_and_keeps_what_it_needs_to_go_on() {
    let c = Arc::new(Scripted::default());
    let state = Arc::new(crate::state::MemoryState::default());
    let pb = playbook(APPROVAL_STEPS);
    let (report, records) = run(&runner_with(c.clone(), state.clone()), &pb, &event("shop")).await;
    assert_eq!(report.outcome, RunOutcome::AwaitingApproval);
    // Step a and the request's notification ran; b and c did not.
    assert_eq!(*c.calls.lock().unwrap(), 2);
    let outcomes: Vec<(&str, &str)> = records
        .iter()
        .filter_map(|r| Some((r.step.as_deref()?, r.outcome.as_str())))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("a", "ok"),
            ("b", "awaiting_approval"),
            ("b.request-1", "ok")
        ]
    );
    let b = records
        .iter()
        .find(|r| r.step.as_deref() == Some("b"))
        .unwrap();
    assert_eq!(b.args.as_ref().unwrap()["message"], "act on c1");
    let command = "riposte approve r-1 b --as NAME";
    assert_eq!(b.approval.as_ref().unwrap()["command"], command);
    assert!(b.reason.as_deref().unwrap().contains("alice, bob"));
    let request = records
        .iter()
        .find(|r| r.step.as_deref() == Some("b.request-1"))
        .unwrap();
    let text = request.args.as_ref().unwrap()["message"].as_str().unwrap();
    assert!(
        text.contains("awaiting_approval") && text.contains(command),
        "{text}"
    );
    let run = records
        .iter()
        .find(|r| r.record == RecordKind::Run)
        .unwrap();
    assert_eq!(run.outcome, "awaiting_approval");

    let saved = state.approvals();
    assert_eq!(saved.len(), 1);
    let p = &saved[0];
    assert_eq!((p.step.as_str(), p.step_index), ("b", 1));
    assert_eq!(p.playbook_digest, pb.digest);
    assert_eq!(p.vars["who"], "c1");
    assert_eq!(p.steps.len(), 1);
    assert_eq!(p.approvers, ["alice", "bob"]);
    assert_eq!(p.deadline - p.requested_at, chrono::Duration::minutes(15));
}

#[tokio::test]
async fn an_approved_step_runs_with_the_rest_and_names_its_approver() {
    let c = Arc::new(Scripted::default());
    let state = Arc::new(crate::state::MemoryState::default());
    let pb = playbook(APPROVAL_STEPS);
    let r = runner_with(c.clone(), state.clone());
    run(&r, &pb, &event("shop")).await;
    let saved = state.approvals().remove(0);
    let (report, records) = resume(&r, &pb, &saved, true).await;
    assert_eq!(report.outcome, RunOutcome::Ok);
    assert_eq!(*c.calls.lock().unwrap(), 2 + 3);
    let outcomes: Vec<(&str, &str, &str)> = records
        .iter()
        .filter_map(|r| Some((r.record.as_str(), r.step.as_deref()?, r.outcome.as_str())))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("approval", "b", "approved"),
            ("step", "b", "ok"),
            ("step", "c", "ok"),
            ("notify", "notify-1", "ok")
        ]
    );
    let b = &records[1];
    assert_eq!(b.approval.as_ref().unwrap()["by"], "bob");
    let c_args = records[2].args.as_ref().unwrap();
    assert_eq!(c_args["message"], "after ok");
    // The final notice lists every step, the ones before the wait too.
    let notice = records[3].args.as_ref().unwrap()["message"]
        .as_str()
        .unwrap();
    assert!(
        notice.contains("log.info ok, log.info ok, log.info ok"),
        "{notice}"
    );
}

#[tokio::test]
async fn a_denied_step_is_skipped_and_the_rest_runs_as_after_any_skipped_step() {
    let c = Arc::new(Scripted::default());
    let state = Arc::new(crate::state::MemoryState::default());
    let pb = playbook(APPROVAL_STEPS);
    let r = runner_with(c.clone(), state.clone());
    run(&r, &pb, &event("shop")).await;
    let saved = state.approvals().remove(0);
    let (report, records) = resume(&r, &pb, &saved, false).await;
    assert_eq!(report.outcome, RunOutcome::Ok);
    let b = records
        .iter()
        .find(|r| r.record == RecordKind::Step && r.step.as_deref() == Some("b"))
        .unwrap();
    assert_eq!(b.outcome, "skipped");
    assert_eq!(b.reason.as_deref(), Some("denied by bob: not now"));
    let c_step = records
        .iter()
        .find(|r| r.step.as_deref() == Some("c"))
        .unwrap();
    assert_eq!(c_step.args.as_ref().unwrap()["message"], "after skipped");
    assert!(records.iter().any(|r| r.record == RecordKind::Notify));
}

#[tokio::test]
async fn plan_mode_plans_a_step_with_approval_and_says_it_needs_one() {
    let c = Arc::new(Scripted::default());
    let state = Arc::new(crate::state::MemoryState::default());
    let pb = playbook(&APPROVAL_STEPS.replace("  match: {}", "  mode: dry-run\n  match: {}"));
    let (report, _) = run(&runner_with(c.clone(), state.clone()), &pb, &event("shop")).await;
    assert_eq!(report.outcome, RunOutcome::Planned);
    assert!(state.approvals().is_empty());
    let b = &report.steps[1];
    assert_eq!(b.outcome, StepOutcome::Planned);
    let plan = b.output.as_ref().unwrap()["plan"].as_str().unwrap();
    assert!(
        plan.ends_with("(needs approval by alice, bob within 15m; on timeout: deny)"),
        "{plan}"
    );
}

#[test]
fn check_names_every_problem_of_an_approval_block() {
    let problems = load("  match: {}\n  steps:\n    - id: a\n      action: log.info\n      with: { message: hi }\n      approval:\n        timeout: 0s\n        approvers: [alice, alice, \"bob smith\"]\n        notify:\n          - action: log.nope\n").unwrap_err();
    let found: Vec<(usize, &str)> = problems
        .iter()
        .map(|p| (p.line, p.message.as_str()))
        .collect();
    assert_eq!(found.len(), 4, "{found:?}");
    assert_eq!(
        found[0],
        (11, "the approval timeout must be longer than 0s")
    );
    assert_eq!(found[1].0, 12);
    assert!(found[1].1.contains("`alice` is listed twice"), "{found:?}");
    assert!(found[2].1.contains("`bob smith` must be"), "{found:?}");
    assert_eq!(found[3].0, 14);
    assert!(found[3].1.contains("has no action `nope`"), "{found:?}");
}

#[tokio::test]
async fn an_event_too_large_to_keep_fails_the_step_instead_of_waiting() {
    let c = Arc::new(Scripted::default());
    let state = Arc::new(crate::state::MemoryState::default());
    let pb = playbook(APPROVAL_STEPS);
    let mut e = event("shop");
    e.data = serde_json::json!("x".repeat(600 * 1024));
    let (report, _) = run(&runner_with(c.clone(), state.clone()), &pb, &e).await;
    assert_eq!(report.outcome, RunOutcome::Failed);
    assert!(state.approvals().is_empty());
    let b = &report.steps[1];
    assert_eq!(b.outcome, StepOutcome::Failed);
    assert!(b
        .reason
        .as_deref()
        .unwrap()
        .starts_with("cannot wait for approval: the event is"));
    assert_eq!(report.steps[2].outcome, StepOutcome::Skipped);
}

#[tokio::test]
async fn a_step_begun_by_a_replica_that_stopped_is_performed_again_only_when_idempotent() {
    use crate::state::{StateStore, StepEntry, StepState};
    let begun = StepEntry {
        state: StepState::Started,
        replica: "replica-x".to_owned(),
        at: chrono::Utc::now(),
        outcome: None,
        output: None,
        reason: None,
        revert: None,
        attempts: None,
    };
    // Not idempotent: recorded skipped, not performed.
    let c = Arc::new(Scripted::default());
    let state = Arc::new(crate::state::MemoryState::default());
    state.step_started("r-9", "a", &begun).await.unwrap();
    let mut pb = playbook(
        "  match: {}\n  steps:\n    - { id: a, action: log.info, with: { message: hi } }\n",
    );
    pb.steps[0].action.spec = &DESTRUCTIVE;
    let r = runner_with(c.clone(), state);
    let (report, _) = run_as(&r, &pb, &event("shop"), "r-9").await;
    assert_eq!(report.steps[0].outcome, StepOutcome::Skipped);
    assert!(report.steps[0]
        .reason
        .as_deref()
        .unwrap()
        .starts_with("may have been performed by replica replica-x before it stopped"));
    assert_eq!(*c.calls.lock().unwrap(), 0);

    // Idempotent (nats.publish, whose message id the stream deduplicates): performed again,
    // then recorded finished.
    let c = Arc::new(Scripted::default());
    let state = Arc::new(crate::state::MemoryState::default());
    state.step_started("r-9", "a", &begun).await.unwrap();
    let mut pb = playbook(
        "  match: {}\n  steps:\n    - { id: a, action: nats.publish, with: { subject: x.y, payload: hi } }\n",
    );
    pb.steps[0].action.instance = "log".to_owned();
    let r = runner_with(c.clone(), state.clone());
    let (report, _) = run_as(&r, &pb, &event("shop"), "r-9").await;
    assert_eq!(report.steps[0].outcome, StepOutcome::Ok, "{report:?}");
    assert_eq!(*c.calls.lock().unwrap(), 1);
    let done = state.step_entry("r-9", "a").await.unwrap().unwrap();
    assert_eq!(done.state, StepState::Finished);
    assert_eq!(done.outcome.as_deref(), Some("ok"));
}
