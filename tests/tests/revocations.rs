//! The revocation list against a real nats-server: entries, their history, concurrent
//! writers, the audit recorder, and the in-memory index following the bucket.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use riposte::audit::{AuditSink, RecordKind};
use riposte::clock::SystemClock;
use riposte::images::AuditRecorder;
use riposte_connectors::revocation::{
    Decision, ImageRef, Revocation, RevocationIndex, RevocationList, State,
};
use riposte_tests::{audit_records, NatsServer};
use tokio_util::sync::CancellationToken;

fn digest(n: u8) -> String {
    format!("sha256:{}", format!("{n:02x}").repeat(32))
}

fn revocation(digest: Option<String>, reference: Option<&str>, finding: &str) -> Revocation {
    Revocation {
        digest,
        reference: reference.map(str::to_owned),
        state: State::Revoked,
        reason: format!("{finding} (critical, fixed)"),
        findings: vec![finding.to_owned()],
        event_id: Some("ev-1".into()),
        playbook: Some("vulnerable-image".into()),
        run_id: Some("run-1".into()),
        revoked: Decision {
            by: "riposte".into(),
            at: "2026-11-23T10:00:00Z".into(),
            reason: None,
        },
        reinstated: None,
        registry: None,
    }
}

async fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ok() {
        assert!(Instant::now() < deadline, "{what} within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn revocations_are_kept_with_their_history_audited_and_followed_by_the_index() {
    let nats = NatsServer::start();
    let js = async_nats::jetstream::new(nats.client().await);
    riposte::bus::ensure_streams(&js, &riposte::config::Config::default_with_bindings())
        .await
        .unwrap();
    let recorder = AuditRecorder {
        audit: AuditSink::JetStream {
            js: Box::new(js.clone()),
            subject: "riposte.audit".into(),
        },
        replica: "test".into(),
        clock: Arc::new(SystemClock),
    };
    let list = RevocationList::open(&js, "riposte", 1, Some(Arc::new(recorder)))
        .await
        .unwrap();
    let index = RevocationIndex::new();
    let shutdown = CancellationToken::new();
    tokio::spawn(index.clone().follow(list.clone(), shutdown.clone()));
    wait_until("an empty list makes the index ready", || index.is_ready()).await;

    // By digest and reference.
    let d = digest(0xab);
    let (change, already) = list
        .revoke(revocation(
            Some(d.clone()),
            Some("localhost:5000/shop/web:1.2"),
            "CVE-2026-1",
        ))
        .await
        .unwrap();
    assert!(!already);
    assert_eq!(change.op, "revoked");
    let tagged = ImageRef::parse("localhost:5000/shop/web:1.2").unwrap();
    let pinned = ImageRef::parse(&format!("localhost:5000/shop/web@{d}")).unwrap();
    wait_until("the index sees the revocation", || {
        index.lookup(&tagged).is_some()
    })
    .await;
    assert!(index.lookup(&pinned).is_some());
    assert!(index
        .lookup(&ImageRef::parse("localhost:5000/shop/web:1.3").unwrap())
        .is_none());
    let (found, _) = list.find(&tagged).await.unwrap().unwrap();
    assert_eq!(found.reason, "CVE-2026-1 (critical, fixed)");
    assert_eq!(found.playbook.as_deref(), Some("vulnerable-image"));

    // A second revocation of the same image adds its findings and keeps the first.
    let (again, already) = list
        .revoke(revocation(Some(d.clone()), None, "CVE-2026-2"))
        .await
        .unwrap();
    assert!(already);
    assert_eq!(again.entry.findings, ["CVE-2026-1", "CVE-2026-2"]);
    assert_eq!(again.entry.reason, "CVE-2026-1 (critical, fixed)");

    // By reference only: `nginx` is `docker.io/library/nginx:latest`.
    list.revoke(revocation(
        None,
        Some("docker.io/library/nginx:latest"),
        "CVE-2026-3",
    ))
    .await
    .unwrap();
    let nginx = ImageRef::parse("nginx").unwrap();
    wait_until("the index sees the reference", || {
        index.lookup(&nginx).is_some()
    })
    .await;
    assert_eq!(index.len(), 2);

    // Reinstated: kept as proof, no longer enforced, and reinstating twice changes nothing.
    let back = list
        .reinstate(
            &pinned,
            Decision {
                by: "alice".into(),
                at: "2026-11-23T11:00:00Z".into(),
                reason: Some("rebuilt on openssl 3.1.4".into()),
            },
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back.op, "reinstated");
    assert_eq!(back.entry.state, State::Reinstated);
    wait_until("the index drops the reinstated image", || {
        index.lookup(&tagged).is_none()
    })
    .await;
    let twice = list
        .reinstate(
            &tagged,
            Decision {
                by: "bob".into(),
                at: "2026-11-23T11:01:00Z".into(),
                reason: None,
            },
        )
        .await
        .unwrap();
    assert!(twice.is_none());
    let (kept, _) = list.find(&tagged).await.unwrap().unwrap();
    assert_eq!(
        kept.reinstated.as_ref().map(|d| d.by.as_str()),
        Some("alice")
    );
    let history = list.history(&kept.key().unwrap()).await.unwrap();
    let states: Vec<State> = history.iter().map(|r| r.state).collect();
    assert_eq!(
        states,
        [State::Revoked, State::Revoked, State::Reinstated],
        "every revision is kept"
    );

    // A fresh index reads what is there.
    let late = RevocationIndex::new();
    tokio::spawn(late.clone().follow(list.clone(), shutdown.clone()));
    wait_until("a new index catches up", || late.is_ready()).await;
    assert_eq!(late.len(), 1);
    assert!(late.lookup(&nginx).is_some());

    // Every change is in the audit trail.
    let url = nats.url.clone();
    let records = tokio::task::spawn_blocking(move || audit_records(&url))
        .await
        .unwrap();
    let changes: Vec<(&str, Option<&str>)> = records
        .iter()
        .filter(|r| r.record == RecordKind::Revocation)
        .map(|r| (r.outcome.as_str(), r.reason.as_deref()))
        .collect();
    assert_eq!(
        changes,
        [
            ("revoked", Some("CVE-2026-1 (critical, fixed)")),
            ("revoked", Some("CVE-2026-1 (critical, fixed)")),
            ("revoked", Some("CVE-2026-3 (critical, fixed)")),
            ("reinstated", Some("rebuilt on openssl 3.1.4")),
        ]
    );
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_revocations_of_one_image_make_one_entry_with_every_finding() {
    let nats = NatsServer::start();
    let js = async_nats::jetstream::new(nats.client().await);
    let list = RevocationList::open(&js, "race", 1, None).await.unwrap();
    let d = digest(0x42);
    let mut tasks = Vec::new();
    for i in 0..20 {
        let list = list.clone();
        let d = d.clone();
        tasks.push(tokio::spawn(async move {
            list.revoke(revocation(Some(d), None, &format!("CVE-2026-{i:02}")))
                .await
        }));
    }
    let mut first = 0;
    for t in tasks {
        let (_, already) = t.await.unwrap().unwrap();
        first += usize::from(!already);
    }
    assert_eq!(first, 1, "exactly one writer creates the entry");
    let all = list.all().await.unwrap();
    assert_eq!(all.len(), 1);
    let mut findings = all[0].0.findings.clone();
    findings.sort();
    assert_eq!(findings.len(), 20, "no finding is lost: {findings:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_entry_without_digest_or_reference_is_refused() {
    let nats = NatsServer::start();
    let js = async_nats::jetstream::new(nats.client().await);
    let list = RevocationList::open(&js, "bad", 1, None).await.unwrap();
    let e = list
        .revoke(revocation(None, None, "CVE-1"))
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("needs an image digest or reference"),
        "{e}"
    );
    let e = list
        .revoke(revocation(Some("sha256:short".into()), None, "CVE-1"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("digest or reference"), "{e}");
}
