//! Connector `slack`: posts the enriched notice to a Slack incoming webhook as Block Kit.
//!
//! The message reads top to bottom as an on-call engineer needs it: a header with the headline,
//! the producer's text, fields for severity, place, owner and playbook, what riposte did with
//! the command that undoes each step, the evidence, an excerpt of the raw event, and a context
//! line with the run, the audit command and the runbook. `text` is the fallback Slack shows in
//! notifications.
//!
//! Every event-derived string is escaped for mrkdwn (`&`, `<`, `>`), so an event cannot mention
//! `@channel` or forge a link, and every block stays within Block Kit's limits (at most 50 blocks,
//! 150 characters in a header, 3000 in a section, 10 fields of 2000, 10 context elements).
//!
//! The webhook URL carries its secret in the path: it is read from `url_file`, and only its
//! origin is ever printed.

use async_trait::async_trait;
use serde_json::{json, Map, Value};

use crate::http::{SecretHook, Settings};
use crate::notice::{clip, Notice};
use crate::spec::{find_action, str_arg, ActionSpec, ParamSpec, ParamType};
use crate::{Args, BuildError, Connector, ConnectorError, Deps, Output, Plan};

/// Block Kit's limits for messages.
const BLOCKS_MAX: usize = 50;
const HEADER_MAX: usize = 150;
const SECTION_MAX: usize = 3000;
const FIELDS_MAX: usize = 10;
const FIELD_MAX: usize = 2000;
const CONTEXT_MAX: usize = 10;
/// Slack advises keeping a message's `text` under 4000 characters.
const TEXT_MAX: usize = 4000;
/// How much of the raw event the message quotes.
const EXCERPT_MAX: usize = 1000;

const SETTINGS: &[&str] = &["url_file", "timeout", "ca_file"];

/// The actions of `slack`.
pub const ACTIONS: &[ActionSpec] = &[ActionSpec {
    name: "post",
    description: "Posts a Block Kit message that says what happened, where, whose it is and what \
                  riposte did, with undo commands; in `notify` without `with`, from the notice.",
    params: &[
        ParamSpec {
            name: "notice",
            ty: ParamType::Any,
            required: false,
            description: "The enriched notice (filled by the engine when left out).",
        },
        ParamSpec {
            name: "text",
            ty: ParamType::String,
            required: false,
            description: "The fallback text shown in notifications (default the headline and \
                          what riposte did). Sent as plain text: `&`, `<`, `>` are escaped.",
        },
    ],
    destructive: false,
    reversible: false,
    message_param: Some("notice"),
}];

/// A `slack` instance.
#[derive(Debug)]
pub struct SlackConnector {
    hook: SecretHook,
}

impl SlackConnector {
    /// Builds an instance: `url_file` (required: a file holding the webhook URL), `timeout`,
    /// `ca_file`.
    pub fn new(
        instance: &str,
        settings: &Map<String, Value>,
        deps: &Deps,
    ) -> Result<Self, BuildError> {
        let _ = deps;
        let s = Settings::new(instance, settings, SETTINGS)?;
        Ok(SlackConnector {
            hook: SecretHook::from_settings(&s, "url_file")?,
        })
    }
}

/// Escapes text for mrkdwn and cuts it to `max` characters without splitting an escape.
pub fn mrkdwn(text: &str, max: usize) -> String {
    let mut out = String::new();
    let mut used = 0;
    let total: usize = text.chars().map(|c| escaped(c).chars().count()).sum();
    let room = if total <= max {
        max
    } else {
        max.saturating_sub(1)
    };
    for c in text.chars() {
        let e = escaped(c);
        let n = e.chars().count();
        if used + n > room {
            out.push('…');
            return out;
        }
        out.push_str(&e);
        used += n;
    }
    out
}

fn escaped(c: char) -> std::borrow::Cow<'static, str> {
    match c {
        '&' => "&amp;".into(),
        '<' => "&lt;".into(),
        '>' => "&gt;".into(),
        c => c.to_string().into(),
    }
}

fn section(text: String) -> Value {
    json!({ "type": "section", "text": { "type": "mrkdwn", "text": text } })
}

/// The message: `text` and `blocks`.
pub fn message(notice: &Notice, text: Option<&str>) -> Value {
    let fallback = match text {
        Some(t) => mrkdwn(t, TEXT_MAX),
        None => mrkdwn(&fallback_text(notice), TEXT_MAX),
    };
    if notice.title.is_empty() && notice.playbook.is_empty() {
        // No notice to render (a playbook handed over its own text only).
        return json!({ "text": fallback });
    }
    json!({ "text": fallback, "blocks": blocks(notice) })
}

/// `[critical] Terminal shell … on container web-1: docker.pause ok, log.warn ok`.
fn fallback_text(n: &Notice) -> String {
    let done: Vec<String> = n
        .actions
        .iter()
        .map(|a| format!("{} {}", a.action, a.outcome))
        .collect();
    if done.is_empty() {
        n.headline()
    } else {
        format!("{}: {}", n.headline(), done.join(", "))
    }
}

fn blocks(n: &Notice) -> Vec<Value> {
    let mut blocks = Vec::new();
    let headline = n.headline();
    if !headline.is_empty() {
        blocks.push(json!({
            "type": "header",
            "text": { "type": "plain_text", "text": clip(&headline, HEADER_MAX), "emoji": false }
        }));
    }
    if !n.summary.is_empty() {
        blocks.push(section(mrkdwn(&n.summary, SECTION_MAX)));
    }
    let fields: Vec<Value> = facts(n)
        .into_iter()
        .take(FIELDS_MAX)
        .map(|(name, value)| {
            let head = format!("*{name}*\n");
            let room = FIELD_MAX.saturating_sub(head.chars().count());
            json!({ "type": "mrkdwn", "text": format!("{head}{}", mrkdwn(&value, room)) })
        })
        .collect();
    if !fields.is_empty() {
        blocks.push(json!({ "type": "section", "fields": fields }));
    }
    // Leave room for evidence, the excerpt and the context line.
    let room = BLOCKS_MAX.saturating_sub(blocks.len() + 3);
    blocks.extend(did(n, room));
    if !n.evidence.is_empty() {
        let lines: Vec<String> = n
            .evidence
            .iter()
            .map(|e| format!("• `{}`", mrkdwn(e, 500)))
            .collect();
        blocks.push(section(clip(
            &format!("*Evidence*\n{}", lines.join("\n")),
            SECTION_MAX,
        )));
    }
    if !n.excerpt.is_empty() {
        blocks.push(section(format!(
            "*Raw event (excerpt)*\n```{}```",
            mrkdwn(&n.excerpt, EXCERPT_MAX)
        )));
    }
    let context = context(n);
    if !context.is_empty() {
        blocks.push(json!({ "type": "context", "elements": context }));
    }
    blocks.truncate(BLOCKS_MAX);
    blocks
}

/// The fields: severity, where, owner, playbook and outcome, and what else is known.
fn facts(n: &Notice) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if !n.severity.is_empty() {
        out.push(("Severity", n.severity.clone()));
    }
    let place = n.place.short();
    out.push((
        "Where",
        if place.is_empty() {
            "unknown".to_owned()
        } else {
            place
        },
    ));
    let owner = match (&n.owner.team, &n.owner.oncall) {
        (Some(t), Some(o)) => format!("{t} (on call: {o})"),
        (Some(t), None) => t.clone(),
        (None, Some(o)) => format!("on call: {o}"),
        (None, None) => "unknown".to_owned(),
    };
    out.push(("Owner", owner));
    let mut outcome = format!("{}: {}", n.playbook, n.outcome);
    if n.dry_run {
        outcome.push_str(" (dry run: nothing was changed)");
    }
    out.push(("Playbook", outcome));
    if let Some(g) = n.group.as_ref().filter(|g| g.events > 1) {
        out.push((
            "Events",
            format!(
                "{} since {} ({} new since the last message)",
                g.events, g.first_seen, g.new_events
            ),
        ));
    }
    if !n.source.is_empty() {
        out.push(("Source", n.source.clone()));
    }
    if !n.time.is_empty() {
        out.push(("Time", n.time.clone()));
    }
    if let Some(d) = &n.place.image_digest {
        out.push(("Image digest", d.clone()));
    }
    if let Some(id) = &n.place.container_id {
        out.push(("Container id", id.clone()));
    }
    out
}

/// "What riposte did", one line per step with its undo command, in as many sections as the
/// 3000-character limit needs, in at most `room` blocks.
fn did(n: &Notice, room: usize) -> Vec<Value> {
    let head = "*What riposte did*";
    if n.actions.is_empty() {
        return vec![section(format!(
            "{head}\nnothing yet: this is a notification"
        ))];
    }
    let lines: Vec<String> = n
        .actions
        .iter()
        .map(|a| {
            let mut s = format!(
                "• `{}` ({}) *{}*",
                mrkdwn(&a.action, 200),
                mrkdwn(&a.step, 200),
                mrkdwn(&a.outcome, 50)
            );
            if let Some(r) = &a.reason {
                s.push_str(&format!(": {}", mrkdwn(r, 1000)));
            }
            if let Some(c) = &a.revert_command {
                s.push_str(&format!("\n    undo: `{}`", mrkdwn(c, 500)));
                if let Some(d) = &a.revert_due {
                    s.push_str(&format!(" (undone by itself at {})", mrkdwn(d, 100)));
                }
            }
            s
        })
        .collect();
    let mut sections = Vec::new();
    let mut current = head.to_owned();
    for (i, line) in lines.iter().enumerate() {
        if current.chars().count() + 1 + line.chars().count() > SECTION_MAX {
            if sections.len() + 2 > room {
                let note = format!(
                    "\n…and {} more steps (see the audit trail)",
                    lines.len() - i
                );
                current = clip(&current, SECTION_MAX - note.chars().count());
                current.push_str(&note);
                break;
            }
            sections.push(section(std::mem::take(&mut current)));
        }
        if !current.is_empty() {
            current.push('\n');
        }
        current.push_str(line);
    }
    sections.push(section(clip(&current, SECTION_MAX)));
    sections
}

/// Run id, audit command, event id, runbook link.
fn context(n: &Notice) -> Vec<Value> {
    let mut parts = Vec::new();
    if !n.run_id.is_empty() {
        parts.push(format!("run `{}`", mrkdwn(&n.run_id, 200)));
    }
    if !n.links.audit.is_empty() {
        parts.push(format!("audit: `{}`", mrkdwn(&n.links.audit, 500)));
    }
    if !n.event_id.is_empty() {
        parts.push(format!("event `{}`", mrkdwn(&n.event_id, 300)));
    }
    if let Some(r) = &n.links.runbook {
        parts.push(format!("<{}|Runbook>", mrkdwn(r, 2000)));
    }
    parts
        .into_iter()
        .take(CONTEXT_MAX)
        .map(|t| json!({ "type": "mrkdwn", "text": t }))
        .collect()
}

fn args_of<'a>(action: &str, args: &'a Args) -> Result<(Notice, Option<&'a str>), ConnectorError> {
    if find_action(ACTIONS, action).is_none() {
        return Err(ConnectorError::UnknownAction(action.to_owned()));
    }
    let notice = Notice::from_value(args.get("notice").unwrap_or(&Value::Null));
    let text = str_arg(args, "text").filter(|t| !t.trim().is_empty());
    if text.is_none() && notice.title.is_empty() && notice.playbook.is_empty() {
        return Err(ConnectorError::InvalidArgs {
            action: action.to_owned(),
            reason: "nothing to post: give `text` or a notice".to_owned(),
        });
    }
    Ok((notice, text))
}

#[async_trait]
impl Connector for SlackConnector {
    fn actions(&self) -> &'static [ActionSpec] {
        ACTIONS
    }

    fn describe(&self, action: &str, args: &Args) -> Result<Plan, ConnectorError> {
        let (notice, text) = args_of(action, args)?;
        let msg = message(&notice, text);
        let blocks = msg
            .get("blocks")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        let what = text.map_or_else(|| notice.headline(), str::to_owned);
        Ok(Plan {
            description: format!(
                "post to Slack at {} ({blocks} blocks): {}",
                self.hook.origin(),
                clip(&what, 200)
            ),
        })
    }

    async fn run(&self, action: &str, args: &Args) -> Result<Output, ConnectorError> {
        let (notice, text) = args_of(action, args)?;
        let msg = message(&notice, text);
        let answer = self.hook.post(&msg).await?;
        let blocks = msg
            .get("blocks")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        Ok(Output {
            output: json!({
                "status": answer.status,
                "response": answer.body,
                "blocks": blocks,
                "to": self.hook.origin(),
            }),
            undo: None,
        })
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
    use crate::notice::{Done, Links, Owner, Place};

    fn notice() -> Notice {
        Notice {
            title: "Terminal shell in container".into(),
            severity: "critical".into(),
            source: "falco".into(),
            time: "2026-11-23T12:00:00Z".into(),
            summary: "shell <!channel> & friends".into(),
            event_id: "evt-1".into(),
            playbook: "shell-in-container".into(),
            run_id: "r-1".into(),
            outcome: "ok".into(),
            place: Place {
                container: Some("web-1".into()),
                pod: Some("web-1-7f9c".into()),
                namespace: Some("shop".into()),
                ..Place::default()
            },
            owner: Owner {
                team: Some("payments".into()),
                oncall: Some("ana".into()),
            },
            actions: vec![Done {
                step: "freeze".into(),
                action: "docker.pause".into(),
                outcome: "ok".into(),
                revert_command: Some("riposte revert r-1 --step freeze".into()),
                revert_due: Some("2026-11-23T13:00:00Z".into()),
                ..Done::default()
            }],
            evidence: vec!["/var/lib/riposte/evidence/web-1".into()],
            links: Links {
                runbook: Some("https://wiki.example/shell".into()),
                audit: "riposte audit --run r-1".into(),
            },
            excerpt: "{\"rule\":\"x\"}".into(),
            ..Notice::default()
        }
    }

    fn texts(v: &Value) -> String {
        serde_json::to_string(v).unwrap()
    }

    #[test]
    fn the_message_says_what_where_whose_and_what_was_done() {
        let m = message(&notice(), None);
        let blocks = m["blocks"].as_array().unwrap();
        assert_eq!(blocks[0]["type"], "header");
        assert_eq!(blocks[0]["text"]["type"], "plain_text");
        assert!(blocks[0]["text"]["text"]
            .as_str()
            .unwrap()
            .starts_with("[critical] Terminal shell in container on container web-1"));
        let all = texts(&m);
        for needle in [
            "*Severity*\\ncritical",
            "*Where*\\ncontainer web-1, pod shop/web-1-7f9c",
            "*Owner*\\npayments (on call: ana)",
            "*Playbook*\\nshell-in-container: ok",
            "undo: `riposte revert r-1 --step freeze`",
            "audit: `riposte audit --run r-1`",
            "<https://wiki.example/shell|Runbook>",
            "/var/lib/riposte/evidence/web-1",
        ] {
            assert!(all.contains(needle), "{needle} not in {all}");
        }
        assert!(m["text"].as_str().unwrap().ends_with(": docker.pause ok"));
        assert_eq!(blocks.last().unwrap()["type"], "context");
    }

    #[test]
    fn a_grouped_notice_says_how_many_events_it_stands_for() {
        let mut n = notice();
        n.group = Some(crate::notice::Group {
            key: "g-1".into(),
            events: 7,
            new_events: 3,
            first_seen: "2026-11-23T12:00:00Z".into(),
            ..crate::notice::Group::default()
        });
        let all = texts(&message(&n, None));
        assert!(
            all.contains("*Events*\\n7 since 2026-11-23T12:00:00Z (3 new since the last message)"),
            "{all}"
        );
        assert!(
            all.contains("(7 events since 2026-11-23T12:00:00Z)"),
            "{all}"
        );
    }

    #[test]
    fn event_text_cannot_mention_or_link() {
        let all = texts(&message(&notice(), Some("<!here> look")));
        assert!(
            !all.contains("<!channel>") && !all.contains("<!here>"),
            "{all}"
        );
        assert!(
            all.contains("shell &lt;!channel&gt; &amp; friends"),
            "{all}"
        );
        assert_eq!(mrkdwn("a<b", 3), "a…");
        assert_eq!(mrkdwn("a<b", 10), "a&lt;b");
    }

    #[test]
    fn block_kit_limits_hold_for_huge_notices() {
        let mut n = notice();
        n.title = "t".repeat(400);
        n.summary = "<".repeat(5000);
        n.place.container = Some("c".repeat(3000));
        n.actions = (0..400)
            .map(|i| Done {
                step: format!("step{i}"),
                action: "docker.pause".into(),
                outcome: "failed".into(),
                reason: Some("r".repeat(900)),
                revert_command: Some(format!("riposte revert r-1 --step step{i}")),
                ..Done::default()
            })
            .collect();
        let m = message(&n, None);
        let blocks = m["blocks"].as_array().unwrap();
        assert!(blocks.len() <= 50, "{}", blocks.len());
        for b in blocks {
            match b["type"].as_str().unwrap() {
                "header" => assert!(b["text"]["text"].as_str().unwrap().chars().count() <= 150),
                "section" => {
                    if let Some(t) = b["text"]["text"].as_str() {
                        assert!(t.chars().count() <= 3000, "{}", t.chars().count());
                    }
                    if let Some(f) = b["fields"].as_array() {
                        assert!(f.len() <= 10);
                        for x in f {
                            assert!(x["text"].as_str().unwrap().chars().count() <= 2000);
                        }
                    }
                }
                "context" => assert!(b["elements"].as_array().unwrap().len() <= 10),
                other => panic!("unexpected block {other}"),
            }
        }
        assert!(texts(&m).contains("more steps (see the audit trail)"));
        assert!(m["text"].as_str().unwrap().chars().count() <= 4000);
    }

    #[tokio::test]
    async fn the_webhook_url_is_never_in_a_plan_an_output_or_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("slack.url");
        std::fs::write(&f, "http://127.0.0.1:1/services/T0/B0/XyZs3cr3t\n").unwrap();
        let settings = json!({ "url_file": f.display().to_string() });
        let c =
            SlackConnector::new("chat", settings.as_object().unwrap(), &Deps::default()).unwrap();
        assert_eq!(
            format!("{c:?}"),
            "SlackConnector { hook: http://127.0.0.1:1/*** }"
        );
        let a = json!({ "notice": serde_json::to_value(notice()).unwrap() });
        let plan = c
            .describe("post", a.as_object().unwrap())
            .unwrap()
            .description;
        assert!(
            plan.starts_with("post to Slack at http://127.0.0.1:1 ("),
            "{plan}"
        );
        assert!(!plan.contains("XyZs3cr3t"));
        let err = c.run("post", a.as_object().unwrap()).await.unwrap_err();
        assert!(err.is_retryable());
        assert!(!err.to_string().contains("XyZs3cr3t"), "{err}");
        let none = json!({});
        assert!(c.describe("post", none.as_object().unwrap()).is_err());
    }
}
