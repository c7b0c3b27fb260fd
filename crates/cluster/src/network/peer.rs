//! The node's `PeerService`: cluster status and proposals forwarded to the leader
//! today; PUBLISH forwarding and cross-node takeover arrive with the routing work
//! (docs/cluster-design.md) and answer UNIMPLEMENTED until then.

use std::pin::Pin;

use fleetmq_rpc::peer as pb;
use fleetmq_rpc::peer::peer_service_server::{PeerService, PeerServiceServer};
use openraft::Raft;
use tonic::{Request, Response, Status, Streaming};

use crate::network::admin;
use crate::types::TypeConfig;

/// Serves `PeerService` for one node.
pub struct PeerGrpcServer {
    raft: Raft<TypeConfig>,
}

impl PeerGrpcServer {
    pub fn new(raft: Raft<TypeConfig>) -> Self {
        PeerGrpcServer { raft }
    }

    pub fn into_service(self, max_message_size: usize) -> PeerServiceServer<Self> {
        PeerServiceServer::new(self)
            .max_decoding_message_size(max_message_size)
            .max_encoding_message_size(max_message_size)
    }
}

type AckStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::ForwardAck, Status>> + Send>>;

#[tonic::async_trait]
impl PeerService for PeerGrpcServer {
    type ForwardStream = AckStream;

    async fn forward(
        &self,
        _request: Request<Streaming<pb::ForwardBatch>>,
    ) -> Result<Response<AckStream>, Status> {
        Err(Status::unimplemented(
            "forwarding PUBLISH between nodes is not implemented yet",
        ))
    }

    async fn takeover(
        &self,
        _request: Request<pb::TakeoverRequest>,
    ) -> Result<Response<pb::TakeoverReply>, Status> {
        Err(Status::unimplemented(
            "session takeover between nodes is not implemented yet",
        ))
    }

    async fn cluster_status(
        &self,
        _request: Request<pb::Empty>,
    ) -> Result<Response<pb::ClusterStatusReply>, Status> {
        Ok(Response::new(admin::cluster_status(&self.raft)))
    }

    async fn client_write(
        &self,
        request: Request<pb::ClientWriteRequest>,
    ) -> Result<Response<pb::ClientWriteReply>, Status> {
        admin::client_write(&self.raft, request.into_inner())
            .await
            .map(Response::new)
    }
}
