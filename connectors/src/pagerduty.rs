//! Connector `pagerduty`: opens, acknowledges and resolves PagerDuty alerts through the Events
//! API v2 (`POST /v2/enqueue`).
//!
//! `trigger` renders the enriched [`Notice`]: the headline as the summary, the severity mapped to
//! PagerDuty's four levels, the host as the source, the container, namespace and rule as
//! component, group and class, the playbook's runbook as a link and the whole notice as
//! `custom_details`. Its dedup key defaults to [`Notice::incident_key`], so a later
//! `acknowledge` or `resolve` (or another alert about the same workload) finds the same incident.
//!
//! The routing key is read from `routing_key_file` and only ever goes into the request body: it
//! never appears in plans, outputs or errors.

use async_trait::async_trait;
use serde_json::{json, Map, Value};

use crate::http::{self, Secret, Settings};
use crate::notice::{clip, Notice};
use crate::spec::{check_len, find_action, given, ActionSpec, ParamSpec, ParamType};
use crate::{Args, BuildError, Connector, ConnectorError, Deps, Output, Plan};

/// Where the Events API lives unless the `url` setting says otherwise.
const DEFAULT_URL: &str = "https://events.pagerduty.com";
/// PagerDuty's limits on a summary and a dedup key (characters).
const SUMMARY_MAX: usize = 1024;
const DEDUP_KEY_MAX: usize = 255;
/// An integration's routing key is 32 characters.
const ROUTING_KEY_LEN: usize = 32;
/// The severities PagerDuty accepts.
const SEVERITIES: &[&str] = &["critical", "error", "warning", "info"];

const SETTINGS: &[&str] = &["routing_key_file", "url", "timeout", "ca_file"];

const DEDUP_KEY: ParamSpec = ParamSpec {
    name: "dedup_key",
    ty: ParamType::String,
    required: true,
    description: "The incident's dedup key, as `trigger` used it (at most 255 characters).",
};

/// The actions of `pagerduty`.
pub const ACTIONS: &[ActionSpec] = &[
    ActionSpec {
        name: "trigger",
        description: "Opens (or adds to) a PagerDuty alert that says what happened, where, whose \
                      it is and what riposte did; in `notify` without `with`, from the notice.",
        params: &[
            ParamSpec {
                name: "notice",
                ty: ParamType::Any,
                required: false,
                description: "The enriched notice (filled by the engine when left out).",
            },
            ParamSpec {
                name: "summary",
                ty: ParamType::String,
                required: false,
                description: "The alert's one line (default the notice's headline; cut to 1024 \
                              characters).",
            },
            ParamSpec {
                name: "severity",
                ty: ParamType::String,
                required: false,
                description: "`critical`, `error`, `warning` or `info` (default from the event: \
                              critical→critical, high→error, medium→warning, low and \
                              info→info).",
            },
            ParamSpec {
                name: "dedup_key",
                ty: ParamType::String,
                required: false,
                description: "Groups alerts into one incident (default \
                              `riposte:<playbook>:<container id, namespace/pod or event id>`; \
                              at most 255 characters).",
            },
            ParamSpec {
                name: "source",
                ty: ParamType::String,
                required: false,
                description: "The affected system (default the node or host, else the place).",
            },
            ParamSpec {
                name: "component",
                ty: ParamType::String,
                required: false,
                description: "The part of the source at fault (default the container or image).",
            },
            ParamSpec {
                name: "group",
                ty: ParamType::String,
                required: false,
                description: "A logical grouping of components (default the namespace).",
            },
            ParamSpec {
                name: "class",
                ty: ParamType::String,
                required: false,
                description: "The type of event (default the event's title).",
            },
        ],
        destructive: false,
        reversible: false,
        message_param: Some("notice"),
    },
    ActionSpec {
        name: "acknowledge",
        description: "Acknowledges the PagerDuty alert with this dedup key.",
        params: &[DEDUP_KEY],
        destructive: false,
        reversible: false,
        message_param: None,
    },
    ActionSpec {
        name: "resolve",
        description: "Resolves the PagerDuty alert with this dedup key.",
        params: &[DEDUP_KEY],
        destructive: false,
        reversible: false,
        message_param: None,
    },
];

/// A `pagerduty` instance.
#[derive(Debug)]
pub struct PagerDutyConnector {
    routing_key: Secret,
    enqueue: reqwest::Url,
    client: reqwest::Client,
}

impl PagerDutyConnector {
    /// Builds an instance: `routing_key_file` (required), `url`, `timeout`, `ca_file`.
    pub fn new(
        instance: &str,
        settings: &Map<String, Value>,
        deps: &Deps,
    ) -> Result<Self, BuildError> {
        let _ = deps;
        let s = Settings::new(instance, settings, SETTINGS)?;
        let routing_key = s.required_secret_file("routing_key_file")?;
        let len = routing_key.expose().chars().count();
        if len != ROUTING_KEY_LEN {
            return Err(s.error(format!(
                "`routing_key_file`: a PagerDuty routing key (integration key) is \
                 {ROUTING_KEY_LEN} characters, the file holds {len}"
            )));
        }
        let base = match s.url("url")? {
            Some(u) => u,
            None => reqwest::Url::parse(DEFAULT_URL).map_err(|e| s.error(e.to_string()))?,
        };
        Ok(PagerDutyConnector {
            routing_key,
            enqueue: http::endpoint(&base, &["v2", "enqueue"]),
            client: s.http_client()?,
        })
    }

    /// The event to send, without the routing key (which only `run` adds).
    fn event(action: &str, args: &Args) -> Result<Enqueue, ConnectorError> {
        if find_action(ACTIONS, action).is_none() {
            return Err(ConnectorError::UnknownAction(action.to_owned()));
        }
        if action != "trigger" {
            let key = given(args, "dedup_key")
                .ok_or_else(|| ConnectorError::invalid(action, "`dedup_key` is required"))?;
            check_dedup_key(action, key)?;
            return Ok(Enqueue {
                body: json!({ "event_action": action, "dedup_key": key }),
                dedup_key: key.to_owned(),
                said: None,
            });
        }
        trigger(args)
    }
}

/// One event for the Events API.
struct Enqueue {
    /// The request body, without the routing key.
    body: Value,
    dedup_key: String,
    /// A trigger's severity and summary, for its plan.
    said: Option<(String, String)>,
}

/// A non-empty string argument.
fn check_dedup_key(action: &str, key: &str) -> Result<(), ConnectorError> {
    check_len(action, "dedup_key", key, DEDUP_KEY_MAX, "PagerDuty")
}

/// PagerDuty's severity for a riposte severity.
pub fn severity_of(riposte: &str) -> &'static str {
    match riposte.to_ascii_lowercase().as_str() {
        "critical" => "critical",
        "high" => "error",
        "low" | "info" => "info",
        // medium, and anything unknown: worth a look, not a wake-up.
        _ => "warning",
    }
}

fn trigger(args: &Args) -> Result<Enqueue, ConnectorError> {
    let raw = args.get("notice").cloned().unwrap_or(Value::Null);
    let notice = Notice::from_value(&raw);
    let severity = match given(args, "severity") {
        Some(s) if SEVERITIES.contains(&s) => s.to_owned(),
        Some(s) => {
            return Err(ConnectorError::invalid(
                "trigger",
                format!(
                    "`severity` must be one of {}, got `{s}`",
                    SEVERITIES.join(", ")
                ),
            ))
        }
        None => severity_of(&notice.severity).to_owned(),
    };
    let dedup_key = match given(args, "dedup_key") {
        Some(k) => {
            check_dedup_key("trigger", k)?;
            k.to_owned()
        }
        None => notice.incident_key(DEDUP_KEY_MAX),
    };
    let summary = given(args, "summary")
        .map(str::to_owned)
        .unwrap_or_else(|| notice.headline());
    let summary = if summary.trim().is_empty() {
        "riposte alert".to_owned()
    } else {
        clip(&summary, SUMMARY_MAX)
    };
    let place = &notice.place;
    let source = given(args, "source")
        .map(str::to_owned)
        .or_else(|| place.node.clone().or_else(|| place.host.clone()))
        .filter(|s| !s.is_empty())
        .or_else(|| Some(place.short()).filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "riposte".to_owned());
    let mut payload = Map::new();
    payload.insert("summary".into(), summary.clone().into());
    payload.insert("source".into(), source.into());
    payload.insert("severity".into(), severity.clone().into());
    if !notice.time.is_empty() {
        payload.insert("timestamp".into(), notice.time.clone().into());
    }
    let defaults = [
        (
            "component",
            place.container.clone().or_else(|| place.image.clone()),
        ),
        ("group", place.namespace.clone()),
        ("class", Some(notice.title.clone())),
    ];
    for (name, default) in defaults {
        let value = given(args, name).map(str::to_owned).or(default);
        if let Some(v) = value.filter(|v| !v.is_empty()) {
            payload.insert(name.into(), v.into());
        }
    }
    // The whole notice, as the playbook handed it over when it is a map.
    let details = match raw {
        Value::Object(_) => raw,
        _ => serde_json::to_value(&notice).unwrap_or(Value::Null),
    };
    payload.insert("custom_details".into(), details);
    let mut event = json!({
        "event_action": "trigger",
        "dedup_key": dedup_key,
        "payload": payload,
        "client": "riposte",
    });
    if let (Some(runbook), Value::Object(m)) = (&notice.links.runbook, &mut event) {
        m.insert(
            "links".into(),
            json!([{ "href": runbook, "text": "Runbook" }]),
        );
    }
    Ok(Enqueue {
        body: event,
        dedup_key,
        said: Some((severity, summary)),
    })
}

#[async_trait]
impl Connector for PagerDutyConnector {
    fn actions(&self) -> &'static [ActionSpec] {
        ACTIONS
    }

    fn describe(&self, action: &str, args: &Args) -> Result<Plan, ConnectorError> {
        let event = Self::event(action, args)?;
        let key = &event.dedup_key;
        let at = http::origin(&self.enqueue);
        let description = match &event.said {
            Some((severity, summary)) => format!(
                "trigger a PagerDuty alert ({severity}, dedup key `{key}`) at {at}: {}",
                clip(summary, 200)
            ),
            None => format!("{action} the PagerDuty alert with dedup key `{key}` at {at}"),
        };
        Ok(Plan { description })
    }

    async fn run(&self, action: &str, args: &Args) -> Result<Output, ConnectorError> {
        let Enqueue {
            body: mut event,
            dedup_key: sent_key,
            ..
        } = Self::event(action, args)?;
        if let Value::Object(m) = &mut event {
            m.insert(
                "routing_key".into(),
                self.routing_key.expose().to_owned().into(),
            );
        }
        let answer = http::post_json(&self.client, &self.enqueue, &[], &event).await?;
        let field = |k: &str| {
            answer
                .body
                .get(k)
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        Ok(Output {
            output: json!({
                "status": field("status").unwrap_or_else(|| answer.status.to_string()),
                "message": field("message").unwrap_or_default(),
                "dedup_key": field("dedup_key").unwrap_or(sent_key),
            }),
            undo: None,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use crate::notice::{Links, Place};

    const KEY: &str = "R0UT1NGKEY0123456789abcdefABCDEF";

    fn notice() -> Notice {
        Notice {
            title: "Terminal shell in container".into(),
            severity: "high".into(),
            source: "falco".into(),
            time: "2026-11-23T12:00:00Z".into(),
            event_id: "evt-1".into(),
            playbook: "shell-in-container".into(),
            run_id: "r-1".into(),
            outcome: "ok".into(),
            place: Place {
                container: Some("web-1".into()),
                container_id: Some("c0ffee".into()),
                image: Some("registry/app:1.2".into()),
                pod: Some("web-1-7f9c".into()),
                namespace: Some("shop".into()),
                node: Some("node-1".into()),
                ..Place::default()
            },
            links: Links {
                runbook: Some("https://wiki.example/shell".into()),
                audit: "riposte audit --run r-1".into(),
            },
            ..Notice::default()
        }
    }

    fn args(v: Value) -> Args {
        v.as_object().unwrap().clone()
    }

    fn connector(dir: &std::path::Path) -> PagerDutyConnector {
        let f = dir.join("pd.key");
        std::fs::write(&f, format!("{KEY}\n")).unwrap();
        let settings =
            json!({ "routing_key_file": f.display().to_string(), "url": "http://127.0.0.1:1" });
        PagerDutyConnector::new("pd", settings.as_object().unwrap(), &Deps::default()).unwrap()
    }

    #[test]
    fn a_trigger_renders_the_notice_in_pagerdutys_fields() {
        let n = notice();
        let e = PagerDutyConnector::event(
            "trigger",
            &args(json!({ "notice": serde_json::to_value(&n).unwrap() })),
        )
        .unwrap()
        .body;
        assert_eq!(e["event_action"], "trigger");
        assert_eq!(e["dedup_key"], "riposte:shell-in-container:c0ffee");
        assert_eq!(e["client"], "riposte");
        let p = &e["payload"];
        assert_eq!(p["summary"], n.headline());
        assert_eq!(p["severity"], "error");
        assert_eq!(p["source"], "node-1");
        assert_eq!(p["component"], "web-1");
        assert_eq!(p["group"], "shop");
        assert_eq!(p["class"], "Terminal shell in container");
        assert_eq!(p["timestamp"], "2026-11-23T12:00:00Z");
        assert_eq!(p["custom_details"]["run_id"], "r-1");
        assert_eq!(e["links"][0]["href"], "https://wiki.example/shell");
        assert!(e.get("routing_key").is_none());
    }

    #[test]
    fn severities_map_to_pagerdutys_four_levels() {
        let pairs = [
            ("critical", "critical"),
            ("high", "error"),
            ("medium", "warning"),
            ("low", "info"),
            ("info", "info"),
        ];
        for (ours, theirs) in pairs {
            assert_eq!(severity_of(ours), theirs, "{ours}");
        }
    }

    #[test]
    fn overrides_win_and_limits_hold() {
        let e = PagerDutyConnector::event(
            "trigger",
            &args(json!({
                "notice": serde_json::to_value(notice()).unwrap(),
                "summary": "s".repeat(2000),
                "severity": "info",
                "dedup_key": "incident-7",
                "source": "edge",
            })),
        )
        .unwrap()
        .body;
        assert_eq!(
            e["payload"]["summary"].as_str().unwrap().chars().count(),
            1024
        );
        assert_eq!(e["payload"]["severity"], "info");
        assert_eq!(e["payload"]["source"], "edge");
        assert_eq!(e["dedup_key"], "incident-7");
        let bad = PagerDutyConnector::event("trigger", &args(json!({ "severity": "high" })));
        assert!(bad
            .err()
            .unwrap()
            .to_string()
            .contains("`severity` must be one of"));
        let long =
            PagerDutyConnector::event("resolve", &args(json!({ "dedup_key": "k".repeat(256) })));
        assert!(long.err().unwrap().to_string().contains("at most 255"));
        let ack =
            PagerDutyConnector::event("acknowledge", &args(json!({ "dedup_key": "k" }))).unwrap();
        assert_eq!(
            ack.body,
            json!({ "event_action": "acknowledge", "dedup_key": "k" })
        );
    }

    #[tokio::test]
    async fn the_routing_key_is_never_in_a_plan_or_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let c = connector(dir.path());
        assert!(!format!("{c:?}").contains(KEY));
        let a = args(json!({ "notice": serde_json::to_value(notice()).unwrap() }));
        let plan = c.describe("trigger", &a).unwrap().description;
        assert!(plan.starts_with("trigger a PagerDuty alert (error, dedup key `riposte:shell-in-container:c0ffee`) at http://127.0.0.1:1"), "{plan}");
        assert!(!plan.contains(KEY));
        let err = c.run("trigger", &a).await.unwrap_err();
        assert!(err.is_retryable(), "{err}");
        assert!(!err.to_string().contains(KEY), "{err}");
    }

    #[test]
    fn a_routing_key_of_the_wrong_length_is_refused_without_quoting_it() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pd.key");
        std::fs::write(&f, "short-secret").unwrap();
        let settings = json!({ "routing_key_file": f.display().to_string() });
        let err = PagerDutyConnector::new("pd", settings.as_object().unwrap(), &Deps::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("32 characters, the file holds 12"), "{err}");
        assert!(!err.contains("short-secret"));
        let unknown = json!({ "routing_key_file": f.display().to_string(), "key": "x" });
        assert!(
            PagerDutyConnector::new("pd", unknown.as_object().unwrap(), &Deps::default()).is_err()
        );
    }
}
