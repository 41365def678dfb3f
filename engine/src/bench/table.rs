//! `riposte bench table`: the README's performance table in one run, on a nats-server of its
//! own (or `--nats`).
//!
//! The engines measured are `riposte run` processes of this same binary, each with its own
//! replica name on the shared durable consumer, so that their resident memory is their own and
//! several replicas are several processes, as in a deployment. Every event is a Falco alert that
//! matches exactly one of the generated playbooks (half with native clauses only, half that
//! need Rhai), whose step is `log.info`; the engines' logs go to files in the work directory.
//!
//! In order:
//! 1. the raw rate of a plain JetStream pull consumer, and the I/O ceiling (the same consumer
//!    storing one audit-sized message per event before its ack), as in `riposte bench`;
//! 2. the engine with 1, 100 and 1,000 playbooks: the events are published first, then the
//!    engine started; the rate is timed on the consumer's acknowledgement floor from the
//!    twentieth part of the events to the last, so start-up is not counted;
//! 3. the same with N replicas (default 3) and 100 playbooks; one replica is the 100-playbook
//!    row;
//! 4. publish-to-audit latency at fixed offered rates, against the 1-replica, 100-playbook
//!    engine;
//! 5. the 1,000-playbook engine's resident memory (VmRSS) after its run, then a soak: a million
//!    more events published in chunks of 100,000, its memory read after each.
//!
//! A benchmark: it reports figures and their ratios to the goals, and asserts nothing.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use async_nats::jetstream::{self, consumer};
use clap::Args;
use tokio::process::{Child, Command};

use super::write_playbooks;
use super::{falco_payload, io_ceiling, latency, percentile, publish_all, raw_consumer};
use crate::config::Config;

/// Playbook counts of the engine rows.
const PLAYBOOKS: [usize; 3] = [1, 100, 1000];
/// Events between two memory readings of the soak.
const SOAK_CHUNK: usize = 100_000;

/// Arguments of `bench table`.
#[derive(Debug, Args)]
pub struct TableArgs {
    /// Events for each throughput run.
    #[arg(long, default_value_t = 100_000)]
    pub events: usize,
    /// Events of the soak (memory read every 100,000, and at the end).
    #[arg(long, default_value_t = 1_000_000)]
    pub soak_events: usize,
    /// Length of each latency run, seconds.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Offered rates of the latency runs, events per second.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1000u64, 5000])]
    pub rates: Vec<u64>,
    /// Replicas of the scaling row.
    #[arg(long, default_value_t = 3)]
    pub replicas: usize,
    /// Use this NATS server instead of starting one (it must be empty of riposte streams).
    #[arg(long)]
    pub nats: Option<String>,
    /// Print the figures as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// The engine with some number of playbooks.
#[derive(Debug, serde::Serialize)]
pub struct PlaybookRow {
    /// Playbooks loaded.
    pub playbooks: usize,
    /// Events per second.
    pub per_sec: f64,
    /// The engine process's resident memory after the run, MiB.
    pub rss_mib: f64,
}

/// The engine with some number of replicas (100 playbooks).
#[derive(Debug, serde::Serialize)]
pub struct ReplicaRow {
    /// Replica processes on the durable consumer.
    pub replicas: usize,
    /// Events per second, all replicas together.
    pub per_sec: f64,
    /// Each process's resident memory after the run, MiB.
    pub rss_mib: Vec<f64>,
}

/// Publish-to-audit latency at one offered rate.
#[derive(Debug, serde::Serialize)]
pub struct LatencyRow {
    /// Events per second offered.
    pub offered_per_sec: u64,
    /// Events published.
    pub published: usize,
    /// Events whose run record arrived (the percentiles are over these).
    pub samples: usize,
    /// Milliseconds.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

/// One memory reading of the soak.
#[derive(Debug, serde::Serialize)]
pub struct SoakSample {
    /// Soak events processed when it was read.
    pub events: usize,
    /// The engine's resident memory, MiB.
    pub rss_mib: f64,
}

/// The soak.
#[derive(Debug, serde::Serialize)]
pub struct Soak {
    /// Events.
    pub events: usize,
    /// Events per second, publishing included (publisher and engine run at once).
    pub per_sec: f64,
    /// Resident memory before the soak, then after every chunk.
    pub samples: Vec<SoakSample>,
    /// First reading, MiB.
    pub first_mib: f64,
    /// Last reading, MiB.
    pub last_mib: f64,
    /// Largest reading, MiB.
    pub max_mib: f64,
}

/// How the figures stand against the goals.
#[derive(Debug, serde::Serialize)]
pub struct Goals {
    /// Engine with 100 playbooks / raw consumer (goal: at least 0.5).
    pub engine_100_over_raw: f64,
    /// Engine with 100 playbooks / I/O ceiling.
    pub engine_100_over_ceiling: f64,
    /// Engine with 1,000 playbooks / with 100 (goal: at least 0.5).
    pub engine_1000_over_100: f64,
    /// p99 at the lowest offered rate, ms (goal: under 10 at 1,000 events/s).
    pub p99_ms: f64,
    /// The offered rate of that p99.
    pub p99_offered_per_sec: u64,
    /// The 1,000-playbook engine's largest resident memory, MiB (goal: under 100 MB).
    pub rss_1000_playbooks_mib: f64,
    /// N replicas / 1 replica (goal: near N where the cores allow).
    pub replicas_gain: f64,
    /// Last soak reading / first (flat: near 1).
    pub soak_growth: f64,
}

/// The figures of one run.
#[derive(Debug, serde::Serialize)]
pub struct TableFigures {
    /// CPUs this process may use.
    pub cores: usize,
    /// The machine's one-minute load average when the run started and when it ended (other
    /// work on the machine lowers every figure).
    pub load_average: [f64; 2],
    /// Events per throughput run.
    pub events: usize,
    /// Plain pull consumer with ack, events per second.
    pub raw_consumer_per_sec: f64,
    /// The same consumer storing one audit-sized message per event before its ack.
    pub io_ceiling_per_sec: f64,
    /// The engine with 1, 100 and 1,000 playbooks.
    pub engine: Vec<PlaybookRow>,
    /// The engine with 1 and N replicas, 100 playbooks.
    pub replicas: Vec<ReplicaRow>,
    /// Latency at each offered rate (100 playbooks, 1 replica).
    pub latency: Vec<LatencyRow>,
    /// The soak (1,000 playbooks).
    pub soak: Option<Soak>,
    /// Ratios against the goals.
    pub goals: Goals,
}

/// Runs the benchmark and prints its figures.
pub async fn run(a: TableArgs) -> Result<i32> {
    if a.events < 100 || a.replicas == 0 || a.seconds == 0 || a.rates.contains(&0) {
        bail!("--events must be at least 100; --replicas, --seconds and --rates at least 1");
    }
    let args = &a;
    let f = super::on_server(a.nats.as_deref(), |work, url| async move {
        measure(args, &work, &url).await
    })
    .await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&f)?);
    } else {
        print_table(&f);
    }
    Ok(0)
}

/// Where the run is: the connection, the engine's names and the next unused event number.
struct Bench<'a> {
    js: jetstream::Context,
    client: async_nats::Client,
    config: Config,
    url: &'a str,
    work: &'a Path,
    next_id: usize,
}

impl Bench<'_> {
    /// `n` alerts spread over rules `0..rules`, with event ids never used before.
    fn bodies(&mut self, prefix: &str, n: usize, rules: usize) -> Vec<(String, Vec<u8>)> {
        let first = self.next_id;
        self.next_id += n;
        (0..n)
            .map(|i| {
                let rule = i % rules.max(1);
                (
                    format!("{prefix}.bench_rule_{rule}"),
                    falco_payload(first + i, rule),
                )
            })
            .collect()
    }

    async fn last_sequence(&self) -> Result<u64> {
        Ok(self
            .js
            .get_stream(&self.config.engine.names.events_stream)
            .await?
            .info()
            .await?
            .state
            .last_sequence)
    }

    /// Publishes `n` alerts for `rules` playbooks to the engine's stream: the sequences before
    /// and after.
    async fn publish(&mut self, n: usize, rules: usize) -> Result<(u64, u64)> {
        let before = self.last_sequence().await?;
        let bodies = self.bodies("falco.warning", n, rules);
        publish_all(&self.js, bodies).await?;
        Ok((before, self.last_sequence().await?))
    }

    /// A directory with `n` generated playbooks.
    fn playbooks(&self, n: usize) -> Result<PathBuf> {
        let dir = self.work.join(format!("playbooks-{n}"));
        if !dir.exists() {
            std::fs::create_dir_all(&dir)?;
            write_playbooks(&dir, n)?;
        }
        Ok(dir)
    }

    /// Publishes `n` alerts, then starts `replicas` engines with `playbooks` playbooks and
    /// times them draining the alerts. The engines are returned running.
    async fn throughput(
        &mut self,
        playbooks: usize,
        replicas: usize,
        n: usize,
    ) -> Result<(f64, Engines)> {
        let dir = self.playbooks(playbooks)?;
        let (before, last) = self.publish(n, playbooks).await?;
        let mut engines = Engines::start(self, &dir, replicas, &format!("pb{playbooks}"))?;
        let rate = drain_rate(&self.js, &self.config, before, last, &mut engines).await?;
        Ok((rate, engines))
    }
}

async fn measure(a: &TableArgs, work: &Path, url: &str) -> Result<TableFigures> {
    let load_before = load_average();
    let client = async_nats::connect(url).await.context("connect")?;
    let js = crate::bus::jetstream(client.clone());
    let config = Config::default_with_bindings();
    let mut b = Bench {
        js,
        client,
        config,
        url,
        work,
        next_id: 0,
    };
    let say = |what: &str| {
        if !a.json {
            eprintln!("bench table: {what}");
        }
    };

    say("raw consumer and I/O ceiling");
    let bodies = b.bodies("benchraw.warning", a.events, 100);
    let raw = raw_consumer(&b.js, a.events, bodies).await?;
    let bodies = b.bodies("benchceil.warning", a.events, 100);
    let ceiling = io_ceiling(&b.js, a.events, &bodies).await?;
    crate::bus::ensure_streams(&b.js, &b.config).await?;

    let mut engine_rows = Vec::new();
    let mut latency_rows = Vec::new();
    let mut soak = None;
    let mut one_replica = f64::NAN;
    let mut replica_rows = Vec::new();
    for playbooks in PLAYBOOKS {
        say(&format!("engine, {playbooks} playbooks"));
        let (rate, mut engines) = b.throughput(playbooks, 1, a.events).await?;
        let rss = engines.rss_mib();
        engine_rows.push(PlaybookRow {
            playbooks,
            per_sec: rate,
            rss_mib: rss.first().copied().unwrap_or(f64::NAN),
        });
        if playbooks == 100 {
            one_replica = rate;
            replica_rows.push(ReplicaRow {
                replicas: 1,
                per_sec: rate,
                rss_mib: rss,
            });
            for &rate in &a.rates {
                say(&format!("latency at {rate} events/s"));
                let offset = b.next_id;
                let published = usize::try_from(rate.saturating_mul(a.seconds)).unwrap_or(0);
                b.next_id += published;
                let lat = latency(
                    &b.client, &b.js, &b.config, rate, a.seconds, playbooks, offset,
                )
                .await?;
                latency_rows.push(LatencyRow {
                    offered_per_sec: rate,
                    published,
                    samples: lat.len(),
                    p50_ms: percentile(&lat, 0.50),
                    p99_ms: percentile(&lat, 0.99),
                    p999_ms: percentile(&lat, 0.999),
                    max_ms: lat.last().copied().unwrap_or(f64::NAN),
                });
            }
        }
        if playbooks == 1000 && a.soak_events > 0 {
            say(&format!("soak, {} events", a.soak_events));
            soak = Some(run_soak(&mut b, &mut engines, playbooks, a.soak_events).await?);
        }
        engines.stop().await;
    }

    if a.replicas > 1 {
        say(&format!("engine, {} replicas, 100 playbooks", a.replicas));
        let (rate, engines) = b.throughput(100, a.replicas, a.events).await?;
        replica_rows.push(ReplicaRow {
            replicas: a.replicas,
            per_sec: rate,
            rss_mib: engines.rss_mib(),
        });
        engines.stop().await;
    }

    let rate_of = |n: usize| {
        engine_rows
            .iter()
            .find(|r| r.playbooks == n)
            .map_or(f64::NAN, |r| r.per_sec)
    };
    let rss_1000 = engine_rows
        .iter()
        .find(|r| r.playbooks == 1000)
        .map_or(f64::NAN, |r| r.rss_mib)
        .max(soak.as_ref().map_or(f64::NAN, |s| s.max_mib));
    let lowest = latency_rows.iter().min_by_key(|l| l.offered_per_sec);
    let goals = Goals {
        engine_100_over_raw: rate_of(100) / raw,
        engine_100_over_ceiling: rate_of(100) / ceiling,
        engine_1000_over_100: rate_of(1000) / rate_of(100),
        p99_ms: lowest.map_or(f64::NAN, |l| l.p99_ms),
        p99_offered_per_sec: lowest.map_or(0, |l| l.offered_per_sec),
        rss_1000_playbooks_mib: rss_1000,
        replicas_gain: replica_rows
            .iter()
            .find(|r| r.replicas == a.replicas && a.replicas > 1)
            .map_or(f64::NAN, |r| r.per_sec / one_replica),
        soak_growth: soak.as_ref().map_or(f64::NAN, |s| s.last_mib / s.first_mib),
    };
    Ok(TableFigures {
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average: [load_before, load_average()],
        events: a.events,
        raw_consumer_per_sec: raw,
        io_ceiling_per_sec: ceiling,
        engine: engine_rows,
        replicas: replica_rows,
        latency: latency_rows,
        soak,
        goals,
    })
}

/// Feeds `events` more alerts to the running engine in chunks of 100,000, reading its memory
/// before and after each chunk.
async fn run_soak(
    b: &mut Bench<'_>,
    engines: &mut Engines,
    playbooks: usize,
    events: usize,
) -> Result<Soak> {
    let read = |engines: &Engines| engines.rss_mib().first().copied().unwrap_or(f64::NAN);
    let mut samples = vec![SoakSample {
        events: 0,
        rss_mib: read(engines),
    }];
    let started = Instant::now();
    let mut done = 0;
    while done < events {
        let n = SOAK_CHUNK.min(events - done);
        let bodies = b.bodies("falco.warning", n, playbooks);
        publish_all(&b.js, bodies).await?;
        let last = b.last_sequence().await?;
        wait_floor(&b.js, &b.config, last, engines).await?;
        done += n;
        samples.push(SoakSample {
            events: done,
            rss_mib: read(engines),
        });
    }
    let per_sec = done as f64 / started.elapsed().as_secs_f64();
    let first_mib = samples.first().map_or(f64::NAN, |s| s.rss_mib);
    let last_mib = samples.last().map_or(f64::NAN, |s| s.rss_mib);
    let max_mib = samples.iter().map(|s| s.rss_mib).fold(f64::NAN, f64::max);
    Ok(Soak {
        events: done,
        per_sec,
        samples,
        first_mib,
        last_mib,
        max_mib,
    })
}

/// `riposte run` processes of this binary on the shared durable consumer.
struct Engines {
    children: Vec<(String, Child)>,
    logs: Vec<PathBuf>,
}

impl Engines {
    fn start(b: &Bench<'_>, playbooks: &Path, n: usize, tag: &str) -> Result<Engines> {
        let exe = std::env::current_exe().context("the path of this program")?;
        let mut engines = Engines {
            children: Vec::new(),
            logs: Vec::new(),
        };
        for k in 1..=n {
            let name = format!("bench-{tag}-r{k}of{n}");
            let data = b.work.join(&name);
            std::fs::create_dir_all(&data)?;
            let log = b.work.join(format!("{name}.log"));
            let stderr = std::fs::File::create(&log)?;
            let child = Command::new(&exe)
                .arg("run")
                .arg("--nats")
                .arg(b.url)
                .arg("--playbooks")
                .arg(playbooks)
                .arg("--replica")
                .arg(&name)
                .arg("--metrics-listen")
                .arg("127.0.0.1:0")
                .arg("--data-dir")
                .arg(&data)
                .env_remove("RIPOSTE_CONFIG")
                .env_remove("RIPOSTE_NATS_URL")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr)
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("cannot start {}", exe.display()))?;
            engines.children.push((name, child));
            engines.logs.push(log);
        }
        Ok(engines)
    }

    /// Each process's VmRSS, MiB (NaN when it cannot be read).
    fn rss_mib(&self) -> Vec<f64> {
        self.children
            .iter()
            .map(|(_, c)| c.id().map_or(f64::NAN, process_rss_mib))
            .collect()
    }

    /// An error naming an engine that exited, with the end of its log.
    fn check_alive(&mut self) -> Result<()> {
        for ((name, child), log) in self.children.iter_mut().zip(&self.logs) {
            if let Ok(Some(status)) = child.try_wait() {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(20).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                bail!(
                    "engine {name} exited ({status}); the end of its log:\n{}",
                    tail.join("\n")
                );
            }
        }
        Ok(())
    }

    /// SIGTERM to each, then SIGKILL to any still running after 15 s.
    async fn stop(mut self) {
        for (_, child) in &self.children {
            if let Some(pid) = child.id() {
                let _ = Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status()
                    .await;
            }
        }
        for (name, child) in &mut self.children {
            if tokio::time::timeout(Duration::from_secs(15), child.wait())
                .await
                .is_err()
            {
                tracing::warn!(engine = %name, "the engine did not stop within 15 s: killed");
                let _ = child.kill().await;
            }
        }
    }
}

/// The durable consumer's acknowledgement floor (0 before the consumer exists).
async fn ack_floor(js: &jetstream::Context, config: &Config) -> u64 {
    let Ok(stream) = js.get_stream(&config.engine.names.events_stream).await else {
        return 0;
    };
    let Ok(mut c) = stream
        .get_consumer::<consumer::pull::Config>(&config.engine.names.consumer)
        .await
    else {
        return 0;
    };
    c.info()
        .await
        .map_or(0, |info| info.ack_floor.stream_sequence)
}

/// Waits until everything up to `last` is acknowledged (ten minutes at most).
async fn wait_floor(
    js: &jetstream::Context,
    config: &Config,
    last: u64,
    engines: &mut Engines,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    while ack_floor(js, config).await < last {
        engines.check_alive()?;
        if Instant::now() > deadline {
            bail!("the engine did not acknowledge everything within 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Events per second of engines draining `before+1..=last`, timed on the acknowledgement floor
/// from the last reading before it passed the twentieth part of the events to the last, so
/// their start-up is not counted (and a floor that jumps past the mark still has a start).
async fn drain_rate(
    js: &jetstream::Context,
    config: &Config,
    before: u64,
    last: u64,
    engines: &mut Engines,
) -> Result<f64> {
    let mark = before + (last - before) / 20;
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut start: Option<(Instant, u64)> = None;
    let mut previous = (Instant::now(), before);
    loop {
        let floor = ack_floor(js, config).await;
        let now = Instant::now();
        if start.is_none() && floor > mark {
            start = Some(previous);
        }
        previous = (now, floor);
        if floor >= last {
            let (t0, f0) = start.unwrap_or(previous);
            let secs = now.duration_since(t0).as_secs_f64();
            if secs <= 0.0 || last <= f0 {
                bail!("too few events to time the engine: raise --events");
            }
            return Ok((last - f0) as f64 / secs);
        }
        engines.check_alive()?;
        if now > deadline {
            bail!("the engine did not acknowledge everything within 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The one-minute load average (NaN when it cannot be read).
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|x| x.parse().ok()))
        .unwrap_or(f64::NAN)
}

/// VmRSS of a process, MiB (NaN when it cannot be read).
fn process_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn goal(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "not met"
    }
}

fn print_table(f: &TableFigures) {
    let rate = |r: f64| format!("{} events/s", thousands(r));
    println!(
        "riposte bench table: {} events per run, {} cores shared with nats-server, engines are `riposte run` processes, log.info steps; load average {:.2} at the start, {:.2} at the end",
        thousands(f.events as f64),
        f.cores,
        f.load_average[0],
        f.load_average[1]
    );
    println!();
    println!("| measure | value | against the goal |");
    println!("|---|---|---|");
    println!(
        "| raw JetStream pull consumer (ack each) | {} | |",
        rate(f.raw_consumer_per_sec)
    );
    println!(
        "| same consumer + one stored audit-sized publish per event (I/O ceiling) | {} | |",
        rate(f.io_ceiling_per_sec)
    );
    for r in &f.engine {
        let note = match r.playbooks {
            100 => format!(
                "{:.2} of raw (goal 0.5: {}); {:.2} of the I/O ceiling",
                f.goals.engine_100_over_raw,
                goal(f.goals.engine_100_over_raw >= 0.5),
                f.goals.engine_100_over_ceiling
            ),
            1000 => format!(
                "{:.2} of 100 playbooks (goal 0.5: {})",
                f.goals.engine_1000_over_100,
                goal(f.goals.engine_1000_over_100 >= 0.5)
            ),
            _ => String::new(),
        };
        println!(
            "| engine, {} playbook{} | {} | {note} |",
            thousands(r.playbooks as f64),
            if r.playbooks == 1 { "" } else { "s" },
            rate(r.per_sec)
        );
    }
    for r in &f.replicas {
        let note = if r.replicas > 1 {
            format!("{:.2}x one replica", f.goals.replicas_gain)
        } else {
            String::new()
        };
        println!(
            "| engine, {} replica{}, 100 playbooks | {} | {note} |",
            r.replicas,
            if r.replicas == 1 { "" } else { "s" },
            rate(r.per_sec)
        );
    }
    for l in &f.latency {
        let note = if l.offered_per_sec == 1000 {
            format!("p99 goal < 10 ms: {}", goal(l.p99_ms < 10.0))
        } else {
            String::new()
        };
        println!(
            "| publish-to-audit latency at {}/s, p50 / p99 / p99.9 / max | {:.2} / {:.2} / {:.2} / {:.2} ms ({} of {} events) | {note} |",
            thousands(l.offered_per_sec as f64),
            l.p50_ms,
            l.p99_ms,
            l.p999_ms,
            l.max_ms,
            thousands(l.samples as f64),
            thousands(l.published as f64)
        );
    }
    if let Some(r) = f.engine.iter().find(|r| r.playbooks == 1000) {
        println!(
            "| resident memory, engine with 1,000 playbooks after its run | {:.1} MiB | goal < 100 MB (largest, soak included: {:.1} MiB): {} |",
            r.rss_mib,
            f.goals.rss_1000_playbooks_mib,
            goal(f.goals.rss_1000_playbooks_mib * 1.048_576 < 100.0)
        );
    }
    if let Some(s) = &f.soak {
        let series: Vec<String> = s
            .samples
            .iter()
            .map(|x| format!("{:.1}", x.rss_mib))
            .collect();
        println!(
            "| soak, {} events, 1,000 playbooks: resident memory every 100,000 (MiB) | {} | first {:.1}, last {:.1}, max {:.1} MiB; last/first {:.2} |",
            thousands(s.events as f64),
            series.join(" → "),
            s.first_mib,
            s.last_mib,
            s.max_mib,
            f.goals.soak_growth
        );
        println!(
            "| soak rate (publishing at the same time) | {} | |",
            rate(s.per_sec)
        );
    }
}

/// A whole number with thousands separators.
fn thousands(x: f64) -> String {
    if !x.is_finite() {
        return "n/a".to_owned();
    }
    let digits = format!("{:.0}", x.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if x < 0.0 {
        out.insert(0, '-');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_are_separated() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(thousands(1_234_567.0), "1,234,567");
        assert_eq!(thousands(f64::NAN), "n/a");
    }
}
