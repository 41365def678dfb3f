//! The playbook file as written (riposte/v1): plain serde data, strict about unknown keys.
//!
//! These types are what the JSON Schema in `schemas/playbook.schema.json` is generated from;
//! [`super::compile`] turns them into runtime [`super::Playbook`]s.

use std::collections::BTreeMap;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::duration::HumanDuration;
use crate::event::{Kind, Source};

/// A playbook file.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "riposte playbook (riposte/v1)")]
pub struct PlaybookFile {
    /// Always `riposte/v1`.
    #[serde(rename = "apiVersion")]
    #[schemars(extend("const" = "riposte/v1"))]
    pub api_version: String,
    /// Always `Playbook`.
    #[schemars(extend("const" = "Playbook"))]
    pub kind: String,
    /// Name and ownership.
    pub metadata: Metadata,
    /// What to match and what to do.
    pub spec: Spec,
}

/// Name and ownership of a playbook.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// Unique name, `[a-z0-9-]`.
    #[schemars(regex(pattern = r"^[a-z0-9-]{1,63}$"))]
    pub name: String,
    /// One sentence: what it does.
    #[serde(default)]
    pub description: Option<String>,
    /// The team that owns it.
    #[serde(default)]
    pub owner: Option<String>,
    /// Free labels (e.g. `mitre: T1059`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// A runbook URL, linked from notifications.
    #[serde(default)]
    pub runbook: Option<String>,
}

/// `enforce` acts; `dry-run` plans, audits and notifies what it would do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Run the actions.
    #[default]
    Enforce,
    /// Plan only.
    DryRun,
}

/// The body of a playbook.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// enforce (default) or dry-run.
    #[serde(default)]
    pub mode: Mode,
    /// Which events the playbook runs for.
    #[serde(rename = "match")]
    pub matching: MatchSpec,
    /// Named values computed once per run, in order: Rhai expressions (strings) or literals.
    #[serde(default)]
    pub vars: OrderedMap,
    /// At most one run per key per window.
    #[serde(default)]
    pub dedup: Option<DedupSpec>,
    /// At most this many runs of this playbook per window.
    #[serde(default)]
    pub limits: Option<LimitsSpec>,
    /// The actions, in order.
    #[serde(default)]
    pub steps: Vec<StepSpec>,
    /// Notifications, sent after the steps (also when a step failed).
    #[serde(default)]
    pub notify: Vec<NotifySpec>,
    /// Cases run by `riposte test`.
    #[serde(default)]
    pub tests: Vec<TestSpec>,
}

/// Which events a playbook runs for.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MatchSpec {
    /// Normalized sources; empty means every source.
    #[serde(default)]
    pub sources: Vec<Source>,
    /// Event kinds; empty means every kind but `internal`.
    #[serde(default)]
    pub kinds: Vec<Kind>,
    /// A Rhai expression over `event` that must return a bool.
    #[serde(default)]
    pub when: Option<String>,
}

/// Dedup settings.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DedupSpec {
    /// A template naming what counts as "the same" (e.g. the container id).
    pub key: String,
    /// How long a run suppresses others with the same key.
    pub window: HumanDuration,
}

/// Per-playbook rate limit.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsSpec {
    /// Runs allowed per window.
    pub max_runs: u32,
    /// The window.
    pub per: HumanDuration,
}

/// What to do when a step fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum OnError {
    /// Stop the run (notifications still go out).
    #[default]
    Abort,
    /// Go on with the next step.
    Continue,
}

/// Retry settings of a step.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetrySpec {
    /// Attempts in all, including the first (1-10).
    pub attempts: u32,
    /// Wait before the second attempt; doubled before each further one.
    #[serde(default)]
    pub backoff: Option<HumanDuration>,
}

/// One step.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    /// Unique within the playbook, `[a-z][a-z0-9_]*` (usable as `steps.<id>` in Rhai).
    #[schemars(regex(pattern = r"^[a-z][a-z0-9_]*$"))]
    pub id: String,
    /// `<connector instance>.<action>`, e.g. `log.info`.
    #[schemars(regex(pattern = r"^[a-z][a-z0-9-]*\.[a-z_]+$"))]
    pub action: String,
    /// The action's arguments; strings may hold `${{ }}`.
    #[serde(default)]
    pub with: Map<String, Value>,
    /// A Rhai condition; the step is skipped when false.
    #[serde(default)]
    pub when: Option<String>,
    /// abort (default) or continue.
    #[serde(default)]
    pub on_error: OnError,
    /// Retries of transient failures.
    #[serde(default)]
    pub retry: Option<RetrySpec>,
    /// Time limit of each attempt (default: the engine's `step_timeout`).
    #[serde(default)]
    pub timeout: Option<HumanDuration>,
    /// Undo the action this long after it succeeded (reversible actions only), e.g. `2h`.
    /// `riposte revert RUN_ID` undoes it sooner.
    #[serde(default)]
    pub revert_after: Option<HumanDuration>,
    /// Wait for a human decision before the step runs (enforce mode; dry-run and
    /// `riposte test` plan the step and say it needs approval).
    #[serde(default)]
    pub approval: Option<ApprovalSpec>,
}

/// A human decision a step waits for: `riposte approve RUN_ID STEP --as NAME [--deny]` or
/// `POST /v1/approvals/{run}/{step}`. The wait is kept in NATS, so it survives restarts and
/// any replica carries the run on.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApprovalSpec {
    /// How long to wait for a decision, e.g. `15m`.
    pub timeout: HumanDuration,
    /// What happens when nobody decides in time: `deny` (default: the step is skipped) or
    /// `approve` (it runs, audited as approved by timeout).
    #[serde(default)]
    pub on_timeout: OnTimeout,
    /// Who may decide (the names given to `--as`); empty or absent: anyone who can reach the
    /// engine's NATS or the approvals endpoint.
    #[serde(default)]
    pub approvers: Vec<String>,
    /// The notifications that carry the request (sent at once, never grouped). Absent: the
    /// playbook's `notify` entries, evaluated with `run.outcome == "awaiting_approval"`.
    #[serde(default)]
    pub notify: Option<Vec<NotifySpec>>,
}

/// What an approval's timeout decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum OnTimeout {
    /// The step is skipped (`approval timed out`).
    #[default]
    Deny,
    /// The step runs.
    Approve,
}

impl OnTimeout {
    /// The name used in playbooks and audit records.
    pub fn as_str(self) -> &'static str {
        match self {
            OnTimeout::Deny => "deny",
            OnTimeout::Approve => "approve",
        }
    }
}

/// One notification.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NotifySpec {
    /// `<connector instance>.<action>`.
    #[schemars(regex(pattern = r"^[a-z][a-z0-9-]*\.[a-z_]+$"))]
    pub action: String,
    /// A Rhai condition; skipped when false.
    #[serde(default)]
    pub when: Option<String>,
    /// Arguments; without them, the action's message parameter gets the default enriched
    /// message.
    #[serde(default)]
    pub with: Option<Map<String, Value>>,
    /// Retries of transient failures.
    #[serde(default)]
    pub retry: Option<RetrySpec>,
    /// Time limit of each attempt.
    #[serde(default)]
    pub timeout: Option<HumanDuration>,
    /// Whether the notification joins its group (one page and its updates, see
    /// `notifications` in riposte.yaml) rather than being sent at once. Default true; only
    /// actions that take the enriched notice are grouped.
    #[serde(default)]
    pub group: Option<bool>,
    /// A Rhai condition, evaluated when the run ends: true resolves the group's page (the
    /// remediation completed), e.g. `run.outcome == "ok"`.
    #[serde(default)]
    pub resolve_when: Option<String>,
}

/// One test case of a playbook.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TestSpec {
    /// What it shows.
    pub name: String,
    /// A raw producer payload, relative to the playbook file.
    #[serde(default)]
    pub event_file: Option<PathBuf>,
    /// An inline raw payload.
    #[serde(default)]
    pub event: Option<Value>,
    /// The payload's format.
    pub format: Source,
    /// What must happen.
    pub expect: ExpectSpec,
}

/// What a test case expects.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExpectSpec {
    /// Whether the playbook matches (at least one event of the payload).
    #[serde(rename = "match")]
    pub matched: bool,
    /// The actions planned, steps then notifications, in order (skipped ones left out).
    #[serde(default)]
    pub actions: Option<Vec<String>>,
    /// The run's outcome (`ok`, `failed`, `planned`).
    #[serde(default)]
    pub outcome: Option<String>,
    /// Arguments some steps must get: step id to a map of expected values.
    #[serde(default)]
    pub args: BTreeMap<String, Map<String, Value>>,
}

/// A YAML mapping that keeps the order it was written in (`vars` are evaluated in order).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OrderedMap(pub Vec<(String, Value)>);

impl<'de> Deserialize<'de> for OrderedMap {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = OrderedMap;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map of names to expressions")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<OrderedMap, A::Error> {
                let mut entries: Vec<(String, Value)> = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, Value>()? {
                    if entries.iter().any(|(name, _)| *name == k) {
                        return Err(serde::de::Error::custom(format!("`{k}` is defined twice")));
                    }
                    entries.push((k, v));
                }
                Ok(OrderedMap(entries))
            }
        }
        d.deserialize_map(Visit)
    }
}

impl Serialize for OrderedMap {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl JsonSchema for OrderedMap {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Vars".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "object",
            "description": "Names to Rhai expressions (strings) or literal values, evaluated in order.",
            "additionalProperties": true
        })
    }
}
