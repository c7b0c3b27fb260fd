//! The Raft network between nodes over gRPC (`fleetmq_rpc::raft::RaftService`).
//!
//! - [`GrpcNetworkFactory`] / [`GrpcNetwork`]: the client side openraft drives, one lazy
//!   tonic channel per target node;
//! - [`RaftGrpcServer`]: the server side, handing each RPC to the local `openraft::Raft`;
//! - [`admin`]: the Raft half of `PeerService` (cluster status, client writes forwarded to
//!   the leader, membership changes), for the service implementation that also owns
//!   forwarding and takeover;
//! - [`GrpcForwarder`]: the broker's `Forwarder`, one ordered `PeerService::Forward`
//!   stream per destination node; [`PeerGrpcServer`] is the receiving end, handing
//!   forwarded PUBLISHes to the router through its [`ForwardSink`];
//! - [`FaultyNetworkFactory`] and [`Faults`]: partition, drop and delay filters around any
//!   factory, for cluster tests.
//!
//! openraft values cross the wire postcard-encoded inside protobuf `bytes` fields; see
//! `proto/raft.proto` for why.

pub mod admin;
mod client;
mod errors;
mod faults;
mod forward;
mod forward_wire;
mod peer;
mod peer_clients;
mod server;
pub(crate) mod wire;

pub use client::{GrpcNetwork, GrpcNetworkConfig, GrpcNetworkFactory};
pub use errors::NetworkError;
pub use faults::{Faults, FaultyNetwork, FaultyNetworkFactory};
pub use forward::{ForwarderConfig, GrpcForwarder, PeerAddressLookup};
pub use forward_wire::{decode_forwarded, encode_forwarded, ForwardDecodeError};
pub use peer::{DrainFn, ForwardSink, KickFn, PeerGrpcServer, ServingHooks};
pub use peer_clients::PeerClients;
pub use server::RaftGrpcServer;
