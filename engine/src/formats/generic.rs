//! Plain JSON from any producer without a dedicated format: one [`Event`] per JSON object (a
//! top-level array of objects gives one per element; JSON Lines and concatenated streams one per
//! object). YAML is not read here.
//!
//! Field names are matched loosely: any case, with `_`, `-`, `.` and `@` ignored, so `eventName`,
//! `event_name` and `@timestamp` all count. Must never fail on an object for lack of fields: a
//! generic event only needs to be an object; everything it cannot find is left empty.
//!
//! | field | rule |
//! |---|---|
//! | id | the payload hash of the object (`#<index>` for the elements of an array): arbitrary JSON has no reliable event id |
//! | kind | `alert` |
//! | severity | `severity`, `priority` or `level` as a word (critical/crit/emergency/alert/fatal/page → critical; high/error/major → high; medium/warning/warn/moderate → medium; low/minor/notice → low; info/debug/none... → info), else info |
//! | time | `timeNano`, `time`, `timestamp`, `@timestamp`, `eventTime`: RFC 3339 strings kept as written, integers read as epoch seconds, ms, µs or ns by magnitude; else the received time (label `riposte.time` = `received`) |
//! | title | `title`, `name`, `rule`, `alertname`, `event`, `eventName` (a string), else `<type> <action>`, `type` or `action`, else `event` |
//! | summary | `summary`, `message`, `description`, `output`, `msg` or `text`, else empty |
//! | resource | from flat keys when they hold non-empty strings: container {`containerId`, `containerName`, `containerImage`/`image`}, image, pod {`pod`/`podName`, `namespace`/`podNamespace`, `podUID`}, node {`node`/`nodeName`}, host {`hostname`/`host`}, process {`processName`, `processId`/`pid`, `cmdline`} |

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::util::{self, Doc, Loose};
use super::FormatError;
use crate::event::{Container, Event, Host, Kind, Node, Pod, Process, Resource, Severity, Source};

const FORMAT: Source = Source::Generic;

/// Normalizes any JSON: one event per object.
pub(super) fn normalize(
    payload: &[u8],
    received: DateTime<Utc>,
) -> Result<Vec<Event>, FormatError> {
    util::per_doc(payload, |doc| events_of(doc, received))
}

fn events_of(doc: &Doc<'_>, received: DateTime<Utc>) -> Result<Vec<Event>, FormatError> {
    match &doc.value {
        Value::Object(object) => Ok(vec![event(object, &doc.value, doc.hash_id(), received)]),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::Object(object) => {
                    Ok(event(object, item, doc.nth_id(i, items.len()), received))
                }
                other => Err(util::wrong(
                    FORMAT,
                    format!(
                        "array element {i} must be an object, got {}",
                        util::kind_of(other)
                    ),
                )),
            })
            .collect(),
        other => Err(util::wrong(
            FORMAT,
            format!(
                "expected a JSON object or an array of objects, got {}",
                util::kind_of(other)
            ),
        )),
    }
}

fn event(object: &Map<String, Value>, value: &Value, id: String, received: DateTime<Utc>) -> Event {
    let fields = Loose::new(object);
    let mut event = util::blank(FORMAT, Kind::Alert, value.clone());
    event.id = id;
    event.title = title(&fields);
    event.summary = fields.text(SUMMARY_FIELDS).unwrap_or_default();
    event.severity = severity(&fields).unwrap_or(Severity::Info);
    event.time = util::settle_time(time(&fields), received, &mut event.labels);
    event.resource = resource_hints(&fields);
    event
}

/// Fields holding a human text, in order of preference (folded names).
pub(super) const SUMMARY_FIELDS: &[&str] =
    &["summary", "message", "description", "output", "msg", "text"];

/// A `severity`, `priority` or `level` word.
pub(super) fn severity(fields: &Loose<'_>) -> Option<Severity> {
    ["severity", "priority", "level"].iter().find_map(|name| {
        fields
            .get(name)
            .and_then(Value::as_str)
            .and_then(util::severity_word)
    })
}

/// The first time field that reads as a time.
fn time(fields: &Loose<'_>) -> Option<String> {
    ["timenano", "time", "timestamp", "eventtime"]
        .iter()
        .find_map(|name| match fields.get(name)? {
            Value::String(s) => util::rfc3339(s),
            Value::Number(n) => n.as_i64().and_then(util::epoch_guess),
            _ => None,
        })
}

fn title(fields: &Loose<'_>) -> String {
    if let Some(title) = fields.text(&["title", "name", "rule", "alertname", "event", "eventname"])
    {
        return title;
    }
    match (fields.text(&["type"]), fields.text(&["action"])) {
        (Some(kind), Some(action)) => format!("{kind} {action}"),
        (Some(one), None) | (None, Some(one)) => one,
        (None, None) => "event".to_string(),
    }
}

/// Resource parts named by flat, well-known keys of an object.
pub(super) fn resource_hints(fields: &Loose<'_>) -> Resource {
    let text = |names: &[&str]| fields.text(names);
    let mut resource = Resource::default();
    let image = text(&["containerimage", "image"]);
    let container = Container {
        id: text(&["containerid"]),
        name: text(&["containername"]),
        image: image.clone(),
    };
    if container.id.is_some() || container.name.is_some() {
        resource.container = Some(container);
    }
    resource.image = image.as_deref().map(util::image_from_ref);
    let pod = Pod {
        name: text(&["pod", "podname", "k8spodname"]),
        namespace: text(&["namespace", "podnamespace", "k8snsname"]),
        uid: text(&["poduid", "k8spoduid"]),
        ..Pod::default()
    };
    if pod != Pod::default() {
        resource.pod = Some(pod);
    }
    if let Some(node) = text(&["node", "nodename", "k8snodename"]) {
        resource.node = Some(Node { name: Some(node) });
    }
    if let Some(host) = text(&["hostname", "host"]) {
        resource.host = Some(Host { name: Some(host) });
    }
    let process = Process {
        pid: ["processid", "pid"]
            .iter()
            .find_map(|name| fields.get(name).and_then(util::int)),
        name: text(&["processname", "procname"]),
        cmdline: text(&["cmdline", "proccmdline", "commandline"]),
        user: None,
    };
    if process != Process::default() {
        resource.process = Some(process);
    }
    resource
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
    fn reads_loosely_named_fields() {
        let events = normalize(
            br#"{"Event_Name":"x","MESSAGE":"m","Level":"WARN","@timestamp":"2024-05-01T00:00:00.5+02:00","containerId":"c1","podName":"p","hostName":"h","pid":"7"}"#,
            received(),
        )
        .unwrap();
        let event = &events[0];
        assert_eq!(event.title, "x");
        assert_eq!(event.summary, "m");
        assert_eq!(event.severity, Severity::Medium);
        assert_eq!(event.time, "2024-05-01T00:00:00.5+02:00");
        assert_eq!(
            event.resource.container.as_ref().unwrap().id.as_deref(),
            Some("c1")
        );
        assert_eq!(
            event.resource.pod.as_ref().unwrap().name.as_deref(),
            Some("p")
        );
        assert_eq!(
            event.resource.host.as_ref().unwrap().name.as_deref(),
            Some("h")
        );
        assert_eq!(event.resource.process.as_ref().unwrap().pid, Some(7));
    }

    #[test]
    fn an_empty_object_is_still_an_event() {
        let event = normalize(b"{}", received()).unwrap().remove(0);
        assert_eq!(event.title, "event");
        assert_eq!(event.severity, Severity::Info);
        assert_eq!(event.labels[util::TIME_LABEL], "received");
        assert_eq!(event.resource, Resource::default());
    }

    #[test]
    fn arrays_give_one_event_per_object_and_reject_scalars() {
        let events = normalize(br#"[{"a":1},{"a":2}]"#, received()).unwrap();
        assert_eq!(events.len(), 2);
        assert!(events[1].id.ends_with("#1"));
        assert!(normalize(b"[]", received()).unwrap().is_empty());
        for payload in [&b"[{}, 3]"[..], b"\"text\"", b"42", b"null"] {
            assert!(matches!(
                normalize(payload, received()),
                Err(FormatError::WrongShape {
                    format: Source::Generic,
                    ..
                })
            ));
        }
    }
}
