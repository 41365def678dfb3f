//! `riposte report compliance`: what the audit trail proves about images over a period.
//!
//! Reads the audit stream from `--since` (an ordered consumer starting at that time) up to
//! `--until`, and aggregates while it reads, so memory follows the number of images, revocations
//! and remediations, not the number of records: images scanned (event records with an image
//! and findings), findings by severity, revocations and reinstatements, blocked attempts
//! (`enforcement` records), and for each remediation (a run on a scanner event, or a run that
//! revoked an image or used the `registry` connector) its evidence: the event, the playbook and
//! run, and every step. The current revocation list is read from KV at the end.
//!
//! Renders JSON (the machine form, [`Report`]), Markdown ([`markdown`]), or one self-contained HTML
//! file ([`html`]); [`aggregate`] does the folding. Everything taken from records is untrusted
//! text: the renderers escape it.

pub mod aggregate;
pub mod html;
pub mod markdown;

use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand, ValueEnum};
use futures::StreamExt;
use riposte_connectors::revocation::{Revocation, RevocationList};
use serde::Serialize;

pub use self::aggregate::{cut, severities, summarize, Aggregate, SEVERITIES};
use crate::cli::{client_url, load_config, parse_since, ConfigArg, NatsArg};

/// How long the stream may stay silent before the read is given up.
const IDLE: Duration = Duration::from_secs(10);

/// Arguments of `report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Which report.
    #[command(subcommand)]
    pub command: ReportCommand,
}

/// The reports.
#[derive(Debug, Subcommand)]
pub enum ReportCommand {
    /// Images scanned, findings by severity, images revoked and reinstated, blocked attempts,
    /// and the evidence of each remediation, from the audit trail; plus the revocation list.
    #[command(
        after_help = "Examples:\n  riposte report compliance --since 30d --format md > report.md\n  riposte report compliance --since 2026-11-01T00:00:00Z --until 2026-12-01T00:00:00Z --format html --output compliance.html\n  riposte report compliance --since 7d --format json | jq .findings"
    )]
    Compliance(ComplianceArgs),
}

/// Report formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    /// Markdown, for tickets.
    Md,
    /// JSON, for tools.
    Json,
    /// One self-contained HTML page.
    Html,
}

/// Arguments of `report compliance`.
#[derive(Debug, Args)]
pub struct ComplianceArgs {
    /// Start: this long ago (`30d`, `12h`) or an RFC 3339 time.
    #[arg(long, default_value = "30d")]
    since: String,
    /// End: this long ago or an RFC 3339 time (default: now).
    #[arg(long)]
    until: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "md")]
    format: ReportFormat,
    /// Write to this file instead of standard output.
    #[arg(long, short = 'o')]
    output: Option<PathBuf>,
    #[command(flatten)]
    nats: NatsArg,
    #[command(flatten)]
    config: ConfigArg,
}

/// The report (its JSON form).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Always `compliance`.
    pub report: &'static str,
    /// When it was made.
    pub generated: String,
    /// The period covered.
    pub since: String,
    /// End of the period.
    pub until: String,
    /// Audit records read.
    pub records: u64,
    /// Scans: `images` (distinct), `scans` (scanner events).
    pub scans: Scans,
    /// Findings by severity, summed over every scan.
    pub findings: BTreeMap<String, u64>,
    /// Per image: scans, first and last scan, findings summed and of the latest scan.
    pub images: Vec<ImageScans>,
    /// Revocations and reinstatements recorded in the period.
    pub revocations: Revocations,
    /// Attempts an enforcement point refused.
    pub blocked: Blocked,
    /// Runs that answered a scanner event or revoked an image, with their evidence.
    pub remediations: Vec<Remediation>,
    /// Remediations beyond the kept number (counted, not listed).
    pub remediations_omitted: u64,
    /// The revocation list now.
    pub revocation_list: ListState,
}

/// Scan totals.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Scans {
    /// Distinct images scanned.
    pub images: usize,
    /// Scanner events.
    pub scans: u64,
    /// Images beyond the kept number (in the totals, not in `images`).
    pub images_omitted: u64,
}

/// One image's scans.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ImageScans {
    /// The reference.
    pub image: String,
    /// The digest, when a scan named it.
    pub digest: Option<String>,
    /// Scanner events about it.
    pub scans: u64,
    /// First scan (record time).
    pub first: String,
    /// Last scan.
    pub last: String,
    /// Findings by severity, summed over its scans.
    pub findings: BTreeMap<String, u64>,
    /// Findings by severity of the latest scan.
    pub latest: BTreeMap<String, u64>,
}

/// Revocation changes.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Revocations {
    /// Distinct images revoked in the period.
    pub revoked: usize,
    /// Distinct images reinstated in the period.
    pub reinstated: usize,
    /// Every change, oldest first.
    pub changes: Vec<ChangeRow>,
    /// Changes beyond the kept number.
    pub omitted: u64,
}

/// One revocation or reinstatement.
#[derive(Debug, Clone, Serialize)]
pub struct ChangeRow {
    /// When it was recorded.
    pub time: String,
    /// `revoked` or `reinstated`.
    pub change: String,
    /// Reference and/or digest.
    pub image: String,
    /// Why.
    pub reason: String,
    /// Finding ids.
    pub findings: Vec<String>,
    /// Who decided (`riposte` for the engine, else a person).
    pub by: String,
    /// The playbook, run and event behind it.
    pub playbook: Option<String>,
    /// The run.
    pub run_id: Option<String>,
    /// The event.
    pub event_id: Option<String>,
    /// The replica (or `cli`) that recorded it.
    pub replica: String,
}

/// Refused attempts.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Blocked {
    /// All of them.
    pub total: u64,
    /// By the admission webhook.
    pub admission: u64,
    /// By the Docker AuthZ plugin.
    pub authz: u64,
    /// Per image, most refused first.
    pub by_image: Vec<BlockedImage>,
}

/// One image's refused attempts.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BlockedImage {
    /// The image as it was asked for.
    pub image: String,
    /// All refusals.
    pub total: u64,
    /// Admission refusals.
    pub admission: u64,
    /// AuthZ refusals.
    pub authz: u64,
    /// First and last refusal.
    pub first: String,
    /// Last refusal.
    pub last: String,
    /// The latest refusals.
    pub attempts: VecDeque<Attempt>,
}

/// One refused attempt.
#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    /// When.
    pub time: String,
    /// `admission` or `authz`.
    pub point: String,
    /// What was to be created (`pod shop/cart`, a container).
    pub object: Option<String>,
    /// Who asked.
    pub user: Option<String>,
    /// The reason given.
    pub reason: Option<String>,
}

/// One remediation and its evidence.
#[derive(Debug, Clone, Serialize)]
pub struct Remediation {
    /// The run.
    pub run_id: String,
    /// Its playbook.
    pub playbook: Option<String>,
    /// When it started (its first record).
    pub time: String,
    /// How it ended (`ok`, `failed`, `planned`, `awaiting_approval`), `unknown` without a run
    /// record.
    pub outcome: String,
    /// Whether its actions were only planned.
    pub dry_run: bool,
    /// The event it answered.
    pub event: Option<EventRef>,
    /// Images it revoked.
    pub revoked: Vec<String>,
    /// What it did, step by step.
    pub steps: Vec<StepRow>,
}

/// The event behind a remediation.
#[derive(Debug, Clone, Serialize)]
pub struct EventRef {
    /// Its id.
    pub id: String,
    /// Its source (`trivy`, `grype`...).
    pub source: Option<String>,
    /// Its title.
    pub title: Option<String>,
    /// When it was recorded.
    pub time: String,
    /// Its image.
    pub image: Option<String>,
    /// Its findings by severity.
    pub findings: Option<BTreeMap<String, usize>>,
}

/// One step of a remediation.
#[derive(Debug, Clone, Serialize)]
pub struct StepRow {
    /// When it finished.
    pub time: String,
    /// The step id.
    pub step: Option<String>,
    /// `<connector>.<action>`.
    pub action: Option<String>,
    /// `ok`, `failed`, `skipped`, `planned`...
    pub outcome: String,
    /// Why, when not plain success.
    pub reason: Option<String>,
    /// What the connector reported, shortened.
    pub summary: String,
}

/// The revocation list at the time of the report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ListState {
    /// Enforced entries.
    pub revoked: usize,
    /// Entries kept as proof, no longer enforced.
    pub reinstated: usize,
    /// Every entry.
    pub entries: Vec<Revocation>,
}
fn offset_time(t: DateTime<Utc>) -> Result<time::OffsetDateTime> {
    let nanos = i128::from(t.timestamp_nanos_opt().unwrap_or(0));
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos).context("the time is out of range")
}

/// Reads the audit stream between `since` and `until` into `agg`.
pub async fn read_audit(
    js: &async_nats::jetstream::Context,
    stream_name: &str,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    agg: &mut Aggregate,
) -> Result<()> {
    let mut stream = js
        .get_stream(stream_name)
        .await
        .with_context(|| format!("no audit stream `{stream_name}` (has the engine run there?)"))?;
    let state = stream
        .info()
        .await
        .context("cannot read the audit stream's state")?
        .state
        .clone();
    let start = offset_time(since)?;
    let end = offset_time(until)?;
    if state.messages == 0 || state.last_timestamp < start {
        return Ok(());
    }
    let last = state.last_sequence;
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            deliver_policy: DeliverPolicy::ByStartTime { start_time: start },
            ..Default::default()
        })
        .await
        .context("cannot create a reader on the audit stream")?;
    let mut messages = consumer
        .messages()
        .await
        .context("cannot read the audit stream")?;
    loop {
        let next = tokio::time::timeout(IDLE, messages.next()).await;
        let msg = match next {
            Ok(Some(Ok(m))) => m,
            Ok(Some(Err(e))) => bail!("cannot read the audit stream: {e}"),
            Ok(None) => return Ok(()),
            Err(_) => bail!(
                "the audit stream sent nothing for {}s before its last record",
                IDLE.as_secs()
            ),
        };
        let (seq, published) = match msg.info() {
            Ok(i) => (i.stream_sequence, i.published),
            Err(e) => bail!("an audit message without its metadata: {e}"),
        };
        if published > end {
            return Ok(());
        }
        agg.add_message(crate::audit::parse_message(&msg.payload));
        if seq >= last {
            return Ok(());
        }
    }
}

/// Runs `riposte report ...`. Returns the exit code.
pub async fn report(a: ReportArgs) -> Result<i32> {
    match a.command {
        ReportCommand::Compliance(a) => compliance(a).await,
    }
}

async fn compliance(a: ComplianceArgs) -> Result<i32> {
    let now = Utc::now();
    let since = parse_since(&a.since, now).context("--since")?;
    let until = match &a.until {
        Some(u) => parse_since(u, now).context("--until")?,
        None => now,
    };
    if until < since {
        bail!("--until is before --since");
    }
    let config = load_config(a.config.config.as_deref())?;
    let url = client_url(a.nats.nats.clone(), &config);
    let client = crate::bus::connect(&config.nats, &url, "riposte report").await?;
    let js = crate::bus::jetstream(client);
    let mut agg = Aggregate::default();
    read_audit(
        &js,
        &config.engine.names.audit_stream,
        since,
        until,
        &mut agg,
    )
    .await?;
    let list = RevocationList::open(
        &js,
        &config.engine.names.kv_prefix,
        config.nats.replicas,
        None,
    )
    .await
    .with_context(|| format!("cannot open the revocation list on {url}"))?
    .all()
    .await?
    .into_iter()
    .map(|(e, _)| e)
    .collect();
    let report = agg.finish(since, until, list);
    let text = match a.format {
        ReportFormat::Json => {
            let mut s = serde_json::to_string_pretty(&report)?;
            s.push('\n');
            s
        }
        ReportFormat::Md => markdown::markdown(&report),
        ReportFormat::Html => html::html(&report),
    };
    match &a.output {
        Some(p) => {
            std::fs::write(p, text).with_context(|| format!("cannot write `{}`", p.display()))?;
            eprintln!(
                "compliance report written to {} ({} records read)",
                p.display(),
                report.records
            );
        }
        None => std::io::stdout().lock().write_all(text.as_bytes())?,
    }
    Ok(0)
}
