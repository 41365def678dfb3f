//! Connector `registry`: revokes images. A revocation is recorded in the revocation list (which
//! admission and the Docker AuthZ plugin enforce) and, per the instance's `on_revoke`, the
//! image is moved to a quarantine repository or its manifest deleted, through the OCI
//! distribution API.
//!
//! # Layout
//! - this module: the actions and their parameters, the instance settings, and the dispatch of
//!   `describe` / `plan` / `run` / `revert`;
//! - `client`: one registry's transport: its credentials and the token flow, and the sorting of
//!   its failures into transient and permanent;
//! - `content`: manifests, image configs and blobs read, written, mounted, copied and deleted;
//! - `actions`: what the actions share (arguments, descriptions, plans) and `inspect`;
//! - `revoke`: `revoke` and `reinstate` (also the revert of `revoke`).
//!
//! The default instance `registry` has no URL: it records revocations and touches no registry.
//! An instance only ever changes the registry its `url` names; an image in another registry is
//! recorded only, and the output says so.

mod actions;
mod client;
mod content;
mod revoke;

use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Map, Value};

use crate::http::Settings;
use crate::spec::{find_action, ActionSpec, ParamSpec, ParamType};
use crate::{Args, BuildError, Connector, ConnectorError, Deps, Output, Plan};
use client::{Auth, Registry};

const IMAGE: ParamSpec = ParamSpec {
    name: "image",
    ty: ParamType::String,
    required: true,
    description: "The image: `registry/repository:tag`, `...@sha256:<digest>`, or both.",
};

const REASON: ParamSpec = ParamSpec {
    name: "reason",
    ty: ParamType::String,
    required: true,
    description: "Why, in words (shown by admission and the AuthZ plugin when they deny it).",
};

/// The actions of `registry`.
pub const ACTIONS: &[ActionSpec] = &[
    ActionSpec {
        name: "revoke",
        description: "Records the image in the revocation list (admission and the Docker AuthZ \
                      plugin then deny it) with the event, playbook and run; then, per \
                      `on_revoke`, only records, moves the tag to the quarantine repository, \
                      or deletes the manifest. An image already revoked is not changed again \
                      (`already: true`). Reverted by reinstating it, moving a quarantined image \
                      back.",
        params: &[
            IMAGE,
            ParamSpec {
                name: "digest",
                ty: ParamType::String,
                required: false,
                description: "The manifest digest `sha256:<hex>`, when the image reference \
                              lacks it (scanners report it apart).",
            },
            REASON,
            ParamSpec {
                name: "findings",
                ty: ParamType::Any,
                required: false,
                description: "The finding ids behind it (a list of strings: CVE ids, secret \
                              rule ids).",
            },
            ParamSpec {
                name: "on_revoke",
                ty: ParamType::String,
                required: false,
                description: "`record`, `quarantine` or `delete`, instead of the instance's \
                              `on_revoke`.",
            },
        ],
        destructive: true,
        reversible: true,
        message_param: None,
    },
    ActionSpec {
        name: "reinstate",
        description: "Lifts a revocation: the entry stays in the list as proof, marked \
                      reinstated with who and why; a quarantined image is moved back to its \
                      repository and tag. A deleted manifest stays deleted.",
        params: &[IMAGE, REASON],
        destructive: false,
        reversible: false,
        message_param: None,
    },
    ActionSpec {
        name: "inspect",
        description: "Facts about the image from its registry: digest, size (manifest, config \
                      and layers), created, labels, media type.",
        params: &[IMAGE],
        destructive: false,
        reversible: false,
        message_param: None,
    },
];

const SETTINGS: &[&str] = &[
    "url",
    "username",
    "password_file",
    "token_file",
    "ca_file",
    "timeout",
    "on_revoke",
    "quarantine_repository",
];

/// What `revoke` does in the registry beyond recording.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnRevoke {
    /// The revocation list only.
    Record,
    /// Move the manifest to the quarantine repository under the same tag.
    Quarantine,
    /// Delete the manifest.
    Delete,
}

impl OnRevoke {
    /// Reads `record`, `quarantine` or `delete`.
    pub fn parse(s: &str) -> Option<OnRevoke> {
        match s {
            "record" => Some(OnRevoke::Record),
            "quarantine" => Some(OnRevoke::Quarantine),
            "delete" => Some(OnRevoke::Delete),
            _ => None,
        }
    }

    /// The name in settings and outputs.
    pub fn as_str(self) -> &'static str {
        match self {
            OnRevoke::Record => "record",
            OnRevoke::Quarantine => "quarantine",
            OnRevoke::Delete => "delete",
        }
    }
}

/// A `registry` instance.
#[derive(Debug)]
pub struct RegistryConnector {
    instance: String,
    registry: Option<Registry>,
    on_revoke: OnRevoke,
    quarantine: String,
    list: Option<crate::revocation::RevocationList>,
}

impl RegistryConnector {
    /// Builds an instance. Settings (all optional; without `url` the instance records only):
    /// - `url`: `http(s)://host:port` of the registry whose images this instance may change;
    /// - `username` with `password_file`, or `token_file`: credentials, read from files;
    /// - `ca_file`: a CA for an https registry; `timeout`: per request (default 10s);
    /// - `on_revoke`: `record` (default), `quarantine` or `delete`;
    /// - `quarantine_repository`: where `quarantine` moves an image (default
    ///   `quarantine/{repository}`).
    pub fn new(
        instance: &str,
        settings: &Map<String, Value>,
        deps: &Deps,
    ) -> Result<Self, BuildError> {
        let s = Settings::new(instance, settings, SETTINGS)?;
        let on_revoke = match s.string("on_revoke")? {
            None => OnRevoke::Record,
            Some(v) => OnRevoke::parse(&v).ok_or_else(|| {
                s.error(format!(
                    "`on_revoke` must be `record`, `quarantine` or `delete`, got `{v}`"
                ))
            })?,
        };
        let quarantine = s
            .string("quarantine_repository")?
            .unwrap_or_else(|| "quarantine/{repository}".to_owned());
        actions::quarantine_repository(&quarantine, "app")
            .map_err(|e| s.error(format!("`quarantine_repository`: {e}")))?;
        let auth = match (
            s.string("username")?,
            s.secret_file("password_file")?,
            s.secret_file("token_file")?,
        ) {
            (Some(_), _, Some(_)) | (None, Some(_), Some(_)) => {
                return Err(
                    s.error("give `username` and `password_file`, or `token_file`, not both")
                )
            }
            (Some(username), Some(password), None) => Auth::Basic { username, password },
            (Some(_), None, None) => return Err(s.error("`username` needs `password_file`")),
            (None, Some(_), None) => return Err(s.error("`password_file` needs `username`")),
            (None, None, Some(token)) => Auth::Bearer(token),
            (None, None, None) => Auth::None,
        };
        let registry = match s.url("url")? {
            Some(url) => {
                if url.path() != "/" && !url.path().is_empty() {
                    return Err(s.error("`url` is the registry's root: `http(s)://host:port`"));
                }
                if url.scheme() == "http" && !matches!(auth, Auth::None) {
                    let host = url.host_str().unwrap_or_default();
                    if host != "localhost" && !host.starts_with("127.") && host != "[::1]" {
                        return Err(s.error(
                            "credentials are sent to an https `url` only (or to loopback)",
                        ));
                    }
                }
                Some(Registry::new(url, s.http_client()?, auth))
            }
            None => {
                if !matches!(auth, Auth::None) || on_revoke != OnRevoke::Record {
                    return Err(
                        s.error("credentials and `on_revoke` other than `record` need `url`")
                    );
                }
                None
            }
        };
        // The timeout is read by the client; it is checked here without a URL too.
        s.duration("timeout", Duration::from_secs(10))?;
        Ok(RegistryConnector {
            instance: instance.to_owned(),
            registry,
            on_revoke,
            quarantine,
            list: deps.revocations.clone(),
        })
    }

    fn spec(action: &str) -> Result<&'static ActionSpec, ConnectorError> {
        find_action(ACTIONS, action).ok_or_else(|| ConnectorError::UnknownAction(action.to_owned()))
    }
}

#[async_trait]
impl Connector for RegistryConnector {
    fn actions(&self) -> &'static [ActionSpec] {
        ACTIONS
    }

    fn describe(&self, action: &str, args: &Args) -> Result<Plan, ConnectorError> {
        Self::spec(action)?;
        Ok(Plan {
            description: actions::describe(self, action, args, None)?,
        })
    }

    async fn plan(&self, action: &str, args: &Args) -> Result<Plan, ConnectorError> {
        Self::spec(action)?;
        Ok(Plan {
            description: actions::plan(self, action, args).await?,
        })
    }

    async fn run(&self, action: &str, args: &Args) -> Result<Output, ConnectorError> {
        Self::spec(action)?;
        match action {
            "revoke" => revoke::revoke(self, args).await,
            "reinstate" => revoke::reinstate_action(self, args).await,
            "inspect" => actions::inspect(self, args).await,
            other => Err(ConnectorError::UnknownAction(other.to_owned())),
        }
    }

    async fn revert(&self, action: &str, undo: &Value) -> Result<Output, ConnectorError> {
        match action {
            "revoke" => revoke::revert_revoke(self, undo).await,
            other => Err(ConnectorError::NotReversible(other.to_owned())),
        }
    }
}
