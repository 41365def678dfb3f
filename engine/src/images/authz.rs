//! The Docker Engine authorization plugin: the AuthZ plugin protocol over HTTP on a Unix
//! socket, refusing to create a container from, or to pull, a revoked image.
//!
//! dockerd (started with `--authorization-plugin=NAME`, the plugin found at
//! `/run/docker/plugins/NAME.sock` or through `/etc/docker/plugins/NAME.spec`) asks
//! `POST /AuthZPlugin.AuthZReq` before every API request and `POST /AuthZPlugin.AuthZRes`
//! after it. Only two requests are checked: `POST [/vX.Y]/containers/create` (the body's
//! `Image`) and `POST [/vX.Y]/images/create` (a pull: `fromImage` and `tag`); everything else
//! is allowed at once, without calling the daemon, which also keeps the plugin's own calls to
//! the daemon from waiting on themselves. A container's image is looked up by the name given
//! and by what the daemon knows of it (image inspect: its repository digests and tags), so a
//! revocation by digest catches a tag or an image id. A request it cannot read is answered
//! per `on_undecided` and counted; a revoked image is always denied. It never changes the list.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use bollard::errors::Error as DockerError;
use bollard::{Docker, API_DEFAULT_VERSION};
use riposte_connectors::revocation::{ImageRef, Revocation, RevocationIndex};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::admission::{
    cut, revocation_summary, revoked_message, EnforcementAudit, EnforcementError,
};
use crate::config::{AuthzConfig, Undecided};
use crate::metrics::Metrics;

/// The daemon asked about images when `docker_host` is not set.
pub const DEFAULT_DOCKER_HOST: &str = "unix:///var/run/docker.sock";
/// The plugin protocol's content type.
const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1+json";
/// The largest AuthZ request read (dockerd passes bodies up to 1 MiB, base64-encoded).
const MAX_BODY: usize = 4 * 1024 * 1024;
/// Time dockerd gets to send a request, and the daemon to answer an image inspect.
const TIMEOUT: Duration = Duration::from_secs(5);

/// One AuthZ request as dockerd sends it (fields the plugin does not use are ignored).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AuthzRequest {
    /// The authenticated user, when the daemon authenticates clients (TLS).
    #[serde(default)]
    pub user: Option<String>,
    /// The HTTP method of the API request.
    #[serde(default)]
    pub request_method: Option<String>,
    /// The API request's URI, with its query.
    #[serde(rename = "RequestUri", alias = "RequestURI", default)]
    pub request_uri: Option<String>,
    /// Its body, base64 (absent when it is not JSON or too large).
    #[serde(default)]
    pub request_body: Option<String>,
}

/// What an API request would use, as far as the revocation list is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Nothing the plugin checks.
    Nothing,
    /// A container is created from `image` (as the client spelled it).
    Create {
        /// The body's `Image`.
        image: String,
        /// The `name` the container would get, if any.
        name: Option<String>,
    },
    /// An image is pulled.
    Pull {
        /// `fromImage` with its `tag` (or digest).
        reference: String,
    },
    /// A request the plugin checks, but cannot read.
    Unreadable(String),
}

/// Which image an API request would use, from its method, URI and body alone (no I/O).
pub fn target(req: &AuthzRequest) -> Target {
    if !req
        .request_method
        .as_deref()
        .is_some_and(|m| m.eq_ignore_ascii_case("POST"))
    {
        return Target::Nothing;
    }
    let Some(uri) = req
        .request_uri
        .as_deref()
        .and_then(|u| u.parse::<Uri>().ok())
    else {
        return Target::Nothing;
    };
    let path = api_path(uri.path());
    let query = Query::<Vec<(String, String)>>::try_from_uri(&uri)
        .map(|q| q.0)
        .unwrap_or_default();
    let param = |k: &str| {
        query
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty())
    };
    match path {
        "/containers/create" => {
            let Some(body) = req.request_body.as_deref().filter(|b| !b.is_empty()) else {
                return Target::Unreadable("the request to create a container has no body (dockerd passes only JSON bodies under 1 MiB)".to_owned());
            };
            let Some(bytes) = base64_decode(body) else {
                return Target::Unreadable("the request body is not base64".to_owned());
            };
            let spec: Value = match serde_json::from_slice(&bytes) {
                Ok(v) => v,
                Err(e) => {
                    return Target::Unreadable(format!(
                        "the container spec is not JSON: {}",
                        cut(&e.to_string())
                    ))
                }
            };
            match spec.get("Image").and_then(Value::as_str) {
                Some(image) if !image.trim().is_empty() => Target::Create {
                    image: image.to_owned(),
                    name: param("name"),
                },
                _ => Target::Unreadable("the container spec names no `Image`".to_owned()),
            }
        }
        "/images/create" => match param("fromImage") {
            Some(from) => {
                let reference = match param("tag") {
                    Some(t) if t.starts_with("sha256:") => format!("{from}@{t}"),
                    Some(t) => format!("{from}:{t}"),
                    None => from,
                };
                Target::Pull { reference }
            }
            // An import (`fromSrc`) brings no named image.
            None => Target::Nothing,
        },
        _ => Target::Nothing,
    }
}

/// The API path without its `/vX.Y` version prefix.
fn api_path(path: &str) -> &str {
    if let Some(rest) = path.strip_prefix("/v") {
        if let Some((version, tail)) = rest.split_once('/') {
            if !version.is_empty() && version.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
                return path.get(path.len() - tail.len() - 1..).unwrap_or(path);
            }
        }
    }
    path
}

/// Decodes standard base64 (with or without padding), as Go encodes a `[]byte`.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    use base64::engine::{general_purpose, DecodePaddingMode, GeneralPurposeConfig};
    use base64::Engine as _;
    const LENIENT: general_purpose::GeneralPurpose = general_purpose::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    LENIENT.decode(text.trim()).ok()
}

/// The first entry of the index covering any of `names` (references as given, repository
/// tags) or `digests` (`repo@sha256:...` or bare digests), with the name that matched.
pub fn covering(
    index: &RevocationIndex,
    names: &[String],
    digests: &[String],
) -> Option<(String, Arc<Revocation>)> {
    for n in names.iter().chain(digests) {
        if let Ok(r) = ImageRef::parse(n) {
            if let Some(e) = index.lookup(&r) {
                return Some((n.clone(), e));
            }
        }
        let bare = n.rsplit_once('@').map_or(n.as_str(), |(_, d)| d);
        if let Some(e) = index.lookup_digest(bare) {
            return Some((n.clone(), e));
        }
    }
    None
}

/// What the daemon knows of a local image.
#[derive(Debug, Default)]
struct Known {
    tags: Vec<String>,
    digests: Vec<String>,
}

/// The daemon the plugin asks about images, connected on first use.
#[derive(Debug)]
struct Daemon {
    host: String,
    client: tokio::sync::Mutex<Option<Docker>>,
}

impl Daemon {
    fn new(host: &str) -> Result<Daemon, EnforcementError> {
        let ok = host.starts_with('/')
            || host.starts_with("unix://")
            || host.starts_with("tcp://")
            || host.starts_with("http://");
        if !ok {
            return Err(EnforcementError::DockerHost {
                host: host.to_owned(),
                reason: "give unix:///path/to/docker.sock, a socket path, or tcp://host:port"
                    .to_owned(),
            });
        }
        Ok(Daemon {
            host: host.to_owned(),
            client: tokio::sync::Mutex::new(None),
        })
    }

    async fn client(&self) -> Result<Docker, String> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let secs = TIMEOUT.as_secs();
        let made = if let Some(p) = self.host.strip_prefix("unix://") {
            Docker::connect_with_unix(p, secs, API_DEFAULT_VERSION)
        } else if self.host.starts_with('/') {
            Docker::connect_with_unix(&self.host, secs, API_DEFAULT_VERSION)
        } else {
            let addr = self.host.replacen("tcp://", "http://", 1);
            Docker::connect_with_http(&addr, secs, API_DEFAULT_VERSION)
        }
        .map_err(|e| format!("docker daemon at {}: {e}", self.host))?;
        let client = tokio::time::timeout(TIMEOUT, made.negotiate_version())
            .await
            .map_err(|_| format!("docker daemon at {} did not answer in time", self.host))?
            .map_err(|e| format!("docker daemon at {}: {e}", self.host))?;
        *slot = Some(client.clone());
        Ok(client)
    }

    /// The image's tags and digests; `Ok(None)` when the daemon has no such image.
    async fn inspect(&self, image: &str) -> Result<Option<Known>, String> {
        let client = self.client().await?;
        match tokio::time::timeout(TIMEOUT, client.inspect_image(image)).await {
            Err(_) => Err(format!(
                "docker daemon at {} did not answer an image inspect in time",
                self.host
            )),
            Ok(Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            })) => Ok(None),
            Ok(Err(e)) => Err(format!("docker daemon at {}: {e}", self.host)),
            Ok(Ok(i)) => Ok(Some(Known {
                tags: i.repo_tags.unwrap_or_default(),
                digests: i.repo_digests.unwrap_or_default(),
            })),
        }
    }
}

#[derive(Debug)]
struct Plugin {
    index: Arc<RevocationIndex>,
    on_undecided: Undecided,
    daemon: Daemon,
    metrics: Arc<Metrics>,
    audit: EnforcementAudit,
}

/// The plugin being served.
#[derive(Debug)]
pub struct Served {
    /// The socket.
    pub socket: PathBuf,
    /// Ends when the plugin has stopped after `shutdown` (and removed its socket).
    pub task: JoinHandle<()>,
}

/// Makes `config.socket` and serves the plugin on it until `shutdown`. A stale socket left by
/// an earlier run is replaced; one another process answers on is not.
pub async fn serve(
    config: &AuthzConfig,
    index: Arc<RevocationIndex>,
    metrics: Arc<Metrics>,
    audit: EnforcementAudit,
    shutdown: CancellationToken,
) -> Result<Served, EnforcementError> {
    let daemon = Daemon::new(config.docker_host.as_deref().unwrap_or(DEFAULT_DOCKER_HOST))?;
    let path = config.socket.clone();
    let fail = |reason: String| EnforcementError::Socket {
        path: path.clone(),
        reason,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| fail(format!("cannot make its folder: {e}")))?;
    }
    if path.exists() {
        if tokio::net::UnixStream::connect(&path).await.is_ok() {
            return Err(fail("another process answers on it".to_owned()));
        }
        std::fs::remove_file(&path).map_err(|e| fail(format!("cannot replace it: {e}")))?;
    }
    let listener = tokio::net::UnixListener::bind(&path).map_err(|e| fail(e.to_string()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660))
            .map_err(|e| fail(format!("cannot restrict it to its owner and group: {e}")))?;
    }
    let plugin = Arc::new(Plugin {
        index,
        on_undecided: config.on_undecided,
        daemon,
        metrics,
        audit,
    });
    let app = Router::new()
        .route("/Plugin.Activate", post(activate))
        .route("/AuthZPlugin.AuthZReq", post(authz_req))
        .route("/AuthZPlugin.AuthZRes", post(authz_res))
        .fallback(unknown)
        .layer(DefaultBodyLimit::disable())
        .with_state(plugin);
    let socket = path.clone();
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "Docker AuthZ plugin stopped");
        }
        remove_socket(&socket);
    });
    tracing::info!(socket = %path.display(), "Docker AuthZ plugin on unix://{}", path.display());
    Ok(Served { socket: path, task })
}

fn remove_socket(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        tracing::debug!(error = %e, "cannot remove the AuthZ plugin socket");
    }
}

fn answer(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)],
        body.to_string(),
    )
        .into_response()
}

async fn activate() -> Response {
    answer(StatusCode::OK, json!({ "Implements": ["authz"] }))
}

async fn authz_res() -> Response {
    answer(StatusCode::OK, json!({ "Allow": true }))
}

async fn unknown(uri: Uri) -> Response {
    answer(
        StatusCode::NOT_FOUND,
        json!({ "Err": format!("riposte: `{}` is not an AuthZ plugin call (Plugin.Activate, AuthZPlugin.AuthZReq, AuthZPlugin.AuthZRes)", cut(uri.path())) }),
    )
}

async fn authz_req(State(p): State<Arc<Plugin>>, body: Body) -> Response {
    let bytes = match crate::body::read(body, MAX_BODY, TIMEOUT).await {
        Ok(b) => b,
        Err(e) => return malformed(&p, "unreadable", &e.to_string()),
    };
    let req: AuthzRequest = match serde_json::from_slice(&bytes) {
        Ok(r) => r,
        Err(e) => return malformed(&p, "not_a_request", &cut(&e.to_string())),
    };
    let started = Instant::now();
    let t = target(&req);
    tracing::debug!(method = ?req.request_method, uri = ?req.request_uri, target = ?t, "authz: request");
    if t == Target::Nothing {
        return answer(StatusCode::OK, json!({ "Allow": true }));
    }
    let user = req.user.filter(|u| !u.is_empty());
    let verdict = check(&p, &t).await;
    p.metrics
        .authz_latency
        .observe(started.elapsed().as_secs_f64());
    let (object, image) = match &t {
        Target::Create { image, name } => (
            match name {
                Some(n) => format!("container {}", cut(n)),
                None => "container".to_owned(),
            },
            Some(image.as_str()),
        ),
        Target::Pull { reference } => ("image pull".to_owned(), Some(reference.as_str())),
        _ => ("container".to_owned(), None),
    };
    let record = |outcome: &str, reason: &str, revocation: Option<&Revocation>| {
        let mut rec = p.audit.record("authz", outcome);
        rec.reason = Some(reason.to_owned());
        let mut out = json!({
            "image": image.map(cut),
            "object": object,
            "user": user,
            "request": req.request_uri.as_deref().map(cut),
        });
        if let (Some(e), Some(map)) = (revocation, out.as_object_mut()) {
            map.insert("revocation".into(), revocation_summary(e));
        }
        rec.output = Some(out);
        p.audit.write(rec);
    };
    let count = |decision: &str| {
        p.metrics
            .authz_decisions
            .get_or_create(&Metrics::label("decision", decision))
            .inc();
    };
    match verdict {
        Verdict::Revoked { name, entry } => {
            let msg = revoked_message(image.unwrap_or(&name), &entry);
            tracing::info!(image = %name, user = ?user, "authz: denied a revoked image");
            count("denied");
            record("denied", &msg, Some(&entry));
            answer(StatusCode::OK, json!({ "Allow": false, "Msg": msg }))
        }
        Verdict::Clean => {
            count("allowed");
            answer(StatusCode::OK, json!({ "Allow": true }))
        }
        Verdict::Unsure { reason, bad_input } => {
            let allow = p.on_undecided == Undecided::Allow;
            let decision = if allow { "allowed" } else { "denied" };
            count(decision);
            p.metrics
                .enforcement_undecided
                .get_or_create(&Metrics::labels2(("point", "authz"), ("answer", decision)))
                .inc();
            tracing::warn!(%reason, decision, "authz: could not check a request");
            if bad_input {
                p.metrics
                    .enforcement_malformed
                    .get_or_create(&Metrics::labels2(("point", "authz"), ("reason", "body")))
                    .inc();
            }
            if bad_input || !allow {
                record(if allow { "error" } else { "denied" }, &reason, None);
            }
            if allow {
                answer(StatusCode::OK, json!({ "Allow": true }))
            } else {
                let msg = format!("riposte: cannot check this request: {reason} (images.authz.on_undecided: deny)");
                answer(StatusCode::OK, json!({ "Allow": false, "Msg": msg }))
            }
        }
    }
}

enum Verdict {
    Revoked {
        name: String,
        entry: Arc<Revocation>,
    },
    Clean,
    Unsure {
        reason: String,
        bad_input: bool,
    },
}

async fn check(p: &Plugin, t: &Target) -> Verdict {
    let (image, ask_daemon) = match t {
        Target::Nothing => return Verdict::Clean,
        Target::Unreadable(reason) => {
            return Verdict::Unsure {
                reason: reason.clone(),
                bad_input: true,
            }
        }
        Target::Create { image, .. } => (image, true),
        // The pulled image is not local yet: its name (and digest, if given) is what there is.
        Target::Pull { reference } => (reference, false),
    };
    let given = vec![image.clone()];
    if let Some((name, entry)) = covering(&p.index, &given, &[]) {
        return Verdict::Revoked { name, entry };
    }
    let mut unsure = None;
    if ask_daemon {
        match p.daemon.inspect(image).await {
            Ok(Some(known)) => {
                if let Some((name, entry)) = covering(&p.index, &known.tags, &known.digests) {
                    return Verdict::Revoked { name, entry };
                }
            }
            Ok(None) => {}
            Err(e) => unsure = Some(format!("cannot learn the digests of {}: {e}", cut(image))),
        }
    }
    if !p.index.is_ready() {
        return Verdict::Unsure {
            reason: "the revocation list is not read yet".to_owned(),
            bad_input: false,
        };
    }
    match unsure {
        Some(reason) => Verdict::Unsure {
            reason,
            bad_input: false,
        },
        None => Verdict::Clean,
    }
}

fn malformed(p: &Plugin, label: &'static str, reason: &str) -> Response {
    p.metrics
        .enforcement_malformed
        .get_or_create(&Metrics::labels2(("point", "authz"), ("reason", label)))
        .inc();
    let text = format!("riposte: the AuthZ request is not one dockerd sends: {reason}");
    tracing::info!(reason = %text, "authz: malformed request");
    let mut rec = p.audit.record("authz", "error");
    rec.reason = Some(text.clone());
    p.audit.write(rec);
    answer(StatusCode::BAD_REQUEST, json!({ "Err": text }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use riposte_connectors::revocation::{Decision, State as EntryState};

    fn b64(s: &str) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    fn req(method: &str, uri: &str, body: Option<&str>) -> AuthzRequest {
        AuthzRequest {
            user: None,
            request_method: Some(method.into()),
            request_uri: Some(uri.into()),
            request_body: body.map(b64),
        }
    }

    #[test]
    fn base64_round_trips() {
        for s in ["", "a", "ab", "abc", "abcd", r#"{"Image":"busybox"}"#] {
            assert_eq!(base64_decode(&b64(s)).unwrap(), s.as_bytes(), "{s}");
        }
        assert_eq!(base64_decode("not base64!"), None);
        assert_eq!(base64_decode("QQ"), Some(b"A".to_vec()));
        assert_eq!(base64_decode("Q"), None);
    }

    #[test]
    fn container_creates_and_pulls_are_read() {
        assert_eq!(
            target(&req(
                "POST",
                "/v1.41/containers/create?name=web",
                Some(r#"{"Image":"registry.local/app:1","Cmd":["sh"]}"#)
            )),
            Target::Create {
                image: "registry.local/app:1".into(),
                name: Some("web".into())
            }
        );
        assert_eq!(
            target(&req(
                "POST",
                "/containers/create",
                Some(r#"{"Image":"busybox"}"#)
            )),
            Target::Create {
                image: "busybox".into(),
                name: None
            }
        );
        assert_eq!(
            target(&req(
                "POST",
                "/v1.41/images/create?fromImage=registry.local%2Fapp&tag=1",
                None
            )),
            Target::Pull {
                reference: "registry.local/app:1".into()
            }
        );
        let d = format!("sha256:{}", "c".repeat(64));
        assert_eq!(
            target(&req(
                "POST",
                &format!("/images/create?fromImage=app&tag={d}"),
                None
            )),
            Target::Pull {
                reference: format!("app@{d}")
            }
        );
        for (m, u) in [
            ("GET", "/v1.41/containers/json"),
            ("POST", "/v1.41/containers/abc/start"),
            ("GET", "/v1.41/images/busybox/json"),
            ("POST", "/images/create?fromSrc=-"),
            ("POST", "/v1.41/containers/create/x"),
        ] {
            assert_eq!(target(&req(m, u, None)), Target::Nothing, "{m} {u}");
        }
    }

    #[test]
    fn bodies_it_cannot_read_are_unreadable_not_a_panic() {
        let create = |body: Option<&str>| target(&req("POST", "/v1.41/containers/create", body));
        for body in [
            None,
            Some("not json"),
            Some(r#"{"Cmd":["sh"]}"#),
            Some(r#"{"Image":7}"#),
        ] {
            assert!(matches!(create(body), Target::Unreadable(_)), "{body:?}");
        }
        let mut r = req("POST", "/containers/create", None);
        r.request_body = Some("%%%".into());
        assert_eq!(
            target(&r),
            Target::Unreadable("the request body is not base64".into())
        );
        let mut r = req("POST", "not a uri at all \u{0}", None);
        r.request_method = None;
        assert_eq!(target(&r), Target::Nothing);
    }

    #[test]
    fn a_digest_revocation_covers_tags_and_repository_digests() {
        let d = format!("sha256:{}", "d".repeat(64));
        let e = Revocation {
            digest: Some(d.clone()),
            reference: None,
            state: EntryState::Revoked,
            reason: "CVE-1".into(),
            findings: vec![],
            event_id: None,
            playbook: None,
            run_id: None,
            revoked: Decision {
                by: "alice".into(),
                at: "2026-11-23T12:00:00Z".into(),
                reason: None,
            },
            reinstated: None,
            registry: None,
        };
        let index = RevocationIndex::new();
        index.apply(&e.key().unwrap(), Some(&serde_json::to_vec(&e).unwrap()));
        index.mark_ready();
        let tags = vec!["registry.local/app:1".to_owned()];
        assert!(covering(&index, &tags, &[]).is_none());
        let (name, _) = covering(&index, &tags, &[format!("registry.local/app@{d}")]).unwrap();
        assert_eq!(name, format!("registry.local/app@{d}"));
        assert_eq!(
            revoked_message("registry.local/app:1", &e),
            "riposte: image registry.local/app:1 is revoked: CVE-1 (revoked by alice at 2026-11-23T12:00:00Z)"
        );
    }

    #[test]
    fn the_version_prefix_is_dropped() {
        assert_eq!(api_path("/v1.41/containers/create"), "/containers/create");
        assert_eq!(api_path("/containers/create"), "/containers/create");
        assert_eq!(api_path("/volumes/create"), "/volumes/create");
        assert_eq!(api_path("/v/x"), "/v/x");
    }
}
