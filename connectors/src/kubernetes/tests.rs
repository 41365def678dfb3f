#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
use super::*;
use serde_json::json;

fn args(v: Value) -> Args {
    v.as_object().cloned().unwrap_or_default()
}

fn connector(settings: Value) -> Result<KubernetesConnector, BuildError> {
    KubernetesConnector::new(
        "kubernetes",
        settings.as_object().unwrap_or(&Map::new()),
        &Deps::default(),
    )
}

#[test]
fn every_action_is_described_offline() {
    let c = connector(json!({})).unwrap();
    for a in ACTIONS {
        let v = json!({ "pod": "web-1", "namespace": "shop", "node": "n1", "labels": {"a": "b"},
                        "annotations": {"a": "b"}, "reason": "X", "message": "m",
                        "workload": "deployment/web", "replicas": 2, "image": "registry.local/web:1" });
        let p = c.describe(a.name, &args(v)).unwrap();
        assert!(
            p.description.contains("web") || p.description.contains("n1"),
            "{}: {}",
            a.name,
            p.description
        );
    }
}

#[test]
fn bad_settings_are_named() {
    let e = connector(json!({ "url": "http://127.0.0.1:6443", "token_file": "/t" })).unwrap_err();
    assert!(e.to_string().contains("https://"), "{e}");
    let e = connector(json!({ "url": "https://127.0.0.1:6443" })).unwrap_err();
    assert!(e.to_string().contains("token_file"), "{e}");
    let e = connector(json!({ "kubeconfig": "/k", "url": "https://x" })).unwrap_err();
    assert!(e.to_string().contains("not both"), "{e}");
    let e = connector(json!({ "kubeconfg": "/k" })).unwrap_err();
    assert!(e.to_string().contains("unknown setting `kubeconfg`"), "{e}");
    let e = connector(json!({ "owner_keys": "team" })).unwrap_err();
    assert!(e.to_string().contains("owner_keys"), "{e}");
    let e = connector(json!({ "context": "prod" })).unwrap_err();
    assert!(e.to_string().contains("kubeconfig"), "{e}");
}

#[test]
fn min_healthy_replicas_takes_counts_and_percentages() {
    use pods::{Disruption, MinHealthy};
    let d =
        |v: Value| Disruption::from_args("delete_pod", &args(json!({ "min_healthy_replicas": v })));
    assert_eq!(d(json!(2)).unwrap().min_healthy, MinHealthy::Count(2));
    assert_eq!(
        d(json!("50%")).unwrap().min_healthy,
        MinHealthy::Percent(50)
    );
    assert_eq!(d(json!("3")).unwrap().min_healthy, MinHealthy::Count(3));
    assert!(d(json!("150%")).is_err());
    assert!(d(json!("half")).is_err());
    assert!(d(json!(-1)).is_err());
    let none = Disruption::from_args("delete_pod", &args(json!({}))).unwrap();
    assert_eq!(none.min_healthy, MinHealthy::Count(1));
    assert!(!none.allow_standalone);
}

#[test]
fn policies_are_matched_to_pods_by_their_selector() {
    use std::collections::BTreeMap;
    let labels: BTreeMap<String, String> = BTreeMap::from([
        ("app".into(), "web".into()),
        ("tier".into(), "front".into()),
    ]);
    let p = |sel: Value| json!({ "spec": { "podSelector": sel } });
    assert!(
        pods::selects(&p(json!({})), &labels),
        "an empty selector selects every pod"
    );
    assert!(pods::selects(
        &p(json!({ "matchLabels": { "app": "web" } })),
        &labels
    ));
    assert!(!pods::selects(
        &p(json!({ "matchLabels": { "app": "db" } })),
        &labels
    ));
    assert!(pods::selects(
        &p(
            json!({ "matchExpressions": [{ "key": "tier", "operator": "In", "values": ["front"] }] })
        ),
        &labels
    ));
    assert!(!pods::selects(
        &p(json!({ "matchExpressions": [{ "key": "tier", "operator": "DoesNotExist" }] })),
        &labels
    ));
}

#[test]
fn policy_names_stay_object_names() {
    assert_eq!(pods::policy_name("web-1"), "riposte-isolate-web-1");
    let long = "a".repeat(250);
    let n = pods::policy_name(&long);
    assert!(n.len() <= 253 && n.starts_with("riposte-isolate-"), "{n}");
}
