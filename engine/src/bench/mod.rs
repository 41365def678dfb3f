//! `riposte bench`: throughput and latency of the engine against a real nats-server, with the
//! raw JetStream consumer rate measured in the same run for comparison.
//!
//! Generates N playbooks (half with native-only conditions, half that need Rhai), publishes
//! Falco alerts that each match one playbook whose step is `log.info`, and measures: the rate
//! at which a plain pull consumer drains a stream of the same payloads; the engine's
//! sustained rate draining the same number of events (normalize, match, run, audit, ack);
//! their ratio; and publish-to-audit latency at a fixed offered rate. A benchmark, not a test:
//! it reports figures and asserts nothing.
//!
//! `riposte bench containment` ([`containment`]) measures the time from an alert to a real
//! container being paused or quarantined; `riposte bench ingest` ([`ingest`]) the ingest
//! gateway's throughput and latency against a plain JetStream publish loop;
//! `riposte bench images` ([`images`]) admission decisions against a large revocation list and
//! the time from a scan report to its revocation.
//!
//! `riposte bench table` ([`table`]) produces the README's whole performance table in one run:
//! these rows with 1, 100 and 1,000 playbooks, 1 and 3 replicas as `riposte run` processes,
//! latency at several offered rates, resident memory and a million-event soak.

pub mod containment;
pub mod images;
pub mod ingest;
pub mod kubernetes;
pub mod table;

use std::collections::HashMap;
use std::future::IntoFuture;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use async_nats::jetstream::{self, consumer, stream};
use clap::Args;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::audit::RecordKind;
use crate::config::Config;
use crate::embedded::EmbeddedNats;
use crate::engine;

/// Arguments of `bench`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    /// Another benchmark instead of the throughput one.
    #[command(subcommand)]
    pub other: Option<Other>,
    /// Events for the throughput runs.
    #[arg(long, default_value_t = 100_000)]
    pub events: usize,
    /// Playbooks loaded.
    #[arg(long, default_value_t = 100)]
    pub playbooks: usize,
    /// Offered rate of the latency run, events per second.
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    /// Length of the latency run, seconds.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Use this NATS server instead of starting one (it must be empty of riposte streams).
    #[arg(long)]
    pub nats: Option<String>,
    /// Print the figures as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// The other benchmarks.
#[derive(Debug, clap::Subcommand)]
pub enum Other {
    /// Time from an alert on NATS to its container being paused or quarantined by the real
    /// Docker daemon, one at a time and all at once.
    Containment(containment::ContainmentArgs),
    /// Throughput and p99 latency of the ingest gateway (1 KB Falco alerts, N keep-alive HTTP
    /// clients), against a JetStream publish loop with the same concurrency.
    Ingest(ingest::IngestArgs),
    /// Latency of the Kubernetes connector's containment against a real API server: enrich,
    /// isolate and release N pods, one at a time and all at once.
    Kubernetes(kubernetes::KubeBenchArgs),
    /// Admission decision latency with N revoked images, and the time from a scan report on
    /// NATS to its image being in the revocation list.
    Images(images::ImagesBenchArgs),
    /// The README's table in one run: raw consumer and I/O ceiling, the engine with 1, 100 and
    /// 1,000 playbooks and with 1 and N replicas (`riposte run` child processes), latency at
    /// fixed offered rates, resident memory, and a soak of a million events.
    Table(table::TableArgs),
}

/// The config the in-process engine of a latency benchmark runs with: the default bindings,
/// metrics on a free port, replica `bench`, data below `work`, no cap on destructive actions.
fn engine_config(work: &std::path::Path) -> Config {
    let mut config = Config::default_with_bindings();
    config.metrics.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    config.engine.replica = Some("bench".into());
    config.engine.data_dir = work.join("data");
    config.limits.max_destructive_actions = u32::MAX;
    config
}

/// The engine started in-process on `url` with the playbooks of `dir`, once it consumes: its
/// task and the token that stops it.
async fn start_engine(
    config: &Config,
    url: &str,
    dir: &std::path::Path,
    js: &jetstream::Context,
) -> Result<(
    tokio::task::JoinHandle<Result<(), engine::EngineError>>,
    CancellationToken,
)> {
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(engine::run(
        engine::Options {
            config: config.clone(),
            nats_url: Some(url.to_owned()),
            playbooks: dir.to_owned(),
        },
        shutdown.clone(),
    ));
    containment::wait_for_consumer(js, config).await?;
    Ok((task, shutdown))
}

/// The value at fraction `p` of sorted samples (NaN when there are none).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(idx).copied().unwrap_or(f64::NAN)
}

fn falco_payload(i: usize, rule: usize) -> Vec<u8> {
    serde_json::json!({
        "uuid": format!("bench-{i}"),
        "hostname": "bench-node",
        "output": format!("13:44:05.478445995: Warning Bench rule {rule} fired (container=web-{rule} image=registry.local/web:1.{rule})"),
        "priority": "Warning",
        "rule": format!("Bench rule {rule}"),
        "source": "syscall",
        "tags": ["container", "bench"],
        "time": "2026-11-23T13:44:05.478445995Z",
        "output_fields": {
            "container.id": format!("{:012x}", 0xabc000 + rule),
            "container.name": format!("web-{rule}"),
            "container.image.repository": "registry.local/web",
            "container.image.tag": format!("1.{rule}"),
            "evt.time": 1_763_905_445_478_445_995_i64,
            "k8s.ns.name": "shop",
            "k8s.pod.name": format!("web-{rule}-7f9c"),
            "proc.cmdline": "sh -c id",
            "proc.name": "sh",
            "user.name": "root"
        }
    })
    .to_string()
    .into_bytes()
}

fn write_playbooks(dir: &std::path::Path, n: usize) -> Result<()> {
    for k in 0..n {
        let when = if k % 2 == 0 {
            format!("event.title == \"Bench rule {k}\" && at_least(event.severity, \"medium\")")
        } else {
            format!("event.title == \"Bench rule {k}\" && glob(\"web-*\", event.resource.container.name)")
        };
        let text = format!(
            "apiVersion: riposte/v1\nkind: Playbook\nmetadata:\n  name: bench-{k}\nspec:\n  match:\n    sources: [falco]\n    when: '{when}'\n  steps:\n    - id: note\n      action: log.info\n      with:\n        message: \"bench ${{{{ event.title }}}} in ${{{{ event.resource.container.name }}}}\"\n"
        );
        std::fs::write(dir.join(format!("bench-{k}.yaml")), text)?;
    }
    Ok(())
}

async fn publish_all(js: &jetstream::Context, bodies: Vec<(String, Vec<u8>)>) -> Result<()> {
    let mut acks = futures::stream::FuturesUnordered::new();
    for (subject, body) in bodies {
        acks.push(js.publish(subject, body.into()).await?.into_future());
        if acks.len() >= 4096 {
            if let Some(r) = acks.next().await {
                r?;
            }
        }
    }
    while let Some(r) = acks.next().await {
        r?;
    }
    Ok(())
}

/// Runs the benchmark and prints its figures.
pub async fn run(a: BenchArgs) -> Result<i32> {
    match a.other {
        Some(Other::Containment(c)) => return containment::run(c).await,
        Some(Other::Ingest(i)) => return ingest::run(i).await,
        Some(Other::Kubernetes(k)) => return kubernetes::run(k).await,
        Some(Other::Images(i)) => return images::run(i).await,
        Some(Other::Table(t)) => return table::run(t).await,
        None => {}
    }
    if a.playbooks == 0 || a.events == 0 {
        bail!("--playbooks and --events must be at least 1");
    }
    let args = &a;
    let figures = on_server(a.nats.as_deref(), |work, url| async move {
        measure(args, &work, &url).await
    })
    .await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&figures)?);
    } else {
        print_table(&a, &figures);
    }
    Ok(0)
}

/// Runs `f` with a scratch directory and the URL of `nats`, or of a nats-server started for
/// it (and stopped after); the directory is removed afterwards.
async fn on_server<F, Fut, T>(nats: Option<&str>, f: F) -> Result<T>
where
    F: FnOnce(PathBuf, String) -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let work = tempfile_dir()?;
    let mut server = None;
    let url = match nats {
        Some(u) => u.to_owned(),
        None => {
            let s = EmbeddedNats::start(&work.join("nats"), None).await?;
            let u = s.url.clone();
            server = Some(s);
            u
        }
    };
    let result = f(work.clone(), url).await;
    if let Some(s) = server {
        s.stop().await;
    }
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn tempfile_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("riposte-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The figures of one run.
#[derive(Debug, serde::Serialize)]
pub struct Figures {
    /// Plain pull consumer with ack, events per second.
    pub raw_consumer_per_sec: f64,
    /// The same consumer storing one audit-sized message per event before its ack.
    pub io_ceiling_per_sec: f64,
    /// The engine, events per second.
    pub engine_per_sec: f64,
    /// engine / raw.
    pub ratio: f64,
    /// engine / I/O ceiling.
    pub ratio_to_ceiling: f64,
    /// Offered rate of the latency run.
    pub offered_per_sec: u64,
    /// Events measured in the latency run.
    pub latency_samples: usize,
    /// Publish-to-audit latency, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest.
    pub max_ms: f64,
    /// Resident memory of this process (engine included) after the runs, MiB.
    pub rss_mib: f64,
}

async fn measure(a: &BenchArgs, work: &std::path::Path, url: &str) -> Result<Figures> {
    let client = async_nats::connect(url).await.context("connect")?;
    let js = crate::bus::jetstream(client.clone());
    let rules = a.playbooks;
    let bodies = |prefix: &str, n: usize, offset: usize| -> Vec<(String, Vec<u8>)> {
        (0..n)
            .map(|i| {
                let rule = i % rules;
                (
                    format!("{prefix}.bench_rule_{rule}"),
                    falco_payload(offset + i, rule),
                )
            })
            .collect()
    };

    // 1. The raw rate: a plain durable pull consumer acking each message.
    let raw_rate = raw_consumer(&js, a.events, bodies("benchraw.warning", a.events, 0)).await?;

    // 2. The ceiling of any engine that stores one audit message per event before its ack: the
    //    same consumer, the same concurrency as the engine, one stored publish per event.
    let ceiling_rate = io_ceiling(&js, a.events, &bodies("benchceil.warning", a.events, 0)).await?;

    // 3. The engine draining the same number of events.
    let pb_dir = work.join("playbooks");
    std::fs::create_dir_all(&pb_dir)?;
    write_playbooks(&pb_dir, a.playbooks)?;
    let mut config = Config::default_with_bindings();
    config.metrics.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    config.engine.replica = Some("bench".into());
    crate::bus::ensure_streams(&js, &config).await?;
    publish_all(&js, bodies("falco.warning", a.events, 0)).await?;
    let first = js
        .get_stream(&config.engine.names.events_stream)
        .await?
        .info()
        .await?
        .state
        .last_sequence;
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let engine_task = tokio::spawn(engine::run(
        engine::Options {
            config: config.clone(),
            nats_url: Some(url.to_owned()),
            playbooks: pb_dir.clone(),
        },
        shutdown.clone(),
    ));
    wait_acked(&js, &config, first, Duration::from_secs(600)).await?;
    let engine_rate = a.events as f64 / started.elapsed().as_secs_f64();

    // 4. Latency at a fixed offered rate: publish time to the run's audit record.
    let lat = latency(&client, &js, &config, a.rate, a.seconds, rules, a.events).await?;
    shutdown.cancel();
    engine_task.await??;
    let pct = |p: f64| percentile(&lat, p);
    Ok(Figures {
        raw_consumer_per_sec: raw_rate,
        io_ceiling_per_sec: ceiling_rate,
        engine_per_sec: engine_rate,
        ratio: engine_rate / raw_rate,
        ratio_to_ceiling: engine_rate / ceiling_rate,
        offered_per_sec: a.rate,
        latency_samples: lat.len(),
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        max_ms: lat.last().copied().unwrap_or(f64::NAN),
        rss_mib: rss_mib(),
    })
}

/// Publishes `bodies` to a stream of their own, then drains them with a plain durable pull
/// consumer acknowledging each message: events per second. The stream is deleted afterwards.
async fn raw_consumer(
    js: &jetstream::Context,
    n: usize,
    bodies: Vec<(String, Vec<u8>)>,
) -> Result<f64> {
    js.create_or_update_stream(stream::Config {
        name: "BENCH_RAW".into(),
        subjects: vec!["benchraw.>".into()],
        ..Default::default()
    })
    .await?;
    publish_all(js, bodies).await?;
    let raw = js
        .get_stream("BENCH_RAW")
        .await?
        .create_consumer(consumer::pull::Config {
            durable_name: Some("raw".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            max_ack_pending: 4096,
            ..Default::default()
        })
        .await?;
    let started = Instant::now();
    let mut msgs = raw.stream().max_messages_per_batch(1000).messages().await?;
    let mut done = 0usize;
    while done < n {
        match msgs.next().await {
            Some(Ok(m)) => {
                m.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
                done += 1;
            }
            Some(Err(e)) => bail!("raw consumer: {e}"),
            None => break,
        }
    }
    let rate = done as f64 / started.elapsed().as_secs_f64();
    drop(msgs);
    js.delete_stream("BENCH_RAW").await?;
    Ok(rate)
}

/// Publishes `rate × seconds` Falco alerts at `rate` per second (ids from `bench-{offset}`,
/// rules `0..rules` in turn) to a running engine and returns, sorted, the milliseconds from
/// each publication to the run record the engine audits for it. Events without a run record
/// within a minute of the last publication are left out.
async fn latency(
    client: &async_nats::Client,
    js: &jetstream::Context,
    config: &Config,
    rate: u64,
    seconds: u64,
    rules: usize,
    offset: usize,
) -> Result<Vec<f64>> {
    let rules = rules.max(1);
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let mut sub = client
        .subscribe(format!("{}.records", config.engine.names.audit_subject))
        .await?;
    let total = usize::try_from(rate.saturating_mul(seconds)).unwrap_or(usize::MAX);
    let seen = sent.clone();
    let limit = Duration::from_secs(seconds.saturating_add(60));
    let collector = tokio::spawn(async move {
        let mut lat = Vec::with_capacity(total);
        let deadline = tokio::time::sleep(limit);
        tokio::pin!(deadline);
        while lat.len() < total {
            tokio::select! {
                _ = &mut deadline => break,
                m = sub.next() => {
                    let Some(m) = m else { break };
                    for r in crate::audit::parse_message(&m.payload) {
                        if r.record != RecordKind::Run {
                            continue;
                        }
                        let Some(id) = r.event_id else { continue };
                        let t = seen.lock().ok().and_then(|mut s| s.remove(&id));
                        if let Some(t) = t {
                            lat.push(t.elapsed().as_secs_f64() * 1000.0);
                        }
                    }
                }
            }
        }
        lat
    });
    let interval = Duration::from_nanos(1_000_000_000 / rate.max(1));
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut pending = futures::stream::FuturesUnordered::new();
    for i in 0..total {
        tick.tick().await;
        let rule = i % rules;
        if let Ok(mut s) = sent.lock() {
            s.insert(format!("bench-{}", offset + i), Instant::now());
        }
        pending.push(
            js.publish(
                format!("falco.warning.bench_rule_{rule}"),
                falco_payload(offset + i, rule).into(),
            )
            .await?
            .into_future(),
        );
        while pending.len() > 256 {
            if let Some(r) = pending.next().await {
                r?;
            }
        }
    }
    while let Some(r) = pending.next().await {
        r?;
    }
    let mut lat = collector.await?;
    lat.sort_by(f64::total_cmp);
    Ok(lat)
}

/// Drains `n` events with 256 in flight, each storing a 1.2 KB message with a message id and
/// waiting for it before acknowledging: the engine's I/O without the engine.
async fn io_ceiling(
    js: &jetstream::Context,
    n: usize,
    bodies: &[(String, Vec<u8>)],
) -> Result<f64> {
    js.create_or_update_stream(stream::Config {
        name: "BENCH_CEIL_IN".into(),
        subjects: vec!["benchceil.>".into()],
        ..Default::default()
    })
    .await?;
    js.create_or_update_stream(stream::Config {
        name: "BENCH_CEIL_OUT".into(),
        subjects: vec!["benchaudit.>".into()],
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await?;
    publish_all(js, bodies.to_vec()).await?;
    let consumer = js
        .get_stream("BENCH_CEIL_IN")
        .await?
        .create_consumer(consumer::pull::Config {
            durable_name: Some("ceiling".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            max_ack_pending: 1024,
            ..Default::default()
        })
        .await?;
    let audit = Arc::new(vec![b'x'; 1200]);
    let permits = Arc::new(tokio::sync::Semaphore::new(256));
    let started = Instant::now();
    let mut msgs = consumer
        .stream()
        .max_messages_per_batch(256)
        .messages()
        .await?;
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let permit = permits.clone().acquire_owned().await?;
        let Some(Ok(m)) = msgs.next().await else {
            bail!("the ceiling consumer stopped early");
        };
        let js = js.clone();
        let audit = audit.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let seq = m.info().map(|i| i.stream_sequence).unwrap_or(0);
            let publish = jetstream::message::PublishMessage::build()
                .payload(audit.as_ref().clone().into())
                .message_id(format!("ceil:{seq}"));
            let stored = match js.send_publish("benchaudit.records", publish).await {
                Ok(ack) => ack.await.is_ok(),
                Err(_) => false,
            };
            stored && m.ack().await.is_ok()
        }));
    }
    let mut ok = 0usize;
    for t in tasks {
        if t.await.unwrap_or(false) {
            ok += 1;
        }
    }
    let rate = ok as f64 / started.elapsed().as_secs_f64();
    drop(msgs);
    js.delete_stream("BENCH_CEIL_IN").await?;
    js.delete_stream("BENCH_CEIL_OUT").await?;
    Ok(rate)
}

/// Waits until the shared consumer has acknowledged everything up to `last`.
async fn wait_acked(
    js: &jetstream::Context,
    config: &Config,
    last: u64,
    within: Duration,
) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        if Instant::now() > deadline {
            bail!("the engine did not finish within {within:?}");
        }
        if let Ok(stream) = js.get_stream(&config.engine.names.events_stream).await {
            if let Ok(mut c) = stream
                .get_consumer::<consumer::pull::Config>(&config.engine.names.consumer)
                .await
            {
                if let Ok(info) = c.info().await {
                    if info.ack_floor.stream_sequence >= last {
                        return Ok(());
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn print_table(a: &BenchArgs, f: &Figures) {
    println!(
        "riposte bench: {} playbooks, {} events, log connector",
        a.playbooks, a.events
    );
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| raw JetStream pull consumer (ack each) | {:.0} events/s |",
        f.raw_consumer_per_sec
    );
    println!("| same consumer + one stored audit-sized publish per event (I/O ceiling) | {:.0} events/s |", f.io_ceiling_per_sec);
    println!(
        "| engine (normalize, match, run, audit, ack) | {:.0} events/s |",
        f.engine_per_sec
    );
    println!("| engine / raw | {:.2} |", f.ratio);
    println!("| engine / I/O ceiling | {:.2} |", f.ratio_to_ceiling);
    println!(
        "| publish-to-audit latency at {}/s, p50 | {:.2} ms |",
        f.offered_per_sec, f.p50_ms
    );
    println!(
        "| publish-to-audit latency at {}/s, p99 | {:.2} ms |",
        f.offered_per_sec, f.p99_ms
    );
    println!("| publish-to-audit latency, max | {:.2} ms |", f.max_ms);
    println!("| latency samples | {} |", f.latency_samples);
    println!("| resident memory after the runs | {:.0} MiB |", f.rss_mib);
}
