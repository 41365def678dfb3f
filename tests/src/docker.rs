//! Real Docker for end-to-end tests, through the `docker` CLI.
//!
//! - [`require_docker`]: fails the test, with what to run, when the daemon or [`TEST_IMAGE`] is
//!   missing; tests never skip. `bash scripts/setup` installs docker.io, starts dockerd and builds
//!   the image from Debian's busybox-static; nothing is ever pulled from a registry.
//! - [`Scene`]: the containers and networks of one test, under a name prefix unique to the test,
//!   all removed when it is dropped, together with whatever the code under test created and the
//!   test registered ([`Scene::track_network`], [`Scene::track_image_repo`]).
//! - [`networks_of`], [`state_of`]: read what a test asserts on out of `docker inspect`.
//!
//! Everything a scene creates carries the label [`SCENE_LABEL`], so what a killed test run left
//! behind can be found with `docker ps -a --filter label=riposte-test.scene`.

use std::collections::hash_map::RandomState;
use std::collections::BTreeMap;
use std::hash::BuildHasher;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// The image every test container runs: busybox, built locally by `scripts/setup`. Its default
/// command sleeps for an hour.
pub const TEST_IMAGE: &str = "riposte-test/busybox:latest";

/// The label on every container and network a [`Scene`] creates; its value is the scene's prefix.
pub const SCENE_LABEL: &str = "riposte-test.scene";

/// Runs `docker ARGS` and returns its output, whatever the exit status.
pub fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run `docker`: {e}; run `bash scripts/setup` (it installs docker.io)")
        })
}

/// Runs `docker ARGS`, fails the test with its stderr if it fails, and returns its trimmed stdout.
#[track_caller]
pub fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "`docker {}` failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Fails the test unless the Docker daemon answers and [`TEST_IMAGE`] exists. Checked once per
/// test binary.
#[track_caller]
pub fn require_docker() {
    static CHECKED: OnceLock<Result<(), String>> = OnceLock::new();
    if let Err(problem) = CHECKED.get_or_init(check_docker) {
        panic!(
            "{problem}; run `bash scripts/setup` (it installs docker.io and busybox-static, starts dockerd and builds {TEST_IMAGE})"
        );
    }
}

fn check_docker() -> Result<(), String> {
    let info = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("the docker CLI cannot be run ({e})"))?;
    if !info.status.success() {
        return Err(format!(
            "the Docker daemon does not answer (`docker info`: {})",
            String::from_utf8_lossy(&info.stderr).trim()
        ));
    }
    let image = Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}", TEST_IMAGE])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("the docker CLI cannot be run ({e})"))?;
    if !image.status.success() {
        return Err(format!("the test image {TEST_IMAGE} is missing"));
    }
    Ok(())
}

/// A container started by a [`Scene`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    /// Its full id (64 hex digits).
    pub id: String,
    /// Its name.
    pub name: String,
}

impl Container {
    /// The 12-digit short id the CLI shows.
    pub fn short_id(&self) -> &str {
        self.id.get(..12).unwrap_or(&self.id)
    }
}

/// The Docker objects of one test, removed when dropped.
pub struct Scene {
    prefix: String,
    containers: Vec<String>,
    networks: Vec<String>,
    image_repos: Vec<String>,
}

impl Scene {
    /// A scene whose names start with `rtest-TAG-PID-N-RANDOM-` (not `riposte-`: the default guards protect those names). Fails the test when
    /// Docker is not ready (see [`require_docker`]).
    #[track_caller]
    pub fn new(tag: &str) -> Scene {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        require_docker();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        // RandomState is keyed per process, so two runs with the same pid still differ.
        let random = RandomState::new().hash_one((pid, n, nanos)) & 0xff_ffff;
        let tag: String = tag
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect();
        Scene {
            prefix: format!("rtest-{tag}-{pid}-{n}-{random:06x}"),
            containers: Vec::new(),
            networks: Vec::new(),
            image_repos: Vec::new(),
        }
    }

    /// The prefix of every name in this scene.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The scene's name for `suffix`: what [`Scene::network`] and [`Scene::container`] use, and
    /// what a test can give the code under test for the objects it creates (lowercase, so it is
    /// also a valid image repository).
    pub fn name(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.prefix)
    }

    /// Creates a user-defined bridge network and returns its name.
    pub fn network(&mut self, suffix: &str) -> String {
        let name = self.name(suffix);
        let label = format!("{SCENE_LABEL}={}", self.prefix);
        docker_ok(&[
            "network", "create", "--driver", "bridge", "--label", &label, &name,
        ]);
        self.networks.push(name.clone());
        name
    }

    /// Starts a container from [`TEST_IMAGE`] attached to `networks`, each with its aliases:
    /// the first through `docker run --network`, the others through `docker network connect`.
    /// With no networks it is on Docker's default bridge.
    pub fn container(&mut self, suffix: &str, networks: &[(&str, &[&str])]) -> Container {
        self.container_with_labels(suffix, networks, &[])
    }

    /// [`Scene::container`] with labels (`("riposte.io/protected", "true")`).
    pub fn container_with_labels(
        &mut self,
        suffix: &str,
        networks: &[(&str, &[&str])],
        labels: &[(&str, &str)],
    ) -> Container {
        let name = self.name(suffix);
        let mut args: Vec<String> = vec![
            "run".into(),
            "-d".into(),
            "--name".into(),
            name.clone(),
            "--label".into(),
            format!("{SCENE_LABEL}={}", self.prefix),
        ];
        for (key, value) in labels {
            args.push("--label".into());
            args.push(format!("{key}={value}"));
        }
        let mut networks = networks.iter();
        let first = networks.next();
        if let Some((network, aliases)) = first {
            args.push("--network".into());
            args.push((*network).to_owned());
            for alias in aliases.iter() {
                args.push("--network-alias".into());
                args.push((*alias).to_owned());
            }
        }
        args.push(TEST_IMAGE.into());
        let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
        // Registered before it runs: a failed `run` may still leave a created container behind.
        self.containers.push(name.clone());
        let id = docker_ok(&arg_refs);
        assert!(
            id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "`docker run` printed `{id}`, not a container id"
        );
        for (network, aliases) in networks {
            let mut connect = vec!["network", "connect"];
            for alias in aliases.iter() {
                connect.push("--alias");
                connect.push(alias);
            }
            connect.push(network);
            connect.push(&name);
            docker_ok(&connect);
        }
        Container { id, name }
    }

    /// Removes the network `name` with the scene, after its containers: for networks the code
    /// under test creates.
    pub fn track_network(&mut self, name: &str) {
        if !self.networks.iter().any(|n| n == name) {
            self.networks.push(name.to_owned());
        }
    }

    /// Removes, with the scene, every image whose repository starts with `repo`: for images
    /// the code under test commits. [`TEST_IMAGE`] is never removed.
    pub fn track_image_repo(&mut self, repo: &str) {
        self.image_repos.push(repo.to_owned());
    }

    /// `docker inspect NAME_OR_ID`'s object (a container, a network, an image). Fails the test
    /// when there is none.
    pub fn inspect(&self, name_or_id: &str) -> Value {
        self.try_inspect(name_or_id).unwrap_or_else(|| {
            let out = docker(&["inspect", name_or_id]);
            panic!(
                "`docker inspect {name_or_id}` found nothing: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )
        })
    }

    /// `docker inspect NAME_OR_ID`'s object, or `None` when there is none (it was removed).
    pub fn try_inspect(&self, name_or_id: &str) -> Option<Value> {
        let out = docker(&["inspect", name_or_id]);
        if !out.status.success() {
            return None;
        }
        match serde_json::from_slice::<Value>(&out.stdout).ok()? {
            Value::Array(mut items) if !items.is_empty() => Some(items.swap_remove(0)),
            _ => None,
        }
    }
}

impl Drop for Scene {
    /// Removes containers (forced, with their anonymous volumes), then networks, then tracked
    /// images. Never panics: a failed removal is reported on stderr and the rest goes on.
    fn drop(&mut self) {
        fn quietly(args: &[&str]) {
            match Command::new("docker")
                .args(args)
                .stdin(Stdio::null())
                .output()
            {
                Ok(out) if out.status.success() => {}
                Ok(out) => {
                    let err = String::from_utf8_lossy(&out.stderr);
                    // Already gone (the test removed it, or the code under test did).
                    if !err.contains("No such") && !err.contains("not found") {
                        eprintln!("cleanup: `docker {}`: {}", args.join(" "), err.trim());
                    }
                }
                Err(e) => eprintln!("cleanup: cannot run `docker {}`: {e}", args.join(" ")),
            }
        }

        for name in &self.containers {
            quietly(&["rm", "--force", "--volumes", name]);
        }
        for name in self.networks.iter().rev() {
            quietly(&["network", "rm", name]);
        }
        if self.image_repos.is_empty() {
            return;
        }
        let Ok(out) = Command::new("docker")
            .args(["image", "ls", "--format", "{{.Repository}}:{{.Tag}}"])
            .stdin(Stdio::null())
            .output()
        else {
            return;
        };
        let listed = String::from_utf8_lossy(&out.stdout);
        for reference in listed.lines().map(str::trim) {
            let repo = reference.rsplit_once(':').map_or(reference, |(r, _)| r);
            if reference == TEST_IMAGE || repo == "<none>" {
                continue;
            }
            if self
                .image_repos
                .iter()
                .any(|p| repo.starts_with(p.as_str()))
            {
                quietly(&["image", "rm", "--force", reference]);
            }
        }
    }
}

/// The networks a container is attached to (from its `docker inspect`), each with its aliases,
/// sorted. The alias equal to the container's short id, which daemons before API 1.44 add on
/// user-defined networks, is left out.
pub fn networks_of(container: &Value) -> BTreeMap<String, Vec<String>> {
    let short_id: String = container
        .get("Id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .chars()
        .take(12)
        .collect();
    let Some(networks) = container
        .pointer("/NetworkSettings/Networks")
        .and_then(Value::as_object)
    else {
        return BTreeMap::new();
    };
    networks
        .iter()
        .map(|(name, settings)| {
            let mut aliases: Vec<String> = settings
                .get("Aliases")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .filter(|a| *a != short_id)
                .map(str::to_owned)
                .collect();
            aliases.sort();
            (name.clone(), aliases)
        })
        .collect()
}

/// A container's `(running, paused, status)` from its `docker inspect`; status is Docker's
/// (`running`, `paused`, `exited`, ...).
pub fn state_of(container: &Value) -> (bool, bool, String) {
    let state = container.get("State");
    let flag = |key: &str| {
        state
            .and_then(|s| s.get(key))
            .and_then(Value::as_bool)
            .unwrap_or(false)
    };
    let status = state
        .and_then(|s| s.get("Status"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    (flag("Running"), flag("Paused"), status)
}

/// A container's labels from its `docker inspect`.
pub fn labels_of(container: &Value) -> BTreeMap<String, String> {
    container
        .pointer("/Config/Labels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
        .collect()
}

/// Where `scripts/setup` keeps the Docker TLS certificates (`ca.pem`, `client-cert.pem`,
/// `client-key.pem`), and the daemon's TLS address. Fails the test when they are missing.
#[track_caller]
pub fn tls() -> (PathBuf, &'static str) {
    let dir = std::env::var_os("RIPOSTE_DOCKER_TLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/riposte-test/docker-tls"));
    assert!(
        dir.join("client-key.pem").is_file(),
        "no Docker TLS client certificate in {}: run `bash scripts/setup`, which makes them and \
         starts dockerd with its TLS listener on 127.0.0.1:2376",
        dir.display()
    );
    (dir, "127.0.0.1:2376")
}
