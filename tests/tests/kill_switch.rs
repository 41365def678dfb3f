//! The kill switch end to end: one nats-server, three `riposte run` replicas, real Docker
//! containers. `riposte pause` stops every replica from acting (runs are planned, notifications
//! still go out, due reverts wait), `riposte resume` restores it, a replica restarted while
//! paused stays paused, one that cannot read the switch does not start; and the global limit on
//! destructive actions is shared by the replicas.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use riposte::audit::{AuditRecord, RecordKind};
use riposte_tests::docker::{state_of, Container, Scene};
use riposte_tests::*;

/// A playbook pausing the container a Falco event of rule `rule` names, then logging a notice.
fn playbook(name: &str, rule: &str, revert_after: Option<&str>) -> String {
    let revert = revert_after
        .map(|d| format!("\n      revert_after: {d}"))
        .unwrap_or_default();
    falco_playbook(
        name,
        rule,
        None,
        &format!(
            r#"    - id: freeze
      action: docker.pause
      with: {{ container: "${{{{ event.resource.container.id }}}}" }}{revert}
  notify:
    - action: log.info
"#
        ),
    )
}

/// One replica's config: its name, two events at a time (so events spread), and `extra`.
fn replica_config(work: &Path, name: &str, extra: &str) -> PathBuf {
    let path = work.join(format!("{name}.yaml"));
    write(
        &path,
        &format!("engine:\n  replica: {name}\n  concurrency: 2\n{extra}"),
    );
    path
}

fn replicas(nats: &str, pb: &Path, work: &Path, extra: &str) -> Vec<Engine> {
    let engines: Vec<Engine> = ["r1", "r2", "r3"]
        .iter()
        .map(|name| {
            let cfg = replica_config(work, name, extra);
            Engine::spawn(nats, pb, Some(&cfg), work)
        })
        .collect();
    for e in &engines {
        e.wait_ready(Duration::from_secs(30));
    }
    engines
}

fn is_paused(scene: &Scene, c: &Container) -> bool {
    state_of(&scene.inspect(&c.id)).1
}

fn wait_until(what: &str, within: Duration, done: impl Fn() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn runs_of<'a>(records: &'a [AuditRecord], playbook: &str) -> Vec<&'a AuditRecord> {
    records
        .iter()
        .filter(|r| r.record == RecordKind::Run && r.playbook.as_deref() == Some(playbook))
        .collect()
}

fn control(args: &[&str]) -> String {
    let out = cli(args);
    assert!(
        out.status.success(),
        "riposte {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn metric(engine: &Engine, name: &str) -> Option<f64> {
    let (_, body) = http_get(&engine.metrics, "/metrics")?;
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

async fn publish_events(nats: &NatsServer, prefix: &str, rule: &str, containers: &[Container]) {
    let client = nats.client().await;
    let payloads: Vec<Vec<u8>> = containers
        .iter()
        .enumerate()
        .map(|(i, c)| {
            falco_alert(
                &format!("{prefix}-{i}"),
                rule,
                "Critical",
                c.short_id(),
                "shop",
            )
        })
        .collect();
    publish(&client, "falco.x", &payloads).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pause_stops_every_replica_within_a_second_and_resume_restores_enforcement() {
    let mut scene = Scene::new("killswitch");
    let brief = scene.container("brief", &[]);
    let held: Vec<Container> = (0..30)
        .map(|i| scene.container(&format!("held-{i}"), &[]))
        .collect();
    let after: Vec<Container> = (0..6)
        .map(|i| scene.container(&format!("after-{i}"), &[]))
        .collect();
    let restarted = scene.container("restarted", &[]);
    let nats = NatsServer::start();
    let work = tempfile::tempdir().unwrap();
    let pb = work.path().join("pb");
    write(
        &pb.join("pause.yaml"),
        &playbook("pause-it", "rule-pause", None),
    );
    write(
        &pb.join("brief.yaml"),
        &playbook("pause-briefly", "rule-brief", Some("5s")),
    );
    let mut engines = replicas(&nats.url, &pb, work.path(), "");
    for e in &engines {
        assert_eq!(metric(e, "riposte_enforcement_paused"), Some(0.0));
    }
    let status = control(&["pause", "--status", "--nats", &nats.url]);
    assert!(status.contains("enforcement: on"), "{status}");

    // A revert scheduled before the pause falls due during it.
    publish_events(&nats, "brief", "rule-brief", std::slice::from_ref(&brief)).await;
    wait_until(
        "the brief container is paused",
        Duration::from_secs(20),
        || is_paused(&scene, &brief),
    );

    let paused_at = Instant::now();
    let out = control(&[
        "pause", "--as", "alice", "--reason", "drill", "--nats", &nats.url,
    ]);
    assert!(
        out.contains("paused by alice") && out.contains("drill"),
        "{out}"
    );
    wait_until(
        "every replica reports enforcement paused",
        Duration::from_secs(5),
        || {
            engines
                .iter()
                .all(|e| metric(e, "riposte_enforcement_paused") == Some(1.0))
        },
    );
    println!(
        "every replica paused {} ms after `riposte pause` returned",
        paused_at.elapsed().as_millis()
    );
    // Within a second: the watch has delivered it (the gauges say so); leave that second.
    std::thread::sleep(Duration::from_millis(1000));

    publish_events(&nats, "held", "rule-pause", &held).await;
    let records = wait_for(&nats.url, Duration::from_secs(60), "30 planned runs", |r| {
        runs_of(r, "pause-it").len() >= 30
    });
    let runs = runs_of(&records, "pause-it");
    assert_eq!(runs.len(), 30);
    for run in &runs {
        assert_eq!(run.outcome, "planned", "{run:#?}");
        assert!(run.dry_run);
        assert_eq!(
            run.reason.as_deref(),
            Some("enforcement paused by alice: drill"),
            "{run:#?}"
        );
        let id = run.run_id.as_deref();
        let step = records
            .iter()
            .find(|r| r.record == RecordKind::Step && r.run_id.as_deref() == id)
            .unwrap();
        assert_eq!(step.outcome, "planned", "{step:#?}");
        assert_eq!(
            step.reason.as_deref(),
            Some("enforcement paused by alice: drill")
        );
        assert!(
            step.output.as_ref().unwrap()["plan"].is_string(),
            "{step:#?}"
        );
        // The notification went out, and says the run was only planned.
        let notice = records
            .iter()
            .find(|r| r.record == RecordKind::Notify && r.run_id.as_deref() == id)
            .unwrap();
        assert_eq!(notice.outcome, "ok", "{notice:#?}");
        let message = notice.args.as_ref().unwrap()["message"].as_str().unwrap();
        assert!(message.contains("planned"), "{message}");
    }
    let by: BTreeSet<&str> = runs.iter().map(|r| r.replica.as_str()).collect();
    assert_eq!(
        by,
        BTreeSet::from(["r1", "r2", "r3"]),
        "runs were planned by every replica"
    );
    for c in &held {
        assert!(!is_paused(&scene, c), "{} was paused while paused", c.name);
    }
    let pause_record = records
        .iter()
        .find(|r| r.record == RecordKind::Control)
        .unwrap();
    assert_eq!(pause_record.outcome, "paused");
    assert_eq!(pause_record.reason.as_deref(), Some("drill"));
    assert_eq!(pause_record.output.as_ref().unwrap()["by"], "alice");

    // A replica restarted while paused stays paused.
    engines[2].stop();
    engines[2] = Engine::start(
        &nats.url,
        &pb,
        Some(&work.path().join("r3.yaml")),
        work.path(),
    );
    assert_eq!(metric(&engines[2], "riposte_enforcement_paused"), Some(1.0));
    for e in &engines {
        assert!(metric(e, "riposte_runs_planned_paused_total").is_some());
    }
    let planned: f64 = engines
        .iter()
        .take(2)
        .filter_map(|e| metric(e, "riposte_runs_planned_paused_total"))
        .sum();
    assert!(planned >= 1.0, "{planned}");
    publish_events(
        &nats,
        "restarted",
        "rule-pause",
        std::slice::from_ref(&restarted),
    )
    .await;
    let records = wait_for(&nats.url, Duration::from_secs(30), "31 planned runs", |r| {
        runs_of(r, "pause-it").len() >= 31
    });
    assert!(runs_of(&records, "pause-it")
        .iter()
        .all(|r| r.outcome == "planned"));
    assert!(!is_paused(&scene, &restarted));

    // The revert of `brief` fell due (5 s) during the pause and is held.
    assert!(is_paused(&scene, &brief), "a revert ran while paused");
    assert!(!records.iter().any(|r| r.record == RecordKind::Revert));

    let out = control(&[
        "resume",
        "--as",
        "bob",
        "--reason",
        "drill over",
        "--nats",
        &nats.url,
    ]);
    assert!(out.contains("resumed by bob"), "{out}");
    let resumed_at = Instant::now();
    wait_until(
        "every replica enforces again",
        Duration::from_secs(5),
        || {
            engines
                .iter()
                .all(|e| metric(e, "riposte_enforcement_paused") == Some(0.0))
        },
    );
    println!(
        "every replica enforcing {} ms after `riposte resume` returned",
        resumed_at.elapsed().as_millis()
    );
    // The held revert is carried out now.
    wait_until(
        "the held revert unpauses brief",
        Duration::from_secs(10),
        || !is_paused(&scene, &brief),
    );
    std::thread::sleep(Duration::from_millis(1000));
    publish_events(&nats, "after", "rule-pause", &after).await;
    wait_until(
        "new events pause their containers",
        Duration::from_secs(30),
        || after.iter().all(|c| is_paused(&scene, c)),
    );
    let records = wait_for(
        &nats.url,
        Duration::from_secs(30),
        "the resumed runs",
        |r| {
            runs_of(r, "pause-it")
                .iter()
                .filter(|x| x.outcome == "ok")
                .count()
                >= 6
                && r.iter().any(|x| x.record == RecordKind::Revert)
        },
    );
    let revert = records
        .iter()
        .find(|r| r.record == RecordKind::Revert)
        .unwrap();
    assert_eq!(revert.outcome, "ok", "{revert:#?}");
    let resumed = records
        .iter()
        .find(|r| r.record == RecordKind::Control && r.outcome == "resumed")
        .unwrap();
    assert!(revert.time > resumed.time, "{revert:#?} {resumed:#?}");
    assert!(held.iter().all(|c| !is_paused(&scene, c)));
    for e in &mut engines {
        e.stop();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_global_limit_on_destructive_actions_is_shared_by_the_replicas() {
    let mut scene = Scene::new("globallimit");
    let targets: Vec<Container> = (0..20)
        .map(|i| scene.container(&format!("t-{i}"), &[]))
        .collect();
    let nats = NatsServer::start();
    let work = tempfile::tempdir().unwrap();
    let pb = work.path().join("pb");
    write(
        &pb.join("pause.yaml"),
        &playbook("pause-it", "rule-pause", None),
    );
    let mut engines = replicas(
        &nats.url,
        &pb,
        work.path(),
        "limits:\n  max_destructive_actions: 5\n  per: 10m\n",
    );
    publish_events(&nats, "limit", "rule-pause", &targets).await;
    let records = wait_for(&nats.url, Duration::from_secs(60), "20 runs", |r| {
        runs_of(r, "pause-it").len() >= 20
    });
    let paused = targets.iter().filter(|c| is_paused(&scene, c)).count();
    assert_eq!(paused, 5, "containers paused across the replicas");
    let steps: Vec<&AuditRecord> = records
        .iter()
        .filter(|r| r.record == RecordKind::Step && r.step.as_deref() == Some("freeze"))
        .collect();
    assert_eq!(steps.iter().filter(|s| s.outcome == "ok").count(), 5);
    let limited: Vec<&AuditRecord> = records
        .iter()
        .filter(|r| r.record == RecordKind::Limit && r.outcome == "limited")
        .collect();
    assert_eq!(limited.len(), 15, "{limited:#?}");
    assert!(limited.iter().all(|r| r
        .reason
        .as_deref()
        .unwrap()
        .starts_with("global limit reached: 5")));
    let by: BTreeSet<&str> = runs_of(&records, "pause-it")
        .iter()
        .map(|r| r.replica.as_str())
        .collect();
    assert!(by.len() >= 2, "the events spread over the replicas: {by:?}");
    for e in &mut engines {
        e.stop();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_that_cannot_read_the_switch_does_not_start() {
    let nats = NatsServer::start();
    let work = tempfile::tempdir().unwrap();
    let pb = work.path().join("pb");
    write(
        &pb.join("pause.yaml"),
        &playbook("pause-it", "rule-pause", None),
    );
    let js = async_nats::jetstream::new(nats.client().await);
    let kv = js
        .create_key_value(async_nats::jetstream::kv::Config {
            bucket: "riposte-control".to_owned(),
            ..Default::default()
        })
        .await
        .unwrap();
    kv.put("enforcement", "not json".into()).await.unwrap();
    let mut engine = Engine::spawn(&nats.url, &pb, None, work.path());
    let code = engine.wait_exit(Duration::from_secs(30));
    assert!(
        code.is_some_and(|c| c != 0),
        "the engine went on: {code:?}\n{}",
        engine.log_text()
    );
    let log = engine.log_text();
    assert!(log.contains("cannot read the kill switch"), "{log}");
    assert!(
        !log.contains("consuming"),
        "it consumed before failing: {log}"
    );
}
