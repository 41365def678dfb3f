//! Harbor webhooks, in the Default format (`type`, `occur_at`, `operator`, `event_data`) or the
//! CloudEvents 1.0 format (`specversion`, `type: harbor.*`, `data`): one [`Event`] per artifact
//! (resource) of the notification, or one when it names none (quota, replication).
//!
//! `scan_overview` is keyed by a report MIME type with spaces and a semicolon
//! (`application/vnd.security.vulnerability.report; version=1.1`): the key is matched, never
//! split. Its `summary` is `null` for failed or stopped scans. A tag may be absent or equal to the
//! digest. Harbor sends counts, not findings: events carry no findings, never made-up ones.
//!
//! | field | rule |
//! |---|---|
//! | id | CloudEvents `id`, else the payload hash; `#<index>` when the notification names several artifacts |
//! | data | the notification; when it names several artifacts, narrowed to this event's one (`resources` holds only it) |
//! | kind | `SCANNING_COMPLETED` / `harbor.scan.completed` → `vulnerability`; everything else (`PUSH_ARTIFACT`, `PULL_ARTIFACT`, `DELETE_ARTIFACT`, `SCANNING_FAILED`, `SCANNING_STOPPED`, quota, replication, retention) → `registry` |
//! | severity | scan completed: `scan_overview.*.severity` (Critical → critical, High → high, Medium → medium, Low → low, Negligible, Unknown, None, empty → info); scan failed and quota exceeded → low; everything else → info |
//! | time | Default: `occur_at` (epoch seconds); CloudEvents: `time` when valid RFC 3339; else the received time (label `riposte.time` = `received`) |
//! | title | scan completed `<N> vulnerabilities in <artifact>` (`1 vulnerability`, `no vulnerabilities`); `artifact pushed: <artifact>`, `artifact pulled: ...`, `artifact deleted: ...`, `scan failed: ...`, `scan stopped: ...`, `quota exceeded: <repository>`, `quota warning: ...`; `<type>: <artifact>` otherwise. artifact = `resource_url`, else the repository |
//! | summary | scan: scanner, status, totals, fixable and per-severity counts; others: the title and the operator |
//! | resource | image {ref: `resource_url`; repository: the registry host of `resource_url` + `repo_full_name`; tag unless it is a digest; digest} |
//! | labels | `harbor.event` (the type as sent), `operator`, `repository`, `project`; scans: `scan.status`, `scan.scanner`, `scan.total`, `scan.fixable`, `scan.<severity>` per severity (lower case) |

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::util::{self, Doc};
use super::FormatError;
use crate::event::{Event, Image, Kind, Severity, Source};

const FORMAT: Source = Source::Harbor;

/// Normalizes a Harbor webhook payload: one event per artifact it names.
pub(super) fn normalize(
    payload: &[u8],
    received: DateTime<Utc>,
) -> Result<Vec<Event>, FormatError> {
    util::per_doc(payload, |doc| notification(doc, received))
}

/// What the two wire formats have in common.
struct Envelope<'a> {
    event_type: &'a str,
    /// The Default format's name for the type.
    canonical: String,
    data: &'a Value,
    time: Option<String>,
    id: Option<&'a str>,
    operator: Option<&'a str>,
}

fn envelope<'a>(object: &'a Map<String, Value>) -> Result<Envelope<'a>, FormatError> {
    let operator = object.get("operator").and_then(util::non_empty);
    if object.contains_key("specversion") {
        let event_type = object
            .get("type")
            .and_then(util::non_empty)
            .ok_or_else(|| util::wrong(FORMAT, "CloudEvents `type` is missing"))?;
        if !event_type.starts_with("harbor.") {
            return Err(util::wrong(
                FORMAT,
                format!("CloudEvents `type` `{event_type}` is not a Harbor event (harbor.*)"),
            ));
        }
        let data = object
            .get("data")
            .filter(|data| data.is_object())
            .ok_or_else(|| util::wrong(FORMAT, "CloudEvents `data` object is missing"))?;
        return Ok(Envelope {
            event_type,
            canonical: canonical(event_type),
            data,
            time: object
                .get("time")
                .and_then(Value::as_str)
                .and_then(util::rfc3339),
            id: object.get("id").and_then(util::non_empty),
            operator,
        });
    }
    match (object.get("type"), object.get("event_data")) {
        (Some(Value::String(event_type)), Some(data)) if data.is_object() && !event_type.is_empty() => {
            Ok(Envelope {
                event_type,
                canonical: event_type.to_ascii_uppercase(),
                data,
                time: object
                    .get("occur_at")
                    .and_then(util::int)
                    .and_then(util::epoch_seconds),
                id: None,
                operator,
            })
        }
        (Some(_), Some(_)) => Err(util::wrong(
            FORMAT,
            "`type` must be a non-empty string and `event_data` an object",
        )),
        (None, _) if !object.contains_key("event_data") => Err(util::wrong(
            FORMAT,
            "neither a Default payload (`type`, `event_data`) nor a CloudEvents one (`specversion`)",
        )),
        (None, _) => Err(util::wrong(FORMAT, "`type` is missing")),
        (Some(_), None) => Err(util::wrong(FORMAT, "`event_data` is missing")),
    }
}

/// The Default format's name of a CloudEvents type.
fn canonical(event_type: &str) -> String {
    match event_type {
        "harbor.artifact.pushed" => "PUSH_ARTIFACT",
        "harbor.artifact.pulled" => "PULL_ARTIFACT",
        "harbor.artifact.deleted" => "DELETE_ARTIFACT",
        "harbor.scan.completed" => "SCANNING_COMPLETED",
        "harbor.scan.failed" => "SCANNING_FAILED",
        "harbor.scan.stopped" => "SCANNING_STOPPED",
        "harbor.quota.exceeded" => "QUOTA_EXCEED",
        "harbor.quota.warning" => "QUOTA_WARNING",
        "harbor.replication.status.changed" => "REPLICATION",
        "harbor.tag_retention.finished" => "TAG_RETENTION",
        other => return other.to_ascii_uppercase(),
    }
    .to_string()
}

fn notification(doc: &Doc<'_>, received: DateTime<Utc>) -> Result<Vec<Event>, FormatError> {
    let object = util::object(FORMAT, &doc.value, "a Harbor webhook payload")?;
    let envelope = envelope(object)?;
    let resources: Vec<&Value> = match envelope.data.get("resources") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(resources)) => resources.iter().collect(),
        Some(other) => {
            return Err(util::wrong(
                FORMAT,
                format!("`resources` must be an array, got {}", util::kind_of(other)),
            ))
        }
    };
    let count = resources.len().max(1);
    let targets: Vec<Option<&Value>> = if resources.is_empty() {
        vec![None]
    } else {
        resources.into_iter().map(Some).collect()
    };
    Ok(targets
        .into_iter()
        .enumerate()
        .map(|(i, resource)| {
            let id = match envelope.id {
                Some(id) => util::nth(id.to_string(), i, count),
                None => doc.nth_id(i, count),
            };
            event(doc, &envelope, resource, id, count, received)
        })
        .collect())
}

fn event(
    doc: &Doc<'_>,
    envelope: &Envelope<'_>,
    resource: Option<&Value>,
    id: String,
    count: usize,
    received: DateTime<Utc>,
) -> Event {
    let repository = util::str_at(envelope.data, &["repository", "repo_full_name"])
        .or_else(|| util::str_at(envelope.data, &["repository", "name"]));
    let image = resource.and_then(|resource| image(resource, repository));
    let artifact = image
        .as_ref()
        .and_then(|image| image.r#ref.clone().or_else(|| image.repository.clone()))
        .or_else(|| repository.map(str::to_string))
        .unwrap_or_else(|| "unknown artifact".to_string());
    let scan = resource.and_then(scan_report);

    let canonical = envelope.canonical.as_str();
    let kind = if canonical == "SCANNING_COMPLETED" {
        Kind::Vulnerability
    } else {
        Kind::Registry
    };
    let mut event = util::blank(FORMAT, kind, narrowed(&doc.value, resource, count));
    event.id = id;
    event.time = util::settle_time(envelope.time.clone(), received, &mut event.labels);
    event.resource.image = image;

    let total = scan.and_then(|scan| util::get(scan, &["summary", "total"]).and_then(util::int));
    event.severity = match canonical {
        "SCANNING_COMPLETED" => scan
            .and_then(|scan| util::str_at(scan, &["severity"]))
            .map_or(Severity::Info, util::scanner_severity),
        "SCANNING_FAILED" | "QUOTA_EXCEED" => Severity::Low,
        _ => Severity::Info,
    };
    let subject = match canonical {
        "QUOTA_EXCEED" | "QUOTA_WARNING" => repository.unwrap_or(&artifact),
        _ => &artifact,
    };
    event.title = match canonical {
        "SCANNING_COMPLETED" => match total.and_then(|n| usize::try_from(n).ok()) {
            Some(n) => format!(
                "{} in {artifact}",
                util::count_of(n, "vulnerability", "vulnerabilities")
            ),
            None => format!("scan completed: {artifact}"),
        },
        "PUSH_ARTIFACT" => format!("artifact pushed: {subject}"),
        "PULL_ARTIFACT" => format!("artifact pulled: {subject}"),
        "DELETE_ARTIFACT" => format!("artifact deleted: {subject}"),
        "SCANNING_FAILED" => format!("scan failed: {subject}"),
        "SCANNING_STOPPED" => format!("scan stopped: {subject}"),
        "QUOTA_EXCEED" => format!("quota exceeded: {subject}"),
        "QUOTA_WARNING" => format!("quota warning: {subject}"),
        _ => format!("{}: {subject}", envelope.event_type),
    };

    let mut labels: Vec<(String, String)> = Vec::new();
    labels.push(("harbor.event".into(), envelope.event_type.to_string()));
    if let Some(operator) = envelope.operator {
        labels.push(("operator".into(), operator.to_string()));
    }
    if let Some(repository) = repository {
        labels.push(("repository".into(), repository.to_string()));
    }
    if let Some(project) = util::str_at(envelope.data, &["repository", "namespace"]) {
        labels.push(("project".into(), project.to_string()));
    }
    let mut summary = event.title.clone();
    if let Some(scan) = scan {
        let status = util::str_at(scan, &["scan_status"]);
        let scanner = [
            util::str_at(scan, &["scanner", "name"]),
            util::str_at(scan, &["scanner", "version"]),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ");
        let fixable = util::get(scan, &["summary", "fixable"]).and_then(util::int);
        let per_severity: Vec<(String, String)> = util::get(scan, &["summary", "summary"])
            .and_then(Value::as_object)
            .map(|map| {
                map.iter()
                    .filter_map(|(k, v)| Some((k.clone(), util::scalar(v)?)))
                    .collect()
            })
            .unwrap_or_default();
        let mut parts = Vec::new();
        if let Some(status) = status {
            parts.push(format!("status {status}"));
            labels.push(("scan.status".into(), status.to_string()));
        }
        if !scanner.is_empty() {
            parts.push(format!("scanner {scanner}"));
            labels.push(("scan.scanner".into(), scanner));
        }
        if let Some(total) = total {
            labels.push(("scan.total".into(), total.to_string()));
        }
        if let Some(fixable) = fixable {
            parts.push(format!("{fixable} fixable"));
            labels.push(("scan.fixable".into(), fixable.to_string()));
        }
        if let Some(severity) = util::str_at(scan, &["severity"]) {
            parts.push(format!("highest severity {severity}"));
        }
        if !per_severity.is_empty() {
            let counts: Vec<String> = per_severity
                .iter()
                .map(|(k, v)| format!("{v} {k}"))
                .collect();
            parts.push(counts.join(", "));
        }
        for (severity, n) in per_severity {
            labels.push((format!("scan.{}", severity.to_ascii_lowercase()), n));
        }
        if !parts.is_empty() {
            summary = format!("{summary} ({})", parts.join("; "));
        }
    }
    if let Some(operator) = envelope.operator {
        summary = format!("{summary}, by {operator}");
    }
    event.summary = summary;
    event.labels.extend(labels);
    event
}

/// The notification as the event's data: untouched when it names one artifact; narrowed to
/// `resource` (the other artifacts left out of `resources`) when it names several, so that each
/// event carries its own part without copying the whole notification once per artifact.
fn narrowed(payload: &Value, resource: Option<&Value>, count: usize) -> Value {
    let (Some(resource), Some(object), true) = (resource, payload.as_object(), count > 1) else {
        return payload.clone();
    };
    let narrow = |data: &Value| -> Value {
        match data.as_object() {
            Some(data) => Value::Object(
                data.iter()
                    .map(|(k, v)| {
                        let v = if k == "resources" {
                            Value::Array(vec![resource.clone()])
                        } else {
                            v.clone()
                        };
                        (k.clone(), v)
                    })
                    .collect(),
            ),
            None => data.clone(),
        }
    };
    Value::Object(
        object
            .iter()
            .map(|(k, v)| {
                let v = if k == "event_data" || k == "data" {
                    narrow(v)
                } else {
                    v.clone()
                };
                (k.clone(), v)
            })
            .collect(),
    )
}

/// The image an artifact of the notification names.
fn image(resource: &Value, repository: Option<&str>) -> Option<Image> {
    let url = util::str_at(resource, &["resource_url"]);
    let digest = util::str_at(resource, &["digest"]).map(str::to_string);
    let tag = util::str_at(resource, &["tag"])
        .filter(|tag| !tag.starts_with("sha256:") && Some(*tag) != digest.as_deref())
        .map(str::to_string);
    let registry = url
        .and_then(|url| url.split_once('/'))
        .map(|(host, _)| host)
        .filter(|host| host.contains('.') || host.contains(':') || *host == "localhost");
    let repository = match (registry, repository) {
        (Some(registry), Some(repository)) => Some(format!("{registry}/{repository}")),
        (None, Some(repository)) => Some(repository.to_string()),
        (_, None) => url.and_then(|url| util::image_from_ref(url).repository),
    };
    let reference = url.map(str::to_string).or_else(|| {
        let mut reference = repository.clone()?;
        if let Some(tag) = &tag {
            reference = format!("{reference}:{tag}");
        }
        if let Some(digest) = &digest {
            reference = format!("{reference}@{digest}");
        }
        Some(reference)
    });
    let image = Image {
        r#ref: reference,
        repository,
        tag,
        digest,
    };
    (image != Image::default()).then_some(image)
}

/// The vulnerability report of an artifact's `scan_overview` (keyed by a report MIME type).
fn scan_report(resource: &Value) -> Option<&Value> {
    let overview = resource.get("scan_overview")?.as_object()?;
    overview
        .iter()
        .find(|(mime, _)| mime.contains("vulnerability"))
        .or_else(|| overview.iter().next())
        .map(|(_, report)| report)
        .filter(|report| report.is_object())
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )]

    use super::*;

    use crate::formats::util::test_received as received;

    #[test]
    fn several_artifacts_give_several_events() {
        let payload = r#"{"type":"PUSH_ARTIFACT","occur_at":1,"event_data":{"resources":[
            {"tag":"1.0","resource_url":"reg.example:8443/p/app:1.0"},{"tag":"latest","digest":"sha256:aa"}],
            "repository":{"repo_full_name":"p/app","namespace":"p"}}}"#;
        let events = normalize(payload.as_bytes(), received()).unwrap();
        assert_eq!(events.len(), 2);
        assert!(events[0].id.ends_with("#0"));
        assert_eq!(events[0].time, "1970-01-01T00:00:01Z");
        let first = events[0].resource.image.as_ref().unwrap();
        assert_eq!(first.repository.as_deref(), Some("reg.example:8443/p/app"));
        let second = events[1].resource.image.as_ref().unwrap();
        assert_eq!(second.r#ref.as_deref(), Some("p/app:latest@sha256:aa"));
        assert_eq!(events[1].title, "artifact pushed: p/app:latest@sha256:aa");
        let resources = events[1].data["event_data"]["resources"]
            .as_array()
            .unwrap();
        assert_eq!(resources.len(), 1);
        assert_eq!(resources[0]["tag"], "latest");
        assert_eq!(events[1].data["event_data"]["repository"]["namespace"], "p");
    }

    #[test]
    fn a_quota_event_without_artifacts_is_one_event() {
        let payload = r#"{"specversion":"1.0","id":"q1","source":"/projects/1","type":"harbor.quota.exceeded",
            "data":{"repository":{"repo_full_name":"p/app"}}}"#;
        let events = normalize(payload.as_bytes(), received()).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].id, "q1");
        assert_eq!(events[0].kind, Kind::Registry);
        assert_eq!(events[0].severity, Severity::Low);
        assert_eq!(events[0].title, "quota exceeded: p/app");
        assert_eq!(events[0].labels[util::TIME_LABEL], "received");
    }

    #[test]
    fn rejects_what_is_not_a_harbor_webhook() {
        for (payload, reason) in [
            (
                r#"{"specversion":"1.0","type":"com.example.x","data":{}}"#,
                "not a Harbor event",
            ),
            (
                r#"{"specversion":"1.0","type":"harbor.scan.completed"}"#,
                "`data` object is missing",
            ),
            (r#"{"type":"PUSH_ARTIFACT"}"#, "`event_data` is missing"),
            (r#"{"event_data":{}}"#, "`type` is missing"),
            (
                r#"{"Type":"container","Action":"start"}"#,
                "neither a Default payload",
            ),
            (
                r#"{"type":"PUSH_ARTIFACT","event_data":{"resources":{}}}"#,
                "`resources` must be an array",
            ),
        ] {
            match normalize(payload.as_bytes(), received()) {
                Err(FormatError::WrongShape { reason: got, .. }) => {
                    assert!(got.contains(reason), "{got}")
                }
                other => panic!("{payload}: {other:?}"),
            }
        }
    }
}
