//! The `kubernetes` connector against a scripted API server, with kube's own mocked-service
//! approach (a `tower_test` service pair whose handle plays the server): what the end-to-end
//! tests on a bare kube-apiserver 1.20 (tests/tests/kubernetes.rs) cannot show, because that
//! server has no controllers and no kubelet and only takes policy/v1beta1 Evictions.
//!
//! Each test lists every request the connector must make, in order: its method, path, exact
//! query and body, and the answer (realistic objects, Kubernetes Status objects for errors). A
//! request off the script, or one missing at the end, fails the test with the step it expected.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use http::{header, Method, Request, Response};
use kube::client::Body;
use riposte_connectors::kubernetes::KubernetesConnector;
use riposte_connectors::{Args, Connector, ConnectorError, Deps};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------
// The scripted API server.

/// What the server answers one request with.
enum Reply {
    Json(u16, Value),
    Text(u16, String),
    /// No HTTP answer: the connection fails.
    Refused,
}

/// Checks a request's JSON body (`Null` when it has none).
type BodyCheck = Box<dyn FnOnce(&Value) + Send>;

/// One request the connector must make next, and the answer.
struct Step {
    method: Method,
    path: String,
    /// The exact query, decoded, in any order.
    query: Vec<(String, String)>,
    body: Option<BodyCheck>,
    reply: Reply,
}

fn step(method: Method, path: &str, query: &[(&str, &str)]) -> Step {
    Step {
        method,
        path: path.to_owned(),
        query: query
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        body: None,
        reply: Reply::Json(200, json!({})),
    }
}

fn get(path: &str) -> Step {
    step(Method::GET, path, &[])
}

/// Every write names riposte as its field manager.
fn post(path: &str) -> Step {
    step(Method::POST, path, &[("fieldManager", "riposte")])
}

fn patch(path: &str) -> Step {
    step(Method::PATCH, path, &[("fieldManager", "riposte")])
}

impl Step {
    fn query(mut self, pairs: &[(&str, &str)]) -> Step {
        self.query.extend(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        self
    }

    /// A server-side dry run.
    fn dry(self) -> Step {
        self.query(&[("dryRun", "All")])
    }

    fn body(mut self, check: impl FnOnce(&Value) + Send + 'static) -> Step {
        self.body = Some(Box::new(check));
        self
    }

    fn reply(mut self, code: u16, body: Value) -> Step {
        self.reply = Reply::Json(code, body);
        self
    }

    fn text(mut self, code: u16, body: &str) -> Step {
        self.reply = Reply::Text(code, body.to_owned());
        self
    }

    fn refused(mut self) -> Step {
        self.reply = Reply::Refused;
        self
    }
}

/// Percent-decodes a query component.
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

fn sorted_query(q: Option<&str>) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = q
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect();
    pairs.sort();
    pairs
}

/// The API server of one test: answers the script's steps in order.
struct Scripted {
    task: tokio::task::JoinHandle<()>,
}

impl Scripted {
    fn start(steps: Vec<Step>) -> (kube::Client, Scripted) {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let task = tokio::spawn(async move {
            for (i, s) in steps.into_iter().enumerate() {
                let expected = format!("step {i}, {} {}", s.method, s.path);
                let Some((req, send)) = handle.next_request().await else {
                    panic!("the connector stopped before {expected}");
                };
                let (parts, body) = req.into_parts();
                let got = format!("{} {}", parts.method, parts.uri);
                assert_eq!(parts.method, s.method, "{expected}: got {got}");
                assert_eq!(parts.uri.path(), s.path, "{expected}: got {got}");
                let mut want = s.query;
                want.sort();
                assert_eq!(
                    sorted_query(parts.uri.query()),
                    want,
                    "{expected}: got {got}"
                );
                if parts.method == Method::PATCH {
                    assert_eq!(
                        parts.headers[header::CONTENT_TYPE],
                        "application/merge-patch+json",
                        "{expected}"
                    );
                }
                let bytes = body.collect_bytes().await.unwrap();
                let value: Value = if bytes.is_empty() {
                    Value::Null
                } else {
                    serde_json::from_slice(&bytes).unwrap()
                };
                match s.body {
                    Some(check) => check(&value),
                    None => assert_eq!(value, Value::Null, "{expected}: a body came: {got}"),
                }
                let answer = |code: u16, content_type: &str, bytes: Vec<u8>| {
                    Response::builder()
                        .status(code)
                        .header(header::CONTENT_TYPE, content_type)
                        .body(Body::from(bytes))
                        .unwrap()
                };
                match s.reply {
                    Reply::Json(code, v) => send.send_response(answer(
                        code,
                        "application/json",
                        serde_json::to_vec(&v).unwrap(),
                    )),
                    Reply::Text(code, t) => {
                        send.send_response(answer(code, "text/plain", t.into_bytes()));
                    }
                    Reply::Refused => send.send_error(std::io::Error::new(
                        std::io::ErrorKind::ConnectionRefused,
                        "tcp connect error: Connection refused (os error 111)",
                    )),
                }
            }
            if let Some((req, _)) = handle.next_request().await {
                panic!("a request after the script: {} {}", req.method(), req.uri());
            }
        });
        (kube::Client::new(service, "default"), Scripted { task })
    }

    /// Drops the connector (and with it the client), then waits for the script to end; a
    /// failed check in the server fails the test here, with its own message.
    async fn done(self, connector: KubernetesConnector) {
        drop(connector);
        if let Err(e) = self.task.await {
            std::panic::resume_unwind(e.into_panic());
        }
    }
}

fn connector(client: kube::Client, settings: Value) -> KubernetesConnector {
    let mut settings = settings.as_object().cloned().unwrap_or_default();
    settings.insert("timeout".into(), json!("5s"));
    KubernetesConnector::with_client("kubernetes", &settings, &Deps::default(), client).unwrap()
}

fn args(v: Value) -> Args {
    v.as_object().cloned().unwrap()
}

// ---------------------------------------------------------------------------------------------
// What the API server holds.

const NODE: &str = "node-a";
const STARTED: &str = "2024-05-02T09:14:07Z";

/// A Kubernetes Status: the body of every API error (and of an accepted Eviction).
fn status(code: u16, reason: &str, message: &str) -> Value {
    let mut s = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": if code < 400 { "Success" } else { "Failure" },
        "code": code,
    });
    if !message.is_empty() {
        s["message"] = json!(message);
    }
    if !reason.is_empty() {
        s["reason"] = json!(reason);
    }
    s
}

fn not_found(resource: &str, name: &str) -> Value {
    let mut s = status(404, "NotFound", &format!("{resource} \"{name}\" not found"));
    s["details"] = json!({ "name": name, "kind": resource });
    s
}

fn owner(api_version: &str, kind: &str, name: &str, uid: &str) -> Value {
    json!({
        "apiVersion": api_version,
        "kind": kind,
        "name": name,
        "uid": uid,
        "controller": true,
        "blockOwnerDeletion": true,
    })
}

/// A running, ready pod on `NODE`.
fn pod(ns: &str, name: &str, uid: &str, owner: Value, containers: &[&str]) -> Value {
    let app = name.split('-').next().unwrap();
    let specs: Vec<Value> = containers
        .iter()
        .map(|c| {
            json!({
                "name": c,
                "image": format!("registry.example/{ns}/{c}:1.8.2"),
                "imagePullPolicy": "IfNotPresent",
                "resources": {},
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File",
            })
        })
        .collect();
    let statuses: Vec<Value> = containers
        .iter()
        .map(|c| {
            json!({
                "name": c,
                "ready": true,
                "started": true,
                "restartCount": 0,
                "image": format!("registry.example/{ns}/{c}:1.8.2"),
                "imageID": format!("registry.example/{ns}/{c}@sha256:{}", "4f".repeat(32)),
                "containerID": format!("containerd://{}", "9a".repeat(32)),
                "state": { "running": { "startedAt": STARTED } },
            })
        })
        .collect();
    let conditions = ["Initialized", "Ready", "ContainersReady", "PodScheduled"].map(|t| {
        json!({ "type": t, "status": "True", "lastProbeTime": null, "lastTransitionTime": STARTED })
    });
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": ns,
            "uid": uid,
            "resourceVersion": "48213",
            "creationTimestamp": STARTED,
            "labels": { "app": app, "pod-template-hash": "7d9f8b6c5" },
            "ownerReferences": [owner],
        },
        "spec": {
            "nodeName": NODE,
            "serviceAccountName": app,
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "schedulerName": "default-scheduler",
            "containers": specs,
        },
        "status": {
            "phase": "Running",
            "hostIP": "10.0.0.12",
            "podIP": "10.244.1.17",
            "qosClass": "BestEffort",
            "startTime": STARTED,
            "conditions": conditions,
            "containerStatuses": statuses,
        },
    })
}

fn namespace(name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": name,
            "uid": "0b8e4c1d-2f3a-4e5b-8c6d-7e8f9a0b1c2d",
            "resourceVersion": "211",
            "creationTimestamp": "2024-04-30T08:00:00Z",
            "labels": { "kubernetes.io/metadata.name": name },
        },
        "spec": { "finalizers": ["kubernetes"] },
        "status": { "phase": "Active" },
    })
}

fn namespace_read(ns: &str) -> Step {
    get(&format!("/api/v1/namespaces/{ns}")).reply(200, namespace(ns))
}

/// The core API's discovery document, with the group version `pods/eviction` takes (`v1` from
/// Kubernetes 1.22, `v1beta1` before).
fn core_discovery(eviction: &str) -> Value {
    let verbs = json!([
        "create",
        "delete",
        "deletecollection",
        "get",
        "list",
        "patch",
        "update",
        "watch"
    ]);
    json!({
        "kind": "APIResourceList",
        "groupVersion": "v1",
        "resources": [
            { "name": "namespaces", "singularName": "", "namespaced": false, "kind": "Namespace",
              "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
              "shortNames": ["ns"] },
            { "name": "nodes", "singularName": "", "namespaced": false, "kind": "Node",
              "verbs": verbs, "shortNames": ["no"] },
            { "name": "pods", "singularName": "", "namespaced": true, "kind": "Pod",
              "verbs": verbs, "shortNames": ["po"], "categories": ["all"] },
            { "name": "pods/eviction", "singularName": "", "namespaced": true, "group": "policy",
              "version": eviction, "kind": "Eviction", "verbs": ["create"] },
            { "name": "pods/log", "singularName": "", "namespaced": true, "kind": "Pod",
              "verbs": ["get"] },
        ],
    })
}

/// A pod of a Deployment through its ReplicaSet, as a Deployment's pods are.
struct Deployed {
    ns: String,
    name: String,
    uid: String,
    pod: Value,
    replica_set: Value,
    deployment: Value,
}

impl Deployed {
    /// Pod `<app>-7d9f8b6c5-<suffix>` of Deployment `<app>` with `replicas`, all ready.
    fn new(ns: &str, app: &str, suffix: &str, replicas: u64, containers: &[&str]) -> Deployed {
        let rs = format!("{app}-7d9f8b6c5");
        let name = format!("{rs}-{suffix}");
        let uid = format!("5c1e2f4a-8b7d-4c3e-9a10-{:0>12}", suffix);
        let deploy_uid = format!("d3a1b2c4-0e5f-4a6b-8c7d-{:0>12}", app);
        let rs_uid = format!("a7b8c9d0-1e2f-4a3b-8c4d-{:0>12}", app);
        let counts = json!({
            "replicas": replicas, "readyReplicas": replicas, "availableReplicas": replicas,
            "observedGeneration": 1,
        });
        let workload_meta = |name: &str, uid: &str| {
            json!({
                "name": name, "namespace": ns, "uid": uid, "resourceVersion": "48170",
                "generation": 1, "creationTimestamp": "2024-05-01T16:02:44Z",
                "labels": { "app": app },
            })
        };
        let selector = json!({ "matchLabels": { "app": app } });
        let template = json!({
            "metadata": { "labels": { "app": app } },
            "spec": { "containers": containers.iter()
                .map(|c| json!({ "name": c, "image": format!("registry.example/{ns}/{c}:1.8.2") }))
                .collect::<Vec<_>>() },
        });
        let mut rs_meta = workload_meta(&rs, &rs_uid);
        rs_meta["ownerReferences"] = json!([owner("apps/v1", "Deployment", app, &deploy_uid)]);
        Deployed {
            ns: ns.to_owned(),
            pod: pod(
                ns,
                &name,
                &uid,
                owner("apps/v1", "ReplicaSet", &rs, &rs_uid),
                containers,
            ),
            replica_set: json!({
                "apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": rs_meta,
                "spec": { "replicas": replicas, "selector": selector, "template": template },
                "status": counts,
            }),
            deployment: json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": workload_meta(app, &deploy_uid),
                "spec": { "replicas": replicas, "selector": selector, "template": template },
                "status": counts,
            }),
            name,
            uid,
        }
    }

    fn path(&self) -> String {
        format!("/api/v1/namespaces/{}/pods/{}", self.ns, self.name)
    }

    fn id(&self) -> String {
        format!("{}/{}", self.ns, self.name)
    }

    /// The reads that resolve the pod: the pod, its ReplicaSet, its Deployment.
    fn reads(&self) -> Vec<Step> {
        let apps = format!("/apis/apps/v1/namespaces/{}", self.ns);
        vec![
            get(&self.path()).reply(200, self.pod.clone()),
            get(&format!(
                "{apps}/replicasets/{}",
                self.replica_set["metadata"]["name"].as_str().unwrap()
            ))
            .reply(200, self.replica_set.clone()),
            get(&format!(
                "{apps}/deployments/{}",
                self.deployment["metadata"]["name"].as_str().unwrap()
            ))
            .reply(200, self.deployment.clone()),
        ]
    }

    /// The Eviction of this pod, in `version`, with an optional grace period.
    fn eviction(&self, version: &str, grace: Option<u64>) -> Value {
        let mut options = json!({ "preconditions": { "uid": self.uid } });
        if let Some(g) = grace {
            options["gracePeriodSeconds"] = json!(g);
        }
        json!({
            "apiVersion": version,
            "kind": "Eviction",
            "metadata": { "name": self.name, "namespace": self.ns },
            "deleteOptions": options,
        })
    }

    /// The eviction POST, checked against the Eviction it must carry.
    fn evict(&self, version: &str, grace: Option<u64>) -> Step {
        let want = self.eviction(version, grace);
        post(&format!("{}/eviction", self.path())).body(move |b| assert_eq!(b, &want))
    }
}

fn web() -> Deployed {
    Deployed::new("shop", "web", "x2x4q", 3, &["web", "envoy"])
}

/// What the API says when a PodDisruptionBudget blocks an eviction.
fn disruption_budget() -> Value {
    let mut s = status(
        429,
        "TooManyRequests",
        "Cannot evict pod as it would violate the pod's disruption budget.",
    );
    s["details"] = json!({ "causes": [{
        "reason": "DisruptionBudget",
        "message": "The disruption budget web needs 3 healthy pods and has 3 currently",
    }] });
    s
}

// ---------------------------------------------------------------------------------------------
// evict_pod

/// The requests of `evict_pod` on `w`: resolve, guard, discover the Eviction version.
fn before_eviction(w: &Deployed, eviction: &str) -> Vec<Step> {
    let mut steps = w.reads();
    steps.push(namespace_read(&w.ns));
    steps.push(get("/api/v1").reply(200, core_discovery(eviction)));
    steps
}

#[tokio::test]
async fn evicts_with_policy_v1_where_the_server_takes_it() {
    let w = web();
    let mut steps = before_eviction(&w, "v1");
    steps.push(
        w.evict("policy/v1", Some(10))
            .reply(201, status(201, "", "")),
    );
    let (client, server) = Scripted::start(steps);
    let c = connector(client, json!({}));
    let out = c
        .run(
            "evict_pod",
            &args(json!({ "pod": w.name, "namespace": "shop", "grace": "10s" })),
        )
        .await;
    server.done(c).await;
    let out = out.unwrap().output;
    assert_eq!(out["changed"], json!(true));
    assert_eq!(out["grace_seconds"], json!(10));
    assert_eq!(
        out["message"],
        json!(format!("evict pod `{}` of deployment `shop/web`", w.id()))
    );
}

/// Kubernetes 1.21 serves policy/v1 for PodDisruptionBudgets, yet its `pods/eviction` still
/// takes only policy/v1beta1 Evictions: the version comes from the subresource.
#[tokio::test]
async fn evicts_with_policy_v1beta1_where_eviction_is_not_v1_yet() {
    let w = web();
    let mut steps = before_eviction(&w, "v1beta1");
    steps.push(
        w.evict("policy/v1beta1", None)
            .reply(201, status(201, "", "")),
    );
    let (client, server) = Scripted::start(steps);
    let c = connector(client, json!({}));
    let out = c
        .run(
            "evict_pod",
            &args(json!({ "pod": w.name, "namespace": "shop" })),
        )
        .await;
    server.done(c).await;
    assert_eq!(out.unwrap().output["changed"], json!(true));
}

#[tokio::test]
async fn an_eviction_a_disruption_budget_blocks_is_transient_with_the_api_message() {
    let w = web();
    let mut steps = before_eviction(&w, "v1");
    steps.push(w.evict("policy/v1", None).reply(429, disruption_budget()));
    let (client, server) = Scripted::start(steps);
    let c = connector(client, json!({}));
    let out = c
        .run(
            "evict_pod",
            &args(json!({ "pod": w.name, "namespace": "shop" })),
        )
        .await;
    server.done(c).await;
    let e = out.unwrap_err();
    assert!(e.is_retryable(), "{e:?}");
    assert_eq!(
        e,
        ConnectorError::Transient(format!(
            "evict pod `{}`: Cannot evict pod as it would violate the pod's disruption budget. \
             (TooManyRequests, HTTP 429)",
            w.id()
        ))
    );
}

// ---------------------------------------------------------------------------------------------
// logs

fn log_read(w: &Deployed, container: &str) -> Step {
    get(&format!("{}/log", w.path())).query(&[
        ("container", container),
        ("tailLines", "50"),
        ("timestamps", "true"),
    ])
}

const WEB_LOG: &str = "2024-05-02T09:15:01.118273645Z 10.244.0.1 - - [02/May/2024:09:15:01 +0000] \
                       \"GET /healthz HTTP/1.1\" 200 2\n\
                       2024-05-02T09:15:03.402119002Z 10.244.3.9 - - [02/May/2024:09:15:03 +0000] \
                       \"POST /cart/checkout HTTP/1.1\" 500 113\n";
const ENVOY_LOG: &str = "2024-05-02T09:15:03.401876113Z [2024-05-02 09:15:03.401][1][info] \
                         upstream connect error or disconnect/reset before headers\n";

/// The evidence directory's files and their modes, and that `sha256sum -c` accepts its
/// manifest.
fn evidence(dir: &Path) -> Vec<(String, u32)> {
    assert_eq!(
        std::fs::metadata(dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let check = std::process::Command::new("sha256sum")
        .args(["--check", "--strict", "manifest.sha256"])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "sha256sum -c: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let mut files: Vec<(String, u32)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let mode = e.metadata().unwrap().permissions().mode() & 0o777;
            (e.file_name().to_string_lossy().into_owned(), mode)
        })
        .collect();
    files.sort();
    files
}

#[tokio::test]
async fn logs_keep_the_pod_and_each_container_log_with_a_manifest() {
    let root = tempfile::tempdir().unwrap();
    let w = web();
    let mut steps = w.reads();
    steps.push(log_read(&w, "web").text(200, WEB_LOG));
    steps.push(log_read(&w, "envoy").text(200, ENVOY_LOG));
    let (client, server) = Scripted::start(steps);
    let c = connector(
        client,
        json!({ "evidence_dir": root.path().display().to_string() }),
    );
    let out = c
        .run(
            "logs",
            &args(json!({ "pod": w.name, "namespace": "shop", "lines": 50 })),
        )
        .await;
    server.done(c).await;
    let out = out.unwrap().output;
    let dir = Path::new(out["dir"].as_str().unwrap());
    assert!(dir.starts_with(root.path()), "{}", dir.display());
    assert_eq!(
        evidence(dir),
        [
            ("envoy.log".to_owned(), 0o600),
            ("manifest.sha256".to_owned(), 0o600),
            ("pod.json".to_owned(), 0o600),
            ("web.log".to_owned(), 0o600),
        ]
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("web.log")).unwrap(),
        WEB_LOG
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("envoy.log")).unwrap(),
        ENVOY_LOG
    );
    let kept: Value =
        serde_json::from_slice(&std::fs::read(dir.join("pod.json")).unwrap()).unwrap();
    assert_eq!(kept, w.pod, "the pod document as the API gave it");
    assert_eq!(out["containers"], json!(["web", "envoy"]));
    assert_eq!(out["errors"], json!([]));
}

#[tokio::test]
async fn a_container_log_the_kubelet_fails_is_listed_and_the_others_are_kept() {
    let root = tempfile::tempdir().unwrap();
    let w = web();
    let kubelet = status(
        500,
        "",
        &format!(
            "Get \"https://10.0.0.12:10250/containerLogs/shop/{}/envoy?tailLines=50&timestamps=true\": \
             dial tcp 10.0.0.12:10250: connect: connection refused",
            w.name
        ),
    );
    let mut steps = w.reads();
    steps.push(log_read(&w, "web").text(200, WEB_LOG));
    steps.push(log_read(&w, "envoy").reply(500, kubelet));
    let (client, server) = Scripted::start(steps);
    let c = connector(
        client,
        json!({ "evidence_dir": root.path().display().to_string() }),
    );
    let out = c
        .run(
            "logs",
            &args(json!({ "pod": w.name, "namespace": "shop", "lines": 50 })),
        )
        .await;
    server.done(c).await;
    let out = out.unwrap().output;
    let dir = Path::new(out["dir"].as_str().unwrap());
    assert_eq!(
        evidence(dir),
        [
            ("errors.json".to_owned(), 0o600),
            ("manifest.sha256".to_owned(), 0o600),
            ("pod.json".to_owned(), 0o600),
            ("web.log".to_owned(), 0o600),
        ]
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("web.log")).unwrap(),
        WEB_LOG
    );
    let errors = out["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{errors:?}");
    let e = errors[0].as_str().unwrap();
    assert!(
        e.starts_with(&format!(
            "read the logs of container `envoy` of pod `{}`",
            w.id()
        )) && e.contains("connect: connection refused")
            && e.ends_with("(Failure, HTTP 500)"),
        "{e}"
    );
}

// ---------------------------------------------------------------------------------------------
// drain_node

fn node(unschedulable: bool) -> Value {
    let mut n = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": NODE,
            "uid": "e1f2a3b4-c5d6-4e7f-8a9b-0c1d2e3f4a5b",
            "resourceVersion": "48002",
            "creationTimestamp": "2024-04-30T08:00:00Z",
            "labels": {
                "kubernetes.io/hostname": NODE,
                "kubernetes.io/os": "linux",
                "node.kubernetes.io/instance-type": "m5.large",
            },
        },
        "spec": { "podCIDR": "10.244.1.0/24", "providerID": "aws:///eu-west-1a/i-0a1b2c3d4e5f" },
        "status": {
            "addresses": [{ "type": "InternalIP", "address": "10.0.0.12" }],
            "conditions": [{ "type": "Ready", "status": "True", "reason": "KubeletReady",
                             "message": "kubelet is posting ready status",
                             "lastHeartbeatTime": STARTED, "lastTransitionTime": STARTED }],
            "nodeInfo": { "kubeletVersion": "v1.29.4", "containerRuntimeVersion": "containerd://1.7.13",
                          "architecture": "amd64", "operatingSystem": "linux", "osImage": "Ubuntu 22.04.4 LTS",
                          "kernelVersion": "5.15.0-1057-aws", "kubeProxyVersion": "v1.29.4",
                          "machineID": "ec2a", "systemUUID": "ec2a", "bootID": "b007" },
        },
    });
    if unschedulable {
        n["spec"]["unschedulable"] = json!(true);
        n["spec"]["taints"] = json!([{ "key": "node.kubernetes.io/unschedulable",
                                       "effect": "NoSchedule", "timeAdded": STARTED }]);
    }
    n
}

/// The pod as a kubelet shows it once an eviction was accepted: still there, terminating.
fn terminating(pod: &Value) -> Value {
    let mut p = pod.clone();
    p["metadata"]["deletionTimestamp"] = json!("2024-05-02T10:00:30Z");
    p["metadata"]["deletionGracePeriodSeconds"] = json!(30);
    p
}

#[tokio::test(start_paused = true)]
async fn drain_cordons_skips_daemon_and_mirror_pods_retries_a_budget_and_waits_for_the_pods() {
    let web = web();
    // Two replicas under a budget of one unavailable: blocked until the first is replaced.
    let api = Deployed::new("shop", "api", "p9w2m", 2, &["api"]);
    let fluentd = pod(
        "logging",
        "fluentd-x7k2p",
        "c4d5e6f7-a8b9-4c0d-9e1f-2a3b4c5d6e7f",
        owner(
            "apps/v1",
            "DaemonSet",
            "fluentd",
            "f0e1d2c3-b4a5-4968-8776-655443322110",
        ),
        &["fluentd"],
    );
    let daemon_set = json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": { "name": "fluentd", "namespace": "logging",
                      "uid": "f0e1d2c3-b4a5-4968-8776-655443322110", "generation": 1,
                      "labels": { "app": "fluentd" } },
        "spec": { "selector": { "matchLabels": { "app": "fluentd" } },
                  "template": { "metadata": { "labels": { "app": "fluentd" } },
                                "spec": { "containers": [{ "name": "fluentd", "image": "fluent/fluentd:v1.16" }] } } },
        "status": { "currentNumberScheduled": 3, "desiredNumberScheduled": 3, "numberMisscheduled": 0,
                    "numberReady": 3 },
    });
    let mut mirror = pod(
        "kube-system",
        "kube-apiserver-node-a",
        "7f6e5d4c-3b2a-4190-8f7e-6d5c4b3a2918",
        owner("v1", "Node", NODE, "e1f2a3b4-c5d6-4e7f-8a9b-0c1d2e3f4a5b"),
        &["kube-apiserver"],
    );
    mirror["metadata"]["annotations"] = json!({
        "kubernetes.io/config.hash": "5d1b6ec7a5e0a8f0b2cd3c1e9e8f7a6b",
        "kubernetes.io/config.mirror": "5d1b6ec7a5e0a8f0b2cd3c1e9e8f7a6b",
        "kubernetes.io/config.source": "file",
    });

    let mut steps = vec![
        get("/api/v1/nodes/node-a").reply(200, node(false)),
        patch("/api/v1/nodes/node-a")
            .body(|b| assert_eq!(b, &json!({ "spec": { "unschedulable": true } })))
            .reply(200, node(true)),
        get("/api/v1/pods")
            .query(&[("fieldSelector", "spec.nodeName=node-a")])
            .reply(
                200,
                json!({
                    "kind": "PodList", "apiVersion": "v1",
                    "metadata": { "resourceVersion": "48230" },
                    "items": [web.pod, api.pod, fluentd, mirror],
                }),
            ),
    ];
    // Each pod is read with its owners; the guards read the namespace of those that may go.
    steps.extend(web.reads());
    steps.push(namespace_read("shop"));
    steps.extend(api.reads());
    steps.push(namespace_read("shop"));
    steps.push(get("/api/v1/namespaces/logging/pods/fluentd-x7k2p").reply(200, fluentd));
    steps.push(get("/apis/apps/v1/namespaces/logging/daemonsets/fluentd").reply(200, daemon_set));
    steps.push(get("/api/v1/namespaces/kube-system/pods/kube-apiserver-node-a").reply(200, mirror));
    // First round: web goes, api's budget refuses.
    steps.push(get("/api/v1").reply(200, core_discovery("v1")));
    steps.push(web.evict("policy/v1", None).reply(201, status(201, "", "")));
    steps.push(api.evict("policy/v1", None).reply(429, disruption_budget()));
    // Second round, after a pause: api read again, and its budget now allows it.
    steps.extend(api.reads());
    steps.push(api.evict("policy/v1", None).reply(201, status(201, "", "")));
    // The wait: web terminates for a while, then both are gone.
    steps.push(get(&web.path()).reply(200, terminating(&web.pod)));
    steps.push(get(&web.path()).reply(404, not_found("pods", &web.name)));
    steps.push(get(&api.path()).reply(404, not_found("pods", &api.name)));

    let (client, server) = Scripted::start(steps);
    let c = connector(client, json!({}));
    let out = c
        .run(
            "drain_node",
            &args(json!({ "node": NODE, "timeout": "1m" })),
        )
        .await;
    server.done(c).await;
    let out = out.unwrap();
    assert_eq!(out.output["cordoned"], json!(true));
    assert_eq!(out.output["evicted"], json!([web.id(), api.id()]));
    assert_eq!(
        out.output["skipped"],
        json!([
            { "pod": "logging/fluentd-x7k2p",
              "reason": "DaemonSet pod (it would come back on the node)" },
            { "pod": "kube-system/kube-apiserver-node-a",
              "reason": "mirror pod (the kubelet owns it)" },
        ])
    );
    assert_eq!(out.output["terminating"], json!([]));
    assert_eq!(out.undo, Some(json!({ "node": NODE })));
}

// ---------------------------------------------------------------------------------------------
// Server-side dry run

fn isolation_steps(w: &Deployed) -> Vec<Step> {
    let mut steps = w.reads();
    steps.push(namespace_read("shop"));
    steps.push(
        get("/apis/networking.k8s.io/v1/namespaces/shop/networkpolicies").reply(
            200,
            json!({
                "kind": "NetworkPolicyList", "apiVersion": "networking.k8s.io/v1",
                "metadata": { "resourceVersion": "48230" },
                "items": [{
                    "kind": "NetworkPolicy", "apiVersion": "networking.k8s.io/v1",
                    "metadata": { "name": "web-from-ingress", "namespace": "shop",
                                  "uid": "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d" },
                    "spec": { "podSelector": { "matchLabels": { "app": "web" } },
                              "ingress": [{ "from": [{ "namespaceSelector": { "matchLabels": {
                                  "kubernetes.io/metadata.name": "ingress-nginx" } } }] }],
                              "policyTypes": ["Ingress"] },
                }],
            }),
        ),
    );
    steps
}

fn policy_checks(uid: String, pod: String) -> impl FnOnce(&Value) + Send + 'static {
    move |b: &Value| {
        assert_eq!(b["kind"], "NetworkPolicy");
        assert_eq!(
            b["metadata"]["name"],
            json!(format!("riposte-isolate-{pod}"))
        );
        assert_eq!(b["metadata"]["namespace"], "shop");
        assert_eq!(
            b["spec"],
            json!({
                "podSelector": { "matchLabels": { "riposte.io/isolated": uid } },
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [],
                "egress": [],
            })
        );
    }
}

#[tokio::test]
async fn a_plan_makes_every_write_as_a_server_side_dry_run() {
    let w = web();
    let policy_path = "/apis/networking.k8s.io/v1/namespaces/shop/networkpolicies";
    let mut steps = isolation_steps(&w);
    steps.push(
        post(policy_path)
            .dry()
            .body(policy_checks(w.uid.clone(), w.name.clone()))
            .reply(
                201,
                json!({ "kind": "NetworkPolicy", "apiVersion": "networking.k8s.io/v1",
                        "metadata": { "name": format!("riposte-isolate-{}", w.name),
                                      "namespace": "shop" } }),
            ),
    );
    let (uid, version) = (w.uid.clone(), w.pod["metadata"]["resourceVersion"].clone());
    let mut labelled = w.pod.clone();
    labelled["metadata"]["labels"]["riposte.io/isolated"] = json!(w.uid);
    steps.push(
        patch(&w.path())
            .dry()
            .body(move |b| {
                assert_eq!(
                    b,
                    &json!({ "metadata": {
                        "labels": { "riposte.io/isolated": uid },
                        "resourceVersion": version,
                    } })
                );
            })
            .reply(200, labelled),
    );
    let (client, server) = Scripted::start(steps);
    let c = connector(client, json!({}));
    let plan = c
        .plan(
            "isolate_pod",
            &args(json!({ "pod": w.name, "namespace": "shop" })),
        )
        .await;
    server.done(c).await;
    let d = plan.unwrap().description;
    assert!(
        d.starts_with(&format!("isolate pod `{}` with NetworkPolicy", w.id()))
            && d.contains("web-from-ingress also select(s) this pod")
            && d.ends_with("(server-side dry run: the API server accepted it)"),
        "{d}"
    );
}

#[tokio::test]
async fn a_plan_reports_what_rbac_would_refuse() {
    let w = web();
    let forbidden = {
        let mut s = status(
            403,
            "Forbidden",
            "networkpolicies.networking.k8s.io is forbidden: User \
             \"system:serviceaccount:riposte:riposte\" cannot create resource \"networkpolicies\" \
             in API group \"networking.k8s.io\" in the namespace \"shop\"",
        );
        s["details"] = json!({ "group": "networking.k8s.io", "kind": "networkpolicies" });
        s
    };
    let mut steps = isolation_steps(&w);
    steps.push(
        post("/apis/networking.k8s.io/v1/namespaces/shop/networkpolicies")
            .dry()
            .body(policy_checks(w.uid.clone(), w.name.clone()))
            .reply(403, forbidden),
    );
    let (client, server) = Scripted::start(steps);
    let c = connector(client, json!({}));
    let plan = c
        .plan(
            "isolate_pod",
            &args(json!({ "pod": w.name, "namespace": "shop" })),
        )
        .await;
    server.done(c).await;
    let e = plan.unwrap_err();
    assert!(!e.is_retryable(), "{e:?}");
    let ConnectorError::Permanent(m) = &e else {
        panic!("{e:?}")
    };
    assert!(
        m.starts_with(&format!(
            "create NetworkPolicy `shop/riposte-isolate-{}`",
            w.name
        )) && m.contains("cannot create resource \"networkpolicies\"")
            && m.ends_with("(Forbidden, HTTP 403)"),
        "{m}"
    );
}

// ---------------------------------------------------------------------------------------------
// The API server away

async fn evict_against(first_answer: Step) -> ConnectorError {
    let (client, server) = Scripted::start(vec![first_answer]);
    let c = connector(client, json!({}));
    let out = c
        .run(
            "evict_pod",
            &args(json!({ "pod": web().name, "namespace": "shop" })),
        )
        .await;
    server.done(c).await;
    out.unwrap_err()
}

#[tokio::test]
async fn an_unreachable_api_server_is_a_transient_error() {
    let e = evict_against(get(&web().path()).refused()).await;
    assert!(e.is_retryable(), "{e:?}");
    let m = e.to_string();
    assert!(
        m.starts_with(&format!(
            "read pod `{}`: the Kubernetes API is unreachable",
            web().id()
        )) && m.contains("Connection refused"),
        "{m}"
    );
}

#[tokio::test]
async fn an_api_server_answering_503_is_a_transient_error_with_its_reason() {
    let e = evict_against(get(&web().path()).reply(
        503,
        status(
            503,
            "ServiceUnavailable",
            "the server is currently unable to handle the request",
        ),
    ))
    .await;
    assert_eq!(
        e,
        ConnectorError::Transient(format!(
            "read pod `{}`: the server is currently unable to handle the request \
             (ServiceUnavailable, HTTP 503)",
            web().id()
        ))
    );
    // A load balancer's 503 in front of it, not a Status: still transient, code kept.
    let e = evict_against(get(&web().path()).text(
        503,
        "upstream connect error or disconnect/reset before headers",
    ))
    .await;
    assert!(e.is_retryable(), "{e:?}");
    assert!(e.to_string().ends_with("HTTP 503)"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// A concurrent change

#[tokio::test]
async fn a_label_racing_another_change_is_a_transient_conflict() {
    let w = web();
    let mut steps = w.reads();
    steps.push(namespace_read("shop"));
    let conflict = status(
        409,
        "Conflict",
        "Operation cannot be fulfilled on pods \"web\": the object has been modified; please \
         apply your changes to the latest version and try again",
    );
    steps.push(
        patch(&w.path())
            .body(|b| {
                assert_eq!(b["metadata"]["labels"]["riposte.io/incident"], "r-1");
                assert!(
                    b["metadata"]["resourceVersion"].is_string(),
                    "the patch names the version it read: {b}"
                );
            })
            .reply(409, conflict),
    );
    let (client, server) = Scripted::start(steps);
    let c = connector(client, json!({}));
    let out = c
        .run(
            "label",
            &args(json!({ "pod": w.name, "namespace": "shop",
                          "labels": { "riposte.io/incident": "r-1" } })),
        )
        .await;
    server.done(c).await;
    let e = out.unwrap_err();
    assert!(e.is_retryable(), "a retry reads the object again: {e:?}");
    assert!(e.to_string().ends_with("(Conflict, HTTP 409)"), "{e}");
}
