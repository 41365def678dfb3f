//! Folding audit records into a [`Report`] while they are read: one message at a time, with
//! every table capped, so a period of tens of thousands of records costs memory in proportion
//! to its images, revocations and remediations only.
//!
//! A remediation is a run on a scanner event that matched, a run that revoked an image, or a
//! run with a `registry` step. The records of one bus message (the event, its runs and their
//! steps) share one audit message, so the event is known when its runs are read; a
//! `revocation` record arrives just before its run's message, and later steps of a run resumed
//! after an approval join the run already kept.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use riposte_connectors::revocation::{Revocation, State};
use serde_json::Value;

use super::{
    Attempt, Blocked, BlockedImage, ChangeRow, EventRef, ImageScans, ListState, Remediation,
    Report, Revocations, Scans, StepRow,
};
use crate::audit::{AuditRecord, RecordKind};
use crate::images::check::entry_name;

/// Images kept in the per-image tables; more are counted in the totals only.
const MAX_IMAGES: usize = 10_000;
/// Remediations kept with their evidence; more are counted.
const MAX_REMEDIATIONS: usize = 10_000;
/// Steps kept per remediation.
const MAX_STEPS: usize = 100;
/// Revocation changes kept; more are counted.
const MAX_CHANGES: usize = 10_000;
/// Blocked attempts kept per image (the latest).
const SAMPLES: usize = 10;
/// Scanner events remembered to link their runs.
const MAX_EVENTS: usize = 100_000;
/// Longest summary of a step's output.
const SUMMARY: usize = 240;
/// Folds audit messages into a report, one message at a time.
#[derive(Debug, Default)]
pub struct Aggregate {
    records: u64,
    scans: u64,
    images_omitted: u64,
    findings: BTreeMap<String, u64>,
    images: HashMap<String, ImageScans>,
    changes: Vec<ChangeRow>,
    changes_omitted: u64,
    revoked: HashSet<String>,
    reinstated: HashSet<String>,
    revoking_runs: HashMap<String, Vec<String>>,
    blocked: Blocked,
    blocked_images: HashMap<String, BlockedImage>,
    events: HashMap<String, EventRef>,
    runs: HashMap<String, usize>,
    remediations: Vec<Remediation>,
    remediations_omitted: u64,
    omitted_runs: HashSet<String>,
}

impl Aggregate {
    /// Adds the records of one audit message (a message holds an event's records together, so
    /// a run is linked to its event whatever their order in it).
    pub fn add_message(&mut self, records: Vec<AuditRecord>) {
        self.records += records.len() as u64;
        for r in &records {
            if r.record == RecordKind::Event {
                self.scan(r);
            }
        }
        for r in records {
            match r.record {
                RecordKind::Revocation => self.revocation(&r),
                RecordKind::Enforcement => self.enforcement(&r),
                RecordKind::Step | RecordKind::Run => self.run_record(r),
                _ => {}
            }
        }
    }

    fn scan(&mut self, r: &AuditRecord) {
        let Some(e) = &r.event else { return };
        let (Some(image), Some(findings)) = (&e.image, &e.findings) else {
            return;
        };
        self.scans += 1;
        for (sev, n) in findings {
            *self.findings.entry(sev.clone()).or_default() += *n as u64;
        }
        if r.outcome == "matched" && self.events.len() < MAX_EVENTS {
            if let Some(id) = &r.event_id {
                self.events.insert(
                    id.clone(),
                    EventRef {
                        id: id.clone(),
                        source: e.source.clone(),
                        title: e.title.clone(),
                        time: r.time.clone(),
                        image: Some(image.clone()),
                        findings: Some(findings.clone()),
                    },
                );
            }
        }
        if !self.images.contains_key(image) && self.images.len() >= MAX_IMAGES {
            self.images_omitted += 1;
            return;
        }
        let row = self
            .images
            .entry(image.clone())
            .or_insert_with(|| ImageScans {
                image: image.clone(),
                first: r.time.clone(),
                ..ImageScans::default()
            });
        row.scans += 1;
        row.last.clone_from(&r.time);
        if e.digest.is_some() {
            row.digest.clone_from(&e.digest);
        }
        row.latest.clear();
        for (sev, n) in findings {
            *row.findings.entry(sev.clone()).or_default() += *n as u64;
            row.latest.insert(sev.clone(), *n as u64);
        }
    }

    fn revocation(&mut self, r: &AuditRecord) {
        let Some(entry) = r
            .output
            .clone()
            .and_then(|o| serde_json::from_value::<Revocation>(o).ok())
        else {
            return;
        };
        let image = entry_name(&entry);
        let key = entry.key().unwrap_or_else(|| image.clone());
        let reinstated = r.outcome == "reinstated";
        if reinstated {
            self.reinstated.insert(key);
        } else {
            self.revoked.insert(key);
            if let Some(run) = &r.run_id {
                let images = self.revoking_runs.entry(run.clone()).or_default();
                if !images.contains(&image) {
                    images.push(image.clone());
                }
                if let Some(&i) = self.runs.get(run) {
                    if let Some(rem) = self.remediations.get_mut(i) {
                        if !rem.revoked.contains(&image) {
                            rem.revoked.push(image.clone());
                        }
                    }
                }
            }
        }
        if self.changes.len() >= MAX_CHANGES {
            self.changes_omitted += 1;
            return;
        }
        let by = match (&entry.reinstated, reinstated) {
            (Some(d), true) => d.by.clone(),
            _ => entry.revoked.by.clone(),
        };
        self.changes.push(ChangeRow {
            time: r.time.clone(),
            change: r.outcome.clone(),
            image,
            reason: r.reason.clone().unwrap_or_else(|| entry.reason.clone()),
            findings: entry.findings.clone(),
            by,
            playbook: entry.playbook.clone(),
            run_id: entry.run_id.clone(),
            event_id: entry.event_id.clone(),
            replica: r.replica.clone(),
        });
    }

    fn enforcement(&mut self, r: &AuditRecord) {
        if r.outcome != "denied" {
            return;
        }
        let point = r.action.clone().unwrap_or_else(|| "unknown".to_owned());
        let text = |k: &str| {
            r.output
                .as_ref()
                .and_then(|o| o.get(k))
                .and_then(|v| match v {
                    Value::String(s) => Some(s.clone()),
                    Value::Null => None,
                    other => Some(other.to_string()),
                })
        };
        let image = text("image").unwrap_or_else(|| "-".to_owned());
        self.blocked.total += 1;
        match point.as_str() {
            "admission" => self.blocked.admission += 1,
            "authz" => self.blocked.authz += 1,
            _ => {}
        }
        if !self.blocked_images.contains_key(&image) && self.blocked_images.len() >= MAX_IMAGES {
            return;
        }
        let row = self
            .blocked_images
            .entry(image.clone())
            .or_insert_with(|| BlockedImage {
                image,
                first: r.time.clone(),
                ..BlockedImage::default()
            });
        row.total += 1;
        match point.as_str() {
            "admission" => row.admission += 1,
            "authz" => row.authz += 1,
            _ => {}
        }
        row.last.clone_from(&r.time);
        if row.attempts.len() >= SAMPLES {
            row.attempts.pop_front();
        }
        row.attempts.push_back(Attempt {
            time: r.time.clone(),
            point,
            object: text("object"),
            user: text("user"),
            reason: r.reason.clone(),
        });
    }

    fn run_record(&mut self, r: AuditRecord) {
        let Some(run) = r.run_id.clone() else { return };
        let index = match self.runs.get(&run) {
            Some(&i) => i,
            None => {
                let event = r
                    .event_id
                    .as_ref()
                    .and_then(|e| self.events.get(e))
                    .cloned();
                let registry = r
                    .action
                    .as_deref()
                    .is_some_and(|a| a.starts_with("registry."));
                let revoked = self.revoking_runs.get(&run).cloned();
                if event.is_none() && revoked.is_none() && !registry {
                    return;
                }
                if self.remediations.len() >= MAX_REMEDIATIONS {
                    if self.omitted_runs.len() < MAX_EVENTS && self.omitted_runs.insert(run) {
                        self.remediations_omitted += 1;
                    }
                    return;
                }
                self.remediations.push(Remediation {
                    run_id: run.clone(),
                    playbook: r.playbook.clone(),
                    time: r.time.clone(),
                    outcome: "unknown".to_owned(),
                    dry_run: r.dry_run,
                    event,
                    revoked: revoked.unwrap_or_default(),
                    steps: Vec::new(),
                });
                let i = self.remediations.len() - 1;
                self.runs.insert(run, i);
                i
            }
        };
        let Some(rem) = self.remediations.get_mut(index) else {
            return;
        };
        rem.dry_run |= r.dry_run;
        if r.time < rem.time {
            rem.time.clone_from(&r.time);
        }
        if r.record == RecordKind::Run {
            rem.outcome = r.outcome;
            return;
        }
        if let Some(s) = rem
            .steps
            .iter_mut()
            .find(|s| s.step == r.step && s.outcome == "awaiting_approval")
        {
            // The decision came: the waiting step's row becomes its result.
            *s = step_row(r);
        } else if rem.steps.len() < MAX_STEPS {
            rem.steps.push(step_row(r));
        }
    }

    /// The report, with the list as it is now.
    pub fn finish(
        self,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
        list: Vec<Revocation>,
    ) -> Report {
        let mut images: Vec<ImageScans> = self.images.into_values().collect();
        images.sort_by(|a, b| {
            weight(&b.latest)
                .cmp(&weight(&a.latest))
                .then_with(|| a.image.cmp(&b.image))
        });
        let mut by_image: Vec<BlockedImage> = self.blocked_images.into_values().collect();
        by_image.sort_by(|a, b| b.total.cmp(&a.total).then_with(|| a.image.cmp(&b.image)));
        let mut remediations = self.remediations;
        remediations.sort_by(|a, b| a.time.cmp(&b.time));
        let ts = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        Report {
            report: "compliance",
            generated: ts(Utc::now()),
            since: ts(since),
            until: ts(until),
            records: self.records,
            scans: Scans {
                images: images.len(),
                scans: self.scans,
                images_omitted: self.images_omitted,
            },
            findings: self.findings,
            images,
            revocations: Revocations {
                revoked: self.revoked.len(),
                reinstated: self.reinstated.len(),
                changes: self.changes,
                omitted: self.changes_omitted,
            },
            blocked: Blocked {
                by_image,
                ..self.blocked
            },
            remediations,
            remediations_omitted: self.remediations_omitted,
            revocation_list: ListState {
                revoked: list.iter().filter(|e| e.state == State::Revoked).count(),
                reinstated: list.iter().filter(|e| e.state == State::Reinstated).count(),
                entries: list,
            },
        }
    }
}

fn step_row(r: AuditRecord) -> StepRow {
    StepRow {
        summary: r.output.as_ref().map(summarize).unwrap_or_default(),
        time: r.time,
        step: r.step,
        action: r.action,
        outcome: r.outcome,
        reason: r.reason,
    }
}

/// The severities in order, most severe first; others after them.
pub const SEVERITIES: [&str; 5] = ["critical", "high", "medium", "low", "info"];

/// The severities present in `counts`, in order.
pub fn severities(counts: &BTreeMap<String, u64>) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = SEVERITIES
        .iter()
        .map(|s| ((*s).to_owned(), counts.get(*s).copied().unwrap_or(0)))
        .collect();
    out.extend(
        counts
            .iter()
            .filter(|(k, _)| !SEVERITIES.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), *v)),
    );
    out
}

fn weight(counts: &BTreeMap<String, u64>) -> [u64; 5] {
    SEVERITIES.map(|s| counts.get(s).copied().unwrap_or(0))
}

/// What a step's output says, in a line: its message or plan, the revocation entry it
/// made, else its JSON cut short.
pub fn summarize(output: &Value) -> String {
    let s = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
    let text = if let Some(m) = s(output.get("message")).or_else(|| s(output.get("plan"))) {
        m
    } else if let Some(entry) = output.get("entry") {
        let name = s(entry.get("reference"))
            .or_else(|| s(entry.get("digest")))
            .unwrap_or_default();
        let state = s(entry.get("state")).unwrap_or_default();
        let already = output.get("already") == Some(&Value::Bool(true));
        let mut t = format!("{name}: {state}{}", if already { " (already)" } else { "" });
        match output.get("registry") {
            Some(reg) if reg.get("message").is_some_and(Value::is_string) => {
                t.push_str(&format!("; {}", s(reg.get("message")).unwrap_or_default()));
            }
            Some(reg) if !reg.is_null() => t.push_str(&format!("; registry: {reg}")),
            _ => {}
        }
        t
    } else {
        output.to_string()
    };
    cut(&text, SUMMARY)
}

/// `text` cut to `max` characters (with an ellipsis).
pub fn cut(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::indexing_slicing)]

    use serde_json::json;

    use super::*;

    fn rec(kind: RecordKind, outcome: &str, run: Option<&str>, time: &str) -> AuditRecord {
        let mut r = AuditRecord::new(kind, outcome, Utc::now(), "r1");
        r.time = time.to_owned();
        r.run_id = run.map(str::to_owned);
        r.event_id = Some("ev-1".into());
        r.playbook = Some("revoke".into());
        r
    }

    fn scan(outcome: &str, image: &str, counts: &[(&str, usize)]) -> AuditRecord {
        let mut r = rec(RecordKind::Event, outcome, None, "2026-01-01T00:00:00Z");
        r.event = Some(crate::audit::EventSummary {
            subject: "riposte.in.trivy".into(),
            stream_seq: None,
            format: None,
            source: Some("trivy".into()),
            kind: Some("vulnerability".into()),
            severity: None,
            title: Some(format!("findings in {image}")),
            bytes: 1,
            image: Some(image.into()),
            digest: None,
            findings: Some(counts.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()),
        });
        r
    }

    fn step(run: &str, id: &str, action: &str, outcome: &str, time: &str) -> AuditRecord {
        let mut r = rec(RecordKind::Step, outcome, Some(run), time);
        r.step = Some(id.into());
        r.action = Some(action.into());
        r
    }

    #[test]
    fn a_run_is_linked_to_its_scan_whatever_the_order_and_later_steps_join_it() {
        let mut agg = Aggregate::default();
        let entry = json!({"reference": "docker.io/library/app:1", "state": "revoked",
            "reason": "CVE-1", "findings": ["CVE-1"], "run_id": "r-1",
            "revoked": {"by": "riposte", "at": "2026-01-01T00:00:01Z"}});
        let mut revoked = rec(
            RecordKind::Revocation,
            "revoked",
            Some("r-1"),
            "2026-01-01T00:00:01Z",
        );
        revoked.output = Some(entry);
        agg.add_message(vec![revoked]);
        let mut unrelated = step("r-9", "log", "log.info", "ok", "2026-01-01T00:00:03Z");
        unrelated.event_id = Some("ev-9".into());
        agg.add_message(vec![
            step(
                "r-1",
                "ask",
                "slack.post",
                "awaiting_approval",
                "2026-01-01T00:00:02Z",
            ),
            step(
                "r-1",
                "revoke",
                "registry.revoke",
                "ok",
                "2026-01-01T00:00:01Z",
            ),
            scan(
                "matched",
                "docker.io/library/app:1",
                &[("critical", 2), ("low", 1)],
            ),
            scan("no_match", "docker.io/library/other:1", &[("low", 3)]),
            unrelated,
        ]);
        agg.add_message(vec![step(
            "r-1",
            "ask",
            "slack.post",
            "ok",
            "2026-01-01T00:10:00Z",
        )]);
        let report = agg.finish(Utc::now(), Utc::now(), Vec::new());
        assert_eq!(report.scans.scans, 2);
        assert_eq!(report.scans.images, 2);
        assert_eq!(report.findings.get("low"), Some(&4));
        assert_eq!(
            report.images.first().map(|i| i.image.as_str()),
            Some("docker.io/library/app:1")
        );
        assert_eq!(report.revocations.revoked, 1);
        // Only the run on the scan (and the revocation) is a remediation, not r-9.
        assert_eq!(report.remediations.len(), 1);
        let rem = &report.remediations[0];
        assert_eq!(rem.revoked, ["docker.io/library/app:1"]);
        assert_eq!(rem.event.as_ref().map(|e| e.id.as_str()), Some("ev-1"));
        let outcomes: Vec<&str> = rem.steps.iter().map(|s| s.outcome.as_str()).collect();
        assert_eq!(outcomes, ["ok", "ok"]);
        assert_eq!(rem.time, "2026-01-01T00:00:01Z");
    }

    #[test]
    fn blocked_attempts_keep_counts_and_only_the_latest_samples() {
        let mut agg = Aggregate::default();
        for i in 0..25 {
            let mut r = rec(RecordKind::Enforcement, "denied", None, &format!("t{i:02}"));
            r.action = Some(if i % 5 == 0 { "authz" } else { "admission" }.into());
            r.output = Some(json!({"image": "app:1", "object": format!("pod p{i}"), "user": null}));
            agg.add_message(vec![r]);
        }
        let report = agg.finish(Utc::now(), Utc::now(), Vec::new());
        assert_eq!(
            (
                report.blocked.total,
                report.blocked.admission,
                report.blocked.authz
            ),
            (25, 20, 5)
        );
        let b = &report.blocked.by_image[0];
        assert_eq!(b.attempts.len(), SAMPLES);
        assert_eq!(
            b.attempts.back().and_then(|a| a.object.as_deref()),
            Some("pod p24")
        );
        assert_eq!(b.attempts.back().and_then(|a| a.user.as_deref()), None);
        assert_eq!((b.first.as_str(), b.last.as_str()), ("t00", "t24"));
    }

    #[test]
    fn summaries_name_the_revoked_image_and_stay_short() {
        let out = json!({"entry": {"reference": "a/b:1", "state": "revoked"}, "already": true,
            "registry": {"message": "moved to quarantine/b"}});
        assert_eq!(
            summarize(&out),
            "a/b:1: revoked (already); moved to quarantine/b"
        );
        let long = json!({"x": "é".repeat(1000)});
        assert_eq!(summarize(&long).chars().count(), SUMMARY + 1);
    }
}
