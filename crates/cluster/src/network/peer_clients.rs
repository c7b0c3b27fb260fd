//! `PeerService` clients kept per member: one lazily connected channel each, made again
//! when the member's address changes.

use std::collections::HashMap;
use std::time::Duration;

use fleetmq_rpc::peer::peer_service_client::PeerServiceClient;
use tonic::transport::{Channel, Endpoint};

use crate::types::NodeId;

/// A `PeerService` client per member.
#[derive(Debug)]
pub struct PeerClients {
    connect_timeout: Duration,
    request_timeout: Duration,
    clients: HashMap<NodeId, (String, PeerServiceClient<Channel>)>,
}

impl PeerClients {
    pub fn new(connect_timeout: Duration, request_timeout: Duration) -> Self {
        PeerClients {
            connect_timeout,
            request_timeout,
            clients: HashMap::new(),
        }
    }

    /// The client for member `id` at `addr` (a cheap clone sharing the channel);
    /// `None` when `addr` cannot be made a URI.
    pub fn client(&mut self, id: NodeId, addr: &str) -> Option<PeerServiceClient<Channel>> {
        if self.clients.get(&id).is_none_or(|(a, _)| a != addr) {
            let endpoint = Endpoint::from_shared(format!("http://{addr}")).ok()?;
            let channel = endpoint
                .connect_timeout(self.connect_timeout)
                .timeout(self.request_timeout)
                .connect_lazy();
            self.clients
                .insert(id, (addr.to_string(), PeerServiceClient::new(channel)));
        }
        self.clients.get(&id).map(|(_, client)| client.clone())
    }
}
