//! The engine service (`riposte run`): loads playbooks, reaches NATS (or starts the embedded
//! server), sets up streams, buckets and the consumer, builds the connectors, serves the ingest
//! gateway when the config asks for it (on the engine's own NATS connection), runs the
//! background workers (reverts, notification groups, approvals, the kill switch's follower),
//! and consumes until shutdown.
//!
//! Owns start-up order and its refusals: an invalid playbook set, an unknown connector or an
//! unreachable NATS stop the start with a message that says what to fix. It owns no stage of
//! the event path itself; those live in their modules.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use riposte_connectors::{BuildError, Connector, ConnectorKind, Deps};
use thiserror::Error;
use tokio_util::sync::CancellationToken;

use crate::approval::Resumer;
use crate::audit::AuditSink;
use crate::bus::{self, BusError, Processor};
use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::control;
use crate::embedded::{EmbeddedError, EmbeddedNats};
use crate::grouping::{Flusher, GroupSettings, Groups};
use crate::images::{
    admission, authz, AuditRecorder, Enforcement, EnforcementAudit, EnforcementError,
};
use crate::ingest::{self, IngestError};
use crate::matcher::Matcher;
use crate::metrics::{self, Metrics};
use crate::playbook::{load_dir, Catalog, Playbook, Problem};
use crate::revert::Scheduler;
use crate::runner::{Runner, RunnerSettings};
use crate::script::Sandbox;
use crate::state::{KvState, StateError, StateStore};

/// Why the engine could not start or stopped.
#[derive(Debug, Error)]
pub enum EngineError {
    /// Playbooks have problems.
    #[error("the playbook set is invalid ({} problem(s)):\n{}", .0.len(), .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Playbooks(Vec<Problem>),
    /// A connector instance could not be built.
    #[error(transparent)]
    Connector(#[from] BuildError),
    /// NATS trouble.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// KV trouble.
    #[error(transparent)]
    State(#[from] StateError),
    /// The embedded server could not start.
    #[error(transparent)]
    Embedded(#[from] EmbeddedError),
    /// The ingest gateway could not start.
    #[error(transparent)]
    Ingest(#[from] IngestError),
    /// The admission webhook or the AuthZ plugin could not start.
    #[error(transparent)]
    Enforcement(#[from] EnforcementError),
    /// The metrics endpoint could not listen.
    #[error("cannot serve metrics on {addr}: {reason}")]
    Metrics {
        /// Where.
        addr: String,
        /// Why.
        reason: String,
    },
}

/// What `riposte run` needs.
#[derive(Debug, Clone)]
pub struct Options {
    /// The config.
    pub config: Config,
    /// NATS URL (wins over the config's; none and none: embedded server).
    pub nats_url: Option<String>,
    /// The playbook directory.
    pub playbooks: PathBuf,
}

/// Loads and compiles the playbooks of a directory, or every problem.
pub fn load_playbooks(
    dir: &Path,
    config: &Config,
    sandbox: &Sandbox,
) -> Result<Vec<Playbook>, Vec<Problem>> {
    let (playbooks, problems) = load_dir(dir, &Catalog::from_config(config), sandbox);
    if problems.is_empty() {
        Ok(playbooks)
    } else {
        Err(problems)
    }
}

/// Builds every connector instance: the defaults, then the config's.
pub fn build_connectors(
    config: &Config,
    deps: &Deps,
) -> Result<HashMap<String, Arc<dyn Connector>>, BuildError> {
    let mut out: HashMap<String, Arc<dyn Connector>> = HashMap::new();
    let empty = serde_json::Map::new();
    for kind in ConnectorKind::ALL
        .into_iter()
        .filter(|k| k.has_default_instance())
    {
        if !config.connectors.contains_key(kind.as_str()) {
            out.insert(
                kind.as_str().to_owned(),
                kind.build(kind.as_str(), &empty, deps)?,
            );
        }
    }
    for (name, inst) in &config.connectors {
        let kind = ConnectorKind::parse(&inst.kind).ok_or_else(|| BuildError::Config {
            instance: name.clone(),
            reason: format!("unknown connector type `{}`", inst.kind),
        })?;
        out.insert(name.clone(), kind.build(name, &inst.settings, deps)?);
    }
    Ok(out)
}

/// This replica's name: configured, else host name and process id.
pub fn replica_name(config: &Config) -> String {
    config.engine.replica.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "riposte".to_owned());
        format!("{host}-{}", std::process::id())
    })
}

/// The runner settings a config gives.
pub fn runner_settings(config: &Config, plan_only: bool) -> RunnerSettings {
    RunnerSettings {
        step_timeout: config.engine.step_timeout.get(),
        protect: config.protect.clone(),
        limits: config.limits.clone(),
        replica: replica_name(config),
        plan_only,
    }
}

/// Runs the engine until `shutdown` is cancelled.
pub async fn run(opts: Options, shutdown: CancellationToken) -> Result<(), EngineError> {
    let config = opts.config;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let sandbox = Sandbox::new(clock.clone());
    let playbooks =
        load_playbooks(&opts.playbooks, &config, &sandbox).map_err(EngineError::Playbooks)?;
    tracing::info!(count = playbooks.len(), dir = %opts.playbooks.display(), "playbooks loaded");
    // The gateway's files are read before anything starts, so a bad one stops the start at once.
    let gateway = match &config.ingest {
        Some(i) if i.listen.is_some() => Some(
            ingest::Prepared::load(i, &config.engine, clock.clone())?
                .with_replicas(config.nats.replicas),
        ),
        _ => None,
    };
    let mut embedded = None;
    let url = match opts.nats_url.or_else(|| config.nats.url.clone()) {
        Some(url) => url,
        None => {
            let server = EmbeddedNats::start(
                &config.engine.data_dir,
                config.nats.server_binary.as_deref(),
            )
            .await?;
            let url = server.url.clone();
            embedded = Some(server);
            url
        }
    };
    let result = serve(config, url, playbooks, gateway, sandbox, clock, shutdown).await;
    if let Some(server) = embedded {
        server.stop().await;
    }
    result
}

async fn serve(
    config: Config,
    url: String,
    playbooks: Vec<Playbook>,
    gateway: Option<ingest::Prepared>,
    sandbox: Sandbox,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
) -> Result<(), EngineError> {
    let replica = replica_name(&config);
    let client = bus::connect(&config.nats, &url, &format!("riposte {replica}")).await?;
    tracing::info!(%url, "connected to NATS");
    let js = bus::jetstream(client.clone());
    let stream_id = bus::ensure_streams(&js, &config).await?;
    let consumer = bus::ensure_consumer(&js, &config).await?;
    let kv_state = KvState::open(&js, &config.engine.names.kv_prefix, config.nats.replicas).await?;
    let reverts = kv_state.reverts().clone();
    let approvals = kv_state.approvals().clone();
    let state: Arc<dyn StateStore> = Arc::new(kv_state);
    let audit = AuditSink::JetStream {
        js: Box::new(js.clone()),
        subject: config.engine.names.audit_subject.clone(),
    };
    let images = Enforcement::start(
        &js,
        &config.engine.names.kv_prefix,
        config.nats.replicas,
        AuditRecorder {
            audit: audit.clone(),
            replica: replica.clone(),
            clock: clock.clone(),
        },
        config.images.admission.is_some() || config.images.authz.is_some(),
        shutdown.clone(),
    )
    .await
    .map_err(|e| EngineError::State(StateError(e.to_string())))?;
    let connectors = build_connectors(
        &config,
        &Deps {
            nats: Some(client.clone()),
            data_dir: config.engine.data_dir.clone(),
            protect: config.protect.protection(),
            revocations: Some(images.list.clone()),
        },
    )?;
    let metrics = Arc::new(Metrics::new());
    // The kill switch is read before anything consumes: a paused estate stays paused.
    let (switch, following) = control::start(
        &js,
        &config.engine.names.kv_prefix,
        config.nats.replicas,
        metrics.clone(),
        shutdown.clone(),
    )
    .await?;
    let addr = metrics::serve(metrics.clone(), config.metrics.listen, shutdown.clone())
        .await
        .map_err(|e| EngineError::Metrics {
            addr: config.metrics.listen.to_string(),
            reason: e.to_string(),
        })?;
    tracing::info!(%addr, "metrics and health on http://{addr}/metrics");
    let gateway = match (gateway, config.ingest.as_ref().and_then(|i| i.listen)) {
        (Some(prepared), Some(listen)) => Some(
            prepared
                .serve(
                    listen,
                    client.clone(),
                    metrics.clone(),
                    clock.clone(),
                    shutdown.clone(),
                )
                .await?,
        ),
        _ => None,
    };
    // The enforcement points listen before the engine reports ready.
    let mut enforcing = Vec::new();
    if config.images.admission.is_some() || config.images.authz.is_some() {
        let (enforcement_audit, writer) = EnforcementAudit::start(
            audit.clone(),
            replica.clone(),
            clock.clone(),
            metrics.clone(),
            shutdown.clone(),
        );
        enforcing.push(writer);
        if let Some(a) = &config.images.admission {
            let served = admission::serve(
                a,
                images.index.clone(),
                metrics.clone(),
                enforcement_audit.clone(),
                shutdown.clone(),
            )
            .await?;
            enforcing.push(served.task);
        }
        if let Some(a) = &config.images.authz {
            let served = authz::serve(
                a,
                images.index.clone(),
                metrics.clone(),
                enforcement_audit,
                shutdown.clone(),
            )
            .await?;
            enforcing.push(served.task);
        }
    }
    let runner = Runner::new(
        sandbox,
        connectors,
        state,
        clock.clone(),
        metrics.clone(),
        runner_settings(&config, false),
    )
    .with_switch(switch.clone());
    let n = &config.notifications;
    let mut flushing = None;
    let runner = if n.group_by.is_empty() {
        runner
    } else {
        let groups = Groups::open(
            &js,
            &config.engine.names.kv_prefix,
            config.nats.replicas,
            GroupSettings {
                by: n.group_by.clone(),
                wait: n.group_wait.get(),
                interval: n.group_interval.get(),
                repeat: n.repeat_interval.get(),
            },
        )
        .await?;
        let flusher = Flusher {
            groups: groups.clone(),
            connectors: runner.connectors(),
            audit: audit.clone(),
            replica: replica.clone(),
            clock: clock.clone(),
            timeout: config.engine.step_timeout.get(),
            every: Duration::from_millis(500),
        };
        flushing = Some(tokio::spawn(flusher.run(shutdown.clone())));
        runner.with_grouping(groups)
    };
    let scheduler = Scheduler {
        reverts,
        connectors: runner.connectors(),
        audit: audit.clone(),
        replica: replica.clone(),
        clock: clock.clone(),
        timeout: config.engine.step_timeout.get(),
        every: Duration::from_secs(1),
        switch,
    };
    let reverting = tokio::spawn(scheduler.run(shutdown.clone()));
    let matcher = Matcher::new(playbooks);
    let resumer = Resumer {
        approvals,
        runner: runner.clone(),
        playbooks: matcher.playbooks().to_vec(),
        needs_data: matcher.needs_data(),
        audit: audit.clone(),
        replica: replica.clone(),
        clock: clock.clone(),
        every: Duration::from_secs(1),
    };
    let resuming = tokio::spawn(resumer.run(shutdown.clone()));
    let processor = Arc::new(Processor {
        audit,
        matcher,
        runner,
        js,
        metrics,
        clock,
        config,
        stream_id,
    });
    let consumed = bus::consume(processor, consumer, shutdown.clone()).await;
    shutdown.cancel();
    if let Err(e) = following.await {
        tracing::warn!(error = %e, "kill switch follower ended abnormally");
    }
    if let Err(e) = reverting.await {
        tracing::warn!(error = %e, "revert scheduler ended abnormally");
    }
    if let Err(e) = resuming.await {
        tracing::warn!(error = %e, "approval resumer ended abnormally");
    }
    if let Some(task) = flushing {
        if let Err(e) = task.await {
            tracing::warn!(error = %e, "notification flusher ended abnormally");
        }
    }
    for task in enforcing {
        if let Err(e) = task.await {
            tracing::warn!(error = %e, "an enforcement point ended abnormally");
        }
    }
    if let Some(g) = gateway {
        if let Err(e) = g.task.await {
            tracing::warn!(error = %e, "ingest gateway ended abnormally");
        }
    }
    consumed?;
    if let Err(e) = client.flush().await {
        tracing::warn!(error = %e, "final flush failed");
    }
    tracing::info!("engine stopped");
    Ok(())
}
