//! End-to-end tests of `riposte report compliance`: a real engine revokes images from real
//! Trivy and Grype reports (the corpus), people revoke and reinstate by hand, enforcement
//! denials land in the audit stream, and the report, in JSON, Markdown and HTML, proves it all.
//! The HTML page is opened in a real headless Chromium.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use riposte::audit::{AuditRecord, RecordKind};
use riposte_tests::*;
use serde_json::{json, Value};

/// Critical or high findings revoke the image (the `registry` connector's default instance
/// records it in the list).
const PLAYBOOK: &str = r#"
apiVersion: riposte/v1
kind: Playbook
metadata:
  name: revoke-vulnerable
spec:
  match:
    sources: [trivy, grype]
    when: event.severity == "critical" || event.severity == "high"
  steps:
    - id: record
      action: log.warn
      with: { message: "revoking ${{ event.resource.image.ref }}: ${{ event.title }}" }
    - id: revoke
      action: registry.revoke
      with:
        image: "${{ event.resource.image.ref }}"
        reason: "${{ event.title }}"
"#;

const ALPINE: &str = "ghcr.io/aquasecurity/trivy-test-images:alpine-39";
const RUBY: &str = "cgr.dev/chainguard/ruby:latest-3.0";
const KEYCLOAK: &str = "docker.io/keycloak/keycloak:21.0.2";
const INJECTED: &str = "registry.example.com/shop/<script>alert(\"owned\")</script>:1";

fn corpus(path: &str) -> Vec<u8> {
    std::fs::read(Path::new("/work/shared/corpus").join(path))
        .or_else(|_| std::fs::read(repo_root().join("../shared/corpus").join(path)))
        .unwrap_or_else(|e| panic!("corpus file {path}: {e}"))
}

/// The Trivy alpine report under another name (a script tag) and report id.
fn injected_report() -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(&corpus("trivy/trivy_image_alpine-39.json")).unwrap();
    v["ArtifactName"] = json!(INJECTED);
    v["Metadata"]["RepoTags"] = json!([INJECTED]);
    v["ReportID"] = json!("report-with-a-script-tag");
    serde_json::to_vec(&v).unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn report(nats: &str, extra: &[&str]) -> Output {
    let mut args = vec!["report", "compliance", "--nats", nats];
    args.extend_from_slice(extra);
    let out = cli(&args);
    assert!(out.status.success(), "riposte report: {}", text(&out));
    out
}

fn denial(point: &str, image: &str, object: &str, user: &str) -> AuditRecord {
    let mut r = AuditRecord::new(
        RecordKind::Enforcement,
        "denied",
        chrono::Utc::now(),
        "engine-1",
    );
    r.action = Some(point.to_owned());
    r.reason = Some(format!("{image} is revoked"));
    r.output = Some(json!({ "image": image, "object": object, "user": user }));
    r
}

/// Publishes audit records as one audit message (JSON Lines), as the engine stores them.
async fn publish_records(client: &async_nats::Client, records: &[AuditRecord]) {
    let mut body = Vec::new();
    for r in records {
        body.extend(serde_json::to_vec(r).unwrap());
        body.push(b'\n');
    }
    publish(client, "riposte.audit.records", &[body]).await;
}

/// Headless Chromium: `RIPOSTE_CHROMIUM`, else `chromium` or `chromium-browser` on PATH.
fn chromium() -> PathBuf {
    if let Ok(p) = std::env::var("RIPOSTE_CHROMIUM") {
        return PathBuf::from(p);
    }
    let path = std::env::var("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path).chain([PathBuf::from("/usr/bin")]) {
        for name in ["chromium", "chromium-browser"] {
            let p = dir.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!("chromium is not installed: run `bash scripts/setup` (or `apt-get install chromium`), or set RIPOSTE_CHROMIUM");
}

/// Runs headless Chromium on a local file with a fresh profile, no network, no updates.
fn browse(page: &Path, action: &[&str]) -> Output {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(action)
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap_or_else(|e| panic!("cannot run chromium: {e}; run `bash scripts/setup`"));
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn the_report_proves_scans_revocations_blocked_attempts_and_remediations() {
    let browser = chromium();
    let nats = NatsServer::start();
    let work = tempfile::tempdir().unwrap();
    write(&work.path().join("pb/revoke.yaml"), PLAYBOOK);
    let _engine = Engine::start(&nats.url, &work.path().join("pb"), None, work.path());
    let client = nats.client().await;
    let before = chrono::Utc::now() - chrono::Duration::seconds(1);

    publish(
        &client,
        "riposte.in.trivy",
        &[
            corpus("trivy/trivy_image_alpine-39.json"),
            injected_report(),
        ],
    )
    .await;
    publish(
        &client,
        "riposte.in.grype",
        &[
            corpus("grype/grype_image_chainguard-ruby.json"),
            corpus("grype/grype_image_keycloak-21.0.2.json"),
        ],
    )
    .await;
    let records = wait_for(&nats.url, Duration::from_secs(60), "three runs", |r| {
        r.iter()
            .filter(|x| {
                x.record == RecordKind::Run && x.playbook.as_deref() == Some("revoke-vulnerable")
            })
            .count()
            == 3
    });
    let run_of = |image: &str| {
        records
            .iter()
            .find(|x| {
                x.record == RecordKind::Step
                    && x.step.as_deref() == Some("revoke")
                    && x.args.as_ref().is_some_and(|a| a["image"] == image)
            })
            .and_then(|x| x.run_id.clone())
            .unwrap_or_else(|| panic!("no revoke step for {image}"))
    };
    let alpine_run = run_of(ALPINE);
    let injected_run = run_of(INJECTED);

    // A person revokes and reinstates an image; enforcement points refuse two attempts.
    for args in [
        vec![
            "images",
            "revoke",
            KEYCLOAK,
            "--reason",
            "CVE-2023-2422 in keycloak",
            "--as",
            "alice",
            "--finding",
            "CVE-2023-2422",
        ],
        vec![
            "images",
            "reinstate",
            KEYCLOAK,
            "--as",
            "bob",
            "--reason",
            "upgraded to 21.1.1",
        ],
    ] {
        let mut a = args.clone();
        a.extend_from_slice(&["--nats", &nats.url]);
        let out = cli(&a);
        assert!(out.status.success(), "{}", text(&out));
    }
    publish_records(
        &client,
        &[denial(
            "admission",
            ALPINE,
            "pod shop/cart-7d9f",
            "system:serviceaccount:shop:deployer",
        )],
    )
    .await;
    publish_records(&client, &[denial("authz", RUBY, "container create", "dev")]).await;

    let out = report(&nats.url, &["--since", "1h", "--format", "json"]);
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["report"], "compliance");
    assert_eq!(r["scans"]["scans"], 4, "{r:#}");
    assert_eq!(r["scans"]["images"], 4);
    // alpine 2 critical + 4 medium, twice (the original and the copy); ruby 2 high;
    // keycloak 6 low.
    assert_eq!(
        r["findings"],
        json!({ "critical": 4, "high": 2, "medium": 8, "low": 6 })
    );
    let image = |name: &str| {
        r["images"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["image"].as_str().unwrap().starts_with(name))
            .unwrap_or_else(|| panic!("{name} not among the scanned images: {r:#}"))
            .clone()
    };
    assert_eq!(
        image(ALPINE)["findings"],
        json!({ "critical": 2, "medium": 4 })
    );
    assert_eq!(image(RUBY)["latest"], json!({ "high": 2 }));
    assert_eq!(
        image(RUBY)["digest"],
        "sha256:3c9afb4f188827ea1062ec3b8acea32893236a0d7df31e0498df93486cff0978"
    );
    // The most severe first.
    assert!(
        r["images"][0]["image"]
            .as_str()
            .unwrap()
            .contains("alpine-39")
            || r["images"][0]["image"].as_str().unwrap().contains("script")
    );

    assert_eq!(r["revocations"]["revoked"], 3, "{:#}", r["revocations"]);
    assert_eq!(r["revocations"]["reinstated"], 1);
    let changes = r["revocations"]["changes"].as_array().unwrap();
    let alpine = changes.iter().find(|c| c["image"] == ALPINE).unwrap();
    assert_eq!(alpine["change"], "revoked");
    assert_eq!(alpine["by"], "riposte");
    assert_eq!(alpine["playbook"], "revoke-vulnerable");
    assert_eq!(alpine["run_id"], alpine_run.as_str());
    assert_eq!(alpine["reason"], format!("6 vulnerabilities in {ALPINE}"));
    let by_hand: Vec<&Value> = changes.iter().filter(|c| c["image"] == KEYCLOAK).collect();
    assert_eq!(by_hand.len(), 2, "{changes:#?}");
    assert_eq!(by_hand[0]["by"], "alice");
    assert_eq!(by_hand[0]["findings"], json!(["CVE-2023-2422"]));
    assert_eq!(by_hand[0]["replica"], "cli");
    assert_eq!(by_hand[1]["change"], "reinstated");
    assert_eq!(by_hand[1]["by"], "bob");
    assert_eq!(by_hand[1]["reason"], "upgraded to 21.1.1");

    assert_eq!(r["blocked"]["total"], 2);
    assert_eq!(r["blocked"]["admission"], 1);
    assert_eq!(r["blocked"]["authz"], 1);
    let blocked = r["blocked"]["by_image"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["image"] == ALPINE)
        .unwrap();
    assert_eq!(blocked["attempts"][0]["object"], "pod shop/cart-7d9f");
    assert_eq!(
        blocked["attempts"][0]["user"],
        "system:serviceaccount:shop:deployer"
    );

    // The evidence of each remediation: event, playbook, run, steps.
    let rems = r["remediations"].as_array().unwrap();
    assert_eq!(rems.len(), 3, "{rems:#?}");
    let rem = rems
        .iter()
        .find(|x| x["run_id"] == alpine_run.as_str())
        .unwrap();
    assert_eq!(rem["playbook"], "revoke-vulnerable");
    assert_eq!(rem["outcome"], "ok");
    assert_eq!(rem["event"]["source"], "trivy");
    assert_eq!(rem["event"]["id"], "017b7d41-e09f-7000-80ea-000000000001");
    assert_eq!(
        rem["event"]["title"],
        format!("6 vulnerabilities in {ALPINE}")
    );
    assert_eq!(rem["revoked"], json!([ALPINE]));
    let steps: Vec<(String, String)> = rem["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["action"].as_str().unwrap().to_owned(),
                s["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        steps,
        [
            ("log.warn".to_owned(), "ok".to_owned()),
            ("registry.revoke".to_owned(), "ok".to_owned())
        ]
    );
    assert!(rem["steps"][1]["summary"]
        .as_str()
        .unwrap()
        .starts_with(&format!("{ALPINE}: revoked")));
    // A report naming an image that is no reference: the revoke step failed, and says why.
    let bad = rems
        .iter()
        .find(|x| x["run_id"] == injected_run.as_str())
        .unwrap();
    assert_eq!(bad["outcome"], "failed");
    assert_eq!(bad["steps"][1]["outcome"], "failed");
    assert!(
        bad["steps"][1]["reason"]
            .as_str()
            .unwrap()
            .contains("is not an image reference"),
        "{bad:#}"
    );

    assert_eq!(r["revocation_list"]["revoked"], 2);
    assert_eq!(r["revocation_list"]["reinstated"], 1);

    // A period that ends before the scans holds none of them.
    let until = before.to_rfc3339();
    let out = report(
        &nats.url,
        &["--since", "1h", "--until", &until, "--format", "json"],
    );
    let early: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(early["scans"]["scans"], 0);
    assert_eq!(early["remediations"], json!([]));
    assert_eq!(early["revocation_list"]["revoked"], 2);

    // Markdown for a ticket: the figures, and record text escaped.
    let md =
        String::from_utf8(report(&nats.url, &["--since", "1h", "--format", "md"]).stdout).unwrap();
    for row in [
        "| Images scanned | 4 |",
        "| Findings: critical | 4 |",
        "| Images revoked | 3 |",
        "| Images reinstated | 1 |",
        "| Blocked attempts | 2 (admission 1, authz 1) |",
        "| Remediations | 3 |",
        "| Revocation list now | 2 revoked, 1 reinstated |",
    ] {
        assert!(md.contains(row), "{row} missing from:\n{md}");
    }
    assert!(md.contains(&format!("### Run {alpine_run} (revoke-vulnerable)")));
    assert!(md.contains("&lt;script&gt;alert(\"owned\")&lt;/script&gt;"));
    assert!(!md.contains("<script>"), "{md}");

    // HTML: one file, read in a real browser.
    let page = work.path().join("compliance.html");
    let out = report(
        &nats.url,
        &[
            "--since",
            "1h",
            "--format",
            "html",
            "--output",
            page.to_str().unwrap(),
        ],
    );
    assert!(text(&out).contains("compliance report written to"));
    let html = std::fs::read_to_string(&page).unwrap();
    for external in ["http://", "https://", "src=", "<link", "<script"] {
        assert!(!html.contains(external), "the page holds `{external}`");
    }
    let started = Instant::now();
    let dom = String::from_utf8(browse(&page, &["--dump-dom"]).stdout).unwrap();
    eprintln!(
        "chromium ({}) read the report in {:?}",
        browser.display(),
        started.elapsed()
    );
    for table in ["findings", "images", "revocations", "blocked", "list"] {
        assert!(
            dom.contains(&format!("<table id=\"{table}\">")),
            "no table {table} in the DOM:\n{dom}"
        );
    }
    for card in [
        ("images-scanned", 4),
        ("scans", 4),
        ("findings-critical", 4),
        ("findings-high", 2),
        ("revoked", 3),
        ("reinstated", 1),
        ("blocked", 2),
        ("blocked-admission", 1),
        ("blocked-authz", 1),
        ("remediations", 3),
        ("list-revoked", 2),
    ] {
        let shown = format!("id=\"card-{}\"><b>{}</b>", card.0, card.1);
        assert!(dom.contains(&shown), "{shown} missing from the DOM:\n{dom}");
    }
    assert!(dom.contains(&format!(
        "<section class=\"remediation\" id=\"run-{alpine_run}\">"
    )));
    assert!(dom.contains("<td>registry.revoke</td>"));
    assert!(dom.contains("<td>pod shop/cart-7d9f</td>"));
    // The script tag from the report is text in the page, never an element.
    assert!(
        dom.contains("&lt;script&gt;alert(\"owned\")&lt;/script&gt;"),
        "{dom}"
    );
    assert!(!dom.contains("<script"), "{dom}");

    let shot = work.path().join("compliance.png");
    browse(
        &page,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1280,2000",
        ],
    );
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    assert!(
        png.len() > 20_000,
        "a blank screenshot? {} bytes",
        png.len()
    );
}

/// A Trivy report of one image with `n` fixable findings, a quarter of each severity.
fn big_trivy_report(image: &str, n: usize) -> Vec<u8> {
    let sev = ["CRITICAL", "HIGH", "MEDIUM", "LOW"];
    let vulns: Vec<Value> = (0..n)
        .map(|i| {
            json!({
                "VulnerabilityID": format!("CVE-2026-{i:05}"),
                "PkgName": format!("pkg-{i}"),
                "InstalledVersion": "1.0",
                "FixedVersion": "1.1",
                "Severity": sev[i % 4],
                "Title": "a <b>bold</b> title"
            })
        })
        .collect();
    serde_json::to_vec(&json!({
        "SchemaVersion": 2,
        "ReportID": "big-report",
        "ArtifactName": image,
        "ArtifactType": "container_image",
        "Metadata": { "RepoTags": [image] },
        "Results": [{ "Target": image, "Class": "os-pkgs", "Type": "debian", "Vulnerabilities": vulns }]
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn thousands_of_findings_and_tens_of_thousands_of_records_are_reported_quickly() {
    let nats = NatsServer::start();
    let work = tempfile::tempdir().unwrap();
    write(&work.path().join("pb/revoke.yaml"), PLAYBOOK);
    let _engine = Engine::start(&nats.url, &work.path().join("pb"), None, work.path());
    let client = nats.client().await;

    // One report with 4,000 findings, through the engine.
    publish(
        &client,
        "riposte.in.trivy",
        &[big_trivy_report("registry.example.com/big/app:1", 4000)],
    )
    .await;
    wait_for(
        &nats.url,
        Duration::from_secs(60),
        "the big report's run",
        |r| r.iter().any(|x| x.record == RecordKind::Run),
    );

    // 30,000 records straight into the audit stream: 15,000 scans of 1,500 images and 15,000
    // denials of 300 images, 500 records per audit message.
    let mut batch = Vec::new();
    let mut messages = 0;
    for i in 0..30_000usize {
        let r = if i % 2 == 0 {
            let mut r = AuditRecord::new(RecordKind::Event, "no_match", chrono::Utc::now(), "e");
            r.event_id = Some(format!("ev-{i}"));
            r.event = Some(riposte::audit::EventSummary {
                subject: "riposte.in.grype".into(),
                stream_seq: None,
                format: Some("grype".into()),
                source: Some("grype".into()),
                kind: Some("vulnerability".into()),
                severity: Some("high".into()),
                title: Some("scan".into()),
                bytes: 1,
                image: Some(format!(
                    "registry.example.com/team/app-{}:1",
                    (i / 2) % 1500
                )),
                digest: None,
                findings: Some([("high".to_owned(), 3), ("low".to_owned(), 1)].into()),
            });
            r
        } else {
            denial(
                if i % 4 == 1 { "admission" } else { "authz" },
                &format!("registry.example.com/team/app-{}:1", (i / 2) % 300),
                "pod shop/x",
                "deployer",
            )
        };
        batch.push(r);
        if batch.len() == 500 {
            publish_records(&client, &batch).await;
            messages += 1;
            batch.clear();
        }
    }
    assert_eq!(messages, 60);

    for format in ["json", "md", "html"] {
        let started = Instant::now();
        let out = report(&nats.url, &["--since", "1h", "--format", format]);
        let took = started.elapsed();
        eprintln!(
            "report compliance --format {format}: 30,000+ records in {took:?}, {} bytes",
            out.stdout.len()
        );
        if format == "json" {
            let r: Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(r["scans"]["scans"], 15_001);
            assert_eq!(r["scans"]["images"], 1_501);
            assert_eq!(
                r["findings"],
                json!({ "critical": 1000, "high": 1000 + 45_000, "medium": 1000, "low": 1000 + 15_000 })
            );
            assert_eq!(r["blocked"]["total"], 15_000);
            assert_eq!(r["blocked"]["admission"], 7_500);
            assert_eq!(r["blocked"]["authz"], 7_500);
            let by_image = r["blocked"]["by_image"].as_array().unwrap();
            assert_eq!(by_image.len(), 300);
            // Only the latest attempts are kept per image.
            assert!(by_image
                .iter()
                .all(|b| b["attempts"].as_array().unwrap().len() == 10));
            assert_eq!(r["remediations"].as_array().unwrap().len(), 1);
            assert_eq!(r["images"][0]["image"], "registry.example.com/big/app:1");
            assert!(r["records"].as_u64().unwrap() > 30_000);
        }
    }
}
