//! Object actions: `label` and `annotate` (pod, owning workload or node), `scale_to_zero` /
//! `restore_scale`, and `event`.

use serde_json::{json, Map, Value};

use super::api::{api_base, check_name, Verb};
use super::target::{key_values, string_map, Kind, PodRef};
use super::Ctx;
use crate::{Args, ConnectorError, Output};

/// An object `label` and `annotate` act on, as its undo data names it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Object {
    api_version: String,
    kind: String,
    plural: String,
    namespace: Option<String>,
    name: String,
}

impl Object {
    fn node(name: &str) -> Object {
        Object {
            api_version: "v1".to_owned(),
            kind: "Node".to_owned(),
            plural: "nodes".to_owned(),
            namespace: None,
            name: name.to_owned(),
        }
    }

    fn pod(r: &PodRef) -> Object {
        Object {
            api_version: "v1".to_owned(),
            kind: "Pod".to_owned(),
            plural: "pods".to_owned(),
            namespace: Some(r.namespace.clone()),
            name: r.name.clone(),
        }
    }

    fn path(&self) -> String {
        let base = api_base(&self.api_version);
        match &self.namespace {
            Some(ns) => format!("{base}/namespaces/{ns}/{}/{}", self.plural, self.name),
            None => format!("{base}/{}/{}", self.plural, self.name),
        }
    }

    fn display(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{} `{ns}/{}`", self.kind.to_ascii_lowercase(), self.name),
            None => format!("{} `{}`", self.kind.to_ascii_lowercase(), self.name),
        }
    }

    fn json(&self) -> Value {
        json!({
            "api_version": self.api_version,
            "kind": self.kind,
            "plural": self.plural,
            "namespace": self.namespace,
            "name": self.name,
        })
    }

    /// Reads it back from undo data, checking every part that goes into the path.
    fn from_json(v: &Value) -> Result<Object, ConnectorError> {
        let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
        let o = Object {
            api_version: s("api_version"),
            kind: s("kind"),
            plural: s("plural"),
            namespace: v
                .get("namespace")
                .and_then(Value::as_str)
                .map(str::to_owned),
            name: s("name"),
        };
        let known = o.kind == "Pod" && o.plural == "pods"
            || o.kind == "Node" && o.plural == "nodes"
            || Kind::known(&o.api_version, &o.kind).is_some_and(|k| k.plural == o.plural);
        let version_ok = o
            .api_version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '/');
        if !known || !version_ok {
            return Err(ConnectorError::Permanent(format!(
                "undo data names an object riposte does not act on: {v}"
            )));
        }
        check_name("revert", "name", &o.name)?;
        if let Some(ns) = &o.namespace {
            check_name("revert", "namespace", ns)?;
        }
        Ok(o)
    }
}

/// Resolves the object of `label` / `annotate` and applies the guards. Returns it with its
/// current document.
async fn object(
    cx: &Ctx<'_>,
    action: &str,
    args: &Args,
) -> Result<(Object, Value), ConnectorError> {
    let s = |k: &str| args.get(k).and_then(Value::as_str).unwrap_or("").trim();
    let on = match (s("on"), s("pod"), s("node")) {
        ("", "", "") => {
            return Err(ConnectorError::invalid(
                action,
                "give `pod` and `namespace`, or `node`: the event names neither",
            ))
        }
        ("", "", _) => "node",
        ("", _, _) => "pod",
        (on @ ("pod" | "workload" | "node"), _, _) => on,
        (other, _, _) => {
            return Err(ConnectorError::invalid(
                action,
                format!("`on` must be pod, workload or node, not `{other}`"),
            ))
        }
    };
    if on == "node" && !s("node").is_empty() {
        let (_, raw) = cx.node(action, s("node"), true).await?;
        return Ok((Object::node(s("node")), raw));
    }
    let r = PodRef::from_args(action, args)?;
    let t = cx.pod(&r).await?;
    cx.guard_pod(&t).await?;
    match on {
        "pod" => Ok((Object::pod(&r), t.raw)),
        "node" => {
            let node = t.node().ok_or_else(|| {
                ConnectorError::Permanent(format!("pod `{r}` is not on a node yet"))
            })?;
            let (_, raw) = cx.node(action, &node, true).await?;
            Ok((Object::node(&node), raw))
        }
        _ => {
            let w = t.workload.as_ref().ok_or_else(|| {
                ConnectorError::Permanent(format!("pod `{r}` has no owning workload"))
            })?;
            match (&w.kind, &w.object) {
                (Some(k), Some(o)) => Ok((
                    Object {
                        api_version: k.api_version.clone(),
                        kind: k.kind.clone(),
                        plural: k.plural.clone(),
                        namespace: Some(r.namespace.clone()),
                        name: w.owner.name.clone(),
                    },
                    o.clone(),
                )),
                _ => Err(ConnectorError::Permanent(format!(
                    "the owner of pod `{r}` ({} `{}`) cannot be read or is not a workload \
                     riposte knows",
                    w.owner.kind, w.owner.name
                ))),
            }
        }
    }
}

/// `label` and `annotate`.
pub(crate) async fn set(cx: &Ctx<'_>, action: &str, args: &Args) -> Result<Output, ConnectorError> {
    let field = if action == "label" {
        "labels"
    } else {
        "annotations"
    };
    let values = key_values(action, args, field)?;
    let (o, current) = object(cx, action, args).await?;
    let now = string_map(current.pointer(&format!("/metadata/{field}")));
    let mut previous = Map::new();
    let mut patch = Map::new();
    for (k, v) in &values {
        let old = now.get(k);
        if old.map(String::as_str) != v.as_str() {
            previous.insert(k.clone(), old.map_or(Value::Null, |s| json!(s)));
            patch.insert(k.clone(), v.clone());
        }
    }
    let keys: Vec<&String> = values.keys().collect();
    if patch.is_empty() {
        return Ok(Output {
            output: json!({
                "object": o.json(),
                "changed": false,
                "message": format!("{} already has {field} {keys:?}", o.display()),
            }),
            undo: None,
        });
    }
    let body = json!({ "metadata": {
        field: patch,
        "resourceVersion": current.pointer("/metadata/resourceVersion"),
    } });
    let what = format!("set {field} on {}", o.display());
    let _: Value = cx
        .kube
        .call(Verb::MergePatch, &o.path(), Some(&body), cx.dry, &what)
        .await?;
    let changed: Vec<&String> = patch.keys().collect();
    Ok(Output {
        output: json!({
            "object": o.json(),
            "changed": true,
            "set": patch,
            "message": format!("set {field} {changed:?} on {}", o.display()),
        }),
        undo: Some(json!({ "object": o.json(), "field": field, "previous": previous })),
    })
}

/// The revert of `label` and `annotate`: the previous values come back (absent ones are
/// removed).
pub(crate) async fn revert_set(cx: &Ctx<'_>, undo: &Value) -> Result<Output, ConnectorError> {
    let o = Object::from_json(undo.get("object").unwrap_or(&Value::Null))?;
    let field = match undo.get("field").and_then(Value::as_str) {
        Some(f @ ("labels" | "annotations")) => f,
        _ => {
            return Err(ConnectorError::Permanent(
                "undo data names no labels or annotations".to_owned(),
            ))
        }
    };
    let previous = undo
        .get("previous")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let body = json!({ "metadata": { field: previous } });
    let what = format!("restore {field} on {}", o.display());
    let _: Value = cx
        .kube
        .call(Verb::MergePatch, &o.path(), Some(&body), cx.dry, &what)
        .await?;
    Ok(Output {
        output: json!({
            "object": o.json(),
            "changed": true,
            "restored": previous,
            "message": format!("restored {field} on {}", o.display()),
        }),
        undo: None,
    })
}

/// The Deployment or StatefulSet `scale_to_zero` acts on, with the pod when one was given.
async fn scalable(
    cx: &Ctx<'_>,
    action: &str,
    args: &Args,
) -> Result<(Kind, String, String), ConnectorError> {
    let s = |k: &str| args.get(k).and_then(Value::as_str).unwrap_or("").trim();
    if !s("workload").is_empty() {
        let ns = s("namespace");
        check_name(action, "namespace", ns)?;
        let (kind, name) = Kind::scalable(action, s("workload"))?;
        cx.guards.namespace(ns)?;
        let what = format!("read {} `{ns}/{name}`", kind.kind);
        let object: Value = cx
            .kube
            .call(Verb::Get, &kind.path(ns, &name), None, false, &what)
            .await?;
        let what = format!("{} `{ns}/{name}`", kind.kind.to_ascii_lowercase());
        cx.guard_in(
            ns,
            &[(what, string_map(object.pointer("/metadata/labels")))],
        )
        .await?;
        return Ok((kind, ns.to_owned(), name));
    }
    let r = PodRef::from_args(action, args)?;
    let t = cx.pod(&r).await?;
    cx.guard_pod(&t).await?;
    let w = t.workload.as_ref().ok_or_else(|| {
        ConnectorError::Refused(format!(
            "pod `{r}` has no controller: there is nothing to scale"
        ))
    })?;
    match &w.kind {
        Some(k) if k.is_scalable() => Ok((k.clone(), r.namespace.clone(), w.owner.name.clone())),
        _ => Err(ConnectorError::Refused(format!(
            "{} cannot be scaled to zero (Deployments, StatefulSets and ReplicaSets can)",
            w.display(&r.namespace)
        ))),
    }
}

async fn replicas(cx: &Ctx<'_>, kind: &Kind, ns: &str, name: &str) -> Result<u64, ConnectorError> {
    let what = format!("read the scale of {} `{ns}/{name}`", kind.kind);
    let scale: Value = cx
        .kube
        .call(
            Verb::Get,
            &format!("{}/scale", kind.path(ns, name)),
            None,
            false,
            &what,
        )
        .await?;
    Ok(scale
        .pointer("/spec/replicas")
        .and_then(Value::as_u64)
        .unwrap_or(0))
}

async fn set_replicas(
    cx: &Ctx<'_>,
    kind: &Kind,
    ns: &str,
    name: &str,
    n: u64,
) -> Result<(), ConnectorError> {
    let what = format!("scale {} `{ns}/{name}` to {n}", kind.kind);
    let body = json!({ "spec": { "replicas": n } });
    let _: Value = cx
        .kube
        .call(
            Verb::MergePatch,
            &format!("{}/scale", kind.path(ns, name)),
            Some(&body),
            cx.dry,
            &what,
        )
        .await?;
    Ok(())
}

fn workload_json(kind: &Kind, ns: &str, name: &str) -> Value {
    json!({ "api_version": kind.api_version, "kind": kind.kind, "namespace": ns, "name": name })
}

/// `scale_to_zero`.
pub(crate) async fn scale_to_zero(
    cx: &Ctx<'_>,
    action: &str,
    args: &Args,
) -> Result<Output, ConnectorError> {
    let (kind, ns, name) = scalable(cx, action, args).await?;
    let before = replicas(cx, &kind, &ns, &name).await?;
    let display = format!("{} `{ns}/{name}`", kind.kind.to_ascii_lowercase());
    if before == 0 {
        return Ok(Output {
            output: json!({
                "workload": workload_json(&kind, &ns, &name),
                "changed": false,
                "replicas_before": 0,
                "message": format!("{display} is already at zero replicas"),
            }),
            undo: None,
        });
    }
    set_replicas(cx, &kind, &ns, &name, 0).await?;
    Ok(Output {
        output: json!({
            "workload": workload_json(&kind, &ns, &name),
            "changed": true,
            "replicas_before": before,
            "message": format!("scale {display} from {before} to 0 replicas"),
        }),
        undo: Some(json!({
            "workload": workload_json(&kind, &ns, &name),
            "replicas": before,
        })),
    })
}

/// `restore_scale`.
pub(crate) async fn restore_scale(
    cx: &Ctx<'_>,
    action: &str,
    args: &Args,
) -> Result<Output, ConnectorError> {
    let s = |k: &str| args.get(k).and_then(Value::as_str).unwrap_or("").trim();
    let ns = s("namespace");
    check_name(action, "namespace", ns)?;
    let (kind, name) = Kind::scalable(action, s("workload"))?;
    let n = args
        .get("replicas")
        .and_then(Value::as_u64)
        .filter(|n| *n <= 10_000)
        .ok_or_else(|| ConnectorError::invalid(action, "`replicas` must be 0 to 10000"))?;
    restore(cx, &kind, ns, &name, n).await
}

async fn restore(
    cx: &Ctx<'_>,
    kind: &Kind,
    ns: &str,
    name: &str,
    n: u64,
) -> Result<Output, ConnectorError> {
    let before = replicas(cx, kind, ns, name).await?;
    let display = format!("{} `{ns}/{name}`", kind.kind.to_ascii_lowercase());
    if before != n {
        set_replicas(cx, kind, ns, name, n).await?;
    }
    Ok(Output {
        output: json!({
            "workload": workload_json(kind, ns, name),
            "changed": before != n,
            "replicas_before": before,
            "replicas": n,
            "message": format!("scale {display} from {before} to {n} replicas"),
        }),
        undo: None,
    })
}

/// The revert of `scale_to_zero`.
pub(crate) async fn revert_scale(cx: &Ctx<'_>, undo: &Value) -> Result<Output, ConnectorError> {
    let w = undo.get("workload").unwrap_or(&Value::Null);
    let s = |k: &str| w.get(k).and_then(Value::as_str).unwrap_or("");
    let kind = Kind::known(s("api_version"), s("kind"))
        .filter(Kind::is_scalable)
        .ok_or_else(|| ConnectorError::Permanent(format!("undo data names no workload: {w}")))?;
    check_name("revert", "namespace", s("namespace"))?;
    check_name("revert", "workload", s("name"))?;
    let n = undo
        .get("replicas")
        .and_then(Value::as_u64)
        .ok_or_else(|| ConnectorError::Permanent("undo data has no replica count".to_owned()))?;
    restore(cx, &kind, s("namespace"), s("name"), n).await
}

/// `event`: a core/v1 Event on a pod or a node.
pub(crate) async fn event(
    cx: &Ctx<'_>,
    action: &str,
    args: &Args,
) -> Result<Output, ConnectorError> {
    let s = |k: &str| args.get(k).and_then(Value::as_str).unwrap_or("").trim();
    let reason = s("reason");
    let reason_ok = !reason.is_empty()
        && reason.len() <= 128
        && reason.chars().all(|c| c.is_ascii_alphanumeric());
    if !reason_ok {
        return Err(ConnectorError::invalid(
            action,
            format!("`reason` `{reason}` must be a short CamelCase word, e.g. `RiposteIsolated`"),
        ));
    }
    let kind = match s("type") {
        "" | "Warning" => "Warning",
        "Normal" => "Normal",
        other => {
            return Err(ConnectorError::invalid(
                action,
                format!("`type` must be Warning or Normal, not `{other}`"),
            ))
        }
    };
    let message: String = s("message").chars().take(1024).collect();
    let (involved, ns, display) = if s("pod").is_empty() && !s("node").is_empty() {
        let (node, _) = cx.node(action, s("node"), false).await?;
        (
            json!({ "apiVersion": "v1", "kind": "Node", "name": s("node"),
                    "uid": node.metadata.uid }),
            "default".to_owned(),
            format!("node `{}`", s("node")),
        )
    } else {
        let r = PodRef::from_args(action, args)?;
        let uid = cx
            .kube
            .get_opt::<Value>(&r.path(), &format!("read pod `{r}`"))
            .await?
            .and_then(|p| p.pointer("/metadata/uid").cloned());
        (
            json!({ "apiVersion": "v1", "kind": "Pod", "namespace": r.namespace,
                    "name": r.name, "uid": uid }),
            r.namespace.clone(),
            format!("pod `{r}`"),
        )
    };
    let now = chrono::Utc::now();
    let object = involved.get("name").and_then(Value::as_str).unwrap_or("x");
    let name = format!(
        "{object}.riposte.{:x}",
        now.timestamp_nanos_opt().unwrap_or(0)
    );
    let time = now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let body = json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": { "name": name, "namespace": ns },
        "involvedObject": involved,
        "reason": reason,
        "message": message,
        "type": kind,
        "source": { "component": "riposte" },
        "reportingComponent": "riposte",
        "reportingInstance": "riposte",
        "firstTimestamp": time,
        "lastTimestamp": time,
        "count": 1,
    });
    let what = format!("record an event on {display}");
    let _: Value = cx
        .kube
        .call(
            Verb::Post,
            &format!("/api/v1/namespaces/{ns}/events"),
            Some(&body),
            cx.dry,
            &what,
        )
        .await?;
    Ok(Output {
        output: json!({
            "event": name,
            "namespace": ns,
            "changed": true,
            "message": format!("record {kind} event `{reason}` on {display}"),
        }),
        undo: None,
    })
}
