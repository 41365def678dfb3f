//! The Kubernetes API as the actions use it: a client made on first use, JSON requests with
//! server-side dry run, and API errors sorted into transient and permanent failures with the
//! API's own reason.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::ConnectorError;

/// Where the connection comes from.
pub(crate) enum Source {
    /// In-cluster service account, else `$KUBECONFIG` or `~/.kube/config`.
    Infer,
    /// A kubeconfig file and an optional context.
    Kubeconfig {
        path: PathBuf,
        context: Option<String>,
    },
    /// An https URL, the CA that signed it, and a file holding the bearer token (re-read when
    /// it changes, as projected service-account tokens do).
    Url {
        url: String,
        ca_file: Option<PathBuf>,
        token_file: PathBuf,
    },
    /// A client made elsewhere (tests).
    Client(kube::Client),
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Infer => f.write_str("in-cluster or default kubeconfig"),
            Source::Kubeconfig { path, context } => {
                write!(f, "kubeconfig {} (context {context:?})", path.display())
            }
            Source::Url { url, .. } => write!(f, "{url}"),
            Source::Client(_) => f.write_str("a given client"),
        }
    }
}

/// The API, connected on first use.
pub(crate) struct Kube {
    source: Source,
    timeout: Duration,
    client: tokio::sync::Mutex<Option<kube::Client>>,
    policy_version: tokio::sync::OnceCell<&'static str>,
}

impl fmt::Debug for Kube {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kube")
            .field("source", &self.source)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// A request's verb.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verb {
    Get,
    Post,
    MergePatch,
    Delete,
}

impl Kube {
    pub(crate) fn new(source: Source, timeout: Duration) -> Kube {
        Kube {
            source,
            timeout,
            client: tokio::sync::Mutex::new(None),
            policy_version: tokio::sync::OnceCell::new(),
        }
    }

    async fn client(&self) -> Result<kube::Client, ConnectorError> {
        if let Source::Client(c) = &self.source {
            return Ok(c.clone());
        }
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let unusable = |e: String| ConnectorError::Permanent(format!("Kubernetes client: {e}"));
        let mut config = match &self.source {
            Source::Infer => kube::Config::infer().await.map_err(|e| {
                unusable(format!(
                    "no configuration ({e}); set `kubeconfig` or `url` on the connector"
                ))
            })?,
            Source::Kubeconfig { path, context } => {
                let kc = Kubeconfig::read_from(path)
                    .map_err(|e| unusable(format!("kubeconfig `{}`: {e}", path.display())))?;
                let opts = KubeConfigOptions {
                    context: context.clone(),
                    ..KubeConfigOptions::default()
                };
                kube::Config::from_custom_kubeconfig(kc, &opts)
                    .await
                    .map_err(|e| unusable(format!("kubeconfig `{}`: {e}", path.display())))?
            }
            Source::Url {
                url,
                ca_file,
                token_file,
            } => {
                let mut cluster = json!({ "server": url });
                if let Some(ca) = ca_file {
                    put(
                        &mut cluster,
                        "certificate-authority",
                        json!(ca.display().to_string()),
                    );
                }
                let text = json!({
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{ "name": "riposte", "cluster": cluster }],
                    "users": [{ "name": "riposte",
                                "user": { "tokenFile": token_file.display().to_string() } }],
                    "contexts": [{ "name": "riposte",
                                   "context": { "cluster": "riposte", "user": "riposte" } }],
                    "current-context": "riposte",
                })
                .to_string();
                let kc = Kubeconfig::from_yaml(&text).map_err(|e| unusable(e.to_string()))?;
                kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                    .await
                    .map_err(|e| unusable(e.to_string()))?
            }
            Source::Client(c) => return Ok(c.clone()),
        };
        config.connect_timeout = Some(self.timeout);
        config.read_timeout = Some(self.timeout);
        config.write_timeout = Some(self.timeout);
        let client = kube::Client::try_from(config).map_err(|e| unusable(e.to_string()))?;
        *slot = Some(client.clone());
        Ok(client)
    }

    /// One JSON request. `path` starts with `/api` or `/apis` and may carry a query; writes in
    /// a dry run get `dryRun=All`, and every write names riposte as its field manager. `what`
    /// says what the request is for, in errors.
    pub(crate) async fn call<T: DeserializeOwned>(
        &self,
        verb: Verb,
        path: &str,
        body: Option<&Value>,
        dry: bool,
        what: &str,
    ) -> Result<T, ConnectorError> {
        let client = self.client().await?;
        let mut uri = path.to_owned();
        if verb != Verb::Get {
            let sep = if uri.contains('?') { '&' } else { '?' };
            uri.push(sep);
            if verb != Verb::Delete {
                uri.push_str("fieldManager=riposte");
                if dry {
                    uri.push('&');
                }
            }
            if dry {
                uri.push_str("dryRun=All");
            }
        }
        let builder = match verb {
            Verb::Get => http::Request::get(&uri),
            Verb::Post => http::Request::post(&uri),
            Verb::MergePatch => http::Request::patch(&uri),
            Verb::Delete => http::Request::delete(&uri),
        };
        let content_type = if verb == Verb::MergePatch {
            "application/merge-patch+json"
        } else {
            "application/json"
        };
        let bytes = match body {
            Some(b) => serde_json::to_vec(b)
                .map_err(|e| ConnectorError::Permanent(format!("{what}: {e}")))?,
            None => Vec::new(),
        };
        let req = builder
            .header(http::header::CONTENT_TYPE, content_type)
            .header(http::header::ACCEPT, "application/json")
            .body(bytes)
            .map_err(|e| ConnectorError::Permanent(format!("{what}: {e}")))?;
        let call = client.request::<T>(req);
        match tokio::time::timeout(self.timeout + Duration::from_secs(1), call).await {
            Ok(r) => r.map_err(|e| api_error(e, what)),
            Err(_) => Err(ConnectorError::Transient(format!(
                "{what}: the Kubernetes API did not answer within {}",
                humantime::format_duration(self.timeout)
            ))),
        }
    }

    /// A GET of plain text (logs).
    pub(crate) async fn text(&self, path: &str, what: &str) -> Result<String, ConnectorError> {
        let client = self.client().await?;
        let req = http::Request::get(path)
            .body(Vec::new())
            .map_err(|e| ConnectorError::Permanent(format!("{what}: {e}")))?;
        match tokio::time::timeout(
            self.timeout + Duration::from_secs(1),
            client.request_text(req),
        )
        .await
        {
            Ok(r) => r.map_err(|e| api_error(e, what)),
            Err(_) => Err(ConnectorError::Transient(format!(
                "{what}: the Kubernetes API did not answer within {}",
                humantime::format_duration(self.timeout)
            ))),
        }
    }

    /// A GET that gives `None` for 404.
    pub(crate) async fn get_opt<T: DeserializeOwned>(
        &self,
        path: &str,
        what: &str,
    ) -> Result<Option<T>, ConnectorError> {
        match self.call::<T>(Verb::Get, path, None, false, what).await {
            Ok(v) => Ok(Some(v)),
            Err(ConnectorError::Permanent(m)) if m.contains("(NotFound, HTTP 404)") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The version of the Eviction objects the server takes, as the `pods/eviction`
    /// subresource declares it in the core API's discovery (as `kubectl drain` reads it):
    /// `policy/v1` from Kubernetes 1.22, else `policy/v1beta1`. Whether the policy group serves
    /// v1 says nothing here: 1.21 serves it for PodDisruptionBudgets but refuses a policy/v1
    /// Eviction. Asked once.
    pub(crate) async fn policy_version(&self) -> Result<&'static str, ConnectorError> {
        self.policy_version
            .get_or_try_init(|| async {
                let core: Value = self
                    .call(
                        Verb::Get,
                        "/api/v1",
                        None,
                        false,
                        "discover the eviction API",
                    )
                    .await?;
                let v1 = core
                    .get("resources")
                    .and_then(Value::as_array)
                    .is_some_and(|rs| {
                        rs.iter().any(|r| {
                            let s = |k: &str| r.get(k).and_then(Value::as_str);
                            s("name") == Some("pods/eviction")
                                && s("group") == Some("policy")
                                && s("version") == Some("v1")
                        })
                    });
                Ok(if v1 { "policy/v1" } else { "policy/v1beta1" })
            })
            .await
            .copied()
    }
}

/// Sorts an API error: not found, forbidden, invalid and the like are permanent; conflicts,
/// throttling (and PodDisruptionBudget refusals), server errors and an unreachable server are
/// transient. The message keeps the API's own reason and code.
pub(crate) fn api_error(e: kube::Error, what: &str) -> ConnectorError {
    match e {
        kube::Error::Api(r) => {
            let reason = if r.reason.is_empty() {
                "Failure".to_owned()
            } else {
                r.reason.clone()
            };
            let msg = format!("{what}: {} ({reason}, HTTP {})", r.message, r.code);
            match r.code {
                409 if reason == "AlreadyExists" => ConnectorError::Permanent(msg),
                409 | 429 | 500..=599 => ConnectorError::Transient(msg),
                _ => ConnectorError::Permanent(msg),
            }
        }
        kube::Error::SerdeError(e) => {
            ConnectorError::Permanent(format!("{what}: unexpected answer from the API: {e}"))
        }
        kube::Error::BuildRequest(e) => ConnectorError::Permanent(format!("{what}: {e}")),
        other => ConnectorError::Transient(format!(
            "{what}: the Kubernetes API is unreachable: {other}"
        )),
    }
}

/// The path prefix of an API version: `/api/v1` for the core group, `/apis/<group>/<version>`
/// otherwise.
pub(crate) fn api_base(api_version: &str) -> String {
    if api_version.contains('/') {
        format!("/apis/{api_version}")
    } else {
        format!("/api/{api_version}")
    }
}

/// Sets `key` on a JSON object (does nothing on other values).
pub(crate) fn put(v: &mut Value, key: &str, value: Value) {
    if let Some(m) = v.as_object_mut() {
        m.insert(key.to_owned(), value);
    }
}

/// Whether an error is the API's 404.
pub(crate) fn is_not_found(e: &ConnectorError) -> bool {
    matches!(e, ConnectorError::Permanent(m) if m.contains("(NotFound, HTTP 404)"))
}

/// Whether an error is a PodDisruptionBudget (or other) refusal to evict now (HTTP 429).
pub(crate) fn is_too_many_requests(e: &ConnectorError) -> bool {
    matches!(e, ConnectorError::Transient(m) if m.contains("HTTP 429)"))
}

/// Checks a name that goes into a URL path: a DNS subdomain (lowercase letters, digits, `-`
/// and `.`, at most 253 characters), so no event-derived value can change the path.
pub(crate) fn check_name(action: &str, param: &str, value: &str) -> Result<(), ConnectorError> {
    let ok = !value.is_empty()
        && value.len() <= 253
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && value
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && value
            .chars()
            .last()
            .is_some_and(|c| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else if value.is_empty() {
        Err(ConnectorError::invalid(
            action,
            format!("`{param}` is empty: the event names no {param}"),
        ))
    } else {
        Err(ConnectorError::invalid(
            action,
            format!("`{param}` `{value}` is not a Kubernetes object name"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_change_a_path_are_refused() {
        for bad in ["", "../x", "a/b", "A", "-a", "a-", "a?b=c", "a b"] {
            assert!(check_name("delete_pod", "pod", bad).is_err(), "{bad}");
        }
        for good in ["web-1", "a", "web.shop-1.x"] {
            assert!(check_name("delete_pod", "pod", good).is_ok(), "{good}");
        }
    }

    #[test]
    fn api_errors_keep_the_reason_and_sort_retries() {
        let e = |code: u16, reason: &str| {
            api_error(
                kube::Error::Api(kube::core::ErrorResponse {
                    status: "Failure".into(),
                    message: "m".into(),
                    reason: reason.into(),
                    code,
                }),
                "delete pod `a/b`",
            )
        };
        assert_eq!(
            e(404, "NotFound"),
            ConnectorError::Permanent("delete pod `a/b`: m (NotFound, HTTP 404)".into())
        );
        assert!(is_not_found(&e(404, "NotFound")));
        assert!(!e(403, "Forbidden").is_retryable());
        assert!(e(409, "Conflict").is_retryable());
        assert!(e(429, "TooManyRequests").is_retryable());
        assert!(is_too_many_requests(&e(429, "TooManyRequests")));
        assert!(e(503, "ServiceUnavailable").is_retryable());
        assert!(!e(422, "Invalid").is_retryable());
    }
}
