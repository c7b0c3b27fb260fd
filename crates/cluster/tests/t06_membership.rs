//! Membership changes through `PeerService::AddMember` and `RemoveMember`: three
//! in-process nodes take a fourth as learner then voter, and remove it again; followers
//! send the caller to the leader.

mod net_common;

use std::collections::BTreeSet;
use std::sync::Arc;

use fleetmq_cluster::network::admin;
use fleetmq_cluster::NodeId;
use fleetmq_rpc::peer as pb;
use fleetmq_rpc::peer::peer_service_client::PeerServiceClient;
use net_common::{must_start_node, put, test_config, TestCluster, WAIT};
use tonic::transport::Channel;

async fn must_client(addr: std::net::SocketAddr) -> PeerServiceClient<Channel> {
    PeerServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
}

fn ids_with_role(reply: &pb::MembershipReply, roles: &[pb::MemberRole]) -> BTreeSet<NodeId> {
    reply
        .members
        .iter()
        .filter(|m| roles.iter().any(|&role| m.role == role as i32))
        .map(|m| m.id)
        .collect()
}

fn voters(reply: &pb::MembershipReply) -> BTreeSet<NodeId> {
    ids_with_role(reply, &[pb::MemberRole::Leader, pb::MemberRole::Voter])
}

/// Waits until node `id`'s Raft sees exactly `expected` as voters and nothing else.
async fn must_see_voters(cluster: &TestCluster, id: NodeId, expected: &BTreeSet<NodeId>) {
    cluster
        .node(id)
        .raft
        .wait(Some(WAIT))
        .metrics(
            |m| {
                let membership = m.membership_config.membership();
                membership.voter_ids().collect::<BTreeSet<_>>() == *expected
                    && membership.learner_ids().next().is_none()
            },
            format!("node {id} sees voters {expected:?}"),
        )
        .await
        .unwrap_or_else(|e| panic!("node {id} never saw voters {expected:?}: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_node_joins_as_voter_and_is_removed_again() {
    let mut cluster = TestCluster::must_start_initialized(3, test_config()).await;
    let leader = cluster.must_leader().await;
    let follower = (1..=3).find(|&id| id != leader).expect("a follower");
    let before = cluster.must_write(put("before", "joined")).await;

    let config = Arc::new(test_config().validate().expect("valid raft config"));
    let fourth = must_start_node(4, config, cluster.faults.clone()).await;
    let fourth_addr = fourth.addr;
    cluster.nodes.insert(4, fourth);

    // A follower does not change the membership: it names the leader.
    let status = must_client(cluster.node(follower).addr)
        .await
        .add_member(pb::AddMemberRequest {
            node_id: 4,
            address: fourth_addr.to_string(),
        })
        .await
        .expect_err("a follower refuses");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    let (hint_id, hint_addr) = admin::leader_hint(&status);
    assert_eq!(hint_id, Some(leader));
    assert_eq!(hint_addr, Some(cluster.node(leader).addr.to_string()));

    // The leader adds it: learner first, caught up, then voter.
    let reply = must_client(cluster.node(leader).addr)
        .await
        .add_member(pb::AddMemberRequest {
            node_id: 4,
            address: fourth_addr.to_string(),
        })
        .await
        .expect("add member through the leader")
        .into_inner();
    assert_eq!(voters(&reply), BTreeSet::from([1, 2, 3, 4]));
    assert!(ids_with_role(&reply, &[pb::MemberRole::Learner]).is_empty());
    assert_eq!(reply.leader_id, Some(leader));
    assert!(reply
        .members
        .iter()
        .any(|m| m.id == 4 && m.address == fourth_addr.to_string()));

    // The new voter has the log from before it joined, and what follows.
    cluster.must_applied(4, before).await;
    assert_eq!(
        cluster.node(4).get("settings", b"before"),
        Some(b"joined".to_vec())
    );
    let after = cluster.must_write(put("after", "four voters")).await;
    cluster.must_applied(4, after).await;
    for id in 1..=4 {
        must_see_voters(&cluster, id, &BTreeSet::from([1, 2, 3, 4])).await;
    }

    // Adding it again at another address is refused rather than silently ignored.
    let status = must_client(cluster.node(leader).addr)
        .await
        .add_member(pb::AddMemberRequest {
            node_id: 4,
            address: "127.0.0.1:1".to_owned(),
        })
        .await
        .expect_err("a second address for node 4");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");

    // Removal: the follower redirects, the leader removes.
    let status = must_client(cluster.node(follower).addr)
        .await
        .remove_member(pb::RemoveMemberRequest { node_id: 4 })
        .await
        .expect_err("a follower refuses");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    let reply = must_client(cluster.node(leader).addr)
        .await
        .remove_member(pb::RemoveMemberRequest { node_id: 4 })
        .await
        .expect("remove member through the leader")
        .into_inner();
    assert_eq!(voters(&reply), BTreeSet::from([1, 2, 3]));
    assert!(reply.members.iter().all(|m| m.id != 4), "{reply:?}");
    for id in 1..=3 {
        must_see_voters(&cluster, id, &BTreeSet::from([1, 2, 3])).await;
    }
    cluster.must_stop(4).await;
    let last = cluster.must_write(put("last", "three voters")).await;
    for id in 1..=3 {
        cluster.must_applied(id, last).await;
    }

    // Removing a node that is not a member says so.
    let status = must_client(cluster.node(leader).addr)
        .await
        .remove_member(pb::RemoveMemberRequest { node_id: 4 })
        .await
        .expect_err("node 4 is gone");
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_member_refuses_bad_requests() {
    let cluster = TestCluster::must_start_initialized(1, test_config()).await;
    let mut client = must_client(cluster.node(1).addr).await;
    for (node_id, address) in [
        (0, "127.0.0.1:7000"),
        (5, "no-port"),
        (5, ":7000"),
        (5, "h:0"),
    ] {
        let status = client
            .add_member(pb::AddMemberRequest {
                node_id,
                address: address.to_owned(),
            })
            .await
            .expect_err("invalid request");
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{node_id} {address}: {status:?}"
        );
    }
    // The last voter cannot be removed.
    let status = client
        .remove_member(pb::RemoveMemberRequest { node_id: 1 })
        .await
        .expect_err("the only voter");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
}
