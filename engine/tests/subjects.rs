//! What each producer's event names for enrichment (the container, pod and node connectors
//! look up), from real payloads: Falco's k8s fields, Tetragon's pod, the audit log's objectRef,
//! Alertmanager's `namespace` and `pod` labels.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
use std::path::Path;

use riposte::event::Source;
use riposte::formats::normalize;
use riposte::runner::subject_of;

fn subject(format: Source, payload: &[u8]) -> riposte_connectors::Subject {
    let events = normalize(format, payload, chrono::Utc::now()).unwrap();
    subject_of(&events[0]).expect("the event names something")
}

fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../playbooks/fixtures")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn every_producer_that_knows_the_pod_names_it() {
    let s = subject(Source::Falco, &fixture("falco-shell-in-container.json"));
    assert_eq!(s.pod.as_deref(), Some("kubecon"));
    assert_eq!(s.namespace.as_deref(), Some("default"));
    assert!(s.container_id.is_some());

    let s = subject(Source::Tetragon, &fixture("tetragon-exec.json"));
    assert_eq!(
        (s.namespace.as_deref(), s.pod.as_deref()),
        (Some("default"), Some("xwing"))
    );

    let s = subject(Source::K8sAudit, &fixture("k8s-audit-exec-pod.json"));
    assert_eq!(
        (s.namespace.as_deref(), s.pod.as_deref()),
        (Some("default"), Some("nginx-deployment-7998647bdf-phvq7"))
    );

    let alert = serde_json::json!({
        "version": "4", "status": "firing", "receiver": "riposte", "groupKey": "{}:{}",
        "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {}, "externalURL": "",
        "alerts": [{"status": "firing", "labels": {"alertname": "KubePodCrashLooping",
            "namespace": "shop", "pod": "web-5d4f8-a", "node": "node-1", "severity": "critical"},
            "annotations": {}, "startsAt": "2026-11-23T12:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "", "fingerprint": "0123456789abcdef"}]
    });
    let s = subject(Source::Alertmanager, alert.to_string().as_bytes());
    assert_eq!(
        (s.namespace.as_deref(), s.pod.as_deref()),
        (Some("shop"), Some("web-5d4f8-a"))
    );
}
