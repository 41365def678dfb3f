//! Reading the audit trail back (`riposte audit`): filter by time, playbook and run; print
//! text for people or one JSON record per line for tools.
//!
//! Reads through an ephemeral consumer that acknowledges nothing and leaves the stream as it
//! was.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result};
use async_nats::jetstream::consumer::{self, DeliverPolicy};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::AuditRecord;

/// What to read.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// `10m` or an RFC 3339 time.
    pub since: Option<String>,
    /// Only this playbook.
    pub playbook: Option<String>,
    /// Only this run.
    pub run: Option<String>,
    /// JSON lines.
    pub json: bool,
    /// Keep waiting.
    pub follow: bool,
    /// NATS URL.
    pub nats: Option<String>,
    /// Config path.
    pub config: Option<PathBuf>,
}

impl Query {
    /// Whether a record passes the playbook and run filters.
    pub fn keeps(&self, r: &AuditRecord) -> bool {
        self.playbook
            .as_ref()
            .is_none_or(|p| r.playbook.as_ref() == Some(p))
            && self
                .run
                .as_ref()
                .is_none_or(|id| r.run_id.as_ref() == Some(id))
    }
}

/// Prints the records a query selects. Returns the exit code.
pub async fn read(q: Query, shutdown: CancellationToken) -> Result<i32> {
    let config = crate::cli::load_config(q.config.as_deref())?;
    let url = crate::cli::client_url(q.nats.clone(), &config);
    let client = crate::bus::connect(&config.nats, &url, "riposte audit").await?;
    let js = crate::bus::jetstream(client);
    let name = &config.engine.names.audit_stream;
    let stream = js.get_stream(name).await.with_context(|| {
        format!("no audit stream `{name}` on {url} (has the engine run there?)")
    })?;
    let deliver_policy = match &q.since {
        None => DeliverPolicy::All,
        Some(s) => {
            let since = crate::cli::parse_since(s, chrono::Utc::now())?;
            let nanos = i128::from(since.timestamp_nanos_opt().unwrap_or(0));
            DeliverPolicy::ByStartTime {
                start_time: time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
                    .context("--since is out of range")?,
            }
        }
    };
    let reader = stream
        .create_consumer(consumer::pull::Config {
            deliver_policy,
            ack_policy: consumer::AckPolicy::None,
            inactive_threshold: Duration::from_secs(60),
            ..Default::default()
        })
        .await
        .context("cannot create a reader on the audit stream")?;
    let mut out = std::io::stdout().lock();
    let mut shown = 0usize;
    loop {
        let mut batch = reader
            .fetch()
            .max_messages(1000)
            .expires(Duration::from_millis(500))
            .messages()
            .await
            .context("cannot read the audit stream")?;
        let mut got = 0usize;
        let mut pending = 0u64;
        while let Some(msg) = batch.next().await {
            let Ok(msg) = msg else { break };
            got += 1;
            pending = msg.info().map(|i| i.pending).unwrap_or(0);
            for record in super::parse_message(&msg.payload) {
                if !q.keeps(&record) {
                    continue;
                }
                shown += 1;
                if q.json {
                    writeln!(out, "{}", serde_json::to_string(&record)?)?;
                } else {
                    writeln!(out, "{}", line(&record))?;
                }
            }
        }
        out.flush()?;
        if (got == 0 || pending == 0) && !q.follow {
            break;
        }
        if shutdown.is_cancelled() {
            break;
        }
    }
    if !q.json {
        eprintln!("{shown} record(s)");
    }
    Ok(0)
}

/// Every record stored since `since` (for commands that wait for their own records).
pub async fn since(
    js: &async_nats::jetstream::Context,
    config: &crate::config::Config,
    since: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<AuditRecord>> {
    let name = &config.engine.names.audit_stream;
    let stream = js
        .get_stream(name)
        .await
        .with_context(|| format!("no audit stream `{name}`"))?;
    let nanos = i128::from(since.timestamp_nanos_opt().unwrap_or(0));
    let reader = stream
        .create_consumer(consumer::pull::Config {
            deliver_policy: DeliverPolicy::ByStartTime {
                start_time: time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
                    .context("time out of range")?,
            },
            ack_policy: consumer::AckPolicy::None,
            inactive_threshold: Duration::from_secs(60),
            ..Default::default()
        })
        .await
        .context("cannot create a reader on the audit stream")?;
    let mut out = Vec::new();
    loop {
        let mut batch = reader
            .fetch()
            .max_messages(1000)
            .expires(Duration::from_millis(300))
            .messages()
            .await
            .context("cannot read the audit stream")?;
        let mut got = 0usize;
        let mut pending = 0u64;
        while let Some(Ok(msg)) = batch.next().await {
            got += 1;
            pending = msg.info().map(|i| i.pending).unwrap_or(0);
            out.extend(super::parse_message(&msg.payload));
        }
        if got == 0 || pending == 0 {
            return Ok(out);
        }
    }
}

/// One record as a line of text.
pub fn line(r: &AuditRecord) -> String {
    let dash = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".to_owned());
    let mut s = format!(
        "{} {:<15} {:<10} {:<24} {:<28} {:<12} {:<20}",
        r.time,
        r.record.as_str(),
        r.outcome,
        dash(&r.run_id),
        dash(&r.playbook),
        dash(&r.step),
        dash(&r.action),
    );
    if let Some(e) = &r.event {
        s.push_str(&format!(
            " [{} {} {:?}]",
            e.subject,
            e.severity.as_deref().unwrap_or("-"),
            e.title.as_deref().unwrap_or("-")
        ));
    }
    if let Some(reason) = &r.reason {
        s.push_str(&format!(" {reason}"));
    }
    let text =
        |v: Option<&serde_json::Value>| v.and_then(serde_json::Value::as_str).map(str::to_owned);
    let output = r.output.as_ref();
    if let Some(message) = text(output.and_then(|o| o.get("message"))) {
        s.push_str(&format!(" {message}"));
    }
    if let Some(by) = text(output.and_then(|o| o.get("requested_by"))) {
        s.push_str(&format!(" (asked by {by})"));
    }
    if let Some(dir) = text(output.and_then(|o| o.get("dir"))) {
        s.push_str(&format!(" evidence in {dir}"));
    }
    let approval = r.approval.as_ref();
    match (
        text(approval.and_then(|a| a.get("by"))),
        text(approval.and_then(|a| a.get("command"))),
    ) {
        (Some(by), _) => s.push_str(&format!(" [approval: {by}]")),
        (None, Some(command)) => s.push_str(&format!(" [decide: {command}]")),
        (None, None) => {}
    }
    if let Some(command) = text(r.revert.as_ref().and_then(|v| v.get("command"))) {
        match text(r.revert.as_ref().and_then(|v| v.get("due"))) {
            Some(due) => s.push_str(&format!(" [undone at {due}; now: {command}]")),
            None => s.push_str(&format!(" [undo: {command}]")),
        }
    }
    s
}
