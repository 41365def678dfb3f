//! Prometheus metrics and the health endpoints (`/metrics`, `/healthz`, `/readyz`).
//!
//! Owns the counters and histograms every stage updates, and the small HTTP server that
//! exposes them. Stages only increment; nothing here reads the bus or runs playbooks.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

type Labels = Vec<(&'static str, String)>;

/// Every metric of the engine.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Payloads received, by format.
    pub events_received: Family<Labels, Counter>,
    /// Normalized events that matched at least one playbook.
    pub events_matched: Counter,
    /// Normalized events that matched none.
    pub events_unmatched: Counter,
    /// Payloads dead-lettered, by reason.
    pub dead_lettered: Family<Labels, Counter>,
    /// Conditions that failed (counted as no match).
    pub condition_errors: Counter,
    /// Runs, by outcome.
    pub runs: Family<Labels, Counter>,
    /// Steps and notifications, by outcome.
    pub steps: Family<Labels, Counter>,
    /// Time from a message's arrival to its acknowledgement, seconds.
    pub event_latency: Histogram,
    /// Time a run takes, seconds.
    pub run_latency: Histogram,
    /// Messages being processed.
    pub in_flight: Gauge,
    /// Processing failures that left a message for redelivery (NATS, KV or audit trouble).
    pub redeliveries: Counter,
    /// Ingest gateway requests, by format and HTTP status code.
    pub ingest_requests: Family<Labels, Counter>,
    /// Ingest gateway requests refused for want of valid credentials, by reason.
    pub ingest_auth_failures: Family<Labels, Counter>,
    /// Ingest gateway payloads refused by their format's normalizer, by format and reason.
    pub ingest_invalid_payloads: Family<Labels, Counter>,
    /// Time the ingest gateway takes to answer a request, seconds.
    pub ingest_latency: Histogram,
    /// Admission webhook answers, by decision (`allowed`, `denied`).
    pub admission_decisions: Family<Labels, Counter>,
    /// Docker AuthZ plugin answers to requests it checks, by decision (`allowed`, `denied`).
    pub authz_decisions: Family<Labels, Counter>,
    /// Requests an enforcement point could not decide and answered per `on_undecided`, by point
    /// (`admission`, `authz`) and what was answered (`allowed`, `denied`).
    pub enforcement_undecided: Family<Labels, Counter>,
    /// Requests an enforcement point could not read, by point and reason.
    pub enforcement_malformed: Family<Labels, Counter>,
    /// Enforcement records that could not be written to the audit trail.
    pub enforcement_audit_failures: Counter,
    /// Time the admission webhook takes to decide (body read to answer), seconds.
    pub admission_latency: Histogram,
    /// Time the AuthZ plugin takes to decide, seconds (including asking the daemon for digests).
    pub authz_latency: Histogram,
    /// 1 while enforcement is paused by the kill switch (`riposte pause`), else 0.
    pub enforcement_paused: Gauge,
    /// Runs planned instead of performed because enforcement was paused.
    pub runs_planned_paused: Counter,
    ready: AtomicBool,
    run_counters: Vec<(&'static str, Counter)>,
    step_counters: Vec<(&'static str, Counter)>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("riposte");
        let events_received = Family::<Labels, Counter>::default();
        let events_matched = Counter::default();
        let events_unmatched = Counter::default();
        let dead_lettered = Family::<Labels, Counter>::default();
        let condition_errors = Counter::default();
        let runs = Family::<Labels, Counter>::default();
        let steps = Family::<Labels, Counter>::default();
        let event_latency = Histogram::new(exponential_buckets(0.0001, 2.0, 20));
        let run_latency = Histogram::new(exponential_buckets(0.0001, 2.0, 20));
        let in_flight = Gauge::default();
        let enforcement_paused = Gauge::default();
        let runs_planned_paused = Counter::default();
        let redeliveries = Counter::default();
        let ingest_requests = Family::<Labels, Counter>::default();
        let ingest_auth_failures = Family::<Labels, Counter>::default();
        let ingest_invalid_payloads = Family::<Labels, Counter>::default();
        let ingest_latency = Histogram::new(exponential_buckets(0.0001, 2.0, 20));
        let admission_decisions = Family::<Labels, Counter>::default();
        let authz_decisions = Family::<Labels, Counter>::default();
        let enforcement_undecided = Family::<Labels, Counter>::default();
        let enforcement_malformed = Family::<Labels, Counter>::default();
        let enforcement_audit_failures = Counter::default();
        // From 5 µs: a decision from the in-memory index takes microseconds.
        let admission_latency = Histogram::new(exponential_buckets(0.000_005, 2.0, 20));
        let authz_latency = Histogram::new(exponential_buckets(0.000_005, 2.0, 20));
        registry.register(
            "events_received",
            "Payloads received, by format",
            events_received.clone(),
        );
        registry.register(
            "events_matched",
            "Events that matched at least one playbook",
            events_matched.clone(),
        );
        registry.register(
            "events_unmatched",
            "Events that matched no playbook",
            events_unmatched.clone(),
        );
        registry.register(
            "events_dead_lettered",
            "Payloads dead-lettered, by reason",
            dead_lettered.clone(),
        );
        registry.register(
            "condition_errors",
            "Conditions that failed (no match)",
            condition_errors.clone(),
        );
        registry.register("runs", "Playbook runs, by outcome", runs.clone());
        registry.register(
            "steps",
            "Steps and notifications, by outcome",
            steps.clone(),
        );
        registry.register(
            "event_latency_seconds",
            "Arrival to acknowledgement of a message",
            event_latency.clone(),
        );
        registry.register(
            "run_latency_seconds",
            "Duration of a playbook run",
            run_latency.clone(),
        );
        registry.register("in_flight", "Messages being processed", in_flight.clone());
        registry.register(
            "enforcement_paused",
            "1 while enforcement is paused by the kill switch (riposte pause), else 0",
            enforcement_paused.clone(),
        );
        registry.register(
            "runs_planned_paused",
            "Runs planned instead of performed because enforcement was paused",
            runs_planned_paused.clone(),
        );
        registry.register(
            "processing_failures",
            "Messages left for redelivery after a NATS, KV or audit failure",
            redeliveries.clone(),
        );
        registry.register(
            "ingest_requests",
            "Ingest gateway requests, by format and status code",
            ingest_requests.clone(),
        );
        registry.register(
            "ingest_auth_failures",
            "Ingest gateway requests without valid credentials, by reason",
            ingest_auth_failures.clone(),
        );
        registry.register(
            "ingest_invalid_payloads",
            "Ingest gateway payloads refused by their normalizer, by format and reason",
            ingest_invalid_payloads.clone(),
        );
        registry.register(
            "ingest_request_duration_seconds",
            "Time the ingest gateway takes to answer a request",
            ingest_latency.clone(),
        );
        registry.register(
            "admission_decisions",
            "Admission webhook answers, by decision",
            admission_decisions.clone(),
        );
        registry.register(
            "authz_decisions",
            "Docker AuthZ plugin answers to the requests it checks, by decision",
            authz_decisions.clone(),
        );
        registry.register(
            "enforcement_undecided",
            "Requests an enforcement point could not decide, by point and answer",
            enforcement_undecided.clone(),
        );
        registry.register(
            "enforcement_malformed_requests",
            "Requests an enforcement point could not read, by point and reason",
            enforcement_malformed.clone(),
        );
        registry.register(
            "enforcement_audit_failures",
            "Enforcement records that could not be written to the audit trail",
            enforcement_audit_failures.clone(),
        );
        registry.register(
            "admission_decision_duration_seconds",
            "Time the admission webhook takes to decide",
            admission_latency.clone(),
        );
        registry.register(
            "authz_decision_duration_seconds",
            "Time the Docker AuthZ plugin takes to decide",
            authz_latency.clone(),
        );
        let premade = |family: &Family<Labels, Counter>, names: &[&'static str]| {
            names
                .iter()
                .map(|n| {
                    (
                        *n,
                        family.get_or_create(&Metrics::label("outcome", n)).clone(),
                    )
                })
                .collect::<Vec<_>>()
        };
        let run_counters = premade(&runs, &["ok", "failed", "planned", "suppressed", "limited"]);
        let step_counters = premade(&steps, &["ok", "failed", "skipped", "planned"]);
        Metrics {
            run_counters,
            step_counters,
            registry,
            events_received,
            events_matched,
            events_unmatched,
            dead_lettered,
            condition_errors,
            runs,
            steps,
            event_latency,
            run_latency,
            in_flight,
            redeliveries,
            ingest_requests,
            ingest_auth_failures,
            ingest_invalid_payloads,
            ingest_latency,
            admission_decisions,
            authz_decisions,
            enforcement_undecided,
            enforcement_malformed,
            enforcement_audit_failures,
            admission_latency,
            authz_latency,
            enforcement_paused,
            runs_planned_paused,
            ready: AtomicBool::new(false),
        }
    }

    /// Counts a run by outcome (the usual outcomes without a label lookup).
    pub fn count_run(&self, outcome: &str) {
        Self::count(&self.runs, &self.run_counters, outcome);
    }

    /// Counts a step by outcome.
    pub fn count_step(&self, outcome: &str) {
        Self::count(&self.steps, &self.step_counters, outcome);
    }

    fn count(family: &Family<Labels, Counter>, premade: &[(&'static str, Counter)], outcome: &str) {
        match premade.iter().find(|(n, _)| *n == outcome) {
            Some((_, c)) => {
                c.inc();
            }
            None => {
                family
                    .get_or_create(&Metrics::label("outcome", outcome))
                    .inc();
            }
        }
    }

    /// Marks the engine ready (consuming) or not.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Whether the engine is consuming.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// The metrics in Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// A two-label set.
    pub fn labels2(a: (&'static str, &str), b: (&'static str, &str)) -> Labels {
        vec![(a.0, a.1.to_owned()), (b.0, b.1.to_owned())]
    }

    /// A one-label set.
    pub fn label(name: &'static str, value: &str) -> Labels {
        vec![(name, value.to_owned())]
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` until `shutdown`.
pub async fn serve(
    metrics: Arc<Metrics>,
    listen: SocketAddr,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let local = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready_handler))
        .with_state(metrics);
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "metrics endpoint stopped");
        }
    });
    Ok(local)
}

async fn metrics_handler(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.render(),
    )
}

async fn ready_handler(State(m): State<Arc<Metrics>>) -> impl IntoResponse {
    if m.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}
