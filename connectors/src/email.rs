//! Connector `email`: sends the notice as a mail over SMTP (STARTTLS by default), with a plain
//! text part and an HTML part (multipart/alternative).
//!
//! The text part is [`Notice::text`]; the HTML part renders the same notice as a table, every
//! value escaped, since event fields (process command lines, container names) come from
//! whoever caused the event. A step may give its own `subject`, `to`, `text` or `html`.
//!
//! It owns the instance's SMTP transport (one connection per mail) and its credentials (the
//! password from a file); the password never appears in an error, a plan or an output. SMTP 4xx
//! answers, time-outs and connection failures are transient; 5xx answers (a refused login, a
//! refused recipient), TLS failures and a server without STARTTLS are permanent.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use async_trait::async_trait;
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde_json::{json, Map, Value};

use crate::http::Settings;
use crate::notice::Notice;
use crate::spec::{str_arg, ActionSpec, ParamSpec, ParamType};
use crate::{Args, BuildError, Connector, ConnectorError, Deps, Output, Plan};

/// The actions of `email`.
pub const ACTIONS: &[ActionSpec] = &[ActionSpec {
    name: "send",
    description: "Mails the notice: subject = its headline, a plain-text part and an HTML part \
                  (a table of what happened, where, whose, and what riposte did).",
    params: &[
        ParamSpec {
            name: "notice",
            ty: ParamType::Any,
            required: false,
            description: "The enriched notice (filled by the engine when left out).",
        },
        ParamSpec {
            name: "subject",
            ty: ParamType::String,
            required: false,
            description: "The subject (default: the notice's headline).",
        },
        ParamSpec {
            name: "to",
            ty: ParamType::Any,
            required: false,
            description: "Recipients, an address or a list, instead of the instance's `to`.",
        },
        ParamSpec {
            name: "html",
            ty: ParamType::String,
            required: false,
            description: "The HTML part, sent as given (values templated into it are not \
                          escaped).",
        },
        ParamSpec {
            name: "text",
            ty: ParamType::String,
            required: false,
            description: "The plain-text part (default: the notice as text).",
        },
    ],
    destructive: false,
    reversible: false,
    message_param: Some("notice"),
}];

const SETTINGS: &[&str] = &[
    "host",
    "port",
    "tls",
    "ca_file",
    "username",
    "password_file",
    "from",
    "to",
    "timeout",
];

/// Subjects are cut to this many characters.
const MAX_SUBJECT_CHARS: usize = 200;

/// How the connection to the server is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Security {
    /// Plain connection upgraded with STARTTLS, which is required (port 587).
    StartTls,
    /// TLS from the first byte (port 465).
    Implicit,
    /// No TLS: loopback servers only (tests, a local relay).
    None,
}

impl Security {
    fn as_str(self) -> &'static str {
        match self {
            Security::StartTls => "starttls",
            Security::Implicit => "tls",
            Security::None => "none",
        }
    }

    fn default_port(self) -> u16 {
        match self {
            Security::StartTls => 587,
            Security::Implicit => 465,
            Security::None => 25,
        }
    }
}

/// An `email` instance.
pub struct EmailConnector {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    /// `host:port (starttls)`, for plans and errors.
    server: String,
    from: Mailbox,
    to: Vec<Mailbox>,
}

impl fmt::Debug for EmailConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmailConnector")
            .field("server", &self.server)
            .field("from", &self.from.to_string())
            .field("to", &self.to.len())
            .finish_non_exhaustive()
    }
}

impl EmailConnector {
    /// Builds an instance from its settings: `host` and `from` (required), `port`, `tls`
    /// (`starttls`, `tls` or `none`), `ca_file`, `username` with `password_file`, `to`,
    /// `timeout`.
    pub fn new(
        instance: &str,
        settings: &Map<String, Value>,
        deps: &Deps,
    ) -> Result<Self, BuildError> {
        let _ = deps;
        let s = Settings::new(instance, settings, SETTINGS)?;
        let host = s.required("host")?;
        let security = match s.string("tls")?.as_deref() {
            None | Some("starttls") => Security::StartTls,
            Some("tls") => Security::Implicit,
            Some("none") if is_loopback(&host) => Security::None,
            Some("none") => {
                return Err(s.error(format!(
                    "`tls: none` is only allowed for a loopback host, not `{host}`: use \
                     `starttls` or `tls`"
                )))
            }
            Some(other) => {
                return Err(s.error(format!(
                    "`tls` must be `starttls`, `tls` or `none`, not `{other}`"
                )))
            }
        };
        let port = s.number("port", u64::from(security.default_port()))?;
        let port = u16::try_from(port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| s.error(format!("`port` {port} is not a TCP port")))?;
        let timeout = s.duration("timeout", Duration::from_secs(10))?;
        let from = s
            .required("from")?
            .parse::<Mailbox>()
            .map_err(|e| s.error(format!("`from`: {e}")))?;
        let to = s
            .strings("to")?
            .iter()
            .map(|a| parse_mailbox(a).map_err(|e| s.error(format!("`to`: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;

        let tls = match security {
            Security::None => {
                if s.string("ca_file")?.is_some() {
                    return Err(s.error("`ca_file` needs `tls: starttls` or `tls: tls`"));
                }
                Tls::None
            }
            Security::StartTls | Security::Implicit => {
                let mut params = TlsParameters::builder(host.clone());
                if let Some(ca) = s.string("ca_file")? {
                    let pem = std::fs::read(&ca)
                        .map_err(|e| s.error(format!("`ca_file` `{ca}`: {e}")))?;
                    if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
                        return Err(s.error(format!("`ca_file` `{ca}` holds no PEM certificate")));
                    }
                    let cert = Certificate::from_pem(&pem)
                        .map_err(|e| s.error(format!("`ca_file` `{ca}`: {e}")))?;
                    params = params.add_root_certificate(cert);
                }
                let params = params
                    .build_rustls()
                    .map_err(|e| s.error(format!("cannot set up TLS: {e}")))?;
                if security == Security::StartTls {
                    Tls::Required(params)
                } else {
                    Tls::Wrapper(params)
                }
            }
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host.clone())
            .port(port)
            .tls(tls)
            .timeout(Some(timeout));
        match (s.string("username")?, s.secret_file("password_file")?) {
            (Some(_), Some(_)) if security == Security::None => {
                return Err(s.error(
                    "`username` and `password_file` need `tls: starttls` or `tls: tls`: a \
                     password is never sent without TLS",
                ))
            }
            (Some(user), Some(password)) => {
                builder = builder.credentials(Credentials::new(user, password.expose().to_owned()));
            }
            (None, None) => {}
            (Some(_), None) => return Err(s.error("`username` needs `password_file`")),
            (None, Some(_)) => return Err(s.error("`password_file` needs `username`")),
        }
        Ok(EmailConnector {
            transport: builder.build(),
            server: format!("{host}:{port} ({})", security.as_str()),
            from,
            to,
        })
    }

    /// The mail `send` would send, from the arguments alone.
    fn compose(&self, args: &Args) -> Result<Mail, ConnectorError> {
        let invalid = |reason: String| ConnectorError::InvalidArgs {
            action: "send".to_owned(),
            reason,
        };
        let notice = args
            .get("notice")
            .map(Notice::from_value)
            .unwrap_or_default();
        let to = match args.get("to") {
            None | Some(Value::Null) => self.to.clone(),
            Some(Value::String(a)) => vec![parse_mailbox(a).map_err(invalid)?],
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_str()
                        .ok_or_else(|| "`to` must be an address or a list of addresses".to_owned())
                        .and_then(parse_mailbox)
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(invalid)?,
            Some(_) => {
                return Err(invalid(
                    "`to` must be an address or a list of addresses".to_owned(),
                ))
            }
        };
        if to.is_empty() {
            return Err(invalid(
                "no recipients: give `to` in the step or in the instance's settings".to_owned(),
            ));
        }
        let subject = one_line(
            str_arg(args, "subject")
                .map(str::to_owned)
                .unwrap_or_else(|| notice.headline())
                .as_str(),
        );
        Ok(Mail {
            subject,
            text: str_arg(args, "text")
                .map(str::to_owned)
                .unwrap_or_else(|| notice.text()),
            html: str_arg(args, "html")
                .map(str::to_owned)
                .unwrap_or_else(|| render_html(&notice)),
            to,
        })
    }

    async fn send(&self, args: &Args) -> Result<Output, ConnectorError> {
        let mail = self.compose(args)?;
        let mut b = Message::builder()
            .from(self.from.clone())
            .subject(mail.subject.clone())
            .message_id(None)
            .user_agent(concat!("riposte/", env!("CARGO_PKG_VERSION")).to_owned());
        for r in &mail.to {
            b = b.to(r.clone());
        }
        let message = b
            .multipart(MultiPart::alternative_plain_html(mail.text, mail.html))
            .map_err(|e| ConnectorError::Permanent(format!("cannot build the mail: {e}")))?;
        let message_id = message
            .headers()
            .get_raw("Message-ID")
            .unwrap_or_default()
            .to_owned();
        self.transport
            .send(message)
            .await
            .map_err(|e| self.failure(&e))?;
        let recipients: Vec<String> = mail.to.iter().map(|m| m.email.to_string()).collect();
        Ok(Output {
            output: json!({
                "message_id": message_id,
                "recipients": recipients,
                "subject": mail.subject,
            }),
            undo: None,
        })
    }

    /// Sorts an SMTP failure: 5xx, TLS and protocol problems will not pass by trying again;
    /// 4xx, time-outs and connection failures may.
    fn failure(&self, e: &lettre::transport::smtp::Error) -> ConnectorError {
        let what = format!("smtp {}: {e}", self.server);
        if e.is_permanent() || e.is_tls() || e.is_client() {
            ConnectorError::Permanent(what)
        } else {
            ConnectorError::Transient(what)
        }
    }
}

#[async_trait]
impl Connector for EmailConnector {
    fn actions(&self) -> &'static [ActionSpec] {
        ACTIONS
    }

    fn describe(&self, action: &str, args: &Args) -> Result<Plan, ConnectorError> {
        if action != "send" {
            return Err(ConnectorError::UnknownAction(action.to_owned()));
        }
        let mail = self.compose(args)?;
        let to: Vec<String> = mail.to.iter().map(|m| m.email.to_string()).collect();
        Ok(Plan {
            description: format!(
                "mail \"{}\" to {} through {}",
                mail.subject,
                to.join(", "),
                self.server
            ),
        })
    }

    async fn run(&self, action: &str, args: &Args) -> Result<Output, ConnectorError> {
        match action {
            "send" => self.send(args).await,
            other => Err(ConnectorError::UnknownAction(other.to_owned())),
        }
    }
}

/// One composed mail.
struct Mail {
    subject: String,
    text: String,
    html: String,
    to: Vec<Mailbox>,
}

fn parse_mailbox(a: &str) -> Result<Mailbox, String> {
    a.trim()
        .parse::<Mailbox>()
        .map_err(|e| format!("`{a}` is not a mail address: {e}"))
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A subject on one line: control characters (an event's new lines) become spaces, and it is
/// cut to [`MAX_SUBJECT_CHARS`].
fn one_line(s: &str) -> String {
    let flat: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let mut out: String = flat.trim().chars().take(MAX_SUBJECT_CHARS).collect();
    if flat.trim().chars().count() > MAX_SUBJECT_CHARS {
        out.push('…');
    }
    out
}

/// Escapes text for HTML element content and attribute values.
fn esc(s: &str) -> String {
    crate::notice::escape_html(s)
}

const CELL: &str =
    "padding:4px 8px;border-bottom:1px solid #ddd;text-align:left;vertical-align:top";

/// The notice as an HTML page: headline, summary, a table of facts, a table of what riposte
/// did, evidence, the audit command and the start of the raw event. Every value is escaped.
fn render_html(n: &Notice) -> String {
    let mut h = String::from(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"></head>\
         <body style=\"font-family:sans-serif;font-size:14px\">\n",
    );
    h.push_str(&format!("<h2>{}</h2>\n", esc(&n.headline())));
    if !n.summary.is_empty() {
        h.push_str(&format!("<p>{}</p>\n", esc(&n.summary)));
    }
    h.push_str("<table style=\"border-collapse:collapse\">\n");
    for (k, v) in n.facts() {
        let value = if k == "runbook" && (v.starts_with("https://") || v.starts_with("http://")) {
            format!("<a href=\"{0}\">{0}</a>", esc(&v))
        } else {
            esc(&v)
        };
        h.push_str(&format!(
            "<tr><th style=\"{CELL}\">{}</th><td style=\"{CELL}\">{value}</td></tr>\n",
            esc(k)
        ));
    }
    h.push_str("</table>\n");
    if !n.actions.is_empty() {
        h.push_str("<h3>What riposte did</h3>\n<table style=\"border-collapse:collapse\">\n");
        h.push_str(&format!(
            "<tr><th style=\"{CELL}\">action</th><th style=\"{CELL}\">step</th>\
             <th style=\"{CELL}\">outcome</th><th style=\"{CELL}\">details</th></tr>\n"
        ));
        for a in &n.actions {
            let mut details = Vec::new();
            if let Some(r) = &a.reason {
                details.push(esc(r));
            }
            if let Some(c) = &a.revert_command {
                details.push(format!("undo: <code>{}</code>", esc(c)));
            }
            if let Some(d) = &a.revert_due {
                details.push(format!("undone by itself at {}", esc(d)));
            }
            h.push_str(&format!(
                "<tr><td style=\"{CELL}\">{}</td><td style=\"{CELL}\">{}</td>\
                 <td style=\"{CELL}\">{}</td><td style=\"{CELL}\">{}</td></tr>\n",
                esc(&a.action),
                esc(&a.step),
                esc(&a.outcome),
                details.join("<br>")
            ));
        }
        h.push_str("</table>\n");
    }
    if let Some(g) = &n.group {
        h.push_str(&format!(
            "<p>This notice stands for {} event(s) from {} to {}, {} new since the last notice; \
             latest runs: {}.</p>\n",
            g.events,
            esc(&g.first_seen),
            esc(&g.last_seen),
            g.new_events,
            esc(&g.runs.join(", "))
        ));
    }
    if n.dry_run {
        h.push_str("<p><b>Dry run</b>: the actions were planned, not carried out.</p>\n");
    }
    if !n.evidence.is_empty() {
        h.push_str("<h3>Evidence</h3>\n<ul>\n");
        for e in &n.evidence {
            h.push_str(&format!("<li><code>{}</code></li>\n", esc(e)));
        }
        h.push_str("</ul>\n");
    }
    if !n.links.audit.is_empty() {
        h.push_str(&format!(
            "<p>Audit trail: <code>{}</code></p>\n",
            esc(&n.links.audit)
        ));
    }
    if !n.excerpt.is_empty() {
        h.push_str(&format!(
            "<h3>Event</h3>\n<pre style=\"white-space:pre-wrap\">{}</pre>\n",
            esc(&n.excerpt)
        ));
    }
    h.push_str("</body></html>\n");
    h
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use crate::notice::{Done, Links, Place};

    fn build(v: Value) -> Result<EmailConnector, String> {
        EmailConnector::new("mail", v.as_object().unwrap(), &Deps::default())
            .map_err(|e| e.to_string())
    }

    fn notice() -> Notice {
        Notice {
            title: "Terminal shell in container".into(),
            severity: "critical".into(),
            summary: "A shell was spawned: sh -c '<script>alert(1)</script>'".into(),
            playbook: "shell-in-container".into(),
            run_id: "r-1".into(),
            outcome: "ok".into(),
            place: Place {
                container: Some("web-1".into()),
                ..Place::default()
            },
            actions: vec![Done {
                step: "contain".into(),
                action: "docker.pause".into(),
                outcome: "ok".into(),
                revert_command: Some("riposte revert r-1 --step contain".into()),
                ..Done::default()
            }],
            links: Links {
                runbook: Some("https://wiki.example/a?b=1&c=\"2\"".into()),
                audit: "riposte audit --run r-1".into(),
            },
            excerpt: "{\"proc.cmdline\":\"<script>x</script>\"}".into(),
            ..Notice::default()
        }
    }

    #[test]
    fn the_html_part_escapes_every_value_and_says_what_was_done() {
        let h = render_html(&notice());
        assert!(!h.contains("<script>"), "{h}");
        assert!(h.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "{h}");
        assert!(h.contains("&#39;"), "{h}");
        assert!(h.contains("<a href=\"https://wiki.example/a?b=1&amp;c=&quot;2&quot;\">"));
        assert!(h.contains("docker.pause"));
        assert!(h.contains("undo: <code>riposte revert r-1 --step contain</code>"));
        assert!(h.contains("<code>riposte audit --run r-1</code>"));
    }

    #[test]
    fn a_runbook_that_is_not_a_web_link_is_not_a_link() {
        let mut n = notice();
        n.links.runbook = Some("javascript:alert(1)".into());
        let h = render_html(&n);
        assert!(!h.contains("href"), "{h}");
    }

    #[test]
    fn subjects_are_one_line_and_recipients_come_from_the_step_or_the_settings() {
        let c = build(
            json!({"host": "127.0.0.1", "tls": "none", "from": "riposte <r@example.org>",
                             "to": ["soc@example.org"]}),
        )
        .unwrap();
        let mut n = notice();
        n.title = "evil\r\nBcc: x@evil.example".into();
        let args = json!({"notice": serde_json::to_value(&n).unwrap()});
        let m = c.compose(args.as_object().unwrap()).unwrap();
        assert!(!m.subject.contains('\n') && !m.subject.contains('\r'));
        assert_eq!(m.to.len(), 1);
        assert!(
            m.subject
                .starts_with("[critical] evil  Bcc: x@evil.example"),
            "{}",
            m.subject
        );
        let args = json!({"to": ["a@example.org", "b@example.org"], "subject": "hi"});
        let plan = c.describe("send", args.as_object().unwrap()).unwrap();
        assert_eq!(
            plan.description,
            "mail \"hi\" to a@example.org, b@example.org through 127.0.0.1:25 (none)"
        );
        let bad = json!({"to": "not an address"});
        assert!(matches!(
            c.compose(bad.as_object().unwrap()),
            Err(ConnectorError::InvalidArgs { .. })
        ));
        let none = build(json!({"host": "::1", "tls": "none", "from": "r@example.org"})).unwrap();
        let e = none.compose(&Args::new()).err().unwrap().to_string();
        assert!(e.contains("no recipients"), "{e}");
    }

    #[test]
    fn settings_are_checked_and_the_password_never_prints() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "hunter2-mail\n").unwrap();
        let pw = pw.display().to_string();
        assert!(build(json!({"from": "r@example.org"}))
            .unwrap_err()
            .contains("`host` is required"));
        assert!(build(json!({"host": "smtp.example.org"}))
            .unwrap_err()
            .contains("`from` is required"));
        assert!(
            build(json!({"host": "smtp.example.org", "tls": "none", "from": "r@example.org"}))
                .unwrap_err()
                .contains("only allowed for a loopback host")
        );
        assert!(
            build(json!({"host": "h", "tls": "ssl", "from": "r@example.org"}))
                .unwrap_err()
                .contains("`tls` must be")
        );
        assert!(
            build(json!({"host": "h", "from": "r@example.org", "username": "u"}))
                .unwrap_err()
                .contains("needs `password_file`")
        );
        assert!(
            build(json!({"host": "h", "from": "r@example.org", "port": 70000}))
                .unwrap_err()
                .contains("not a TCP port")
        );
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not a certificate").unwrap();
        assert!(build(
            json!({"host": "h", "from": "r@example.org", "ca_file": ca.display().to_string()})
        )
        .unwrap_err()
        .contains("holds no PEM certificate"));
        assert!(build(
            json!({"host": "127.0.0.1", "tls": "none", "from": "r@example.org",
                             "username": "riposte", "password_file": pw})
        )
        .unwrap_err()
        .contains("never sent without TLS"));
        let c = build(json!({"host": "smtp.example.org", "from": "r@example.org",
                             "username": "riposte", "password_file": pw}))
        .unwrap();
        assert_eq!(c.server, "smtp.example.org:587 (starttls)");
        assert!(!format!("{c:?}").contains("hunter2"));
        let tls = build(json!({"host": "smtp.example.org", "tls": "tls", "from": "r@example.org"}))
            .unwrap();
        assert_eq!(tls.server, "smtp.example.org:465 (tls)");
    }
}
