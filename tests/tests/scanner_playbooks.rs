//! The shipped scanner playbooks end to end: the real `riposte` binary with a real
//! nats-server, the real Docker daemon and the real kube-apiserver (with only the RBAC
//! `riposte rbac playbooks` prints). A Trivy report about an image a container runs revokes the
//! image in the KV bucket, pages its owner with the findings table, and the container is paused
//! by the follow-up playbook; and a report with thousands of findings still matches, revokes and
//! pages with a capped table.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::Path;
use std::time::{Duration, Instant};

use futures::StreamExt;
use riposte::audit::{AuditRecord, RecordKind};
use riposte_connectors::revocation::{ImageRef, RevocationList, State};
use riposte_tests::docker::{docker, docker_ok, Scene, SCENE_LABEL, TEST_IMAGE};
use riposte_tests::kube::KubeApi;
use riposte_tests::*;
use serde_json::{json, Value};

/// The corpus' Trivy report (alpine 3.9.4: two critical CVEs with a fix, four medium), about
/// `image` instead.
fn trivy_report(image: &str) -> Value {
    let text = std::fs::read_to_string(repo_root().join("playbooks/fixtures/trivy-alpine-39.json"))
        .unwrap();
    let mut report: Value = serde_json::from_str(&text).unwrap();
    report["ArtifactName"] = json!(image);
    report["Metadata"]["RepoTags"] = json!([image]);
    report["Results"][0]["Target"] = json!(format!("{image} (alpine 3.9.4)"));
    report
}

/// The same report with `n` vulnerabilities: each a copy of the corpus' first one with its own
/// id, package and severity (critical, high, medium, low in turn), four in five with a fix.
fn report_with_findings(image: &str, n: usize) -> Value {
    let mut report = trivy_report(image);
    let template = report["Results"][0]["Vulnerabilities"][0].clone();
    let severities = ["CRITICAL", "HIGH", "MEDIUM", "LOW"];
    let vulns: Vec<Value> = (0..n)
        .map(|i| {
            let mut v = template.clone();
            let m = v.as_object_mut().unwrap();
            // Descriptions and scores make a 5,000-finding report 16 MB; the rest is kept.
            for k in [
                "Description",
                "CVSS",
                "References",
                "VendorSeverity",
                "CweIDs",
            ] {
                m.remove(k);
            }
            m.insert(
                "VulnerabilityID".into(),
                json!(format!("CVE-2024-{}", 10000 + i)),
            );
            m.insert("PkgName".into(), json!(format!("pkg{}", i % 300)));
            m.insert("Severity".into(), json!(severities[i % 4]));
            if i % 5 == 4 {
                m.remove("FixedVersion");
            } else {
                m.insert("FixedVersion".into(), json!("1.1.20-r5"));
            }
            v
        })
        .collect();
    report["Results"][0]["Vulnerabilities"] = json!(vulns);
    report
}

#[test]
fn a_report_with_thousands_of_findings_still_revokes_and_pages_with_a_capped_table() {
    let n = 5000;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("trivy-5000.json");
    let image = "registry.local/shop/web:1.4";
    std::fs::write(&file, report_with_findings(image, n).to_string()).unwrap();
    let started = Instant::now();
    let out = cli(&[
        "explain",
        file.to_str().unwrap(),
        "--format",
        "trivy",
        "--playbooks",
        repo_root().join("playbooks").to_str().unwrap(),
        "--json",
    ]);
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let explained: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(explained["event"]["findings"].as_array().unwrap().len(), n);
    let decision = explained["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["playbook"] == "vulnerable-image")
        .unwrap();
    assert_eq!(decision["outcome"], "planned", "{decision:#}");
    let step = |id: &str| {
        decision["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == id)
            .unwrap_or_else(|| panic!("no step {id}: {decision:#}"))
            .clone()
    };
    // Every fixable critical and high id is a reason (1,000 of each: one in five has no fix).
    let revoke = step("revoke");
    assert_eq!(revoke["outcome"], "planned");
    let findings = revoke["args"]["findings"].as_array().unwrap();
    assert_eq!(findings.len(), 2000);
    assert_eq!(findings[0], "CVE-2024-10000");
    assert_eq!(
        revoke["args"]["reason"],
        "trivy scan: 1000 critical and 1000 high with a fix: CVE-2024-10000, CVE-2024-10001, \
         CVE-2024-10005, CVE-2024-10008, CVE-2024-10012 and 1995 more"
    );
    // The page: 20 rows, critical first, and how many more.
    let page = step("notify-1");
    let payload = &page["args"]["payload"];
    let rows = payload["findings"].as_array().unwrap();
    assert_eq!(rows.len(), 20, "{payload:#}");
    assert!(
        rows.iter().all(|r| r["severity"] == "critical"),
        "{payload:#}"
    );
    assert_eq!(
        rows[0],
        json!({"id": "CVE-2024-10000", "severity": "critical", "package": "pkg0",
               "installed": "1.1.1b-r1", "fixed": "1.1.20-r5"})
    );
    assert_eq!(payload["more"], "and 1980 more");
    assert_eq!(payload["owner"], "platform-security");
    assert!(
        step("containers")["outcome"] == "planned" && step("pods")["outcome"] == "planned",
        "{decision:#}"
    );
    eprintln!("explain of a {n}-finding report (debug build): {took:?}");
}

/// Containers this test runs from its own image, removed when dropped.
struct Started(Vec<String>);

impl Drop for Started {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = docker(&["rm", "--force", name]);
        }
    }
}

fn wait_until(what: &str, within: Duration, done: impl Fn() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

async fn next_json(sub: &mut async_nats::Subscriber, what: &str) -> Value {
    let msg = tokio::time::timeout(Duration::from_secs(40), sub.next())
        .await
        .unwrap_or_else(|_| panic!("no {what} within 40s"))
        .unwrap();
    serde_json::from_slice(&msg.payload).unwrap()
}

fn run_of<'a>(records: &'a [AuditRecord], playbook: &str) -> Option<&'a AuditRecord> {
    records
        .iter()
        .find(|r| r.record == RecordKind::Run && r.playbook.as_deref() == Some(playbook))
}

/// An engine config whose `kubernetes` instance reaches the test API server with the `riposte`
/// token.
fn config(k: &KubeApi, work: &Path) -> std::path::PathBuf {
    let token = work.join("riposte-token");
    std::fs::write(&token, &k.riposte_token).unwrap();
    let cfg = work.join("riposte.yaml");
    write(
        &cfg,
        &format!(
            "connectors:\n  kubernetes:\n    type: kubernetes\n    url: {}\n    ca_file: {}\n    token_file: {}\n",
            k.url,
            k.ca_pem.display(),
            token.display()
        ),
    );
    cfg
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trivy_report_revokes_the_image_pages_its_owner_and_pauses_the_container_running_it() {
    let mut scene = Scene::new("scanner");
    let mut started = Started(Vec::new());
    // An image of its own (so no other container shares its id), under a unique tag; removed
    // with the scene, after the container.
    let repo = scene.name("app");
    scene.track_image_repo(&repo);
    let image = format!("{repo}:v1");
    let tmp = scene.name("commit");
    started.0.push(tmp.clone());
    docker_ok(&["create", "--name", &tmp, TEST_IMAGE]);
    docker_ok(&[
        "commit",
        "--change",
        "LABEL riposte-test.image=scanner",
        &tmp,
        &image,
    ]);
    docker_ok(&["rm", &tmp]);
    let web = scene.name("web");
    started.0.push(web.clone());
    let label = format!("{SCENE_LABEL}={}", scene.prefix());
    let web_id = docker_ok(&[
        "run",
        "-d",
        "--network",
        "none",
        "--name",
        &web,
        "--label",
        &label,
        &image,
    ]);

    let k = KubeApi::start();
    let rbac = cli(&[
        "rbac",
        repo_root().join("playbooks").to_str().unwrap(),
        "--name",
        "riposte-playbooks",
    ]);
    assert!(
        rbac.status.success(),
        "{}",
        String::from_utf8_lossy(&rbac.stderr)
    );
    let role: Value = serde_yaml::from_str(&String::from_utf8_lossy(&rbac.stdout)).unwrap();
    k.grant_riposte("riposte-playbooks", role["rules"].clone())
        .await;

    let nats = NatsServer::start();
    let work = tempfile::tempdir().unwrap();
    let cfg = config(&k, work.path());
    let engine = Engine::start(
        &nats.url,
        &repo_root().join("playbooks"),
        Some(&cfg),
        work.path(),
    );
    let client = nats.client().await;
    let mut owner_pages = client
        .subscribe("riposte.pages.vulnerable-image")
        .await
        .unwrap();
    let mut running_pages = client
        .subscribe("riposte.pages.revoked-image-running")
        .await
        .unwrap();
    client.flush().await.unwrap();

    let published = Instant::now();
    publish(
        &client,
        "riposte.in.trivy",
        &[trivy_report(&image).to_string().into_bytes()],
    )
    .await;

    // The owner's page: the findings table, and what runs the image.
    let page = next_json(&mut owner_pages, "page to the image's owner").await;
    assert_eq!(page["image"], image.as_str(), "{page:#}");
    assert_eq!(page["owner"], "platform-security");
    assert_eq!(page["revocation"], "ok", "{page:#}\n{}", engine.log_text());
    assert_eq!(
        page["running"],
        json!({"containers": 1, "pods": 0}),
        "{page:#}"
    );
    assert_eq!(page["findings"].as_array().unwrap().len(), 2, "{page:#}");
    assert_eq!(page["findings"][0]["id"], "CVE-2019-14697");
    assert_eq!(page["outcome"], "ok");

    // The revocation is in the bucket, with its reason, the event and the playbook.
    let js = async_nats::jetstream::new(client.clone());
    let list = RevocationList::open(&js, "riposte", 1, None).await.unwrap();
    let (entry, _) = list
        .find(&ImageRef::parse(&image).unwrap())
        .await
        .unwrap()
        .expect("the image is revoked");
    assert_eq!(entry.state, State::Revoked);
    assert_eq!(entry.findings, ["CVE-2019-14697"]);
    assert_eq!(entry.playbook.as_deref(), Some("vulnerable-image"));
    assert!(entry.reason.contains("CVE-2019-14697"), "{}", entry.reason);
    let revoked_after = published.elapsed();

    // The container running it is paused by the follow-up playbook, which says so.
    let done = next_json(&mut running_pages, "page of the paused container").await;
    assert_eq!(done["container"]["id"], web_id.as_str(), "{done:#}");
    assert_eq!(done["steps"]["pause"], "ok", "{done:#}");
    assert_eq!(done["response"], "pause the container");
    assert!(done["undo"]
        .as_str()
        .unwrap()
        .starts_with("riposte revert "));
    wait_until("the container is paused", Duration::from_secs(10), || {
        docker_ok(&["inspect", "--format", "{{.State.Paused}}", &web]) == "true"
    });

    // The audit trail has both runs, ok, and the revocation record.
    let records = wait_for(&nats.url, Duration::from_secs(30), "both runs", |r| {
        run_of(r, "vulnerable-image").is_some() && run_of(r, "revoked-image-running").is_some()
    });
    assert_eq!(run_of(&records, "vulnerable-image").unwrap().outcome, "ok");
    assert_eq!(
        run_of(&records, "revoked-image-running").unwrap().outcome,
        "ok"
    );
    assert!(
        records.iter().any(|r| r.record == RecordKind::Revocation),
        "no revocation record"
    );
    eprintln!("scan report published to revocation stored and read back: {revoked_after:?}");
    drop(started);
}
