//! The network's error type.

/// Why a Raft RPC could not be carried out. openraft receives these wrapped in its own
/// `RPCError` variants; this type says what actually went wrong.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The target's `BasicNode.addr` is not a usable `host:port`.
    #[error("invalid address {addr:?} for node {node_id}: {source}")]
    InvalidAddress {
        node_id: crate::NodeId,
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
    /// The call failed in transport or was rejected by the remote gRPC server.
    #[error("rpc to node {node_id} failed: {status}")]
    Status {
        node_id: crate::NodeId,
        status: tonic::Status,
    },
    /// A value could not be postcard-encoded.
    #[error("cannot encode {what}: {source}")]
    Encode {
        what: &'static str,
        #[source]
        source: postcard::Error,
    },
    /// Bytes from the other side did not decode; the two nodes disagree on the encoding,
    /// which means they run incompatible versions.
    #[error("cannot decode {what}: {source}")]
    Decode {
        what: &'static str,
        #[source]
        source: postcard::Error,
    },
    /// The reply carried neither a response nor an error.
    #[error("empty reply from node {node_id}")]
    EmptyReply { node_id: crate::NodeId },
    /// A test filter ([`crate::network::Faults`]) dropped the message.
    #[error("message from node {from} to node {to} dropped by a test fault")]
    Injected {
        from: crate::NodeId,
        to: crate::NodeId,
    },
}
