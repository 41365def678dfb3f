//! `riposte bench kubernetes`: how long the Kubernetes connector takes to contain a pod against
//! a real API server, every request included (reading the pod, its owner chain and namespace,
//! listing the namespace's NetworkPolicies, creating the isolation policy, labelling the pod).
//!
//! Makes a namespace `riposte-bench-<pid>` with N pods owned by a ReplicaSet (the kubeconfig's
//! user must be allowed to), then:
//! 0. the baseline: a plain GET of each pod with the same kind of client;
//! 1. enrichment of each pod, one at a time;
//! 2. `isolate_pod` of each, one at a time, then `release_pod` of each;
//! 3. `isolate_pod` of every pod at once.
//!
//! The namespace is deleted afterwards. A benchmark: it reports figures and asserts nothing.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context as _, Result};
use clap::Args;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DeleteParams, PostParams};
use riposte_connectors::kubernetes::KubernetesConnector;
use riposte_connectors::{Connector, Deps, Subject};
use serde_json::{json, Value};

use super::percentile;

/// Arguments of `bench kubernetes`.
#[derive(Debug, Args)]
pub struct KubeBenchArgs {
    /// The kubeconfig of the cluster (e.g. `admin.kubeconfig` of `scripts/kube-apiserver start`).
    #[arg(long)]
    pub kubeconfig: PathBuf,
    /// Pods per phase.
    #[arg(long, default_value_t = 50)]
    pub pods: usize,
    /// Print the figures as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Milliseconds: p50, p99, max.
#[derive(Debug, serde::Serialize)]
pub struct Spread {
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

fn spread(mut v: Vec<f64>) -> Spread {
    v.sort_by(f64::total_cmp);
    Spread {
        p50_ms: percentile(&v, 0.5),
        p99_ms: percentile(&v, 0.99),
        max_ms: v.last().copied().unwrap_or(f64::NAN),
    }
}

/// The figures of one run.
#[derive(Debug, serde::Serialize)]
pub struct Figures {
    /// Pods per phase.
    pub pods: usize,
    /// The baseline: one GET of a pod with a plain kube client, one at a time.
    pub api_get: Spread,
    /// Enrichment of one pod.
    pub enrich: Spread,
    /// `isolate_pod`, one at a time.
    pub isolate_serial: Spread,
    /// `release_pod`, one at a time.
    pub release_serial: Spread,
    /// `isolate_pod` of every pod at once: each call.
    pub isolate_burst: Spread,
    /// Until every pod of the burst was isolated.
    pub isolate_burst_all_ms: f64,
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

/// Runs the benchmark and prints its figures.
pub async fn run(a: KubeBenchArgs) -> Result<i32> {
    if a.pods == 0 {
        bail!("--pods must be at least 1");
    }
    let kc = kube::config::Kubeconfig::read_from(&a.kubeconfig)
        .with_context(|| format!("kubeconfig {}", a.kubeconfig.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    let client = kube::Client::try_from(config)?;
    let ns = format!("riposte-bench-{}", std::process::id());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns}}))?,
        )
        .await
        .with_context(|| format!("create namespace {ns}"))?;
    let result = measure(&a, &client, &ns).await;
    if let Err(e) = namespaces.delete(&ns, &DeleteParams::default()).await {
        eprintln!("riposte bench kubernetes: namespace {ns} left behind: {e}");
    }
    let figures = result?;
    if a.json {
        println!("{}", serde_json::to_string(&figures)?);
    } else {
        let line = |what: &str, s: &Spread| {
            println!(
                "{what:<28} p50 {:>7.2} ms   p99 {:>7.2} ms   max {:>7.2} ms",
                s.p50_ms, s.p99_ms, s.max_ms
            );
        };
        println!("riposte bench kubernetes: {} pods per phase", figures.pods);
        line("baseline: GET pod", &figures.api_get);
        line("enrich (one at a time)", &figures.enrich);
        line("isolate_pod (one at a time)", &figures.isolate_serial);
        line("release_pod (one at a time)", &figures.release_serial);
        line("isolate_pod (all at once)", &figures.isolate_burst);
        println!(
            "{:<28} {:.1} ms for {} pods",
            "burst until all isolated", figures.isolate_burst_all_ms, figures.pods
        );
    }
    Ok(0)
}

async fn measure(a: &KubeBenchArgs, client: &kube::Client, ns: &str) -> Result<Figures> {
    let sets: Api<ReplicaSet> = Api::namespaced(client.clone(), ns);
    let rs = sets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "web"},
                "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "web"}},
                         "template": {"metadata": {"labels": {"app": "web"}},
                                      "spec": {"containers": [{"name": "web", "image": "web"}]}}}
            }))?,
        )
        .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let total = a.pods * 2;
    for i in 0..total {
        let pod = json!({
            "metadata": {"name": format!("web-{i}"), "labels": {"app": "web"},
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                             "name": "web", "uid": rs.metadata.uid, "controller": true}]},
            "spec": {"containers": [{"name": "web", "image": "registry.local/web:1"}]}
        });
        pods.create(&PostParams::default(), &serde_json::from_value(pod)?)
            .await?;
    }
    let settings = json!({ "kubeconfig": a.kubeconfig });
    let settings = settings.as_object().cloned().unwrap_or_default();
    let c = KubernetesConnector::new("kubernetes", &settings, &Deps::default())?;
    let args = |i: usize| -> riposte_connectors::Args {
        json!({"pod": format!("web-{i}"), "namespace": ns})
            .as_object()
            .cloned()
            .unwrap_or_default()
    };
    let mut gets = Vec::new();
    for i in 0..a.pods {
        let t = Instant::now();
        pods.get(&format!("web-{i}")).await?;
        gets.push(ms(t));
    }
    let mut enrich = Vec::new();
    for i in 0..a.pods {
        let t = Instant::now();
        let facts = c
            .enrich(&Subject {
                pod: Some(format!("web-{i}")),
                namespace: Some(ns.to_owned()),
                ..Subject::default()
            })
            .await;
        enrich.push(ms(t));
        if facts.is_none() {
            bail!("no facts about pod web-{i}");
        }
    }
    let mut isolate = Vec::new();
    let mut undos: Vec<Value> = Vec::new();
    for i in 0..a.pods {
        let t = Instant::now();
        let out = c.run("isolate_pod", &args(i)).await?;
        isolate.push(ms(t));
        undos.push(out.undo.unwrap_or(Value::Null));
    }
    let mut release = Vec::new();
    for undo in &undos {
        let t = Instant::now();
        c.revert("isolate_pod", undo).await?;
        release.push(ms(t));
    }
    let start = Instant::now();
    let calls = (a.pods..total).map(|i| {
        let (c, args) = (&c, args(i));
        async move {
            let t = Instant::now();
            c.run("isolate_pod", &args).await.map(|_| ms(t))
        }
    });
    let burst: Vec<f64> = futures::future::join_all(calls)
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    let all = ms(start);
    Ok(Figures {
        pods: a.pods,
        api_get: spread(gets),
        enrich: spread(enrich),
        isolate_serial: spread(isolate),
        release_serial: spread(release),
        isolate_burst: spread(burst),
        isolate_burst_all_ms: all,
    })
}
