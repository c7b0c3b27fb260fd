//! The openraft type configuration and what one entry carries.
//!
//! An entry is a batch of the broker's typed commands ([`fleetmq_broker::command`]):
//! claims, session records, routed messages, delivery phases, retained messages,
//! settings. One Raft entry carries the commands of many router rounds (group commit).
//! Entries written before commands existed (data format 2) carried raw writes on named
//! trees; a log upgraded from then keeps them as [`RequestBody::Legacy`] until they are
//! applied and purged, and nothing proposes them any more.

use std::fmt;
use std::io::Cursor;

use fleetmq_broker::command::Command;
use serde::{Deserialize, Serialize};

pub type NodeId = u64;

/// One raw write of a format-2 entry: a tree name of the broker's layout and bytes.
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

/// What an entry carries. The variant is its version on the wire and in the log: a
/// node that meets one it does not know fails to decode the entry and stops, rather
/// than skipping it (a state machine that skips entries diverges).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestBody {
    /// Raw writes from a log written by the previous release (format 2).
    Legacy(Vec<ClusterOp>),
    Commands(Vec<Command>),
}

/// The payload of one Raft entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRequest {
    /// The node that proposed the batch: its own commands come back to its router
    /// with their verdicts.
    pub origin: NodeId,
    /// Increases with every batch `origin` proposes (a retry keeps it), so the state
    /// machine applies a batch that landed twice only once. 0: not deduplicated.
    pub request_seq: u64,
    pub body: RequestBody,
}

impl ClusterRequest {
    pub fn commands(origin: NodeId, request_seq: u64, commands: Vec<Command>) -> Self {
        ClusterRequest {
            origin,
            request_seq,
            body: RequestBody::Commands(commands),
        }
    }
}

impl fmt::Display for ClusterRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.body {
            RequestBody::Commands(commands) => write!(
                f,
                "ClusterRequest({} commands from node {})",
                commands.len(),
                self.origin
            ),
            RequestBody::Legacy(ops) => write!(
                f,
                "ClusterRequest({} format-2 writes from node {})",
                ops.len(),
                self.origin
            ),
        }
    }
}

/// What applying an entry answers to its proposer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterResponse {
    /// Format-2 writes that named a tree this node does not know and were skipped.
    pub skipped_ops: usize,
    /// Commands (or format-2 writes) refused: their client had moved on.
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
