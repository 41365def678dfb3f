//! `find_by_image`: the containers that run an image, so a playbook can act on each after the
//! image was revoked.
//!
//! A container matches by its image reference (`Config.Image`, normalized like the revocation
//! list reads references: `nginx` is `docker.io/library/nginx:latest`), by its image id (the id
//! of the local image the reference names, or an id given as `sha256:<hex>`), or by digest: a
//! digest in its reference, or in the `RepoDigests` of the image it runs. The list's elements
//! have flat keys (`containerId`, `containerName`, `image`, `title`...) so that publishing it
//! to the `generic` format gives one event per container with `resource.container` filled.
//!
//! Read-only: no guard applies and no container is left out (a protected container running a
//! revoked image is still reported; acting on it is refused later, by the acting step).

use std::collections::HashMap;
use std::time::Duration;

use bollard::errors::Error as DockerError;
use bollard::models::{ContainerSummary, ImageInspect};
use bollard::query_parameters::ListContainersOptionsBuilder;
use serde_json::{json, Value};

use super::daemon::Daemon;
use crate::revocation::{normalize_digest, ImageArg};
use crate::{Args, ConnectorError, Output};

/// The title of every element, which the follow-up playbook matches.
pub(crate) const TITLE: &str = "revoked image running";

/// What `find_by_image` looks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Wanted {
    /// The image: a reference, or an image id given as `sha256:<hex>` (`bare`), and a
    /// manifest digest (from `digest`, or the reference's `@sha256:`).
    pub arg: ImageArg,
    /// Stopped containers too.
    pub all: bool,
    /// Why the image is revoked, copied into each element.
    pub reason: Option<String>,
}

impl Wanted {
    /// Reads and checks the arguments: a bad reference or digest is an invalid argument.
    pub(crate) fn from_args(action: &str, args: &Args) -> Result<Wanted, ConnectorError> {
        let text = |k: &str| {
            args.get(k)
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|s| !s.is_empty())
        };
        let arg = ImageArg::read(text("image"), text("digest"))
            .map_err(|e| ConnectorError::invalid(action, e))?;
        Ok(Wanted {
            arg,
            all: args.get("all").and_then(Value::as_bool).unwrap_or(false),
            reason: text("reason").map(str::to_owned),
        })
    }

    /// The image as the elements and plans name it.
    pub(crate) fn display(&self) -> String {
        match (&self.arg.image, &self.arg.bare) {
            (Some(i), _) => match (&i.tagged(), &self.arg.digest) {
                (Some(t), Some(d)) => format!("{t}@{d}"),
                (Some(t), None) => t.clone(),
                (None, _) => i.to_string(),
            },
            (None, Some(id)) => id.clone(),
            (None, None) => String::new(),
        }
    }

    /// What a plan says, from the arguments alone.
    pub(crate) fn describe(&self) -> String {
        format!(
            "find the {} containers running image `{}`",
            if self.all {
                "running and stopped"
            } else {
                "running"
            },
            self.display()
        )
    }

    /// How a container's reference matches, if it does (an image id, which the daemon shows
    /// when the reference moved on since, names none).
    fn by_reference(&self, reference: &str) -> Option<&'static str> {
        self.arg.matches_reference(reference)
    }
}

/// Lists the containers and keeps those that run the image.
pub(crate) async fn find(daemon: &Daemon, wanted: &Wanted) -> Result<Output, ConnectorError> {
    let docker = daemon.client().await?;
    let what = "list containers";
    let options = ListContainersOptionsBuilder::new().all(wanted.all).build();
    let list = match daemon
        .call(what, Duration::ZERO, docker.list_containers(Some(options)))
        .await?
    {
        Ok(l) => l,
        Err(e) => return Err(daemon.fail(e, what).await),
    };
    // The local image the reference (or id) names, for matching by image id.
    let local_id = match (&wanted.arg.bare, &wanted.arg.image) {
        (Some(id), _) => Some(id.clone()),
        (None, Some(image)) => {
            let name = image.tagged().unwrap_or_else(|| image.to_string());
            image_of(daemon, &name).await?.and_then(|i| i.id)
        }
        (None, None) => None,
    };
    let mut digests: HashMap<String, Vec<String>> = HashMap::new();
    let mut found = Vec::new();
    for c in list {
        let id = c.id.clone().unwrap_or_default();
        let image_id = c.image_id.clone().unwrap_or_default();
        let reference = reference_of(daemon, &c).await?;
        let mut matched = wanted.by_reference(&reference);
        if matched.is_none() && !image_id.is_empty() && local_id.as_deref() == Some(&image_id) {
            matched = Some("image id");
        }
        if matched.is_none() && !image_id.is_empty() {
            if let Some(d) = &wanted.arg.digest {
                if !digests.contains_key(&image_id) {
                    let repo_digests = image_of(daemon, &image_id)
                        .await?
                        .and_then(|i| i.repo_digests)
                        .unwrap_or_default();
                    digests.insert(image_id.clone(), repo_digests);
                }
                let carries = digests.get(&image_id).is_some_and(|ds| {
                    ds.iter().any(|rd| {
                        rd.rsplit_once('@')
                            .and_then(|(_, x)| normalize_digest(x))
                            .as_deref()
                            == Some(d.as_str())
                    })
                });
                if carries {
                    matched = Some("digest");
                }
            }
        }
        let Some(how) = matched else { continue };
        let name = c
            .names
            .as_ref()
            .and_then(|n| n.first())
            .map(|n| n.trim_start_matches('/').to_owned())
            .unwrap_or_default();
        let state = c.state.map(|s| s.to_string()).unwrap_or_default();
        let revoked = wanted.display();
        let mut summary = format!(
            "container `{name}` runs `{reference}`, matching revoked image `{revoked}` by {how}"
        );
        if let Some(r) = &wanted.reason {
            summary.push_str(&format!(": {r}"));
        }
        found.push(json!({
            "containerId": id,
            "containerName": name,
            "image": reference,
            "imageId": image_id,
            "state": state,
            "title": TITLE,
            "severity": "high",
            "summary": summary,
            "revokedImage": revoked,
            "revokedDigest": wanted.arg.digest,
            "matchedBy": how,
            "reason": wanted.reason,
        }));
    }
    found.sort_by(|a, b| {
        let name = |v: &Value| {
            v.get("containerName")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned()
        };
        name(a).cmp(&name(b))
    });
    Ok(Output {
        output: json!({ "count": found.len(), "containers": found, "image": wanted.display() }),
        undo: None,
    })
}

/// The container's image reference as it was created (`Config.Image`). The list shows the
/// image id instead when the reference now names another image; the inspect document keeps
/// the reference.
async fn reference_of(daemon: &Daemon, c: &ContainerSummary) -> Result<String, ConnectorError> {
    let listed = c.image.clone().unwrap_or_default();
    if normalize_digest(&listed).is_none() {
        return Ok(listed);
    }
    let Some(id) = c.id.as_deref() else {
        return Ok(listed);
    };
    match daemon.resolve(id).await {
        Ok(t) => Ok(t
            .inspect
            .config
            .as_ref()
            .and_then(|c| c.image.clone())
            .unwrap_or(listed)),
        // Removed since it was listed.
        Err(ConnectorError::Permanent(_)) => Ok(listed),
        Err(e) => Err(e),
    }
}

/// A local image by reference or id; `None` when the daemon has no such image.
async fn image_of(daemon: &Daemon, name: &str) -> Result<Option<ImageInspect>, ConnectorError> {
    let docker = daemon.client().await?;
    let what = format!("inspect image `{name}`");
    match daemon
        .call(&what, Duration::ZERO, docker.inspect_image(name))
        .await?
    {
        Ok(i) => Ok(Some(i)),
        Err(DockerError::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(None),
        Err(e) => Err(daemon.fail(e, &what).await),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn wanted(v: Value) -> Result<Wanted, ConnectorError> {
        Wanted::from_args("find_by_image", v.as_object().unwrap())
    }

    const D: &str = "sha256:b50334049354ed01330403212605dce2f4676a4e787ed113506861d9cf3c5424";

    #[test]
    fn references_are_compared_normalized() {
        let w = wanted(json!({ "image": "nginx:1.16" })).unwrap();
        assert_eq!(w.display(), "docker.io/library/nginx:1.16");
        assert_eq!(
            w.by_reference("docker.io/library/nginx:1.16"),
            Some("reference")
        );
        assert_eq!(
            w.by_reference("index.docker.io/library/nginx:1.16"),
            Some("reference")
        );
        assert_eq!(w.by_reference("nginx"), None, "latest is another tag");
        assert_eq!(w.by_reference("nginx:1.17"), None);
        assert_eq!(w.by_reference(D), None, "an id is not a reference");
    }

    #[test]
    fn digests_match_in_the_reference_or_the_argument() {
        let w = wanted(json!({ "image": format!("registry.local/app@{D}") })).unwrap();
        assert_eq!(w.arg.digest.as_deref(), Some(D));
        assert_eq!(
            w.by_reference(&format!("other.example/app:2@{D}")),
            Some("digest")
        );
        let w = wanted(json!({ "image": "registry.local/app:2", "digest": D.to_uppercase().replace("SHA256", "sha256") })).unwrap();
        assert_eq!(w.display(), format!("registry.local/app:2@{D}"));
        let w = wanted(json!({ "image": D })).unwrap();
        assert_eq!(w.arg.bare.as_deref(), Some(D));
        assert!(w.describe().contains(D));
    }

    #[test]
    fn bad_references_and_digests_are_named() {
        let e = wanted(json!({ "image": "Not An Image" })).unwrap_err();
        assert!(e.to_string().contains("is not an image reference"), "{e}");
        let e = wanted(json!({ "image": "nginx", "digest": "md5:abc" })).unwrap_err();
        assert!(e.to_string().contains("`digest` `md5:abc`"), "{e}");
        let e = wanted(json!({ "image": " " })).unwrap_err();
        assert!(e.to_string().contains("names no image"), "{e}");
    }

    #[test]
    fn stopped_containers_are_asked_for() {
        let w = wanted(json!({ "image": "nginx", "all": true })).unwrap();
        assert!(
            w.describe().contains("running and stopped"),
            "{}",
            w.describe()
        );
    }
}
