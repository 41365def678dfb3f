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
        let dir = tempfile::tempdir().unwrap();
        let script = repo_root().join("scripts").join("kube-apiserver");
        let out = Command::new("bash")
            .arg(&script)
            .arg("start")
            .arg(dir.path())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
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
