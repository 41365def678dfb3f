//! Kubernetes audit events (`audit.k8s.io/v1` or `v1beta1`, or no `apiVersion` at all), as the
//! API server's webhook or log backend writes them: one [`Event`] per audit `Event`, several for
//! an `EventList`.
//!
//! `kubectl exec` arrives as `create` on `pods` with subresource `exec`; its command is only in
//! the request URI (`command=` repeated per argument). `requestObject`/`responseObject` exist only
//! at the `Request`/`RequestResponse` levels. Must reject anything that is not an audit event
//! (`{"kind": 0}` included) with the field at fault, and never read a request body as the truth
//! about what the API server did: the response code says that.
//!
//! | field | rule |
//! |---|---|
//! | id | `auditID`, else the payload hash (`#<index>` for list items) |
//! | kind | `audit` |
//! | severity | info; medium for `exec`, `attach` and `portforward` on pods; info whatever the request when `responseStatus.code` >= 400 (it was refused) |
//! | time | `requestReceivedTimestamp`, else `timestamp`, `stageTimestamp`, `metadata.creationTimestamp` (the first valid RFC 3339), else the received time (label `riposte.time` = `received`) |
//! | title | `<verb> <resource>[/<subresource>]` (`create pods/exec`); `<verb> <path>` for non-resource URLs |
//! | summary | `<user>: <title> <name> in namespace <namespace> (decision <decision>, response <code>)`, each part when known |
//! | resource | pod {name, namespace, uid, labels (uid and labels from a Pod request/response object)} when the resource is `pods`; container {name} from the `container=` parameter and process {cmdline: the `command=` parameters joined with spaces} for exec/attach |
//! | labels | `user`, `verb`, `resource`, `subresource`, `namespace`, `name`, `decision`, `response_code`, `stage` when present |

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::util::{self, Doc};
use super::FormatError;
use crate::event::{Container, Event, Kind, Pod, Process, Severity, Source};

const FORMAT: Source = Source::K8sAudit;

/// Pod subresources that open a session inside a container.
const SESSION_SUBRESOURCES: [&str; 3] = ["exec", "attach", "portforward"];

/// Normalizes a Kubernetes audit payload: one event per audit event.
pub(super) fn normalize(
    payload: &[u8],
    received: DateTime<Utc>,
) -> Result<Vec<Event>, FormatError> {
    util::per_doc(payload, |doc| events_of(doc, received))
}

/// A scalar for an error message; the type for anything bigger.
fn shown(value: &Value) -> String {
    match value {
        Value::Array(_) | Value::Object(_) => util::kind_of(value).to_string(),
        other => other.to_string(),
    }
}

fn events_of(doc: &Doc<'_>, received: DateTime<Utc>) -> Result<Vec<Event>, FormatError> {
    let object = util::object(FORMAT, &doc.value, "an audit.k8s.io Event or EventList")?;
    match object.get("apiVersion") {
        None => {}
        Some(Value::String(version)) if version.starts_with("audit.k8s.io/") => {}
        Some(other) => {
            return Err(util::wrong(
                FORMAT,
                format!(
                    "`apiVersion` must be audit.k8s.io/..., got {}",
                    shown(other)
                ),
            ))
        }
    }
    let items: Vec<&Value> = match object.get("kind") {
        Some(Value::String(kind)) if kind == "Event" => vec![&doc.value],
        Some(Value::String(kind)) if kind == "EventList" => {
            let items = object
                .get("items")
                .and_then(Value::as_array)
                .ok_or_else(|| util::wrong(FORMAT, "`EventList` has no `items` array"))?;
            for (i, item) in items.iter().enumerate() {
                match item.get("kind") {
                    None => {}
                    Some(Value::String(kind)) if kind == "Event" => {}
                    Some(other) => {
                        return Err(util::wrong(
                            FORMAT,
                            format!("`items[{i}].kind` must be \"Event\", got {}", shown(other)),
                        ))
                    }
                }
            }
            items.iter().collect()
        }
        Some(other) => {
            return Err(util::wrong(
                FORMAT,
                format!(
                    "`kind` must be \"Event\" or \"EventList\", got {}",
                    shown(other)
                ),
            ))
        }
        None if object.contains_key("auditID") && object.contains_key("verb") => vec![&doc.value],
        None => {
            return Err(util::wrong(
                FORMAT,
                "`kind` is missing (expected \"Event\" or \"EventList\")",
            ))
        }
    };
    let count = items.len();
    let listed = object.get("kind").and_then(Value::as_str) == Some("EventList");
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            audit_event(item, doc, i, count, received).map_err(|err| match err {
                FormatError::WrongShape { format, reason } if listed => FormatError::WrongShape {
                    format,
                    reason: format!("`items[{i}]`: {reason}"),
                },
                other => other,
            })
        })
        .collect()
}

fn audit_event(
    item: &Value,
    doc: &Doc<'_>,
    index: usize,
    count: usize,
    received: DateTime<Utc>,
) -> Result<Event, FormatError> {
    if !item.is_object() {
        return Err(util::wrong(
            FORMAT,
            format!(
                "expected an audit event (a JSON object), got {}",
                util::kind_of(item)
            ),
        ));
    }
    let verb = match item.get("verb") {
        Some(verb) => util::non_empty(verb).ok_or_else(|| {
            util::wrong(
                FORMAT,
                format!("`verb` must be a non-empty string, got {}", shown(verb)),
            )
        })?,
        None => return Err(util::wrong(FORMAT, "`verb` is missing")),
    };
    let at = |path: &[&str]| util::str_at(item, path);
    let resource = at(&["objectRef", "resource"]);
    let subresource = at(&["objectRef", "subresource"]);
    let namespace = at(&["objectRef", "namespace"]);
    let mut name = at(&["objectRef", "name"]);
    let user = at(&["user", "username"]);
    let decision = at(&["annotations", "authorization.k8s.io/decision"]);
    let stage = at(&["stage"]);
    let code = item
        .get("responseStatus")
        .and_then(|s| s.get("code"))
        .and_then(util::int);
    let uri = at(&["requestURI"]);

    let what = match (resource, subresource) {
        (Some(resource), Some(sub)) => format!("{resource}/{sub}"),
        (Some(resource), None) => resource.to_string(),
        (None, _) => uri
            .map(|uri| uri.split('?').next().unwrap_or(uri).to_string())
            .unwrap_or_default(),
    };

    let mut event = util::blank(FORMAT, Kind::Audit, item.clone());
    event.id = match at(&["auditID"]) {
        Some(id) => id.to_string(),
        None => doc.nth_id(index, count),
    };
    let time = ["requestReceivedTimestamp", "timestamp", "stageTimestamp"]
        .iter()
        .filter_map(|key| at(&[key]))
        .chain(at(&["metadata", "creationTimestamp"]))
        .find_map(util::rfc3339);
    event.time = util::settle_time(time, received, &mut event.labels);
    event.title = if what.is_empty() {
        verb.to_string()
    } else {
        format!("{verb} {what}")
    };

    let pods = resource == Some("pods");
    let session = pods && subresource.is_some_and(|sub| SESSION_SUBRESOURCES.contains(&sub));
    let refused = code.is_some_and(|code| code >= 400);
    event.severity = if session && !refused {
        Severity::Medium
    } else {
        Severity::Info
    };

    if pods {
        let pod_object = ["responseObject", "requestObject"]
            .iter()
            .filter_map(|key| item.get(*key))
            .find(|object| object.get("kind").and_then(Value::as_str) == Some("Pod"));
        let meta =
            |key: &str| pod_object.and_then(|object| util::str_at(object, &["metadata", key]));
        name = name.or_else(|| meta("name"));
        let pod = Pod {
            name: name.map(str::to_string),
            namespace: namespace.or_else(|| meta("namespace")).map(str::to_string),
            uid: meta("uid").map(str::to_string),
            labels: pod_object
                .and_then(|object| util::get(object, &["metadata", "labels"]))
                .and_then(Value::as_object)
                .map(|labels| {
                    labels
                        .iter()
                        .filter_map(|(k, v)| Some((k.clone(), util::scalar(v)?)))
                        .collect()
                })
                .unwrap_or_default(),
        };
        if pod != Pod::default() {
            event.resource.pod = Some(pod);
        }
    }
    if session {
        let params = uri.map(util::query_params).unwrap_or_default();
        let container = params
            .iter()
            .find(|(key, value)| key == "container" && !value.is_empty())
            .map(|(_, value)| value.clone());
        if container.is_some() {
            event.resource.container = Some(Container {
                name: container,
                ..Container::default()
            });
        }
        let command: Vec<&str> = params
            .iter()
            .filter(|(key, _)| key == "command")
            .map(|(_, value)| value.as_str())
            .collect();
        if !command.is_empty() {
            event.resource.process = Some(Process {
                cmdline: Some(command.join(" ")),
                ..Process::default()
            });
        }
    }

    let mut summary = format!("{}: {}", user.unwrap_or("unknown user"), event.title);
    if let Some(name) = name {
        summary = format!("{summary} {name}");
    }
    if let Some(namespace) = namespace {
        summary = format!("{summary} in namespace {namespace}");
    }
    let outcome: Vec<String> = [
        decision.map(|d| format!("decision {d}")),
        code.map(|c| format!("response {c}")),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !outcome.is_empty() {
        summary = format!("{summary} ({})", outcome.join(", "));
    }
    event.summary = summary;

    let code_text = code.map(|c| c.to_string());
    let labels = [
        ("user", user),
        ("verb", Some(verb)),
        ("resource", resource),
        ("subresource", subresource),
        ("namespace", namespace),
        ("name", name),
        ("decision", decision),
        ("response_code", code_text.as_deref()),
        ("stage", stage),
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

    fn reason(payload: &str) -> String {
        match normalize(payload.as_bytes(), received()) {
            Err(FormatError::WrongShape { reason, .. }) => reason,
            other => panic!("{payload}: {other:?}"),
        }
    }

    #[test]
    fn rejects_what_is_not_an_audit_event() {
        assert_eq!(
            reason(r#"{"kind": 0}"#),
            "`kind` must be \"Event\" or \"EventList\", got 0"
        );
        assert!(reason(r#"{"kind": "Pod"}"#).contains("got \"Pod\""));
        assert!(reason(r#"{"verb": "get"}"#).contains("`kind` is missing"));
        assert!(reason(r#"{"kind": "Event"}"#).contains("`verb` is missing"));
        assert!(reason(r#"{"kind": "EventList"}"#).contains("no `items` array"));
        assert!(
            reason(r#"{"kind": "EventList", "items": [{"kind": "Event"}]}"#)
                .contains("`items[0]`: `verb` is missing")
        );
        assert!(
            reason(r#"{"kind": "Event", "apiVersion": "v1", "verb": "get"}"#)
                .contains("`apiVersion`")
        );
    }

    #[test]
    fn an_event_list_gives_one_event_per_item() {
        let payload = r#"{"kind":"EventList","apiVersion":"audit.k8s.io/v1","items":[
            {"verb":"get","objectRef":{"resource":"secrets","namespace":"ns","name":"s"},"responseStatus":{"code":403}},
            {"verb":"create","auditID":"a-1","objectRef":{"resource":"pods","subresource":"exec","namespace":"ns","name":"p"},
             "requestURI":"/api/v1/namespaces/ns/pods/p/exec?command=sh&command=-c&command=cat%20%2Fetc%2Fshadow&container=app","responseStatus":{"code":101}},
            {"verb":"create","objectRef":{"resource":"pods","subresource":"attach","name":"p"},"responseStatus":{"code":403}}]}"#;
        let events = normalize(payload.as_bytes(), received()).unwrap();
        assert_eq!(events.len(), 3);
        assert!(events[0].id.ends_with("#0"));
        assert_eq!(events[0].title, "get secrets");
        assert_eq!(
            events[0].summary,
            "unknown user: get secrets s in namespace ns (response 403)"
        );
        assert_eq!(events[1].id, "a-1");
        assert_eq!(events[1].severity, Severity::Medium);
        assert_eq!(
            events[1]
                .resource
                .process
                .as_ref()
                .unwrap()
                .cmdline
                .as_deref(),
            Some("sh -c cat /etc/shadow")
        );
        assert_eq!(
            events[1]
                .resource
                .container
                .as_ref()
                .unwrap()
                .name
                .as_deref(),
            Some("app")
        );
        assert_eq!(events[2].severity, Severity::Info);
        assert!(events[2].resource.process.is_none());
    }

    #[test]
    fn non_resource_requests_are_titled_by_their_path() {
        let event = normalize(
            br#"{"kind":"Event","verb":"get","requestURI":"/healthz?verbose=1"}"#,
            received(),
        )
        .unwrap()
        .remove(0);
        assert_eq!(event.title, "get /healthz");
        assert!(event.resource.pod.is_none());
    }
}
