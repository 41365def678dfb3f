//! Node actions: `cordon_node`, `uncordon_node`, `drain_node`.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use serde_json::{json, Value};

use super::api::{is_not_found, is_too_many_requests, Verb};
use super::pods::{evict, grace_seconds, Disruption};
use super::target::{PodRef, PodTarget};
use super::Ctx;
use crate::{Args, ConnectorError, Output};

fn node_arg(args: &Args) -> &str {
    args.get("node")
        .and_then(Value::as_str)
        .unwrap_or("")
        .trim()
}

/// Sets `spec.unschedulable`; returns whether it changed.
async fn set_unschedulable(
    cx: &Ctx<'_>,
    action: &str,
    node: &str,
    on: bool,
) -> Result<bool, ConnectorError> {
    let (n, _) = cx.node(action, node, on).await?;
    let now = n
        .spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false);
    if now == on {
        return Ok(false);
    }
    let patch = json!({ "spec": { "unschedulable": on } });
    let what = format!("{} node `{node}`", if on { "cordon" } else { "uncordon" });
    let _: Value = cx
        .kube
        .call(
            Verb::MergePatch,
            &format!("/api/v1/nodes/{node}"),
            Some(&patch),
            cx.dry,
            &what,
        )
        .await?;
    Ok(true)
}

/// `cordon_node` (`on`) and `uncordon_node`.
pub(crate) async fn cordon(
    cx: &Ctx<'_>,
    action: &str,
    args: &Args,
    on: bool,
) -> Result<Output, ConnectorError> {
    let node = node_arg(args);
    let changed = set_unschedulable(cx, action, node, on).await?;
    let verb = if on { "cordon" } else { "uncordon" };
    let message = if changed {
        format!("{verb} node `{node}`")
    } else if on {
        format!("node `{node}` is already cordoned")
    } else {
        format!("node `{node}` is not cordoned")
    };
    Ok(Output {
        output: json!({ "node": node, "changed": changed, "message": message }),
        undo: (on && changed).then(|| json!({ "node": node })),
    })
}

/// The revert of `cordon_node` and `drain_node`.
pub(crate) async fn uncordon_undo(cx: &Ctx<'_>, undo: &Value) -> Result<Output, ConnectorError> {
    let node = undo.get("node").cloned().unwrap_or(Value::Null);
    let args: Args = [("node".to_owned(), node)].into_iter().collect();
    cordon(cx, "uncordon_node", &args, false).await
}

/// Why a pod on a drained node stays, if it does (as `kubectl drain` skips them, plus the
/// guards).
async fn stays(cx: &Ctx<'_>, t: &PodTarget) -> Option<String> {
    let annotations = t.pod.metadata.annotations.clone().unwrap_or_default();
    if annotations.contains_key("kubernetes.io/config.mirror") {
        return Some("mirror pod (the kubelet owns it)".to_owned());
    }
    if t.chain.first().is_some_and(|o| o.kind == "DaemonSet") {
        return Some("DaemonSet pod (it would come back on the node)".to_owned());
    }
    if t.terminating() {
        return Some("already terminating".to_owned());
    }
    match cx.guard_pod(t).await {
        Err(ConnectorError::Refused(r)) => Some(r),
        _ => None,
    }
}

/// `drain_node`: cordon, then evict each pod with the guards, retrying blocked evictions
/// until the timeout, then wait for the evicted pods to be gone.
pub(crate) async fn drain(
    cx: &Ctx<'_>,
    action: &str,
    args: &Args,
) -> Result<Output, ConnectorError> {
    let node = node_arg(args);
    let grace = grace_seconds(action, args)?;
    let timeout = match args.get("timeout").and_then(Value::as_str) {
        None => Duration::from_secs(120),
        Some(s) => humantime::parse_duration(s)
            .map_err(|e| ConnectorError::invalid(action, format!("`timeout`: {e}")))?,
    };
    let mut guard = Disruption::from_args(action, args)?;
    guard.allow_daemonset = true;
    let cordoned = set_unschedulable(cx, action, node, true).await?;
    let list: Value = cx
        .kube
        .call(
            Verb::Get,
            &format!("/api/v1/pods?fieldSelector=spec.nodeName%3D{node}"),
            None,
            false,
            &format!("list the pods of node `{node}`"),
        )
        .await?;
    let pods: Vec<Pod> = list
        .get("items")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| serde_json::from_value(p).ok())
        .collect();
    let mut skipped = Vec::new();
    let mut pending: Vec<PodTarget> = Vec::new();
    for p in pods {
        let r = PodRef {
            namespace: p.metadata.namespace.clone().unwrap_or_default(),
            name: p.metadata.name.clone().unwrap_or_default(),
        };
        let t = match cx.pod(&r).await {
            Ok(t) => t,
            Err(e) if is_not_found(&e) => continue,
            Err(e) => return Err(e),
        };
        if let Some(why) = stays(cx, &t).await {
            skipped.push(json!({ "pod": r.to_string(), "reason": why }));
        } else {
            pending.push(t);
        }
    }
    let deadline = Instant::now() + timeout;
    let mut evicted = Vec::new();
    let mut refused: Vec<(String, String)> = Vec::new();
    let mut blocked: Vec<(String, String)>;
    loop {
        blocked = Vec::new();
        let mut still = Vec::new();
        for t in pending {
            match guard.refuses(&t) {
                Some((why, true)) => {
                    refused.push((t.r.to_string(), why));
                    continue;
                }
                Some((why, false)) => {
                    // Too few ready pods now; another replica may become ready.
                    blocked.push((t.r.to_string(), why));
                    still.push(t);
                    continue;
                }
                None => {}
            }
            match evict(cx, &t, grace).await {
                Ok(()) => evicted.push(t),
                Err(e) if is_not_found(&e) => {}
                Err(e) if is_too_many_requests(&e) || e.is_retryable() => {
                    blocked.push((t.r.to_string(), e.to_string()));
                    still.push(t);
                }
                Err(e) => return Err(e),
            }
        }
        pending = still;
        if pending.is_empty() || cx.dry || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2).min(deadline - Instant::now())).await;
        // Re-read the workloads: their ready counts and budgets may have moved.
        let mut fresh = Vec::new();
        for t in pending {
            match cx.pod(&t.r).await {
                Ok(n) => fresh.push(n),
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(e),
            }
        }
        pending = fresh;
    }
    let mut terminating = Vec::new();
    if !cx.dry {
        for t in &evicted {
            loop {
                match cx
                    .kube
                    .get_opt::<Value>(&t.r.path(), "wait for the pod")
                    .await?
                {
                    Some(p)
                        if p.pointer("/metadata/uid").and_then(Value::as_str)
                            == Some(t.uid().as_str()) =>
                    {
                        if Instant::now() >= deadline {
                            terminating.push(t.r.to_string());
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    _ => break,
                }
            }
        }
    }
    let evicted_names: Vec<String> = evicted.iter().map(|t| t.r.to_string()).collect();
    blocked.extend(refused);
    if !blocked.is_empty() {
        let list: Vec<String> = blocked
            .iter()
            .map(|(p, why)| format!("{p}: {why}"))
            .collect();
        return Err(ConnectorError::Permanent(format!(
            "drain of node `{node}` incomplete after {}: {} pod(s) could not be evicted ({}); \
             evicted: {}; the node stays cordoned (`uncordon_node` to undo)",
            humantime::format_duration(timeout),
            blocked.len(),
            list.join("; "),
            if evicted_names.is_empty() {
                "none".to_owned()
            } else {
                evicted_names.join(", ")
            },
        )));
    }
    let message = format!(
        "drain node `{node}`: {} pod(s) evicted, {} left in place",
        evicted_names.len(),
        skipped.len()
    );
    Ok(Output {
        output: json!({
            "node": node,
            "changed": cordoned || !evicted_names.is_empty(),
            "cordoned": cordoned,
            "evicted": evicted_names,
            "skipped": skipped,
            "terminating": terminating,
            "message": message,
        }),
        undo: cordoned.then(|| json!({ "node": node })),
    })
}
