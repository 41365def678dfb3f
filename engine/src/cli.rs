//! The command line: `riposte run | ingest | check | test | explain | publish | audit | revert |
//! approve | pause | resume | rbac | images | report | schema | bench`.
//!
//! Owns argument parsing and what each command prints; the work is done by the library
//! modules. Commands that talk to NATS take `--nats URL` (else `RIPOSTE_NATS_URL`, the config's
//! URL, the embedded server's `<data dir>/nats.url`, then `nats://127.0.0.1:4222`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::clock::SystemClock;
use crate::config::Config;
use crate::embedded::url_file;
use crate::engine::{self, load_playbooks};
use crate::event::Source;
use crate::script::Sandbox;
use crate::testing::{run_tests, verdict_text, Simulator};

/// riposte: security events in, audited responses out.
#[derive(Debug, Parser)]
#[command(
    name = "riposte",
    version,
    about,
    long_about = "riposte matches security events (Falco, Tetragon, Trivy, Grype, Kubernetes audit, Alertmanager, Harbor, CloudEvents, any JSON) arriving on NATS JetStream to YAML playbooks with Rhai conditions, and runs their responses through connectors, recording every decision in an audit stream."
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_parser = ["text", "json"], default_value = "text", env = "RIPOSTE_LOG_FORMAT")]
    pub log_format: String,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the engine: consume events from NATS and run the playbooks.
    ///
    /// Without a NATS URL (flag, RIPOSTE_NATS_URL or config), starts and supervises a local
    /// nats-server with JetStream in the data directory. Refuses to start on an invalid playbook
    /// set. Stops on SIGINT/SIGTERM: runs in flight get the grace period, then are abandoned
    /// (and redelivered to another replica or the next start).
    Run(RunArgs),
    /// Serve the authenticated HTTP ingest gateway alone: `POST /v1/events/{format}` publishes
    /// the body to `riposte.in.<format>` on NATS.
    ///
    /// Needs an `ingest:` section in the config (tokens_file, hmac_keys_file or a client CA);
    /// `riposte run` serves the same gateway itself when that section has `listen`. Senders get
    /// 202 with the event ids once JetStream stored the payload, 401 without valid credentials,
    /// 413 over the body limit, 400 when the format's normalizer refuses the payload, and 503
    /// (with Retry-After) when NATS does not take it.
    #[command(
        after_help = "Examples:\n  riposte ingest --config riposte.yaml --listen 0.0.0.0:8443\n  curl -H \"Authorization: Bearer $(cat token)\" --data-binary @alert.json http://127.0.0.1:8443/v1/events/falco"
    )]
    Ingest(IngestArgs),
    /// Check playbooks: schema, unknown keys, connectors, actions, parameters, Rhai syntax.
    ///
    /// Prints `file:line:column: message` for every problem and exits 1 when there is any.
    Check(DirArgs),
    /// Run every playbook's `tests:` cases with connectors in plan mode.
    ///
    /// Prints one line per case and a summary `N passed, N failed`; exits 1 on any failure.
    Test(DirArgs),
    /// Show what the playbooks would do with a payload: the normalized events, each playbook's
    /// verdict (with the reason for a non-match) and the planned steps with their arguments.
    Explain(ExplainArgs),
    /// Publish a file's payload to a subject (to try things out); waits until it is stored.
    #[command(
        after_help = "Examples:\n  riposte publish alert.json --subject falco.critical.terminal_shell_in_container\n  riposte publish report.json --format trivy          (to riposte.in.trivy)\n  riposte publish alerts.jsonl --format falco --lines  (one message per line)"
    )]
    Publish(PublishArgs),
    /// Read the audit trail.
    ///
    /// Every decision is one record: `event` (matched or no_match, with the playbooks that
    /// matched), `condition_error`, `dedup`, `limit`, `step_started` (before a destructive
    /// action), `attempt` (a failed attempt that is tried again), `step`, `notify` (also a
    /// group's notice), `run`, `revert`, `control` (`riposte pause` and `resume`), and
    /// `rejected` (a dead-lettered payload, with its reason). Text output shows time, record,
    /// outcome, run, playbook, step, action and reason; `--json` prints one record per line as
    /// described by schemas/audit.schema.json.
    #[command(
        after_help = "Examples:\n  riposte audit --since 10m\n  riposte audit --playbook shell-in-container --json | jq .\n  riposte audit --run r-3dd4e314280750b7428a\n  riposte audit --follow"
    )]
    Audit(AuditArgs),
    /// Undo the reversible steps of a run now (quarantine, pause...), or list pending undos.
    ///
    /// Marks the run's undos due now; a running engine (any replica) carries them out within
    /// a second and records a `revert` audit record for each, which this command prints. Works
    /// from any machine that reaches NATS. Exits 0 when every undo succeeded, 1 when one failed
    /// or did not happen within `--wait`, 2 when the run has nothing to undo.
    #[command(
        after_help = "Examples:\n  riposte revert r-3dd4e314280750b7428a\n  riposte revert r-3dd4e314280750b7428a --step isolate --as alice\n  riposte revert --list"
    )]
    Revert(RevertArgs),
    /// Decide on a step that waits for approval (`approval:` in its playbook), or list those
    /// that wait.
    ///
    /// Records the decision in NATS (refused when the step is unknown, already decided or
    /// timed out, or when `--as` is not among its approvers); a running engine (any replica)
    /// then resumes the run from that step within a second: approved, the step and the rest of
    /// the playbook run; denied, the step is skipped and the rest runs as after any skipped
    /// step. Waits for the resumed run and prints its records. Exits 0 when the run went on
    /// and ended without failure, 1 when it failed or was not resumed within `--wait`, 3 when
    /// nothing waits under RUN_ID STEP, 4 when it is decided already or timed out, 5 when NAME
    /// may not decide it.
    #[command(
        after_help = "Examples:\n  riposte approve --list\n  riposte approve r-3dd4e314280750b7428a scale_down --as alice\n  riposte approve r-3dd4e314280750b7428a scale_down --as alice --deny --reason \"planned load test\""
    )]
    Approve(ApproveArgs),
    /// Stop enforcement on every replica (the kill switch), or show whether it is stopped.
    ///
    /// Within a second every replica plans runs instead of performing them (their records say
    /// `enforcement paused by NAME: REASON`), still sends notifications, and holds reverts that
    /// fall due until `riposte resume`. Survives restarts. Audited as a `control` record.
    #[command(
        after_help = "Examples:\n  riposte pause --as alice --reason \"runaway playbook, investigating\"\n  riposte pause --status"
    )]
    Pause(crate::control::ControlArgs),
    /// Let every replica enforce again after `riposte pause`.
    #[command(after_help = "Examples:\n  riposte resume --as alice --reason \"fixed\"")]
    Resume(crate::control::ControlArgs),
    /// Print the least-privilege Kubernetes RBAC (a ClusterRole, and a binding with `--bind`)
    /// for the `kubernetes` actions the playbooks use, plus reading pods and their owners for
    /// enrichment.
    ///
    /// Apply it with `riposte rbac playbooks --bind riposte/riposte | kubectl apply -f -`.
    /// A playbook that later uses another action fails with the API's 403, which names the
    /// missing verb.
    #[command(
        after_help = "Examples:\n  riposte rbac playbooks\n  riposte rbac playbooks --bind riposte/riposte-engine\n  riposte rbac --all --name riposte-responder"
    )]
    Rbac(RbacArgs),
    /// Check, list, revoke and reinstate images on the revocation list.
    ///
    /// `check` is for CI pipelines: exit 0 when no image given is revoked, 1 when one is, 2
    /// when one could not be decided. Changes made here are audited (replica `cli`).
    #[command(
        after_help = "Examples:\n  riposte images check registry.example.com/shop/cart:1.4\n  riposte images list --all\n  riposte images revoke shop/cart:1.4 --reason \"CVE-2024-3094\" --as alice --finding CVE-2024-3094\n  riposte images reinstate shop/cart:1.4 --as alice --reason \"rebuilt without xz 5.6\"\n  riposte images history shop/cart:1.4"
    )]
    Images(crate::images::check::ImagesArgs),
    /// Reports from the audit trail: `riposte report compliance --since 30d --format md|json|html`.
    Report(crate::images::report::ReportArgs),
    /// Write the JSON Schemas (playbook, config, event, audit record) to a directory.
    Schema(SchemaArgs),
    /// Measure throughput and latency against a local nats-server (see README).
    Bench(crate::bench::BenchArgs),
}

/// Where the config is.
#[derive(Debug, Args)]
pub struct ConfigArg {
    /// The engine config (riposte.yaml). Without it, defaults apply.
    #[arg(long, short = 'c', env = "RIPOSTE_CONFIG")]
    pub config: Option<PathBuf>,
}

impl ConfigArg {
    fn load(&self) -> Result<Config> {
        match &self.config {
            Some(p) => Ok(Config::load(p)?),
            None => Ok(Config::default_with_bindings()),
        }
    }
}

/// Where NATS is.
#[derive(Debug, Args)]
pub struct NatsArg {
    /// NATS server URL.
    #[arg(long, env = "RIPOSTE_NATS_URL")]
    pub nats: Option<String>,
}

impl NatsArg {
    fn url(&self, config: &Config) -> String {
        if let Some(u) = self.nats.clone().or_else(|| config.nats.url.clone()) {
            return u;
        }
        std::fs::read_to_string(url_file(&config.engine.data_dir))
            .map(|s| s.trim().to_owned())
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "nats://127.0.0.1:4222".to_owned())
    }
}

/// The config and NATS URL of a command that only talks to NATS.
#[derive(Debug, Args)]
pub struct Target {
    #[command(flatten)]
    nats: NatsArg,
    #[command(flatten)]
    config: ConfigArg,
}

impl Target {
    /// The config and the NATS URL the command uses.
    pub fn resolve(&self) -> Result<(Config, String)> {
        let config = self.config.load()?;
        let url = self.nats.url(&config);
        Ok((config, url))
    }
}

/// Arguments of `run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    config: ConfigArg,
    #[command(flatten)]
    nats: NatsArg,
    /// The playbook directory (default: the config's `engine.playbooks`, else `playbooks`).
    #[arg(long, short = 'p')]
    playbooks: Option<PathBuf>,
    /// Where the embedded nats-server keeps its data (default: the config's, else `.riposte`).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Address of the metrics and health endpoint.
    #[arg(long)]
    metrics_listen: Option<std::net::SocketAddr>,
    /// This replica's name in audit records.
    #[arg(long)]
    replica: Option<String>,
}

/// Arguments of `ingest`.
#[derive(Debug, Args)]
pub struct IngestArgs {
    #[command(flatten)]
    config: ConfigArg,
    #[command(flatten)]
    nats: NatsArg,
    /// Address to serve the gateway on (default: the config's `ingest.listen`).
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Address of the metrics and health endpoint (default: the config's `metrics.listen`).
    #[arg(long)]
    metrics_listen: Option<std::net::SocketAddr>,
}

/// A playbook directory and the config that names the connector instances.
#[derive(Debug, Args)]
pub struct DirArgs {
    /// The playbook directory (or one file).
    pub dir: PathBuf,
    #[command(flatten)]
    config: ConfigArg,
}

/// Arguments of `rbac`.
#[derive(Debug, Args)]
pub struct RbacArgs {
    /// The playbook directory (or one file) whose `kubernetes` actions need rights.
    #[arg(default_value = "playbooks")]
    pub dir: PathBuf,
    #[command(flatten)]
    config: ConfigArg,
    /// Every action of the connector, whatever the playbooks use.
    #[arg(long)]
    all: bool,
    /// The ClusterRole's name.
    #[arg(long, default_value = "riposte")]
    name: String,
    /// Also bind the role to `NAMESPACE/SERVICEACCOUNT` or `user:NAME`.
    #[arg(long)]
    bind: Option<String>,
}

/// Arguments of `explain`.
#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// A raw producer payload.
    event_file: PathBuf,
    /// Its format.
    #[arg(long, short = 'f')]
    format: Source,
    /// The playbook directory.
    #[arg(long, short = 'p', default_value = "playbooks")]
    playbooks: PathBuf,
    #[command(flatten)]
    config: ConfigArg,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Arguments of `publish`.
#[derive(Debug, Args)]
pub struct PublishArgs {
    /// The file whose content is the payload.
    file: PathBuf,
    /// The subject (default: `riposte.in.<format>`).
    #[arg(long, short = 's')]
    subject: Option<String>,
    /// The format, used to pick the default subject.
    #[arg(long, short = 'f')]
    format: Option<Source>,
    /// Publish every non-empty line as its own message.
    #[arg(long)]
    lines: bool,
    /// A message id (`Nats-Msg-Id`): a second publish with the same id is stored once.
    #[arg(long)]
    msg_id: Option<String>,
    #[command(flatten)]
    nats: NatsArg,
    #[command(flatten)]
    config: ConfigArg,
}

/// Arguments of `audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Only records since this long ago (`10m`, `2h`) or this RFC 3339 time.
    #[arg(long)]
    since: Option<String>,
    /// Only records of this playbook.
    #[arg(long)]
    playbook: Option<String>,
    /// Only records of this run.
    #[arg(long)]
    run: Option<String>,
    /// One JSON record per line.
    #[arg(long)]
    json: bool,
    /// Keep waiting for new records.
    #[arg(long)]
    follow: bool,
    #[command(flatten)]
    nats: NatsArg,
    #[command(flatten)]
    config: ConfigArg,
}

/// Arguments of `revert`.
#[derive(Debug, Args)]
pub struct RevertArgs {
    /// The run whose steps to undo.
    #[arg(required_unless_present = "list")]
    run: Option<String>,
    /// Only this step.
    #[arg(long)]
    step: Option<String>,
    /// Who asks (recorded in the audit record).
    #[arg(long = "as", env = "USER", default_value = "cli")]
    by: String,
    /// How long to wait for the engine to carry it out.
    #[arg(long, default_value = "60s")]
    wait: humantime::Duration,
    /// List the pending undos instead.
    #[arg(long, conflicts_with_all = ["run", "step"])]
    list: bool,
    #[command(flatten)]
    nats: NatsArg,
    #[command(flatten)]
    config: ConfigArg,
}

/// Arguments of `approve`.
#[derive(Debug, Args)]
pub struct ApproveArgs {
    /// The run that waits.
    #[arg(required_unless_present = "list")]
    pub run: Option<String>,
    /// The step that waits.
    #[arg(required_unless_present = "list")]
    pub step: Option<String>,
    /// Who decides (must be among the step's `approvers`, when it lists any).
    #[arg(long = "as", value_name = "NAME", required_unless_present = "list")]
    pub by: Option<String>,
    /// Refuse: the step is skipped.
    #[arg(long)]
    pub deny: bool,
    /// Why (recorded in the audit trail).
    #[arg(long)]
    pub reason: Option<String>,
    /// How long to wait for an engine to resume the run.
    #[arg(long, default_value = "60s")]
    pub wait: humantime::Duration,
    /// List the steps that wait instead.
    #[arg(long, conflicts_with_all = ["run", "step", "deny", "reason"])]
    pub list: bool,
    /// With `--list`: one JSON object per line.
    #[arg(long, requires = "list")]
    pub json: bool,
    #[command(flatten)]
    nats: NatsArg,
    #[command(flatten)]
    config: ConfigArg,
}

impl ApproveArgs {
    /// The config and the NATS URL the command uses.
    pub fn target(&self) -> Result<(Config, String)> {
        let config = self.config.load()?;
        let url = self.nats.url(&config);
        Ok((config, url))
    }
}

/// Arguments of `schema`.
#[derive(Debug, Args)]
pub struct SchemaArgs {
    /// The directory to write to.
    #[arg(default_value = "schemas")]
    dir: PathBuf,
}

/// Runs a parsed command line. Returns the process exit code.
pub async fn main(cli: Cli, shutdown: CancellationToken) -> Result<i32> {
    match cli.command {
        Command::Run(a) => run(a, shutdown).await,
        Command::Ingest(a) => {
            let mut config = a.config.load()?;
            if let Some(m) = a.metrics_listen {
                config.metrics.listen = m;
            }
            let url = a.nats.url(&config);
            crate::ingest::run(&config, &url, a.listen, shutdown).await?;
            Ok(0)
        }
        Command::Check(a) => check(a),
        Command::Test(a) => test(a).await,
        Command::Explain(a) => explain(a).await,
        Command::Publish(a) => publish(a).await,
        Command::Audit(a) => crate::audit::read::read(a.into(), shutdown).await,
        Command::Revert(a) => revert(a).await,
        Command::Approve(a) => crate::approval::command::approve(a).await,
        Command::Pause(a) => crate::control::command(a, true).await,
        Command::Resume(a) => crate::control::command(a, false).await,
        Command::Rbac(a) => rbac(a),
        Command::Images(a) => crate::images::check::images(a).await,
        Command::Report(a) => crate::images::report::report(a).await,
        Command::Schema(a) => {
            crate::schema::write_all(&a.dir)?;
            println!("schemas written to {}", a.dir.display());
            Ok(0)
        }
        Command::Bench(a) => crate::bench::run(a).await,
    }
}

async fn run(a: RunArgs, shutdown: CancellationToken) -> Result<i32> {
    let mut config = a.config.load()?;
    if let Some(d) = a.data_dir {
        config.engine.data_dir = d;
    }
    if let Some(m) = a.metrics_listen {
        config.metrics.listen = m;
    }
    if a.replica.is_some() {
        config.engine.replica = a.replica;
    }
    let playbooks = a
        .playbooks
        .or_else(|| config.engine.playbooks.clone())
        .unwrap_or_else(|| PathBuf::from("playbooks"));
    engine::run(
        engine::Options {
            nats_url: a.nats.nats.clone().or_else(|| config.nats.url.clone()),
            config,
            playbooks,
        },
        shutdown,
    )
    .await?;
    Ok(0)
}

fn sandbox() -> Sandbox {
    Sandbox::new(std::sync::Arc::new(SystemClock))
}

fn rbac(a: RbacArgs) -> Result<i32> {
    use riposte_connectors::kubernetes;
    let config = a.config.load()?;
    let kind = riposte_connectors::ConnectorKind::Kubernetes.as_str();
    let instances: Vec<&String> = config
        .connectors
        .iter()
        .filter(|(_, i)| i.kind == kind)
        .map(|(n, _)| n)
        .collect();
    let is_kube = |name: &str| {
        instances.iter().any(|n| n.as_str() == name)
            || (name == kind && !config.connectors.contains_key(kind))
    };
    let enrichment = instances.is_empty()
        || config
            .connectors
            .values()
            .filter(|i| i.kind == kind)
            .any(|i| i.settings.get("enrich") != Some(&serde_json::Value::Bool(false)));
    let mut actions: Vec<&str> = Vec::new();
    if a.all {
        actions.extend(kubernetes::ACTIONS.iter().map(|s| s.name));
    } else {
        let playbooks = match load_playbooks(&a.dir, &config, &sandbox()) {
            Ok(p) => p,
            Err(problems) => {
                for p in &problems {
                    eprintln!("{p}");
                }
                eprintln!(
                    "{} problem(s) found: fix the playbooks first",
                    problems.len()
                );
                return Ok(1);
            }
        };
        for pb in &playbooks {
            let approval_notices = pb
                .steps
                .iter()
                .filter_map(|s| s.approval.as_ref()?.notify.as_ref())
                .flatten();
            for step in pb.steps.iter().chain(&pb.notify).chain(approval_notices) {
                if is_kube(&step.action.instance) {
                    actions.push(step.action.spec.name);
                }
            }
        }
    }
    match kubernetes::rbac::cluster_role(&a.name, &actions, enrichment, a.bind.as_deref()) {
        Ok(yaml) => {
            print!("{yaml}");
            Ok(0)
        }
        Err(e) => {
            eprintln!("riposte rbac: {e}");
            Ok(2)
        }
    }
}

fn check(a: DirArgs) -> Result<i32> {
    let config = a.config.load()?;
    match load_playbooks(&a.dir, &config, &sandbox()) {
        Ok(pbs) => {
            println!("{} playbook(s) OK in {}", pbs.len(), a.dir.display());
            Ok(0)
        }
        Err(problems) => {
            for p in &problems {
                println!("{p}");
            }
            eprintln!("{} problem(s) found", problems.len());
            Ok(1)
        }
    }
}

async fn test(a: DirArgs) -> Result<i32> {
    let config = a.config.load()?;
    let sb = sandbox();
    let playbooks = match load_playbooks(&a.dir, &config, &sb) {
        Ok(p) => p,
        Err(problems) => {
            for p in &problems {
                println!("{p}");
            }
            println!(
                "0 passed, {} failed (the playbooks do not load)",
                problems.len()
            );
            return Ok(1);
        }
    };
    let results = run_tests(&playbooks, &config, &sb).await;
    let mut out = std::io::stdout().lock();
    for r in &results {
        if r.passed() {
            writeln!(out, "PASS {} :: {}", r.playbook, r.name)?;
        } else {
            writeln!(out, "FAIL {} :: {}", r.playbook, r.name)?;
            for f in &r.failures {
                writeln!(out, "     {f}")?;
            }
        }
    }
    let passed = results.iter().filter(|r| r.passed()).count();
    let failed = results.len() - passed;
    writeln!(out, "{passed} passed, {failed} failed")?;
    Ok(i32::from(failed > 0))
}

async fn explain(a: ExplainArgs) -> Result<i32> {
    let config = a.config.load()?;
    let sb = sandbox();
    let payload = std::fs::read(&a.event_file)
        .with_context(|| format!("cannot read `{}`", a.event_file.display()))?;
    let playbooks = match load_playbooks(&a.playbooks, &config, &sb) {
        Ok(p) => p,
        Err(problems) => {
            for p in &problems {
                println!("{p}");
            }
            return Ok(1);
        }
    };
    let sim = Simulator::new(playbooks, &config, sb).map_err(anyhow::Error::msg)?;
    let simulated = match sim.simulate(a.format, &payload).await {
        Ok(s) => s,
        Err(e) => {
            println!("rejected ({}): {e}", e.code());
            return Ok(1);
        }
    };
    let mut out = std::io::stdout().lock();
    for (i, s) in simulated.iter().enumerate() {
        if a.json {
            let decisions: Vec<serde_json::Value> = s
                .decisions
                .iter()
                .map(|d| {
                    serde_json::json!({
                        "playbook": d.playbook.name,
                        "verdict": verdict_text(&d.verdict),
                        "outcome": d.run.as_ref().map(|r| r.outcome.as_str()),
                        "steps": d.run.as_ref().map(|r| r.steps.iter().map(|st| serde_json::json!({
                            "id": st.id, "action": st.action, "outcome": st.outcome.as_str(),
                            "args": st.args, "plan": st.output, "reason": st.reason,
                        })).collect::<Vec<_>>()),
                    })
                })
                .collect();
            writeln!(
                out,
                "{}",
                serde_json::json!({ "event": s.event, "decisions": decisions })
            )?;
            continue;
        }
        writeln!(out, "== event {} of {}", i + 1, simulated.len())?;
        let mut shown = serde_json::to_value(&s.event)?;
        if let Some(m) = shown.as_object_mut() {
            m.remove("data");
        }
        writeln!(out, "{}", serde_json::to_string_pretty(&shown)?)?;
        for d in &s.decisions {
            writeln!(out, "-- {}: {}", d.playbook.name, verdict_text(&d.verdict))?;
            if let Some(run) = &d.run {
                if let Some(r) = &run.reason {
                    writeln!(out, "   run {}: {r}", run.outcome.as_str())?;
                }
                for st in &run.steps {
                    let args = st
                        .args
                        .as_ref()
                        .map(ToString::to_string)
                        .unwrap_or_default();
                    let detail = st
                        .output
                        .as_ref()
                        .and_then(|o| o.get("plan"))
                        .and_then(|p| p.as_str())
                        .map(str::to_owned)
                        .or_else(|| st.reason.clone())
                        .unwrap_or_default();
                    writeln!(
                        out,
                        "   {:<8} {:<20} {} {args}\n            {detail}",
                        st.outcome.as_str(),
                        st.id,
                        st.action
                    )?;
                }
            }
        }
    }
    Ok(0)
}

async fn publish(a: PublishArgs) -> Result<i32> {
    let config = a.config.load()?;
    let subject = match (&a.subject, a.format) {
        (Some(s), _) => s.clone(),
        (None, Some(f)) => format!("riposte.in.{f}"),
        (None, None) => bail!("give --subject or --format"),
    };
    let payload =
        std::fs::read(&a.file).with_context(|| format!("cannot read `{}`", a.file.display()))?;
    let url = a.nats.url(&config);
    let client = crate::bus::connect(&config.nats, &url, "riposte publish").await?;
    let js = crate::bus::jetstream(client);
    let bodies: Vec<Vec<u8>> = if a.lines {
        payload
            .split(|b| *b == b'\n')
            .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
            .map(<[u8]>::to_vec)
            .collect()
    } else {
        vec![payload]
    };
    for (i, body) in bodies.into_iter().enumerate() {
        let mut msg = async_nats::jetstream::message::PublishMessage::build().payload(body.into());
        if let Some(id) = &a.msg_id {
            msg = msg.message_id(if i == 0 {
                id.clone()
            } else {
                format!("{id}#{i}")
            });
        }
        let ack = js
            .send_publish(subject.clone(), msg)
            .await
            .with_context(|| format!("publish to `{subject}` on {url}"))?
            .await
            .with_context(|| {
                format!("`{subject}` is not stored by any stream on {url} (is the engine running, and is the subject bound?)")
            })?;
        println!(
            "stored in {} as #{}{}",
            ack.stream,
            ack.sequence,
            if ack.duplicate {
                " (duplicate: already stored)"
            } else {
                ""
            }
        );
    }
    Ok(0)
}

impl From<AuditArgs> for crate::audit::read::Query {
    fn from(a: AuditArgs) -> Self {
        crate::audit::read::Query {
            since: a.since,
            playbook: a.playbook,
            run: a.run,
            json: a.json,
            follow: a.follow,
            nats: a.nats.nats,
            config: a.config.config,
        }
    }
}

/// Parses `10m` (that long ago) or an RFC 3339 time.
pub fn parse_since(
    text: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<chrono::DateTime<chrono::Utc>> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(t.into());
    }
    let d: Duration = humantime::parse_duration(text).with_context(|| {
        format!("`{text}` is neither a duration (10m, 2h) nor an RFC 3339 time")
    })?;
    Ok(now - chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX))
}

/// The URL client commands use, for modules outside the CLI.
async fn revert(a: RevertArgs) -> Result<i32> {
    let config = a.config.load()?;
    let url = a.nats.url(&config);
    let client = crate::bus::connect(&config.nats, &url, "riposte revert").await?;
    let js = crate::bus::jetstream(client);
    let reverts =
        crate::revert::Reverts::open(&js, &config.engine.names.kv_prefix, config.nats.replicas)
            .await?;
    let mut out = std::io::stdout().lock();
    if a.list {
        let pending = reverts.list().await?;
        for (p, _) in &pending {
            let due = p.due.map_or_else(
                || "on request".to_owned(),
                |d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            );
            writeln!(
                out,
                "{:<24} {:<16} {:<24} due {due}{}",
                p.run_id,
                p.step,
                format!("{}.{}", p.instance, p.action),
                p.last_error
                    .as_ref()
                    .map(|e| format!(" (attempt {} failed: {e})", p.attempts))
                    .unwrap_or_default()
            )?;
        }
        eprintln!("{} pending undo(s)", pending.len());
        return Ok(0);
    }
    let Some(run) = a.run else {
        bail!("give a run id, or --list");
    };
    let asked = chrono::Utc::now();
    let found = reverts
        .request(&run, a.step.as_deref(), &a.by, asked)
        .await?;
    if found.is_empty() {
        eprintln!(
            "run {run} has nothing to undo{}: it was undone already, or it made no reversible \
             change (see `riposte audit --run {run}`)",
            a.step
                .map(|s| format!(" at step `{s}`"))
                .unwrap_or_default()
        );
        return Ok(2);
    }
    let deadline = tokio::time::Instant::now() + Duration::from(a.wait);
    let mut left = found.clone();
    while !left.is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut still = Vec::new();
        for p in left {
            if reverts.contains(&p.run_id, &p.step).await? {
                still.push(p);
            }
        }
        left = still;
    }
    let records = crate::audit::read::since(&js, &config, asked).await?;
    let mut failed = !left.is_empty();
    for p in &found {
        let rec = records.iter().rev().find(|r| {
            r.record == crate::audit::RecordKind::Revert
                && r.run_id.as_deref() == Some(p.run_id.as_str())
                && r.step.as_deref() == Some(p.step.as_str())
        });
        match rec {
            Some(r) => {
                failed |= r.outcome != "ok";
                writeln!(out, "{}", crate::audit::read::line(r))?;
            }
            None if left.contains(p) => writeln!(
                out,
                "{} {}.{}: not carried out within {} (is an engine running on {url}?)",
                p.step,
                p.instance,
                p.action,
                humantime::format_duration(a.wait.into())
            )?,
            None => writeln!(out, "{} {}.{}: done", p.step, p.instance, p.action)?,
        }
    }
    Ok(i32::from(failed))
}

pub fn client_url(nats: Option<String>, config: &Config) -> String {
    NatsArg { nats }.url(config)
}

/// Loads the config named by a path, or the defaults.
pub fn load_config(path: Option<&Path>) -> Result<Config> {
    ConfigArg {
        config: path.map(Path::to_path_buf),
    }
    .load()
}
