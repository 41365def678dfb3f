//! The audit trail: one JSON record per decision and per step, in a JetStream stream.
//!
//! Owns [`AuditRecord`] (its schema is `schemas/audit.schema.json`) and the sinks records go
//! to. The records of one bus message (its events, their runs, steps and notifications) are
//! stored together as one audit message of JSON Lines whose `Nats-Msg-Id` is the message's
//! stream position: a redelivered message's records are stored once, and never half. The
//! bus acknowledges a message only after [`AuditBatch::commit`] returns. Records never hold
//! secrets: only event-derived values and the arguments the playbook rendered.

pub mod read;

use std::sync::{Arc, Mutex};

use async_nats::jetstream;
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
    /// An attempt of a step failed and is tried again (`retrying`, with the attempt number and
    /// the reason).
    Attempt,
    /// A step finished: `ok`, `failed`, `skipped` or `planned`.
    Step,
    /// A notification finished.
    Notify,
    /// A run finished: `ok`, `failed` or `planned`.
    Run,
    /// A reversible step was undone (`ok`), will be tried again (`retrying`), or could not be
    /// (`failed`).
    Revert,
    /// A decision on a step that waited for approval: `approved`, `denied` or `timed_out`
    /// (`approval` says who decided, when and why).
    Approval,
    /// The revocation list changed: `revoked` or `reinstated` (`output` is the entry after
    /// the change, `reason` why).
    Revocation,
    /// An enforcement point refused something: `denied` (`action` is `admission` or `authz`,
    /// `reason` the revocation, `output` the image, object and user).
    Enforcement,
    /// The kill switch changed: `paused` or `resumed` (`output` is the switch, `reason` why).
    Control,
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
            RecordKind::Attempt => "attempt",
            RecordKind::Step => "step",
            RecordKind::Notify => "notify",
            RecordKind::Run => "run",
            RecordKind::Revert => "revert",
            RecordKind::Approval => "approval",
            RecordKind::Revocation => "revocation",
            RecordKind::Enforcement => "enforcement",
            RecordKind::Control => "control",
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
    /// The outcome: `matched`, `no_match`, `ok`, `failed`, `skipped`, `planned`, `deferred`
    /// (a notification that joined its group), `awaiting_approval` (a step, and its run, that
    /// wait for a human decision), `approved`, `denied`, `timed_out` (approval records),
    /// `started`, `retrying`, `suppressed`, `limited`, `rejected`, `error`.
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
    /// For a reversible step that changed something: when it is undone (`due`, absent without
    /// `revert_after`) and the command that undoes it now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revert: Option<Value>,
    /// For a step that waits or waited for approval: who may decide, until when, the command
    /// that decides, and once decided, the decision (`decision`, `by`, `via`, `at`, `reason`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Value>,
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
    /// The image a scanner event is about (its reference).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// That image's digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// A scanner event's findings, counted by severity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub findings: Option<std::collections::BTreeMap<String, usize>>,
}

impl AuditRecord {
    /// A record with the given kind and outcome, stamped `now`, everything else empty.
    pub fn new(
        record: RecordKind,
        outcome: &str,
        now: chrono::DateTime<chrono::Utc>,
        replica: &str,
    ) -> Self {
        AuditRecord {
            time: now.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
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
            revert: None,
            approval: None,
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
        js: Box<jetstream::Context>,
        /// Subject prefix: batches go to `<prefix>.records`, records published ahead of their
        /// batch to `<prefix>.started`.
        subject: String,
    },
    /// Memory, for `riposte test` and `explain`.
    Memory(Arc<Mutex<Vec<AuditRecord>>>),
}

/// Largest audit message; a batch over it is split into several messages.
const MAX_MESSAGE: usize = 512 * 1024;

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

    /// Starts the batch of one message's records; `id` (the message's stream position) becomes
    /// the audit message's `Nats-Msg-Id`, so a redelivered message's batch is stored once.
    pub fn batch(&self, id: impl Into<String>) -> AuditBatch {
        AuditBatch {
            sink: self.clone(),
            id: id.into(),
            records: Vec::new(),
        }
    }

    async fn publish(
        &self,
        subject_suffix: &str,
        id: String,
        body: Vec<u8>,
    ) -> Result<(), AuditError> {
        let AuditSink::JetStream { js, subject } = self else {
            return Ok(());
        };
        let publish = jetstream::message::PublishMessage::build()
            .payload(body.into())
            .message_id(id);
        js.send_publish(format!("{subject}.{subject_suffix}"), publish)
            .await
            .map_err(|e| AuditError(format!("cannot publish audit records: {e}")))?
            .await
            .map_err(|e| AuditError(format!("audit records were not stored: {e}")))?;
        Ok(())
    }
}

/// The records of one message, stored together as one audit message (JSON Lines, one record
/// per line): either all of them are in the audit stream or none.
#[derive(Debug)]
pub struct AuditBatch {
    sink: AuditSink,
    id: String,
    records: Vec<AuditRecord>,
}

impl AuditBatch {
    /// Adds a record to the batch.
    pub fn add(&mut self, record: AuditRecord) {
        self.records.push(record);
    }

    /// Stores a record at once, ahead of its batch (before a destructive action runs, so the
    /// attempt is on record even if the engine dies during it). It stays in the batch too.
    pub async fn publish_now(
        &mut self,
        scope: &str,
        record: AuditRecord,
    ) -> Result<(), AuditError> {
        if let AuditSink::JetStream { .. } = &self.sink {
            let body = serde_json::to_vec(&record)
                .map_err(|e| AuditError(format!("cannot encode a record: {e}")))?;
            self.sink
                .publish("started", record.dedup_id(scope), body)
                .await?;
        }
        self.records.push(record);
        Ok(())
    }

    /// Stores the batch and waits until it is stored.
    pub async fn commit(self) -> Result<(), AuditError> {
        match &self.sink {
            AuditSink::Memory(m) => {
                if let Ok(mut v) = m.lock() {
                    v.extend(self.records);
                }
                Ok(())
            }
            AuditSink::JetStream { .. } => {
                let mut parts: Vec<Vec<u8>> = vec![Vec::new()];
                for r in &self.records {
                    let line = serde_json::to_vec(r)
                        .map_err(|e| AuditError(format!("cannot encode a record: {e}")))?;
                    let fits = parts
                        .last()
                        .is_some_and(|p| p.len() + line.len() < MAX_MESSAGE);
                    if !fits {
                        parts.push(Vec::new());
                    }
                    if let Some(p) = parts.last_mut() {
                        p.extend_from_slice(&line);
                        p.push(b'\n');
                    }
                }
                let many = parts.len() > 1;
                for (i, body) in parts.into_iter().enumerate().filter(|(_, b)| !b.is_empty()) {
                    let id = if many {
                        format!("{}#{i}", self.id)
                    } else {
                        self.id.clone()
                    };
                    self.sink.publish("records", id, body).await?;
                }
                Ok(())
            }
        }
    }
}

/// Splits an audit message into its records (one JSON record per line); lines that are not
/// records are skipped.
pub fn parse_message(payload: &[u8]) -> Vec<AuditRecord> {
    payload
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(|l| serde_json::from_slice(l).ok())
        .collect()
}
