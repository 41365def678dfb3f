//! Cilium Tetragon exported events (JSON Lines, one event per line): one [`Event`] per line.
//!
//! Each object has exactly one event-type key (`process_exec`, `process_exit`, `process_kprobe`,
//! `process_tracepoint`, `process_uprobe`, `process_lsm`, ...) beside `node_name` and `time`;
//! anything else is rejected. Tetragon writes proto3 JSON, which omits zero values, so every
//! field may be missing (a clean exit has no `status`): a missing field is unknown, never an
//! error. Must never read `auid`/`uid` sentinels or kprobe arguments as anything but data.
//!
//! | field | rule |
//! |---|---|
//! | id | `<process.exec_id>:<event type>:<time>` when both are present, else the hash of the line |
//! | kind | `runtime` |
//! | severity | hook events (`process_kprobe`, `process_tracepoint`, `process_uprobe`, `process_lsm`, `process_usdt`) → medium: a tracing policy chose to report them; `process_exec`, `process_exit` and the rest → info |
//! | time | `time` when valid RFC 3339, else the received time (label `riposte.time` = `received`) |
//! | title | exec `Process executed: <binary>`, exit `Process exited: <binary>`, hooks `<policy_name, else function_name or subsys/event>: <binary>`, others `<event type>: <binary>` |
//! | summary | command line, pid, what happened (exit status or signal; hooked function and its plain arguments) and where (pod or node) |
//! | resource | process {pid, binary, binary + arguments, uid}; pod {name, namespace, `pod_labels`}; container {id without `containerd://`, else `process.docker` outside Kubernetes, name, image name}; image {from `image.name`, digest from `image.id`}; node {`node_name`} |
//! | labels | `tetragon.event`, `tetragon.exec_id`, `tetragon.parent_binary`, `tetragon.policy`, `tetragon.function`, `tetragon.action` when present |

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::util::{self, Doc};
use super::FormatError;
use crate::event::{Container, Event, Kind, Node, Pod, Process, Severity, Source};

const FORMAT: Source = Source::Tetragon;

/// Event types whose events come from a tracing policy's hook.
const HOOKS: [&str; 5] = [
    "process_kprobe",
    "process_tracepoint",
    "process_uprobe",
    "process_lsm",
    "process_usdt",
];

/// Normalizes a Tetragon export: one event per exported object.
pub(super) fn normalize(
    payload: &[u8],
    received: DateTime<Utc>,
) -> Result<Vec<Event>, FormatError> {
    util::per_doc(payload, |doc| event(doc, received).map(|e| vec![e]))
}

fn event(doc: &Doc<'_>, received: DateTime<Utc>) -> Result<Event, FormatError> {
    let object = util::object(FORMAT, &doc.value, "a Tetragon event")?;
    let types: Vec<&String> = object
        .keys()
        .filter(|k| k.starts_with("process_"))
        .collect();
    let event_type = match types.as_slice() {
        [one] => one.as_str(),
        [] => {
            return Err(util::wrong(
                FORMAT,
                "expected exactly one event key (`process_exec`, `process_exit`, `process_kprobe`, ...), found none",
            ))
        }
        many => {
            let names: Vec<&str> = many.iter().map(|k| k.as_str()).collect();
            return Err(util::wrong(
                FORMAT,
                format!(
                    "expected exactly one event key, found {}: `{}`",
                    many.len(),
                    names.join("`, `")
                ),
            ));
        }
    };
    let body = object.get(event_type).unwrap_or(&Value::Null);
    if !body.is_object() {
        return Err(util::wrong(
            FORMAT,
            format!(
                "`{event_type}` must be an object, got {}",
                util::kind_of(body)
            ),
        ));
    }
    let process = body.get("process").unwrap_or(&Value::Null);
    let binary = util::str_at(process, &["binary"]);
    let shown_binary = binary.unwrap_or("unknown binary");
    let cmdline = binary.map(|binary| match util::str_at(process, &["arguments"]) {
        Some(arguments) => format!("{binary} {arguments}"),
        None => binary.to_string(),
    });
    let pid = process.get("pid").and_then(util::int);

    let mut event = util::blank(FORMAT, Kind::Runtime, doc.value.clone());
    let time = util::str_at(&doc.value, &["time"]).and_then(util::rfc3339);
    let exec_id = util::str_at(process, &["exec_id"]);
    event.id = match (exec_id, &time) {
        (Some(exec_id), Some(time)) => format!("{exec_id}:{event_type}:{time}"),
        _ => doc.hash_id(),
    };
    event.time = util::settle_time(time, received, &mut event.labels);
    let hook = HOOKS.contains(&event_type);
    event.severity = if hook {
        Severity::Medium
    } else {
        Severity::Info
    };

    let policy = util::str_at(body, &["policy_name"]);
    let function = util::str_at(body, &["function_name"])
        .map(str::to_string)
        .or_else(|| {
            let subsys = util::str_at(body, &["subsys"])?;
            let name = util::str_at(body, &["event"])?;
            Some(format!("{subsys}/{name}"))
        });
    event.title = match event_type {
        "process_exec" => format!("Process executed: {shown_binary}"),
        "process_exit" => format!("Process exited: {shown_binary}"),
        _ if hook => format!(
            "{}: {shown_binary}",
            policy.or(function.as_deref()).unwrap_or(event_type)
        ),
        _ => format!("{event_type}: {shown_binary}"),
    };

    let mut pod = Pod {
        name: util::str_at(process, &["pod", "name"]).map(str::to_string),
        namespace: util::str_at(process, &["pod", "namespace"]).map(str::to_string),
        labels: string_map(util::get(process, &["pod", "pod_labels"])),
        ..Pod::default()
    };
    if pod.labels.is_empty() {
        pod.labels = string_map(util::get(process, &["pod", "labels"]));
    }
    let where_ = match (&pod.namespace, &pod.name) {
        (Some(namespace), Some(name)) => format!(" in pod {namespace}/{name}"),
        (None, Some(name)) => format!(" in pod {name}"),
        _ => util::str_at(&doc.value, &["node_name"])
            .map(|node| format!(" on node {node}"))
            .unwrap_or_default(),
    };
    let who = match (&cmdline, pid) {
        (Some(cmdline), Some(pid)) => format!("{cmdline} (pid {pid})"),
        (Some(cmdline), None) => cmdline.clone(),
        (None, Some(pid)) => format!("pid {pid}"),
        (None, None) => shown_binary.to_string(),
    };
    event.summary = match event_type {
        "process_exec" => format!("{who} started{where_}"),
        "process_exit" => {
            let how = match (
                util::str_at(body, &["signal"]),
                body.get("status").and_then(util::int),
            ) {
                (Some(signal), _) => format!("killed by {signal}"),
                (None, status) => format!("exited with status {}", status.unwrap_or(0)),
            };
            format!("{who} {how}{where_}")
        }
        _ => {
            let call = function.as_deref().unwrap_or(event_type);
            let args = arguments(body.get("args"));
            let action = util::str_at(body, &["action"])
                .filter(|a| !a.ends_with("_POST"))
                .map(|a| format!(" (action {a})"))
                .unwrap_or_default();
            format!("{call}({args}) by {who}{where_}{action}")
        }
    };

    let container = Container {
        // Outside Kubernetes only `process.docker` names the container (its id, cut short).
        id: util::str_at(process, &["pod", "container", "id"])
            .map(|id| {
                id.split_once("://")
                    .map_or(id, |(_, bare)| bare)
                    .to_string()
            })
            .or_else(|| util::str_at(process, &["docker"]).map(str::to_string)),
        name: util::str_at(process, &["pod", "container", "name"]).map(str::to_string),
        image: util::str_at(process, &["pod", "container", "image", "name"]).map(str::to_string),
    };
    if let Some(reference) = &container.image {
        let mut image = util::image_from_ref(reference);
        if image.digest.is_none() {
            image.digest = util::str_at(process, &["pod", "container", "image", "id"])
                .and_then(|id| id.split_once('@'))
                .and_then(|(_, digest)| util::some(digest));
        }
        event.resource.image = Some(image);
    }
    if container != Container::default() {
        event.resource.container = Some(container);
    }
    if pod != Pod::default() {
        event.resource.pod = Some(pod);
    }
    if let Some(node) = util::str_at(&doc.value, &["node_name"]) {
        event.resource.node = Some(Node {
            name: Some(node.to_string()),
        });
    }
    let process_part = Process {
        pid,
        name: binary.map(str::to_string),
        cmdline,
        user: process.get("uid").and_then(util::scalar),
    };
    if process_part != Process::default() {
        event.resource.process = Some(process_part);
    }

    let labels = [
        ("tetragon.event", Some(event_type)),
        ("tetragon.exec_id", exec_id),
        (
            "tetragon.parent_binary",
            util::str_at(body, &["parent", "binary"]),
        ),
        ("tetragon.policy", policy),
        ("tetragon.function", function.as_deref()),
        ("tetragon.action", util::str_at(body, &["action"])),
    ];
    for (key, value) in labels {
        if let Some(value) = value {
            event.labels.insert(key.to_string(), value.to_string());
        }
    }
    Ok(event)
}

/// An object of scalars as a map of strings (other values left out).
fn string_map(value: Option<&Value>) -> BTreeMap<String, String> {
    value
        .and_then(Value::as_object)
        .map(|map| {
            map.iter()
                .filter_map(|(k, v)| Some((k.clone(), util::scalar(v)?)))
                .collect()
        })
        .unwrap_or_default()
}

/// The plain kprobe arguments (paths, strings, integers), comma-separated; structured ones are
/// named by their type.
fn arguments(args: Option<&Value>) -> String {
    let Some(args) = args.and_then(Value::as_array) else {
        return String::new();
    };
    let shown: Vec<String> = args
        .iter()
        .filter_map(Value::as_object)
        .filter_map(|arg| arg.iter().next())
        .map(|(kind, value)| match value {
            Value::Object(inner) => inner
                .get("path")
                .and_then(util::non_empty)
                .map(str::to_string)
                .unwrap_or_else(|| kind.trim_end_matches("_arg").to_string()),
            other => util::scalar(other).unwrap_or_default(),
        })
        .collect();
    shown.join(", ")
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
    fn needs_exactly_one_event_key() {
        assert!(reason(r#"{"node_name":"n"}"#).contains("found none"));
        assert!(reason(r#"{"process_exec":{},"process_exit":{}}"#).contains("found 2"));
        assert!(reason(r#"{"process_exec":7}"#).contains("must be an object"));
    }

    #[test]
    fn a_bare_exit_has_no_status_and_still_reads() {
        let events = normalize(
            br#"{"process_exit":{"process":{"binary":"/bin/true"}}}"#,
            received(),
        )
        .unwrap();
        let event = &events[0];
        assert_eq!(event.title, "Process exited: /bin/true");
        assert_eq!(event.summary, "/bin/true exited with status 0");
        assert_eq!(event.severity, Severity::Info);
        assert!(event.id.starts_with("sha256:"));
        assert_eq!(event.labels[util::TIME_LABEL], "received");
        assert!(event.resource.pod.is_none());
    }

    #[test]
    fn a_kprobe_without_policy_is_titled_by_its_function() {
        let events = normalize(
            br#"{"process_kprobe":{"process":{"binary":"/bin/cat","exec_id":"e"},"function_name":"fd_install","args":[{"int_arg":3},{"file_arg":{"path":"/etc/shadow"}},{"sock_arg":{}}],"action":"KPROBE_ACTION_SIGKILL"},"time":"2024-01-01T00:00:00Z"}"#,
            received(),
        )
        .unwrap();
        let event = &events[0];
        assert_eq!(event.title, "fd_install: /bin/cat");
        assert_eq!(
            event.summary,
            "fd_install(3, /etc/shadow, sock) by /bin/cat (action KPROBE_ACTION_SIGKILL)"
        );
        assert_eq!(event.severity, Severity::Medium);
        assert_eq!(event.id, "e:process_kprobe:2024-01-01T00:00:00Z");
    }
}
