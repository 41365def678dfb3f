//! The ingest gateway: `POST /v1/events/{format}` turns a producer's webhook into the same NATS
//! message a producer on the bus would send, on `riposte.in.<format>`.
//!
//! Owns the HTTP side of ingestion, in this order: the format in the path (404 with the list of
//! formats), the sender's credentials ([`auth`]: bearer token, HMAC signature, or a mutual-TLS
//! client certificate; 401 otherwise), the body limit (413), the format's normalizer as a
//! check (400 with its reason: a payload the engine could not read is the sender's error and is
//! never published), then one JetStream publish whose `Nats-Msg-Id` makes a retried delivery
//! stored once, answered 202 with the event ids and the stream position, or 503 with
//! `Retry-After` when NATS does not take it. The sender's name travels as the
//! [`INGEST_SOURCE_HEADER`](crate::bus::INGEST_SOURCE_HEADER) header. `/healthz` and `/readyz`
//! answer without credentials. It never matches, runs or audits: the engine does that when it
//! consumes the message, like any other. The same credentials, when the config names them in
//! `approval_senders`, may decide steps that wait for approval ([`approvals`]).

mod approvals;
pub mod auth;
pub mod tls;

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::body::BodyError;
use async_nats::jetstream::{self, context::PublishErrorKind};
use axum::body::Body;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use sha2::{Digest, Sha256};
use thiserror::Error;
use tokio::task::JoinHandle;
use tokio_rustls::rustls;
use tokio_util::sync::CancellationToken;

use crate::bus::{self, BusError, INGEST_PREFIX, INGEST_SOURCE_HEADER};
use crate::clock::{Clock, SystemClock};
use crate::config::{Config, IngestConfig};
use crate::event::Source;
use crate::formats;
use crate::metrics::Metrics;

use self::auth::{AuthFailure, Credentials};
use self::tls::{Listener, Peer};

/// The header of a signed request's Unix time.
pub const TIMESTAMP_HEADER: &str = "x-riposte-timestamp";
/// The header of a request's HMAC signature.
pub const SIGNATURE_HEADER: &str = "x-riposte-signature";
/// The header a sender may give to name a delivery (its retries carry the same key).
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";
/// What a 503 asks the sender to wait before retrying, seconds.
const RETRY_AFTER_SECS: u64 = 5;
/// Time a sender gets to send its body (a trickling body would otherwise hold a connection).
const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the gateway could not start.
#[derive(Debug, Error)]
pub enum IngestError {
    /// A tokens or keys file could not be read or has problems.
    #[error("ingest credentials `{path}`: {reason}")]
    Credentials {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong (never the secret).
        reason: String,
    },
    /// A TLS file could not be used.
    #[error("ingest TLS `{path}`: {reason}")]
    Tls {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// No address to listen on.
    #[error(
        "the ingest gateway needs an address: set `ingest.listen` in the config or give --listen"
    )]
    NoListen,
    /// The config has no `ingest:` section.
    #[error("the config has no `ingest:` section: add one with `tokens_file` or `hmac_keys_file` (see the README, \"Ingest gateway\")")]
    NotConfigured,
    /// The address could not be bound.
    #[error("cannot serve the ingest gateway on {addr}: {reason}")]
    Listen {
        /// Where.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// NATS trouble at start.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// The approvals bucket could not be opened.
    #[error("the approvals endpoints: {0}")]
    Approvals(#[from] crate::state::StateError),
}

/// A gateway being served.
#[derive(Debug)]
pub struct Served {
    /// The bound address.
    pub addr: SocketAddr,
    /// Ends when the gateway has stopped after `shutdown` (requests in flight answered).
    pub task: JoinHandle<()>,
}

/// Everything a request needs, compiled once from the config.
#[derive(Debug)]
struct Gateway {
    credentials: Credentials,
    max_body: usize,
    publish_timeout: Duration,
    client: async_nats::Client,
    js: jetstream::Context,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
    /// The approvals bucket, when some credential may use the approvals endpoints.
    approvals: Option<crate::approval::Approvals>,
    /// The credential names that may.
    approval_senders: Vec<String>,
}

/// The parts of a gateway that come from files: read before anything connects, so a bad file
/// stops the start at once.
#[derive(Debug)]
pub struct Prepared {
    credentials: Credentials,
    tls: Option<Arc<rustls::ServerConfig>>,
    max_body: usize,
    publish_timeout: Duration,
    approval_senders: Vec<String>,
    kv_prefix: String,
    replicas: usize,
}

impl Prepared {
    /// Reads the credentials and TLS files of `ingest`.
    pub fn load(
        ingest: &IngestConfig,
        engine: &crate::config::EngineSettings,
        clock: Arc<dyn Clock>,
    ) -> Result<Prepared, IngestError> {
        let credentials = Credentials::load(
            ingest.tokens_file.as_deref(),
            ingest.hmac_keys_file.as_deref(),
            ingest.replay_window.get(),
            clock,
        )?;
        let tls = ingest.tls.as_ref().map(tls::server_config).transpose()?;
        Ok(Prepared {
            credentials,
            tls,
            max_body: ingest.body_limit(engine),
            publish_timeout: ingest.publish_timeout.get(),
            approval_senders: ingest.approval_senders.clone(),
            kv_prefix: engine.names.kv_prefix.clone(),
            replicas: 1,
        })
    }

    /// The replicas of the approvals bucket when the gateway is the one to create it
    /// (`nats.replicas`).
    pub fn with_replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas;
        self
    }

    /// Binds `listen` and serves the gateway until `shutdown`, publishing through `client`.
    pub async fn serve(
        self,
        listen: SocketAddr,
        client: async_nats::Client,
        metrics: Arc<Metrics>,
        clock: Arc<dyn Clock>,
        shutdown: CancellationToken,
    ) -> Result<Served, IngestError> {
        let listen_err = |e: std::io::Error| IngestError::Listen {
            addr: listen,
            reason: e.to_string(),
        };
        let listener = Listener::bind(listen, self.tls.clone(), metrics.clone())
            .await
            .map_err(listen_err)?;
        let local = listener.local_addr().map_err(listen_err)?;
        let tls = self.tls.is_some();
        let js = crate::bus::jetstream(client.clone());
        let approvals = if self.approval_senders.is_empty() {
            None
        } else {
            Some(crate::approval::Approvals::open(&js, &self.kv_prefix, self.replicas).await?)
        };
        let gateway = Arc::new(Gateway {
            credentials: self.credentials,
            max_body: self.max_body,
            publish_timeout: self.publish_timeout,
            js,
            client,
            metrics,
            clock,
            approvals,
            approval_senders: self.approval_senders,
        });
        let app = Router::new()
            .route("/v1/events/{format}", post(post_event))
            .route("/v1/approvals", get(approvals::list))
            .route("/v1/approvals/{run}/{step}", post(approvals::decide))
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(ready))
            .layer(DefaultBodyLimit::disable())
            .with_state(gateway);
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app.into_make_service_with_connect_info::<Peer>())
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "ingest gateway stopped");
            }
        });
        let scheme = if tls { "https" } else { "http" };
        tracing::info!(%local, "ingest gateway on {scheme}://{local}/v1/events/{{format}}");
        Ok(Served { addr: local, task })
    }
}

/// `riposte ingest`: the gateway alone, publishing to the NATS at `url`, until `shutdown`.
/// Creates the streams when no engine has yet (and leaves existing ones as they are).
pub async fn run(
    config: &Config,
    url: &str,
    listen: Option<SocketAddr>,
    shutdown: CancellationToken,
) -> Result<(), IngestError> {
    let ingest = config.ingest.as_ref().ok_or(IngestError::NotConfigured)?;
    let listen = listen.or(ingest.listen).ok_or(IngestError::NoListen)?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let prepared =
        Prepared::load(ingest, &config.engine, clock.clone())?.with_replicas(config.nats.replicas);
    let name = format!("riposte ingest {}", crate::engine::replica_name(config));
    let client = bus::connect(&config.nats, url, &name).await?;
    tracing::info!(%url, "connected to NATS");
    let js = bus::jetstream(client.clone());
    if js
        .get_stream(&config.engine.names.events_stream)
        .await
        .is_err()
    {
        bus::ensure_streams(&js, config).await?;
    }
    let metrics = Arc::new(Metrics::new());
    let addr = crate::metrics::serve(metrics.clone(), config.metrics.listen, shutdown.clone())
        .await
        .map_err(|e| IngestError::Listen {
            addr: config.metrics.listen,
            reason: e.to_string(),
        })?;
    tracing::info!(%addr, "metrics and health on http://{addr}/metrics");
    metrics.set_ready(true);
    let served = prepared
        .serve(listen, client.clone(), metrics, clock, shutdown.clone())
        .await?;
    if let Err(e) = served.task.await {
        tracing::warn!(error = %e, "ingest gateway ended abnormally");
    }
    if let Err(e) = client.flush().await {
        tracing::warn!(error = %e, "final flush failed");
    }
    tracing::info!("ingest gateway stopped");
    Ok(())
}

/// What the gateway answers.
#[derive(Debug)]
enum Answer {
    Accepted {
        event_ids: Vec<String>,
        stream_seq: u64,
        duplicate: bool,
    },
    UnknownFormat(String),
    Unauthenticated(AuthFailure),
    TooLarge(usize),
    SlowBody,
    BadRequest(String),
    Invalid(formats::FormatError),
    Unavailable(String),
    /// Any other answer with a JSON body (the approvals endpoints).
    Json(StatusCode, serde_json::Value),
}

impl Answer {
    fn status(&self) -> StatusCode {
        match self {
            Answer::Accepted { .. } => StatusCode::ACCEPTED,
            Answer::UnknownFormat(_) => StatusCode::NOT_FOUND,
            Answer::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Answer::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Answer::SlowBody => StatusCode::REQUEST_TIMEOUT,
            Answer::BadRequest(_) | Answer::Invalid(_) => StatusCode::BAD_REQUEST,
            Answer::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Answer::Json(status, _) => *status,
        }
    }

    fn into_response(self, bearer: bool) -> Response {
        let status = self.status();
        let error = |text: String| serde_json::json!({ "error": text });
        match self {
            Answer::Accepted {
                event_ids,
                stream_seq,
                duplicate,
            } => (
                status,
                axum::Json(serde_json::json!({
                    "event_ids": event_ids, "stream_seq": stream_seq, "duplicate": duplicate,
                })),
            )
                .into_response(),
            Answer::UnknownFormat(name) => {
                let formats: Vec<&str> = Source::ALL.iter().map(|s| s.as_str()).collect();
                let body = serde_json::json!({
                    "error": format!("unknown format `{name}`: POST to /v1/events/<format>"),
                    "formats": formats,
                });
                (status, axum::Json(body)).into_response()
            }
            Answer::Unauthenticated(why) => {
                let mut response =
                    (status, axum::Json(error(why.message().to_owned()))).into_response();
                if bearer {
                    let challenge = match why {
                        AuthFailure::BadToken => {
                            "Bearer realm=\"riposte\", error=\"invalid_token\""
                        }
                        _ => "Bearer realm=\"riposte\"",
                    };
                    response.headers_mut().insert(
                        header::WWW_AUTHENTICATE,
                        HeaderValue::from_static(challenge),
                    );
                }
                response
            }
            Answer::TooLarge(limit) => (
                status,
                axum::Json(error(format!(
                    "the body is over the limit of {limit} bytes"
                ))),
            )
                .into_response(),
            Answer::SlowBody => (
                status,
                axum::Json(error(format!(
                    "the body did not arrive within {}",
                    humantime::format_duration(BODY_TIMEOUT)
                ))),
            )
                .into_response(),
            Answer::BadRequest(text) => (status, axum::Json(error(text))).into_response(),
            Answer::Invalid(e) => (
                status,
                axum::Json(serde_json::json!({ "error": e.to_string(), "code": e.code() })),
            )
                .into_response(),
            Answer::Json(_, body) => (status, axum::Json(body)).into_response(),
            Answer::Unavailable(text) => {
                let mut response = (status, axum::Json(error(text))).into_response();
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
                response
            }
        }
    }
}

async fn post_event(
    State(gw): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(format): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let source = Source::from_str(&format).ok();
    let answer = match source {
        Some(f) => gw.accept(f, &peer, &headers, body).await,
        None => Answer::UnknownFormat(format),
    };
    let label = source.map_or("unknown", Source::as_str);
    let status = answer.status();
    gw.metrics
        .ingest_requests
        .get_or_create(&vec![
            ("format", label.to_owned()),
            ("code", status.as_u16().to_string()),
        ])
        .inc();
    match &answer {
        Answer::Accepted { .. } => {}
        Answer::Unauthenticated(why) => {
            gw.metrics
                .ingest_auth_failures
                .get_or_create(&Metrics::label("reason", why.code()))
                .inc();
            tracing::warn!(peer = %peer.addr, format = label, reason = why.code(), "ingest: unauthenticated request refused");
        }
        Answer::Invalid(e) => {
            gw.metrics
                .ingest_invalid_payloads
                .get_or_create(&vec![
                    ("format", label.to_owned()),
                    ("reason", e.code().to_owned()),
                ])
                .inc();
            tracing::info!(peer = %peer.addr, format = label, reason = %e, "ingest: payload refused");
        }
        other => {
            tracing::info!(peer = %peer.addr, format = label, status = status.as_u16(), answer = ?other, "ingest: request refused");
        }
    }
    let response = answer.into_response(gw.credentials.has_tokens());
    gw.metrics
        .ingest_latency
        .observe(started.elapsed().as_secs_f64());
    response
}

async fn ready(State(gw): State<Arc<Gateway>>) -> impl IntoResponse {
    if gw.client.connection_state() == async_nats::connection::State::Connected {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "NATS is not connected\n")
    }
}

impl Gateway {
    async fn accept(&self, format: Source, peer: &Peer, headers: &HeaderMap, body: Body) -> Answer {
        let (sender, payload) = match self.authenticate(peer, headers, body).await {
            Ok(found) => found,
            Err(answer) => return answer,
        };
        let msg_id = match headers.get(IDEMPOTENCY_HEADER) {
            Some(key) => match idempotency_id(format, &sender, key.as_bytes()) {
                Some(id) => id,
                None => {
                    return Answer::BadRequest(
                        "`Idempotency-Key` must be 1 to 255 visible ASCII characters".to_owned(),
                    )
                }
            },
            None => content_id(format, &payload),
        };
        let events = match formats::normalize(format, &payload, self.clock.now()) {
            Ok(events) => events,
            Err(e) => return Answer::Invalid(e),
        };
        let event_ids = events.into_iter().map(|e| e.id).collect();
        match self.publish(format, &sender, msg_id, payload).await {
            Ok(ack) => {
                tracing::debug!(format = %format, source = %sender, seq = ack.sequence, duplicate = ack.duplicate, "ingest: stored");
                Answer::Accepted {
                    event_ids,
                    stream_seq: ack.sequence,
                    duplicate: ack.duplicate,
                }
            }
            Err(answer) => answer,
        }
    }

    /// Who sent a request, and its body: credentials presented must be valid; none at all
    /// falls back to the client certificate. A signature needs the body, so only its timestamp
    /// is checked before the body is read (within the limit and the time allowed).
    async fn authenticate(
        &self,
        peer: &Peer,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<(String, bytes::Bytes), Answer> {
        let signature = headers.get(SIGNATURE_HEADER).map(HeaderValue::as_bytes);
        let mut sender = None;
        let mut signed_at = None;
        if signature.is_some() {
            let ts = headers.get(TIMESTAMP_HEADER).map(HeaderValue::as_bytes);
            signed_at = Some(
                self.credentials
                    .timestamp(ts)
                    .map_err(Answer::Unauthenticated)?,
            );
        } else if let Some(value) = headers.get(header::AUTHORIZATION) {
            sender = Some(
                self.credentials
                    .bearer(value.as_bytes())
                    .map_err(Answer::Unauthenticated)?,
            );
        } else if let Some(name) = &peer.certificate {
            sender = Some(name.clone());
        } else {
            return Err(Answer::Unauthenticated(AuthFailure::Missing));
        }

        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        // Far over the limit: refused before reading. Up to the drain limit, the body is read
        // and discarded so the client sees the answer rather than a closed connection.
        let drained = self.max_body.saturating_mul(crate::body::DRAIN_FACTOR);
        if declared.is_some_and(|n| n > u64::try_from(drained).unwrap_or(u64::MAX)) {
            return Err(Answer::TooLarge(self.max_body));
        }
        let payload = match crate::body::read(body, self.max_body, BODY_TIMEOUT).await {
            Ok(b) => b,
            Err(BodyError::TooLarge(n)) => return Err(Answer::TooLarge(n)),
            Err(e @ BodyError::Read(_)) => return Err(Answer::BadRequest(e.to_string())),
            Err(BodyError::Slow(_)) => return Err(Answer::SlowBody),
        };

        if let (Some(ts), Some(sig)) = (signed_at, signature) {
            sender = Some(
                self.credentials
                    .signed(ts, sig, &payload)
                    .map_err(Answer::Unauthenticated)?,
            );
        }
        match sender {
            Some(sender) => Ok((sender, payload)),
            None => Err(Answer::Unauthenticated(AuthFailure::Missing)),
        }
    }

    async fn publish(
        &self,
        format: Source,
        sender: &str,
        msg_id: String,
        payload: bytes::Bytes,
    ) -> Result<jetstream::publish::PublishAck, Answer> {
        // While the client is reconnecting a publish would only wait in its buffer: tell the
        // sender to come back instead.
        if self.client.connection_state() != async_nats::connection::State::Connected {
            return Err(Answer::Unavailable(
                "NATS is unreachable; retry later".to_owned(),
            ));
        }
        let subject = format!("{INGEST_PREFIX}{format}");
        let message = jetstream::message::PublishMessage::build()
            .payload(payload)
            .message_id(msg_id)
            .header(INGEST_SOURCE_HEADER, sender);
        let stored = tokio::time::timeout(self.publish_timeout, async {
            self.js.send_publish(subject.clone(), message).await?.await
        })
        .await;
        match stored {
            Ok(Ok(ack)) => Ok(ack),
            Ok(Err(e)) if e.kind() == PublishErrorKind::MaxPayloadExceeded => Err(
                Answer::TooLarge(self.max_body.min(self.client.server_info().max_payload)),
            ),
            Ok(Err(e)) => {
                tracing::warn!(%subject, error = %e, "ingest: publish failed");
                let hint = if e.kind() == PublishErrorKind::StreamNotFound {
                    ": no stream stores it yet (has an engine started on this NATS?)"
                } else {
                    ""
                };
                Err(Answer::Unavailable(format!(
                    "JetStream did not store the event on `{subject}`{hint}; retry later"
                )))
            }
            Err(_) => {
                tracing::warn!(%subject, timeout = ?self.publish_timeout, "ingest: publish timed out");
                Err(Answer::Unavailable(format!(
                    "JetStream did not acknowledge within {}; retry later",
                    humantime::format_duration(self.publish_timeout)
                )))
            }
        }
    }
}

/// The message id of a payload: the SHA-256 of its format and bytes, so the same delivery
/// retried is stored once (within the events stream's duplicate window).
pub fn content_id(format: Source, payload: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(format.as_str().as_bytes());
    h.update(b"\n");
    h.update(payload);
    hex::encode(h.finalize())
}

/// The message id of a delivery the sender named with `Idempotency-Key`: scoped to the format
/// and the sender, so one sender's keys never suppress another's events.
fn idempotency_id(format: Source, sender: &str, key: &[u8]) -> Option<String> {
    if key.is_empty() || key.len() > 255 || !key.iter().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    let mut h = Sha256::new();
    for part in [format.as_str().as_bytes(), sender.as_bytes(), key] {
        h.update(part);
        h.update(b"\n");
    }
    Some(format!("key:{}", hex::encode(h.finalize())))
}
