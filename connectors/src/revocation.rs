//! The revocation list: images that must not run, kept in the JetStream KV bucket
//! `<prefix>-revocations`, shared by every replica and every enforcement point.
//!
//! - [`ImageRef`]: an image reference read the way Docker and Kubernetes read it
//!   (`nginx` is `docker.io/library/nginx:latest`), so a revocation and a pod spec that spell
//!   the same image differently still meet.
//! - [`Revocation`]: one entry: digest and/or reference, the reason (finding ids), the event,
//!   playbook and run that revoked it, when, and who reinstated it if anyone did. Reinstated
//!   entries stay in the bucket as proof; only `state: revoked` ones are enforced.
//! - [`RevocationList`]: reads and changes the bucket. Every change is handed to a
//!   [`ChangeRecorder`] (the engine's audit trail).
//! - [`RevocationIndex`]: an in-memory copy kept current by a watch on the bucket, for
//!   decisions that must take microseconds (admission, the Docker AuthZ plugin).
//!
//! Keys: `d.<sha256 hex>` for an entry with a digest, `r.<sha256 hex of the reference>` for
//! one revoked by reference only, and `a.<sha256 hex of the reference>` holding the digest of
//! the entry that names that reference (so a tag finds its digest entry in two reads).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use async_nats::jetstream::kv;
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use thiserror::Error;

/// Docker Hub's canonical domain.
const DOCKER_HUB: &str = "docker.io";
/// How often a compare-and-set change is retried when another writer got there first.
const CAS_TRIES: u32 = 40;

/// A short, jittered pause before compare-and-set attempt `n`, so writers racing on one entry
/// spread out instead of colliding again.
async fn contend(n: u32) {
    if n == 0 {
        return;
    }
    let jitter = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() % 1000);
    let micros = 200 * u64::from(n.min(20)) + u64::from(jitter) * u64::from(n.min(20));
    tokio::time::sleep(std::time::Duration::from_micros(micros)).await;
}

/// An image reference, normalized.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ImageRef {
    /// Registry host (and port): `docker.io`, `localhost:5000`, `ghcr.io`.
    pub registry: String,
    /// Repository path within the registry: `library/nginx`, `team/app`.
    pub repository: String,
    /// Tag, when one was given or implied (`latest` when neither tag nor digest was given).
    pub tag: Option<String>,
    /// Manifest digest `sha256:<64 hex>`, when given.
    pub digest: Option<String>,
}

/// Why a string is not an image reference.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("`{input}` is not an image reference: {reason}")]
pub struct RefError {
    /// What was given (cut to 200 characters).
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl ImageRef {
    /// Reads `[registry/]repository[:tag][@sha256:hex]`.
    pub fn parse(input: &str) -> Result<ImageRef, RefError> {
        let fail = |reason| RefError {
            input: input.chars().take(200).collect(),
            reason,
        };
        let s = input.trim();
        if s.is_empty() {
            return Err(fail("it is empty"));
        }
        if s.len() > 4096 {
            return Err(fail("it is longer than 4096 bytes"));
        }
        let (name, digest) = match s.split_once('@') {
            Some((n, d)) => (
                n,
                Some(normalize_digest(d).ok_or_else(|| fail("the digest is not sha256:<64 hex>"))?),
            ),
            None => (s, None),
        };
        let (domain, rest) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_ascii_lowercase(), rest)
            }
            _ => (DOCKER_HUB.to_owned(), name),
        };
        let domain = match domain.as_str() {
            "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_owned(),
            _ => domain,
        };
        let (path, tag) = match rest.rsplit_once(':') {
            Some((p, t)) if !t.contains('/') => (p, Some(t)),
            _ => (rest, None),
        };
        if path.is_empty() {
            return Err(fail("the repository is empty"));
        }
        let path_ok = path.split('/').all(|c| {
            !c.is_empty()
                && c.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
                })
                && c.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        });
        if !path_ok {
            return Err(fail(
                "the repository must be lowercase letters, digits and . _ - between slashes",
            ));
        }
        if let Some(t) = tag {
            let ok = !t.is_empty()
                && t.len() <= 128
                && t.bytes()
                    .next()
                    .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
            if !ok {
                return Err(fail("the tag must be up to 128 letters, digits and . _ -"));
            }
        }
        let repository = if domain == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path.to_owned()
        };
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_owned()),
            (None, None) => Some("latest".to_owned()),
            (None, Some(_)) => None,
        };
        Ok(ImageRef {
            registry: domain,
            repository,
            tag,
            digest,
        })
    }

    /// `registry/repository`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// `registry/repository:tag`, the form references are compared in; `None` without a tag.
    pub fn tagged(&self) -> Option<String> {
        self.tag.as_ref().map(|t| format!("{}:{t}", self.name()))
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// An image named by an action's `image` argument (a reference, or a bare `sha256:<hex>`) and
/// its optional `digest` argument, checked: what the actions that look for an image read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageArg {
    /// The reference, normalized; `None` for a bare `sha256:<hex>`.
    pub image: Option<ImageRef>,
    /// A bare `sha256:<hex>` given as `image` (an image id, or a manifest digest).
    pub bare: Option<String>,
    /// The manifest digest: `digest`, else the reference's, else the bare one.
    pub digest: Option<String>,
}

impl ImageArg {
    /// Reads the two arguments; the error says which is wrong.
    pub fn read(image: Option<&str>, digest: Option<&str>) -> Result<ImageArg, String> {
        fn given(v: Option<&str>) -> Option<&str> {
            v.map(str::trim).filter(|s| !s.is_empty())
        }
        let image =
            given(image).ok_or_else(|| "`image` is empty: the event names no image".to_owned())?;
        let digest = match given(digest) {
            None => None,
            Some(d) => Some(normalize_digest(d).ok_or_else(|| {
                format!(
                    "`digest` `{}` is not sha256:<64 hex>",
                    d.chars().take(100).collect::<String>()
                )
            })?),
        };
        let (image, bare) = match normalize_digest(image) {
            Some(b) => (None, Some(b)),
            None => (
                Some(ImageRef::parse(image).map_err(|e| e.to_string())?),
                None,
            ),
        };
        let digest = digest
            .or_else(|| image.as_ref().and_then(|i| i.digest.clone()))
            .or_else(|| bare.clone());
        Ok(ImageArg {
            image,
            bare,
            digest,
        })
    }

    /// `registry/repository:tag` of the reference, when it has a tag.
    pub fn tagged(&self) -> Option<String> {
        self.image.as_ref().and_then(ImageRef::tagged)
    }

    /// How another image reference (a container's or a pod's) names this image, if it does:
    /// `reference` (the same tagged reference) or `digest` (the same digest). A bare
    /// `sha256:<hex>` names no reference.
    pub fn matches_reference(&self, reference: &str) -> Option<&'static str> {
        if normalize_digest(reference).is_some() {
            return None;
        }
        let theirs = ImageRef::parse(reference).ok()?;
        if let Some(mine) = self.tagged() {
            if theirs.tagged().as_deref() == Some(mine.as_str()) {
                return Some("reference");
            }
        }
        match (&self.digest, &theirs.digest) {
            (Some(a), Some(b)) if a == b => Some("digest"),
            _ => None,
        }
    }
}

/// `sha256:<64 lowercase hex>` from any case, or `None`.
pub fn normalize_digest(d: &str) -> Option<String> {
    let hex = d.trim().strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| format!("sha256:{}", hex.to_ascii_lowercase()))
}

/// Whether an entry is enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Enforced: the image may not run.
    Revoked,
    /// Kept as proof; no longer enforced.
    Reinstated,
}

/// A person's or the engine's decision, with when and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// Who: a person's name, or `riposte` for the engine.
    pub by: String,
    /// When (RFC 3339).
    pub at: String,
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One entry of the revocation list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// Manifest digest, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// The normalized reference `registry/repository:tag`, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// Whether it is enforced.
    pub state: State,
    /// Why, in words.
    pub reason: String,
    /// The finding ids behind it (CVE ids, secret rule ids).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub findings: Vec<String>,
    /// The event that led to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// The playbook that revoked it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub playbook: Option<String>,
    /// The run that revoked it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    /// Who revoked it and when.
    pub revoked: Decision,
    /// Who reinstated it and when, once someone did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reinstated: Option<Decision>,
    /// What was done in the registry (quarantined to, deleted), as the connector reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<serde_json::Value>,
}

impl Revocation {
    /// The KV key: by digest when there is one, else by a hash of the reference.
    pub fn key(&self) -> Option<String> {
        key_for(self.digest.as_deref(), self.reference.as_deref())
    }

    /// Whether this entry denies `image`: same digest, or same tagged reference.
    pub fn covers(&self, image: &ImageRef) -> bool {
        (self.digest.is_some() && self.digest == image.digest)
            || (self.reference.is_some() && self.reference == image.tagged())
    }
}

/// The key of an entry with this digest or reference.
pub fn key_for(digest: Option<&str>, reference: Option<&str>) -> Option<String> {
    match (digest, reference) {
        (Some(d), _) => normalize_digest(d).map(|d| format!("d.{}", &d["sha256:".len()..])),
        (None, Some(r)) => Some(format!("r.{}", hex::encode(Sha256::digest(r.as_bytes())))),
        (None, None) => None,
    }
}

/// The key of the alias that leads from a reference to the digest entry naming it: `a.<sha256
/// hex of the reference>`. Aliases are plain digests, not entries.
fn alias_key(reference: &str) -> String {
    format!("a.{}", hex::encode(Sha256::digest(reference.as_bytes())))
}

/// One change of the list, for the audit trail.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    /// `revoked` or `reinstated`.
    pub op: &'static str,
    /// The entry after the change.
    pub entry: Revocation,
    /// The KV revision the change was stored at.
    pub revision: u64,
}

/// Where changes are recorded (the engine's audit trail).
#[async_trait]
pub trait ChangeRecorder: Send + Sync + fmt::Debug {
    /// Records one change; failures are the recorder's to report.
    async fn record(&self, change: &Change);
}

/// The list could not be read or changed.
#[derive(Debug, Error)]
pub enum ListError {
    /// NATS or the bucket failed: worth retrying.
    #[error("revocation list: {0}")]
    Store(String),
    /// The request is wrong (no digest nor reference, unknown image).
    #[error("revocation list: {0}")]
    Invalid(String),
}

/// The bucket and where its changes are recorded.
#[derive(Clone)]
pub struct RevocationList {
    kv: kv::Store,
    js: async_nats::jetstream::Context,
    recorder: Option<Arc<dyn ChangeRecorder>>,
}

impl fmt::Debug for RevocationList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RevocationList")
            .field("bucket", &self.kv.name)
            .finish()
    }
}

/// The bucket's name for a KV prefix.
pub fn bucket_name(prefix: &str) -> String {
    format!("{prefix}-revocations")
}

fn store_err(what: &str, e: impl fmt::Display) -> ListError {
    ListError::Store(format!("{what}: {e}"))
}

impl RevocationList {
    /// Opens `<prefix>-revocations`, creating it when missing (64 revisions of each entry are
    /// kept, so an image's history of revocations and reinstatements can be read back), with
    /// `replicas` copies; an existing bucket is left as it is.
    pub async fn open(
        js: &async_nats::jetstream::Context,
        prefix: &str,
        replicas: usize,
        recorder: Option<Arc<dyn ChangeRecorder>>,
    ) -> Result<RevocationList, ListError> {
        let name = bucket_name(prefix);
        let kv = match js.get_key_value(&name).await {
            Ok(kv) => kv,
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: name.clone(),
                    history: 64,
                    num_replicas: replicas,
                    ..Default::default()
                })
                .await
                .map_err(|e| store_err(&format!("cannot create bucket `{name}`"), e))?,
        };
        Ok(RevocationList {
            kv,
            js: js.clone(),
            recorder,
        })
    }

    /// How many messages the bucket holds now (every revision of every key).
    pub async fn stored(&self) -> Result<u64, ListError> {
        let mut stream = self
            .js
            .get_stream(format!("KV_{}", self.kv.name))
            .await
            .map_err(|e| store_err("status", e))?;
        let info = stream.info().await.map_err(|e| store_err("status", e))?;
        Ok(info.state.messages)
    }

    /// The bucket, for watches.
    pub fn store(&self) -> &kv::Store {
        &self.kv
    }

    /// One entry by key, with its revision.
    pub async fn get_key(&self, key: &str) -> Result<Option<(Revocation, u64)>, ListError> {
        let entry = self.kv.entry(key).await.map_err(|e| store_err("read", e))?;
        Ok(entry
            .filter(|e| e.operation == kv::Operation::Put)
            .and_then(|e| {
                serde_json::from_slice::<Revocation>(&e.value)
                    .ok()
                    .map(|v| (v, e.revision))
            }))
    }

    /// The entry that covers `image` (revoked or reinstated): by digest first, then by
    /// reference; entries revoked by reference carry the digest when it was known, so the
    /// reference key is tried for both.
    pub async fn find(&self, image: &ImageRef) -> Result<Option<(Revocation, u64)>, ListError> {
        if let Some(k) = key_for(image.digest.as_deref(), None) {
            if let Some(found) = self.get_key(&k).await? {
                return Ok(Some(found));
            }
        }
        if let Some(k) = image.tagged().and_then(|r| key_for(None, Some(&r))) {
            if let Some(found) = self.get_key(&k).await? {
                return Ok(Some(found));
            }
        }
        // An entry stored by digest that also names this reference, through its alias.
        if let Some(alias) = image.tagged().map(|r| alias_key(&r)) {
            let entry = self
                .kv
                .entry(&alias)
                .await
                .map_err(|e| store_err("read", e))?;
            let digest = entry
                .filter(|e| e.operation == kv::Operation::Put)
                .and_then(|e| String::from_utf8(e.value.to_vec()).ok());
            if let Some(k) = digest.and_then(|d| key_for(Some(&d), None)) {
                if let Some((r, rev)) = self.get_key(&k).await? {
                    if r.reference.is_some() && r.reference == image.tagged() {
                        return Ok(Some((r, rev)));
                    }
                }
            }
        }
        Ok(None)
    }

    /// Every entry with its revision, in key order: one pass over the bucket's latest values.
    pub async fn all(&self) -> Result<Vec<(Revocation, u64)>, ListError> {
        let latest = crate::kvscan::latest(&self.kv)
            .await
            .map_err(|e| ListError::Store(format!("list: {e}")))?;
        Ok(latest
            .into_iter()
            .filter(|(key, _)| !key.starts_with("a."))
            .filter_map(|(_, (value, revision))| {
                serde_json::from_slice::<Revocation>(&value)
                    .ok()
                    .map(|r| (r, revision))
            })
            .collect())
    }

    /// Every revision of one entry, oldest first (the proof of what happened to an image).
    pub async fn history(&self, key: &str) -> Result<Vec<Revocation>, ListError> {
        let mut h = self
            .kv
            .history(key)
            .await
            .map_err(|e| store_err("history", e))?;
        let mut out = Vec::new();
        while let Some(entry) = h.next().await {
            let entry = entry.map_err(|e| store_err("history", e))?;
            if entry.operation == kv::Operation::Put {
                if let Ok(r) = serde_json::from_slice(&entry.value) {
                    out.push(r);
                }
            }
        }
        Ok(out)
    }

    /// Records a revocation. An entry already revoked keeps its first revocation (who, when,
    /// why), gains the new findings and registry outcome, and the call reports
    /// `already: true`; a reinstated one is revoked again.
    pub async fn revoke(&self, entry: Revocation) -> Result<(Change, bool), ListError> {
        let key = entry.key().ok_or_else(|| {
            ListError::Invalid("a revocation needs an image digest or reference".to_owned())
        })?;
        for n in 0..CAS_TRIES {
            contend(n).await;
            let current = self.get_key(&key).await?;
            let (next, already) = match &current {
                Some((old, _)) if old.state == State::Revoked => {
                    let mut merged = old.clone();
                    for f in &entry.findings {
                        if !merged.findings.contains(f) {
                            merged.findings.push(f.clone());
                        }
                    }
                    if merged.reference.is_none() {
                        merged.reference.clone_from(&entry.reference);
                    }
                    if entry.registry.is_some() {
                        merged.registry.clone_from(&entry.registry);
                    }
                    (merged, true)
                }
                _ => (entry.clone(), false),
            };
            if already && current.as_ref().is_some_and(|(old, _)| *old == next) {
                let revision = current.map(|(_, r)| r).unwrap_or(0);
                return Ok((
                    Change {
                        op: "revoked",
                        entry: next,
                        revision,
                    },
                    true,
                ));
            }
            let value = Bytes::from(serde_json::to_vec(&next).map_err(|e| store_err("encode", e))?);
            let stored = match &current {
                Some((_, rev)) => self.kv.update(&key, value, *rev).await.ok(),
                None => self.kv.create(&key, value).await.ok(),
            };
            if let Some(revision) = stored {
                if let (Some(d), Some(r)) = (&next.digest, &next.reference) {
                    self.kv
                        .put(alias_key(r), Bytes::from(d.clone()))
                        .await
                        .map_err(|e| store_err("store the reference alias", e))?;
                }
                let change = Change {
                    op: "revoked",
                    entry: next,
                    revision,
                };
                if let Some(r) = &self.recorder {
                    r.record(&change).await;
                }
                return Ok((change, already));
            }
        }
        Err(ListError::Store(format!(
            "`{key}` kept changing; gave up after {CAS_TRIES} tries"
        )))
    }

    /// Reinstates the entry that covers `image`: it stays in the list as proof, no longer
    /// enforced. `Ok(None)` when nothing covers it or it is already reinstated.
    pub async fn reinstate(
        &self,
        image: &ImageRef,
        decision: Decision,
    ) -> Result<Option<Change>, ListError> {
        for n in 0..CAS_TRIES {
            contend(n).await;
            let Some((mut entry, rev)) = self.find(image).await? else {
                return Ok(None);
            };
            if entry.state == State::Reinstated {
                return Ok(None);
            }
            let Some(key) = entry.key() else {
                return Ok(None);
            };
            entry.state = State::Reinstated;
            entry.reinstated = Some(decision.clone());
            let value =
                Bytes::from(serde_json::to_vec(&entry).map_err(|e| store_err("encode", e))?);
            if let Ok(revision) = self.kv.update(&key, value, rev).await {
                let change = Change {
                    op: "reinstated",
                    entry,
                    revision,
                };
                if let Some(r) = &self.recorder {
                    r.record(&change).await;
                }
                return Ok(Some(change));
            }
        }
        Err(ListError::Store(format!(
            "the entry for {image} kept changing; gave up after {CAS_TRIES} tries"
        )))
    }
}

/// An in-memory copy of the enforced entries, kept current by a watch on the bucket.
#[derive(Debug, Default)]
pub struct RevocationIndex {
    inner: RwLock<Entries>,
    ready: AtomicBool,
}

#[derive(Debug, Default)]
struct Entries {
    by_key: HashMap<String, Arc<Revocation>>,
    by_digest: HashMap<String, Arc<Revocation>>,
    by_reference: HashMap<String, Arc<Revocation>>,
}

impl Entries {
    fn remove(&mut self, key: &str) {
        if let Some(old) = self.by_key.remove(key) {
            if let Some(d) = &old.digest {
                self.by_digest.remove(d);
            }
            if let Some(r) = &old.reference {
                if self
                    .by_reference
                    .get(r)
                    .is_some_and(|e| Arc::ptr_eq(e, &old))
                {
                    self.by_reference.remove(r);
                }
            }
        }
    }

    fn put(&mut self, key: &str, entry: Revocation) {
        self.remove(key);
        if entry.state != State::Revoked {
            return;
        }
        let entry = Arc::new(entry);
        if let Some(d) = &entry.digest {
            self.by_digest.insert(d.clone(), entry.clone());
        }
        if let Some(r) = &entry.reference {
            self.by_reference.insert(r.clone(), entry.clone());
        }
        self.by_key.insert(key.to_owned(), entry);
    }
}

impl RevocationIndex {
    /// An empty index, not ready until [`RevocationIndex::follow`] has read the bucket.
    pub fn new() -> Arc<RevocationIndex> {
        Arc::new(RevocationIndex::default())
    }

    /// Whether the index has caught up with the bucket: until then no decision can be made.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// The enforced entry covering `image`, if any: by digest, then by tagged reference.
    pub fn lookup(&self, image: &ImageRef) -> Option<Arc<Revocation>> {
        let entries = self.inner.read().unwrap_or_else(|p| p.into_inner());
        if let Some(d) = &image.digest {
            if let Some(e) = entries.by_digest.get(d) {
                return Some(e.clone());
            }
        }
        image
            .tagged()
            .and_then(|r| entries.by_reference.get(&r).cloned())
    }

    /// The enforced entry for a digest alone.
    pub fn lookup_digest(&self, digest: &str) -> Option<Arc<Revocation>> {
        let d = normalize_digest(digest)?;
        let entries = self.inner.read().unwrap_or_else(|p| p.into_inner());
        entries.by_digest.get(&d).cloned()
    }

    /// How many entries are enforced.
    pub fn len(&self) -> usize {
        self.inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .by_key
            .len()
    }

    /// Whether no entry is enforced.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Applies one bucket entry (a put, or a delete or purge of `key`).
    pub fn apply(&self, key: &str, value: Option<&[u8]>) {
        let mut entries = self.inner.write().unwrap_or_else(|p| p.into_inner());
        match value.and_then(|v| serde_json::from_slice::<Revocation>(v).ok()) {
            Some(entry) => entries.put(key, entry),
            None => entries.remove(key),
        }
    }

    /// Marks the index as caught up (tests and benchmarks that fill it by hand).
    pub fn mark_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// Follows the bucket until `shutdown`: reads every entry, marks the index ready, then
    /// applies each change as it is stored. A broken watch is reopened (the index stays ready
    /// with what it had; entries are re-read from the start).
    pub async fn follow(
        self: Arc<Self>,
        list: RevocationList,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        loop {
            if let Err(e) = self.follow_once(&list, &shutdown).await {
                tracing::warn!(error = %e, "revocation list watch failed; reopening");
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            }
        }
    }

    async fn follow_once(
        &self,
        list: &RevocationList,
        shutdown: &tokio_util::sync::CancellationToken,
    ) -> Result<(), ListError> {
        let empty = list.stored().await? == 0;
        let mut watch = list
            .store()
            .watch_with_history(">")
            .await
            .map_err(|e| store_err("watch", e))?;
        if empty {
            self.mark_ready();
        }
        loop {
            let next = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                n = watch.next() => n,
            };
            let Some(entry) = next else {
                return Err(ListError::Store("the watch ended".to_owned()));
            };
            let entry = entry.map_err(|e| store_err("watch", e))?;
            match entry.operation {
                kv::Operation::Put => self.apply(&entry.key, Some(&entry.value)),
                kv::Operation::Delete | kv::Operation::Purge => self.apply(&entry.key, None),
            }
            if entry.delta == 0 || entry.seen_current {
                self.mark_ready();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(s: &str) -> String {
        ImageRef::parse(s)
            .map(|r| r.to_string())
            .unwrap_or_else(|e| e.to_string())
    }

    #[test]
    fn references_are_read_the_way_docker_reads_them() {
        assert_eq!(parsed("nginx"), "docker.io/library/nginx:latest");
        assert_eq!(parsed("nginx:1.25"), "docker.io/library/nginx:1.25");
        assert_eq!(parsed("index.docker.io/team/app:2"), "docker.io/team/app:2");
        assert_eq!(parsed("localhost:5000/app:1"), "localhost:5000/app:1");
        assert_eq!(parsed("localhost:5000/app"), "localhost:5000/app:latest");
        assert_eq!(parsed("ghcr.io/a/b/c:v1.0_rc-2"), "ghcr.io/a/b/c:v1.0_rc-2");
        let d = format!("sha256:{}", "A".repeat(64));
        assert_eq!(
            parsed(&format!("registry.example.com:443/app@{d}")),
            format!("registry.example.com:443/app@sha256:{}", "a".repeat(64))
        );
        assert_eq!(
            parsed(&format!("app:1@{d}")),
            format!("docker.io/library/app:1@sha256:{}", "a".repeat(64))
        );
    }

    #[test]
    fn bad_references_say_what_is_wrong() {
        for (bad, why) in [
            ("", "empty"),
            ("Nginx", "lowercase"),
            ("app@sha256:12", "digest"),
            ("app:", "tag"),
            ("app:bad$tag", "tag"),
            ("localhost:5000/", "empty"),
            ("a//b", "lowercase"),
        ] {
            let e = parsed(bad);
            assert!(
                e.contains("is not an image reference") && e.contains(why),
                "{bad}: {e}"
            );
        }
    }

    fn entry(digest: Option<&str>, reference: Option<&str>) -> Revocation {
        Revocation {
            digest: digest.map(str::to_owned),
            reference: reference.map(str::to_owned),
            state: State::Revoked,
            reason: "CVE-1".into(),
            findings: vec!["CVE-1".into()],
            event_id: None,
            playbook: None,
            run_id: None,
            revoked: Decision {
                by: "riposte".into(),
                at: "2026-01-01T00:00:00Z".into(),
                reason: None,
            },
            reinstated: None,
            registry: None,
        }
    }

    #[test]
    fn the_index_matches_by_digest_or_reference_and_forgets_reinstated_entries() {
        let d = format!("sha256:{}", "b".repeat(64));
        let index = RevocationIndex::new();
        let e = entry(Some(&d), Some("localhost:5000/app:1"));
        let key = e.key().unwrap_or_default();
        assert_eq!(key, format!("d.{}", "b".repeat(64)));
        index.apply(&key, Some(&serde_json::to_vec(&e).unwrap_or_default()));
        let by_ref = ImageRef::parse("localhost:5000/app:1").ok();
        let by_digest = ImageRef::parse(&format!("localhost:5000/other@{d}")).ok();
        let other = ImageRef::parse("localhost:5000/app:2").ok();
        assert!(by_ref.as_ref().and_then(|r| index.lookup(r)).is_some());
        assert!(by_digest.as_ref().and_then(|r| index.lookup(r)).is_some());
        assert!(other.as_ref().and_then(|r| index.lookup(r)).is_none());
        assert!(index
            .lookup_digest(&d.to_uppercase().replace("SHA256", "sha256"))
            .is_some());
        let mut back = e.clone();
        back.state = State::Reinstated;
        index.apply(&key, Some(&serde_json::to_vec(&back).unwrap_or_default()));
        assert!(by_ref.as_ref().and_then(|r| index.lookup(r)).is_none());
        assert!(index.is_empty());
        let by_ref_only = entry(None, Some("docker.io/library/nginx:latest"));
        let k = by_ref_only.key().unwrap_or_default();
        assert!(k.starts_with("r.") && k.len() == 66);
        index.apply(
            &k,
            Some(&serde_json::to_vec(&by_ref_only).unwrap_or_default()),
        );
        assert!(ImageRef::parse("nginx")
            .ok()
            .and_then(|r| index.lookup(&r))
            .is_some());
        index.apply(&k, None);
        assert!(index.is_empty());
    }
}
