//! The enriched notice: what a notification says when a playbook gives no text of its own.
//!
//! The engine builds one [`Notice`] per notification from the event, its enrichment and the
//! run so far, and hands it to the notification connector as its message parameter; each
//! channel renders it natively (Block Kit, an Adaptive Card, PagerDuty `custom_details`, an
//! HTML mail...). Fields a playbook gives in `with` override the notice's. [`Notice::text`] is
//! the plain-text rendering every channel can fall back to.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// What happened, where, whose it is, what riposte did, the evidence and the links.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Notice {
    /// The event's title (rule or alert name).
    pub title: String,
    /// `info` … `critical`.
    pub severity: String,
    /// The producer format.
    pub source: String,
    /// When it happened (RFC 3339).
    pub time: String,
    /// The producer's text.
    pub summary: String,
    /// The event id.
    pub event_id: String,
    /// Where it happened.
    #[serde(rename = "where")]
    pub place: Place,
    /// Whose it is.
    pub owner: Owner,
    /// The playbook.
    pub playbook: String,
    /// The run.
    pub run_id: String,
    /// How the run went so far (`ok`, `failed`, `planned`).
    pub outcome: String,
    /// Whether actions were only planned.
    pub dry_run: bool,
    /// What riposte did, step by step.
    pub actions: Vec<Done>,
    /// Evidence taken (snapshot directories, images).
    pub evidence: Vec<String>,
    /// Links and commands.
    pub links: Links,
    /// The start of the raw event.
    pub excerpt: String,
    /// When notices are grouped: how many events this one stands for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<Group>,
}

/// A group of notices about one workload, sent as one page and its updates.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Group {
    /// The group's key (also the page's dedup key).
    pub key: String,
    /// Events in the group so far.
    pub events: u64,
    /// Events since the previous notice of this group.
    pub new_events: u64,
    /// How many notices of this group were sent before this one.
    pub sent_before: u64,
    /// The first event's time (RFC 3339).
    pub first_seen: String,
    /// The latest event's time.
    pub last_seen: String,
    /// The latest runs in the group (newest last).
    pub runs: Vec<String>,
}

/// Where an event happened; every part only when known.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Place {
    /// Container name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// Container id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// Image reference.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Image digest (or image id when no digest is known).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,
    /// Pod name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// Namespace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// Whose the workload is, from its labels or annotations.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Owner {
    /// The owning team.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    /// Who is on call for it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oncall: Option<String>,
}

/// One step riposte took.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Done {
    /// Step id.
    pub step: String,
    /// `<instance>.<action>`.
    pub action: String,
    /// `ok`, `failed`, `skipped`, `planned`.
    pub outcome: String,
    /// Why it failed or was skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The command that undoes it, for a reversible step that changed something.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revert_command: Option<String>,
    /// When it is undone by itself (RFC 3339), when the playbook says so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revert_due: Option<String>,
}

/// Links and commands.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Links {
    /// The playbook's runbook.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runbook: Option<String>,
    /// The command that shows the run's audit trail.
    pub audit: String,
}

impl Notice {
    /// Reads a notice from a message argument; a string is taken as the summary line.
    pub fn from_value(v: &Value) -> Notice {
        match v {
            Value::String(s) => Notice {
                title: s.clone(),
                ..Notice::default()
            },
            other => serde_json::from_value(other.clone()).unwrap_or_default(),
        }
    }

    /// `[critical] Terminal shell in container on web-1 (shop/web-1-7f9c)`: one line, for
    /// subjects, titles and summaries.
    pub fn headline(&self) -> String {
        let mut s = if self.severity.is_empty() {
            self.title.clone()
        } else {
            format!("[{}] {}", self.severity, self.title)
        };
        let at = self.place.short();
        if !at.is_empty() {
            s.push_str(" on ");
            s.push_str(&at);
        }
        if let Some(g) = self.group.as_ref().filter(|g| g.events > 1) {
            s.push_str(&format!(" ({} events since {})", g.events, g.first_seen));
        }
        s
    }

    /// `name: value` facts in reading order, the ones that are known.
    pub fn facts(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let mut push = |k: &'static str, v: &Option<String>| {
            if let Some(v) = v.as_ref().filter(|v| !v.is_empty()) {
                out.push((k, v.clone()));
            }
        };
        push("severity", &Some(self.severity.clone()));
        push("source", &Some(self.source.clone()));
        push("time", &Some(self.time.clone()));
        push("container", &self.place.container);
        push("container id", &self.place.container_id);
        push("image", &self.place.image);
        push("image digest", &self.place.image_digest);
        push("pod", &self.place.pod);
        push("namespace", &self.place.namespace);
        push("node", &self.place.node);
        push("host", &self.place.host);
        push("owner team", &self.owner.team);
        push("on call", &self.owner.oncall);
        push("playbook", &Some(self.playbook.clone()));
        push("outcome", &Some(self.outcome.clone()));
        push("run", &Some(self.run_id.clone()));
        push("event", &Some(self.event_id.clone()));
        push("runbook", &self.links.runbook);
        out
    }

    /// One line per step: `docker.pause ok (undo: riposte revert … , by itself at …)`.
    pub fn action_lines(&self) -> Vec<String> {
        self.actions
            .iter()
            .map(|a| {
                let mut s = format!("{} ({}) {}", a.action, a.step, a.outcome);
                if let Some(r) = &a.reason {
                    s.push_str(&format!(": {r}"));
                }
                if let Some(c) = &a.revert_command {
                    s.push_str(&format!(" (undo: `{c}`"));
                    if let Some(d) = &a.revert_due {
                        s.push_str(&format!(", undone by itself at {d}"));
                    }
                    s.push(')');
                }
                s
            })
            .collect()
    }

    /// The whole notice as plain text.
    pub fn text(&self) -> String {
        let mut s = self.headline();
        s.push('\n');
        if !self.summary.is_empty() {
            s.push_str(&self.summary);
            s.push('\n');
        }
        for (k, v) in self.facts() {
            s.push_str(&format!("{k}: {v}\n"));
        }
        let done = self.action_lines();
        if !done.is_empty() {
            s.push_str("what riposte did:\n");
            for line in done {
                s.push_str(&format!("- {line}\n"));
            }
        }
        if !self.evidence.is_empty() {
            s.push_str(&format!("evidence: {}\n", self.evidence.join(", ")));
        }
        if !self.links.audit.is_empty() {
            s.push_str(&format!("audit: {}\n", self.links.audit));
        }
        if let Some(g) = &self.group {
            s.push_str(&format!(
                "grouped: {} event(s) from {} to {}, {} new since the last notice; latest runs: {}\n",
                g.events,
                g.first_seen,
                g.last_seen,
                g.new_events,
                g.runs.join(", ")
            ));
        }
        s
    }
}

impl Notice {
    /// `riposte:<playbook>:<container id | namespace/pod | event id>`: the key under which one
    /// incident about one workload is opened, acknowledged and resolved, so every alert of a
    /// playbook about the same container lands on the same incident. A key longer than `max`
    /// characters becomes `riposte:sha256:<hex of the key>` (79 characters), which still names
    /// the same workload every time.
    pub fn incident_key(&self, max: usize) -> String {
        let subject = match (&self.place.container_id, &self.place.pod) {
            (Some(id), _) if !id.is_empty() => id.clone(),
            (_, Some(pod)) if !pod.is_empty() => {
                format!("{}/{pod}", self.place.namespace.as_deref().unwrap_or(""))
            }
            _ if !self.event_id.is_empty() => self.event_id.clone(),
            _ => self.run_id.clone(),
        };
        let key = format!("riposte:{}:{subject}", self.playbook);
        if key.chars().count() <= max {
            return key;
        }
        format!(
            "riposte:sha256:{}",
            hex::encode(Sha256::digest(key.as_bytes()))
        )
    }
}

/// `text` HTML-escaped for element content and quoted attribute values; control characters
/// other than line feed and tab, which HTML does not allow, are dropped.
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() && c != '\n' && c != '\t' => {}
            c => out.push(c),
        }
    }
    out
}

/// `text` cut to at most `max` characters, the last one `…` when it was cut. Services refuse or
/// truncate fields past their documented limits; cutting here keeps the cut visible.
pub fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    if max > 0 {
        out.push('…');
    }
    out
}

impl Place {
    /// `container web-1 (registry/app:1.2), pod shop/web-1-7f9c, node n1`.
    pub fn short(&self) -> String {
        let mut parts = Vec::new();
        if let Some(c) = self.container.as_ref().or(self.container_id.as_ref()) {
            parts.push(match &self.image {
                Some(i) => format!("container {c} ({i})"),
                None => format!("container {c}"),
            });
        } else if let Some(i) = &self.image {
            parts.push(format!("image {i}"));
        }
        if let Some(p) = &self.pod {
            parts.push(format!(
                "pod {}/{p}",
                self.namespace.as_deref().unwrap_or("?")
            ));
        } else if let Some(ns) = &self.namespace {
            parts.push(format!("namespace {ns}"));
        }
        if let Some(n) = self.node.as_ref().or(self.host.as_ref()) {
            parts.push(format!("node {n}"));
        }
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    fn sample() -> Notice {
        Notice {
            title: "Terminal shell in container".into(),
            severity: "critical".into(),
            source: "falco".into(),
            time: "2026-11-23T12:00:00Z".into(),
            playbook: "shell-in-container".into(),
            run_id: "r-1".into(),
            outcome: "ok".into(),
            place: Place {
                container: Some("web-1".into()),
                image: Some("registry/app:1.2".into()),
                pod: Some("web-1-7f9c".into()),
                namespace: Some("shop".into()),
                ..Place::default()
            },
            actions: vec![Done {
                step: "contain".into(),
                action: "docker.pause".into(),
                outcome: "ok".into(),
                revert_command: Some("riposte revert r-1 --step contain".into()),
                revert_due: Some("2026-11-23T13:00:00Z".into()),
                ..Done::default()
            }],
            links: Links {
                runbook: None,
                audit: "riposte audit --run r-1".into(),
            },
            ..Notice::default()
        }
    }

    #[test]
    fn the_text_says_what_where_and_what_was_done() {
        let t = sample().text();
        assert!(t.starts_with(
            "[critical] Terminal shell in container on container web-1 (registry/app:1.2), pod shop/web-1-7f9c\n"
        ), "{t}");
        assert!(t.contains("- docker.pause (contain) ok (undo: `riposte revert r-1 --step contain`, undone by itself at 2026-11-23T13:00:00Z)"), "{t}");
        assert!(t.contains("audit: riposte audit --run r-1"), "{t}");
    }

    #[test]
    fn the_incident_key_names_the_playbook_and_the_workload_and_fits_its_limit() {
        let mut n = sample();
        n.event_id = "evt-1".into();
        assert_eq!(
            n.incident_key(255),
            "riposte:shell-in-container:shop/web-1-7f9c"
        );
        n.place.container_id = Some("c0ffee".into());
        assert_eq!(n.incident_key(255), "riposte:shell-in-container:c0ffee");
        n.place.container_id = Some("x".repeat(300));
        let long = n.incident_key(255);
        assert!(
            long.starts_with("riposte:sha256:") && long.len() == 79,
            "{long}"
        );
        assert_eq!(n.incident_key(255), long);
        n.place = Place::default();
        assert_eq!(n.incident_key(255), "riposte:shell-in-container:evt-1");
    }

    #[test]
    fn clip_keeps_short_text_and_marks_a_cut() {
        assert_eq!(clip("abc", 3), "abc");
        assert_eq!(clip("abcdef", 4), "abc…");
        assert_eq!(clip("ééééé", 3).chars().count(), 3);
    }

    #[test]
    fn a_notice_survives_json_and_a_string_is_a_title() {
        let n = sample();
        let back = Notice::from_value(&serde_json::to_value(&n).unwrap());
        assert_eq!(back, n);
        assert_eq!(Notice::from_value(&Value::String("hi".into())).title, "hi");
    }
}
