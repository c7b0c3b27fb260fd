//! The leader watch: when the leader's gRPC port refuses connections (its process is
//! gone), a survivor calls the election itself instead of waiting out openraft's
//! lease-plus-timeout, the survivors agree on a new leader, and it commits.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use fleetmq_broker::command::Command;
use fleetmq_broker::{Committer, Metrics};
use fleetmq_cluster::{NodeId, NodeOptions, RaftCommitter, RaftNode};
use fleetmq_storage::{KvEngine, MemoryEngine};

const TREES: &[&str] = fleetmq_broker::persist::TREES;

fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address")
}

struct Member {
    node: RaftNode,
    engine: Arc<MemoryEngine>,
    metrics: Arc<Metrics>,
    _dir: tempfile::TempDir,
}

async fn start_three() -> BTreeMap<NodeId, Member> {
    let addrs: BTreeMap<NodeId, SocketAddr> = (1..=3).map(|id| (id, free_addr())).collect();
    let members: BTreeMap<NodeId, String> =
        addrs.iter().map(|(id, a)| (*id, a.to_string())).collect();
    let mut starting = tokio::task::JoinSet::new();
    for (id, addr) in &addrs {
        let (id, addr, members) = (*id, *addr, members.clone());
        starting.spawn(async move {
            let dir = tempfile::tempdir().expect("temporary directory");
            let engine = Arc::new(MemoryEngine::new());
            let metrics = Arc::new(Metrics::default());
            let node = RaftNode::start(NodeOptions {
                node_id: id,
                dir: dir.path().to_path_buf(),
                engine: engine.clone() as Arc<dyn KvEngine>,
                durability: fleetmq_cluster::Durability::Engine,
                trees: TREES,
                grpc_listen: addr,
                members,
                metrics: metrics.clone(),
            })
            .await
            .expect("member starts and joins");
            (
                id,
                Member {
                    node,
                    engine,
                    metrics,
                    _dir: dir,
                },
            )
        });
    }
    let mut cluster = BTreeMap::new();
    while let Some(joined) = starting.join_next().await {
        let (id, member) = joined.expect("start task");
        cluster.insert(id, member);
    }
    cluster
}

fn leader_seen_by(member: &Member) -> Option<NodeId> {
    member.node.raft.metrics().borrow().current_leader
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survivors_call_the_election_when_the_leaders_port_refuses() {
    let mut cluster = start_three().await;
    let old_leader = leader_seen_by(&cluster[&1]).expect("a leader once joined");
    let mut committer = RaftCommitter::new(cluster[&old_leader].node.raft.clone());
    let batch = vec![Command::SetSetting {
        name: "before".into(),
        value: Some(b"1".to_vec()),
    }];
    committer
        .commit(batch)
        .await
        .expect("commit before the leader stops");

    // Stopping the node closes its gRPC listener: its port now refuses, as the port
    // of a killed process does (and, as a killed process, it hands nothing over).
    let gone = cluster.remove(&old_leader).expect("leader is a member");
    gone.node.stop_without_handover().await;

    let mut new_leader = None;
    for _ in 0..200 {
        let seen: Vec<Option<NodeId>> = cluster.values().map(leader_seen_by).collect();
        if let [Some(a), Some(b)] = seen[..] {
            if a == b && a != old_leader {
                new_leader = Some(a);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let new_leader = new_leader.expect("the survivors agree on a new leader within 5 s");

    let called: u64 = cluster
        .values()
        .map(|m| m.metrics.elections_called.load(Ordering::Relaxed))
        .sum();
    assert!(
        called >= 1,
        "a survivor called the election because the leader's port refused connections"
    );

    let mut committer = RaftCommitter::new(cluster[&new_leader].node.raft.clone());
    let batch = vec![Command::SetSetting {
        name: "after".into(),
        value: Some(b"2".to_vec()),
    }];
    committer
        .commit(batch)
        .await
        .expect("the new leader commits");
    for (id, member) in &cluster {
        let mut seen = None;
        for _ in 0..100 {
            seen = member
                .engine
                .get("settings", b"after")
                .expect("engine read");
            if seen.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            seen.as_deref(),
            Some(&b"2"[..]),
            "node {id} applied the write"
        );
        assert_eq!(
            member
                .engine
                .get("settings", b"before")
                .expect("engine read"),
            Some(b"1".to_vec()),
            "node {id} kept what the old leader committed"
        );
    }
    for (_, member) in cluster {
        member.node.shutdown().await;
    }
}
