//! The Docker daemon as the connector sees it: one lazily made connection (version negotiated
//! on first use, made again after a failure), errors sorted into transient and permanent,
//! targets resolved through a short-lived inspect cache, the guards, and the simple lifecycle
//! actions.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bollard::errors::Error as DockerError;
use bollard::models::ContainerInspectResponse;
use bollard::query_parameters::{
    KillContainerOptions, RemoveContainerOptions, RestartContainerOptions, StopContainerOptions,
};
use bollard::{Docker, API_DEFAULT_VERSION};
use serde_json::{json, Map, Value};

use super::unchanged;
use crate::guard::looks_secret;
use crate::{ConnectorError, Output, Protection};

/// Where the daemon listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// A local socket path.
    Unix(String),
    /// `tcp://HOST:PORT` with TLS client certificates.
    Tls {
        addr: String,
        ca: PathBuf,
        cert: PathBuf,
        key: PathBuf,
    },
}

impl Endpoint {
    /// Parses `host` and the `tls` setting.
    pub(crate) fn parse(host: &str, tls: Option<&Value>) -> Result<Endpoint, String> {
        if let Some(path) = host.strip_prefix("unix://") {
            if tls.is_some() {
                return Err("`tls` applies to a `tcp://` host only".to_owned());
            }
            return Ok(Endpoint::Unix(path.to_owned()));
        }
        let Some(addr) = host.strip_prefix("tcp://") else {
            return Err(format!(
                "`host` must be `unix:///path/to/docker.sock` or `tcp://HOST:PORT`, not `{host}`"
            ));
        };
        let Some(Value::Object(tls)) = tls else {
            return Err(format!(
                "a `tcp://` host needs `tls: {{ ca_file, cert_file, key_file }}`: plain TCP would \
                 hand root on `{addr}` to anyone on the path"
            ));
        };
        for key in tls.keys() {
            if !["ca_file", "cert_file", "key_file"].contains(&key.as_str()) {
                return Err(format!(
                    "unknown `tls` setting `{key}` (known: ca_file, cert_file, key_file)"
                ));
            }
        }
        let file = |k: &str| match tls.get(k) {
            Some(Value::String(s)) if !s.is_empty() => Ok(PathBuf::from(s)),
            _ => Err(format!("`tls.{k}` is required (a file path)")),
        };
        Ok(Endpoint::Tls {
            addr: format!("https://{addr}"),
            ca: file("ca_file")?,
            cert: file("cert_file")?,
            key: file("key_file")?,
        })
    }

    fn display(&self) -> String {
        match self {
            Endpoint::Unix(p) => format!("unix://{p}"),
            Endpoint::Tls { addr, .. } => addr.replacen("https://", "tcp://", 1),
        }
    }
}

/// A resolved container.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// Full id.
    pub id: String,
    /// Name without the leading `/`.
    pub name: String,
    /// The inspect document it was resolved from.
    pub inspect: Arc<ContainerInspectResponse>,
}

impl Target {
    /// `name (short id)`, for plans and messages.
    pub fn display(&self) -> String {
        format!("`{}` ({})", self.name, short(&self.id))
    }

    /// `{ id, name }`, for outputs.
    pub fn id_json(&self) -> Value {
        json!({ "id": self.id, "name": self.name })
    }

    pub fn running(&self) -> bool {
        self.inspect
            .state
            .as_ref()
            .and_then(|s| s.running)
            .unwrap_or(false)
    }

    pub fn paused(&self) -> bool {
        self.inspect
            .state
            .as_ref()
            .and_then(|s| s.paused)
            .unwrap_or(false)
    }
}

/// The first 12 characters of an id.
pub(crate) fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// The daemon connection, cache and guards of one instance.
#[derive(Debug)]
pub(crate) struct Daemon {
    endpoint: Endpoint,
    timeout: Duration,
    ttl: Duration,
    protect: Protection,
    own: Option<String>,
    client: tokio::sync::Mutex<Option<Docker>>,
    cache: Mutex<HashMap<String, (Instant, Arc<ContainerInspectResponse>)>>,
}

impl Daemon {
    pub(crate) fn new(
        endpoint: Endpoint,
        timeout: Duration,
        ttl: Duration,
        protect: Protection,
        own: Option<String>,
    ) -> Self {
        Daemon {
            endpoint,
            timeout,
            ttl,
            protect,
            own,
            client: tokio::sync::Mutex::new(None),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The connection, made (and the API version negotiated) on first use.
    pub(crate) async fn client(&self) -> Result<Docker, ConnectorError> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        // The transport's own timeout only backs up ours (every call is bounded by
        // `self.timeout`, stops by their grace period too).
        let backstop = 3600;
        let made = match &self.endpoint {
            Endpoint::Unix(path) => Docker::connect_with_unix(path, backstop, API_DEFAULT_VERSION),
            Endpoint::Tls {
                addr,
                ca,
                cert,
                key,
            } => Docker::connect_with_ssl(addr, key, cert, ca, backstop, API_DEFAULT_VERSION),
        }
        .map_err(|e| self.unreachable(&e))?;
        let negotiated = tokio::time::timeout(self.timeout, made.negotiate_version())
            .await
            .map_err(|_| self.timed_out("the version handshake"))?
            .map_err(|e| self.unreachable(&e))?;
        *slot = Some(negotiated.clone());
        Ok(negotiated)
    }

    fn unreachable(&self, e: &DockerError) -> ConnectorError {
        ConnectorError::Transient(format!(
            "docker daemon unreachable at {}: {}",
            self.endpoint.display(),
            one_line(e)
        ))
    }

    fn timed_out(&self, what: &str) -> ConnectorError {
        ConnectorError::Transient(format!(
            "docker daemon at {} did not answer {what} within {}",
            self.endpoint.display(),
            humantime::format_duration(self.timeout)
        ))
    }

    /// Sorts a daemon error: connection trouble and 5xx may pass, the rest will not. A lost
    /// connection is dropped so the next call makes a new one.
    pub(crate) async fn fail(&self, e: DockerError, what: &str) -> ConnectorError {
        match &e {
            DockerError::DockerResponseServerError {
                status_code,
                message,
            } => {
                let message = message.trim();
                if *status_code >= 500 {
                    ConnectorError::Transient(format!(
                        "{what}: the daemon answered {status_code}: {message}"
                    ))
                } else {
                    ConnectorError::Permanent(format!("{what}: {message}"))
                }
            }
            DockerError::JsonDataError { .. }
            | DockerError::JsonSerdeError { .. }
            | DockerError::APIVersionParseError {} => {
                ConnectorError::Permanent(format!("{what}: unexpected answer: {}", one_line(&e)))
            }
            _ => {
                *self.client.lock().await = None;
                self.unreachable(&e)
            }
        }
    }

    /// Runs one daemon call under the instance's timeout (plus `extra`, e.g. a grace period).
    pub(crate) async fn call<T>(
        &self,
        what: &str,
        extra: Duration,
        fut: impl std::future::Future<Output = Result<T, DockerError>>,
    ) -> Result<Result<T, DockerError>, ConnectorError> {
        tokio::time::timeout(self.timeout + extra, fut)
            .await
            .map_err(|_| self.timed_out(what))
    }

    /// Resolves a full id, id prefix or name, through the cache.
    pub(crate) async fn resolve(&self, reference: &str) -> Result<Target, ConnectorError> {
        let reference = reference.trim_start_matches('/');
        if let Some(hit) = self.cached(reference) {
            return Ok(target(hit));
        }
        let docker = self.client().await?;
        let what = format!("inspect container `{reference}`");
        let inspect = match self
            .call(
                &what,
                Duration::ZERO,
                docker.inspect_container(reference, None),
            )
            .await?
        {
            Ok(i) => Arc::new(i),
            Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => {
                return Err(ConnectorError::Permanent(format!(
                    "no container `{reference}` on the docker daemon at {}",
                    self.endpoint.display()
                )))
            }
            Err(e) => return Err(self.fail(e, &what).await),
        };
        let t = target(inspect.clone());
        if let Ok(mut cache) = self.cache.lock() {
            let now = Instant::now();
            cache.retain(|_, (at, _)| now.duration_since(*at) < self.ttl);
            cache.insert(reference.to_owned(), (now, inspect.clone()));
            cache.insert(t.id.clone(), (now, inspect));
        }
        Ok(t)
    }

    fn cached(&self, reference: &str) -> Option<Arc<ContainerInspectResponse>> {
        let cache = self.cache.lock().ok()?;
        let (at, doc) = cache.get(reference)?;
        (at.elapsed() < self.ttl).then(|| doc.clone())
    }

    /// Forgets what the cache knows of a container after this connector changed it.
    pub(crate) fn invalidate(&self, id: &str) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.retain(|_, (_, doc)| doc.id.as_deref() != Some(id));
        }
    }

    /// Refuses protected containers and the engine's own.
    pub(crate) fn guard(&self, t: &Target) -> Result<(), ConnectorError> {
        if let Some(own) = &self.own {
            if t.id.starts_with(own.as_str()) || t.name == own.trim_start_matches('/') {
                return Err(ConnectorError::Refused(format!(
                    "container `{}` is the engine's own",
                    t.name
                )));
            }
        }
        let labels = t
            .inspect
            .config
            .as_ref()
            .and_then(|c| c.labels.clone())
            .unwrap_or_default();
        match self.protect.refuses(&t.name, &labels) {
            Some(why) => Err(ConnectorError::Refused(why)),
            None => Ok(()),
        }
    }

    pub(crate) async fn pause(&self, t: &Target) -> Result<Output, ConnectorError> {
        if t.paused() {
            return Ok(unchanged(t, "already paused"));
        }
        if !t.running() {
            return Ok(unchanged(t, "not running: nothing to pause"));
        }
        let docker = self.client().await?;
        let what = format!("pause {}", t.display());
        let r = self
            .call(&what, Duration::ZERO, docker.pause_container(&t.id))
            .await?;
        self.invalidate(&t.id);
        match r {
            Ok(()) => Ok(changed(t, "paused", Some(json!({ "container": t.id })))),
            Err(e) if conflict(&e, "already paused") => Ok(unchanged(t, "already paused")),
            Err(e) if conflict(&e, "not running") => {
                Ok(unchanged(t, "not running: nothing to pause"))
            }
            Err(e) => Err(self.fail(e, &what).await),
        }
    }

    pub(crate) async fn unpause(&self, t: &Target) -> Result<Output, ConnectorError> {
        if !t.paused() {
            return Ok(unchanged(t, "not paused"));
        }
        let docker = self.client().await?;
        let what = format!("unpause {}", t.display());
        let r = self
            .call(&what, Duration::ZERO, docker.unpause_container(&t.id))
            .await?;
        self.invalidate(&t.id);
        match r {
            Ok(()) => Ok(changed(t, "unpaused", None)),
            Err(e) if conflict(&e, "not paused") => Ok(unchanged(t, "not paused")),
            Err(e) => Err(self.fail(e, &what).await),
        }
    }

    pub(crate) async fn kill(&self, t: &Target, signal: &str) -> Result<Output, ConnectorError> {
        if !t.running() {
            return Ok(unchanged(t, "not running: nothing to kill"));
        }
        let docker = self.client().await?;
        let what = format!("send {signal} to {}", t.display());
        let opts = KillContainerOptions {
            signal: signal.to_owned(),
        };
        let r = self
            .call(
                &what,
                Duration::ZERO,
                docker.kill_container(&t.id, Some(opts)),
            )
            .await?;
        self.invalidate(&t.id);
        match r {
            Ok(()) => Ok(changed(t, &format!("sent {signal}"), None)),
            Err(e) if conflict(&e, "not running") => {
                Ok(unchanged(t, "not running: nothing to kill"))
            }
            Err(e) => Err(self.fail(e, &what).await),
        }
    }

    pub(crate) async fn stop(&self, t: &Target, grace: Duration) -> Result<Output, ConnectorError> {
        if !t.running() {
            return Ok(unchanged(t, "not running: nothing to stop"));
        }
        let docker = self.client().await?;
        let what = format!("stop {}", t.display());
        let opts = StopContainerOptions {
            signal: None,
            t: Some(seconds(grace)),
        };
        let r = self
            .call(&what, grace, docker.stop_container(&t.id, Some(opts)))
            .await?;
        self.invalidate(&t.id);
        match r {
            Ok(()) => Ok(changed(t, "stopped", None)),
            Err(DockerError::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(unchanged(t, "not running: nothing to stop")),
            Err(e) => Err(self.fail(e, &what).await),
        }
    }

    pub(crate) async fn restart(
        &self,
        t: &Target,
        grace: Duration,
    ) -> Result<Output, ConnectorError> {
        let docker = self.client().await?;
        let what = format!("restart {}", t.display());
        let opts = RestartContainerOptions {
            signal: None,
            t: Some(seconds(grace)),
        };
        let r = self
            .call(&what, grace, docker.restart_container(&t.id, Some(opts)))
            .await?;
        self.invalidate(&t.id);
        match r {
            Ok(()) => Ok(changed(t, "restarted", None)),
            Err(e) => Err(self.fail(e, &what).await),
        }
    }

    pub(crate) async fn remove(
        &self,
        t: &Target,
        force: bool,
        volumes: bool,
    ) -> Result<Output, ConnectorError> {
        if t.running() && !force {
            return Err(ConnectorError::Permanent(format!(
                "{} is running: stop it first or give `force: true`",
                t.display()
            )));
        }
        let docker = self.client().await?;
        let what = format!("remove {}", t.display());
        let opts = RemoveContainerOptions {
            v: volumes,
            force,
            link: false,
        };
        let r = self
            .call(
                &what,
                Duration::ZERO,
                docker.remove_container(&t.id, Some(opts)),
            )
            .await?;
        self.invalidate(&t.id);
        match r {
            Ok(()) => Ok(changed(t, "removed", None)),
            Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(unchanged(t, "already removed")),
            Err(e) => Err(self.fail(e, &what).await),
        }
    }
}

fn target(inspect: Arc<ContainerInspectResponse>) -> Target {
    Target {
        id: inspect.id.clone().unwrap_or_default(),
        name: inspect
            .name
            .as_deref()
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_owned(),
        inspect,
    }
}

/// The JSON of a change, with the undo data of a reversible one.
pub(crate) fn changed(t: &Target, message: &str, undo: Option<Value>) -> Output {
    Output {
        output: json!({ "container": t.id_json(), "changed": true, "message": message }),
        undo,
    }
}

fn conflict(e: &DockerError, words: &str) -> bool {
    matches!(e, DockerError::DockerResponseServerError { status_code: 409, message }
        if message.contains(words))
}

fn seconds(d: Duration) -> i32 {
    i32::try_from(d.as_secs()).unwrap_or(i32::MAX)
}

fn one_line(e: &DockerError) -> String {
    e.to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// `running`, `paused`, `exited`...
pub(crate) fn state_word(i: &ContainerInspectResponse) -> String {
    i.state
        .as_ref()
        .and_then(|s| s.status)
        .map(|s| s.to_string())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The facts later steps and notifications use. Environment values are never included (they
/// may hold secrets); only the names of variables that look like secrets are, as a finding.
pub(crate) fn summary(i: &ContainerInspectResponse) -> Value {
    let config = i.config.clone().unwrap_or_default();
    let host = i.host_config.clone().unwrap_or_default();
    let labels: BTreeMap<String, String> = config
        .labels
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let label = |k: &str| labels.get(k).cloned();
    let id = i.id.clone().unwrap_or_default();
    let mut networks = Map::new();
    for (name, ep) in i
        .network_settings
        .as_ref()
        .and_then(|n| n.networks.clone())
        .unwrap_or_default()
    {
        let aliases: Vec<String> = ep
            .aliases
            .unwrap_or_default()
            .into_iter()
            .filter(|a| a != short(&id))
            .collect();
        networks.insert(
            name,
            json!({ "aliases": aliases, "ip": ep.ip_address.filter(|s| !s.is_empty()) }),
        );
    }
    let mounts: Vec<Value> = i
        .mounts
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|m| {
            json!({
                "type": m.typ.map(|t| t.to_string()),
                "source": m.source,
                "destination": m.destination,
                "rw": m.rw,
            })
        })
        .collect();
    let secret_env: Vec<String> = config
        .env
        .clone()
        .unwrap_or_default()
        .iter()
        .filter_map(|kv| kv.split_once('=').map(|(k, _)| k.to_owned()))
        .filter(|k| looks_secret(k))
        .collect();
    let user = config.user.clone().filter(|u| !u.is_empty());
    let state = i.state.clone().unwrap_or_default();
    json!({
        "id": id,
        "short_id": short(&id),
        "name": i.name.as_deref().unwrap_or_default().trim_start_matches('/'),
        "image": config.image,
        "image_id": i.image,
        "labels": labels,
        "state": state_word(i),
        "started_at": state.started_at,
        "pid": state.pid,
        "restart_count": i.restart_count,
        "user": user.clone().unwrap_or_else(|| "root".to_owned()),
        "runs_as_root": user.as_deref().is_none_or(|u| u == "0" || u == "root" || u.starts_with("0:") || u.starts_with("root:")),
        "privileged": host.privileged.unwrap_or(false),
        "cap_add": host.cap_add.unwrap_or_default(),
        "network_mode": host.network_mode,
        "read_only_rootfs": host.readonly_rootfs.unwrap_or(false),
        "networks": networks,
        "mounts": mounts,
        "secret_env_names": secret_env,
        "compose": {
            "project": label("com.docker.compose.project"),
            "service": label("com.docker.compose.service"),
        },
        "kubernetes": {
            "pod": label("io.kubernetes.pod.name"),
            "namespace": label("io.kubernetes.pod.namespace"),
            "container": label("io.kubernetes.container.name"),
        },
    })
}

/// The id of the container this process runs in, read from `/proc/self` (cgroup v1 paths, or
/// the container's own files in the mount table under cgroup v2). `None` outside a container.
pub(crate) fn own_container_id() -> Option<String> {
    let read = |p: &str| std::fs::read_to_string(Path::new(p)).unwrap_or_default();
    find_container_id(&read("/proc/self/cgroup"))
        .or_else(|| find_container_id(&read("/proc/self/mountinfo")))
}

/// The first 64-hex-character token after `docker/`, `docker-` or `containers/` in `text`.
fn find_container_id(text: &str) -> Option<String> {
    for marker in ["docker/", "docker-", "containers/"] {
        for (pos, _) in text.match_indices(marker) {
            let rest = text.get(pos + marker.len()..)?;
            let id: String = rest.chars().take_while(char::is_ascii_hexdigit).collect();
            if id.len() == 64 {
                return Some(id);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn own_id_is_found_in_cgroup_and_mountinfo_lines() {
        let id = "a".repeat(64);
        assert_eq!(
            find_container_id(&format!("12:cpu:/docker/{id}\n")),
            Some(id.clone())
        );
        assert_eq!(
            find_container_id(&format!("0::/system.slice/docker-{id}.scope\n")),
            Some(id.clone())
        );
        assert_eq!(
            find_container_id(&format!(
                "812 800 0:50 /var/lib/docker/containers/{id}/hostname /etc/hostname rw\n"
            )),
            Some(id)
        );
        assert_eq!(find_container_id("0::/user.slice\n"), None);
    }

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            Endpoint::parse("unix:///run/docker.sock", None),
            Ok(Endpoint::Unix("/run/docker.sock".into()))
        );
        let tls = json!({ "ca_file": "ca.pem", "cert_file": "c.pem", "key_file": "k.pem" });
        assert!(matches!(
            Endpoint::parse("tcp://127.0.0.1:2376", Some(&tls)),
            Ok(Endpoint::Tls { .. })
        ));
        let bad = json!({ "ca_file": "ca.pem" });
        assert!(Endpoint::parse("tcp://h:1", Some(&bad))
            .unwrap_err()
            .contains("cert_file"));
    }
}
