//! The OCI distribution API as the `registry` connector uses it: manifests read, written and
//! deleted, blobs mounted or copied between repositories, with basic or bearer credentials
//! and the registry token flow.
//!
//! Owns the sorting of failures: an unreachable registry, 429 and 5xx are transient; 401, 403,
//! 404 and the rest are permanent, with the registry's own error code. Credentials never
//! appear in an error, a log line or a `Debug` print; only the registry's origin and the
//! repository do.

use std::collections::HashMap;
use std::sync::Mutex;

use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, CONTENT_TYPE, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode, Url};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::http::{endpoint, origin, Secret};
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

/// How requests are authorized.
pub enum Auth {
    /// No credentials.
    None,
    /// `username` and the password from `password_file`: sent as basic, or traded for a token
    /// when the registry asks for one.
    Basic {
        /// User name.
        username: String,
        /// Password.
        password: Secret,
    },
    /// A bearer token from `token_file`.
    Bearer(Secret),
}

/// One registry: its base URL, an HTTP client, credentials and the tokens obtained for them.
pub struct Registry {
    base: Url,
    http: reqwest::Client,
    auth: Auth,
    /// Tokens from the token flow, by scope.
    tokens: Mutex<HashMap<String, String>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("url", &origin(&self.base))
            .field(
                "auth",
                &match self.auth {
                    Auth::None => "none",
                    Auth::Basic { .. } => "basic",
                    Auth::Bearer(_) => "bearer",
                },
            )
            .finish()
    }
}

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

fn transient(at: &str, e: &reqwest::Error) -> ConnectorError {
    let why = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    ConnectorError::Transient(format!("registry {at}: {why}"))
}

/// The registry's own words for a failure: `MANIFEST_UNKNOWN: manifest unknown`.
fn registry_words(body: &str) -> String {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let first = parsed
        .as_ref()
        .and_then(|v| v.get("errors"))
        .and_then(Value::as_array)
        .and_then(|a| a.first());
    match first {
        Some(e) => format!(
            "{}: {}",
            e.get("code").and_then(Value::as_str).unwrap_or("ERROR"),
            e.get("message").and_then(Value::as_str).unwrap_or("")
        ),
        None => body.chars().take(200).collect::<String>().trim().to_owned(),
    }
}

/// The parameters of a `WWW-Authenticate: Bearer realm=...,service=...,scope=...` challenge.
fn bearer_challenge(headers: &HeaderMap) -> Option<HashMap<String, String>> {
    let raw = headers.get(WWW_AUTHENTICATE)?.to_str().ok()?;
    let rest = raw
        .trim()
        .strip_prefix("Bearer ")
        .or_else(|| raw.trim().strip_prefix("bearer "))?;
    let mut out = HashMap::new();
    let mut s = rest.trim();
    while !s.is_empty() {
        let (key, after) = s.split_once('=')?;
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = after.trim_start();
        let (value, rest) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"')?;
            (quoted.get(..end)?, quoted.get(end + 1..)?)
        } else {
            match after.find(',') {
                Some(i) => (after.get(..i)?, after.get(i..)?),
                None => (after, ""),
            }
        };
        out.insert(key, value.to_owned());
        s = rest.trim_start().trim_start_matches(',').trim_start();
    }
    out.contains_key("realm").then_some(out)
}

impl Registry {
    /// A registry at `base` (`http(s)://host:port`).
    pub fn new(base: Url, http: reqwest::Client, auth: Auth) -> Registry {
        Registry {
            base,
            http,
            auth,
            tokens: Mutex::new(HashMap::new()),
        }
    }

    /// `host:port` as image references name this registry (the port only when given).
    pub fn authority(&self) -> String {
        let host = self
            .base
            .host_str()
            .unwrap_or_default()
            .to_ascii_lowercase();
        match self.base.port() {
            Some(p) => format!("{host}:{p}"),
            None => host,
        }
    }

    /// Whether an image reference's registry is this one.
    pub fn serves(&self, image_registry: &str) -> bool {
        let own = self.authority();
        let theirs = image_registry.to_ascii_lowercase();
        let default_port = match self.base.scheme() {
            "https" => ":443",
            _ => ":80",
        };
        theirs == own || theirs.strip_suffix(default_port) == Some(own.as_str())
    }

    /// The registry's origin, for messages.
    pub fn origin(&self) -> String {
        origin(&self.base)
    }

    fn url(&self, repository: &str, kind: &str, reference: &str) -> Url {
        let mut segments: Vec<&str> = vec!["v2"];
        segments.extend(repository.split('/'));
        segments.push(kind);
        if !reference.is_empty() {
            segments.push(reference);
        }
        endpoint(&self.base, &segments)
    }

    fn cached_token(&self, scope: &str) -> Option<String> {
        self.tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(scope)
            .cloned()
    }

    /// Sends one request, following the token flow once when the registry asks for a token.
    /// `scope` names what the request needs (`repository:app:pull,push`).
    async fn send(
        &self,
        method: Method,
        url: Url,
        scope: &str,
        headers: &[(reqwest::header::HeaderName, String)],
        body: Option<Vec<u8>>,
    ) -> Result<reqwest::Response, ConnectorError> {
        let at = self.origin();
        let build = |token: Option<&str>| {
            let mut req = self.http.request(method.clone(), url.clone());
            for (k, v) in headers {
                req = req.header(k, v.as_str());
            }
            if let Some(b) = &body {
                req = req.body(b.clone());
            }
            match (token, &self.auth) {
                (Some(t), _) => req.bearer_auth(t),
                (None, Auth::Basic { username, password }) => {
                    req.basic_auth(username, Some(password.expose()))
                }
                (None, Auth::Bearer(t)) => req.bearer_auth(t.expose()),
                (None, Auth::None) => req,
            }
        };
        let token = self.cached_token(scope);
        let resp = build(token.as_deref())
            .send()
            .await
            .map_err(|e| transient(&at, &e))?;
        if resp.status() != StatusCode::UNAUTHORIZED || matches!(self.auth, Auth::Bearer(_)) {
            return Ok(resp);
        }
        let Some(challenge) = bearer_challenge(resp.headers()) else {
            return Ok(resp);
        };
        let token = self.fetch_token(&challenge, scope).await?;
        self.tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(scope.to_owned(), token.clone());
        build(Some(&token))
            .send()
            .await
            .map_err(|e| transient(&at, &e))
    }

    /// The token flow: GET the realm with the service and scope, with the basic credentials.
    async fn fetch_token(
        &self,
        challenge: &HashMap<String, String>,
        scope: &str,
    ) -> Result<String, ConnectorError> {
        let at = self.origin();
        let realm = challenge
            .get("realm")
            .and_then(|r| Url::parse(r).ok())
            .ok_or_else(|| {
                ConnectorError::Permanent(format!("registry {at}: its token realm is not a URL"))
            })?;
        // Credentials go to the realm only over https or to the registry's own host.
        let same_host = realm.host_str() == self.base.host_str();
        if realm.scheme() != "https" && !same_host {
            return Err(ConnectorError::Permanent(format!(
                "registry {at}: its token realm {} is neither https nor on the registry's host; \
                 credentials are not sent there",
                origin(&realm)
            )));
        }
        let mut url = realm.clone();
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = challenge.get("service") {
                q.append_pair("service", s);
            }
            for s in challenge
                .get("scope")
                .map(String::as_str)
                .unwrap_or(scope)
                .split(' ')
                .filter(|s| !s.is_empty())
            {
                q.append_pair("scope", s);
            }
        }
        let mut req = self.http.get(url);
        if let Auth::Basic { username, password } = &self.auth {
            req = req.basic_auth(username, Some(password.expose()));
        }
        let resp = req.send().await.map_err(|e| transient(&at, &e))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(self.failure(status, &text, "the token request"));
        }
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        v.get("token")
            .or_else(|| v.get("access_token"))
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| {
                ConnectorError::Permanent(format!(
                    "registry {at}: the token realm {} answered without a token",
                    origin(&realm)
                ))
            })
    }

    /// A failed answer as an error: transient for 429 and 5xx, permanent otherwise.
    fn failure(&self, status: StatusCode, body: &str, what: &str) -> ConnectorError {
        let at = self.origin();
        let code = status.as_u16();
        let words = registry_words(body);
        match code {
            401 => ConnectorError::Permanent(format!(
                "registry {at} refused the credentials for {what} (401 {words}): {}",
                match self.auth {
                    Auth::None => "it needs `username` and `password_file`, or `token_file`",
                    _ => "check the instance's `username` and `password_file`, or `token_file`",
                }
            )),
            403 => ConnectorError::Permanent(format!(
                "registry {at} denied {what} (403 {words}): the credentials lack the permission"
            )),
            404 => {
                ConnectorError::Permanent(format!("registry {at}: {what} not found (404 {words})"))
            }
            405 => ConnectorError::Permanent(format!(
                "registry {at} does not allow {what} (405 {words}): deletes must be enabled \
                 (`storage: delete: enabled: true` in the registry's config)"
            )),
            429 => {
                ConnectorError::Transient(format!("registry {at} is rate limiting (429 {words})"))
            }
            c if c >= 500 => {
                ConnectorError::Transient(format!("registry {at} answered {c} to {what}: {words}"))
            }
            c => ConnectorError::Permanent(format!("registry {at} refused {what} ({c} {words})")),
        }
    }

    /// Reads a body up to `max` bytes.
    async fn read(
        &self,
        mut resp: reqwest::Response,
        max: usize,
        what: &str,
    ) -> Result<Vec<u8>, ConnectorError> {
        let at = self.origin();
        if resp.content_length().is_some_and(|n| n > max as u64) {
            return Err(ConnectorError::Permanent(format!(
                "registry {at}: {what} is larger than {max} bytes"
            )));
        }
        let mut out = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| transient(&at, &e))? {
            if out.len() + chunk.len() > max {
                return Err(ConnectorError::Permanent(format!(
                    "registry {at}: {what} is larger than {max} bytes"
                )));
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

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
            .and_then(|l| self.base.join(&l).ok())
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

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v: &HeaderValue| v.to_str().ok())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn reads_a_bearer_challenge() {
        let mut h = HeaderMap::new();
        h.insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static(
                r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:app:pull,push""#,
            ),
        );
        let c = bearer_challenge(&h).unwrap();
        assert_eq!(c["realm"], "https://auth.example/token");
        assert_eq!(c["service"], "registry.example");
        assert_eq!(c["scope"], "repository:app:pull,push");
        h.insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Basic realm="x""#),
        );
        assert!(bearer_challenge(&h).is_none());
    }

    #[test]
    fn an_image_names_this_registry_by_host_and_port() {
        let r = |u: &str| Registry::new(Url::parse(u).unwrap(), reqwest::Client::new(), Auth::None);
        assert!(r("http://localhost:5000").serves("localhost:5000"));
        assert!(!r("http://localhost:5000").serves("localhost:5001"));
        assert!(!r("http://localhost:5000").serves("127.0.0.1:5000"));
        assert!(r("https://registry.example.com").serves("registry.example.com:443"));
        assert!(r("https://registry.example.com").serves("registry.example.com"));
    }

    #[test]
    fn the_registry_error_code_is_kept() {
        assert_eq!(
            registry_words(
                r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{}}]}"#
            ),
            "MANIFEST_UNKNOWN: manifest unknown"
        );
        assert_eq!(registry_words("oops\n"), "oops");
    }
}
