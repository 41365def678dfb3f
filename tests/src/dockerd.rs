//! A second Docker daemon for one test, for what must not touch the shared one on
//! /var/run/docker.sock (an authorization plugin refuses requests daemon-wide).
//!
//! [`Dockerd::prepare`] picks its paths, [`Dockerd::start`] runs Debian's dockerd with its own data
//! root, exec root, pid file and socket in a temporary directory, a bridge of its own and no
//! iptables rules, the `vfs` storage driver (nothing to mount), and optionally an authorization
//! plugin found through a spec file `/etc/docker/plugins/<name>.spec`. Dropping it stops the
//! daemon, removes the spec file and its directories. [`Dockerd::import_busybox`] loads an image
//! made from Debian's static busybox, as `scripts/setup` does for the shared daemon; nothing is
//! pulled.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Where dockerd looks for plugin spec files.
pub const PLUGIN_SPEC_DIR: &str = "/etc/docker/plugins";

/// A dockerd of one test's own.
pub struct Dockerd {
    child: Option<Child>,
    /// `unix://<dir>/docker.sock`, for `docker -H`.
    pub host: String,
    /// Its log.
    pub log: PathBuf,
    spec: Option<PathBuf>,
    bridge: Option<String>,
    dir: Option<tempfile::TempDir>,
}

/// Makes a bridge interface for one daemon: `--bridge=none` would not do, since dockerd then
/// deletes the host's `docker0`, which the shared daemon's containers need.
fn make_bridge() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let tag = (std::process::id() % 200) * 50 + n % 50;
    let name = format!("rdk{tag}");
    let ip = |args: &[&str]| {
        let out = Command::new("ip")
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run `ip`: {e}; install iproute2"));
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let _ = Command::new("ip").args(["link", "del", &name]).output();
    ip(&["link", "add", "name", &name, "type", "bridge"]);
    let addr = format!("10.{}.{}.1/24", 200 + tag / 250, tag % 250);
    ip(&["addr", "add", &addr, "dev", &name]);
    ip(&["link", "set", &name, "up"]);
    name
}

impl Dockerd {
    /// Picks the daemon's directory and socket (`host`) without starting it, so what must
    /// know the socket (a plugin that asks the daemon about images) can start first.
    pub fn prepare() -> Dockerd {
        // Short paths: a Unix socket's path must stay under 108 bytes.
        let dir = tempfile::Builder::new()
            .prefix("rdk")
            .tempdir_in("/tmp")
            .unwrap();
        Dockerd {
            child: None,
            host: format!("unix://{}", dir.path().join("docker.sock").display()),
            log: dir.path().join("dockerd.log"),
            spec: None,
            bridge: None,
            dir: Some(dir),
        }
    }

    /// Starts dockerd and waits until it answers; with `plugin` = (name, socket), it is started
    /// with `--authorization-plugin=name`, found at `socket` through a spec file.
    pub fn start(&mut self, plugin: Option<(&str, &Path)>) {
        let dockerd = ["/usr/sbin/dockerd", "/usr/bin/dockerd"]
            .into_iter()
            .find(|p| Path::new(p).is_file())
            .unwrap_or_else(|| {
                panic!("dockerd is not installed: run `bash scripts/setup` (it installs docker.io)")
            });
        let dir = self.dir.as_ref().unwrap().path().to_owned();
        let d = dir.as_path();
        let bridge = make_bridge();
        let mut cmd = Command::new(dockerd);
        cmd.arg("--host")
            .arg(&self.host)
            .arg("--data-root")
            .arg(d.join("root"))
            .arg("--exec-root")
            .arg(d.join("exec"))
            .arg("--pidfile")
            .arg(d.join("dockerd.pid"))
            .args([
                &format!("--bridge={bridge}"),
                "--iptables=false",
                "--ip-masq=false",
                "--storage-driver=vfs",
                "--log-level=info",
            ]);
        self.bridge = Some(bridge);
        if let Some((name, socket)) = plugin {
            std::fs::create_dir_all(PLUGIN_SPEC_DIR).unwrap();
            let path = Path::new(PLUGIN_SPEC_DIR).join(format!("{name}.spec"));
            std::fs::write(&path, format!("unix://{}\n", socket.display())).unwrap_or_else(|e| {
                panic!(
                    "cannot write {}: {e} (the tests run as root)",
                    path.display()
                )
            });
            self.spec = Some(path);
            cmd.arg(format!("--authorization-plugin={name}"));
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&self.log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start dockerd: {e}"));
        self.child = Some(child);
        let daemon = self;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if daemon.docker(&["version"]).status.success() {
                return;
            }
            if let Some(c) = daemon.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    panic!(
                        "the test's dockerd exited ({status}); its log:\n{}",
                        daemon.log_text()
                    );
                }
            }
            assert!(
                Instant::now() < deadline,
                "the test's dockerd did not answer within 60 s; its log:\n{}",
                daemon.log_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `docker -H <this daemon> ARGS`.
    pub fn docker(&self, args: &[&str]) -> Output {
        Command::new("docker")
            .arg("-H")
            .arg(&self.host)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run `docker`: {e}; run `bash scripts/setup`"))
    }

    /// Imports an image made of Debian's static busybox as `reference`; returns its id.
    pub fn import_busybox(&self, reference: &str) -> String {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("bin")).unwrap();
        std::fs::create_dir_all(r.join("etc")).unwrap();
        std::fs::copy("/bin/busybox", r.join("bin/busybox")).unwrap_or_else(|e| {
            panic!("/bin/busybox: {e}; run `bash scripts/setup` (it installs busybox-static)")
        });
        for applet in ["sh", "sleep", "echo"] {
            std::os::unix::fs::symlink("busybox", r.join("bin").join(applet)).unwrap();
        }
        std::fs::write(r.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "tar --numeric-owner --owner=0 --group=0 -C '{}' -c . | docker -H '{}' import -c 'CMD [\"/bin/sleep\",\"3600\"]' - '{reference}'",
                r.display(),
                self.host
            ))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "importing {reference}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// The daemon's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if let Some(c) = self.child.take() {
            crate::terminate(c, Duration::from_secs(20));
        }
        if let Some(spec) = self.spec.take() {
            let _ = std::fs::remove_file(spec);
        }
        if let Some(bridge) = self.bridge.take() {
            let _ = Command::new("ip").args(["link", "del", &bridge]).output();
        }
        if let Some(dir) = self.dir.take() {
            // dockerd bind-mounts its data root onto itself; a daemon that failed to start
            // may leave that mount behind.
            let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
            for point in mounts.lines().filter_map(|l| l.split(' ').nth(1)) {
                if Path::new(point).starts_with(dir.path()) {
                    let _ = Command::new("umount").arg("-l").arg(point).status();
                }
            }
            let _ = std::fs::remove_dir_all(dir.path());
        }
    }
}
