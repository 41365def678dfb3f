//! riposte: an incident-response engine for container estates.

pub mod event;
pub mod formats;
