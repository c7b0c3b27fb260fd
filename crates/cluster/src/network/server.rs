//! The server side of the Raft network: `RaftService` calls handed to the local Raft.

use std::fmt::Display;

use fleetmq_rpc::raft as pb;
use fleetmq_rpc::raft::raft_service_server::{RaftService, RaftServiceServer};
use openraft::error::RaftError;
use openraft::Raft;
use serde::Serialize;
use tonic::{Request, Response, Status};

use super::wire;
use crate::leader_watch::LeaderContact;
use crate::{NodeId, TypeConfig};
use fleetmq_broker::Metrics;
use std::sync::Arc;

/// Serves `RaftService` for one node by calling its [`Raft`].
///
/// A Raft error (a fatal error on this node, or a snapshot error) is returned inside the
/// reply, typed, so the caller's openraft sees it as a remote error; a gRPC error status
/// means the request itself was unusable.
#[derive(Clone)]
pub struct RaftGrpcServer {
    raft: Raft<TypeConfig>,
    contact: LeaderContact,
    metrics: Arc<Metrics>,
}

impl RaftGrpcServer {
    /// A server for `raft`.
    pub fn new(raft: Raft<TypeConfig>) -> Self {
        Self {
            raft,
            contact: LeaderContact::default(),
            metrics: Arc::default(),
        }
    }

    /// A server for `raft` that records in `contact` when each AppendEntries arrives,
    /// and counts in `metrics` the entries it cannot decode.
    pub fn with_leader_contact(
        raft: Raft<TypeConfig>,
        contact: LeaderContact,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            raft,
            contact,
            metrics,
        }
    }

    /// The tonic service to add to a `tonic::transport::Server`, accepting and sending
    /// messages up to `max_message_size` bytes (see
    /// [`GrpcNetworkConfig::max_message_size`](super::GrpcNetworkConfig::max_message_size)).
    pub fn into_service(self, max_message_size: usize) -> RaftServiceServer<Self> {
        RaftServiceServer::new(self)
            .max_decoding_message_size(max_message_size)
            .max_encoding_message_size(max_message_size)
    }
}

impl std::fmt::Debug for RaftGrpcServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftGrpcServer").finish_non_exhaustive()
    }
}

fn decode_request<T: serde::de::DeserializeOwned>(
    request: Request<pb::RaftRequest>,
) -> Result<T, Status> {
    wire::decode("raft request", &request.into_inner().data)
        .map_err(|e| Status::invalid_argument(e.to_string()))
}

/// Encodes what the local Raft answered into the reply envelope.
fn reply<T, E>(result: Result<T, RaftError<NodeId, E>>) -> Result<Response<pb::RaftReply>, Status>
where
    T: Serialize,
    E: Serialize + Display + std::error::Error,
{
    let internal = |e: super::NetworkError| Status::internal(e.to_string());
    let result = match result {
        Ok(response) => {
            pb::raft_reply::Result::Ok(wire::encode("raft response", &response).map_err(internal)?)
        }
        Err(err) => pb::raft_reply::Result::Error(pb::RaftError {
            data: wire::encode("raft error", &err).map_err(internal)?,
            message: err.to_string(),
        }),
    };
    Ok(Response::new(pb::RaftReply {
        result: Some(result),
    }))
}

#[tonic::async_trait]
impl RaftService for RaftGrpcServer {
    async fn append_entries(
        &self,
        request: Request<pb::RaftRequest>,
    ) -> Result<Response<pb::RaftReply>, Status> {
        self.contact.touch();
        let rpc = match decode_request(request) {
            Ok(rpc) => rpc,
            Err(status) => {
                // Entries this build cannot read (a newer leader's, or damaged): refused,
                // never skipped. The leader sends them again; this node falls behind
                // until it runs a release that reads them, and says so each time.
                Metrics::add(&self.metrics.entries_undecodable, 1);
                tracing::error!(
                    error = %status.message(),
                    "entries from the leader cannot be decoded; refused (this node falls behind until it runs the leader's release)"
                );
                return Err(status);
            }
        };
        reply(self.raft.append_entries(rpc).await)
    }

    async fn vote(
        &self,
        request: Request<pb::RaftRequest>,
    ) -> Result<Response<pb::RaftReply>, Status> {
        let rpc = decode_request(request)?;
        reply(self.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<pb::RaftRequest>,
    ) -> Result<Response<pb::RaftReply>, Status> {
        let rpc = decode_request(request)?;
        reply(self.raft.install_snapshot(rpc).await)
    }
}
