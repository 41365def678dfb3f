//! Connector `msteams`: posts the enriched notice to a Microsoft Teams incoming webhook (or a
//! Workflows webhook, which takes the same message) as an Adaptive Card 1.4.
//!
//! The card: a title coloured by severity, the producer's text, a fact set (severity, place,
//! owner, playbook, run...), what riposte did with the command that undoes each step, the
//! evidence, an excerpt of the raw event and the audit command, and an `Action.OpenUrl` to the
//! playbook's runbook. Texts are cut so a card stays well under Teams' 28 KB message limit.
//!
//! The webhook URL carries its secret: it is read from `url_file`, and only its origin is ever
//! printed. The classic connector answers 200 with `1`, or 200 with an error text (a throttled
//! request says `HTTP error 429`): such an answer is a failure, transient when throttled.

use async_trait::async_trait;
use serde_json::{json, Map, Value};

use crate::http::{SecretHook, Settings};
use crate::notice::{clip, Notice};
use crate::spec::{find_action, str_arg, ActionSpec, ParamSpec, ParamType};
use crate::{Args, BuildError, Connector, ConnectorError, Deps, Output, Plan};

/// Limits that keep a card far below Teams' 28 KB.
const TITLE_MAX: usize = 300;
const SUMMARY_MAX: usize = 2000;
const FACT_MAX: usize = 300;
const LINES_MAX: usize = 20;
const LINE_MAX: usize = 400;
const EXCERPT_MAX: usize = 1000;

const SETTINGS: &[&str] = &["url_file", "timeout", "ca_file"];

/// The actions of `msteams`.
pub const ACTIONS: &[ActionSpec] = &[ActionSpec {
    name: "post",
    description: "Posts an Adaptive Card that says what happened, where, whose it is and what \
                  riposte did, with undo commands and the runbook; in `notify` without `with`, \
                  from the notice.",
    params: &[
        ParamSpec {
            name: "notice",
            ty: ParamType::Any,
            required: false,
            description: "The enriched notice (filled by the engine when left out).",
        },
        ParamSpec {
            name: "title",
            ty: ParamType::String,
            required: false,
            description: "The card's title (default the notice's headline).",
        },
    ],
    destructive: false,
    reversible: false,
    message_param: Some("notice"),
}];

/// An `msteams` instance.
#[derive(Debug)]
pub struct TeamsConnector {
    hook: SecretHook,
}

impl TeamsConnector {
    /// Builds an instance: `url_file` (required: a file holding the webhook URL), `timeout`,
    /// `ca_file`.
    pub fn new(
        instance: &str,
        settings: &Map<String, Value>,
        deps: &Deps,
    ) -> Result<Self, BuildError> {
        let _ = deps;
        let s = Settings::new(instance, settings, SETTINGS)?;
        Ok(TeamsConnector {
            hook: SecretHook::from_settings(&s, "url_file")?,
        })
    }
}

fn text_block(text: String) -> Value {
    json!({ "type": "TextBlock", "text": text, "wrap": true })
}

fn heading(text: &str) -> Value {
    json!({ "type": "TextBlock", "text": text, "weight": "Bolder", "wrap": true, "spacing": "Medium" })
}

/// The Teams message: one attachment holding the Adaptive Card.
pub fn message(notice: &Notice, title: &str) -> Value {
    json!({
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": card(notice, title),
        }]
    })
}

fn card(n: &Notice, title: &str) -> Value {
    let color = match n.severity.as_str() {
        "critical" | "high" => "Attention",
        "medium" => "Warning",
        _ => "Default",
    };
    let mut body = vec![json!({
        "type": "TextBlock",
        "text": clip(title, TITLE_MAX),
        "size": "Large",
        "weight": "Bolder",
        "color": color,
        "wrap": true,
    })];
    if !n.summary.is_empty() {
        let mut b = text_block(clip(&n.summary, SUMMARY_MAX));
        if let Value::Object(m) = &mut b {
            m.insert("isSubtle".into(), true.into());
        }
        body.push(b);
    }
    let mut facts: Vec<Value> = n
        .facts()
        .into_iter()
        .map(|(k, v)| json!({ "title": k, "value": clip(&v, FACT_MAX) }))
        .collect();
    if let Some(g) = n.group.as_ref().filter(|g| g.events > 1) {
        let value = format!(
            "{} since {} ({} new since the last card)",
            g.events, g.first_seen, g.new_events
        );
        facts.push(json!({ "title": "events", "value": clip(&value, FACT_MAX) }));
    }
    if !facts.is_empty() {
        body.push(json!({ "type": "FactSet", "facts": facts }));
    }
    body.push(heading("What riposte did"));
    let lines = n.action_lines();
    if lines.is_empty() {
        body.push(text_block("Nothing yet: this is a notification.".into()));
    } else {
        let mut list: Vec<String> = lines
            .iter()
            .take(LINES_MAX)
            .map(|l| format!("- {}", clip(l, LINE_MAX)))
            .collect();
        if lines.len() > LINES_MAX {
            list.push(format!(
                "- …and {} more steps (see the audit trail)",
                lines.len() - LINES_MAX
            ));
        }
        body.push(text_block(list.join("\n")));
    }
    if !n.evidence.is_empty() {
        body.push(heading("Evidence"));
        let list: Vec<String> = n
            .evidence
            .iter()
            .take(LINES_MAX)
            .map(|e| format!("- {}", clip(e, LINE_MAX)))
            .collect();
        body.push(text_block(list.join("\n")));
    }
    if !n.excerpt.is_empty() {
        body.push(json!({
            "type": "TextBlock",
            "text": clip(&n.excerpt, EXCERPT_MAX),
            "fontType": "Monospace",
            "size": "Small",
            "isSubtle": true,
            "wrap": true,
        }));
    }
    if !n.links.audit.is_empty() {
        body.push(json!({
            "type": "TextBlock",
            "text": format!("Audit trail: {}", clip(&n.links.audit, LINE_MAX)),
            "fontType": "Monospace",
            "size": "Small",
            "wrap": true,
        }));
    }
    let actions: Vec<Value> = n
        .links
        .runbook
        .iter()
        .map(|url| json!({ "type": "Action.OpenUrl", "title": "Runbook", "url": url }))
        .collect();
    json!({
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "msteams": { "width": "Full" },
        "body": body,
        "actions": actions,
    })
}

fn args_of(action: &str, args: &Args) -> Result<(Notice, String), ConnectorError> {
    if find_action(ACTIONS, action).is_none() {
        return Err(ConnectorError::UnknownAction(action.to_owned()));
    }
    let notice = Notice::from_value(args.get("notice").unwrap_or(&Value::Null));
    let title = str_arg(args, "title")
        .filter(|t| !t.trim().is_empty())
        .map_or_else(|| notice.headline(), str::to_owned);
    if title.trim().is_empty() {
        return Err(ConnectorError::InvalidArgs {
            action: action.to_owned(),
            reason: "nothing to post: give `title` or a notice".to_owned(),
        });
    }
    Ok((notice, title))
}

/// A 2xx answer whose text reports a failure (the classic connector's way).
fn failure_in(body: &Value) -> Option<ConnectorError> {
    let text = body.as_str()?;
    let lower = text.to_ascii_lowercase();
    if !(lower.contains("error") || lower.contains("failed")) {
        return None;
    }
    let said = format!(
        "the Teams webhook refused the card: {}",
        clip(text.trim(), 300)
    );
    Some(if lower.contains("429") {
        ConnectorError::Transient(said)
    } else {
        ConnectorError::Permanent(said)
    })
}

#[async_trait]
impl Connector for TeamsConnector {
    fn actions(&self) -> &'static [ActionSpec] {
        ACTIONS
    }

    fn describe(&self, action: &str, args: &Args) -> Result<Plan, ConnectorError> {
        let (_, title) = args_of(action, args)?;
        Ok(Plan {
            description: format!(
                "post an Adaptive Card to Teams at {}: {}",
                self.hook.origin(),
                clip(&title, 200)
            ),
        })
    }

    async fn run(&self, action: &str, args: &Args) -> Result<Output, ConnectorError> {
        let (notice, title) = args_of(action, args)?;
        let msg = message(&notice, &title);
        let answer = self.hook.post(&msg).await?;
        if let Some(e) = failure_in(&answer.body) {
            return Err(e);
        }
        Ok(Output {
            output: json!({
                "status": answer.status,
                "response": answer.body,
                "to": self.hook.origin(),
            }),
            undo: None,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use crate::notice::{Done, Links, Place};

    fn notice() -> Notice {
        Notice {
            title: "Terminal shell in container".into(),
            severity: "critical".into(),
            summary: "A shell was spawned".into(),
            playbook: "shell-in-container".into(),
            run_id: "r-1".into(),
            outcome: "ok".into(),
            place: Place {
                container: Some("web-1".into()),
                namespace: Some("shop".into()),
                pod: Some("web-1-7f9c".into()),
                ..Place::default()
            },
            actions: vec![Done {
                step: "freeze".into(),
                action: "docker.pause".into(),
                outcome: "ok".into(),
                revert_command: Some("riposte revert r-1 --step freeze".into()),
                ..Done::default()
            }],
            links: Links {
                runbook: Some("https://wiki.example/shell".into()),
                audit: "riposte audit --run r-1".into(),
            },
            ..Notice::default()
        }
    }

    #[test]
    fn the_card_is_an_adaptive_card_with_facts_actions_and_the_runbook() {
        let n = notice();
        let m = message(&n, &n.headline());
        assert_eq!(m["type"], "message");
        let a = &m["attachments"][0];
        assert_eq!(a["contentType"], "application/vnd.microsoft.card.adaptive");
        let c = &a["content"];
        assert_eq!(c["type"], "AdaptiveCard");
        assert_eq!(c["version"], "1.4");
        assert_eq!(
            c["$schema"],
            "http://adaptivecards.io/schemas/adaptive-card.json"
        );
        let body = c["body"].as_array().unwrap();
        assert_eq!(body[0]["type"], "TextBlock");
        assert_eq!(body[0]["color"], "Attention");
        assert!(body[0]["text"]
            .as_str()
            .unwrap()
            .starts_with("[critical] Terminal shell"));
        let facts = body.iter().find(|b| b["type"] == "FactSet").unwrap();
        assert!(facts["facts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["title"] == "pod" && f["value"] == "web-1-7f9c"));
        let all = serde_json::to_string(c).unwrap();
        assert!(
            all.contains("- docker.pause (freeze) ok (undo: `riposte revert r-1 --step freeze`)"),
            "{all}"
        );
        assert!(all.contains("Audit trail: riposte audit --run r-1"));
        assert_eq!(
            c["actions"],
            json!([{ "type": "Action.OpenUrl", "title": "Runbook", "url": "https://wiki.example/shell" }])
        );
    }

    #[test]
    fn a_huge_notice_stays_under_the_message_limit() {
        let mut n = notice();
        n.summary = "s".repeat(50_000);
        n.excerpt = "e".repeat(50_000);
        n.actions = (0..500)
            .map(|i| Done {
                step: format!("s{i}"),
                action: "docker.pause".into(),
                outcome: "failed".into(),
                reason: Some("r".repeat(5000)),
                ..Done::default()
            })
            .collect();
        let size = serde_json::to_vec(&message(&n, &"t".repeat(10_000)))
            .unwrap()
            .len();
        assert!(size < 28 * 1024, "{size}");
        assert!(serde_json::to_string(&message(&n, "t"))
            .unwrap()
            .contains("and 480 more steps"));
    }

    #[test]
    fn an_error_answered_with_200_is_a_failure() {
        let throttled = Value::String("Webhook message delivery failed with error: Microsoft Teams endpoint returned HTTP error 429".into());
        assert!(failure_in(&throttled).unwrap().is_retryable());
        let refused = Value::String("Summary or Text is required. error".into());
        assert!(!failure_in(&refused).unwrap().is_retryable());
        assert!(failure_in(&Value::String("1".into())).is_none());
        assert!(failure_in(&Value::Null).is_none());
    }

    #[tokio::test]
    async fn the_webhook_url_is_never_in_a_plan_or_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("teams.url");
        std::fs::write(
            &f,
            "http://127.0.0.1:1/webhookb2/abc@def/IncomingWebhook/s3cr3tpart/xyz\n",
        )
        .unwrap();
        let settings = json!({ "url_file": f.display().to_string() });
        let c =
            TeamsConnector::new("teams", settings.as_object().unwrap(), &Deps::default()).unwrap();
        assert!(!format!("{c:?}").contains("s3cr3tpart"));
        let a =
            json!({ "notice": serde_json::to_value(notice()).unwrap(), "title": "Shell in web-1" });
        let plan = c
            .describe("post", a.as_object().unwrap())
            .unwrap()
            .description;
        assert_eq!(
            plan,
            "post an Adaptive Card to Teams at http://127.0.0.1:1: Shell in web-1"
        );
        let err = c.run("post", a.as_object().unwrap()).await.unwrap_err();
        assert!(!err.to_string().contains("s3cr3tpart"), "{err}");
        let plain = json!({ "url": "http://x" });
        assert!(
            TeamsConnector::new("teams", plain.as_object().unwrap(), &Deps::default()).is_err()
        );
    }
}
