//! The client side of the Raft network: what openraft calls to reach other nodes.

use std::collections::HashMap;
use std::error::Error;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleetmq_rpc::raft as pb;
use fleetmq_rpc::raft::raft_service_client::RaftServiceClient;
use openraft::error::{
    InstallSnapshotError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use tonic::transport::{Channel, Endpoint};

use super::{wire, NetworkError};
use crate::{NodeId, TypeConfig};

/// The error openraft expects from an RPC whose remote API error is `E`.
type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

/// Tunables of the Raft client side.
#[derive(Debug, Clone)]
pub struct GrpcNetworkConfig {
    /// How long to wait for a TCP connection to a peer. Default 1 s.
    pub connect_timeout: Duration,
    /// The largest gRPC message sent or accepted, in bytes. It must exceed openraft's
    /// `snapshot_max_chunk_size` and the largest append-entries batch. Default 64 MiB.
    pub max_message_size: usize,
    /// How long openraft waits before retrying a peer it could not reach. Default 500 ms.
    pub unreachable_backoff: Duration,
}

impl Default for GrpcNetworkConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(1),
            max_message_size: 64 * 1024 * 1024,
            unreachable_backoff: Duration::from_millis(500),
        }
    }
}

/// Creates [`GrpcNetwork`] clients for openraft, one per target node.
///
/// Channels are cached per target and shared by every client to it: openraft creates a
/// client per replication stream and per election, and each new channel would mean a new
/// TCP and HTTP/2 handshake. A cached channel is replaced when the target's address
/// changes. Cloning the factory shares the cache.
#[derive(Debug, Clone)]
pub struct GrpcNetworkFactory {
    node_id: NodeId,
    config: GrpcNetworkConfig,
    channels: Arc<Mutex<HashMap<NodeId, (String, Channel)>>>,
}

impl GrpcNetworkFactory {
    /// A factory for the node `node_id` (named in the timeout errors openraft gets).
    pub fn new(node_id: NodeId, config: GrpcNetworkConfig) -> Self {
        Self {
            node_id,
            config,
            channels: Arc::default(),
        }
    }

    /// A lazy channel to `addr`: it connects on first use and reconnects after a failure,
    /// so creating it never blocks and a peer that is down now is reached once it is up.
    fn channel(&self, target: NodeId, addr: &str) -> Result<Channel, NetworkError> {
        // The lock is only held for map operations, never across an await.
        let mut channels = self
            .channels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((cached_addr, channel)) = channels.get(&target) {
            if cached_addr == addr {
                return Ok(channel.clone());
            }
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|source| NetworkError::InvalidAddress {
                node_id: target,
                addr: addr.to_owned(),
                source,
            })?
            .connect_timeout(self.config.connect_timeout)
            .tcp_nodelay(true);
        let channel = endpoint.connect_lazy();
        channels.insert(target, (addr.to_owned(), channel.clone()));
        Ok(channel)
    }
}

impl RaftNetworkFactory<TypeConfig> for GrpcNetworkFactory {
    type Network = GrpcNetwork;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> GrpcNetwork {
        // An unusable address is kept as the client's error rather than a panic: every RPC
        // then reports the target unreachable, and fixing the membership heals it.
        let channel = self.channel(target, &node.addr).map_err(Arc::new);
        GrpcNetwork {
            node_id: self.node_id,
            target,
            target_node: node.clone(),
            channel,
            config: self.config.clone(),
        }
    }
}

/// openraft's connection to one target node over `RaftService`.
#[derive(Debug)]
pub struct GrpcNetwork {
    node_id: NodeId,
    target: NodeId,
    target_node: BasicNode,
    channel: Result<Channel, Arc<NetworkError>>,
    config: GrpcNetworkConfig,
}

/// Why a call produced no reply, before it is typed as openraft's `RPCError<E>`.
enum CallFailure {
    Timeout(Duration),
    Unreachable(Arc<NetworkError>),
}

impl GrpcNetwork {
    /// Sends one request and waits at most `ttl` for the reply.
    async fn call(
        &self,
        action: RPCTypes,
        data: Vec<u8>,
        ttl: Duration,
    ) -> Result<pb::RaftReply, CallFailure> {
        let channel = match &self.channel {
            Ok(channel) => channel.clone(),
            Err(e) => return Err(CallFailure::Unreachable(Arc::clone(e))),
        };
        let mut client = RaftServiceClient::new(channel)
            .max_decoding_message_size(self.config.max_message_size)
            .max_encoding_message_size(self.config.max_message_size);
        let mut request = tonic::Request::new(pb::RaftRequest { data });
        // Tells the server too, so it stops working on a request nobody waits for.
        request.set_timeout(ttl);

        let call = async {
            match action {
                RPCTypes::AppendEntries => client.append_entries(request).await,
                RPCTypes::Vote => client.vote(request).await,
                RPCTypes::InstallSnapshot => client.install_snapshot(request).await,
            }
        };
        match tokio::time::timeout(ttl, call).await {
            Err(_elapsed) => Err(CallFailure::Timeout(ttl)),
            Ok(Ok(reply)) => Ok(reply.into_inner()),
            Ok(Err(status)) if status.code() == tonic::Code::DeadlineExceeded => {
                Err(CallFailure::Timeout(ttl))
            }
            // Every other status means the peer is down, unreachable, shutting down or
            // refusing us (an incompatible version answers Unimplemented or
            // InvalidArgument): in each case openraft should back off, not hammer it.
            Ok(Err(status)) => Err(CallFailure::Unreachable(Arc::new(NetworkError::Status {
                node_id: self.target,
                status,
            }))),
        }
    }

    /// Sends `request` and types the outcome as openraft expects it.
    async fn rpc<Req, Resp, E>(
        &self,
        action: RPCTypes,
        request: &Req,
        ttl: Duration,
    ) -> RpcResult<Resp, E>
    where
        Req: serde::Serialize,
        Resp: DeserializeOwned,
        E: Error + DeserializeOwned,
    {
        let data =
            wire::encode("raft request", request).map_err(|e| RPCError::Network(network(&e)))?;
        let reply = self
            .call(action, data, ttl)
            .await
            .map_err(|failure| match failure {
                CallFailure::Timeout(timeout) => RPCError::Timeout(Timeout {
                    action,
                    id: self.node_id,
                    target: self.target,
                    timeout,
                }),
                CallFailure::Unreachable(e) => RPCError::Unreachable(Unreachable::new(&e)),
            })?;
        match reply.result {
            Some(pb::raft_reply::Result::Ok(bytes)) => {
                wire::decode("raft response", &bytes).map_err(|e| RPCError::Network(network(&e)))
            }
            Some(pb::raft_reply::Result::Error(err)) => {
                let raft_error: RaftError<NodeId, E> = wire::decode("raft error", &err.data)
                    .map_err(|e| RPCError::Network(network(&e)))?;
                Err(RPCError::RemoteError(RemoteError::new_with_node(
                    self.target,
                    self.target_node.clone(),
                    raft_error,
                )))
            }
            None => Err(RPCError::Network(network(&NetworkError::EmptyReply {
                node_id: self.target,
            }))),
        }
    }
}

/// A reply that cannot be understood is a network error, not a remote Raft error.
fn network(e: &NetworkError) -> openraft::error::NetworkError {
    openraft::error::NetworkError::new(e)
}

impl RaftNetwork<TypeConfig> for GrpcNetwork {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        self.rpc(RPCTypes::AppendEntries, &rpc, option.hard_ttl())
            .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.rpc(RPCTypes::InstallSnapshot, &rpc, option.hard_ttl())
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        self.rpc(RPCTypes::Vote, &rpc, option.hard_ttl()).await
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(self.config.unreachable_backoff))
    }
}
