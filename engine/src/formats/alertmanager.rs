//! Alertmanager webhook payloads (version 4): one [`Event`] per alert of the group.
//!
//! Captured payloads from before 2019 lack per-alert `status`, `fingerprint` and `generatorURL`:
//! all optional. A firing alert's `endsAt` is Go's zero time (`0001-01-01T00:00:00Z`), which is
//! not a date and is never used as one. Must not invent resources: a pod, node or host is named
//! only by the alert's own labels.
//!
//! | field | rule |
//! |---|---|
//! | id | the alert's `fingerprint`, else the payload hash with `#<index>` when the group has several alerts |
//! | kind | `alert` |
//! | severity | label `severity`, any case: critical, crit, page, emergency, alert, fatal → critical; error, high, major → high; warning, warn, medium, moderate → medium; low, minor, notice → low; info, information, none, debug → info; missing or unknown → medium |
//! | time | `startsAt` when valid RFC 3339 and not Go's zero time, else the received time (label `riposte.time` = `received`) |
//! | title | label `alertname` (`unnamed alert` without one) |
//! | summary | annotation `summary`, else `description`, else `message` (the alert's own, then the group's common annotations); the title when there is none |
//! | resource | pod {`pod` or `pod_name`, `namespace`}; node {`node`}; container {`container` or `container_name`, image from `image`}; image {`image`}; host {`instance` without its port} |
//! | labels | `groupLabels`, then `commonLabels`, then the alert's labels (later wins); `status` = the alert's status, else the group's; `ends_at` when the alert has really ended |

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::util::{self, Doc};
use super::FormatError;
use crate::event::{Container, Event, Host, Kind, Node, Pod, Severity, Source};

const FORMAT: Source = Source::Alertmanager;

/// Normalizes an Alertmanager webhook payload: one event per alert.
pub(super) fn normalize(
    payload: &[u8],
    received: DateTime<Utc>,
) -> Result<Vec<Event>, FormatError> {
    util::per_doc(payload, |doc| group(doc, received))
}

/// An object of scalars as a map of strings (other values left out).
fn strings(value: Option<&Value>) -> BTreeMap<String, String> {
    value
        .and_then(Value::as_object)
        .map(|map| {
            map.iter()
                .filter_map(|(k, v)| Some((k.clone(), util::scalar(v)?)))
                .collect()
        })
        .unwrap_or_default()
}

fn group(doc: &Doc<'_>, received: DateTime<Utc>) -> Result<Vec<Event>, FormatError> {
    let object = util::object(FORMAT, &doc.value, "an Alertmanager webhook payload")?;
    let alerts = match object.get("alerts") {
        Some(Value::Array(alerts)) => alerts,
        Some(other) => {
            return Err(util::wrong(
                FORMAT,
                format!("`alerts` must be an array, got {}", util::kind_of(other)),
            ))
        }
        None => return Err(util::wrong(FORMAT, "`alerts` is missing")),
    };
    let mut shared = strings(object.get("groupLabels"));
    shared.extend(strings(object.get("commonLabels")));
    let common_annotations = object.get("commonAnnotations").and_then(Value::as_object);
    let group_status = object.get("status").and_then(util::non_empty);

    let count = alerts.len();
    alerts
        .iter()
        .enumerate()
        .map(|(i, alert)| {
            let alert_object = alert.as_object().ok_or_else(|| {
                util::wrong(
                    FORMAT,
                    format!(
                        "`alerts[{i}]` must be an object, got {}",
                        util::kind_of(alert)
                    ),
                )
            })?;
            let mut labels = shared.clone();
            labels.extend(strings(alert_object.get("labels")));
            let id = match alert_object.get("fingerprint").and_then(util::non_empty) {
                Some(fingerprint) => fingerprint.to_string(),
                None => doc.nth_id(i, count),
            };
            Ok(event(
                alert,
                alert_object,
                labels,
                common_annotations,
                group_status,
                id,
                received,
            ))
        })
        .collect()
}

fn event(
    alert: &Value,
    object: &Map<String, Value>,
    mut labels: BTreeMap<String, String>,
    common_annotations: Option<&Map<String, Value>>,
    group_status: Option<&str>,
    id: String,
    received: DateTime<Utc>,
) -> Event {
    let mut event = util::blank(FORMAT, Kind::Alert, alert.clone());
    event.id = id;
    event.title = labels
        .get("alertname")
        .filter(|name| !name.is_empty())
        .cloned()
        .unwrap_or_else(|| "unnamed alert".to_string());
    let annotations = object.get("annotations").and_then(Value::as_object);
    event.summary = ["summary", "description", "message"]
        .iter()
        .find_map(|key| {
            [annotations, common_annotations]
                .into_iter()
                .flatten()
                .find_map(|map| map.get(*key).and_then(util::non_empty))
        })
        .map(str::to_string)
        .unwrap_or_else(|| event.title.clone());
    event.severity = labels
        .get("severity")
        .and_then(|word| util::severity_word(word))
        .unwrap_or(Severity::Medium);

    let starts = object
        .get("startsAt")
        .and_then(Value::as_str)
        .filter(|t| !util::is_zero_time(t))
        .and_then(util::rfc3339);
    event.time = util::settle_time(starts, received, &mut event.labels);

    let label = |keys: &[&str]| {
        keys.iter()
            .find_map(|key| labels.get(*key).filter(|v| !v.is_empty()).cloned())
    };
    let pod = Pod {
        name: label(&["pod", "pod_name"]),
        namespace: label(&["namespace"]),
        ..Pod::default()
    };
    if pod != Pod::default() {
        event.resource.pod = Some(pod);
    }
    if let Some(node) = label(&["node"]) {
        event.resource.node = Some(Node { name: Some(node) });
    }
    let image = label(&["image"]);
    let container = Container {
        name: label(&["container", "container_name"]),
        image: image.clone(),
        ..Container::default()
    };
    if container != Container::default() {
        event.resource.container = Some(container);
    }
    event.resource.image = image.as_deref().map(util::image_from_ref);
    if let Some(instance) = label(&["instance"]) {
        event.resource.host = Some(Host {
            name: Some(without_port(&instance).to_string()),
        });
    }

    let status = object
        .get("status")
        .and_then(util::non_empty)
        .or(group_status);
    if let Some(status) = status {
        labels.insert("status".to_string(), status.to_string());
    }
    if let Some(ends) = object
        .get("endsAt")
        .and_then(Value::as_str)
        .filter(|t| !util::is_zero_time(t))
        .and_then(util::rfc3339)
    {
        labels.insert("ends_at".to_string(), ends);
    }
    labels.extend(std::mem::take(&mut event.labels));
    event.labels = labels;
    event
}

/// `host:port` → `host` (`[v6]:port` → `v6`); anything else unchanged.
fn without_port(instance: &str) -> &str {
    match instance.rsplit_once(':') {
        Some((host, port))
            if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) && !host.is_empty() =>
        {
            if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
                v6
            } else if host.contains(':') {
                instance
            } else {
                host
            }
        }
        _ => instance,
    }
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
    fn instance_loses_its_port() {
        assert_eq!(without_port("10.0.0.1:9100"), "10.0.0.1");
        assert_eq!(without_port("[::1]:9100"), "::1");
        assert_eq!(without_port("fe80::1"), "fe80::1");
        assert_eq!(without_port("node-1"), "node-1");
        assert_eq!(without_port(":9100"), ":9100");
    }

    #[test]
    fn a_current_payload_maps_fingerprint_status_and_resources() {
        let payload = r#"{"version":"4","status":"firing","groupLabels":{"alertname":"KubePodCrashLooping"},
            "commonLabels":{"severity":"warning","namespace":"prod"},
            "alerts":[{"status":"resolved","fingerprint":"f1","labels":{"alertname":"KubePodCrashLooping","severity":"CRITICAL","pod":"web-1","container":"app","node":"n1","instance":"10.0.0.1:8080"},
              "annotations":{"description":"crash looping"},"startsAt":"0001-01-01T00:00:00Z","endsAt":"2024-01-01T00:10:00Z"}]}"#;
        let event = normalize(payload.as_bytes(), received()).unwrap().remove(0);
        assert_eq!(event.id, "f1");
        assert_eq!(event.severity, Severity::Critical);
        assert_eq!(event.summary, "crash looping");
        assert_eq!(event.labels["status"], "resolved");
        assert_eq!(event.labels["ends_at"], "2024-01-01T00:10:00Z");
        assert_eq!(event.labels[util::TIME_LABEL], "received");
        let pod = event.resource.pod.unwrap();
        assert_eq!(
            (pod.name.as_deref(), pod.namespace.as_deref()),
            (Some("web-1"), Some("prod"))
        );
        assert_eq!(
            event.resource.host.unwrap().name.as_deref(),
            Some("10.0.0.1")
        );
        assert_eq!(event.resource.node.unwrap().name.as_deref(), Some("n1"));
    }

    #[test]
    fn an_unknown_severity_is_medium() {
        let event = normalize(
            br#"{"alerts":[{"labels":{"severity":"purple"}}]}"#,
            received(),
        )
        .unwrap()
        .remove(0);
        assert_eq!(event.severity, Severity::Medium);
        assert_eq!(event.title, "unnamed alert");
        assert_eq!(event.summary, "unnamed alert");
    }

    #[test]
    fn rejects_payloads_without_alerts() {
        for (payload, reason) in [
            (r#"{"version":"4"}"#, "`alerts` is missing"),
            (r#"{"alerts":{}}"#, "`alerts` must be an array"),
            (r#"{"alerts":[1]}"#, "`alerts[0]` must be an object"),
            (
                r#"[{"labels":{}}]"#,
                "expected an Alertmanager webhook payload",
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
