//! Connector `webhook`: POSTs the enriched notice (or any JSON payload) to a URL, signed with
//! HMAC-SHA256 so the receiver knows it comes from riposte and has not been altered or replayed.
//!
//! Every request carries:
//! - `X-Riposte-Timestamp: <Unix seconds>`, taken when the attempt is made;
//! - `X-Riposte-Signature: sha256=<lowercase hex of HMAC-SHA256(secret, "<timestamp>.<body>")>`,
//!   over the exact body bytes sent;
//! - `X-Riposte-Run` and `X-Riposte-Event`: the run and the event it is about, when known.
//!
//! This is the scheme riposte's own ingest gateway verifies (`ingest.hmac_keys_file`), so one
//! riposte can feed another: point `url` at `https://<gateway>/v1/events/generic` and put the
//! same secret in both files.
//!
//! A receiver verifies in this order, and rejects with 401 on any failure: (1) the timestamp is
//! digits and within its window of now (e.g. 5 minutes); (2) the HMAC of
//! `"<timestamp>.<raw body>"` under the shared secret equals the signature, compared in constant
//! time; (3) the signature has not been seen before: it keeps accepted signatures until their
//! timestamp leaves the window, so a captured request replayed later is refused either as stale
//! or as seen. A retried attempt is signed afresh, with a new timestamp, so retries are not
//! mistaken for replays.
//!
//! The secret (and a URL from `url_file`) never appear in plans, outputs or errors.

use std::fmt;

use async_trait::async_trait;
use hmac::{Hmac, Mac};
use reqwest::header::{HeaderName, HeaderValue};
use serde_json::{json, Map, Value};
use sha2::Sha256;

use crate::http::{self, Secret, Settings};
use crate::notice::Notice;
use crate::spec::{find_action, ActionSpec, ParamSpec, ParamType};
use crate::{Args, BuildError, Connector, ConnectorError, Deps, Output, Plan};

/// The headers riposte sets.
pub const TIMESTAMP_HEADER: &str = "X-Riposte-Timestamp";
/// The signature header.
pub const SIGNATURE_HEADER: &str = "X-Riposte-Signature";
/// The run header.
pub const RUN_HEADER: &str = "X-Riposte-Run";
/// The event header.
pub const EVENT_HEADER: &str = "X-Riposte-Event";

const SETTINGS: &[&str] = &[
    "url",
    "url_file",
    "secret_file",
    "headers",
    "timeout",
    "ca_file",
];

/// Headers `headers` may not set: the transport's own, riposte's, and credentials (which would
/// sit in `riposte.yaml` in clear; the signature authenticates the request).
const RESERVED: &[&str] = &[
    "content-type",
    "content-length",
    "host",
    "transfer-encoding",
    "connection",
    "authorization",
    "proxy-authorization",
    "cookie",
];

/// The actions of `webhook`.
pub const ACTIONS: &[ActionSpec] = &[ActionSpec {
    name: "post",
    description: "POSTs JSON signed with HMAC-SHA256 (`X-Riposte-Timestamp`, \
                  `X-Riposte-Signature`): the notice, or `payload`; in `notify` without `with`, \
                  the notice.",
    params: &[
        ParamSpec {
            name: "notice",
            ty: ParamType::Any,
            required: false,
            description: "The enriched notice (filled by the engine when left out); sent as the \
                          body unless `payload` is given, and the source of `X-Riposte-Run` and \
                          `X-Riposte-Event`.",
        },
        ParamSpec {
            name: "payload",
            ty: ParamType::Any,
            required: false,
            description: "The body to send instead of the notice, as JSON.",
        },
    ],
    destructive: false,
    reversible: false,
    message_param: Some("notice"),
}];

/// A `webhook` instance.
pub struct WebhookConnector {
    /// The endpoint; a secret when read from `url_file`, so only its origin is ever printed.
    url: reqwest::Url,
    secret: Secret,
    headers: Vec<(String, String)>,
    client: reqwest::Client,
}

impl fmt::Debug for WebhookConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookConnector")
            .field("url", &format_args!("{}/***", http::origin(&self.url)))
            .field("secret", &self.secret)
            .field(
                "headers",
                &self.headers.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl WebhookConnector {
    /// Builds an instance: `url` or `url_file` (one of them), `secret_file` (required),
    /// `headers`, `timeout`, `ca_file`.
    pub fn new(
        instance: &str,
        settings: &Map<String, Value>,
        deps: &Deps,
    ) -> Result<Self, BuildError> {
        let _ = deps;
        let s = Settings::new(instance, settings, SETTINGS)?;
        let url = match (s.url("url")?, s.url_file("url_file")?) {
            (Some(u), None) | (None, Some((u, _))) => u,
            (Some(_), Some(_)) => {
                return Err(s.error("give `url` or `url_file`, not both"));
            }
            (None, None) => {
                return Err(
                    s.error("`url` (or `url_file`, when the URL itself is a secret) is required")
                );
            }
        };
        let secret = s.required_secret_file("secret_file")?;
        let headers = match settings.get("headers") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Object(m)) => m
                .iter()
                .map(|(k, v)| header(k, v).map_err(|why| s.error(format!("`headers`: {why}"))))
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(s.error("`headers` must be a map of header names to text")),
        };
        Ok(WebhookConnector {
            url,
            secret,
            headers,
            client: s.http_client()?,
        })
    }
}

/// One extra header, checked.
fn header(name: &str, value: &Value) -> Result<(String, String), String> {
    let lower = name.to_ascii_lowercase();
    if RESERVED.contains(&lower.as_str()) || lower.starts_with("x-riposte-") {
        return Err(format!(
            "`{name}` is set by riposte and cannot be configured"
        ));
    }
    HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("`{name}` is not a header name"))?;
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => return Err(format!("the value of `{name}` must be text")),
    };
    HeaderValue::from_str(&text)
        .map_err(|_| format!("the value of `{name}` is not a valid header value"))?;
    Ok((name.to_owned(), text))
}

/// `sha256=<lowercase hex of HMAC-SHA256(secret, "<timestamp>.<body>")>`.
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    // HMAC takes keys of any length.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The body to send and the ids for the headers.
struct Body {
    bytes: Vec<u8>,
    what: &'static str,
    run_id: String,
    event_id: String,
}

fn body(action: &str, args: &Args) -> Result<Body, ConnectorError> {
    if find_action(ACTIONS, action).is_none() {
        return Err(ConnectorError::UnknownAction(action.to_owned()));
    }
    let raw = args.get("notice").filter(|v| !v.is_null());
    let notice = raw.map(Notice::from_value).unwrap_or_default();
    let (value, what) = match (args.get("payload").filter(|v| !v.is_null()), raw) {
        (Some(p), _) => (p.clone(), "payload"),
        (None, Some(n)) => (n.clone(), "notice"),
        (None, None) => {
            return Err(ConnectorError::InvalidArgs {
                action: action.to_owned(),
                reason: "nothing to send: give `payload` or a notice".to_owned(),
            })
        }
    };
    let bytes = serde_json::to_vec(&value)
        .map_err(|e| ConnectorError::Permanent(format!("cannot encode the body: {e}")))?;
    Ok(Body {
        bytes,
        what,
        run_id: notice.run_id,
        event_id: notice.event_id,
    })
}

#[async_trait]
impl Connector for WebhookConnector {
    fn actions(&self) -> &'static [ActionSpec] {
        ACTIONS
    }

    fn describe(&self, action: &str, args: &Args) -> Result<Plan, ConnectorError> {
        let b = body(action, args)?;
        Ok(Plan {
            description: format!(
                "POST the {} ({} bytes of JSON, signed with HMAC-SHA256) to {}",
                b.what,
                b.bytes.len(),
                http::origin(&self.url)
            ),
        })
    }

    async fn run(&self, action: &str, args: &Args) -> Result<Output, ConnectorError> {
        let b = body(action, args)?;
        let timestamp = chrono::Utc::now().timestamp();
        let mut headers: Vec<(&str, String)> = vec![
            (TIMESTAMP_HEADER, timestamp.to_string()),
            (
                SIGNATURE_HEADER,
                signature(self.secret.expose().as_bytes(), timestamp, &b.bytes),
            ),
        ];
        if !b.run_id.is_empty() {
            headers.push((RUN_HEADER, b.run_id.clone()));
        }
        if !b.event_id.is_empty() {
            headers.push((EVENT_HEADER, b.event_id.clone()));
        }
        headers.extend(self.headers.iter().map(|(k, v)| (k.as_str(), v.clone())));
        let size = b.bytes.len();
        let answer = http::post_bytes(
            &self.client,
            &self.url,
            "application/json",
            &headers,
            b.bytes,
        )
        .await?;
        Ok(Output {
            output: json!({
                "status": answer.status,
                "bytes": size,
                "timestamp": timestamp,
                "response": answer.body,
                "to": http::origin(&self.url),
            }),
            undo: None,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    fn settings(dir: &std::path::Path, extra: Value) -> Map<String, Value> {
        let f = dir.join("hook.secret");
        std::fs::write(&f, "k3y-s3cr3t\n").unwrap();
        let mut m = json!({ "secret_file": f.display().to_string() })
            .as_object()
            .unwrap()
            .clone();
        m.extend(extra.as_object().unwrap().clone());
        m
    }

    #[test]
    fn the_signature_is_hmac_sha256_over_timestamp_dot_body() {
        // Known answer from `printf '1700000000.{"title":"x"}' | openssl dgst -sha256 -hmac Jefe`.
        assert_eq!(
            signature(b"Jefe", 1_700_000_000, br#"{"title":"x"}"#),
            "sha256=0e54b061c4dce51117798874d14eb5ff48d49fb94e1a990cefbe33a5e395816f"
        );
        assert_ne!(
            signature(b"Jefe", 1_700_000_001, br#"{"title":"x"}"#),
            signature(b"Jefe", 1_700_000_000, br#"{"title":"x"}"#)
        );
    }

    #[test]
    fn the_body_is_the_notice_or_the_payload_and_names_the_run() {
        let notice = json!({ "title": "Terminal shell", "run_id": "r-1", "event_id": "evt-1" });
        let a = json!({ "notice": notice });
        let b = body("post", a.as_object().unwrap()).unwrap();
        assert_eq!(serde_json::from_slice::<Value>(&b.bytes).unwrap(), notice);
        assert_eq!((b.run_id.as_str(), b.event_id.as_str()), ("r-1", "evt-1"));
        let a = json!({ "notice": notice, "payload": { "container": "c0ffee" } });
        let b = body("post", a.as_object().unwrap()).unwrap();
        assert_eq!(b.bytes, br#"{"container":"c0ffee"}"#);
        assert_eq!(b.run_id, "r-1");
        assert!(body("post", &Map::new()).is_err());
    }

    #[test]
    fn settings_are_checked_and_secrets_stay_hidden() {
        let dir = tempfile::tempdir().unwrap();
        let ok = settings(
            dir.path(),
            json!({ "url": "http://127.0.0.1:1/in", "headers": { "X-Team": "soc" } }),
        );
        let c = WebhookConnector::new("hook", &ok, &Deps::default()).unwrap();
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("k3y-s3cr3t") && !shown.contains("/in"),
            "{shown}"
        );
        let a = json!({ "notice": { "title": "x" } });
        assert_eq!(
            c.describe("post", a.as_object().unwrap())
                .unwrap()
                .description,
            "POST the notice (13 bytes of JSON, signed with HMAC-SHA256) to http://127.0.0.1:1"
        );
        for (extra, why) in [
            (json!({}), "`url` (or `url_file`"),
            (
                json!({ "url": "http://x", "headers": { "Authorization": "Bearer t" } }),
                "cannot be configured",
            ),
            (
                json!({ "url": "http://x", "headers": { "X-Riposte-Run": "r" } }),
                "cannot be configured",
            ),
            (
                json!({ "url": "http://x", "headers": { "bad name": "v" } }),
                "not a header name",
            ),
            (
                json!({ "url": "http://x", "headers": ["X-A"] }),
                "must be a map",
            ),
            (
                json!({ "url": "http://x", "token": "t" }),
                "unknown setting `token`",
            ),
        ] {
            let err = WebhookConnector::new("hook", &settings(dir.path(), extra), &Deps::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains(why), "{err}");
            assert!(!err.contains("k3y-s3cr3t"));
        }
        let f = dir.path().join("hook.url");
        std::fs::write(&f, "http://127.0.0.1:1/hooks/s3cr3tpath").unwrap();
        let both = settings(
            dir.path(),
            json!({ "url": "http://x", "url_file": f.display().to_string() }),
        );
        assert!(WebhookConnector::new("hook", &both, &Deps::default()).is_err());
    }

    #[tokio::test]
    async fn a_failed_post_says_where_without_the_secret_path() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("hook.url");
        std::fs::write(&f, "http://127.0.0.1:1/hooks/s3cr3tpath").unwrap();
        let s = settings(dir.path(), json!({ "url_file": f.display().to_string() }));
        let c = WebhookConnector::new("hook", &s, &Deps::default()).unwrap();
        let a = json!({ "payload": [1, 2] });
        let err = c.run("post", a.as_object().unwrap()).await.unwrap_err();
        assert!(err.is_retryable());
        let text = err.to_string();
        assert!(text.starts_with("http://127.0.0.1:1: "), "{text}");
        assert!(!text.contains("s3cr3tpath"));
    }
}
