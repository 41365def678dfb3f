//! Connector `opsgenie`: creates, annotates and closes Opsgenie alerts through the Alert API
//! (`/v2/alerts`, `Authorization: GenieKey <key>`).
//!
//! `create` renders the enriched [`Notice`]: the headline as the message, the plain-text notice
//! as the description, the severity as a priority, the place as the entity and the notice's
//! facts as `details`. Its alias defaults to [`Notice::incident_key`], so Opsgenie counts repeats
//! about the same workload on one open alert, and `note` and `close` find it by alias.
//! Every field is cut to Opsgenie's documented limit rather than refused, so a long event still
//! pages.
//!
//! The API key is read from `api_key_file` and only ever goes into the `Authorization` header.

use async_trait::async_trait;
use serde_json::{json, Map, Value};

use crate::http::{self, Secret, Settings};
use crate::notice::{clip, Notice};
use crate::spec::{check_len, find_action, given, ActionSpec, ParamSpec, ParamType};
use crate::{Args, BuildError, Connector, ConnectorError, Deps, Output, Plan};

/// Where the Alert API lives unless the `url` setting says otherwise (EU accounts:
/// `https://api.eu.opsgenie.com`).
const DEFAULT_URL: &str = "https://api.opsgenie.com";
/// Opsgenie's documented limits (characters, or items).
const MESSAGE_MAX: usize = 130;
const ALIAS_MAX: usize = 512;
const DESCRIPTION_MAX: usize = 15_000;
const ENTITY_MAX: usize = 512;
const SOURCE_MAX: usize = 100;
const NOTE_MAX: usize = 25_000;
const TAGS_MAX: usize = 20;
const TAG_MAX: usize = 50;
const RESPONDERS_MAX: usize = 50;
const DETAILS_MAX: usize = 8_000;
/// Responder types Opsgenie routes to.
const RESPONDER_TYPES: &[&str] = &["team", "user", "escalation", "schedule"];

const SETTINGS: &[&str] = &["api_key_file", "url", "timeout", "ca_file"];

const ALIAS: ParamSpec = ParamSpec {
    name: "alias",
    ty: ParamType::String,
    required: true,
    description: "The alert's alias, as `create` used it.",
};

/// The actions of `opsgenie`.
pub const ACTIONS: &[ActionSpec] = &[
    ActionSpec {
        name: "create",
        description: "Creates an Opsgenie alert that says what happened, where, whose it is and \
                      what riposte did (a repeat with the same alias adds to the open alert); in \
                      `notify` without `with`, from the notice.",
        params: &[
            ParamSpec {
                name: "notice",
                ty: ParamType::Any,
                required: false,
                description: "The enriched notice (filled by the engine when left out).",
            },
            ParamSpec {
                name: "message",
                ty: ParamType::String,
                required: false,
                description: "The alert's title (default the notice's headline; cut to 130 \
                              characters).",
            },
            ParamSpec {
                name: "alias",
                ty: ParamType::String,
                required: false,
                description: "Deduplicates alerts (default \
                              `riposte:<playbook>:<container id, namespace/pod or event id>`; at \
                              most 512 characters).",
            },
            ParamSpec {
                name: "description",
                ty: ParamType::String,
                required: false,
                description: "The alert's body (default the notice as text; cut to 15000 \
                              characters).",
            },
            ParamSpec {
                name: "priority",
                ty: ParamType::String,
                required: false,
                description: "`P1` … `P5` (default from the event: critical→P1, high→P2, \
                              medium→P3, low→P4, info→P5).",
            },
            ParamSpec {
                name: "tags",
                ty: ParamType::Any,
                required: false,
                description: "A list of tags (default `riposte`, the source and the severity; at \
                              most 20 of 50 characters).",
            },
            ParamSpec {
                name: "responders",
                ty: ParamType::Any,
                required: false,
                description: "Who to route to: a list of `team:<name>`, `user:<username>`, \
                              `escalation:<name>`, `schedule:<name>`, or Opsgenie's own \
                              `{type, id|name|username}` maps (default: the integration's \
                              team).",
            },
            ParamSpec {
                name: "entity",
                ty: ParamType::String,
                required: false,
                description: "What the alert is about (default the place: container, pod, node).",
            },
            ParamSpec {
                name: "source",
                ty: ParamType::String,
                required: false,
                description: "Where the alert comes from (default `riposte`).",
            },
        ],
        destructive: false,
        reversible: false,
        message_param: Some("notice"),
    },
    ActionSpec {
        name: "close",
        description: "Closes the Opsgenie alert with this alias.",
        params: &[
            ALIAS,
            ParamSpec {
                name: "note",
                ty: ParamType::String,
                required: false,
                description: "A note to add while closing it.",
            },
        ],
        destructive: false,
        reversible: false,
        message_param: None,
    },
    ActionSpec {
        name: "note",
        description: "Adds a note to the Opsgenie alert with this alias.",
        params: &[
            ALIAS,
            ParamSpec {
                name: "note",
                ty: ParamType::String,
                required: true,
                description: "The note (cut to 25000 characters).",
            },
        ],
        destructive: false,
        reversible: false,
        message_param: None,
    },
];

/// An `opsgenie` instance.
#[derive(Debug)]
pub struct OpsgenieConnector {
    api_key: Secret,
    base: reqwest::Url,
    client: reqwest::Client,
}

/// One request to the Alert API.
struct Request {
    /// Path segments below the API root.
    path: Vec<String>,
    body: Value,
    alias: String,
    /// What the plan says after the verb.
    what: String,
}

impl OpsgenieConnector {
    /// Builds an instance: `api_key_file` (required), `url`, `timeout`, `ca_file`.
    pub fn new(
        instance: &str,
        settings: &Map<String, Value>,
        deps: &Deps,
    ) -> Result<Self, BuildError> {
        let _ = deps;
        let s = Settings::new(instance, settings, SETTINGS)?;
        let api_key = s.required_secret_file("api_key_file")?;
        let base = match s.url("url")? {
            Some(u) => u,
            None => reqwest::Url::parse(DEFAULT_URL).map_err(|e| s.error(e.to_string()))?,
        };
        Ok(OpsgenieConnector {
            api_key,
            base,
            client: s.http_client()?,
        })
    }

    fn request(action: &str, args: &Args) -> Result<Request, ConnectorError> {
        if find_action(ACTIONS, action).is_none() {
            return Err(ConnectorError::UnknownAction(action.to_owned()));
        }
        if action == "create" {
            return create(args);
        }
        let alias = given(args, "alias")
            .ok_or_else(|| ConnectorError::invalid(action, "`alias` is required"))?;
        check_alias(action, alias)?;
        let mut body = Map::new();
        body.insert("source".into(), "riposte".into());
        body.insert("user".into(), "riposte".into());
        let note = given(args, "note").map(|n| clip(n, NOTE_MAX));
        if action == "note" && note.is_none() {
            return Err(ConnectorError::invalid(action, "`note` is required"));
        }
        if let Some(n) = note {
            body.insert("note".into(), n.into());
        }
        let (segment, what) = if action == "close" {
            ("close", format!("close the Opsgenie alert `{alias}`"))
        } else {
            (
                "notes",
                format!("add a note to the Opsgenie alert `{alias}`"),
            )
        };
        Ok(Request {
            path: vec![
                "v2".into(),
                "alerts".into(),
                alias.to_owned(),
                segment.into(),
            ],
            body: Value::Object(body),
            alias: alias.to_owned(),
            what,
        })
    }
}

/// A non-empty string argument.
fn check_alias(action: &str, alias: &str) -> Result<(), ConnectorError> {
    check_len(action, "alias", alias, ALIAS_MAX, "Opsgenie")
}

/// Opsgenie's priority for a riposte severity.
pub fn priority_of(severity: &str) -> &'static str {
    match severity.to_ascii_lowercase().as_str() {
        "critical" => "P1",
        "high" => "P2",
        "low" => "P4",
        "info" => "P5",
        // medium, and anything unknown: Opsgenie's own default.
        _ => "P3",
    }
}

fn create(args: &Args) -> Result<Request, ConnectorError> {
    let notice = Notice::from_value(args.get("notice").unwrap_or(&Value::Null));
    let priority = match given(args, "priority") {
        Some(p) if matches!(p, "P1" | "P2" | "P3" | "P4" | "P5") => p.to_owned(),
        Some(p) => {
            return Err(ConnectorError::invalid(
                "create",
                format!("`priority` must be P1, P2, P3, P4 or P5, got `{p}`"),
            ))
        }
        None => priority_of(&notice.severity).to_owned(),
    };
    let alias = match given(args, "alias") {
        Some(a) => {
            check_alias("create", a)?;
            a.to_owned()
        }
        None => notice.incident_key(ALIAS_MAX),
    };
    let message = given(args, "message")
        .map(str::to_owned)
        .unwrap_or_else(|| notice.headline());
    let message = if message.trim().is_empty() {
        "riposte alert".to_owned()
    } else {
        clip(&message, MESSAGE_MAX)
    };
    let description = given(args, "description")
        .map(str::to_owned)
        .unwrap_or_else(|| notice.text());
    let entity = given(args, "entity")
        .map(str::to_owned)
        .unwrap_or_else(|| notice.place.short());
    let source = given(args, "source").unwrap_or("riposte");
    let tags = match args.get("tags").filter(|v| !v.is_null()) {
        Some(v) => tags(v)?,
        None => ["riposte", &notice.source, &notice.severity]
            .iter()
            .filter(|t| !t.is_empty())
            .map(|t| clip(t, TAG_MAX))
            .collect(),
    };
    let mut body = Map::new();
    body.insert("message".into(), message.clone().into());
    body.insert("alias".into(), alias.clone().into());
    body.insert(
        "description".into(),
        clip(&description, DESCRIPTION_MAX).into(),
    );
    body.insert("priority".into(), priority.clone().into());
    body.insert("source".into(), clip(source, SOURCE_MAX).into());
    body.insert("tags".into(), tags.into());
    body.insert("details".into(), Value::Object(details(&notice)));
    if !entity.is_empty() {
        body.insert("entity".into(), clip(&entity, ENTITY_MAX).into());
    }
    if let Some(v) = args.get("responders").filter(|v| !v.is_null()) {
        body.insert("responders".into(), Value::Array(responders(v)?));
    }
    Ok(Request {
        path: vec!["v2".into(), "alerts".into()],
        body: Value::Object(body),
        what: format!("create an Opsgenie alert ({priority}, alias `{alias}`): {message}"),
        alias,
    })
}

/// `tags`: a list of strings (or one string), at most 20 of at most 50 characters.
fn tags(v: &Value) -> Result<Vec<String>, ConnectorError> {
    let items: Vec<&Value> = match v {
        Value::Array(items) => items.iter().collect(),
        one => vec![one],
    };
    items
        .into_iter()
        .take(TAGS_MAX)
        .map(|t| {
            t.as_str().map(|t| clip(t, TAG_MAX)).ok_or_else(|| {
                ConnectorError::invalid("create", "`tags` must be a list of strings")
            })
        })
        .collect()
}

/// `responders`: `team:<name>`, `user:<username>`, `escalation:<name>`, `schedule:<name>`, or
/// Opsgenie's `{type, id|name|username}` maps.
fn responders(v: &Value) -> Result<Vec<Value>, ConnectorError> {
    let items: Vec<&Value> = match v {
        Value::Array(items) => items.iter().collect(),
        one => vec![one],
    };
    if items.len() > RESPONDERS_MAX {
        return Err(ConnectorError::invalid(
            "create",
            format!("at most {RESPONDERS_MAX} `responders`, got {}", items.len()),
        ));
    }
    items
        .into_iter()
        .map(|r| match r {
            Value::String(s) => {
                let (kind, who) = s.split_once(':').ok_or_else(|| {
                    ConnectorError::invalid(
                        "create",
                        format!("responder `{s}` must be `team:<name>`, `user:<username>`, `escalation:<name>` or `schedule:<name>`"),
                    )
                })?;
                if !RESPONDER_TYPES.contains(&kind) || who.is_empty() {
                    return Err(ConnectorError::invalid(
                        "create",
                        format!("responder `{s}`: the type must be one of {}", RESPONDER_TYPES.join(", ")),
                    ));
                }
                let key = if kind == "user" { "username" } else { "name" };
                Ok(json!({ "type": kind, key: who }))
            }
            Value::Object(m) => {
                let kind = m.get("type").and_then(Value::as_str).unwrap_or_default();
                let named = ["id", "name", "username"].iter().any(|k| m.contains_key(*k));
                if !RESPONDER_TYPES.contains(&kind) || !named {
                    return Err(ConnectorError::invalid(
                        "create",
                        format!(
                            "a responder map needs `type` ({}) and `id`, `name` or `username`",
                            RESPONDER_TYPES.join(", ")
                        ),
                    ));
                }
                Ok(r.clone())
            }
            _ => Err(ConnectorError::invalid("create", "`responders` must be a list of strings or maps")),
        })
        .collect()
}

/// The notice's facts as a flat map of strings, within Opsgenie's 8000 characters in total.
fn details(notice: &Notice) -> Map<String, Value> {
    let mut facts: Vec<(String, String)> = notice
        .facts()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    let done = notice.action_lines();
    if !done.is_empty() {
        facts.push(("what riposte did".into(), done.join("; ")));
    }
    if !notice.evidence.is_empty() {
        facts.push(("evidence".into(), notice.evidence.join(", ")));
    }
    if !notice.links.audit.is_empty() {
        facts.push(("audit".into(), notice.links.audit.clone()));
    }
    if let Some(g) = notice.group.as_ref().filter(|g| g.events > 1) {
        facts.push((
            "events".into(),
            format!("{} since {} ({} new)", g.events, g.first_seen, g.new_events),
        ));
    }
    let mut out = Map::new();
    let mut room = DETAILS_MAX;
    for (k, v) in facts {
        let need = k.chars().count() + 1;
        if need >= room {
            break;
        }
        let v = clip(&v, (room - need).min(1000));
        room -= need + v.chars().count();
        out.insert(k, v.into());
    }
    out
}

#[async_trait]
impl Connector for OpsgenieConnector {
    fn actions(&self) -> &'static [ActionSpec] {
        ACTIONS
    }

    fn describe(&self, action: &str, args: &Args) -> Result<Plan, ConnectorError> {
        let r = Self::request(action, args)?;
        Ok(Plan {
            description: format!("{} at {}", r.what, http::origin(&self.base)),
        })
    }

    async fn run(&self, action: &str, args: &Args) -> Result<Output, ConnectorError> {
        let r = Self::request(action, args)?;
        let path: Vec<&str> = r.path.iter().map(String::as_str).collect();
        let mut url = http::endpoint(&self.base, &path);
        if action != "create" {
            url.query_pairs_mut().append_pair("identifierType", "alias");
        }
        let auth = format!("GenieKey {}", self.api_key.expose());
        let answer =
            http::post_json(&self.client, &url, &[("Authorization", auth)], &r.body).await?;
        let field = |k: &str| answer.body.get(k).cloned().unwrap_or(Value::Null);
        Ok(Output {
            output: json!({
                "status": answer.status,
                "alias": r.alias,
                "result": field("result"),
                "request_id": field("requestId"),
            }),
            undo: None,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use crate::notice::{Done, Links, Owner, Place};

    fn notice() -> Notice {
        Notice {
            title: "Terminal shell in container".into(),
            severity: "critical".into(),
            source: "falco".into(),
            summary: "A shell was spawned in a container".into(),
            event_id: "evt-1".into(),
            playbook: "shell-in-container".into(),
            run_id: "r-1".into(),
            outcome: "ok".into(),
            place: Place {
                container: Some("web-1".into()),
                container_id: Some("c0ffee".into()),
                pod: Some("web-1-7f9c".into()),
                namespace: Some("shop".into()),
                ..Place::default()
            },
            owner: Owner {
                team: Some("payments".into()),
                oncall: None,
            },
            actions: vec![Done {
                step: "freeze".into(),
                action: "docker.pause".into(),
                outcome: "ok".into(),
                revert_command: Some("riposte revert r-1 --step freeze".into()),
                ..Done::default()
            }],
            links: Links {
                runbook: None,
                audit: "riposte audit --run r-1".into(),
            },
            ..Notice::default()
        }
    }

    fn args(v: Value) -> Args {
        v.as_object().unwrap().clone()
    }

    fn with_notice(extra: Value) -> Args {
        let mut a = args(json!({ "notice": serde_json::to_value(notice()).unwrap() }));
        a.extend(args(extra));
        a
    }

    #[test]
    fn create_renders_the_notice_as_an_alert() {
        let r = OpsgenieConnector::request("create", &with_notice(json!({}))).unwrap();
        assert_eq!(r.path, vec!["v2", "alerts"]);
        let b = &r.body;
        assert_eq!(b["alias"], "riposte:shell-in-container:c0ffee");
        assert_eq!(b["priority"], "P1");
        assert_eq!(b["source"], "riposte");
        assert_eq!(b["tags"], json!(["riposte", "falco", "critical"]));
        assert!(b["message"]
            .as_str()
            .unwrap()
            .starts_with("[critical] Terminal shell"));
        assert!(b["description"]
            .as_str()
            .unwrap()
            .contains("riposte revert r-1 --step freeze"));
        assert_eq!(b["entity"], "container web-1, pod shop/web-1-7f9c");
        assert_eq!(b["details"]["owner team"], "payments");
        assert!(b["details"]["what riposte did"]
            .as_str()
            .unwrap()
            .contains("docker.pause"));
        assert!(b["details"]
            .as_object()
            .unwrap()
            .values()
            .all(Value::is_string));
    }

    #[test]
    fn priorities_follow_the_severity() {
        for (sev, p) in [
            ("critical", "P1"),
            ("high", "P2"),
            ("medium", "P3"),
            ("low", "P4"),
            ("info", "P5"),
        ] {
            assert_eq!(priority_of(sev), p);
        }
    }

    #[test]
    fn fields_are_cut_to_opsgenies_limits() {
        let mut n = notice();
        n.summary = "x".repeat(20_000);
        n.excerpt = "y".repeat(20_000);
        let mut a = args(json!({ "notice": serde_json::to_value(&n).unwrap() }));
        a.insert("message".into(), "m".repeat(500).into());
        a.insert(
            "tags".into(),
            json!((0..30)
                .map(|i| format!("{i}{}", "t".repeat(60)))
                .collect::<Vec<_>>()),
        );
        let b = OpsgenieConnector::request("create", &a).unwrap().body;
        assert_eq!(b["message"].as_str().unwrap().chars().count(), 130);
        assert!(b["description"].as_str().unwrap().chars().count() <= 15_000);
        let tags = b["tags"].as_array().unwrap();
        assert_eq!(tags.len(), 20);
        assert!(tags
            .iter()
            .all(|t| t.as_str().unwrap().chars().count() <= 50));
        let total: usize = b["details"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| k.chars().count() + v.as_str().unwrap().chars().count())
            .sum();
        assert!(total <= 8000, "{total}");
        let long = OpsgenieConnector::request("close", &args(json!({ "alias": "a".repeat(513) })));
        assert!(long.err().unwrap().to_string().contains("at most 512"));
    }

    #[test]
    fn responders_are_written_the_way_opsgenie_reads_them() {
        let r = OpsgenieConnector::request(
            "create",
            &with_notice(json!({ "responders": ["team:soc", "user:ana@example.com", { "type": "schedule", "id": "4513b7ea" }] })),
        )
        .unwrap();
        assert_eq!(
            r.body["responders"],
            json!([
                { "type": "team", "name": "soc" },
                { "type": "user", "username": "ana@example.com" },
                { "type": "schedule", "id": "4513b7ea" }
            ])
        );
        let bad =
            OpsgenieConnector::request("create", &with_notice(json!({ "responders": ["crew:x"] })));
        assert!(bad
            .err()
            .unwrap()
            .to_string()
            .contains("the type must be one of"));
        let bad = OpsgenieConnector::request("create", &with_notice(json!({ "priority": "P0" })));
        assert!(bad
            .err()
            .unwrap()
            .to_string()
            .contains("P1, P2, P3, P4 or P5"));
    }

    #[test]
    fn note_and_close_address_the_alert_by_alias() {
        let r = OpsgenieConnector::request(
            "note",
            &args(json!({ "alias": "riposte:pb:c/1", "note": "contained" })),
        )
        .unwrap();
        assert_eq!(r.path, vec!["v2", "alerts", "riposte:pb:c/1", "notes"]);
        assert_eq!(r.body["note"], "contained");
        let missing = OpsgenieConnector::request("note", &args(json!({ "alias": "a" })));
        assert!(missing
            .err()
            .unwrap()
            .to_string()
            .contains("`note` is required"));
        let r = OpsgenieConnector::request("close", &args(json!({ "alias": "a" }))).unwrap();
        assert_eq!(r.path, vec!["v2", "alerts", "a", "close"]);
    }

    #[tokio::test]
    async fn the_api_key_is_never_in_a_plan_or_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("og.key");
        std::fs::write(&f, "eb243592-faa2-4ba2-a551q-1afdf565c889\n").unwrap();
        let settings =
            json!({ "api_key_file": f.display().to_string(), "url": "http://127.0.0.1:1" });
        let c =
            OpsgenieConnector::new("og", settings.as_object().unwrap(), &Deps::default()).unwrap();
        assert!(!format!("{c:?}").contains("eb243592"));
        let a = with_notice(json!({}));
        let plan = c.describe("create", &a).unwrap().description;
        assert!(
            plan.starts_with(
                "create an Opsgenie alert (P1, alias `riposte:shell-in-container:c0ffee`)"
            ),
            "{plan}"
        );
        assert!(plan.ends_with("at http://127.0.0.1:1"), "{plan}");
        let err = c.run("create", &a).await.unwrap_err().to_string();
        assert!(!err.contains("eb243592"), "{err}");
        let unknown = json!({ "api_key_file": f.display().to_string(), "region": "eu" });
        let err = OpsgenieConnector::new("og", unknown.as_object().unwrap(), &Deps::default())
            .unwrap_err();
        assert!(err.to_string().contains("unknown setting `region`"));
    }
}
