//! The Raft half of `PeerService`: cluster status and client writes forwarded to the
//! leader. The service implementation, which also owns PUBLISH forwarding and takeover,
//! calls these so that Raft errors map to gRPC statuses in one place.

use fleetmq_rpc::peer as pb;
use openraft::error::{ClientWriteError, ForwardToLeader, RaftError};
use openraft::{BasicNode, Raft, ServerState};
use tonic::metadata::MetadataValue;
use tonic::Status;

use super::wire;
use crate::{ClusterRequest, NodeId, TypeConfig};

/// Metadata key of an UNAVAILABLE "not leader" status: the leader's node id.
pub const LEADER_ID_METADATA: &str = "fleetmq-leader-id";
/// Metadata key of an UNAVAILABLE "not leader" status: the leader's gRPC address.
pub const LEADER_ADDR_METADATA: &str = "fleetmq-leader-addr";

/// This node's view of the Raft group, from its latest metrics.
pub fn cluster_status(raft: &Raft<TypeConfig>) -> pb::ClusterStatusReply {
    let metrics = raft.metrics().borrow().clone();
    let membership = metrics.membership_config.membership();
    let voters: Vec<NodeId> = membership.voter_ids().collect();
    let members = membership
        .nodes()
        .map(|(&id, node)| {
            let role = if metrics.current_leader == Some(id) {
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
        .collect();
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
    match raft.client_write(command).await {
        Ok(response) => Ok(pb::ClientWriteReply {
            log_index: response.log_id.index,
            log_term: response.log_id.leader_id.term,
            data: wire::encode("cluster response", &response.data)
                .map_err(|e| Status::internal(e.to_string()))?,
        }),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
            Err(not_leader(&forward))
        }
        Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
            Err(Status::failed_precondition(e.to_string()))
        }
        // This node's Raft has stopped: another node may take the write.
        Err(RaftError::Fatal(e)) => Err(Status::unavailable(format!("raft stopped: {e}"))),
    }
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

/// The leader named by a "not leader" status from [`client_write`]: its id and address,
/// each when known.
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
