//! A three-node cluster of real `fleetmq` processes, and the traffic that tests drive
//! through it while nodes die.
//!
//! [`Cluster::start`] picks every port first, gives every node `--peers` with the
//! three gRPC addresses, spawns the three processes together (the lowest id
//! initializes the Raft group and waits for a quorum) and waits until every node's
//! `/readyz` answers 200 and the nodes agree on a leader. Nodes are named by their
//! id, 1 to 3.
//!
//! With [`ClusterOptions::proxied`], every node is reached by the others through a
//! [`Proxy`] in front of its real gRPC listener: the `--peers` of every node (the
//! same list on all three, so it does not matter whether a node dials the addresses
//! of its own list or the ones stored in the Raft membership) name the proxies. Each
//! proxied connection is attributed to the node process that opened it (Linux
//! `/proc`), so [`Cluster::isolate`] can cut one node off in both directions while
//! the two others still talk through the same proxies: existing connections are
//! dropped, new ones refused, until [`Cluster::heal`]. `fleetmq ctl` and MQTT
//! clients always use the real ports.
//!
//! The traffic helpers ([`DurableSubscriber`], [`Publisher`], [`check_delivery`])
//! speak MQTT 3.1.1 with [`RawClient`] so that they can behave exactly like a
//! compliant client that keeps its state across reconnections: a QoS 2 PUBLISH
//! resent (same packet id) before the PUBREL is acknowledged again but not delivered
//! twice, and a PUBREL for a packet id the client does not know is answered with
//! PUBCOMP. (rumqttc forgets its QoS 2 receive state with its event loop and treats
//! such a PUBREL as a protocol error, which would turn correct failovers into
//! failures.)
//!
//! Clusters are heavy (three processes, Raft, fsync): the tests of one test binary
//! start them one at a time (a process-wide slot held by each [`Cluster`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use fleetmq_codec::{Packet, ProtocolVersion, PubResponse, QoS as CQoS};
use rumqttc::QoS;
use serde_json::Value;
use tokio::task::JoinHandle;

use crate::broker::{broker_binary, BrokerOptions, BrokerProcess};
use crate::proxy::{ConnInfo, Filter, Proxy, ProxyStats};
use crate::raw::{connect_packet, publish_packet, RawClient, Recv};
use crate::{text, unique_id, v4_options, V4Client};

/// The number of nodes of a [`Cluster`].
pub const NODES: u64 = 3;
/// How long a node may take to answer `/readyz` with 200.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the nodes may take to agree on a leader (or to catch up).
pub const LEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// How to start a [`Cluster`].
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// Route every link between nodes through its own [`Proxy`] so that nodes can
    /// be cut off ([`Cluster::isolate`]).
    pub proxied: bool,
    /// TOML configuration for every node.
    pub config: Option<String>,
    /// More arguments for every node, after `serve`.
    pub extra_args: Vec<String>,
}

impl ClusterOptions {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn proxied(mut self) -> Self {
        self.proxied = true;
        self
    }

    pub fn config(mut self, toml: &str) -> Self {
        self.config = Some(toml.to_string());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.extra_args.extend(args.into_iter().map(Into::into));
        self
    }
}

/// A member of a node's Raft view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: u64,
    pub address: String,
    pub role: String,
}

/// `fleetmq ctl status --output json` of one node.
#[derive(Debug, Clone)]
pub struct NodeStatus {
    pub node_id: u64,
    /// `leader`, `follower`, `candidate`, `learner`, ...
    pub state: String,
    pub leader_id: Option<u64>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub last_applied: Option<u64>,
    pub members: Vec<Member>,
    /// The JSON as printed.
    pub raw: Value,
}

impl NodeStatus {
    pub fn parse(v: Value) -> Result<NodeStatus, String> {
        let node_id = v["node_id"]
            .as_u64()
            .ok_or_else(|| format!("no node_id in {v}"))?;
        let members = v["members"]
            .as_array()
            .map(|ms| {
                ms.iter()
                    .map(|m| Member {
                        id: m["id"].as_u64().unwrap_or(0),
                        address: m["address"].as_str().unwrap_or_default().to_string(),
                        role: m["role"].as_str().unwrap_or_default().to_string(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(NodeStatus {
            node_id,
            state: v["state"].as_str().unwrap_or_default().to_string(),
            leader_id: v["leader_id"].as_u64(),
            term: v["term"].as_u64().unwrap_or(0),
            last_log_index: v["last_log_index"].as_u64(),
            last_applied: v["last_applied"].as_u64(),
            members,
            raw: v,
        })
    }

    /// One line for failure messages.
    pub fn summary(&self) -> String {
        format!(
            "node {} {} term {} leader {:?} last_log_index {:?} last_applied {:?} members {:?}",
            self.node_id,
            self.state,
            self.term,
            self.leader_id,
            self.last_log_index,
            self.last_applied,
            self.members.iter().map(|m| m.id).collect::<Vec<_>>()
        )
    }
}

/// Runs `fleetmq ctl ARGS`, killed after `timeout`.
pub fn ctl(args: &[&str], timeout: Duration) -> Result<Output, String> {
    let mut cmd = Command::new(broker_binary());
    cmd.arg("ctl").args(args);
    for (key, _) in std::env::vars_os() {
        if let Some(k) = key.to_str() {
            if k.starts_with("FLEETMQ_") && k != "FLEETMQ_LOG" {
                cmd.env_remove(k);
            }
        }
    }
    let mut child = cmd
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("run fleetmq ctl: {e}"))?;
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "fleetmq ctl {args:?} did not finish within {timeout:?}"
                ));
            }
            Err(e) => return Err(format!("wait for fleetmq ctl: {e}")),
        }
    }
    child
        .wait_with_output()
        .map_err(|e| format!("read the output of fleetmq ctl: {e}"))
}

/// `fleetmq ctl status --admin ADDR --output json`, parsed.
pub fn status_at(admin: SocketAddr) -> Result<NodeStatus, String> {
    let addr = admin.to_string();
    let out = ctl(
        &["status", "--admin", &addr, "--output", "json"],
        Duration::from_secs(10),
    )?;
    if !out.status.success() {
        return Err(format!(
            "ctl status --admin {addr} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "ctl status --admin {addr} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })?;
    NodeStatus::parse(v)
}

/// `n` distinct loopback ports that were free a moment ago (held together while
/// chosen, so that they differ).
pub fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
        .collect();
    held.iter()
        .map(|l| l.local_addr().expect("local_addr").port())
        .collect()
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

// ---- one cluster at a time ---------------------------------------------------------

static SLOT_BUSY: Mutex<bool> = Mutex::new(false);
static SLOT_FREE: Condvar = Condvar::new();

/// Held by a running [`Cluster`]: the clusters of one test binary run one at a time.
struct ClusterSlot;

impl ClusterSlot {
    fn acquire() -> ClusterSlot {
        let mut busy = SLOT_BUSY.lock().unwrap_or_else(|e| e.into_inner());
        while *busy {
            busy = SLOT_FREE.wait(busy).unwrap_or_else(|e| e.into_inner());
        }
        *busy = true;
        ClusterSlot
    }
}

impl Drop for ClusterSlot {
    fn drop(&mut self) {
        *SLOT_BUSY.lock().unwrap_or_else(|e| e.into_inner()) = false;
        SLOT_FREE.notify_one();
    }
}

// ---- the cluster -------------------------------------------------------------------

/// Which links of a proxied cluster are cut, and which process is which node.
#[derive(Debug, Default)]
struct LinkState {
    /// The pid of each running node's process.
    pids: HashMap<u32, u64>,
    /// `(from, to)`: connections node `from` opens to node `to` are refused.
    blocked: BTreeSet<(u64, u64)>,
}

impl LinkState {
    fn node_of(&self, pid: Option<u32>) -> Option<u64> {
        pid.and_then(|p| self.pids.get(&p).copied())
    }

    fn allows(&self, from: Option<u64>, to: u64) -> bool {
        match from {
            Some(f) if f == to => true,
            Some(f) => !self.blocked.contains(&(f, to)),
            // A connection from an unknown process passes only while nothing is
            // cut from its destination.
            None => !self.blocked.iter().any(|(_, t)| *t == to),
        }
    }
}

/// The proxies of a proxied cluster: one in front of each node's gRPC listener, at
/// the address every node's `--peers` gives for that node. Each connection is
/// attributed to the node whose process opened it (`/proc`), so that cutting node
/// `n` off refuses and drops connections from `n` to the others and from the others
/// to `n`, while the others still reach each other through the same proxies.
struct Links {
    proxies: BTreeMap<u64, Proxy>,
    state: Arc<Mutex<LinkState>>,
}

impl Links {
    fn start(grpc: &BTreeMap<u64, SocketAddr>) -> Links {
        let state = Arc::new(Mutex::new(LinkState::default()));
        let mut proxies = BTreeMap::new();
        for (&to, &upstream) in grpc {
            let st = state.clone();
            let filter: Filter = Arc::new(move |info: &ConnInfo| {
                let s = lock(&st);
                s.allows(s.node_of(info.client_pid), to)
            });
            proxies.insert(
                to,
                Proxy::start_filtered(&format!("to node {to}"), upstream, filter),
            );
        }
        Links { proxies, state }
    }

    fn peers(&self) -> String {
        self.proxies
            .iter()
            .map(|(id, p)| format!("{id}={}", p.listen))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn set_pid(&self, node: u64, pid: Option<u32>) {
        let mut s = lock(&self.state);
        s.pids.retain(|_, n| *n != node);
        if let Some(pid) = pid {
            s.pids.insert(pid, node);
        }
    }

    fn set_blocked(&self, node: u64, blocked: bool) {
        {
            let mut s = lock(&self.state);
            for other in 1..=NODES {
                if other == node {
                    continue;
                }
                for pair in [(node, other), (other, node)] {
                    if blocked {
                        s.blocked.insert(pair);
                    } else {
                        s.blocked.remove(&pair);
                    }
                }
            }
        }
        if blocked {
            for (&to, p) in &self.proxies {
                p.drop_where(|info| {
                    let s = lock(&self.state);
                    !s.allows(s.node_of(info.client_pid), to)
                });
            }
        }
    }

    /// Open connections as `(from, to)`; `from` is `None` when the connecting
    /// process is not a node (or was not found).
    fn open(&self) -> Vec<(Option<u64>, u64)> {
        let s = lock(&self.state);
        self.proxies
            .iter()
            .flat_map(|(to, p)| {
                p.connections()
                    .into_iter()
                    .map(|c| (s.node_of(c.client_pid), *to))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn describe(&self) -> String {
        let blocked = lock(&self.state).blocked.clone();
        let mut out: Vec<String> = self.proxies.values().map(|p| format!("  {p:?}")).collect();
        out.push(format!("  open (from, to): {:?}", self.open()));
        out.push(format!("  blocked (from, to): {blocked:?}"));
        out.join("\n")
    }
}

/// Three `fleetmq serve` processes forming one cluster. Killed when dropped.
pub struct Cluster {
    /// `nodes[i]` is node `i + 1`. Declared first: dropped (killed, logs printed on
    /// panic) before the proxies and the slot.
    nodes: Vec<BrokerProcess>,
    /// Nodes the test killed or stopped and has not restarted.
    down: BTreeSet<u64>,
    links: Option<Links>,
    /// `None` only while starting.
    _slot: Option<ClusterSlot>,
}

impl Cluster {
    /// Three nodes linked directly, ready and agreeing on a leader.
    pub fn start() -> Cluster {
        Self::start_with(ClusterOptions::new())
    }

    /// Three nodes whose links go through proxies ([`isolate`](Self::isolate)).
    pub fn start_proxied() -> Cluster {
        Self::start_with(ClusterOptions::new().proxied())
    }

    pub fn start_with(opts: ClusterOptions) -> Cluster {
        let mut slot = Some(ClusterSlot::acquire());
        let mut last_error = String::new();
        for attempt in 0..3 {
            let ports = free_ports(3 * NODES as usize);
            let mut addrs = BTreeMap::new();
            for id in 1..=NODES {
                let i = (id - 1) as usize * 3;
                addrs.insert(
                    id,
                    (
                        loopback(ports[i]),
                        loopback(ports[i + 1]),
                        loopback(ports[i + 2]),
                    ),
                );
            }
            let grpc: BTreeMap<u64, SocketAddr> = addrs.iter().map(|(id, a)| (*id, a.2)).collect();
            let links = opts.proxied.then(|| Links::start(&grpc));
            let direct_peers = grpc
                .iter()
                .map(|(id, a)| format!("{id}={a}"))
                .collect::<Vec<_>>()
                .join(",");
            let mut cluster = Cluster {
                nodes: Vec::new(),
                down: BTreeSet::new(),
                links,
                _slot: None,
            };
            for id in 1..=NODES {
                let (mqtt, admin, grpc_addr) = addrs[&id];
                let peers = match &cluster.links {
                    Some(l) => l.peers(),
                    None => direct_peers.clone(),
                };
                let mut o = BrokerOptions::new()
                    .node_id(id)
                    .addrs(mqtt, admin, grpc_addr)
                    .args(["--peers".to_string(), peers]);
                o.config = opts.config.clone();
                o.extra_args.extend(opts.extra_args.iter().cloned());
                match BrokerProcess::launch(o) {
                    Ok(n) => {
                        if let Some(l) = &cluster.links {
                            l.set_pid(id, n.pid());
                        }
                        cluster.nodes.push(n);
                    }
                    Err(e) => panic!("could not spawn node {id}: {e}"),
                }
            }
            let ids: Vec<u64> = (1..=NODES).collect();
            match cluster.wait_ready(&ids, READY_TIMEOUT) {
                Ok(()) => {
                    cluster._slot = slot.take();
                    let leader = cluster.must_agree_on_leader(&ids);
                    let members: BTreeSet<u64> = cluster
                        .must_status(leader)
                        .members
                        .iter()
                        .map(|m| m.id)
                        .collect();
                    assert_eq!(
                        members,
                        ids.iter().copied().collect::<BTreeSet<u64>>(),
                        "the leader {leader} should list every node as a member"
                    );
                    return cluster;
                }
                Err(e) => {
                    let clash = cluster.nodes.iter().any(|n| {
                        let log = n.log_tail(60);
                        log.contains("in use") || log.contains("AddrInUse")
                    });
                    if clash && attempt < 2 {
                        last_error = e;
                        continue;
                    }
                    // Each node prints its log and keeps its directory when dropped
                    // while panicking.
                    panic!("the cluster did not become ready: {e}");
                }
            }
        }
        panic!("the cluster did not start (ports kept clashing): {last_error}");
    }

    /// The node with this id (1 to 3).
    pub fn node(&self, id: u64) -> &BrokerProcess {
        assert!((1..=NODES).contains(&id), "no node {id}");
        &self.nodes[(id - 1) as usize]
    }

    pub fn node_mut(&mut self, id: u64) -> &mut BrokerProcess {
        assert!((1..=NODES).contains(&id), "no node {id}");
        &mut self.nodes[(id - 1) as usize]
    }

    /// Every node id, 1 to 3.
    pub fn ids(&self) -> Vec<u64> {
        (1..=NODES).collect()
    }

    /// The ids of the nodes the test has not killed or stopped.
    pub fn live_ids(&self) -> Vec<u64> {
        self.ids()
            .into_iter()
            .filter(|id| !self.down.contains(id))
            .collect()
    }

    /// `(id, MQTT address)` of every node, dead or alive: where clients may connect.
    pub fn endpoints(&self) -> Vec<(u64, SocketAddr)> {
        self.ids()
            .into_iter()
            .map(|id| (id, self.node(id).mqtt_addr))
            .collect()
    }

    /// SIGKILL node `id`.
    pub fn kill9(&mut self, id: u64) {
        self.node_mut(id).kill9();
        self.down.insert(id);
    }

    /// SIGSTOP node `id`: its process freezes with every socket open, answering
    /// nothing (neither MQTT nor Raft) until [`resume`](Self::resume). Counted as down
    /// meanwhile ([`live_ids`](Self::live_ids)).
    pub fn pause(&mut self, id: u64) {
        self.node(id).pause();
        self.down.insert(id);
    }

    /// SIGCONT node `id` after [`pause`](Self::pause).
    pub fn resume(&mut self, id: u64) {
        self.node(id).resume();
        self.down.remove(&id);
    }

    /// SIGTERM node `id` and wait for its graceful exit (SIGKILL after 10 s). Returns
    /// whether it exited on its own.
    pub fn stop(&mut self, id: u64) -> bool {
        let clean = self.node_mut(id).terminate(Duration::from_secs(10));
        self.down.insert(id);
        clean
    }

    /// Marks node `id` as down after it stopped on its own (a drain): waits up to
    /// `timeout` for its exit and returns its status, `None` if it still runs.
    pub fn wait_exit(&mut self, id: u64, timeout: Duration) -> Option<std::process::ExitStatus> {
        let status = self.node_mut(id).wait_exit(timeout);
        if status.is_some() {
            self.down.insert(id);
        }
        status
    }

    /// Starts node `id` again (killing it first if it runs) with the same ports, data
    /// directory and `--peers`, and waits until its `/readyz` answers 200.
    pub fn restart(&mut self, id: u64) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Err(e) = self.node_mut(id).respawn() {
                panic!("could not spawn node {id} again: {e}");
            }
            if let Some(l) = &self.links {
                l.set_pid(id, self.node(id).pid());
            }
            self.down.remove(&id);
            let left = deadline.saturating_duration_since(Instant::now());
            match self.wait_ready(&[id], left) {
                Ok(()) => return,
                Err(e) => {
                    // The old listener's port can take a moment to be free again.
                    let clash = self.node(id).log_tail(30).contains("in use");
                    if clash && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(300));
                        continue;
                    }
                    panic!(
                        "node {id} did not become ready after a restart: {e}\n{}",
                        self.log_tails(40)
                    );
                }
            }
        }
    }

    /// Waits until every node of `ids` runs, accepts MQTT connections and answers
    /// `GET /readyz` with 200.
    pub fn wait_ready(&mut self, ids: &[u64], timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let mut pending: BTreeSet<u64> = ids.iter().copied().collect();
        let mut last: BTreeMap<u64, String> = BTreeMap::new();
        loop {
            for id in pending.clone() {
                let node = self.node_mut(id);
                if !node.is_alive() {
                    return Err(format!(
                        "node {id} exited while starting; its log ends with:\n{}",
                        node.log_tail(30)
                    ));
                }
                let mqtt_up =
                    TcpStream::connect_timeout(&node.mqtt_addr, Duration::from_millis(200)).is_ok();
                let readyz = node.http_get("/readyz");
                let ready = mqtt_up && matches!(readyz, Ok((200, _)));
                if ready {
                    pending.remove(&id);
                } else {
                    last.insert(
                        id,
                        format!(
                            "mqtt {} accepting: {mqtt_up}; GET /readyz: {}",
                            node.mqtt_addr,
                            match readyz {
                                Ok((code, body)) => format!("{code} {}", body.trim()),
                                Err(e) => format!("{e:#}"),
                            }
                        ),
                    );
                }
            }
            if pending.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let why: Vec<String> = pending
                    .iter()
                    .map(|id| format!("node {id}: {}", last.get(id).cloned().unwrap_or_default()))
                    .collect();
                return Err(format!(
                    "not ready within {timeout:?}:\n  {}",
                    why.join("\n  ")
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `fleetmq ctl status` of node `id`.
    pub fn status(&self, id: u64) -> Result<NodeStatus, String> {
        status_at(self.node(id).admin_addr)
    }

    /// `fleetmq ctl status` of node `id`; panics with the node's log when it fails.
    pub fn must_status(&self, id: u64) -> NodeStatus {
        self.status(id).unwrap_or_else(|e| {
            panic!(
                "ctl status of node {id}: {e}\n{}",
                self.node(id).log_tail(40)
            )
        })
    }

    /// The leader the live nodes agree on (waits for one).
    pub fn leader(&mut self) -> u64 {
        let live = self.live_ids();
        self.must_agree_on_leader(&live)
    }

    /// Waits until every node of `ids` answers `ctl status`, they all name the same
    /// leader, the leader is one of `ids` and says it is the leader. `Err` (with the
    /// last statuses) after `timeout`.
    pub fn wait_leader_among(&self, ids: &[u64], timeout: Duration) -> Result<u64, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let statuses: Vec<(u64, Result<NodeStatus, String>)> =
                ids.iter().map(|id| (*id, self.status(*id))).collect();
            let leaders: BTreeSet<Option<u64>> = statuses
                .iter()
                .map(|(_, s)| s.as_ref().ok().and_then(|s| s.leader_id))
                .collect();
            if leaders.len() == 1 {
                if let Some(Some(l)) = leaders.iter().next() {
                    let says_leader = statuses
                        .iter()
                        .any(|(id, s)| id == l && s.as_ref().is_ok_and(|s| s.state == "leader"));
                    if ids.contains(l) && says_leader {
                        return Ok(*l);
                    }
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "nodes {ids:?} did not agree on a leader among themselves within {timeout:?}:\n{}",
                    describe_statuses(&statuses)
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// [`wait_leader_among`](Self::wait_leader_among) that panics with the logs.
    pub fn must_agree_on_leader(&self, ids: &[u64]) -> u64 {
        self.wait_leader_among(ids, LEADER_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}\n{}", self.log_tails(40)))
    }

    /// Waits until every node of `ids` has applied at least what the leader among
    /// them had in its log when this was called.
    pub fn must_catch_up(&self, ids: &[u64]) {
        let leader = self.must_agree_on_leader(ids);
        let target = self.must_status(leader).last_log_index.unwrap_or(0);
        let deadline = Instant::now() + LEADER_TIMEOUT;
        loop {
            let statuses: Vec<(u64, Result<NodeStatus, String>)> =
                ids.iter().map(|id| (*id, self.status(*id))).collect();
            let behind: Vec<u64> = statuses
                .iter()
                .filter(|(_, s)| {
                    !s.as_ref()
                        .is_ok_and(|s| s.last_applied.is_some_and(|a| a >= target))
                })
                .map(|(id, _)| *id)
                .collect();
            if behind.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "nodes {behind:?} did not apply up to index {target} (the leader {leader}'s \
                     last log index) within {LEADER_TIMEOUT:?}:\n{}\n{}",
                    describe_statuses(&statuses),
                    self.log_tails(40)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until every node of `ids` names the same leader (one of them) and
    /// reports the same `last_applied` in one round of `ctl status`; returns it.
    pub fn must_agree(&mut self, ids: &[u64]) -> u64 {
        let deadline = Instant::now() + LEADER_TIMEOUT;
        loop {
            self.must_be_running();
            let statuses: Vec<(u64, Result<NodeStatus, String>)> =
                ids.iter().map(|id| (*id, self.status(*id))).collect();
            let seen: BTreeSet<(Option<u64>, Option<u64>)> = statuses
                .iter()
                .map(|(_, s)| match s {
                    Ok(s) => (s.leader_id, s.last_applied),
                    Err(_) => (None, None),
                })
                .collect();
            if seen.len() == 1 {
                if let Some((Some(l), Some(applied))) = seen.iter().next() {
                    if ids.contains(l) {
                        return *applied;
                    }
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "nodes {ids:?} did not converge (same leader, same last_applied) within \
                     {LEADER_TIMEOUT:?}:\n{}\n{}",
                    describe_statuses(&statuses),
                    self.log_tails(40)
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Panics (with its log) if a node the test did not kill has exited.
    pub fn must_be_running(&mut self) {
        for id in self.live_ids() {
            if !self.node_mut(id).is_alive() {
                panic!(
                    "node {id} exited on its own; its log ends with:\n{}",
                    self.node(id).log_tail(80)
                );
            }
        }
    }

    /// Cuts node `id` off: the connections it opened to the other nodes and the
    /// ones they opened to it are closed, and new ones are refused until
    /// [`heal`](Self::heal). Needs [`ClusterOptions::proxied`].
    pub fn isolate(&self, id: u64) {
        self.links
            .as_ref()
            .expect("isolate needs a cluster started with ClusterOptions::proxied")
            .set_blocked(id, true);
    }

    /// Restores every link of node `id`.
    pub fn heal(&self, id: u64) {
        self.links
            .as_ref()
            .expect("heal needs a cluster started with ClusterOptions::proxied")
            .set_blocked(id, false);
    }

    /// The counters of the proxy in front of each node; empty without proxies.
    pub fn link_stats(&self) -> BTreeMap<u64, ProxyStats> {
        self.links.as_ref().map_or_else(BTreeMap::new, |l| {
            l.proxies.iter().map(|(k, p)| (*k, p.stats())).collect()
        })
    }

    /// The connections open between nodes through the proxies, as `(from, to)`;
    /// `from` is `None` when the connecting process was not recognized as a node.
    pub fn open_links(&self) -> Vec<(Option<u64>, u64)> {
        self.links.as_ref().map_or_else(Vec::new, Links::open)
    }

    /// The proxies and their counters, for failure messages.
    pub fn describe_links(&self) -> String {
        self.links
            .as_ref()
            .map_or_else(|| "(no proxies)".to_string(), Links::describe)
    }

    /// The last `lines` lines of every node's log.
    pub fn log_tails(&self, lines: usize) -> String {
        self.ids()
            .into_iter()
            .map(|id| {
                let n = self.node(id);
                format!(
                    "---- node {id} log {} (last {lines} lines) ----\n{}",
                    n.log_path().display(),
                    n.log_tail(lines)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// What subscribing to `topic` on node `id` with a fresh clean session yields
    /// as retained messages (payloads), listening for `listen`.
    pub async fn retained_on(
        &self,
        id: u64,
        topic: &str,
        listen: Duration,
    ) -> Result<Vec<String>, String> {
        let mut c = V4Client::connect(v4_options(self.node(id), &unique_id("retained-probe")))
            .await
            .map_err(|e| format!("connect to node {id}: {e:#}"))?;
        c.must_subscribe(topic, QoS::AtLeastOnce).await;
        let got = c
            .drain_publishes(listen)
            .await
            .into_iter()
            .filter(|p| p.retain)
            .map(|p| text(&p.payload))
            .collect();
        c.disconnect().await;
        Ok(got)
    }

    /// Waits (up to `timeout`) until a subscription to `topic` on node `id` yields
    /// exactly the retained message `expected` (`None`: no retained message).
    pub async fn must_see_retained(
        &self,
        id: u64,
        topic: &str,
        expected: Option<&str>,
        timeout: Duration,
    ) {
        let deadline = Instant::now() + timeout;
        let want: Vec<String> = expected.into_iter().map(str::to_string).collect();
        let mut last = Err("never asked".to_string());
        while Instant::now() < deadline {
            last = self
                .retained_on(id, topic, Duration::from_millis(800))
                .await;
            if last.as_ref().is_ok_and(|got| *got == want) {
                return;
            }
            if let Ok(got) = &last {
                assert!(
                    got.len() <= 1,
                    "node {id} sent {} retained messages for {topic:?}: {got:?}",
                    got.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        panic!(
            "node {id}: subscribing to {topic:?} should yield the retained message {expected:?} \
             within {timeout:?}; the last attempt gave {last:?}\n{}",
            self.log_tails(30)
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- cluster ----");
            for id in self.ids() {
                let state = if self.down.contains(&id) {
                    "down"
                } else {
                    "up"
                };
                let n = self.node(id);
                eprintln!(
                    "node {id} ({state}): mqtt {} admin {} grpc {} dir {}",
                    n.mqtt_addr,
                    n.admin_addr,
                    n.grpc_addr,
                    n.dir().display()
                );
            }
            if self.links.is_some() {
                eprintln!("links:\n{}", self.describe_links());
            }
        }
    }
}

fn describe_statuses(statuses: &[(u64, Result<NodeStatus, String>)]) -> String {
    statuses
        .iter()
        .map(|(id, s)| match s {
            Ok(s) => format!("  {}", s.summary()),
            Err(e) => format!("  node {id}: {e}"),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

// ---- traffic -----------------------------------------------------------------------

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One connection of a traffic client.
#[derive(Debug, Clone)]
pub struct Conn {
    pub node: u64,
    pub session_present: bool,
    pub at: Instant,
    /// Why it ended (`None` while open).
    pub ended: Option<String>,
}

/// How a traffic client notices that its node stopped answering.
///
/// A node that died refuses or resets the connection; one that hangs (SIGSTOP, a
/// stalled VM) or is cut off keeps it open and silent, and only a client with timeouts
/// of its own moves on, as real devices do with their keep alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Liveness {
    /// Keep Alive of the CONNECT, seconds.
    pub keep_alive: u16,
    /// A PINGREQ goes after this long without sending anything.
    pub ping_after: Duration,
    /// A connection whose PINGREQ got no answer (nor anything else) for this long is
    /// given up, and the next node is tried. `None`: never.
    pub dead_after: Option<Duration>,
    /// How long to wait for a CONNACK before trying the next node.
    pub connack_timeout: Duration,
    /// A subscriber that expects a steady stream gives a connection up after this
    /// long without a PUBLISH and tries the next node (a node cut off from the others
    /// answers PINGREQ but routes nothing to it). `None`: never.
    pub quiet_after: Option<Duration>,
}

impl Default for Liveness {
    /// Patient: a PINGREQ after 10 s of silence, never giving up on a connection, 10 s
    /// for a CONNACK.
    fn default() -> Self {
        Liveness {
            keep_alive: 30,
            ping_after: Duration::from_secs(10),
            dead_after: None,
            connack_timeout: Duration::from_secs(10),
            quiet_after: None,
        }
    }
}

impl Liveness {
    /// Gives a silent node up within seconds: Keep Alive 5 s, a PINGREQ after 1 s of
    /// silence, dead 3 s later; 5 s for a CONNACK (a CONNECT on a survivor may wait
    /// for an election and the session's move).
    pub fn quick() -> Self {
        Liveness {
            keep_alive: 5,
            ping_after: Duration::from_secs(1),
            dead_after: Some(Duration::from_secs(3)),
            connack_timeout: Duration::from_secs(5),
            quiet_after: None,
        }
    }

    /// With [`quiet_after`](Self::quiet_after).
    pub fn quiet_after(mut self, quiet: Duration) -> Self {
        self.quiet_after = Some(quiet);
        self
    }
}

/// Connects to the first endpoint, starting at `start` (an index into
/// `endpoints`) and going round, that accepts; `None` once `stop` is set.
async fn connect_round(
    endpoints: &[(u64, SocketAddr)],
    start: usize,
    client_id: &str,
    clean: bool,
    liveness: Liveness,
    stop: &AtomicBool,
    notes: &mut Vec<String>,
) -> Option<(usize, RawClient, bool)> {
    let mut round = 0u32;
    loop {
        for k in 0..endpoints.len() {
            if stop.load(Ordering::SeqCst) {
                return None;
            }
            let i = (start + k) % endpoints.len();
            let (node, addr) = endpoints[i];
            let connect = connect_packet(
                ProtocolVersion::V3_1_1,
                client_id,
                clean,
                liveness.keep_alive,
            );
            let got =
                tokio::time::timeout(liveness.connack_timeout, RawClient::connect(addr, connect))
                    .await
                    .unwrap_or_else(|_| {
                        Err(anyhow::anyhow!(
                            "no CONNACK within {:?}",
                            liveness.connack_timeout
                        ))
                    });
            match got {
                Ok((c, ack)) if !ack.reason_code.is_error() => {
                    return Some((i, c, ack.session_present));
                }
                Ok((_, ack)) => notes.push(format!("node {node} refused CONNECT: {ack:?}")),
                Err(e) => {
                    if round == 0 {
                        notes.push(format!("node {node}: {e:#}"));
                    }
                }
            }
        }
        round += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What a [`DurableSubscriber`] saw.
#[derive(Debug, Clone, Default)]
pub struct SubLog {
    pub client_id: String,
    /// Payload → how many times a compliant client delivered it to its application.
    pub deliveries: HashMap<String, usize>,
    /// Each first delivery, in order.
    /// `(topic, payload, connection)`: the index in `connections` of the
    /// connection it arrived on.
    pub first: Vec<(String, String, usize)>,
    /// QoS 2 PUBLISHes resent before their PUBREL (acknowledged, not delivered).
    pub qos2_resends: usize,
    /// QoS 1 PUBLISHes delivered again.
    pub qos1_redeliveries: usize,
    pub connections: Vec<Conn>,
    /// Broken promises seen on the wire (e.g. a reconnection without the session).
    pub problems: Vec<String>,
    /// Other things worth knowing when a test fails.
    pub notes: Vec<String>,
}

impl SubLog {
    pub fn has(&self, payload: &str) -> bool {
        self.deliveries.contains_key(payload)
    }
}

/// A persistent-session MQTT 3.1.1 subscriber that stays connected: when its
/// connection ends it reconnects (same client id, `clean_session = 0`) to its node
/// or, if that fails, to the next node, and records whether the session was present.
pub struct DurableSubscriber {
    pub client_id: String,
    pub log: Arc<Mutex<SubLog>>,
    stop: Arc<AtomicBool>,
    task: Option<JoinHandle<()>>,
}

impl DurableSubscriber {
    /// Connects to node `node` with a new persistent session, subscribes to `filter`
    /// at QoS 2 and keeps receiving in a task.
    pub async fn start(
        cluster: &Cluster,
        node: u64,
        client_id: &str,
        filter: &str,
    ) -> DurableSubscriber {
        Self::start_with(cluster, node, client_id, filter, Liveness::default()).await
    }

    /// [`start`](Self::start) with its own way of noticing a silent node.
    pub async fn start_with(
        cluster: &Cluster,
        node: u64,
        client_id: &str,
        filter: &str,
        liveness: Liveness,
    ) -> DurableSubscriber {
        let endpoints = cluster.endpoints();
        let start = endpoints
            .iter()
            .position(|(id, _)| *id == node)
            .expect("the node is in the cluster");
        let connect = connect_packet(
            ProtocolVersion::V3_1_1,
            client_id,
            false,
            liveness.keep_alive,
        );
        let (mut c, ack) = RawClient::must_connect_with(endpoints[start].1, connect).await;
        let suback = c.must_subscribe(1, filter, CQoS::ExactlyOnce).await;
        assert!(
            suback.reason_codes.iter().all(|r| !r.is_error()),
            "{client_id}: SUBSCRIBE {filter:?} on node {node} refused: {suback:?}"
        );
        let log = Arc::new(Mutex::new(SubLog {
            client_id: client_id.to_string(),
            connections: vec![Conn {
                node,
                session_present: ack.session_present,
                at: Instant::now(),
                ended: None,
            }],
            ..SubLog::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(subscriber_loop(
            c,
            start,
            endpoints,
            client_id.to_string(),
            liveness,
            log.clone(),
            stop.clone(),
        ));
        DurableSubscriber {
            client_id: client_id.to_string(),
            log,
            stop,
            task: Some(task),
        }
    }

    /// A copy of what it saw so far.
    pub fn snapshot(&self) -> SubLog {
        lock(&self.log).clone()
    }

    /// The node of its current (or last) connection.
    pub fn node(&self) -> u64 {
        lock(&self.log).connections.last().map_or(0, |c| c.node)
    }

    /// Stops the task (the connection is dropped without DISCONNECT).
    pub async fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(15), t).await;
        }
    }
}

impl Drop for DurableSubscriber {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

async fn subscriber_loop(
    first: RawClient,
    mut current: usize,
    endpoints: Vec<(u64, SocketAddr)>,
    client_id: String,
    liveness: Liveness,
    log: Arc<Mutex<SubLog>>,
    stop: Arc<AtomicBool>,
) {
    let mut conn = Some(first);
    // Packet ids of QoS 2 PUBLISHes delivered and PUBREC'd, awaiting PUBREL: the
    // state a compliant client keeps for its session, across connections.
    let mut awaiting_rel: HashMap<u16, String> = HashMap::new();
    let mut last_sent = Instant::now();
    // When the PINGREQ still unanswered (by anything) went.
    let mut ping_unanswered: Option<Instant> = None;
    // When the last PUBLISH (or the connection) came.
    let mut last_publish = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        let Some(c) = conn.as_mut() else {
            let mut notes = Vec::new();
            let got = connect_round(
                &endpoints, current, &client_id, false, liveness, &stop, &mut notes,
            )
            .await;
            let mut l = lock(&log);
            l.notes.append(&mut notes);
            if let Some((i, c, session_present)) = got {
                current = i;
                let node = endpoints[i].0;
                if !session_present {
                    l.problems.push(format!(
                        "reconnected to node {node} with clean_session=0 and got \
                         session_present=0: the session was lost"
                    ));
                }
                l.connections.push(Conn {
                    node,
                    session_present,
                    at: Instant::now(),
                    ended: None,
                });
                conn = Some(c);
                last_sent = Instant::now();
                ping_unanswered = None;
                last_publish = Instant::now();
            }
            continue;
        };
        let ended = match c.recv(Duration::from_millis(200)).await {
            Ok(Recv::Timeout) => {
                let dead = liveness
                    .dead_after
                    .zip(ping_unanswered)
                    .filter(|(after, at)| at.elapsed() > *after);
                let quiet = liveness.quiet_after.filter(|q| last_publish.elapsed() > *q);
                if let Some((after, _)) = dead {
                    // Try the next node first: this one is not answering.
                    current = (current + 1) % endpoints.len();
                    Some(format!("no answer to PINGREQ within {after:?}"))
                } else if let Some(q) = quiet {
                    current = (current + 1) % endpoints.len();
                    Some(format!("no PUBLISH within {q:?}"))
                } else if last_sent.elapsed() > liveness.ping_after {
                    last_sent = Instant::now();
                    ping_unanswered.get_or_insert_with(Instant::now);
                    c.send(Packet::PingReq)
                        .await
                        .err()
                        .map(|e| format!("send PINGREQ: {e:#}"))
                } else {
                    None
                }
            }
            Ok(Recv::Closed) => Some("closed by the server".to_string()),
            Err(e) => Some(format!("{e:#}")),
            Ok(Recv::Packet(p)) => {
                ping_unanswered = None;
                let reply = match p {
                    Packet::Publish(p) => {
                        last_publish = Instant::now();
                        let payload = text(&p.payload);
                        let topic = p.topic.to_string();
                        let mut l = lock(&log);
                        match (p.qos, p.packet_id) {
                            (CQoS::ExactlyOnce, Some(pid)) => {
                                if let Some(original) = awaiting_rel.get(&pid) {
                                    // The same message again before its PUBREL: not
                                    // delivered again (MQTT 4.3.3).
                                    l.qos2_resends += 1;
                                    if *original != payload {
                                        l.problems.push(format!(
                                            "packet id {pid} reused for {payload:?} while \
                                             {original:?} awaited its PUBREL: a compliant \
                                             client drops {payload:?}"
                                        ));
                                    } else if !p.dup {
                                        l.notes.push(format!(
                                            "QoS 2 {payload:?} (packet id {pid}) resent without DUP"
                                        ));
                                    }
                                } else {
                                    awaiting_rel.insert(pid, payload.clone());
                                    deliver(&mut l, topic, payload);
                                }
                                Some(Packet::PubRec(PubResponse::new(pid)))
                            }
                            (CQoS::AtLeastOnce, Some(pid)) => {
                                if l.has(&payload) {
                                    l.qos1_redeliveries += 1;
                                }
                                deliver(&mut l, topic, payload);
                                Some(Packet::PubAck(PubResponse::new(pid)))
                            }
                            _ => {
                                deliver(&mut l, topic, payload);
                                None
                            }
                        }
                    }
                    Packet::PubRel(r) => {
                        awaiting_rel.remove(&r.packet_id);
                        Some(Packet::PubComp(PubResponse::new(r.packet_id)))
                    }
                    Packet::PingResp | Packet::SubAck(_) => None,
                    Packet::Disconnect(d) => {
                        lock(&log).notes.push(format!("server DISCONNECT {d:?}"));
                        None
                    }
                    other => {
                        lock(&log)
                            .notes
                            .push(format!("unexpected {}", other.kind()));
                        None
                    }
                };
                match reply {
                    Some(r) => {
                        last_sent = Instant::now();
                        c.send(r).await.err().map(|e| format!("send an ack: {e:#}"))
                    }
                    None => None,
                }
            }
        };
        if let Some(why) = ended {
            let mut l = lock(&log);
            if let Some(last) = l.connections.last_mut() {
                last.ended = Some(why);
            }
            conn = None;
        }
    }
}

fn deliver(l: &mut SubLog, topic: String, payload: String) {
    let n = l.deliveries.entry(payload.clone()).or_default();
    *n += 1;
    if *n == 1 {
        let conn = l.connections.len().saturating_sub(1);
        l.first.push((topic, payload, conn));
    }
}

/// What a [`Publisher`] should send.
#[derive(Debug, Clone)]
pub struct PublisherSpec {
    /// Names the publisher in payloads (`NAME-000042`) and topics.
    pub name: String,
    /// Messages go to `TOPIC_PREFIX/NAME/q1` and `TOPIC_PREFIX/NAME/q2`.
    pub topic_prefix: String,
    /// Every `qos2_every`-th message is QoS 2, the others QoS 1; 0: QoS 1 only.
    pub qos2_every: usize,
    /// At most this many PUBLISHes unacknowledged.
    pub window: usize,
    /// Pause between two PUBLISHes.
    pub interval: Duration,
    /// Stop after this many messages (or when told to).
    pub max: usize,
    /// An acknowledgement slower than this ends the connection (the publisher moves
    /// to the next node).
    pub ack_timeout: Duration,
    /// Once told to stop, how long to wait for the outstanding acknowledgements.
    pub drain_timeout: Duration,
    /// A persistent session (`clean_session = 0`, one client id throughout) that,
    /// on reconnecting with the session present, resends what was not acknowledged
    /// as a compliant client must (MQTT 3.1.1 4.4): each unacknowledged PUBLISH again
    /// with DUP and its packet id, a PUBREL for each QoS 2 message whose PUBREC came.
    /// Otherwise a clean session that never resends (what was outstanding stays in
    /// doubt).
    pub persistent: bool,
    pub liveness: Liveness,
}

impl PublisherSpec {
    pub fn new(name: &str, topic_prefix: &str) -> PublisherSpec {
        PublisherSpec {
            name: name.to_string(),
            topic_prefix: topic_prefix.to_string(),
            qos2_every: 6,
            window: 8,
            interval: Duration::from_millis(20),
            max: 100_000,
            ack_timeout: Duration::from_secs(20),
            drain_timeout: Duration::from_secs(20),
            persistent: false,
            liveness: Liveness::default(),
        }
    }

    /// A [`persistent`](Self::persistent) publisher that gives a silent node up
    /// within seconds ([`Liveness::quick`]; an acknowledgement may take 4 s, the time
    /// for an election and a session's move).
    pub fn persistent(mut self) -> PublisherSpec {
        self.persistent = true;
        self.liveness = Liveness::quick();
        self.ack_timeout = Duration::from_secs(4);
        self.drain_timeout = Duration::from_secs(30);
        self
    }

    /// Topic, payload and QoS of message `i`.
    pub fn message(&self, i: usize) -> (String, String, CQoS) {
        let qos = if self.qos2_every > 0 && i % self.qos2_every == self.qos2_every - 1 {
            CQoS::ExactlyOnce
        } else {
            CQoS::AtLeastOnce
        };
        let q = if qos == CQoS::ExactlyOnce { 2 } else { 1 };
        (
            format!("{}/{}/q{q}", self.topic_prefix, self.name),
            format!("{}-{i:06}", self.name),
            qos,
        )
    }
}

/// What a [`Publisher`] did.
#[derive(Debug, Clone, Default)]
pub struct PubLog {
    pub name: String,
    /// `(topic, payload, qos)` of every PUBLISH, in the order sent; each message is
    /// sent once (never resent after a lost connection: it stays in doubt).
    pub sent: Vec<(String, String, CQoS)>,
    /// Payloads whose PUBACK (QoS 1) or PUBREC (QoS 2) arrived: they must not be lost.
    pub acked: HashSet<String>,
    /// When each of those acknowledgements arrived, in order.
    pub acked_at: Vec<Instant>,
    /// QoS 2 payloads whose PUBCOMP arrived.
    pub completed: HashSet<String>,
    pub connections: Vec<Conn>,
    /// PUBLISHes resent with DUP after a reconnection (persistent publishers).
    pub resent: usize,
    /// PUBRELs resent after a reconnection (persistent publishers).
    pub rel_resent: usize,
    pub notes: Vec<String>,
    /// Broken promises seen on the wire (a persistent session lost).
    pub problems: Vec<String>,
    /// Set when the task ended, with why.
    pub ended: Option<String>,
}

impl PubLog {
    /// Sent but never acknowledged: may or may not be delivered.
    pub fn in_doubt(&self) -> usize {
        self.sent.len() - self.acked.len()
    }
}

/// A clean-session MQTT 3.1.1 publisher streaming QoS 1/2 messages with a window,
/// recording what was acknowledged. When its connection ends it reconnects (to its
/// node, else the next) and goes on with new messages.
pub struct Publisher {
    pub log: Arc<Mutex<PubLog>>,
    stop: Arc<AtomicBool>,
    task: Option<JoinHandle<()>>,
}

impl Publisher {
    /// Starts streaming through node `node`; on failure it moves to the next node.
    pub fn start(cluster: &Cluster, node: u64, spec: PublisherSpec) -> Publisher {
        Self::start_on(cluster.endpoints(), node, spec)
    }

    /// Starts streaming through node `node`, moving only among `endpoints`.
    pub fn start_on(
        endpoints: Vec<(u64, SocketAddr)>,
        node: u64,
        spec: PublisherSpec,
    ) -> Publisher {
        let start = endpoints
            .iter()
            .position(|(id, _)| *id == node)
            .expect("the node is in the cluster");
        let log = Arc::new(Mutex::new(PubLog {
            name: spec.name.clone(),
            ..PubLog::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(publisher_loop(
            spec,
            endpoints,
            start,
            log.clone(),
            stop.clone(),
        ));
        Publisher {
            log,
            stop,
            task: Some(task),
        }
    }

    pub fn acked(&self) -> usize {
        lock(&self.log).acked.len()
    }

    pub fn snapshot(&self) -> PubLog {
        lock(&self.log).clone()
    }

    /// Waits (up to `timeout`) until it has sent its `max` messages and they are
    /// acknowledged or given up; then (or on timeout) stops it.
    pub async fn join(&mut self, timeout: Duration) -> PubLog {
        if let Some(t) = self.task.as_mut() {
            if tokio::time::timeout(timeout, t).await.is_ok() {
                self.task = None;
            } else {
                lock(&self.log)
                    .notes
                    .push(format!("not done after {timeout:?}"));
            }
        }
        self.finish(Duration::from_secs(5)).await
    }

    /// Tells it to stop sending and waits (up to `timeout`) until its outstanding
    /// messages are acknowledged or given up.
    pub async fn finish(&mut self, timeout: Duration) -> PubLog {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.task.take() {
            if tokio::time::timeout(timeout, t).await.is_err() {
                lock(&self.log)
                    .notes
                    .push(format!("still running {timeout:?} after stop"));
            }
        }
        self.snapshot()
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// A message sent and not yet acknowledged (QoS 1: PUBACK; QoS 2: PUBCOMP).
struct Outstanding {
    topic: String,
    payload: String,
    qos: CQoS,
    /// When it (or its PUBREL) was last sent.
    at: Instant,
    /// QoS 2: the PUBREC came, the PUBREL is what is left to (re)send.
    released: bool,
}

async fn publisher_loop(
    spec: PublisherSpec,
    endpoints: Vec<(u64, SocketAddr)>,
    mut current: usize,
    log: Arc<Mutex<PubLog>>,
    stop: Arc<AtomicBool>,
) {
    let client_id = unique_id(&format!("pub-{}", spec.name));
    let never = AtomicBool::new(false);
    let mut conn: Option<RawClient> = None;
    // By packet id; packet ids grow (wrapping), so a BTreeMap in id order is the send
    // order except across the wrap, which `order` restores.
    let mut outstanding: BTreeMap<u16, Outstanding> = BTreeMap::new();
    let mut order: Vec<u16> = Vec::new();
    let mut next = 0usize;
    let mut pid: u16 = 0;
    let mut last_send = Instant::now() - spec.interval;
    let mut stopped_at: Option<Instant> = None;
    let why = loop {
        let stopping = stop.load(Ordering::SeqCst) || next >= spec.max;
        if stopping {
            let at = *stopped_at.get_or_insert_with(Instant::now);
            if outstanding.is_empty() {
                break "done".to_string();
            }
            if at.elapsed() > spec.drain_timeout {
                break format!("gave up on {} unacknowledged messages", outstanding.len());
            }
        }
        let Some(c) = conn.as_mut() else {
            if stopping && !spec.persistent {
                break "stopped while disconnected".to_string();
            }
            let mut notes = Vec::new();
            // Connect even if told to stop meanwhile: the loop above decides.
            let got = connect_round(
                &endpoints,
                current,
                &client_id,
                !spec.persistent,
                spec.liveness,
                &never,
                &mut notes,
            )
            .await;
            let Some((i, mut c, session_present)) = got else {
                lock(&log).notes.append(&mut notes);
                continue;
            };
            current = i;
            let node = endpoints[i].0;
            let reconnected = {
                let mut l = lock(&log);
                l.notes.append(&mut notes);
                l.connections.push(Conn {
                    node,
                    session_present,
                    at: Instant::now(),
                    ended: None,
                });
                l.connections.len() > 1
            };
            if !spec.persistent {
                pid = 0;
                conn = Some(c);
                continue;
            }
            if reconnected && !session_present {
                lock(&log).problems.push(format!(
                    "reconnected to node {node} with clean_session=0 and got session_present=0: \
                     the session was lost ({} messages outstanding left in doubt)",
                    outstanding.len()
                ));
                // MQTT 3.1.1 3.2.2.2: the client discards its session state.
                outstanding.clear();
                order.clear();
            }
            // Resend in the order first sent.
            order.retain(|p| outstanding.contains_key(p));
            let mut failed = None;
            for p in order.clone() {
                let Some(o) = outstanding.get_mut(&p) else {
                    continue;
                };
                o.at = Instant::now();
                let packet = if o.released {
                    lock(&log).rel_resent += 1;
                    Packet::PubRel(PubResponse::new(p))
                } else {
                    lock(&log).resent += 1;
                    let mut publish =
                        publish_packet(&o.topic, o.qos, Some(p), o.payload.as_bytes());
                    publish.dup = true;
                    Packet::Publish(publish)
                };
                if let Err(e) = c.send(packet).await {
                    failed = Some(format!("resending: {e:#}"));
                    break;
                }
            }
            match failed {
                None => conn = Some(c),
                Some(why) => {
                    if let Some(last) = lock(&log).connections.last_mut() {
                        last.ended = Some(why);
                    }
                }
            }
            continue;
        };
        let mut ended: Option<String> = None;
        if !stopping && outstanding.len() < spec.window && last_send.elapsed() >= spec.interval {
            let (topic, payload, qos) = spec.message(next);
            loop {
                pid = pid % 60_000 + 1;
                if !outstanding.contains_key(&pid) {
                    break;
                }
            }
            let p = publish_packet(&topic, qos, Some(pid), payload.as_bytes());
            // Recorded before the write: a PUBLISH that may have reached the node.
            lock(&log).sent.push((topic.clone(), payload.clone(), qos));
            next += 1;
            last_send = Instant::now();
            let sent = c.send(Packet::Publish(p)).await;
            // A persistent session resends it even if the write failed.
            if sent.is_ok() || spec.persistent {
                outstanding.insert(
                    pid,
                    Outstanding {
                        topic,
                        payload,
                        qos,
                        at: Instant::now(),
                        released: false,
                    },
                );
                order.push(pid);
            }
            if let Err(e) = sent {
                ended = Some(format!("sending PUBLISH: {e:#}"));
            }
        }
        if ended.is_none() {
            let wait = if stopping || outstanding.len() >= spec.window {
                Duration::from_millis(100)
            } else {
                spec.interval
                    .saturating_sub(last_send.elapsed())
                    .min(Duration::from_millis(100))
            };
            ended = match c.recv(wait).await {
                Ok(Recv::Timeout) => None,
                Ok(Recv::Packet(Packet::PubAck(a))) => {
                    if let Some(o) = outstanding.remove(&a.packet_id) {
                        if a.reason_code.is_error() {
                            lock(&log)
                                .notes
                                .push(format!("PUBACK {} with {:?}", o.payload, a.reason_code));
                        } else {
                            let mut log = lock(&log);
                            log.acked.insert(o.payload);
                            log.acked_at.push(Instant::now());
                        }
                    }
                    None
                }
                Ok(Recv::Packet(Packet::PubRec(r))) => {
                    if let Some(o) = outstanding.get_mut(&r.packet_id) {
                        if r.reason_code.is_error() {
                            lock(&log)
                                .notes
                                .push(format!("PUBREC {} with {:?}", o.payload, r.reason_code));
                        } else {
                            let mut log = lock(&log);
                            log.acked.insert(o.payload.clone());
                            log.acked_at.push(Instant::now());
                        }
                        o.released = true;
                        o.at = Instant::now();
                    }
                    c.send(Packet::PubRel(PubResponse::new(r.packet_id)))
                        .await
                        .err()
                        .map(|e| format!("sending PUBREL: {e:#}"))
                }
                Ok(Recv::Packet(Packet::PubComp(r))) => {
                    if let Some(o) = outstanding.remove(&r.packet_id) {
                        lock(&log).completed.insert(o.payload);
                    }
                    None
                }
                Ok(Recv::Packet(other)) => {
                    lock(&log).notes.push(format!("unexpected {other:?}"));
                    None
                }
                Ok(Recv::Closed) => Some("closed by the server".to_string()),
                Err(e) => Some(format!("{e:#}")),
            };
        }
        if ended.is_none() {
            if let Some(o) = outstanding.values().min_by_key(|o| o.at) {
                if o.at.elapsed() > spec.ack_timeout {
                    ended = Some(format!(
                        "no acknowledgement of {} within {:?}",
                        o.payload, spec.ack_timeout
                    ));
                    // Try another node next.
                    current = (current + 1) % endpoints.len();
                }
            }
        }
        if let Some(why) = ended {
            if !spec.persistent {
                // What is outstanding stays in doubt: never resent.
                outstanding.clear();
                order.clear();
            }
            conn = None;
            let mut l = lock(&log);
            if let Some(last) = l.connections.last_mut() {
                last.ended = Some(why);
            }
        }
    };
    lock(&log).ended = Some(why);
}

/// Publishes QoS 1 probes from every node of `nodes` to `TOPIC_PREFIX/warmup/nN`
/// until every subscriber has received one from every node: the subscriptions are
/// then known cluster-wide. Returns every probe payload sent (acknowledged or not).
///
/// A SUBACK says the subscription exists, not that every other node's router has
/// applied it yet; tests that count losses start after this.
pub async fn warm_up(
    cluster: &Cluster,
    nodes: &[u64],
    subs: &[&DurableSubscriber],
    topic_prefix: &str,
    timeout: Duration,
) -> HashSet<String> {
    let deadline = Instant::now() + timeout;
    let mut sent = HashSet::new();
    let mut clients: BTreeMap<u64, V4Client> = BTreeMap::new();
    for round in 0.. {
        for &n in nodes {
            if let std::collections::btree_map::Entry::Vacant(slot) = clients.entry(n) {
                if let Ok(c) =
                    V4Client::connect(v4_options(cluster.node(n), &unique_id("warmup"))).await
                {
                    slot.insert(c);
                }
            }
            let Some(c) = clients.get_mut(&n) else {
                continue;
            };
            let payload = format!("warmup-n{n}-{round}");
            sent.insert(payload.clone());
            let _ = c
                .client
                .publish(
                    format!("{topic_prefix}/warmup/n{n}"),
                    QoS::AtLeastOnce,
                    false,
                    payload,
                )
                .await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let missing: Vec<String> = subs
            .iter()
            .flat_map(|s| {
                let l = s.snapshot();
                nodes
                    .iter()
                    .filter(|n| {
                        !l.deliveries
                            .keys()
                            .any(|p| p.starts_with(&format!("warmup-n{n}-")))
                    })
                    .map(|n| format!("{} has nothing from node {n}", l.client_id))
                    .collect::<Vec<_>>()
            })
            .collect();
        if missing.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            panic!(
                "subscriptions did not reach every node within {timeout:?} (QoS 1 probes \
                 published on each node every 300 ms): {missing:?}\n{}",
                cluster.log_tails(40)
            );
        }
    }
    for (_, c) in clients {
        c.disconnect().await;
    }
    sent
}

/// Waits until every publisher has `more` messages more acknowledged than now; panics
/// with their connections and the nodes' logs if that takes longer than `timeout`.
pub async fn wait_more_acked(
    cluster: &Cluster,
    pubs: &[Publisher],
    more: usize,
    timeout: Duration,
) {
    let base: Vec<usize> = pubs.iter().map(Publisher::acked).collect();
    let deadline = Instant::now() + timeout;
    loop {
        let counts: Vec<usize> = pubs.iter().map(Publisher::acked).collect();
        if counts.iter().zip(&base).all(|(c, b)| *c >= b + more) {
            return;
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = pubs
                .iter()
                .map(|p| format!("{:?}", p.snapshot().connections))
                .collect();
            panic!(
                "publishers should have {more} more messages acknowledged each within \
                 {timeout:?}: {base:?} -> {counts:?}\nconnections: {logs:?}\n{}",
                cluster.log_tails(30)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every subscriber has every payload of `expected` (up to
/// `timeout`), then `settle` longer for duplicates to show.
pub async fn wait_delivered(
    subs: &[&DurableSubscriber],
    expected: &HashSet<String>,
    timeout: Duration,
    settle: Duration,
) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let done = subs
            .iter()
            .all(|s| expected.iter().all(|p| lock(&s.log).has(p)));
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(settle).await;
}

/// Checks what subscribers got against what publishers had acknowledged: nothing
/// acknowledged lost, QoS 2 never delivered twice, each publisher's messages of one
/// QoS in the order sent (first deliveries), nothing that was never sent, no broken
/// session. `extra_acked`: other acknowledged payloads the subscribers must have;
/// `extra_known`: other payloads they may have. `Err` holds a report for the panic.
pub fn check_delivery(
    subs: &[SubLog],
    pubs: &[PubLog],
    extra_acked: &HashSet<String>,
    extra_known: &HashSet<String>,
) -> Result<String, String> {
    let mut acked: HashSet<&str> = extra_acked.iter().map(String::as_str).collect();
    let mut known: HashSet<&str> = extra_known.iter().map(String::as_str).collect();
    let mut qos_of: HashMap<&str, CQoS> = HashMap::new();
    let mut publisher_topics: HashSet<&str> = HashSet::new();
    for p in pubs {
        acked.extend(p.acked.iter().map(String::as_str));
        for (topic, payload, qos) in &p.sent {
            known.insert(payload);
            qos_of.insert(payload, *qos);
            publisher_topics.insert(topic);
        }
    }
    let mut failures = Vec::new();
    let mut summary = Vec::new();
    for p in pubs {
        if !p.problems.is_empty() {
            failures.push(format!("publisher {}: {:?}", p.name, p.problems));
        }
        summary.push(format!(
            "publisher {}: sent {}, acknowledged {}, in doubt {}, QoS 2 completed {}, \
             resent {} PUBLISH + {} PUBREL, connections {:?}, ended {:?}, notes {:?}",
            p.name,
            p.sent.len(),
            p.acked.len(),
            p.in_doubt(),
            p.completed.len(),
            p.resent,
            p.rel_resent,
            p.connections
                .iter()
                .map(|c| (c.node, c.ended.clone()))
                .collect::<Vec<_>>(),
            p.ended,
            &p.notes[..p.notes.len().min(10)],
        ));
    }
    for s in subs {
        let id = &s.client_id;
        summary.push(format!(
            "subscriber {id}: {} distinct payloads, QoS 1 redeliveries {}, QoS 2 resends \
             before PUBREL {}, connections {:?}",
            s.deliveries.len(),
            s.qos1_redeliveries,
            s.qos2_resends,
            s.connections
                .iter()
                .map(|c| (c.node, c.session_present, c.ended.clone()))
                .collect::<Vec<_>>()
        ));
        let mut lost: Vec<&str> = acked
            .iter()
            .copied()
            .filter(|p| !s.deliveries.contains_key(*p))
            .collect();
        lost.sort_unstable();
        if !lost.is_empty() {
            failures.push(format!(
                "{id} LOST {} of {} acknowledged messages: {:?}",
                lost.len(),
                acked.len(),
                &lost[..lost.len().min(25)]
            ));
        }
        let mut dup2: Vec<(&str, usize)> = s
            .deliveries
            .iter()
            .filter(|(p, n)| **n > 1 && qos_of.get(p.as_str()) == Some(&CQoS::ExactlyOnce))
            .map(|(p, n)| (p.as_str(), *n))
            .collect();
        dup2.sort_unstable();
        if !dup2.is_empty() {
            failures.push(format!(
                "{id} got {} QoS 2 messages more than once (payload, deliveries): {:?}",
                dup2.len(),
                &dup2[..dup2.len().min(25)]
            ));
        }
        let mut unknown: Vec<&str> = s
            .deliveries
            .keys()
            .map(String::as_str)
            .filter(|p| !known.contains(p))
            .collect();
        unknown.sort_unstable();
        if !unknown.is_empty() {
            failures.push(format!(
                "{id} got {} messages nobody sent: {:?}",
                unknown.len(),
                &unknown[..unknown.len().min(25)]
            ));
        }
        // Order: per topic (one publisher, one QoS), first deliveries only.
        let mut last_seq: HashMap<&str, (u64, &str, usize)> = HashMap::new();
        let mut disorder = Vec::new();
        let conn_name = |i: usize| {
            s.connections.get(i).map_or_else(
                || format!("connection #{i}"),
                |c| format!("connection #{i} (node {})", c.node),
            )
        };
        for (topic, payload, conn) in &s.first {
            if !publisher_topics.contains(topic.as_str()) {
                continue;
            }
            let Some(seq) = payload
                .rsplit('-')
                .next()
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            if let Some((prev, prev_payload, prev_conn)) = last_seq.get(topic.as_str()) {
                if seq <= *prev {
                    // What arrived on this topic around it, with the connection.
                    let on_topic: Vec<(&str, usize)> = s
                        .first
                        .iter()
                        .filter(|(t, _, _)| t == topic)
                        .map(|(_, p, c)| (p.as_str(), *c))
                        .collect();
                    let at = on_topic
                        .iter()
                        .position(|(p, _)| *p == payload.as_str())
                        .unwrap_or(0);
                    let around = &on_topic[at.saturating_sub(4)..(at + 3).min(on_topic.len())];
                    disorder.push(format!(
                        "{payload} on {} after {prev_payload} on {}, topic {topic}; first \
                         deliveries around it (payload, connection): {around:?}",
                        conn_name(*conn),
                        conn_name(*prev_conn)
                    ));
                }
            }
            last_seq.insert(topic, (seq, payload, *conn));
        }
        if !disorder.is_empty() {
            failures.push(format!(
                "{id} got {} messages out of their publisher's order (first deliveries): {:?}",
                disorder.len(),
                &disorder[..disorder.len().min(15)]
            ));
        }
        if !s.problems.is_empty() {
            failures.push(format!("{id}: {:?}", s.problems));
        }
    }
    let summary = summary.join("\n");
    if failures.is_empty() {
        Ok(summary)
    } else {
        Err(format!(
            "{}\n---- what happened ----\n{summary}",
            failures.join("\n")
        ))
    }
}
