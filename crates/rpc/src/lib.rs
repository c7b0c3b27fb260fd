//! FleetMQ's gRPC services between nodes, generated from `proto/` by `build.rs`.
//!
//! - [`raft`]: `RaftService`, the Raft RPCs (append entries, vote, install snapshot)
//!   whose payloads are postcard-encoded openraft values;
//! - [`peer`]: `PeerService`, PUBLISH forwarding between nodes, session takeover, and
//!   the admin calls (cluster status, client writes forwarded to the leader).

/// The Raft RPCs (`proto/raft.proto`).
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod raft {
    tonic::include_proto!("fleetmq.raft");
}

/// PUBLISH forwarding, takeover and admin RPCs (`proto/peer.proto`).
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod peer {
    tonic::include_proto!("fleetmq.peer");
}
