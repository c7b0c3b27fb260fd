//! Real `fleetmq serve` processes on loopback ports, each with its own data directory,
//! started as the README's "Start a three-node cluster on one machine" does.
//!
//! A [`Cluster`] kills its processes (SIGKILL) when dropped and removes its
//! directories unless asked to keep them.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use fleetmq_rpc::peer::peer_service_client::PeerServiceClient;
use fleetmq_rpc::peer::{ClusterStatusReply, Empty};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

use crate::sysinfo::note;

/// How long every node may take to answer `/readyz` with 200.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the nodes may take to agree on a leader once ready.
const LEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts at starting a cluster when another program took one of its ports.
const START_ATTEMPTS: usize = 3;

/// The addresses of one node.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct NodeAddrs {
    pub id: u64,
    pub mqtt: SocketAddr,
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
}

/// One `fleetmq serve` process.
pub struct Node {
    pub addrs: NodeAddrs,
    child: Option<Child>,
    pub log_path: PathBuf,
}

impl Node {
    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn has_exited(&mut self) -> Option<String> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            _ => None,
        }
    }

    /// SIGKILL and reap; returns the instant just before the signal was sent.
    pub fn kill9(&mut self) -> Instant {
        let at = Instant::now();
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        at
    }

    /// The last `lines` lines of the node's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = read_lossy(&self.log_path);
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Nodes of one cluster (one node is a cluster of one).
pub struct Cluster {
    pub nodes: Vec<Node>,
    root: Option<tempfile::TempDir>,
    pub root_path: PathBuf,
}

impl Cluster {
    /// Starts `n` nodes (ids 1..=n) with fresh data directories under `work_dir`,
    /// waits until every node answers `/readyz` with 200 and all agree on a leader.
    /// `config`: a TOML configuration every node reads (its addresses, id and data
    /// directory still come from flags).
    pub async fn start(
        bin: &Path,
        n: u64,
        work_dir: &Path,
        keep: bool,
        config: Option<&str>,
    ) -> anyhow::Result<Cluster> {
        let mut last_err = None;
        for attempt in 1..=START_ATTEMPTS {
            let mut cluster = Cluster::spawn(bin, n, work_dir, keep, config)?;
            match cluster.wait_ready().await {
                Ok(()) => return Ok(cluster),
                Err(e) => {
                    let clash = cluster
                        .nodes
                        .iter()
                        .any(|node| node.log_tail(40).contains("in use"));
                    let logs = cluster.log_tails(40);
                    if clash && attempt < START_ATTEMPTS {
                        note("a port was taken by another program; starting again on other ports");
                        last_err = Some(e);
                        continue;
                    }
                    return Err(e.context(format!("the nodes' logs:\n{logs}")));
                }
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow!("the cluster did not start")))
    }

    fn spawn(
        bin: &Path,
        n: u64,
        work_dir: &Path,
        keep: bool,
        config: Option<&str>,
    ) -> anyhow::Result<Cluster> {
        std::fs::create_dir_all(work_dir)
            .with_context(|| format!("create {}", work_dir.display()))?;
        let root = tempfile::Builder::new()
            .prefix("fleetmq-bench-")
            .tempdir_in(work_dir)
            .with_context(|| format!("create a directory in {}", work_dir.display()))?;
        let root_path = root.path().to_path_buf();
        let addrs: Vec<NodeAddrs> = (1..=n)
            .map(|id| -> anyhow::Result<NodeAddrs> {
                Ok(NodeAddrs {
                    id,
                    mqtt: free_addr()?,
                    grpc: free_addr()?,
                    admin: free_addr()?,
                })
            })
            .collect::<anyhow::Result<_>>()?;
        let peers = addrs
            .iter()
            .map(|a| format!("{}={}", a.id, a.grpc))
            .collect::<Vec<_>>()
            .join(",");
        let root = if keep {
            // Detach: the directory outlives the run.
            let kept = root.keep();
            note(&format!(
                "keeping the nodes' directories in {}",
                kept.display()
            ));
            None
        } else {
            Some(root)
        };
        let mut cluster = Cluster {
            nodes: Vec::new(),
            root,
            root_path: root_path.clone(),
        };
        for a in addrs {
            let dir = root_path.join(format!("node-{}", a.id));
            let data_dir = dir.join("data");
            std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
            let log_path = dir.join("fleetmq.log");
            let log = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .with_context(|| format!("open {}", log_path.display()))?;
            let log_err = log.try_clone()?;
            let mut cmd = Command::new(bin);
            cmd.arg("serve")
                .arg("--node-id")
                .arg(a.id.to_string())
                .arg("--data-dir")
                .arg(&data_dir)
                .arg("--mqtt-listen")
                .arg(a.mqtt.to_string())
                .arg("--grpc-listen")
                .arg(a.grpc.to_string())
                .arg("--admin-listen")
                .arg(a.admin.to_string());
            if n > 1 {
                cmd.arg("--peers").arg(&peers);
            }
            if let Some(config) = config {
                let path = dir.join("fleetmq.toml");
                std::fs::write(&path, config)
                    .with_context(|| format!("write {}", path.display()))?;
                cmd.arg("--config").arg(path);
            }
            // FLEETMQ_* variables override flags: the caller's environment must not
            // move a node to other ports, directories or storage.
            for (key, _) in std::env::vars_os() {
                if key.to_str().is_some_and(|k| k.starts_with("FLEETMQ_")) {
                    cmd.env_remove(key);
                }
            }
            cmd.env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log_err);
            let child = cmd
                .spawn()
                .with_context(|| format!("start {}", bin.display()))?;
            cluster.nodes.push(Node {
                addrs: a,
                child: Some(child),
                log_path,
            });
        }
        Ok(cluster)
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut ready = vec![false; self.nodes.len()];
        while !ready.iter().all(|r| *r) {
            for (i, node) in self.nodes.iter_mut().enumerate() {
                if let Some(status) = node.has_exited() {
                    bail!("node {} exited with {status} while starting", node.addrs.id);
                }
                if !ready[i] {
                    ready[i] = matches!(http_get(node.addrs.admin, "/readyz").await, Ok((200, _)));
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "not every node answered /readyz with 200 within {READY_TIMEOUT:?}: {ready:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.wait_leader().await.map(|_| ())
    }

    /// Waits until every running node names the same leader; returns its id.
    pub async fn wait_leader(&self) -> anyhow::Result<u64> {
        let deadline = Instant::now() + LEADER_TIMEOUT;
        let clients: Vec<_> = self
            .nodes
            .iter()
            .filter(|n| n.pid().is_some())
            .map(|n| status_client(n.addrs.grpc))
            .collect::<anyhow::Result<_>>()?;
        loop {
            let mut leaders = Vec::new();
            for c in &clients {
                leaders.push(cluster_status(c).await.ok().and_then(|s| s.leader_id));
            }
            if let Some(Some(first)) = leaders.first() {
                if leaders.iter().all(|l| *l == Some(*first)) {
                    return Ok(*first);
                }
            }
            if Instant::now() > deadline {
                bail!("the nodes did not agree on a leader within {LEADER_TIMEOUT:?}: {leaders:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn node(&self, id: u64) -> anyhow::Result<&Node> {
        self.nodes
            .iter()
            .find(|n| n.addrs.id == id)
            .ok_or_else(|| anyhow!("no node {id}"))
    }

    pub fn node_mut(&mut self, id: u64) -> anyhow::Result<&mut Node> {
        self.nodes
            .iter_mut()
            .find(|n| n.addrs.id == id)
            .ok_or_else(|| anyhow!("no node {id}"))
    }

    /// Ids of the nodes whose process stopped without being killed by the bench.
    pub fn exited(&mut self) -> Vec<(u64, String)> {
        self.nodes
            .iter_mut()
            .filter_map(|n| n.has_exited().map(|s| (n.addrs.id, s)))
            .collect()
    }

    /// The CPU ticks of every running node, by id.
    pub fn cpu_ticks(&self) -> BTreeMap<u64, u64> {
        self.nodes
            .iter()
            .filter_map(|n| Some((n.addrs.id, crate::sysinfo::cpu_ticks(n.pid()?)?)))
            .collect()
    }

    pub fn log_tails(&self, lines: usize) -> String {
        self.nodes
            .iter()
            .map(|n| {
                format!(
                    "---- node {} ({}) ----\n{}",
                    n.addrs.id,
                    n.log_path.display(),
                    n.log_tail(lines)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Panics in every node's log, and warnings and errors once it was serving: while a
    /// cluster forms, a node that starts first logs its peers as unreachable (openraft
    /// logs that as an error), which is not what a benchmark measures.
    pub fn log_issues(&self) -> Vec<LogIssues> {
        self.nodes
            .iter()
            .map(|n| LogIssues::scan(n.addrs.id, &read_lossy(&n.log_path)))
            .collect()
    }

    /// Counters of every running node's `/metrics` that tell of trouble or volume.
    pub async fn metrics(&self) -> Vec<NodeMetrics> {
        let mut out = Vec::new();
        for n in self.nodes.iter().filter(|n| n.pid().is_some()) {
            out.push(NodeMetrics::fetch(n.addrs.id, n.addrs.admin).await);
        }
        out
    }

    /// Every running node's view of the Raft group (or why it did not answer).
    pub async fn raft_states(&self) -> Vec<RaftState> {
        let mut out = Vec::new();
        for n in self.nodes.iter().filter(|n| n.pid().is_some()) {
            let state = match status_client(n.addrs.grpc) {
                Ok(c) => cluster_status(&c).await,
                Err(e) => Err(e),
            };
            out.push(match state {
                Ok(s) => RaftState {
                    node: n.addrs.id,
                    state: format!("{:?}", s.state()),
                    term: Some(s.term),
                    leader: s.leader_id,
                    last_log_index: s.last_log_index,
                    last_applied: s.last_applied,
                    error: None,
                },
                Err(e) => RaftState {
                    node: n.addrs.id,
                    state: "unknown".into(),
                    term: None,
                    leader: None,
                    last_log_index: None,
                    last_applied: None,
                    error: Some(format!("{e:#}")),
                },
            });
        }
        out
    }

    /// Where the nodes' directories are (kept only with `--keep-dirs`).
    pub fn kept_dir(&self) -> Option<&Path> {
        self.root.is_none().then_some(self.root_path.as_path())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Kill before the directories are removed.
        for n in &mut self.nodes {
            n.kill9();
        }
    }
}

/// One node's view of the Raft group (`ClusterStatus`).
#[derive(Debug, Clone, Serialize)]
pub struct RaftState {
    pub node: u64,
    pub state: String,
    pub term: Option<u64>,
    pub leader: Option<u64>,
    pub last_log_index: Option<u64>,
    pub last_applied: Option<u64>,
    pub error: Option<String>,
}

/// What a node logs once it has joined its cluster and its MQTT listener is up.
const SERVING_LINE: &str = "fleetmq listening";

/// What one node's log says that a benchmark should report.
#[derive(Debug, Clone, Serialize)]
pub struct LogIssues {
    pub node: u64,
    pub warn: usize,
    pub error: usize,
    pub panic: usize,
    /// The first lines of each kind (at most 20 in all).
    pub samples: Vec<String>,
}

impl LogIssues {
    fn scan(node: u64, text: &str) -> LogIssues {
        let mut issues = LogIssues {
            node,
            warn: 0,
            error: 0,
            panic: 0,
            samples: Vec::new(),
        };
        // Panics count wherever they are; warnings and errors once the node serves.
        let mut serving = false;
        for line in text.lines() {
            serving |= line.contains(SERVING_LINE);
            let kind = if line.contains("panicked") {
                &mut issues.panic
            } else if !serving {
                continue;
            } else if line.contains(" ERROR ") {
                &mut issues.error
            } else if line.contains(" WARN ") {
                &mut issues.warn
            } else {
                continue;
            };
            *kind += 1;
            if issues.samples.len() < 20 {
                issues.samples.push(line.chars().take(400).collect());
            }
        }
        issues
    }
}

/// Selected counters of one node's `/metrics`.
#[derive(Debug, Clone, Serialize)]
pub struct NodeMetrics {
    pub node: u64,
    /// Sum of `fleetmq_messages_dropped_total` over its labels.
    pub dropped: f64,
    /// Sum of `fleetmq_slow_consumer_disconnects_total`.
    pub slow_consumer_disconnects: f64,
    /// The lines of the counters above and of message, commit and close counters.
    pub lines: Vec<String>,
    /// Set when `/metrics` did not answer.
    pub error: Option<String>,
}

impl NodeMetrics {
    async fn fetch(node: u64, admin: SocketAddr) -> NodeMetrics {
        const KEEP: [&str; 8] = [
            "fleetmq_messages_dropped_total",
            "fleetmq_slow_consumer_disconnects_total",
            "fleetmq_connections_closed_total",
            "fleetmq_messages_received_total",
            "fleetmq_messages_sent_total",
            "fleetmq_storage_commits_total",
            "fleetmq_storage_committed_batches_total",
            "fleetmq_sessions_taken_over_total",
        ];
        let mut m = NodeMetrics {
            node,
            dropped: 0.0,
            slow_consumer_disconnects: 0.0,
            lines: Vec::new(),
            error: None,
        };
        let body = match http_get(admin, "/metrics").await {
            Ok((200, body)) => body,
            Ok((status, _)) => {
                m.error = Some(format!("GET /metrics answered {status}"));
                return m;
            }
            Err(e) => {
                m.error = Some(format!("GET /metrics: {e:#}"));
                return m;
            }
        };
        for line in body.lines().filter(|l| !l.starts_with('#')) {
            let Some(name) = KEEP.iter().find(|k| line.starts_with(*k)) else {
                continue;
            };
            let value: f64 = line
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0);
            match *name {
                "fleetmq_messages_dropped_total" => m.dropped += value,
                "fleetmq_slow_consumer_disconnects_total" => m.slow_consumer_disconnects += value,
                _ => {}
            }
            m.lines.push(line.to_string());
        }
        m
    }
}

/// A `PeerService` client that (re)connects when called; every call times out after
/// 500 ms.
pub fn status_client(grpc: SocketAddr) -> anyhow::Result<PeerServiceClient<Channel>> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
        .context("gRPC address")?
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_millis(500))
        .connect_lazy();
    Ok(PeerServiceClient::new(channel))
}

/// One node's view of the Raft group.
pub async fn cluster_status(
    client: &PeerServiceClient<Channel>,
) -> anyhow::Result<ClusterStatusReply> {
    let mut client = client.clone();
    Ok(client.cluster_status(Empty {}).await?.into_inner())
}

/// `GET path` over HTTP/1.1 with `Connection: close`: (status, body). Times out
/// after 5 s.
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        anyhow::Ok(raw)
    };
    let raw = tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .map_err(|_| anyhow!("GET {path} on {addr} timed out"))??;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("no end of headers from {addr}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad status line from {addr}: {head:?}"))?;
    Ok((status, body.to_string()))
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

fn read_lossy(path: &Path) -> String {
    let mut raw = Vec::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_end(&mut raw);
    }
    String::from_utf8_lossy(&raw).into_owned()
}

/// The `fleetmq` binary: `explicit` (the flag or `$FLEETMQ_BIN`), else the one built
/// next to this executable (same target directory and profile), else
/// `target/release/fleetmq` in the workspace.
pub fn find_binary(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        if !p.is_file() {
            bail!("the fleetmq binary {} does not exist", p.display());
        }
        return Ok(p);
    }
    let name = format!("fleetmq{}", std::env::consts::EXE_SUFFIX);
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            candidates.push(dir.join(&name));
            if dir.file_name().is_some_and(|n| n == "deps") {
                if let Some(profile_dir) = dir.parent() {
                    candidates.push(profile_dir.join(&name));
                }
            }
        }
    }
    candidates.push(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../target/release")
            .join(&name),
    );
    candidates
        .iter()
        .find(|c| c.is_file())
        .cloned()
        .ok_or_else(|| {
            anyhow!(
                "the fleetmq binary was not found (looked at {candidates:?}); build it with \
                 `cargo build --release -p fleetmq` or pass --fleetmq-bin / FLEETMQ_BIN"
            )
        })
}

#[cfg(test)]
mod log_tests {
    use super::*;

    #[test]
    fn startup_noise_is_not_an_issue_but_later_errors_and_any_panic_are() {
        let log = "t ERROR openraft: while requesting vote: unreachable\n\
                   t INFO fleetmq: fleetmq listening node_id=1\n\
                   t WARN fleetmq: slow\n\
                   t ERROR fleetmq: broken\n";
        let issues = LogIssues::scan(1, log);
        assert_eq!((issues.warn, issues.error, issues.panic), (1, 1, 0));
        let early_panic = "thread 'main' panicked at x\nt ERROR y\n";
        let issues = LogIssues::scan(1, early_panic);
        assert_eq!((issues.warn, issues.error, issues.panic), (0, 0, 1));
    }
}
