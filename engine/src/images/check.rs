//! `riposte images`: read and change the revocation list from the command line.
//!
//! - `check REF...`: for CI pipelines, whether each image is revoked and why; exit 0 when none
//!   is, 1 when any is, else 2 when one could not be decided (a bad reference, NATS away).
//! - `list`, `history REF`: the entries and every revision of one.
//! - `revoke`, `reinstate`: changes made by a person, audited like the engine's (a `revocation`
//!   record written by replica `cli`). A change is refused when there is no audit stream to
//!   record it in.
//!
//! Never decides "not revoked" on a failure: an image whose lookup failed is undecided.

use std::io::Write;
use std::sync::Arc;

use anyhow::{bail, Context as _, Result};
use clap::{Args, Subcommand, ValueEnum};
use riposte_connectors::revocation::{
    key_for, Decision, ImageRef, Revocation, RevocationList, State,
};
use serde_json::{json, Value};

use super::AuditRecorder;
use crate::audit::AuditSink;
use crate::cli::{client_url, load_config, ConfigArg, NatsArg};
use crate::clock::SystemClock;
use crate::config::Config;

/// Arguments of `images`.
#[derive(Debug, Args)]
pub struct ImagesArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: ImagesCommand,
}

/// Output formats of the `images` commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Lines for people.
    Text,
    /// JSON for tools.
    Json,
}

/// The `images` commands.
#[derive(Debug, Subcommand)]
pub enum ImagesCommand {
    /// Whether images are revoked, and why: for CI pipelines.
    ///
    /// Looks each image up by digest, then by tagged reference (`nginx` is
    /// `docker.io/library/nginx:latest`). Exits 0 when none is revoked, 1 when any is, else 2
    /// when one could not be decided (a bad reference, NATS unreachable).
    #[command(
        after_help = "Examples:\n  riposte images check registry.example.com/shop/cart:1.4\n  riposte images check app@sha256:<64 hex> --format json"
    )]
    Check(CheckArgs),
    /// The revoked images (with `--all`, the reinstated ones too).
    List(ListArgs),
    /// Revoke an image by hand: admission and the Docker plugin refuse it from then on.
    #[command(
        after_help = "Example:\n  riposte images revoke registry.example.com/shop/cart:1.4 --reason \"CVE-2024-3094 in xz\" --as alice --finding CVE-2024-3094"
    )]
    Revoke(RevokeArgs),
    /// Reinstate a revoked image: it stays in the list as proof, no longer enforced.
    Reinstate(ReinstateArgs),
    /// Every revision of an image's entry, oldest first.
    History(HistoryArgs),
}

/// Where NATS is and how to print.
#[derive(Debug, Args)]
pub struct Common {
    #[command(flatten)]
    nats: NatsArg,
    #[command(flatten)]
    config: ConfigArg,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
}

/// Arguments of `images check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Image references (`[registry/]repository[:tag][@sha256:...]`).
    #[arg(required = true, value_name = "REF")]
    images: Vec<String>,
    #[command(flatten)]
    common: Common,
}

/// Arguments of `images list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Include reinstated entries.
    #[arg(long)]
    all: bool,
    #[command(flatten)]
    common: Common,
}

/// Arguments of `images revoke`.
#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// The image (with a tag, a digest, or both).
    #[arg(value_name = "REF")]
    image: String,
    /// Why, in words.
    #[arg(long)]
    reason: String,
    /// Who revokes it.
    #[arg(long = "as", value_name = "NAME")]
    by: String,
    /// A finding behind it (CVE id, secret rule id); repeatable.
    #[arg(long = "finding", value_name = "ID")]
    findings: Vec<String>,
    #[command(flatten)]
    common: Common,
}

/// Arguments of `images reinstate`.
#[derive(Debug, Args)]
pub struct ReinstateArgs {
    /// The image.
    #[arg(value_name = "REF")]
    image: String,
    /// Who reinstates it.
    #[arg(long = "as", value_name = "NAME")]
    by: String,
    /// Why.
    #[arg(long)]
    reason: String,
    #[command(flatten)]
    common: Common,
}

/// Arguments of `images history`.
#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// The image.
    #[arg(value_name = "REF")]
    image: String,
    #[command(flatten)]
    common: Common,
}

/// Runs `riposte images ...`. Returns the exit code.
pub async fn images(a: ImagesArgs) -> Result<i32> {
    match a.command {
        ImagesCommand::Check(a) => check(a).await,
        ImagesCommand::List(a) => list(a).await,
        ImagesCommand::Revoke(a) => revoke(a).await,
        ImagesCommand::Reinstate(a) => reinstate(a).await,
        ImagesCommand::History(a) => history(a).await,
    }
}

/// Connects and opens the list; with `audited`, changes are recorded as replica `cli`, and the
/// audit stream must exist.
async fn open(c: &Common, what: &str, audited: bool) -> Result<(Config, RevocationList)> {
    let config = load_config(c.config.config.as_deref())?;
    let url = client_url(c.nats.nats.clone(), &config);
    let client = crate::bus::connect(&config.nats, &url, what).await?;
    let js = crate::bus::jetstream(client);
    let recorder = if audited {
        let name = &config.engine.names.audit_stream;
        js.get_stream(name).await.with_context(|| {
            format!(
                "no audit stream `{name}` on {url} to record the change in (has the engine run there?)"
            )
        })?;
        let recorder: Arc<dyn riposte_connectors::revocation::ChangeRecorder> =
            Arc::new(AuditRecorder {
                audit: AuditSink::JetStream {
                    js: Box::new(js.clone()),
                    subject: config.engine.names.audit_subject.clone(),
                },
                replica: "cli".to_owned(),
                clock: Arc::new(SystemClock),
            });
        Some(recorder)
    } else {
        None
    };
    let list = RevocationList::open(
        &js,
        &config.engine.names.kv_prefix,
        config.nats.replicas,
        recorder,
    )
    .await
    .with_context(|| format!("cannot open the revocation list on {url}"))?;
    Ok((config, list))
}

fn parse(image: &str) -> Result<ImageRef> {
    Ok(ImageRef::parse(image)?)
}

/// `docker.io/library/nginx:1.25@sha256:...`, from what the entry knows.
pub fn entry_name(e: &Revocation) -> String {
    match (&e.reference, &e.digest) {
        (Some(r), Some(d)) => format!("{r}@{d}"),
        (Some(r), None) => r.clone(),
        (None, Some(d)) => d.clone(),
        (None, None) => "-".to_owned(),
    }
}

/// One line about an entry: state, who and when, why, findings, and where it came from.
pub fn entry_line(e: &Revocation) -> String {
    let mut s = match (&e.state, &e.reinstated) {
        (State::Reinstated, Some(d)) => format!(
            "reinstated {} by {}{} (revoked {} by {}: {})",
            d.at,
            d.by,
            d.reason
                .as_ref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default(),
            e.revoked.at,
            e.revoked.by,
            e.reason
        ),
        _ => format!("revoked {} by {}: {}", e.revoked.at, e.revoked.by, e.reason),
    };
    if !e.findings.is_empty() {
        s.push_str(&format!(" [findings: {}]", e.findings.join(", ")));
    }
    let origin: Vec<String> = [
        e.playbook.as_ref().map(|p| format!("playbook {p}")),
        e.run_id.as_ref().map(|r| format!("run {r}")),
        e.event_id.as_ref().map(|v| format!("event {v}")),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !origin.is_empty() {
        s.push_str(&format!(" ({})", origin.join(", ")));
    }
    s
}

async fn check(a: CheckArgs) -> Result<i32> {
    let parsed: Vec<(String, Result<ImageRef, String>)> = a
        .images
        .iter()
        .map(|i| (i.clone(), ImageRef::parse(i).map_err(|e| e.to_string())))
        .collect();
    // Bad references are reported even when NATS is away.
    let opened = if parsed.iter().any(|(_, p)| p.is_ok()) {
        Some(open(&a.common, "riposte images check", false).await)
    } else {
        None
    };
    let list = match opened {
        Some(Ok((_, list))) => Some(list),
        Some(Err(e)) => {
            let why = format!("{e:#}");
            return report_check(
                &a.common,
                parsed
                    .into_iter()
                    .map(|(i, p)| {
                        let why = match p {
                            Ok(r) => format!("cannot decide {r}: {why}"),
                            Err(e) => e,
                        };
                        (i, Err(why))
                    })
                    .collect(),
            );
        }
        None => None,
    };
    let mut results = Vec::with_capacity(parsed.len());
    for (input, p) in parsed {
        let found = match (p, &list) {
            (Ok(r), Some(list)) => match list.find(&r).await {
                Ok(found) => Ok((r, found.map(|(e, _)| e))),
                Err(e) => Err(format!("cannot decide {r}: {e}")),
            },
            (Ok(r), None) => Err(format!("cannot decide {r}")),
            (Err(e), _) => Err(e),
        };
        results.push((input, found));
    }
    report_check(&a.common, results)
}

type Checked = Result<(ImageRef, Option<Revocation>), String>;

fn report_check(c: &Common, results: Vec<(String, Checked)>) -> Result<i32> {
    let revoked = results
        .iter()
        .filter(|(_, r)| matches!(r, Ok((_, Some(e))) if e.state == State::Revoked))
        .count();
    let undecided = results.iter().filter(|(_, r)| r.is_err()).count();
    let mut out = std::io::stdout().lock();
    let mut rows = Vec::new();
    for (input, r) in &results {
        match r {
            Ok((image, entry)) => {
                let status = match entry {
                    Some(e) if e.state == State::Revoked => "revoked",
                    Some(_) => "reinstated",
                    None => "not_revoked",
                };
                if c.format == Format::Json {
                    rows.push(json!({
                        "image": input, "reference": image.to_string(), "status": status,
                        "revoked": status == "revoked", "entry": entry,
                    }));
                } else {
                    let detail = match entry {
                        Some(e) => entry_line(e),
                        None => "not revoked".to_owned(),
                    };
                    let tag = match status {
                        "revoked" => "REVOKED",
                        "reinstated" => "ok (reinstated)",
                        _ => "ok",
                    };
                    writeln!(out, "{tag:<8} {image}: {detail}")?;
                }
            }
            Err(why) => {
                if c.format == Format::Json {
                    rows.push(json!({ "image": input, "status": "undecided", "error": why }));
                } else {
                    writeln!(out, "ERROR    {input}: {why}")?;
                }
            }
        }
    }
    let code = if revoked > 0 {
        1
    } else {
        2 * i32::from(undecided > 0)
    };
    if c.format == Format::Json {
        writeln!(
            out,
            "{}",
            json!({ "images": rows, "revoked": revoked, "undecided": undecided, "exit_code": code })
        )?;
    } else {
        eprintln!(
            "{} image(s) checked: {revoked} revoked, {undecided} undecided",
            results.len()
        );
    }
    Ok(code)
}

async fn list(a: ListArgs) -> Result<i32> {
    let (_, list) = open(&a.common, "riposte images list", false).await?;
    let entries: Vec<Revocation> = list
        .all()
        .await?
        .into_iter()
        .map(|(e, _)| e)
        .filter(|e| a.all || e.state == State::Revoked)
        .collect();
    let mut out = std::io::stdout().lock();
    for e in &entries {
        if a.common.format == Format::Json {
            writeln!(out, "{}", serde_json::to_string(e)?)?;
        } else {
            writeln!(out, "{}  {}", entry_name(e), entry_line(e))?;
        }
    }
    if a.common.format == Format::Text {
        let revoked = entries.iter().filter(|e| e.state == State::Revoked).count();
        if a.all {
            eprintln!("{revoked} revoked, {} reinstated", entries.len() - revoked);
        } else {
            eprintln!("{revoked} revoked image(s)");
        }
    }
    Ok(0)
}

fn print_change(format: Format, what: &str, entry: &Revocation, extra: Value) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if format == Format::Json {
        let mut v = json!({ "change": what, "entry": entry });
        if let (Some(m), Value::Object(x)) = (v.as_object_mut(), extra) {
            m.extend(x);
        }
        writeln!(out, "{v}")?;
    } else {
        writeln!(out, "{}  {}", entry_name(entry), entry_line(entry))?;
    }
    Ok(())
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn nonempty(what: &str, value: &str) -> Result<String> {
    let v = value.trim();
    if v.is_empty() {
        bail!("{what} must not be empty");
    }
    Ok(v.to_owned())
}

async fn revoke(a: RevokeArgs) -> Result<i32> {
    let image = parse(&a.image)?;
    let reason = nonempty("--reason", &a.reason)?;
    let by = nonempty("--as", &a.by)?;
    let (_, list) = open(&a.common, "riposte images revoke", true).await?;
    let entry = Revocation {
        digest: image.digest.clone(),
        reference: image.tagged(),
        state: State::Revoked,
        reason: reason.clone(),
        findings: a
            .findings
            .iter()
            .map(|f| f.trim().to_owned())
            .filter(|f| !f.is_empty())
            .collect(),
        event_id: None,
        playbook: None,
        run_id: None,
        revoked: Decision {
            by,
            at: now(),
            reason: Some(reason),
        },
        reinstated: None,
        registry: None,
    };
    let (change, already) = list.revoke(entry).await?;
    if already {
        eprintln!("{image} was revoked already; its first revocation stands");
    }
    print_change(
        a.common.format,
        "revoked",
        &change.entry,
        json!({ "already": already }),
    )?;
    Ok(0)
}

async fn reinstate(a: ReinstateArgs) -> Result<i32> {
    let image = parse(&a.image)?;
    let reason = nonempty("--reason", &a.reason)?;
    let by = nonempty("--as", &a.by)?;
    let (_, list) = open(&a.common, "riposte images reinstate", true).await?;
    let decision = Decision {
        by,
        at: now(),
        reason: Some(reason),
    };
    match list.reinstate(&image, decision).await? {
        Some(change) => {
            print_change(a.common.format, "reinstated", &change.entry, json!({}))?;
            Ok(0)
        }
        None => {
            eprintln!(
                "{image} is not revoked: nothing to reinstate (see `riposte images history`)"
            );
            Ok(3)
        }
    }
}

async fn history(a: HistoryArgs) -> Result<i32> {
    let image = parse(&a.image)?;
    let (_, list) = open(&a.common, "riposte images history", false).await?;
    let key = match list.find(&image).await? {
        Some((e, _)) => e.key(),
        None => key_for(image.digest.as_deref(), image.tagged().as_deref()),
    };
    let revisions = match key {
        Some(k) => list.history(&k).await?,
        None => Vec::new(),
    };
    let mut out = std::io::stdout().lock();
    for e in &revisions {
        if a.common.format == Format::Json {
            writeln!(out, "{}", serde_json::to_string(e)?)?;
        } else {
            writeln!(out, "{}  {}", entry_name(e), entry_line(e))?;
        }
    }
    if revisions.is_empty() {
        eprintln!("{image} was never revoked");
        return Ok(3);
    }
    if a.common.format == Format::Text {
        eprintln!("{} revision(s)", revisions.len());
    }
    Ok(0)
}
