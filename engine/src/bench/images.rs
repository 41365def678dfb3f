//! `riposte bench images`: how fast the revocation list decides, and how long a scan report
//! takes to become a revocation.
//!
//! - Admission: N images revoked in an in-memory index (as every replica keeps it), then
//!   AdmissionReviews of a three-container pod, one in ten with a revoked image, decided
//!   in-process by the same function the webhook serves; p50/p99/p99.9 per decision.
//! - Scan to revoked: the engine runs in-process on a nats-server of its own with one
//!   playbook that revokes the image of any Trivy report with a critical finding
//!   (`registry.revoke`, record only); reports are published one at a time and the time until
//!   the entry is in the KV bucket is measured with a watch on the bucket.
//!
//! A benchmark, not a test: it reports figures and asserts nothing.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use clap::Args;
use futures::StreamExt;
use riposte_connectors::revocation::{
    key_for, Decision, Revocation, RevocationIndex, RevocationList, State,
};
use serde_json::{json, Value};

use super::percentile;
use crate::config::Undecided;
use crate::embedded::EmbeddedNats;

/// Arguments of `bench images`.
#[derive(Debug, Args)]
pub struct ImagesBenchArgs {
    /// Images in the revocation list.
    #[arg(long, default_value_t = 10_000)]
    pub revoked: usize,
    /// Admission decisions timed.
    #[arg(long, default_value_t = 200_000)]
    pub reviews: usize,
    /// Scan reports published one at a time for the scan-to-revoked latency.
    #[arg(long, default_value_t = 200)]
    pub scans: usize,
    /// Print the figures as one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, serde::Serialize)]
struct Figures {
    revoked: usize,
    reviews: usize,
    admission_p50_us: f64,
    admission_p99_us: f64,
    admission_p999_us: f64,
    admission_denied: usize,
    lookup_p50_ns: f64,
    lookup_p99_ns: f64,
    scans: usize,
    scan_to_revoked_p50_ms: f64,
    scan_to_revoked_p99_ms: f64,
    scan_to_revoked_max_ms: f64,
    missed: usize,
}

/// Runs the benchmark and prints its figures.
pub async fn run(a: ImagesBenchArgs) -> Result<i32> {
    let index = RevocationIndex::new();
    for i in 0..a.revoked {
        let e = entry(i);
        let key = e.key().unwrap_or_default();
        index.apply(&key, Some(&serde_json::to_vec(&e)?));
    }
    index.mark_ready();
    let (admission, denied) = time_admission(&index, a.revoked, a.reviews);
    let lookups = time_lookups(&index, a.revoked, a.reviews);
    let work = tempdir()?;
    let scans = scan_to_revoked(&work, a.scans).await;
    let _ = std::fs::remove_dir_all(&work);
    let (serial, missed) = scans?;
    let f = Figures {
        revoked: a.revoked,
        reviews: a.reviews,
        admission_p50_us: percentile(&admission, 0.5),
        admission_p99_us: percentile(&admission, 0.99),
        admission_p999_us: percentile(&admission, 0.999),
        admission_denied: denied,
        lookup_p50_ns: percentile(&lookups, 0.5),
        lookup_p99_ns: percentile(&lookups, 0.99),
        scans: a.scans,
        scan_to_revoked_p50_ms: percentile(&serial, 0.5),
        scan_to_revoked_p99_ms: percentile(&serial, 0.99),
        scan_to_revoked_max_ms: serial.last().copied().unwrap_or(f64::NAN),
        missed,
    };
    if a.json {
        println!("{}", serde_json::to_string(&f)?);
    } else {
        println!("revocation list: {} images", f.revoked);
        println!(
            "admission decision (3-container pod, in-process), {} reviews: p50 {:.1} µs, p99 {:.1} µs, p99.9 {:.1} µs ({} denied)",
            f.reviews, f.admission_p50_us, f.admission_p99_us, f.admission_p999_us, f.admission_denied
        );
        println!(
            "index lookup alone: p50 {:.0} ns, p99 {:.0} ns",
            f.lookup_p50_ns, f.lookup_p99_ns
        );
        println!(
            "scan report on NATS to revocation in KV, {} reports one at a time: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} missed)",
            f.scans,
            f.scan_to_revoked_p50_ms,
            f.scan_to_revoked_p99_ms,
            f.scan_to_revoked_max_ms,
            f.missed
        );
    }
    Ok(0)
}

fn digest(i: usize) -> String {
    format!("sha256:{:064x}", i as u128 * 0x9e37_79b9_7f4a_7c15)
}

fn entry(i: usize) -> Revocation {
    Revocation {
        digest: Some(digest(i)),
        reference: Some(format!("registry.bench/team-{}/app-{i}:1.{i}", i % 50)),
        state: State::Revoked,
        reason: format!("CVE-2026-{i} (critical, fixed in 1.{i}.1)"),
        findings: vec![format!("CVE-2026-{i}")],
        event_id: None,
        playbook: Some("bench".into()),
        run_id: None,
        revoked: Decision {
            by: "riposte".into(),
            at: "2026-11-23T00:00:00Z".into(),
            reason: None,
        },
        reinstated: None,
        registry: None,
    }
}

fn review(i: usize, revoked: usize) -> Value {
    let bad = i.is_multiple_of(10) && revoked > 0;
    let image = if bad {
        format!(
            "registry.bench/team-{}/app-{}:1.{}",
            (i % revoked) % 50,
            i % revoked,
            i % revoked
        )
    } else {
        format!("registry.bench/clean/app-{i}:2.0")
    };
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": format!("bench-{i}"),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop",
            "name": format!("web-{i}"),
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": format!("web-{i}"), "namespace": "shop", "labels": {"app": "web"}},
                "spec": {
                    "initContainers": [{"name": "init", "image": "registry.bench/base/init:1"}],
                    "containers": [
                        {"name": "web", "image": image},
                        {"name": "sidecar", "image": format!("registry.bench/base/proxy@{}", digest(revoked + i))}
                    ]
                }
            }
        }
    })
}

/// Decision latencies in µs and how many were denials.
fn time_admission(index: &Arc<RevocationIndex>, revoked: usize, n: usize) -> (Vec<f64>, usize) {
    let bodies: Vec<Vec<u8>> = (0..1000)
        .map(|i| serde_json::to_vec(&review(i, revoked)).unwrap_or_default())
        .collect();
    let mut out = Vec::with_capacity(n);
    let mut denied = 0;
    for i in 0..n {
        let Some(body) = bodies.get(i % bodies.len()) else {
            continue;
        };
        let t0 = Instant::now();
        let verdict = crate::images::admission::decide(body, index, Undecided::Allow);
        out.push(t0.elapsed().as_secs_f64() * 1e6);
        if verdict.is_ok_and(|v| !v.allowed) {
            denied += 1;
        }
    }
    out.sort_by(f64::total_cmp);
    (out, denied)
}

/// Lookup latencies in ns (batches of 100, divided).
fn time_lookups(index: &Arc<RevocationIndex>, revoked: usize, n: usize) -> Vec<f64> {
    let refs: Vec<_> = (0..1000)
        .filter_map(|i| {
            riposte_connectors::revocation::ImageRef::parse(&format!(
                "registry.bench/team-{}/app-{}:1.{}",
                (i * 7 % revoked.max(1)) % 50,
                i * 7 % revoked.max(1),
                i * 7 % revoked.max(1)
            ))
            .ok()
        })
        .collect();
    let mut out = Vec::with_capacity(n / 100);
    let mut hits = 0usize;
    for b in 0..(n / 100).max(1) {
        let t0 = Instant::now();
        for j in 0..100 {
            if let Some(r) = refs.get((b * 100 + j) % refs.len().max(1)) {
                hits += usize::from(index.lookup(r).is_some());
            }
        }
        out.push(t0.elapsed().as_nanos() as f64 / 100.0);
    }
    std::hint::black_box(hits);
    out.sort_by(f64::total_cmp);
    out
}

fn tempdir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("riposte-bench-images-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn trivy_report(i: usize) -> Vec<u8> {
    let name = format!("registry.bench/scan/app-{i}:1.0");
    serde_json::to_vec(&json!({
        "SchemaVersion": 2,
        "CreatedAt": "2026-11-23T10:00:00Z",
        "ArtifactName": name,
        "ArtifactType": "container_image",
        "Metadata": {
            "RepoTags": [name],
            "RepoDigests": [format!("registry.bench/scan/app-{i}@{}", digest(1_000_000 + i))]
        },
        "Results": [{
            "Target": format!("{name} (alpine 3.19)"),
            "Class": "os-pkgs",
            "Type": "alpine",
            "Vulnerabilities": [{
                "VulnerabilityID": format!("CVE-2026-{i}"),
                "PkgName": "openssl",
                "InstalledVersion": "3.1.0-r0",
                "FixedVersion": "3.1.4-r0",
                "Severity": "CRITICAL",
                "Title": "openssl: bench finding"
            }]
        }]
    }))
    .unwrap_or_default()
}

type Seen = Arc<Mutex<HashMap<String, Instant>>>;

/// Publish-to-KV latencies in ms (sorted) and how many never arrived.
async fn scan_to_revoked(work: &Path, scans: usize) -> Result<(Vec<f64>, usize)> {
    let pb_dir = work.join("playbooks");
    std::fs::create_dir_all(&pb_dir)?;
    std::fs::write(
        pb_dir.join("revoke.yaml"),
        "apiVersion: riposte/v1\nkind: Playbook\nmetadata:\n  name: bench-revoke\nspec:\n  match:\n    sources: [trivy]\n    kinds: [vulnerability]\n    when: at_least(event.severity, \"critical\")\n  steps:\n    - id: revoke\n      action: registry.revoke\n      with:\n        image: \"${{ event.resource.image.ref }}\"\n        digest: \"${{ event.resource.image.digest }}\"\n        reason: \"${{ event.title }}\"\n        findings: \"${{ event.findings.map(|f| f.id) }}\"\n",
    )?;
    let server = EmbeddedNats::start(&work.join("nats"), None).await?;
    let url = server.url.clone();
    let config = super::engine_config(work);
    let result = async {
        let client = async_nats::connect(&url).await.context("connect")?;
        let js = crate::bus::jetstream(client);
        let (engine_task, shutdown) = super::start_engine(&config, &url, &pb_dir, &js).await?;
        let list = RevocationList::open(
            &js,
            &config.engine.names.kv_prefix,
            config.nats.replicas,
            None,
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        let seen: Seen = Arc::default();
        let mut watch = list
            .store()
            .watch_all()
            .await
            .map_err(|e| anyhow::anyhow!("watch: {e}"))?;
        let recorder = seen.clone();
        let watcher = tokio::spawn(async move {
            while let Some(Ok(entry)) = watch.next().await {
                if let Ok(mut m) = recorder.lock() {
                    m.entry(entry.key.clone()).or_insert_with(Instant::now);
                }
            }
        });
        let mut serial = Vec::with_capacity(scans);
        let mut missed = 0;
        for i in 0..scans {
            let key = key_for(Some(&digest(1_000_000 + i)), None).unwrap_or_default();
            let t0 = Instant::now();
            js.publish("riposte.in.trivy", trivy_report(i).into())
                .await?
                .await?;
            let deadline = t0 + Duration::from_secs(30);
            loop {
                let at = seen.lock().ok().and_then(|m| m.get(&key).copied());
                if let Some(at) = at {
                    serial.push(at.duration_since(t0).as_secs_f64() * 1000.0);
                    break;
                }
                if Instant::now() > deadline {
                    missed += 1;
                    break;
                }
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        }
        watcher.abort();
        shutdown.cancel();
        engine_task.await??;
        serial.sort_by(f64::total_cmp);
        Ok::<_, anyhow::Error>((serial, missed))
    }
    .await;
    server.stop().await;
    result
}
