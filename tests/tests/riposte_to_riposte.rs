//! One riposte feeds another: the `webhook` connector signs its notice with HMAC-SHA256 and
//! the ingest gateway verifies it, names the sender and hands the event to the playbooks. Here
//! one engine is both ends: its notification comes back through its own gateway.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::Duration;

use riposte::audit::RecordKind;
use riposte_tests::*;

const FIRST: &str = r#"apiVersion: riposte/v1
kind: Playbook
metadata: { name: forward-shell }
spec:
  match:
    sources: [falco]
    when: event.title == "Terminal shell in container"
  steps:
    - id: note
      action: log.info
      with: { message: "shell" }
  notify:
    - action: upstream.post
      group: false
"#;

const SECOND: &str = r#"apiVersion: riposte/v1
kind: Playbook
metadata: { name: from-the-edge }
spec:
  match:
    sources: [generic]
    when: event.labels["ingest.source"] == "edge"
  steps:
    - id: seen
      action: log.info
      with: { message: "from ${{ event.labels[\"ingest.source\"] }}: ${{ event.title }}" }
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_signed_webhook_notice_is_verified_by_the_gateway_and_runs_a_playbook() {
    let nats = NatsServer::start();
    let work = tempfile::tempdir().unwrap();
    let secret = "edge-shared-secret-0123456789abcdef";
    let keys = work.path().join("hmac-keys");
    write(&keys, &format!("edge:{secret}\n"));
    let hook_secret = work.path().join("hook-secret");
    write(&hook_secret, &format!("{secret}\n"));
    let port = free_port();
    let cfg = work.path().join("riposte.yaml");
    write(
        &cfg,
        &format!(
            "connectors:\n  upstream:\n    type: webhook\n    url: http://127.0.0.1:{port}/v1/events/generic\n    secret_file: {}\ningest:\n  listen: 127.0.0.1:{port}\n  hmac_keys_file: {}\n",
            hook_secret.display(),
            keys.display()
        ),
    );
    write(&work.path().join("pb/first.yaml"), FIRST);
    write(&work.path().join("pb/second.yaml"), SECOND);
    let engine = Engine::start(&nats.url, &work.path().join("pb"), Some(&cfg), work.path());
    let client = nats.client().await;
    publish(
        &client,
        "falco.critical.shell",
        &[falco_alert(
            "edge-1",
            "Terminal shell in container",
            "Critical",
            "c0ffee",
            "shop",
        )],
    )
    .await;
    let records = wait_for(
        &nats.url,
        Duration::from_secs(30),
        "the second playbook's run and the first one's notification",
        |r| {
            // The first run's records are stored after its notification returned, which may be
            // after the second run, so both are waited for.
            r.iter().any(|x| {
                x.record == RecordKind::Run && x.playbook.as_deref() == Some("from-the-edge")
            }) && r.iter().any(|x| {
                x.record == RecordKind::Notify && x.playbook.as_deref() == Some("forward-shell")
            })
        },
    );
    let sent = records
        .iter()
        .find(|r| r.record == RecordKind::Notify && r.playbook.as_deref() == Some("forward-shell"))
        .unwrap();
    assert_eq!(sent.outcome, "ok", "{sent:#?}");
    let seen = records
        .iter()
        .find(|r| r.record == RecordKind::Step && r.step.as_deref() == Some("seen"))
        .unwrap();
    assert_eq!(
        seen.args.as_ref().unwrap()["message"],
        "from edge: Terminal shell in container"
    );
    assert!(
        !engine.log_text().contains(secret),
        "the secret stays out of the log"
    );
    let all = serde_json::to_string(&records).unwrap();
    assert!(
        !all.contains(secret),
        "the secret stays out of the audit trail"
    );
}
