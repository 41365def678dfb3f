//! Crash tests on a three-node NATS cluster with three engine replicas: replicas killed with
//! SIGKILL and a NATS node stopped while events flow lose no event and repeat no side effect;
//! a pending approval and a scheduled revert survive stopping everything.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;
use riposte::audit::RecordKind;
use riposte_tests::cluster::NatsCluster;
use riposte_tests::docker::{state_of, Scene};
use riposte_tests::*;
use serde_json::Value;

const EVENTS: usize = 10_000;
const PLAYBOOKS: [&str; 2] = ["derive-a", "derive-b"];
/// A `nats` instance whose publishes wait until a stream has stored the message.
const DERIVED: &str = "connectors:\n  derived: { type: nats, jetstream: true }\n";

/// A playbook that publishes one derived message per event on `derived.<name>`, with the
/// event's id in it, through [`DERIVED`].
fn derive(name: &str) -> String {
    format!(
        r#"apiVersion: riposte/v1
kind: Playbook
metadata:
  name: {name}
spec:
  match:
    sources: [falco]
    when: event.title == "Crash test"
  steps:
    - id: derive
      action: derived.publish
      with:
        subject: derived.{name}
        payload: {{ event: "${{{{ event.id }}}}" }}
      retry: {{ attempts: 5, backoff: 200ms }}
"#
    )
}

/// The config of replica `name`: three copies of every stream and bucket, and what a killed
/// replica held redelivered after 10 s.
fn replica_config(work: &Path, name: &str, extra: &str) -> PathBuf {
    let path = work.join(format!("{name}.yaml"));
    write(
        &path,
        &format!("nats:\n  replicas: 3\nengine:\n  replica: {name}\n  ack_wait: 10s\n{extra}"),
    );
    path
}

/// A number from the clock, for the random moments.
fn random_below(n: u64) -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(Instant::now()) % n.max(1)
}

/// Every message of `stream` (filtered by `subject`), read with an ordered consumer.
async fn read_all(js: &jetstream::Context, name: &str, subject: &str) -> Vec<Vec<u8>> {
    let s = js.get_stream(name).await.unwrap();
    let consumer = s
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: subject.to_owned(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut out = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(3), messages.next()).await {
            Ok(Some(Ok(m))) => {
                let pending = m.info().map(|i| i.pending).unwrap_or(0);
                out.push(m.payload.to_vec());
                if pending == 0 {
                    break;
                }
            }
            Ok(Some(Err(e))) => panic!("reading `{name}`: {e}"),
            Ok(None) | Err(_) => break,
        }
    }
    out
}

/// Waits until the shared consumer has nothing pending or unacknowledged.
async fn wait_drained(js: &jetstream::Context, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let done = async {
            let s = js.get_stream("RIPOSTE_EVENTS").await.ok()?;
            let mut c: consumer::PullConsumer = s.get_consumer("riposte").await.ok()?;
            let info = c.info().await.ok()?;
            Some(
                info.num_pending == 0
                    && info.num_ack_pending == 0
                    && info.delivered.stream_sequence >= EVENTS as u64,
            )
        }
        .await;
        if done == Some(true) {
            return started.elapsed();
        }
        if let Ok(s) = js.get_stream("RIPOSTE_EVENTS").await {
            if let Ok(mut c) = s.get_consumer::<consumer::pull::Config>("riposte").await {
                if let Ok(i) = c.info().await {
                    eprintln!(
                        "{:?}: pending {} unacknowledged {} delivered {}",
                        started.elapsed(),
                        i.num_pending,
                        i.num_ack_pending,
                        i.delivered.stream_sequence
                    );
                }
            }
        }
        assert!(
            started.elapsed() < within,
            "the events were not all acknowledged within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_killed_and_a_nats_node_stopped_lose_nothing_and_repeat_nothing() {
    let mut cluster = NatsCluster::start();
    let work = tempfile::tempdir().unwrap();
    let pb = work.path().join("pb");
    for name in PLAYBOOKS {
        write(&pb.join(format!("{name}.yaml")), &derive(name));
    }
    let names = ["r1", "r2", "r3"];
    let configs: Vec<PathBuf> = names
        .iter()
        .map(|n| replica_config(work.path(), n, DERIVED))
        .collect();
    let mut engines: Vec<Engine> = configs
        .iter()
        .map(|c| Engine::spawn(&cluster.url, &pb, Some(c), work.path()))
        .collect();
    for e in &engines {
        e.wait_ready(Duration::from_secs(60));
    }
    let nc = cluster.client().await;
    let js = jetstream::new(nc.clone());
    // The derived messages are captured, with a duplicate window that covers the test.
    js.create_stream(stream::Config {
        name: "DERIVED".to_owned(),
        subjects: vec!["derived.>".to_owned()],
        num_replicas: 3,
        duplicate_window: Duration::from_secs(600),
        ..Default::default()
    })
    .await
    .unwrap();
    // Streams and buckets are kept three times.
    for name in [
        "RIPOSTE_EVENTS",
        "RIPOSTE_AUDIT",
        "RIPOSTE_DEADLETTER",
        "KV_riposte-steps",
        "KV_riposte-dedup",
        "KV_riposte-reverts",
        "KV_riposte-approvals",
    ] {
        let mut s = js.get_stream(name).await.unwrap();
        assert_eq!(s.info().await.unwrap().config.num_replicas, 3, "{name}");
    }

    // The events, each stored once even when its publish is tried again.
    let publisher = {
        let js = js.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let mut waiting = Vec::new();
            for i in 0..EVENTS {
                let uuid = format!("crash-{i:05}");
                let payload = falco_alert(&uuid, "Crash test", "Warning", "c0ffee", "shop");
                match send(&js, &uuid, &payload).await {
                    Some(ack) => waiting.push((uuid, payload, ack)),
                    None => confirm(&js, &uuid, &payload, None).await,
                }
                if waiting.len() >= 256 {
                    for (uuid, payload, ack) in waiting.drain(..) {
                        confirm(&js, &uuid, &payload, Some(ack)).await;
                    }
                }
            }
            for (uuid, payload, ack) in waiting.drain(..) {
                confirm(&js, &uuid, &payload, Some(ack)).await;
            }
            started.elapsed()
        })
    };

    // Chaos while they flow: a replica killed, a node stopped and started again, another
    // replica killed; each replica started again after its kill.
    let started = Instant::now();
    let chaos = Instant::now();
    tokio::time::sleep(Duration::from_millis(1000 + random_below(2000))).await;
    let first = random_below(3) as usize;
    engines[first].kill_hard();
    eprintln!("killed {} at {:?}", names[first], chaos.elapsed());
    tokio::time::sleep(Duration::from_millis(500)).await;
    engines[first] = Engine::spawn(&cluster.url, &pb, Some(&configs[first]), work.path());
    let node = random_below(3) as usize;
    cluster.stop(node);
    eprintln!("stopped NATS node {} at {:?}", node + 1, chaos.elapsed());
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.restart(node);
    let rejoined = cluster.wait_leader(Duration::from_secs(60));
    eprintln!(
        "NATS node {} back, leader agreed after {rejoined:?}",
        node + 1
    );
    tokio::time::sleep(Duration::from_millis(random_below(2000))).await;
    let second = (first + 1 + random_below(2) as usize) % 3;
    engines[second].kill_hard();
    eprintln!("killed {} at {:?}", names[second], chaos.elapsed());
    tokio::time::sleep(Duration::from_millis(500)).await;
    engines[second] = Engine::spawn(&cluster.url, &pb, Some(&configs[second]), work.path());

    let published_in = publisher.await.unwrap();
    eprintln!("{EVENTS} events published in {published_in:?}");
    for e in &engines {
        e.wait_ready(Duration::from_secs(60));
    }
    let drained = wait_drained(&js, Duration::from_secs(150)).await;
    let total = started.elapsed();
    eprintln!(
        "all acknowledged {total:?} after the start ({drained:?} after the last publish); \
         {:.0} events/s overall",
        EVENTS as f64 / total.as_secs_f64()
    );

    // Nothing lost, nothing repeated: one derived message per event and playbook.
    for name in PLAYBOOKS {
        let payloads = read_all(&js, "DERIVED", &format!("derived.{name}")).await;
        let mut per_event: HashMap<String, usize> = HashMap::new();
        for p in &payloads {
            let v: Value = serde_json::from_slice(p).unwrap();
            *per_event
                .entry(v["event"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
        let repeated: Vec<_> = per_event.iter().filter(|(_, n)| **n > 1).take(5).collect();
        assert!(
            repeated.is_empty(),
            "{name}: derived messages repeated: {repeated:?}"
        );
        assert_eq!(per_event.len(), EVENTS, "{name}: derived messages lost");
    }

    // One recorded run per event and playbook.
    let messages = read_all(&js, "RIPOSTE_AUDIT", "riposte.audit.>").await;
    let mut per: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    let records = messages
        .iter()
        .flat_map(|m| riposte::audit::parse_message(m));
    for r in records.filter(|r| r.record == RecordKind::Run) {
        assert_eq!(r.outcome, "ok", "{r:?}");
        per.entry((r.event_id.clone().unwrap(), r.playbook.clone().unwrap()))
            .or_default()
            .push(r.run_id.clone().unwrap());
    }
    assert_eq!(per.len(), EVENTS * PLAYBOOKS.len(), "runs missing");
    let twice: Vec<_> = per
        .iter()
        .filter(|(_, ids)| ids.len() != 1)
        .take(5)
        .collect();
    assert!(
        twice.is_empty(),
        "events with more than one run record: {twice:?}"
    );
    for e in &mut engines {
        e.stop();
    }
}

/// Publishes an event with its id as `Nats-Msg-Id`, giving up after a few seconds.
async fn send(
    js: &jetstream::Context,
    uuid: &str,
    payload: &[u8],
) -> Option<jetstream::context::PublishAckFuture> {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", uuid);
    let publish =
        js.publish_with_headers("falco.warning.crash_test", headers, payload.to_vec().into());
    tokio::time::timeout(Duration::from_secs(5), publish)
        .await
        .ok()?
        .ok()
}

/// Waits for the acknowledgement of a published event, publishing it again (same id, so it is
/// stored once) until one comes.
async fn confirm(
    js: &jetstream::Context,
    uuid: &str,
    payload: &[u8],
    mut ack: Option<jetstream::context::PublishAckFuture>,
) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(a) = ack.take() {
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(5), a).await {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "event {uuid} could not be published"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        ack = send(js, uuid, payload).await;
    }
}

/// A playbook for falco rule `rule` with `steps`.
fn playbook(name: &str, rule: &str, steps: &str) -> String {
    riposte_tests::falco_playbook(name, rule, None, steps)
}

/// The run of `playbook` in `records`, once its step `step` has `outcome`.
fn step_with(
    records: &[riposte::audit::AuditRecord],
    playbook: &str,
    step: &str,
    outcome: &str,
) -> Option<String> {
    records
        .iter()
        .find(|r| {
            r.record == RecordKind::Step
                && r.playbook.as_deref() == Some(playbook)
                && r.step.as_deref() == Some(step)
                && r.outcome == outcome
        })
        .and_then(|r| r.run_id.clone())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pending_approval_and_a_scheduled_revert_survive_restarting_everything() {
    let mut scene = Scene::new("crash-restart");
    let frozen = scene.container("frozen", &[]);
    let mut cluster = NatsCluster::start();
    let work = tempfile::tempdir().unwrap();
    let pb = work.path().join("pb");
    write(
        &pb.join("contain.yaml"),
        &playbook(
            "contain-after-approval",
            "Shell",
            r#"    - id: contain
      action: nats.publish
      with:
        subject: derived.contain
        payload: { event: "${{ event.id }}" }
      approval: { timeout: 10m, on_timeout: deny, approvers: [alice] }
"#,
        ),
    );
    write(
        &pb.join("freeze.yaml"),
        &playbook(
            "freeze-for-a-while",
            "Miner",
            r#"    - id: freeze
      action: docker.pause
      with: { container: "${{ event.resource.container.id }}" }
      revert_after: 30s
"#,
        ),
    );
    let names = ["r1", "r2", "r3"];
    let configs: Vec<PathBuf> = names
        .iter()
        .map(|n| replica_config(work.path(), n, ""))
        .collect();
    let url = cluster.url.clone();
    let start_all = |configs: &[PathBuf]| -> Vec<Engine> {
        let engines: Vec<Engine> = configs
            .iter()
            .map(|c| Engine::spawn(&url, &pb, Some(c), work.path()))
            .collect();
        for e in &engines {
            e.wait_ready(Duration::from_secs(90));
        }
        engines
    };
    let mut engines = start_all(&configs);
    let nc = cluster.client().await;
    let js = jetstream::new(nc.clone());
    js.create_stream(stream::Config {
        name: "DERIVED".to_owned(),
        subjects: vec!["derived.>".to_owned()],
        num_replicas: 3,
        ..Default::default()
    })
    .await
    .unwrap();
    let paused_at = Instant::now();
    publish(
        &nc,
        "falco.critical.shell",
        &[
            falco_alert("ask-1", "Shell", "Critical", "c0ffee", "shop"),
            falco_alert("freeze-1", "Miner", "Critical", &frozen.id, "shop"),
        ],
    )
    .await;
    let records = wait_for(&cluster.url, Duration::from_secs(30), "both runs", |r| {
        step_with(r, "contain-after-approval", "contain", "awaiting_approval").is_some()
            && step_with(r, "freeze-for-a-while", "freeze", "ok").is_some()
    });
    let asked = step_with(
        &records,
        "contain-after-approval",
        "contain",
        "awaiting_approval",
    )
    .unwrap();
    let froze = step_with(&records, "freeze-for-a-while", "freeze", "ok").unwrap();
    assert!(
        state_of(&scene.inspect(&frozen.id)).1,
        "the container is paused"
    );

    // Everything stops: the replicas, then every NATS node; then everything starts again.
    for e in &mut engines {
        e.kill_hard();
    }
    drop(nc);
    cluster.stop_all();
    let restarted = Instant::now();
    cluster.restart_all();
    let leader = cluster.wait_leader(Duration::from_secs(60));
    let mut engines = start_all(&configs);
    eprintln!(
        "cluster leader after {leader:?}, replicas ready {:?} after the restart",
        restarted.elapsed()
    );
    if paused_at.elapsed() < Duration::from_secs(28) {
        assert!(
            state_of(&scene.inspect(&frozen.id)).1,
            "the container is still paused before its revert is due"
        );
    }

    // The approval is still pending and is answered; the approved step runs.
    let approved = cli(&[
        "approve",
        &asked,
        "contain",
        "--as",
        "alice",
        "--reason",
        "after the restart",
        "--nats",
        &cluster.url,
    ]);
    assert_eq!(
        approved.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&approved.stdout),
        String::from_utf8_lossy(&approved.stderr)
    );
    wait_for(
        &cluster.url,
        Duration::from_secs(60),
        "the approved step",
        |r| {
            r.iter().any(|x| {
                x.record == RecordKind::Step
                    && x.run_id.as_deref() == Some(asked.as_str())
                    && x.step.as_deref() == Some("contain")
                    && x.outcome == "ok"
            })
        },
    );
    let nc = cluster.client().await;
    let js = jetstream::new(nc.clone());
    let derived = read_all(&js, "DERIVED", "derived.contain").await;
    assert_eq!(derived.len(), 1, "the approved step published once");

    // The revert is carried out on time by one of the new replicas.
    let records = wait_for(&cluster.url, Duration::from_secs(90), "the revert", |r| {
        r.iter()
            .any(|x| x.record == RecordKind::Revert && x.run_id.as_deref() == Some(froze.as_str()))
    });
    let rev = records
        .iter()
        .find(|x| x.record == RecordKind::Revert && x.run_id.as_deref() == Some(froze.as_str()))
        .unwrap();
    assert_eq!(rev.outcome, "ok", "{rev:?}");
    assert!(
        !state_of(&scene.inspect(&frozen.id)).1,
        "the container is unpaused"
    );
    assert!(
        paused_at.elapsed() >= Duration::from_secs(30),
        "not before it was due"
    );
    for e in &mut engines {
        e.stop();
    }
}
