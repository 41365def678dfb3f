//! A real OCI registry for end-to-end tests: Debian's `docker-registry` (the CNCF distribution
//! registry), one per test, on a free loopback port, with its storage in a temporary directory
//! and deletes enabled.
//!
//! - [`RegistryServer::start`]: no credentials; [`RegistryServer::start_with_htpasswd`]: basic
//!   credentials checked against a bcrypt htpasswd file (made with `htpasswd -B` from
//!   apache2-utils); [`RegistryServer::start_with`]: token authentication, TLS, or the storage
//!   of another registry.
//! - [`RegistryServer::push`]: commits the local test image with labels and pushes it with the
//!   real docker client (a `localhost` registry needs no TLS), returning the digest `docker
//!   push` printed.
//!
//! A missing `docker-registry` or `htpasswd` fails the test with what to install; `bash
//! scripts/setup` installs both.

use std::net::{Ipv4Addr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::docker::{docker, docker_ok, Scene, TEST_IMAGE};
use crate::free_port;

/// The registry program: `RIPOSTE_DOCKER_REGISTRY`, else `docker-registry` on PATH or in
/// /usr/bin.
pub fn docker_registry_bin() -> PathBuf {
    if let Ok(p) = std::env::var("RIPOSTE_DOCKER_REGISTRY") {
        return PathBuf::from(p);
    }
    find_program("docker-registry").unwrap_or_else(|| {
        panic!(
            "docker-registry is not installed: run `bash scripts/setup` (it installs Debian's \
             docker-registry), or set RIPOSTE_DOCKER_REGISTRY"
        )
    })
}

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A running registry; killed and its storage removed when dropped.
pub struct RegistryServer {
    child: Child,
    /// `http://localhost:PORT`, the instance `url` that serves images named `localhost:PORT/...`.
    pub url: String,
    /// `localhost:PORT`, how image references name it.
    pub host: String,
    storage: PathBuf,
    port: u16,
    dir: tempfile::TempDir,
}

/// How a registry is started.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Basic credentials, checked against a bcrypt htpasswd file.
    pub htpasswd: Option<(String, String)>,
    /// Bearer tokens from a token server.
    pub token: Option<TokenAuth>,
    /// Serve https with this certificate and key (for 127.0.0.1).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Serve the images stored here instead of a storage of its own.
    pub storage: Option<PathBuf>,
    /// Refuse deletes (405), as a registry configured without `delete: enabled` does.
    pub deletes_disabled: bool,
    /// Listen on this port (to restart a registry where clients know it), else a free one.
    pub port: Option<u16>,
}

/// The registry's token authentication: where clients get tokens, and whose tokens it trusts.
#[derive(Debug, Clone)]
pub struct TokenAuth {
    /// The token server's URL, sent to clients in the challenge.
    pub realm: String,
    /// The service name tokens must be issued for (their `aud`).
    pub service: String,
    /// The issuer tokens must name (their `iss`).
    pub issuer: String,
    /// The certificates (PEM) whose keys may sign tokens, or whose CAs issued the signer's.
    pub root_certs: PathBuf,
}

impl RegistryServer {
    /// A registry without credentials.
    pub fn start() -> RegistryServer {
        RegistryServer::start_with(&Options::default())
    }

    /// A registry that takes `user` with `password` only (basic auth, bcrypt htpasswd).
    pub fn start_with_htpasswd(user: &str, password: &str) -> RegistryServer {
        RegistryServer::start_with(&Options {
            htpasswd: Some((user.to_owned(), password.to_owned())),
            ..Options::default()
        })
    }

    /// Where its images are stored (another registry can be started on the same storage).
    pub fn storage(&self) -> PathBuf {
        self.storage.clone()
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A registry as `options` say.
    pub fn start_with(options: &Options) -> RegistryServer {
        let dir = tempfile::tempdir().unwrap();
        let port = options.port.unwrap_or_else(free_port);
        let mut auth = String::new();
        if let Some((user, password)) = &options.htpasswd {
            let htpasswd = find_program("htpasswd").unwrap_or_else(|| {
                panic!(
                    "htpasswd is not installed: run `bash scripts/setup` (it installs Debian's \
                     apache2-utils)"
                )
            });
            let out = Command::new(htpasswd)
                .args(["-Bbn", user, password])
                .stdin(Stdio::null())
                .output()
                .unwrap();
            assert!(out.status.success(), "htpasswd failed: {out:?}");
            let file = dir.path().join("htpasswd");
            std::fs::write(&file, &out.stdout).unwrap();
            auth = format!(
                "auth:\n  htpasswd:\n    realm: riposte-test\n    path: {}\n",
                file.display()
            );
        }
        if let Some(t) = &options.token {
            auth = format!(
                "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    \
                 rootcertbundle: {}\n",
                t.realm,
                t.service,
                t.issuer,
                t.root_certs.display()
            );
        }
        let tls = match &options.tls {
            Some((cert, key)) => format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            ),
            None => String::new(),
        };
        let storage = options
            .storage
            .clone()
            .unwrap_or_else(|| dir.path().join("data"));
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    \
                 rootdirectory: {}\n  delete:\n    enabled: {}\n  maintenance:\n    \
                 uploadpurging:\n      enabled: false\nhttp:\n  addr: 127.0.0.1:{port}\n{tls}{auth}",
                storage.display(),
                !options.deletes_disabled
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new(docker_registry_bin())
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start docker-registry: {e}; run `bash scripts/setup`")
            });
        // The TLS certificate is for 127.0.0.1; docker trusts plain `localhost` registries.
        let (scheme, host) = match options.tls {
            Some(_) => ("https", "127.0.0.1"),
            None => ("http", "localhost"),
        };
        let mut server = RegistryServer {
            child,
            url: format!("{scheme}://{host}:{port}"),
            host: format!("{host}:{port}"),
            storage,
            port,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(25));
        }
        if TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
            let log = server.log();
            let _ = server.child.kill();
            panic!("docker-registry did not listen on {port}: {log}");
        }
        server
    }

    /// The registry's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Pushes an image as `localhost:PORT/REPOSITORY:TAG` with the docker client and returns
    /// `(reference, digest)`, the digest as `docker push` printed it. The image is the local
    /// test image committed with `labels` (so each push is an image of its own, with labels to
    /// read back); its local tag is removed with `scene`.
    pub fn push(
        &self,
        scene: &mut Scene,
        repository: &str,
        tag: &str,
        labels: &[(&str, &str)],
    ) -> (String, String) {
        let reference = format!("{}/{repository}:{tag}", self.host);
        scene.track_image_repo(&format!("{}/", self.host));
        let source = scene.name(&format!("src-{}-{tag}", repository.replace('/', "-")));
        docker_ok(&["create", "--name", &source, TEST_IMAGE]);
        let mut commit = vec!["commit".to_owned()];
        for (k, v) in labels {
            commit.push("--change".to_owned());
            commit.push(format!("LABEL {k}={v}"));
        }
        commit.push(source.clone());
        commit.push(reference.clone());
        let argv: Vec<&str> = commit.iter().map(String::as_str).collect();
        let committed = docker(&argv);
        docker_ok(&["rm", "--force", &source]);
        assert!(
            committed.status.success(),
            "`docker commit` failed: {}",
            String::from_utf8_lossy(&committed.stderr)
        );
        let out = docker_ok(&["push", &reference]);
        let digest = out
            .split_whitespace()
            .skip_while(|w| *w != "digest:")
            .nth(1)
            .unwrap_or_else(|| panic!("`docker push {reference}` printed no digest: {out}"))
            .to_owned();
        (reference, digest)
    }
}

impl Drop for RegistryServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
