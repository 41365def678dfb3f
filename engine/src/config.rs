//! The engine config, `riposte.yaml`: where NATS is, which subjects carry which formats, the
//! connector instances with their credentials files, guards and limits.
//!
//! Plain serde data, strict (`deny_unknown_fields`), loaded once at start. Secrets are never
//! written here: only the paths of files that hold them (`*_file` keys), read by [`Secret`]
//! whose Debug and Display print `***`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use thiserror::Error;

use crate::duration::HumanDuration;
use crate::event::Source;

/// An error loading the config.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config `{path}`: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a valid config.
    #[error("{path}:{line}:{column}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// A secret file could not be read.
    #[error("cannot read secret file `{path}`: {reason}")]
    Secret {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// The whole engine config.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// How to reach NATS. Without a URL, `riposte run` starts its own nats-server.
    #[serde(default)]
    pub nats: NatsConfig,
    /// Which NATS subjects carry which producer format. Defaults: `falco.>` (Falcosidekick's
    /// `falco.<priority>.<rule>`) as `falco`, and `riposte.in.<format>` for every format.
    #[serde(default = "default_bindings")]
    pub bindings: Vec<Binding>,
    /// Connector instances by name. `log` and `nats` exist without being listed.
    #[serde(default)]
    pub connectors: BTreeMap<String, ConnectorInstance>,
    /// What is never acted on, whatever a playbook says.
    #[serde(default)]
    pub protect: Protect,
    /// Limits that apply across every playbook.
    #[serde(default)]
    pub limits: GlobalLimits,
    /// Engine settings.
    #[serde(default)]
    pub engine: EngineSettings,
    /// Metrics and health endpoint.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// The authenticated HTTP ingest gateway (`POST /v1/events/{format}`). Served by
    /// `riposte run` when it has `listen`, or alone by `riposte ingest`.
    #[serde(default)]
    pub ingest: Option<IngestConfig>,
    /// How notifications are grouped into pages and their updates.
    #[serde(default)]
    pub notifications: NotificationsConfig,
    /// Where the revocation list is enforced: the Kubernetes admission webhook and the Docker
    /// AuthZ plugin.
    #[serde(default)]
    pub images: ImagesConfig,
}

/// Enforcement of the revocation list.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImagesConfig {
    /// The Kubernetes validating admission webhook (AdmissionReview v1 over HTTPS).
    #[serde(default)]
    pub admission: Option<AdmissionConfig>,
    /// The Docker Engine authorization plugin (on a Unix socket).
    #[serde(default)]
    pub authz: Option<AuthzConfig>,
}

/// What an enforcement point answers when it cannot decide (the revocation list is not read
/// yet, or the request cannot be understood).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Undecided {
    /// Let it through, and count it (`riposte_enforcement_undecided_total`). The default:
    /// the engine being down must not stop a cluster.
    #[default]
    Allow,
    /// Refuse it.
    Deny,
}

/// The admission webhook.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdmissionConfig {
    /// Address to serve on, e.g. `0.0.0.0:8444`. The webhook path is `/v1/admission`.
    pub listen: SocketAddr,
    /// Its TLS certificate and key (the API server only calls webhooks over HTTPS).
    pub tls: IngestTls,
    /// When the engine cannot decide. A revoked image is always denied.
    #[serde(default)]
    pub on_undecided: Undecided,
}

/// The Docker AuthZ plugin.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthzConfig {
    /// The plugin's Unix socket; dockerd finds a plugin named `riposte` at
    /// `/run/docker/plugins/riposte.sock` (start dockerd with `--authorization-plugin=riposte`).
    pub socket: PathBuf,
    /// The Docker daemon the plugin asks about local images (to learn their digests), e.g.
    /// `unix:///var/run/docker.sock`. Default: the `docker` connector's default.
    #[serde(default)]
    pub docker_host: Option<String>,
    /// When the engine cannot decide. A revoked image is always denied.
    #[serde(default)]
    pub on_undecided: Undecided,
}

/// How to reach NATS.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// Server URL(s), comma-separated, e.g. `nats://127.0.0.1:4222`. Absent: embedded server.
    #[serde(default)]
    pub url: Option<String>,
    /// A NATS credentials file (JWT + NKey seed).
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    /// A file holding a token.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// User name, with `password_file`.
    #[serde(default)]
    pub user: Option<String>,
    /// A file holding the password of `user`.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// TLS to the server.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// The nats-server program for the embedded server (default: `nats-server` on PATH).
    #[serde(default)]
    pub server_binary: Option<PathBuf>,
    /// Copies of each stream and KV bucket the engine creates (1 on a single server, 3 on a
    /// three-node cluster). Applies when they are created; existing ones are left as they are.
    #[serde(default = "default_replicas")]
    pub replicas: usize,
}

fn default_replicas() -> usize {
    1
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            url: None,
            credentials_file: None,
            token_file: None,
            user: None,
            password_file: None,
            tls: None,
            server_binary: None,
            replicas: default_replicas(),
        }
    }
}

/// TLS settings, all from files.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// CA bundle to verify the server.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (mutual TLS), with `key_file`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// Client key.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

/// Binds a subject pattern to a producer format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Binding {
    /// A NATS subject, wildcards allowed (`falco.>`).
    pub subject: String,
    /// The format of payloads on it.
    pub format: Source,
}

/// The default bindings.
pub fn default_bindings() -> Vec<Binding> {
    let mut b = vec![Binding {
        subject: "falco.>".to_owned(),
        format: Source::Falco,
    }];
    b.extend(Source::ALL.iter().map(|s| Binding {
        subject: format!("riposte.in.{s}"),
        format: *s,
    }));
    b
}

/// One connector instance: `type` plus the type's own settings beside it, flat (secrets as
/// `*_file` paths), e.g. `{ type: nats, subject_prefix: "derived." }`.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectorInstance {
    /// The connector type, e.g. `log`, `nats`.
    pub kind: String,
    /// The type's settings: every key but `type`.
    pub settings: Map<String, Value>,
}

impl<'de> Deserialize<'de> for ConnectorInstance {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut settings = Map::<String, Value>::deserialize(d)?;
        match settings.remove("type") {
            Some(Value::String(kind)) => Ok(ConnectorInstance { kind, settings }),
            Some(_) => Err(serde::de::Error::custom("`type` must be a string")),
            None => Err(serde::de::Error::missing_field("type")),
        }
    }
}

impl Serialize for ConnectorInstance {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = self.settings.clone();
        map.insert("type".to_owned(), Value::String(self.kind.clone()));
        map.serialize(s)
    }
}

impl JsonSchema for ConnectorInstance {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ConnectorInstance".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let kinds: Vec<&str> = riposte_connectors::ConnectorKind::ALL
            .iter()
            .map(|k| k.as_str())
            .collect();
        schemars::json_schema!({
            "type": "object",
            "description": "A connector instance: `type` and the type's settings beside it.",
            "required": ["type"],
            "properties": { "type": { "type": "string", "enum": kinds } },
            "additionalProperties": true
        })
    }
}

/// Guards: what is never acted on by a destructive action.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Protect {
    /// Kubernetes namespaces.
    #[serde(default = "default_protected_namespaces")]
    pub namespaces: Vec<String>,
    /// Container names (globs), e.g. the engine's own.
    #[serde(default = "default_protected_containers")]
    pub containers: Vec<String>,
    /// Pod, workload, namespace, node or container labels that mark them as protected.
    #[serde(default = "default_protected_labels")]
    pub labels: BTreeMap<String, String>,
    /// Kubernetes label selectors (`tier=control-plane`, `app in (vault,etcd)`): pods, their
    /// workloads, namespaces and nodes whose labels match one are never acted on.
    #[serde(default)]
    pub selectors: Vec<String>,
}

impl Default for Protect {
    fn default() -> Self {
        Protect {
            namespaces: default_protected_namespaces(),
            containers: default_protected_containers(),
            labels: default_protected_labels(),
            selectors: Vec::new(),
        }
    }
}

impl Protect {
    /// The guards connectors apply to what they resolve. Selectors that do not parse were
    /// refused when the configuration was loaded.
    pub fn protection(&self) -> riposte_connectors::Protection {
        riposte_connectors::Protection {
            containers: self.containers.clone(),
            labels: self.labels.clone(),
            namespaces: self.namespaces.clone(),
            selectors: self
                .selectors
                .iter()
                .filter_map(|s| riposte_connectors::Selector::parse(s).ok())
                .collect(),
        }
    }
}

fn default_protected_namespaces() -> Vec<String> {
    vec!["kube-system".to_owned()]
}

fn default_protected_containers() -> Vec<String> {
    vec!["riposte*".to_owned(), "nats*".to_owned()]
}

fn default_protected_labels() -> BTreeMap<String, String> {
    BTreeMap::from([("riposte.io/protected".to_owned(), "true".to_owned())])
}

/// Limits across all playbooks.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GlobalLimits {
    /// Destructive actions allowed per window, across all playbooks and replicas.
    #[serde(default = "default_max_destructive")]
    pub max_destructive_actions: u32,
    /// The window.
    #[serde(default = "default_limit_window")]
    pub per: HumanDuration,
}

impl Default for GlobalLimits {
    fn default() -> Self {
        GlobalLimits {
            max_destructive_actions: default_max_destructive(),
            per: default_limit_window(),
        }
    }
}

fn default_max_destructive() -> u32 {
    50
}

fn default_limit_window() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(60))
}

/// Engine settings.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EngineSettings {
    /// The playbook directory (the command line's `--playbooks` wins).
    #[serde(default)]
    pub playbooks: Option<PathBuf>,
    /// Where the embedded nats-server keeps its data.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Largest payload accepted; larger ones are dead-lettered.
    #[serde(default = "default_max_payload")]
    pub max_payload_bytes: usize,
    /// Events processed at once by one replica.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Time limit of a step that gives no `timeout`.
    #[serde(default = "default_step_timeout")]
    pub step_timeout: HumanDuration,
    /// How long shutdown waits for runs in flight before abandoning them (they are redelivered).
    #[serde(default = "default_grace")]
    pub shutdown_grace: HumanDuration,
    /// The shared consumer's acknowledgement wait: how long the events a replica held stay
    /// with it after it died before they are delivered to another (runs in flight renew it
    /// with progress signals every third of it). One value for all replicas; a change is
    /// applied to the consumer when a replica starts.
    #[serde(default = "default_ack_wait")]
    pub ack_wait: HumanDuration,
    /// Name of this replica in audit records (default: the host name and process id).
    #[serde(default)]
    pub replica: Option<String>,
    /// Names of the streams, consumer and buckets (change only to run several engines on one
    /// NATS).
    #[serde(default)]
    pub names: Names,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            playbooks: None,
            data_dir: default_data_dir(),
            max_payload_bytes: default_max_payload(),
            concurrency: default_concurrency(),
            step_timeout: default_step_timeout(),
            shutdown_grace: default_grace(),
            ack_wait: default_ack_wait(),
            replica: None,
            names: Names::default(),
        }
    }
}

fn default_data_dir() -> PathBuf {
    PathBuf::from(".riposte")
}

fn default_max_payload() -> usize {
    1024 * 1024
}

fn default_concurrency() -> usize {
    256
}

fn default_step_timeout() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(30))
}

fn default_grace() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(20))
}

/// Smallest `engine.ack_wait`: progress signals go every third of it.
pub const MIN_ACK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

fn default_ack_wait() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(60))
}

/// Stream, consumer, subject and bucket names.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Names {
    /// The events stream.
    #[serde(default = "n_events")]
    pub events_stream: String,
    /// The durable consumer all replicas share.
    #[serde(default = "n_consumer")]
    pub consumer: String,
    /// The audit stream.
    #[serde(default = "n_audit")]
    pub audit_stream: String,
    /// Audit subjects are `<prefix>.<record kind>`.
    #[serde(default = "n_audit_subject")]
    pub audit_subject: String,
    /// The dead-letter stream.
    #[serde(default = "n_dead")]
    pub deadletter_stream: String,
    /// Dead-lettered payloads are published on `<prefix>.<format>`.
    #[serde(default = "n_dead_subject")]
    pub deadletter_subject: String,
    /// Prefix of the KV buckets (`<prefix>-dedup`, `<prefix>-limits`, `<prefix>-runs`).
    #[serde(default = "n_kv")]
    pub kv_prefix: String,
}

impl Default for Names {
    fn default() -> Self {
        Names {
            events_stream: n_events(),
            consumer: n_consumer(),
            audit_stream: n_audit(),
            audit_subject: n_audit_subject(),
            deadletter_stream: n_dead(),
            deadletter_subject: n_dead_subject(),
            kv_prefix: n_kv(),
        }
    }
}

fn n_events() -> String {
    "RIPOSTE_EVENTS".to_owned()
}
fn n_consumer() -> String {
    "riposte".to_owned()
}
fn n_audit() -> String {
    "RIPOSTE_AUDIT".to_owned()
}
fn n_audit_subject() -> String {
    "riposte.audit".to_owned()
}
fn n_dead() -> String {
    "RIPOSTE_DEADLETTER".to_owned()
}
fn n_dead_subject() -> String {
    "riposte.deadletter".to_owned()
}
fn n_kv() -> String {
    "riposte".to_owned()
}

/// Noise control: notifications that take the enriched notice (the paging and chat
/// connectors) are grouped, Alertmanager-style.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NotificationsConfig {
    /// What makes two notifications one page: `playbook`, `workload` (a pod without its
    /// ReplicaSet and pod suffixes, else the container, image or host), `severity`, `source`,
    /// `title`, `namespace`, `labels.<key>`. The action is always part of it. Empty: every
    /// notification is sent at once by its run.
    #[serde(default = "default_group_by")]
    pub group_by: Vec<String>,
    /// Wait after a group's first event before its first notice (a burst makes one page).
    #[serde(default = "default_group_wait")]
    pub group_wait: HumanDuration,
    /// Least time between two notices (updates) of a group.
    #[serde(default = "default_group_interval")]
    pub group_interval: HumanDuration,
    /// How long a group stays open after its last notice; a later event opens a new page.
    #[serde(default = "default_repeat_interval")]
    pub repeat_interval: HumanDuration,
}

impl Default for NotificationsConfig {
    fn default() -> Self {
        NotificationsConfig {
            group_by: default_group_by(),
            group_wait: default_group_wait(),
            group_interval: default_group_interval(),
            repeat_interval: default_repeat_interval(),
        }
    }
}

fn default_group_by() -> Vec<String> {
    vec!["playbook".to_owned(), "workload".to_owned()]
}

fn default_group_wait() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(30))
}

fn default_group_interval() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(300))
}

fn default_repeat_interval() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(4 * 3600))
}

/// Metrics and health endpoint.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address for `/metrics`, `/healthz` and `/readyz`; loopback by default.
    #[serde(default = "default_metrics_listen")]
    pub listen: SocketAddr,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: default_metrics_listen(),
        }
    }
}

fn default_metrics_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9464))
}

/// The ingest gateway: where it listens, how senders authenticate (secrets from files), and its
/// limits.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// Address to serve on, e.g. `0.0.0.0:8443`. `riposte run` serves the gateway only when it
    /// is set; `riposte ingest --listen` wins over it.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// Bearer tokens, one `name:token` per line (`#` comments). The name is recorded on the
    /// event as the label `ingest.source`.
    #[serde(default)]
    pub tokens_file: Option<PathBuf>,
    /// HMAC-SHA256 keys, one `name:secret` per line, for `X-Riposte-Signature`.
    #[serde(default)]
    pub hmac_keys_file: Option<PathBuf>,
    /// How far a signed request's `X-Riposte-Timestamp` may be from now; a signature is
    /// accepted once within it.
    #[serde(default = "default_replay_window")]
    pub replay_window: HumanDuration,
    /// Largest body accepted (413 above it). Default: `engine.max_payload_bytes`.
    #[serde(default)]
    pub max_body_bytes: Option<usize>,
    /// How long a publish may wait for JetStream's acknowledgement before the sender is told to
    /// retry (503).
    #[serde(default = "default_publish_timeout")]
    pub publish_timeout: HumanDuration,
    /// HTTPS, from files.
    #[serde(default)]
    pub tls: Option<IngestTls>,
    /// The credential names (from `tokens_file`, `hmac_keys_file`, or a client certificate's
    /// name) that may decide steps waiting for approval (`POST /v1/approvals/{run}/{step}`) and
    /// list them (`GET /v1/approvals`). Empty (the default): those endpoints refuse everyone
    /// (403), so a credential that only sends events can never approve an action.
    #[serde(default)]
    pub approval_senders: Vec<String>,
}

/// The gateway's TLS: its certificate and key, and optionally the CA that client certificates
/// must chain to (mutual TLS).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IngestTls {
    /// Certificate chain (PEM), leaf first.
    pub cert_file: PathBuf,
    /// Private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// CA bundle (PEM). When set, every client must present a certificate it signed, and such
    /// a certificate alone authenticates a request (for senders that cannot add headers).
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
}

fn default_replay_window() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(300))
}

fn default_publish_timeout() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(5))
}

impl IngestConfig {
    /// The body limit in force.
    pub fn body_limit(&self, engine: &EngineSettings) -> usize {
        self.max_body_bytes.unwrap_or(engine.max_payload_bytes)
    }

    fn problems(&self, config: &Config) -> Vec<String> {
        let mut problems = Vec::new();
        let mutual = self
            .tls
            .as_ref()
            .is_some_and(|t| t.client_ca_file.is_some());
        if self.tokens_file.is_none() && self.hmac_keys_file.is_none() && !mutual {
            problems.push(
                "ingest: give `tokens_file`, `hmac_keys_file` or `tls.client_ca_file`: the \
                 gateway never accepts unauthenticated events"
                    .to_owned(),
            );
        }
        if self.replay_window.get() < std::time::Duration::from_secs(1) {
            problems.push("ingest.replay_window must be at least 1s".to_owned());
        }
        if self.publish_timeout.get() < std::time::Duration::from_millis(10) {
            problems.push("ingest.publish_timeout must be at least 10ms".to_owned());
        }
        let limit = self.body_limit(&config.engine);
        if limit == 0 {
            problems.push("ingest.max_body_bytes must be at least 1".to_owned());
        }
        if limit > config.engine.max_payload_bytes {
            problems.push(format!(
                "ingest.max_body_bytes ({limit}) is over engine.max_payload_bytes ({}): the \
                 engine would dead-letter what the gateway accepts",
                config.engine.max_payload_bytes
            ));
        }
        for format in Source::ALL {
            let subject = format!("riposte.in.{format}");
            let bound = config.format_for(&subject);
            if bound != Some(format) {
                problems.push(format!(
                    "ingest: the gateway publishes {format} payloads on `{subject}`, which \
                     `bindings` bind to {}: bind `riposte.in.{format}` to `{format}` (before any \
                     wildcard binding)",
                    bound.map_or_else(|| "no format".to_owned(), |b| format!("`{b}`"))
                ));
            }
        }
        problems
    }
}

impl Config {
    /// Loads and checks a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses config text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let invalid = |line: usize, column: usize, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            line,
            column,
            message,
        };
        let syntax = |e: serde_yaml::Error| {
            let (line, column) = e.location().map_or((1, 1), |l| (l.line(), l.column()));
            invalid(line, column, e.to_string())
        };
        let config: Config = if text.trim().is_empty() {
            Config::default_with_bindings()
        } else {
            // Every unknown key at once, with its position; then the typed read.
            let positions = crate::playbook::positions::Positions::index(text);
            let schema = serde_json::to_value(schemars::schema_for!(Config)).unwrap_or_default();
            let unknown = crate::playbook::structure::unknown_keys_in(text, &positions, &schema)
                .map_err(syntax)?;
            if let Some(first) = unknown.first() {
                let lines: Vec<String> = unknown
                    .iter()
                    .map(|k| {
                        format!(
                            "unknown field `{}` (line {}, column {}), expected one of {}",
                            k.path,
                            k.pos.line,
                            k.pos.column,
                            k.allowed.join(", ")
                        )
                    })
                    .collect();
                return Err(invalid(first.pos.line, first.pos.column, lines.join("; ")));
            }
            serde_yaml::from_str(text).map_err(syntax)?
        };
        config
            .validate()
            .map_err(|message| invalid(1, 1, message))?;
        Ok(config)
    }

    /// The config used when no file is given.
    pub fn default_with_bindings() -> Config {
        Config {
            bindings: default_bindings(),
            ..Config::default()
        }
    }

    fn validate(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        for part in &self.notifications.group_by {
            let known = [
                "playbook",
                "workload",
                "severity",
                "source",
                "title",
                "namespace",
            ];
            if !known.contains(&part.as_str()) && !part.starts_with("labels.") {
                problems.push(format!(
                    "notifications.group_by: unknown `{part}` (known: {}, labels.<key>)",
                    known.join(", ")
                ));
            }
        }
        for b in &self.bindings {
            if let Err(e) = check_subject_pattern(&b.subject) {
                problems.push(format!("bindings: {e}"));
            }
            for reserved in [
                &self.engine.names.audit_subject,
                &self.engine.names.deadletter_subject,
            ] {
                if b.subject == "riposte.>" || b.subject.starts_with(reserved.as_str()) {
                    problems.push(format!(
                        "bindings: subject `{}` overlaps riposte's own `{reserved}.>`",
                        b.subject
                    ));
                }
            }
        }
        for sel in &self.protect.selectors {
            if let Err(e) = riposte_connectors::Selector::parse(sel) {
                problems.push(format!("protect.selectors: {e}"));
            }
        }
        for (name, inst) in &self.connectors {
            if !valid_instance_name(name) {
                problems.push(format!(
                    "connectors: instance name `{name}` must be lower-case letters, digits and `-`"
                ));
            }
            if riposte_connectors::ConnectorKind::parse(&inst.kind).is_none() {
                let known: Vec<&str> = riposte_connectors::ConnectorKind::ALL
                    .iter()
                    .map(|k| k.as_str())
                    .collect();
                problems.push(format!(
                    "connectors.{name}: unknown type `{}` (known: {})",
                    inst.kind,
                    known.join(", ")
                ));
            }
        }
        if !(1..=5).contains(&self.nats.replicas) {
            problems.push(format!(
                "nats.replicas must be between 1 and 5 (JetStream's range), not {}",
                self.nats.replicas
            ));
        }
        if self.engine.ack_wait.get() < MIN_ACK_WAIT {
            problems.push(format!(
                "engine.ack_wait must be at least {}, not {}",
                humantime::format_duration(MIN_ACK_WAIT),
                humantime::format_duration(self.engine.ack_wait.get())
            ));
        }
        if self.engine.concurrency == 0 {
            problems.push("engine.concurrency must be at least 1".to_owned());
        }
        if self.engine.max_payload_bytes == 0 {
            problems.push("engine.max_payload_bytes must be at least 1".to_owned());
        }
        if let Some(ingest) = &self.ingest {
            problems.extend(ingest.problems(self));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// The format bound to a subject, first binding first.
    pub fn format_for(&self, subject: &str) -> Option<Source> {
        self.bindings
            .iter()
            .find(|b| subject_matches(&b.subject, subject))
            .map(|b| b.format)
    }
}

/// Whether a connector instance name is acceptable (`[a-z0-9-]`, starting with a letter).
pub fn valid_instance_name(name: &str) -> bool {
    name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn check_subject_pattern(subject: &str) -> Result<(), String> {
    if subject.is_empty() || subject.chars().any(char::is_whitespace) {
        return Err(format!("subject `{subject}` is empty or has white space"));
    }
    let tokens: Vec<&str> = subject.split('.').collect();
    for (i, t) in tokens.iter().enumerate() {
        if t.is_empty() {
            return Err(format!("subject `{subject}` has an empty token"));
        }
        if *t == ">" && i + 1 != tokens.len() {
            return Err(format!("subject `{subject}`: `>` must be the last token"));
        }
    }
    Ok(())
}

/// NATS subject matching: `*` one token, `>` one or more trailing tokens.
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut p = pattern.split('.');
    let mut s = subject.split('.');
    loop {
        match (p.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// A secret read from a file: never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Reads a secret file, trimming the trailing newline.
    pub fn from_file(path: &Path) -> Result<Secret, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Secret {
            path: path.to_owned(),
            reason: e.kind().to_string(),
        })?;
        let value = text.trim_end_matches(['\n', '\r']).to_owned();
        if value.is_empty() {
            return Err(ConfigError::Secret {
                path: path.to_owned(),
                reason: "the file is empty".to_owned(),
            });
        }
        Ok(Secret(value))
    }

    /// The secret itself, for handing to a client library.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn the_default_binds_falcosidekick_subjects_to_falco() {
        let c = Config::parse("", Path::new("riposte.yaml")).unwrap();
        assert_eq!(
            c.format_for("falco.critical.terminal_shell_in_container"),
            Some(Source::Falco)
        );
        assert_eq!(c.format_for("riposte.in.k8s-audit"), Some(Source::K8sAudit));
        assert_eq!(c.format_for("other.subject"), None);
        assert_eq!(c.engine.max_payload_bytes, 1024 * 1024);
    }

    #[test]
    fn unknown_keys_are_refused_with_their_position() {
        let err = Config::parse(
            "nats:\n  urll: x\nengine:\n  concurency: 3\n",
            Path::new("r.yaml"),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("r.yaml:2:3: unknown field `nats.urll`"),
            "{msg}"
        );
        assert!(
            msg.contains("unknown field `engine.concurency` (line 4, column 3)"),
            "{msg}"
        );
    }

    #[test]
    fn the_ack_wait_defaults_to_a_minute_and_may_not_be_shorter_than_progress_needs() {
        let c = Config::parse("", Path::new("r.yaml")).unwrap();
        assert_eq!(c.engine.ack_wait.get(), std::time::Duration::from_secs(60));
        let c = Config::parse("engine:\n  ack_wait: 10s\n", Path::new("r.yaml")).unwrap();
        assert_eq!(c.engine.ack_wait.get(), std::time::Duration::from_secs(10));
        let err = Config::parse("engine:\n  ack_wait: 1s\n", Path::new("r.yaml")).unwrap_err();
        assert!(
            err.to_string()
                .contains("engine.ack_wait must be at least 3s, not 1s"),
            "{err}"
        );
    }

    #[test]
    fn bindings_may_not_capture_riposte_subjects() {
        let err = Config::parse(
            "bindings:\n  - { subject: 'riposte.audit.>', format: generic }\n",
            Path::new("r.yaml"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("overlaps"), "{err}");
    }

    #[test]
    fn the_ingest_section_is_strict_and_checked_against_the_bindings() {
        let c = Config::parse(
            "ingest:\n  listen: 127.0.0.1:8443\n  tokens_file: /run/secrets/t\n",
            Path::new("r.yaml"),
        )
        .unwrap();
        let i = c.ingest.unwrap();
        assert_eq!(i.replay_window.get(), std::time::Duration::from_secs(300));
        assert_eq!(i.body_limit(&c.engine), 1024 * 1024);

        let err = Config::parse(
            "ingest:\n  listen: 127.0.0.1:8443\n  token_file: x\n  tls: { cert_file: a, key_file: b, ca: c }\n",
            Path::new("r.yaml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("unknown field `ingest.token_file`"), "{err}");
        assert!(err.contains("unknown field `ingest.tls.ca`"), "{err}");

        let err = Config::parse(
            "bindings:\n  - { subject: 'riposte.in.*', format: generic }\ningest:\n  listen: 127.0.0.1:8443\n  max_body_bytes: 2000000\n",
            Path::new("r.yaml"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("never accepts unauthenticated events"),
            "{err}"
        );
        assert!(
            err.contains("ingest.max_body_bytes (2000000) is over engine.max_payload_bytes"),
            "{err}"
        );
        assert!(
            err.contains("publishes falco payloads on `riposte.in.falco`, which `bindings` bind to `generic`"),
            "{err}"
        );
    }

    #[test]
    fn secrets_never_print() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cret\n").unwrap();
        let s = Secret::from_file(&path).unwrap();
        assert_eq!(s.expose(), "s3cret");
        assert_eq!(format!("{s} {s:?}"), "*** ***");
    }

    #[test]
    fn subjects_match_like_nats() {
        assert!(subject_matches("falco.>", "falco.a.b"));
        assert!(!subject_matches("falco.>", "falco"));
        assert!(subject_matches("a.*.c", "a.b.c"));
        assert!(!subject_matches("a.*.c", "a.b.d"));
        assert!(subject_matches("a.b", "a.b"));
    }
}
