//! Noise control, Alertmanager-style: notifications about one workload are grouped into one
//! page and its updates.
//!
//! A notification whose connector takes the enriched notice (the paging and chat connectors)
//! is not sent by its run: the run records it `deferred` into a group, kept in the KV bucket
//! `<prefix>-groups` and keyed by `group_by` (default: the playbook and the workload) plus the
//! action. Every replica runs a [`Flusher`] that sends a group's latest notice, with how many
//! events it stands for:
//! - `group_wait` after the group's first event (so a burst makes one page);
//! - then at most every `group_interval` while new events arrive (updates of that page: the
//!   same `dedup_key` or `alias`, so PagerDuty and Opsgenie update one incident);
//! - a group stays open `repeat_interval` after its last notice; an event after that opens a
//!   new page.
//!
//! When the latest run's notification says `resolve_when` is true (its remediation completed),
//! the group's page is resolved with the connector's resolving action (`trigger` → `resolve`,
//! `create` → `close`, `fire` → `resolve`) right after its pending notice, and the group is
//! closed. One replica sends each notice: a lease is taken by compare-and-set.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use chrono::{DateTime, Utc};
use riposte_connectors::spec::find_action;
use riposte_connectors::{check_args, Connector, ConnectorError};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::audit::{AuditRecord, AuditSink, RecordKind};
use crate::clock::Clock;
use crate::event::Event;
use crate::state::{every, json_entries, open_bucket, StateError};

/// How notices are grouped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSettings {
    /// What makes two notices the same page: `playbook`, `workload`, `severity`, `source`,
    /// `title`, `namespace`, `labels.<key>`.
    pub by: Vec<String>,
    /// Wait after a group's first event before its first notice.
    pub wait: Duration,
    /// Least time between two notices of a group.
    pub interval: Duration,
    /// How long a group stays open after its last notice.
    pub repeat: Duration,
}

impl Default for GroupSettings {
    fn default() -> Self {
        GroupSettings {
            by: vec!["playbook".to_owned(), "workload".to_owned()],
            wait: Duration::from_secs(30),
            interval: Duration::from_secs(300),
            repeat: Duration::from_secs(4 * 3600),
        }
    }
}

/// The action that resolves what `action` opened, by the conventions of the connectors.
pub fn resolving_action(action: &str) -> Option<&'static str> {
    match action {
        "trigger" | "fire" => Some("resolve"),
        "create" => Some("close"),
        _ => None,
    }
}

/// The workload an event is about: a pod without its ReplicaSet and pod suffixes, else the
/// container's name, its image, or the host.
pub fn workload(e: &Event) -> String {
    let r = &e.resource;
    if let Some(p) = &r.pod {
        if let Some(name) = &p.name {
            return format!(
                "{}/{}",
                p.namespace.as_deref().unwrap_or("-"),
                pod_owner(name)
            );
        }
    }
    if let Some(c) = &r.container {
        if let Some(n) = c.name.as_ref().or(c.id.as_ref()) {
            return format!("container/{}", n.trim_start_matches('/'));
        }
    }
    if let Some(i) = r.image.as_ref().and_then(|i| i.r#ref.clone()) {
        return format!("image/{i}");
    }
    format!(
        "host/{}",
        r.host
            .as_ref()
            .and_then(|h| h.name.as_deref())
            .unwrap_or("-")
    )
}

/// `web-7f9c6d8b5-x2x7k` → `web`; `db-0` stays `db-0`.
fn pod_owner(name: &str) -> &str {
    let random = |s: &str, lens: &[usize]| {
        lens.contains(&s.len())
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
            && s.chars()
                .any(|c| c.is_ascii_digit() || "bcdfghjklmnpqrstvwxz".contains(c))
    };
    let mut out = name;
    if let Some((head, tail)) = out.rsplit_once('-') {
        if random(tail, &[5]) {
            out = head;
            if let Some((head, tail)) = out.rsplit_once('-') {
                if random(tail, &[8, 9, 10]) {
                    out = head;
                }
            }
        }
    }
    out
}

/// The group key of a notification: the `by` parts of the event and playbook, plus the action.
pub fn group_key(by: &[String], playbook: &str, action: &str, e: &Event) -> String {
    let mut h = Sha256::new();
    for part in by {
        let v = match part.as_str() {
            "playbook" => playbook.to_owned(),
            "workload" => workload(e),
            "severity" => e.severity.as_str().to_owned(),
            "source" => e.source.as_str().to_owned(),
            "title" => e.title.clone(),
            "namespace" => e
                .resource
                .pod
                .as_ref()
                .and_then(|p| p.namespace.clone())
                .unwrap_or_default(),
            other => other
                .strip_prefix("labels.")
                .and_then(|k| e.labels.get(k).cloned())
                .unwrap_or_default(),
        };
        h.update(part.as_bytes());
        h.update([0]);
        h.update(v.as_bytes());
        h.update([0]);
    }
    h.update(action.as_bytes());
    let d = h.finalize();
    format!("g-{}", hex::encode(d.get(..10).unwrap_or(&d)))
}

/// One group's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Group {
    /// Key.
    pub key: String,
    /// The playbook.
    pub playbook: String,
    /// Connector instance.
    pub instance: String,
    /// Action.
    pub action: String,
    /// The latest run's rendered arguments (with its notice).
    pub args: Map<String, Value>,
    /// Events in the group.
    pub events: u64,
    /// Events since the last notice.
    pub pending: u64,
    /// Notices sent.
    pub sent: u64,
    /// First event.
    pub first_seen: DateTime<Utc>,
    /// Latest event.
    pub last_seen: DateTime<Utc>,
    /// Last notice.
    pub last_sent: Option<DateTime<Utc>>,
    /// When the flusher looks at it next.
    pub next: DateTime<Utc>,
    /// The latest runs (at most 10).
    pub runs: Vec<String>,
    /// The latest event id.
    pub event_id: String,
    /// Whether the latest run asked to resolve the page.
    pub resolve: bool,
    /// Who is sending it, until when.
    #[serde(default)]
    pub lease: Option<(String, DateTime<Utc>)>,
    /// Transient failures of the notice being sent, in a row.
    #[serde(default)]
    pub failures: u32,
}

fn at(now: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    now + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

impl Group {
    /// A group with no event yet.
    pub fn new(
        key: &str,
        playbook: &str,
        instance: &str,
        action: &str,
        now: DateTime<Utc>,
        s: &GroupSettings,
    ) -> Group {
        Group {
            key: key.to_owned(),
            playbook: playbook.to_owned(),
            instance: instance.to_owned(),
            action: action.to_owned(),
            args: Map::new(),
            events: 0,
            pending: 0,
            sent: 0,
            first_seen: now,
            last_seen: now,
            last_sent: None,
            next: at(now, s.wait),
            runs: Vec::new(),
            event_id: String::new(),
            resolve: false,
            lease: None,
            failures: 0,
        }
    }

    /// Whether the group is over at `now`: sent, and no event since, for `repeat`.
    fn closed(&self, s: &GroupSettings, now: DateTime<Utc>) -> bool {
        self.pending == 0 && self.last_sent.is_some_and(|t| at(t, s.repeat) <= now)
    }

    /// Adds a run's notice.
    pub fn add(
        &mut self,
        args: Map<String, Value>,
        run: &str,
        event_id: &str,
        resolve: bool,
        s: &GroupSettings,
        now: DateTime<Utc>,
    ) {
        self.args = args;
        self.events += 1;
        if self.pending == 0 {
            // The first news since the last notice: an update is due after `interval`.
            self.next = self
                .last_sent
                .map_or(at(self.first_seen, s.wait), |t| at(t, s.interval))
                .max(now);
        }
        self.pending += 1;
        self.last_seen = now;
        self.event_id = event_id.to_owned();
        self.resolve = resolve;
        self.runs.push(run.to_owned());
        if self.runs.len() > 10 {
            self.runs.remove(0);
        }
    }

    /// The arguments of the notice to send now: the latest, with the group's figures and its
    /// key as the page's dedup key.
    pub fn notice_args(&self, spec: &riposte_connectors::ActionSpec) -> Map<String, Value> {
        let mut args = self.args.clone();
        let group = json!({
            "key": self.key,
            "events": self.events,
            "new_events": self.pending,
            "sent_before": self.sent,
            "first_seen": self.first_seen.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "last_seen": self.last_seen.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "runs": self.runs,
        });
        if let Some(param) = spec.message_param {
            if let Some(Value::Object(notice)) = args.get_mut(param) {
                notice.insert("group".into(), group);
            }
        }
        for key in ["dedup_key", "alias"] {
            if spec.params.iter().any(|p| p.name == key) && !args.contains_key(key) {
                args.insert(
                    key.to_owned(),
                    Value::String(format!("riposte:{}", self.key)),
                );
            }
        }
        args
    }
}

/// The groups bucket.
#[derive(Debug, Clone)]
pub struct Groups {
    kv: kv::Store,
    settings: GroupSettings,
}

/// How many times a compare-and-set is tried.
const TRIES: u32 = 64;
/// How many transient failures in a row a group's notice survives (a doubling delay from 2s,
/// at most 5 minutes, between them) before it is given up and audited as failed.
const SEND_TRIES: u32 = 8;

/// How a send went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    /// Delivered.
    Ok,
    /// Failed; trying again may help.
    Transient,
    /// Failed for good.
    Failed,
}

fn err(what: &str, e: impl std::fmt::Display) -> StateError {
    StateError(format!("groups: {what}: {e}"))
}

impl Groups {
    /// Opens (creating when missing) the bucket `<prefix>-groups`.
    pub async fn open(
        js: &jetstream::Context,
        prefix: &str,
        replicas: usize,
        settings: GroupSettings,
    ) -> Result<Groups, StateError> {
        let kv = open_bucket(js, &format!("{prefix}-groups"), Duration::ZERO, replicas).await?;
        Ok(Groups { kv, settings })
    }

    /// The settings.
    pub fn settings(&self) -> &GroupSettings {
        &self.settings
    }

    /// Adds a run's notice to its group (opening one when there is none or it is over).
    /// Returns the group as it now is.
    #[allow(clippy::too_many_arguments)]
    pub async fn defer(
        &self,
        key: &str,
        playbook: &str,
        instance: &str,
        action: &str,
        args: Map<String, Value>,
        run: &str,
        event_id: &str,
        resolve: bool,
        now: DateTime<Utc>,
    ) -> Result<Group, StateError> {
        for n in 0..TRIES {
            if n > 0 {
                tokio::time::sleep(Duration::from_micros(300 * u64::from(n.min(20)))).await;
            }
            let entry = self.kv.entry(key).await.map_err(|e| err("read", e))?;
            let (current, revision) = match &entry {
                Some(e) if e.operation == kv::Operation::Put => (
                    serde_json::from_slice::<Group>(&e.value).ok(),
                    Some(e.revision),
                ),
                Some(e) => (None, Some(e.revision)),
                None => (None, None),
            };
            let mut g = match current.filter(|g| !g.closed(&self.settings, now)) {
                Some(g) => g,
                None => Group::new(key, playbook, instance, action, now, &self.settings),
            };
            g.add(args.clone(), run, event_id, resolve, &self.settings, now);
            let value = serde_json::to_vec(&g).map_err(|e| err("encode", e))?;
            let stored = match revision {
                None => self.kv.create(key, value.into()).await.is_ok(),
                Some(r) => self.kv.update(key, value.into(), r).await.is_ok(),
            };
            if stored {
                return Ok(g);
            }
        }
        Err(StateError(format!("group `{key}`: too much contention")))
    }

    async fn list(&self) -> Result<Vec<(Group, u64)>, StateError> {
        json_entries(&self.kv).await
    }

    async fn replace(&self, g: &Group, revision: u64) -> Result<Option<u64>, StateError> {
        let value = serde_json::to_vec(g).map_err(|e| err("encode", e))?;
        Ok(self.kv.update(&g.key, value.into(), revision).await.ok())
    }
}

/// Sends due group notices.
#[derive(Debug, Clone)]
pub struct Flusher {
    /// The bucket.
    pub groups: Groups,
    /// Connector instances by name.
    pub connectors: Arc<HashMap<String, Arc<dyn Connector>>>,
    /// Where `notify` records go.
    pub audit: AuditSink,
    /// This replica.
    pub replica: String,
    /// Time.
    pub clock: Arc<dyn Clock>,
    /// Time limit of one send.
    pub timeout: Duration,
    /// How often the bucket is looked at.
    pub every: Duration,
}

impl Flusher {
    /// Runs until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        every(self.every, shutdown, "notification groups", || self.tick()).await;
    }

    /// Sends what is due now; closes groups that are over. Returns the notices sent.
    pub async fn tick(&self) -> Result<usize, StateError> {
        let now = self.clock.now();
        let s = self.groups.settings().clone();
        let mut sent = 0;
        for (mut g, rev) in self.groups.list().await? {
            if g.closed(&s, now) {
                let _ = self
                    .groups
                    .kv
                    .purge_expect_revision(&g.key, Some(rev))
                    .await;
                continue;
            }
            let free = g.lease.as_ref().is_none_or(|(_, until)| *until <= now);
            if g.next > now || !free || (g.pending == 0 && !g.resolve) {
                continue;
            }
            g.lease = Some((self.replica.clone(), at(now, self.timeout * 3)));
            let Some(rev) = self.groups.replace(&g, rev).await? else {
                continue;
            };
            if g.pending > 0 {
                let args = g.notice_args_for(&self.connectors);
                let last_try = g.failures + 1 >= SEND_TRIES;
                match self.send(&g, &g.action, args, "notice", last_try).await? {
                    Sent::Transient if !last_try => {
                        g.failures += 1;
                        let wait = Duration::from_secs(2u64.saturating_pow(g.failures).min(300));
                        g.next = at(now, wait);
                        g.lease = None;
                        let _ = self.groups.replace(&g, rev).await?;
                        continue;
                    }
                    Sent::Ok => sent += 1,
                    Sent::Transient | Sent::Failed => {}
                }
                g.failures = 0;
                g.sent += 1;
                g.pending = 0;
                g.last_sent = Some(now);
            }
            if g.resolve {
                if let Some(resolver) = resolving_action(&g.action) {
                    let args = g.resolve_args(&self.connectors, resolver);
                    self.send(&g, resolver, args, "resolve", true).await?;
                }
                let _ = self.groups.kv.purge(&g.key).await;
                continue;
            }
            g.next = at(now, s.repeat);
            g.lease = None;
            if self.groups.replace(&g, rev).await?.is_none() {
                // A run added to it meanwhile; its `add` set the next time. Release the lease
                // on the next tick (it expires).
                tracing::debug!(group = %g.key, "group changed while its notice was sent");
            }
        }
        Ok(sent)
    }

    async fn send(
        &self,
        g: &Group,
        action: &str,
        args: Option<Map<String, Value>>,
        what: &str,
        last_try: bool,
    ) -> Result<Sent, StateError> {
        let started = std::time::Instant::now();
        let connector = self.connectors.get(&g.instance);
        let result = match (connector, args) {
            (None, _) => Err(ConnectorError::Permanent(format!(
                "connector instance `{}` is not configured on this engine",
                g.instance
            ))),
            (Some(_), None) => Err(ConnectorError::Permanent(format!(
                "`{}.{action}` does not take these arguments",
                g.instance
            ))),
            (Some(c), Some(args)) => tokio::time::timeout(self.timeout, c.run(action, &args))
                .await
                .unwrap_or_else(|_| {
                    Err(ConnectorError::Transient(format!(
                        "timed out after {}",
                        humantime::format_duration(self.timeout)
                    )))
                }),
        };
        let now = self.clock.now();
        let mut rec = AuditRecord::new(RecordKind::Notify, "ok", now, &self.replica);
        rec.run_id = g.runs.last().cloned();
        rec.event_id = Some(g.event_id.clone());
        rec.playbook = Some(g.playbook.clone());
        rec.step = Some(format!("group:{what}"));
        rec.action = Some(format!("{}.{action}", g.instance));
        rec.duration_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
        rec.attempts = Some(g.failures + 1);
        let sent = match result {
            Ok(out) => {
                let mut o = out.output;
                if let Some(m) = o.as_object_mut() {
                    m.insert(
                        "group".into(),
                        json!({ "key": g.key, "events": g.events, "sent_before": g.sent }),
                    );
                }
                rec.output = Some(o);
                Sent::Ok
            }
            Err(e) => {
                let transient = e.is_retryable();
                rec.outcome = if transient && !last_try {
                    "retrying".to_owned()
                } else {
                    "failed".to_owned()
                };
                rec.reason = Some(e.to_string());
                if transient {
                    Sent::Transient
                } else {
                    Sent::Failed
                }
            }
        };
        let mut batch = self
            .audit
            .batch(format!("gr:{}:{}:{what}:{}", g.key, g.sent, g.failures));
        batch.add(rec);
        batch
            .commit()
            .await
            .map_err(|e| StateError(format!("audit: {e}")))?;
        Ok(sent)
    }
}

impl Group {
    fn notice_args_for(
        &self,
        connectors: &HashMap<String, Arc<dyn Connector>>,
    ) -> Option<Map<String, Value>> {
        let c = connectors.get(&self.instance)?;
        let spec = find_action(c.actions(), &self.action)?;
        let args = self.notice_args(spec);
        check_args(spec, &args).ok()?;
        Some(args)
    }

    fn resolve_args(
        &self,
        connectors: &HashMap<String, Arc<dyn Connector>>,
        resolver: &str,
    ) -> Option<Map<String, Value>> {
        let c = connectors.get(&self.instance)?;
        let spec = find_action(c.actions(), resolver)?;
        let full = self.notice_args(find_action(c.actions(), &self.action)?);
        // The resolving action takes what identifies the page (dedup key, alias, labels) and
        // whatever else of the notice's arguments it knows.
        let args: Map<String, Value> = full
            .into_iter()
            .filter(|(k, _)| spec.params.iter().any(|p| p.name == k))
            .collect();
        check_args(spec, &args).ok()?;
        Some(args)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn pods_group_by_their_owner() {
        assert_eq!(pod_owner("web-7f9c6d8b5-x2x7k"), "web");
        assert_eq!(pod_owner("web-x2x7k"), "web");
        assert_eq!(pod_owner("db-0"), "db-0");
        assert_eq!(pod_owner("kubecon"), "kubecon");
        assert_eq!(pod_owner("api-server"), "api-server");
    }

    fn group(now: DateTime<Utc>, s: &GroupSettings) -> Group {
        let mut g = Group::new("g", "p", "pd", "trigger", now, s);
        g.add(Map::new(), "r-0", "e-0", false, s, now);
        g
    }

    #[test]
    fn a_burst_waits_then_updates_come_at_most_every_interval() {
        let s = GroupSettings::default();
        let t0 = Utc::now();
        let mut g = group(t0, &s);
        for i in 1..50 {
            g.add(Map::new(), &format!("r-{i}"), "e", false, &s, t0);
        }
        assert_eq!((g.events, g.pending, g.next), (50, 50, at(t0, s.wait)));
        assert_eq!(g.runs.len(), 10);
        // The first notice goes out at t0 + wait.
        let sent_at = at(t0, s.wait);
        g.sent = 1;
        g.pending = 0;
        g.last_sent = Some(sent_at);
        g.next = at(sent_at, s.repeat);
        // A new event is an update due `interval` after that notice.
        let t1 = at(sent_at, Duration::from_secs(10));
        g.add(Map::new(), "r-50", "e", false, &s, t1);
        assert_eq!(g.next, at(sent_at, s.interval));
        // Once `repeat` has passed with nothing new, the group is over.
        g.pending = 0;
        assert!(g.closed(&s, at(sent_at, s.repeat)));
    }

    #[test]
    fn the_group_key_ignores_the_pod_suffix_and_separates_actions() {
        let e = |pod: &str| {
            let payload = json!({
                "rule": "R", "priority": "Critical", "output": "x", "time": "2026-01-01T00:00:00Z",
                "output_fields": {"k8s.ns.name": "shop", "k8s.pod.name": pod}
            });
            crate::formats::normalize(
                crate::event::Source::Falco,
                payload.to_string().as_bytes(),
                Utc::now(),
            )
            .unwrap()
            .remove(0)
        };
        let by = GroupSettings::default().by;
        let a = group_key(&by, "p", "pd.trigger", &e("web-7f9c6d8b5-x2x7k"));
        let b = group_key(&by, "p", "pd.trigger", &e("web-7f9c6d8b5-q8w4z"));
        let c = group_key(&by, "p", "slack.post", &e("web-7f9c6d8b5-q8w4z"));
        let d = group_key(&by, "p", "pd.trigger", &e("api-5c6d7f8b9-q8w4z"));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
    }
}
