//! Falco alerts (`json_output: true`), straight from Falco or re-sent by Falcosidekick: one
//! [`Event`] per alert.
//!
//! Reads one alert, a concatenated stream, or JSON Lines where Falco's plain-text log lines are
//! skipped. Top-level keys match case-insensitively (`Rule` as well as `rule`), as Go decoders
//! do. `output_fields` stays flat: dotted and bracketed keys (`k8s.ns.name`, `proc.aname[2]`)
//! are never expanded, `null` and `<NA>` values count as unknown, and integers are read as
//! integers (`evt.time` has 19 digits: no float ever touches it). Must never turn Falco's own
//! health events (metrics snapshots, syscall event drops) into security alerts.
//!
//! | field | rule |
//! |---|---|
//! | id | `uuid` (added by Falcosidekick), else the payload hash |
//! | kind | `internal` for source `internal` or a rule starting with `Falco internal:`; `audit` for sources `k8s_audit`, `gcp_auditlog`, `cloudtrail`, `okta`, `github` or any containing `audit`; else `runtime` (source missing = `syscall`, Falcosidekick's `syscalls` included) |
//! | severity | priority, any case: Emergency, Alert, Critical → critical; Error → high; Warning → medium; Notice → low; Informational, Info, Debug → info. Internal events are always info. An unknown priority is rejected. |
//! | time | `time` when valid RFC 3339 (kept as written); else `output_fields["evt.time"]` when it is nanoseconds since the epoch (19 digits); else the received time and label `riposte.time` = `received` |
//! | title | the rule |
//! | summary | `output` without its `HH:MM:SS.nnnnnnnnn: Priority ` (or ISO time) prefix; the rule when there is no output |
//! | resource | container {`container.id` unless `host`, `container.name`, image}; image {`container.image.repository`, `.tag`, `.digest`, or `container.image`}; pod {`k8s.pod.name`, `k8s.ns.name`, `k8s.pod.uid`; for k8s audit sources `ka.target.name`/`ka.target.namespace` when `ka.target.resource` is `pods`}; node {`k8s.node.name`}; host {`hostname`, else `evt.hostname`}; process {`proc.pid`, `proc.name`, `proc.cmdline`, `user.name`} |
//! | labels | `falco.source`, `falco.priority` (as sent), `tags` (sorted, comma-joined) and `tag:<name>` = `true` for each tag |

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::util::{self, Doc};
use super::FormatError;
use crate::event::{Container, Event, Host, Image, Kind, Node, Pod, Process, Severity, Source};

const FORMAT: Source = Source::Falco;

/// Normalizes a Falco payload: one event per alert.
pub(super) fn normalize(
    payload: &[u8],
    received: DateTime<Utc>,
) -> Result<Vec<Event>, FormatError> {
    let docs = util::json_docs(payload)?;
    let count = docs.len();
    docs.into_iter()
        .enumerate()
        .map(|(i, doc)| alert(doc, received).map_err(|e| util::at_doc(i, count, e)))
        .collect()
}

fn alert(doc: Doc<'_>, received: DateTime<Utc>) -> Result<Event, FormatError> {
    let object = util::object(FORMAT, &doc.value, "a Falco alert")?;
    let rule = required_string(object, "rule")?;
    let priority_text = required_string(object, "priority")?;
    let priority = priority(priority_text).ok_or_else(|| {
        util::wrong(
            FORMAT,
            format!("`priority` `{priority_text}` is not a Falco priority (Emergency, Alert, Critical, Error, Warning, Notice, Informational, Debug)"),
        )
    })?;
    let fields = match util::get_ci(object, "output_fields") {
        None | Some(Value::Null) => None,
        Some(Value::Object(fields)) => Some(fields),
        Some(other) => {
            return Err(util::wrong(
                FORMAT,
                format!(
                    "`output_fields` must be an object, got {}",
                    util::kind_of(other)
                ),
            ))
        }
    };
    let fields = Fields(fields);
    let source = util::get_ci(object, "source")
        .and_then(util::non_empty)
        .unwrap_or("syscall");
    let internal = source.eq_ignore_ascii_case("internal")
        || rule.to_ascii_lowercase().starts_with("falco internal:");

    // The payload moves into `data` once everything is read from it.
    let mut event = util::blank(FORMAT, kind(source, internal), Value::Null);
    event.id = match util::get_ci(object, "uuid").and_then(util::non_empty) {
        Some(uuid) => uuid.to_string(),
        None => doc.hash_id(),
    };
    event.severity = if internal { Severity::Info } else { priority };
    event.title = rule.to_string();
    event.summary = util::get_ci(object, "output")
        .and_then(util::non_empty)
        .map(|output| strip_prefix(output).to_string())
        .unwrap_or_else(|| rule.to_string());

    let producer_time = util::get_ci(object, "time")
        .and_then(Value::as_str)
        .and_then(util::rfc3339)
        .or_else(|| {
            fields
                .int("evt.time")
                .filter(|ns| ns.unsigned_abs() >= 1_000_000_000_000_000_000)
                .map(util::epoch_nanos)
        });
    event.time = util::settle_time(producer_time, received, &mut event.labels);

    let hostname = util::get_ci(object, "hostname")
        .and_then(util::non_empty)
        .map(str::to_string)
        .or_else(|| fields.text("evt.hostname"));
    resource(&mut event, &fields, source, hostname);

    event
        .labels
        .insert("falco.source".to_string(), source.to_string());
    event
        .labels
        .insert("falco.priority".to_string(), priority_text.to_string());
    let mut tags: Vec<&str> = util::get_ci(object, "tags")
        .and_then(Value::as_array)
        .map(|tags| tags.iter().filter_map(util::non_empty).collect())
        .unwrap_or_default();
    tags.sort_unstable();
    tags.dedup();
    if !tags.is_empty() {
        event.labels.insert("tags".to_string(), tags.join(","));
    }
    for tag in tags {
        event
            .labels
            .insert(format!("tag:{tag}"), "true".to_string());
    }
    event.data = doc.value;
    Ok(event)
}

/// A required top-level string (key matched case-insensitively).
fn required_string<'a>(object: &'a Map<String, Value>, key: &str) -> Result<&'a str, FormatError> {
    match util::get_ci(object, key) {
        Some(value) => util::non_empty(value).ok_or_else(|| {
            util::wrong(
                FORMAT,
                format!(
                    "`{key}` must be a non-empty string, got {}",
                    util::kind_of(value)
                ),
            )
        }),
        None => Err(util::wrong(FORMAT, format!("`{key}` is missing"))),
    }
}

/// Falco's priority names, any case.
fn priority(text: &str) -> Option<Severity> {
    let severity = match text.trim().to_ascii_lowercase().as_str() {
        "emergency" | "alert" | "critical" => Severity::Critical,
        "error" => Severity::High,
        "warning" | "warn" => Severity::Medium,
        "notice" => Severity::Low,
        "informational" | "info" | "debug" => Severity::Info,
        _ => return None,
    };
    Some(severity)
}

fn kind(source: &str, internal: bool) -> Kind {
    let source = source.to_ascii_lowercase();
    if internal {
        Kind::Internal
    } else if source.contains("audit")
        || matches!(source.as_str(), "cloudtrail" | "okta" | "github")
    {
        Kind::Audit
    } else {
        Kind::Runtime
    }
}

/// `output` without Falco's leading `time: Priority ` (time as `HH:MM:SS.nnnnnnnnn` or ISO 8601).
fn strip_prefix(output: &str) -> &str {
    let Some((stamp, rest)) = output.split_once(": ") else {
        return output;
    };
    let is_stamp = stamp.contains(':')
        && stamp.bytes().any(|b| b.is_ascii_digit())
        && stamp
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b':' | b'.' | b'-' | b'+' | b'T' | b'Z'));
    if !is_stamp {
        return output;
    }
    match rest.split_once(' ') {
        Some((word, text)) if priority(word).is_some() => text,
        _ => rest,
    }
}

/// `output_fields`, read without expanding dotted keys.
struct Fields<'a>(Option<&'a Map<String, Value>>);

impl Fields<'_> {
    fn value(&self, key: &str) -> Option<&Value> {
        self.0.and_then(|fields| fields.get(key))
    }

    /// A field as text; `null`, empty and `<NA>` are unknown.
    fn text(&self, key: &str) -> Option<String> {
        self.value(key)
            .and_then(util::scalar)
            .filter(|s| s != "<NA>")
    }

    fn int(&self, key: &str) -> Option<i64> {
        self.value(key).and_then(util::int)
    }
}

fn resource(event: &mut Event, fields: &Fields<'_>, source: &str, hostname: Option<String>) {
    let container_id = fields.text("container.id");
    let host_event = container_id.as_deref() == Some("host");

    let image = match fields.text("container.image.repository") {
        Some(repository) => {
            let tag = fields.text("container.image.tag");
            let digest = fields.text("container.image.digest");
            let mut reference = repository.clone();
            if let Some(tag) = &tag {
                reference = format!("{reference}:{tag}");
            }
            if let Some(digest) = &digest {
                reference = format!("{reference}@{digest}");
            }
            Some(Image {
                r#ref: Some(reference),
                repository: Some(repository),
                tag,
                digest,
            })
        }
        None => fields.text("container.image").map(|reference| {
            let mut image = util::image_from_ref(&reference);
            if image.digest.is_none() {
                image.digest = fields.text("container.image.digest");
            }
            image
        }),
    };

    if !host_event {
        let container = Container {
            id: container_id,
            name: fields.text("container.name"),
            image: image.as_ref().and_then(|image| image.r#ref.clone()),
        };
        if container != Container::default() {
            event.resource.container = Some(container);
        }
        event.resource.image = image;
    }

    let mut pod = Pod {
        name: fields.text("k8s.pod.name"),
        namespace: fields.text("k8s.ns.name"),
        uid: fields.text("k8s.pod.uid"),
        ..Pod::default()
    };
    if source.to_ascii_lowercase().contains("k8s")
        && fields.text("ka.target.resource").as_deref() == Some("pods")
    {
        pod.name = pod.name.or_else(|| fields.text("ka.target.name"));
        pod.namespace = pod.namespace.or_else(|| fields.text("ka.target.namespace"));
    }
    if pod != Pod::default() {
        event.resource.pod = Some(pod);
    }

    if let Some(node) = fields.text("k8s.node.name") {
        event.resource.node = Some(Node { name: Some(node) });
    }
    if let Some(name) = hostname {
        event.resource.host = Some(Host { name: Some(name) });
    }

    let process = Process {
        pid: fields.int("proc.pid"),
        name: fields.text("proc.name"),
        cmdline: fields.text("proc.cmdline"),
        user: fields.text("user.name"),
    };
    if process != Process::default() {
        event.resource.process = Some(process);
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

    fn received() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2030-01-02T03:04:05.123456789Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn one(payload: &str) -> Event {
        let mut events = normalize(payload.as_bytes(), received()).unwrap();
        assert_eq!(events.len(), 1);
        events.remove(0)
    }

    #[test]
    fn strips_both_output_prefixes() {
        assert_eq!(
            strip_prefix("13:44:05.478445995: Critical A shell"),
            "A shell"
        );
        assert_eq!(
            strip_prefix("2016-08-04T16:17:57.881781397+0000: Warning An open was seen"),
            "An open was seen"
        );
        assert_eq!(
            strip_prefix("Falco internal: syscall event drop."),
            "Falco internal: syscall event drop."
        );
        assert_eq!(strip_prefix("10:00:00.1: NOTICE x"), "x");
        assert_eq!(strip_prefix("10:00:00.1: Unusual x"), "Unusual x");
        assert_eq!(strip_prefix("Test"), "Test");
    }

    #[test]
    fn priorities_map_in_any_case() {
        assert_eq!(priority("NOTICE"), Some(Severity::Low));
        assert_eq!(priority("Emergency"), Some(Severity::Critical));
        assert_eq!(priority("alert"), Some(Severity::Critical));
        assert_eq!(priority("Error"), Some(Severity::High));
        assert_eq!(priority("Info"), Some(Severity::Info));
        assert_eq!(priority("Debug"), Some(Severity::Info));
        assert_eq!(priority("loud"), None);
    }

    #[test]
    fn evt_time_fills_a_missing_time_to_the_nanosecond() {
        let event = one(
            r#"{"rule":"r","priority":"Notice","output_fields":{"evt.time":1685022245478445995}}"#,
        );
        assert_eq!(event.time, "2023-05-25T13:44:05.478445995Z");
        assert!(!event.labels.contains_key(util::TIME_LABEL));
    }

    #[test]
    fn a_missing_time_without_evt_time_is_the_received_time() {
        let event = one(r#"{"rule":"r","priority":"Notice"}"#);
        assert_eq!(event.time, "2030-01-02T03:04:05.123456789Z");
        assert_eq!(event.labels[util::TIME_LABEL], "received");
    }

    #[test]
    fn odd_output_field_values_are_unknowns_not_errors() {
        let event = one(
            r#"{"rule":"r","priority":"Warning","time":"2023-01-01T00:00:00Z","output_fields":{"container.id":null,"container.image.repository":"<NA>","k8s.ns.name":null,"proc.pid":"42","user.name":-1}}"#,
        );
        assert!(event.resource.container.is_none());
        assert!(event.resource.image.is_none());
        assert!(event.resource.pod.is_none());
        let process = event.resource.process.unwrap();
        assert_eq!(process.pid, Some(42));
        assert_eq!(process.user.as_deref(), Some("-1"));
    }

    #[test]
    fn image_parts_build_the_reference() {
        let event = one(
            r#"{"rule":"r","priority":"Warning","output_fields":{"container.id":"abc","container.image.repository":"docker.io/library/nginx","container.image.tag":"1.25","container.image.digest":"sha256:00"}}"#,
        );
        let image = event.resource.image.unwrap();
        assert_eq!(
            image.r#ref.as_deref(),
            Some("docker.io/library/nginx:1.25@sha256:00")
        );
        assert_eq!(
            event.resource.container.unwrap().image.as_deref(),
            Some("docker.io/library/nginx:1.25@sha256:00")
        );
    }

    #[test]
    fn falcosidekick_uuid_is_the_id() {
        let event = one(r#"{"uuid":"0f4a","rule":"r","priority":"Notice"}"#);
        assert_eq!(event.id, "0f4a");
    }

    #[test]
    fn rejects_what_is_not_an_alert() {
        for (payload, reason) in [
            (r#"{"priority":"Notice"}"#, "`rule` is missing"),
            (
                r#"{"rule":7,"priority":"Notice"}"#,
                "`rule` must be a non-empty string",
            ),
            (r#"{"rule":"r"}"#, "`priority` is missing"),
            (r#"{"rule":"r","priority":"Loud"}"#, "not a Falco priority"),
            (
                r#"{"rule":"r","priority":"Notice","output_fields":[]}"#,
                "`output_fields` must be an object",
            ),
            (r#"[1]"#, "expected a Falco alert"),
            (
                "{\"rule\":\"r\",\"priority\":\"Notice\"}\n{}",
                "object 2 of 2: `rule` is missing",
            ),
        ] {
            match normalize(payload.as_bytes(), received()) {
                Err(FormatError::WrongShape {
                    format,
                    reason: got,
                }) => {
                    assert_eq!(format, Source::Falco);
                    assert!(got.contains(reason), "{payload}: {got}");
                }
                other => panic!("{payload}: {other:?}"),
            }
        }
    }
}
