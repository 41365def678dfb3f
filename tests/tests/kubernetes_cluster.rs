//! The Kubernetes connector's scenarios against any real cluster, with controllers and
//! kubelets: run with `RIPOSTE_TEST_KUBECONFIG=PATH cargo test -p riposte-tests --test
//! kubernetes_cluster -- --ignored`. The kubeconfig's user must be able to create namespaces,
//! Deployments and NetworkPolicies. The test works in a namespace of its own, deleted at the
//! end, and touches no node. `RIPOSTE_TEST_IMAGE` names an image with `sh` (default
//! `busybox:1.36`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use riposte_connectors::kubernetes::KubernetesConnector;
use riposte_connectors::{Args, Connector, Deps, Subject};
use serde_json::{json, Value};

fn args(v: Value) -> Args {
    v.as_object().cloned().unwrap()
}

/// Deletes the namespace when the test ends, passed or failed.
struct Cleanup {
    client: kube::Client,
    ns: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let (client, ns) = (self.client.clone(), self.ns.clone());
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(async move {
                let api: Api<Namespace> = Api::all(client);
                let _ = api.delete(&ns, &DeleteParams::default()).await;
            })
        });
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a real cluster: set RIPOSTE_TEST_KUBECONFIG and run with --ignored"]
async fn the_scenarios_hold_on_a_real_cluster() {
    let path = std::env::var("RIPOSTE_TEST_KUBECONFIG")
        .expect("set RIPOSTE_TEST_KUBECONFIG to the kubeconfig of a cluster to test against");
    let image = std::env::var("RIPOSTE_TEST_IMAGE").unwrap_or_else(|_| "busybox:1.36".into());
    let kc = kube::config::Kubeconfig::read_from(&path).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    let client = kube::Client::try_from(config).unwrap();
    let ns = format!("riposte-test-{:x}", std::process::id() ^ 0x5eed);
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": ns, "labels": {"team": "payments"}}}),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    let _cleanup = Cleanup {
        client: client.clone(),
        ns: ns.clone(),
    };
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    deployments
        .create(&PostParams::default(), &serde_json::from_value(json!({
            "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"terminationGracePeriodSeconds": 1,
                                           "containers": [{"name": "web", "image": image,
                                               "command": ["sh", "-c", "echo riposte-hello; sleep 3600"]}]}}}
        })).unwrap())
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let deadline = Instant::now() + Duration::from_secs(180);
    let names = loop {
        let list = pods
            .list(&ListParams::default().labels("app=web"))
            .await
            .unwrap();
        let ready: Vec<String> = list
            .items
            .iter()
            .filter(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        if ready.len() == 2 {
            break ready;
        }
        assert!(
            Instant::now() < deadline,
            "the Deployment's pods did not become ready"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    let work = tempfile::tempdir().unwrap();
    let settings = json!({"kubeconfig": path, "evidence_dir": work.path().join("evidence")});
    let c = KubernetesConnector::new(
        "kubernetes",
        settings.as_object().unwrap(),
        &Deps::default(),
    )
    .unwrap();
    let pod = json!({"pod": names[0], "namespace": ns});

    let facts = c
        .enrich(&Subject {
            pod: Some(names[0].clone()),
            namespace: Some(ns.clone()),
            ..Subject::default()
        })
        .await
        .unwrap();
    assert_eq!(facts["workload"]["kind"], "Deployment", "{facts}");
    assert_eq!(facts["owner"], "payments");
    assert!(
        facts["images"][0]["digest"].is_string(),
        "a running pod has its digest: {facts}"
    );

    let out = c.run("isolate_pod", &args(pod.clone())).await.unwrap();
    assert_eq!(out.output["changed"], true);
    c.revert("isolate_pod", out.undo.as_ref().unwrap())
        .await
        .unwrap();

    let mut label = pod.clone();
    label["on"] = json!("workload");
    label["labels"] = json!({"riposte.io/incident": "test"});
    let out = c.run("label", &args(label)).await.unwrap();
    c.revert("label", out.undo.as_ref().unwrap()).await.unwrap();

    let out = c.run("logs", &args(pod.clone())).await.unwrap();
    let file = out.output["files"]["web"]["path"].as_str().unwrap();
    assert!(std::fs::read_to_string(file)
        .unwrap()
        .contains("riposte-hello"));

    let mut event = pod.clone();
    event["reason"] = json!("RiposteTest");
    event["message"] = json!("riposte's cluster test");
    c.run("event", &args(event)).await.unwrap();

    let out = c.run("scale_to_zero", &args(pod.clone())).await.unwrap();
    assert_eq!(out.output["replicas_before"], 2);
    c.revert("scale_to_zero", out.undo.as_ref().unwrap())
        .await
        .unwrap();
    assert_eq!(
        deployments.get("web").await.unwrap().spec.unwrap().replicas,
        Some(2)
    );
}
