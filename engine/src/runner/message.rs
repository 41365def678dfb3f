//! The enriched notice of a notification: what happened, where, whose it is, what the run did
//! (with the undo commands), the evidence, the links and an excerpt of the raw event.
//!
//! A notification connector whose message parameter takes any value gets the [`Notice`]
//! itself and renders it natively; one whose message parameter is a string (`log`) gets one
//! line of text. A playbook's own `with` arguments win over the notice; the notice still fills
//! the message parameter when `with` leaves it out.

use riposte_connectors::notice::{Done, Links, Notice, Owner, Place};
use riposte_connectors::ParamType;
use serde_json::{Map, Value};

use super::{RunCtx, RunOutcome};
use crate::event::Event;
use crate::playbook::Step;

/// How much of the raw event a notice quotes.
const EXCERPT_CHARS: usize = 1000;

/// The arguments of a notification without `with`: its message parameter, filled.
pub(super) fn default_message(run: &RunCtx<'_>, step: &Step) -> Value {
    let mut args = Map::new();
    fill(run, step, &mut args);
    Value::Object(args)
}

/// Fills the action's message parameter when the arguments leave it out.
pub(super) fn fill(run: &RunCtx<'_>, step: &Step, args: &mut Map<String, Value>) {
    let spec = step.action.spec;
    let Some(param) = spec.message_param else {
        return;
    };
    if args.contains_key(param) {
        return;
    }
    let notice = notice(run);
    let typed = spec.params.iter().find(|p| p.name == param).map(|p| p.ty);
    let value = match typed {
        Some(ParamType::String) | None => Value::String(one_line(&notice)),
        Some(_) => serde_json::to_value(&notice).unwrap_or(Value::Null),
    };
    args.insert(param.to_owned(), value);
}

/// One line for logs: headline, outcome, steps, ids.
fn one_line(n: &Notice) -> String {
    let mut text = n.headline();
    text.push_str(&format!(". Playbook {}: {}", n.playbook, n.outcome));
    let done: Vec<String> = n
        .actions
        .iter()
        .map(|a| match (&a.reason, a.outcome.as_str()) {
            (Some(why), "awaiting_approval") => format!("{} {}: {why}", a.action, a.outcome),
            _ => format!("{} {}", a.action, a.outcome),
        })
        .collect();
    if !done.is_empty() {
        text.push_str(&format!(" ({})", done.join(", ")));
    }
    text.push_str(&format!(". Run {}, event {}.", n.run_id, n.event_id));
    text
}

fn first_label(
    maps: &[&std::collections::BTreeMap<String, String>],
    keys: &[&str],
) -> Option<String> {
    keys.iter().find_map(|k| {
        maps.iter()
            .find_map(|m| m.get(*k).filter(|v| !v.is_empty()).cloned())
    })
}

/// Container labels from enrichment facts (`event.enrichment.<instance>.labels`).
fn enriched_labels(e: &Event) -> Vec<std::collections::BTreeMap<String, String>> {
    e.enrichment
        .values()
        .filter_map(|facts| facts.get("labels").and_then(Value::as_object))
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
                .collect()
        })
        .collect()
}

fn enriched(e: &Event, key: &str) -> Option<String> {
    e.enrichment
        .values()
        .find_map(|facts| facts.get(key).and_then(Value::as_str).map(str::to_owned))
}

/// The notice of the run so far.
pub(super) fn notice(run: &RunCtx<'_>) -> Notice {
    let e = run.view.event;
    let r = &e.resource;
    let c = r.container.as_ref();
    let pod = r.pod.as_ref();
    let image = r.image.as_ref();
    let place = Place {
        container: c
            .and_then(|c| c.name.clone())
            .or_else(|| enriched(e, "name")),
        container_id: c.and_then(|c| c.id.clone()),
        image: c
            .and_then(|c| c.image.clone())
            .or_else(|| image.and_then(|i| i.r#ref.clone()))
            .or_else(|| enriched(e, "image")),
        image_digest: image
            .and_then(|i| i.digest.clone())
            .or_else(|| enriched(e, "image_id")),
        pod: pod.and_then(|p| p.name.clone()),
        namespace: pod.and_then(|p| p.namespace.clone()),
        node: r
            .node
            .as_ref()
            .and_then(|n| n.name.clone())
            .or_else(|| enriched(e, "node")),
        host: r.host.as_ref().and_then(|h| h.name.clone()),
    };
    let empty = std::collections::BTreeMap::new();
    let container_labels = enriched_labels(e);
    let mut maps: Vec<&std::collections::BTreeMap<String, String>> =
        vec![pod.map_or(&empty, |p| &p.labels)];
    maps.extend(container_labels.iter());
    // The Kubernetes connector reads the owner and on-call from the pod, its workload and its
    // namespace (keys configurable); labels the event carries come next.
    let owner = Owner {
        team: enriched(e, "owner")
            .or_else(|| first_label(&maps, riposte_connectors::kubernetes::OWNER_KEYS)),
        oncall: enriched(e, "on_call")
            .or_else(|| first_label(&maps, riposte_connectors::kubernetes::ONCALL_KEYS)),
    };
    let mut evidence = Vec::new();
    let actions = run
        .reports
        .iter()
        .filter(|s| !s.notify)
        .map(|s| {
            let out = s.output.as_ref();
            for key in ["dir", "image"] {
                if let Some(v) = out.and_then(|o| o.get(key)).and_then(Value::as_str) {
                    evidence.push(v.to_owned());
                }
            }
            let revert = s.revert.as_ref();
            let text = |k: &str| {
                revert
                    .and_then(|v| v.get(k))
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            };
            Done {
                step: s.id.clone(),
                action: s.action.clone(),
                outcome: s.outcome.as_str().to_owned(),
                reason: s.reason.clone(),
                revert_command: text("command"),
                revert_due: text("due"),
            }
        })
        .collect();
    let raw = serde_json::to_string(&e.data).unwrap_or_default();
    let mut excerpt: String = raw.chars().take(EXCERPT_CHARS).collect();
    if raw.chars().count() > EXCERPT_CHARS {
        excerpt.push('…');
    }
    Notice {
        title: e.title.clone(),
        severity: e.severity.as_str().to_owned(),
        source: e.source.as_str().to_owned(),
        time: e.time.clone(),
        summary: e.summary.clone(),
        event_id: e.id.clone(),
        place,
        owner,
        playbook: run.pb.name.clone(),
        run_id: run.run_id.to_owned(),
        outcome: run
            .outcome
            .map_or(if run.failed { "failed" } else { "ok" }, RunOutcome::as_str)
            .to_owned(),
        dry_run: run.plan,
        actions,
        evidence,
        links: Links {
            runbook: run.pb.runbook.clone(),
            audit: format!("riposte audit --run {}", run.run_id),
        },
        excerpt,
        group: None,
    }
}
