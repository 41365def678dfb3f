//! Connector `docker`: contains, stops and snapshots containers through the Docker Engine API.
//!
//! # Layout
//! - this module: the actions and their parameters, the instance settings, and the dispatch
//!   of `describe` / `plan` / `run` / `revert` / `enrich`;
//! - `daemon`: the connection (local socket or `tcp://` with TLS client certificates), the
//!   mapping of daemon errors to transient or permanent failures, the short-lived inspect cache,
//!   and target resolution with its guards;
//! - `network`: `quarantine` and `release`;
//! - `evidence`: `snapshot`;
//! - `find`: `find_by_image`, the containers that run an image.
//!
//! A target is a full container id, the 12-character prefix runtime agents report, or a name.
//! Every action resolves it first (one inspect, cached briefly and shared with enrichment) and
//! refuses containers protected by label, by name pattern, or because they are the engine's
//! own. Actions are idempotent: pausing a paused container or killing a stopped one succeeds,
//! changes nothing, and says so in its output (`changed: false`).

mod daemon;
mod evidence;
mod find;
mod network;

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Map, Value};

use crate::spec::{find_action, ActionSpec, ParamSpec, ParamType};
use crate::{
    reject_unknown_settings, Args, BuildError, Connector, ConnectorError, Deps, Output, Plan,
    Subject,
};
use daemon::{Daemon, Endpoint, Target};

const CONTAINER: ParamSpec = ParamSpec {
    name: "container",
    ty: ParamType::String,
    required: true,
    description: "The container: full id, the 12-character id prefix Falco reports, or name.",
};

const GRACE: ParamSpec = ParamSpec {
    name: "grace",
    ty: ParamType::String,
    required: false,
    description: "How long the container has to stop after SIGTERM before SIGKILL (default 10s).",
};

/// The actions of `docker`.
pub const ACTIONS: &[ActionSpec] = &[
    ActionSpec {
        name: "inspect",
        description: "Facts about a container for later steps and notifications: image, labels, \
                      networks, mounts, user, privileged, state, compose project, pod labels.",
        params: &[CONTAINER],
        destructive: false,
        reversible: false,
        message_param: None,
    },
    ActionSpec {
        name: "snapshot",
        description: "Forensic evidence before containment: commits the container to a tagged \
                      image and writes its inspect document, last log lines and filesystem diff \
                      to an evidence directory with a sha256 manifest.",
        params: &[
            CONTAINER,
            ParamSpec {
                name: "log_lines",
                ty: ParamType::Integer,
                required: false,
                description: "How many of the last log lines to keep (default 200, at most \
                              100000).",
            },
            ParamSpec {
                name: "commit",
                ty: ParamType::Bool,
                required: false,
                description: "Whether to commit the filesystem to an image (default true).",
            },
        ],
        destructive: false,
        reversible: false,
        message_param: None,
    },
    ActionSpec {
        name: "quarantine",
        description: "Cuts the container off every network and attaches it to the internal \
                      quarantine network; reverted by `release`, which restores exactly the \
                      networks and aliases it had.",
        params: &[CONTAINER],
        destructive: true,
        reversible: true,
        message_param: None,
    },
    ActionSpec {
        name: "release",
        description: "Takes the container out of quarantine and attaches the networks given \
                      (a list of names, or of maps with `name`, `aliases`, `ipv4_address`, \
                      `ipv6_address`); the inverse of `quarantine`.",
        params: &[
            CONTAINER,
            ParamSpec {
                name: "networks",
                ty: ParamType::Any,
                required: true,
                description: "The networks to attach.",
            },
        ],
        destructive: false,
        reversible: false,
        message_param: None,
    },
    ActionSpec {
        name: "pause",
        description: "Freezes every process of the container (cgroup freezer); reverted by \
                      `unpause`.",
        params: &[CONTAINER],
        destructive: true,
        reversible: true,
        message_param: None,
    },
    ActionSpec {
        name: "unpause",
        description: "Thaws a paused container; the inverse of `pause`.",
        params: &[CONTAINER],
        destructive: false,
        reversible: false,
        message_param: None,
    },
    ActionSpec {
        name: "kill",
        description: "Sends a signal to the container's main process (default SIGKILL).",
        params: &[
            CONTAINER,
            ParamSpec {
                name: "signal",
                ty: ParamType::String,
                required: false,
                description: "The signal, by name (`SIGKILL`, `SIGTERM`...) or number.",
            },
        ],
        destructive: true,
        reversible: false,
        message_param: None,
    },
    ActionSpec {
        name: "stop",
        description: "Stops the container: SIGTERM, then SIGKILL after the grace period.",
        params: &[CONTAINER, GRACE],
        destructive: true,
        reversible: false,
        message_param: None,
    },
    ActionSpec {
        name: "restart",
        description: "Restarts the container (stop with the grace period, then start).",
        params: &[CONTAINER, GRACE],
        destructive: true,
        reversible: false,
        message_param: None,
    },
    ActionSpec {
        name: "remove",
        description: "Removes the container. Refused unless `confirm: true` is given.",
        params: &[
            CONTAINER,
            ParamSpec {
                name: "confirm",
                ty: ParamType::Bool,
                required: true,
                description: "Must be true: removal destroys the container and its evidence.",
            },
            ParamSpec {
                name: "force",
                ty: ParamType::Bool,
                required: false,
                description: "Kill a running container first (default false: a running \
                              container is refused).",
            },
            ParamSpec {
                name: "volumes",
                ty: ParamType::Bool,
                required: false,
                description: "Also remove its anonymous volumes (default false).",
            },
        ],
        destructive: true,
        reversible: false,
        message_param: None,
    },
    ActionSpec {
        name: "find_by_image",
        description: "The containers that run an image, by normalized reference, by image id \
                      or by digest (in the reference or the image's RepoDigests): \
                      `{count, containers: [{containerId, containerName, image, imageId, \
                      state, title, ...}]}`, flat keys so that publishing the list to the \
                      `generic` format gives one event per container. Read-only.",
        params: &[
            ParamSpec {
                name: "image",
                ty: ParamType::String,
                required: true,
                description: "The image: a reference (`registry/repository:tag`, \
                              `...@sha256:<hex>`) or an image id `sha256:<hex>`.",
            },
            ParamSpec {
                name: "digest",
                ty: ParamType::String,
                required: false,
                description: "Its manifest digest `sha256:<hex>`, when known: containers whose \
                              image carries it match too.",
            },
            ParamSpec {
                name: "all",
                ty: ParamType::Bool,
                required: false,
                description: "Include stopped containers (default false: running and paused \
                              ones).",
            },
            ParamSpec {
                name: "reason",
                ty: ParamType::String,
                required: false,
                description: "Why the image is revoked; copied into each element (`reason`, \
                              `summary`).",
            },
        ],
        destructive: false,
        reversible: false,
        message_param: None,
    },
];

const SETTINGS: &[&str] = &[
    "host",
    "tls",
    "timeout",
    "quarantine_network",
    "evidence_dir",
    "evidence_repository",
    "self_container",
    "enrich",
    "cache_ttl",
];

/// A `docker` instance.
#[derive(Debug)]
pub struct DockerConnector {
    daemon: Daemon,
    quarantine_network: String,
    evidence_dir: PathBuf,
    evidence_repository: String,
    enrich: bool,
}

impl DockerConnector {
    /// Builds an instance. Settings (all optional):
    /// - `host`: `unix:///var/run/docker.sock` (default) or `tcp://HOST:PORT`;
    /// - `tls`: `{ ca_file, cert_file, key_file }`, required with `tcp://`;
    /// - `timeout`: per daemon request (default 30s);
    /// - `quarantine_network`: the internal network quarantined containers join (default
    ///   `riposte-quarantine`; created when missing);
    /// - `evidence_dir`: where snapshots go (default `<data_dir>/evidence`);
    /// - `evidence_repository`: the image repository snapshots are committed to (default
    ///   `riposte-evidence`);
    /// - `self_container`: the engine's own container id or name, when it cannot be read from
    ///   `/proc/self`;
    /// - `enrich`: whether events naming a container get its inspect facts (default true);
    /// - `cache_ttl`: how long an inspect is reused (default 5s).
    pub fn new(
        instance: &str,
        settings: &Map<String, Value>,
        deps: &Deps,
    ) -> Result<Self, BuildError> {
        reject_unknown_settings(instance, settings, SETTINGS)?;
        let bad = |reason: String| BuildError::Config {
            instance: instance.to_owned(),
            reason,
        };
        let string = |key: &str| -> Result<Option<String>, BuildError> {
            match settings.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
                Some(_) => Err(bad(format!("`{key}` must be a non-empty string"))),
            }
        };
        let duration = |key: &str, default: Duration| -> Result<Duration, BuildError> {
            match string(key)? {
                None => Ok(default),
                Some(s) => humantime::parse_duration(&s)
                    .map_err(|e| bad(format!("`{key}`: {e} (e.g. `30s`)"))),
            }
        };
        let host = string("host")?.unwrap_or_else(|| "unix:///var/run/docker.sock".to_owned());
        let endpoint = Endpoint::parse(&host, settings.get("tls")).map_err(bad)?;
        let enrich = match settings.get("enrich") {
            None => true,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(bad("`enrich` must be true or false".to_owned())),
        };
        let daemon = Daemon::new(
            endpoint,
            duration("timeout", Duration::from_secs(30))?,
            duration("cache_ttl", Duration::from_secs(5))?,
            deps.protect.clone(),
            string("self_container")?.or_else(daemon::own_container_id),
        );
        Ok(DockerConnector {
            daemon,
            quarantine_network: string("quarantine_network")?
                .unwrap_or_else(|| "riposte-quarantine".to_owned()),
            evidence_dir: string("evidence_dir")?
                .map(PathBuf::from)
                .unwrap_or_else(|| deps.data_dir.join("evidence")),
            evidence_repository: string("evidence_repository")?
                .unwrap_or_else(|| "riposte-evidence".to_owned()),
            enrich,
        })
    }

    fn spec(action: &str) -> Result<&'static ActionSpec, ConnectorError> {
        find_action(ACTIONS, action).ok_or_else(|| ConnectorError::UnknownAction(action.to_owned()))
    }

    /// Resolves the target of `args` and applies the guards.
    async fn target(&self, action: &str, args: &Args) -> Result<Target, ConnectorError> {
        let reference = container_arg(action, args)?;
        let target = self.daemon.resolve(reference).await?;
        if Self::spec(action)?.destructive || action == "snapshot" {
            self.daemon.guard(&target)?;
        }
        Ok(target)
    }

    async fn run_action(&self, action: &str, args: &Args) -> Result<Output, ConnectorError> {
        match action {
            "find_by_image" => {
                find::find(&self.daemon, &find::Wanted::from_args(action, args)?).await
            }
            "inspect" => {
                let t = self.target(action, args).await?;
                Ok(Output {
                    output: daemon::summary(&t.inspect),
                    undo: None,
                })
            }
            "snapshot" => {
                let t = self.target(action, args).await?;
                let opts = evidence::Options::from_args(action, args)?;
                evidence::snapshot(
                    &self.daemon,
                    &t,
                    &opts,
                    &self.evidence_dir,
                    &self.evidence_repository,
                )
                .await
            }
            "quarantine" => {
                let t = self.target(action, args).await?;
                network::quarantine(&self.daemon, &t, &self.quarantine_network).await
            }
            "release" => {
                let t = self.target(action, args).await?;
                let nets =
                    network::parse_networks(action, args.get("networks").unwrap_or(&Value::Null))?;
                network::release(&self.daemon, &t, &nets, &self.quarantine_network).await
            }
            "pause" => {
                let t = self.target(action, args).await?;
                self.daemon.pause(&t).await
            }
            "unpause" => {
                let t = self.target(action, args).await?;
                self.daemon.unpause(&t).await
            }
            "kill" => {
                let t = self.target(action, args).await?;
                let signal = optional_str(args, "signal").unwrap_or("SIGKILL");
                self.daemon.kill(&t, signal).await
            }
            "stop" | "restart" => {
                let grace = grace(action, args)?;
                let t = self.target(action, args).await?;
                if action == "stop" {
                    self.daemon.stop(&t, grace).await
                } else {
                    self.daemon.restart(&t, grace).await
                }
            }
            "remove" => {
                confirm(args)?;
                let t = self.target(action, args).await?;
                let flag = |k: &str| args.get(k).and_then(Value::as_bool).unwrap_or(false);
                self.daemon.remove(&t, flag("force"), flag("volumes")).await
            }
            other => Err(ConnectorError::UnknownAction(other.to_owned())),
        }
    }
}

fn container_arg<'a>(action: &str, args: &'a Args) -> Result<&'a str, ConnectorError> {
    match optional_str(args, "container") {
        Some(c) if !c.trim().is_empty() => Ok(c.trim()),
        _ => Err(ConnectorError::InvalidArgs {
            action: action.to_owned(),
            reason: "`container` is empty: the event names no container".to_owned(),
        }),
    }
}

fn optional_str<'a>(args: &'a Args, key: &str) -> Option<&'a str> {
    args.get(key).and_then(Value::as_str)
}

fn grace(action: &str, args: &Args) -> Result<Duration, ConnectorError> {
    match optional_str(args, "grace") {
        None => Ok(Duration::from_secs(10)),
        Some(s) => humantime::parse_duration(s).map_err(|e| ConnectorError::InvalidArgs {
            action: action.to_owned(),
            reason: format!("`grace`: {e} (e.g. `10s`)"),
        }),
    }
}

fn confirm(args: &Args) -> Result<(), ConnectorError> {
    if args.get("confirm").and_then(Value::as_bool) == Some(true) {
        Ok(())
    } else {
        Err(ConnectorError::InvalidArgs {
            action: "remove".to_owned(),
            reason: "removal needs `confirm: true`".to_owned(),
        })
    }
}

/// What an action does to a resolved target, in words.
fn describe_on(action: &str, args: &Args, who: &str) -> Result<String, ConnectorError> {
    Ok(match action {
        "inspect" => format!("inspect container {who}"),
        "snapshot" => {
            let o = evidence::Options::from_args(action, args)?;
            format!(
                "snapshot container {who}: inspect, last {} log lines, filesystem diff{}",
                o.log_lines,
                if o.commit { ", commit to an image" } else { "" }
            )
        }
        "quarantine" => format!("quarantine container {who}"),
        "release" => {
            let nets =
                network::parse_networks(action, args.get("networks").unwrap_or(&Value::Null))?;
            let names: Vec<&str> = nets.iter().map(|n| n.name.as_str()).collect();
            format!("release container {who} onto {}", names.join(", "))
        }
        "pause" => format!("pause container {who}"),
        "unpause" => format!("unpause container {who}"),
        "kill" => format!(
            "send {} to container {who}",
            optional_str(args, "signal").unwrap_or("SIGKILL")
        ),
        "stop" => format!(
            "stop container {who} (grace {})",
            humantime::format_duration(grace(action, args)?)
        ),
        "restart" => format!(
            "restart container {who} (grace {})",
            humantime::format_duration(grace(action, args)?)
        ),
        "remove" => {
            confirm(args)?;
            format!("remove container {who}")
        }
        other => return Err(ConnectorError::UnknownAction(other.to_owned())),
    })
}

#[async_trait]
impl Connector for DockerConnector {
    fn actions(&self) -> &'static [ActionSpec] {
        ACTIONS
    }

    fn describe(&self, action: &str, args: &Args) -> Result<Plan, ConnectorError> {
        if action == "find_by_image" {
            return Ok(Plan {
                description: find::Wanted::from_args(action, args)?.describe(),
            });
        }
        let who = format!("`{}`", container_arg(action, args)?);
        Ok(Plan {
            description: describe_on(action, args, &who)?,
        })
    }

    async fn plan(&self, action: &str, args: &Args) -> Result<Plan, ConnectorError> {
        Self::spec(action)?;
        if action == "find_by_image" {
            // Read-only: the plan looks.
            let wanted = find::Wanted::from_args(action, args)?;
            let out = find::find(&self.daemon, &wanted).await?;
            let names: Vec<&str> = out
                .output
                .get("containers")
                .and_then(Value::as_array)
                .map(|cs| {
                    cs.iter()
                        .filter_map(|c| c.get("containerName").and_then(Value::as_str))
                        .collect()
                })
                .unwrap_or_default();
            return Ok(Plan {
                description: format!(
                    "{} (now {}{})",
                    wanted.describe(),
                    names.len(),
                    if names.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", names.join(", "))
                    }
                ),
            });
        }
        let t = self.target(action, args).await?;
        let mut description = describe_on(action, args, &t.display())?;
        let state = daemon::state_word(&t.inspect);
        description.push_str(&format!(" (now {state}"));
        if action == "quarantine" {
            let nets = network::attached(&t.inspect);
            let names: Vec<&str> = nets.iter().map(|n| n.name.as_str()).collect();
            description.push_str(&format!(", on {}", names.join(", ")));
        }
        description.push(')');
        Ok(Plan { description })
    }

    async fn run(&self, action: &str, args: &Args) -> Result<Output, ConnectorError> {
        Self::spec(action)?;
        self.run_action(action, args).await
    }

    async fn revert(&self, action: &str, undo: &Value) -> Result<Output, ConnectorError> {
        let id = undo
            .get("container")
            .and_then(Value::as_str)
            .ok_or_else(|| ConnectorError::Permanent("undo data names no container".to_owned()))?;
        match action {
            "pause" => {
                let t = self.daemon.resolve(id).await?;
                self.daemon.unpause(&t).await
            }
            "quarantine" => {
                let t = self.daemon.resolve(id).await?;
                let nets = network::parse_networks(
                    "release",
                    undo.get("networks").unwrap_or(&Value::Null),
                )?;
                let qnet = undo
                    .get("quarantine_network")
                    .and_then(Value::as_str)
                    .unwrap_or(&self.quarantine_network);
                network::release(&self.daemon, &t, &nets, qnet).await
            }
            other => Err(ConnectorError::NotReversible(other.to_owned())),
        }
    }

    async fn enrich(&self, subject: &Subject) -> Option<Value> {
        if !self.enrich {
            return None;
        }
        let id = subject.container_id.as_deref()?;
        match self.daemon.resolve(id).await {
            Ok(t) => Some(daemon::summary(&t.inspect)),
            Err(e) => {
                tracing::debug!(container = id, error = %e, "no docker enrichment");
                None
            }
        }
    }
}

/// The JSON of a change that did nothing, with the reason.
fn unchanged(t: &Target, why: &str) -> Output {
    Output {
        output: json!({ "container": t.id_json(), "changed": false, "message": why }),
        undo: None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    fn args(v: Value) -> Args {
        v.as_object().cloned().unwrap_or_default()
    }

    fn connector(settings: Value) -> Result<DockerConnector, BuildError> {
        DockerConnector::new(
            "docker",
            settings.as_object().unwrap_or(&Map::new()),
            &Deps::default(),
        )
    }

    #[test]
    fn every_action_is_described_offline() {
        let c = connector(json!({})).unwrap();
        for a in ACTIONS.iter().filter(|a| a.name != "find_by_image") {
            let mut v = json!({ "container": "abc123abc123" });
            if a.name == "remove" {
                v["confirm"] = json!(true);
            }
            if a.name == "release" {
                v["networks"] = json!(["appnet"]);
            }
            let p = c.describe(a.name, &args(v)).unwrap();
            assert!(p.description.contains("abc123abc123"), "{}", p.description);
        }
    }

    #[test]
    fn remove_without_confirm_is_refused() {
        let c = connector(json!({})).unwrap();
        let e = c
            .describe(
                "remove",
                &args(json!({ "container": "x", "confirm": false })),
            )
            .unwrap_err();
        assert!(e.to_string().contains("confirm: true"), "{e}");
    }

    #[test]
    fn bad_settings_are_named() {
        let e = connector(json!({ "host": "tcp://127.0.0.1:2376" })).unwrap_err();
        assert!(e.to_string().contains("tls"), "{e}");
        let e = connector(json!({ "hots": "x" })).unwrap_err();
        assert!(e.to_string().contains("unknown setting `hots`"), "{e}");
        let e = connector(json!({ "timeout": "soon" })).unwrap_err();
        assert!(e.to_string().contains("timeout"), "{e}");
        let e = connector(json!({ "host": "ssh://x" })).unwrap_err();
        assert!(e.to_string().contains("unix://"), "{e}");
    }

    #[test]
    fn grace_must_be_a_duration() {
        let c = connector(json!({})).unwrap();
        let e = c
            .describe(
                "stop",
                &args(json!({ "container": "x", "grace": "a while" })),
            )
            .unwrap_err();
        assert!(e.to_string().contains("grace"), "{e}");
        let p = c
            .describe("stop", &args(json!({ "container": "x", "grace": "3s" })))
            .unwrap();
        assert!(p.description.contains("grace 3s"), "{}", p.description);
    }
}
