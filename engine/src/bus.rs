//! The bus: NATS connection, the JetStream streams and the shared durable consumer, and the
//! path of one message from arrival to acknowledgement.
//!
//! Owns stream and consumer setup (created or updated at start, so any replica can be first),
//! the bounded consume loop (a semaphore caps the events in flight, so a slow action never
//! blocks unrelated events and memory stays bounded), dead-lettering, and the rule that a
//! message is acknowledged only after its runs are recorded in the audit stream. A message
//! whose processing fails for lack of NATS, KV or audit is negatively acknowledged with a
//! delay and comes back; a payload that can never be processed is dead-lettered with its
//! reason, never dropped.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream, AckKind};
use async_nats::HeaderMap;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use thiserror::Error;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::audit::{AuditRecord, AuditSink, EventSummary, RecordKind};
use crate::clock::Clock;
use crate::config::{Config, NatsConfig, Secret};
use crate::event::Source;
use crate::formats;
use crate::matcher::{EventView, Matcher};
use crate::metrics::Metrics;
use crate::runner::{RunError, Runner};

/// A bus failure.
#[derive(Debug, Error)]
pub enum BusError {
    /// Could not connect.
    #[error("cannot connect to NATS at `{url}`: {reason}")]
    Connect {
        /// Where.
        url: String,
        /// Why.
        reason: String,
    },
    /// A stream, consumer or bucket could not be set up.
    #[error("cannot set up {what}: {reason}")]
    Setup {
        /// Which.
        what: String,
        /// Why.
        reason: String,
    },
    /// The consumer's message stream broke.
    #[error("consuming from `{stream}` failed: {reason}")]
    Consume {
        /// Which stream.
        stream: String,
        /// Why.
        reason: String,
    },
}

/// Subjects every engine captures, bound or not: `riposte.in.<format>`.
pub const INGEST_SUBJECTS: &str = "riposte.in.>";
/// The prefix of those subjects; the ingest gateway publishes on `<prefix><format>`.
pub const INGEST_PREFIX: &str = "riposte.in.";
/// The message header naming who sent a payload through the ingest gateway (a token or key
/// name). The bus copies it into every event of the payload as the label [`INGEST_SOURCE_LABEL`].
pub const INGEST_SOURCE_HEADER: &str = "Riposte-Ingest-Source";
/// The event label that carries [`INGEST_SOURCE_HEADER`].
pub const INGEST_SOURCE_LABEL: &str = "ingest.source";

/// How long audit records are kept for deduplication of a redelivered event's records.
pub const AUDIT_DEDUP_WINDOW: Duration = Duration::from_secs(30 * 60);

/// Connects to NATS (`url`: one server, or several of a cluster, comma-separated) with the
/// config's credentials and TLS (secrets read from their files).
pub async fn connect(
    cfg: &NatsConfig,
    url: &str,
    name: &str,
) -> Result<async_nats::Client, BusError> {
    let fail = |reason: String| BusError::Connect {
        url: url.to_owned(),
        reason,
    };
    let mut opts = async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(Duration::from_secs(5))
        .max_reconnects(None);
    if let Some(path) = &cfg.credentials_file {
        opts = opts.credentials_file(path).await.map_err(|e| {
            fail(format!(
                "credentials file `{}`: {}",
                path.display(),
                e.kind()
            ))
        })?;
    }
    if let Some(path) = &cfg.token_file {
        let token = Secret::from_file(path).map_err(|e| fail(e.to_string()))?;
        opts = opts.token(token.expose().to_owned());
    }
    if let Some(path) = &cfg.password_file {
        let password = Secret::from_file(path).map_err(|e| fail(e.to_string()))?;
        let user = cfg
            .user
            .clone()
            .ok_or_else(|| fail("`password_file` needs `user`".to_owned()))?;
        opts = opts.user_and_password(user, password.expose().to_owned());
    }
    if let Some(tls) = &cfg.tls {
        opts = opts.require_tls(true);
        if let Some(ca) = &tls.ca_file {
            opts = opts.add_root_certificates(ca.clone());
        }
        match (&tls.cert_file, &tls.key_file) {
            (Some(c), Some(k)) => opts = opts.add_client_certificate(c.clone(), k.clone()),
            (None, None) => {}
            _ => return Err(fail("TLS needs both `cert_file` and `key_file`".to_owned())),
        }
    }
    // `url` may list several servers of a cluster, comma-separated; the client picks one and
    // moves to another when it fails.
    let servers = url
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<async_nats::ServerAddr>()
                .map_err(|e| fail(format!("`{s}`: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    opts.connect(servers.as_slice())
        .await
        .map_err(|e| fail(e.to_string()))
}

/// How long start-up keeps trying to set up a stream, consumer or bucket: on a cluster that
/// has just started or lost a node, JetStream answers only once its leaders are elected.
pub const SETUP_PATIENCE: Duration = Duration::from_secs(60);

/// Calls `attempt` until it succeeds or [`SETUP_PATIENCE`] is over, pausing between tries and
/// logging each failure as about `what`; returns the last failure.
pub async fn patiently<T, E, F, Fut>(what: &str, mut attempt: F) -> Result<T, E>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let started = Instant::now();
    loop {
        match attempt().await {
            Ok(v) => return Ok(v),
            Err(e) if started.elapsed() < SETUP_PATIENCE => {
                tracing::warn!(error = %e, "cannot set up {what} yet; trying again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// A JetStream context that lets many publishes wait for their acknowledgements at once.
pub fn jetstream(client: async_nats::Client) -> jetstream::Context {
    jetstream::ContextBuilder::new()
        .max_ack_inflight(8192)
        .backpressure_on_inflight(true)
        .build(client)
}

/// Creates or updates the events, audit and dead-letter streams. Returns the events stream's
/// identity for ids (see [`Position`]).
pub async fn ensure_streams(js: &jetstream::Context, config: &Config) -> Result<String, BusError> {
    let names = &config.engine.names;
    // `riposte.in.>` is always captured, so a payload sent to `riposte.in.<unknown format>` is
    // dead-lettered with its reason instead of being refused to its producer.
    let mut subjects: Vec<String> = vec![INGEST_SUBJECTS.to_owned()];
    for b in &config.bindings {
        if !subjects.contains(&b.subject) && !b.subject.starts_with(INGEST_PREFIX) {
            subjects.push(b.subject.clone());
        }
    }
    let streams = [
        stream::Config {
            name: names.events_stream.clone(),
            description: Some("riposte: security events to process".to_owned()),
            subjects,
            retention: stream::RetentionPolicy::Limits,
            max_age: Duration::from_secs(7 * 24 * 3600),
            duplicate_window: Duration::from_secs(120),
            storage: stream::StorageType::File,
            ..Default::default()
        },
        stream::Config {
            name: names.audit_stream.clone(),
            description: Some("riposte: one record per decision and step".to_owned()),
            subjects: vec![format!("{}.>", names.audit_subject)],
            retention: stream::RetentionPolicy::Limits,
            duplicate_window: AUDIT_DEDUP_WINDOW,
            storage: stream::StorageType::File,
            ..Default::default()
        },
        stream::Config {
            name: names.deadletter_stream.clone(),
            description: Some(
                "riposte: payloads that could not be processed, with reasons".to_owned(),
            ),
            subjects: vec![format!("{}.>", names.deadletter_subject)],
            retention: stream::RetentionPolicy::Limits,
            duplicate_window: Duration::from_secs(600),
            storage: stream::StorageType::File,
            ..Default::default()
        },
    ];
    let mut events_id = String::new();
    for mut cfg in streams {
        let name = cfg.name.clone();
        cfg.num_replicas = config.nats.replicas;
        if let Ok(mut existing) = js.get_stream(&name).await {
            if let Ok(info) = existing.info().await {
                let has = info.config.num_replicas;
                if has != cfg.num_replicas {
                    tracing::warn!(
                        stream = %name,
                        replicas = has,
                        configured = cfg.num_replicas,
                        "the stream exists with another number of replicas; left as it is"
                    );
                    cfg.num_replicas = has;
                }
            }
        }
        let info = patiently(&format!("stream `{name}`"), || {
            js.create_or_update_stream(cfg.clone())
        })
        .await
        .map_err(|e| BusError::Setup {
            what: format!("stream `{name}`"),
            reason: e.to_string(),
        })?;
        if name == names.events_stream {
            events_id = format!("{name}@{}", info.created.unix_timestamp_nanos());
        }
    }
    Ok(events_id)
}

/// Creates or updates the durable consumer all replicas share.
pub async fn ensure_consumer(
    js: &jetstream::Context,
    config: &Config,
) -> Result<consumer::Consumer<consumer::pull::Config>, BusError> {
    let names = &config.engine.names;
    let setup = |reason: String| BusError::Setup {
        what: format!("consumer `{}`", names.consumer),
        reason,
    };
    let what = format!("consumer `{}`", names.consumer);
    let stream = patiently(&what, || js.get_stream(&names.events_stream))
        .await
        .map_err(|e| setup(e.to_string()))?;
    let max_pending =
        i64::try_from(config.engine.concurrency.saturating_mul(4)).unwrap_or(i64::MAX);
    let ack_wait = config.engine.ack_wait.get();
    if let Ok(info) = stream.consumer_info(&names.consumer).await {
        if info.config.ack_wait != ack_wait {
            tracing::info!(
                consumer = %names.consumer,
                from = %humantime::format_duration(info.config.ack_wait),
                to = %humantime::format_duration(ack_wait),
                "changing the consumer's acknowledgement wait (engine.ack_wait)"
            );
        }
    }
    let cfg = consumer::pull::Config {
        durable_name: Some(names.consumer.clone()),
        description: Some("riposte engine replicas".to_owned()),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait,
        max_deliver: -1,
        max_ack_pending: max_pending.max(1024),
        deliver_policy: consumer::DeliverPolicy::All,
        ..Default::default()
    };
    patiently(&what, || stream.create_consumer(cfg.clone()))
        .await
        .map_err(|e| setup(e.to_string()))
}

/// The message processor: everything a message needs, shared by the tasks in flight.
#[derive(Debug)]
pub struct Processor {
    /// The engine config.
    pub config: Config,
    /// Playbooks, indexed.
    pub matcher: Matcher,
    /// Runs playbooks.
    pub runner: Runner,
    /// Where records go.
    pub audit: AuditSink,
    /// For dead-lettering.
    pub js: jetstream::Context,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Time.
    pub clock: Arc<dyn Clock>,
    /// The events stream's identity in ids: see [`Position`].
    pub stream_id: String,
}

/// How a message was settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Processed and recorded.
    Processed,
    /// Rejected, dead-lettered and recorded.
    DeadLettered,
}

/// A message's identity for ids: the stream (its name and creation time, so a recreated
/// stream's sequences never collide with an earlier one's within the audit dedup window) and
/// the sequence.
#[derive(Debug, Clone)]
pub struct Position {
    /// The stream's identity, `<name>@<created, Unix ns>`.
    pub stream: String,
    /// The stream sequence.
    pub seq: u64,
}

/// The deterministic id of the run of `playbook` for event `index` of the message at `pos`:
/// a redelivery gets the same id, so its run is recognised.
pub fn run_id(pos: &Position, index: usize, playbook: &str) -> String {
    let digest = Sha256::digest(format!("{}:{}:{index}:{playbook}", pos.stream, pos.seq));
    format!("r-{}", hex::encode(digest.get(..10).unwrap_or(&digest)))
}

impl Processor {
    /// Processes one payload: normalize, match, run, record. `Err` means "not recorded, deliver
    /// again"; everything else, including bad input, is settled. `ingest_source` is the
    /// gateway's [`INGEST_SOURCE_HEADER`], recorded on each event.
    pub async fn process(
        &self,
        subject: &str,
        payload: &[u8],
        pos: &Position,
        ingest_source: Option<&str>,
    ) -> Result<Settled, RunError> {
        let format = self.config.format_for(subject);
        let format_name = format.map_or("unbound", Source::as_str);
        self.metrics
            .events_received
            .get_or_create(&Metrics::label("format", format_name))
            .inc();
        let mut summary = EventSummary {
            subject: subject.to_owned(),
            stream_seq: Some(pos.seq),
            format: format.map(|f| f.as_str().to_owned()),
            source: None,
            kind: None,
            severity: None,
            title: None,
            bytes: payload.len(),
            image: None,
            digest: None,
            findings: None,
        };
        let Some(format) = format else {
            return self
                .dead_letter(
                    subject,
                    payload,
                    pos,
                    "unbound",
                    &format!("no format is bound to subject `{subject}`"),
                    summary,
                )
                .await;
        };
        let limit = self.config.engine.max_payload_bytes;
        if payload.len() > limit {
            return self
                .dead_letter(
                    subject,
                    payload,
                    pos,
                    "too_large",
                    &format!(
                        "payload of {} bytes is over the limit of {limit} bytes",
                        payload.len()
                    ),
                    summary,
                )
                .await;
        }
        let mut events = match formats::normalize(format, payload, self.clock.now()) {
            Ok(events) => events,
            Err(e) => {
                let code = e.code();
                let reason = e.to_string();
                return self
                    .dead_letter(subject, payload, pos, code, &reason, summary)
                    .await;
            }
        };
        if let Some(name) = ingest_source {
            for event in &mut events {
                event
                    .labels
                    .insert(INGEST_SOURCE_LABEL.to_owned(), name.to_owned());
            }
        }
        let mut audit = self.audit.batch(format!("ev:{}:{}", pos.stream, pos.seq));
        if events.is_empty() {
            // A valid payload with nothing in it (an empty EventList, an alert group without
            // alerts) is still on record.
            let mut rec = AuditRecord::new(
                RecordKind::Event,
                "no_events",
                self.clock.now(),
                &self.runner.settings().replica,
            );
            rec.reason = Some("the payload holds no event".to_owned());
            rec.event = Some(summary.clone());
            audit.add(rec);
            self.metrics.events_unmatched.inc();
        }
        for (index, event) in events.iter().enumerate() {
            // Conditions that read `event.enrichment` need it before matching.
            let early = if self.matcher.enrich_first() {
                self.runner.enrich(event, self.matcher.playbooks()).await
            } else {
                None
            };
            let event = early.as_ref().unwrap_or(event);
            let view = EventView::new(event, self.matcher.needs_data());
            let crate::matcher::Matches { matched, errors } =
                self.matcher.matches(&view, self.runner.sandbox());
            for (pb, reason) in &errors {
                self.metrics.condition_errors.inc();
                let mut rec = AuditRecord::new(
                    RecordKind::ConditionError,
                    "error",
                    self.clock.now(),
                    &self.runner.settings().replica,
                );
                rec.event_id = Some(event.id.clone());
                rec.playbook = Some(pb.name.clone());
                rec.reason = Some(reason.clone());
                audit.add(rec);
            }
            if matched.is_empty() {
                self.metrics.events_unmatched.inc();
            } else {
                self.metrics.events_matched.inc();
            }
            summary.source = Some(event.source.as_str().to_owned());
            summary.kind = Some(event.kind.as_str().to_owned());
            summary.severity = Some(event.severity.as_str().to_owned());
            summary.title = Some(event.title.clone());
            let image = event.resource.image.as_ref();
            summary.image = image.and_then(|i| i.r#ref.clone());
            summary.digest = image.and_then(|i| i.digest.clone());
            let scan = matches!(
                event.kind,
                crate::event::Kind::Vulnerability
                    | crate::event::Kind::Secret
                    | crate::event::Kind::Misconfiguration
            );
            summary.findings = scan.then(|| {
                let mut counts = std::collections::BTreeMap::new();
                for f in &event.findings {
                    *counts.entry(f.severity.as_str().to_owned()).or_insert(0) += 1;
                }
                counts
            });
            let outcome = if matched.is_empty() {
                "no_match"
            } else {
                "matched"
            };
            let mut rec = AuditRecord::new(
                RecordKind::Event,
                outcome,
                self.clock.now(),
                &self.runner.settings().replica,
            );
            rec.event_id = Some(event.id.clone());
            rec.event = Some(summary.clone());
            rec.matched = Some(matched.iter().map(|p| p.name.clone()).collect());
            audit.add(rec);
            let enriched = if matched.is_empty() || early.is_some() {
                None
            } else {
                self.runner.enrich(event, &matched).await
            };
            let enriched_view = enriched
                .as_ref()
                .map(|e| EventView::new(e, self.matcher.needs_data()));
            let view = enriched_view.as_ref().unwrap_or(&view);
            for pb in matched {
                let id = run_id(pos, index, &pb.name);
                let span = tracing::info_span!("run", run_id = %id, playbook = %pb.name, event_id = %event.id);
                self.runner
                    .run(&pb, view, &id, &mut audit)
                    .instrument(span)
                    .await?;
            }
        }
        audit.commit().await?;
        Ok(Settled::Processed)
    }

    async fn dead_letter(
        &self,
        subject: &str,
        payload: &[u8],
        pos: &Position,
        code: &str,
        reason: &str,
        summary: EventSummary,
    ) -> Result<Settled, RunError> {
        tracing::warn!(%subject, seq = pos.seq, code, %reason, "payload dead-lettered");
        self.metrics
            .dead_lettered
            .get_or_create(&Metrics::label("reason", code))
            .inc();
        let names = &self.config.engine.names;
        let mut headers = HeaderMap::new();
        headers.insert(
            "Nats-Msg-Id",
            format!("dl:{}:{}", pos.stream, pos.seq).as_str(),
        );
        headers.insert("Riposte-Reason", one_line(reason).as_str());
        headers.insert("Riposte-Reason-Code", code);
        headers.insert("Riposte-Subject", subject);
        headers.insert("Riposte-Stream-Seq", pos.seq.to_string().as_str());
        let format = summary
            .format
            .clone()
            .unwrap_or_else(|| "unbound".to_owned());
        let dl_subject = format!("{}.{format}", names.deadletter_subject);
        let dl_subject_for_record = dl_subject.clone();
        let ack = self
            .js
            .publish_with_headers(dl_subject, headers, payload.to_vec().into())
            .await
            .map_err(|e| crate::audit::AuditError(format!("dead-letter publish: {e}")))?;
        ack.await
            .map_err(|e| crate::audit::AuditError(format!("dead-letter not stored: {e}")))?;
        let mut audit = self.audit.batch(format!("dl:{}:{}", pos.stream, pos.seq));
        let mut rec = AuditRecord::new(
            RecordKind::Rejected,
            "rejected",
            self.clock.now(),
            &self.runner.settings().replica,
        );
        rec.reason = Some(reason.to_owned());
        rec.output =
            Some(serde_json::json!({ "code": code, "deadletter_subject": dl_subject_for_record }));
        rec.event = Some(summary);
        audit.add(rec);
        audit.commit().await?;
        Ok(Settled::DeadLettered)
    }
}

/// Header values are one line.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Consumes the shared durable consumer until `shutdown`, then drains: runs in flight get
/// `grace` to finish; what is still running after that is abandoned (and redelivered).
pub async fn consume(
    processor: Arc<Processor>,
    consumer: consumer::Consumer<consumer::pull::Config>,
    shutdown: CancellationToken,
) -> Result<(), BusError> {
    let config = &processor.config;
    let stream_name = config.engine.names.events_stream.clone();
    let concurrency = config.engine.concurrency;
    let grace = config.engine.shutdown_grace.get();
    let consume_err = |reason: String| BusError::Consume {
        stream: stream_name.clone(),
        reason,
    };
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(concurrency.clamp(1, 1000))
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await
        .map_err(|e| consume_err(e.to_string()))?;
    let permits = Arc::new(Semaphore::new(concurrency));
    let force = CancellationToken::new();
    processor.metrics.set_ready(true);
    tracing::info!(stream = %stream_name, concurrency, "consuming");
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let next = tokio::select! {
            _ = shutdown.cancelled() => break,
            next = messages.next() => next,
        };
        let msg = match next {
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "message stream error; continuing");
                continue;
            }
            None => {
                processor.metrics.set_ready(false);
                return Err(consume_err("the message stream ended".to_owned()));
            }
        };
        let p = processor.clone();
        let force = force.clone();
        tokio::spawn(async move {
            let _permit = permit;
            handle(&p, msg, &force).await;
        });
    }
    processor.metrics.set_ready(false);
    tracing::info!(grace = ?grace, "draining runs in flight");
    let all = u32::try_from(concurrency).unwrap_or(u32::MAX);
    if tokio::time::timeout(grace, permits.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("grace period over: abandoning runs in flight (they will be redelivered)");
        force.cancel();
    }
    Ok(())
}

/// Processes one message, keeping it alive with progress signals, and settles it.
async fn handle(p: &Processor, msg: jetstream::Message, force: &CancellationToken) {
    let arrived = Instant::now();
    p.metrics.in_flight.inc();
    let (pos, delivered) = match msg.info() {
        Ok(i) => (
            Position {
                stream: p.stream_id.clone(),
                seq: i.stream_sequence,
            },
            i.delivered,
        ),
        Err(e) => {
            tracing::error!(error = %e, "message without JetStream metadata; left for redelivery");
            p.metrics.in_flight.dec();
            return;
        }
    };
    let subject = msg.subject.to_string();
    let source = msg
        .headers
        .as_ref()
        .and_then(|h| h.get(INGEST_SOURCE_HEADER))
        .map(|v| v.as_str());
    let work = p.process(&subject, &msg.payload, &pos, source);
    tokio::pin!(work);
    let mut ticker =
        tokio::time::interval((p.config.engine.ack_wait.get() / 3).max(Duration::from_secs(1)));
    ticker.tick().await;
    let result = loop {
        tokio::select! {
            r = &mut work => break Some(r),
            _ = ticker.tick() => {
                if let Err(e) = msg.ack_with(AckKind::Progress).await {
                    tracing::warn!(error = %e, seq = pos.seq, "progress signal failed");
                }
            }
            _ = force.cancelled() => break None,
        }
    };
    match result {
        Some(Ok(_)) => {
            if let Err(e) = msg.ack().await {
                tracing::warn!(error = %e, seq = pos.seq, "ack failed; the message will be redelivered and recognised");
            }
        }
        Some(Err(e)) => {
            p.metrics.redeliveries.inc();
            let delay = Duration::from_millis(
                500u64.saturating_mul(u64::try_from(delivered.clamp(1, 20)).unwrap_or(1)),
            );
            tracing::error!(error = %e, seq = pos.seq, delivered, "processing failed; will retry");
            if let Err(e) = msg.ack_with(AckKind::Nak(Some(delay))).await {
                tracing::warn!(error = %e, seq = pos.seq, "nak failed");
            }
        }
        None => {}
    }
    p.metrics.in_flight.dec();
    p.metrics
        .event_latency
        .observe(arrived.elapsed().as_secs_f64());
}
