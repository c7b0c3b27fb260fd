//! FleetMQ's Raft group (openraft): what is replicated ([`ClusterRequest`]), the
//! sled-backed log store and state machine, and the gRPC network between nodes.

pub mod committer;
pub mod failover;
pub mod health;
pub mod leader_watch;
pub mod network;
pub mod node;
pub mod store;
pub mod types;
pub mod visibility;

pub use committer::RaftCommitter;
pub use network::{
    Faults, FaultyNetworkFactory, GrpcNetwork, GrpcNetworkConfig, GrpcNetworkFactory, NetworkError,
    PeerGrpcServer, RaftGrpcServer,
};
pub use network::{ForwardSink, ForwarderConfig, GrpcForwarder, PeerAddressLookup};
pub use node::{NodeError, NodeOptions, RaftNode};
pub use store::{
    open_raft_storage, ApplyFeed, FeedSlot, SledLogReader, SledLogStore,
    StateMachineSnapshotBuilder, StateMachineStore, StoreError, META_TREE,
};
pub use types::{ClusterOp, ClusterRequest, ClusterResponse, NodeId, TypeConfig};
