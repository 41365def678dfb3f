//! Noise control end to end: the real binary, a real nats-server, the `pagerduty` connector and
//! a local PagerDuty stand-in. A burst of 50 events about one workload makes one page; later
//! events update that page (same dedup key); a completed remediation resolves it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::Duration;

use riposte::audit::RecordKind;
use riposte_tests::receiver::Receiver;
use riposte_tests::*;

const PLAYBOOK: &str = r#"apiVersion: riposte/v1
kind: Playbook
metadata:
  name: shell-page
  runbook: https://runbooks.example/shell
spec:
  match:
    sources: [falco]
    when: event.title == "Terminal shell in container"
  steps:
    - id: note
      action: log.info
      with: { message: "shell in ${{ event.resource.pod.name }}" }
  notify:
    - action: pd.trigger
      resolve_when: event.labels["tag:resolved"] == "true"
"#;

/// A Falco alert about pod `web-7f9c6d8b5-<suffix>` in `shop`, optionally tagged `resolved`.
fn alert(uuid: &str, suffix: &str, resolved: bool) -> Vec<u8> {
    let tags: Vec<&str> = if resolved {
        vec!["container", "resolved"]
    } else {
        vec!["container"]
    };
    serde_json::json!({
        "uuid": uuid,
        "hostname": "node-1",
        "output": "12:00:00.000000000: Critical Terminal shell in container",
        "priority": "Critical",
        "rule": "Terminal shell in container",
        "source": "syscall",
        "tags": tags,
        "time": "2026-11-23T12:00:00.000000000Z",
        "output_fields": {
            "container.id": "0123456789ab",
            "k8s.ns.name": "shop",
            "k8s.pod.name": format!("web-7f9c6d8b5-{suffix}"),
            "proc.cmdline": "sh -i",
        }
    })
    .to_string()
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_fifty_events_pages_once_then_updates_and_resolves_that_page() {
    let pd = Receiver::start(|req, _| {
        let body = req.json();
        let key = body["dedup_key"].as_str().unwrap_or("").to_owned();
        (
            202,
            serde_json::json!({ "status": "success", "message": "Event processed", "dedup_key": key })
                .to_string(),
        )
    });
    let nats = NatsServer::start();
    let work = tempfile::tempdir().unwrap();
    let key_file = work.path().join("pd.key");
    write(&key_file, "R0123456789abcdef0123456789abcde\n");
    let cfg = work.path().join("riposte.yaml");
    write(
        &cfg,
        &format!(
            "connectors:\n  pd:\n    type: pagerduty\n    url: {}\n    routing_key_file: {}\nnotifications:\n  group_wait: 3s\n  group_interval: 3s\n",
            pd.url(),
            key_file.display()
        ),
    );
    write(&work.path().join("pb/page.yaml"), PLAYBOOK);
    let _engine = Engine::start(&nats.url, &work.path().join("pb"), Some(&cfg), work.path());
    let client = nats.client().await;

    // 50 events about pods of one Deployment.
    let burst: Vec<Vec<u8>> = (0..50)
        .map(|i| alert(&format!("b-{i}"), &format!("{:05x}", 0x1a2b0 + i), false))
        .collect();
    publish(&client, "falco.critical.shell", &burst).await;
    let records = wait_for(&nats.url, Duration::from_secs(30), "50 runs", |r| {
        r.iter().filter(|x| x.record == RecordKind::Run).count() == 50
    });
    let deferred = records
        .iter()
        .filter(|r| r.record == RecordKind::Notify && r.outcome == "deferred")
        .count();
    assert_eq!(deferred, 50, "every run's page joined the group");
    let first = pd.wait_for(1, Duration::from_secs(20));
    // Five more, well within group_interval of that page: they make one update of it, not
    // before the interval is over.
    let more: Vec<Vec<u8>> = (50..55)
        .map(|i| alert(&format!("b-{i}"), &format!("{:05x}", 0x1a2b0 + i), false))
        .collect();
    publish(&client, "falco.critical.shell", &more).await;
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        pd.requests().len(),
        1,
        "one page for the burst, no update before the interval"
    );
    let page = first[0].json();
    assert_eq!(page["event_action"], "trigger");
    let dedup = page["dedup_key"].as_str().unwrap().to_owned();
    assert!(dedup.starts_with("riposte:g-"), "{dedup}");
    let details = &page["payload"]["custom_details"];
    assert_eq!(details["group"]["events"], 50);
    assert_eq!(details["where"]["namespace"], "shop");
    assert_eq!(
        details["links"]["runbook"],
        "https://runbooks.example/shell"
    );
    assert!(
        page["payload"]["summary"]
            .as_str()
            .unwrap()
            .contains("50 events"),
        "{page}"
    );

    // The update of the same page.
    let updates = pd.wait_for(2, Duration::from_secs(20));
    let update = updates[1].json();
    assert_eq!(update["event_action"], "trigger");
    assert_eq!(update["dedup_key"], dedup.as_str());
    assert_eq!(update["payload"]["custom_details"]["group"]["events"], 55);
    assert_eq!(
        update["payload"]["custom_details"]["group"]["new_events"],
        5
    );

    // The remediation completed: the page resolves.
    publish(
        &client,
        "falco.critical.shell",
        &[alert("b-done", "zz9zz", true)],
    )
    .await;
    let all = pd.wait_for(4, Duration::from_secs(20));
    assert_eq!(all[2].json()["event_action"], "trigger");
    let resolve = all[3].json();
    assert_eq!(resolve["event_action"], "resolve");
    assert_eq!(resolve["dedup_key"], dedup.as_str());
    let records = wait_for(
        &nats.url,
        Duration::from_secs(10),
        "the resolve record",
        |r| {
            r.iter().any(|x| {
                x.record == RecordKind::Notify && x.step.as_deref() == Some("group:resolve")
            })
        },
    );
    let sent: Vec<_> = records
        .iter()
        .filter(|r| {
            r.record == RecordKind::Notify
                && r.step.as_deref().is_some_and(|s| s.starts_with("group:"))
        })
        .collect();
    assert_eq!(sent.len(), 4, "each notice sent is on record");
    assert!(sent.iter().all(|r| r.outcome == "ok"));
}
