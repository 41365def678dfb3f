//! riposte's connectors: the actions a playbook step can take.
//!
//! # Layout
//! - [`Connector`]: the one trait every connector implements: describe its actions, run one with
//!   typed arguments, plan it without side effects, revert it where an inverse exists.
//! - [`ConnectorKind`]: the closed list of connector types and the one place they are built
//!   ([`ConnectorKind::build`]); adding a connector is one module plus one variant here.
//! - [`spec`]: action and parameter descriptions, and argument checking against them.
//! - [`guard`]: what no destructive action may touch (protected names and labels).
//! - [`notice`]: the enriched notice notification connectors render natively.
//! - [`http`]: settings with secrets from files, and the JSON POST notification connectors
//!   share.
//! - one module per connector, named after its type in `riposte.yaml`: [`docker`],
//!   [`kubernetes`], [`registry`], [`log`], [`nats`]; the notification connectors [`pagerduty`], [`opsgenie`], [`slack`], [`msteams`],
//!   [`webhook`], [`alertmanager`], [`email`].
//!
//! Connectors know nothing of playbooks, the bus or the audit trail: the engine hands them
//! checked arguments and records what they return. What they share with the engine (its NATS
//! connection, its data directory, its guards) is injected through [`Deps`], so tests can hand
//! in real ones on test servers.

pub mod alertmanager;
pub mod context;
pub mod docker;
pub mod email;
mod evidence;
pub mod guard;
pub mod http;
pub mod kubernetes;
pub mod kvscan;
pub mod log;
pub mod msteams;
pub mod nats;
pub mod notice;
pub mod opsgenie;
pub mod pagerduty;
pub mod registry;
pub mod revocation;
pub mod slack;
pub mod spec;
pub mod webhook;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Map, Value};
use thiserror::Error;

pub use guard::{Protection, Selector};
pub use spec::{check_args, ActionSpec, ParamSpec, ParamType};

/// Checked arguments of one action: parameter name to value.
pub type Args = Map<String, Value>;

/// What a connector reports after an action ran.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Output {
    /// Facts about what was done, visible to later steps as `steps.<id>.output`.
    pub output: Value,
    /// What the connector needs to undo the action, for reversible actions.
    pub undo: Option<Value>,
}

/// What an action would do, without doing it.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// One sentence naming the real target, e.g. "publish 312 bytes to `alerts.derived`".
    pub description: String,
}

/// Why an action failed, and whether trying again can help.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ConnectorError {
    /// The arguments do not fit the action's parameters.
    #[error("invalid arguments for `{action}`: {reason}")]
    InvalidArgs {
        /// The action.
        action: String,
        /// What is wrong.
        reason: String,
    },
    /// The connector has no such action.
    #[error("unknown action `{0}`")]
    UnknownAction(String),
    /// A failure that may pass (network, timeout, a server busy or restarting).
    #[error("{0}")]
    Transient(String),
    /// A failure that will not pass by trying again (refused, not found, forbidden).
    #[error("{0}")]
    Permanent(String),
    /// The action has no inverse.
    #[error("`{0}` cannot be reverted")]
    NotReversible(String),
    /// A guard refused the target (protected by label, name, or the engine itself). Nothing was
    /// done; the runner records the step as skipped with this reason.
    #[error("{0}")]
    Refused(String),
}

impl ConnectorError {
    /// Invalid arguments for `action`.
    pub fn invalid(action: &str, reason: impl Into<String>) -> Self {
        ConnectorError::InvalidArgs {
            action: action.to_owned(),
            reason: reason.into(),
        }
    }

    /// Whether a retry can succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, ConnectorError::Transient(_))
    }
}

/// One connector instance: a type configured under a name in `riposte.yaml`.
#[async_trait]
pub trait Connector: Send + Sync + fmt::Debug {
    /// The actions this connector offers (the same for every instance of a type).
    fn actions(&self) -> &'static [ActionSpec];

    /// Describes what `action` would do with `args` from the arguments alone: no side effects
    /// and no outside calls (`riposte test`, `explain`).
    fn describe(&self, action: &str, args: &Args) -> Result<Plan, ConnectorError>;

    /// Describes what `action` would do with `args` against the real estate: resolves the
    /// target and checks the guards, changes nothing (dry-run playbooks in a running engine).
    /// Connectors without targets to resolve keep the default, [`Connector::describe`].
    async fn plan(&self, action: &str, args: &Args) -> Result<Plan, ConnectorError> {
        self.describe(action, args)
    }

    /// Facts about what an event names (a container, a pod), for enrichment before its
    /// playbooks run. `None` when this connector has nothing to say about it.
    async fn enrich(&self, subject: &Subject) -> Option<Value> {
        let _ = subject;
        None
    }

    /// Performs `action` with checked `args`.
    async fn run(&self, action: &str, args: &Args) -> Result<Output, ConnectorError>;

    /// Undoes an action that returned `undo` data. Connectors without inverses keep the default.
    async fn revert(&self, action: &str, undo: &Value) -> Result<Output, ConnectorError> {
        let _ = undo;
        Err(ConnectorError::NotReversible(action.to_owned()))
    }
}

/// What an event names, for [`Connector::enrich`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subject {
    /// A container id (full or the 12-character prefix runtime agents report).
    pub container_id: Option<String>,
    /// A Kubernetes pod name, with [`Subject::namespace`].
    pub pod: Option<String>,
    /// The pod's namespace.
    pub namespace: Option<String>,
    /// A Kubernetes node name.
    pub node: Option<String>,
}

/// Clients and handles connectors may need, injected by the engine.
#[derive(Debug, Clone, Default)]
pub struct Deps {
    /// The engine's NATS connection, for the `nats` connector.
    pub nats: Option<async_nats::Client>,
    /// The engine's data directory: connectors keep evidence below it unless configured
    /// otherwise. Empty: the current directory.
    pub data_dir: PathBuf,
    /// What destructive actions may never touch.
    pub protect: Protection,
    /// The revocation list, for the `registry` connector (none outside an engine).
    pub revocations: Option<revocation::RevocationList>,
}

/// Why a connector instance could not be built.
#[derive(Debug, Error)]
pub enum BuildError {
    /// The instance's settings are wrong.
    #[error("connector `{instance}`: {reason}")]
    Config {
        /// The instance name.
        instance: String,
        /// What is wrong.
        reason: String,
    },
}

/// The closed list of connector types. The compiler points at every place to update when a
/// variant is added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConnectorKind {
    /// Writes a line to the engine's log.
    Log,
    /// Publishes a derived event on NATS.
    Nats,
    /// Contains, stops and snapshots containers through the Docker Engine API.
    Docker,
    /// Isolates, evicts and labels pods, cordons and drains nodes through the Kubernetes API.
    Kubernetes,
    /// Revokes images: the revocation list, and quarantine or delete through the OCI
    /// distribution API.
    Registry,
    /// PagerDuty Events API v2.
    PagerDuty,
    /// Opsgenie Alerts API.
    Opsgenie,
    /// Slack incoming webhook.
    Slack,
    /// Microsoft Teams incoming webhook.
    Msteams,
    /// Signed HTTP POST to any URL.
    Webhook,
    /// Alertmanager's alerts API.
    Alertmanager,
    /// SMTP mail.
    Email,
}

impl ConnectorKind {
    /// Every connector type.
    pub const ALL: [ConnectorKind; 12] = [
        ConnectorKind::Log,
        ConnectorKind::Nats,
        ConnectorKind::Docker,
        ConnectorKind::Kubernetes,
        ConnectorKind::Registry,
        ConnectorKind::PagerDuty,
        ConnectorKind::Opsgenie,
        ConnectorKind::Slack,
        ConnectorKind::Msteams,
        ConnectorKind::Webhook,
        ConnectorKind::Alertmanager,
        ConnectorKind::Email,
    ];

    /// The type's name in `riposte.yaml` and, for default instances, in playbooks.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectorKind::Log => "log",
            ConnectorKind::Nats => "nats",
            ConnectorKind::Docker => "docker",
            ConnectorKind::Kubernetes => "kubernetes",
            ConnectorKind::Registry => "registry",
            ConnectorKind::PagerDuty => "pagerduty",
            ConnectorKind::Opsgenie => "opsgenie",
            ConnectorKind::Slack => "slack",
            ConnectorKind::Msteams => "msteams",
            ConnectorKind::Webhook => "webhook",
            ConnectorKind::Alertmanager => "alertmanager",
            ConnectorKind::Email => "email",
        }
    }

    /// Parses a type name.
    pub fn parse(name: &str) -> Option<ConnectorKind> {
        ConnectorKind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// The actions of this type, known without building an instance (for `check`).
    pub fn actions(self) -> &'static [ActionSpec] {
        match self {
            ConnectorKind::Log => log::ACTIONS,
            ConnectorKind::Nats => nats::ACTIONS,
            ConnectorKind::Docker => docker::ACTIONS,
            ConnectorKind::Kubernetes => kubernetes::ACTIONS,
            ConnectorKind::Registry => registry::ACTIONS,
            ConnectorKind::PagerDuty => pagerduty::ACTIONS,
            ConnectorKind::Opsgenie => opsgenie::ACTIONS,
            ConnectorKind::Slack => slack::ACTIONS,
            ConnectorKind::Msteams => msteams::ACTIONS,
            ConnectorKind::Webhook => webhook::ACTIONS,
            ConnectorKind::Alertmanager => alertmanager::ACTIONS,
            ConnectorKind::Email => email::ACTIONS,
        }
    }

    /// Whether an instance of this type exists without configuration, under the type's name.
    pub fn has_default_instance(self) -> bool {
        match self {
            ConnectorKind::Log
            | ConnectorKind::Nats
            | ConnectorKind::Docker
            | ConnectorKind::Kubernetes
            | ConnectorKind::Registry => true,
            ConnectorKind::PagerDuty
            | ConnectorKind::Opsgenie
            | ConnectorKind::Slack
            | ConnectorKind::Msteams
            | ConnectorKind::Webhook
            | ConnectorKind::Alertmanager
            | ConnectorKind::Email => false,
        }
    }

    /// Builds an instance from its settings (the instance's map in `riposte.yaml`, without
    /// `type`).
    pub fn build(
        self,
        instance: &str,
        settings: &Map<String, Value>,
        deps: &Deps,
    ) -> Result<Arc<dyn Connector>, BuildError> {
        match self {
            ConnectorKind::Log => Ok(Arc::new(log::LogConnector::new(instance, settings)?)),
            ConnectorKind::Nats => Ok(Arc::new(nats::NatsConnector::new(
                instance, settings, deps,
            )?)),
            ConnectorKind::Docker => Ok(Arc::new(docker::DockerConnector::new(
                instance, settings, deps,
            )?)),
            ConnectorKind::Kubernetes => Ok(Arc::new(kubernetes::KubernetesConnector::new(
                instance, settings, deps,
            )?)),
            ConnectorKind::Registry => Ok(Arc::new(registry::RegistryConnector::new(
                instance, settings, deps,
            )?)),
            ConnectorKind::PagerDuty => Ok(Arc::new(pagerduty::PagerDutyConnector::new(
                instance, settings, deps,
            )?)),
            ConnectorKind::Opsgenie => Ok(Arc::new(opsgenie::OpsgenieConnector::new(
                instance, settings, deps,
            )?)),
            ConnectorKind::Slack => Ok(Arc::new(slack::SlackConnector::new(
                instance, settings, deps,
            )?)),
            ConnectorKind::Msteams => Ok(Arc::new(msteams::TeamsConnector::new(
                instance, settings, deps,
            )?)),
            ConnectorKind::Webhook => Ok(Arc::new(webhook::WebhookConnector::new(
                instance, settings, deps,
            )?)),
            ConnectorKind::Alertmanager => Ok(Arc::new(alertmanager::AlertmanagerConnector::new(
                instance, settings, deps,
            )?)),
            ConnectorKind::Email => Ok(Arc::new(email::EmailConnector::new(
                instance, settings, deps,
            )?)),
        }
    }
}

impl fmt::Display for ConnectorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Rejects settings keys a connector does not know, naming the instance.
pub(crate) fn reject_unknown_settings(
    instance: &str,
    settings: &Map<String, Value>,
    known: &[&str],
) -> Result<(), BuildError> {
    for key in settings.keys() {
        if !known.contains(&key.as_str()) {
            return Err(BuildError::Config {
                instance: instance.to_owned(),
                reason: format!("unknown setting `{key}` (known: {})", known.join(", ")),
            });
        }
    }
    Ok(())
}
