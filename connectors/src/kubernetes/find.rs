//! `find_by_image`: the pods that run an image, so a playbook can act on each after the image
//! was revoked.
//!
//! A pod matches when one of its containers or init containers names the image (references
//! normalized like the revocation list reads them: `nginx` is `docker.io/library/nginx:latest`),
//! or when a container status's `imageID` carries the digest (what the node actually pulled,
//! whatever tag the spec names). Pods are listed in one namespace or in all, a page of 500 at a
//! time. Each element has flat keys (`pod`, `namespace`, `podUID`, `node`, `workload`,
//! `title`...) so that publishing the list to the `generic` format gives one event per pod with
//! `resource.pod` filled; `workload` is `deployment/NAME` (the top of the owner chain, in the
//! form `scale_to_zero` takes), `daemonset/NAME`..., or null for a pod no controller owns.
//!
//! Read-only: no guard applies and no pod is left out (a pod in a protected namespace is still
//! reported; acting on it is refused later, by the acting step).

use std::collections::HashMap;

use serde_json::{json, Value};

use super::api::{check_name, Verb};
use super::target::Kind;
use super::Ctx;
use crate::revocation::{normalize_digest, ImageArg};
use crate::{Args, ConnectorError, Output};

/// The title of every element, which the follow-up playbook matches.
pub(crate) const TITLE: &str = "revoked image running";

/// Pods per list request.
const PAGE: usize = 500;

/// At most this many pages (2.5 million pods): a guard against a server that never ends.
const MAX_PAGES: usize = 5000;

/// What `find_by_image` looks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Wanted {
    /// The image: a reference or a bare digest, and the manifest digest (from `digest`, the
    /// reference's `@sha256:`, or the bare one).
    pub arg: ImageArg,
    /// One namespace, or all.
    pub namespace: Option<String>,
    /// The image as elements and plans name it.
    pub display: String,
    /// Why the image is revoked, copied into each element.
    pub reason: Option<String>,
}

impl Wanted {
    /// Reads and checks the arguments: a bad reference, digest or namespace is an invalid
    /// argument.
    pub(crate) fn from_args(action: &str, args: &Args) -> Result<Wanted, ConnectorError> {
        let text = |k: &str| {
            args.get(k)
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|s| !s.is_empty())
        };
        let arg = ImageArg::read(text("image"), text("digest"))
            .map_err(|e| ConnectorError::invalid(action, e))?;
        let namespace = match text("namespace") {
            None => None,
            Some(ns) => {
                check_name(action, "namespace", ns)?;
                Some(ns.to_owned())
            }
        };
        let display = match (arg.tagged(), &arg.digest) {
            (Some(t), Some(d)) => format!("{t}@{d}"),
            (Some(t), None) => t,
            (None, Some(d)) => d.clone(),
            (None, None) => arg
                .image
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
        };
        Ok(Wanted {
            arg,
            namespace,
            display,
            reason: text("reason").map(str::to_owned),
        })
    }

    /// What a plan says, from the arguments alone.
    pub(crate) fn describe(&self) -> String {
        format!(
            "find the pods {} running image `{}`",
            match &self.namespace {
                Some(ns) => format!("in namespace `{ns}`"),
                None => "in every namespace".to_owned(),
            },
            self.display
        )
    }

    /// How a container's spec image matches, if it does.
    fn by_reference(&self, reference: &str) -> Option<&'static str> {
        self.arg.matches_reference(reference)
    }

    /// Whether a status `imageID` (`docker-pullable://repo@sha256:...`, `repo@sha256:...`,
    /// or `sha256:...`) carries the digest.
    fn by_image_id(&self, image_id: &str) -> bool {
        let Some(d) = &self.arg.digest else {
            return false;
        };
        let tail = image_id.rsplit_once('@').map_or(image_id, |(_, t)| t);
        normalize_digest(tail).as_deref() == Some(d.as_str())
    }

    /// The containers of one pod that run the image, with how they match.
    fn matches(&self, pod: &Value) -> Vec<(String, String, &'static str)> {
        let list = |path: &str| -> Vec<Value> {
            pod.pointer(path)
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        };
        let statuses: Vec<Value> = list("/status/containerStatuses")
            .into_iter()
            .chain(list("/status/initContainerStatuses"))
            .collect();
        let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
        let mut out = Vec::new();
        for c in list("/spec/containers")
            .iter()
            .chain(list("/spec/initContainers").iter())
        {
            let name = s(c, "name");
            let image = s(c, "image");
            let how = self.by_reference(&image).or_else(|| {
                statuses
                    .iter()
                    .find(|st| s(st, "name") == name)
                    .filter(|st| self.by_image_id(&s(st, "imageID")))
                    .map(|_| "digest")
            });
            if let Some(how) = how {
                out.push((name, image, how));
            }
        }
        out
    }
}

/// Lists the pods and keeps those that run the image.
pub(crate) async fn find(cx: &Ctx<'_>, wanted: &Wanted) -> Result<Output, ConnectorError> {
    let base = match &wanted.namespace {
        Some(ns) => format!("/api/v1/namespaces/{ns}/pods"),
        None => "/api/v1/pods".to_owned(),
    };
    let mut workloads: HashMap<(String, String, String), Option<OwnerRef>> = HashMap::new();
    let mut found = Vec::new();
    let mut next: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let path = match &next {
            None => format!("{base}?limit={PAGE}"),
            Some(token) => format!("{base}?limit={PAGE}&continue={}", escape(token)),
        };
        let what = match &wanted.namespace {
            Some(ns) => format!("list the pods of namespace `{ns}`"),
            None => "list the pods of every namespace".to_owned(),
        };
        let page: Value = cx.kube.call(Verb::Get, &path, None, false, &what).await?;
        for pod in page
            .get("items")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            let hits = wanted.matches(pod);
            let Some((_, image, how)) = hits.first().cloned() else {
                continue;
            };
            let meta = |k: &str| {
                pod.pointer(&format!("/metadata/{k}"))
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned()
            };
            let (name, namespace) = (meta("name"), meta("namespace"));
            let workload = workload_of(cx, &namespace, pod, &mut workloads).await;
            let containers: Vec<&str> = hits.iter().map(|(c, _, _)| c.as_str()).collect();
            let mut summary = format!(
                "pod `{namespace}/{name}` runs `{image}` ({}), matching revoked image `{}` by {how}",
                containers.join(", "),
                wanted.display
            );
            if let Some(r) = &wanted.reason {
                summary.push_str(&format!(": {r}"));
            }
            found.push(json!({
                "pod": name,
                "namespace": namespace,
                "podUID": meta("uid"),
                "node": pod.pointer("/spec/nodeName").and_then(Value::as_str),
                "phase": pod.pointer("/status/phase").and_then(Value::as_str),
                "image": image,
                "matchedContainers": containers,
                "workload": workload,
                "title": TITLE,
                "severity": "high",
                "summary": summary,
                "revokedImage": wanted.display,
                "revokedDigest": wanted.arg.digest,
                "matchedBy": how,
                "reason": wanted.reason,
            }));
        }
        next = page
            .pointer("/metadata/continue")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .map(str::to_owned);
        if next.is_none() {
            break;
        }
    }
    found.sort_by_key(|p| {
        let s = |k: &str| p.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
        (s("namespace"), s("pod"))
    });
    Ok(Output {
        output: json!({ "count": found.len(), "pods": found, "image": wanted.display }),
        undo: None,
    })
}

/// An owner reference: (apiVersion, kind, name).
type OwnerRef = (String, String, String);

/// The top of a pod's owner chain as `kind/name` in lower case (`deployment/web`), each owner
/// read once per call; `None` for a pod no controller owns. An owner that cannot be read ends
/// the chain.
async fn workload_of(
    cx: &Ctx<'_>,
    namespace: &str,
    pod: &Value,
    seen: &mut HashMap<(String, String, String), Option<OwnerRef>>,
) -> Option<String> {
    let mut owner = controller(pod)?;
    for _ in 0..5 {
        let (api_version, kind, name) = owner.clone();
        let key = (namespace.to_owned(), kind.clone(), name.clone());
        let parent = match seen.get(&key) {
            Some(p) => p.clone(),
            None => {
                let parent = match Kind::known(&api_version, &kind) {
                    Some(k) if check_name("find_by_image", "owner", &name).is_ok() => {
                        let what = format!("read {kind} `{namespace}/{name}`");
                        let path = k.path(namespace, &name);
                        match cx
                            .kube
                            .call::<Value>(Verb::Get, &path, None, false, &what)
                            .await
                        {
                            Ok(o) => controller(&o),
                            Err(e) => {
                                tracing::debug!(error = %e, "owner chain ends");
                                None
                            }
                        }
                    }
                    _ => None,
                };
                seen.insert(key, parent.clone());
                parent
            }
        };
        match parent {
            Some(p) => owner = p,
            None => break,
        }
    }
    Some(format!("{}/{}", owner.1.to_ascii_lowercase(), owner.2))
}

/// The controlling owner reference of an object: (apiVersion, kind, name).
fn controller(object: &Value) -> Option<OwnerRef> {
    let refs = object.pointer("/metadata/ownerReferences")?.as_array()?;
    let r = refs
        .iter()
        .find(|r| r.get("controller").and_then(Value::as_bool) == Some(true))
        .or_else(|| refs.first())?;
    let s = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    Some((s("apiVersion"), s("kind"), s("name"))).filter(|(_, k, n)| !k.is_empty() && !n.is_empty())
}

/// Percent-encodes a continue token for the query string.
fn escape(token: &str) -> String {
    let mut out = String::with_capacity(token.len());
    for b in token.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    const D: &str = "sha256:b50334049354ed01330403212605dce2f4676a4e787ed113506861d9cf3c5424";

    fn wanted(v: Value) -> Result<Wanted, ConnectorError> {
        Wanted::from_args("find_by_image", v.as_object().unwrap())
    }

    #[test]
    fn containers_and_init_containers_match_by_reference_or_pulled_digest() {
        let w = wanted(json!({ "image": "nginx:1.16", "digest": D })).unwrap();
        let pod = json!({
            "spec": {
                "initContainers": [{ "name": "init", "image": "docker.io/library/nginx:1.16" }],
                "containers": [
                    { "name": "web", "image": "registry.local/web:2" },
                    { "name": "proxy", "image": "registry.local/proxy:3" },
                    { "name": "side", "image": "busybox" }
                ]
            },
            "status": { "containerStatuses": [
                { "name": "proxy", "imageID": format!("docker-pullable://registry.local/proxy@{D}") },
                { "name": "side", "imageID": "" }
            ]}
        });
        let hits = w.matches(&pod);
        let names: Vec<(&str, &str)> = hits.iter().map(|(c, _, h)| (c.as_str(), *h)).collect();
        assert_eq!(names, [("proxy", "digest"), ("init", "reference")]);
    }

    #[test]
    fn bad_arguments_are_named() {
        let e = wanted(json!({ "image": "UPPER/case" })).unwrap_err();
        assert!(e.to_string().contains("is not an image reference"), "{e}");
        let e = wanted(json!({ "image": "nginx", "namespace": "../x" })).unwrap_err();
        assert!(
            e.to_string().contains("not a Kubernetes object name"),
            "{e}"
        );
        let e = wanted(json!({ "image": "nginx", "digest": "sha256:12" })).unwrap_err();
        assert!(e.to_string().contains("`digest`"), "{e}");
        let w = wanted(json!({ "image": D, "namespace": "shop" })).unwrap();
        assert_eq!(
            w.describe(),
            format!("find the pods in namespace `shop` running image `{D}`")
        );
    }

    #[test]
    fn continue_tokens_are_escaped() {
        assert_eq!(escape("eyJ2Ijoi+/=="), "eyJ2Ijoi%2B%2F%3D%3D");
    }
}
