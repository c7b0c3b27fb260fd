//! The broker's committer in a three-node group: on a follower it forwards the batch to
//! the leader, and the write is applied on every node.

mod net_common;

use fleetmq_broker::command::Command;
use fleetmq_broker::Committer;
use fleetmq_cluster::RaftCommitter;

fn set(name: &str, value: &str) -> Vec<Command> {
    vec![Command::SetSetting {
        name: name.into(),
        value: Some(value.as_bytes().to_vec()),
    }]
}
use net_common::{test_config, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_commits_through_the_leader() {
    let cluster = TestCluster::must_start_initialized(3, test_config()).await;
    let leader = cluster.must_leader().await;
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");

    let mut committer = RaftCommitter::new(cluster.node(follower).raft.clone());
    for i in 0..5 {
        let commands = set(&format!("from-follower-{i}"), &format!("v{i}"));
        committer.commit(commands).await.expect("forwarded commit");
    }
    let mut on_leader = RaftCommitter::new(cluster.node(leader).raft.clone());
    on_leader
        .commit(set("from-leader", "r"))
        .await
        .expect("leader commit");

    // The metrics watch may lag the commit it reports, so wait for the leader to show
    // its own last write before using its applied index as the mark for the others.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while cluster
        .node(leader)
        .get("settings", b"from-leader")
        .is_none()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "leader never applied its write"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let last = loop {
        let m = cluster.node(leader).metrics();
        let applied = m.last_applied.expect("leader applied").index;
        if applied >= m.last_log_index.unwrap_or(0) {
            break applied;
        }
        assert!(std::time::Instant::now() < deadline, "leader metrics lag");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    for id in 1..=3 {
        cluster.must_applied(id, last).await;
        for i in 0..5 {
            assert_eq!(
                cluster
                    .node(id)
                    .get("settings", format!("from-follower-{i}").as_bytes()),
                Some(format!("v{i}").into_bytes()),
                "node {id}"
            );
        }
        assert_eq!(
            cluster.node(id).get("settings", b"from-leader"),
            Some(b"r".to_vec()),
            "node {id} (leader {leader}, applied {last})"
        );
    }
}
