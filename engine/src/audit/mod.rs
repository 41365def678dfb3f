//! The audit trail: one JSON record per decision and per step, in a JetStream stream.
//!
//! Owns [`AuditRecord`] (its schema is `schemas/audit.schema.json`) and the sinks records go
//! to. Records of one event are published without waiting, each with a `Nats-Msg-Id` derived
//! from the run and the step, so a redelivered event whose records were already stored does not
//! store them twice; [`AuditBatch::confirm`] waits for every acknowledgement before the event's
//! message is acknowledged. Records never hold secrets: only event-derived values and the
//! arguments the playbook rendered.

pub mod read;

use std::sync::{Arc, Mutex};

use async_nats::jetstream::{self, context::PublishAckFuture};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

/// The audit trail could not be written. The event is not acknowledged (it is delivered again).
#[derive(Debug, Error)]
#[error("audit: {0}")]
pub struct AuditError(pub String);

/// What a record is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    /// An event was received and matched against the playbooks (`outcome`: `matched` or
    /// `no_match`; `matched` lists the playbooks).
    Event,
    /// A payload was rejected and dead-lettered (`reason` says why).
    Rejected,
    /// A playbook's condition failed on an event: counted as no match.
    ConditionError,
    /// A run was suppressed by its playbook's dedup window.
    Dedup,
    /// A run or a step was refused by a limit.
    Limit,
    /// A destructive step is about to run.
    StepStarted,
    /// A step finished: `ok`, `failed`, `skipped` or `planned`.
    Step,
    /// A notification finished.
    Notify,
    /// A run finished: `ok`, `failed` or `planned`.
    Run,
}

impl RecordKind {
    /// The snake_case name, also the last token of the record's subject.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Event => "event",
            RecordKind::Rejected => "rejected",
            RecordKind::ConditionError => "condition_error",
            RecordKind::Dedup => "dedup",
            RecordKind::Limit => "limit",
            RecordKind::StepStarted => "step_started",
            RecordKind::Step => "step",
            RecordKind::Notify => "notify",
            RecordKind::Run => "run",
        }
    }
}

/// One audit record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AuditRecord {
    /// When it was recorded (RFC 3339, UTC).
    pub time: String,
    /// What it is about.
    pub record: RecordKind,
    /// The run, for records about a run.
    pub run_id: Option<String>,
    /// The normalized event's id.
    pub event_id: Option<String>,
    /// The playbook.
    pub playbook: Option<String>,
    /// The step id (`notify-N` for notifications).
    pub step: Option<String>,
    /// The action (`<connector>.<action>`).
    pub action: Option<String>,
    /// The outcome: `matched`, `no_match`, `ok`, `failed`, `skipped`, `planned`, `started`,
    /// `suppressed`, `limited`, `rejected`, `error`.
    pub outcome: String,
    /// Why, for anything but plain success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The rendered arguments of a step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Value>,
    /// What the connector reported (or planned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// Attempts made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// How long it took, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<f64>,
    /// Whether actions were only planned (dry-run playbook or plan mode).
    #[serde(default)]
    pub dry_run: bool,
    /// For event and rejected records: what arrived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<EventSummary>,
    /// For event records: the playbooks that matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matched: Option<Vec<String>>,
    /// The replica that wrote it.
    pub replica: String,
}

/// What an event or rejected record says about its input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EventSummary {
    /// The NATS subject it arrived on.
    pub subject: String,
    /// Its stream sequence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_seq: Option<u64>,
    /// The format it was read as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// Normalized source, kind, severity and title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Severity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<String>,
    /// Title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Payload size in bytes.
    pub bytes: usize,
}

impl AuditRecord {
    /// A record with the given kind and outcome, everything else empty.
    pub fn new(record: RecordKind, outcome: &str, time: String, replica: &str) -> Self {
        AuditRecord {
            time,
            record,
            run_id: None,
            event_id: None,
            playbook: None,
            step: None,
            action: None,
            outcome: outcome.to_owned(),
            reason: None,
            args: None,
            output: None,
            attempts: None,
            duration_ms: None,
            dry_run: false,
            event: None,
            matched: None,
            replica: replica.to_owned(),
        }
    }

    /// The id that makes a republished record a duplicate: its run (or event) plus its kind
    /// and step.
    pub fn dedup_id(&self, scope: &str) -> String {
        format!(
            "{scope}:{}:{}",
            self.record.as_str(),
            self.step.as_deref().unwrap_or("-")
        )
    }
}

/// Where audit records go.
#[derive(Debug, Clone)]
pub enum AuditSink {
    /// The audit stream.
    JetStream {
        /// The JetStream context.
        js: jetstream::Context,
        /// Subject prefix; records go to `<prefix>.<kind>`.
        subject: String,
    },
    /// Memory, for `riposte test` and `explain`.
    Memory(Arc<Mutex<Vec<AuditRecord>>>),
}

impl AuditSink {
    /// A fresh memory sink.
    pub fn memory() -> Self {
        AuditSink::Memory(Arc::default())
    }

    /// The records of a memory sink (empty for JetStream).
    pub fn recorded(&self) -> Vec<AuditRecord> {
        match self {
            AuditSink::Memory(m) => m.lock().map(|v| v.clone()).unwrap_or_default(),
            AuditSink::JetStream { .. } => Vec::new(),
        }
    }

    /// Starts a batch of records.
    pub fn batch(&self) -> AuditBatch {
        AuditBatch {
            sink: self.clone(),
            pending: Vec::new(),
        }
    }
}

/// The records of one event: published as they come, confirmed together.
#[derive(Debug)]
pub struct AuditBatch {
    sink: AuditSink,
    pending: Vec<PublishAckFuture>,
}

impl AuditBatch {
    /// Publishes a record without waiting for its acknowledgement. `scope` (the run id, or the
    /// event's stream position) makes its message id.
    pub async fn emit(&mut self, scope: &str, record: AuditRecord) -> Result<(), AuditError> {
        match &self.sink {
            AuditSink::Memory(m) => {
                if let Ok(mut v) = m.lock() {
                    v.push(record);
                }
                Ok(())
            }
            AuditSink::JetStream { js, subject } => {
                let body = serde_json::to_vec(&record)
                    .map_err(|e| AuditError(format!("cannot encode a record: {e}")))?;
                let publish = jetstream::message::PublishMessage::build()
                    .payload(body.into())
                    .message_id(record.dedup_id(scope));
                let ack = js
                    .send_publish(format!("{subject}.{}", record.record.as_str()), publish)
                    .await
                    .map_err(|e| AuditError(format!("cannot publish a record: {e}")))?;
                self.pending.push(ack);
                Ok(())
            }
        }
    }

    /// Waits until every record emitted so far is stored.
    pub async fn flush(&mut self) -> Result<(), AuditError> {
        for ack in self.pending.drain(..) {
            ack.await
                .map_err(|e| AuditError(format!("a record was not stored: {e}")))?;
        }
        Ok(())
    }
}
