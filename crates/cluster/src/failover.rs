//! Node failure, as the leader sees it: a member that has not answered for
//! [`DEAD_AFTER`] is taken for dead, and every session it held is given to a live
//! member (spread by client id). The adopters load them as offline sessions: queued
//! messages keep arriving, expiry timers run, wills are published after their delay.
//! A client of the dead node that reconnects anywhere takes its session from the
//! adopter like from any live node.
//!
//! A node that is only cut off is treated the same: it cannot commit anything while
//! it is, and once back it applies the moves and lets the sessions go.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetmq_broker::persist::{self, OwnerRecord, OWNERS};
use fleetmq_rpc::peer::peer_service_client::PeerServiceClient;
use fleetmq_storage::KvEngine;
use openraft::Raft;
use tonic::transport::{Channel, Endpoint};
use tracing::{info, warn};

use crate::types::{ClusterOp, ClusterRequest, NodeId, TypeConfig};

/// How often the leader checks on the other members.
const PROBE_INTERVAL: Duration = Duration::from_millis(250);
/// How long one probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_millis(400);
/// Silence after which a member's sessions are moved: several missed probes, so a
/// member that is only slow for a moment keeps its sessions.
pub const DEAD_AFTER: Duration = Duration::from_millis(1500);
/// Registry moves per proposal.
const MOVES_PER_ENTRY: usize = 1000;

/// Runs for the life of the node; acts only while it leads.
pub async fn run_failover(raft: Raft<TypeConfig>, engine: Arc<dyn KvEngine>) {
    let mut channels: HashMap<NodeId, (String, PeerServiceClient<Channel>)> = HashMap::new();
    let mut last_seen: HashMap<NodeId, Instant> = HashMap::new();
    let mut adopted_at: HashMap<NodeId, Instant> = HashMap::new();
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    loop {
        tick.tick().await;
        let (me, leader, members) = {
            let m = raft.metrics().borrow().clone();
            let members: BTreeMap<NodeId, String> = m
                .membership_config
                .membership()
                .nodes()
                .map(|(id, node)| (*id, node.addr.clone()))
                .collect();
            (m.id, m.current_leader, members)
        };
        if leader != Some(me) {
            // A new leader starts the clocks afresh: silence it did not see is not death.
            last_seen.clear();
            adopted_at.clear();
            continue;
        }
        let now = Instant::now();
        let mut dead = BTreeSet::new();
        for (id, addr) in &members {
            if *id == me {
                continue;
            }
            let seen = *last_seen.entry(*id).or_insert(now);
            if probe(&mut channels, *id, addr).await {
                last_seen.insert(*id, Instant::now());
                adopted_at.remove(id);
            } else if now.duration_since(seen) > DEAD_AFTER {
                dead.insert(*id);
            }
        }
        // Act once per death, and again now and then in case a move did not commit.
        let due: BTreeSet<NodeId> = dead
            .into_iter()
            .filter(|id| {
                adopted_at
                    .get(id)
                    .is_none_or(|at| now.duration_since(*at) > Duration::from_secs(10))
            })
            .collect();
        if due.is_empty() {
            continue;
        }
        let live: Vec<NodeId> = members
            .keys()
            .copied()
            .filter(|id| {
                *id == me
                    || last_seen
                        .get(id)
                        .is_some_and(|t| now.duration_since(*t) <= DEAD_AFTER)
            })
            .collect();
        match adopt(&raft, &engine, me, &due, &live).await {
            Ok(moved) => {
                for id in &due {
                    adopted_at.insert(*id, now);
                }
                if moved > 0 {
                    info!(dead = ?due, live = ?live, moved, "moved the sessions of unreachable nodes");
                }
            }
            Err(e) => {
                warn!(dead = ?due, error = %e, "moving the sessions of unreachable nodes failed")
            }
        }
    }
}

async fn probe(
    channels: &mut HashMap<NodeId, (String, PeerServiceClient<Channel>)>,
    id: NodeId,
    addr: &str,
) -> bool {
    if channels.get(&id).is_none_or(|(a, _)| a != addr) {
        let Ok(endpoint) = Endpoint::from_shared(format!("http://{addr}")) else {
            return false;
        };
        let channel = endpoint
            .connect_timeout(PROBE_TIMEOUT)
            .timeout(PROBE_TIMEOUT)
            .connect_lazy();
        channels.insert(id, (addr.to_string(), PeerServiceClient::new(channel)));
    }
    let Some((_, client)) = channels.get_mut(&id) else {
        return false;
    };
    tokio::time::timeout(
        PROBE_TIMEOUT,
        client.cluster_status(fleetmq_rpc::peer::Empty {}),
    )
    .await
    .is_ok_and(|r| r.is_ok())
}

/// Gives every session held by a `dead` node to one of `live`; returns how many moved.
async fn adopt(
    raft: &Raft<TypeConfig>,
    engine: &Arc<dyn KvEngine>,
    me: NodeId,
    dead: &BTreeSet<NodeId>,
    live: &[NodeId],
) -> Result<usize, String> {
    if live.is_empty() {
        return Ok(0);
    }
    let engine = engine.clone();
    let owners = tokio::task::spawn_blocking(move || engine.scan_prefix(OWNERS, &[]))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let mut ops = Vec::new();
    for (key, value) in owners {
        let Ok(owner) = persist::decode::<OwnerRecord>(OWNERS, &value) else {
            continue;
        };
        if !dead.contains(&owner.node) {
            continue;
        }
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut hasher);
        let adopter = live[(hasher.finish() % live.len() as u64) as usize];
        let record = OwnerRecord {
            node: adopter,
            epoch: owner.epoch + 1,
        };
        ops.push(ClusterOp::Put {
            tree: OWNERS.to_string(),
            key,
            value: persist::encode(&record),
        });
    }
    let moved = ops.len();
    while !ops.is_empty() {
        let rest = ops.split_off(ops.len().min(MOVES_PER_ENTRY));
        let request = ClusterRequest {
            origin: me,
            request_seq: 0,
            ops,
        };
        raft.client_write(request)
            .await
            .map_err(|e| e.to_string())?;
        ops = rest;
    }
    Ok(moved)
}
