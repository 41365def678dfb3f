//! `riposte bench containment`: the time from a Falco alert published on NATS to its container
//! being paused or quarantined by the real Docker daemon, through the whole engine.
//!
//! Makes 2×N containers from a local image, starts a nats-server and the engine (in this
//! process) with one playbook that pauses (or quarantines) the container an alert names, then:
//! 1. one alert at a time, each waiting for its container to be contained (N samples);
//! 2. N alerts published at once, one per remaining container.
//!
//! Containment is observed on the daemon's own event stream (`pause`, or the `disconnect` from
//! the container's last original network), so measuring adds no load on the daemon. Every
//! container and the quarantine network are removed afterwards. A benchmark: it reports figures
//! and asserts nothing.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{
    CreateContainerOptions, EventsOptions, RemoveContainerOptions, StartContainerOptions,
};
use bollard::{Docker, API_DEFAULT_VERSION};
use clap::Args;
use futures::StreamExt;

use crate::config::{Config, ConnectorInstance};
use crate::embedded::EmbeddedNats;

use super::percentile;

/// Arguments of `bench containment`.
#[derive(Debug, Args)]
pub struct ContainmentArgs {
    /// Containers per phase (the run makes twice as many).
    #[arg(long, default_value_t = 50)]
    pub containers: usize,
    /// `pause` or `quarantine`.
    #[arg(long, default_value = "pause", value_parser = ["pause", "quarantine"])]
    pub action: String,
    /// The image the containers run (it must have `/bin/sleep`; nothing is pulled).
    #[arg(long, default_value = "riposte-test/busybox:latest")]
    pub image: String,
    /// The Docker daemon's socket.
    #[arg(long, default_value = "/var/run/docker.sock")]
    pub socket: String,
    /// Print the figures as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// The figures of one run, milliseconds.
#[derive(Debug, serde::Serialize)]
pub struct Figures {
    /// The action.
    pub action: String,
    /// Samples per phase.
    pub containers: usize,
    /// One at a time: p50.
    pub serial_p50_ms: f64,
    /// One at a time: p99.
    pub serial_p99_ms: f64,
    /// One at a time: largest.
    pub serial_max_ms: f64,
    /// All at once: p50 of each container's time from the burst's publication.
    pub burst_p50_ms: f64,
    /// All at once: p99.
    pub burst_p99_ms: f64,
    /// All at once: until the last container was contained.
    pub burst_all_ms: f64,
    /// Containers not contained within the time limit (both phases).
    pub missed: usize,
}

type Seen = Arc<Mutex<HashMap<String, Instant>>>;

/// Runs the benchmark and prints its figures.
pub async fn run(a: ContainmentArgs) -> Result<i32> {
    if a.containers == 0 {
        bail!("--containers must be at least 1");
    }
    let docker = Docker::connect_with_unix(&a.socket, 120, API_DEFAULT_VERSION)
        .with_context(|| format!("no Docker daemon at {}", a.socket))?
        .negotiate_version()
        .await
        .with_context(|| format!("the Docker daemon at {} does not answer", a.socket))?;
    docker.inspect_image(&a.image).await.with_context(|| {
        format!(
            "image `{}` is not on this daemon (nothing is pulled)",
            a.image
        )
    })?;
    let work =
        std::env::temp_dir().join(format!("riposte-bench-containment-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let tag = format!("rbench-{}", std::process::id());
    let mut names = Vec::new();
    let made = make_containers(&docker, &a.image, &tag, 2 * a.containers, &mut names).await;
    let result = match made {
        Ok(ids) => measure(&a, &docker, &work, &tag, &ids).await,
        Err(e) => Err(e),
    };
    for name in &names {
        let opts = RemoveContainerOptions {
            force: true,
            v: true,
            link: false,
        };
        if let Err(e) = docker.remove_container(name, Some(opts)).await {
            tracing::warn!(container = %name, error = %e, "could not remove a bench container");
        }
    }
    let _ = docker.remove_network(&format!("{tag}-quarantine")).await;
    let _ = std::fs::remove_dir_all(&work);
    let f = result?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&f)?);
    } else {
        println!(
            "riposte bench containment: docker.{}, {} containers per phase, publish on NATS to contained",
            f.action, f.containers
        );
        println!("| measure | value |");
        println!("|---|---|");
        println!("| one at a time, p50 | {:.1} ms |", f.serial_p50_ms);
        println!("| one at a time, p99 | {:.1} ms |", f.serial_p99_ms);
        println!("| one at a time, max | {:.1} ms |", f.serial_max_ms);
        println!(
            "| {} at once, p50 | {:.1} ms |",
            f.containers, f.burst_p50_ms
        );
        println!(
            "| {} at once, p99 | {:.1} ms |",
            f.containers, f.burst_p99_ms
        );
        println!(
            "| {} at once, all contained | {:.1} ms |",
            f.containers, f.burst_all_ms
        );
        println!("| not contained in time | {} |", f.missed);
    }
    Ok(0)
}

async fn make_containers(
    docker: &Docker,
    image: &str,
    tag: &str,
    n: usize,
    names: &mut Vec<String>,
) -> Result<Vec<String>> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let name = format!("{tag}-{i}");
        names.push(name.clone());
        let body = ContainerCreateBody {
            image: Some(image.to_owned()),
            cmd: Some(vec!["/bin/sleep".into(), "3600".into()]),
            ..Default::default()
        };
        let opts = CreateContainerOptions {
            name: Some(name.clone()),
            ..Default::default()
        };
        let created = docker.create_container(Some(opts), body).await?;
        docker
            .start_container(&created.id, None::<StartContainerOptions>)
            .await?;
        ids.push(created.id);
    }
    Ok(ids)
}

fn alert(i: usize, id: &str) -> Vec<u8> {
    serde_json::json!({
        "uuid": format!("contain-{i}"),
        "hostname": "bench-node",
        "output": format!("Critical Bench containment (container_id={})", id.get(..12).unwrap_or(id)),
        "priority": "Critical",
        "rule": "Bench containment",
        "source": "syscall",
        "time": "2026-11-23T13:44:05.478445995Z",
        "output_fields": {
            "container.id": id.get(..12).unwrap_or(id),
            "k8s.ns.name": "shop",
            "proc.name": "sh",
        }
    })
    .to_string()
    .into_bytes()
}

async fn measure(
    a: &ContainmentArgs,
    docker: &Docker,
    work: &Path,
    tag: &str,
    ids: &[String],
) -> Result<Figures> {
    let pb_dir = work.join("playbooks");
    std::fs::create_dir_all(&pb_dir)?;
    std::fs::write(
        pb_dir.join("contain.yaml"),
        format!(
            "apiVersion: riposte/v1\nkind: Playbook\nmetadata:\n  name: bench-contain\nspec:\n  match:\n    sources: [falco]\n    when: event.title == \"Bench containment\"\n  steps:\n    - id: contain\n      action: docker.{}\n      with: {{ container: \"${{{{ event.resource.container.id }}}}\" }}\n",
            a.action
        ),
    )?;
    let server = EmbeddedNats::start(&work.join("nats"), None).await?;
    let url = server.url.clone();
    let mut config = super::engine_config(work);
    let mut settings = serde_json::Map::new();
    settings.insert("host".into(), format!("unix://{}", a.socket).into());
    settings.insert(
        "quarantine_network".into(),
        format!("{tag}-quarantine").into(),
    );
    config.connectors.insert(
        "docker".into(),
        ConnectorInstance {
            kind: "docker".into(),
            settings,
        },
    );
    let result = async {
        let client = async_nats::connect(&url).await.context("connect")?;
        let js = crate::bus::jetstream(client);
        let (engine_task, shutdown) = super::start_engine(&config, &url, &pb_dir, &js).await?;
        let seen: Seen = Arc::default();
        let watcher = tokio::spawn(watch(docker.clone(), a.action.clone(), seen.clone()));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (serial_ids, burst_ids) = ids.split_at(a.containers.min(ids.len()));
        let limit = Duration::from_secs(60);
        let mut serial = Vec::new();
        let mut missed = 0;
        for (i, id) in serial_ids.iter().enumerate() {
            let t0 = Instant::now();
            js.publish("falco.critical.bench", alert(i, id).into())
                .await?
                .await?;
            match wait_seen(&seen, id, t0 + limit).await {
                Some(t) => serial.push(ms(t.duration_since(t0))),
                None => missed += 1,
            }
        }
        let t0 = Instant::now();
        let mut acks = Vec::new();
        for (i, id) in burst_ids.iter().enumerate() {
            acks.push(
                js.publish(
                    "falco.critical.bench",
                    alert(serial_ids.len() + i, id).into(),
                )
                .await?,
            );
        }
        for ack in acks {
            ack.await?;
        }
        let mut burst = Vec::new();
        for id in burst_ids {
            match wait_seen(&seen, id, t0 + limit).await {
                Some(t) => burst.push(ms(t.duration_since(t0))),
                None => missed += 1,
            }
        }
        watcher.abort();
        shutdown.cancel();
        engine_task.await??;
        serial.sort_by(f64::total_cmp);
        burst.sort_by(f64::total_cmp);
        Ok::<Figures, anyhow::Error>(Figures {
            action: a.action.clone(),
            containers: a.containers,
            serial_p50_ms: percentile(&serial, 0.5),
            serial_p99_ms: percentile(&serial, 0.99),
            serial_max_ms: serial.last().copied().unwrap_or(f64::NAN),
            burst_p50_ms: percentile(&burst, 0.5),
            burst_p99_ms: percentile(&burst, 0.99),
            burst_all_ms: burst.last().copied().unwrap_or(f64::NAN),
            missed,
        })
    }
    .await;
    server.stop().await;
    result
}

/// Records when each container is contained, from the daemon's event stream.
async fn watch(docker: Docker, action: String, seen: Seen) {
    let mut filters = HashMap::new();
    if action == "pause" {
        filters.insert("type".to_owned(), vec!["container".to_owned()]);
        filters.insert("event".to_owned(), vec!["pause".to_owned()]);
    } else {
        filters.insert("type".to_owned(), vec!["network".to_owned()]);
        filters.insert("event".to_owned(), vec!["disconnect".to_owned()]);
    }
    let mut events = docker.events(Some(EventsOptions {
        filters: Some(filters),
        ..Default::default()
    }));
    while let Some(Ok(e)) = events.next().await {
        let actor = e.actor.unwrap_or_default();
        let id = if action == "pause" {
            actor.id
        } else {
            // Quarantined containers start on the default bridge only: leaving it is the end.
            let attrs = actor.attributes.unwrap_or_default();
            (attrs.get("name").map(String::as_str) == Some("bridge"))
                .then(|| attrs.get("container").cloned())
                .flatten()
        };
        if let (Some(id), Ok(mut s)) = (id, seen.lock()) {
            s.entry(id).or_insert_with(Instant::now);
        }
    }
}

async fn wait_seen(seen: &Seen, id: &str, deadline: Instant) -> Option<Instant> {
    loop {
        if let Some(t) = seen.lock().ok().and_then(|s| s.get(id).copied()) {
            return Some(t);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

pub(super) async fn wait_for_consumer(
    js: &async_nats::jetstream::Context,
    config: &Config,
) -> Result<()> {
    for _ in 0..300 {
        if let Ok(s) = js.get_stream(&config.engine.names.events_stream).await {
            if s.get_consumer::<async_nats::jetstream::consumer::pull::Config>(
                &config.engine.names.consumer,
            )
            .await
            .is_ok()
            {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the engine did not create its consumer within 30 s")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
