//! Pod actions: `delete_pod` and `evict_pod` with their disruption guards, `isolate_pod` /
//! `release_pod`, and `logs`.

use std::path::Path;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::api::{is_not_found, put, Verb};
use super::target::{string_map, PodRef, PodTarget};
use super::Ctx;
use crate::evidence::{name_safe, stamp, EvidenceDir};
use crate::{Args, ConnectorError, Output};

/// How many of the last log lines `logs` keeps at most.
const MAX_LOG_LINES: u64 = 100_000;

/// The disruption guards of `delete_pod`, `evict_pod` and `drain_node`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Disruption {
    /// Fewest ready pods the workload keeps: a count, or a percentage of its replicas.
    pub min_healthy: MinHealthy,
    pub allow_standalone: bool,
    pub allow_daemonset: bool,
    pub allow_statefulset: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MinHealthy {
    Count(u64),
    Percent(u64),
}

impl Disruption {
    pub(crate) fn from_args(action: &str, args: &Args) -> Result<Disruption, ConnectorError> {
        let flag = |k: &str| args.get(k).and_then(Value::as_bool).unwrap_or(false);
        let bad = || {
            ConnectorError::invalid(
                action,
                "`min_healthy_replicas` must be a whole number or a percentage such as `50%`",
            )
        };
        let min_healthy = match args.get("min_healthy_replicas") {
            None | Some(Value::Null) => MinHealthy::Count(1),
            Some(Value::Number(n)) => MinHealthy::Count(n.as_u64().ok_or_else(bad)?),
            Some(Value::String(s)) => match s.trim().strip_suffix('%') {
                Some(p) => match p.trim().parse::<u64>() {
                    Ok(p) if p <= 100 => MinHealthy::Percent(p),
                    _ => return Err(bad()),
                },
                None => MinHealthy::Count(s.trim().parse().map_err(|_| bad())?),
            },
            Some(_) => return Err(bad()),
        };
        Ok(Disruption {
            min_healthy,
            allow_standalone: flag("allow_standalone"),
            allow_daemonset: flag("allow_daemonset"),
            allow_statefulset: flag("allow_statefulset"),
        })
    }

    /// Why taking `t` away is refused, if it is, and whether that lasts (the kind of pod) or
    /// may pass (too few ready pods right now).
    pub(crate) fn refuses(&self, t: &PodTarget) -> Option<(String, bool)> {
        self.lasting(t)
            .map(|r| (r, true))
            .or_else(|| self.too_few(t).map(|r| (r, false)))
    }

    fn lasting(&self, t: &PodTarget) -> Option<String> {
        let Some(w) = &t.workload else {
            return (!self.allow_standalone).then(|| {
                format!(
                    "pod `{}` has no controller, so nothing would replace it (allow it with \
                     `allow_standalone: true`)",
                    t.r
                )
            });
        };
        let top = w.owner.kind.as_str();
        let direct = t.chain.first().map(|o| o.kind.as_str()).unwrap_or(top);
        if direct == "DaemonSet" && !self.allow_daemonset {
            return Some(format!(
                "pod `{}` belongs to DaemonSet `{}` (allow it with `allow_daemonset: true`)",
                t.r, w.owner.name
            ));
        }
        if direct == "StatefulSet" && !self.allow_statefulset {
            return Some(format!(
                "pod `{}` belongs to StatefulSet `{}` (allow it with `allow_statefulset: true`)",
                t.r, w.owner.name
            ));
        }
        None
    }

    fn too_few(&self, t: &PodTarget) -> Option<String> {
        let w = t.workload.as_ref()?;
        if !matches!(
            w.owner.kind.as_str(),
            "Deployment" | "ReplicaSet" | "StatefulSet"
        ) {
            return None;
        }
        let object = w.object.as_ref()?;
        let desired = object
            .pointer("/spec/replicas")
            .and_then(Value::as_u64)
            .unwrap_or(1);
        let ready = object
            .pointer("/status/readyReplicas")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let min = match self.min_healthy {
            MinHealthy::Count(n) => n,
            MinHealthy::Percent(p) => (desired * p).div_ceil(100),
        };
        let after = ready.saturating_sub(u64::from(t.ready()));
        (after < min).then(|| {
            format!(
                "{} would be left with {after} ready pod(s), below min_healthy_replicas {min} \
                 ({desired} desired, {ready} ready now)",
                w.display(&t.r.namespace)
            )
        })
    }
}

pub(crate) fn grace_seconds(action: &str, args: &Args) -> Result<Option<u64>, ConnectorError> {
    match args.get("grace").and_then(Value::as_str) {
        None => Ok(None),
        Some(s) => humantime::parse_duration(s)
            .map(|d| Some(d.as_secs()))
            .map_err(|e| ConnectorError::invalid(action, format!("`grace`: {e} (e.g. `30s`)"))),
    }
}

/// Resolves, guards and checks a pod to take away.
async fn removable(
    cx: &Ctx<'_>,
    action: &str,
    args: &Args,
) -> Result<(PodTarget, Option<u64>), ConnectorError> {
    let grace = grace_seconds(action, args)?;
    let guard = Disruption::from_args(action, args)?;
    let r = PodRef::from_args(action, args)?;
    let t = cx.pod(&r).await?;
    cx.guard_pod(&t).await?;
    if let Some((reason, _)) = guard.refuses(&t) {
        return Err(ConnectorError::Refused(reason));
    }
    Ok((t, grace))
}

/// `delete_pod` and `evict_pod`.
pub(crate) async fn remove(
    cx: &Ctx<'_>,
    action: &str,
    args: &Args,
) -> Result<Output, ConnectorError> {
    let (t, grace) = removable(cx, action, args).await?;
    let verb = if action == "evict_pod" {
        "evict"
    } else {
        "delete"
    };
    if t.terminating() {
        return Ok(unchanged(
            &t,
            &format!("pod `{}` is already terminating", t.r),
        ));
    }
    if action == "evict_pod" {
        evict(cx, &t, grace).await?;
    } else {
        let mut body = json!({ "preconditions": { "uid": t.uid() } });
        if let Some(g) = grace {
            put(&mut body, "gracePeriodSeconds", json!(g));
        }
        if cx.dry {
            // With a body, the server reads the delete options from it, not the query.
            put(&mut body, "dryRun", json!(["All"]));
        }
        let what = format!("delete pod `{}`", t.r);
        let _: Value = cx
            .kube
            .call(Verb::Delete, &t.r.path(), Some(&body), cx.dry, &what)
            .await?;
    }
    let mut output = t.id_json();
    put(&mut output, "changed", json!(true));
    put(&mut output, "node", json!(t.node()));
    put(
        &mut output,
        "workload",
        json!(t.workload.as_ref().map(|w| w.owner.json())),
    );
    put(&mut output, "grace_seconds", json!(grace));
    let of = t
        .workload
        .as_ref()
        .map(|w| format!(" of {}", w.display(&t.r.namespace)))
        .unwrap_or_default();
    put(
        &mut output,
        "message",
        json!(format!("{verb} pod `{}`{of}", t.r)),
    );
    Ok(Output { output, undo: None })
}

/// Posts an Eviction for the pod, in the policy version the server serves.
pub(crate) async fn evict(
    cx: &Ctx<'_>,
    t: &PodTarget,
    grace: Option<u64>,
) -> Result<(), ConnectorError> {
    let version = cx.kube.policy_version().await?;
    let mut options = json!({ "preconditions": { "uid": t.uid() } });
    if let Some(g) = grace {
        put(&mut options, "gracePeriodSeconds", json!(g));
    }
    if cx.dry {
        put(&mut options, "dryRun", json!(["All"]));
    }
    let body = json!({
        "apiVersion": version,
        "kind": "Eviction",
        "metadata": { "name": t.r.name, "namespace": t.r.namespace },
        "deleteOptions": options,
    });
    let what = format!("evict pod `{}`", t.r);
    let path = format!("{}/eviction", t.r.path());
    let _: Value = cx
        .kube
        .call(Verb::Post, &path, Some(&body), cx.dry, &what)
        .await?;
    Ok(())
}

fn unchanged(t: &PodTarget, why: &str) -> Output {
    let mut output = t.id_json();
    put(&mut output, "changed", json!(false));
    put(&mut output, "message", json!(why));
    Output { output, undo: None }
}

/// The isolation policy's name for a pod: `riposte-isolate-<pod>`, or a digest when that would
/// be too long for an object name.
pub(crate) fn policy_name(pod: &str) -> String {
    let name = format!("riposte-isolate-{pod}");
    if name.len() <= 253 {
        name
    } else {
        let digest = hex::encode(Sha256::digest(pod.as_bytes()));
        format!("riposte-isolate-{}", digest.get(..32).unwrap_or(&digest))
    }
}

fn string_list(action: &str, args: &Args, key: &str) -> Result<Vec<String>, ConnectorError> {
    match args.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.trim().to_owned()]),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str().map(|s| s.trim().to_owned()).ok_or_else(|| {
                    ConnectorError::invalid(action, format!("`{key}` must be a list of strings"))
                })
            })
            .collect(),
        Some(_) => Err(ConnectorError::invalid(
            action,
            format!("`{key}` must be a list of strings"),
        )),
    }
}

/// Checks `a.b.c.d/n` or an IPv6 CIDR.
fn check_cidr(action: &str, cidr: &str) -> Result<(), ConnectorError> {
    let bad = || {
        ConnectorError::invalid(
            action,
            format!("`{cidr}` is not a CIDR (e.g. `10.0.5.7/32`)"),
        )
    };
    let (ip, len) = cidr.split_once('/').ok_or_else(bad)?;
    let ip: std::net::IpAddr = ip.parse().map_err(|_| bad())?;
    let len: u8 = len.parse().map_err(|_| bad())?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    if len > max {
        return Err(bad());
    }
    Ok(())
}

/// The NetworkPolicy that isolates the pod carrying `label=value`.
pub(crate) fn isolation_policy(
    name: &str,
    t: &PodTarget,
    label: &str,
    value: &str,
    cidrs: &[String],
    namespaces: &[String],
    dns: bool,
) -> Value {
    let mut peers: Vec<Value> = cidrs
        .iter()
        .map(|c| json!({ "ipBlock": { "cidr": c } }))
        .collect();
    peers.extend(namespaces.iter().map(
        |n| json!({ "namespaceSelector": { "matchLabels": { "kubernetes.io/metadata.name": n } } }),
    ));
    let ingress: Vec<Value> = if peers.is_empty() {
        Vec::new()
    } else {
        vec![json!({ "from": peers })]
    };
    let mut egress: Vec<Value> = if peers.is_empty() {
        Vec::new()
    } else {
        vec![json!({ "to": peers })]
    };
    if dns {
        egress.push(json!({
            "to": [{ "namespaceSelector": {}, "podSelector": { "matchLabels": { "k8s-app": "kube-dns" } } }],
            "ports": [{ "protocol": "UDP", "port": 53 }, { "protocol": "TCP", "port": 53 }],
        }));
    }
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": name,
            "namespace": t.r.namespace,
            "labels": { "app.kubernetes.io/managed-by": "riposte" },
            "annotations": {
                "riposte.io/pod": t.r.name,
                "riposte.io/pod-uid": t.uid(),
                "riposte.io/isolated-at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            },
        },
        "spec": {
            "podSelector": { "matchLabels": { label: value } },
            "policyTypes": ["Ingress", "Egress"],
            "ingress": ingress,
            "egress": egress,
        },
    })
}

/// Whether a NetworkPolicy's podSelector selects a pod with these labels.
pub(crate) fn selects(policy: &Value, labels: &std::collections::BTreeMap<String, String>) -> bool {
    let Some(sel) = policy.pointer("/spec/podSelector") else {
        return false;
    };
    let match_labels = string_map(sel.get("matchLabels"));
    if match_labels.iter().any(|(k, v)| labels.get(k) != Some(v)) {
        return false;
    }
    let exprs = sel
        .get("matchExpressions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    exprs.iter().all(|e| {
        let key = e.get("key").and_then(Value::as_str).unwrap_or("");
        let values: Vec<&str> = e
            .get("values")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let have = labels.get(key).map(String::as_str);
        match e.get("operator").and_then(Value::as_str).unwrap_or("") {
            "In" => have.is_some_and(|v| values.contains(&v)),
            "NotIn" => have.is_none_or(|v| !values.contains(&v)),
            "Exists" => have.is_some(),
            "DoesNotExist" => have.is_none(),
            _ => false,
        }
    })
}

/// `isolate_pod`.
pub(crate) async fn isolate(
    cx: &Ctx<'_>,
    action: &str,
    args: &Args,
    label: &str,
) -> Result<Output, ConnectorError> {
    let cidrs = string_list(action, args, "allow_cidrs")?;
    for c in &cidrs {
        check_cidr(action, c)?;
    }
    let namespaces = string_list(action, args, "allow_namespaces")?;
    for n in &namespaces {
        super::api::check_name(action, "allow_namespaces", n)?;
    }
    let dns = args
        .get("allow_dns")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let r = PodRef::from_args(action, args)?;
    let t = cx.pod(&r).await?;
    cx.guard_pod(&t).await?;
    let value = t.uid();
    if value.is_empty() {
        return Err(ConnectorError::Permanent(format!("pod `{r}` has no uid")));
    }
    let name = policy_name(&r.name);
    let policies = format!(
        "/apis/networking.k8s.io/v1/namespaces/{}/networkpolicies",
        r.namespace
    );
    let list: Value = cx
        .kube
        .call(
            Verb::Get,
            &policies,
            None,
            false,
            &format!("list the NetworkPolicies of namespace `{}`", r.namespace),
        )
        .await?;
    let items = list
        .get("items")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let labels = t.labels();
    let existing = items
        .iter()
        .find(|p| p.pointer("/metadata/name").and_then(Value::as_str) == Some(name.as_str()));
    let labelled = labels.get(label) == Some(&value);
    if existing.is_some() && labelled {
        return Ok(unchanged(
            &t,
            &format!("pod `{r}` is already isolated by `{name}`"),
        ));
    }
    let also: Vec<String> = items
        .iter()
        .filter(|p| p.pointer("/metadata/name").and_then(Value::as_str) != Some(name.as_str()))
        .filter(|p| selects(p, &labels))
        .filter_map(|p| p.pointer("/metadata/name").and_then(Value::as_str))
        .map(str::to_owned)
        .collect();
    let policy = isolation_policy(&name, &t, label, &value, &cidrs, &namespaces, dns);
    let created = existing.is_none();
    if created {
        let what = format!("create NetworkPolicy `{}/{name}`", r.namespace);
        let _: Value = cx
            .kube
            .call(Verb::Post, &policies, Some(&policy), cx.dry, &what)
            .await?;
    }
    if !labelled {
        let patch = json!({ "metadata": {
            "labels": { label: value },
            "resourceVersion": t.pod.metadata.resource_version,
        } });
        let what = format!("label pod `{r}` `{label}`");
        let labelled: Result<Value, _> = cx
            .kube
            .call(Verb::MergePatch, &r.path(), Some(&patch), cx.dry, &what)
            .await;
        if let Err(e) = labelled {
            if created && !cx.dry {
                let path = format!("{policies}/{name}");
                let undo: Result<Value, _> = cx
                    .kube
                    .call(
                        Verb::Delete,
                        &path,
                        None,
                        false,
                        "remove the isolation policy",
                    )
                    .await;
                if let Err(u) = undo {
                    tracing::warn!(error = %u, "isolation policy left after a failed label");
                }
            }
            return Err(e);
        }
    }
    let mut message = format!("isolate pod `{r}` with NetworkPolicy `{name}` (deny all");
    if !cidrs.is_empty() || !namespaces.is_empty() || dns {
        let mut allowed: Vec<String> = cidrs.clone();
        allowed.extend(namespaces.iter().map(|n| format!("namespace {n}")));
        if dns {
            allowed.push("DNS".to_owned());
        }
        message.push_str(&format!(" but {}", allowed.join(", ")));
    }
    message.push(')');
    if !also.is_empty() {
        message.push_str(&format!(
            "; NetworkPolicies add up, and {} also select(s) this pod: their allow rules still \
             apply",
            also.join(", ")
        ));
    }
    let mut output = t.id_json();
    put(&mut output, "changed", json!(true));
    put(&mut output, "policy", json!(name));
    put(&mut output, "label", json!(format!("{label}={value}")));
    put(&mut output, "also_selected_by", json!(also));
    put(&mut output, "message", json!(message));
    Ok(Output {
        output,
        undo: Some(json!({
            "namespace": r.namespace,
            "pod": r.name,
            "uid": value,
            "policy": name,
            "label": label,
        })),
    })
}

/// `release_pod` and the revert of `isolate_pod`: deletes the policy and removes the label;
/// either being gone already is fine.
pub(crate) async fn release(
    cx: &Ctx<'_>,
    r: &PodRef,
    policy: Option<&str>,
    label: &str,
) -> Result<Output, ConnectorError> {
    let name = policy.map_or_else(|| policy_name(&r.name), str::to_owned);
    super::api::check_name("release_pod", "policy", &name)?;
    let path = format!(
        "/apis/networking.k8s.io/v1/namespaces/{}/networkpolicies/{name}",
        r.namespace
    );
    let what = format!("delete NetworkPolicy `{}/{name}`", r.namespace);
    let deleted = match cx
        .kube
        .call::<Value>(Verb::Delete, &path, None, cx.dry, &what)
        .await
    {
        Ok(_) => true,
        Err(e) if is_not_found(&e) => false,
        Err(e) => return Err(e),
    };
    let what = format!("remove label `{label}` from pod `{r}`");
    let unlabelled = match cx.kube.get_opt::<Value>(&r.path(), &what).await? {
        Some(pod)
            if pod
                .pointer("/metadata/labels")
                .and_then(|l| l.get(label))
                .is_some() =>
        {
            let patch = json!({ "metadata": { "labels": { label: null } } });
            let _: Value = cx
                .kube
                .call(Verb::MergePatch, &r.path(), Some(&patch), cx.dry, &what)
                .await?;
            true
        }
        _ => false,
    };
    let changed = deleted || unlabelled;
    let message = if changed {
        format!("release pod `{r}`: NetworkPolicy `{name}` deleted, label `{label}` removed")
    } else {
        format!("pod `{r}` was not isolated")
    };
    Ok(Output {
        output: json!({
            "namespace": r.namespace,
            "pod": r.name,
            "changed": changed,
            "policy_deleted": deleted,
            "label_removed": unlabelled,
            "message": message,
        }),
        undo: None,
    })
}

/// `logs`: the pod document and each container's last lines, as evidence.
pub(crate) async fn logs(
    cx: &Ctx<'_>,
    action: &str,
    args: &Args,
    root: &Path,
) -> Result<Output, ConnectorError> {
    let lines = match args.get("lines") {
        None | Some(Value::Null) => 200,
        Some(v) => match v.as_u64() {
            Some(n) if (1..=MAX_LOG_LINES).contains(&n) => n,
            _ => {
                return Err(ConnectorError::invalid(
                    action,
                    format!("`lines` must be 1 to {MAX_LOG_LINES}"),
                ))
            }
        },
    };
    let previous = args
        .get("previous")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let r = PodRef::from_args(action, args)?;
    let t = cx.pod(&r).await?;
    let now = chrono::Utc::now();
    let label = format!(
        "{}-{}-{}",
        name_safe(&r.namespace),
        name_safe(&r.name),
        stamp(now)
    );
    let mut dir = EvidenceDir::create(root, &label).await?;
    dir.write_json("pod", "pod.json", &t.raw).await?;
    let spec = t.pod.spec.clone().unwrap_or_default();
    let names: Vec<String> = spec
        .init_containers
        .unwrap_or_default()
        .into_iter()
        .chain(spec.containers)
        .map(|c| c.name)
        .collect();
    let mut failures = Vec::new();
    let mut kept = 0usize;
    for c in &names {
        let mut runs = vec![false];
        if previous {
            runs.push(true);
        }
        for prev in runs {
            let what = format!(
                "read the {}logs of container `{c}` of pod `{r}`",
                if prev { "previous " } else { "" }
            );
            let path = format!(
                "{}/log?container={c}&tailLines={lines}&timestamps=true{}",
                r.path(),
                if prev { "&previous=true" } else { "" }
            );
            match cx.kube.text(&path, &what).await {
                Ok(text) => {
                    let file = format!(
                        "{}{}.log",
                        name_safe(c),
                        if prev { ".previous" } else { "" }
                    );
                    let key = format!("{c}{}", if prev { ".previous" } else { "" });
                    dir.write(&key, &file, text.as_bytes()).await?;
                    kept += 1;
                }
                Err(e) => failures.push(e.to_string()),
            }
        }
    }
    if !failures.is_empty() {
        dir.write_json("errors", "errors.json", &failures).await?;
    }
    let manifest = dir.finish().await?;
    if kept == 0 && !names.is_empty() {
        return Err(ConnectorError::Permanent(format!(
            "no log of pod `{r}` could be read (the pod document is kept in {}): {}",
            dir.dir.display(),
            failures.join("; ")
        )));
    }
    Ok(Output {
        output: json!({
            "namespace": r.namespace,
            "pod": r.name,
            "uid": t.uid(),
            "changed": false,
            "dir": dir.dir.display().to_string(),
            "manifest": manifest.display().to_string(),
            "files": dir.files,
            "containers": names,
            "errors": failures,
            "taken_at": now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "message": format!("kept the logs of pod `{r}` in {}", dir.dir.display()),
        }),
        undo: None,
    })
}
