//! An in-process cluster of FleetMQ Raft nodes talking real gRPC on 127.0.0.1, each with
//! the sled log store, a `MemoryEngine` state machine and the real `PeerService`, and the
//! fault filters between them. Helpers named `must_*` panic with a message when the
//! cluster does not get there within [`WAIT`].

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fleetmq_broker::command::Command;
use fleetmq_broker::Metrics;
use fleetmq_cluster::{
    open_raft_storage, ClusterRequest, Faults, FaultyNetworkFactory, ForwardSink,
    GrpcNetworkConfig, GrpcNetworkFactory, NodeId, PeerGrpcServer, RaftGrpcServer, TypeConfig,
};
use fleetmq_storage::{KvEngine, MemoryEngine};
use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, Config, Raft, RaftMetrics, ServerState};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;

/// The trees replicated commands may write.
pub const TREES: &[&str] = fleetmq_broker::persist::TREES;

/// How long any `must_*` helper waits: generous, because CI machines are slow and nothing
/// here measures time.
pub const WAIT: Duration = Duration::from_secs(30);

const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// Test timings: heartbeat 100 ms, election timeout 300 to 600 ms.
pub fn test_config() -> Config {
    Config {
        cluster_name: "fleetmq-test".to_owned(),
        heartbeat_interval: 100,
        election_timeout_min: 300,
        election_timeout_max: 600,
        // Per snapshot chunk; loopback is fast, a loaded CI machine may not be.
        install_snapshot_timeout: 2_000,
        ..Config::default()
    }
}

type ServerHandle = JoinHandle<Result<(), tonic::transport::Error>>;

/// One running node: its Raft, its gRPC server, and the engine its state machine writes.
pub struct TestNode {
    pub id: NodeId,
    pub addr: SocketAddr,
    pub raft: Raft<TypeConfig>,
    pub engine: Arc<MemoryEngine>,
    /// Where its `PeerService` hands forwarded PUBLISHes; unset (Forward answers
    /// UNAVAILABLE) until a test sets it.
    pub forward_sink: ForwardSink,
    pub metrics: Arc<Metrics>,
    server: Option<(oneshot::Sender<()>, ServerHandle)>,
    _dir: TempDir,
}

impl TestNode {
    /// The node's latest metrics.
    pub fn metrics(&self) -> RaftMetrics<NodeId, BasicNode> {
        self.raft.metrics().borrow().clone()
    }

    /// A value the state machine wrote, read straight from the engine.
    pub fn get(&self, tree: &str, key: &[u8]) -> Option<Vec<u8>> {
        self.engine.get(tree, key).expect("memory engine read")
    }
}

/// Nodes `1..=n`, every network client filtered by the shared [`Faults`].
pub struct TestCluster {
    pub nodes: BTreeMap<NodeId, TestNode>,
    pub faults: Faults,
}

impl TestCluster {
    /// Starts `n` nodes with `config`, uninitialized.
    pub async fn must_start(n: u64, config: Config) -> Self {
        let config = Arc::new(config.validate().expect("valid raft config"));
        let faults = Faults::default();
        let mut nodes = BTreeMap::new();
        for id in 1..=n {
            let node = must_start_node(id, Arc::clone(&config), faults.clone()).await;
            nodes.insert(id, node);
        }
        Self { nodes, faults }
    }

    /// Starts `n` nodes and makes them a cluster of `n` voters with an elected leader.
    pub async fn must_start_initialized(n: u64, config: Config) -> Self {
        let cluster = Self::must_start(n, config).await;
        let members: BTreeMap<NodeId, BasicNode> = cluster
            .nodes
            .values()
            .map(|node| (node.id, BasicNode::new(node.addr)))
            .collect();
        cluster
            .node(1)
            .raft
            .initialize(members)
            .await
            .expect("initialize node 1");
        cluster.must_leader().await;
        cluster
    }

    pub fn node(&self, id: NodeId) -> &TestNode {
        self.nodes
            .get(&id)
            .unwrap_or_else(|| panic!("node {id} is not running"))
    }

    /// Waits until every running node names the same running node as leader, and that
    /// node is leading; returns its id.
    pub async fn must_leader(&self) -> NodeId {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(leader) = self.agreed_leader() {
                return leader;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no agreed leader within {WAIT:?}: {:?}",
                self.nodes
                    .values()
                    .map(|n| (n.id, n.metrics().state, n.metrics().current_leader))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn agreed_leader(&self) -> Option<NodeId> {
        let mut leaders = self
            .nodes
            .values()
            .map(|node| node.metrics().current_leader);
        let first = leaders.next()??;
        let agreed = leaders.all(|leader| leader == Some(first));
        let leading = self
            .nodes
            .get(&first)
            .is_some_and(|node| node.metrics().state == ServerState::Leader);
        (agreed && leading).then_some(first)
    }

    /// Proposes `request` through the current leader, retrying when leadership moves,
    /// and returns the log index it was committed at.
    pub async fn must_write(&self, request: ClusterRequest) -> u64 {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let leader = self.must_leader().await;
            match self.node(leader).raft.client_write(request.clone()).await {
                Ok(response) => return response.log_id.index,
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {}
                Err(e) => panic!("write through node {leader} failed: {e}"),
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "write not committed within {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until node `id` has applied the log up to `index`.
    pub async fn must_applied(&self, id: NodeId, index: u64) {
        self.node(id)
            .raft
            .wait(Some(WAIT))
            .applied_index_at_least(Some(index), format!("node {id} applies {index}"))
            .await
            .unwrap_or_else(|e| panic!("node {id} did not apply {index}: {e}"));
    }

    /// Stops node `id` as a crash would, from the others' point of view: its server stops
    /// answering and its Raft stops.
    pub async fn must_stop(&mut self, id: NodeId) {
        let mut node = self
            .nodes
            .remove(&id)
            .unwrap_or_else(|| panic!("node {id} is not running"));
        if let Some((shutdown, handle)) = node.server.take() {
            // The server may already have stopped; then nobody listens and that is fine.
            let _ = shutdown.send(());
            match tokio::time::timeout(WAIT, handle).await {
                Ok(joined) => {
                    let served = joined.expect("server task");
                    served.expect("server stopped cleanly");
                }
                Err(_) => panic!("node {id}'s server did not stop within {WAIT:?}"),
            }
        }
        node.raft.shutdown().await.expect("raft shutdown");
    }
}

/// One command that writes `value` under `key` in the `settings` tree.
pub fn put(key: &str, value: &str) -> ClusterRequest {
    ClusterRequest::commands(
        0,
        0,
        vec![Command::SetSetting {
            name: key.to_owned(),
            value: Some(value.as_bytes().to_vec()),
        }],
    )
}

/// Starts one node: binds its port first (so its address is known before anyone needs
/// it), opens its storage in a fresh directory, and serves `RaftService` and
/// `PeerService` there.
pub async fn must_start_node(id: NodeId, config: Arc<Config>, faults: Faults) -> TestNode {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local addr");

    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Arc::new(MemoryEngine::new());
    let (log_store, state_machine) = {
        let path = dir.path().to_owned();
        let engine: Arc<dyn KvEngine> = engine.clone();
        tokio::task::spawn_blocking(move || open_raft_storage(&path, engine, TREES))
            .await
            .expect("storage task")
            .expect("open raft storage")
    };

    let grpc_config = GrpcNetworkConfig {
        max_message_size: MAX_MESSAGE,
        ..GrpcNetworkConfig::default()
    };
    let network = FaultyNetworkFactory::new(id, GrpcNetworkFactory::new(id, grpc_config), faults);
    let raft = Raft::new(id, config, network, log_store, state_machine)
        .await
        .expect("start raft");

    let forward_sink = ForwardSink::default();
    let metrics = Arc::new(Metrics::default());
    let peer_service = PeerGrpcServer::with_forward_sink(
        raft.clone(),
        Arc::clone(&forward_sink),
        Arc::clone(&metrics),
        fleetmq_broker::RoutingView::default(),
        Default::default(),
    );
    let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
    let router = tonic::transport::Server::builder()
        .add_service(
            RaftGrpcServer::with_leader_contact(
                raft.clone(),
                fleetmq_cluster::leader_watch::LeaderContact::default(),
                Arc::clone(&metrics),
            )
            .into_service(MAX_MESSAGE),
        )
        .add_service(peer_service.into_service(MAX_MESSAGE));
    let handle = tokio::spawn(router.serve_with_incoming_shutdown(
        TcpListenerStream::new(listener),
        async move {
            // A dropped sender stops the server too.
            let _ = shutdown_rx.await;
        },
    ));

    TestNode {
        id,
        addr,
        raft,
        engine,
        forward_sink,
        metrics,
        server: Some((shutdown_tx, handle)),
        _dir: dir,
    }
}
