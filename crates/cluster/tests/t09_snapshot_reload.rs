//! A snapshot installed under a running broker: the state machine hands the broker's
//! router the whole store on its apply feed, so the router reloads instead of going on
//! from entries it never saw.

#![allow(clippy::unwrap_used)]

mod net_common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use fleetmq_broker::command::{Command, Fence};
use fleetmq_broker::persist::{self, OwnerRecord, SessionRecord};
use fleetmq_broker::Applied;
use fleetmq_cluster::{
    open_raft_storage, ApplyFeed, ClusterRequest, Faults, FaultyNetworkFactory, GrpcNetworkConfig,
    GrpcNetworkFactory, NodeId, RaftGrpcServer, StateMachineStore, TypeConfig,
};
use fleetmq_storage::{KvEngine, MemoryEngine};
use net_common::{test_config, WAIT};
use openraft::error::{ClientWriteError, RaftError};
use openraft::storage::RaftStateMachine;
use openraft::testing::log_id;
use openraft::{BasicNode, Entry, EntryPayload, Raft, RaftSnapshotBuilder, SnapshotPolicy};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::TcpListenerStream;

fn session() -> SessionRecord {
    SessionRecord {
        protocol_level: 5,
        expiry_interval: 600,
        subscriptions: vec![],
        will: None,
        disconnected_at_ms: None,
    }
}

/// Node `origin` creates the session of `client`.
fn new_session(origin: NodeId, client: &str) -> ClusterRequest {
    let owner = OwnerRecord {
        node: origin,
        epoch: 1,
    };
    ClusterRequest::commands(
        origin,
        0,
        vec![
            Command::Claim {
                client: client.into(),
                expected: None,
                owner,
            },
            Command::SaveSession {
                fence: Fence {
                    client: client.into(),
                    owner: Some(owner),
                },
                record: session(),
            },
        ],
    )
}

fn entry(index: u64, request: ClusterRequest) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(1, 1, index),
        payload: EntryPayload::Normal(request),
    }
}

fn state_machine() -> (Arc<dyn KvEngine>, StateMachineStore) {
    let engine: Arc<dyn KvEngine> = Arc::new(MemoryEngine::new());
    let sm = StateMachineStore::new(Arc::clone(&engine), persist::TREES).unwrap();
    (engine, sm)
}

fn clients(stored: &persist::Snapshot) -> Vec<&str> {
    stored.sessions.iter().map(|(c, _)| c.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn installing_a_snapshot_hands_the_broker_the_whole_store() {
    // The leader applied two entries; the follower only the first.
    let (_, mut leader) = state_machine();
    leader
        .apply([entry(1, new_session(1, "a")), entry(2, new_session(1, "b"))])
        .await
        .unwrap();
    let snapshot = leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let (_, mut older) = state_machine();
    older.apply([entry(1, new_session(1, "a"))]).await.unwrap();
    let older = older
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();

    let (engine, mut follower) = state_machine();
    follower
        .apply([entry(1, new_session(1, "a"))])
        .await
        .unwrap();
    let (tx, mut rx) = mpsc::channel(16);
    *follower.feed_slot().lock().await = Some(ApplyFeed { node_id: 2, tx });
    follower
        .install_snapshot(&snapshot.meta, snapshot.snapshot)
        .await
        .unwrap();

    let Ok(Applied::Reset(stored)) = rx.try_recv() else {
        panic!("the feed should get the installed state");
    };
    assert_eq!(clients(&stored), ["a", "b"]);
    assert_eq!(stored.owners.len(), 2);
    assert_eq!(
        clients(&persist::load(engine.as_ref()).unwrap()),
        ["a", "b"],
        "what the feed got is what the store holds"
    );
    let Ok(Applied::Through(through)) = rx.try_recv() else {
        panic!("the feed should say how far the installed state goes");
    };
    assert_eq!(Some(through), snapshot.meta.last_log_id.map(|id| id.index));
    assert!(rx.try_recv().is_err(), "one reset, nothing else");

    // An older snapshot is not installed: nothing to reload.
    follower
        .install_snapshot(&older.meta, older.snapshot)
        .await
        .unwrap();
    assert!(rx.try_recv().is_err());
}

/// One Raft node with its apply feed attached, as a running broker has it.
struct FedNode {
    raft: Raft<TypeConfig>,
    feed: mpsc::Receiver<Applied>,
    stop: oneshot::Sender<()>,
    _dir: tempfile::TempDir,
}

async fn start_fed_node(
    id: NodeId,
    config: Arc<openraft::Config>,
    faults: Faults,
    listener: tokio::net::TcpListener,
) -> FedNode {
    let dir = tempfile::tempdir().unwrap();
    let engine: Arc<dyn KvEngine> = Arc::new(MemoryEngine::new());
    let path = dir.path().to_owned();
    let (log_store, state_machine) =
        tokio::task::spawn_blocking(move || open_raft_storage(&path, engine, persist::TREES))
            .await
            .unwrap()
            .unwrap();
    // Roomy: nobody drains it until the end, and apply waits on a full feed.
    let (tx, feed) = mpsc::channel(4096);
    *state_machine.feed_slot().lock().await = Some(ApplyFeed { node_id: id, tx });
    let network = FaultyNetworkFactory::new(
        id,
        GrpcNetworkFactory::new(id, GrpcNetworkConfig::default()),
        faults,
    );
    let raft = Raft::new(id, config, network, log_store, state_machine)
        .await
        .unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tonic::transport::Server::builder()
        .add_service(RaftGrpcServer::new(raft.clone()).into_service(16 * 1024 * 1024));
    tokio::spawn(server.serve_with_incoming_shutdown(
        TcpListenerStream::new(listener),
        async move {
            let _ = stopped.await;
        },
    ));
    FedNode {
        raft,
        feed,
        stop,
        _dir: dir,
    }
}

async fn must_write(nodes: &BTreeMap<NodeId, FedNode>, request: ClusterRequest) -> u64 {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        for node in nodes.values() {
            match node.raft.client_write(request.clone()).await {
                Ok(response) => return response.log_id.index,
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {}
                Err(e) => panic!("write failed: {e}"),
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no leader took the write"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_past_the_log_tail_reloads_its_broker_from_the_snapshot() {
    let config = openraft::Config {
        snapshot_policy: SnapshotPolicy::LogsSinceLast(10),
        max_in_snapshot_log_to_keep: 0,
        purge_batch_size: 1,
        ..test_config()
    };
    let config = Arc::new(config.validate().unwrap());
    let faults = Faults::default();
    let mut members = BTreeMap::new();
    let mut listeners = Vec::new();
    for id in 1..=3 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        members.insert(id, BasicNode::new(listener.local_addr().unwrap()));
        listeners.push((id, listener));
    }
    let mut nodes = BTreeMap::new();
    for (id, listener) in listeners {
        let node = start_fed_node(id, Arc::clone(&config), faults.clone(), listener).await;
        nodes.insert(id, node);
    }
    nodes[&1].raft.initialize(members).await.unwrap();
    must_write(&nodes, new_session(1, "before")).await;
    let leader = nodes[&1]
        .raft
        .wait(Some(WAIT))
        .metrics(|m| m.current_leader.is_some(), "a leader")
        .await
        .unwrap()
        .current_leader
        .unwrap();
    let cut = *nodes.keys().find(|id| **id != leader).unwrap();
    let cut_last_log = nodes[&cut]
        .raft
        .metrics()
        .borrow()
        .last_log_index
        .unwrap_or(0);

    faults.isolate(cut);
    let mut last = 0;
    for i in 0..30 {
        last = must_write(&nodes, new_session(leader, &format!("lag-{i:02}"))).await;
    }
    // Once every other node has purged past the cut node's log, only a snapshot can
    // catch it up, whichever of them leads after the heal.
    for (id, node) in nodes.iter().filter(|(id, _)| **id != cut) {
        node.raft
            .wait(Some(WAIT))
            .metrics(
                |m| m.purged.is_some_and(|p| p.index > cut_last_log),
                format!("node {id} purges past {cut_last_log}"),
            )
            .await
            .unwrap();
    }
    faults.heal();
    nodes[&cut]
        .raft
        .wait(Some(WAIT))
        .applied_index_at_least(Some(last), "the cut node catches up")
        .await
        .unwrap();

    let mut cut_node = nodes.remove(&cut).unwrap();
    let mut resets = Vec::new();
    while let Ok(item) = cut_node.feed.try_recv() {
        if let Applied::Reset(stored) = item {
            resets.push(stored);
        }
    }
    let Some(stored) = resets.first() else {
        panic!("the cut node's feed got no reset");
    };
    let lagged = clients(stored)
        .iter()
        .filter(|c| c.starts_with("lag-"))
        .count();
    assert!(
        lagged > 0,
        "the reset holds what was written while the node was cut off: {:?}",
        clients(stored)
    );
    assert!(clients(stored).contains(&"before"));

    for node in nodes.into_values().chain([cut_node]) {
        let _ = node.stop.send(());
        node.raft.shutdown().await.unwrap();
    }
}
