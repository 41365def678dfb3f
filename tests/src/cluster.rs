//! A three-node nats-server cluster with JetStream on loopback, for the crash tests.
//!
//! Each node has its own store directory, client, route and monitoring ports, kept across restarts,
//! so a node that is stopped and started again rejoins with its data. [`NatsCluster::url`] lists
//! every node, so clients (the engine, the CLI) fail over to the others.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, http_get, nats_server_bin, wait_port};

/// One node of the cluster.
struct Node {
    name: String,
    port: u16,
    cluster_port: u16,
    http_port: u16,
    store: PathBuf,
    child: Option<Child>,
}

/// A three-node cluster, every node killed and its directory removed when dropped.
pub struct NatsCluster {
    nodes: Vec<Node>,
    dir: tempfile::TempDir,
    /// Every node's URL, comma-separated.
    pub url: String,
}

impl NatsCluster {
    /// Starts three nodes and waits until JetStream has a meta leader. Ports are picked free
    /// but may be taken by another test before a node binds them: then the cluster is started
    /// again on other ports (three tries).
    pub fn start() -> NatsCluster {
        let mut failures = Vec::new();
        for _ in 0..3 {
            match NatsCluster::try_start() {
                Ok(cluster) => {
                    cluster.wait_leader(Duration::from_secs(30));
                    return cluster;
                }
                Err(why) => failures.push(why),
            }
        }
        panic!(
            "the nats-server cluster did not start (is nats-server installed? `bash scripts/setup`):\n{}",
            failures.join("\n---\n")
        );
    }

    fn try_start() -> Result<NatsCluster, String> {
        let dir = tempfile::tempdir().unwrap();
        let nodes: Vec<Node> = (1..=3)
            .map(|i| Node {
                name: format!("n{i}"),
                port: free_port(),
                cluster_port: free_port(),
                http_port: free_port(),
                store: dir.path().join(format!("n{i}")),
                child: None,
            })
            .collect();
        let url = nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = NatsCluster { nodes, dir, url };
        for i in 0..3 {
            cluster.spawn(i);
        }
        for i in 0..3 {
            let port = cluster.nodes[i].port;
            let listening = wait_port(port, Duration::from_secs(30));
            let exited = cluster.nodes[i]
                .child
                .as_mut()
                .is_none_or(|c| !matches!(c.try_wait(), Ok(None)));
            if !listening || exited {
                // Dropping the cluster stops the nodes that did start.
                return Err(format!(
                    "nats-server node {} did not listen on {port}; its log:\n{}",
                    i + 1,
                    cluster.log(i)
                ));
            }
        }
        Ok(cluster)
    }

    fn spawn(&mut self, i: usize) {
        let routes: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, n)| format!("nats://127.0.0.1:{}", n.cluster_port))
            .collect();
        let log = self.dir.path().join(format!("n{}.log", i + 1));
        let n = &mut self.nodes[i];
        let child = Command::new(nats_server_bin())
            .args(["--jetstream", "--addr", "127.0.0.1"])
            .args(["--port", &n.port.to_string()])
            .args(["--http_port", &n.http_port.to_string()])
            .args(["--server_name", &n.name])
            .args(["--cluster_name", "riposte-test"])
            .args(["--cluster", &format!("nats://127.0.0.1:{}", n.cluster_port)])
            .args(["--routes", &routes.join(",")])
            .arg("--store_dir")
            .arg(&n.store)
            .arg("--log")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start nats-server: {e}; run `bash scripts/setup`"));
        n.child = Some(child);
    }

    /// A client that moves to another node when its own stops.
    pub async fn client(&self) -> async_nats::Client {
        let servers: Vec<async_nats::ServerAddr> = (0..self.nodes.len())
            .map(|i| self.node_url(i).parse().unwrap())
            .collect();
        async_nats::ConnectOptions::new()
            .max_reconnects(None)
            .connect(servers.as_slice())
            .await
            .unwrap()
    }

    /// Node `i`'s log (0-based).
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("n{}.log", i + 1))).unwrap_or_default()
    }

    /// Node `i`'s client URL.
    pub fn node_url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].port)
    }

    /// Stops node `i` with SIGTERM (a clean shutdown, its data kept) and waits for it to exit.
    pub fn stop(&mut self, i: usize) {
        if let Some(c) = self.nodes[i].child.take() {
            crate::terminate(c, Duration::from_secs(20));
        }
    }

    /// Starts node `i` again, with its data, and waits until it listens.
    pub fn restart(&mut self, i: usize) {
        assert!(self.nodes[i].child.is_none(), "node {} is running", i + 1);
        self.spawn(i);
        assert!(
            wait_port(self.nodes[i].port, Duration::from_secs(10)),
            "nats-server node {} did not listen again; its log:\n{}",
            i + 1,
            self.log(i)
        );
    }

    /// Stops every node.
    pub fn stop_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.stop(i);
        }
    }

    /// Starts every stopped node.
    pub fn restart_all(&mut self) {
        for i in 0..self.nodes.len() {
            if self.nodes[i].child.is_none() {
                self.spawn(i);
            }
        }
        for i in 0..self.nodes.len() {
            assert!(wait_port(self.nodes[i].port, Duration::from_secs(10)));
        }
    }

    /// Waits until JetStream has a meta leader seen by every running node; returns how long
    /// that took.
    pub fn wait_leader(&self, within: Duration) -> Duration {
        let started = Instant::now();
        let deadline = started + within;
        loop {
            let leaders: Vec<Option<String>> = self
                .nodes
                .iter()
                .filter(|n| n.child.is_some())
                .map(|n| {
                    let (code, body) = http_get(&format!("127.0.0.1:{}", n.http_port), "/jsz")?;
                    if code != 200 {
                        return None;
                    }
                    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
                    v["meta_cluster"]["leader"]
                        .as_str()
                        .filter(|l| !l.is_empty())
                        .map(str::to_owned)
                })
                .collect();
            if !leaders.is_empty()
                && leaders.iter().all(Option::is_some)
                && leaders.windows(2).all(|w| w[0] == w[1])
            {
                return started.elapsed();
            }
            assert!(
                Instant::now() < deadline,
                "JetStream has no meta leader after {within:?}; node logs:\n{}",
                (0..self.nodes.len())
                    .map(|i| self.log(i))
                    .collect::<Vec<_>>()
                    .join("\n----\n")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}
