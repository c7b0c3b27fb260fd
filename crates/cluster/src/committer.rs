//! The broker's [`Committer`] as Raft: a round's writes become one entry, durable
//! once a majority has it in its log. On the leader the entry is proposed directly;
//! a follower forwards it to the leader's `PeerService::ClientWrite`.

use std::time::Duration;

use fleetmq_broker::command::Command;
use fleetmq_broker::{CommitError, Committer};
use fleetmq_rpc::peer::peer_service_client::PeerServiceClient;
use fleetmq_rpc::peer::ClientWriteRequest;
use openraft::Raft;
use tonic::transport::{Channel, Endpoint};
use tracing::error;

use crate::network::wire;
use crate::types::{member_addr, ClusterRequest, ClusterResponse, NodeId, TypeConfig};

/// How long one attempt to commit may take before it is tried again.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between attempts, so a node without a leader does not spin.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// Proposes each batch to the Raft group and waits for it to be committed.
pub struct RaftCommitter {
    raft: Raft<TypeConfig>,
    /// The `request_seq` of the next batch: starts at the clock so it keeps growing
    /// across restarts of this node.
    next_request: u64,
    /// The leader last forwarded to, and a channel to it.
    leader: Option<(NodeId, PeerServiceClient<Channel>)>,
}

impl RaftCommitter {
    pub fn new(raft: Raft<TypeConfig>) -> Self {
        let micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_micros() as u64);
        RaftCommitter {
            raft,
            next_request: micros,
            leader: None,
        }
    }
}

fn replication(what: impl std::fmt::Display) -> CommitError {
    CommitError::Replication(what.to_string())
}

fn check(response: &ClusterResponse) {
    if response.skipped_ops > 0 {
        // Only entries of an upgraded log carry tree names.
        error!(
            skipped = response.skipped_ops,
            "state machine skipped writes to unknown trees"
        );
    }
}

impl RaftCommitter {
    async fn leader_client(
        &mut self,
        leader: NodeId,
    ) -> Result<&mut PeerServiceClient<Channel>, CommitError> {
        if self.leader.as_ref().map(|(id, _)| *id) != Some(leader) {
            let addr = member_addr(&self.raft, leader)
                .ok_or_else(|| replication(format!("leader {leader} has no address")))?;
            let channel = Endpoint::from_shared(format!("http://{addr}"))
                .map_err(replication)?
                .connect_timeout(Duration::from_secs(1))
                .timeout(FORWARD_TIMEOUT)
                .connect_lazy();
            self.leader = Some((leader, PeerServiceClient::new(channel)));
        }
        match &mut self.leader {
            Some((_, client)) => Ok(client),
            None => Err(replication("no leader channel")),
        }
    }

    async fn forward(
        &mut self,
        leader: NodeId,
        request: ClusterRequest,
    ) -> Result<u64, CommitError> {
        let data = wire::encode("cluster request", &request).map_err(replication)?;
        let mut metrics = self.raft.metrics();
        let client = self.leader_client(leader).await?;
        // A leader that was paused or cut off answers nothing until the timeout; once
        // this node hears of a new leader the attempt is abandoned and sent there at
        // once (the request keeps its seq: if both land, the second is skipped).
        let leader_changed = async move {
            loop {
                if metrics.changed().await.is_err() {
                    return std::future::pending().await;
                }
                if metrics.borrow().current_leader != Some(leader) {
                    return;
                }
            }
        };
        let reply = tokio::select! {
            reply = client.client_write(ClientWriteRequest { data }) => reply,
            () = leader_changed => {
                self.leader = None;
                return Err(replication(format!(
                    "leader {leader} was replaced while a write was forwarded to it"
                )));
            }
        };
        let reply = reply.map_err(|status| {
            // The leader may have changed: drop the channel, the next round asks again.
            self.leader = None;
            replication(format!(
                "forwarding to leader {leader}: {}",
                status.message()
            ))
        })?;
        let reply = reply.into_inner();
        let response: ClusterResponse =
            wire::decode("cluster response", &reply.data).map_err(replication)?;
        check(&response);
        Ok(reply.log_index)
    }
}

impl RaftCommitter {
    /// Commits `request` once; returns the log index of its entry.
    async fn try_commit(&mut self, request: ClusterRequest) -> Result<u64, CommitError> {
        let (me, leader) = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            (m.id, m.current_leader)
        };
        match leader {
            Some(leader) if leader != me => self.forward(leader, request).await,
            // Leader, or no leader known: propose here; openraft refuses with
            // ForwardToLeader if this node is not the leader after all.
            _ => {
                let response =
                    tokio::time::timeout(FORWARD_TIMEOUT, self.raft.client_write(request))
                        .await
                        .map_err(|_| replication("no quorum within the commit timeout"))?
                        .map_err(replication)?;
                check(&response.data);
                Ok(response.log_id.index)
            }
        }
    }
}

impl RaftCommitter {
    /// Why nothing can commit through this node any more, if so: Raft stopped on a
    /// storage error (a storage failure), or with the node (a shutdown).
    fn stopped(&self) -> Option<CommitError> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        match &m.running_state {
            Err(openraft::error::Fatal::Stopped) => Some(replication("raft stopped with the node")),
            Err(fatal) => Some(CommitError::Stopped(format!("raft stopped: {fatal}"))),
            Ok(()) if m.state == openraft::ServerState::Shutdown => {
                Some(replication("raft stopped with the node"))
            }
            Ok(()) => None,
        }
    }
}

impl Committer for RaftCommitter {
    /// Tries until the batch is committed: the router's memory already holds what the
    /// batch writes, so giving up would let memory and the replicated store disagree.
    /// Meanwhile nothing behind this batch is acknowledged (a node cut off from the
    /// majority stalls until it is back; its clients time out and go elsewhere).
    /// Applying a batch twice (an attempt that timed out but did commit) is harmless:
    /// its writes are puts and deletes of the same values, and the registry admits a
    /// replayed delivery only once.
    async fn commit(&mut self, commands: Vec<Command>) -> Result<u64, CommitError> {
        let me = self.raft.metrics().borrow().id;
        self.next_request += 1;
        let request = ClusterRequest::commands(me, self.next_request, commands);
        let mut attempts = 0u64;
        let mut last_leader = None;
        loop {
            // Raft stopped on a storage error (a full disk, a failed fsync): nothing
            // commits here any more, and a follower forwarding to the leader could not
            // apply what it forwarded either.
            if let Some(stopped) = self.stopped() {
                return Err(stopped);
            }
            last_leader = last_leader.or(self.raft.metrics().borrow().current_leader);
            match self.try_commit(request.clone()).await {
                Ok(index) => return Ok(index),
                Err(e) => {
                    attempts += 1;
                    if attempts == 1 || attempts % 25 == 0 {
                        tracing::warn!(error = %e, attempts, "commit failed; retrying");
                    }
                    if let Some(stopped) = self.stopped() {
                        return Err(stopped);
                    }
                    // Try again as soon as a (new) leader is known, or after the pause:
                    // during an election the attempt fails until one is.
                    let mut metrics = self.raft.metrics();
                    let leader_known = async {
                        loop {
                            let leader = metrics.borrow_and_update().current_leader;
                            if leader.is_some() && leader != last_leader {
                                return;
                            }
                            if metrics.changed().await.is_err() {
                                return std::future::pending().await;
                            }
                        }
                    };
                    let _ = tokio::time::timeout(RETRY_PAUSE, leader_known).await;
                    last_leader = self.raft.metrics().borrow().current_leader;
                }
            }
        }
    }
}
