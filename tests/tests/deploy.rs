//! The deployment in deploy/: the Kubernetes manifests are created, object by object, in the
//! real kube-apiserver (1.20, etcd, RBAC) and read back; the ClusterRole is what `riposte rbac`
//! prints for the shipped playbooks; the ConfigMap's riposte.yaml passes `riposte check` and
//! names only files the Deployment mounts; and deploy/Dockerfile's runtime stage is built by the
//! real docker client from a base imported from the binary's own shared libraries, then run
//! read-only, without capabilities, as its non-root user.
//!
//! No image can be pulled here, so the Rust build stage is not built: the runtime is built with
//! `--target runtime-prebuilt` from the binary under test. The server has no controllers, so
//! the Deployment makes no pods; what is checked is that every object is valid and keeps the
//! fields the deployment relies on.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use reqwest::Method;
use riposte_tests::docker::{docker, docker_ok, require_docker};
use riposte_tests::kube::KubeApi;
use riposte_tests::{cli, repo_root, riposte_bin};
use serde_json::{json, Value};

fn manifests_dir() -> PathBuf {
    repo_root().join("deploy").join("kubernetes")
}

/// Every object of every manifest listed in kustomization.yaml, in its order, as JSON.
fn manifests() -> Vec<(String, Value)> {
    let dir = manifests_dir();
    let kustomization: Value =
        serde_yaml::from_str(&std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap())
            .unwrap();
    let files: Vec<String> = kustomization["resources"]
        .as_array()
        .expect("kustomization.yaml lists resources")
        .iter()
        .map(|f| f.as_str().unwrap().to_owned())
        .collect();
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    on_disk.sort();
    let mut listed = files.clone();
    listed.sort();
    assert_eq!(
        listed, on_disk,
        "kustomization.yaml must list every manifest in deploy/kubernetes"
    );
    let mut objects = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(dir.join(&file)).unwrap();
        for doc in split_documents(&text) {
            let v: Value = serde_json::to_value(
                serde_yaml::from_str::<serde_yaml::Value>(&doc)
                    .unwrap_or_else(|e| panic!("{file}: {e}")),
            )
            .unwrap();
            if !v.is_null() {
                objects.push((file.clone(), v));
            }
        }
    }
    objects
}

/// The documents of a multi-document YAML file (separated by `---` lines).
fn split_documents(text: &str) -> Vec<String> {
    let mut docs = vec![String::new()];
    for line in text.lines() {
        if line.trim_end() == "---" {
            docs.push(String::new());
        } else if let Some(d) = docs.last_mut() {
            d.push_str(line);
            d.push('\n');
        }
    }
    docs
}

/// The collection an object is created in: `/api/v1/...` or `/apis/GROUP/VERSION/...`, with
/// its namespace when it has one.
fn collection(obj: &Value) -> String {
    let api = obj["apiVersion"].as_str().unwrap();
    let kind = obj["kind"].as_str().unwrap();
    let plural = match kind {
        "Namespace" => "namespaces",
        "ServiceAccount" => "serviceaccounts",
        "ConfigMap" => "configmaps",
        "Secret" => "secrets",
        "Service" => "services",
        "ClusterRole" => "clusterroles",
        "ClusterRoleBinding" => "clusterrolebindings",
        "Role" => "roles",
        "RoleBinding" => "rolebindings",
        "Deployment" => "deployments",
        "PodDisruptionBudget" => "poddisruptionbudgets",
        "NetworkPolicy" => "networkpolicies",
        "ValidatingWebhookConfiguration" => "validatingwebhookconfigurations",
        other => panic!("the test does not know where a {other} is created: add it here"),
    };
    let base = if api == "v1" {
        "/api/v1".to_owned()
    } else {
        format!("/apis/{api}")
    };
    match obj["metadata"]["namespace"].as_str() {
        Some(ns) => format!("{base}/namespaces/{ns}/{plural}"),
        None => format!("{base}/{plural}"),
    }
}

/// Whether the server serves `GROUP/VERSION`.
async fn serves(k: &KubeApi, group_version: &str) -> bool {
    let (s, _) = k
        .admin_json(Method::GET, &format!("/apis/{group_version}"), None)
        .await;
    s == 200
}

/// Creates the object as the admin and returns what the server stored (read back with GET).
async fn apply(k: &KubeApi, file: &str, obj: &Value) -> Value {
    let path = collection(obj);
    let name = obj["metadata"]["name"].as_str().unwrap();
    let (s, v) = k.admin_json(Method::POST, &path, Some(obj.clone())).await;
    assert_eq!(s, 201, "{file}: POST {path} ({name}): {v}");
    let (s, v) = k
        .admin_json(Method::GET, &format!("{path}/{name}"), None)
        .await;
    assert_eq!(s, 200, "{file}: GET {path}/{name}: {v}");
    v
}

fn find<'a>(objects: &'a [(String, Value, Value)], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|(_, o, _)| o["kind"] == kind && o["metadata"]["name"] == name)
        .map(|(_, _, stored)| stored)
        .unwrap_or_else(|| panic!("no {kind} {name} in deploy/kubernetes"))
}

/// The server's answer to a SubjectAccessReview.
async fn allowed(k: &KubeApi, review: Value) -> bool {
    let (s, v) = k
        .admin_json(
            Method::POST,
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            Some(review),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    v["status"]["allowed"] == true
}

/// Whether `selector` (matchLabels) selects `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    selector
        .as_object()
        .unwrap()
        .iter()
        .all(|(k, v)| labels[k] == *v)
}

#[tokio::test]
async fn the_manifests_are_valid_objects_that_keep_what_the_deployment_relies_on() {
    let k = KubeApi::start();
    let objects = manifests();

    // Created in the listed order, each through its kind's endpoint, and read back.
    // PodDisruptionBudgets are policy/v1 from Kubernetes 1.21 (and only that from 1.25); this
    // server is 1.20, so there the same spec goes to policy/v1beta1.
    let pdb_v1 = serves(&k, "policy/v1").await;
    let mut stored: Vec<(String, Value, Value)> = Vec::new();
    for (file, obj) in objects {
        let mut sent = obj.clone();
        if obj["kind"] == "PodDisruptionBudget" && !pdb_v1 {
            assert_eq!(obj["apiVersion"], "policy/v1", "{file}");
            sent["apiVersion"] = json!("policy/v1beta1");
        }
        let back = apply(&k, &file, &sent).await;
        assert_eq!(back["kind"], obj["kind"], "{file}");
        stored.push((file, obj, back));
    }
    let kinds: Vec<&str> = stored
        .iter()
        .map(|(_, o, _)| o["kind"].as_str().unwrap())
        .collect();
    for kind in [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "Deployment",
        "PodDisruptionBudget",
        "Service",
        "NetworkPolicy",
    ] {
        assert!(kinds.contains(&kind), "no {kind} in deploy/kubernetes");
    }

    // RBAC: the file is exactly what `riposte rbac` prints for the shipped playbooks, and the
    // server gives the service account those rights (and no others).
    let playbooks = repo_root().join("playbooks");
    let out = cli(&[
        "rbac",
        playbooks.to_str().unwrap(),
        "--name",
        "riposte",
        "--bind",
        "riposte/riposte",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).unwrap();
    let file = std::fs::read_to_string(manifests_dir().join("rbac.yaml")).unwrap();
    assert_eq!(
        file, printed,
        "deploy/kubernetes/rbac.yaml differs from what `riposte rbac playbooks --name riposte \
         --bind riposte/riposte` prints: regenerate it with that command"
    );
    let role: Value = serde_yaml::from_str(&split_documents(&printed)[0]).unwrap();
    let stored_role = find(&stored, "ClusterRole", "riposte");
    assert_eq!(stored_role["rules"], role["rules"]);
    let binding = find(&stored, "ClusterRoleBinding", "riposte");
    assert_eq!(binding["roleRef"]["name"], "riposte");
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "namespace": "riposte", "name": "riposte"}])
    );
    let sa = "system:serviceaccount:riposte:riposte";
    let review = |verb: &str, resource: &str, group: &str| {
        json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
               "spec": {"user": sa, "groups": ["system:serviceaccounts", "system:serviceaccounts:riposte", "system:authenticated"],
                        "resourceAttributes": {"verb": verb, "resource": resource, "group": group, "namespace": "shop"}}})
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !allowed(&k, review("patch", "pods", "")).await {
        assert!(
            Instant::now() < deadline,
            "the service account riposte/riposte may not patch pods 10 s after the binding"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(allowed(&k, review("create", "networkpolicies", "networking.k8s.io")).await);
    assert!(!allowed(&k, review("get", "secrets", "")).await);
    assert!(!allowed(&k, review("create", "pods", "")).await);

    // The config: valid for the shipped playbooks, and every file it names is mounted.
    let cm = find(&stored, "ConfigMap", "riposte-config");
    let config_text = cm["data"]["riposte.yaml"].as_str().unwrap();
    let work = tempfile::tempdir().unwrap();
    let config_file = work.path().join("riposte.yaml");
    std::fs::write(&config_file, config_text).unwrap();
    let out = cli(&[
        "check",
        playbooks.to_str().unwrap(),
        "--config",
        config_file.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "`riposte check playbooks --config` with the ConfigMap's riposte.yaml:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let config: Value =
        serde_json::to_value(serde_yaml::from_str::<serde_yaml::Value>(config_text).unwrap())
            .unwrap();
    assert_eq!(config["nats"]["url"], "nats://nats.riposte.svc:4222");
    let protected: Vec<&str> = config["protect"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(protected.contains(&"riposte") && protected.contains(&"kube-system"));

    // The Deployment.
    let deploy = find(&stored, "Deployment", "riposte");
    assert_eq!(deploy["spec"]["replicas"], 3);
    let pod = &deploy["spec"]["template"]["spec"];
    let labels = &deploy["spec"]["template"]["metadata"]["labels"];
    assert!(selects(&deploy["spec"]["selector"]["matchLabels"], labels));
    assert_eq!(pod["serviceAccountName"], "riposte");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["runAsUser"], 10001);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert_eq!(pod["topologySpreadConstraints"][0]["maxSkew"], 1);
    assert!(selects(
        &pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
            ["podAffinityTerm"]["labelSelector"]["matchLabels"],
        labels
    ));
    let c = &pod["containers"][0];
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    assert!(c["resources"]["requests"]["memory"].is_string());
    assert!(c["resources"]["limits"]["memory"].is_string());
    // The replica's name is the pod's, through the downward API.
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let replica = args.iter().position(|a| *a == "--replica").unwrap();
    assert_eq!(args[replica + 1], "$(POD_NAME)");
    let pod_name = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "POD_NAME")
        .unwrap();
    assert_eq!(
        pod_name["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    // Probes on the metrics port the config listens on.
    let port_of = |name: &Value| {
        c["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == *name)
            .unwrap_or_else(|| panic!("no container port {name}"))["containerPort"]
            .as_i64()
            .unwrap()
    };
    let metrics_port: i64 = config["metrics"]["listen"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let webhook_port: i64 = config["images"]["admission"]["listen"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        assert_eq!(c[probe]["httpGet"]["path"], path, "{probe}");
        assert_eq!(
            port_of(&c[probe]["httpGet"]["port"]),
            metrics_port,
            "{probe}"
        );
    }
    assert_eq!(port_of(&json!("webhook")), webhook_port);
    // Volumes: the config, secrets from Secret volumes (tmpfs), memory for /tmp, data.
    let volume = |name: &str| {
        pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no volume {name}"))
    };
    let mounts = c["volumeMounts"].as_array().unwrap();
    let mount_of = |path: &str| {
        mounts
            .iter()
            .filter(|m| Path::new(path).starts_with(m["mountPath"].as_str().unwrap()))
            .max_by_key(|m| m["mountPath"].as_str().unwrap().len())
            .unwrap_or_else(|| panic!("{path} is on no mounted volume"))
    };
    assert_eq!(volume("tmp")["emptyDir"]["medium"], "Memory");
    assert_eq!(mount_of("/tmp/x")["name"], "tmp");
    let config_mount = mount_of("/etc/riposte/config/riposte.yaml");
    assert_eq!(
        volume(config_mount["name"].as_str().unwrap())["configMap"]["name"],
        "riposte-config"
    );
    assert_eq!(
        args[args.iter().position(|a| *a == "--config").unwrap() + 1],
        "/etc/riposte/config/riposte.yaml"
    );
    let data = mount_of(config["engine"]["data_dir"].as_str().unwrap());
    assert!(volume(data["name"].as_str().unwrap())["emptyDir"].is_object());
    for secret_path in [
        &config["nats"]["credentials_file"],
        &config["images"]["admission"]["tls"]["cert_file"],
        &config["images"]["admission"]["tls"]["key_file"],
    ] {
        let path = secret_path.as_str().unwrap();
        let m = mount_of(path);
        assert_eq!(m["readOnly"], true, "{path}");
        let v = volume(m["name"].as_str().unwrap());
        assert!(
            v["secret"]["secretName"].is_string(),
            "{path} must come from a Secret volume: {v}"
        );
        assert_eq!(v["secret"]["defaultMode"], 0o440, "{path}: mode 0440");
    }

    // The disruption budget keeps a majority of the replicas.
    let pdb = find(&stored, "PodDisruptionBudget", "riposte");
    assert_eq!(pdb["spec"]["minAvailable"], 2);
    assert!(selects(&pdb["spec"]["selector"]["matchLabels"], labels));

    // The Services select the engine's pods and reach the named ports.
    for (name, port) in [
        ("riposte-metrics", metrics_port),
        ("riposte-webhook", webhook_port),
    ] {
        let svc = find(&stored, "Service", name);
        assert!(selects(&svc["spec"]["selector"], labels), "{name}");
        let p = &svc["spec"]["ports"][0];
        assert_eq!(p["port"], port, "{name}");
        assert_eq!(port_of(&p["targetPort"]), port, "{name}");
    }

    // The NetworkPolicy: ingress only to those two ports, egress only to NATS, DNS and the API.
    let np = find(&stored, "NetworkPolicy", "riposte");
    assert!(selects(&np["spec"]["podSelector"]["matchLabels"], labels));
    assert_eq!(np["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
    let ports = |rules: &Value| -> Vec<(String, i64)> {
        let mut v: Vec<(String, i64)> = rules
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r["ports"].as_array().unwrap().clone())
            .map(|p| {
                (
                    p["protocol"].as_str().unwrap().to_owned(),
                    p["port"].as_i64().unwrap(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let mut expected_in = vec![
        ("TCP".to_owned(), metrics_port),
        ("TCP".to_owned(), webhook_port),
    ];
    expected_in.sort();
    assert_eq!(ports(&np["spec"]["ingress"]), expected_in);
    assert_eq!(
        ports(&np["spec"]["egress"]),
        vec![
            ("TCP".to_owned(), 53),
            ("TCP".to_owned(), 443),
            ("TCP".to_owned(), 4222),
            ("TCP".to_owned(), 6443),
            ("UDP".to_owned(), 53)
        ]
    );
    let egress = np["spec"]["egress"].as_array().unwrap();
    assert!(
        egress.iter().all(|r| r["to"].is_array()),
        "egress rules without `to`: {np}"
    );

    // The commented ValidatingWebhookConfiguration sample is a valid object too, pointing at
    // the webhook Service (created last: it would be asked about what follows).
    let service_yaml = std::fs::read_to_string(manifests_dir().join("service.yaml")).unwrap();
    let sample: String = service_yaml
        .split("# ---\n")
        .nth(1)
        .expect("service.yaml carries a commented ValidatingWebhookConfiguration after `# ---`")
        .lines()
        .map(|l| {
            format!(
                "{}\n",
                l.strip_prefix("# ").unwrap_or(l.trim_start_matches('#'))
            )
        })
        .collect();
    let mut hook: Value =
        serde_json::to_value(serde_yaml::from_str::<serde_yaml::Value>(&sample).unwrap()).unwrap();
    assert_eq!(hook["kind"], "ValidatingWebhookConfiguration");
    let client = &hook["webhooks"][0]["clientConfig"]["service"];
    assert_eq!(client["name"], "riposte-webhook");
    assert_eq!(client["port"], webhook_port);
    assert_eq!(client["path"], "/v1/admission");
    use base64::Engine as _;
    hook["webhooks"][0]["clientConfig"]["caBundle"] =
        json!(base64::engine::general_purpose::STANDARD.encode(std::fs::read(&k.ca_pem).unwrap()));
    let back = apply(&k, "service.yaml (sample)", &hook).await;
    assert_eq!(back["webhooks"][0]["failurePolicy"], "Fail");

    // Clean up: the webhook first (it would be asked about the rest), then what is cluster-wide,
    // then the namespace with everything in it.
    for path in [
        "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/riposte-images",
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/riposte",
        "/apis/rbac.authorization.k8s.io/v1/clusterroles/riposte",
        "/api/v1/namespaces/riposte",
    ] {
        let (s, v) = k.admin_json(Method::DELETE, path, None).await;
        assert!(s == 200 || s == 202, "DELETE {path}: {s} {v}");
    }
}

/// Images and containers this test made, removed when it ends (also on failure).
struct DockerLeftovers {
    images: Vec<String>,
    containers: Vec<String>,
}

impl Drop for DockerLeftovers {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = docker(&["rm", "-f", c]);
        }
        for i in self.images.iter().rev() {
            let _ = docker(&["rmi", "-f", i]);
        }
    }
}

/// The shared libraries `ldd` lists for the binary, as absolute paths.
fn shared_libraries(bin: &Path) -> Vec<PathBuf> {
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .expect("ldd is needed to make the image's base: apt-get install libc-bin");
    assert!(out.status.success(), "ldd {}: {:?}", bin.display(), out);
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
        .map(PathBuf::from)
        .collect()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

#[test]
fn the_image_builds_from_the_dockerfile_and_runs_read_only_as_its_user() {
    require_docker();
    let tag = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    );
    let base = format!("riposte-deploy-test-base:{tag}");
    let image = format!("riposte-deploy-test:{tag}");
    let container = format!("riposte-deploy-test-{tag}");
    let mut leftovers = DockerLeftovers {
        images: Vec::new(),
        containers: Vec::new(),
    };
    let work = tempfile::tempdir().unwrap();

    // The base: a root filesystem holding only the binary's shared libraries.
    let bin = riposte_bin();
    let rootfs = work.path().join("rootfs");
    for lib in shared_libraries(&bin) {
        let dest = rootfs.join(lib.strip_prefix("/").unwrap());
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(&lib, &dest).unwrap_or_else(|e| panic!("{}: {e}", lib.display()));
    }
    let tar = work.path().join("rootfs.tar");
    let out = Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .output()
        .unwrap();
    assert!(out.status.success(), "tar: {out:?}");
    leftovers.images.push(base.clone());
    docker_ok(&["import", tar.to_str().unwrap(), &base]);

    // The build context: the layout of the repository, with the binary under test.
    let ctx = work.path().join("ctx");
    std::fs::create_dir_all(ctx.join("deploy")).unwrap();
    std::fs::create_dir_all(ctx.join("bin")).unwrap();
    std::fs::copy(
        repo_root().join("deploy").join("Dockerfile"),
        ctx.join("deploy").join("Dockerfile"),
    )
    .unwrap();
    std::fs::copy(&bin, ctx.join("bin").join("riposte")).unwrap();
    copy_dir(&repo_root().join("playbooks"), &ctx.join("playbooks"));
    copy_dir(
        &repo_root().join("deploy").join("data"),
        &ctx.join("deploy").join("data"),
    );
    leftovers.images.push(image.clone());
    docker_ok(&[
        "build",
        "--quiet",
        "-f",
        ctx.join("deploy").join("Dockerfile").to_str().unwrap(),
        "--target",
        "runtime-prebuilt",
        "--build-arg",
        &format!("RUNTIME_BASE={base}"),
        "--build-arg",
        "BINARY=bin/riposte",
        "-t",
        &image,
        ctx.to_str().unwrap(),
    ]);

    let user = docker_ok(&["image", "inspect", "-f", "{{.Config.User}}", &image]);
    assert_eq!(user, "10001:10001");
    let volumes = docker_ok(&["image", "inspect", "-f", "{{json .Config.Volumes}}", &image]);
    assert!(volumes.contains("/var/lib/riposte"), "{volumes}");

    // Run as Kubernetes runs it: read-only root, no capabilities, no privilege escalation,
    // the image's user, the config mounted read-only.
    let config = work.path().join("riposte.yaml");
    let manifest: Value = serde_yaml::from_str::<serde_yaml::Value>(
        &std::fs::read_to_string(manifests_dir().join("configmap.yaml")).unwrap(),
    )
    .map(|v| serde_json::to_value(v).unwrap())
    .unwrap();
    std::fs::write(&config, manifest["data"]["riposte.yaml"].as_str().unwrap()).unwrap();
    let run_with = |root: &str, name: &str, args: &[&str]| -> Output {
        let mount = format!("{}:/etc/riposte/config/riposte.yaml:ro", config.display());
        let mut argv = vec![
            "run",
            "--rm",
            "--name",
            name,
            root,
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
            "--network",
            "none",
            "--tmpfs",
            "/tmp",
            "-v",
            &mount,
            &image,
        ];
        argv.extend_from_slice(args);
        docker(&argv)
    };
    let run = |name: &str, args: &[&str]| run_with("--read-only", name, args);
    let ok = |out: Output| -> String {
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    leftovers.containers.push(format!("{container}-v"));
    let version = ok(run(&format!("{container}-v"), &["--version"]));
    assert!(version.starts_with("riposte "), "{version}");
    // The data directory (a volume) is the user's; the rest of the tree is not.
    leftovers.containers.push(format!("{container}-d"));
    ok(run(
        &format!("{container}-d"),
        &["schema", "/var/lib/riposte/schemas"],
    ));
    leftovers.containers.push(format!("{container}-r"));
    let refused = run_with(
        "--read-only=false",
        &format!("{container}-r"),
        &["schema", "/etc/riposte/schemas"],
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && stderr.contains("ermission denied"),
        "uid 10001 must not write to /etc/riposte: {refused:?}"
    );
    leftovers.containers.push(format!("{container}-c"));
    let checked = ok(run(
        &format!("{container}-c"),
        &[
            "check",
            "/etc/riposte/playbooks",
            "--config",
            "/etc/riposte/config/riposte.yaml",
        ],
    ));
    let shipped = std::fs::read_dir(repo_root().join("playbooks"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "yaml")
        })
        .count();
    assert_eq!(
        checked,
        format!("{shipped} playbook(s) OK in /etc/riposte/playbooks")
    );
    drop(leftovers);
    for name in [&image, &base] {
        let out = docker(&["image", "inspect", name]);
        assert!(!out.status.success(), "{name} was not removed");
    }
}
