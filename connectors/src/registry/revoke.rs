//! `revoke` and `reinstate` (also the revert of `revoke`): the revocation list and the
//! registry changed together.
//!
//! A revocation is recorded before the registry is changed, so an image is denied even when
//! the registry then fails; the entry's `registry` field says `pending` until the move or
//! delete is done, and a retry of the step finishes it. An image already revoked (and done
//! with) is never changed in the registry a second time. Reinstating moves a quarantined image
//! back before the entry is marked, so a failed move leaves the image revoked.

use serde_json::{json, Value};

use super::actions::{
    elsewhere, findings_arg, image_arg, list_err, mode_arg, now, quarantine_repository, reference,
    target, the_list, who,
};
use super::client::Registry;
use super::content::{Lookup, Manifest};
use super::{OnRevoke, RegistryConnector};
use crate::context;
use crate::revocation::{Decision, ImageRef, Revocation, RevocationList, State};
use crate::spec::given;
use crate::{Args, ConnectorError, Output};

/// How much of a reason is kept.
const MAX_REASON: usize = 1000;

/// `revoke`: record, then record-only, quarantine or delete.
pub(super) async fn revoke(c: &RegistryConnector, args: &Args) -> Result<Output, ConnectorError> {
    let (findings, left_out) = findings_arg(args)?;
    let mut out = revoke_with(c, args, findings).await?;
    if left_out > 0 {
        if let Some(o) = out.output.as_object_mut() {
            o.insert("findings_left_out".to_owned(), json!(left_out));
        }
    }
    Ok(out)
}

async fn revoke_with(
    c: &RegistryConnector,
    args: &Args,
    findings: Vec<String>,
) -> Result<Output, ConnectorError> {
    let action = "revoke";
    let mut image = image_arg(action, args)?;
    // Admission and the AuthZ plugin show the reason: a sentence, not a report.
    let reason: String = given(args, "reason")
        .ok_or_else(|| ConnectorError::invalid(action, "`reason` is empty"))?
        .chars()
        .take(MAX_REASON)
        .collect();
    let mode = mode_arg(c, args)?;
    let list = the_list(c)?;
    let reg = target(c, &image);
    let manifest = match reg {
        Some(r) => match r.lookup(&image.repository, reference(&image)).await? {
            Lookup::Found(m) => Some(m),
            Lookup::Missing(e) => {
                // A quarantined or deleted image is gone from its repository: revoking it
                // again finds it in the list.
                return match list.find(&image).await.map_err(list_err)? {
                    Some((old, _)) if old.state == State::Revoked => {
                        already(list, &image, old, findings).await
                    }
                    _ => Err(e),
                };
            }
        },
        None => None,
    };
    if let Some(m) = &manifest {
        image.digest = Some(m.digest.clone());
    }
    let ctx = context::current().unwrap_or_default();
    let mut entry = Revocation {
        digest: image.digest.clone(),
        reference: image.tagged(),
        state: State::Revoked,
        reason: reason.clone(),
        findings,
        event_id: ctx.event_id,
        playbook: ctx.playbook,
        run_id: ctx.run_id,
        revoked: Decision {
            by: ctx.by.unwrap_or_else(|| "riposte".to_owned()),
            at: now(),
            reason: Some(reason),
        },
        reinstated: None,
        registry: None,
    };
    let key = entry
        .key()
        .ok_or_else(|| ConnectorError::invalid(action, "the image has neither tag nor digest"))?;
    let prior = list.get_key(&key).await.map_err(list_err)?;
    let pending = |e: &Revocation| {
        e.registry
            .as_ref()
            .and_then(|r| r.get("status"))
            .and_then(Value::as_str)
            == Some("pending")
    };
    if let Some((old, _)) = prior
        .as_ref()
        .filter(|(e, _)| e.state == State::Revoked && !pending(e))
    {
        return already(list, &image, old.clone(), entry.findings).await;
    }
    let undo = Some(json!({"image": image.to_string(), "key": key}));
    let (Some(reg), Some(manifest), OnRevoke::Quarantine | OnRevoke::Delete) =
        (reg, manifest.as_ref(), mode)
    else {
        let done = if reg.is_some() || mode == OnRevoke::Record {
            json!({
                "action": "record",
                "message": format!("`{image}` recorded in the revocation list; the registry is unchanged"),
            })
        } else {
            json!({
                "action": "record",
                "message": format!(
                    "`{image}` recorded in the revocation list only: {}, so no {}",
                    elsewhere(c, &image),
                    mode.as_str()
                ),
            })
        };
        entry.registry = Some(done.clone());
        let (change, already) = list.revoke(entry).await.map_err(list_err)?;
        // Another run got there first: what it revoked is its to undo.
        return Ok(Output {
            output: json!({"key": key, "entry": change.entry, "already": already, "registry": done}),
            undo: undo.filter(|_| !already),
        });
    };
    entry.registry = Some(json!({
        "action": mode.as_str(),
        "registry": reg.authority(),
        "status": "pending",
    }));
    list.revoke(entry.clone()).await.map_err(list_err)?;
    let done = match mode {
        OnRevoke::Quarantine => quarantine(c, reg, &image, manifest).await?,
        _ => delete(reg, &image, manifest).await?,
    };
    entry.registry = Some(done.clone());
    let (change, _) = list.revoke(entry).await.map_err(list_err)?;
    Ok(Output {
        output: json!({"key": key, "entry": change.entry, "already": false, "registry": done}),
        undo,
    })
}

/// An image revoked before: its new findings are added, nothing else changes.
async fn already(
    list: &RevocationList,
    image: &ImageRef,
    old: Revocation,
    findings: Vec<String>,
) -> Result<Output, ConnectorError> {
    let done = json!({
        "action": "none",
        "message": format!(
            "`{image}` was already revoked (by {} at {}); the registry was not changed again",
            old.revoked.by, old.revoked.at
        ),
    });
    let key = old.key().unwrap_or_default();
    let (change, _) = list
        .revoke(Revocation {
            findings,
            registry: None,
            ..old
        })
        .await
        .map_err(list_err)?;
    Ok(Output {
        output: json!({"key": key, "entry": change.entry, "already": true, "registry": done}),
        undo: None,
    })
}

async fn quarantine(
    c: &RegistryConnector,
    reg: &Registry,
    image: &ImageRef,
    manifest: &Manifest,
) -> Result<Value, ConnectorError> {
    let to = quarantine_repository(&c.quarantine, &image.repository)
        .map_err(ConnectorError::Permanent)?;
    let copied = reg
        .copy(&image.repository, &to, manifest, image.tag.as_deref())
        .await?;
    let deleted = reg
        .delete_manifest(&image.repository, &manifest.digest)
        .await?;
    let host = reg.authority();
    let place = |repo: &str| match &image.tag {
        Some(t) => format!("{host}/{repo}:{t}"),
        None => format!("{host}/{repo}@{}", manifest.digest),
    };
    Ok(json!({
        "action": "quarantine",
        "registry": host,
        "repository": image.repository,
        "tag": image.tag,
        "digest": manifest.digest,
        "quarantine_repository": to,
        "quarantined_as": place(&to),
        "blobs": {"mounted": copied.mounted, "copied": copied.copied, "present": copied.present},
        "deleted": deleted,
        "message": format!("moved `{}` to `{}`", place(&image.repository), place(&to)),
    }))
}

async fn delete(
    reg: &Registry,
    image: &ImageRef,
    manifest: &Manifest,
) -> Result<Value, ConnectorError> {
    let deleted = reg
        .delete_manifest(&image.repository, &manifest.digest)
        .await?;
    let host = reg.authority();
    Ok(json!({
        "action": "delete",
        "registry": host,
        "repository": image.repository,
        "tag": image.tag,
        "digest": manifest.digest,
        "deleted": deleted,
        "message": format!(
            "deleted manifest `{host}/{}@{}` (every tag of it in that repository)",
            image.repository, manifest.digest
        ),
    }))
}

/// `reinstate`.
pub(super) async fn reinstate_action(
    c: &RegistryConnector,
    args: &Args,
) -> Result<Output, ConnectorError> {
    let image = image_arg("reinstate", args)?;
    let reason = given(args, "reason")
        .ok_or_else(|| ConnectorError::invalid("reinstate", "`reason` is empty"))?;
    reinstate(c, &image, reason).await
}

/// The revert of `revoke`: reinstates what it revoked.
pub(super) async fn revert_revoke(
    c: &RegistryConnector,
    undo: &Value,
) -> Result<Output, ConnectorError> {
    let image = undo
        .get("image")
        .and_then(Value::as_str)
        .and_then(|s| ImageRef::parse(s).ok())
        .ok_or_else(|| {
            ConnectorError::Permanent("the revoke's undo data names no image".to_owned())
        })?;
    let reason = match context::current().and_then(|c| c.run_id) {
        Some(run) => format!("revert of run {run}"),
        None => "revert of the revocation".to_owned(),
    };
    reinstate(c, &image, &reason).await
}

async fn reinstate(
    c: &RegistryConnector,
    image: &ImageRef,
    reason: &str,
) -> Result<Output, ConnectorError> {
    let list = the_list(c)?;
    let Some((entry, _)) = list.find(image).await.map_err(list_err)? else {
        return Err(ConnectorError::Permanent(format!(
            "nothing in the revocation list covers `{image}`"
        )));
    };
    if entry.state == State::Reinstated {
        let by = entry
            .reinstated
            .as_ref()
            .map_or("someone", |d| d.by.as_str());
        let done = json!({"action": "none", "message": format!("`{image}` was already reinstated by {by}")});
        return Ok(Output {
            output: json!({"entry": entry, "already": true, "registry": done}),
            undo: None,
        });
    }
    let done = restore(c, &entry).await?;
    // The entry's own digest and reference, so the reinstated entry is the one found.
    let exact = ImageRef {
        digest: entry.digest.clone(),
        ..entry
            .reference
            .as_deref()
            .and_then(|r| ImageRef::parse(r).ok())
            .unwrap_or_else(|| image.clone())
    };
    let decision = Decision {
        by: who(),
        at: now(),
        reason: Some(reason.to_owned()),
    };
    let change = list.reinstate(&exact, decision).await.map_err(list_err)?;
    let (entry, already) = match change {
        Some(ch) => (ch.entry, false),
        None => (entry, true),
    };
    Ok(Output {
        output: json!({"entry": entry, "already": already, "registry": done}),
        undo: None,
    })
}

/// Moves a quarantined image back; says what else a revocation's registry outcome leaves.
async fn restore(c: &RegistryConnector, entry: &Revocation) -> Result<Value, ConnectorError> {
    let r = entry.registry.clone().unwrap_or(Value::Null);
    let s = |k: &str| r.get(k).and_then(Value::as_str).map(str::to_owned);
    let host = s("registry").unwrap_or_default();
    match s("action").as_deref() {
        Some("quarantine") if s("status").is_none() => {
            // The entry comes from the bucket: its names are checked like any reference
            // before they go into a path.
            let checked = |repo: Option<String>| {
                repo.and_then(|name| {
                    let tag = s("tag").map(|t| format!(":{t}")).unwrap_or_default();
                    let digest = s("digest").unwrap_or_default();
                    ImageRef::parse(&format!("{host}/{name}{tag}@{digest}"))
                        .ok()
                        .filter(|i| i.repository == name && i.registry == host.to_ascii_lowercase())
                })
            };
            let (Some(image), Some(quarantined)) = (
                checked(s("repository")),
                checked(s("quarantine_repository")),
            ) else {
                return Err(ConnectorError::Permanent(
                    "the entry's quarantine record does not name its repositories, tag and \
                     digest"
                        .to_owned(),
                ));
            };
            let (repo, qrepo) = (image.repository, quarantined.repository);
            let digest = image.digest.unwrap_or_default();
            let reg = c
                .registry
                .as_ref()
                .filter(|g| g.serves(&host))
                .ok_or_else(|| {
                    ConnectorError::Permanent(format!(
                    "the image was quarantined in `{host}`, which instance `{}` does not reach: \
                     reinstate it with that registry's instance",
                    c.instance
                ))
                })?;
            let tag = image.tag;
            let back = reg
                .head_manifest(&repo, tag.as_deref().unwrap_or(&digest))
                .await?;
            if back.as_deref() != Some(digest.as_str()) {
                let m = reg.manifest(&qrepo, &digest).await?;
                reg.copy(&qrepo, &repo, &m, tag.as_deref()).await?;
            }
            reg.delete_manifest(&qrepo, &digest).await?;
            let place = |repo: &str| match &tag {
                Some(t) => format!("{host}/{repo}:{t}"),
                None => format!("{host}/{repo}@{digest}"),
            };
            Ok(json!({
                "action": "restore",
                "registry": host,
                "repository": repo,
                "tag": tag,
                "digest": digest,
                "message": format!("moved `{}` back to `{}`", place(&qrepo), place(&repo)),
            }))
        }
        Some("delete") if s("status").is_none() => Ok(json!({
            "action": "none",
            "message": format!(
                "the manifest `{host}/{}@{}` was deleted and stays deleted: push the image again \
                 to bring it back",
                s("repository").unwrap_or_default(),
                s("digest").unwrap_or_default()
            ),
        })),
        _ => Ok(
            json!({"action": "none", "message": "the registry was not changed by the revocation"}),
        ),
    }
}
