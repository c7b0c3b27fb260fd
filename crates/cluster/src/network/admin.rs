//! The Raft half of `PeerService`: cluster status, client writes forwarded to the
//! leader, and membership changes. The service implementation, which also owns PUBLISH
//! forwarding and takeover, calls these so that Raft errors map to gRPC statuses in one
//! place.

use std::collections::BTreeSet;
use std::time::Duration;

use fleetmq_rpc::peer as pb;
use openraft::error::{ClientWriteError, ForwardToLeader, RaftError};
use openraft::raft::ClientWriteResponse;
use openraft::{BasicNode, ChangeMembers, Membership, Raft, ServerState};
use tonic::metadata::MetadataValue;
use tonic::Status;
use tracing::info;

use super::wire;
use crate::{ClusterRequest, NodeId, TypeConfig};

/// Metadata key of an UNAVAILABLE "not leader" status: the leader's node id.
pub const LEADER_ID_METADATA: &str = "fleetmq-leader-id";
/// Metadata key of an UNAVAILABLE "not leader" status: the leader's gRPC address.
pub const LEADER_ADDR_METADATA: &str = "fleetmq-leader-addr";

/// How long [`add_member`] waits for a new learner to catch up with the log before it
/// gives up (the node then stays a learner).
pub const ADD_MEMBER_CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);

/// Every node of `membership` with its role, as `leader` makes it.
fn members(membership: &Membership<NodeId, BasicNode>, leader: Option<NodeId>) -> Vec<pb::Member> {
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    membership
        .nodes()
        .map(|(&id, node)| {
            let role = if leader == Some(id) && voters.contains(&id) {
                pb::MemberRole::Leader
            } else if voters.contains(&id) {
                pb::MemberRole::Voter
            } else {
                pb::MemberRole::Learner
            };
            pb::Member {
                id,
                address: node.addr.clone(),
                role: role.into(),
            }
        })
        .collect()
}

/// This node's view of the Raft group, from its latest metrics.
pub fn cluster_status(raft: &Raft<TypeConfig>) -> pb::ClusterStatusReply {
    let metrics = raft.metrics().borrow().clone();
    let members = members(
        metrics.membership_config.membership(),
        metrics.current_leader,
    );
    let state = match metrics.state {
        ServerState::Leader => pb::NodeState::Leader,
        ServerState::Follower => pb::NodeState::Follower,
        ServerState::Candidate => pb::NodeState::Candidate,
        ServerState::Learner => pb::NodeState::Learner,
        ServerState::Shutdown => pb::NodeState::Shutdown,
    };
    pb::ClusterStatusReply {
        node_id: metrics.id,
        leader_id: metrics.current_leader,
        term: metrics.current_term,
        members,
        last_log_index: metrics.last_log_index,
        last_applied: metrics.last_applied.map(|log_id| log_id.index),
        state: state.into(),
    }
}

/// The longest a [`campaign`] may be asked to wait for a new leader.
const CAMPAIGN_MAX: Duration = Duration::from_secs(10);
/// How long one election round may take before this node stands again: a vote is
/// refused while the voter's lease from the leaving leader still runs.
const CAMPAIGN_ROUND: Duration = Duration::from_millis(200);

/// Stands for election until a leader other than `leaving_node` is known, or the
/// request's time runs out; answers the leader known then.
pub async fn campaign(
    raft: &Raft<TypeConfig>,
    request: pb::CampaignRequest,
) -> Result<pb::CampaignReply, Status> {
    let leaving = request.leaving_node;
    let deadline = tokio::time::Instant::now()
        + Duration::from_millis(request.timeout_ms.into()).min(CAMPAIGN_MAX);
    let elected = |leader: Option<NodeId>| leader.filter(|&id| id != leaving);
    loop {
        if let Some(leader) = elected(raft.metrics().borrow().current_leader) {
            return Ok(pb::CampaignReply {
                leader_id: Some(leader),
            });
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(pb::CampaignReply { leader_id: None });
        }
        raft.trigger()
            .elect()
            .await
            .map_err(|e| Status::unavailable(format!("raft stopped: {e}")))?;
        // Waiting for the round ends early when a leader is elected; a timeout here
        // only means another round.
        let _ = raft
            .wait(Some(CAMPAIGN_ROUND))
            .metrics(|m| elected(m.current_leader).is_some(), "a new leader")
            .await;
    }
}

/// Proposes the [`ClusterRequest`] in `request` through `raft` and waits until it is
/// applied here.
///
/// A node that is not the leader answers UNAVAILABLE with the leader's id and address,
/// when known, in the [`LEADER_ID_METADATA`] and [`LEADER_ADDR_METADATA`] metadata and in
/// the message; the caller retries there.
pub async fn client_write(
    raft: &Raft<TypeConfig>,
    request: pb::ClientWriteRequest,
) -> Result<pb::ClientWriteReply, Status> {
    let command: ClusterRequest = wire::decode("cluster request", &request.data)
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    let response = raft.client_write(command).await.map_err(write_error)?;
    Ok(pb::ClientWriteReply {
        log_index: response.log_id.index,
        log_term: response.log_id.leader_id.term,
        data: wire::encode("cluster response", &response.data)
            .map_err(|e| Status::internal(e.to_string()))?,
    })
}

/// The status of a failed write or membership change.
fn write_error(error: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> Status {
    match error {
        RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => not_leader(&forward),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            Status::failed_precondition(e.to_string())
        }
        // This node's Raft has stopped: another node may take the write.
        RaftError::Fatal(e) => Status::unavailable(format!("raft stopped: {e}")),
    }
}

/// Refuses with the "not leader" status unless this node leads, so that a follower's
/// possibly stale view of the membership never decides a change.
fn ensure_leader(raft: &Raft<TypeConfig>) -> Result<Membership<NodeId, BasicNode>, Status> {
    let metrics = raft.metrics().borrow().clone();
    let membership = metrics.membership_config.membership().clone();
    if metrics.state == ServerState::Leader {
        return Ok(membership);
    }
    let leader_node = metrics
        .current_leader
        .and_then(|id| membership.get_node(&id).cloned());
    Err(not_leader(&ForwardToLeader {
        leader_id: metrics.current_leader,
        leader_node,
    }))
}

/// Whether `address` looks like the `host:port` a member is reached at.
fn valid_member_address(address: &str) -> bool {
    address
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0))
}

/// The reply to a membership change that committed as `response`.
fn membership_reply(
    raft: &Raft<TypeConfig>,
    response: &ClientWriteResponse<TypeConfig>,
) -> pb::MembershipReply {
    let metrics = raft.metrics().borrow().clone();
    // The response carries the membership the change committed; the metrics may not
    // have caught up with it yet.
    let membership = response
        .membership
        .as_ref()
        .unwrap_or(metrics.membership_config.membership());
    pb::MembershipReply {
        members: members(membership, metrics.current_leader),
        leader_id: metrics.current_leader,
        log_index: response.log_id.index,
    }
}

/// Adds node `request.node_id`, reached at `request.address`, as a voter: first as a
/// learner, waiting at most [`ADD_MEMBER_CATCH_UP_TIMEOUT`] until it has caught up with
/// the log, then as a voter. Adding a node that is already a member at the same address
/// promotes it if it is a learner and changes nothing otherwise.
///
/// A node that is not the leader answers UNAVAILABLE as [`client_write`] does.
pub async fn add_member(
    raft: &Raft<TypeConfig>,
    request: pb::AddMemberRequest,
) -> Result<pb::MembershipReply, Status> {
    let pb::AddMemberRequest { node_id, address } = request;
    if node_id == 0 {
        return Err(Status::invalid_argument("node ids start at 1"));
    }
    if !valid_member_address(&address) {
        return Err(Status::invalid_argument(format!(
            "{address:?} is not a host:port address"
        )));
    }
    let membership = ensure_leader(raft)?;
    if let Some(existing) = membership.get_node(&node_id) {
        if existing.addr != address {
            return Err(Status::failed_precondition(format!(
                "node {node_id} is already a member at {}; remove it first to change its address",
                existing.addr
            )));
        }
    }

    info!(node_id, %address, "adding a learner and waiting for it to catch up");
    let added = tokio::time::timeout(
        ADD_MEMBER_CATCH_UP_TIMEOUT,
        raft.add_learner(node_id, BasicNode::new(&address), true),
    )
    .await;
    match added {
        Ok(result) => {
            result.map_err(write_error)?;
        }
        Err(_elapsed) => {
            return Err(Status::deadline_exceeded(format!(
                "node {node_id} at {address} did not catch up with the log within \
                 {ADD_MEMBER_CATCH_UP_TIMEOUT:?}; it stays a learner: check that it runs and \
                 is reachable, then add it again"
            )))
        }
    }

    info!(node_id, "promoting the learner to voter");
    let response = raft
        .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([node_id])), false)
        .await
        .map_err(write_error)?;
    Ok(membership_reply(raft, &response))
}

/// Removes node `request.node_id` from the group, voter or learner. A voter removed
/// this way is dropped from the membership, not kept as a learner.
///
/// A node that is not the leader answers UNAVAILABLE as [`client_write`] does; a node
/// that is not a member, NOT_FOUND; removing the last voter, FAILED_PRECONDITION.
pub async fn remove_member(
    raft: &Raft<TypeConfig>,
    request: pb::RemoveMemberRequest,
) -> Result<pb::MembershipReply, Status> {
    let node_id = request.node_id;
    let membership = ensure_leader(raft)?;
    let ids = BTreeSet::from([node_id]);
    let change = if membership.voter_ids().any(|id| id == node_id) {
        ChangeMembers::RemoveVoters(ids)
    } else if membership.get_node(&node_id).is_some() {
        ChangeMembers::RemoveNodes(ids)
    } else {
        return Err(Status::not_found(format!("node {node_id} is not a member")));
    };
    info!(node_id, "removing a member");
    let response = raft
        .change_membership(change, false)
        .await
        .map_err(write_error)?;
    Ok(membership_reply(raft, &response))
}

/// The UNAVAILABLE status that sends a caller to the leader.
fn not_leader(forward: &ForwardToLeader<NodeId, BasicNode>) -> Status {
    let addr = forward.leader_node.as_ref().map(|node| node.addr.as_str());
    let message = match (forward.leader_id, addr) {
        (Some(id), Some(addr)) => format!("not the leader; the leader is node {id} at {addr}"),
        (Some(id), None) => format!("not the leader; the leader is node {id}"),
        _ => "not the leader; no leader is known".to_owned(),
    };
    let mut status = Status::unavailable(message);
    if let Some(id) = forward.leader_id {
        status
            .metadata_mut()
            .insert(LEADER_ID_METADATA, MetadataValue::from(id));
    }
    // An address that is not a valid header value is left to the message.
    if let Some(addr) = addr.and_then(|addr| addr.parse().ok()) {
        status.metadata_mut().insert(LEADER_ADDR_METADATA, addr);
    }
    status
}

/// The leader named by a "not leader" status from [`client_write`], [`add_member`] or
/// [`remove_member`]: its id and address, each when known.
pub fn leader_hint(status: &Status) -> (Option<NodeId>, Option<String>) {
    let metadata = status.metadata();
    let id = metadata
        .get(LEADER_ID_METADATA)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let addr = metadata
        .get(LEADER_ADDR_METADATA)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (id, addr)
}
