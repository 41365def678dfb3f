//! What already runs a revoked image: `docker.find_by_image` against the real Docker daemon
//! (containers made from images committed from the local busybox image, one pushed to a real
//! Debian `docker-registry` on loopback so it carries a digest), and
//! `kubernetes.find_by_image` against the real kube-apiserver with only the RBAC
//! `riposte rbac --all` prints.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::Method;
use riposte_connectors::docker::DockerConnector;
use riposte_connectors::kubernetes::KubernetesConnector;
use riposte_connectors::{Args, Connector, ConnectorError, Deps};
use riposte_tests::docker::{docker, docker_ok, Scene, SCENE_LABEL, TEST_IMAGE};
use riposte_tests::kube::{Estate, KubeApi};
use riposte_tests::{cli, free_port};
use serde_json::{json, Value};

fn args(v: Value) -> Args {
    v.as_object().cloned().unwrap()
}

/// Containers this test runs from its own images, removed when dropped (the scene removes
/// only those it started itself).
struct Started(Vec<String>);

impl Drop for Started {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = docker(&["rm", "--force", name]);
        }
    }
}

/// A new image committed from the test image, so it has an id of its own, tagged `reference`.
fn commit_image(scene: &Scene, started: &mut Started, reference: &str) -> String {
    let tmp = scene.name("commit");
    started.0.push(tmp.clone());
    docker_ok(&["create", "--name", &tmp, TEST_IMAGE]);
    let label = format!("LABEL riposte-test.image={reference}");
    let id = docker_ok(&["commit", "--change", &label, &tmp, reference]);
    docker_ok(&["rm", &tmp]);
    id
}

/// Starts a container of the scene from `image`, with no network (finding it needs none).
fn run_from(scene: &Scene, started: &mut Started, suffix: &str, image: &str) -> String {
    let name = scene.name(suffix);
    started.0.push(name.clone());
    let label = format!("{SCENE_LABEL}={}", scene.prefix());
    docker_ok(&[
        "run",
        "-d",
        "--network",
        "none",
        "--name",
        &name,
        "--label",
        &label,
        image,
    ]);
    name
}

/// A Debian `docker-registry` on a free loopback port (Docker trusts 127.0.0.0/8 without TLS).
struct Registry {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Registry {
    fn start() -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run `docker-registry` ({e}); run `bash scripts/setup` (Debian's docker-registry package)")
            });
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(&addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "docker-registry did not listen on {addr}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Registry {
            child,
            addr,
            _dir: dir,
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn containers(out: &Value) -> BTreeMap<String, (String, String)> {
    out["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["containerName"].as_str().unwrap().to_owned(),
                (
                    c["matchedBy"].as_str().unwrap().to_owned(),
                    c["state"].as_str().unwrap().to_owned(),
                ),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_containers_running_an_image_are_found_by_reference_image_id_and_digest() {
    let mut scene = Scene::new("in-use");
    let mut started = Started(Vec::new());
    let registry = Registry::start();
    let app = scene.name("app");
    scene.track_image_repo(&app);
    let pushed_repo = format!("{}/{app}", registry.addr);
    scene.track_image_repo(&pushed_repo);
    let alias_repo = scene.name("alias");
    scene.track_image_repo(&alias_repo);

    // One image under three names; the registry gives it a digest.
    let v1 = format!("{app}:v1");
    let image_id = commit_image(&scene, &mut started, &v1);
    let alias = format!("{alias_repo}:latest");
    docker_ok(&["tag", &v1, &alias]);
    let pushed = format!("{pushed_repo}:v1");
    docker_ok(&["tag", &v1, &pushed]);
    docker_ok(&["push", &pushed]);
    let repo_digest = docker_ok(&[
        "image",
        "inspect",
        "--format",
        "{{index .RepoDigests 0}}",
        &pushed,
    ]);
    let digest = repo_digest.rsplit_once('@').unwrap().1.to_owned();
    assert!(digest.starts_with("sha256:"), "{repo_digest}");

    let by_ref = run_from(&scene, &mut started, "by-ref", &v1);
    let by_id = run_from(&scene, &mut started, "by-id", &alias);
    let stopped = run_from(&scene, &mut started, "stopped", &v1);
    docker_ok(&["stop", "--time", "0", &stopped]);
    let paused = run_from(&scene, &mut started, "paused", &v1);
    docker_ok(&["pause", &paused]);
    let other = run_from(&scene, &mut started, "other", TEST_IMAGE);

    let c = DockerConnector::new("docker", &serde_json::Map::new(), &Deps::default()).unwrap();

    // By reference (written the short way), by the local image's id; paused counts as running.
    let out = c
        .run(
            "find_by_image",
            &args(json!({ "image": v1, "reason": "CVE-2019-20367" })),
        )
        .await
        .unwrap()
        .output;
    let found = containers(&out);
    assert_eq!(out["count"], 3, "{out:#}");
    assert_eq!(found[&by_ref], ("reference".into(), "running".into()));
    assert_eq!(found[&by_id], ("image id".into(), "running".into()));
    assert_eq!(found[&paused], ("reference".into(), "paused".into()));
    assert!(!found.contains_key(&stopped) && !found.contains_key(&other));
    let first = out["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["containerName"] == by_ref.as_str())
        .unwrap();
    assert_eq!(first["title"], "revoked image running");
    assert_eq!(first["image"], v1.as_str());
    assert_eq!(first["imageId"], image_id.as_str());
    assert_eq!(first["containerId"].as_str().unwrap().len(), 64);
    assert_eq!(first["revokedImage"], format!("docker.io/library/{v1}"));
    assert!(
        first["summary"]
            .as_str()
            .unwrap()
            .ends_with(": CVE-2019-20367"),
        "{first}"
    );

    // Stopped ones too when asked.
    let out = c
        .run(
            "find_by_image",
            &args(json!({ "image": format!("docker.io/{v1}"), "all": true })),
        )
        .await
        .unwrap()
        .output;
    assert_eq!(
        containers(&out)[&stopped],
        ("reference".into(), "exited".into())
    );
    assert_eq!(out["count"], 4, "{out:#}");

    // By digest alone, under a name no container uses: the image's RepoDigests carry it.
    let out = c
        .run(
            "find_by_image",
            &args(json!({ "image": "registry.example/elsewhere:9", "digest": digest })),
        )
        .await
        .unwrap()
        .output;
    let found = containers(&out);
    assert_eq!(found[&by_ref].0, "digest", "{out:#}");
    assert_eq!(found[&by_id].0, "digest");
    assert_eq!(out["count"], 3);

    // The plan looks and names what it found.
    let plan = c
        .plan("find_by_image", &args(json!({ "image": v1 })))
        .await
        .unwrap();
    assert!(
        plan.description.contains("(now 3: "),
        "{}",
        plan.description
    );
    assert!(plan.description.contains(&by_ref), "{}", plan.description);

    // An image nothing runs: none; a bad reference: a clear, permanent error.
    let out = c
        .run(
            "find_by_image",
            &args(json!({ "image": "registry.example/nothing:1" })),
        )
        .await
        .unwrap()
        .output;
    assert_eq!(
        out,
        json!({ "count": 0, "containers": [], "image": "registry.example/nothing:1" })
    );
    let e = c
        .run("find_by_image", &args(json!({ "image": "Shop/Web:1" })))
        .await
        .unwrap_err();
    assert!(matches!(e, ConnectorError::InvalidArgs { .. }), "{e:?}");
    assert!(
        e.to_string()
            .contains("`Shop/Web:1` is not an image reference"),
        "{e}"
    );
}

/// Binds the `riposte` user to exactly what `riposte rbac --all` prints.
async fn grant_printed_role(k: &KubeApi) -> String {
    let out = cli(&["rbac", "--all", "--name", "riposte-printed"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml = String::from_utf8_lossy(&out.stdout).to_string();
    let role: Value = serde_yaml::from_str(&yaml).unwrap();
    k.grant_riposte("riposte-printed", role["rules"].clone())
        .await;
    yaml
}

fn kube_connector(k: &KubeApi, dir: &Path) -> KubernetesConnector {
    let token_file = dir.join("token");
    std::fs::write(&token_file, &k.riposte_token).unwrap();
    let settings =
        json!({ "url": k.url, "ca_file": k.ca_pem, "token_file": token_file, "timeout": "5s" });
    KubernetesConnector::new(
        "kubernetes",
        settings.as_object().unwrap(),
        &Deps::default(),
    )
    .unwrap()
}

fn pods(out: &Value) -> BTreeMap<String, Value> {
    out["pods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                format!(
                    "{}/{}",
                    p["namespace"].as_str().unwrap(),
                    p["pod"].as_str().unwrap()
                ),
                p.clone(),
            )
        })
        .collect()
}

#[tokio::test]
async fn the_pods_running_an_image_are_found_with_their_workloads_with_only_the_printed_rbac() {
    let k = KubeApi::start();
    let dir = tempfile::tempdir().unwrap();
    Estate::seed(&k, 0).await;
    // A standalone pod whose init container runs the image.
    let (s, v) = k
        .admin_json(
            Method::POST,
            "/api/v1/namespaces/shop/pods",
            Some(json!({"metadata": {"name": "migrate"}, "spec": {
                "initContainers": [{"name": "migrate", "image": "registry.local/proxy:3"}],
                "containers": [{"name": "main", "image": "registry.local/tools:1"}]}})),
        )
        .await;
    assert_eq!(s, 201, "{v}");

    let c = kube_connector(&k, dir.path());
    let e = c
        .run(
            "find_by_image",
            &args(json!({ "image": "registry.local/proxy:3" })),
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("Forbidden, HTTP 403"), "{e}");
    assert!(!e.is_retryable());

    let role = grant_printed_role(&k).await;
    assert!(role.contains("find_by_image"), "{role}");
    assert!(role.contains("\"list\""), "{role}");

    // Every namespace, protected ones included; the workload at the top of each owner chain.
    let out = c
        .run(
            "find_by_image",
            &args(json!({ "image": "registry.local/proxy:3" })),
        )
        .await
        .unwrap()
        .output;
    let found = pods(&out);
    assert_eq!(out["count"], 9, "{out:#}");
    assert_eq!(found["shop/web-5d4f8-a"]["workload"], "deployment/web");
    assert_eq!(found["shop/agent-x"]["workload"], "daemonset/agent");
    assert_eq!(found["shop/db-0"]["workload"], "statefulset/db");
    assert_eq!(found["shop/debug"]["workload"], Value::Null);
    assert!(found.contains_key("kube-system/coredns-1") && found.contains_key("shop/vault-0"));
    let web = &found["shop/web-5d4f8-a"];
    assert_eq!(web["title"], "revoked image running");
    assert_eq!(web["node"], "node-1");
    assert_eq!(web["matchedContainers"], json!(["sidecar"]));
    assert_eq!(web["matchedBy"], "reference");
    assert_eq!(web["podUID"].as_str().unwrap().len(), 36);
    assert_eq!(
        found["shop/migrate"]["matchedContainers"],
        json!(["migrate"])
    );

    // By the digest the nodes pulled, whatever tag the spec names; one namespace.
    let digest = format!("sha256:{}", "a".repeat(64));
    let out = c
        .run(
            "find_by_image",
            &args(json!({ "image": "registry.local/renamed:2", "digest": digest, "namespace": "kube-system" })),
        )
        .await
        .unwrap()
        .output;
    assert_eq!(out["count"], 1, "{out:#}");
    assert_eq!(out["pods"][0]["pod"], "coredns-1");
    assert_eq!(out["pods"][0]["matchedBy"], "digest");
    assert_eq!(out["pods"][0]["image"], "registry.local/coredns-1:1");

    // More pods than one page (500): the list follows the server's continue token.
    let (s, v) = k
        .admin_json(
            Method::POST,
            "/api/v1/namespaces",
            Some(json!({"metadata": {"name": "bulk"}})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let creates = (0..520).map(|i| {
        k.admin_json(
            Method::POST,
            "/api/v1/namespaces/bulk/pods",
            Some(json!({"metadata": {"name": format!("batch-{i:03}")},
                        "spec": {"containers": [{"name": "main", "image": "registry.local/batch:5"}]}})),
        )
    });
    for (s, v) in futures::future::join_all(creates).await {
        assert_eq!(s, 201, "{v}");
    }
    let out = c
        .run(
            "find_by_image",
            &args(json!({ "image": "registry.local/batch:5" })),
        )
        .await
        .unwrap()
        .output;
    assert_eq!(out["count"], 520);
    assert_eq!(out["pods"][519]["pod"], "batch-519");

    // The plan looks; a bad reference is refused before any request.
    let plan = c
        .plan(
            "find_by_image",
            &args(json!({ "image": "registry.local/db-0:1" })),
        )
        .await
        .unwrap();
    assert!(
        plan.description.ends_with("(now 1: shop/db-0)"),
        "{}",
        plan.description
    );
    let e = c
        .run(
            "find_by_image",
            &args(json!({ "image": "registry.local/x:1", "namespace": "Shop" })),
        )
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("not a Kubernetes object name"),
        "{e}"
    );
}
