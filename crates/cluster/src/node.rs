//! One node's Raft group member: storage, the openraft instance and the gRPC server
//! that peers reach it on. A single node is a one-member group: the same path.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fleetmq_storage::KvEngine;
use openraft::{BasicNode, Config, Raft, SnapshotPolicy};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::network::{GrpcNetworkConfig, GrpcNetworkFactory, PeerGrpcServer, RaftGrpcServer};
use crate::store::open_raft_storage;
use crate::types::{NodeId, TypeConfig};

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
}

/// What a node needs to join its Raft group.
pub struct NodeOptions {
    pub node_id: NodeId,
    /// Where the Raft log lives.
    pub dir: PathBuf,
    /// The store the state machine applies to, and the broker reads from.
    pub engine: Arc<dyn KvEngine>,
    pub trees: &'static [&'static str],
    pub grpc_listen: SocketAddr,
    /// Every member's gRPC address, this node's included.
    pub members: BTreeMap<NodeId, String>,
}

/// The largest gRPC message between nodes; both ends use the same limit.
const MAX_MESSAGE: usize = 64 * 1024 * 1024;
/// How long a fresh or restarted single node may take to elect itself and replay its log.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

pub struct RaftNode {
    pub raft: Raft<TypeConfig>,
    server: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
}

fn raft_config() -> Result<Arc<Config>, NodeError> {
    let config = Config {
        cluster_name: "fleetmq".to_owned(),
        heartbeat_interval: 100,
        election_timeout_min: 300,
        election_timeout_max: 600,
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
            trees,
            grpc_listen,
            members,
        } = options;
        let (log_store, state_machine) =
            tokio::task::spawn_blocking(move || open_raft_storage(&dir, engine, trees))
                .await
                .map_err(|e| NodeError::Raft(format!("storage task failed: {e}")))??;
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
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let service = RaftGrpcServer::new(raft.clone()).into_service(MAX_MESSAGE);
        let peer_service = PeerGrpcServer::new(raft.clone()).into_service(MAX_MESSAGE);
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
            server: Some((stop_tx, server)),
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
        }
        Ok(node)
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

    /// Stops Raft and the gRPC server.
    pub async fn shutdown(mut self) {
        if let Err(error) = self.raft.shutdown().await {
            warn!(%error, "raft shutdown");
        }
        if let Some((stop, server)) = self.server.take() {
            let _ = stop.send(());
            let _ = server.await;
        }
    }
}
