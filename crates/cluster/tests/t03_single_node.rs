//! A single node is a one-member Raft group: what the committer commits is in the
//! engine, and a restart replays the log into a store that lost its unflushed writes.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use fleetmq_broker::command::Command;
use fleetmq_broker::persist::{MessageRecord, TREES};
use fleetmq_broker::Committer;
use fleetmq_cluster::{Durability, NodeOptions, RaftCommitter, RaftNode, SNAPSHOT_FILE};
use fleetmq_storage::{KvEngine, MemoryEngine};

fn retained(topic: &str) -> MessageRecord {
    MessageRecord {
        topic: topic.into(),
        payload: bytes::Bytes::from_static(b"r"),
        qos: 1,
        retain: true,
        payload_format_indicator: None,
        content_type: None,
        response_topic: None,
        correlation_data: None,
        user_properties: vec![],
        publisher: None,
        expires_at_ms: None,
    }
}

fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address")
}

async fn must_start(
    dir: &std::path::Path,
    engine: Arc<dyn KvEngine>,
    addr: SocketAddr,
) -> RaftNode {
    must_start_kept(dir, engine, addr, Durability::Engine).await
}

async fn must_start_kept(
    dir: &std::path::Path,
    engine: Arc<dyn KvEngine>,
    addr: SocketAddr,
    durability: Durability,
) -> RaftNode {
    RaftNode::start(NodeOptions {
        node_id: 1,
        dir: dir.to_path_buf(),
        engine,
        durability,
        trees: TREES,
        grpc_listen: addr,
        members: BTreeMap::from([(1, addr.to_string())]),
        metrics: Arc::new(fleetmq_broker::Metrics::default()),
    })
    .await
    .expect("single node starts, elects itself and catches up")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_batches_are_applied_and_replayed_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let engine = Arc::new(MemoryEngine::new());
    let node = must_start(dir.path(), engine.clone(), addr).await;
    let mut committer = RaftCommitter::new(node.raft.clone());
    for i in 0..20u8 {
        let mut commands = vec![Command::SetSetting {
            name: format!("s{i}"),
            value: Some(vec![i, i]),
        }];
        if i % 5 == 0 {
            let topic = format!("t/{i}");
            commands.push(Command::SetRetained {
                message: Some(retained(&topic)),
                topic,
            });
        }
        committer.commit(commands).await.expect("commit");
    }
    let clear = |topic: &str| Command::SetRetained {
        topic: topic.into(),
        message: None,
    };
    committer
        .commit(vec![clear("t/10"), clear("t/15")])
        .await
        .expect("commit");
    assert_eq!(engine.scan_prefix("settings", b"").unwrap().len(), 20);
    assert_eq!(engine.get("settings", b"s7").unwrap(), Some(vec![7, 7]));
    let retained: Vec<_> = engine
        .scan_prefix("retained", b"")
        .unwrap()
        .into_iter()
        .map(|(k, _)| String::from_utf8(k).unwrap())
        .collect();
    assert_eq!(retained, ["t/0", "t/5"]);
    node.shutdown().await;

    // The memory engine lost everything, as a store that never flushed would:
    // the node replays its durable log into it before it reports ready.
    let fresh = Arc::new(MemoryEngine::new());
    let node = must_start(dir.path(), fresh.clone(), addr).await;
    assert_eq!(fresh.scan_prefix("settings", b"").unwrap().len(), 20);
    assert!(fresh.get("retained", b"t/5").unwrap().is_some());
    assert_eq!(fresh.get("retained", b"t/10").unwrap(), None);
    node.shutdown().await;
}

/// The state machine in memory, as a node runs it: what survives a restart is the
/// snapshot file and the log after it, even once the log before the snapshot is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_machine_in_memory_comes_back_from_its_snapshot_file_and_the_log_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let file = dir.path().join(SNAPSHOT_FILE);
    let kept = || Durability::SnapshotFile(file.clone());
    let setting = |i: u8| Command::SetSetting {
        name: format!("s{i}"),
        value: Some(vec![i]),
    };

    let engine = Arc::new(MemoryEngine::new());
    let node = must_start_kept(dir.path(), engine.clone(), addr, kept()).await;
    let mut committer = RaftCommitter::new(node.raft.clone());
    for i in 0..10u8 {
        committer.commit(vec![setting(i)]).await.expect("commit");
    }
    node.raft.trigger().snapshot().await.expect("snapshot");
    let snapshot_index = {
        let mut metrics = node.raft.metrics();
        let at = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            metrics.wait_for(|m| m.snapshot.is_some()),
        )
        .await
        .expect("a snapshot within 10 s")
        .expect("raft running");
        at.snapshot.map(|id| id.index).unwrap_or_default()
    };
    assert!(file.exists(), "the snapshot is a file");
    // The log up to the snapshot is gone: only the file holds those entries now.
    node.raft
        .trigger()
        .purge_log(snapshot_index)
        .await
        .expect("purge");
    let mut metrics = node.raft.metrics();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        metrics.wait_for(|m| m.purged.is_some_and(|p| p.index >= snapshot_index)),
    )
    .await
    .expect("purged within 10 s")
    .expect("raft running");
    for i in 10..15u8 {
        committer.commit(vec![setting(i)]).await.expect("commit");
    }
    committer
        .commit(vec![Command::SetSetting {
            name: "s3".into(),
            value: None,
        }])
        .await
        .expect("commit");
    node.shutdown().await;

    let fresh = Arc::new(MemoryEngine::new());
    let node = must_start_kept(dir.path(), fresh.clone(), addr, kept()).await;
    let names: Vec<String> = fresh
        .scan_prefix("settings", b"")
        .unwrap()
        .into_iter()
        .map(|(k, _)| String::from_utf8(k).unwrap())
        .collect();
    let mut want: Vec<String> = (0..15u8)
        .filter(|i| *i != 3)
        .map(|i| format!("s{i}"))
        .collect();
    want.sort();
    assert_eq!(
        names, want,
        "before the snapshot from the file, after it from the log"
    );
    assert_eq!(fresh.get("settings", b"s12").unwrap(), Some(vec![12]));
    node.shutdown().await;
}
