//! End-to-end tests of the engine core against a real nats-server and the real binary.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use riposte::audit::RecordKind;
use riposte_tests::*;

const SHELL_PLAYBOOK: &str = r#"
apiVersion: riposte/v1
kind: Playbook
metadata:
  name: shell-in-container
spec:
  match:
    sources: [falco]
    when: event.title == "Terminal shell in container" && event.resource.pod.namespace != "kube-system"
  steps:
    - id: record
      action: log.warn
      with: { message: "shell in ${{ event.resource.container.id }}" }
    - id: announce
      action: nats.publish
      with:
        subject: derived.containment
        payload: { container: "${{ event.resource.container.id }}", severity: "${{ event.severity }}" }
  notify:
    - action: log.info
"#;

#[tokio::test(flavor = "multi_thread")]
async fn an_event_on_a_bound_subject_produces_the_expected_audit_records() {
    let nats = NatsServer::start();
    let work = tempfile::tempdir().unwrap();
    write(&work.path().join("pb/shell.yaml"), SHELL_PLAYBOOK);
    let _engine = Engine::start(&nats.url, &work.path().join("pb"), None, work.path());
    let client = nats.client().await;
    let mut derived = client.subscribe("derived.containment").await.unwrap();
    client.flush().await.unwrap();

    let alert = falco_alert(
        "evt-1",
        "Terminal shell in container",
        "Critical",
        "c0ffee",
        "shop",
    );
    publish(
        &client,
        "falco.critical.terminal_shell_in_container",
        &[alert],
    )
    .await;

    let records = wait_for(&nats.url, Duration::from_secs(20), "the run record", |r| {
        r.iter().any(|x| x.record == RecordKind::Run)
    });
    let event = records
        .iter()
        .find(|r| r.record == RecordKind::Event)
        .unwrap();
    assert_eq!(event.outcome, "matched");
    assert_eq!(event.event_id.as_deref(), Some("evt-1"));
    assert_eq!(
        event.matched.as_deref(),
        Some(&["shell-in-container".to_owned()][..])
    );
    let summary = event.event.as_ref().unwrap();
    assert_eq!(
        summary.subject,
        "falco.critical.terminal_shell_in_container"
    );
    assert_eq!(summary.severity.as_deref(), Some("critical"));

    let run_id = records
        .iter()
        .find(|r| r.record == RecordKind::Run)
        .unwrap()
        .run_id
        .clone();
    let of_run: Vec<_> = records.iter().filter(|r| r.run_id == run_id).collect();
    let steps: Vec<(RecordKind, Option<&str>, Option<&str>, &str)> = of_run
        .iter()
        .map(|r| {
            (
                r.record,
                r.step.as_deref(),
                r.action.as_deref(),
                r.outcome.as_str(),
            )
        })
        .collect();
    assert_eq!(
        steps,
        vec![
            (RecordKind::Step, Some("record"), Some("log.warn"), "ok"),
            (
                RecordKind::Step,
                Some("announce"),
                Some("nats.publish"),
                "ok"
            ),
            (RecordKind::Notify, Some("notify-1"), Some("log.info"), "ok"),
            (RecordKind::Run, None, None, "ok"),
        ]
    );
    for r in &of_run {
        assert_eq!(r.event_id.as_deref(), Some("evt-1"));
        assert_eq!(r.playbook.as_deref(), Some("shell-in-container"));
    }
    let record_step = of_run
        .iter()
        .find(|r| r.step.as_deref() == Some("record"))
        .unwrap();
    assert_eq!(
        record_step.args.as_ref().unwrap()["message"],
        "shell in c0ffee"
    );

    let msg = tokio::time::timeout(Duration::from_secs(5), derived.next())
        .await
        .unwrap()
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"container": "c0ffee", "severity": "critical"})
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_payloads_are_dead_lettered_with_their_reason_and_the_engine_keeps_serving() {
    let nats = NatsServer::start();
    let work = tempfile::tempdir().unwrap();
    write(&work.path().join("pb/shell.yaml"), SHELL_PLAYBOOK);
    let config = work.path().join("riposte.yaml");
    write(
        &config,
        "engine:\n  max_payload_bytes: 4096\nbindings:\n  - { subject: 'falco.>', format: falco }\n  - { subject: 'audit.k8s', format: k8s-audit }\n  - { subject: 'raw.>', format: generic }\n",
    );
    let _engine = Engine::start(
        &nats.url,
        &work.path().join("pb"),
        Some(&config),
        work.path(),
    );
    let client = nats.client().await;

    let malformed = b"{\"rule\": \"Terminal shell in container\", \"priority\": ".to_vec();
    publish(
        &client,
        "falco.critical.x",
        std::slice::from_ref(&malformed),
    )
    .await;
    let grype = std::fs::read(
        repo_root().join("engine/tests/fixtures/corpus/grype/grype_snapshot_empty.json"),
    )
    .unwrap();
    publish(&client, "falco.warning.y", &[grype]).await;
    publish(&client, "audit.k8s", &[b"{\"kind\": 0}".to_vec()]).await;
    let oversize = falco_alert(
        &"x".repeat(5000),
        "Terminal shell in container",
        "Critical",
        "big",
        "shop",
    );
    publish(&client, "falco.critical.z", std::slice::from_ref(&oversize)).await;
    publish(&client, "riposte.in.nope", &[b"{}".to_vec()]).await;
    publish(&client, "raw.empty", &[b"[]".to_vec()]).await;
    let good = falco_alert(
        "after-bad",
        "Terminal shell in container",
        "Critical",
        "beef",
        "shop",
    );
    publish(&client, "falco.critical.w", &[good]).await;

    let records = wait_for(
        &nats.url,
        Duration::from_secs(20),
        "five rejections, the empty payload and a run",
        |r| {
            r.iter()
                .filter(|x| x.record == RecordKind::Rejected)
                .count()
                == 5
                && r.iter().any(|x| {
                    x.record == RecordKind::Run && x.event_id.as_deref() == Some("after-bad")
                })
                && r.iter()
                    .any(|x| x.event.as_ref().is_some_and(|e| e.subject == "raw.empty"))
        },
    );
    // Processed concurrently: find each rejection by the subject it arrived on.
    let reason = |subject: &str| -> String {
        records
            .iter()
            .find(|r| {
                r.record == RecordKind::Rejected && r.event.as_ref().unwrap().subject == subject
            })
            .unwrap_or_else(|| panic!("no rejection for {subject}"))
            .reason
            .clone()
            .unwrap()
    };
    assert!(reason("falco.critical.x")
        .starts_with("malformed JSON: EOF while parsing a value at line 1 column 52"));
    assert_eq!(
        reason("falco.warning.y"),
        "not a falco payload: `rule` is missing"
    );
    assert_eq!(
        reason("audit.k8s"),
        "not a k8s-audit payload: `kind` must be \"Event\" or \"EventList\", got 0"
    );
    assert_eq!(
        reason("riposte.in.nope"),
        "no format is bound to subject `riposte.in.nope`"
    );
    assert_eq!(
        reason("falco.critical.z"),
        format!(
            "payload of {} bytes is over the limit of 4096 bytes",
            oversize.len()
        )
    );

    // Every rejected payload is kept, byte for byte, with its reason in the headers.
    let js = async_nats::jetstream::new(client.clone());
    let stream = js.get_stream("RIPOSTE_DEADLETTER").await.unwrap();
    let mut kept = HashMap::new();
    for seq in 1..=5 {
        let m = stream.get_raw_message(seq).await.unwrap();
        let subject = m
            .headers
            .get("Riposte-Subject")
            .unwrap()
            .as_str()
            .to_owned();
        kept.insert(subject, m);
    }
    let malformed_kept = &kept["falco.critical.x"];
    assert_eq!(malformed_kept.subject.as_str(), "riposte.deadletter.falco");
    assert_eq!(malformed_kept.payload.as_ref(), malformed.as_slice());
    assert_eq!(
        malformed_kept
            .headers
            .get("Riposte-Reason-Code")
            .unwrap()
            .as_str(),
        "malformed"
    );
    let oversize_kept = &kept["falco.critical.z"];
    assert_eq!(oversize_kept.payload.as_ref(), oversize.as_slice());
    assert_eq!(
        oversize_kept
            .headers
            .get("Riposte-Reason-Code")
            .unwrap()
            .as_str(),
        "too_large"
    );
    assert_eq!(
        kept["audit.k8s"].subject.as_str(),
        "riposte.deadletter.k8s-audit"
    );
    assert_eq!(
        kept["riposte.in.nope"].subject.as_str(),
        "riposte.deadletter.unbound"
    );
    let (_, metrics) = http_get(&_engine.metrics, "/metrics").unwrap();
    for reason in ["malformed", "wrong_shape", "too_large", "unbound"] {
        let line = format!("riposte_events_dead_lettered_total{{reason=\"{reason}\"}}");
        assert!(metrics.contains(&line), "{line} missing in {metrics}");
    }
    let empty = records
        .iter()
        .find(|r| r.event.as_ref().is_some_and(|e| e.subject == "raw.empty"))
        .expect("the empty payload is on record");
    assert_eq!(
        (empty.record, empty.outcome.as_str()),
        (RecordKind::Event, "no_events")
    );
    assert!(
        metrics.contains("riposte_events_dead_lettered_total{reason=\"wrong_shape\"} 2"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_condition_that_never_ends_is_cut_off_and_other_events_still_flow() {
    let nats = NatsServer::start();
    let work = tempfile::tempdir().unwrap();
    write(&work.path().join("pb/shell.yaml"), SHELL_PLAYBOOK);
    write(
        &work.path().join("pb/forever.yaml"),
        "apiVersion: riposte/v1\nkind: Playbook\nmetadata: { name: forever }\nspec:\n  match:\n    when: |\n      let n = 0;\n      loop { n += 1; }\n      true\n  steps:\n    - { id: never, action: log.info, with: { message: never } }\n",
    );
    let _engine = Engine::start(&nats.url, &work.path().join("pb"), None, work.path());
    let client = nats.client().await;
    let alerts: Vec<Vec<u8>> = (0..5)
        .map(|i| {
            falco_alert(
                &format!("loop-{i}"),
                "Terminal shell in container",
                "Critical",
                &format!("c{i}"),
                "shop",
            )
        })
        .collect();
    publish(&client, "falco.critical.t", &alerts).await;
    let records = wait_for(&nats.url, Duration::from_secs(30), "five runs", |r| {
        r.iter().filter(|x| x.record == RecordKind::Run).count() == 5
    });
    let errors: Vec<_> = records
        .iter()
        .filter(|r| r.record == RecordKind::ConditionError)
        .collect();
    assert_eq!(errors.len(), 5);
    for e in errors {
        assert_eq!(e.playbook.as_deref(), Some("forever"));
        assert!(
            e.reason
                .as_deref()
                .unwrap()
                .contains("cut off by the sandbox"),
            "{e:?}"
        );
    }
    assert!(records.iter().all(
        |r| r.playbook.as_deref() != Some("forever") || r.record == RecordKind::ConditionError
    ));
    let (code, metrics) = http_get(&_engine.metrics, "/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(
        metrics.contains("riposte_condition_errors_total 5"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_engine_killed_mid_stream_records_every_run_exactly_once() {
    const EVENTS: usize = 3000;
    let nats = NatsServer::start();
    let work = tempfile::tempdir().unwrap();
    write(&work.path().join("pb/shell.yaml"), SHELL_PLAYBOOK);
    let client = nats.client().await;
    // The streams exist once an engine has started; start one, stop it, then fill the stream.
    let mut first = Engine::start(&nats.url, &work.path().join("pb"), None, work.path());
    first.stop();
    let alerts: Vec<Vec<u8>> = (0..EVENTS)
        .map(|i| {
            falco_alert(
                &format!("k-{i}"),
                "Terminal shell in container",
                "Critical",
                &format!("{i:06x}"),
                "shop",
            )
        })
        .collect();
    publish(&client, "falco.critical.kill", &alerts).await;

    // A short acknowledgement wait: what the killed engine held is redelivered after 5 s.
    let config = work.path().join("riposte.yaml");
    write(&config, "engine:\n  ack_wait: 5s\n");
    let mut engine = Engine::start(
        &nats.url,
        &work.path().join("pb"),
        Some(&config),
        work.path(),
    );
    let consumer: async_nats::jetstream::consumer::PullConsumer =
        async_nats::jetstream::new(client.clone())
            .get_stream("RIPOSTE_EVENTS")
            .await
            .unwrap()
            .get_consumer("riposte")
            .await
            .unwrap();
    assert_eq!(
        consumer.cached_info().config.ack_wait,
        Duration::from_secs(5),
        "the running consumer takes engine.ack_wait"
    );
    wait_for(
        &nats.url,
        Duration::from_secs(60),
        "some runs before the kill",
        |r| r.iter().filter(|x| x.record == RecordKind::Run).count() >= 300,
    );
    engine.kill_hard();
    let at_kill = audit_records(&nats.url)
        .iter()
        .filter(|x| x.record == RecordKind::Run)
        .count();
    assert!(
        at_kill < EVENTS,
        "the engine finished before it was killed; raise EVENTS"
    );

    let _again = Engine::start(
        &nats.url,
        &work.path().join("pb"),
        Some(&config),
        work.path(),
    );
    let records = wait_for(&nats.url, Duration::from_secs(120), "every run", |r| {
        r.iter().filter(|x| x.record == RecordKind::Run).count() >= EVENTS
    });
    // Give a late duplicate the chance to show up.
    std::thread::sleep(Duration::from_secs(2));
    let records = if records.len() < audit_records(&nats.url).len() {
        audit_records(&nats.url)
    } else {
        records
    };

    let mut runs_per_event: HashMap<String, usize> = HashMap::new();
    for r in records.iter().filter(|r| r.record == RecordKind::Run) {
        *runs_per_event
            .entry(r.event_id.clone().unwrap())
            .or_default() += 1;
        assert_eq!(r.outcome, "ok");
    }
    assert_eq!(runs_per_event.len(), EVENTS, "an event has no run");
    assert!(
        runs_per_event.values().all(|n| *n == 1),
        "a run was recorded twice"
    );
    let mut steps: HashMap<(String, String), usize> = HashMap::new();
    for r in records.iter().filter(|r| r.record == RecordKind::Step) {
        *steps
            .entry((r.run_id.clone().unwrap(), r.step.clone().unwrap()))
            .or_default() += 1;
    }
    assert_eq!(steps.len(), EVENTS * 2);
    assert!(steps.values().all(|n| *n == 1), "a step was recorded twice");
    let event_records = records
        .iter()
        .filter(|r| r.record == RecordKind::Event)
        .count();
    assert_eq!(event_records, EVENTS);
}

#[tokio::test(flavor = "multi_thread")]
async fn dedup_windows_are_shared_through_the_kv_store() {
    let nats = NatsServer::start();
    let work = tempfile::tempdir().unwrap();
    write(
        &work.path().join("pb/dedup.yaml"),
        "apiVersion: riposte/v1\nkind: Playbook\nmetadata: { name: once-per-container }\nspec:\n  match: { sources: [falco] }\n  dedup: { key: '${{ event.resource.container.id }}', window: 10m }\n  steps:\n    - { id: note, action: log.info, with: { message: 'seen ${{ event.resource.container.id }}' } }\n",
    );
    let client = nats.client().await;
    let mut first = Engine::start(&nats.url, &work.path().join("pb"), None, work.path());
    publish(
        &client,
        "falco.critical.a",
        &[falco_alert("d-1", "Some rule", "Critical", "same", "shop")],
    )
    .await;
    wait_for(&nats.url, Duration::from_secs(20), "the first run", |r| {
        r.iter().any(|x| x.record == RecordKind::Run)
    });
    first.stop();
    // Another engine process (a replica, or a restart) sees the same window.
    let _second = Engine::start(&nats.url, &work.path().join("pb"), None, work.path());
    publish(
        &client,
        "falco.critical.a",
        &[falco_alert("d-2", "Some rule", "Critical", "same", "shop")],
    )
    .await;
    publish(
        &client,
        "falco.critical.a",
        &[falco_alert("d-3", "Some rule", "Critical", "other", "shop")],
    )
    .await;
    let records = wait_for(
        &nats.url,
        Duration::from_secs(20),
        "dedup and a second run",
        |r| {
            r.iter().any(|x| x.record == RecordKind::Dedup)
                && r.iter().filter(|x| x.record == RecordKind::Run).count() == 2
        },
    );
    let dedup = records
        .iter()
        .find(|r| r.record == RecordKind::Dedup)
        .unwrap();
    assert_eq!(dedup.event_id.as_deref(), Some("d-2"));
    assert_eq!(dedup.outcome, "suppressed");
    assert!(
        dedup
            .reason
            .as_deref()
            .unwrap()
            .contains("dedup key `same` is held by run"),
        "{dedup:?}"
    );
}

#[test]
fn run_refuses_to_start_on_an_invalid_playbook_set_and_says_why() {
    let nats = NatsServer::start();
    let work = tempfile::tempdir().unwrap();
    write(
        &work.path().join("pb/bad.yaml"),
        "apiVersion: riposte/v1\nkind: Playbook\nmetadata: { name: bad }\nspec:\n  match: { when: 'event.title ==' }\n  steps:\n    - { id: a, action: firewall.block, with: {} }\n",
    );
    let mut engine = Engine::spawn(&nats.url, &work.path().join("pb"), None, work.path());
    let code = engine.wait_exit(Duration::from_secs(20));
    assert_eq!(code, Some(2));
    let log = engine.log_text();
    assert!(
        log.contains("the playbook set is invalid (2 problem(s))"),
        "{log}"
    );
    assert!(log.contains("bad.yaml:5:"), "{log}");
    assert!(log.contains("unknown connector `firewall`"), "{log}");
}

/// The process id written by the embedded server's supervisor, if that process is alive.
fn embedded_pid(data: &std::path::Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(data.join("nats.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    std::path::Path::new(&format!("/proc/{pid}"))
        .exists()
        .then_some(pid)
}

#[test]
fn without_a_nats_url_run_starts_supervises_and_stops_its_own_server() {
    let work = tempfile::tempdir().unwrap();
    write(&work.path().join("pb/shell.yaml"), SHELL_PLAYBOOK);
    let data = work.path().join("data");
    let mut engine = Engine::spawn_with(None, &work.path().join("pb"), None, work.path());
    engine.wait_ready(Duration::from_secs(30));
    let url = std::fs::read_to_string(data.join("nats.url"))
        .unwrap()
        .trim()
        .to_owned();
    assert!(url.starts_with("nats://127.0.0.1:"), "{url}");
    let first_server = embedded_pid(&data).expect("the embedded server runs");

    let alert = work.path().join("alert.json");
    std::fs::write(
        &alert,
        falco_alert(
            "embedded-1",
            "Terminal shell in container",
            "Critical",
            "e1",
            "shop",
        ),
    )
    .unwrap();
    let out = cli(&[
        "publish",
        alert.to_str().unwrap(),
        "--subject",
        "falco.critical.x",
        "--nats",
        &url,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(&url, Duration::from_secs(20), "the run", |r| {
        r.iter().any(|x| x.record == RecordKind::Run)
    });

    // Killed without a chance to clean up, the engine leaves its server behind; the next start
    // stops that orphan (it holds the store) and starts its own, with the events still there.
    engine.kill_hard();
    assert!(embedded_pid(&data).is_some(), "the orphan should still run");
    let mut again = Engine::spawn_with(None, &work.path().join("pb"), None, work.path());
    again.wait_ready(Duration::from_secs(30));
    let second_server = embedded_pid(&data).expect("a new embedded server runs");
    assert_ne!(first_server, second_server);
    assert!(
        !std::path::Path::new(&format!("/proc/{first_server}")).exists(),
        "the orphan was stopped"
    );
    let url = std::fs::read_to_string(data.join("nats.url"))
        .unwrap()
        .trim()
        .to_owned();
    let records = audit_records(&url);
    assert_eq!(
        records
            .iter()
            .filter(|r| r.record == RecordKind::Run)
            .count(),
        1,
        "the audit trail survived"
    );

    // SIGTERM stops the engine and its server.
    again.stop();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        embedded_pid(&data).is_none(),
        "the embedded server was stopped with the engine"
    );
}

#[test]
fn connects_over_tls_with_a_token_from_a_file_and_never_prints_the_token() {
    const TOKEN: &str = "s3cret-token-7f1c2d";
    let work = tempfile::tempdir().unwrap();
    certificates(work.path());
    let p = |f: &str| work.path().join(f).display().to_string();
    let (ca, cert, key) = (p("ca.pem"), p("server.pem"), p("server.key"));
    let nats = NatsServer::start_with(
        &[
            "--tls",
            "--tlscert",
            &cert,
            "--tlskey",
            &key,
            "--auth",
            TOKEN,
        ],
        "tls",
    );
    write(&work.path().join("pb/shell.yaml"), SHELL_PLAYBOOK);
    let token_file = work.path().join("secrets/nats-token");
    write(&token_file, &format!("{TOKEN}\n"));
    let config = work.path().join("riposte.yaml");
    write(
        &config,
        &format!(
            "nats:\n  url: {}\n  token_file: {}\n  tls: {{ ca_file: {ca} }}\n",
            nats.url,
            token_file.display()
        ),
    );
    let engine = Engine::start(
        &nats.url,
        &work.path().join("pb"),
        Some(&config),
        work.path(),
    );

    let alert = work.path().join("alert.json");
    std::fs::write(
        &alert,
        falco_alert(
            "tls-1",
            "Terminal shell in container",
            "Critical",
            "t1",
            "shop",
        ),
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    let out = cli(&[
        "publish",
        alert.to_str().unwrap(),
        "--subject",
        "falco.critical.x",
        "--config",
        cfg,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut audit = String::new();
    for _ in 0..100 {
        let out = cli(&["audit", "--json", "--config", cfg]);
        audit = String::from_utf8_lossy(&out.stdout).into_owned();
        if audit.contains("\"record\":\"run\"") {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        audit.contains("\"record\":\"run\"") && audit.contains("tls-1"),
        "{audit}"
    );

    // A wrong token is refused with a clear error; no token appears anywhere.
    let wrong = work.path().join("secrets/wrong-token");
    write(&wrong, "not-the-token\n");
    let bad_config = work.path().join("bad.yaml");
    write(
        &bad_config,
        &format!(
            "nats:\n  token_file: {}\n  tls: {{ ca_file: {ca} }}\n",
            wrong.display()
        ),
    );
    let mut refused = Engine::spawn(
        &nats.url,
        &work.path().join("pb"),
        Some(&bad_config),
        work.path(),
    );
    assert_eq!(refused.wait_exit(Duration::from_secs(30)), Some(2));
    let refused_log = refused.log_text();
    assert!(
        refused_log.contains("cannot connect to NATS"),
        "{refused_log}"
    );
    for text in [engine.log_text(), refused_log, audit] {
        assert!(!text.contains(TOKEN), "the token leaked");
        assert!(!text.contains("not-the-token"), "the wrong token leaked");
    }
}
