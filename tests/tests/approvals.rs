//! End-to-end tests of step approvals: the real `riposte` binary and a real nats-server. A step
//! with `approval` waits; `riposte approve` (or the gateway) decides; an engine resumes the run.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use riposte::audit::{AuditRecord, RecordKind};
use riposte_tests::*;
use serde_json::Value;

/// A shell in a container: logged, then (after approval) announced on `derived.contain`, then
/// `after` says what became of `contain`; the notification is logged.
const PLAYBOOK: &str = r#"
apiVersion: riposte/v1
kind: Playbook
metadata:
  name: contain-after-approval
spec:
  match:
    sources: [falco]
    when: event.title == "Terminal shell in container"
  steps:
    - id: record
      action: log.warn
      with: { message: "shell in ${{ event.resource.container.id }}" }
    - id: contain
      action: nats.publish
      with:
        subject: derived.contain
        payload: { container: "${{ event.resource.container.id }}" }
      approval: { timeout: TIMEOUT, on_timeout: ON_TIMEOUT, approvers: [alice, bob] }
    - id: after
      action: nats.publish
      with:
        subject: derived.after
        payload: { contain: "${{ steps.contain.outcome }}" }
  notify:
    - action: log.info
"#;

fn playbook(name: &str, timeout: &str, on_timeout: &str) -> String {
    PLAYBOOK
        .replace("contain-after-approval", name)
        .replace("ON_TIMEOUT", on_timeout)
        .replace("TIMEOUT", timeout)
}

fn shell_alert(uuid: &str, container: &str) -> Vec<u8> {
    falco_alert(
        uuid,
        "Terminal shell in container",
        "Critical",
        container,
        "shop",
    )
}

const SUBJECT: &str = "falco.critical.terminal_shell_in_container";

fn record<'a>(
    records: &'a [AuditRecord],
    kind: RecordKind,
    run: &str,
    step: Option<&str>,
) -> Option<&'a AuditRecord> {
    records
        .iter()
        .rev()
        .find(|r| r.record == kind && r.run_id.as_deref() == Some(run) && r.step.as_deref() == step)
}

/// Waits until the run of `playbook` stops at its approval; returns the run id.
fn wait_for_request(nats: &str, playbook: &str) -> String {
    let records = wait_for(nats, Duration::from_secs(30), "the approval request", |r| {
        r.iter().any(|x| {
            x.record == RecordKind::Run
                && x.playbook.as_deref() == Some(playbook)
                && x.outcome == "awaiting_approval"
        })
    });
    records
        .iter()
        .find(|x| x.record == RecordKind::Run && x.playbook.as_deref() == Some(playbook))
        .and_then(|x| x.run_id.clone())
        .unwrap()
}

/// Waits until the run has ended (a run record other than `awaiting_approval`).
fn wait_for_end(nats: &str, run: &str) -> Vec<AuditRecord> {
    wait_for(nats, Duration::from_secs(30), "the resumed run", |r| {
        r.iter().any(|x| {
            x.record == RecordKind::Run
                && x.run_id.as_deref() == Some(run)
                && x.outcome != "awaiting_approval"
        })
    })
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

async fn next_payload(sub: &mut async_nats::Subscriber) -> Value {
    let msg = tokio::time::timeout(Duration::from_secs(20), sub.next())
        .await
        .expect("a message within 20s")
        .unwrap();
    serde_json::from_slice(&msg.payload).unwrap()
}

/// Subscribes to what the approved step publishes (`derived.contain`), then sends a shell alert
/// about `container`.
async fn alert(client: &async_nats::Client, uuid: &str, container: &str) -> async_nats::Subscriber {
    let contained = client.subscribe("derived.contain").await.unwrap();
    client.flush().await.unwrap();
    publish(client, SUBJECT, &[shell_alert(uuid, container)]).await;
    contained
}

fn setup(playbooks: &[(&str, String)]) -> tempfile::TempDir {
    let work = tempfile::tempdir().unwrap();
    for (name, text) in playbooks {
        write(&work.path().join(format!("pb/{name}.yaml")), text);
    }
    work
}

#[tokio::test(flavor = "multi_thread")]
async fn approving_with_the_cli_runs_the_step_and_the_rest_and_names_the_approver() {
    let nats = NatsServer::start();
    let work = setup(&[("p", playbook("contain-after-approval", "10m", "deny"))]);
    let engine = Engine::start(&nats.url, &work.path().join("pb"), None, work.path());
    let client = nats.client().await;
    let mut after = client.subscribe("derived.after").await.unwrap();
    let mut contained = alert(&client, "evt-1", "c0ffee").await;

    let run = wait_for_request(&nats.url, "contain-after-approval");
    let records = audit_records(&nats.url);
    assert_eq!(
        record(&records, RecordKind::Step, &run, Some("record"))
            .unwrap()
            .outcome,
        "ok"
    );
    let waiting = record(&records, RecordKind::Step, &run, Some("contain")).unwrap();
    assert_eq!(waiting.outcome, "awaiting_approval");
    let command = format!("riposte approve {run} contain --as NAME");
    assert_eq!(waiting.approval.as_ref().unwrap()["command"], command);
    assert_eq!(
        waiting.approval.as_ref().unwrap()["approvers"],
        serde_json::json!(["alice", "bob"])
    );
    assert!(record(&records, RecordKind::Step, &run, Some("after")).is_none());
    // The request was notified: what, to what, who may decide, and the command.
    let request = record(
        &records,
        RecordKind::Notify,
        &run,
        Some("contain.request-1"),
    )
    .unwrap();
    assert_eq!(request.outcome, "ok");
    let log = engine.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("awaiting_approval") && l.contains(&command))
        .unwrap_or_else(|| panic!("no request notification in the engine log:\n{log}"));
    assert!(
        line.contains("nats.publish") && line.contains("c0ffee") && line.contains("alice, bob")
    );

    let list = cli(&["approve", "--list", "--nats", &nats.url]);
    assert!(list.status.success(), "{}", text(&list));
    let listed = String::from_utf8_lossy(&list.stdout);
    assert!(
        listed.contains(&run) && listed.contains("contain") && listed.contains("alice, bob"),
        "{listed}"
    );

    // Someone not among the approvers is refused, with exit code 5, and nothing happens.
    let refused = cli(&[
        "approve", &run, "contain", "--as", "mallory", "--nats", &nats.url,
    ]);
    assert_eq!(refused.status.code(), Some(5), "{}", text(&refused));
    assert!(text(&refused).contains("`mallory` may not decide step `contain`"));

    let approved = cli(&[
        "approve",
        &run,
        "contain",
        "--as",
        "alice",
        "--reason",
        "confirmed",
        "--nats",
        &nats.url,
    ]);
    assert_eq!(approved.status.code(), Some(0), "{}", text(&approved));
    let printed = String::from_utf8_lossy(&approved.stdout);
    assert!(
        printed.contains("approval") && printed.contains("alice"),
        "{printed}"
    );

    assert_eq!(next_payload(&mut contained).await["container"], "c0ffee");
    assert_eq!(next_payload(&mut after).await["contain"], "ok");
    let records = wait_for_end(&nats.url, &run);
    let decision = record(&records, RecordKind::Approval, &run, Some("contain")).unwrap();
    assert_eq!(decision.outcome, "approved");
    assert_eq!(decision.approval.as_ref().unwrap()["by"], "alice");
    assert_eq!(decision.approval.as_ref().unwrap()["via"], "cli");
    assert_eq!(decision.reason.as_deref(), Some("confirmed"));
    let ran = record(&records, RecordKind::Step, &run, Some("contain")).unwrap();
    assert_eq!(ran.outcome, "ok");
    assert_eq!(ran.approval.as_ref().unwrap()["by"], "alice");
    assert_eq!(
        record(&records, RecordKind::Step, &run, Some("after"))
            .unwrap()
            .outcome,
        "ok"
    );
    assert_eq!(
        record(&records, RecordKind::Notify, &run, Some("notify-1"))
            .unwrap()
            .outcome,
        "ok"
    );
    let end = records
        .iter()
        .rev()
        .find(|r| r.record == RecordKind::Run && r.run_id.as_deref() == Some(run.as_str()))
        .unwrap();
    assert_eq!(end.outcome, "ok");

    // Carried out: nothing waits any more (exit code 3).
    let again = cli(&[
        "approve", &run, "contain", "--as", "bob", "--nats", &nats.url,
    ]);
    assert_eq!(again.status.code(), Some(3), "{}", text(&again));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_denied_step_is_skipped_and_the_later_steps_and_the_notification_run() {
    let nats = NatsServer::start();
    let work = setup(&[("p", playbook("contain-after-approval", "10m", "approve"))]);
    let _engine = Engine::start(&nats.url, &work.path().join("pb"), None, work.path());
    let client = nats.client().await;
    let mut after = client.subscribe("derived.after").await.unwrap();
    let mut contained = alert(&client, "evt-2", "beef").await;
    let run = wait_for_request(&nats.url, "contain-after-approval");

    let denied = cli(&[
        "approve",
        &run,
        "contain",
        "--as",
        "bob",
        "--deny",
        "--reason",
        "a planned debugging session",
        "--nats",
        &nats.url,
    ]);
    assert_eq!(denied.status.code(), Some(0), "{}", text(&denied));
    assert_eq!(next_payload(&mut after).await["contain"], "skipped");
    let records = wait_for_end(&nats.url, &run);
    let skipped = record(&records, RecordKind::Step, &run, Some("contain")).unwrap();
    assert_eq!(skipped.outcome, "skipped");
    assert_eq!(
        skipped.reason.as_deref(),
        Some("denied by bob: a planned debugging session")
    );
    assert_eq!(
        record(&records, RecordKind::Approval, &run, Some("contain"))
            .unwrap()
            .outcome,
        "denied"
    );
    assert!(record(&records, RecordKind::Notify, &run, Some("notify-1")).is_some());
    assert!(
        tokio::time::timeout(Duration::from_millis(500), contained.next())
            .await
            .is_err(),
        "the denied step published"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_timeout_denies_or_approves_as_on_timeout_says() {
    let nats = NatsServer::start();
    let work = setup(&[
        ("deny", playbook("times-out-denied", "2s", "deny")),
        ("approve", playbook("times-out-approved", "2s", "approve")),
    ]);
    let _engine = Engine::start(&nats.url, &work.path().join("pb"), None, work.path());
    let client = nats.client().await;
    let mut contained = alert(&client, "evt-3", "f00d").await;
    let denied = wait_for_request(&nats.url, "times-out-denied");
    let approved = wait_for_request(&nats.url, "times-out-approved");

    // Only the playbook whose timeout approves acts.
    assert_eq!(next_payload(&mut contained).await["container"], "f00d");
    wait_for_end(&nats.url, &denied);
    let records = wait_for_end(&nats.url, &approved);

    let skipped = record(&records, RecordKind::Step, &denied, Some("contain")).unwrap();
    assert_eq!(skipped.outcome, "skipped");
    assert_eq!(skipped.reason.as_deref(), Some("approval timed out"));
    assert_eq!(
        record(&records, RecordKind::Step, &denied, Some("after"))
            .unwrap()
            .outcome,
        "ok"
    );

    let decision = record(&records, RecordKind::Approval, &approved, Some("contain")).unwrap();
    assert_eq!(decision.outcome, "timed_out");
    assert_eq!(decision.approval.as_ref().unwrap()["decision"], "approve");
    assert_eq!(decision.approval.as_ref().unwrap()["by"], "timeout");
    let ran = record(&records, RecordKind::Step, &approved, Some("contain")).unwrap();
    assert_eq!(ran.outcome, "ok");
    assert!(
        tokio::time::timeout(Duration::from_millis(500), contained.next())
            .await
            .is_err(),
        "the denied step published"
    );
    // Nothing waits any more.
    let left = cli(&["approve", "--list", "--nats", &nats.url]);
    assert!(String::from_utf8_lossy(&left.stderr).contains("0 step(s) wait for approval"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wait_survives_a_killed_engine_and_a_fresh_engine_resumes_the_run() {
    let nats = NatsServer::start();
    let work = setup(&[("p", playbook("contain-after-approval", "10m", "deny"))]);
    let pb = work.path().join("pb");
    let mut first = Engine::start(&nats.url, &pb, None, work.path());
    let client = nats.client().await;
    let mut contained = alert(&client, "evt-4", "cafe").await;
    let run = wait_for_request(&nats.url, "contain-after-approval");
    first.kill_hard();

    // No engine: the decision is recorded, nothing resumes it yet (exit 1).
    let approved = cli(&[
        "approve", &run, "contain", "--as", "bob", "--wait", "1s", "--nats", &nats.url,
    ]);
    assert_eq!(approved.status.code(), Some(1), "{}", text(&approved));
    assert!(text(&approved).contains("no engine resumed"));
    // Decided: a second decision is refused (exit 4).
    let twice = cli(&[
        "approve", &run, "contain", "--as", "alice", "--deny", "--nats", &nats.url,
    ]);
    assert_eq!(twice.status.code(), Some(4), "{}", text(&twice));
    assert!(text(&twice).contains("already decided: approved by bob"));

    let _second = Engine::start(&nats.url, &pb, None, work.path());
    assert_eq!(next_payload(&mut contained).await["container"], "cafe");
    let records = wait_for_end(&nats.url, &run);
    let ran = record(&records, RecordKind::Step, &run, Some("contain")).unwrap();
    assert_eq!(ran.outcome, "ok");
    assert_eq!(ran.approval.as_ref().unwrap()["by"], "bob");
    assert_eq!(
        record(&records, RecordKind::Step, &run, Some("after"))
            .unwrap()
            .outcome,
        "ok"
    );
}

const CHATOPS_TOKEN: &str = "chatops-Vb7nQ2wE9rT4yU1i";
const FALCO_TOKEN: &str = "falco-Kx3mZ8pL5sD2fG6h";

fn gateway_config(dir: &Path, gateway: &str) -> std::path::PathBuf {
    let tokens = dir.join("secrets/tokens");
    write(
        &tokens,
        &format!("chatops:{CHATOPS_TOKEN}\nfalco:{FALCO_TOKEN}\n"),
    );
    let config = dir.join("riposte.yaml");
    write(
        &config,
        &format!(
            "ingest:\n  listen: {gateway}\n  tokens_file: {}\n  approval_senders: [chatops]\n",
            tokens.display()
        ),
    );
    config
}

#[tokio::test(flavor = "multi_thread")]
async fn the_gateway_lists_and_decides_approvals_for_the_senders_allowed_to() {
    let nats = NatsServer::start();
    let work = setup(&[("p", playbook("contain-after-approval", "10m", "deny"))]);
    let gateway = format!("127.0.0.1:{}", free_port());
    let config = gateway_config(work.path(), &gateway);
    let _engine = Engine::start(
        &nats.url,
        &work.path().join("pb"),
        Some(&config),
        work.path(),
    );
    let client = nats.client().await;
    let mut contained = alert(&client, "evt-5", "d00d").await;
    let run = wait_for_request(&nats.url, "contain-after-approval");

    let http = reqwest::Client::new();
    let list = format!("http://{gateway}/v1/approvals");
    let decide = format!("http://{gateway}/v1/approvals/{run}/contain");
    let body = serde_json::json!({ "decision": "approve", "as": "alice", "reason": "ok" });

    // No credentials: 401. An event sender's token: 403. Neither decides anything.
    let r = http.get(&list).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = http.post(&decide).json(&body).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = http
        .post(&decide)
        .bearer_auth(FALCO_TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let r = http
        .post(&decide)
        .bearer_auth("not-a-token-at-all-x")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);

    let r = http
        .get(&list)
        .bearer_auth(CHATOPS_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let listed: Value = r.json().await.unwrap();
    assert_eq!(listed["approvals"][0]["run_id"], run.as_str());
    assert_eq!(listed["approvals"][0]["step"], "contain");
    assert_eq!(
        listed["approvals"][0]["args"]["payload"]["container"],
        "d00d"
    );

    // A name outside the approvers: 403; then alice approves: 202.
    let r = http
        .post(&decide)
        .bearer_auth(CHATOPS_TOKEN)
        .json(&serde_json::json!({ "decision": "approve", "as": "mallory" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let r = http
        .post(&decide)
        .bearer_auth(CHATOPS_TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let r = http
        .post(&decide)
        .bearer_auth(CHATOPS_TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!([404, 409].contains(&r.status().as_u16()), "{}", r.status());

    assert_eq!(next_payload(&mut contained).await["container"], "d00d");
    let records = wait_for_end(&nats.url, &run);
    let ran = record(&records, RecordKind::Step, &run, Some("contain")).unwrap();
    assert_eq!(ran.outcome, "ok");
    let approval = ran.approval.as_ref().unwrap();
    assert_eq!(approval["by"], "alice");
    assert_eq!(approval["via"], "http:chatops");
}

#[test]
fn check_names_each_problem_of_an_approval_block_and_test_plans_it() {
    let work = tempfile::tempdir().unwrap();
    let bad = playbook("bad-approval", "0s", "sometimes").replace(
        "approvers: [alice, bob]",
        "approvers: [alice, alice], notify: [{ action: log.shout }]",
    );
    write(&work.path().join("bad/p.yaml"), &bad);
    let out = cli(&["check", work.path().join("bad").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let printed = String::from_utf8_lossy(&out.stdout);
    // The enum is checked first (serde stops there), with its position.
    assert!(
        printed.contains("p.yaml:") && printed.contains("unknown variant `sometimes`"),
        "{printed}"
    );
    let bad = bad.replace("sometimes", "deny");
    write(&work.path().join("bad/p.yaml"), &bad);
    let out = cli(&["check", work.path().join("bad").to_str().unwrap()]);
    let printed = String::from_utf8_lossy(&out.stdout);
    let file = work.path().join("bad/p.yaml");
    let at = format!("{}:19:", file.display());
    assert!(
        printed.lines().all(|l| l.starts_with(&at))
            && printed.contains("the approval timeout must be longer than 0s")
            && printed.contains("approver `alice` is listed twice")
            && printed.contains("connector `log` (log) has no action `shout`"),
        "{printed}"
    );
    assert_eq!(printed.lines().count(), 3, "{printed}");

    // `riposte test` plans the step and says it needs approval; `explain` shows it.
    let good = playbook("contain-after-approval", "15m", "deny");
    let alert = work.path().join("ok/fixtures/alert.json");
    write(
        &alert,
        &String::from_utf8(shell_alert("evt-6", "abcd")).unwrap(),
    );
    let tests = "  tests:\n    - name: a shell is contained after approval\n      event_file: fixtures/alert.json\n      format: falco\n      expect:\n        match: true\n        actions: [log.warn, nats.publish, nats.publish, log.info]\n";
    write(&work.path().join("ok/p.yaml"), &format!("{good}{tests}"));
    let out = cli(&["test", work.path().join("ok").to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 passed, 0 failed"));
    let out = cli(&[
        "explain",
        alert.to_str().unwrap(),
        "--format",
        "falco",
        "--playbooks",
        work.path().join("ok").to_str().unwrap(),
    ]);
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains("(needs approval by alice, bob within 15m; on timeout: deny)"),
        "{printed}"
    );
}
