//! Pods, nodes and workloads: resolving them, the guards, and the facts enrichment gives.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use serde_json::{json, Map, Value};

use super::api::{api_base, check_name, is_not_found, Verb};
use super::Ctx;
use crate::guard::{label_key, looks_secret};
use crate::{Args, ConnectorError, Protection, Subject};

/// A pod by namespace and name, both checked as object names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PodRef {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for PodRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

fn text<'a>(args: &'a Args, key: &str) -> &'a str {
    args.get(key).and_then(Value::as_str).unwrap_or("").trim()
}

impl PodRef {
    /// A pod whose namespace and name are both object names.
    fn checked(action: &str, namespace: &str, name: &str) -> Result<PodRef, ConnectorError> {
        check_name(action, "namespace", namespace)?;
        check_name(action, "pod", name)?;
        Ok(PodRef {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }

    pub(crate) fn from_args(action: &str, args: &Args) -> Result<PodRef, ConnectorError> {
        PodRef::checked(action, text(args, "namespace"), text(args, "pod"))
    }

    pub(crate) fn from_undo(undo: &Value) -> Result<PodRef, ConnectorError> {
        let get = |k: &str| undo.get(k).and_then(Value::as_str).unwrap_or("");
        PodRef::checked("revert", get("namespace"), get("pod"))
    }

    pub(crate) fn from_subject(s: &Subject) -> Option<PodRef> {
        PodRef::checked("enrich", s.namespace.as_deref()?, s.pod.as_deref()?).ok()
    }

    pub(crate) fn path(&self) -> String {
        format!("/api/v1/namespaces/{}/pods/{}", self.namespace, self.name)
    }
}

/// The API resource of a kind an owner reference names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Kind {
    pub api_version: String,
    pub kind: String,
    pub plural: String,
}

impl Kind {
    /// The kinds riposte follows up an owner chain and acts on; others (custom resources) end
    /// the chain.
    pub(crate) fn known(api_version: &str, kind: &str) -> Option<Kind> {
        let plural = match kind {
            "ReplicaSet" => "replicasets",
            "Deployment" => "deployments",
            "StatefulSet" => "statefulsets",
            "DaemonSet" => "daemonsets",
            "Job" => "jobs",
            "CronJob" => "cronjobs",
            "ReplicationController" => "replicationcontrollers",
            _ => return None,
        };
        Some(Kind {
            api_version: api_version.to_owned(),
            kind: kind.to_owned(),
            plural: plural.to_owned(),
        })
    }

    /// `deployment/NAME` or `statefulset/NAME`, for `scale_to_zero` and `restore_scale`.
    pub(crate) fn scalable(action: &str, workload: &str) -> Result<(Kind, String), ConnectorError> {
        let (kind, name) = workload.split_once('/').ok_or_else(|| {
            ConnectorError::invalid(
                action,
                format!("`workload` `{workload}` must be `deployment/NAME` or `statefulset/NAME`"),
            )
        })?;
        check_name(action, "workload", name)?;
        let kind = match kind.to_ascii_lowercase().as_str() {
            "deployment" | "deployments" | "deploy" => "Deployment",
            "statefulset" | "statefulsets" | "sts" => "StatefulSet",
            other => {
                return Err(ConnectorError::invalid(
                    action,
                    format!("`{other}` cannot be scaled (deployment or statefulset)"),
                ))
            }
        };
        let k = Kind::known("apps/v1", kind).ok_or_else(|| {
            ConnectorError::invalid(action, format!("unknown workload kind `{kind}`"))
        })?;
        Ok((k, name.to_owned()))
    }

    pub(crate) fn path(&self, namespace: &str, name: &str) -> String {
        let base = api_base(&self.api_version);
        format!("{base}/namespaces/{namespace}/{}/{name}", self.plural)
    }

    pub(crate) fn is_scalable(&self) -> bool {
        matches!(
            self.kind.as_str(),
            "Deployment" | "StatefulSet" | "ReplicaSet"
        )
    }
}

/// One link of an owner chain.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Owner {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub uid: String,
}

impl Owner {
    fn controller_of(meta_owners: Option<&Value>) -> Option<Owner> {
        let refs = meta_owners?.as_array()?;
        let r = refs
            .iter()
            .find(|r| r.get("controller").and_then(Value::as_bool) == Some(true))
            .or_else(|| refs.first())?;
        let s = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
        Some(Owner {
            api_version: s("apiVersion"),
            kind: s("kind"),
            name: s("name"),
            uid: s("uid"),
        })
    }

    pub(crate) fn json(&self) -> Value {
        json!({ "kind": self.kind, "name": self.name, "api_version": self.api_version })
    }
}

/// The top of a pod's owner chain, with the object when it could be read.
#[derive(Debug, Clone)]
pub(crate) struct Workload {
    pub owner: Owner,
    pub kind: Option<Kind>,
    pub object: Option<Value>,
}

impl Workload {
    pub(crate) fn display(&self, namespace: &str) -> String {
        format!(
            "{} `{namespace}/{}`",
            self.owner.kind.to_ascii_lowercase(),
            self.owner.name
        )
    }

    fn labels(&self) -> BTreeMap<String, String> {
        string_map(
            self.object
                .as_ref()
                .and_then(|o| o.pointer("/metadata/labels")),
        )
    }

    fn annotations(&self) -> BTreeMap<String, String> {
        string_map(
            self.object
                .as_ref()
                .and_then(|o| o.pointer("/metadata/annotations")),
        )
    }
}

pub(crate) fn string_map(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

/// A resolved pod.
#[derive(Debug, Clone)]
pub(crate) struct PodTarget {
    pub r: PodRef,
    pub pod: Pod,
    /// The raw document (evidence keeps it as the API gave it).
    pub raw: Value,
    /// From the pod up: ReplicaSet, Deployment...
    pub chain: Vec<Owner>,
    pub workload: Option<Workload>,
}

impl PodTarget {
    pub(crate) fn uid(&self) -> String {
        self.pod.metadata.uid.clone().unwrap_or_default()
    }

    pub(crate) fn labels(&self) -> BTreeMap<String, String> {
        self.pod.metadata.labels.clone().unwrap_or_default()
    }

    pub(crate) fn node(&self) -> Option<String> {
        self.pod.spec.as_ref().and_then(|s| s.node_name.clone())
    }

    pub(crate) fn terminating(&self) -> bool {
        self.pod.metadata.deletion_timestamp.is_some()
    }

    pub(crate) fn ready(&self) -> bool {
        pod_ready(&self.pod)
    }

    pub(crate) fn id_json(&self) -> Value {
        json!({ "namespace": self.r.namespace, "pod": self.r.name, "uid": self.uid() })
    }

    /// Facts for enrichment and `inspect_pod`.
    pub(crate) async fn facts(
        &self,
        cx: &Ctx<'_>,
        owner_keys: &[String],
        oncall_keys: &[String],
    ) -> Value {
        let p = &self.pod;
        let spec = p.spec.as_ref();
        let status = p.status.as_ref();
        let mut labels = self.labels();
        let mut annotations = p.metadata.annotations.clone().unwrap_or_default();
        annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
        let ns = cx.namespace_meta(&self.r.namespace).await;
        let ns_labels = ns.as_ref().map(|n| n.0.clone()).unwrap_or_default();
        let ns_annotations = ns.map(|n| n.1).unwrap_or_default();
        let (wl_labels, wl_annotations) = self
            .workload
            .as_ref()
            .map(|w| (w.labels(), w.annotations()))
            .unwrap_or_default();
        let sources: [(&str, &BTreeMap<String, String>); 6] = [
            ("pod label", &labels),
            ("pod annotation", &annotations),
            ("workload label", &wl_labels),
            ("workload annotation", &wl_annotations),
            ("namespace label", &ns_labels),
            ("namespace annotation", &ns_annotations),
        ];
        let find = |keys: &[String]| -> (Value, Value) {
            for k in keys {
                for (from, m) in &sources {
                    if let Some(v) = m.get(k).filter(|v| !v.is_empty()) {
                        return (json!(v), json!(format!("{from} `{k}`")));
                    }
                }
            }
            (Value::Null, Value::Null)
        };
        let (owner, owner_from) = find(owner_keys);
        let (on_call, on_call_from) = find(oncall_keys);
        let statuses = status
            .and_then(|s| s.container_statuses.clone())
            .unwrap_or_default();
        let mut images = Vec::new();
        let mut privileged = Vec::new();
        let mut secrets_in_env = Vec::new();
        let containers = spec.map(|s| s.containers.clone()).unwrap_or_default();
        let inits = spec
            .and_then(|s| s.init_containers.clone())
            .unwrap_or_default();
        for c in containers.iter().chain(inits.iter()) {
            let st = statuses.iter().find(|s| s.name == c.name);
            let image_id = st.map(|s| s.image_id.clone()).filter(|s| !s.is_empty());
            let digest = image_id
                .as_deref()
                .and_then(|i| i.split_once("@sha256:"))
                .map(|(_, d)| format!("sha256:{d}"));
            images.push(json!({
                "container": c.name,
                "image": c.image,
                "image_id": image_id,
                "digest": digest,
            }));
            let sc = c.security_context.as_ref();
            if sc.and_then(|s| s.privileged) == Some(true) {
                privileged.push(json!(c.name));
            }
            for e in c.env.clone().unwrap_or_default() {
                let from_secret = e
                    .value_from
                    .as_ref()
                    .and_then(|v| v.secret_key_ref.as_ref())
                    .map(|r| r.name.clone());
                if let Some(secret) = from_secret {
                    secrets_in_env.push(json!({
                        "container": c.name, "name": e.name, "from": format!("secret `{secret}`")
                    }));
                } else if e.value.is_some() && looks_secret(&e.name) {
                    secrets_in_env.push(json!({
                        "container": c.name, "name": e.name, "from": "literal value"
                    }));
                }
            }
        }
        let isolated = labels.remove(&cx.conn.isolation_label).is_some();
        json!({
            "pod": self.r.name,
            "namespace": self.r.namespace,
            "uid": self.uid(),
            "node": self.node(),
            "phase": status.and_then(|s| s.phase.clone()),
            "ready": self.ready(),
            "terminating": self.terminating(),
            "labels": self.labels(),
            "annotations": annotations,
            "service_account": spec.and_then(|s| s.service_account_name.clone()),
            "owners": self.chain.iter().map(Owner::json).collect::<Vec<_>>(),
            "workload": self.workload.as_ref().map(|w| w.owner.json()),
            "images": images,
            "privileged_containers": privileged,
            "host_network": spec.and_then(|s| s.host_network).unwrap_or(false),
            "host_pid": spec.and_then(|s| s.host_pid).unwrap_or(false),
            "secrets_in_env": secrets_in_env,
            "namespace_labels": ns_labels,
            "owner": owner,
            "owner_from": owner_from,
            "on_call": on_call,
            "on_call_from": on_call_from,
            "isolated": isolated,
        })
    }
}

/// Whether a pod's Ready condition is true.
pub(crate) fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The guards: what no action touches.
#[derive(Debug, Clone)]
pub(crate) struct Guards {
    pub protect: Protection,
}

impl Guards {
    pub(crate) fn namespace(&self, ns: &str) -> Result<(), ConnectorError> {
        if self.protect.namespaces.iter().any(|p| p == ns) {
            return Err(ConnectorError::Refused(format!(
                "namespace `{ns}` is protected"
            )));
        }
        Ok(())
    }

    pub(crate) fn labels(
        &self,
        what: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), ConnectorError> {
        match self.protect.refuses_labels(what, labels) {
            Some(r) => Err(ConnectorError::Refused(r)),
            None => Ok(()),
        }
    }
}

/// The engine's own namespace, when it runs in a cluster.
pub(crate) fn own_namespace() -> Option<String> {
    std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

impl Ctx<'_> {
    /// Reads a pod and its owner chain.
    pub(crate) async fn pod(&self, r: &PodRef) -> Result<PodTarget, ConnectorError> {
        let what = format!("read pod `{r}`");
        let raw: Value = self
            .kube
            .call(Verb::Get, &r.path(), None, false, &what)
            .await?;
        let pod: Pod = serde_json::from_value(raw.clone())
            .map_err(|e| ConnectorError::Permanent(format!("{what}: {e}")))?;
        let mut chain = Vec::new();
        let mut workload = None;
        let mut next = Owner::controller_of(raw.pointer("/metadata/ownerReferences"));
        while let Some(owner) = next.take() {
            if chain.len() >= 5 {
                break;
            }
            chain.push(owner.clone());
            let kind = Kind::known(&owner.api_version, &owner.kind);
            let object = match &kind {
                Some(k) if check_name("enrich", "owner", &owner.name).is_ok() => {
                    let path = k.path(&r.namespace, &owner.name);
                    let what = format!("read {} `{}`", owner.kind, owner.name);
                    match self
                        .kube
                        .call::<Value>(Verb::Get, &path, None, false, &what)
                        .await
                    {
                        Ok(o) => Some(o),
                        Err(e) => {
                            tracing::debug!(error = %e, "owner chain ends");
                            None
                        }
                    }
                }
                _ => None,
            };
            next = object
                .as_ref()
                .and_then(|o| Owner::controller_of(o.pointer("/metadata/ownerReferences")));
            workload = Some(Workload {
                owner,
                kind,
                object,
            });
        }
        Ok(PodTarget {
            r: r.clone(),
            pod,
            raw,
            chain,
            workload,
        })
    }

    /// A namespace's labels and annotations, `None` when it cannot be read.
    pub(crate) async fn namespace_meta(
        &self,
        ns: &str,
    ) -> Option<(BTreeMap<String, String>, BTreeMap<String, String>)> {
        let path = format!("/api/v1/namespaces/{ns}");
        match self
            .kube
            .call::<Namespace>(Verb::Get, &path, None, false, "read the namespace")
            .await
        {
            Ok(n) => Some((
                n.metadata.labels.unwrap_or_default(),
                n.metadata.annotations.unwrap_or_default(),
            )),
            Err(e) => {
                if !is_not_found(&e) {
                    tracing::debug!(namespace = ns, error = %e, "namespace not read");
                }
                None
            }
        }
    }

    /// Refuses a pod in a protected namespace, or whose labels, workload labels or namespace
    /// labels are protected.
    pub(crate) async fn guard_pod(&self, t: &PodTarget) -> Result<(), ConnectorError> {
        let mut objects = vec![(format!("pod `{}`", t.r), t.labels())];
        if let Some(w) = &t.workload {
            objects.push((w.display(&t.r.namespace), w.labels()));
        }
        self.guard_in(&t.r.namespace, &objects).await
    }

    /// Refuses objects of namespace `ns` when the namespace is protected, or when their labels
    /// (`what` → labels) or the namespace's labels are.
    pub(crate) async fn guard_in(
        &self,
        ns: &str,
        objects: &[(String, BTreeMap<String, String>)],
    ) -> Result<(), ConnectorError> {
        self.guards.namespace(ns)?;
        for (what, labels) in objects {
            self.guards.labels(what, labels)?;
        }
        if let Some((labels, _)) = self.namespace_meta(ns).await {
            self.guards.labels(&format!("namespace `{ns}`"), &labels)?;
        }
        Ok(())
    }

    /// Reads a node and refuses a protected one.
    pub(crate) async fn node(
        &self,
        action: &str,
        name: &str,
        guard: bool,
    ) -> Result<(Node, Value), ConnectorError> {
        check_name(action, "node", name)?;
        let what = format!("read node `{name}`");
        let raw: Value = self
            .kube
            .call(
                Verb::Get,
                &format!("/api/v1/nodes/{name}"),
                None,
                false,
                &what,
            )
            .await?;
        let node: Node = serde_json::from_value(raw.clone())
            .map_err(|e| ConnectorError::Permanent(format!("{what}: {e}")))?;
        if guard {
            self.guards.labels(
                &format!("node `{name}`"),
                &node.metadata.labels.clone().unwrap_or_default(),
            )?;
        }
        Ok((node, raw))
    }
}

/// The string map under `key` in the arguments, with null values kept (they remove).
pub(crate) fn key_values(
    action: &str,
    args: &Args,
    key: &str,
) -> Result<Map<String, Value>, ConnectorError> {
    let m = args.get(key).and_then(Value::as_object).ok_or_else(|| {
        ConnectorError::invalid(action, format!("`{key}` must be a map of keys to values"))
    })?;
    if m.is_empty() {
        return Err(ConnectorError::invalid(action, format!("`{key}` is empty")));
    }
    let mut out = Map::new();
    for (k, v) in m {
        label_key(k).map_err(|e| ConnectorError::invalid(action, e))?;
        let v = match v {
            Value::Null => Value::Null,
            Value::String(s) => json!(s),
            Value::Bool(_) | Value::Number(_) => json!(v.to_string()),
            _ => {
                return Err(ConnectorError::invalid(
                    action,
                    format!("the value of `{k}` must be a string or null"),
                ))
            }
        };
        out.insert(k.clone(), v);
    }
    Ok(out)
}
