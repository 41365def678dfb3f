//! Connector `alertmanager`: fires and resolves alerts through Alertmanager's API
//! (`POST /api/v2/alerts`), so riposte's notices reach the routes, silences and inhibitions a
//! team already runs.
//!
//! `fire` posts one alert whose labels say what and where (alertname, severity, playbook,
//! source, container, pod, namespace, node, the run) and whose annotations carry the notice's
//! headline and text. The alert has an end (`ends_after`, 1h by default), so Alertmanager
//! resolves it by itself when nobody does. `resolve` finds the active alerts whose labels
//! include the identifying ones (alertname and place, without the run or playbook, so another
//! run, from another playbook, can resolve what an earlier one fired) and posts them again
//! ending now.
//!
//! It owns the instance's HTTP client and basic-auth credentials (the password from a file); it
//! never puts the password in an error, a plan or an output.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Map, Value};

use crate::http::{origin, post_json, Secret, Settings};
use crate::notice::Notice;
use crate::spec::{str_arg, ActionSpec, ParamSpec, ParamType};
use crate::{Args, BuildError, Connector, ConnectorError, Deps, Output, Plan};

const NOTICE: ParamSpec = ParamSpec {
    name: "notice",
    ty: ParamType::Any,
    required: false,
    description: "The enriched notice (filled by the engine when left out).",
};

const ALERTNAME: ParamSpec = ParamSpec {
    name: "alertname",
    ty: ParamType::String,
    required: false,
    description: "The alert's name (default: the notice's title).",
};

/// The actions of `alertmanager`.
pub const ACTIONS: &[ActionSpec] = &[
    ActionSpec {
        name: "fire",
        description: "Posts a firing alert to Alertmanager: labels alertname, severity, playbook, \
                      source, container, pod, namespace, node and riposte_run (riposte_group for \
                      a grouped notice), merged under `labels`, annotations summary, description and runbook_url (merged under \
                      `annotations`). Alertmanager resolves it by itself after `ends_after`; \
                      `resolve` with the same alertname and place resolves it sooner.",
        params: &[
            NOTICE,
            ALERTNAME,
            ParamSpec {
                name: "labels",
                ty: ParamType::Any,
                required: false,
                description: "Labels merged over the defaults (a map; a null value removes one).",
            },
            ParamSpec {
                name: "annotations",
                ty: ParamType::Any,
                required: false,
                description: "Annotations merged over the defaults (a map; null removes one).",
            },
            ParamSpec {
                name: "ends_after",
                ty: ParamType::String,
                required: false,
                description: "When Alertmanager resolves the alert by itself (default 1h).",
            },
            ParamSpec {
                name: "generator_url",
                ty: ParamType::String,
                required: false,
                description: "The alert's generatorURL (a link back to its source).",
            },
        ],
        destructive: false,
        reversible: false,
        message_param: Some("notice"),
    },
    ActionSpec {
        name: "resolve",
        description: "Resolves (ends now) every active alert whose labels include alertname \
                      (default: the notice's title), the notice's container, pod, namespace and \
                      node, the instance's labels, and `labels` (a null value drops one from the \
                      match).",
        params: &[
            NOTICE,
            ALERTNAME,
            ParamSpec {
                name: "labels",
                ty: ParamType::Any,
                required: false,
                description: "Labels the alerts must have, merged over the defaults (a map; a \
                              null value removes one).",
            },
        ],
        destructive: false,
        reversible: false,
        message_param: Some("notice"),
    },
];

const SETTINGS: &[&str] = &[
    "url",
    "username",
    "password_file",
    "timeout",
    "ca_file",
    "labels",
];

/// How long a fired alert lasts when the step does not say.
const DEFAULT_ENDS_AFTER: Duration = Duration::from_secs(3600);

/// The alert name when neither the step nor the notice gives one.
const FALLBACK_ALERTNAME: &str = "riposte";

/// Labels that say where an event happened: they identify an alert together with its name.
const PLACE_LABELS: &[&str] = &["container", "pod", "namespace", "node"];

type Labels = BTreeMap<String, String>;

/// Basic-auth credentials; the password prints as `***`.
#[derive(Debug)]
struct BasicAuth {
    username: String,
    password: Secret,
}

impl BasicAuth {
    fn header(&self) -> String {
        let pair = format!("{}:{}", self.username, self.password.expose());
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        )
    }
}

/// An `alertmanager` instance.
#[derive(Debug)]
pub struct AlertmanagerConnector {
    client: reqwest::Client,
    /// `<url>/api/v2/alerts`.
    alerts: reqwest::Url,
    /// What may be said about the URL.
    at: String,
    auth: Option<BasicAuth>,
    /// Static labels of every alert of this instance.
    labels: Labels,
}

impl AlertmanagerConnector {
    /// Builds an instance from its settings: `url` (required), `username` with
    /// `password_file`, `timeout`, `ca_file`, `labels`.
    pub fn new(
        instance: &str,
        settings: &Map<String, Value>,
        deps: &Deps,
    ) -> Result<Self, BuildError> {
        let _ = deps;
        let s = Settings::new(instance, settings, SETTINGS)?;
        let url = s
            .url("url")?
            .ok_or_else(|| s.error("`url` is required (e.g. `http://127.0.0.1:9093`)"))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(s.error(
                "`url` must not carry credentials: give `username` and `password_file` instead",
            ));
        }
        let at = origin(&url);
        let mut alerts = url;
        alerts.set_query(None);
        alerts.set_fragment(None);
        alerts
            .path_segments_mut()
            .map_err(|()| s.error("`url` cannot take a path"))?
            .pop_if_empty()
            .extend(["api", "v2", "alerts"]);
        let auth = match (s.string("username")?, s.secret_file("password_file")?) {
            (Some(username), Some(password)) => Some(BasicAuth { username, password }),
            (None, None) => None,
            (Some(_), None) => return Err(s.error("`username` needs `password_file`")),
            (None, Some(_)) => return Err(s.error("`password_file` needs `username`")),
        };
        let mut labels = Labels::new();
        match settings.get("labels") {
            None | Some(Value::Null) => {}
            Some(Value::Object(map)) => {
                for (k, v) in map {
                    let Some(v) = v.as_str() else {
                        return Err(s.error(format!("`labels.{k}` must be a string")));
                    };
                    if !valid_label_name(k) {
                        return Err(s.error(format!(
                            "`labels`: `{k}` is not a valid label name ([a-zA-Z_][a-zA-Z0-9_]*)"
                        )));
                    }
                    labels.insert(k.clone(), v.to_owned());
                }
            }
            Some(_) => return Err(s.error("`labels` must be a map of strings")),
        }
        Ok(AlertmanagerConnector {
            client: s.http_client()?,
            alerts,
            at,
            auth,
            labels,
        })
    }

    fn headers(&self) -> Vec<(&'static str, String)> {
        self.auth
            .iter()
            .map(|a| ("authorization", a.header()))
            .collect()
    }

    /// The alert `fire` sends, from the arguments alone.
    fn alert(&self, args: &Args, now: DateTime<Utc>) -> Result<Alert, ConnectorError> {
        let invalid = |reason: String| ConnectorError::InvalidArgs {
            action: "fire".to_owned(),
            reason,
        };
        let notice = notice_of(args);
        let mut labels = default_labels(&notice, str_arg(args, "alertname"));
        labels.extend(self.labels.clone());
        merge(&mut labels, args, "labels").map_err(invalid)?;
        check_labels(&labels).map_err(invalid)?;

        let mut annotations = Labels::new();
        annotations.insert("summary".to_owned(), notice.headline());
        annotations.insert("description".to_owned(), notice.text());
        if let Some(r) = notice.links.runbook.as_ref().filter(|r| !r.is_empty()) {
            annotations.insert("runbook_url".to_owned(), r.clone());
        }
        merge(&mut annotations, args, "annotations").map_err(invalid)?;

        let ends_after = match str_arg(args, "ends_after") {
            None => DEFAULT_ENDS_AFTER,
            Some(s) => humantime::parse_duration(s)
                .map_err(|e| invalid(format!("`ends_after` `{s}`: {e} (e.g. `1h`)")))?,
        };
        let ends_after = chrono::Duration::from_std(ends_after)
            .ok()
            .filter(|d| *d > chrono::Duration::zero())
            .ok_or_else(|| invalid("`ends_after` must be a positive duration".to_owned()))?;
        Ok(Alert {
            labels,
            annotations,
            starts_at: now,
            ends_at: now + ends_after,
            generator_url: str_arg(args, "generator_url").map(str::to_owned),
        })
    }

    /// The labels `resolve` matches, from the arguments alone.
    fn matchers(&self, args: &Args) -> Result<Labels, ConnectorError> {
        let invalid = |reason: String| ConnectorError::InvalidArgs {
            action: "resolve".to_owned(),
            reason,
        };
        let notice = notice_of(args);
        let mut labels: Labels = default_labels(&notice, str_arg(args, "alertname"))
            .into_iter()
            .filter(|(k, _)| k == "alertname" || PLACE_LABELS.contains(&k.as_str()))
            .collect();
        labels.extend(self.labels.clone());
        merge(&mut labels, args, "labels").map_err(invalid)?;
        check_labels(&labels).map_err(invalid)?;
        Ok(labels)
    }

    async fn fire(&self, args: &Args) -> Result<Output, ConnectorError> {
        let alert = self.alert(args, Utc::now())?;
        post_json(
            &self.client,
            &self.alerts,
            &self.headers(),
            &json!([alert.to_json()]),
        )
        .await?;
        Ok(Output {
            output: json!({
                "labels": alert.labels,
                "startsAt": stamp(alert.starts_at),
                "endsAt": stamp(alert.ends_at),
            }),
            undo: None,
        })
    }

    async fn resolve(&self, args: &Args) -> Result<Output, ConnectorError> {
        let matchers = self.matchers(args)?;
        let active = self.active_alerts(&matchers).await?;
        let now = Utc::now();
        let resolved: Vec<Value> = active
            .iter()
            .map(|a| {
                let mut a = a.clone();
                a.insert("endsAt".to_owned(), Value::String(stamp(now)));
                Value::Object(a)
            })
            .collect();
        if !resolved.is_empty() {
            post_json(
                &self.client,
                &self.alerts,
                &self.headers(),
                &Value::Array(resolved),
            )
            .await?;
        }
        let labels: Vec<Value> = active
            .iter()
            .filter_map(|a| a.get("labels").cloned())
            .collect();
        let message = if labels.is_empty() {
            format!("no active alert on {} matched", self.at)
        } else {
            format!("resolved {} alert(s) on {}", labels.len(), self.at)
        };
        Ok(Output {
            output: json!({
                "matchers": matchers,
                "resolved": labels,
                "endsAt": stamp(now),
                "message": message,
            }),
            undo: None,
        })
    }

    /// The alerts Alertmanager holds (firing, silenced, inhibited or not yet processed) whose
    /// labels include `matchers`, as it can take them back in a POST.
    async fn active_alerts(
        &self,
        matchers: &Labels,
    ) -> Result<Vec<Map<String, Value>>, ConnectorError> {
        let mut url = self.alerts.clone();
        {
            let mut q = url.query_pairs_mut();
            for flag in ["active", "silenced", "inhibited", "unprocessed"] {
                q.append_pair(flag, "true");
            }
            for (k, v) in matchers {
                q.append_pair("filter", &matcher(k, v));
            }
        }
        let mut req = self.client.get(url);
        for (k, v) in self.headers() {
            req = req.header(k, v);
        }
        let resp = req.send().await.map_err(|e| {
            ConnectorError::Transient(format!("{}: {}", self.at, crate::http::failure_kind(&e)))
        })?;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        if status == 429 || status >= 500 {
            return Err(ConnectorError::Transient(answered(&self.at, status, &text)));
        }
        if !(200..300).contains(&status) {
            return Err(ConnectorError::Permanent(answered(&self.at, status, &text)));
        }
        let alerts: Vec<Value> = serde_json::from_str(&text).map_err(|e| {
            ConnectorError::Permanent(format!(
                "{}: the alert list is not what Alertmanager's API v2 returns: {e}",
                self.at
            ))
        })?;
        Ok(alerts
            .into_iter()
            .filter_map(|a| {
                let a = a.as_object()?;
                let labels = a.get("labels")?.as_object()?;
                let all = matchers
                    .iter()
                    .all(|(k, v)| labels.get(k).and_then(Value::as_str) == Some(v.as_str()));
                all.then(|| {
                    ["labels", "annotations", "startsAt", "generatorURL"]
                        .into_iter()
                        .filter_map(|k| a.get(k).map(|v| (k.to_owned(), v.clone())))
                        .collect()
                })
            })
            .collect())
    }
}

#[async_trait]
impl Connector for AlertmanagerConnector {
    fn actions(&self) -> &'static [ActionSpec] {
        ACTIONS
    }

    fn describe(&self, action: &str, args: &Args) -> Result<Plan, ConnectorError> {
        let description = match action {
            "fire" => {
                let a = self.alert(args, Utc::now())?;
                let ends = a.ends_at - a.starts_at;
                let ends = ends
                    .to_std()
                    .map(|d| humantime::format_duration(d).to_string())
                    .unwrap_or_default();
                format!(
                    "fire alert {} on {} (resolved by itself after {ends})",
                    show(&a.labels),
                    self.at
                )
            }
            "resolve" => format!(
                "resolve the alerts on {} whose labels include {}",
                self.at,
                show(&self.matchers(args)?)
            ),
            other => return Err(ConnectorError::UnknownAction(other.to_owned())),
        };
        Ok(Plan { description })
    }

    async fn run(&self, action: &str, args: &Args) -> Result<Output, ConnectorError> {
        match action {
            "fire" => self.fire(args).await,
            "resolve" => self.resolve(args).await,
            other => Err(ConnectorError::UnknownAction(other.to_owned())),
        }
    }
}

/// One alert as `fire` posts it.
#[derive(Debug, Clone, PartialEq)]
struct Alert {
    labels: Labels,
    annotations: Labels,
    starts_at: DateTime<Utc>,
    ends_at: DateTime<Utc>,
    generator_url: Option<String>,
}

impl Alert {
    fn to_json(&self) -> Value {
        let mut v = json!({
            "labels": self.labels,
            "annotations": self.annotations,
            "startsAt": stamp(self.starts_at),
            "endsAt": stamp(self.ends_at),
        });
        if let (Some(url), Some(obj)) = (&self.generator_url, v.as_object_mut()) {
            obj.insert("generatorURL".to_owned(), Value::String(url.clone()));
        }
        v
    }
}

fn notice_of(args: &Args) -> Notice {
    args.get("notice")
        .map(Notice::from_value)
        .unwrap_or_default()
}

/// alertname, severity, playbook, source, the place, and the run, as far as they are known.
fn default_labels(n: &Notice, alertname: Option<&str>) -> Labels {
    let name = alertname
        .filter(|a| !a.is_empty())
        .or(Some(n.title.as_str()).filter(|t| !t.is_empty()))
        .unwrap_or(FALLBACK_ALERTNAME);
    let p = &n.place;
    let known = [
        ("alertname", Some(name)),
        ("severity", Some(n.severity.as_str())),
        ("playbook", Some(n.playbook.as_str())),
        ("source", Some(n.source.as_str())),
        (
            "container",
            p.container.as_deref().or(p.container_id.as_deref()),
        ),
        ("pod", p.pod.as_deref()),
        ("namespace", p.namespace.as_deref()),
        ("node", p.node.as_deref().or(p.host.as_deref())),
    ];
    // A grouped notice stands for several runs: the group is the alert, so its updates update
    // one alert instead of firing one per run.
    let origin = match &n.group {
        Some(g) => ("riposte_group", g.key.as_str()),
        None => ("riposte_run", n.run_id.as_str()),
    };
    let known = known.into_iter().chain([(origin.0, Some(origin.1))]);
    known
        .filter_map(|(k, v)| {
            v.filter(|v| !v.is_empty())
                .map(|v| (k.to_owned(), v.to_owned()))
        })
        .collect()
}

/// Merges the map argument `name` into `into`: strings, numbers and booleans as text; null (or
/// an empty string) removes the key.
fn merge(into: &mut Labels, args: &Args, name: &str) -> Result<(), String> {
    match args.get(name) {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Object(map)) => {
            for (k, v) in map {
                let text = match v {
                    Value::Null => None,
                    Value::String(s) => Some(s.clone()),
                    Value::Bool(_) | Value::Number(_) => Some(v.to_string()),
                    Value::Array(_) | Value::Object(_) => {
                        return Err(format!(
                            "`{name}.{k}` must be a string, number or bool, not a {}",
                            crate::spec::json_type(v)
                        ))
                    }
                };
                match text.filter(|t| !t.is_empty()) {
                    Some(t) => into.insert(k.clone(), t),
                    None => into.remove(k),
                };
            }
            Ok(())
        }
        Some(other) => Err(format!(
            "`{name}` must be a map, not a {}",
            crate::spec::json_type(other)
        )),
    }
}

fn check_labels(labels: &Labels) -> Result<(), String> {
    if let Some(bad) = labels.keys().find(|k| !valid_label_name(k)) {
        return Err(format!(
            "`{bad}` is not a valid label name ([a-zA-Z_][a-zA-Z0-9_]*)"
        ));
    }
    if !labels.contains_key("alertname") {
        return Err("the alert needs an `alertname` label".to_owned());
    }
    Ok(())
}

/// Alertmanager's (Prometheus') label names.
fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// An equality matcher for `filter=`: the value quoted, with `\`, `"` and new lines escaped.
fn matcher(name: &str, value: &str) -> String {
    let mut v = String::with_capacity(value.len() + 2);
    for c in value.chars() {
        match c {
            '\\' => v.push_str("\\\\"),
            '"' => v.push_str("\\\""),
            '\n' => v.push_str("\\n"),
            c => v.push(c),
        }
    }
    format!("{name}=\"{v}\"")
}

/// `{alertname="x", container="y"}`, for plans.
fn show(labels: &Labels) -> String {
    let parts: Vec<String> = labels.iter().map(|(k, v)| matcher(k, v)).collect();
    format!("{{{}}}", parts.join(", "))
}

fn stamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn answered(at: &str, status: u16, body: &str) -> String {
    let excerpt: String = body.chars().take(300).collect();
    format!("{at} answered {status}: {}", excerpt.trim())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use crate::notice::{Links, Place};

    fn connector(settings: Value) -> AlertmanagerConnector {
        AlertmanagerConnector::new("am", settings.as_object().unwrap(), &Deps::default()).unwrap()
    }

    fn notice() -> Value {
        serde_json::to_value(Notice {
            title: "Terminal shell in container".into(),
            severity: "critical".into(),
            source: "falco".into(),
            playbook: "shell-in-container".into(),
            run_id: "r-1".into(),
            place: Place {
                container: Some("web-1".into()),
                pod: Some("web-1-7f9c".into()),
                namespace: Some("shop".into()),
                host: Some("node-1".into()),
                ..Place::default()
            },
            links: Links {
                runbook: Some("https://wiki.example/shell".into()),
                audit: "riposte audit --run r-1".into(),
            },
            ..Notice::default()
        })
        .unwrap()
    }

    fn args(v: Value) -> Args {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn a_fired_alert_says_what_and_where_and_ends_by_itself() {
        let c = connector(json!({"url": "http://127.0.0.1:9093", "labels": {"cluster": "prod"}}));
        let now = Utc::now();
        let a = c.alert(&args(json!({"notice": notice()})), now).unwrap();
        let expected: Labels = [
            ("alertname", "Terminal shell in container"),
            ("severity", "critical"),
            ("playbook", "shell-in-container"),
            ("source", "falco"),
            ("container", "web-1"),
            ("pod", "web-1-7f9c"),
            ("namespace", "shop"),
            ("node", "node-1"),
            ("riposte_run", "r-1"),
            ("cluster", "prod"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(a.labels, expected);
        assert_eq!(a.ends_at - a.starts_at, chrono::Duration::hours(1));
        assert!(a.annotations["summary"]
            .starts_with("[critical] Terminal shell in container on container web-1"));
        assert!(a.annotations["description"].contains("playbook: shell-in-container"));
        assert_eq!(a.annotations["runbook_url"], "https://wiki.example/shell");
        assert_eq!(c.alerts.as_str(), "http://127.0.0.1:9093/api/v2/alerts");
    }

    #[test]
    fn step_labels_and_annotations_override_and_null_removes() {
        let c = connector(json!({"url": "http://am.example/prefix/"}));
        let a = c
            .alert(
                &args(json!({
                    "notice": notice(),
                    "alertname": "RiposteContainment",
                    "labels": {"riposte_run": null, "team": "shop", "priority": 1},
                    "annotations": {"description": null, "dashboard": "https://d/1"},
                    "ends_after": "15m",
                })),
                Utc::now(),
            )
            .unwrap();
        assert_eq!(a.labels["alertname"], "RiposteContainment");
        assert_eq!(a.labels["team"], "shop");
        assert_eq!(a.labels["priority"], "1");
        assert!(!a.labels.contains_key("riposte_run"));
        assert!(!a.annotations.contains_key("description"));
        assert_eq!(a.annotations["dashboard"], "https://d/1");
        assert_eq!(a.ends_at - a.starts_at, chrono::Duration::minutes(15));
        assert_eq!(c.alerts.as_str(), "http://am.example/prefix/api/v2/alerts");
    }

    #[test]
    fn a_grouped_notice_is_one_alert_named_by_its_group() {
        let c = connector(json!({"url": "http://127.0.0.1:9093"}));
        let mut n = notice();
        n["group"] = json!({"key": "9f3a", "events": 3, "runs": ["r-1", "r-2"]});
        let a = c.alert(&args(json!({"notice": n})), Utc::now()).unwrap();
        assert_eq!(a.labels["riposte_group"], "9f3a");
        assert!(!a.labels.contains_key("riposte_run"));
        assert!(a.annotations["summary"].contains("3 events since"));
    }

    #[test]
    fn bad_labels_and_durations_are_invalid_arguments() {
        let c = connector(json!({"url": "http://127.0.0.1:9093"}));
        for bad in [
            json!({"labels": {"bad-name": "x"}}),
            json!({"labels": {"nested": {"a": 1}}}),
            json!({"labels": ["x"]}),
            json!({"ends_after": "soon"}),
            json!({"labels": {"alertname": null}}),
        ] {
            let e = c.alert(&args(bad.clone()), Utc::now()).unwrap_err();
            assert!(
                matches!(e, ConnectorError::InvalidArgs { .. }),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn resolve_matches_on_name_and_place_not_on_the_run() {
        let c = connector(json!({"url": "http://127.0.0.1:9093"}));
        let m = c
            .matchers(&args(json!({"notice": notice(), "alertname": "rule-a"})))
            .unwrap();
        let keys: Vec<&str> = m.keys().map(String::as_str).collect();
        assert_eq!(keys, ["alertname", "container", "namespace", "node", "pod"]);
        assert_eq!(m["alertname"], "rule-a");
        let plan = c
            .describe(
                "resolve",
                &args(json!({"notice": notice(), "labels": {"pod": null}})),
            )
            .unwrap();
        assert_eq!(
            plan.description,
            "resolve the alerts on http://127.0.0.1:9093 whose labels include {alertname=\"Terminal shell in container\", container=\"web-1\", namespace=\"shop\", node=\"node-1\"}"
        );
    }

    #[test]
    fn matcher_values_are_quoted_and_escaped() {
        assert_eq!(matcher("a", r#"x"y\z"#), r#"a="x\"y\\z""#);
        assert_eq!(matcher("a", "l1\nl2"), r#"a="l1\nl2""#);
    }

    #[test]
    fn settings_are_checked_and_the_password_never_prints() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "hunter2-am\n").unwrap();
        let build = |v: Value| {
            AlertmanagerConnector::new("am", v.as_object().unwrap(), &Deps::default())
                .map_err(|e| e.to_string())
        };
        let pw = pw.display().to_string();
        assert!(build(json!({})).unwrap_err().contains("`url` is required"));
        assert!(build(json!({"url": "http://u:p@h:9093"}))
            .unwrap_err()
            .contains("must not carry credentials"));
        assert!(build(json!({"url": "http://h:9093", "username": "u"}))
            .unwrap_err()
            .contains("needs `password_file`"));
        assert!(
            build(json!({"url": "http://h:9093", "labels": {"a-b": "x"}}))
                .unwrap_err()
                .contains("not a valid label name")
        );
        assert!(build(json!({"url": "http://h:9093", "nope": 1}))
            .unwrap_err()
            .contains("unknown setting `nope`"));
        let c = build(json!({"url": "http://h:9093", "username": "riposte", "password_file": pw}))
            .unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
        assert_eq!(
            c.headers()[0].1,
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode("riposte:hunter2-am")
            )
        );
    }
}
