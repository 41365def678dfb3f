//! Matching: which playbooks run for an event.
//!
//! Playbooks are indexed by source and, when their condition requires an exact title, by
//! title, so only candidates are looked at. A candidate's native clauses are checked first;
//! Rhai runs only for conditions that need it, against the event converted once
//! ([`EventView`]). A condition that errors is "no match" with the error as its reason: it
//! never stops the engine.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use rhai::{Dynamic, Scope};

use crate::event::{Event, Source};
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
    by_title: HashMap<String, Vec<usize>>,
    others: Vec<usize>,
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
            let title = pb
                .condition
                .as_ref()
                .and_then(|c| c.native.required_title());
            for source in Source::ALL {
                if !pb.sources.is_empty() && !pb.sources.contains(&source) {
                    continue;
                }
                let idx = by_source.entry(source).or_default();
                match title {
                    Some(t) => idx.by_title.entry(t.to_owned()).or_default().push(i),
                    None => idx.others.push(i),
                }
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

    /// The playbooks that may match an event (by source and required title), in load order.
    pub fn candidates(&self, event: &Event) -> Vec<&Arc<Playbook>> {
        let Some(idx) = self.by_source.get(&event.source) else {
            return Vec::new();
        };
        let mut ids: Vec<usize> = idx.others.clone();
        if let Some(titled) = idx.by_title.get(&event.title) {
            ids.extend_from_slice(titled);
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
        Predicate::AtLeast(min) => format!("severity {} is below {min}", e.severity),
    }
}
