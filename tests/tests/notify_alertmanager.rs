//! End-to-end tests of the `alertmanager` connector: the real binary and a real nats-server
//! against a real Alertmanager (Debian's `prometheus-alertmanager`) behind basic auth.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::{Duration, Instant};

use riposte::audit::{AuditRecord, RecordKind};
use riposte_tests::notify::Alertmanager;
use riposte_tests::*;
use serde_json::Value;

const USER: &str = "riposte";
const PASSWORD: &str = "am-secret-5c1e9a";
/// bcrypt of PASSWORD (cost 4): Alertmanager's web config holds hashes only.
const PASSWORD_HASH: &str = "$2b$04$cgeunmpXaIYbKE8XCv5E4ePPC57VYMjY3kCIZYq9pn1TCSxvA3P9y";
const WRONG_PASSWORD: &str = "not-the-am-password-77";

const SHELL: &str = "Terminal shell in container";

/// Fires an alert for every shell (the default notice, no `with`).
const FIRE_PLAYBOOK: &str = r#"apiVersion: riposte/v1
kind: Playbook
metadata:
  name: shell-alert
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
    - action: am.fire
      group: false          # sent by the run itself: this test is about the connector
"#;

/// Resolves the shell alert of the container a "Shell closed" event names: another playbook
/// and another run than the one that fired it.
const RESOLVE_PLAYBOOK: &str = r#"apiVersion: riposte/v1
kind: Playbook
metadata:
  name: shell-closed
spec:
  match:
    sources: [falco]
    when: event.title == "Shell closed"
  steps:
    - id: clear
      action: am.resolve
      with: { alertname: "Terminal shell in container" }
"#;

/// Fires through an instance whose password is wrong.
const WRONG_PLAYBOOK: &str = r#"apiVersion: riposte/v1
kind: Playbook
metadata:
  name: wrong-password
spec:
  match:
    sources: [falco]
    when: event.title == "Write below binary dir"
  steps:
    - id: page
      action: am-wrong.fire
      with: { ends_after: 10m }
      retry: { attempts: 3, backoff: 100ms }
"#;

fn label<'a>(alert: &'a Value, name: &str) -> Option<&'a str> {
    alert["labels"][name].as_str()
}

/// The alert Alertmanager lists for `container`, if it lists one.
async fn alert_for(am: &Alertmanager, query: &str, container: &str) -> Option<Value> {
    am.alerts(query)
        .await
        .into_iter()
        .find(|a| label(a, "alertname") == Some(SHELL) && label(a, "container") == Some(container))
}

fn finished_run(nats: &str, playbook: &str, event_id: &str) -> (String, Vec<AuditRecord>) {
    let is_run = |x: &AuditRecord| {
        x.record == RecordKind::Run
            && x.playbook.as_deref() == Some(playbook)
            && x.event_id.as_deref() == Some(event_id)
    };
    let records = wait_for(
        nats,
        Duration::from_secs(30),
        &format!("a run of {playbook}"),
        |r| r.iter().any(is_run),
    );
    let run = records.iter().find(|x| is_run(x)).unwrap().run_id.clone();
    (run.unwrap(), records)
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

#[tokio::test(flavor = "multi_thread")]
async fn a_notice_fires_an_alert_with_what_and_where_and_another_run_resolves_it() {
    let am = Alertmanager::start_with_basic_auth(USER, PASSWORD, PASSWORD_HASH).await;
    let nats = NatsServer::start();
    let work = tempfile::tempdir().unwrap();
    let secrets = work.path().join("secrets");
    write(&secrets.join("am-password"), &format!("{PASSWORD}\n"));
    write(&secrets.join("am-wrong"), WRONG_PASSWORD);
    let config = work.path().join("riposte.yaml");
    let instance = |name: &str, file: &str| {
        format!(
            "  {name}:\n    type: alertmanager\n    url: {}\n    username: {USER}\n    \
             password_file: {}\n    labels: {{ cluster: test-east }}\n    timeout: 5s\n",
            am.url,
            secrets.join(file).display()
        )
    };
    write(
        &config,
        &format!(
            "connectors:\n{}{}",
            instance("am", "am-password"),
            instance("am-wrong", "am-wrong")
        ),
    );
    let pb = work.path().join("pb");
    write(&pb.join("fire.yaml"), FIRE_PLAYBOOK);
    write(&pb.join("resolve.yaml"), RESOLVE_PLAYBOOK);
    write(&pb.join("wrong.yaml"), WRONG_PLAYBOOK);
    let engine = Engine::start(&nats.url, &pb, Some(&config), work.path());
    let client = nats.client().await;

    // Two shells in two containers: two alerts.
    publish(
        &client,
        "falco.critical.shell",
        &[
            falco_alert("shell-1", SHELL, "Critical", "c0ffee", "shop"),
            falco_alert("shell-2", SHELL, "Critical", "beef42", "shop"),
        ],
    )
    .await;
    let (run, records) = finished_run(&nats.url, "shell-alert", "shell-1");
    finished_run(&nats.url, "shell-alert", "shell-2");
    let fired = record(&records, &run, "notify-1");
    assert_eq!(fired.record, RecordKind::Notify);
    assert_eq!(fired.outcome, "ok", "{fired:#?}");
    let out = fired.output.as_ref().unwrap();
    assert_eq!(out["labels"]["riposte_run"], run.as_str());

    // Alertmanager holds it, active, with what happened and where.
    let deadline = Instant::now() + Duration::from_secs(15);
    let alert = loop {
        if let Some(a) = alert_for(&am, "active=true", "app-c0ffee").await {
            if a["status"]["state"] == "active" {
                break a;
            }
        }
        assert!(
            Instant::now() < deadline,
            "Alertmanager never listed the alert as active: {:#?}",
            am.alerts("").await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let labels = alert["labels"].as_object().unwrap();
    let expected = [
        ("alertname", SHELL),
        ("severity", "critical"),
        ("playbook", "shell-alert"),
        ("source", "falco"),
        ("container", "app-c0ffee"),
        ("pod", "app-c0ffee-1"),
        ("namespace", "shop"),
        ("node", "node-1"),
        ("riposte_run", run.as_str()),
        ("cluster", "test-east"),
    ];
    for (k, v) in expected {
        assert_eq!(
            labels.get(k).and_then(Value::as_str),
            Some(v),
            "label {k}: {alert:#}"
        );
    }
    assert_eq!(labels.len(), expected.len(), "{alert:#}");
    let notes = &alert["annotations"];
    let summary = notes["summary"].as_str().unwrap();
    assert!(
        summary.starts_with(&format!("[critical] {SHELL} on container app-c0ffee")),
        "{summary}"
    );
    let description = notes["description"].as_str().unwrap();
    assert!(description.contains("what riposte did:"), "{description}");
    assert!(
        description.contains("log.warn (record) ok"),
        "{description}"
    );
    assert!(
        description.contains(&format!("riposte audit --run {run}")),
        "{description}"
    );
    assert_eq!(notes["runbook_url"], "https://wiki.example/runbooks/shell");
    // It ends by itself an hour after it started, unless resolved.
    let starts = chrono::DateTime::parse_from_rfc3339(alert["startsAt"].as_str().unwrap()).unwrap();
    let ends = chrono::DateTime::parse_from_rfc3339(alert["endsAt"].as_str().unwrap()).unwrap();
    assert_eq!((ends - starts).num_minutes(), 60, "{alert:#}");
    assert!(alert_for(&am, "active=true", "app-beef42").await.is_some());

    // Another event, another playbook: the shell in c0ffee is over.
    publish(
        &client,
        "falco.notice.closed",
        &[falco_alert(
            "closed-1",
            "Shell closed",
            "Notice",
            "c0ffee",
            "shop",
        )],
    )
    .await;
    let (clear_run, records) = finished_run(&nats.url, "shell-closed", "closed-1");
    let clear = record(&records, &clear_run, "clear");
    assert_eq!(clear.outcome, "ok", "{clear:#?}");
    let out = clear.output.as_ref().unwrap();
    let resolved = out["resolved"].as_array().unwrap();
    assert_eq!(resolved.len(), 1, "{out:#}");
    assert_eq!(resolved[0]["riposte_run"], run.as_str());
    assert!(
        alert_for(&am, "active=true", "app-c0ffee").await.is_none(),
        "the resolved alert is no longer listed: {:#?}",
        am.alerts("").await
    );
    assert!(alert_for(&am, "", "app-c0ffee").await.is_none());
    // The other container's alert is untouched.
    let other = alert_for(&am, "active=true", "app-beef42").await.unwrap();
    let ends = chrono::DateTime::parse_from_rfc3339(other["endsAt"].as_str().unwrap()).unwrap();
    assert!(ends > chrono::Utc::now());

    // Resolving again finds nothing to resolve and says so.
    publish(
        &client,
        "falco.notice.closed",
        &[falco_alert(
            "closed-2",
            "Shell closed",
            "Notice",
            "c0ffee",
            "shop",
        )],
    )
    .await;
    let (again, records) = finished_run(&nats.url, "shell-closed", "closed-2");
    let clear = record(&records, &again, "clear");
    assert_eq!(clear.outcome, "ok");
    let out = clear.output.as_ref().unwrap();
    assert_eq!(out["resolved"].as_array().map(Vec::len), Some(0), "{out:#}");
    assert!(out["message"].as_str().unwrap().contains("no active alert"));

    // A wrong password is refused: a permanent failure, not retried, audited with
    // Alertmanager's answer.
    publish(
        &client,
        "falco.error.write",
        &[falco_alert(
            "write-1",
            "Write below binary dir",
            "Error",
            "c0ffee",
            "shop",
        )],
    )
    .await;
    let (wrong, records) = finished_run(&nats.url, "wrong-password", "write-1");
    let page = record(&records, &wrong, "page");
    assert_eq!(page.outcome, "failed");
    assert_eq!(page.attempts, Some(1), "a 401 is not retried: {page:#?}");
    let reason = page.reason.as_deref().unwrap();
    assert!(
        reason.contains(&format!("{} answered 401", am.url)),
        "{reason}"
    );

    // No password anywhere: not in the audit trail, not in the engine's log.
    let all = serde_json::to_string(&audit_records(&nats.url)).unwrap();
    let log = engine.log_text();
    for secret in [PASSWORD, WRONG_PASSWORD] {
        assert!(!all.contains(secret), "a password is in the audit trail");
        assert!(!log.contains(secret), "a password is in the engine's log");
    }
}
