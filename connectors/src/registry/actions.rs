//! What the actions share (their arguments, the registry an image is in, who acts), their
//! descriptions and plans, and `inspect`, which only reads.

use serde_json::{json, Value};

use super::client::Registry;
use super::{OnRevoke, RegistryConnector};
use crate::context;
use crate::revocation::{normalize_digest, Decision, ImageRef, ListError, RevocationList, State};
use crate::spec::given;
use crate::{Args, ConnectorError, Output};

/// How many finding ids one revocation keeps.
const MAX_FINDINGS: usize = 1000;
/// How long one finding id may be.
const MAX_FINDING_LEN: usize = 200;

/// The platform `inspect` describes when an image has several.
const PREFERRED_PLATFORM: &str = "linux/amd64";

/// The quarantine repository for `repository` from the instance's template
/// (`quarantine/{repository}`), checked to be a repository name.
pub(super) fn quarantine_repository(template: &str, repository: &str) -> Result<String, String> {
    let name = template.replace("{repository}", repository);
    let ok = !name.contains([':', '@'])
        && ImageRef::parse(&format!("localhost/{name}")).is_ok_and(|r| r.repository == name);
    if ok && name != repository {
        Ok(name)
    } else {
        Err(format!(
            "`{template}` does not make a repository name other than the image's (lowercase \
             letters, digits and . _ - between slashes; `{{repository}}` stands for the \
             image's repository)"
        ))
    }
}

pub(super) fn list_err(e: ListError) -> ConnectorError {
    match e {
        ListError::Store(m) => ConnectorError::Transient(m),
        ListError::Invalid(m) => ConnectorError::Permanent(m),
    }
}

pub(super) fn the_list(c: &RegistryConnector) -> Result<&RevocationList, ConnectorError> {
    c.list.as_ref().ok_or_else(|| {
        ConnectorError::Permanent(
            "the revocation list is not available here (it lives in the engine's JetStream)"
                .to_owned(),
        )
    })
}

/// The image named by `image` and, for `revoke`, `digest`.
pub(super) fn image_arg(action: &str, args: &Args) -> Result<ImageRef, ConnectorError> {
    let raw =
        given(args, "image").ok_or_else(|| ConnectorError::invalid(action, "`image` is empty"))?;
    let mut image =
        ImageRef::parse(raw).map_err(|e| ConnectorError::invalid(action, e.to_string()))?;
    if let Some(d) = given(args, "digest") {
        let d = normalize_digest(d).ok_or_else(|| {
            ConnectorError::invalid(action, format!("`digest` `{d}` is not sha256:<64 hex>"))
        })?;
        if image.digest.as_ref().is_some_and(|own| *own != d) {
            return Err(ConnectorError::invalid(
                action,
                format!("`image` `{raw}` names another digest than `digest` `{d}`"),
            ));
        }
        image.digest = Some(d);
    }
    Ok(image)
}

pub(super) fn mode_arg(c: &RegistryConnector, args: &Args) -> Result<OnRevoke, ConnectorError> {
    match given(args, "on_revoke") {
        None => Ok(c.on_revoke),
        Some(m) => OnRevoke::parse(m).ok_or_else(|| {
            ConnectorError::invalid(
                "revoke",
                format!("`on_revoke` must be `record`, `quarantine` or `delete`, got `{m}`"),
            )
        }),
    }
}

pub(super) fn findings_arg(args: &Args) -> Result<(Vec<String>, usize), ConnectorError> {
    let bad = || ConnectorError::invalid("revoke", "`findings` must be a list of strings");
    let raw: Vec<String> = match args.get("findings") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                Value::Number(n) => Ok(n.to_string()),
                _ => Err(bad()),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(bad()),
    };
    // A report with thousands of findings still revokes; the entry keeps the first distinct
    // ids, each cut to a sane length, so it stays one KV value.
    let mut ids: Vec<String> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut left_out = 0;
    for id in raw {
        let id: String = id.trim().chars().take(MAX_FINDING_LEN).collect();
        if id.is_empty() || !seen.insert(id.clone()) {
            continue;
        }
        if ids.len() < MAX_FINDINGS {
            ids.push(id);
        } else {
            left_out += 1;
        }
    }
    Ok((ids, left_out))
}

/// The instance's registry when it holds `image`.
pub(super) fn target<'a>(c: &'a RegistryConnector, image: &ImageRef) -> Option<&'a Registry> {
    c.registry.as_ref().filter(|r| r.serves(&image.registry))
}

/// Why an image is recorded only.
pub(super) fn elsewhere(c: &RegistryConnector, image: &ImageRef) -> String {
    match &c.registry {
        Some(r) => format!(
            "`{image}` is in `{}`, not in this instance's registry `{}`",
            image.registry,
            r.authority()
        ),
        None => format!("instance `{}` has no `url`", c.instance),
    }
}

/// The tag, else the digest: what a manifest is asked for by.
pub(super) fn reference(image: &ImageRef) -> &str {
    image
        .digest
        .as_deref()
        .or(image.tag.as_deref())
        .unwrap_or("latest")
}

pub(super) fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

pub(super) fn who() -> String {
    context::current()
        .and_then(|c| c.by)
        .unwrap_or_else(|| "riposte".to_owned())
}

/// What `action` would do; `digest` is the one a plan resolved.
pub(super) fn describe(
    c: &RegistryConnector,
    action: &str,
    args: &Args,
    digest: Option<&str>,
) -> Result<String, ConnectorError> {
    let image = image_arg(action, args)?;
    let at = digest.map(|d| format!(" ({d})")).unwrap_or_default();
    Ok(match action {
        "revoke" => {
            let mode = mode_arg(c, args)?;
            findings_arg(args)?;
            let then = match (target(c, &image), mode) {
                (_, OnRevoke::Record) => String::new(),
                (Some(r), OnRevoke::Quarantine) => format!(
                    ", then move it to `{}/{}` in {}",
                    r.authority(),
                    quarantine_repository(&c.quarantine, &image.repository)
                        .map_err(ConnectorError::Permanent)?,
                    r.origin()
                ),
                (Some(r), OnRevoke::Delete) => {
                    format!(", then delete its manifest from {}", r.origin())
                }
                (None, m) => format!(" only ({}, so no {})", elsewhere(c, &image), m.as_str()),
            };
            format!("revoke `{image}`{at}: record it in the revocation list{then}")
        }
        "reinstate" => format!(
            "reinstate `{image}`{at} in the revocation list, moving it back if it was \
             quarantined"
        ),
        "inspect" => match target(c, &image) {
            Some(r) => format!("inspect `{image}`{at} in {}", r.origin()),
            None => format!("inspect `{image}`: cannot, {}", elsewhere(c, &image)),
        },
        other => return Err(ConnectorError::UnknownAction(other.to_owned())),
    })
}

/// A plan against the real registry and list: the digest resolved with a HEAD when the
/// instance's registry holds the image, and what the list already says.
pub(super) async fn plan(
    c: &RegistryConnector,
    action: &str,
    args: &Args,
) -> Result<String, ConnectorError> {
    let image = image_arg(action, args)?;
    if let Some(list) = &c.list {
        if let Some((old, _)) = list.find(&image).await.map_err(list_err)? {
            let by = |d: &Decision| format!("by {} at {}", d.by, d.at);
            match (action, old.state, &old.reinstated) {
                ("revoke", State::Revoked, _) => {
                    return Ok(format!(
                        "`{image}` is already revoked ({}): nothing would change",
                        by(&old.revoked)
                    ))
                }
                ("reinstate", State::Reinstated, Some(d)) => {
                    return Ok(format!(
                        "`{image}` is already reinstated ({}): nothing would change",
                        by(d)
                    ))
                }
                _ => {}
            }
        }
    }
    let digest = match target(c, &image) {
        // A revoked image may have left its repository; the entry names it.
        Some(_) if action == "reinstate" => image.digest.clone(),
        Some(reg) => Some(
            reg.head_manifest(&image.repository, reference(&image))
                .await?
                .ok_or_else(|| {
                    ConnectorError::Permanent(format!(
                        "registry {}: manifest `{}:{}` not found (404 MANIFEST_UNKNOWN: manifest \
                         unknown)",
                        reg.origin(),
                        image.repository,
                        reference(&image)
                    ))
                })?,
        ),
        None => image.digest.clone(),
    };
    describe(c, action, args, digest.as_deref())
}

/// `inspect`.
pub(super) async fn inspect(c: &RegistryConnector, args: &Args) -> Result<Output, ConnectorError> {
    let image = image_arg("inspect", args)?;
    let reg = target(c, &image).ok_or_else(|| {
        ConnectorError::Permanent(format!("cannot inspect: {}", elsewhere(c, &image)))
    })?;
    let repo = &image.repository;
    let top = reg.manifest(repo, reference(&image)).await?;
    let mut size = top.body.len() as u64;
    let mut platform = None;
    let image_manifest = if top.is_index() {
        let children = top.descriptors();
        let pick = children
            .iter()
            .find(|d| d.platform.as_deref() == Some(PREFERRED_PLATFORM))
            .or(children.first())
            .ok_or_else(|| {
                ConnectorError::Permanent(format!("`{image}` is an index of no manifests"))
            })?;
        platform.clone_from(&pick.platform);
        let m = reg.manifest(repo, &pick.digest).await?;
        size += m.body.len() as u64;
        m
    } else {
        top.clone()
    };
    size += image_manifest
        .descriptors()
        .iter()
        .map(|d| d.size)
        .sum::<u64>();
    let config = match image_manifest
        .json
        .get("config")
        .and_then(|v| v.get("digest"))
        .and_then(Value::as_str)
    {
        Some(d) => reg.config(repo, d).await?,
        None => Value::Null,
    };
    let labels = config
        .get("config")
        .and_then(|c| c.get("Labels"))
        .filter(|l| l.is_object())
        .cloned()
        .unwrap_or_else(|| json!({}));
    let platform = platform.or_else(|| {
        let os = config.get("os").and_then(Value::as_str)?;
        let arch = config.get("architecture").and_then(Value::as_str)?;
        Some(format!("{os}/{arch}"))
    });
    Ok(Output {
        output: json!({
            "image": ImageRef { digest: Some(top.digest.clone()), ..image.clone() }.to_string(),
            "digest": top.digest,
            "size": size,
            "created": config.get("created").cloned().unwrap_or(Value::Null),
            "labels": labels,
            "media_type": top.media_type,
            "platform": platform,
            "layers": image_manifest.json.get("layers").and_then(Value::as_array).map_or(0, Vec::len),
        }),
        undo: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quarantine_repository_is_a_repository_name() {
        assert_eq!(
            quarantine_repository("quarantine/{repository}", "team/app").ok(),
            Some("quarantine/team/app".to_owned())
        );
        assert_eq!(
            quarantine_repository("{repository}-revoked", "app").ok(),
            Some("app-revoked".to_owned())
        );
        for bad in [
            "{repository}",
            "Q/{repository}",
            "q:{repository}",
            "q//{repository}",
        ] {
            assert!(quarantine_repository(bad, "app").is_err(), "{bad}");
        }
    }
}
