//! Event formats: turn one producer payload into normalized [`Event`]s.
//!
//! One file per producer format; [`normalize`] dispatches on the [`Source`] a subject is bound
//! to. Normalizers are pure functions of the payload bytes and the time it was received: they
//! never panic, never do I/O, and reject what they cannot read with a [`FormatError`] that says
//! why (the bus dead-letters it with that reason).
//!
//! Common to every format (see `util.rs`): a UTF-8 byte order mark is stripped; an empty payload
//! is [`FormatError::Empty`], invalid UTF-8 [`FormatError::NotText`], broken JSON
//! [`FormatError::Malformed`] with serde's line and column. A payload may hold several JSON
//! objects (JSON Lines, with plain-text log lines skipped, or a concatenated stream). Ids are the
//! producer's when it has one, else `sha256:<hex>` of the object's bytes, with `#<index>` when
//! one object gives several events. Times keep the producer's RFC 3339 text; a missing or
//! invalid time becomes the received time, flagged with the label `riposte.time` = `received`.
//! Each format's file documents how it maps titles, kinds, severities and resources.

mod alertmanager;
mod cloudevents;
mod falco;
mod generic;
mod grype;
mod harbor;
mod k8s_audit;
mod tetragon;
mod trivy;
mod util;

use chrono::{DateTime, Utc};
use thiserror::Error;

use crate::event::{Event, Source};

/// Why a payload was rejected.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FormatError {
    /// Nothing but white space.
    #[error("empty payload")]
    Empty,
    /// Not valid UTF-8 text.
    #[error("payload is not UTF-8 text: {0}")]
    NotText(String),
    /// Not parseable JSON (or YAML, where the format allows it).
    #[error("malformed JSON: {0}")]
    Malformed(String),
    /// Valid JSON, but not the shape this format has.
    #[error("not a {format} payload: {reason}")]
    WrongShape {
        /// The format that was expected.
        format: Source,
        /// What was wrong, naming the field.
        reason: String,
    },
}

impl FormatError {
    /// A short, stable label for metrics and dead-letter headers.
    pub fn code(&self) -> &'static str {
        match self {
            FormatError::Empty => "empty",
            FormatError::NotText(_) => "not_text",
            FormatError::Malformed(_) => "malformed",
            FormatError::WrongShape { .. } => "wrong_shape",
        }
    }
}

/// Normalizes one payload of the given format into one or more events.
pub fn normalize(
    format: Source,
    payload: &[u8],
    received: DateTime<Utc>,
) -> Result<Vec<Event>, FormatError> {
    match format {
        Source::Falco => falco::normalize(payload, received),
        Source::Tetragon => tetragon::normalize(payload, received),
        Source::Trivy => trivy::normalize(payload, received),
        Source::Grype => grype::normalize(payload, received),
        Source::K8sAudit => k8s_audit::normalize(payload, received),
        Source::Alertmanager => alertmanager::normalize(payload, received),
        Source::Harbor => harbor::normalize(payload, received),
        Source::Cloudevents => cloudevents::normalize(payload, received),
        Source::Generic => generic::normalize(payload, received),
    }
}
