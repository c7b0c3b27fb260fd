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
    adopt_engine_store, open_raft_storage, open_raft_storage_kept, ApplyFeed, Durability, FeedSlot,
    FileLogReader, FileLogStore, SledLogReader, SledLogStore, StateMachineSnapshotBuilder,
    StateMachineStore, StoreError, META_TREE, SNAPSHOT_FILE,
};
pub use types::{ClusterOp, ClusterRequest, ClusterResponse, NodeId, TypeConfig};
