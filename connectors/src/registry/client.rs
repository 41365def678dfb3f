//! The OCI distribution API's transport as the `registry` connector uses it: one registry's
//! URLs, its basic or bearer credentials and the token flow, and the sorting of its failures.
//! What is read and written (manifests, blobs, mounts) is in `content`.
//!
//! Failures: an unreachable registry, 429 and 5xx are transient; 401, 403, 404 and the rest are
//! permanent, with the registry's own error code. Credentials never appear in an error, a log
//! line or a `Debug` print; only the registry's origin and the repository do.

use std::collections::HashMap;
use std::sync::Mutex;

use reqwest::header::{HeaderMap, HeaderValue, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode, Url};
use serde_json::Value;

use crate::http::{endpoint, origin, Secret};
use crate::ConnectorError;

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

pub(super) fn transient(at: &str, e: &reqwest::Error) -> ConnectorError {
    let why = crate::http::failure_kind(e);
    // The innermost cause (a refused connection, a certificate, a closed connection) says the
    // most; reqwest's own message would repeat the URL.
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    ConnectorError::Transient(format!("registry {at}: {why} ({cause})"))
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

    /// A URL the registry gave (an upload's `Location`), relative to its root.
    pub(super) fn resolve(&self, location: &str) -> Option<Url> {
        self.base.join(location).ok()
    }

    /// `<root>/v2/<repository>/<kind>/<reference>`, each path component percent-encoded.
    pub(super) fn url(&self, repository: &str, kind: &str, reference: &str) -> Url {
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
    pub(super) async fn send(
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
    pub(super) fn failure(&self, status: StatusCode, body: &str, what: &str) -> ConnectorError {
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
    pub(super) async fn read(
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
}

/// A header's value as text.
pub(super) fn header(headers: &HeaderMap, name: &str) -> Option<String> {
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
