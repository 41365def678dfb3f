//! The default enriched message of a notification that gives no `with`: what happened, where,
//! what the run did, and the ids to look it up by.

use serde_json::{json, Value};

use super::{RunCtx, RunOutcome};
use crate::playbook::Step;

/// The enriched message of a notification without `with`.
pub(super) fn default_message(run: &RunCtx<'_>, step: &Step) -> Value {
    let e = run.view.event;
    let mut text = format!("[{}] {}", e.severity, e.title);
    let mut place = Vec::new();
    if let Some(c) = &e.resource.container {
        let name = c.name.as_deref().or(c.id.as_deref()).unwrap_or("?");
        place.push(match &c.image {
            Some(img) => format!("container {name} ({img})"),
            None => format!("container {name}"),
        });
    }
    if let Some(pod) = &e.resource.pod {
        place.push(format!(
            "pod {}/{}",
            pod.namespace.as_deref().unwrap_or("?"),
            pod.name.as_deref().unwrap_or("?")
        ));
    }
    if let Some(n) = e.resource.node.as_ref().and_then(|n| n.name.as_deref()) {
        place.push(format!("node {n}"));
    } else if let Some(h) = e.resource.host.as_ref().and_then(|h| h.name.as_deref()) {
        place.push(format!("host {h}"));
    }
    if let Some(img) = e.resource.image.as_ref().and_then(|i| i.r#ref.as_deref()) {
        if e.resource.container.is_none() && !e.title.contains(img) {
            place.push(format!("image {img}"));
        }
    }
    if !place.is_empty() {
        text.push_str(" on ");
        text.push_str(&place.join(", "));
    }
    let done: Vec<String> = run
        .reports
        .iter()
        .filter(|r| !r.notify)
        .map(|r| format!("{} {}", r.action, r.outcome.as_str()))
        .collect();
    text.push_str(&format!(
        ". Playbook {}: {}",
        run.pb.name,
        run.outcome.map_or("ok", RunOutcome::as_str)
    ));
    if !done.is_empty() {
        text.push_str(&format!(" ({})", done.join(", ")));
    }
    text.push_str(&format!(". Run {}, event {}.", run.run_id, e.id));
    let param = step.action.spec.message_param.unwrap_or("message");
    json!({ param: text })
}
