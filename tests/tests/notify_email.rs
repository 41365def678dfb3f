//! End-to-end tests of the `email` connector: the real binary and a real nats-server against a
//! real SMTP server on loopback (aiosmtpd, `tests/smtp_server.py`) that requires STARTTLS and
//! AUTH.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::{Duration, Instant};

use riposte::audit::{AuditRecord, RecordKind};
use riposte_tests::notify::SmtpServer;
use riposte_tests::*;
use serde_json::Value;

const USER: &str = "riposte";
const PASSWORD: &str = "smtp-secret-91f3b2";
const WRONG_PASSWORD: &str = "not-the-smtp-password-4d";
const PLANTED: &str = "<script>alert('pwned')</script>";

/// Contains a shell and mails the notice (no `with`); the same event also goes to an instance
/// with a wrong password and one whose server is down.
const PLAYBOOK: &str = r#"apiVersion: riposte/v1
kind: Playbook
metadata:
  name: shell-mail
  runbook: https://wiki.example/runbooks/shell
spec:
  match:
    sources: [falco]
    when: event.title == "Terminal shell in container"
  steps:
    - id: record
      action: log.warn
      with: { message: "shell in ${{ event.resource.container.name }}" }
  notify:
    - action: mail.send
      group: false          # sent by the run itself: this test is about the connector
    - action: mail-wrong.send
      group: false
      retry: { attempts: 3, backoff: 100ms }
    - action: mail-down.send
      group: false
      retry: { attempts: 2, backoff: 100ms }
"#;

/// A Falco alert whose command line carries a script, as an attacker would plant it.
fn hostile_alert() -> Vec<u8> {
    let mut alert: Value = serde_json::from_slice(&falco_alert(
        "mail-1",
        "Terminal shell in container",
        "Critical",
        "c0ffee",
        "shop",
    ))
    .unwrap();
    let cmdline = format!("sh -c \"{PLANTED}\"");
    alert["output_fields"]["proc.cmdline"] = Value::String(cmdline.clone());
    alert["output"] = Value::String(format!(
        "12:00:00.000000000: Critical A shell was spawned in a container (cmdline={cmdline})"
    ));
    serde_json::to_vec(&alert).unwrap()
}

fn record<'a>(records: &'a [AuditRecord], run: &str, step: &str) -> &'a AuditRecord {
    records
        .iter()
        .find(|r| {
            matches!(r.record, RecordKind::Step | RecordKind::Notify)
                && r.run_id.as_deref() == Some(run)
                && r.step.as_deref() == Some(step)
        })
        .unwrap_or_else(|| panic!("no record of {step} in run {run}: {records:#?}"))
}

fn part<'a>(mail: &'a Value, content_type: &str) -> &'a str {
    mail["parts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["content_type"] == content_type)
        .and_then(|p| p["body"].as_str())
        .unwrap_or_else(|| panic!("no {content_type} part: {mail:#}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_notice_is_mailed_over_starttls_as_text_and_escaped_html_and_a_wrong_password_fails() {
    let smtp = SmtpServer::start(USER, PASSWORD);
    let nats = NatsServer::start();
    let work = tempfile::tempdir().unwrap();
    let secrets = work.path().join("secrets");
    write(&secrets.join("smtp-password"), &format!("{PASSWORD}\n"));
    write(&secrets.join("smtp-wrong"), WRONG_PASSWORD);
    let instance = |name: &str, port: u16, file: &str| {
        format!(
            "  {name}:\n    type: email\n    host: 127.0.0.1\n    port: {port}\n    \
             ca_file: {}\n    username: {USER}\n    password_file: {}\n    \
             from: \"riposte <riposte@example.org>\"\n    \
             to: [soc@example.org, oncall@example.org]\n    timeout: 5s\n",
            smtp.cert.display(),
            secrets.join(file).display()
        )
    };
    let config = work.path().join("riposte.yaml");
    write(
        &config,
        &format!(
            "connectors:\n{}{}{}",
            instance("mail", smtp.port, "smtp-password"),
            instance("mail-wrong", smtp.port, "smtp-wrong"),
            instance("mail-down", free_port(), "smtp-password"),
        ),
    );
    let pb = work.path().join("pb");
    write(&pb.join("shell.yaml"), PLAYBOOK);
    let engine = Engine::start(&nats.url, &pb, Some(&config), work.path());
    let client = nats.client().await;
    publish(&client, "falco.critical.shell", &[hostile_alert()]).await;

    let records = wait_for(&nats.url, Duration::from_secs(30), "the run", |r| {
        r.iter().any(|x| x.record == RecordKind::Run)
    });
    let run = records
        .iter()
        .find(|x| x.record == RecordKind::Run)
        .and_then(|x| x.run_id.clone())
        .unwrap();

    // Sent, and the audit record says what and to whom.
    let sent = record(&records, &run, "notify-1");
    assert_eq!(sent.outcome, "ok", "{sent:#?}");
    let out = sent.output.as_ref().unwrap();
    assert_eq!(
        out["recipients"],
        serde_json::json!(["soc@example.org", "oncall@example.org"])
    );
    let message_id = out["message_id"].as_str().unwrap();
    assert!(
        message_id.starts_with('<') && message_id.ends_with('>'),
        "{message_id}"
    );

    // The server received it over TLS, from the user that logged in.
    let deadline = Instant::now() + Duration::from_secs(10);
    while smtp.received().is_empty() {
        assert!(
            Instant::now() < deadline,
            "no mail arrived; the server said:\n{}",
            smtp.errors()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let received = smtp.received();
    assert_eq!(received.len(), 1, "only the right password gets a mail in");
    let mail = &received[0];
    assert_eq!(mail["tls"], true);
    assert_eq!(mail["login"], USER);
    assert_eq!(mail["mail_from"], "riposte@example.org");
    assert_eq!(
        mail["rcpt_tos"],
        serde_json::json!(["soc@example.org", "oncall@example.org"])
    );
    assert_eq!(mail["from"], "riposte <riposte@example.org>");
    assert_eq!(
        mail["to"],
        serde_json::json!(["soc@example.org, oncall@example.org"])
    );
    assert_eq!(mail["message_id"], message_id);
    let subject = mail["subject"].as_str().unwrap();
    assert!(
        subject.starts_with(
            "[critical] Terminal shell in container on container app-c0ffee \
             (registry.local/app), pod shop/app-c0ffee-1"
        ),
        "{subject}"
    );
    assert_eq!(mail["content_type"], "multipart/alternative");
    let kinds: Vec<&str> = mail["parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["content_type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["text/plain", "text/html"]);

    // The text says what happened, where, and what riposte did.
    let text = part(mail, "text/plain");
    for says in [
        "[critical] Terminal shell in container on container app-c0ffee",
        "namespace: shop",
        "pod: app-c0ffee-1",
        "playbook: shell-mail",
        "what riposte did:",
        "- log.warn (record) ok",
        &format!("audit: riposte audit --run {run}"),
    ] {
        assert!(text.contains(says), "the text lacks `{says}`:\n{text}");
    }

    // So does the HTML, with the planted script escaped wherever the event shows up.
    let html = part(mail, "text/html");
    assert!(
        !html.contains("<script"),
        "unescaped script in the HTML:\n{html}"
    );
    assert!(
        html.contains("&lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt;"),
        "{html}"
    );
    for says in [
        "Terminal shell in container",
        "app-c0ffee",
        "shop",
        "What riposte did",
        "log.warn",
        &format!("<code>riposte audit --run {run}</code>"),
        "<a href=\"https://wiki.example/runbooks/shell\">",
    ] {
        assert!(html.contains(says), "the HTML lacks `{says}`:\n{html}");
    }

    // A wrong password: refused by the server (535), permanent, not retried.
    let wrong = record(&records, &run, "notify-2");
    assert_eq!(wrong.outcome, "failed");
    assert_eq!(wrong.attempts, Some(1), "{wrong:#?}");
    let reason = wrong.reason.as_deref().unwrap();
    assert!(reason.contains("smtp 127.0.0.1:"), "{reason}");
    assert!(reason.contains("535"), "{reason}");

    // A server that is not there: transient, tried again.
    let down = record(&records, &run, "notify-3");
    assert_eq!(down.outcome, "failed");
    assert_eq!(down.attempts, Some(2), "{down:#?}");
    assert!(
        records
            .iter()
            .any(|r| r.record == RecordKind::Attempt && r.step.as_deref() == Some("notify-3")),
        "the retried attempt is audited"
    );

    // No password anywhere: not in the audit trail, not in the engine's log.
    let all = serde_json::to_string(&audit_records(&nats.url)).unwrap();
    let log = engine.log_text();
    for secret in [PASSWORD, WRONG_PASSWORD] {
        assert!(!all.contains(secret), "a password is in the audit trail");
        assert!(!log.contains(secret), "a password is in the engine's log");
    }
}
