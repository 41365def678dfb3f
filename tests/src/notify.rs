//! Real notification servers for the end-to-end tests of the `alertmanager` and `email`
//! connectors, each on free loopback ports, in its own temporary directory, killed when dropped.
//!
//! - [`Alertmanager`]: Debian's `prometheus-alertmanager` with a null receiver, optionally behind
//!   basic auth, and a reader of its alert list.
//! - [`SmtpServer`]: `tests/smtp_server.py` (aiosmtpd) requiring STARTTLS and AUTH, writing
//!   each message it receives to a directory, with a self-signed certificate made by openssl.
//!
//! A missing program fails the test with what to install (`bash scripts/setup`); it never skips.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{free_port, repo_root, write};

/// The Alertmanager program: `RIPOSTE_ALERTMANAGER`, else Debian's `prometheus-alertmanager`,
/// else `alertmanager`, on PATH.
pub fn alertmanager_bin() -> PathBuf {
    if let Ok(p) = std::env::var("RIPOSTE_ALERTMANAGER") {
        return PathBuf::from(p);
    }
    let path = std::env::var("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .collect();
    for name in ["prometheus-alertmanager", "alertmanager"] {
        if let Some(p) = dirs.iter().map(|d| d.join(name)).find(|p| p.is_file()) {
            return p;
        }
    }
    panic!(
        "Alertmanager is not installed: run `bash scripts/setup` (it installs Debian's \
         prometheus-alertmanager), or set RIPOSTE_ALERTMANAGER"
    );
}

/// An Alertmanager for one test.
pub struct Alertmanager {
    child: Child,
    /// Its URL, `http://127.0.0.1:PORT`.
    pub url: String,
    auth: Option<(String, String)>,
    http: reqwest::Client,
    dir: tempfile::TempDir,
}

impl Alertmanager {
    /// Starts one without authentication and waits until it is ready.
    pub async fn start() -> Alertmanager {
        Alertmanager::start_with(None).await
    }

    /// Starts one that requires basic auth: `user`, whose password is `password` and
    /// `bcrypt_hash` its bcrypt hash (Alertmanager's web config holds hashes only).
    pub async fn start_with_basic_auth(
        user: &str,
        password: &str,
        bcrypt_hash: &str,
    ) -> Alertmanager {
        Alertmanager::start_with(Some((user, password, bcrypt_hash))).await
    }

    async fn start_with(auth: Option<(&str, &str, &str)>) -> Alertmanager {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("alertmanager.yml");
        // Every alert goes to a receiver that sends nothing, grouped at once.
        write(
            &config,
            "route:\n  receiver: 'null'\n  group_by: ['alertname']\n  group_wait: 1s\n  \
             group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: 'null'\n",
        );
        let port = free_port();
        let mut cmd = Command::new(alertmanager_bin());
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .arg("--log.level=warn");
        if let Some((user, _, hash)) = auth {
            let web = dir.path().join("web.yml");
            write(&web, &format!("basic_auth_users:\n  {user}: '{hash}'\n"));
            cmd.arg(format!("--web.config.file={}", web.display()));
        }
        let log = std::fs::File::create(dir.path().join("alertmanager.log")).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {}: {e}; run `bash scripts/setup`",
                    alertmanager_bin().display()
                )
            });
        let am = Alertmanager {
            child,
            url: format!("http://127.0.0.1:{port}"),
            auth: auth.map(|(u, p, _)| (u.to_owned(), p.to_owned())),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap(),
            dir,
        };
        am.wait_ready(Duration::from_secs(30)).await;
        am
    }

    async fn wait_ready(&self, within: Duration) {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(r) = self.get("/-/ready").send().await {
                if r.status().is_success() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "Alertmanager did not become ready; its log:\n{}",
            self.log()
        );
    }

    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        let req = self.http.get(format!("{}{path}", self.url));
        match &self.auth {
            Some((u, p)) => req.basic_auth(u, Some(p)),
            None => req,
        }
    }

    /// `GET /api/v2/alerts?QUERY`: the alerts it holds and has not resolved.
    pub async fn alerts(&self, query: &str) -> Vec<Value> {
        let r = self
            .get(&format!("/api/v2/alerts?{query}"))
            .send()
            .await
            .unwrap();
        assert!(
            r.status().is_success(),
            "GET /api/v2/alerts: {}",
            r.status()
        );
        r.json().await.unwrap()
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("alertmanager.log")).unwrap_or_default()
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Makes a self-signed certificate for 127.0.0.1 in `dir`; returns (cert.pem, key.pem).
pub fn self_signed_certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let cert = dir.join("smtp-cert.pem");
    let key = dir.join("smtp-key.pem");
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=127.0.0.1"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .args(["-addext", "extendedKeyUsage=serverAuth"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap_or_else(|e| panic!("cannot run openssl: {e}; run `bash scripts/setup`"));
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

/// The aiosmtpd test server (`tests/smtp_server.py`).
pub struct SmtpServer {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// The certificate it presents (self-signed: the client's `ca_file`).
    pub cert: PathBuf,
    out: PathBuf,
    dir: tempfile::TempDir,
}

impl SmtpServer {
    /// Starts a server requiring STARTTLS and AUTH as `user` with `password`, and waits until it
    /// listens.
    pub fn start(user: &str, password: &str) -> SmtpServer {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed_certificate(dir.path());
        let out = dir.path().join("received");
        std::fs::create_dir_all(&out).unwrap();
        let password_file = dir.path().join("server-password");
        write(&password_file, password);
        let port = free_port();
        let log = dir.path().join("smtp.log");
        let mut child = Command::new("python3")
            .arg(repo_root().join("tests/smtp_server.py"))
            .args(["--port", &port.to_string(), "--user", user])
            .arg("--cert")
            .arg(&cert)
            .arg("--key")
            .arg(&key)
            .arg("--password-file")
            .arg(&password_file)
            .arg("--out")
            .arg(&out)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.path().join("smtp.err")).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start python3: {e}; run `bash scripts/setup`"));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if std::fs::read_to_string(&log).is_ok_and(|t| t.contains("ready")) {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                let err = std::fs::read_to_string(dir.path().join("smtp.err")).unwrap_or_default();
                panic!(
                    "the test SMTP server exited ({status}); if aiosmtpd is missing, run \
                     `bash scripts/setup`:\n{err}"
                );
            }
            assert!(
                Instant::now() < deadline,
                "the test SMTP server did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        SmtpServer {
            child,
            port,
            cert,
            out,
            dir,
        }
    }

    /// The messages received so far, oldest first, as the server parsed them (`N.json`).
    pub fn received(&self) -> Vec<Value> {
        let mut n = 1;
        let mut all = Vec::new();
        while let Ok(text) = std::fs::read_to_string(self.out.join(format!("{n}.json"))) {
            all.push(serde_json::from_str(&text).unwrap());
            n += 1;
        }
        all
    }

    /// What the server printed on stderr.
    pub fn errors(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("smtp.err")).unwrap_or_default()
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
