//! The broker's [`Visibility`] across the cluster: asks every other member, in
//! parallel, to answer once its router has taken a log entry (`AwaitApplied`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

use fleetmq_broker::Visibility;
use fleetmq_rpc::peer::peer_service_client::PeerServiceClient;
use fleetmq_rpc::peer::AwaitAppliedRequest;
use openraft::Raft;
use tokio::task::JoinSet;
use tonic::transport::Channel;
use tracing::debug;

use crate::network::PeerClients;
use crate::types::{NodeId, TypeConfig};

/// How long a SUBACK waits for a member that does not answer (cut off, overloaded).
/// A dead member refuses at once; one that is only slow to apply answers within this.
pub const AWAIT_APPLIED_TIMEOUT: Duration = Duration::from_secs(2);

/// Waits for every other member of the Raft group.
pub struct PeerVisibility {
    raft: Raft<TypeConfig>,
    clients: Mutex<PeerClients>,
}

impl PeerVisibility {
    pub fn new(raft: Raft<TypeConfig>) -> Self {
        PeerVisibility {
            raft,
            clients: Mutex::new(PeerClients::new(
                AWAIT_APPLIED_TIMEOUT,
                AWAIT_APPLIED_TIMEOUT + Duration::from_millis(500),
            )),
        }
    }

    /// A client for every member but this node.
    fn others(&self) -> Vec<(NodeId, PeerServiceClient<Channel>)> {
        let (me, members) = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            let members: Vec<(NodeId, String)> = m
                .membership_config
                .membership()
                .nodes()
                .map(|(id, node)| (*id, node.addr.clone()))
                .collect();
            (m.id, members)
        };
        let mut peers = self
            .clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        members
            .into_iter()
            .filter(|(id, _)| *id != me)
            .filter_map(|(id, addr)| Some((id, peers.client(id, &addr)?)))
            .collect()
    }
}

impl Visibility for PeerVisibility {
    fn wait(&self, index: u64) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let others = self.others();
        Box::pin(async move {
            let mut calls = JoinSet::new();
            for (id, mut client) in others {
                calls.spawn(async move {
                    let request = AwaitAppliedRequest {
                        index,
                        timeout_ms: AWAIT_APPLIED_TIMEOUT.as_millis() as u32,
                    };
                    let answer = tokio::time::timeout(
                        AWAIT_APPLIED_TIMEOUT + Duration::from_millis(500),
                        client.await_applied(request),
                    )
                    .await;
                    match answer {
                        Ok(Ok(reply)) if reply.get_ref().reached => {}
                        // Not reached in time, down, or no router yet: waiting longer
                        // would hold the subscriber for a node that cannot route anyway.
                        other => debug!(node = id, index, ?other, "member did not confirm"),
                    }
                });
            }
            while calls.join_next().await.is_some() {}
        })
    }
}
