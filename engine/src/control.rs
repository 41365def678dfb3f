//! The global kill switch: `riposte pause` stops every replica from enforcing, `riposte resume`
//! lets them act again.
//!
//! The switch is one KV entry, key `enforcement` in the bucket `<prefix>-control`:
//! `{paused, by, at, reason}`. Every replica reads it before it consumes (a replica that cannot
//! read it does not start), then follows it with a KV watch (reading it every second while the
//! watch is broken) and keeps the flag in a [`Switch`]. While it is set, runs of enforcing
//! playbooks are planned like dry-run runs (their records say why), notifications still go out,
//! reverts that fall due wait (see [`crate::revert`]), and decided approvals resume their run in
//! plan mode. The commands audit every change as a `control` record.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context as _, Result};
use async_nats::jetstream::{self, kv};
use chrono::{DateTime, Utc};
use clap::Args;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::audit::{AuditRecord, AuditSink, RecordKind};
use crate::metrics::Metrics;
use crate::state::{open_bucket, StateError};

/// The key of the switch in the control bucket.
pub const KEY: &str = "enforcement";

/// How often the key is read while its watch is broken.
const POLL: Duration = Duration::from_secs(1);

/// The switch's value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Enforcement {
    /// Whether enforcement is paused.
    pub paused: bool,
    /// Who set it.
    pub by: String,
    /// When.
    pub at: DateTime<Utc>,
    /// Why.
    #[serde(default)]
    pub reason: Option<String>,
}

impl Enforcement {
    /// What audit records of planned runs say: `enforcement paused by alice: drill`.
    pub fn why(&self) -> String {
        let mut text = format!("enforcement paused by {}", self.by);
        if let Some(r) = &self.reason {
            text.push_str(": ");
            text.push_str(r);
        }
        text
    }

    /// One line for people: `paused by alice at 2026-01-01T10:00:00Z: drill`.
    pub fn describe(&self) -> String {
        let mut text = format!(
            "{} by {} at {}",
            if self.paused { "paused" } else { "resumed" },
            self.by,
            self.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
        if let Some(r) = &self.reason {
            text.push_str(": ");
            text.push_str(r);
        }
        text
    }
}

/// What a replica makes of a value it cannot read: paused, since nobody can say it may act.
fn unreadable(e: &serde_json::Error) -> String {
    format!("enforcement paused: the kill switch `{KEY}` holds a value riposte cannot read ({e})")
}

/// The control bucket.
#[derive(Debug, Clone)]
pub struct ControlBucket {
    kv: kv::Store,
}

impl ControlBucket {
    /// Opens (creating when missing) the bucket `<prefix>-control`.
    pub async fn open(
        js: &jetstream::Context,
        prefix: &str,
        replicas: usize,
    ) -> Result<ControlBucket, StateError> {
        let kv = open_bucket(js, &format!("{prefix}-control"), Duration::ZERO, replicas).await?;
        Ok(ControlBucket { kv })
    }

    /// The switch's value (`None`: never set, enforcing). An unreadable value is an error.
    pub async fn read(&self) -> Result<Option<Enforcement>, StateError> {
        let entry = self
            .kv
            .entry(KEY)
            .await
            .map_err(|e| StateError(format!("control: read `{KEY}`: {e}")))?;
        match entry {
            Some(e) if e.operation == kv::Operation::Put => serde_json::from_slice(&e.value)
                .map(Some)
                .map_err(|err| StateError(unreadable(&err))),
            _ => Ok(None),
        }
    }

    /// Sets the switch.
    pub async fn write(&self, value: &Enforcement) -> Result<(), StateError> {
        let bytes =
            serde_json::to_vec(value).map_err(|e| StateError(format!("control: encode: {e}")))?;
        self.kv
            .put(KEY, bytes.into())
            .await
            .map_err(|e| StateError(format!("control: write `{KEY}`: {e}")))?;
        Ok(())
    }
}

#[derive(Debug, Default)]
struct Inner {
    paused: AtomicBool,
    why: RwLock<Option<String>>,
    metrics: Option<Arc<Metrics>>,
}

/// The switch as this replica sees it: cheap to clone and to ask.
#[derive(Debug, Clone, Default)]
pub struct Switch {
    inner: Arc<Inner>,
}

impl Switch {
    /// A switch that is not paused, reporting its state to `metrics`.
    pub fn new(metrics: Option<Arc<Metrics>>) -> Switch {
        Switch {
            inner: Arc::new(Inner {
                metrics,
                ..Inner::default()
            }),
        }
    }

    /// Whether enforcement is paused.
    pub fn is_paused(&self) -> bool {
        self.inner.paused.load(Ordering::Acquire)
    }

    /// Why enforcement is paused, when it is.
    pub fn paused(&self) -> Option<String> {
        if !self.is_paused() {
            return None;
        }
        let why = self.inner.why.read().ok().and_then(|w| w.clone());
        Some(why.unwrap_or_else(|| "enforcement paused".to_owned()))
    }

    /// Pauses (with why) or resumes.
    pub fn set(&self, why: Option<String>) {
        let paused = why.is_some();
        if let Ok(mut w) = self.inner.why.write() {
            *w = why;
        }
        let was = self.inner.paused.swap(paused, Ordering::AcqRel);
        if let Some(m) = &self.inner.metrics {
            m.enforcement_paused.set(i64::from(paused));
        }
        if was != paused {
            if paused {
                tracing::warn!("enforcement paused: runs are planned, not performed");
            } else {
                tracing::info!("enforcement resumed");
            }
        }
    }

    fn apply(&self, value: Option<&Enforcement>) {
        self.set(value.filter(|v| v.paused).map(Enforcement::why));
    }

    fn apply_entry(&self, entry: &kv::Entry) {
        if entry.operation != kv::Operation::Put {
            self.set(None);
            return;
        }
        match serde_json::from_slice::<Enforcement>(&entry.value) {
            Ok(v) => self.apply(Some(&v)),
            Err(e) => {
                tracing::warn!(error = %e, "the kill switch holds an unreadable value: paused");
                self.set(Some(unreadable(&e)));
            }
        }
    }
}

/// Reads the switch (an error when it cannot be read: the replica must not start), then
/// follows it until `shutdown`.
pub async fn start(
    js: &jetstream::Context,
    prefix: &str,
    replicas: usize,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<(Switch, JoinHandle<()>), StateError> {
    let bucket = ControlBucket::open(js, prefix, replicas).await?;
    let value = bucket.read().await.map_err(|e| {
        StateError(format!(
            "cannot read the kill switch (`{KEY}` in `{prefix}-control`), so this replica does \
             not start rather than act while enforcement may be paused: {}",
            e.0
        ))
    })?;
    let switch = Switch::new(Some(metrics));
    switch.apply(value.as_ref());
    if let Some(v) = value.filter(|v| v.paused) {
        tracing::warn!(state = %v.describe(), "enforcement is paused at start");
    }
    let task = tokio::spawn(follow(bucket, switch.clone(), shutdown));
    Ok((switch, task))
}

/// Follows the key with a watch; while the watch is broken, reads it every second.
async fn follow(bucket: ControlBucket, switch: Switch, shutdown: CancellationToken) {
    loop {
        match bucket.kv.watch_with_history(KEY).await {
            Ok(mut watch) => loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    next = watch.next() => match next {
                        Some(Ok(entry)) => switch.apply_entry(&entry),
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "kill switch watch broke; reading it every second");
                            break;
                        }
                        None => {
                            tracing::warn!("kill switch watch ended; reading it every second");
                            break;
                        }
                    },
                }
            },
            Err(e) => tracing::warn!(error = %e, "cannot watch the kill switch; reading it"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(POLL) => {}
        }
        match bucket.kv.entry(KEY).await {
            Ok(Some(entry)) => switch.apply_entry(&entry),
            Ok(None) => switch.set(None),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the kill switch; keeping its last value");
            }
        }
    }
}

/// Arguments of `pause` and `resume`.
#[derive(Debug, Args)]
pub struct ControlArgs {
    /// Who (recorded in the switch and the audit trail).
    #[arg(long = "as", value_name = "NAME", required_unless_present = "status")]
    pub by: Option<String>,
    /// Why (recorded in the switch and the audit trail, and in every planned run's records).
    #[arg(long)]
    pub reason: Option<String>,
    /// Only print the switch's state.
    #[arg(long, conflicts_with_all = ["by", "reason"])]
    pub status: bool,
    #[command(flatten)]
    pub target: crate::cli::Target,
}

/// Runs `riposte pause` (`pause`) or `riposte resume`. Returns the exit code.
pub async fn command(a: ControlArgs, pause: bool) -> Result<i32> {
    let by = a.by.filter(|b| !b.trim().is_empty());
    let reason = a.reason.filter(|r| !r.trim().is_empty());
    if !a.status {
        if by.is_none() {
            anyhow::bail!("give --as NAME (who pauses or resumes)");
        }
        if pause && reason.is_none() {
            anyhow::bail!("give --reason TEXT (why enforcement is paused)");
        }
    }
    let (config, url) = a.target.resolve()?;
    let what = if pause {
        "riposte pause"
    } else {
        "riposte resume"
    };
    let client = crate::bus::connect(&config.nats, &url, what).await?;
    let js = crate::bus::jetstream(client);
    let prefix = &config.engine.names.kv_prefix;
    let bucket = ControlBucket::open(&js, prefix, config.nats.replicas).await?;
    if a.status {
        print_state(bucket.read().await?.as_ref());
        return Ok(0);
    }
    let Some(by) = by else {
        anyhow::bail!("give --as NAME (who pauses or resumes)");
    };
    let stream = &config.engine.names.audit_stream;
    js.get_stream(stream).await.with_context(|| {
        format!("no audit stream `{stream}` on {url} to record the change in (has the engine run there?)")
    })?;
    let value = Enforcement {
        paused: pause,
        by,
        at: Utc::now(),
        reason,
    };
    bucket.write(&value).await?;
    let outcome = if pause { "paused" } else { "resumed" };
    let mut rec = AuditRecord::new(RecordKind::Control, outcome, value.at, "cli");
    rec.action = Some(format!(
        "control.{}",
        if pause { "pause" } else { "resume" }
    ));
    rec.reason = value.reason.clone();
    rec.output = Some(serde_json::to_value(&value).unwrap_or_default());
    let sink = AuditSink::JetStream {
        js: Box::new(js),
        subject: config.engine.names.audit_subject.clone(),
    };
    let mut batch = sink.batch(format!(
        "control:{}",
        value.at.timestamp_nanos_opt().unwrap_or_default()
    ));
    batch.add(rec);
    batch
        .commit()
        .await
        .context("the switch is set, but its audit record failed")?;
    print_state(Some(&value));
    Ok(0)
}

fn print_state(value: Option<&Enforcement>) {
    match value {
        Some(v) if v.paused => println!("enforcement: {}", v.describe()),
        Some(v) => println!("enforcement: on ({})", v.describe()),
        None => println!("enforcement: on (never paused)"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn the_switch_says_who_paused_and_why() {
        let m = Arc::new(Metrics::new());
        let s = Switch::new(Some(m.clone()));
        assert_eq!(s.paused(), None);
        let v = Enforcement {
            paused: true,
            by: "alice".into(),
            at: Utc::now(),
            reason: Some("drill".into()),
        };
        s.apply(Some(&v));
        assert_eq!(
            s.paused().as_deref(),
            Some("enforcement paused by alice: drill")
        );
        assert!(m.render().contains("riposte_enforcement_paused 1"));
        s.apply(Some(&Enforcement { paused: false, ..v }));
        assert_eq!(s.paused(), None);
        assert!(m.render().contains("riposte_enforcement_paused 0"));
    }
}
