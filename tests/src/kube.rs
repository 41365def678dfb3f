//! A real Kubernetes API server for the end-to-end tests of the `kubernetes` connectors: etcd
//! and kube-apiserver (built from Debian's `kubernetes` source package by
//! `scripts/kube-apiserver install`) on free loopback ports, with TLS, token authentication and
//! RBAC, in their own temporary directory, stopped when dropped.
//!
//! - [`KubeApi`]: the server, its CA, an admin token (group `system:masters`) and a token for
//!   the user `riposte`, who may do nothing until a test binds a role to it;
//! - [`KubeApi::admin_json`], [`KubeApi::riposte_json`]: one JSON request with either token,
//!   to set up and inspect the cluster without going through the code under test.
//!
//! A missing server fails the test with what to run; it never skips. Only the API server runs:
//! no scheduler, controller-manager or kubelet, so objects are stored but nothing reconciles
//! them (a Deployment makes no Pods; tests create the Pods they need).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::repo_root;

/// A kube-apiserver with its etcd, for one test.
pub struct KubeApi {
    /// Its URL, `https://127.0.0.1:PORT`.
    pub url: String,
    /// The CA that signed its serving certificate (PEM).
    pub ca_pem: PathBuf,
    /// A bearer token in `system:masters`.
    pub admin_token: String,
    /// A bearer token for the user `riposte`, in no group beyond `system:authenticated`.
    pub riposte_token: String,
    /// A kubeconfig for the admin.
    pub kubeconfig: PathBuf,
    http: reqwest::Client,
    dir: tempfile::TempDir,
}

impl KubeApi {
    /// Starts etcd and kube-apiserver and waits until `/readyz` answers.
    pub fn start() -> KubeApi {
        let script = repo_root().join("scripts").join("kube-apiserver");
        let run = |what: &str, dir: &std::path::Path| {
            Command::new("bash")
                .arg(&script)
                .arg(what)
                .arg(dir)
                .output()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()))
        };
        // A port the script found free may be taken by another test before etcd or the API
        // server binds it: then start again on others (three tries).
        let mut tries = 0;
        let (dir, out) = loop {
            tries += 1;
            let dir = tempfile::tempdir().unwrap();
            let out = run("start", dir.path());
            let taken = String::from_utf8_lossy(&out.stderr).contains("address already in use");
            if out.status.success() || !taken || tries == 3 {
                break (dir, out);
            }
            run("stop", dir.path());
        };
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            if out.status.code() == Some(3) {
                panic!(
                    "kube-apiserver is not built: run `bash scripts/kube-apiserver install` \
                     (or `bash scripts/setup`)\n{stderr}"
                );
            }
            panic!(
                "`scripts/kube-apiserver start` failed ({}):\n{stderr}",
                out.status
            );
        }
        let read = |name: &str| {
            std::fs::read_to_string(dir.path().join(name))
                .unwrap_or_else(|e| panic!("{name} in {}: {e}", dir.path().display()))
                .trim()
                .to_owned()
        };
        let ca_pem = dir.path().join("ca.pem");
        let ca = reqwest::Certificate::from_pem(&std::fs::read(&ca_pem).unwrap()).unwrap();
        let http = reqwest::Client::builder()
            .add_root_certificate(ca)
            .tls_built_in_root_certs(false)
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        KubeApi {
            url: read("url"),
            ca_pem,
            admin_token: read("admin-token"),
            riposte_token: read("riposte-token"),
            kubeconfig: dir.path().join("admin.kubeconfig"),
            http,
            dir,
        }
    }

    /// An HTTP client that trusts the server's CA (and nothing else).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// One request with the admin token: `METHOD path` with an optional JSON body; the status
    /// and the JSON answer (`Value::Null` when the body is not JSON). A PATCH is sent as a JSON
    /// merge patch.
    pub async fn admin_json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        self.json(&self.admin_token, method, path, body).await
    }

    /// The same with the `riposte` user's token.
    pub async fn riposte_json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        self.json(&self.riposte_token, method, path, body).await
    }

    /// The same with any token.
    pub async fn json(
        &self,
        token: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let content_type = if method == reqwest::Method::PATCH {
            "application/merge-patch+json"
        } else {
            "application/json"
        };
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.url))
            .bearer_auth(token)
            .header("Accept", "application/json");
        if let Some(b) = body {
            req = req
                .header("Content-Type", content_type)
                .body(serde_json::to_vec(&b).unwrap());
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// Lets the `riposte` user do what `rules` (RBAC PolicyRules) allow, cluster-wide: a
    /// ClusterRole and a ClusterRoleBinding named `name`. RBAC reads bindings through a cache, so
    /// this waits until the server says the first verb on the first resource of the first rule
    /// is allowed.
    pub async fn grant_riposte(&self, name: &str, rules: Value) {
        let first = |key: &str| {
            rules[0][key][0]
                .as_str()
                .unwrap_or_else(|| panic!("grant_riposte: the first rule has no `{key}`"))
                .to_owned()
        };
        let review = serde_json::json!({
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": "riposte",
                "groups": ["system:authenticated"],
                "resourceAttributes": {
                    "group": first("apiGroups"),
                    "resource": first("resources"),
                    "verb": first("verbs"),
                },
            },
        });
        let role = serde_json::json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": { "name": name },
            "rules": rules,
        });
        let binding = serde_json::json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": { "name": name },
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name },
            "subjects": [{ "apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "riposte" }],
        });
        for (path, body) in [
            ("/apis/rbac.authorization.k8s.io/v1/clusterroles", role),
            (
                "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
                binding,
            ),
        ] {
            let (status, answer) = self
                .admin_json(reqwest::Method::POST, path, Some(body))
                .await;
            assert_eq!(status, 201, "POST {path}: {answer}");
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (status, answer) = self
                .admin_json(
                    reqwest::Method::POST,
                    "/apis/authorization.k8s.io/v1/subjectaccessreviews",
                    Some(review.clone()),
                )
                .await;
            assert_eq!(status, 201, "POST subjectaccessreviews: {answer}");
            if answer["status"]["allowed"] == true {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the grant `{name}` did not take effect within 10 s: {answer}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The server's log, for assertion messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("kube-apiserver.log")).unwrap_or_default()
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(repo_root().join("scripts").join("kube-apiserver"))
            .arg("stop")
            .arg(self.dir.path())
            .output();
    }
}

/// Realistic objects for the connector's tests, created with the admin token:
/// - namespace `shop` (labels `team=payments`, `oncall=payments-primary`);
/// - Deployment `shop/web` (3 replicas, 3 ready) → ReplicaSet `web-5d4f8` → pods `web-5d4f8-a`,
///   `-b`, `-c` on node `node-1`, Ready, with image digests; a NetworkPolicy `allow-web` that
///   selects `app=web`; a PodDisruptionBudget `web` (minAvailable 2) whose status allows
///   `disruptions` evictions;
/// - a standalone pod `shop/debug` (no node), a DaemonSet `shop/agent` with pod `agent-x` on
///   `node-1`, a StatefulSet `shop/db` with pod `db-0`;
/// - a pod `shop/vault-0` labelled `riposte.io/protected=true`, a pod `kube-system/coredns-1`;
/// - nodes `node-1` and `node-2` (labelled `tier=control-plane`).
pub struct Estate;

impl Estate {
    /// Creates every object; panics with the API's answer when one is refused.
    pub async fn seed(k: &KubeApi, disruptions: u64) {
        use reqwest::Method;
        use serde_json::json;
        let post = |path: &'static str, body: Value| async move {
            let (s, v) = k.admin_json(Method::POST, path, Some(body)).await;
            assert_eq!(s, 201, "POST {path}: {v}");
            v
        };
        let status = |path: String, body: Value| async move {
            let (s, v) = k.admin_json(Method::PATCH, &path, Some(body)).await;
            assert_eq!(s, 200, "PATCH {path}: {v}");
        };
        post(
            "/api/v1/namespaces",
            json!({"metadata": {"name": "shop", "labels": {"team": "payments", "oncall": "payments-primary"}}}),
        )
        .await;
        for (name, labels) in [
            ("node-1", json!({"kubernetes.io/hostname": "node-1"})),
            ("node-2", json!({"tier": "control-plane"})),
        ] {
            post(
                "/api/v1/nodes",
                json!({"metadata": {"name": name, "labels": labels}}),
            )
            .await;
        }
        let template = json!({"metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "web", "image": "registry.local/shop/web:1.4"}]}});
        let deploy = post("/apis/apps/v1/namespaces/shop/deployments", json!({
            "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}}, "template": template}
        })).await;
        status(
            "/apis/apps/v1/namespaces/shop/deployments/web/status".into(),
            json!({"status": {"replicas": 3, "readyReplicas": 3, "availableReplicas": 3}}),
        )
        .await;
        let owner = |v: &Value, kind: &str, api: &str| {
            json!([{
            "apiVersion": api, "kind": kind, "name": v["metadata"]["name"],
            "uid": v["metadata"]["uid"], "controller": true, "blockOwnerDeletion": true}])
        };
        let rs = post("/apis/apps/v1/namespaces/shop/replicasets", json!({
            "metadata": {"name": "web-5d4f8", "labels": {"app": "web"},
                         "ownerReferences": owner(&deploy, "Deployment", "apps/v1")},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}}, "template": template}
        })).await;
        status(
            "/apis/apps/v1/namespaces/shop/replicasets/web-5d4f8/status".into(),
            json!({"status": {"replicas": 3, "readyReplicas": 3}}),
        )
        .await;
        let ds = post("/apis/apps/v1/namespaces/shop/daemonsets", json!({
            "metadata": {"name": "agent"},
            "spec": {"selector": {"matchLabels": {"app": "agent"}},
                     "template": {"metadata": {"labels": {"app": "agent"}},
                                  "spec": {"containers": [{"name": "agent", "image": "registry.local/agent:2"}]}}}
        })).await;
        let sts = post("/apis/apps/v1/namespaces/shop/statefulsets", json!({
            "metadata": {"name": "db"},
            "spec": {"replicas": 1, "serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
                     "template": {"metadata": {"labels": {"app": "db"}},
                                  "spec": {"containers": [{"name": "db", "image": "registry.local/db:15"}]}}}
        })).await;
        status(
            "/apis/apps/v1/namespaces/shop/statefulsets/db/status".into(),
            json!({"status": {"replicas": 1, "readyReplicas": 1}}),
        )
        .await;
        let pods: Vec<(&str, &str, Value, Value, Option<&str>)> = vec![
            (
                "shop",
                "web-5d4f8-a",
                json!({"app": "web"}),
                owner(&rs, "ReplicaSet", "apps/v1"),
                Some("node-1"),
            ),
            (
                "shop",
                "web-5d4f8-b",
                json!({"app": "web"}),
                owner(&rs, "ReplicaSet", "apps/v1"),
                Some("node-1"),
            ),
            (
                "shop",
                "web-5d4f8-c",
                json!({"app": "web"}),
                owner(&rs, "ReplicaSet", "apps/v1"),
                Some("node-1"),
            ),
            ("shop", "debug", json!({"app": "debug"}), json!([]), None),
            (
                "shop",
                "agent-x",
                json!({"app": "agent"}),
                owner(&ds, "DaemonSet", "apps/v1"),
                Some("node-1"),
            ),
            (
                "shop",
                "db-0",
                json!({"app": "db"}),
                owner(&sts, "StatefulSet", "apps/v1"),
                Some("node-1"),
            ),
            (
                "shop",
                "vault-0",
                json!({"app": "vault", "riposte.io/protected": "true"}),
                json!([]),
                Some("node-1"),
            ),
            (
                "kube-system",
                "coredns-1",
                json!({"k8s-app": "kube-dns"}),
                json!([]),
                Some("node-1"),
            ),
        ];
        for (ns, name, labels, owners, node) in pods {
            let image = format!("registry.local/{name}:1");
            let mut spec = json!({"containers": [
                {"name": "main", "image": image,
                 "env": [{"name": "DB_PASSWORD", "value": "hunter2"},
                         {"name": "API_TOKEN", "valueFrom": {"secretKeyRef": {"name": "api", "key": "token"}}}]},
                {"name": "sidecar", "image": "registry.local/proxy:3"}]});
            if let Some(n) = node {
                spec["nodeName"] = json!(n);
            }
            let path = format!("/api/v1/namespaces/{ns}/pods");
            let (s, v) = k
                .admin_json(
                    Method::POST,
                    &path,
                    Some(json!({
                        "metadata": {"name": name, "labels": labels, "ownerReferences": owners},
                        "spec": spec,
                    })),
                )
                .await;
            assert_eq!(s, 201, "POST {path}: {v}");
            status(format!("/api/v1/namespaces/{ns}/pods/{name}/status"), json!({"status": {
                "phase": "Running",
                "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [
                    {"name": "main", "image": image, "ready": true, "restartCount": 0,
                     "imageID": format!("docker-pullable://registry.local/{name}@sha256:{}", "a".repeat(64))},
                    {"name": "sidecar", "image": "registry.local/proxy:3", "ready": true, "restartCount": 0,
                     "imageID": ""}]
            }})).await;
        }
        post(
            "/apis/networking.k8s.io/v1/namespaces/shop/networkpolicies",
            json!({
                "metadata": {"name": "allow-web"},
                "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                         "ingress": [{"from": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}]}
            }),
        )
        .await;
        let pdb = post(
            "/apis/policy/v1beta1/namespaces/shop/poddisruptionbudgets",
            json!({
                "metadata": {"name": "web"},
                "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "web"}}}
            }),
        )
        .await;
        Estate::set_disruptions(
            k,
            pdb["metadata"]["generation"].as_i64().unwrap_or(1),
            disruptions,
        )
        .await;
    }

    /// Sets the PodDisruptionBudget `shop/web`'s status as its controller would.
    pub async fn set_disruptions(k: &KubeApi, generation: i64, allowed: u64) {
        let (s, v) = k
            .admin_json(
                reqwest::Method::PATCH,
                "/apis/policy/v1beta1/namespaces/shop/poddisruptionbudgets/web/status",
                Some(serde_json::json!({"status": {
                    "observedGeneration": generation, "disruptionsAllowed": allowed,
                    "currentHealthy": 3, "desiredHealthy": 2, "expectedPods": 3}})),
            )
            .await;
        assert_eq!(s, 200, "PDB status: {v}");
    }
}
