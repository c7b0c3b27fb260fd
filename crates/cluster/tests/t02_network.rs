//! The Raft network over gRPC: three in-process nodes on 127.0.0.1 with real tonic
//! servers, the sled log store and `MemoryEngine` state machines, and the fault filters
//! between them. Waits are generous and nothing asserts on timing.

mod net_common;

use std::time::Duration;

use fleetmq_cluster::network::admin;
use fleetmq_cluster::{GrpcNetworkConfig, GrpcNetworkFactory, NodeId};
use fleetmq_rpc::peer as peer_pb;
use fleetmq_rpc::peer::peer_service_client::PeerServiceClient;
use net_common::{put, test_config, TestCluster, WAIT};
use openraft::error::{Fatal, RPCError, RaftError, RemoteError};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::VoteRequest;
use openraft::{BasicNode, SnapshotPolicy, Vote};

/// Writes `count` one-key batches `{prefix}-{i}` and returns the last log index.
async fn must_write_batches(cluster: &TestCluster, prefix: &str, count: usize) -> u64 {
    let mut last = 0;
    for i in 0..count {
        last = cluster
            .must_write(put(&format!("{prefix}-{i}"), &format!("value-{i}")))
            .await;
    }
    last
}

/// Checks that node `id` holds every batch [`must_write_batches`] wrote.
fn assert_has_batches(cluster: &TestCluster, id: NodeId, prefix: &str, count: usize) {
    let node = cluster.node(id);
    for i in 0..count {
        let key = format!("{prefix}-{i}");
        assert_eq!(
            node.get("settings", key.as_bytes()),
            Some(format!("value-{i}").into_bytes()),
            "node {id} misses {key}"
        );
    }
}

fn followers(cluster: &TestCluster, leader: NodeId) -> Vec<NodeId> {
    cluster
        .nodes
        .keys()
        .copied()
        .filter(|&id| id != leader)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_elect_a_leader_and_apply_every_write() {
    let cluster = TestCluster::must_start_initialized(3, test_config()).await;

    let last = must_write_batches(&cluster, "k", 20).await;

    for &id in cluster.nodes.keys() {
        cluster.must_applied(id, last).await;
        assert_has_batches(&cluster, id, "k", 20);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_leader_elects_another_and_writes_continue() {
    let mut cluster = TestCluster::must_start_initialized(3, test_config()).await;
    let before = must_write_batches(&cluster, "before", 5).await;
    let old_leader = cluster.must_leader().await;
    for &id in cluster.nodes.keys() {
        cluster.must_applied(id, before).await;
    }

    cluster.must_stop(old_leader).await;

    let new_leader = cluster.must_leader().await;
    assert_ne!(new_leader, old_leader);
    let after = must_write_batches(&cluster, "after", 5).await;
    for &id in cluster.nodes.keys() {
        cluster.must_applied(id, after).await;
        assert_has_batches(&cluster, id, "before", 5);
        assert_has_batches(&cluster, id, "after", 5);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_follower_catches_up_after_heal() {
    let cluster = TestCluster::must_start_initialized(3, test_config()).await;
    let leader = cluster.must_leader().await;
    let [cut, other] = followers(&cluster, leader)[..] else {
        panic!("three nodes have two followers");
    };

    cluster.faults.isolate(cut);
    let last = must_write_batches(&cluster, "during", 10).await;
    // The majority commits without the cut node...
    cluster.must_applied(other, last).await;
    // ...which cannot have received the entries.
    let cut_applied = cluster
        .node(cut)
        .metrics()
        .last_applied
        .map(|log_id| log_id.index);
    assert!(
        cut_applied < Some(last),
        "isolated node {cut} applied {cut_applied:?}"
    );

    cluster.faults.heal();
    cluster.must_applied(cut, last).await;
    assert_has_batches(&cluster, cut, "during", 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_follower_catches_up_by_snapshot_after_log_purge() {
    let config = openraft::Config {
        snapshot_policy: SnapshotPolicy::LogsSinceLast(10),
        max_in_snapshot_log_to_keep: 0,
        purge_batch_size: 1,
        // Small chunks, so the snapshot crosses the network in several InstallSnapshot calls.
        snapshot_max_chunk_size: 256,
        ..test_config()
    };
    let cluster = TestCluster::must_start_initialized(3, config).await;
    let leader = cluster.must_leader().await;
    let cut = followers(&cluster, leader)[0];

    cluster.faults.isolate(cut);
    let cut_last_log = cluster.node(cut).metrics().last_log_index.unwrap_or(0);
    let last = must_write_batches(&cluster, "lag", 40).await;

    // Once every other node has purged past the cut node's log, entries alone cannot catch
    // it up, whichever of them leads after the heal.
    for &id in cluster.nodes.keys().filter(|&&id| id != cut) {
        cluster
            .node(id)
            .raft
            .wait(Some(WAIT))
            .metrics(
                |m| m.purged.is_some_and(|p| p.index > cut_last_log),
                format!("node {id} purges past index {cut_last_log}"),
            )
            .await
            .unwrap_or_else(|e| panic!("node {id} did not snapshot and purge: {e}"));
    }

    cluster.faults.heal();
    cluster.must_applied(cut, last).await;
    assert_has_batches(&cluster, cut, "lag", 40);
    assert!(
        cluster.node(cut).metrics().snapshot.is_some(),
        "node {cut} should hold the installed snapshot"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_commit_through_dropped_and_delayed_messages() {
    let cluster = TestCluster::must_start_initialized(3, test_config()).await;

    cluster.faults.drop_messages(None, None, 0.2);
    cluster
        .faults
        .delay_messages(None, None, Duration::from_millis(10));
    let last = must_write_batches(&cluster, "lossy", 10).await;
    cluster.faults.heal();

    for &id in cluster.nodes.keys() {
        cluster.must_applied(id, last).await;
        assert_has_batches(&cluster, id, "lossy", 10);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_raft_error_travels_back_typed() {
    let cluster = TestCluster::must_start(1, test_config()).await;
    let node = cluster.node(1);
    // The server keeps answering, but its Raft has stopped: every call fails remotely.
    node.raft.shutdown().await.expect("raft shutdown");

    let mut factory = GrpcNetworkFactory::new(9, GrpcNetworkConfig::default());
    let mut client = factory.new_client(1, &BasicNode::new(node.addr)).await;
    let result = client
        .vote(
            VoteRequest::new(Vote::new(1, 9), None),
            RPCOption::new(Duration::from_secs(5)),
        )
        .await;

    match result {
        Err(RPCError::RemoteError(RemoteError {
            target: 1,
            source: RaftError::Fatal(Fatal::Stopped),
            ..
        })) => {}
        other => panic!("expected a remote Fatal::Stopped, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_nobody_listens_on_is_unreachable() {
    // A port that was free a moment ago and has no listener now.
    let addr = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("local addr")
    };
    let mut factory = GrpcNetworkFactory::new(1, GrpcNetworkConfig::default());
    let mut client = factory.new_client(2, &BasicNode::new(addr)).await;

    let result = client
        .vote(
            VoteRequest::new(Vote::new(1, 1), None),
            RPCOption::new(Duration::from_secs(5)),
        )
        .await;

    assert!(
        matches!(result, Err(RPCError::Unreachable(_))),
        "expected Unreachable, got {result:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_write_on_a_follower_names_the_leader() {
    let cluster = TestCluster::must_start_initialized(3, test_config()).await;
    let leader = cluster.must_leader().await;
    let follower = followers(&cluster, leader)[0];
    let leader_addr = cluster.node(leader).addr.to_string();
    let data = postcard::to_stdvec(&put("via-grpc", "v")).expect("encode request");

    let mut to_follower =
        PeerServiceClient::connect(format!("http://{}", cluster.node(follower).addr))
            .await
            .expect("connect to follower");
    let status = to_follower
        .client_write(peer_pb::ClientWriteRequest { data: data.clone() })
        .await
        .expect_err("a follower refuses writes");
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(
        admin::leader_hint(&status),
        (Some(leader), Some(leader_addr.clone()))
    );
    assert!(
        status.message().contains(&leader_addr),
        "{}",
        status.message()
    );

    let mut to_leader = PeerServiceClient::connect(format!("http://{leader_addr}"))
        .await
        .expect("connect to leader");
    let reply = to_leader
        .client_write(peer_pb::ClientWriteRequest { data })
        .await
        .expect("the leader accepts writes")
        .into_inner();
    cluster.must_applied(follower, reply.log_index).await;
    assert_eq!(
        cluster.node(follower).get("settings", b"via-grpc"),
        Some(b"v".to_vec())
    );

    let status = to_follower
        .cluster_status(peer_pb::Empty {})
        .await
        .expect("cluster status")
        .into_inner();
    assert_eq!(status.node_id, follower);
    assert_eq!(status.leader_id, Some(leader));
    assert_eq!(status.members.len(), 3);
    assert!(status.last_applied >= Some(reply.log_index));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_from_the_leader_that_do_not_decode_are_refused_and_counted() {
    let cluster = TestCluster::must_start(1, test_config()).await;
    let node = cluster.node(1);
    let applied_before = node.metrics().last_applied.map_or(0, |id| id.index);
    let mut client = fleetmq_rpc::raft::raft_service_client::RaftServiceClient::connect(format!(
        "http://{}",
        node.addr
    ))
    .await
    .expect("connect to the node's raft service");

    // What a newer release's leader could send: bytes this build's entries are not.
    let status = client
        .append_entries(fleetmq_rpc::raft::RaftRequest {
            data: vec![0xff; 40],
        })
        .await
        .expect_err("undecodable entries must be refused, not applied");

    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("cannot decode"),
        "the refusal says why: {status:?}"
    );
    assert_eq!(
        node.metrics
            .entries_undecodable
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert!(node
        .metrics
        .render()
        .contains("fleetmq_replicated_entries_undecodable_total 1"));
    let applied_after = node.metrics().last_applied.map_or(0, |id| id.index);
    assert_eq!(applied_before, applied_after, "nothing was applied");
}
