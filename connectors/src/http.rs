//! What the notification connectors share: settings read from `riposte.yaml` (secrets from
//! files), one HTTP client per instance, and one way of sending a JSON POST and sorting its
//! failures.
//!
//! Endpoint URLs of incoming webhooks carry their secret in the path, so they are secrets too:
//! they are read from files and only their scheme and host ever appear in errors and plans.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};

use crate::{BuildError, ConnectorError};

/// A secret read from a file: prints as `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The value, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Reads an instance's settings, naming the instance in every error.
pub struct Settings<'a> {
    instance: &'a str,
    map: &'a Map<String, Value>,
}

impl<'a> Settings<'a> {
    /// The settings of `instance`, refusing keys not in `known`.
    pub fn new(
        instance: &'a str,
        map: &'a Map<String, Value>,
        known: &[&str],
    ) -> Result<Self, BuildError> {
        crate::reject_unknown_settings(instance, map, known)?;
        Ok(Settings { instance, map })
    }

    /// An error about this instance.
    pub fn error(&self, reason: impl Into<String>) -> BuildError {
        BuildError::Config {
            instance: self.instance.to_owned(),
            reason: reason.into(),
        }
    }

    /// An optional non-empty string.
    pub fn string(&self, key: &str) -> Result<Option<String>, BuildError> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
            Some(_) => Err(self.error(format!("`{key}` must be a non-empty string"))),
        }
    }

    /// A required non-empty string.
    pub fn required(&self, key: &str) -> Result<String, BuildError> {
        self.string(key)?
            .ok_or_else(|| self.error(format!("`{key}` is required")))
    }

    /// An optional list of strings (a single string counts as a list of one).
    pub fn strings(&self, key: &str) -> Result<Vec<String>, BuildError> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::String(s)) => Ok(vec![s.clone()]),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| self.error(format!("`{key}` must be a list of strings")))
                })
                .collect(),
            Some(_) => Err(self.error(format!("`{key}` must be a list of strings"))),
        }
    }

    /// An optional boolean.
    pub fn flag(&self, key: &str, default: bool) -> Result<bool, BuildError> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(self.error(format!("`{key}` must be true or false"))),
        }
    }

    /// An optional whole number.
    pub fn number(&self, key: &str, default: u64) -> Result<u64, BuildError> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v
                .as_u64()
                .ok_or_else(|| self.error(format!("`{key}` must be a whole number"))),
        }
    }

    /// An optional duration (`10s`).
    pub fn duration(&self, key: &str, default: Duration) -> Result<Duration, BuildError> {
        match self.string(key)? {
            None => Ok(default),
            Some(s) => humantime::parse_duration(&s)
                .map_err(|e| self.error(format!("`{key}`: {e} (e.g. `10s`)"))),
        }
    }

    /// A secret from the file named by `key` (trimmed), if the key is given.
    pub fn secret_file(&self, key: &str) -> Result<Option<Secret>, BuildError> {
        let Some(path) = self.string(key)? else {
            return Ok(None);
        };
        read_secret(Path::new(&path))
            .map(Some)
            .map_err(|reason| self.error(format!("`{key}`: {reason}")))
    }

    /// A secret from the file named by `key`, which is required.
    pub fn required_secret_file(&self, key: &str) -> Result<Secret, BuildError> {
        self.secret_file(key)?
            .ok_or_else(|| self.error(format!("`{key}` is required (a file holding the secret)")))
    }

    /// An HTTP client with the instance's `timeout` and, when `ca_file` is given, that CA as an
    /// extra root.
    pub fn http_client(&self) -> Result<reqwest::Client, BuildError> {
        let timeout = self.duration("timeout", Duration::from_secs(10))?;
        let mut b = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("riposte/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = self.string("ca_file")? {
            let pem = std::fs::read(PathBuf::from(&ca))
                .map_err(|e| self.error(format!("`ca_file` `{ca}`: {e}")))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| self.error(format!("`ca_file` `{ca}`: {e}")))?;
            b = b.add_root_certificate(cert);
        }
        b.build()
            .map_err(|e| self.error(format!("cannot make an HTTP client: {e}")))
    }

    /// A URL from `key` (plain, not secret), checked to be http or https.
    pub fn url(&self, key: &str) -> Result<Option<reqwest::Url>, BuildError> {
        self.string(key)?
            .map(|u| parse_url(&u).map_err(|e| self.error(format!("`{key}`: {e}"))))
            .transpose()
    }

    /// A URL read from the file named by `key` (an incoming-webhook URL is a secret).
    pub fn url_file(&self, key: &str) -> Result<Option<(reqwest::Url, Secret)>, BuildError> {
        let Some(secret) = self.secret_file(key)? else {
            return Ok(None);
        };
        // The error must not quote the URL.
        let url = parse_url(secret.expose())
            .map_err(|_| self.error(format!("`{key}`: the file does not hold an http(s) URL")))?;
        Ok(Some((url, secret)))
    }
}

fn parse_url(s: &str) -> Result<reqwest::Url, String> {
    let u = reqwest::Url::parse(s.trim()).map_err(|e| e.to_string())?;
    if u.scheme() != "http" && u.scheme() != "https" {
        return Err(format!("scheme `{}` is not http or https", u.scheme()));
    }
    if u.host_str().is_none() {
        return Err("no host".to_owned());
    }
    Ok(u)
}

/// Reads a secret file: its content without surrounding white space; empty is an error.
pub fn read_secret(path: &Path) -> Result<Secret, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    let value = text.trim();
    if value.is_empty() {
        return Err(format!("`{}` is empty", path.display()));
    }
    Ok(Secret(value.to_owned()))
}

/// `base` with `segments` appended to its path, each percent-encoded, its query and fragment
/// dropped: an API root behind a path prefix (a proxy, a test server) keeps the prefix, and a
/// value such as an alert alias cannot escape its path segment.
pub fn endpoint(base: &reqwest::Url, segments: &[&str]) -> reqwest::Url {
    let mut url = base.clone();
    url.set_query(None);
    url.set_fragment(None);
    // Only URLs that cannot be a base (`mailto:`) refuse; `parse_url` admits http(s) only.
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty().extend(segments);
    }
    url
}

/// `https://events.pagerduty.com`: what may be said about a URL.
pub fn origin(url: &reqwest::Url) -> String {
    match url.port() {
        Some(p) => format!("{}://{}:{p}", url.scheme(), url.host_str().unwrap_or("?")),
        None => format!("{}://{}", url.scheme(), url.host_str().unwrap_or("?")),
    }
}

/// An incoming webhook whose URL is its secret: read from a file, and only its origin ever
/// printed (its `Debug` shows `https://hooks.example/***`).
pub struct SecretHook {
    /// The URL.
    pub url: reqwest::Url,
    /// The instance's client.
    pub client: reqwest::Client,
}

impl fmt::Debug for SecretHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/***", origin(&self.url))
    }
}

impl SecretHook {
    /// The hook whose URL is in the file named by setting `key` (required), with the
    /// instance's HTTP client.
    pub fn from_settings(s: &Settings<'_>, key: &str) -> Result<SecretHook, BuildError> {
        let (url, _) = s.url_file(key)?.ok_or_else(|| {
            s.error(format!(
                "`{key}` is required (a file holding the incoming webhook's URL)"
            ))
        })?;
        Ok(SecretHook {
            url,
            client: s.http_client()?,
        })
    }

    /// What may be said about where it posts.
    pub fn origin(&self) -> String {
        origin(&self.url)
    }

    /// POSTs `body` as JSON (see [`post_json`]).
    pub async fn post(&self, body: &Value) -> Result<Answer, ConnectorError> {
        post_json(&self.client, &self.url, &[], body).await
    }
}

/// What an endpoint answered to a successful request.
#[derive(Debug, Clone)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// The body, as JSON when it is JSON, else as a string (at most 4 KiB).
    pub body: Value,
}

/// POSTs `body` as JSON with extra `headers`. 5xx, 429, time-outs and connection failures are
/// transient; other 4xx are permanent, with the endpoint's own words (its first 300 characters).
pub async fn post_json(
    client: &reqwest::Client,
    url: &reqwest::Url,
    headers: &[(&str, String)],
    body: &Value,
) -> Result<Answer, ConnectorError> {
    let bytes = serde_json::to_vec(body)
        .map_err(|e| ConnectorError::Permanent(format!("cannot encode the request: {e}")))?;
    post_bytes(client, url, "application/json", headers, bytes).await
}

/// POSTs raw bytes with a content type (see [`post_json`]).
pub async fn post_bytes(
    client: &reqwest::Client,
    url: &reqwest::Url,
    content_type: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> Result<Answer, ConnectorError> {
    let at = origin(url);
    let mut req = client
        .post(url.clone())
        .header(reqwest::header::CONTENT_TYPE, content_type)
        .body(body);
    for (k, v) in headers {
        req = req.header(*k, v.as_str());
    }
    let resp = req
        .send()
        .await
        .map_err(|e| ConnectorError::Transient(format!("{at}: {}", failure_kind(&e))))?;
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    let excerpt: String = text.chars().take(300).collect();
    if status == 429 || status >= 500 {
        return Err(ConnectorError::Transient(format!(
            "{at} answered {status}: {}",
            excerpt.trim()
        )));
    }
    if !(200..300).contains(&status) {
        return Err(ConnectorError::Permanent(format!(
            "{at} answered {status}: {}",
            excerpt.trim()
        )));
    }
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|_| Value::String(text.chars().take(4096).collect()));
    Ok(Answer { status, body })
}

/// What kind of failure a request that got no answer met: `timed out`, `cannot connect`, or
/// `request failed` (all transient).
pub fn failure_kind(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use serde_json::json;

    #[test]
    fn secrets_never_print_and_urls_from_files_are_not_quoted_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("hook");
        std::fs::write(&f, "not a url with-a-secret-inside\n").unwrap();
        let map = json!({ "url_file": f.display().to_string() });
        let s = Settings::new("slack", map.as_object().unwrap(), &["url_file"]).unwrap();
        let e = s.url_file("url_file").unwrap_err().to_string();
        assert!(!e.contains("with-a-secret-inside"), "{e}");
        std::fs::write(&f, "https://hooks.example/services/T0/B0/s3cr3t\n").unwrap();
        let (url, secret) = s.url_file("url_file").unwrap().unwrap();
        assert_eq!(origin(&url), "https://hooks.example");
        assert_eq!(format!("{secret:?}"), "***");
    }

    #[test]
    fn endpoints_keep_the_base_path_and_encode_their_segments() {
        let base = reqwest::Url::parse("http://127.0.0.1:9/prefix/").unwrap();
        let u = endpoint(&base, &["v2", "alerts", "riposte:a/b c"]);
        assert_eq!(
            u.as_str(),
            "http://127.0.0.1:9/prefix/v2/alerts/riposte:a%2Fb%20c"
        );
        let root = reqwest::Url::parse("https://api.opsgenie.com").unwrap();
        assert_eq!(
            endpoint(&root, &["v2", "alerts"]).as_str(),
            "https://api.opsgenie.com/v2/alerts"
        );
    }

    #[test]
    fn unknown_settings_and_empty_secret_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("key");
        std::fs::write(&f, "  \n").unwrap();
        let map = json!({ "key_file": f.display().to_string() });
        let s = Settings::new("pd", map.as_object().unwrap(), &["key_file"]).unwrap();
        assert!(s
            .secret_file("key_file")
            .unwrap_err()
            .to_string()
            .contains("is empty"));
        let bad = json!({ "nope": 1 });
        assert!(Settings::new("pd", bad.as_object().unwrap(), &["key_file"]).is_err());
    }
}
