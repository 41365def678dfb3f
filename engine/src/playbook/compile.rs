//! Loading playbook files: parse, check every rule, compile, and report every problem found.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use riposte_connectors::{spec::find_action, spec::json_type, ConnectorKind, ParamType};
use serde_json::Value;
use sha2::Digest as _;

use super::condition::NativeClauses;
use super::positions::Positions;
use super::spec::{ApprovalSpec, NotifySpec, PlaybookFile, RetrySpec, StepSpec};
use super::template::{Template, ValueTemplate};
use super::{valid_approver, ActionRef, Approval, Condition, Playbook, Problem, Step};
use crate::config::Config;
use crate::script::{Context, Sandbox, ScriptError};

/// The connector instances playbooks may name: instance name to type.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    instances: BTreeMap<String, ConnectorKind>,
}

impl Catalog {
    /// The instances of a config, plus the default instance of every type that has one.
    pub fn from_config(config: &Config) -> Catalog {
        let mut instances: BTreeMap<String, ConnectorKind> = ConnectorKind::ALL
            .into_iter()
            .filter(|k| k.has_default_instance())
            .map(|k| (k.as_str().to_owned(), k))
            .collect();
        for (name, inst) in &config.connectors {
            if let Some(kind) = ConnectorKind::parse(&inst.kind) {
                instances.insert(name.clone(), kind);
            }
        }
        Catalog { instances }
    }

    /// The type of an instance.
    pub fn kind(&self, instance: &str) -> Option<ConnectorKind> {
        self.instances.get(instance).copied()
    }

    /// Every instance, by name.
    pub fn instances(&self) -> impl Iterator<Item = (&str, ConnectorKind)> {
        self.instances.iter().map(|(n, k)| (n.as_str(), *k))
    }
}

/// Loads every playbook under `dir` (`*.yaml`, `*.yml`, recursively, skipping `fixtures/`
/// folders and hidden ones). Returns the playbooks that loaded and every problem found.
pub fn load_dir(dir: &Path, catalog: &Catalog, sandbox: &Sandbox) -> (Vec<Playbook>, Vec<Problem>) {
    let mut files = Vec::new();
    let mut problems = Vec::new();
    if let Err(e) = collect_files(dir, &mut files) {
        problems.push(Problem {
            file: dir.to_owned(),
            line: 1,
            column: 1,
            message: format!("cannot read the playbook directory: {e}"),
        });
        return (Vec::new(), problems);
    }
    files.sort();
    let mut playbooks: Vec<Playbook> = Vec::new();
    let mut names: BTreeMap<String, PathBuf> = BTreeMap::new();
    for file in files {
        match load_file(&file, catalog, sandbox) {
            Ok(pb) => {
                if let Some(first) = names.get(&pb.name) {
                    problems.push(Problem {
                        file: file.clone(),
                        line: 1,
                        column: 1,
                        message: format!(
                            "playbook name `{}` is already used by {}",
                            pb.name,
                            first.display()
                        ),
                    });
                } else {
                    names.insert(pb.name.clone(), file.clone());
                    playbooks.push(pb);
                }
            }
            Err(mut p) => problems.append(&mut p),
        }
    }
    if playbooks.is_empty() && problems.is_empty() {
        problems.push(Problem {
            file: dir.to_owned(),
            line: 1,
            column: 1,
            message: "no playbook found (*.yaml or *.yml files)".to_owned(),
        });
    }
    (playbooks, problems)
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    if dir.is_file() {
        out.push(dir.to_owned());
        return Ok(());
    }
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with('.') {
            continue;
        }
        if path.is_dir() {
            if name != "fixtures" {
                collect_files(&path, out)?;
            }
        } else if name.ends_with(".yaml") || name.ends_with(".yml") {
            out.push(path);
        }
    }
    Ok(())
}

/// Loads one playbook file, or every problem in it.
pub fn load_file(
    file: &Path,
    catalog: &Catalog,
    sandbox: &Sandbox,
) -> Result<Playbook, Vec<Problem>> {
    let problem = |line: usize, column: usize, message: String| Problem {
        file: file.to_owned(),
        line,
        column,
        message,
    };
    let text = std::fs::read_to_string(file)
        .map_err(|e| vec![problem(1, 1, format!("cannot read: {e}"))])?;
    let syntax = |e: serde_yaml::Error| {
        let (line, column) = e.location().map_or((1, 1), |l| (l.line(), l.column()));
        vec![problem(line, column, clean_serde_message(&e.to_string()))]
    };
    let positions = Positions::index(&text);
    // Every unknown key first, all at once (serde would stop at the first).
    let unknown =
        super::structure::unknown_keys_in(&text, &positions, super::structure::playbook_schema())
            .map_err(syntax)?;
    if !unknown.is_empty() {
        return Err(unknown
            .into_iter()
            .map(|k| {
                let key = k.path.rsplit(['.', ']']).next().unwrap_or(&k.path);
                let allowed: Vec<String> = k.allowed.iter().map(|a| format!("`{a}`")).collect();
                problem(
                    k.pos.line,
                    k.pos.column,
                    format!(
                        "unknown field `{key}`, expected one of {}",
                        allowed.join(", ")
                    ),
                )
            })
            .collect());
    }
    let doc: PlaybookFile = serde_yaml::from_str(&text).map_err(syntax)?;
    let when_reads_enrichment = doc
        .spec
        .matching
        .when
        .as_deref()
        .is_some_and(|w| w.contains("enrichment"));
    let mut c = Compiler {
        file,
        positions,
        catalog,
        sandbox,
        problems: Vec::new(),
    };
    let mut playbook = c.playbook(doc);
    playbook.digest = hex::encode(sha2::Sha256::digest(text.as_bytes()));
    playbook.uses_data = text.contains("data");
    playbook.uses_enrichment = text.contains("enrichment");
    playbook.matches_on_enrichment = when_reads_enrichment;
    if c.problems.is_empty() {
        Ok(playbook)
    } else {
        c.problems.sort();
        Err(c.problems)
    }
}

/// serde_yaml appends " at line L column C"; the position is reported in front instead.
fn clean_serde_message(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message.get(..i).unwrap_or(message).to_owned(),
        None => message.to_owned(),
    }
}

struct Compiler<'a> {
    file: &'a Path,
    positions: Positions,
    catalog: &'a Catalog,
    sandbox: &'a Sandbox,
    problems: Vec<Problem>,
}

impl Compiler<'_> {
    fn report(&mut self, path: &str, message: impl Into<String>) {
        let pos = self.positions.of(path);
        self.problems.push(Problem {
            file: self.file.to_owned(),
            line: pos.line,
            column: pos.column,
            message: message.into(),
        });
    }

    fn report_script(&mut self, path: &str, what: &str, err: ScriptError) {
        let (pos, message) = match err {
            ScriptError::Syntax {
                message,
                line: Some(line),
                column,
            } => (
                self.positions.inside(path, line, column.unwrap_or(1)),
                message,
            ),
            other => (self.positions.of(path), other.to_string()),
        };
        self.problems.push(Problem {
            file: self.file.to_owned(),
            line: pos.line,
            column: pos.column,
            message: format!("{what}: {message}"),
        });
    }

    fn playbook(&mut self, doc: PlaybookFile) -> Playbook {
        if doc.api_version != "riposte/v1" {
            self.report(
                "apiVersion",
                format!("apiVersion must be `riposte/v1`, not `{}`", doc.api_version),
            );
        }
        if doc.kind != "Playbook" {
            self.report(
                "kind",
                format!("kind must be `Playbook`, not `{}`", doc.kind),
            );
        }
        let name = doc.metadata.name.clone();
        if !valid_name(&name) {
            self.report(
                "metadata.name",
                format!("name `{name}` must be lower-case letters, digits and `-` (at most 63)"),
            );
        }
        let spec = doc.spec;
        let condition = spec
            .matching
            .when
            .as_deref()
            .and_then(|text| self.condition(text));
        let vars = self.vars(&spec.vars);
        let dedup = spec.dedup.as_ref().and_then(|d| {
            let t = self.template(&d.key, "spec.dedup.key", Context::Vars)?;
            if d.window.get().is_zero() {
                self.report(
                    "spec.dedup.window",
                    "the dedup window must be longer than 0s",
                );
            }
            Some((t, d.window.get()))
        });
        let limits = spec.limits.as_ref().map(|l| {
            if l.max_runs == 0 {
                self.report("spec.limits.max_runs", "max_runs must be at least 1");
            }
            if l.per.get().is_zero() {
                self.report("spec.limits.per", "the limit window must be longer than 0s");
            }
            (l.max_runs, l.per.get())
        });
        let mut ids = HashSet::new();
        let mut steps = Vec::new();
        for (i, s) in spec.steps.iter().enumerate() {
            let path = format!("spec.steps[{i}]");
            if !valid_step_id(&s.id) {
                self.report(
                    &format!("{path}.id"),
                    format!("step id `{}` must match [a-z][a-z0-9_]* (it is used as `steps.{}` in expressions)", s.id, s.id),
                );
            } else if !ids.insert(s.id.clone()) {
                self.report(
                    &format!("{path}.id"),
                    format!("step id `{}` is used twice", s.id),
                );
            }
            if let Some(step) = self.step(s, &path, false) {
                steps.push(step);
            }
        }
        if spec.steps.is_empty() && spec.notify.is_empty() {
            self.report("spec", "a playbook needs at least one step or notification");
        }
        let notify = self.notifications(&spec.notify, "spec.notify", "notify");
        for (i, t) in spec.tests.iter().enumerate() {
            let path = format!("spec.tests[{i}]");
            match (&t.event_file, &t.event) {
                (Some(_), Some(_)) | (None, None) => self.report(
                    &path,
                    format!(
                        "test `{}` needs exactly one of `event_file` and `event`",
                        t.name
                    ),
                ),
                (Some(f), None) => {
                    let full = self.file.parent().unwrap_or(Path::new(".")).join(f);
                    if !full.is_file() {
                        self.report(
                            &format!("{path}.event_file"),
                            format!("test `{}`: no such file `{}`", t.name, full.display()),
                        );
                    }
                }
                (None, Some(_)) => {}
            }
        }
        Playbook {
            name,
            description: doc.metadata.description,
            owner: doc.metadata.owner,
            labels: doc.metadata.labels,
            runbook: doc.metadata.runbook,
            file: self.file.to_owned(),
            digest: String::new(),
            mode: spec.mode,
            sources: spec.matching.sources,
            kinds: spec.matching.kinds,
            condition,
            vars,
            dedup,
            limits,
            steps,
            notify,
            tests: spec.tests,
            uses_data: true,
            uses_enrichment: true,
            matches_on_enrichment: false,
        }
    }

    /// Compiles notification entries (`spec.notify`, or a step's `approval.notify`) at `base`,
    /// their ids `<id_prefix>-1`, `<id_prefix>-2`...
    fn notifications(&mut self, specs: &[NotifySpec], base: &str, id_prefix: &str) -> Vec<Step> {
        let mut notify = Vec::new();
        for (i, n) in specs.iter().enumerate() {
            let path = format!("{base}[{i}]");
            let as_step = StepSpec {
                id: format!("{id_prefix}-{}", i + 1),
                action: n.action.clone(),
                with: n.with.clone().unwrap_or_default(),
                when: n.when.clone(),
                on_error: super::OnError::Continue,
                retry: n.retry.clone(),
                timeout: n.timeout,
                revert_after: None,
                approval: None,
            };
            if let Some(mut step) = self.step(&as_step, &path, n.with.is_none()) {
                step.grouped = n.group.unwrap_or(true);
                if n.retry.is_none() && step.action.spec.takes_notice() {
                    // A page is worth a few tries: 3 attempts, 2s then 4s apart.
                    step.attempts = 3;
                    step.backoff = Duration::from_secs(2);
                }
                step.resolve_when = n.resolve_when.as_deref().and_then(|text| {
                    match self.sandbox.compile(text, Context::Run) {
                        Ok(ast) => Some(ast),
                        Err(e) => {
                            self.report_script(
                                &format!("{path}.resolve_when"),
                                "in `resolve_when`",
                                e,
                            );
                            None
                        }
                    }
                });
                if n.with.is_none() {
                    if step.action.spec.message_param.is_none() {
                        self.report(
                            &format!("{path}.action"),
                            format!(
                                "`{}` has no default message: give its arguments in `with`",
                                step.action
                            ),
                        );
                    }
                    step.with = None;
                }
                notify.push(step);
            }
        }
        notify
    }

    fn condition(&mut self, text: &str) -> Option<Condition> {
        let path = "spec.match.when";
        let ast = match self.sandbox.compile(text, Context::Match) {
            Ok(ast) => ast,
            Err(e) => {
                self.report_script(path, "in `when`", e);
                return None;
            }
        };
        if let Some(found) = self.sandbox.probe_non_bool(&ast) {
            self.report(
                path,
                format!("`when` must return a bool, but it returns {found}"),
            );
        }
        let native = NativeClauses::extract(text);
        let ast = if native.complete { None } else { Some(ast) };
        Some(Condition {
            text: text.to_owned(),
            native,
            ast,
        })
    }

    fn vars(&mut self, vars: &super::spec::OrderedMap) -> Vec<(String, ValueTemplate)> {
        let mut out = Vec::new();
        for (name, value) in &vars.0 {
            let path = format!("spec.vars.{name}");
            if !valid_step_id(name) {
                self.report(
                    &path,
                    format!("var name `{name}` must match [a-z][a-z0-9_]*"),
                );
                continue;
            }
            match value {
                Value::String(text) => {
                    match Template::expression(text, self.sandbox, Context::Vars) {
                        Ok(t) => out.push((name.clone(), ValueTemplate::Template(t))),
                        Err(e) => self.report_script(&path, &format!("in var `{name}`"), e),
                    }
                }
                other => out.push((name.clone(), ValueTemplate::Literal(other.clone()))),
            }
        }
        out
    }

    fn template(&mut self, text: &str, path: &str, ctx: Context) -> Option<Template> {
        match Template::compile(text, self.sandbox, ctx) {
            Ok(t) => Some(t),
            Err(e) => {
                let pos = self.positions.inside(path, 1, e.offset + 1);
                self.problems.push(Problem {
                    file: self.file.to_owned(),
                    line: pos.line,
                    column: pos.column,
                    message: format!("in template: {}", e.message),
                });
                None
            }
        }
    }

    fn step(&mut self, s: &StepSpec, path: &str, default_message: bool) -> Option<Step> {
        let action = self.action(&s.action, &format!("{path}.action"))?;
        let with_path = format!("{path}.with");
        let mut errors = Vec::new();
        let with = ValueTemplate::compile(
            &Value::Object(s.with.clone()),
            self.sandbox,
            Context::Run,
            &with_path,
            &mut |p, e| errors.push((p.to_owned(), e)),
        );
        for (p, e) in errors {
            let pos = self.positions.inside(&p, 1, e.offset + 1);
            self.problems.push(Problem {
                file: self.file.to_owned(),
                line: pos.line,
                column: pos.column,
                message: format!("in template: {}", e.message),
            });
        }
        self.check_params(&action, s, &with_path, default_message);
        let when =
            s.when
                .as_deref()
                .and_then(|text| match self.sandbox.compile(text, Context::Run) {
                    Ok(ast) => Some(ast),
                    Err(e) => {
                        self.report_script(&format!("{path}.when"), "in `when`", e);
                        None
                    }
                });
        let (attempts, backoff) = self.retry(s.retry.as_ref(), path);
        if s.timeout.is_some_and(|t| t.get().is_zero()) {
            self.report(
                &format!("{path}.timeout"),
                "the timeout must be longer than 0s",
            );
        }
        if let Some(after) = s.revert_after {
            if !action.spec.reversible {
                self.report(
                    &format!("{path}.revert_after"),
                    format!(
                        "`revert_after` needs a reversible action; `{}` has no inverse",
                        s.action
                    ),
                );
            } else if after.get().is_zero() {
                self.report(
                    &format!("{path}.revert_after"),
                    "`revert_after` must be longer than 0s",
                );
            }
        }
        let approval = s
            .approval
            .as_ref()
            .map(|a| self.approval(a, &format!("{path}.approval"), &s.id));
        Some(Step {
            id: s.id.clone(),
            action,
            with: Some(with),
            when,
            on_error: s.on_error,
            attempts,
            backoff,
            timeout: s.timeout.map(|t| t.get()),
            revert_after: s.revert_after.map(|t| t.get()),
            grouped: false,
            resolve_when: None,
            approval,
        })
    }

    fn approval(&mut self, a: &ApprovalSpec, path: &str, step: &str) -> Approval {
        if a.timeout.get().is_zero() {
            self.report(
                &format!("{path}.timeout"),
                "the approval timeout must be longer than 0s",
            );
        }
        let mut seen = HashSet::new();
        for (i, name) in a.approvers.iter().enumerate() {
            let at = format!("{path}.approvers[{i}]");
            if !valid_approver(name) {
                self.report(
                    &at,
                    format!(
                        "approver `{name}` must be 1 to 64 visible characters without spaces \
                         (the name given to `riposte approve --as`)"
                    ),
                );
            } else if !seen.insert(name.as_str()) {
                self.report(&at, format!("approver `{name}` is listed twice"));
            }
        }
        let notify = a
            .notify
            .as_ref()
            .map(|n| self.notifications(n, &format!("{path}.notify"), &format!("{step}.request")));
        Approval {
            timeout: a.timeout.get(),
            on_timeout: a.on_timeout,
            approvers: a.approvers.clone(),
            notify,
        }
    }

    fn retry(&mut self, retry: Option<&RetrySpec>, path: &str) -> (u32, Duration) {
        match retry {
            None => (1, Duration::ZERO),
            Some(r) => {
                if !(1..=10).contains(&r.attempts) {
                    self.report(
                        &format!("{path}.retry.attempts"),
                        format!("retry attempts must be 1 to 10, not {}", r.attempts),
                    );
                }
                (
                    r.attempts.clamp(1, 10),
                    r.backoff.map_or(Duration::from_secs(1), |b| b.get()),
                )
            }
        }
    }

    fn action(&mut self, text: &str, path: &str) -> Option<ActionRef> {
        let Some((instance, action)) = text.split_once('.') else {
            self.report(
                path,
                format!("action `{text}` must be `<connector>.<action>`, e.g. `log.info`"),
            );
            return None;
        };
        let Some(kind) = self.catalog.kind(instance) else {
            let known: Vec<&str> = self.catalog.instances().map(|(n, _)| n).collect();
            self.report(
                path,
                format!(
                    "unknown connector `{instance}` (configured: {})",
                    known.join(", ")
                ),
            );
            return None;
        };
        let Some(spec) = find_action(kind.actions(), action) else {
            let known: Vec<&str> = kind.actions().iter().map(|a| a.name).collect();
            self.report(
                path,
                format!(
                    "connector `{instance}` ({kind}) has no action `{action}` (it has: {})",
                    known.join(", ")
                ),
            );
            return None;
        };
        Some(ActionRef {
            instance: instance.to_owned(),
            action: action.to_owned(),
            spec,
        })
    }

    fn check_params(
        &mut self,
        action: &ActionRef,
        s: &StepSpec,
        with_path: &str,
        default_message: bool,
    ) {
        for (key, value) in &s.with {
            let Some(p) = action.spec.params.iter().find(|p| p.name == key) else {
                let known: Vec<&str> = action.spec.params.iter().map(|p| p.name).collect();
                self.report(
                    &format!("{with_path}.{key}"),
                    format!(
                        "`{action}` has no parameter `{key}` (it has: {})",
                        known.join(", ")
                    ),
                );
                continue;
            };
            let templated = matches!(value, Value::String(t) if t.contains("${{"));
            let fits = match p.ty {
                ParamType::String => value.is_string(),
                ParamType::Integer => value.is_i64() || value.is_u64(),
                ParamType::Bool => value.is_boolean(),
                ParamType::Any => true,
            };
            if !templated && !fits {
                self.report(
                    &format!("{with_path}.{key}"),
                    format!(
                        "parameter `{key}` of `{action}` must be of type {}, got {}",
                        p.ty.as_str(),
                        json_type(value)
                    ),
                );
            }
        }
        if default_message && action.spec.message_param.is_none() {
            // Reported once by the caller: the action needs its arguments in `with`.
            return;
        }
        for p in action.spec.params.iter().filter(|p| p.required) {
            let filled_by_default = default_message && Some(p.name) == action.spec.message_param;
            if !(s.with.contains_key(p.name) || filled_by_default) {
                self.report(
                    with_path,
                    format!(
                        "`{action}` needs parameter `{}` ({})",
                        p.name, p.description
                    ),
                );
            }
        }
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn valid_step_id(id: &str) -> bool {
    id.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}
