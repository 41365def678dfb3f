//! The Kubernetes validating admission webhook: `POST /v1/admission` over HTTPS, answering
//! `admission.k8s.io/v1` AdmissionReviews from the in-memory [`RevocationIndex`].
//!
//! Owns the decision ([`decide`]: review bytes and the index in, the answer out, no I/O, so a
//! benchmark can call it in-process), the webhook's server, and the pieces the Docker AuthZ
//! plugin shares with it: the message a denial carries ([`revoked_message`]), the queue that
//! writes enforcement records to the audit trail off the request path ([`EnforcementAudit`]),
//! and the start-up error ([`EnforcementError`]).
//!
//! What is checked: the images of a Pod (containers, init and ephemeral containers) and of the
//! pod template of a Deployment, ReplicaSet, StatefulSet, DaemonSet, Job, CronJob,
//! ReplicationController or PodTemplate. Other kinds and DELETE/CONNECT are allowed. On UPDATE
//! only images the update brings in are checked, so labelling, annotating or scaling an object
//! that already runs a revoked image (what a response playbook does) is not refused. A revoked
//! image is always denied; an image riposte cannot check (the list is not read yet, or the
//! string is not a reference) is answered per `on_undecided`. A body that is not an
//! AdmissionReview v1 is answered 400 (the API server then applies the webhook's
//! `failurePolicy`). It never changes the list and never calls out.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::body::BodyError;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use riposte_connectors::revocation::{ImageRef, Revocation, RevocationIndex};
use serde::Deserialize;
use serde_json::{json, Value};
use thiserror::Error;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::audit::{AuditRecord, AuditSink, RecordKind};
use crate::clock::Clock;
use crate::config::{AdmissionConfig, Undecided};
use crate::ingest::tls::{self, Listener};
use crate::metrics::Metrics;

/// The webhook's path.
pub const PATH: &str = "/v1/admission";
/// The largest review read (the API server's own limit on an object is about 3 MiB).
pub const MAX_BODY: usize = 3 * 1024 * 1024;
/// The only review version answered.
pub const API_VERSION: &str = "admission.k8s.io/v1";
/// Time the API server gets to send its body.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest image string quoted back in a message.
const MAX_QUOTED: usize = 256;
/// Findings named in a message before "and N more".
const MAX_FINDINGS: usize = 10;

/// An enforcement point could not start.
#[derive(Debug, Error)]
pub enum EnforcementError {
    /// The webhook's TLS files cannot be used.
    #[error("images.admission.tls: {0}")]
    Tls(String),
    /// The webhook's address cannot be bound.
    #[error("cannot serve the admission webhook on {addr}: {reason}")]
    Listen {
        /// Where.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The AuthZ plugin's socket cannot be made.
    #[error("cannot serve the Docker AuthZ plugin on `{path}`: {reason}")]
    Socket {
        /// The socket's path.
        path: std::path::PathBuf,
        /// Why.
        reason: String,
    },
    /// The AuthZ plugin's `docker_host` is not usable.
    #[error("images.authz.docker_host `{host}`: {reason}")]
    DockerHost {
        /// What was given.
        host: String,
        /// Why it is not usable.
        reason: String,
    },
}

/// Why a request to the webhook is not an AdmissionReview it can answer.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ReviewError {
    /// The body is over [`MAX_BODY`].
    #[error("the AdmissionReview is larger than {0} bytes")]
    TooLarge(usize),
    /// The body could not be read.
    #[error("cannot read the AdmissionReview: {0}")]
    Read(String),
    /// Not JSON, or JSON of the wrong shape.
    #[error("the body is not an AdmissionReview: {0}")]
    NotReview(String),
    /// Another apiVersion.
    #[error("the AdmissionReview's apiVersion is `{0}`; riposte answers `admission.k8s.io/v1` only (set `admissionReviewVersions: [v1]` in the webhook configuration)")]
    Version(String),
    /// Another kind.
    #[error("the body's kind is `{0}`, not `AdmissionReview`")]
    Kind(String),
    /// No `request`.
    #[error("the AdmissionReview has no `request`")]
    NoRequest,
    /// No `request.uid`.
    #[error("the AdmissionReview has no `request.uid` (its answer must carry it)")]
    NoUid,
}

impl ReviewError {
    /// The `reason` label of `riposte_enforcement_malformed_requests_total`.
    pub fn label(&self) -> &'static str {
        match self {
            ReviewError::TooLarge(_) => "too_large",
            ReviewError::Read(_) => "unreadable",
            ReviewError::NotReview(_) => "not_a_review",
            ReviewError::Version(_) => "api_version",
            ReviewError::Kind(_) => "kind",
            ReviewError::NoRequest => "no_request",
            ReviewError::NoUid => "no_uid",
        }
    }
}

#[derive(Debug, Deserialize)]
struct Envelope {
    #[serde(rename = "apiVersion", default)]
    api_version: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    request: Option<Request>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Request {
    #[serde(default)]
    uid: Option<String>,
    #[serde(default)]
    kind: Option<Gvk>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    operation: Option<String>,
    #[serde(default)]
    user_info: Option<UserInfo>,
    #[serde(default)]
    object: Option<Value>,
    #[serde(default)]
    old_object: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct Gvk {
    #[serde(default)]
    kind: String,
}

#[derive(Debug, Deserialize)]
struct UserInfo {
    #[serde(default)]
    username: Option<String>,
}

/// An image refused because the list revokes it.
#[derive(Debug, Clone)]
pub struct DeniedImage {
    /// The image as the object spells it.
    pub image: String,
    /// The entry that revokes it.
    pub entry: Arc<Revocation>,
    /// The message given for it.
    pub message: String,
}

/// An image riposte could not check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UncheckedImage {
    /// The image as the object spells it.
    pub image: String,
    /// Why it could not be checked.
    pub reason: String,
    /// Whether the input is at fault (the string is not a reference), rather than the engine.
    pub bad_input: bool,
}

/// The decision on one AdmissionReview.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// The review's `request.uid`.
    pub uid: String,
    /// Whether the request is allowed.
    pub allowed: bool,
    /// Images refused because they are revoked.
    pub denied: Vec<DeniedImage>,
    /// Images that could not be checked (answered per `on_undecided`).
    pub unchecked: Vec<UncheckedImage>,
    /// `Kind namespace/name` of the object.
    pub object: String,
    /// `request.userInfo.username`.
    pub user: Option<String>,
    /// `CREATE`, `UPDATE`, ...
    pub operation: String,
    /// The AdmissionReview to send back.
    pub response: Value,
}

/// Decides one AdmissionReview v1 from the index: the images of the object (see the module
/// documentation for which) are looked up by digest and by tagged reference; any revoked one
/// denies the request with a 403 status naming the image, the reason, the findings and the
/// playbook and time of the revocation. Images that cannot be checked (the index is not ready,
/// or the string is not a reference) allow the request with a warning, or deny it, per
/// `on_undecided`. Pure and synchronous (no I/O, no allocation beyond the review's own), so
/// `riposte bench admission` measures exactly what the webhook does per request.
pub fn decide(
    body: &[u8],
    index: &RevocationIndex,
    on_undecided: Undecided,
) -> Result<Verdict, ReviewError> {
    if body.len() > MAX_BODY {
        return Err(ReviewError::TooLarge(MAX_BODY));
    }
    let envelope: Envelope =
        serde_json::from_slice(body).map_err(|e| ReviewError::NotReview(cut(&e.to_string())))?;
    let version = envelope.api_version.unwrap_or_default();
    if version != API_VERSION {
        return Err(ReviewError::Version(cut(&version)));
    }
    let kind = envelope.kind.unwrap_or_default();
    if kind != "AdmissionReview" {
        return Err(ReviewError::Kind(cut(&kind)));
    }
    let request = envelope.request.ok_or(ReviewError::NoRequest)?;
    let uid = request
        .uid
        .filter(|u| !u.is_empty())
        .ok_or(ReviewError::NoUid)?;
    let kind = request.kind.map(|k| k.kind).unwrap_or_default();
    let operation = request.operation.unwrap_or_default();
    let object = match (&request.namespace, &request.name) {
        (Some(ns), Some(n)) if !ns.is_empty() => format!("{kind} {ns}/{n}"),
        (_, Some(n)) if !n.is_empty() => format!("{kind} {n}"),
        (Some(ns), _) if !ns.is_empty() => format!("{kind} {ns}/(generated name)"),
        _ => kind.clone(),
    };
    let user = request.user_info.and_then(|u| u.username);

    let mut denied = Vec::new();
    let mut unchecked = Vec::new();
    if matches!(operation.as_str(), "CREATE" | "UPDATE") {
        let images = request
            .object
            .as_ref()
            .map(|o| images_of(&kind, o))
            .unwrap_or_default();
        let before = match (&operation[..], &request.old_object) {
            ("UPDATE", Some(old)) => images_of(&kind, old),
            _ => Vec::new(),
        };
        let ready = index.is_ready();
        let mut seen: Vec<&ImageField> = Vec::new();
        for image in &images {
            if before.contains(image) || seen.contains(&image) {
                continue;
            }
            seen.push(image);
            let text = match image {
                ImageField::Text(t) => *t,
                ImageField::NotText => {
                    unchecked.push(UncheckedImage {
                        image: "(not a string)".to_owned(),
                        reason: "a container's `image` is not a string".to_owned(),
                        bad_input: true,
                    });
                    continue;
                }
            };
            match ImageRef::parse(text) {
                Ok(r) => match index.lookup(&r) {
                    Some(entry) => denied.push(DeniedImage {
                        message: revoked_message(text, &entry),
                        image: cut(text),
                        entry,
                    }),
                    None if !ready => unchecked.push(UncheckedImage {
                        image: cut(text),
                        reason: "the revocation list is not read yet".to_owned(),
                        bad_input: false,
                    }),
                    None => {}
                },
                Err(e) => unchecked.push(UncheckedImage {
                    image: cut(text),
                    reason: e.to_string(),
                    bad_input: true,
                }),
            }
        }
    }

    let (allowed, result) = if !denied.is_empty() {
        let message = denied
            .iter()
            .map(|d| d.message.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        (false, Some(message))
    } else if !unchecked.is_empty() && on_undecided == Undecided::Deny {
        let message = unchecked
            .iter()
            .map(|u| {
                format!(
                    "riposte: cannot check image {}: {} (images.admission.on_undecided: deny)",
                    u.image, u.reason
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        (false, Some(message))
    } else {
        (true, None)
    };
    let mut response = serde_json::Map::new();
    response.insert("uid".into(), Value::String(uid.clone()));
    response.insert("allowed".into(), Value::Bool(allowed));
    if let Some(message) = result {
        response.insert(
            "status".into(),
            json!({ "code": 403, "reason": "Forbidden", "message": message }),
        );
    } else if !unchecked.is_empty() {
        let warnings = unchecked
            .iter()
            .map(|u| {
                Value::String(format!(
                    "riposte could not check image {}: {}; allowed (on_undecided: allow)",
                    u.image, u.reason
                ))
            })
            .collect();
        response.insert("warnings".into(), warnings);
    }
    Ok(Verdict {
        response: json!({ "apiVersion": API_VERSION, "kind": "AdmissionReview", "response": response }),
        uid,
        allowed,
        denied,
        unchecked,
        object,
        user,
        operation,
    })
}

/// A container's `image`, as found in the object.
#[derive(Debug, PartialEq, Eq)]
enum ImageField<'a> {
    Text(&'a str),
    NotText,
}

/// The images of an object of `kind`: its pod spec's containers, init and ephemeral containers.
fn images_of<'a>(kind: &str, object: &'a Value) -> Vec<ImageField<'a>> {
    let at = |v: &'a Value, path: &[&str]| path.iter().try_fold(v, |v, k| v.get(*k));
    let spec = match kind {
        "Pod" => at(object, &["spec"]),
        "Deployment"
        | "ReplicaSet"
        | "StatefulSet"
        | "DaemonSet"
        | "Job"
        | "ReplicationController" => at(object, &["spec", "template", "spec"]),
        "CronJob" => at(object, &["spec", "jobTemplate", "spec", "template", "spec"]),
        "PodTemplate" => at(object, &["template", "spec"]),
        // The pods/ephemeralcontainers subresource.
        "EphemeralContainers" => Some(object),
        _ => None,
    };
    let Some(spec) = spec else {
        return Vec::new();
    };
    ["containers", "initContainers", "ephemeralContainers"]
        .iter()
        .filter_map(|list| spec.get(*list).and_then(Value::as_array))
        .flatten()
        .filter_map(|c| match c.get("image") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(ImageField::Text(s)),
            Some(_) => Some(ImageField::NotText),
        })
        .collect()
}

/// `riposte: image IMAGE is revoked: REASON (findings A, B, revoked by playbook P at T)`: the
/// message every enforcement point gives for a revoked image.
pub fn revoked_message(image: &str, entry: &Revocation) -> String {
    let mut parts = Vec::new();
    if !entry.findings.is_empty() {
        let mut named = entry
            .findings
            .iter()
            .take(MAX_FINDINGS)
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(", ");
        if entry.findings.len() > MAX_FINDINGS {
            named.push_str(&format!(
                " and {} more",
                entry.findings.len() - MAX_FINDINGS
            ));
        }
        parts.push(format!("findings {named}"));
    }
    let by = match &entry.playbook {
        Some(p) => format!("playbook {p}"),
        None => entry.revoked.by.clone(),
    };
    parts.push(format!("revoked by {by} at {}", entry.revoked.at));
    format!(
        "riposte: image {} is revoked: {} ({})",
        cut(image),
        entry.reason,
        parts.join(", ")
    )
}

/// What an enforcement record says about the revocation behind a denial.
pub fn revocation_summary(entry: &Revocation) -> Value {
    json!({
        "key": entry.key(),
        "digest": entry.digest,
        "reference": entry.reference,
        "reason": entry.reason,
        "findings": entry.findings,
        "event_id": entry.event_id,
        "playbook": entry.playbook,
        "run_id": entry.run_id,
        "revoked_at": entry.revoked.at,
    })
}

/// At most [`MAX_QUOTED`] characters of untrusted text, for messages.
pub fn cut(s: &str) -> String {
    if s.chars().count() <= MAX_QUOTED {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(MAX_QUOTED).collect();
        t.push('…');
        t
    }
}

/// Writes enforcement records to the audit trail from a bounded queue, so a decision never
/// waits for NATS. A full queue (the audit stream is away and records pile up) drops the
/// record, logs it and counts it (`riposte_enforcement_audit_failures_total`).
#[derive(Debug, Clone)]
pub struct EnforcementAudit {
    tx: mpsc::Sender<AuditRecord>,
    replica: String,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
}

/// Records waiting to be written, at most.
const AUDIT_QUEUE: usize = 4096;
/// Records written in one audit message, at most.
const AUDIT_BATCH: usize = 256;

impl EnforcementAudit {
    /// Starts the writer; it drains the queue and stops once `shutdown` is cancelled.
    pub fn start(
        sink: AuditSink,
        replica: String,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> (EnforcementAudit, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(AUDIT_QUEUE);
        let writer = tokio::spawn(write_records(
            sink,
            rx,
            replica.clone(),
            metrics.clone(),
            shutdown,
        ));
        (
            EnforcementAudit {
                tx,
                replica,
                clock,
                metrics,
            },
            writer,
        )
    }

    /// A fresh enforcement record of `action` (`admission`, `authz`) with `outcome`.
    pub fn record(&self, action: &str, outcome: &str) -> AuditRecord {
        let mut rec = AuditRecord::new(
            RecordKind::Enforcement,
            outcome,
            self.clock.now(),
            &self.replica,
        );
        rec.action = Some(action.to_owned());
        rec
    }

    /// Queues a record for the audit trail.
    pub fn write(&self, record: AuditRecord) {
        if let Err(e) = self.tx.try_send(record) {
            self.metrics.enforcement_audit_failures.inc();
            tracing::error!(error = %e, "an enforcement record is not in the audit trail (queue full or closed)");
        }
    }
}

async fn write_records(
    sink: AuditSink,
    mut rx: mpsc::Receiver<AuditRecord>,
    replica: String,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let started = chrono::Utc::now().timestamp_micros();
    let mut buf = Vec::with_capacity(AUDIT_BATCH);
    loop {
        let got = tokio::select! {
            n = rx.recv_many(&mut buf, AUDIT_BATCH) => n,
            () = shutdown.cancelled() => {
                rx.close();
                rx.recv_many(&mut buf, AUDIT_QUEUE).await
            }
        };
        if got == 0 {
            return;
        }
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let mut batch = sink.batch(format!("enforcement:{replica}:{started}:{seq}"));
        let n = buf.len();
        for rec in buf.drain(..) {
            batch.add(rec);
        }
        if let Err(e) = batch.commit().await {
            metrics.enforcement_audit_failures.inc_by(n as u64);
            tracing::error!(error = %e, records = n, "enforcement records are not in the audit trail");
        }
    }
}

/// The webhook being served.
#[derive(Debug)]
pub struct Served {
    /// The bound address.
    pub addr: SocketAddr,
    /// Ends when the webhook has stopped after `shutdown`.
    pub task: JoinHandle<()>,
}

#[derive(Debug)]
struct Webhook {
    index: Arc<RevocationIndex>,
    on_undecided: Undecided,
    metrics: Arc<Metrics>,
    audit: EnforcementAudit,
}

/// Binds `config.listen` with `config.tls` and serves the webhook until `shutdown`.
pub async fn serve(
    config: &AdmissionConfig,
    index: Arc<RevocationIndex>,
    metrics: Arc<Metrics>,
    audit: EnforcementAudit,
    shutdown: CancellationToken,
) -> Result<Served, EnforcementError> {
    let tls = tls::server_config(&config.tls).map_err(|e| EnforcementError::Tls(e.to_string()))?;
    let listen_err = |e: std::io::Error| EnforcementError::Listen {
        addr: config.listen,
        reason: e.to_string(),
    };
    let listener = Listener::bind(config.listen, Some(tls), metrics.clone())
        .await
        .map_err(listen_err)?;
    let addr = listener.local_addr().map_err(listen_err)?;
    let webhook = Arc::new(Webhook {
        index,
        on_undecided: config.on_undecided,
        metrics,
        audit,
    });
    let app = Router::new()
        .route(PATH, post(review))
        .layer(DefaultBodyLimit::disable())
        .with_state(webhook);
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "admission webhook stopped");
        }
    });
    tracing::info!(%addr, "admission webhook on https://{addr}{PATH}");
    Ok(Served { addr, task })
}

async fn read_body(body: Body) -> Result<bytes::Bytes, ReviewError> {
    crate::body::read(body, MAX_BODY, BODY_TIMEOUT)
        .await
        .map_err(|e| match e {
            BodyError::TooLarge(n) => ReviewError::TooLarge(n),
            other => ReviewError::Read(other.to_string()),
        })
}

async fn review(State(w): State<Arc<Webhook>>, body: Body) -> Response {
    let body = match read_body(body).await {
        Ok(b) => b,
        Err(e) => return malformed(&w, &e),
    };
    let started = Instant::now();
    let verdict = decide(&body, &w.index, w.on_undecided);
    w.metrics
        .admission_latency
        .observe(started.elapsed().as_secs_f64());
    match verdict {
        Ok(v) => {
            account(&w, &v);
            axum::Json(v.response).into_response()
        }
        Err(e) => malformed(&w, &e),
    }
}

fn account(w: &Webhook, v: &Verdict) {
    let decision = if v.allowed { "allowed" } else { "denied" };
    w.metrics
        .admission_decisions
        .get_or_create(&Metrics::label("decision", decision))
        .inc();
    if !v.unchecked.is_empty() && v.denied.is_empty() {
        w.metrics
            .enforcement_undecided
            .get_or_create(&Metrics::labels2(
                ("point", "admission"),
                ("answer", decision),
            ))
            .inc();
        tracing::warn!(uid = %v.uid, object = %v.object, unchecked = ?v.unchecked, decision, "admission: images could not be checked");
    }
    let base = |outcome: &str, image: &str, reason: &str| {
        let mut rec = w.audit.record("admission", outcome);
        rec.reason = Some(reason.to_owned());
        rec.output = Some(json!({
            "image": image,
            "object": v.object,
            "user": v.user,
            "operation": v.operation,
            "uid": v.uid,
        }));
        rec
    };
    for d in &v.denied {
        tracing::info!(uid = %v.uid, object = %v.object, image = %d.image, user = ?v.user, "admission: denied a revoked image");
        let mut rec = base("denied", &d.image, &d.message);
        if let Some(out) = rec.output.as_mut().and_then(Value::as_object_mut) {
            out.insert("revocation".into(), revocation_summary(&d.entry));
        }
        w.audit.write(rec);
    }
    if v.denied.is_empty() {
        for u in &v.unchecked {
            if u.bad_input || !v.allowed {
                let outcome = if v.allowed { "error" } else { "denied" };
                w.audit.write(base(outcome, &u.image, &u.reason));
            }
        }
    }
}

fn malformed(w: &Webhook, e: &ReviewError) -> Response {
    w.metrics
        .enforcement_malformed
        .get_or_create(&Metrics::labels2(
            ("point", "admission"),
            ("reason", e.label()),
        ))
        .inc();
    tracing::info!(error = %e, "admission: malformed review");
    let mut rec = w.audit.record("admission", "error");
    rec.reason = Some(e.to_string());
    w.audit.write(rec);
    (StatusCode::BAD_REQUEST, format!("riposte: {e}\n")).into_response()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use riposte_connectors::revocation::{Decision, State as EntryState};

    fn entry(digest: Option<&str>, reference: Option<&str>) -> Revocation {
        Revocation {
            digest: digest.map(str::to_owned),
            reference: reference.map(str::to_owned),
            state: EntryState::Revoked,
            reason: "critical vulnerabilities with a fix".into(),
            findings: vec!["CVE-2024-0001".into(), "CVE-2024-0002".into()],
            event_id: Some("ev-1".into()),
            playbook: Some("revoke-vulnerable-images".into()),
            run_id: Some("run-1".into()),
            revoked: Decision {
                by: "riposte".into(),
                at: "2026-11-23T12:00:00Z".into(),
                reason: None,
            },
            reinstated: None,
            registry: None,
        }
    }

    const DIGEST: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    fn index() -> Arc<RevocationIndex> {
        let index = RevocationIndex::new();
        for e in [
            entry(None, Some("registry.local/shop/web:1.4")),
            entry(Some(DIGEST), Some("registry.local/db:15")),
        ] {
            index.apply(&e.key().unwrap(), Some(&serde_json::to_vec(&e).unwrap()));
        }
        index.mark_ready();
        index
    }

    fn review(kind: &str, operation: &str, object: Value, old: Option<Value>) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "", "version": "v1", "kind": kind},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "shop",
                "name": "web",
                "operation": operation,
                "userInfo": {"username": "alice", "groups": ["system:authenticated"]},
                "object": object,
                "oldObject": old,
            }
        }))
        .unwrap()
    }

    fn pod(images: &[&str]) -> Value {
        let containers: Vec<Value> = images
            .iter()
            .enumerate()
            .map(|(i, im)| json!({"name": format!("c{i}"), "image": im}))
            .collect();
        json!({"metadata": {"name": "web"}, "spec": {"containers": containers}})
    }

    #[test]
    fn a_pod_from_a_revoked_image_is_denied_with_the_reason() {
        let v = decide(
            &review("Pod", "CREATE", pod(&["registry.local/shop/web:1.4"]), None),
            &index(),
            Undecided::Allow,
        )
        .unwrap();
        assert!(!v.allowed);
        assert_eq!(v.response["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(v.response["kind"], "AdmissionReview");
        let r = &v.response["response"];
        assert_eq!(r["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
        assert_eq!(r["allowed"], false);
        assert_eq!(r["status"]["code"], 403);
        assert_eq!(r["status"]["reason"], "Forbidden");
        assert_eq!(
            r["status"]["message"],
            "riposte: image registry.local/shop/web:1.4 is revoked: critical vulnerabilities with a fix \
             (findings CVE-2024-0001, CVE-2024-0002, revoked by playbook revoke-vulnerable-images at 2026-11-23T12:00:00Z)"
        );
        assert_eq!(v.object, "Pod shop/web");
        assert_eq!(v.user.as_deref(), Some("alice"));
    }

    #[test]
    fn a_digest_is_caught_whatever_the_name_and_a_clean_image_passes() {
        let by_digest = format!("elsewhere.example/db@{DIGEST}");
        let v = decide(
            &review("Pod", "CREATE", pod(&["busybox", &by_digest]), None),
            &index(),
            Undecided::Allow,
        )
        .unwrap();
        assert!(!v.allowed);
        assert_eq!(v.denied.len(), 1);
        assert_eq!(v.denied[0].image, by_digest);
        let clean = decide(
            &review("Pod", "CREATE", pod(&["registry.local/shop/web:1.5"]), None),
            &index(),
            Undecided::Deny,
        )
        .unwrap();
        assert!(clean.allowed);
        assert_eq!(
            clean.response["response"],
            json!({"uid": "705ab4f5-6393-11e8-b7cc-42010a800002", "allowed": true})
        );
    }

    #[test]
    fn workloads_are_checked_through_their_pod_templates() {
        let template = |image: &str| json!({"spec": {"initContainers": [{"name": "i", "image": image}], "containers": []}});
        for (kind, object) in [
            (
                "Deployment",
                json!({"spec": {"template": template("registry.local/db:15")}}),
            ),
            (
                "ReplicaSet",
                json!({"spec": {"template": template("registry.local/db:15")}}),
            ),
            (
                "StatefulSet",
                json!({"spec": {"template": template("registry.local/db:15")}}),
            ),
            (
                "DaemonSet",
                json!({"spec": {"template": template("registry.local/db:15")}}),
            ),
            (
                "Job",
                json!({"spec": {"template": template("registry.local/db:15")}}),
            ),
            (
                "CronJob",
                json!({"spec": {"jobTemplate": {"spec": {"template": template("registry.local/db:15")}}}}),
            ),
            (
                "EphemeralContainers",
                json!({"ephemeralContainers": [{"name": "debug", "image": "registry.local/db:15"}]}),
            ),
        ] {
            let v = decide(
                &review(kind, "CREATE", object, None),
                &index(),
                Undecided::Allow,
            )
            .unwrap();
            assert!(!v.allowed, "{kind}");
        }
        let service = json!({"spec": {"template": template("registry.local/db:15")}});
        let v = decide(
            &review("Service", "CREATE", service, None),
            &index(),
            Undecided::Deny,
        )
        .unwrap();
        assert!(v.allowed);
    }

    #[test]
    fn deletes_and_updates_that_keep_an_image_are_allowed() {
        let revoked = pod(&["registry.local/shop/web:1.4"]);
        let del = decide(
            &review("Pod", "DELETE", Value::Null, Some(revoked.clone())),
            &index(),
            Undecided::Deny,
        )
        .unwrap();
        assert!(del.allowed);
        let relabel = decide(
            &review("Pod", "UPDATE", revoked.clone(), Some(revoked)),
            &index(),
            Undecided::Deny,
        )
        .unwrap();
        assert!(relabel.allowed);
        let bring_in = decide(
            &review(
                "Pod",
                "UPDATE",
                pod(&["registry.local/shop/web:1.4"]),
                Some(pod(&["registry.local/shop/web:1.5"])),
            ),
            &index(),
            Undecided::Allow,
        )
        .unwrap();
        assert!(!bring_in.allowed);
    }

    #[test]
    fn what_cannot_be_checked_follows_on_undecided() {
        let bad = review("Pod", "CREATE", pod(&["Not A Reference"]), None);
        let open = decide(&bad, &index(), Undecided::Allow).unwrap();
        assert!(open.allowed);
        let warning = open.response["response"]["warnings"][0].as_str().unwrap();
        assert!(
            warning.contains("could not check image Not A Reference"),
            "{warning}"
        );
        assert!(open.unchecked[0].bad_input);
        let closed = decide(&bad, &index(), Undecided::Deny).unwrap();
        assert!(!closed.allowed);
        assert!(closed.response["response"]["status"]["message"]
            .as_str()
            .unwrap()
            .contains("on_undecided: deny"));

        let not_ready = RevocationIndex::new();
        let clean = review("Pod", "CREATE", pod(&["busybox"]), None);
        let v = decide(&clean, &not_ready, Undecided::Allow).unwrap();
        assert!(v.allowed);
        assert_eq!(v.unchecked[0].reason, "the revocation list is not read yet");
        assert!(!decide(&clean, &not_ready, Undecided::Deny).unwrap().allowed);
        // A revoked image is denied even before the list is fully read.
        let e = entry(None, Some("docker.io/library/busybox:latest"));
        not_ready.apply(&e.key().unwrap(), Some(&serde_json::to_vec(&e).unwrap()));
        assert!(
            !decide(&clean, &not_ready, Undecided::Allow)
                .unwrap()
                .allowed
        );
    }

    #[test]
    fn malformed_reviews_say_what_is_wrong() {
        let idx = index();
        let err = |body: &[u8]| decide(body, &idx, Undecided::Allow).unwrap_err();
        assert!(matches!(err(b"not json"), ReviewError::NotReview(_)));
        assert!(matches!(err(b"[1,2]"), ReviewError::NotReview(_)));
        assert_eq!(
            err(br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"x"}}"#),
            ReviewError::Version("admission.k8s.io/v1beta1".into())
        );
        assert_eq!(
            err(br#"{"apiVersion":"admission.k8s.io/v1","kind":"Pod"}"#),
            ReviewError::Kind("Pod".into())
        );
        assert_eq!(
            err(br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#),
            ReviewError::NoRequest
        );
        assert_eq!(
            err(br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"operation":"CREATE"}}"#),
            ReviewError::NoUid
        );
        assert!(matches!(
            err(br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":5}}"#),
            ReviewError::NotReview(_)
        ));
        let big = vec![b' '; MAX_BODY + 1];
        assert_eq!(err(&big), ReviewError::TooLarge(MAX_BODY));
        let e = err(br#"{"apiVersion":"v2","kind":"AdmissionReview"}"#).to_string();
        assert!(e.contains("admissionReviewVersions: [v1]"), "{e}");
        // A container whose image is not a string is unchecked, not a panic.
        let odd = review(
            "Pod",
            "CREATE",
            json!({"spec": {"containers": [{"image": 7}, "x", null]}}),
            None,
        );
        let v = decide(&odd, &idx, Undecided::Allow).unwrap();
        assert!(v.allowed && v.unchecked.len() == 1);
    }

    proptest::proptest! {
        #[test]
        fn no_review_makes_the_decision_panic(s in ".{0,400}", kind in "(Pod|Deployment|CronJob|x)") {
            let idx = index();
            let _ = decide(s.as_bytes(), &idx, Undecided::Allow);
            let wrapped = review(&kind, "CREATE", json!({"spec": {"containers": [{"image": s}],
                "template": {"spec": {"containers": [{"image": s}]}}}}), None);
            let _ = decide(&wrapped, &idx, Undecided::Deny);
        }
    }
}
