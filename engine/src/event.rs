//! The normalized event: the one shape every playbook sees, whatever produced it.
//!
//! Owns the [`Event`] type and its vocabulary ([`Source`], [`Kind`], [`Severity`]). Normalizers in
//! [`crate::formats`] build events; the matcher reads them; nothing here parses a wire format.
//! Resource parts are present only when the producer said something about them.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Which producer format an event came from. Also the name of its normalizer (`--format`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// Falco alerts (json_output), directly or through Falcosidekick.
    Falco,
    /// Cilium Tetragon exported events (one JSON object per line).
    Tetragon,
    /// Trivy JSON reports and Trivy Operator VulnerabilityReports.
    Trivy,
    /// Grype JSON reports.
    Grype,
    /// Kubernetes audit events (`audit.k8s.io` Event or EventList).
    K8sAudit,
    /// Alertmanager webhook payloads (version 4).
    Alertmanager,
    /// Harbor webhooks, Default or CloudEvents format.
    Harbor,
    /// Any CloudEvents 1.0 JSON event.
    Cloudevents,
    /// Any other JSON object.
    Generic,
}

impl Source {
    /// Every source, in documentation order.
    pub const ALL: [Source; 9] = [
        Source::Falco,
        Source::Tetragon,
        Source::Trivy,
        Source::Grype,
        Source::K8sAudit,
        Source::Alertmanager,
        Source::Harbor,
        Source::Cloudevents,
        Source::Generic,
    ];

    /// The name used in playbooks, configs and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Falco => "falco",
            Source::Tetragon => "tetragon",
            Source::Trivy => "trivy",
            Source::Grype => "grype",
            Source::K8sAudit => "k8s-audit",
            Source::Alertmanager => "alertmanager",
            Source::Harbor => "harbor",
            Source::Cloudevents => "cloudevents",
            Source::Generic => "generic",
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Source {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Source::ALL
            .into_iter()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Source::ALL.iter().map(|x| x.as_str()).collect();
                format!(
                    "unknown format `{s}` (expected one of: {})",
                    names.join(", ")
                )
            })
    }
}

/// What an event is about.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Runtime activity: a process, a file, a connection, a privilege change.
    Runtime,
    /// Vulnerabilities found in an image or package set.
    Vulnerability,
    /// Secrets found baked into an image.
    Secret,
    /// Misconfigurations found by a scanner.
    Misconfiguration,
    /// Control-plane activity (Kubernetes or cloud audit logs).
    Audit,
    /// A monitoring alert (Alertmanager, generic webhooks).
    Alert,
    /// Registry activity: pushes, scans.
    Registry,
    /// A producer's own health or statistics (Falco metrics snapshots and drop reports).
    /// Never a security signal; playbooks see these only when they list `internal` in `kinds`.
    Internal,
}

impl Kind {
    /// The name used in playbooks.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Runtime => "runtime",
            Kind::Vulnerability => "vulnerability",
            Kind::Secret => "secret",
            Kind::Misconfiguration => "misconfiguration",
            Kind::Audit => "audit",
            Kind::Alert => "alert",
            Kind::Registry => "registry",
            Kind::Internal => "internal",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Severity on one scale for every producer: info < low < medium < high < critical.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Default,
    Serialize,
    Deserialize,
    JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Informational, no action expected.
    #[default]
    Info,
    /// Low.
    Low,
    /// Medium.
    Medium,
    /// High.
    High,
    /// Critical.
    Critical,
}

impl Severity {
    /// Every severity, lowest first.
    pub const ALL: [Severity; 5] = [
        Severity::Info,
        Severity::Low,
        Severity::Medium,
        Severity::High,
        Severity::Critical,
    ];

    /// The lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }

    /// Parses one of the five names exactly (lower case).
    pub fn parse(s: &str) -> Option<Severity> {
        Severity::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A normalized security event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// Stable id: the producer's id, else a hash of the payload (with the event's index when
    /// one payload gives several events).
    pub id: String,
    /// The producer format.
    pub source: Source,
    /// What the event is about.
    pub kind: Kind,
    /// RFC 3339, with the producer's precision. When the producer's time is missing or invalid,
    /// the time riposte received the payload, and label `riposte.time` says `received`.
    pub time: String,
    /// Severity mapped from the producer's scale.
    pub severity: Severity,
    /// Rule name, alert name, or a short description for scanners.
    pub title: String,
    /// The producer's human text.
    pub summary: String,
    /// What the event is about.
    #[serde(default)]
    pub resource: Resource,
    /// Scanner findings (vulnerabilities, secrets, misconfigurations).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub findings: Vec<Finding>,
    /// Tags, alert labels and other string facts.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The original payload (for multi-event payloads, the part this event came from).
    pub data: serde_json::Value,
    /// Facts connectors looked up about what the event names, by connector instance (e.g.
    /// `docker`: the container's image, labels, networks, mounts, user). Added after matching,
    /// so `vars`, steps and notifications see it, conditions do not.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub enrichment: BTreeMap<String, serde_json::Value>,
}

/// The parts of an estate an event is about, each present only when known.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Resource {
    /// The container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<Container>,
    /// The Kubernetes pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<Pod>,
    /// The Kubernetes node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<Node>,
    /// The container image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<Image>,
    /// The host (outside Kubernetes, or the machine a sensor runs on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<Host>,
    /// The process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<Process>,
}

/// A container.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Container {
    /// Runtime id (without a `containerd://`-style prefix).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Container name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Image reference as the runtime reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

/// A Kubernetes pod.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Pod {
    /// Pod name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Pod UID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// Pod labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// A Kubernetes node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Node {
    /// Node name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A container image.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Image {
    /// Full reference, e.g. `registry.example/app/web:1.2@sha256:...`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<String>,
    /// Repository, with its registry when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// Tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Content digest (`sha256:...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

/// A host.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Host {
    /// Host name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A process.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Process {
    /// Process id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i64>,
    /// Executable name or path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    /// User name or id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// One scanner finding.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Finding {
    /// CVE, GHSA or rule id.
    pub id: String,
    /// Severity on riposte's scale.
    pub severity: Severity,
    /// Affected package (or file, for secrets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<String>,
    /// Installed version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installed: Option<String>,
    /// Fixed version(s), when a fix exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed: Option<String>,
    /// Short title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
}
