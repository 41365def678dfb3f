//! The admission webhook end to end: a real kube-apiserver (1.20, etcd, TLS, RBAC) calls
//! `riposte run` through a ValidatingWebhookConfiguration; creating a pod or a Deployment from
//! a revoked image (by reference or by digest) is refused by the API server with riposte's
//! reason, a clean image is admitted, a reinstated image is admitted again within moments,
//! every denial is in the audit trail, and a malformed review is answered 400.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::Method;
use riposte::audit::RecordKind;
use riposte_connectors::revocation::{Decision, ImageRef, Revocation, RevocationList, State};
use riposte_tests::kube::KubeApi;
use riposte_tests::{certificates, free_port, http_get, wait_for, write, Engine, NatsServer};
use serde_json::{json, Value};

const PLAYBOOK: &str = "apiVersion: riposte/v1\nkind: Playbook\nmetadata: { name: echo }\nspec:\n  match: { sources: [falco] }\n  steps:\n    - { id: a, action: log.info, with: { message: '${{ event.title }}' }, timeout: 60s }\n";
const DIGEST: &str = "sha256:4b2f6c1e0e8d5f3a9c7b1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f2a";

fn revocation(digest: Option<&str>, reference: Option<&str>) -> Revocation {
    Revocation {
        digest: digest.map(str::to_owned),
        reference: reference.map(|r| ImageRef::parse(r).unwrap().tagged().unwrap()),
        state: State::Revoked,
        reason: "critical vulnerabilities with a fix available".into(),
        findings: vec!["CVE-2024-45490".into(), "CVE-2024-45491".into()],
        event_id: Some("evt-trivy-1".into()),
        playbook: Some("revoke-vulnerable-images".into()),
        run_id: None,
        revoked: Decision {
            by: "riposte".into(),
            at: "2026-11-23T12:00:00Z".into(),
            reason: None,
        },
        reinstated: None,
        registry: None,
    }
}

fn pod(name: &str, image: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
           "spec": {"containers": [{"name": "main", "image": image}]}})
}

fn deployment(name: &str, image: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
           "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                    "template": {"metadata": {"labels": {"app": name}},
                                 "spec": {"containers": [{"name": "main", "image": image}]}}}})
}

fn metric(engine: &Engine, line_start: &str) -> f64 {
    let (_, text) = http_get(&engine.metrics, "/metrics").unwrap();
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

const PODS: &str = "/api/v1/namespaces/shop/pods";
const DEPLOYMENTS: &str = "/apis/apps/v1/namespaces/shop/deployments";

#[tokio::test(flavor = "multi_thread")]
async fn the_api_server_refuses_pods_and_workloads_from_revoked_images() {
    let k = KubeApi::start();
    let nats = NatsServer::start();
    let work = tempfile::tempdir().unwrap();
    write(&work.path().join("pb/echo.yaml"), PLAYBOOK);
    certificates(work.path());
    let port = free_port();
    let cfg = work.path().join("riposte.yaml");
    write(
        &cfg,
        &format!(
            "images:\n  admission:\n    listen: 127.0.0.1:{port}\n    tls:\n      cert_file: {}\n      key_file: {}\n",
            work.path().join("server.pem").display(),
            work.path().join("server.key").display()
        ),
    );
    let engine = Engine::start(&nats.url, &work.path().join("pb"), Some(&cfg), work.path());

    let client = nats.client().await;
    let js = async_nats::jetstream::new(client);
    let list = RevocationList::open(&js, "riposte", 1, None).await.unwrap();
    list.revoke(revocation(None, Some("registry.local/shop/web:1.4")))
        .await
        .unwrap();
    list.revoke(revocation(Some(DIGEST), None)).await.unwrap();

    let (s, v) = k
        .admin_json(
            Method::POST,
            "/api/v1/namespaces",
            Some(json!({"metadata": {"name": "shop"}})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let ca = std::fs::read(work.path().join("ca.pem")).unwrap();
    let webhook = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": "riposte-images"},
        "webhooks": [{
            "name": "images.riposte.io",
            "clientConfig": {
                "url": format!("https://127.0.0.1:{port}/v1/admission"),
                "caBundle": base64(&ca),
            },
            "rules": [
                {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"], "resources": ["pods"]},
                {"apiGroups": ["apps"], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"], "resources": ["deployments"]},
            ],
            "failurePolicy": "Fail",
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 5,
        }],
    });
    let (s, v) = k
        .admin_json(
            Method::POST,
            "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations",
            Some(webhook),
        )
        .await;
    assert_eq!(s, 201, "{v}");

    // The API server picks the configuration up, and riposte's index the revocations, within
    // moments.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (status, refused) = loop {
        let (s, v) = k
            .admin_json(
                Method::POST,
                PODS,
                Some(pod("web", "registry.local/shop/web:1.4")),
            )
            .await;
        if s != 201 {
            break (s, v);
        }
        assert!(
            Instant::now() < deadline,
            "a pod from a revoked image was admitted: {v}\nengine log:\n{}\napi server log:\n{}",
            engine.log_text(),
            k.log()
        );
        k.admin_json(Method::DELETE, &format!("{PODS}/web"), None)
            .await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let message = refused["message"].as_str().unwrap_or_default().to_owned();
    assert_eq!(status, 403, "{refused}");
    assert_eq!(
        message,
        "admission webhook \"images.riposte.io\" denied the request: riposte: image \
         registry.local/shop/web:1.4 is revoked: critical vulnerabilities with a fix available \
         (findings CVE-2024-45490, CVE-2024-45491, revoked by playbook revoke-vulnerable-images \
         at 2026-11-23T12:00:00Z)",
        "{refused}"
    );

    // By digest, whatever the repository is called.
    let (s, v) = k
        .admin_json(
            Method::POST,
            PODS,
            Some(pod(
                "mirror",
                &format!("mirror.example:5000/any/name@{DIGEST}"),
            )),
        )
        .await;
    assert_eq!(s, 403, "{v}");
    assert!(v["message"].as_str().unwrap().contains("is revoked"), "{v}");

    // A clean image is admitted.
    let (s, v) = k
        .admin_json(
            Method::POST,
            PODS,
            Some(pod("clean", "registry.local/shop/web:1.5")),
        )
        .await;
    assert_eq!(s, 201, "{v}");

    // An image riposte cannot read is let through (on_undecided: allow), with a warning the
    // API server passes on, and counted.
    let resp = k
        .http()
        .post(format!("{}{PODS}", k.url))
        .bearer_auth(&k.admin_token)
        .json(&pod("odd", "Registry.Local/Shop/WEB"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    let warning = resp
        .headers()
        .get("warning")
        .and_then(|w| w.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        warning.contains("riposte could not check image Registry.Local/Shop/WEB"),
        "{warning}"
    );
    assert_eq!(
        metric(
            &engine,
            "riposte_enforcement_undecided_total{point=\"admission\",answer=\"allowed\"}"
        ),
        1.0
    );

    // Workloads are refused through their pod template.
    let (s, v) = k
        .admin_json(
            Method::POST,
            DEPLOYMENTS,
            Some(deployment("web", "registry.local/shop/web:1.4")),
        )
        .await;
    assert_eq!(s, 403, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("riposte: image registry.local/shop/web:1.4 is revoked"),
        "{v}"
    );

    // Reinstated: admitted again within moments.
    list.reinstate(
        &ImageRef::parse("registry.local/shop/web:1.4").unwrap(),
        Decision {
            by: "alice".into(),
            at: "2026-11-23T13:00:00Z".into(),
            reason: Some("rebuilt with the fix".into()),
        },
    )
    .await
    .unwrap()
    .unwrap();
    let started = Instant::now();
    loop {
        let (s, v) = k
            .admin_json(
                Method::POST,
                DEPLOYMENTS,
                Some(deployment("web", "registry.local/shop/web:1.4")),
            )
            .await;
        if s == 201 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "still refused after reinstating: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reinstated_within = started.elapsed();

    // A review the webhook cannot read is answered 400, with what is wrong.
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .tls_built_in_root_certs(false)
        .build()
        .unwrap();
    let url = format!("https://127.0.0.1:{port}/v1/admission");
    for (body, says) in [
        ("not json".to_owned(), "is not an AdmissionReview"),
        (
            json!({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", "request": {"uid": "u"}}).to_string(),
            "admissionReviewVersions: [v1]",
        ),
        (
            json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {}}).to_string(),
            "no `request.uid`",
        ),
        (" ".repeat(4 * 1024 * 1024), "larger than"),
    ] {
        let resp = http.post(&url).body(body).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 400);
        let text = resp.text().await.unwrap();
        assert!(text.contains(says), "{text}");
    }
    // An oversized review still being sent when the webhook has seen enough is refused with
    // 400, not by closing the connection under the sender.
    let chunks = [vec![b' '; 3 * 1024 * 1024 + 1], vec![b' '; 512 * 1024]];
    let slow = futures::stream::iter(chunks).then(|chunk| async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok::<_, std::io::Error>(chunk)
    });
    let resp = http
        .post(&url)
        .body(reqwest::Body::wrap_stream(slow))
        .send()
        .await
        .expect("the webhook answers an oversized review rather than dropping the connection");
    assert_eq!(resp.status().as_u16(), 400);
    let text = resp.text().await.unwrap();
    assert!(text.contains("larger than"), "{text}");

    // Every denial is in the audit trail, with the image, the object and who asked.
    let records = wait_for(
        &nats.url,
        Duration::from_secs(20),
        "admission records",
        |r| {
            let enf: Vec<_> = r
                .iter()
                .filter(|x| {
                    x.record == RecordKind::Enforcement && x.action.as_deref() == Some("admission")
                })
                .collect();
            enf.iter().filter(|x| x.outcome == "denied").count() >= 3
                && enf.iter().filter(|x| x.outcome == "error").count() >= 4
        },
    );
    let denial = records
        .iter()
        .find(|x| {
            x.record == RecordKind::Enforcement
                && x.outcome == "denied"
                && x.output.as_ref().unwrap()["object"] == "Deployment shop/web"
        })
        .unwrap();
    let out = denial.output.as_ref().unwrap();
    assert_eq!(out["image"], "registry.local/shop/web:1.4");
    assert_eq!(out["user"], "admin");
    assert_eq!(out["operation"], "CREATE");
    assert_eq!(out["revocation"]["playbook"], "revoke-vulnerable-images");
    assert_eq!(out["revocation"]["event_id"], "evt-trivy-1");
    assert!(denial.reason.as_deref().unwrap().contains("is revoked"));
    assert!(records.iter().any(|x| x.record == RecordKind::Enforcement
        && x.outcome == "denied"
        && x.output.as_ref().unwrap()["object"] == "Pod shop/mirror"));

    assert!(
        metric(
            &engine,
            "riposte_admission_decisions_total{decision=\"denied\"}"
        ) >= 3.0
    );
    assert!(
        metric(
            &engine,
            "riposte_admission_decisions_total{decision=\"allowed\"}"
        ) >= 2.0
    );
    assert_eq!(
        metric(
            &engine,
            "riposte_enforcement_malformed_requests_total{point=\"admission\",reason=\"no_uid\"}"
        ),
        1.0
    );
    println!("reinstated image admitted again after {reinstated_within:?}");
}

/// Standard base64, for the webhook's caBundle.
fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
