//! Event formats: turn one producer payload into normalized [`Event`]s.
//!
//! One file per producer format; [`normalize`] dispatches on the [`Source`] a subject is bound
//! to. Normalizers are pure functions of the payload bytes and the time it was received: they
//! never panic, never do I/O, and reject what they cannot read with a [`FormatError`] that says
//! why (the bus dead-letters it with that reason).

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
    let _ = (format, payload, received);
    Err(FormatError::Empty)
}
