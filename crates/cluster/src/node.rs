//! One node's Raft group member: storage, the openraft instance and the gRPC server
//! that peers reach it on. A single node is a one-member group: the same path.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use fleetmq_broker::persist::{self, Snapshot};
use fleetmq_broker::{Applied, Event, Metrics, RoutingView, Visibility};
use fleetmq_rpc::peer::peer_service_client::PeerServiceClient;
use fleetmq_storage::KvEngine;
use openraft::{BasicNode, Config, Raft, SnapshotPolicy};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::failover::run_failover;
use crate::leader_watch::{run_leader_watch, LeaderContact, WatchTiming};
use crate::network::{
    DrainFn, ForwardSink, GrpcNetworkConfig, GrpcNetworkFactory, KickFn, PeerGrpcServer,
    RaftGrpcServer, ServingHooks,
};
use crate::store::{open_raft_storage_kept, stored_applied_index, ApplyFeed, Durability, FeedSlot};
use crate::types::{member_addr, NodeId, TypeConfig};
use crate::visibility::PeerVisibility;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("raft storage: {0}")]
    Storage(#[from] crate::store::StoreError),
    #[error("raft configuration: {0}")]
    Config(String),
    #[error("raft: {0}")]
    Raft(String),
    #[error("cannot listen for gRPC on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("node {node} did not become leader and catch up within {waited:?}: {detail}")]
    NotReady {
        node: NodeId,
        waited: Duration,
        detail: String,
    },
    #[error("cannot load the stored state: {0}")]
    Load(String),
}

/// What a node needs to join its Raft group.
pub struct NodeOptions {
    pub node_id: NodeId,
    /// Where the Raft log lives.
    pub dir: PathBuf,
    /// The store the state machine applies to, and the broker reads from.
    pub engine: Arc<dyn KvEngine>,
    /// Where the state machine's snapshot is kept: with a memory `engine`, a file.
    pub durability: Durability,
    pub trees: &'static [&'static str],
    pub grpc_listen: SocketAddr,
    /// Every member's gRPC address, this node's included.
    pub members: BTreeMap<NodeId, String>,
    pub metrics: Arc<Metrics>,
}

/// The largest gRPC message between nodes; both ends use the same limit.
const MAX_MESSAGE: usize = 64 * 1024 * 1024;
/// How long a fresh or restarted single node may take to elect itself and replay its log.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a leaving leader waits for its successor to receive the whole log.
const HANDOVER_CATCH_UP: Duration = Duration::from_secs(2);
/// How long a leaving leader waits for the group to elect its successor.
const HANDOVER_ELECTION: Duration = Duration::from_secs(5);

pub struct RaftNode {
    pub raft: Raft<TypeConfig>,
    /// The last committed log index (openraft's metrics do not carry it).
    pub committed_index: Arc<AtomicU64>,
    /// Where the gRPC server listens: the bound address, so a port 0 asked for reads
    /// as the port the system gave.
    pub grpc_addr: SocketAddr,
    node_id: NodeId,
    engine: Arc<dyn KvEngine>,
    feed: FeedSlot,
    forward_sink: ForwardSink,
    view: RoutingView,
    hooks: ServingHooks,
    server: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
    failover: Option<JoinHandle<()>>,
    leader_watch: JoinHandle<()>,
    stop_report: JoinHandle<()>,
}

/// openraft's heartbeat interval, and also its AppendEntries timeout: a follower slowed
/// by fsync on a busy 2-core machine took over 100 ms, then over 150 ms, to answer
/// (BENCHMARKS.md), and each timeout costs 500 ms of backoff. openraft checks its timers
/// on a tick of 1.5 intervals, so heartbeats actually go out every 375 ms.
const HEARTBEAT_MS: u64 = 250;
const ELECTION_MIN_MS: u64 = 500;
/// Also openraft's leader lease: a voter refuses other candidates this long after the
/// last word from its leader.
const ELECTION_MAX_MS: u64 = 700;

fn raft_config() -> Result<Arc<Config>, NodeError> {
    let config = Config {
        cluster_name: "fleetmq".to_owned(),
        // A follower stands after the lease plus 500-700 ms of silence (1.2-1.8 s with
        // the tick); the leader watch shortens that to the lease when the leader's
        // process is gone (leader_watch.rs).
        heartbeat_interval: HEARTBEAT_MS,
        election_timeout_min: ELECTION_MIN_MS,
        election_timeout_max: ELECTION_MAX_MS,
        // Entries are batches of many writes: keep one AppendEntries small enough to
        // be written and answered well within the heartbeat interval.
        max_payload_entries: 64,
        // Every entry is a batch of broker writes; a snapshot copies every tree, so
        // take one rarely and keep a tail of log for followers that lag a little.
        snapshot_policy: SnapshotPolicy::LogsSinceLast(20_000),
        max_in_snapshot_log_to_keep: 2_000,
        ..Config::default()
    };
    config
        .validate()
        .map(Arc::new)
        .map_err(|e| NodeError::Config(e.to_string()))
}

/// Whether the node leads now, acknowledged by a quorum (alone, it is its own quorum).
fn leads_now(m: &openraft::RaftMetrics<NodeId, BasicNode>) -> bool {
    let voters = m.membership_config.membership().voter_ids().count();
    m.state == openraft::ServerState::Leader
        && (voters <= 1
            || m.millis_since_quorum_ack
                .is_some_and(|ms| ms <= crate::health::LEADER_QUORUM_STALE_MS))
}

impl RaftNode {
    /// Opens storage, starts Raft and its gRPC server, initializes a new group from
    /// `members` (only when this node is the lowest id, so members do not race), and
    /// waits until the single-node group has elected itself and applied its whole log:
    /// after that the engine holds everything that was ever committed.
    pub async fn start(options: NodeOptions) -> Result<RaftNode, NodeError> {
        let NodeOptions {
            node_id,
            dir,
            engine,
            durability,
            trees,
            grpc_listen,
            members,
            metrics,
        } = options;
        let store_engine = engine.clone();
        let (log_store, state_machine) = tokio::task::spawn_blocking(move || {
            open_raft_storage_kept(&dir, store_engine, trees, durability)
        })
        .await
        .map_err(|e| NodeError::Raft(format!("storage task failed: {e}")))??;
        let feed = state_machine.feed_slot();
        let committed_index = log_store.committed_index();
        let network = GrpcNetworkFactory::new(
            node_id,
            GrpcNetworkConfig {
                max_message_size: MAX_MESSAGE,
                ..GrpcNetworkConfig::default()
            },
        );
        let raft = Raft::new(node_id, raft_config()?, network, log_store, state_machine)
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))?;

        let listener =
            TcpListener::bind(grpc_listen)
                .await
                .map_err(|source| NodeError::Listen {
                    addr: grpc_listen,
                    source,
                })?;
        let grpc_addr = listener.local_addr().map_err(|source| NodeError::Listen {
            addr: grpc_listen,
            source,
        })?;
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let contact = LeaderContact::default();
        let service =
            RaftGrpcServer::with_leader_contact(raft.clone(), contact.clone(), metrics.clone())
                .into_service(MAX_MESSAGE);
        let leader_watch = tokio::spawn(run_leader_watch(
            raft.clone(),
            contact,
            WatchTiming {
                heartbeat: Duration::from_millis(HEARTBEAT_MS * 3 / 2),
                lease: Duration::from_millis(ELECTION_MAX_MS),
            },
            metrics.clone(),
        ));
        let stop_report = tokio::spawn(crate::health::report_raft_stop(
            raft.clone(),
            metrics.clone(),
        ));
        let forward_sink = ForwardSink::default();
        let view = RoutingView::default();
        let hooks = ServingHooks::default();
        let peer_service = PeerGrpcServer::with_forward_sink(
            raft.clone(),
            forward_sink.clone(),
            metrics,
            view.clone(),
            hooks.clone(),
        )
        .into_service(MAX_MESSAGE);
        let server = tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let result = tonic::transport::Server::builder()
                .add_service(service)
                .add_service(peer_service)
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = stop_rx.await;
                })
                .await;
            if let Err(error) = result {
                warn!(%error, "gRPC server stopped");
            }
        });
        let node = RaftNode {
            raft,
            committed_index,
            grpc_addr,
            node_id,
            engine,
            feed,
            forward_sink,
            view,
            hooks,
            server: Some((stop_tx, server)),
            failover: None,
            leader_watch,
            stop_report,
        };

        let initialized = node
            .raft
            .is_initialized()
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))?;
        if !initialized && members.keys().next() == Some(&node_id) {
            let nodes: BTreeMap<NodeId, BasicNode> = members
                .iter()
                .map(|(id, addr)| (*id, BasicNode::new(addr)))
                .collect();
            info!(node_id, members = ?members, "initializing a new raft group");
            node.raft
                .initialize(nodes)
                .await
                .map_err(|e| NodeError::Raft(e.to_string()))?;
        }
        if members.len() == 1 {
            node.wait_leader_caught_up(node_id).await?;
        } else {
            node.wait_joined_caught_up().await;
        }
        Ok(node)
    }

    /// Waits until a leader is known and this node has applied what the leader had
    /// applied when asked: after that its store is no older than the cluster's was when
    /// it started, so it does not revive sessions that moved while it was away.
    /// Waits as long as it takes (a cluster forms only once a majority is up).
    async fn wait_joined_caught_up(&self) {
        let mut waited = Duration::ZERO;
        let step = Duration::from_millis(100);
        loop {
            let (leader, applied, last_log, leading) = {
                let m = self.raft.metrics().borrow().clone();
                (
                    m.current_leader,
                    m.last_applied.map_or(0, |l| l.index),
                    m.last_log_index.unwrap_or(0),
                    leads_now(&m),
                )
            };
            let target = match leader {
                // A former leader restarted reads its own old vote back and names itself
                // leader before it has heard from anyone: it would serve sessions that
                // moved while it was away. Only leadership a quorum acknowledges counts.
                Some(leader) if leader == self.node_id => leading.then_some(last_log),
                Some(leader) => self.leader_applied(leader).await,
                None => None,
            };
            if let Some(target) = target {
                if applied >= target {
                    info!(
                        node_id = self.node_id,
                        ?leader,
                        applied,
                        "joined the cluster and caught up"
                    );
                    return;
                }
            }
            if waited.as_secs() > 0 && waited.as_millis() % 10_000 < step.as_millis() {
                info!(
                    node_id = self.node_id,
                    ?leader,
                    applied,
                    "waiting to join the cluster and catch up"
                );
            }
            tokio::time::sleep(step).await;
            waited += step;
        }
    }

    /// When this node leads: the voter that has the most of the log, with its address,
    /// once it has the whole log (or [`HANDOVER_CATCH_UP`] has passed).
    async fn successor(&self) -> Option<(NodeId, String)> {
        let (id, last) = {
            let metrics = self.raft.metrics().borrow().clone();
            if metrics.current_leader != Some(self.node_id) {
                return None;
            }
            let voters: Vec<NodeId> = metrics
                .membership_config
                .membership()
                .voter_ids()
                .filter(|&id| id != self.node_id)
                .collect();
            let replication = metrics.replication.unwrap_or_default();
            let id = voters
                .into_iter()
                .max_by_key(|id| replication.get(id).copied().flatten().map(|l| l.index))?;
            (id, metrics.last_log_index)
        };
        let caught_up = self
            .raft
            .wait(Some(HANDOVER_CATCH_UP))
            .metrics(
                |m| {
                    let matched = m
                        .replication
                        .as_ref()
                        .and_then(|r| r.get(&id).copied().flatten());
                    matched.map(|l| l.index) >= last
                },
                "the successor has the log",
            )
            .await
            .is_ok();
        if !caught_up {
            warn!(
                node_id = self.node_id,
                successor = id,
                "the successor is behind; handing over anyway"
            );
        }
        Some((id, member_addr(&self.raft, id)?))
    }

    /// Asks node `id` (at `addr`) to stand for election now that this node is quiet.
    async fn ask_to_campaign(&self, id: NodeId, addr: &str) {
        let started = tokio::time::Instant::now();
        let ask = async {
            let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .map_err(|e| e.to_string())?
                .connect_timeout(Duration::from_millis(500))
                .timeout(HANDOVER_ELECTION + Duration::from_secs(1));
            let mut client = PeerServiceClient::connect(endpoint)
                .await
                .map_err(|e| e.to_string())?;
            let timeout_ms = u32::try_from(HANDOVER_ELECTION.as_millis()).unwrap_or(u32::MAX);
            client
                .campaign(fleetmq_rpc::peer::CampaignRequest {
                    leaving_node: self.node_id,
                    timeout_ms,
                })
                .await
                .map(|reply| reply.into_inner().leader_id)
                .map_err(|e| e.to_string())
        };
        match ask.await {
            Ok(Some(leader)) => info!(
                node_id = self.node_id,
                leader,
                took_ms = started.elapsed().as_millis() as u64,
                "handed raft leadership over"
            ),
            Ok(None) => warn!(
                node_id = self.node_id,
                successor = id,
                "no new leader within {HANDOVER_ELECTION:?}; the group elects one on its own"
            ),
            Err(error) => warn!(
                node_id = self.node_id,
                successor = id,
                %error,
                "could not ask the successor to stand for election"
            ),
        }
    }

    /// What the leader says it has applied, or `None` if it cannot be asked now.
    async fn leader_applied(&self, leader: NodeId) -> Option<u64> {
        let addr = member_addr(&self.raft, leader)?;
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .ok()?
            .connect_timeout(Duration::from_millis(500))
            .timeout(Duration::from_secs(1));
        let mut client = PeerServiceClient::connect(endpoint).await.ok()?;
        let status = client
            .cluster_status(fleetmq_rpc::peer::Empty {})
            .await
            .ok()?
            .into_inner();
        status.last_applied
    }

    /// Starts feeding applied entries to the broker and returns the stored state the
    /// feed continues from: no entry is applied between reading it and attaching.
    pub async fn attach_feed(&self, tx: mpsc::Sender<Applied>) -> Result<Snapshot, NodeError> {
        let mut slot = self.feed.lock().await;
        let engine = self.engine.clone();
        let (snapshot, through) = tokio::task::spawn_blocking(move || {
            let snapshot = persist::load(engine.as_ref()).map_err(|e| e.to_string())?;
            let through = stored_applied_index(engine.as_ref()).map_err(|e| e.to_string())?;
            Ok::<_, String>((snapshot, through))
        })
        .await
        .map_err(|e| NodeError::Load(e.to_string()))?
        .map_err(NodeError::Load)?;
        // The router starts from the store as of `through`: that much is in its view.
        tx.send(Applied::Through(through))
            .await
            .map_err(|_| NodeError::Load("the broker's feed closed".into()))?;
        // The membership as of now (the log is applied): later changes come with their
        // entries.
        let members = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .nodes()
            .count();
        tx.send(Applied::Members(members))
            .await
            .map_err(|_| NodeError::Load("the broker's feed closed".into()))?;
        *slot = Some(ApplyFeed {
            node_id: self.node_id,
            tx,
        });
        Ok(snapshot)
    }

    /// How far this node's router has taken the log; the broker advances it.
    pub fn routing_view(&self) -> RoutingView {
        self.view.clone()
    }

    /// What this node's SUBACKs wait for: every other member's router has the entry.
    pub fn visibility(&self) -> Arc<dyn Visibility> {
        Arc::new(PeerVisibility::new(self.raft.clone()))
    }

    /// What a `Drain` request from another node (or `fleetmq ctl`) calls.
    pub fn attach_drain(&self, start: DrainFn) {
        let _ = self.hooks.drain.set(start);
    }

    /// What a `Kick` request from another node calls.
    pub fn attach_kick(&self, kick: KickFn) {
        let _ = self.hooks.kick.set(kick);
    }

    /// Where PUBLISHes forwarded by other nodes go from now on; also starts watching
    /// for dead nodes (when this node leads) now that sessions can move here.
    pub fn attach_router(&mut self, events: mpsc::Sender<Event>) {
        let _ = self.forward_sink.set(events);
        if self.failover.is_none() {
            self.failover = Some(tokio::spawn(run_failover(
                self.raft.clone(),
                self.engine.clone(),
            )));
        }
    }

    async fn wait_leader_caught_up(&self, node_id: NodeId) -> Result<(), NodeError> {
        self.raft
            .wait(Some(READY_TIMEOUT))
            .metrics(
                |m| {
                    m.current_leader == Some(node_id)
                        && m.last_applied.map(|l| l.index) >= m.last_log_index
                },
                "leader with its whole log applied",
            )
            .await
            .map(|_| ())
            .map_err(|e| NodeError::NotReady {
                node: node_id,
                waited: READY_TIMEOUT,
                detail: e.to_string(),
            })
    }

    /// Stops Raft and the gRPC server. A leader hands leadership over first: it picks
    /// its most caught-up voter, lets it receive the whole log, goes quiet and asks it
    /// to stand for election (openraft 0.9 has no leadership transfer of its own).
    pub async fn shutdown(self) {
        self.stop(true).await;
    }

    /// Stops as a killed process would, for the leader as well: no handover, the
    /// group notices and elects on its own. For tests of that path.
    pub async fn stop_without_handover(self) {
        self.stop(false).await;
    }

    async fn stop(mut self, hand_over: bool) {
        if let Some(failover) = self.failover.take() {
            failover.abort();
        }
        self.leader_watch.abort();
        self.stop_report.abort();
        let successor = match hand_over {
            true => self.successor().await,
            false => None,
        };
        if let Err(error) = self.raft.shutdown().await {
            warn!(%error, "raft shutdown");
        }
        if let Some((id, addr)) = successor {
            self.ask_to_campaign(id, &addr).await;
        }
        if let Some((stop, mut server)) = self.server.take() {
            let _ = stop.send(());
            // Peers keep long-lived streams open (forwarding); a graceful stop would
            // wait for them to hang up.
            if tokio::time::timeout(Duration::from_secs(2), &mut server)
                .await
                .is_err()
            {
                server.abort();
            }
        }
    }
}
