//! CloudEvents 1.0 in the structured JSON mode, one event or a batch (a JSON array): one
//! [`Event`] per CloudEvent.
//!
//! The four required attributes (`specversion` 1.x, `id`, `source`, `type`) must be present and
//! non-empty; anything else is rejected with the attribute at fault. The `data` member is read
//! only when it is a JSON object, and only for a summary, a severity and resource hints: its
//! meaning belongs to the producer. Must never decode `data_base64`.
//!
//! | field | rule |
//! |---|---|
//! | id | the CloudEvent's `id` |
//! | kind | `alert` |
//! | severity | a `severity`, `priority` or `level` extension attribute, else the same fields of `data`, read as words (critical/crit/emergency/alert/fatal/page → critical; high/error/major → high; medium/warning/warn/moderate → medium; low/minor/notice → low; info/debug/none... → info); else info |
//! | time | `time` when valid RFC 3339, else the received time (label `riposte.time` = `received`) |
//! | title | `type` |
//! | summary | `data`'s `summary`, `message`, `description`, `output`, `msg` or `text`; else `subject`; else `<type> from <source>` |
//! | resource | hints from flat keys of `data` (as in the generic format: container, pod, node, host, process, image) |
//! | labels | `ce.source`, `ce.type`, `ce.subject` when present, `ce.datacontenttype` when present |

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::generic;
use super::util::{self, Doc, Loose};
use super::FormatError;
use crate::event::{Event, Kind, Severity, Source};

const FORMAT: Source = Source::Cloudevents;

/// Normalizes CloudEvents: one event per CloudEvent of the payload.
pub(super) fn normalize(
    payload: &[u8],
    received: DateTime<Utc>,
) -> Result<Vec<Event>, FormatError> {
    util::per_doc(payload, |doc| events_of(doc, received))
}

fn events_of(doc: &Doc<'_>, received: DateTime<Utc>) -> Result<Vec<Event>, FormatError> {
    match &doc.value {
        Value::Array(batch) => batch
            .iter()
            .enumerate()
            .map(|(i, item)| {
                cloud_event(item, received).map_err(|err| match err {
                    FormatError::WrongShape { format, reason } => FormatError::WrongShape {
                        format,
                        reason: format!("batch element {i}: {reason}"),
                    },
                    other => other,
                })
            })
            .collect(),
        value => Ok(vec![cloud_event(value, received)?]),
    }
}

/// A required, non-empty string attribute.
fn attribute<'a>(object: &'a Map<String, Value>, name: &str) -> Result<&'a str, FormatError> {
    match object.get(name) {
        Some(value) => util::non_empty(value).ok_or_else(|| {
            util::wrong(
                FORMAT,
                format!(
                    "`{name}` must be a non-empty string, got {}",
                    util::kind_of(value)
                ),
            )
        }),
        None => Err(util::wrong(FORMAT, format!("`{name}` is missing"))),
    }
}

fn cloud_event(value: &Value, received: DateTime<Utc>) -> Result<Event, FormatError> {
    let object = util::object(FORMAT, value, "a CloudEvents 1.0 event")?;
    let version = attribute(object, "specversion")?;
    if !version.starts_with("1.") {
        return Err(util::wrong(
            FORMAT,
            format!("`specversion` `{version}` is not 1.x"),
        ));
    }
    let id = attribute(object, "id")?;
    let source = attribute(object, "source")?;
    let event_type = attribute(object, "type")?;
    let subject = object.get("subject").and_then(util::non_empty);
    let data = object
        .get("data")
        .and_then(Value::as_object)
        .map(Loose::new);

    let mut event = util::blank(FORMAT, Kind::Alert, value.clone());
    event.id = id.to_string();
    event.title = event_type.to_string();
    event.summary = data
        .as_ref()
        .and_then(|data| data.text(generic::SUMMARY_FIELDS))
        .or_else(|| subject.map(str::to_string))
        .unwrap_or_else(|| format!("{event_type} from {source}"));
    event.severity = generic::severity(&Loose::new(object))
        .or_else(|| data.as_ref().and_then(generic::severity))
        .unwrap_or(Severity::Info);
    let time = object
        .get("time")
        .and_then(Value::as_str)
        .and_then(util::rfc3339);
    event.time = util::settle_time(time, received, &mut event.labels);
    if let Some(data) = &data {
        event.resource = generic::resource_hints(data);
    }
    let labels = [
        ("ce.source", Some(source)),
        ("ce.type", Some(event_type)),
        ("ce.subject", subject),
        (
            "ce.datacontenttype",
            object.get("datacontenttype").and_then(util::non_empty),
        ),
    ];
    for (key, value) in labels {
        if let Some(value) = value {
            event.labels.insert(key.to_string(), value.to_string());
        }
    }
    Ok(event)
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
    fn folds_in_data_for_summary_severity_and_resource() {
        let payload = r#"{"specversion":"1.0","id":"e1","source":"/scanner","type":"com.example.finding",
            "time":"2024-01-01T00:00:00.123Z","data":{"message":"bad thing","severity":"HIGH","podName":"web","namespace":"prod"}}"#;
        let event = normalize(payload.as_bytes(), received()).unwrap().remove(0);
        assert_eq!(event.id, "e1");
        assert_eq!(event.title, "com.example.finding");
        assert_eq!(event.summary, "bad thing");
        assert_eq!(event.severity, Severity::High);
        assert_eq!(event.time, "2024-01-01T00:00:00.123Z");
        assert_eq!(
            event.resource.pod.unwrap().namespace.as_deref(),
            Some("prod")
        );
        assert_eq!(event.labels["ce.source"], "/scanner");
    }

    #[test]
    fn an_extension_severity_wins_and_a_bare_event_reads() {
        let payload = r#"{"specversion":"1.0","id":"e1","source":"s","type":"t","severity":"critical","data":"text"}"#;
        let event = normalize(payload.as_bytes(), received()).unwrap().remove(0);
        assert_eq!(event.severity, Severity::Critical);
        assert_eq!(event.summary, "t from s");
        assert_eq!(event.labels[util::TIME_LABEL], "received");
    }

    #[test]
    fn requires_the_four_attributes() {
        for (payload, reason) in [
            (
                r#"{"id":"1","source":"s","type":"t"}"#,
                "`specversion` is missing",
            ),
            (
                r#"{"specversion":"0.3","id":"1","source":"s","type":"t"}"#,
                "`specversion` `0.3` is not 1.x",
            ),
            (
                r#"{"specversion":"1.0","source":"s","type":"t"}"#,
                "`id` is missing",
            ),
            (
                r#"{"specversion":"1.0","id":"1","type":"t"}"#,
                "`source` is missing",
            ),
            (
                r#"{"specversion":"1.0","id":"1","source":"s","type":""}"#,
                "`type` must be a non-empty string",
            ),
            (
                r#"[{"specversion":"1.0","id":"1","source":"s","type":"t"},{}]"#,
                "batch element 1: `specversion` is missing",
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
