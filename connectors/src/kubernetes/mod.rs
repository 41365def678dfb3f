//! Connector `kubernetes`: contains the offending pod, not the whole workload, through the
//! Kubernetes API.
//!
//! # Layout
//! - this module: the actions and their parameters, the instance settings, and the dispatch of
//!   `describe` / `plan` / `run` / `revert` / `enrich`;
//! - `api`: the client (in-cluster, a kubeconfig file, or a URL with a CA and a token file),
//!   the JSON requests every action is made of, server-side dry run, and the mapping of API
//!   errors to transient or permanent failures;
//! - `target`: pods, nodes and workloads: resolving them (with the pod's owner chain), the
//!   guards (protected namespaces, labels and selectors), and the facts enrichment gives;
//! - `pods`: `delete_pod`, `evict_pod` and their disruption guards, `isolate_pod` /
//!   `release_pod`, `logs`;
//! - `nodes`: `cordon_node`, `uncordon_node`, `drain_node`;
//! - `meta`: `label`, `annotate`, `scale_to_zero` / `restore_scale`, `event`;
//! - `find`: `find_by_image`, the pods that run an image;
//! - `rbac`: the verbs and resources each action needs, and the minimal ClusterRole.
//!
//! Every action is one or a few typed API calls; nothing runs `kubectl` or a shell. Plans
//! (dry-run playbooks in a running engine) make the same calls with `dryRun=All`, so what a plan
//! reports is what the real API server (its RBAC, its admission) would have accepted.

mod api;
mod find;
mod meta;
mod nodes;
mod pods;
pub mod rbac;
mod target;

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Map, Value};

use crate::spec::{find_action, ActionSpec, ParamSpec, ParamType};
use crate::{
    reject_unknown_settings, Args, BuildError, Connector, ConnectorError, Deps, Output, Plan,
    Subject,
};
use api::{Kube, Source};
use target::Guards;

const POD: ParamSpec = ParamSpec {
    name: "pod",
    ty: ParamType::String,
    required: true,
    description: "The pod's name.",
};

const NAMESPACE: ParamSpec = ParamSpec {
    name: "namespace",
    ty: ParamType::String,
    required: true,
    description: "The pod's namespace.",
};

const NODE: ParamSpec = ParamSpec {
    name: "node",
    ty: ParamType::String,
    required: true,
    description: "The node's name.",
};

const GRACE: ParamSpec = ParamSpec {
    name: "grace",
    ty: ParamType::String,
    required: false,
    description: "How long the pod has to stop before it is killed (default: the pod's own \
                  terminationGracePeriodSeconds), e.g. `30s`.",
};

const MIN_HEALTHY: ParamSpec = ParamSpec {
    name: "min_healthy_replicas",
    ty: ParamType::Any,
    required: false,
    description: "Refuse when the owning Deployment, ReplicaSet or StatefulSet would be left \
                  with fewer ready pods than this: a number, or a percentage of its desired \
                  replicas such as `50%` (default 1; 0 turns the check off).",
};

const ALLOW_STANDALONE: ParamSpec = ParamSpec {
    name: "allow_standalone",
    ty: ParamType::Bool,
    required: false,
    description: "Allow a pod no controller owns (default false: nothing would recreate it).",
};

const ALLOW_DAEMONSET: ParamSpec = ParamSpec {
    name: "allow_daemonset",
    ty: ParamType::Bool,
    required: false,
    description: "Allow a DaemonSet's pod (default false).",
};

const ALLOW_STATEFULSET: ParamSpec = ParamSpec {
    name: "allow_statefulset",
    ty: ParamType::Bool,
    required: false,
    description: "Allow a StatefulSet's pod (default false: its identity and storage matter).",
};

const OPTIONAL_POD: ParamSpec = ParamSpec {
    required: false,
    description: "The pod (with `namespace`): the object itself, its owning workload, or its \
                  node, as `on` says.",
    ..POD
};

const OPTIONAL_NAMESPACE: ParamSpec = ParamSpec {
    required: false,
    description: "The pod's or workload's namespace.",
    ..NAMESPACE
};

const OPTIONAL_NODE: ParamSpec = ParamSpec {
    required: false,
    description: "A node, when the object is a node and no pod is given.",
    ..NODE
};

const ON: ParamSpec = ParamSpec {
    name: "on",
    ty: ParamType::String,
    required: false,
    description: "`pod` (default when a pod is given), `workload` (the top of the pod's owner \
                  chain, e.g. its Deployment) or `node` (the given node, or the pod's).",
};

const WORKLOAD: ParamSpec = ParamSpec {
    name: "workload",
    ty: ParamType::String,
    required: false,
    description: "`deployment/NAME` or `statefulset/NAME` (with `namespace`), instead of a pod.",
};

/// The parameters of `delete_pod` and `evict_pod`: the pod and the guards on removing it.
const REMOVE_POD: &[ParamSpec] = &[
    POD,
    NAMESPACE,
    GRACE,
    MIN_HEALTHY,
    ALLOW_STANDALONE,
    ALLOW_DAEMONSET,
    ALLOW_STATEFULSET,
];

/// The actions of `kubernetes`.
pub const ACTIONS: &[ActionSpec] = &[
    ActionSpec {
        name: "inspect_pod",
        description: "Facts about a pod for later steps and notifications: owner chain, \
                      workload, labels, annotations, node, images with digests, service \
                      account, owner team and on-call.",
        params: &[POD, NAMESPACE],
        destructive: false,
        reversible: false,
        message_param: None,
    },
    ActionSpec {
        name: "delete_pod",
        description: "Deletes the pod (its controller makes a fresh one). Refused when the \
                      workload would fall below `min_healthy_replicas`, and for standalone, \
                      DaemonSet and StatefulSet pods unless allowed.",
        params: REMOVE_POD,
        destructive: true,
        reversible: false,
        message_param: None,
    },
    ActionSpec {
        name: "evict_pod",
        description: "Evicts the pod through the Eviction API, which honours its \
                      PodDisruptionBudgets (a blocked eviction is a transient failure, so \
                      `retry` applies), with the same guards as `delete_pod`.",
        params: REMOVE_POD,
        destructive: true,
        reversible: false,
        message_param: None,
    },
    ActionSpec {
        name: "isolate_pod",
        description: "Cuts the pod off the network: labels that pod alone and creates a \
                      NetworkPolicy selecting only that label which denies its ingress and \
                      egress, but for the CIDRs, namespaces and DNS allowed. Reverted by \
                      `release_pod`. Other policies that select the pod are named in the \
                      output, since policies add up.",
        params: &[
            POD,
            NAMESPACE,
            ParamSpec {
                name: "allow_cidrs",
                ty: ParamType::Any,
                required: false,
                description: "CIDRs the pod may still reach and be reached from (a list, e.g. \
                              a forensics collector's `10.0.5.7/32`).",
            },
            ParamSpec {
                name: "allow_namespaces",
                ty: ParamType::Any,
                required: false,
                description: "Namespaces whose pods may still reach it and be reached (a list \
                              of names; selected by the `kubernetes.io/metadata.name` label, \
                              set by Kubernetes 1.21 and later).",
            },
            ParamSpec {
                name: "allow_dns",
                ty: ParamType::Bool,
                required: false,
                description: "Allow DNS (port 53) to pods labelled `k8s-app=kube-dns` in any \
                              namespace (default false).",
            },
        ],
        destructive: true,
        reversible: true,
        message_param: None,
    },
    ActionSpec {
        name: "release_pod",
        description: "Ends an isolation: deletes the pod's isolation NetworkPolicy and removes \
                      its isolation label; the inverse of `isolate_pod`.",
        params: &[POD, NAMESPACE],
        destructive: false,
        reversible: false,
        message_param: None,
    },
    ActionSpec {
        name: "label",
        description: "Sets labels on the pod, its owning workload or a node (a null value \
                      removes one). Reverted by restoring the previous values.",
        params: &[
            OPTIONAL_POD,
            OPTIONAL_NAMESPACE,
            OPTIONAL_NODE,
            ON,
            ParamSpec {
                name: "labels",
                ty: ParamType::Any,
                required: true,
                description: "A map of label keys to values (null removes the label).",
            },
        ],
        destructive: true,
        reversible: true,
        message_param: None,
    },
    ActionSpec {
        name: "annotate",
        description: "Sets annotations on the pod, its owning workload or a node (a null \
                      value removes one). Reverted by restoring the previous values.",
        params: &[
            OPTIONAL_POD,
            OPTIONAL_NAMESPACE,
            OPTIONAL_NODE,
            ON,
            ParamSpec {
                name: "annotations",
                ty: ParamType::Any,
                required: true,
                description: "A map of annotation keys to values (null removes one).",
            },
        ],
        destructive: true,
        reversible: true,
        message_param: None,
    },
    ActionSpec {
        name: "cordon_node",
        description: "Marks the node unschedulable; reverted by `uncordon_node`.",
        params: &[NODE],
        destructive: true,
        reversible: true,
        message_param: None,
    },
    ActionSpec {
        name: "uncordon_node",
        description: "Marks the node schedulable again; the inverse of `cordon_node`.",
        params: &[NODE],
        destructive: false,
        reversible: false,
        message_param: None,
    },
    ActionSpec {
        name: "drain_node",
        description: "Cordons the node and evicts its pods through the Eviction API with the \
                      guards of `evict_pod`, retrying evictions a PodDisruptionBudget blocks \
                      until `timeout`. DaemonSet and mirror pods stay, as with `kubectl \
                      drain`; pods in protected namespaces or with protected labels stay and \
                      are listed. Reverted by uncordoning the node (evicted pods are not \
                      brought back).",
        params: &[
            NODE,
            GRACE,
            ParamSpec {
                name: "timeout",
                ty: ParamType::String,
                required: false,
                description: "How long to keep trying blocked evictions and to wait for the \
                              evicted pods to be gone (default 2m).",
            },
            MIN_HEALTHY,
            ALLOW_STANDALONE,
            ALLOW_STATEFULSET,
        ],
        destructive: true,
        reversible: true,
        message_param: None,
    },
    ActionSpec {
        name: "scale_to_zero",
        description: "Scales the pod's Deployment or StatefulSet (or the `workload` given) to \
                      zero replicas; the previous count is recorded, and `restore_scale` or a \
                      revert brings it back.",
        params: &[OPTIONAL_POD, OPTIONAL_NAMESPACE, WORKLOAD],
        destructive: true,
        reversible: true,
        message_param: None,
    },
    ActionSpec {
        name: "restore_scale",
        description: "Sets a Deployment's or StatefulSet's replicas; the inverse of \
                      `scale_to_zero`.",
        params: &[
            ParamSpec {
                required: true,
                ..WORKLOAD
            },
            NAMESPACE,
            ParamSpec {
                name: "replicas",
                ty: ParamType::Integer,
                required: true,
                description: "The replica count to set.",
            },
        ],
        destructive: false,
        reversible: false,
        message_param: None,
    },
    ActionSpec {
        name: "event",
        description: "Records a core/v1 Event on the pod (or node), so `kubectl describe` \
                      shows what riposte did.",
        params: &[
            OPTIONAL_POD,
            OPTIONAL_NAMESPACE,
            OPTIONAL_NODE,
            ParamSpec {
                name: "reason",
                ty: ParamType::String,
                required: true,
                description: "A short CamelCase reason, e.g. `RiposteIsolated`.",
            },
            ParamSpec {
                name: "message",
                ty: ParamType::String,
                required: true,
                description: "What happened (cut to 1024 characters).",
            },
            ParamSpec {
                name: "type",
                ty: ParamType::String,
                required: false,
                description: "`Warning` (default) or `Normal`.",
            },
        ],
        destructive: false,
        reversible: false,
        message_param: Some("message"),
    },
    ActionSpec {
        name: "logs",
        description: "Evidence: the pod's document and the last lines of each of its \
                      containers' logs, written to an evidence directory with a sha256 \
                      manifest, like `docker.snapshot`.",
        params: &[
            POD,
            NAMESPACE,
            ParamSpec {
                name: "lines",
                ty: ParamType::Integer,
                required: false,
                description: "How many of the last lines to keep per container (default 200, \
                              at most 100000).",
            },
            ParamSpec {
                name: "previous",
                ty: ParamType::Bool,
                required: false,
                description: "Also keep the logs of each container's previous instance, when \
                              it restarted (default false).",
            },
        ],
        destructive: false,
        reversible: false,
        message_param: None,
    },
    ActionSpec {
        name: "find_by_image",
        description: "The pods whose containers or init containers run an image, by normalized \
                      reference or by the digest their status `imageID` carries, in one \
                      namespace or all: `{count, pods: [{pod, namespace, podUID, node, image, \
                      workload, title, ...}]}`, flat keys so that publishing the list to the \
                      `generic` format gives one event per pod. Read-only.",
        params: &[
            ParamSpec {
                name: "image",
                ty: ParamType::String,
                required: true,
                description: "The image: a reference (`registry/repository:tag`, \
                              `...@sha256:<hex>`) or a digest `sha256:<hex>`.",
            },
            ParamSpec {
                name: "digest",
                ty: ParamType::String,
                required: false,
                description: "Its manifest digest `sha256:<hex>`, when known: pods that pulled \
                              it match whatever tag they name.",
            },
            ParamSpec {
                name: "namespace",
                ty: ParamType::String,
                required: false,
                description: "Only this namespace (default: every namespace).",
            },
            ParamSpec {
                name: "reason",
                ty: ParamType::String,
                required: false,
                description: "Why the image is revoked; copied into each element (`reason`, \
                              `summary`).",
            },
        ],
        destructive: false,
        reversible: false,
        message_param: None,
    },
];

const SETTINGS: &[&str] = &[
    "kubeconfig",
    "context",
    "url",
    "ca_file",
    "token_file",
    "timeout",
    "evidence_dir",
    "isolation_label",
    "self_namespace",
    "enrich",
    "owner_keys",
    "oncall_keys",
];

/// Label and annotation keys the owner team is read from by default, first found wins.
pub const OWNER_KEYS: &[&str] = &["riposte.io/team", "team", "owner"];

/// Label and annotation keys the on-call is read from by default.
pub const ONCALL_KEYS: &[&str] = &["riposte.io/oncall", "oncall", "on-call"];

/// A `kubernetes` instance.
#[derive(Debug)]
pub struct KubernetesConnector {
    kube: Kube,
    guards: Guards,
    evidence_dir: PathBuf,
    isolation_label: String,
    enrich: bool,
    owner_keys: Vec<String>,
    oncall_keys: Vec<String>,
}

impl KubernetesConnector {
    /// Builds an instance. Settings (all optional):
    /// - `kubeconfig` (a file) with an optional `context`; or `url` with `ca_file` and
    ///   `token_file`; without either, the in-cluster service account, else `$KUBECONFIG` or
    ///   `~/.kube/config`;
    /// - `timeout`: per API request (default 15s);
    /// - `evidence_dir`: where `logs` writes (default `<data_dir>/evidence`);
    /// - `isolation_label`: the label `isolate_pod` puts on the pod (default
    ///   `riposte.io/isolated`);
    /// - `self_namespace`: the engine's own namespace, protected like kube-system (default: read
    ///   from the service account when in a cluster);
    /// - `enrich`: whether events naming a pod get its facts (default true);
    /// - `owner_keys`, `oncall_keys`: the label or annotation keys the owner team and on-call
    ///   are read from (pod, then workload, then namespace).
    ///
    /// The connection is made on first use, so the engine starts while the API is away.
    pub fn new(
        instance: &str,
        settings: &Map<String, Value>,
        deps: &Deps,
    ) -> Result<Self, BuildError> {
        Self::build(instance, settings, deps, None)
    }

    /// An instance on a client built elsewhere (tests hand in a mocked service this way).
    pub fn with_client(
        instance: &str,
        settings: &Map<String, Value>,
        deps: &Deps,
        client: kube::Client,
    ) -> Result<Self, BuildError> {
        Self::build(instance, settings, deps, Some(client))
    }

    fn build(
        instance: &str,
        settings: &Map<String, Value>,
        deps: &Deps,
        client: Option<kube::Client>,
    ) -> Result<Self, BuildError> {
        reject_unknown_settings(instance, settings, SETTINGS)?;
        let bad = |reason: String| BuildError::Config {
            instance: instance.to_owned(),
            reason,
        };
        let string = |key: &str| -> Result<Option<String>, BuildError> {
            match settings.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
                Some(_) => Err(bad(format!("`{key}` must be a non-empty string"))),
            }
        };
        let keys = |key: &str, default: &[&str]| -> Result<Vec<String>, BuildError> {
            match settings.get(key) {
                None | Some(Value::Null) => Ok(default.iter().map(|s| (*s).to_owned()).collect()),
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|v| match v {
                        Value::String(s) if !s.is_empty() => Ok(s.clone()),
                        _ => Err(bad(format!("`{key}` must be a list of keys"))),
                    })
                    .collect(),
                Some(_) => Err(bad(format!("`{key}` must be a list of keys"))),
            }
        };
        let timeout = match string("timeout")? {
            None => Duration::from_secs(15),
            Some(s) => humantime::parse_duration(&s).map_err(|e| bad(format!("`timeout`: {e}")))?,
        };
        let source = match client {
            Some(c) => Source::Client(c),
            None => match (string("kubeconfig")?, string("url")?) {
                (Some(_), Some(_)) => {
                    return Err(bad("give `kubeconfig` or `url`, not both".to_owned()))
                }
                (Some(path), None) => Source::Kubeconfig {
                    path: PathBuf::from(path),
                    context: string("context")?,
                },
                (None, Some(url)) => {
                    if !url.starts_with("https://") {
                        return Err(bad(format!(
                            "`url` must be https:// (the token is never sent in clear), got \
                             `{url}`"
                        )));
                    }
                    Source::Url {
                        url,
                        ca_file: string("ca_file")?.map(PathBuf::from),
                        token_file: string("token_file")?.map(PathBuf::from).ok_or_else(|| {
                            bad("`url` needs `token_file` (a file holding the bearer token)"
                                .to_owned())
                        })?,
                    }
                }
                (None, None) => {
                    if string("context")?.is_some() {
                        return Err(bad("`context` needs `kubeconfig`".to_owned()));
                    }
                    Source::Infer
                }
            },
        };
        let isolation_label =
            string("isolation_label")?.unwrap_or_else(|| "riposte.io/isolated".to_owned());
        let enrich = match settings.get("enrich") {
            None => true,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(bad("`enrich` must be true or false".to_owned())),
        };
        let mut protect = deps.protect.clone();
        if let Some(ns) = string("self_namespace")?.or_else(target::own_namespace) {
            if !protect.namespaces.contains(&ns) {
                protect.namespaces.push(ns);
            }
        }
        Ok(KubernetesConnector {
            kube: Kube::new(source, timeout),
            guards: Guards { protect },
            evidence_dir: string("evidence_dir")?
                .map(PathBuf::from)
                .unwrap_or_else(|| deps.data_dir.join("evidence")),
            isolation_label,
            enrich,
            owner_keys: keys("owner_keys", OWNER_KEYS)?,
            oncall_keys: keys("oncall_keys", ONCALL_KEYS)?,
        })
    }

    fn spec(action: &str) -> Result<&'static ActionSpec, ConnectorError> {
        find_action(ACTIONS, action).ok_or_else(|| ConnectorError::UnknownAction(action.to_owned()))
    }

    fn ctx(&self, dry: bool) -> Ctx<'_> {
        Ctx {
            kube: &self.kube,
            guards: &self.guards,
            dry,
            conn: self,
        }
    }

    async fn perform(
        &self,
        action: &str,
        args: &Args,
        dry: bool,
    ) -> Result<Output, ConnectorError> {
        let cx = self.ctx(dry);
        match action {
            "inspect_pod" => {
                let pod = target::PodRef::from_args(action, args)?;
                let t = cx.pod(&pod).await?;
                let facts = t.facts(&cx, &self.owner_keys, &self.oncall_keys).await;
                Ok(Output {
                    output: facts,
                    undo: None,
                })
            }
            "delete_pod" | "evict_pod" => pods::remove(&cx, action, args).await,
            "isolate_pod" => pods::isolate(&cx, action, args, &self.isolation_label).await,
            "release_pod" => {
                let pod = target::PodRef::from_args(action, args)?;
                pods::release(&cx, &pod, None, &self.isolation_label).await
            }
            "logs" => pods::logs(&cx, action, args, &self.evidence_dir).await,
            "label" | "annotate" => meta::set(&cx, action, args).await,
            "cordon_node" => nodes::cordon(&cx, action, args, true).await,
            "uncordon_node" => nodes::cordon(&cx, action, args, false).await,
            "drain_node" => nodes::drain(&cx, action, args).await,
            "scale_to_zero" => meta::scale_to_zero(&cx, action, args).await,
            "restore_scale" => meta::restore_scale(&cx, action, args).await,
            "event" => meta::event(&cx, action, args).await,
            "find_by_image" => find::find(&cx, &find::Wanted::from_args(action, args)?).await,
            other => Err(ConnectorError::UnknownAction(other.to_owned())),
        }
    }
}

/// What an action needs while it runs: the API, the guards, and whether it is a server-side
/// dry run.
pub(crate) struct Ctx<'a> {
    kube: &'a Kube,
    guards: &'a Guards,
    /// Every write carries `dryRun=All`: the server checks and admits it, stores nothing.
    dry: bool,
    conn: &'a KubernetesConnector,
}

/// What `action` would do, from the arguments alone.
fn describe_args(action: &str, args: &Args) -> Result<String, ConnectorError> {
    let s = |k: &str| args.get(k).and_then(Value::as_str).unwrap_or("");
    let pod = || format!("pod `{}/{}`", s("namespace"), s("pod"));
    let object = || -> String {
        match (s("on"), s("pod"), s("node")) {
            ("workload", _, _) => format!("the workload owning {}", pod()),
            ("node", "", n) if !n.is_empty() => format!("node `{n}`"),
            ("node", _, _) => format!("the node of {}", pod()),
            (_, "", n) if !n.is_empty() => format!("node `{n}`"),
            _ => pod(),
        }
    };
    let keys = |k: &str| -> String {
        args.get(k)
            .and_then(Value::as_object)
            .map(|m| m.keys().cloned().collect::<Vec<_>>().join(", "))
            .unwrap_or_default()
    };
    Ok(match action {
        "inspect_pod" => format!("inspect {}", pod()),
        "delete_pod" => format!("delete {}", pod()),
        "evict_pod" => format!("evict {}", pod()),
        "isolate_pod" => format!("isolate {} with a deny-all NetworkPolicy", pod()),
        "release_pod" => format!("release {} from isolation", pod()),
        "logs" => format!("keep the logs of {}", pod()),
        "label" => format!("set labels {} on {}", keys("labels"), object()),
        "annotate" => format!("set annotations {} on {}", keys("annotations"), object()),
        "cordon_node" => format!("cordon node `{}`", s("node")),
        "uncordon_node" => format!("uncordon node `{}`", s("node")),
        "drain_node" => format!("drain node `{}`", s("node")),
        "scale_to_zero" => match s("workload") {
            "" => format!("scale the workload owning {} to zero", pod()),
            w => format!("scale `{}/{w}` to zero", s("namespace")),
        },
        "restore_scale" => format!(
            "scale `{}/{}` to {}",
            s("namespace"),
            s("workload"),
            args.get("replicas").and_then(Value::as_i64).unwrap_or(0)
        ),
        "event" => format!(
            "record a {} event `{}` on {}",
            match s("type") {
                "" => "Warning",
                t => t,
            },
            s("reason"),
            object()
        ),
        "find_by_image" => find::Wanted::from_args(action, args)?.describe(),
        other => return Err(ConnectorError::UnknownAction(other.to_owned())),
    })
}

#[async_trait]
impl Connector for KubernetesConnector {
    fn actions(&self) -> &'static [ActionSpec] {
        ACTIONS
    }

    fn describe(&self, action: &str, args: &Args) -> Result<Plan, ConnectorError> {
        Self::spec(action)?;
        Ok(Plan {
            description: describe_args(action, args)?,
        })
    }

    async fn plan(&self, action: &str, args: &Args) -> Result<Plan, ConnectorError> {
        Self::spec(action)?;
        if action == "find_by_image" {
            // Read-only: the plan looks.
            let wanted = find::Wanted::from_args(action, args)?;
            let out = find::find(&self.ctx(false), &wanted).await?;
            let pods: Vec<String> = out
                .output
                .get("pods")
                .and_then(Value::as_array)
                .map(|ps| {
                    ps.iter()
                        .map(|p| {
                            let s = |k: &str| p.get(k).and_then(Value::as_str).unwrap_or("");
                            format!("{}/{}", s("namespace"), s("pod"))
                        })
                        .collect()
                })
                .unwrap_or_default();
            let listed = if pods.is_empty() {
                String::new()
            } else {
                format!(": {}", pods.join(", "))
            };
            return Ok(Plan {
                description: format!("{} (now {}{listed})", wanted.describe(), pods.len()),
            });
        }
        if matches!(action, "inspect_pod" | "logs") {
            // Reads only: the plan checks the pod is there.
            let pod = target::PodRef::from_args(action, args)?;
            self.ctx(true).pod(&pod).await?;
            return self.describe(action, args);
        }
        let out = self.perform(action, args, true).await?;
        let mut description = out
            .output
            .get("message")
            .and_then(Value::as_str)
            .map_or_else(
                || describe_args(action, args).unwrap_or_default(),
                str::to_owned,
            );
        description.push_str(" (server-side dry run: the API server accepted it)");
        Ok(Plan { description })
    }

    async fn run(&self, action: &str, args: &Args) -> Result<Output, ConnectorError> {
        Self::spec(action)?;
        self.perform(action, args, false).await
    }

    async fn revert(&self, action: &str, undo: &Value) -> Result<Output, ConnectorError> {
        let cx = self.ctx(false);
        match action {
            "isolate_pod" => {
                let pod = target::PodRef::from_undo(undo)?;
                let policy = undo.get("policy").and_then(Value::as_str);
                let label = undo
                    .get("label")
                    .and_then(Value::as_str)
                    .unwrap_or(&self.isolation_label);
                pods::release(&cx, &pod, policy, label).await
            }
            "label" | "annotate" => meta::revert_set(&cx, undo).await,
            "cordon_node" | "drain_node" => nodes::uncordon_undo(&cx, undo).await,
            "scale_to_zero" => meta::revert_scale(&cx, undo).await,
            other => Err(ConnectorError::NotReversible(other.to_owned())),
        }
    }

    async fn enrich(&self, subject: &Subject) -> Option<Value> {
        if !self.enrich {
            return None;
        }
        let pod = target::PodRef::from_subject(subject)?;
        let cx = self.ctx(false);
        match cx.pod(&pod).await {
            Ok(t) => Some(t.facts(&cx, &self.owner_keys, &self.oncall_keys).await),
            Err(e) => {
                tracing::debug!(pod = %pod, error = %e, "no kubernetes enrichment");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests;
