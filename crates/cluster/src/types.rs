//! The openraft type configuration and the replicated command.
//!
//! A command is a batch of key-value writes on named trees, the same shape as a
//! [`fleetmq_storage::WriteBatch`]: the broker core already expresses every durable
//! change (sessions, queued messages, QoS 2 state, retained messages) that way, so the
//! single node and the cluster share one path. One Raft entry carries the writes of
//! many router rounds (group commit).

use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Serialize};

pub type NodeId = u64;

/// One write of a replicated batch. Tree names are those of the broker's
/// persistence layout; applying is deterministic on every node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClusterOp {
    Put {
        tree: String,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        tree: String,
        key: Vec<u8>,
    },
    DeletePrefix {
        tree: String,
        prefix: Vec<u8>,
    },
}

/// The payload of one Raft entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRequest {
    /// The node that proposed the batch: the state machine admits writes to a
    /// client's session state only from the node the client registry names.
    pub origin: NodeId,
    /// Increases with every batch `origin` proposes (a retry keeps it), so the state
    /// machine applies a batch that landed twice only once. 0: not deduplicated.
    pub request_seq: u64,
    pub ops: Vec<ClusterOp>,
}

impl fmt::Display for ClusterRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ClusterRequest({} ops from node {})",
            self.ops.len(),
            self.origin
        )
    }
}

/// What applying an entry answers to its proposer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterResponse {
    /// Ops that named a tree this node does not know and were skipped.
    pub skipped_ops: usize,
    /// Ops skipped because their origin no longer holds the client's session.
    pub fenced_ops: usize,
    /// The whole request was skipped: the same request was applied before.
    pub duplicate: bool,
}

openraft::declare_raft_types!(
    /// FleetMQ's openraft type configuration.
    pub TypeConfig:
        D = ClusterRequest,
        R = ClusterResponse,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The gRPC address member `id` is known by in the Raft membership this node has.
pub fn member_addr(raft: &openraft::Raft<TypeConfig>, id: NodeId) -> Option<String> {
    raft.metrics()
        .borrow()
        .membership_config
        .membership()
        .get_node(&id)
        .map(|node| node.addr.clone())
}
