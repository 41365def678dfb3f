//! Offline simulation: `riposte explain` and `riposte test` run the real normalizers, matcher and
//! runner with every connector in plan mode, in-memory state and a memory audit sink, so
//! playbooks can be tried and tested without NATS or any target system.
//!
//! Owns the comparison of a test case's expectations with what was planned. It never performs
//! an action: the runner is built with `plan_only`.

use std::sync::Arc;

use chrono::Utc;
use riposte_connectors::Deps;
use serde_json::Value;

use crate::audit::AuditSink;
use crate::clock::SystemClock;
use crate::config::Config;
use crate::engine::{build_connectors, runner_settings};
use crate::event::{Event, Source};
use crate::formats::{self, FormatError};
use crate::matcher::{verdict, EventView, Matcher, Verdict};
use crate::metrics::Metrics;
use crate::playbook::{Playbook, TestSpec};
use crate::runner::{RunReport, Runner, StepOutcome};
use crate::script::Sandbox;
use crate::state::MemoryState;

/// What one playbook decided and planned for one event.
#[derive(Debug)]
pub struct Decision {
    /// The playbook.
    pub playbook: Arc<Playbook>,
    /// Whether and why it matched.
    pub verdict: Verdict,
    /// The planned run, when it matched.
    pub run: Option<RunReport>,
}

/// One event of a payload and every playbook's decision.
#[derive(Debug)]
pub struct Simulated {
    /// The normalized event.
    pub event: Event,
    /// Decisions, in playbook order.
    pub decisions: Vec<Decision>,
}

/// A simulator over a set of playbooks.
#[derive(Debug)]
pub struct Simulator {
    matcher: Matcher,
    runner: Runner,
}

impl Simulator {
    /// Builds a simulator; connectors are built without clients (plan mode needs none).
    pub fn new(
        playbooks: Vec<Playbook>,
        config: &Config,
        sandbox: Sandbox,
    ) -> Result<Self, String> {
        let connectors = build_connectors(config, &Deps::default()).map_err(|e| e.to_string())?;
        let runner = Runner::new(
            sandbox,
            connectors,
            Arc::new(MemoryState::default()),
            Arc::new(SystemClock),
            Arc::new(Metrics::new()),
            runner_settings(config, true),
        );
        Ok(Simulator {
            matcher: Matcher::new(playbooks),
            runner,
        })
    }

    /// Normalizes a payload and plans every playbook's run for each of its events.
    pub async fn simulate(
        &self,
        format: Source,
        payload: &[u8],
    ) -> Result<Vec<Simulated>, FormatError> {
        let events = formats::normalize(format, payload, Utc::now())?;
        let mut out = Vec::new();
        for (index, event) in events.into_iter().enumerate() {
            let view = EventView::new(&event, true);
            let mut decisions = Vec::new();
            let mut scope = None;
            for pb in self.matcher.playbooks() {
                let v = verdict(pb, &view, self.runner.sandbox(), &mut scope);
                let run = if v.is_match() {
                    let sink = AuditSink::memory();
                    let mut batch = sink.batch("plan");
                    let run_id = format!("plan-{index}-{}", pb.name);
                    // Memory state and a memory sink cannot fail.
                    self.runner.run(pb, &view, &run_id, &mut batch).await.ok()
                } else {
                    None
                };
                decisions.push(Decision {
                    playbook: pb.clone(),
                    verdict: v,
                    run,
                });
            }
            drop(view);
            out.push(Simulated { event, decisions });
        }
        Ok(out)
    }
}

/// The result of one test case.
#[derive(Debug, Clone)]
pub struct CaseResult {
    /// The playbook.
    pub playbook: String,
    /// The case's name.
    pub name: String,
    /// What did not hold (empty: passed).
    pub failures: Vec<String>,
}

impl CaseResult {
    /// Whether the case passed.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Runs every test case of every playbook, each against that playbook alone with fresh state.
pub async fn run_tests(
    playbooks: &[Playbook],
    config: &Config,
    sandbox: &Sandbox,
) -> Vec<CaseResult> {
    let mut results = Vec::new();
    for pb in playbooks {
        for case in &pb.tests {
            let failures = match Simulator::new(vec![pb.clone()], config, sandbox.clone()) {
                Ok(sim) => run_case(&sim, pb, case).await,
                Err(e) => vec![e],
            };
            results.push(CaseResult {
                playbook: pb.name.clone(),
                name: case.name.clone(),
                failures,
            });
        }
    }
    results
}

async fn run_case(sim: &Simulator, pb: &Playbook, case: &TestSpec) -> Vec<String> {
    let payload = match (&case.event_file, &case.event) {
        (Some(f), _) => match std::fs::read(pb.dir().join(f)) {
            Ok(b) => b,
            Err(e) => return vec![format!("cannot read `{}`: {e}", f.display())],
        },
        (None, Some(v)) => v.to_string().into_bytes(),
        (None, None) => return vec!["no event given".to_owned()],
    };
    let simulated = match sim.simulate(case.format, &payload).await {
        Ok(s) => s,
        Err(e) => return vec![format!("the payload was rejected: {e}")],
    };
    let runs: Vec<&RunReport> = simulated
        .iter()
        .flat_map(|s| s.decisions.iter().filter_map(|d| d.run.as_ref()))
        .collect();
    let matched = !runs.is_empty();
    let mut failures = Vec::new();
    if matched != case.expect.matched {
        let why: Vec<String> = simulated
            .iter()
            .flat_map(|s| s.decisions.iter().map(|d| verdict_text(&d.verdict)))
            .collect();
        failures.push(format!(
            "expected match: {}, got {matched} ({})",
            case.expect.matched,
            why.join("; ")
        ));
        return failures;
    }
    let planned: Vec<String> = runs
        .iter()
        .flat_map(|r| r.steps.iter())
        .filter(|s| s.outcome != StepOutcome::Skipped)
        .map(|s| s.action.clone())
        .collect();
    if let Some(expected) = &case.expect.actions {
        if *expected != planned {
            failures.push(format!(
                "expected actions {expected:?}, planned {planned:?}"
            ));
        }
    }
    if let Some(outcome) = &case.expect.outcome {
        for r in &runs {
            if r.outcome.as_str() != outcome {
                failures.push(format!(
                    "expected outcome `{outcome}`, got `{}`{}",
                    r.outcome.as_str(),
                    r.reason
                        .as_deref()
                        .map(|x| format!(" ({x})"))
                        .unwrap_or_default()
                ));
            }
        }
    }
    for (step, expected) in &case.expect.args {
        let got = runs
            .iter()
            .flat_map(|r| r.steps.iter())
            .find(|s| &s.id == step)
            .and_then(|s| s.args.clone());
        let Some(Value::Object(got)) = got else {
            failures.push(format!("step `{step}` was not planned with arguments"));
            continue;
        };
        for (k, v) in expected {
            if got.get(k) != Some(v) {
                failures.push(format!(
                    "step `{step}` argument `{k}`: expected {v}, got {}",
                    got.get(k).map_or("nothing".to_owned(), ToString::to_string)
                ));
            }
        }
    }
    for r in &runs {
        for s in r.steps.iter().filter(|s| s.outcome == StepOutcome::Failed) {
            failures.push(format!(
                "step `{}` ({}) failed: {}",
                s.id,
                s.action,
                s.reason.as_deref().unwrap_or("no reason")
            ));
        }
    }
    failures
}

/// A verdict as one line.
pub fn verdict_text(v: &Verdict) -> String {
    match v {
        Verdict::Match => "match".to_owned(),
        Verdict::NotListening(r) | Verdict::False(r) => format!("no match: {r}"),
        Verdict::Error(r) => format!("no match (error): {r}"),
    }
}
