//! The `kubernetes` connector against a real kube-apiserver (1.20, etcd, TLS, RBAC), acting
//! with a token bound only to the ClusterRole `riposte rbac --all` prints: a verb missing from
//! that role fails these tests with the API's 403.
//!
//! The server has no controllers and no kubelet: pods never run (tests set their status), a
//! graceful delete leaves a scheduled pod terminating, NetworkPolicies are stored but not
//! enforced, evictions are policy/v1beta1, and logs cannot be read. What needs those is tested
//! against a mocked API in connectors/tests/kubernetes_mock.rs.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
use std::collections::BTreeMap;
use std::path::Path;

use reqwest::Method;
use riposte_connectors::kubernetes::KubernetesConnector;
use riposte_connectors::{Args, Connector, ConnectorError, Deps, Protection, Selector, Subject};
use riposte_tests::cli;
use riposte_tests::kube::{Estate, KubeApi};
use serde_json::{json, Value};

fn args(v: Value) -> Args {
    v.as_object().cloned().unwrap()
}

/// Binds the `riposte` user to exactly what `riposte rbac` prints, and returns what it printed.
async fn grant_printed_role(k: &KubeApi, extra: &[&str]) -> String {
    let mut argv = vec!["rbac", "--name", "riposte-printed"];
    argv.extend_from_slice(extra);
    let out = cli(&argv);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml = String::from_utf8_lossy(&out.stdout).to_string();
    let role: Value = serde_yaml::from_str(&yaml).unwrap();
    assert_eq!(role["kind"], "ClusterRole", "{yaml}");
    k.grant_riposte("riposte-printed", role["rules"].clone())
        .await;
    yaml
}

/// An engine config whose `kubernetes` instance reaches the server with the `riposte` token,
/// from a file in `work`.
fn engine_config(k: &KubeApi, work: &Path) -> std::path::PathBuf {
    let token = work.join("riposte-token");
    std::fs::write(&token, &k.riposte_token).unwrap();
    let cfg = work.join("riposte.yaml");
    riposte_tests::write(
        &cfg,
        &format!(
            "connectors:\n  kubernetes:\n    type: kubernetes\n    url: {}\n    ca_file: {}\n    token_file: {}\n    evidence_dir: {}\n",
            k.url,
            k.ca_pem.display(),
            token.display(),
            work.join("evidence").display()
        ),
    );
    cfg
}

fn protection() -> Protection {
    Protection {
        containers: Vec::new(),
        labels: BTreeMap::from([("riposte.io/protected".into(), "true".into())]),
        namespaces: vec!["kube-system".into()],
        selectors: vec![Selector::parse("tier=control-plane").unwrap()],
    }
}

/// An instance that reaches the server with the `riposte` token, from files.
fn connector(k: &KubeApi, dir: &Path, token: &str) -> KubernetesConnector {
    let token_file = dir.join(format!("token-{}", token.len()));
    std::fs::write(&token_file, token).unwrap();
    let settings = json!({
        "url": k.url,
        "ca_file": k.ca_pem,
        "token_file": token_file,
        "evidence_dir": dir.join("evidence"),
        "timeout": "5s",
    });
    KubernetesConnector::new(
        "kubernetes",
        settings.as_object().unwrap(),
        &Deps {
            data_dir: dir.to_path_buf(),
            protect: protection(),
            ..Deps::default()
        },
    )
    .unwrap()
}

async fn get(k: &KubeApi, path: &str) -> (u16, Value) {
    k.admin_json(Method::GET, path, None).await
}

fn refused(r: Result<riposte_connectors::Output, ConnectorError>, what: &str) -> String {
    match r {
        Err(ConnectorError::Refused(m)) => m,
        other => panic!("{what}: expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn pods_nodes_and_workloads_are_contained_with_only_the_printed_rbac() {
    let k = KubeApi::start();
    let dir = tempfile::tempdir().unwrap();
    Estate::seed(&k, 0).await;

    // Before any grant: the API's 403 reaches the step, permanent, with its reason.
    let c = connector(&k, dir.path(), &k.riposte_token);
    let e = c
        .run("cordon_node", &args(json!({"node": "node-1"})))
        .await
        .unwrap_err();
    assert!(!e.is_retryable(), "{e}");
    assert!(e.to_string().contains("Forbidden, HTTP 403"), "{e}");
    // A dry run asks the server too, so the plan already says RBAC refuses.
    let e = c
        .plan(
            "isolate_pod",
            &args(json!({"pod": "web-5d4f8-a", "namespace": "shop"})),
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("Forbidden"), "{e}");

    grant_printed_role(&k, &["--all"]).await;

    // Enrichment: the owner chain, images with digests, owner and on-call from the namespace,
    // secrets in env by name only.
    let facts = c
        .enrich(&Subject {
            pod: Some("web-5d4f8-a".into()),
            namespace: Some("shop".into()),
            ..Subject::default()
        })
        .await
        .expect("facts about the pod");
    assert_eq!(facts["workload"]["kind"], "Deployment", "{facts}");
    assert_eq!(facts["workload"]["name"], "web");
    assert_eq!(facts["owners"][0]["kind"], "ReplicaSet");
    assert_eq!(facts["node"], "node-1");
    assert_eq!(facts["owner"], "payments");
    assert_eq!(facts["owner_from"], "namespace label `team`");
    assert_eq!(facts["on_call"], "payments-primary");
    assert_eq!(
        facts["images"][0]["digest"],
        format!("sha256:{}", "a".repeat(64))
    );
    let secrets = facts["secrets_in_env"].to_string();
    assert!(
        secrets.contains("DB_PASSWORD") && secrets.contains("secret `api`"),
        "{secrets}"
    );
    assert!(
        !facts.to_string().contains("hunter2"),
        "values never leave the pod"
    );

    // isolate_pod: a dry run stores nothing; the real one labels that pod alone and creates a
    // deny-all policy selecting that label; the output names the other policy that selects it.
    let pod = json!({"pod": "web-5d4f8-a", "namespace": "shop"});
    let plan = c.plan("isolate_pod", &args(pod.clone())).await.unwrap();
    assert!(
        plan.description.contains("server-side dry run"),
        "{}",
        plan.description
    );
    let np =
        "/apis/networking.k8s.io/v1/namespaces/shop/networkpolicies/riposte-isolate-web-5d4f8-a";
    assert_eq!(get(&k, np).await.0, 404, "a dry run stores nothing");
    let mut iso = pod.clone();
    iso["allow_cidrs"] = json!(["10.0.5.7/32"]);
    iso["allow_dns"] = json!(true);
    let out = c.run("isolate_pod", &args(iso.clone())).await.unwrap();
    assert_eq!(out.output["changed"], true);
    assert_eq!(out.output["also_selected_by"], json!(["allow-web"]));
    let (s, policy) = get(&k, np).await;
    assert_eq!(s, 200, "{policy}");
    let (_, p) = get(&k, "/api/v1/namespaces/shop/pods/web-5d4f8-a").await;
    let uid = p["metadata"]["uid"].as_str().unwrap().to_owned();
    assert_eq!(p["metadata"]["labels"]["riposte.io/isolated"], uid);
    assert_eq!(
        policy["spec"]["podSelector"]["matchLabels"]["riposte.io/isolated"],
        uid
    );
    assert_eq!(policy["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
    assert_eq!(
        policy["spec"]["ingress"][0]["from"][0]["ipBlock"]["cidr"],
        "10.0.5.7/32"
    );
    assert_eq!(policy["spec"]["egress"][1]["ports"][0]["port"], 53);
    let (_, other) = get(&k, "/api/v1/namespaces/shop/pods/web-5d4f8-b").await;
    assert!(
        other["metadata"]["labels"]
            .get("riposte.io/isolated")
            .is_none(),
        "only that pod"
    );
    let again = c.run("isolate_pod", &args(iso)).await.unwrap();
    assert_eq!(again.output["changed"], false, "{}", again.output);
    c.revert("isolate_pod", out.undo.as_ref().unwrap())
        .await
        .unwrap();
    assert_eq!(get(&k, np).await.0, 404, "release deletes the policy");
    let (_, p) = get(&k, "/api/v1/namespaces/shop/pods/web-5d4f8-a").await;
    assert!(
        p["metadata"]["labels"].get("riposte.io/isolated").is_none(),
        "{p}"
    );
    assert_eq!(p["metadata"]["labels"]["app"], "web");

    // label on the owning workload, and its revert restores what was there.
    let out = c
        .run(
            "label",
            &args(
                json!({"pod": "web-5d4f8-a", "namespace": "shop", "on": "workload",
                                   "labels": {"riposte.io/incident": "r-1", "app": "web-x"}}),
            ),
        )
        .await
        .unwrap();
    let (_, d) = get(&k, "/apis/apps/v1/namespaces/shop/deployments/web").await;
    assert_eq!(d["metadata"]["labels"]["riposte.io/incident"], "r-1");
    assert_eq!(d["metadata"]["labels"]["app"], "web-x");
    c.revert("label", out.undo.as_ref().unwrap()).await.unwrap();
    let (_, d) = get(&k, "/apis/apps/v1/namespaces/shop/deployments/web").await;
    assert!(
        d["metadata"]["labels"].get("riposte.io/incident").is_none(),
        "{d}"
    );
    assert_eq!(d["metadata"]["labels"]["app"], "web");
    // annotate the pod.
    c.run(
        "annotate",
        &args(json!({"pod": "web-5d4f8-b", "namespace": "shop",
                                   "annotations": {"riposte.io/exec-by": "mallory"}})),
    )
    .await
    .unwrap();
    let (_, p) = get(&k, "/api/v1/namespaces/shop/pods/web-5d4f8-b").await;
    assert_eq!(
        p["metadata"]["annotations"]["riposte.io/exec-by"],
        "mallory"
    );

    // event: a core/v1 Event on the pod, as `kubectl describe` lists it.
    c.run(
        "event",
        &args(json!({"pod": "web-5d4f8-b", "namespace": "shop",
                                "reason": "RiposteIsolated", "message": "isolated by riposte"})),
    )
    .await
    .unwrap();
    let (_, evs) = get(&k, "/api/v1/namespaces/shop/events").await;
    let ev = evs["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["reason"] == "RiposteIsolated")
        .expect("the event")
        .clone();
    assert_eq!(ev["involvedObject"]["name"], "web-5d4f8-b");
    assert_eq!(ev["involvedObject"]["uid"], p["metadata"]["uid"]);
    assert_eq!(ev["type"], "Warning");
    assert_eq!(ev["source"]["component"], "riposte");

    // Guards: protected namespace, label, selector; standalone, DaemonSet and StatefulSet pods.
    let r = refused(
        c.run(
            "delete_pod",
            &args(json!({"pod": "coredns-1", "namespace": "kube-system"})),
        )
        .await,
        "kube-system",
    );
    assert!(r.contains("namespace `kube-system` is protected"), "{r}");
    let r = refused(
        c.run(
            "isolate_pod",
            &args(json!({"pod": "vault-0", "namespace": "shop"})),
        )
        .await,
        "label",
    );
    assert!(r.contains("riposte.io/protected=true"), "{r}");
    let r = refused(
        c.run("cordon_node", &args(json!({"node": "node-2"}))).await,
        "selector",
    );
    assert!(r.contains("tier=control-plane"), "{r}");
    let r = refused(
        c.run(
            "delete_pod",
            &args(json!({"pod": "debug", "namespace": "shop"})),
        )
        .await,
        "standalone",
    );
    assert!(r.contains("allow_standalone"), "{r}");
    let r = refused(
        c.run(
            "evict_pod",
            &args(json!({"pod": "agent-x", "namespace": "shop"})),
        )
        .await,
        "daemonset",
    );
    assert!(r.contains("DaemonSet `agent`"), "{r}");
    let r = refused(
        c.run(
            "delete_pod",
            &args(json!({"pod": "db-0", "namespace": "shop"})),
        )
        .await,
        "statefulset",
    );
    assert!(r.contains("allow_statefulset"), "{r}");
    // The StatefulSet has one ready pod: allowed as a StatefulSet, min_healthy 1 still refuses.
    let r = refused(
        c.run(
            "delete_pod",
            &args(json!({"pod": "db-0", "namespace": "shop",
        "allow_statefulset": true})),
        )
        .await,
        "min healthy",
    );
    assert!(r.contains("below min_healthy_replicas 1"), "{r}");
    // 3 ready of 3: keeping 100% refuses, keeping 2 allows (checked by the server in a dry run).
    let r = refused(
        c.run(
            "delete_pod",
            &args(json!({"pod": "web-5d4f8-c", "namespace": "shop",
        "min_healthy_replicas": "100%"})),
        )
        .await,
        "percent",
    );
    assert!(
        r.contains("deployment `shop/web` would be left with 2 ready pod(s)"),
        "{r}"
    );
    c.plan(
        "delete_pod",
        &args(json!({"pod": "web-5d4f8-c", "namespace": "shop", "min_healthy_replicas": 2})),
    )
    .await
    .unwrap();
    assert_eq!(
        get(&k, "/api/v1/namespaces/shop/pods/web-5d4f8-c").await.0,
        200
    );

    // delete_pod of an allowed standalone pod (never scheduled, so it goes at once).
    let out = c
        .run("delete_pod", &args(json!({"pod": "debug", "namespace": "shop", "allow_standalone": true, "grace": "0s"})))
        .await
        .unwrap();
    assert_eq!(out.output["changed"], true);
    assert_eq!(get(&k, "/api/v1/namespaces/shop/pods/debug").await.0, 404);

    // evict_pod honours the PodDisruptionBudget: blocked (429, transient), then allowed.
    let e = c
        .run(
            "evict_pod",
            &args(json!({"pod": "web-5d4f8-c", "namespace": "shop"})),
        )
        .await
        .unwrap_err();
    assert!(e.is_retryable(), "{e}");
    assert!(e.to_string().contains("disruption budget"), "{e}");
    let (_, pdb) = get(
        &k,
        "/apis/policy/v1beta1/namespaces/shop/poddisruptionbudgets/web",
    )
    .await;
    Estate::set_disruptions(&k, pdb["metadata"]["generation"].as_i64().unwrap(), 1).await;
    let out = c
        .run(
            "evict_pod",
            &args(json!({"pod": "web-5d4f8-c", "namespace": "shop"})),
        )
        .await
        .unwrap();
    assert_eq!(out.output["workload"]["name"], "web", "{}", out.output);
    let (_, p) = get(&k, "/api/v1/namespaces/shop/pods/web-5d4f8-c").await;
    assert!(
        p["metadata"]["deletionTimestamp"].is_string(),
        "evicted: terminating {p}"
    );
    let again = c
        .run(
            "evict_pod",
            &args(json!({"pod": "web-5d4f8-c", "namespace": "shop"})),
        )
        .await
        .unwrap();
    assert_eq!(again.output["changed"], false);

    // cordon / revert, and cordoning twice changes nothing.
    let out = c
        .run("cordon_node", &args(json!({"node": "node-1"})))
        .await
        .unwrap();
    let (_, n) = get(&k, "/api/v1/nodes/node-1").await;
    assert_eq!(n["spec"]["unschedulable"], true);
    let twice = c
        .run("cordon_node", &args(json!({"node": "node-1"})))
        .await
        .unwrap();
    assert_eq!(twice.output["changed"], false);
    assert!(twice.undo.is_none());
    c.revert("cordon_node", out.undo.as_ref().unwrap())
        .await
        .unwrap();
    let (_, n) = get(&k, "/api/v1/nodes/node-1").await;
    assert!(n["spec"]["unschedulable"] != true, "{n}");

    // scale_to_zero from a pod, then its revert restores the count.
    let out = c
        .run(
            "scale_to_zero",
            &args(json!({"pod": "web-5d4f8-a", "namespace": "shop"})),
        )
        .await
        .unwrap();
    assert_eq!(out.output["replicas_before"], 3);
    let (_, d) = get(&k, "/apis/apps/v1/namespaces/shop/deployments/web").await;
    assert_eq!(d["spec"]["replicas"], 0);
    let zero = c
        .run(
            "scale_to_zero",
            &args(json!({"workload": "deployment/web", "namespace": "shop"})),
        )
        .await
        .unwrap();
    assert_eq!(zero.output["changed"], false);
    c.revert("scale_to_zero", out.undo.as_ref().unwrap())
        .await
        .unwrap();
    let (_, d) = get(&k, "/apis/apps/v1/namespaces/shop/deployments/web").await;
    assert_eq!(d["spec"]["replicas"], 3);

    // drain: DaemonSet pod and protected pods stay, the StatefulSet's pod is refused, the rest
    // is evicted; with no kubelet the evicted pods stay terminating until the timeout.
    let e = c
        .run(
            "drain_node",
            &args(json!({"node": "node-1", "timeout": "3s", "min_healthy_replicas": 0})),
        )
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("shop/db-0") && msg.contains("allow_statefulset"),
        "{msg}"
    );
    // The budget allowed one disruption, which the eviction above used.
    assert!(
        msg.contains("shop/web-5d4f8-a: evict pod `shop/web-5d4f8-a`: Cannot evict pod as it would violate the pod's disruption budget"),
        "{msg}"
    );
    assert!(msg.contains("the node stays cordoned"), "{msg}");
    let (_, pdb) = get(
        &k,
        "/apis/policy/v1beta1/namespaces/shop/poddisruptionbudgets/web",
    )
    .await;
    Estate::set_disruptions(&k, pdb["metadata"]["generation"].as_i64().unwrap(), 5).await;
    let un = c
        .run("uncordon_node", &args(json!({"node": "node-1"})))
        .await
        .unwrap();
    assert_eq!(
        un.output["changed"], true,
        "the failed drain left it cordoned"
    );
    let out = c
        .run(
            "drain_node",
            &args(
                json!({"node": "node-1", "timeout": "3s", "min_healthy_replicas": 0,
                                        "allow_statefulset": true}),
            ),
        )
        .await
        .unwrap();
    let skipped = out.output["skipped"].to_string();
    assert!(
        skipped.contains("shop/agent-x") && skipped.contains("DaemonSet"),
        "{skipped}"
    );
    assert!(
        skipped.contains("kube-system/coredns-1") && skipped.contains("shop/vault-0"),
        "{skipped}"
    );
    let evicted = out.output["evicted"].to_string();
    assert!(
        evicted.contains("shop/web-5d4f8-a") && evicted.contains("shop/db-0"),
        "{evicted}"
    );
    assert!(
        out.output["terminating"]
            .to_string()
            .contains("shop/web-5d4f8-a"),
        "{}",
        out.output
    );
    let (_, n) = get(&k, "/api/v1/nodes/node-1").await;
    assert_eq!(n["spec"]["unschedulable"], true);
    c.revert("drain_node", out.undo.as_ref().unwrap())
        .await
        .unwrap();

    // logs: the pod document is kept, and the missing kubelet is a clear failure.
    let e = c
        .run(
            "logs",
            &args(json!({"pod": "agent-x", "namespace": "shop", "lines": 50})),
        )
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("no log of pod `shop/agent-x` could be read"),
        "{e}"
    );
    let kept: Vec<_> = std::fs::read_dir(dir.path().join("evidence"))
        .unwrap()
        .collect();
    assert_eq!(kept.len(), 1);

    // Bad input: a pod or namespace that is not there, a name that is not a name.
    let e = c
        .run(
            "isolate_pod",
            &args(json!({"pod": "gone", "namespace": "shop"})),
        )
        .await
        .unwrap_err();
    assert!(
        !e.is_retryable() && e.to_string().contains("NotFound, HTTP 404"),
        "{e}"
    );
    let e = c
        .run(
            "label",
            &args(json!({"pod": "x", "namespace": "nowhere", "labels": {"a": "b"}})),
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("HTTP 404"), "{e}");
    let e = c
        .run(
            "delete_pod",
            &args(json!({"pod": "../../nodes/node-1", "namespace": "shop"})),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, ConnectorError::InvalidArgs { .. }), "{e}");
}

#[tokio::test]
async fn an_unreachable_api_server_is_a_transient_failure() {
    let dir = tempfile::tempdir().unwrap();
    let port = riposte_tests::free_port();
    std::fs::write(dir.path().join("token"), "t").unwrap();
    std::fs::write(dir.path().join("ca.pem"), "").unwrap();
    let settings = json!({
        "url": format!("https://127.0.0.1:{port}"),
        "token_file": dir.path().join("token"),
        "timeout": "2s",
    });
    let c = KubernetesConnector::new(
        "kubernetes",
        settings.as_object().unwrap(),
        &Deps::default(),
    )
    .unwrap();
    let e = c
        .run("cordon_node", &args(json!({"node": "node-1"})))
        .await
        .unwrap_err();
    assert!(e.is_retryable(), "{e}");
    assert!(e.to_string().contains("unreachable"), "{e}");
}

fn pod_playbook(name: &str, title: &str, mode: &str, extra_when: &str, steps: &str) -> String {
    format!(
        r#"apiVersion: riposte/v1
kind: Playbook
metadata: {{ name: {name}, description: test, owner: soc }}
spec:
  mode: {mode}
  match:
    sources: [falco]
    when: |
      event.title == "{title}"{extra_when}
  steps:
{steps}
  notify:
    - action: log.info
      with:
        message: "owner ${{{{ event.enrichment.kubernetes.owner }}}} on-call ${{{{ event.enrichment.kubernetes.on_call }}}} node ${{{{ event.enrichment.kubernetes.node }}}}"
"#
    )
}

const POD_ARGS: &str =
    r#"pod: "${{ event.resource.pod.name }}", namespace: "${{ event.resource.pod.namespace }}""#;

fn falco_pod_alert(uuid: &str, rule: &str, namespace: &str, pod: &str) -> Vec<u8> {
    json!({
        "uuid": uuid,
        "hostname": "node-1",
        "output": format!("12:00:00.000000000: Critical {rule} (pod={pod})"),
        "priority": "Critical",
        "rule": rule,
        "source": "syscall",
        "tags": ["container", "shell"],
        "time": "2026-11-23T12:00:00.000000000Z",
        "output_fields": {
            "container.id": "0123456789ab",
            "container.name": "main",
            "k8s.ns.name": namespace,
            "k8s.pod.name": pod,
            "proc.cmdline": "sh -i",
            "user.name": "root"
        }
    })
    .to_string()
    .into_bytes()
}

fn record<'a>(
    records: &'a [riposte::audit::AuditRecord],
    playbook: &str,
    step: &str,
) -> &'a riposte::audit::AuditRecord {
    records
        .iter()
        .find(|r| {
            r.record == riposte::audit::RecordKind::Step
                && r.playbook.as_deref() == Some(playbook)
                && r.step.as_deref() == Some(step)
        })
        .unwrap_or_else(|| panic!("no step {step} of {playbook}: {records:#?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_falco_event_in_a_pod_isolates_that_pod_and_revert_releases_it() {
    use riposte_tests::{publish, wait_for, write, Engine, NatsServer};
    use std::time::Duration;
    let k = KubeApi::start();
    Estate::seed(&k, 1).await;
    let nats = NatsServer::start();
    let work = tempfile::tempdir().unwrap();
    let cfg = engine_config(&k, work.path());
    let pb = work.path().join("pb");
    let isolate_only = format!(
        "    - id: isolate\n      action: kubernetes.isolate_pod\n      with: {{ {POD_ARGS} }}\n"
    );
    // The condition reads the enrichment, so the event is enriched before it is matched.
    write(
        &pb.join("contain.yaml"),
        &pod_playbook(
            "contain-pod",
            "Terminal shell in container",
            "enforce",
            "\n        && event.enrichment.kubernetes.workload.kind == \"Deployment\"",
            &format!(
                r#"    - id: isolate
      action: kubernetes.isolate_pod
      with: {{ {POD_ARGS} }}
    - id: mark
      action: kubernetes.label
      with: {{ {POD_ARGS}, labels: {{ "riposte.io/incident": "${{{{ run.id }}}}" }} }}
    - id: tell
      action: kubernetes.event
      with: {{ {POD_ARGS}, reason: RiposteIsolated, message: "isolated by riposte run ${{{{ run.id }}}}" }}
"#
            ),
        ),
    );
    write(
        &pb.join("plan.yaml"),
        &pod_playbook("plan-pod", "Shell planned", "dry-run", "", &isolate_only),
    );
    write(
        &pb.join("guarded.yaml"),
        &pod_playbook("guarded-pod", "Shell guarded", "enforce", "", &isolate_only),
    );
    // The engine's user gets exactly what `riposte rbac` prints for these playbooks.
    let yaml = grant_printed_role(
        &k,
        &[pb.to_str().unwrap(), "--config", cfg.to_str().unwrap()],
    )
    .await;
    assert!(
        yaml.contains("kubernetes actions: event, isolate_pod, label"),
        "{yaml}"
    );
    assert!(
        !yaml.contains("pods/eviction"),
        "only what the playbooks use: {yaml}"
    );

    let _engine = Engine::start(&nats.url, &pb, Some(&cfg), work.path());
    let client = nats.client().await;
    publish(
        &client,
        "falco.critical.shell",
        &[
            falco_pod_alert("k-1", "Terminal shell in container", "shop", "web-5d4f8-a"),
            falco_pod_alert("k-2", "Shell planned", "shop", "web-5d4f8-b"),
            falco_pod_alert("k-3", "Shell guarded", "shop", "vault-0"),
            falco_pod_alert("k-4", "Shell guarded", "shop", "gone-1"),
        ],
    )
    .await;
    let runs_done = |r: &[riposte::audit::AuditRecord]| {
        r.iter()
            .filter(|x| x.record == riposte::audit::RecordKind::Run)
            .count()
            >= 4
    };
    let records = wait_for(&nats.url, Duration::from_secs(60), "four runs", runs_done);

    let isolate = record(&records, "contain-pod", "isolate");
    assert_eq!(isolate.outcome, "ok", "{isolate:#?}");
    let run = isolate.run_id.clone().unwrap();
    let np =
        "/apis/networking.k8s.io/v1/namespaces/shop/networkpolicies/riposte-isolate-web-5d4f8-a";
    assert_eq!(get(&k, np).await.0, 200);
    let (_, p) = get(&k, "/api/v1/namespaces/shop/pods/web-5d4f8-a").await;
    assert_eq!(p["metadata"]["labels"]["riposte.io/incident"], run.as_str());
    assert!(p["metadata"]["labels"]["riposte.io/isolated"].is_string());
    let (_, evs) = get(&k, "/api/v1/namespaces/shop/events").await;
    assert!(
        evs.to_string()
            .contains(&format!("isolated by riposte run {run}")),
        "{evs}"
    );
    let notice = records
        .iter()
        .find(|r| {
            r.record == riposte::audit::RecordKind::Notify
                && r.playbook.as_deref() == Some("contain-pod")
        })
        .expect("the notification");
    assert_eq!(
        notice.args.as_ref().unwrap()["message"],
        "owner payments on-call payments-primary node node-1",
        "enrichment reached the notification"
    );

    // dry-run: the API server checked the request, nothing was stored.
    let planned = record(&records, "plan-pod", "isolate");
    assert_eq!(planned.outcome, "planned", "{planned:#?}");
    assert!(
        serde_json::to_string(planned)
            .unwrap()
            .contains("server-side dry run"),
        "{planned:#?}"
    );
    let np_b =
        "/apis/networking.k8s.io/v1/namespaces/shop/networkpolicies/riposte-isolate-web-5d4f8-b";
    assert_eq!(get(&k, np_b).await.0, 404);

    // The protected pod is left alone, and the refusal is audited.
    let guarded = record(&records, "guarded-pod", "isolate");
    assert_eq!(guarded.outcome, "skipped", "{guarded:#?}");
    assert!(
        guarded
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("riposte.io/protected"),
        "{guarded:#?}"
    );
    assert_eq!(
        get(
            &k,
            "/apis/networking.k8s.io/v1/namespaces/shop/networkpolicies/riposte-isolate-vault-0"
        )
        .await
        .0,
        404
    );

    // A pod that is not there: the step fails with the API's reason, and the engine goes on.
    let gone = records
        .iter()
        .find(|r| {
            r.record == riposte::audit::RecordKind::Step && r.event_id.as_deref() == Some("k-4")
        })
        .expect("the step about the missing pod");
    assert_eq!(gone.outcome, "failed", "{gone:#?}");
    assert!(
        gone.reason
            .as_deref()
            .unwrap_or("")
            .contains("NotFound, HTTP 404"),
        "{gone:#?}"
    );

    // `riposte revert` releases the pod and takes the incident label off.
    let out = cli(&["revert", &run, "--nats", &nats.url, "--as", "alice"]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(get(&k, np).await.0, 404, "the policy is gone");
    let (_, p) = get(&k, "/api/v1/namespaces/shop/pods/web-5d4f8-a").await;
    assert!(
        p["metadata"]["labels"].get("riposte.io/isolated").is_none(),
        "{p}"
    );
    assert!(
        p["metadata"]["labels"].get("riposte.io/incident").is_none(),
        "{p}"
    );
}

/// A shipped fixture with names replaced by those of the seeded estate.
fn fixture(name: &str, replace: &[(&str, &str)]) -> Vec<u8> {
    let path = riposte_tests::repo_root()
        .join("playbooks/fixtures")
        .join(name);
    let mut text = std::fs::read_to_string(&path).unwrap();
    for (from, to) in replace {
        assert!(text.contains(from), "{name} has no `{from}`");
        text = text.replace(from, to);
    }
    text.into_bytes()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_shipped_kubernetes_playbooks_contain_pods_nodes_and_workloads() {
    use riposte::audit::RecordKind;
    use riposte_tests::{publish, wait_for, Engine, NatsServer};
    use std::time::Duration;
    let k = KubeApi::start();
    Estate::seed(&k, 1).await;
    let nats = NatsServer::start();
    let work = tempfile::tempdir().unwrap();
    let cfg = engine_config(&k, work.path());
    let playbooks = riposte_tests::repo_root().join("playbooks");
    grant_printed_role(
        &k,
        &[
            playbooks.to_str().unwrap(),
            "--config",
            cfg.to_str().unwrap(),
        ],
    )
    .await;
    let _engine = Engine::start(&nats.url, &playbooks, Some(&cfg), work.path());
    let client = nats.client().await;
    publish(
        &client,
        "falco.critical.shell",
        &[
            fixture(
                "falco-shell-in-container.json",
                &[
                    ("\"k8s.ns.name\":\"default\"", "\"k8s.ns.name\":\"shop\""),
                    ("kubecon", "web-5d4f8-a"),
                ],
            ),
            fixture(
                "falco-read-sensitive-file-host.json",
                &[("\"hostname\":\"x86\"", "\"hostname\":\"node-1\"")],
            ),
        ],
    )
    .await;
    publish(
        &client,
        "riposte.in.k8s-audit",
        &[
            fixture(
                "k8s-audit-create-privileged-pod.json",
                &[
                    ("nginx-deployment-5cdcc99dbf-rgw6z", "web-5d4f8-b"),
                    ("nginx-deployment-5cdcc99dbf", "web-5d4f8"),
                    ("\"namespace\":\"default\"", "\"namespace\":\"shop\""),
                    ("/namespaces/default/", "/namespaces/shop/"),
                ],
            ),
            fixture(
                "k8s-audit-exec-pod.json",
                &[
                    ("nginx-deployment-7998647bdf-phvq7", "web-5d4f8-c"),
                    ("\"namespace\":\"default\"", "\"namespace\":\"shop\""),
                    ("/namespaces/default/", "/namespaces/shop/"),
                ],
            ),
        ],
    )
    .await;
    let records = wait_for(
        &nats.url,
        Duration::from_secs(60),
        "the three playbooks",
        |r| {
            let run_of = |p: &str| {
                r.iter()
                    .any(|x| x.record == RecordKind::Run && x.playbook.as_deref() == Some(p))
            };
            run_of("pod-shell-or-miner")
                && run_of("node-compromise")
                && run_of("privileged-pod")
                && run_of("exec-into-pod")
        },
    );

    // pod-shell-or-miner: isolated, labelled and announced (its logs need a kubelet).
    for step in ["contain", "mark", "announce"] {
        let s = record(&records, "pod-shell-or-miner", step);
        assert_eq!(s.outcome, "ok", "{s:#?}");
    }
    let np =
        "/apis/networking.k8s.io/v1/namespaces/shop/networkpolicies/riposte-isolate-web-5d4f8-a";
    assert_eq!(get(&k, np).await.0, 200);
    let isolate = record(&records, "pod-shell-or-miner", "contain");
    assert!(
        isolate.revert.as_ref().unwrap()["due"].is_string(),
        "revert_after is scheduled"
    );

    // node-compromise: the node Falco names is cordoned and announced.
    for step in ["cordon", "announce"] {
        let s = record(&records, "node-compromise", step);
        assert_eq!(s.outcome, "ok", "{s:#?}");
    }
    let (_, n) = get(&k, "/api/v1/nodes/node-1").await;
    assert_eq!(n["spec"]["unschedulable"], true);

    // exec-into-pod: the pod carries who exec'd into it, and an event says so.
    for step in ["mark", "announce"] {
        let s = record(&records, "exec-into-pod", step);
        assert_eq!(s.outcome, "ok", "{s:#?}");
    }
    let (_, p) = get(&k, "/api/v1/namespaces/shop/pods/web-5d4f8-c").await;
    assert_eq!(
        p["metadata"]["annotations"]["riposte.io/exec-user"], "minikube-user",
        "{p}"
    );

    // privileged-pod: announced, and the scale-down waits for an approver.
    let contain = record(&records, "privileged-pod", "contain");
    assert_eq!(contain.outcome, "awaiting_approval", "{contain:#?}");
    let run = contain.run_id.clone().unwrap();
    let (_, d) = get(&k, "/apis/apps/v1/namespaces/shop/deployments/web").await;
    assert_eq!(d["spec"]["replicas"], 3, "nothing before the approval");
    let out = cli(&[
        "approve",
        &run,
        "contain",
        "--as",
        "soc-oncall",
        "--nats",
        &nats.url,
    ]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, d) = get(&k, "/apis/apps/v1/namespaces/shop/deployments/web").await;
    assert_eq!(d["spec"]["replicas"], 0, "scaled to zero once approved");
}
