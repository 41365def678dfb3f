//! End-to-end tests of the `docker` connector: the real binary, a real nats-server and the
//! real Docker daemon, with containers made from the locally built test image.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use riposte::audit::{AuditRecord, RecordKind};
use riposte_tests::docker::{networks_of, state_of, Scene, TEST_IMAGE};
use riposte_tests::*;

/// A playbook answering Falco rule `rule` with `steps` (YAML, indented for `steps:`).
fn playbook(name: &str, rule: &str, mode: &str, steps: &str) -> String {
    falco_playbook(name, rule, Some(mode), steps)
}

/// An engine config with a `docker` instance whose quarantine network, evidence directory and
/// evidence repository belong to the scene, plus `extra` YAML.
fn config(scene: &mut Scene, work: &Path, extra: &str) -> std::path::PathBuf {
    let qnet = scene.name("quarantine");
    scene.track_network(&qnet);
    let repo = scene.name("evidence");
    scene.track_image_repo(&repo);
    let path = work.join("riposte.yaml");
    write(
        &path,
        &format!(
            r#"connectors:
  docker:
    type: docker
    quarantine_network: {qnet}
    evidence_dir: {evidence}
    evidence_repository: {repo}
{extra}"#,
            evidence = work.join("evidence").display()
        ),
    );
    path
}

fn step<'a>(records: &'a [AuditRecord], run: &str, step: &str) -> &'a AuditRecord {
    records
        .iter()
        .find(|r| {
            r.record == RecordKind::Step
                && r.run_id.as_deref() == Some(run)
                && r.step.as_deref() == Some(step)
        })
        .unwrap_or_else(|| panic!("no record of step {step} in run {run}: {records:#?}"))
}

/// The run id of the run `playbook` made for event `event_id`, once it has finished.
fn finished_run(nats: &str, playbook: &str, event_id: &str) -> (String, Vec<AuditRecord>) {
    let records = wait_for(
        nats,
        Duration::from_secs(40),
        &format!("a run of {playbook}"),
        |r| {
            r.iter().any(|x| {
                x.record == RecordKind::Run
                    && x.playbook.as_deref() == Some(playbook)
                    && x.event_id.as_deref() == Some(event_id)
            })
        },
    );
    let run = records
        .iter()
        .find(|x| {
            x.record == RecordKind::Run
                && x.playbook.as_deref() == Some(playbook)
                && x.event_id.as_deref() == Some(event_id)
        })
        .unwrap();
    (run.run_id.clone().unwrap(), records)
}

fn wait_until(what: &str, within: Duration, done: impl Fn() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_falco_event_quarantines_and_snapshots_its_container_and_revert_restores_its_networks() {
    let mut scene = Scene::new("quarantine");
    let app = scene.network("app");
    let db = scene.network("db");
    let victim = scene.container("victim", &[(&app, &["web", "shop"]), (&db, &["api"])]);
    let before = networks_of(&scene.inspect(&victim.id));
    assert_eq!(before.len(), 2);

    let nats = NatsServer::start();
    let work = tempfile::tempdir().unwrap();
    let cfg = config(&mut scene, work.path(), "");
    let qnet = scene.name("quarantine");
    write(
        &work.path().join("pb/contain.yaml"),
        &playbook(
            "contain-shell",
            "Terminal shell in container",
            "enforce",
            r#"    - id: evidence
      action: docker.snapshot
      with: { container: "${{ event.resource.container.id }}", log_lines: 50 }
    - id: isolate
      action: docker.quarantine
      with: { container: "${{ event.resource.container.id }}" }
    - id: note
      action: log.info
      with: { message: "image ${{ event.enrichment.docker.image }} user ${{ event.enrichment.docker.user }}" }
"#,
        ),
    );
    let _engine = Engine::start(&nats.url, &work.path().join("pb"), Some(&cfg), work.path());
    let client = nats.client().await;
    // Falco reports the 12-character id prefix.
    let alert = falco_alert(
        "q-1",
        "Terminal shell in container",
        "Critical",
        victim.short_id(),
        "shop",
    );
    publish(&client, "falco.critical.shell", &[alert]).await;

    let (run, records) = finished_run(&nats.url, "contain-shell", "q-1");
    let evidence = step(&records, &run, "evidence");
    assert_eq!(evidence.outcome, "ok", "{evidence:#?}");
    let isolate = step(&records, &run, "isolate");
    assert_eq!(isolate.outcome, "ok", "{isolate:#?}");
    let note = step(&records, &run, "note");
    let message = note.args.as_ref().unwrap()["message"].as_str().unwrap();
    assert_eq!(
        message,
        format!("image {TEST_IMAGE} user root"),
        "enrichment reached the step"
    );

    // Only the quarantine network is left, and it is internal.
    let after = networks_of(&scene.inspect(&victim.id));
    assert_eq!(
        after.keys().cloned().collect::<Vec<_>>(),
        vec![qnet.clone()]
    );
    assert_eq!(scene.inspect(&qnet)["Internal"], true);
    let revert = isolate.revert.as_ref().unwrap();
    assert_eq!(
        revert["command"],
        format!("riposte revert {run} --step isolate")
    );

    // The snapshot is on disk, every file matching its manifest, and its image exists.
    let out = evidence.output.as_ref().unwrap();
    let dir = Path::new(out["dir"].as_str().unwrap());
    for f in [
        "inspect.json",
        "logs.txt",
        "diff.json",
        "image.json",
        "manifest.sha256",
    ] {
        assert!(dir.join(f).is_file(), "missing {f} in {}", dir.display());
    }
    let check = std::process::Command::new("sha256sum")
        .args(["-c", "manifest.sha256"])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let inspected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("inspect.json")).unwrap()).unwrap();
    assert_eq!(inspected["Id"], victim.id);
    let image = out["image"].as_str().unwrap();
    assert!(image.starts_with(&scene.name("evidence")), "{image}");
    scene.inspect(image);

    // Quarantining again changes nothing and says so.
    let again = falco_alert(
        "q-2",
        "Terminal shell in container",
        "Critical",
        &victim.name,
        "shop",
    );
    publish(&client, "falco.critical.shell", &[again]).await;
    let (run2, records) = finished_run(&nats.url, "contain-shell", "q-2");
    let isolate2 = step(&records, &run2, "isolate");
    assert_eq!(isolate2.outcome, "ok");
    assert_eq!(isolate2.output.as_ref().unwrap()["changed"], false);
    assert_eq!(
        isolate2.output.as_ref().unwrap()["message"],
        "already quarantined"
    );
    assert!(isolate2.revert.is_none());

    // `riposte revert` puts back exactly the networks and aliases it had.
    let out = cli(&["revert", &run, "--nats", &nats.url, "--as", "alice"]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(networks_of(&scene.inspect(&victim.id)), before);
    let records = audit_records(&nats.url);
    let reverted = records
        .iter()
        .find(|r| r.record == RecordKind::Revert && r.run_id.as_deref() == Some(run.as_str()))
        .unwrap();
    assert_eq!(reverted.outcome, "ok");
    assert_eq!(reverted.step.as_deref(), Some("isolate"));
    assert_eq!(reverted.output.as_ref().unwrap()["message"], "released");
    // Nothing is left to undo.
    let out = cli(&["revert", &run, "--nats", &nats.url]);
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread")]
async fn pause_kill_and_stop_leave_the_container_in_that_state_and_revert_after_unpauses() {
    let mut scene = Scene::new("lifecycle");
    let paused = scene.container("paused", &[]);
    let killed = scene.container("killed", &[]);
    let stopped = scene.container("stopped", &[]);
    let restarted = scene.container("restarted", &[]);
    let removed = scene.container("removed", &[]);
    let started_at = scene.inspect(&restarted.id)["State"]["StartedAt"].clone();
    let nats = NatsServer::start();
    let work = tempfile::tempdir().unwrap();
    let cfg = config(&mut scene, work.path(), "");
    let pb = work.path().join("pb");
    let target = r#"with: { container: "${{ event.resource.container.id }}" }"#;
    write(
        &pb.join("pause.yaml"),
        &playbook(
            "pause-it",
            "rule-pause",
            "enforce",
            &format!("    - id: freeze\n      action: docker.pause\n      {target}\n      revert_after: 4s\n"),
        ),
    );
    write(
        &pb.join("kill.yaml"),
        &playbook(
            "kill-it",
            "rule-kill",
            "enforce",
            &format!("    - id: end\n      action: docker.kill\n      {target}\n"),
        ),
    );
    write(
        &pb.join("stop.yaml"),
        &playbook(
            "stop-it",
            "rule-stop",
            "enforce",
            r#"    - id: end
      action: docker.stop
      with: { container: "${{ event.resource.container.id }}", grace: 1s }
"#,
        ),
    );
    write(
        &pb.join("restart.yaml"),
        &playbook(
            "restart-it",
            "rule-restart",
            "enforce",
            r#"    - id: again
      action: docker.restart
      with: { container: "${{ event.resource.container.id }}", grace: 1s }
"#,
        ),
    );
    write(
        &pb.join("remove.yaml"),
        &playbook(
            "remove-it",
            "rule-remove",
            "enforce",
            r#"    - id: gone
      action: docker.remove
      with: { container: "${{ event.resource.container.id }}", confirm: true, force: true }
"#,
        ),
    );
    let _engine = Engine::start(&nats.url, &pb, Some(&cfg), work.path());
    let client = nats.client().await;
    publish(
        &client,
        "falco.x",
        &[
            falco_alert("r-1", "rule-restart", "Critical", &restarted.name, "shop"),
            falco_alert("x-1", "rule-remove", "Critical", &removed.name, "shop"),
            falco_alert("p-1", "rule-pause", "Critical", &paused.id, "shop"),
            falco_alert("k-1", "rule-kill", "Critical", killed.short_id(), "shop"),
            falco_alert("s-1", "rule-stop", "Critical", &stopped.name, "shop"),
        ],
    )
    .await;

    let (pause_run, records) = finished_run(&nats.url, "pause-it", "p-1");
    assert_eq!(step(&records, &pause_run, "freeze").outcome, "ok");
    let (running, is_paused, status) = state_of(&scene.inspect(&paused.id));
    assert!(running && is_paused, "{status}");
    let (kill_run, records) = finished_run(&nats.url, "kill-it", "k-1");
    assert_eq!(step(&records, &kill_run, "end").outcome, "ok");
    let k = scene.inspect(&killed.id);
    assert_eq!(state_of(&k).2, "exited");
    assert_eq!(k["State"]["ExitCode"], 137, "SIGKILL by default");
    let (stop_run, records) = finished_run(&nats.url, "stop-it", "s-1");
    assert_eq!(step(&records, &stop_run, "end").outcome, "ok");
    assert_eq!(state_of(&scene.inspect(&stopped.id)).2, "exited");

    let (restart_run, records) = finished_run(&nats.url, "restart-it", "r-1");
    assert_eq!(step(&records, &restart_run, "again").outcome, "ok");
    let r = scene.inspect(&restarted.id);
    assert!(state_of(&r).0);
    assert_ne!(r["State"]["StartedAt"], started_at, "it was started again");
    let (remove_run, records) = finished_run(&nats.url, "remove-it", "x-1");
    assert_eq!(step(&records, &remove_run, "gone").outcome, "ok");
    assert!(scene.try_inspect(&removed.id).is_none(), "removed");

    // Killing a stopped container succeeds without change.
    publish(
        &client,
        "falco.x",
        &[falco_alert(
            "k-2",
            "rule-kill",
            "Critical",
            &killed.id,
            "shop",
        )],
    )
    .await;
    let (again, records) = finished_run(&nats.url, "kill-it", "k-2");
    let end = step(&records, &again, "end");
    assert_eq!(end.outcome, "ok");
    assert_eq!(end.output.as_ref().unwrap()["changed"], false);

    // revert_after: the engine unpauses it on its own, and audits it.
    wait_until(
        "the paused container is unpaused",
        Duration::from_secs(30),
        || !state_of(&scene.inspect(&paused.id)).1,
    );
    let records = wait_for(
        &nats.url,
        Duration::from_secs(10),
        "the revert record",
        |r| r.iter().any(|x| x.record == RecordKind::Revert),
    );
    let rev = records
        .iter()
        .find(|x| x.record == RecordKind::Revert)
        .unwrap();
    assert_eq!(rev.outcome, "ok");
    assert_eq!(rev.run_id.as_deref(), Some(pause_run.as_str()));
    assert_eq!(rev.action.as_deref(), Some("docker.pause"));
}

#[tokio::test(flavor = "multi_thread")]
async fn protected_containers_are_untouched_and_the_refusal_is_audited() {
    let mut scene = Scene::new("protected");
    let labelled =
        scene.container_with_labels("labelled", &[], &[("riposte.io/protected", "true")]);
    let named = scene.container("keep-me", &[]);
    let own = scene.container("engine", &[]);
    let nats = NatsServer::start();
    let work = tempfile::tempdir().unwrap();
    let pattern = format!("{}-keep-*", scene.prefix());
    let cfg = config(
        &mut scene,
        work.path(),
        &format!(
            "    self_container: {}\nprotect:\n  containers: [\"{pattern}\"]\n",
            own.name
        ),
    );
    write(
        &work.path().join("pb/pause.yaml"),
        &playbook(
            "pause-it",
            "rule-pause",
            "enforce",
            "    - id: freeze\n      action: docker.pause\n      with: { container: \"${{ event.resource.container.id }}\" }\n",
        ),
    );
    let _engine = Engine::start(&nats.url, &work.path().join("pb"), Some(&cfg), work.path());
    let client = nats.client().await;
    publish(
        &client,
        "falco.x",
        &[
            falco_alert("g-1", "rule-pause", "Critical", labelled.short_id(), "shop"),
            falco_alert("g-2", "rule-pause", "Critical", named.short_id(), "shop"),
            falco_alert("g-3", "rule-pause", "Critical", own.short_id(), "shop"),
        ],
    )
    .await;
    for (event, c, why) in [
        ("g-1", &labelled, "riposte.io/protected=true"),
        ("g-2", &named, "keep-*"),
        ("g-3", &own, "the engine's own"),
    ] {
        let (run, records) = finished_run(&nats.url, "pause-it", event);
        let s = step(&records, &run, "freeze");
        assert_eq!(s.outcome, "skipped", "{s:#?}");
        let reason = s.reason.as_deref().unwrap();
        assert!(
            reason.starts_with("guard: ") && reason.contains(why),
            "{reason}"
        );
        assert!(
            !state_of(&scene.inspect(&c.id)).1,
            "a protected container was paused"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_container_fails_the_step_clearly_and_the_engine_carries_on() {
    let mut scene = Scene::new("unknown");
    let real = scene.container("real", &[]);
    let nats = NatsServer::start();
    let work = tempfile::tempdir().unwrap();
    let cfg = config(&mut scene, work.path(), "");
    let pb = work.path().join("pb");
    write(
        &pb.join("pause.yaml"),
        &playbook(
            "pause-it",
            "rule-pause",
            "enforce",
            "    - id: freeze\n      action: docker.pause\n      with: { container: \"${{ event.resource.container.id }}\" }\n",
        ),
    );
    write(
        &pb.join("plan.yaml"),
        &playbook(
            "plan-it",
            "rule-plan",
            "dry-run",
            "    - id: freeze\n      action: docker.quarantine\n      with: { container: \"${{ event.resource.container.id }}\" }\n",
        ),
    );
    let engine = Engine::start(&nats.url, &pb, Some(&cfg), work.path());
    let client = nats.client().await;
    publish(
        &client,
        "falco.x",
        &[falco_alert(
            "u-1",
            "rule-pause",
            "Critical",
            "0123456789ab",
            "shop",
        )],
    )
    .await;
    let (run, records) = finished_run(&nats.url, "pause-it", "u-1");
    let s = step(&records, &run, "freeze");
    assert_eq!(s.outcome, "failed");
    assert!(
        s.reason
            .as_deref()
            .unwrap()
            .contains("no container `0123456789ab`"),
        "{s:#?}"
    );
    assert_eq!(s.attempts, Some(1), "a missing container is not retried");
    let r = records
        .iter()
        .find(|x| x.record == RecordKind::Run && x.run_id.as_deref() == Some(run.as_str()))
        .unwrap();
    assert_eq!(r.outcome, "failed");

    // The engine goes on: the next event pauses a real container, and a dry-run playbook
    // resolves the real target without touching it.
    publish(
        &client,
        "falco.x",
        &[
            falco_alert("u-2", "rule-pause", "Critical", real.short_id(), "shop"),
            falco_alert("u-3", "rule-plan", "Critical", real.short_id(), "shop"),
        ],
    )
    .await;
    let (run, records) = finished_run(&nats.url, "pause-it", "u-2");
    assert_eq!(step(&records, &run, "freeze").outcome, "ok");
    assert!(state_of(&scene.inspect(&real.id)).1);
    let (plan, records) = finished_run(&nats.url, "plan-it", "u-3");
    let planned = step(&records, &plan, "freeze");
    assert_eq!(planned.outcome, "planned");
    let text = planned.output.as_ref().unwrap()["plan"].as_str().unwrap();
    assert!(
        text.contains(&format!("quarantine container `{}`", real.name))
            && (text.contains("(now running") || text.contains("(now paused"))
            && text.contains("on bridge"),
        "{text}"
    );
    assert_eq!(
        networks_of(&scene.inspect(&real.id))
            .keys()
            .cloned()
            .collect::<Vec<_>>(),
        names(&["bridge"]),
        "a plan changes nothing"
    );
    assert!(http_get(&engine.metrics, "/readyz").is_some_and(|(c, _)| c == 200));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_daemon_is_retried_then_the_failure_is_audited() {
    let mut scene = Scene::new("unreachable");
    let nats = NatsServer::start();
    let work = tempfile::tempdir().unwrap();
    let socket = work.path().join("no-such-docker.sock");
    let cfg = config(
        &mut scene,
        work.path(),
        &format!(
            "  faraway:\n    type: docker\n    host: unix://{}\n    timeout: 2s\n",
            socket.display()
        ),
    );
    write(
        &work.path().join("pb/pause.yaml"),
        &playbook(
            "pause-far",
            "rule-pause",
            "enforce",
            r#"    - id: freeze
      action: faraway.pause
      with: { container: "${{ event.resource.container.id }}" }
      retry: { attempts: 3, backoff: 200ms }
"#,
        ),
    );
    let engine = Engine::start(&nats.url, &work.path().join("pb"), Some(&cfg), work.path());
    let client = nats.client().await;
    publish(
        &client,
        "falco.x",
        &[falco_alert(
            "f-1",
            "rule-pause",
            "Critical",
            "0123456789ab",
            "shop",
        )],
    )
    .await;
    let (run, records) = finished_run(&nats.url, "pause-far", "f-1");
    let s = step(&records, &run, "freeze");
    assert_eq!(s.outcome, "failed");
    assert_eq!(s.attempts, Some(3));
    let reason = s.reason.as_deref().unwrap();
    assert!(
        reason.contains("docker daemon unreachable at unix://"),
        "{reason}"
    );
    assert!(http_get(&engine.metrics, "/readyz").is_some_and(|(c, _)| c == 200));
    let started: BTreeMap<_, _> = records
        .iter()
        .filter(|r| r.record == RecordKind::StepStarted)
        .map(|r| (r.run_id.clone(), r.step.clone()))
        .collect();
    assert!(
        started.contains_key(&Some(run)),
        "the attempt was announced before it ran"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_is_reached_over_tcp_with_tls_client_certificates_from_files() {
    let (dir, addr) = riposte_tests::docker::tls();
    let mut scene = Scene::new("tls");
    let target = scene.container("remote", &[]);
    let nats = NatsServer::start();
    let work = tempfile::tempdir().unwrap();
    let file = |f: &str| dir.join(f).display().to_string();
    let cfg = config(
        &mut scene,
        work.path(),
        &format!(
            "  remote:\n    type: docker\n    host: tcp://{addr}\n    tls: {{ ca_file: {}, cert_file: {}, key_file: {} }}\n  no-client-cert:\n    type: docker\n    host: tcp://{addr}\n    tls: {{ ca_file: {}, cert_file: {}, key_file: {} }}\n",
            file("ca.pem"),
            file("client-cert.pem"),
            file("client-key.pem"),
            file("ca.pem"),
            file("server-cert.pem"),
            file("server-key.pem"),
        ),
    );
    write(
        &work.path().join("pb/pause.yaml"),
        &playbook(
            "pause-remote",
            "rule-pause",
            "enforce",
            r#"    - id: wrong
      action: no-client-cert.inspect
      with: { container: "${{ event.resource.container.id }}" }
      on_error: continue
    - id: freeze
      action: remote.pause
      with: { container: "${{ event.resource.container.id }}" }
"#,
        ),
    );
    let _engine = Engine::start(&nats.url, &work.path().join("pb"), Some(&cfg), work.path());
    let client = nats.client().await;
    publish(
        &client,
        "falco.x",
        &[falco_alert(
            "t-1",
            "rule-pause",
            "Critical",
            target.short_id(),
            "shop",
        )],
    )
    .await;
    let (run, records) = finished_run(&nats.url, "pause-remote", "t-1");
    let freeze = step(&records, &run, "freeze");
    assert_eq!(freeze.outcome, "ok", "{freeze:#?}");
    assert!(state_of(&scene.inspect(&target.id)).1, "paused over TLS");
    // A certificate the daemon does not accept as a client is refused, and says where.
    let wrong = step(&records, &run, "wrong");
    assert_eq!(wrong.outcome, "failed");
    let reason = wrong.reason.as_deref().unwrap();
    assert!(reason.contains(&format!("tcp://{addr}")), "{reason}");
    // Key material never reaches the audit trail.
    let all = serde_json::to_string(&records).unwrap();
    assert!(!all.contains("PRIVATE KEY"));
}
