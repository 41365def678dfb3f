//! What the `registry` connector reads and writes through the distribution API: manifests
//! (their digest checked against their bytes), image configs, blobs mounted across
//! repositories or copied when a mount is refused, and whole images copied with what they
//! reference.

use reqwest::header::{HeaderMap, ACCEPT, CONTENT_TYPE};
use reqwest::{Method, StatusCode, Url};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use super::client::{header, Registry};
use crate::ConnectorError;

/// The manifest types asked for, most specific first.
pub const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// The distribution spec's limit on a manifest: larger answers are refused, not read.
const MAX_MANIFEST: usize = 4 << 20;
/// A config blob larger than this is not an image config.
const MAX_CONFIG: usize = 8 << 20;
/// A layer copied through this process (when the registry refuses a mount) is held in memory.
const MAX_COPY: usize = 1 << 30;

/// A manifest as the registry holds it.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// Its digest, checked against the body.
    pub digest: String,
    /// Its media type.
    pub media_type: String,
    /// The exact bytes (a copy must keep them to keep the digest).
    pub body: Vec<u8>,
    /// The body as JSON.
    pub json: Value,
}

impl Manifest {
    /// Whether it lists other manifests (an OCI index or a Docker manifest list).
    pub fn is_index(&self) -> bool {
        self.json.get("manifests").is_some_and(Value::is_array)
    }

    /// The descriptors of its config and layers, or of the manifests it lists.
    pub fn descriptors(&self) -> Vec<Descriptor> {
        let mut out = Vec::new();
        if let Some(c) = self.json.get("config") {
            out.extend(Descriptor::read(c));
        }
        for key in ["layers", "manifests"] {
            if let Some(list) = self.json.get(key).and_then(Value::as_array) {
                out.extend(list.iter().filter_map(Descriptor::read));
            }
        }
        out
    }
}

/// A manifest, or the registry's 404 for it.
#[derive(Debug)]
pub enum Lookup {
    /// There.
    Found(Manifest),
    /// Not there: the error that says so.
    Missing(ConnectorError),
}

/// A content descriptor: what a manifest says about a blob or another manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct Descriptor {
    /// Media type.
    pub media_type: String,
    /// Digest.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
    /// Whether it lives elsewhere (`urls`, non-distributable layers): never copied.
    pub foreign: bool,
    /// `os/architecture` for the manifests of an index.
    pub platform: Option<String>,
}

impl Descriptor {
    fn read(v: &Value) -> Option<Descriptor> {
        let digest = crate::revocation::normalize_digest(v.get("digest")?.as_str()?)?;
        let media_type = v
            .get("mediaType")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let foreign = media_type.contains("foreign")
            || media_type.contains("nondistributable")
            || v.get("urls")
                .is_some_and(|u| u.as_array().is_some_and(|a| !a.is_empty()));
        let platform = v.get("platform").map(|p| {
            format!(
                "{}/{}",
                p.get("os").and_then(Value::as_str).unwrap_or("?"),
                p.get("architecture").and_then(Value::as_str).unwrap_or("?")
            )
        });
        Some(Descriptor {
            media_type,
            digest,
            size: v.get("size").and_then(Value::as_u64).unwrap_or(0),
            foreign,
            platform,
        })
    }
}

/// How a blob reached another repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Moved {
    /// It was there already.
    Present,
    /// Mounted from the source repository (no bytes moved).
    Mounted,
    /// Read and written again through this process.
    Copied,
}

impl Registry {
    /// GETs a manifest by tag or digest, checking its digest against its bytes.
    pub async fn manifest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<Manifest, ConnectorError> {
        match self.lookup(repository, reference).await? {
            Lookup::Found(m) => Ok(m),
            Lookup::Missing(e) => Err(e),
        }
    }

    /// Like [`Registry::manifest`], with a 404 told apart from other failures.
    pub async fn lookup(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<Lookup, ConnectorError> {
        let what = format!("manifest `{repository}:{reference}`");
        let resp = self
            .send(
                Method::GET,
                self.url(repository, "manifests", reference),
                &format!("repository:{repository}:pull"),
                &[(ACCEPT, MANIFEST_TYPES.join(", "))],
                None,
            )
            .await?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            let e = self.failure(status, &text, &what);
            return if status == StatusCode::NOT_FOUND {
                Ok(Lookup::Missing(e))
            } else {
                Err(e)
            };
        }
        let header_digest = header(resp.headers(), "docker-content-digest");
        let header_type = header(resp.headers(), CONTENT_TYPE.as_str());
        let body = self.read(resp, MAX_MANIFEST, &what).await?;
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&body)));
        if let Some(claimed) = header_digest
            .as_deref()
            .and_then(crate::revocation::normalize_digest)
        {
            if claimed != digest {
                return Err(ConnectorError::Permanent(format!(
                    "registry {}: {what} claims digest {claimed} but its bytes hash to {digest}",
                    self.origin()
                )));
            }
        }
        if let Some(wanted) = crate::revocation::normalize_digest(reference) {
            if wanted != digest {
                return Err(ConnectorError::Permanent(format!(
                    "registry {}: {what} hashes to {digest}",
                    self.origin()
                )));
            }
        }
        let json: Value = serde_json::from_slice(&body).map_err(|e| {
            ConnectorError::Permanent(format!(
                "registry {}: {what} is not JSON: {e}",
                self.origin()
            ))
        })?;
        let media_type = json
            .get("mediaType")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .or(header_type)
            .unwrap_or_default();
        Ok(Lookup::Found(Manifest {
            digest,
            media_type,
            body,
            json,
        }))
    }

    /// HEADs a manifest: its digest as the registry reports it, `None` when it is not there.
    pub async fn head_manifest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<Option<String>, ConnectorError> {
        let what = format!("manifest `{repository}:{reference}`");
        let resp = self
            .send(
                Method::HEAD,
                self.url(repository, "manifests", reference),
                &format!("repository:{repository}:pull"),
                &[(ACCEPT, MANIFEST_TYPES.join(", "))],
                None,
            )
            .await?;
        match resp.status() {
            s if s.is_success() => Ok(header(resp.headers(), "docker-content-digest")
                .as_deref()
                .and_then(crate::revocation::normalize_digest)),
            StatusCode::NOT_FOUND => Ok(None),
            s => Err(self.failure(s, "", &what)),
        }
    }

    /// GETs a blob, up to `max` bytes.
    pub async fn blob(
        &self,
        repository: &str,
        digest: &str,
        max: usize,
    ) -> Result<Vec<u8>, ConnectorError> {
        let what = format!("blob `{digest}` of `{repository}`");
        let resp = self
            .send(
                Method::GET,
                self.url(repository, "blobs", digest),
                &format!("repository:{repository}:pull"),
                &[],
                None,
            )
            .await?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            return Err(self.failure(status, &text, &what));
        }
        let body = self.read(resp, max, &what).await?;
        let got = format!("sha256:{}", hex::encode(Sha256::digest(&body)));
        if got != digest {
            return Err(ConnectorError::Permanent(format!(
                "registry {}: {what} hashes to {got}",
                self.origin()
            )));
        }
        Ok(body)
    }

    /// The image config a manifest names (created, labels), as JSON.
    pub async fn config(&self, repository: &str, digest: &str) -> Result<Value, ConnectorError> {
        let body = self.blob(repository, digest, MAX_CONFIG).await?;
        serde_json::from_slice(&body).map_err(|e| {
            ConnectorError::Permanent(format!(
                "registry {}: the config `{digest}` of `{repository}` is not JSON: {e}",
                self.origin()
            ))
        })
    }

    async fn has_blob(&self, repository: &str, digest: &str) -> Result<bool, ConnectorError> {
        let resp = self
            .send(
                Method::HEAD,
                self.url(repository, "blobs", digest),
                &format!("repository:{repository}:pull"),
                &[],
                None,
            )
            .await?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            s => Err(self.failure(s, "", &format!("blob `{digest}` of `{repository}`"))),
        }
    }

    /// Makes blob `digest` of `from` present in `to`: already there, mounted, or copied when the
    /// registry refuses the mount.
    pub async fn move_blob(
        &self,
        from: &str,
        to: &str,
        digest: &str,
    ) -> Result<Moved, ConnectorError> {
        if self.has_blob(to, digest).await? {
            return Ok(Moved::Present);
        }
        let what = format!("mounting blob `{digest}` from `{from}` into `{to}`");
        let mut url = self.url(to, "blobs", "uploads/");
        url.query_pairs_mut()
            .append_pair("mount", digest)
            .append_pair("from", from);
        let resp = self
            .send(
                Method::POST,
                url,
                &format!("repository:{to}:pull,push repository:{from}:pull"),
                &[(CONTENT_TYPE, "application/octet-stream".to_owned())],
                Some(Vec::new()),
            )
            .await?;
        let status = resp.status();
        if status == StatusCode::CREATED {
            return Ok(Moved::Mounted);
        }
        if status != StatusCode::ACCEPTED {
            let text = resp.text().await.unwrap_or_default();
            return Err(self.failure(status, &text, &what));
        }
        // 202: the mount was refused and an upload opened instead.
        let location = self.location(resp.headers(), &what)?;
        let bytes = self.blob(from, digest, MAX_COPY).await?;
        self.finish_upload(location, to, digest, bytes).await?;
        Ok(Moved::Copied)
    }

    fn location(&self, headers: &HeaderMap, what: &str) -> Result<Url, ConnectorError> {
        header(headers, "location")
            .and_then(|l| self.resolve(&l))
            .ok_or_else(|| {
                ConnectorError::Permanent(format!(
                    "registry {}: {what}: the upload has no Location",
                    self.origin()
                ))
            })
    }

    async fn finish_upload(
        &self,
        mut location: Url,
        to: &str,
        digest: &str,
        bytes: Vec<u8>,
    ) -> Result<(), ConnectorError> {
        location.query_pairs_mut().append_pair("digest", digest);
        let len = bytes.len();
        let resp = self
            .send(
                Method::PUT,
                location,
                &format!("repository:{to}:pull,push"),
                &[
                    (CONTENT_TYPE, "application/octet-stream".to_owned()),
                    (reqwest::header::CONTENT_LENGTH, len.to_string()),
                ],
                Some(bytes),
            )
            .await?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let text = resp.text().await.unwrap_or_default();
        Err(self.failure(
            status,
            &text,
            &format!("uploading blob `{digest}` to `{to}`"),
        ))
    }

    /// PUTs a manifest's exact bytes under `reference` (a tag, or its digest) in `repository`.
    pub async fn put_manifest(
        &self,
        repository: &str,
        reference: &str,
        manifest: &Manifest,
    ) -> Result<(), ConnectorError> {
        let what = format!(
            "storing manifest `{}` as `{repository}:{reference}`",
            manifest.digest
        );
        let resp = self
            .send(
                Method::PUT,
                self.url(repository, "manifests", reference),
                &format!("repository:{repository}:pull,push"),
                &[(CONTENT_TYPE, manifest.media_type.clone())],
                Some(manifest.body.clone()),
            )
            .await?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let text = resp.text().await.unwrap_or_default();
        Err(self.failure(status, &text, &what))
    }

    /// DELETEs a manifest by digest (every tag of that repository pointing at it goes with it).
    /// `false` when it was not there.
    pub async fn delete_manifest(
        &self,
        repository: &str,
        digest: &str,
    ) -> Result<bool, ConnectorError> {
        let what = format!("deleting manifest `{repository}@{digest}`");
        let resp = self
            .send(
                Method::DELETE,
                self.url(repository, "manifests", digest),
                &format!("repository:{repository}:delete"),
                &[],
                None,
            )
            .await?;
        let status = resp.status();
        if status.is_success() {
            return Ok(true);
        }
        if status == StatusCode::NOT_FOUND {
            return Ok(false);
        }
        let text = resp.text().await.unwrap_or_default();
        Err(self.failure(status, &text, &what))
    }

    /// Copies a manifest and everything it references from one repository to another, under
    /// `tag` (or its digest), mounting blobs where the registry allows. Returns how many blobs
    /// were mounted, copied, or present already.
    pub async fn copy(
        &self,
        from: &str,
        to: &str,
        manifest: &Manifest,
        tag: Option<&str>,
    ) -> Result<Copied, ConnectorError> {
        let mut copied = Copied::default();
        if manifest.is_index() {
            for child in manifest.descriptors() {
                let m = Box::pin(self.manifest(from, &child.digest)).await?;
                let inner = Box::pin(self.copy(from, to, &m, None)).await?;
                copied.add(inner);
            }
        } else {
            for d in manifest.descriptors().into_iter().filter(|d| !d.foreign) {
                match self.move_blob(from, to, &d.digest).await? {
                    Moved::Present => copied.present += 1,
                    Moved::Mounted => copied.mounted += 1,
                    Moved::Copied => copied.copied += 1,
                }
            }
        }
        self.put_manifest(to, tag.unwrap_or(&manifest.digest), manifest)
            .await?;
        Ok(copied)
    }
}

/// What a copy moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Copied {
    /// Blobs mounted from the source repository.
    pub mounted: u64,
    /// Blobs copied through this process.
    pub copied: u64,
    /// Blobs the target had already.
    pub present: u64,
}

impl Copied {
    fn add(&mut self, other: Copied) {
        self.mounted += other.mounted;
        self.copied += other.copied;
        self.present += other.present;
    }
}
