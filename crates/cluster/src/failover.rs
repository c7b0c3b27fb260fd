//! Node failure, as the leader sees it: a member that has not answered for
//! [`DEAD_AFTER`], or that answers but has taken no log entry for [`STALLED_AFTER`]
//! while behind the leader (a stuck candidate, a node whose disk hangs: it cannot
//! commit its clients' writes), is taken for dead, and every session it held is given
//! to a live member (spread by client id). The adopters load them as offline sessions:
//! queued messages keep arriving, expiry timers run, wills are published after their
//! delay.
//! A client of the dead node that reconnects anywhere takes its session from the
//! adopter like from any live node.
//!
//! A node that is only cut off is treated the same: it cannot commit anything while
//! it is, and once back it applies the moves and lets the sessions go.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetmq_broker::command::Command;
use fleetmq_broker::persist::{self, OwnerRecord, OWNERS};
use fleetmq_storage::KvEngine;
use openraft::Raft;
use tracing::{info, warn};

use crate::network::PeerClients;
use crate::types::{ClusterRequest, NodeId, TypeConfig};

/// How often the leader checks on the other members.
const PROBE_INTERVAL: Duration = Duration::from_millis(250);
/// How long one probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_millis(400);
/// Silence after which a member's sessions are moved: several missed probes, so a
/// member that is only slow for a moment keeps its sessions.
pub const DEAD_AFTER: Duration = Duration::from_millis(1500);
/// How long a member that answers probes may stay behind the leader's log without
/// taking a single entry. Longer than [`DEAD_AFTER`]: a follower installing a snapshot
/// is behind and still for a while, and is not dead.
pub const STALLED_AFTER: Duration = Duration::from_secs(3);
/// The origin of the moves failover proposes: no node's router made them.
pub const FAILOVER_ORIGIN: NodeId = 0;
/// Registry moves per proposal.
const MOVES_PER_ENTRY: usize = 1000;

/// Runs for the life of the node; acts only while it leads.
pub async fn run_failover(raft: Raft<TypeConfig>, engine: Arc<dyn KvEngine>) {
    let mut peers = PeerClients::new(PROBE_TIMEOUT, PROBE_TIMEOUT);
    let mut health = Liveness::default();
    let mut adopted_at: HashMap<NodeId, Instant> = HashMap::new();
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    loop {
        tick.tick().await;
        let (me, leader, members, matched, last_log) = {
            let m = raft.metrics().borrow().clone();
            let members: BTreeMap<NodeId, String> = m
                .membership_config
                .membership()
                .nodes()
                .map(|(id, node)| (*id, node.addr.clone()))
                .collect();
            let matched: HashMap<NodeId, Option<u64>> = m
                .replication
                .iter()
                .flatten()
                .map(|(id, log_id)| (*id, log_id.map(|l| l.index)))
                .collect();
            (m.id, m.current_leader, members, matched, m.last_log_index)
        };
        if leader != Some(me) {
            // A new leader starts the clocks afresh: silence it did not see is not death.
            health = Liveness::default();
            adopted_at.clear();
            continue;
        }
        let now = Instant::now();
        for (id, addr) in &members {
            if *id == me {
                continue;
            }
            let answered = probe(&mut peers, *id, addr).await;
            let progress = Progress {
                matched: matched.get(id).copied().flatten(),
                leader_last: last_log,
            };
            health.observe(*id, now, answered, progress);
        }
        let dead: BTreeSet<NodeId> = members
            .keys()
            .copied()
            .filter(|id| *id != me && health.is_dead(*id, now))
            .collect();
        adopted_at.retain(|id, _| dead.contains(id));
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
            .filter(|id| *id == me || !health.is_dead(*id, now))
            .collect();
        match adopt(&raft, &engine, &due, &live).await {
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

/// How far one member's log is, as the leader's replication metrics tell it.
#[derive(Debug, Clone, Copy)]
struct Progress {
    /// The last index the member is known to hold (`None`: nothing yet).
    matched: Option<u64>,
    /// The leader's own last index.
    leader_last: Option<u64>,
}

/// What the leader last saw of one member.
#[derive(Debug)]
struct MemberHealth {
    /// When it last answered a probe.
    answered_at: Instant,
    /// Its matched index, and since when it has been that (while behind the leader).
    matched: Option<u64>,
    stalled_since: Option<Instant>,
}

/// The leader's view of which members are alive: a member must answer probes and,
/// when behind the leader's log, keep taking entries.
#[derive(Debug, Default)]
struct Liveness {
    members: HashMap<NodeId, MemberHealth>,
}

impl Liveness {
    /// Records one probe of `id` at `now`. A member first seen now counts as alive from
    /// now: silence the leader did not see is not death.
    fn observe(&mut self, id: NodeId, now: Instant, answered: bool, progress: Progress) {
        let health = self.members.entry(id).or_insert(MemberHealth {
            answered_at: now,
            matched: progress.matched,
            stalled_since: None,
        });
        if answered {
            health.answered_at = now;
        }
        let behind = progress.matched < progress.leader_last;
        if !behind || progress.matched != health.matched {
            health.matched = progress.matched;
            health.stalled_since = None;
        } else if health.stalled_since.is_none() {
            health.stalled_since = Some(now);
        }
    }

    fn is_dead(&self, id: NodeId, now: Instant) -> bool {
        let Some(health) = self.members.get(&id) else {
            return false;
        };
        let silent = now.duration_since(health.answered_at) > DEAD_AFTER;
        let stalled = health
            .stalled_since
            .is_some_and(|since| now.duration_since(since) > STALLED_AFTER);
        silent || stalled
    }
}

async fn probe(peers: &mut PeerClients, id: NodeId, addr: &str) -> bool {
    let Some(mut client) = peers.client(id, addr) else {
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
        let Ok(client) = String::from_utf8(key) else {
            continue;
        };
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        client.as_bytes().hash(&mut hasher);
        let adopter = live[(hasher.finish() % live.len() as u64) as usize];
        // Over the record read here only: a client that reconnected meanwhile has
        // claimed its session over the same record, and that claim stands.
        ops.push(Command::Claim {
            client,
            expected: Some(owner),
            owner: OwnerRecord {
                node: adopter,
                epoch: owner.epoch + 1,
            },
        });
    }
    let moved = ops.len();
    while !ops.is_empty() {
        let rest = ops.split_off(ops.len().min(MOVES_PER_ENTRY));
        // Origin 0, no node: these moves are the cluster's, not a router's own writes,
        // so every router (the leader's too) takes them as news.
        let request = ClusterRequest::commands(FAILOVER_ORIGIN, 0, ops);
        raft.client_write(request)
            .await
            .map_err(|e| e.to_string())?;
        ops = rest;
    }
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    fn progress(matched: u64, leader_last: u64) -> Progress {
        Progress {
            matched: Some(matched),
            leader_last: Some(leader_last),
        }
    }

    #[test]
    fn a_member_that_stops_answering_is_dead_after_the_silence() {
        let start = Instant::now();
        let mut health = Liveness::default();
        health.observe(2, start, true, progress(10, 10));
        health.observe(2, at(start, 1000), false, progress(10, 10));
        assert!(!health.is_dead(2, at(start, 1000)));
        health.observe(2, at(start, 1600), false, progress(10, 10));
        assert!(health.is_dead(2, at(start, 1600)));
        // It answers again: alive.
        health.observe(2, at(start, 1800), true, progress(10, 10));
        assert!(!health.is_dead(2, at(start, 1800)));
    }

    #[test]
    fn a_member_that_answers_but_takes_no_entries_while_behind_is_dead() {
        let start = Instant::now();
        let mut health = Liveness::default();
        for ms in (0..=3000).step_by(250) {
            health.observe(2, at(start, ms), true, progress(10, 10 + ms));
        }
        assert!(
            !health.is_dead(2, at(start, 3000)),
            "3 s behind is not yet dead"
        );
        health.observe(2, at(start, 3300), true, progress(10, 3310));
        assert!(health.is_dead(2, at(start, 3300)));
        // One entry taken: alive again.
        health.observe(2, at(start, 3500), true, progress(11, 3510));
        assert!(!health.is_dead(2, at(start, 3500)));
    }

    #[test]
    fn a_member_that_keeps_up_or_has_nothing_to_take_stays_alive() {
        let start = Instant::now();
        let mut health = Liveness::default();
        // Behind by a little all the time, but moving: a follower under load.
        for ms in (0..=10_000).step_by(250) {
            health.observe(2, at(start, ms), true, progress(ms, ms + 40));
        }
        assert!(!health.is_dead(2, at(start, 10_000)));
        // Idle cluster: matched never moves because the leader writes nothing.
        for ms in (0..=10_000).step_by(250) {
            health.observe(3, at(start, ms), true, progress(7, 7));
        }
        assert!(!health.is_dead(3, at(start, 10_000)));
        // Never seen: not dead.
        assert!(!health.is_dead(4, at(start, 10_000)));
    }

    #[test]
    fn a_member_without_any_entry_yet_that_stays_empty_is_stalled() {
        let start = Instant::now();
        let mut health = Liveness::default();
        let empty = Progress {
            matched: None,
            leader_last: Some(5),
        };
        health.observe(2, start, true, empty);
        health.observe(2, at(start, 1000), true, empty);
        assert!(!health.is_dead(2, at(start, 1000)));
        health.observe(2, at(start, 3100), true, empty);
        assert!(health.is_dead(2, at(start, 3100)));
    }
}
