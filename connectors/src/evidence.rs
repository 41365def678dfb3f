//! Evidence directories shared by the connectors that take evidence (`docker.snapshot`,
//! `kubernetes.logs`): one new directory per capture, readable by the engine's user only
//! (0700, files 0600, each synced to disk), with a `manifest.sha256` that `sha256sum -c` reads.

use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::ConnectorError;

/// Keeps `[A-Za-z0-9_.-]` (what Docker tags and file names take), at most 80 characters.
pub(crate) fn name_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(80)
        .collect()
}

fn io_err(what: &str, path: &Path, e: &std::io::Error) -> ConnectorError {
    ConnectorError::Permanent(format!("{what} `{}`: {e}", path.display()))
}

/// The UTC time stamp evidence directories are named with.
pub(crate) fn stamp(now: chrono::DateTime<chrono::Utc>) -> String {
    now.format("%Y%m%dT%H%M%S%.3fZ").to_string()
}

/// One evidence directory being written.
#[derive(Debug)]
pub(crate) struct EvidenceDir {
    /// Its path.
    pub dir: PathBuf,
    /// Every file written so far: key → `{path, sha256, bytes}`.
    pub files: Map<String, Value>,
    manifest: String,
}

impl EvidenceDir {
    /// Creates `<root>/<label>/` (and `root` when missing).
    pub(crate) async fn create(root: &Path, label: &str) -> Result<EvidenceDir, ConnectorError> {
        let dir = root.join(label);
        let mut b = tokio::fs::DirBuilder::new();
        b.recursive(true).mode(0o700);
        b.create(&dir)
            .await
            .map_err(|e| io_err("cannot create the evidence directory", &dir, &e))?;
        Ok(EvidenceDir {
            dir,
            files: Map::new(),
            manifest: String::new(),
        })
    }

    /// Writes a new file and adds it to the manifest.
    pub(crate) async fn write(
        &mut self,
        key: &str,
        name: &str,
        bytes: &[u8],
    ) -> Result<(), ConnectorError> {
        let path = self.dir.join(name);
        let mut opts = tokio::fs::OpenOptions::new();
        opts.write(true).create_new(true).mode(0o600);
        let mut f = opts
            .open(&path)
            .await
            .map_err(|e| io_err("cannot create evidence file", &path, &e))?;
        tokio::io::AsyncWriteExt::write_all(&mut f, bytes)
            .await
            .map_err(|e| io_err("cannot write evidence file", &path, &e))?;
        tokio::io::AsyncWriteExt::flush(&mut f)
            .await
            .map_err(|e| io_err("cannot write evidence file", &path, &e))?;
        f.sync_all()
            .await
            .map_err(|e| io_err("cannot sync evidence file", &path, &e))?;
        let digest = hex::encode(Sha256::digest(bytes));
        self.manifest.push_str(&format!("{digest}  {name}\n"));
        self.files.insert(
            key.to_owned(),
            json!({ "path": path.display().to_string(), "sha256": digest, "bytes": bytes.len() }),
        );
        Ok(())
    }

    /// Writes `value` as indented JSON.
    pub(crate) async fn write_json(
        &mut self,
        key: &str,
        name: &str,
        value: &impl serde::Serialize,
    ) -> Result<(), ConnectorError> {
        let bytes = serde_json::to_vec_pretty(value)
            .map_err(|e| ConnectorError::Permanent(format!("cannot encode `{name}`: {e}")))?;
        self.write(key, name, &bytes).await
    }

    /// Writes `manifest.sha256` and returns its path.
    pub(crate) async fn finish(&mut self) -> Result<PathBuf, ConnectorError> {
        let manifest = std::mem::take(&mut self.manifest);
        self.write("manifest", "manifest.sha256", manifest.as_bytes())
            .await?;
        Ok(self.dir.join("manifest.sha256"))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn names_are_made_safe() {
        assert_eq!(name_safe("web/1:x"), "web-1-x");
    }

    #[tokio::test]
    async fn the_manifest_lists_every_file_with_its_digest() {
        let root = tempfile::tempdir().unwrap();
        let mut d = EvidenceDir::create(root.path(), "x").await.unwrap();
        d.write("a", "a.txt", b"hello\n").await.unwrap();
        let m = d.finish().await.unwrap();
        let text = std::fs::read_to_string(m).unwrap();
        assert_eq!(
            text,
            "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03  a.txt\n"
        );
        assert!(
            d.write("a", "a.txt", b"again").await.is_err(),
            "files are never overwritten"
        );
    }
}
