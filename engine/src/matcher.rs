//! Matching: which playbooks run for an event.
//!
//! Playbooks are indexed by source and, when their condition requires a field to equal a text
//! (`event.title == "..."`, `event.labels.team == "..."`, `event.resource.pod.namespace == "..."`,
//! ...), by that field's value, so only candidates are looked at: the cost of matching an event
//! does not grow with the number of such playbooks. A candidate's native clauses are checked first;
//! Rhai runs only for conditions that need it, against the event converted once ([`EventView`]). A
//! condition that errors is "no match" with the error as its reason: it never stops the engine.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use rhai::{Dynamic, Scope};

use crate::event::{Event, Source};
use crate::playbook::condition::{Field, Predicate};
use crate::playbook::Playbook;
use crate::script::{event_to_dynamic, Sandbox};

/// An event and its Rhai form, converted at most once and shared by every evaluation.
#[derive(Debug)]
pub struct EventView<'a> {
    /// The event.
    pub event: &'a Event,
    with_data: bool,
    dynamic: OnceLock<Dynamic>,
}

impl<'a> EventView<'a> {
    /// Wraps an event; `with_data` says whether `event.data` must be converted too (only when a
    /// playbook may read it: see [`Matcher::needs_data`]).
    pub fn new(event: &'a Event, with_data: bool) -> Self {
        EventView {
            event,
            with_data,
            dynamic: OnceLock::new(),
        }
    }

    /// The event as a Rhai value (shared: clones are cheap).
    pub fn dynamic(&self) -> &Dynamic {
        self.dynamic
            .get_or_init(|| event_to_dynamic(self.event, self.with_data).into_shared())
    }

    /// A scope with `event` declared (constant).
    pub fn scope(&self) -> Scope<'static> {
        let mut scope = Scope::new();
        scope.push_constant_dynamic("event", self.dynamic().clone());
        scope
    }
}

/// Why a playbook did not match (or that it did).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The playbook runs.
    Match,
    /// It does not listen to this source or kind.
    NotListening(String),
    /// A clause or the condition is false.
    False(String),
    /// The condition failed; counted as no match.
    Error(String),
}

impl Verdict {
    /// Whether the playbook runs.
    pub fn is_match(&self) -> bool {
        matches!(self, Verdict::Match)
    }
}

/// The outcome of matching one event.
#[derive(Debug, Default)]
pub struct Matches {
    /// The playbooks that run.
    pub matched: Vec<Arc<Playbook>>,
    /// Candidates whose condition failed (no match), with the error.
    pub errors: Vec<(Arc<Playbook>, String)>,
}

#[derive(Debug, Default)]
struct SourceIndex {
    /// For each field some playbook requires, the playbooks by the value (or each of the
    /// values) they require.
    by_field: Vec<(Field, HashMap<String, Vec<usize>>)>,
    /// Playbooks that require no field to equal a text.
    others: Vec<usize>,
}

impl SourceIndex {
    fn add(&mut self, key: Option<&(&Field, Vec<&str>)>, i: usize) {
        let Some(&(field, ref values)) = key else {
            self.others.push(i);
            return;
        };
        let pos = match self.by_field.iter().position(|(f, _)| f == field) {
            Some(pos) => pos,
            None => {
                self.by_field.push((field.clone(), HashMap::new()));
                self.by_field.len() - 1
            }
        };
        if let Some((_, by_value)) = self.by_field.get_mut(pos) {
            // The values are distinct, so a playbook is found at most once per event.
            for value in values {
                by_value.entry((*value).to_owned()).or_default().push(i);
            }
        }
    }
}

/// The clause a playbook is indexed by, with the values that may match it: its title
/// equality, else its title membership, else its first other equality, else its first other
/// membership clause.
fn index_key(pb: &Playbook) -> Option<(&Field, Vec<&str>)> {
    let predicates = &pb.condition.as_ref()?.native.predicates;
    let find = |title: bool, member: bool| {
        predicates.iter().find_map(|p| match p {
            Predicate::Equals(f, v) if !member && (*f == Field::Title) == title => {
                Some((f, vec![v.as_str()]))
            }
            Predicate::In(f, vs) if member && (*f == Field::Title) == title => {
                Some((f, vs.iter().map(String::as_str).collect()))
            }
            _ => None,
        })
    };
    find(true, false)
        .or_else(|| find(true, true))
        .or_else(|| find(false, false))
        .or_else(|| find(false, true))
}

/// The loaded playbooks, indexed for matching.
#[derive(Debug, Default)]
pub struct Matcher {
    playbooks: Vec<Arc<Playbook>>,
    by_source: HashMap<Source, SourceIndex>,
    needs_data: bool,
    enrich_first: bool,
}

impl Matcher {
    /// Indexes playbooks.
    pub fn new(playbooks: Vec<Playbook>) -> Matcher {
        let playbooks: Vec<Arc<Playbook>> = playbooks.into_iter().map(Arc::new).collect();
        let mut by_source: HashMap<Source, SourceIndex> = HashMap::new();
        for (i, pb) in playbooks.iter().enumerate() {
            let key = index_key(pb);
            for source in Source::ALL {
                if !pb.sources.is_empty() && !pb.sources.contains(&source) {
                    continue;
                }
                by_source.entry(source).or_default().add(key.as_ref(), i);
            }
        }
        Matcher {
            needs_data: playbooks.iter().any(|p| p.uses_data),
            enrich_first: playbooks.iter().any(|p| p.matches_on_enrichment),
            playbooks,
            by_source,
        }
    }

    /// Whether any playbook may read `event.data`.
    pub fn needs_data(&self) -> bool {
        self.needs_data
    }

    /// Whether some playbook's condition reads `event.enrichment`, so events must be enriched
    /// before they are matched.
    pub fn enrich_first(&self) -> bool {
        self.enrich_first
    }

    /// Every playbook, in load order.
    pub fn playbooks(&self) -> &[Arc<Playbook>] {
        &self.playbooks
    }

    /// The playbooks that may match an event (by source and the value of the field each one
    /// requires), in load order.
    pub fn candidates(&self, event: &Event) -> Vec<&Arc<Playbook>> {
        let Some(idx) = self.by_source.get(&event.source) else {
            return Vec::new();
        };
        let mut ids: Vec<usize> = idx.others.clone();
        let mut found = false;
        for (field, values) in &idx.by_field {
            if let Some(hit) = field.read(event).and_then(|v| values.get(v)) {
                ids.extend_from_slice(hit);
                found = true;
            }
        }
        if found {
            ids.sort_unstable();
        }
        ids.iter().filter_map(|i| self.playbooks.get(*i)).collect()
    }

    /// The playbooks that match, and every candidate whose condition failed, with the error.
    pub fn matches(&self, view: &EventView<'_>, sandbox: &Sandbox) -> Matches {
        let mut matched = Vec::new();
        let mut errors = Vec::new();
        let mut scope: Option<Scope<'static>> = None;
        for pb in self.candidates(view.event) {
            match verdict(pb, view, sandbox, &mut scope) {
                Verdict::Match => matched.push(pb.clone()),
                Verdict::Error(e) => errors.push((pb.clone(), e)),
                _ => {}
            }
        }
        Matches { matched, errors }
    }
}

/// Decides one playbook; `scope` is created on the first Rhai evaluation and reused.
pub fn verdict(
    pb: &Playbook,
    view: &EventView<'_>,
    sandbox: &Sandbox,
    scope: &mut Option<Scope<'static>>,
) -> Verdict {
    let e = view.event;
    if !pb.sources.is_empty() && !pb.sources.contains(&e.source) {
        return Verdict::NotListening(format!("source `{}` is not in its sources", e.source));
    }
    if !pb.listens_to(e) {
        return Verdict::NotListening(if pb.kinds.is_empty() {
            format!(
                "kind `{}` is only seen by playbooks that list it in `kinds`",
                e.kind
            )
        } else {
            format!("kind `{}` is not in its kinds", e.kind)
        });
    }
    let Some(cond) = &pb.condition else {
        return Verdict::Match;
    };
    if let Some(p) = cond.native.predicates.iter().find(|p| !p.holds(e)) {
        return Verdict::False(format!("clause is false: {}", describe_predicate(p, e)));
    }
    let Some(ast) = &cond.ast else {
        return Verdict::Match;
    };
    let scope = scope.get_or_insert_with(|| view.scope());
    match sandbox.eval_bool(ast, scope) {
        Ok(true) => Verdict::Match,
        Ok(false) => Verdict::False("`when` is false".to_owned()),
        Err(err) => Verdict::Error(format!("`when` failed: {err}")),
    }
}

fn describe_predicate(p: &crate::playbook::condition::Predicate, e: &Event) -> String {
    use crate::playbook::condition::Predicate;
    match p {
        Predicate::Equals(f, v) => match f.read(e) {
            Some(actual) => format!("{f} is {actual:?}, not {v:?}"),
            None => format!("{f} is absent, not {v:?}"),
        },
        Predicate::NotEquals(f, v) => format!("{f} is {v:?}"),
        Predicate::In(f, vs) => match f.read(e) {
            Some(actual) => format!("{f} is {actual:?}, not one of {vs:?}"),
            None => format!("{f} is absent, not one of {vs:?}"),
        },
        Predicate::AtLeast(min) => format!("severity {} is below {min}", e.severity),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::clock::SystemClock;
    use crate::config::Config;
    use crate::playbook::{load_dir, Catalog};

    fn playbooks(whens: &[(&str, &str)]) -> Vec<Playbook> {
        let dir = tempfile::tempdir().unwrap();
        for (name, when) in whens {
            let text = format!(
                "apiVersion: riposte/v1\nkind: Playbook\nmetadata:\n  name: {name}\nspec:\n  match:\n    sources: [falco]\n    when: '{when}'\n  steps:\n    - id: note\n      action: log.info\n      with:\n        message: hello\n"
            );
            std::fs::write(dir.path().join(format!("{name}.yaml")), text).unwrap();
        }
        let config = Config::default_with_bindings();
        let sandbox = Sandbox::new(Arc::new(SystemClock));
        let (loaded, problems) = load_dir(dir.path(), &Catalog::from_config(&config), &sandbox);
        assert!(problems.is_empty(), "{problems:?}");
        loaded
    }

    fn event() -> Event {
        let alert = serde_json::json!({
            "uuid": "m-1",
            "output": "Warning shell (container=web-1)",
            "priority": "Warning",
            "rule": "Terminal shell in container",
            "time": "2026-11-23T13:44:05.478445995Z",
            "output_fields": {"container.name": "web-1", "k8s.ns.name": "shop", "k8s.pod.name": "web-1-7f9c"}
        });
        let mut events = crate::formats::normalize(
            Source::Falco,
            alert.to_string().as_bytes(),
            chrono::Utc::now(),
        )
        .unwrap();
        events.pop().unwrap()
    }

    fn names(pbs: Vec<&Arc<Playbook>>) -> Vec<String> {
        pbs.iter().map(|p| p.name.clone()).collect()
    }

    #[test]
    fn only_playbooks_whose_required_values_the_event_has_are_candidates() {
        let m = Matcher::new(playbooks(&[
            ("a-title", "event.title == \"Terminal shell in container\""),
            ("b-other-title", "event.title == \"Something else\""),
            (
                "c-namespace",
                "event.resource.pod.namespace == \"shop\" && at_least(event.severity, \"low\")",
            ),
            (
                "d-other-namespace",
                "event.resource.pod.namespace == \"bank\"",
            ),
            ("e-no-equality", "at_least(event.severity, \"low\")"),
            (
                "f-both",
                "event.resource.container.name == \"web-1\" && event.title == \"Something else\"",
            ),
        ]));
        let e = event();
        assert_eq!(
            names(m.candidates(&e)),
            ["a-title", "c-namespace", "e-no-equality"]
        );
        let sandbox = Sandbox::new(Arc::new(SystemClock));
        let matched = m.matches(&EventView::new(&e, false), &sandbox).matched;
        let matched: Vec<&str> = matched.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(matched, ["a-title", "c-namespace", "e-no-equality"]);
    }

    #[test]
    fn native_membership_decides_as_rhai_does() {
        let sandbox = Sandbox::new(Arc::new(SystemClock));
        let e = event();
        let view = EventView::new(&e, false);
        for when in [
            "event.title in [\"Terminal shell in container\", \"Other\"]",
            "event.title in [\"Other\"]",
            "event.resource.pod.namespace in [\"bank\", \"shop\"]",
            "event.resource.node.name in [\"node-1\"]",
            "event.labels.team in [\"payments\"]",
            "event.severity in [\"warning\", \"high\"]",
            "event.source in [\"falco\"]",
        ] {
            let native = crate::playbook::condition::NativeClauses::extract(when);
            assert!(native.complete, "{when}");
            let ast = sandbox
                .compile(when, crate::script::Context::Match)
                .unwrap();
            let rhai = sandbox.eval_bool(&ast, &mut view.scope()).unwrap();
            assert_eq!(native.hold(&e), rhai, "{when}");
        }
    }

    #[test]
    fn membership_clauses_index_a_playbook_under_each_value() {
        let m = Matcher::new(playbooks(&[
            (
                "a-titles",
                "event.title in [\"Terminal shell in container\", \"Other\"]",
            ),
            ("b-other-titles", "event.title in [\"Other\", \"More\"]"),
            (
                "c-namespaces",
                "event.resource.pod.namespace in [\"bank\", \"shop\"]",
            ),
            (
                "d-other-namespaces",
                "event.resource.pod.namespace in [\"bank\"] && at_least(event.severity, \"low\")",
            ),
        ]));
        assert_eq!(names(m.candidates(&event())), ["a-titles", "c-namespaces"]);
    }

    #[test]
    fn the_index_gives_what_evaluating_every_playbook_gives() {
        let whens: Vec<(String, String)> = (0..200)
            .map(|k| {
                let when = match k % 6 {
                    0 => format!("event.title == \"Rule {}\"", k % 7),
                    1 => format!("event.resource.pod.namespace == \"ns-{}\"", k % 5),
                    2 => format!("event.resource.container.name == \"web-{}\" && glob(\"Rule*\", event.title)", k % 3),
                    3 => format!(
                        "event.title in [\"Rule {}\", \"Rule {}\"] && event.resource.pod.namespace in [\"ns-{}\"]",
                        k % 7,
                        (k + 3) % 8,
                        k % 6
                    ),
                    4 => format!(
                        "event.resource.container.name in [\"web-{}\", \"web-9\"] && event.title != \"Rule 2\"",
                        k % 4
                    ),
                    _ => "at_least(event.severity, \"high\")".to_owned(),
                };
                (format!("p{k:03}"), when)
            })
            .collect();
        let refs: Vec<(&str, &str)> = whens
            .iter()
            .map(|(n, w)| (n.as_str(), w.as_str()))
            .collect();
        let m = Matcher::new(playbooks(&refs));
        let sandbox = Sandbox::new(Arc::new(SystemClock));
        let mut matched_some = 0;
        for rule in 0..8 {
            for ns in 0..6 {
                let mut e = event();
                e.title = format!("Rule {rule}");
                if let Some(pod) = e.resource.pod.as_mut() {
                    pod.namespace = Some(format!("ns-{ns}"));
                }
                if let Some(c) = e.resource.container.as_mut() {
                    c.name = Some(format!("web-{}", ns % 4));
                }
                let view = EventView::new(&e, false);
                let indexed: Vec<String> = m
                    .matches(&view, &sandbox)
                    .matched
                    .iter()
                    .map(|p| p.name.clone())
                    .collect();
                let mut scope = None;
                let every: Vec<String> = m
                    .playbooks()
                    .iter()
                    .filter(|p| verdict(p, &view, &sandbox, &mut scope).is_match())
                    .map(|p| p.name.clone())
                    .collect();
                assert_eq!(indexed, every, "rule {rule}, namespace {ns}");
                matched_some += usize::from(!every.is_empty());
            }
        }
        assert!(
            matched_some > 40,
            "only {matched_some} of 48 events matched anything"
        );
    }
}
