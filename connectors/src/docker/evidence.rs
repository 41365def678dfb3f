//! `snapshot`: forensic evidence taken before containment.
//!
//! One directory per snapshot, `<evidence_dir>/<name>-<short id>-<UTC time>/`, readable by the
//! engine's user only, holding `inspect.json` (the full inspect document), `logs.txt` (the last
//! N lines of stdout and stderr, with timestamps), `diff.json` (the filesystem changes since the
//! image) and `image.json` (the committed evidence image), and `manifest.sha256` in the format
//! `sha256sum -c` reads. The step output names the directory, the image and every file with its
//! digest, so a notification can point at them.

use std::path::Path;
use std::time::Duration;

use bollard::models::{ChangeType, ContainerConfig};
use bollard::query_parameters::{CommitContainerOptions, LogsOptions};
use futures::StreamExt;
use serde_json::{json, Value};

use super::daemon::{short, Daemon, Target};
use crate::evidence::{name_safe, stamp, EvidenceDir};
use crate::{Args, ConnectorError, Output};

/// The most log lines a snapshot keeps.
const MAX_LOG_LINES: u64 = 100_000;

/// What a snapshot takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Options {
    pub log_lines: u64,
    pub commit: bool,
}

impl Options {
    pub(crate) fn from_args(action: &str, args: &Args) -> Result<Options, ConnectorError> {
        let log_lines = match args.get("log_lines") {
            None => 200,
            Some(v) => match v.as_u64() {
                Some(n) if n <= MAX_LOG_LINES => n,
                _ => {
                    return Err(ConnectorError::InvalidArgs {
                        action: action.to_owned(),
                        reason: format!("`log_lines` must be 0 to {MAX_LOG_LINES}"),
                    })
                }
            },
        };
        Ok(Options {
            log_lines,
            commit: args.get("commit").and_then(Value::as_bool).unwrap_or(true),
        })
    }
}

/// Takes the evidence of `t` into a new directory under `root`.
pub(crate) async fn snapshot(
    daemon: &Daemon,
    t: &Target,
    opts: &Options,
    root: &Path,
    repository: &str,
) -> Result<Output, ConnectorError> {
    let docker = daemon.client().await?;
    let now = chrono::Utc::now();
    let stamp = stamp(now);
    let label = format!("{}-{}-{stamp}", name_safe(&t.name), short(&t.id));
    let mut w = EvidenceDir::create(root, &label).await?;

    let inspect = serde_json::to_vec_pretty(&*t.inspect).map_err(|e| {
        ConnectorError::Permanent(format!("cannot encode the inspect document: {e}"))
    })?;
    w.write("inspect", "inspect.json", &inspect).await?;

    let what = format!("read the logs of {}", t.display());
    let logs_opts = LogsOptions {
        stdout: true,
        stderr: true,
        timestamps: true,
        tail: opts.log_lines.to_string(),
        ..Default::default()
    };
    let mut logs = Vec::new();
    let mut lines = 0usize;
    let collect = async {
        let mut stream = docker.logs(&t.id, Some(logs_opts));
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            let bytes: &[u8] = chunk.as_ref();
            lines += bytes.iter().filter(|b| **b == b'\n').count();
            logs.extend_from_slice(bytes);
        }
        Ok(())
    };
    if let Err(e) = daemon.call(&what, Duration::ZERO, collect).await? {
        return Err(daemon.fail(e, &what).await);
    }
    w.write("logs", "logs.txt", &logs).await?;

    let what = format!("read the filesystem changes of {}", t.display());
    let changes = match daemon
        .call(&what, Duration::ZERO, docker.container_changes(&t.id))
        .await?
    {
        Ok(c) => c.unwrap_or_default(),
        Err(e) => return Err(daemon.fail(e, &what).await),
    };
    let diff: Vec<Value> = changes
        .iter()
        .map(|c| {
            let kind = match c.kind {
                ChangeType::_0 => "modified",
                ChangeType::_1 => "added",
                ChangeType::_2 => "deleted",
            };
            json!({ "path": c.path, "kind": kind })
        })
        .collect();
    let diff_bytes = serde_json::to_vec_pretty(&diff)
        .map_err(|e| ConnectorError::Permanent(format!("cannot encode the diff: {e}")))?;
    w.write("diff", "diff.json", &diff_bytes).await?;

    let mut image = Value::Null;
    if opts.commit {
        let tag = label.clone();
        let what = format!("commit {} to `{repository}:{tag}`", t.display());
        let commit = CommitContainerOptions {
            container: Some(t.id.clone()),
            repo: Some(repository.to_owned()),
            tag: Some(tag.clone()),
            comment: Some(format!("riposte evidence of container {} at {stamp}", t.id)),
            author: Some("riposte".to_owned()),
            pause: true,
            changes: None,
        };
        let made = match daemon
            .call(
                &what,
                Duration::from_secs(120),
                docker.commit_container(commit, ContainerConfig::default()),
            )
            .await?
        {
            Ok(r) => r,
            Err(e) => return Err(daemon.fail(e, &what).await),
        };
        image = json!({ "reference": format!("{repository}:{tag}"), "id": made.id });
        let bytes = serde_json::to_vec_pretty(&image).map_err(|e| {
            ConnectorError::Permanent(format!("cannot encode the image record: {e}"))
        })?;
        w.write("image", "image.json", &bytes).await?;
    }

    let manifest_path = w.finish().await?;
    Ok(Output {
        output: json!({
            "container": t.id_json(),
            "changed": false,
            "dir": w.dir.display().to_string(),
            "manifest": manifest_path.display().to_string(),
            "image": image.get("reference").cloned().unwrap_or(Value::Null),
            "image_id": image.get("id").cloned().unwrap_or(Value::Null),
            "files": w.files,
            "log_lines": lines,
            "changes": diff.len(),
            "taken_at": now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        }),
        undo: None,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn log_lines_are_bounded() {
        let args = |v: Value| v.as_object().cloned().unwrap();
        assert_eq!(
            Options::from_args("snapshot", &args(json!({}))).unwrap(),
            Options {
                log_lines: 200,
                commit: true
            }
        );
        assert!(Options::from_args("snapshot", &args(json!({ "log_lines": 1_000_000 }))).is_err());
    }
}
