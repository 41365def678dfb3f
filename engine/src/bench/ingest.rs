//! `riposte bench ingest`: the ingest gateway's throughput and latency for 1 KB Falco alerts on
//! loopback, against a plain JetStream publish loop with the same concurrency in the same run.
//!
//! Starts a nats-server (or uses `--nats`), creates the engine's streams, and serves the
//! gateway in this process with a bearer token. Then, for `--seconds` each after a one-second
//! warm-up: N HTTP/1.1 keep-alive clients, one connection each, POST distinct alerts to
//! `/v1/events/falco` one after another (every answer must be 202); then N tasks publish the
//! same kind of alerts to `riposte.in.falco` through one NATS connection, each waiting for
//! JetStream's acknowledgement before the next (with a `Nats-Msg-Id`, as the gateway does).
//! Clients, gateway and nats-server share the machine. A benchmark: it reports figures and
//! asserts nothing.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use async_nats::jetstream;
use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use sha2::Digest;
use tokio_util::sync::CancellationToken;

use super::percentile;
use crate::clock::{Clock, SystemClock};
use crate::config::{Config, IngestConfig};
use crate::duration::HumanDuration;
use crate::embedded::EmbeddedNats;
use crate::event::Source;
use crate::ingest;
use crate::metrics::Metrics;

/// Arguments of `bench ingest`.
#[derive(Debug, Args)]
pub struct IngestArgs {
    /// Concurrent clients (HTTP connections; publishing tasks in the JetStream loop).
    #[arg(long, default_value_t = 32)]
    pub clients: usize,
    /// Length of each measured phase, seconds.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Payload size, bytes.
    #[arg(long, default_value_t = 1024)]
    pub bytes: usize,
    /// Use this NATS server instead of starting one.
    #[arg(long)]
    pub nats: Option<String>,
    /// Print the figures as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// One phase's figures.
#[derive(Debug, serde::Serialize)]
pub struct Phase {
    /// Requests (or publishes) completed per second.
    pub per_sec: f64,
    /// Completed.
    pub count: usize,
    /// Failed (not 202, or not acknowledged).
    pub errors: usize,
    /// Latency, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

/// The figures of one run.
#[derive(Debug, serde::Serialize)]
pub struct Figures {
    /// Concurrency.
    pub clients: usize,
    /// Payload size.
    pub bytes: usize,
    /// The gateway: POST to 202.
    pub gateway: Phase,
    /// JetStream publish to acknowledgement.
    pub jetstream: Phase,
    /// gateway / jetstream rate.
    pub ratio: f64,
}

/// Runs the benchmark and prints its figures.
pub async fn run(a: IngestArgs) -> Result<i32> {
    if a.clients == 0 || a.seconds == 0 || a.bytes < 600 {
        bail!("--clients and --seconds must be at least 1, --bytes at least 600");
    }
    let work = std::env::temp_dir().join(format!("riposte-bench-ingest-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let mut server = None;
    let url = match &a.nats {
        Some(u) => u.clone(),
        None => {
            let s = EmbeddedNats::start(&work.join("nats"), None).await?;
            let u = s.url.clone();
            server = Some(s);
            u
        }
    };
    let shutdown = CancellationToken::new();
    let result = measure(&a, &work, &url, shutdown.clone()).await;
    shutdown.cancel();
    if let Some(s) = server {
        s.stop().await;
    }
    let _ = std::fs::remove_dir_all(&work);
    let f = result?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&f)?);
    } else {
        println!(
            "riposte bench ingest: {} clients, {}-byte Falco alerts, loopback",
            f.clients, f.bytes
        );
        println!("| measure | gateway (POST to 202) | JetStream publish (to ack) |");
        println!("|---|---|---|");
        let row = |name: &str, g: String, j: String| println!("| {name} | {g} | {j} |");
        row(
            "throughput",
            format!("{:.0} req/s", f.gateway.per_sec),
            format!("{:.0} msg/s", f.jetstream.per_sec),
        );
        row(
            "p50",
            format!("{:.2} ms", f.gateway.p50_ms),
            format!("{:.2} ms", f.jetstream.p50_ms),
        );
        row(
            "p99",
            format!("{:.2} ms", f.gateway.p99_ms),
            format!("{:.2} ms", f.jetstream.p99_ms),
        );
        row(
            "max",
            format!("{:.2} ms", f.gateway.max_ms),
            format!("{:.2} ms", f.jetstream.max_ms),
        );
        row(
            "completed / errors",
            format!("{} / {}", f.gateway.count, f.gateway.errors),
            format!("{} / {}", f.jetstream.count, f.jetstream.errors),
        );
        println!("| gateway / JetStream | {:.2} | |", f.ratio);
    }
    Ok(0)
}

async fn measure(
    a: &IngestArgs,
    work: &std::path::Path,
    url: &str,
    shutdown: CancellationToken,
) -> Result<Figures> {
    let token = hex::encode(sha2::Sha256::digest(
        format!("bench-{}-{:?}", std::process::id(), Instant::now()).as_bytes(),
    ));
    let tokens = work.join("tokens");
    std::fs::write(&tokens, format!("bench:{token}\n"))?;
    let mut config = Config::default_with_bindings();
    config.ingest = Some(IngestConfig {
        listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        tokens_file: Some(tokens),
        hmac_keys_file: None,
        replay_window: HumanDuration(Duration::from_secs(300)),
        max_body_bytes: None,
        publish_timeout: HumanDuration(Duration::from_secs(5)),
        tls: None,
        approval_senders: Vec::new(),
    });
    let client = async_nats::connect(url).await.context("connect")?;
    let js = crate::bus::jetstream(client.clone());
    crate::bus::ensure_streams(&js, &config).await?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let ingest_config = config.ingest.as_ref().context("ingest config")?;
    let prepared = ingest::Prepared::load(ingest_config, &config.engine, clock.clone())?;
    let gateway_client = async_nats::connect(url).await.context("connect")?;
    let served = prepared
        .serve(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            gateway_client,
            Arc::new(Metrics::new()),
            clock,
            shutdown,
        )
        .await?;
    let target = Target::Gateway {
        addr: served.addr,
        auth: format!("Bearer {token}"),
    };
    let counter = Arc::new(AtomicUsize::new(0));
    let run = |target: &Target, secs: f64| {
        phase(
            a.clients,
            Duration::from_secs_f64(secs),
            a.bytes,
            target.clone(),
            counter.clone(),
        )
    };
    run(&target, 1.0).await;
    let gateway = run(&target, a.seconds as f64).await;
    let target = Target::JetStream(js);
    run(&target, 1.0).await;
    let jetstream = run(&target, a.seconds as f64).await;
    Ok(Figures {
        clients: a.clients,
        bytes: a.bytes,
        ratio: gateway.per_sec / jetstream.per_sec,
        gateway,
        jetstream,
    })
}

/// What the clients send to.
#[derive(Clone)]
enum Target {
    /// The gateway, with this `Authorization` value.
    Gateway { addr: SocketAddr, auth: String },
    /// JetStream, through this context's connection.
    JetStream(jetstream::Context),
}

/// Runs `n` clients for `length` and gathers their latencies.
async fn phase(
    n: usize,
    length: Duration,
    bytes: usize,
    target: Target,
    counter: Arc<AtomicUsize>,
) -> Phase {
    let started = Instant::now();
    let deadline = started + length;
    let tasks: Vec<_> = (0..n)
        .map(|_| tokio::spawn(client(target.clone(), bytes, counter.clone(), deadline)))
        .collect();
    let mut lat = Vec::new();
    let mut errors = 0;
    for t in tasks {
        match t.await {
            Ok((l, e)) => {
                lat.extend(l);
                errors += e;
            }
            Err(_) => errors += 1,
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    Phase {
        per_sec: lat.len() as f64 / elapsed,
        count: lat.len(),
        errors,
        p50_ms: percentile(&lat, 0.50),
        p99_ms: percentile(&lat, 0.99),
        max_ms: lat.last().copied().unwrap_or(f64::NAN),
    }
}

/// One client: sends distinct alerts one after another until `deadline`; returns the latency of
/// each success (ms) and the number of failures.
async fn client(
    target: Target,
    bytes: usize,
    counter: Arc<AtomicUsize>,
    deadline: Instant,
) -> (Vec<f64>, usize) {
    let mut lat = Vec::new();
    let mut errors = 0usize;
    let next = || alert(counter.fetch_add(1, Ordering::Relaxed), bytes);
    match target {
        Target::Gateway { addr, auth } => {
            // One keep-alive HTTP/1.1 connection for the whole phase.
            let Ok(stream) = tokio::net::TcpStream::connect(addr).await else {
                return (lat, 1);
            };
            let _ = stream.set_nodelay(true);
            let Ok((mut sender, conn)) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
            else {
                return (lat, 1);
            };
            tokio::spawn(conn);
            while Instant::now() < deadline {
                let Ok(req) = hyper::Request::post("/v1/events/falco")
                    .header(hyper::header::HOST, "bench")
                    .header(hyper::header::AUTHORIZATION, auth.as_str())
                    .header(hyper::header::CONTENT_TYPE, "application/json")
                    .body(Full::new(Bytes::from(next())))
                else {
                    return (lat, errors + 1);
                };
                let t = Instant::now();
                if sender.ready().await.is_err() {
                    return (lat, errors + 1);
                }
                let ok = match sender.send_request(req).await {
                    Ok(resp) => {
                        let accepted = resp.status() == hyper::StatusCode::ACCEPTED;
                        resp.into_body().collect().await.is_ok() && accepted
                    }
                    Err(_) => false,
                };
                if ok {
                    lat.push(t.elapsed().as_secs_f64() * 1000.0);
                } else {
                    errors += 1;
                }
            }
        }
        Target::JetStream(js) => {
            while Instant::now() < deadline {
                let body = next();
                let msg = jetstream::message::PublishMessage::build()
                    .message_id(ingest::content_id(Source::Falco, &body))
                    .header(crate::bus::INGEST_SOURCE_HEADER, "bench")
                    .payload(body.into());
                let t = Instant::now();
                let ok = match js.send_publish("riposte.in.falco", msg).await {
                    Ok(ack) => ack.await.is_ok(),
                    Err(_) => false,
                };
                if ok {
                    lat.push(t.elapsed().as_secs_f64() * 1000.0);
                } else {
                    errors += 1;
                }
            }
        }
    }
    (lat, errors)
}

/// A Falco alert of about `bytes` bytes, distinct for each `i`.
fn alert(i: usize, bytes: usize) -> Vec<u8> {
    let make = |pad: &str| {
        serde_json::json!({
            "uuid": format!("ingest-bench-{i:012}"),
            "hostname": "bench-node",
            "output": format!("13:44:05.478445995: Warning Shell spawned in a container (user=root container=web-1 shell=sh parent=runc cmdline=sh -c {pad})"),
            "priority": "Warning",
            "rule": "Terminal shell in container",
            "source": "syscall",
            "tags": ["container", "shell", "mitre_execution"],
            "time": "2026-11-23T13:44:05.478445995Z",
            "output_fields": {
                "container.id": "3f2a9c01d4e2",
                "container.name": "web-1",
                "container.image.repository": "registry.local/web",
                "container.image.tag": "1.4.2",
                "evt.time": 1_763_905_445_478_445_995_i64,
                "k8s.ns.name": "shop",
                "k8s.pod.name": "web-1-7f9c",
                "proc.cmdline": "sh -c id",
                "proc.name": "sh",
                "user.name": "root"
            }
        })
        .to_string()
        .into_bytes()
    };
    let base = make("").len();
    make(&"x".repeat(bytes.saturating_sub(base)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_bench_alert_is_a_valid_falco_alert_of_the_asked_size() {
        let body = alert(7, 1024);
        assert_eq!(body.len(), 1024);
        let events = crate::formats::normalize(Source::Falco, &body, chrono::Utc::now()).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events.first().unwrap().id, "ingest-bench-000000000007");
    }
}
