//! riposte: an incident-response engine for container estates.
//!
//! Security events arrive on NATS JetStream, are normalized, matched to YAML playbooks whose
//! conditions are Rhai expressions, and answered through connectors; every decision is recorded
//! in an audit stream before the event is acknowledged.
//!
//! # Layout
//! The modules follow the path of one event:
//! - [`config`]: `riposte.yaml`, subject bindings, guards, limits, secrets from files.
//! - [`event`]: the normalized event every playbook sees.
//! - [`formats`]: one normalizer per producer format.
//! - [`playbook`]: the riposte/v1 language: loading, checking, templates, native clauses.
//! - [`script`]: the Rhai sandbox and its helpers.
//! - [`matcher`]: which playbooks run for an event (index, native clauses, Rhai).
//! - [`runner`]: one run: dedup, limits, vars, steps with guards, retries and timeouts, notify.
//! - [`state`]: dedup windows and limit counters in JetStream KV.
//! - [`revert`]: undos of reversible steps, on schedule (`revert_after`) or on request.
//! - [`control`]: the kill switch (`riposte pause` / `resume`) every replica follows.
//! - [`approval`]: steps that wait for a human decision, and the runs resumed after it.
//! - [`grouping`]: notifications grouped into one page and its updates (noise control).
//! - [`images`]: the revocation list's enforcement: the Kubernetes admission webhook, the
//!   Docker AuthZ plugin, `riposte images`, and the compliance report.
//! - [`audit`]: audit records, how they are stored and read back.
//! - [`bus`]: streams, the shared consumer, dead letters, the life of one message.
//! - [`ingest`]: the authenticated HTTP gateway that turns webhooks into bus messages.
//! - [`metrics`]: Prometheus metrics and the health endpoints.
//! - [`embedded`]: the nats-server `riposte run` starts when given no URL.
//! - [`engine`]: start-up of `riposte run`.
//! - [`testing`]: offline simulation behind `riposte test` and `riposte explain`.
//! - [`cli`], [`bench`], [`schema`]: the commands.
//! - [`clock`], [`duration`]: the time seam and human durations.

pub mod approval;
pub mod audit;
pub mod bench;
pub mod body;
pub mod bus;
pub mod cli;
pub mod clock;
pub mod config;
pub mod control;
pub mod duration;
pub mod embedded;
pub mod engine;
pub mod event;
pub mod formats;
pub mod grouping;
pub mod images;
pub mod ingest;
pub mod matcher;
pub mod metrics;
pub mod playbook;
pub mod revert;
pub mod runner;
pub mod schema;
pub mod script;
pub mod state;
pub mod testing;
