//! The real Kubernetes API server the Kubernetes connector's tests run against: it answers the
//! admin, refuses the `riposte` token until RBAC grants it, and keeps what it is given.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
use reqwest::Method;
use riposte_tests::kube::KubeApi;
use serde_json::json;

#[tokio::test]
async fn the_api_server_answers_the_admin_and_grants_riposte_only_what_rbac_binds() {
    let k = KubeApi::start();
    let (s, v) = k.admin_json(Method::GET, "/api/v1/namespaces", None).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = k
        .admin_json(
            Method::POST,
            "/api/v1/namespaces",
            Some(json!({"metadata":{"name":"prod"}})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, _) = k
        .riposte_json(Method::GET, "/api/v1/namespaces/prod/pods", None)
        .await;
    assert_eq!(s, 403);
    k.grant_riposte(
        "riposte-pods",
        json!([{"apiGroups":[""],"resources":["pods"],"verbs":["get","list"]}]),
    )
    .await;
    let mut ok = false;
    for _ in 0..50 {
        let (s, _) = k
            .riposte_json(Method::GET, "/api/v1/namespaces/prod/pods", None)
            .await;
        if s == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(ok);
    let (s, v) = k
        .admin_json(
            Method::PATCH,
            "/api/v1/namespaces/prod",
            Some(json!({"metadata":{"labels":{"a":"b"}}})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["metadata"]["labels"]["a"], "b");
    assert!(k.kubeconfig.is_file());
    let (s, v) = k.admin_json(Method::POST, "/apis/apps/v1/namespaces/prod/deployments", Some(json!({
        "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web", "image": "busybox"}]}}}
    }))).await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = k
        .admin_json(
            Method::POST,
            "/api/v1/namespaces/prod/pods",
            Some(json!({
                "metadata": {"name": "web-1", "labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "busybox"}]}
            })),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = k
        .riposte_json(
            Method::GET,
            "/api/v1/namespaces/prod/pods?labelSelector=app%3Dweb",
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["items"][0]["metadata"]["name"], "web-1");
    let (s, v) = k
        .admin_json(
            Method::POST,
            "/api/v1/nodes",
            Some(json!({"metadata": {"name": "node-1"}})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, _) = k
        .riposte_json(
            Method::PATCH,
            "/api/v1/nodes/node-1",
            Some(json!({"spec": {"unschedulable": true}})),
        )
        .await;
    assert_eq!(s, 403);
    let (s, v) = k
        .admin_json(
            Method::PATCH,
            "/api/v1/nodes/node-1",
            Some(json!({"spec": {"unschedulable": true}})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["spec"]["unschedulable"], true);
}
