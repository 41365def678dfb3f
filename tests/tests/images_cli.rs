//! End-to-end tests of `riposte images`: the real binary against a real nats-server and a real
//! engine (which creates the audit stream the CLI's changes are recorded in).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::process::Output;
use std::time::Duration;

use riposte::audit::RecordKind;
use riposte_tests::*;
use serde_json::Value;

const PLAYBOOK: &str = r#"
apiVersion: riposte/v1
kind: Playbook
metadata:
  name: log-scans
spec:
  match:
    sources: [trivy]
  steps:
    - id: record
      action: log.info
      with: { message: "${{ event.title }}" }
"#;

const CART: &str = "localhost:5000/shop/cart:1.4";

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn images(nats: &str, args: &[&str]) -> Output {
    let mut all = vec!["images"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--nats", nats]);
    cli(&all)
}

fn digest(c: char) -> String {
    format!("sha256:{}", c.to_string().repeat(64))
}

fn engine(nats: &NatsServer) -> (Engine, tempfile::TempDir) {
    let work = tempfile::tempdir().unwrap();
    write(&work.path().join("pb/log.yaml"), PLAYBOOK);
    let e = Engine::start(&nats.url, &work.path().join("pb"), None, work.path());
    (e, work)
}

#[test]
fn a_revoked_image_fails_the_check_with_its_reason_until_it_is_reinstated() {
    let nats = NatsServer::start();
    let (_engine, _work) = engine(&nats);

    let before = images(&nats.url, &["check", CART]);
    assert_eq!(before.status.code(), Some(0), "{}", text(&before));
    assert!(text(&before).contains("localhost:5000/shop/cart:1.4: not revoked"));

    let revoked = images(
        &nats.url,
        &[
            "revoke",
            CART,
            "--reason",
            "xz backdoor",
            "--as",
            "alice",
            "--finding",
            "CVE-2024-3094",
        ],
    );
    assert_eq!(revoked.status.code(), Some(0), "{}", text(&revoked));

    // By the same reference, spelled differently, and among other images.
    for args in [
        vec!["check", CART],
        vec!["check", "localhost:5000/shop/cart:1.4", "nginx:1.25"],
    ] {
        let out = images(&nats.url, &args);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        let t = text(&out);
        assert!(
            t.contains("REVOKED  localhost:5000/shop/cart:1.4: revoked")
                && t.contains("by alice: xz backdoor")
                && t.contains("[findings: CVE-2024-3094]"),
            "{t}"
        );
    }

    // JSON for tools: status, reason, findings, who.
    let json = images(&nats.url, &["check", CART, "nginx", "--format", "json"]);
    assert_eq!(json.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["revoked"], 1);
    assert_eq!(v["exit_code"], 1);
    assert_eq!(v["images"][0]["status"], "revoked");
    assert_eq!(v["images"][0]["entry"]["reason"], "xz backdoor");
    assert_eq!(v["images"][0]["entry"]["findings"][0], "CVE-2024-3094");
    assert_eq!(v["images"][0]["entry"]["revoked"]["by"], "alice");
    assert_eq!(v["images"][1]["status"], "not_revoked");
    assert_eq!(
        v["images"][1]["reference"],
        "docker.io/library/nginx:latest"
    );

    // Revoked by digest: any reference carrying that digest is refused.
    let d = digest('a');
    let by_digest = images(
        &nats.url,
        &[
            "revoke",
            &format!("localhost:5000/shop/api@{d}"),
            "--reason",
            "secret in layer",
            "--as",
            "carol",
        ],
    );
    assert!(by_digest.status.success(), "{}", text(&by_digest));
    let other_name = images(&nats.url, &["check", &format!("mirror.local/api:9@{d}")]);
    assert_eq!(other_name.status.code(), Some(1), "{}", text(&other_name));
    assert!(text(&other_name).contains("secret in layer"));

    let list = images(&nats.url, &["list"]);
    assert!(list.status.success());
    let listed = String::from_utf8_lossy(&list.stdout);
    assert!(listed.contains(CART) && listed.contains(&d), "{listed}");
    assert!(text(&list).contains("2 revoked image(s)"));

    let back = images(
        &nats.url,
        &["reinstate", CART, "--as", "bob", "--reason", "rebuilt"],
    );
    assert_eq!(back.status.code(), Some(0), "{}", text(&back));
    let after = images(&nats.url, &["check", CART]);
    assert_eq!(after.status.code(), Some(0), "{}", text(&after));
    assert!(text(&after).contains("reinstated") && text(&after).contains("by bob: rebuilt"));
    let again = images(
        &nats.url,
        &["reinstate", CART, "--as", "bob", "--reason", "rebuilt"],
    );
    assert_eq!(again.status.code(), Some(3), "{}", text(&again));

    let revoked_only = String::from_utf8_lossy(&images(&nats.url, &["list"]).stdout).to_string();
    assert!(!revoked_only.contains(CART), "{revoked_only}");
    let all = images(&nats.url, &["list", "--all", "--format", "json"]);
    let entries: Vec<Value> = String::from_utf8_lossy(&all.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(entries.len(), 2);
    assert!(entries
        .iter()
        .any(|e| e["reference"] == CART && e["state"] == "reinstated"));

    let history = images(&nats.url, &["history", CART, "--format", "json"]);
    assert!(history.status.success(), "{}", text(&history));
    let revisions: Vec<Value> = String::from_utf8_lossy(&history.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(revisions.len(), 2, "{}", text(&history));
    assert_eq!(revisions[0]["state"], "revoked");
    assert_eq!(revisions[0]["revoked"]["by"], "alice");
    assert_eq!(revisions[1]["state"], "reinstated");
    assert_eq!(revisions[1]["reinstated"]["by"], "bob");
    assert_eq!(revisions[1]["reinstated"]["reason"], "rebuilt");
    let never = images(&nats.url, &["history", "nginx"]);
    assert_eq!(never.status.code(), Some(3));
    assert!(text(&never).contains("was never revoked"));

    // Every change is in the audit trail, recorded by the CLI.
    let records = wait_for(
        &nats.url,
        Duration::from_secs(10),
        "three revocation records",
        |r| {
            r.iter()
                .filter(|x| x.record == RecordKind::Revocation)
                .count()
                == 3
        },
    );
    let changes: Vec<_> = records
        .iter()
        .filter(|x| x.record == RecordKind::Revocation)
        .collect();
    assert!(changes.iter().all(|c| c.replica == "cli"));
    let outcomes: Vec<&str> = changes.iter().map(|c| c.outcome.as_str()).collect();
    assert_eq!(outcomes, ["revoked", "revoked", "reinstated"]);
    let first = changes[0].output.as_ref().unwrap();
    assert_eq!(first["reference"], CART);
    assert_eq!(first["revoked"]["by"], "alice");
    assert_eq!(changes[0].reason.as_deref(), Some("xz backdoor"));
    assert_eq!(changes[2].reason.as_deref(), Some("rebuilt"));
}

#[test]
fn the_check_cannot_decide_a_bad_reference_or_without_nats() {
    let nats = NatsServer::start();
    let (_engine, _work) = engine(&nats);

    let bad = images(&nats.url, &["check", "nginx:1.25", "Shop/Cart:1"]);
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));
    let t = text(&bad);
    assert!(
        t.contains("ok       docker.io/library/nginx:1.25: not revoked"),
        "{t}"
    );
    assert!(
        t.contains("ERROR    Shop/Cart:1: `Shop/Cart:1` is not an image reference: the repository must be lowercase"),
        "{t}"
    );
    let json = images(&nats.url, &["check", "app@sha256:12", "--format", "json"]);
    assert_eq!(json.status.code(), Some(2));
    let v: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["images"][0]["status"], "undecided");
    assert!(v["images"][0]["error"]
        .as_str()
        .unwrap()
        .contains("the digest is not sha256:<64 hex>"));

    // A revoked image outweighs an undecided one: the pipeline must stop either way.
    let revoked = images(
        &nats.url,
        &["revoke", "nginx:1.25", "--reason", "r", "--as", "alice"],
    );
    assert!(revoked.status.success(), "{}", text(&revoked));
    let mixed = images(&nats.url, &["check", "nginx:1.25", "Bad"]);
    assert_eq!(mixed.status.code(), Some(1), "{}", text(&mixed));

    let away = format!("nats://127.0.0.1:{}", free_port());
    let out = images(&away, &["check", "nginx:1.25"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("cannot decide docker.io/library/nginx:1.25")
            && t.contains("cannot connect to NATS"),
        "{t}"
    );
    let json = images(&away, &["check", "nginx:1.25", "--format", "json"]);
    assert_eq!(json.status.code(), Some(2));
    let v: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["undecided"], 1);
}

#[test]
fn a_change_is_refused_where_it_cannot_be_audited() {
    let nats = NatsServer::start();
    let out = images(
        &nats.url,
        &["revoke", CART, "--reason", "r", "--as", "alice"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("no audit stream `RIPOSTE_AUDIT`")
            && text(&out).contains("to record the change in"),
        "{}",
        text(&out)
    );
    let check = images(&nats.url, &["check", CART]);
    assert_eq!(check.status.code(), Some(0), "{}", text(&check));
    let empty = images(
        &nats.url,
        &["revoke", CART, "--reason", " ", "--as", "alice"],
    );
    assert_eq!(empty.status.code(), Some(2));
    assert!(text(&empty).contains("--reason must not be empty"));
}
