//! Playbooks: loading riposte/v1 files and compiling them into runtime [`Playbook`]s.
//!
//! Owns the file format ([`spec`]), where its nodes are ([`positions`]), `${{ }}` templates
//! ([`template`]) and the native part of conditions ([`condition`]). Loading checks everything
//! once (schema, unknown keys, connectors and actions, parameters, Rhai syntax, durations) and
//! collects every problem as `file:line:column: message`; a loaded playbook holds compiled ASTs
//! and resolved actions, so nothing is parsed again on the event path.

pub mod condition;
pub mod positions;
pub mod spec;
pub mod structure;
pub mod template;

mod compile;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rhai::AST;

pub use compile::{load_dir, load_file, Catalog};
pub use spec::{Mode, OnError, OnTimeout, TestSpec};

use crate::event::{Event, Kind, Source};
use condition::NativeClauses;
use template::{Template, ValueTemplate};

/// A problem found in a playbook file, with its position.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    /// The file.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

/// Whether `name` may name an approver: 1 to 64 characters, none of them blank or control
/// characters (it is compared as is with `--as` and the HTTP `as`).
pub fn valid_approver(name: &str) -> bool {
    (1..=64).contains(&name.chars().count())
        && name.chars().all(|c| !c.is_whitespace() && !c.is_control())
}

/// A compiled match condition.
#[derive(Debug, Clone)]
pub struct Condition {
    /// The text as written.
    pub text: String,
    /// Clauses checked natively first.
    pub native: NativeClauses,
    /// The whole condition in Rhai; `None` when the native clauses are the whole condition.
    pub ast: Option<AST>,
}

/// Which action a step runs.
#[derive(Debug, Clone)]
pub struct ActionRef {
    /// The connector instance (`docker`, `pagerduty-payments`).
    pub instance: String,
    /// The action (`quarantine`).
    pub action: String,
    /// Its description.
    pub spec: &'static riposte_connectors::ActionSpec,
}

impl fmt::Display for ActionRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.instance, self.action)
    }
}

/// A compiled step or notification.
#[derive(Debug, Clone)]
pub struct Step {
    /// Step id (`notify-1`, `notify-2`... for notifications).
    pub id: String,
    /// The action.
    pub action: ActionRef,
    /// Arguments, rendered per run. `None` for a notification that takes the default message.
    pub with: Option<ValueTemplate>,
    /// Skip unless true.
    pub when: Option<AST>,
    /// What a failure does to the run.
    pub on_error: OnError,
    /// Attempts in all (1 = no retry).
    pub attempts: u32,
    /// Wait before the second attempt, doubled after.
    pub backoff: Duration,
    /// Time limit of each attempt (`None`: the engine's default).
    pub timeout: Option<Duration>,
    /// When to undo a reversible action after it succeeded.
    pub revert_after: Option<Duration>,
    /// For a notification: whether it joins its group rather than being sent at once.
    pub grouped: bool,
    /// For a notification: when its group's page is resolved.
    pub resolve_when: Option<AST>,
    /// The human decision the step waits for, if any.
    pub approval: Option<Approval>,
}

/// The human decision a step waits for before it runs.
#[derive(Debug, Clone)]
pub struct Approval {
    /// How long the decision may take.
    pub timeout: Duration,
    /// What the timeout decides.
    pub on_timeout: OnTimeout,
    /// Who may decide; empty: anyone.
    pub approvers: Vec<String>,
    /// The notifications that carry the request; `None`: the playbook's own `notify`.
    pub notify: Option<Vec<Step>>,
}

/// A loaded playbook.
#[derive(Debug, Clone)]
pub struct Playbook {
    /// Unique name.
    pub name: String,
    /// What it does.
    pub description: Option<String>,
    /// Owning team.
    pub owner: Option<String>,
    /// Free labels.
    pub labels: BTreeMap<String, String>,
    /// Runbook link.
    pub runbook: Option<String>,
    /// The file it came from.
    pub file: PathBuf,
    /// SHA-256 of the file's text (hex): a run waiting for approval resumes only under the
    /// playbook it started with.
    pub digest: String,
    /// enforce or dry-run.
    pub mode: Mode,
    /// Sources it listens to (empty: all).
    pub sources: Vec<Source>,
    /// Kinds it listens to (empty: all but internal).
    pub kinds: Vec<Kind>,
    /// The condition, if any.
    pub condition: Option<Condition>,
    /// Vars, in order.
    pub vars: Vec<(String, ValueTemplate)>,
    /// Dedup key and window.
    pub dedup: Option<(Template, Duration)>,
    /// Run limit and window.
    pub limits: Option<(u32, Duration)>,
    /// Steps.
    pub steps: Vec<Step>,
    /// Notifications.
    pub notify: Vec<Step>,
    /// Test cases.
    pub tests: Vec<TestSpec>,
    /// Whether any of its expressions may read `event.data` (the word appears in the file), so
    /// the payload must be converted for Rhai.
    pub uses_data: bool,
    /// Whether any of its expressions may read `event.enrichment` (the word appears in the
    /// file), so every connector is asked about the event, not only those its steps use.
    pub uses_enrichment: bool,
    /// Whether its `when` reads `event.enrichment`: events are then enriched before they are
    /// matched (by every connector instance that knows what they name), not after.
    pub matches_on_enrichment: bool,
}

impl Playbook {
    /// Whether the playbook listens to this event's source and kind (before its condition).
    pub fn listens_to(&self, e: &Event) -> bool {
        (self.sources.is_empty() || self.sources.contains(&e.source))
            && if self.kinds.is_empty() {
                e.kind != Kind::Internal
            } else {
                self.kinds.contains(&e.kind)
            }
    }

    /// The directory test fixtures are relative to.
    pub fn dir(&self) -> &Path {
        self.file.parent().unwrap_or(Path::new("."))
    }
}
