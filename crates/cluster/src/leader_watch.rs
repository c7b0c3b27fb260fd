//! A follower's quick look at a silent leader.
//!
//! openraft 0.9 lets a follower stand for election only after the old leader's lease
//! (the longest election timeout) *and* a fresh election timeout have passed without
//! word from it, checked on a tick of 1.5 heartbeats: 1.2-1.6 s with our timeouts. When
//! the leader's process died but its host did not (a crash, an OOM kill, a SIGKILL:
//! the usual case), its port refuses connections at once, and waiting out a second
//! timeout buys nothing. So a follower that has not heard from the leader for two
//! heartbeats tries to reach it; if the connection is refused, or the leader does not
//! answer a status request within [`PROBE_TIMEOUT`] (its process is frozen: a stalled
//! VM, SIGSTOP; or it is cut off), it calls an election as soon as the other voters'
//! leases have run out. A frozen or cut-off leader kept every follower's writes waiting
//! for 1.2-1.8 s plus the tick before; now for about the lease and the probe.
//!
//! Only the timing changes: votes are still granted by openraft's rules, so an early
//! election is as safe as a late one. A leader that is only slow loses nothing but its
//! leadership: it had already sent no heartbeat for two intervals. Followers go in turn
//! (by rank among the voters), so that two survivors do not split the vote by standing
//! at the same instant.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetmq_broker::Metrics;
use openraft::{Raft, ServerState};
use tokio::net::TcpStream;
use tracing::{debug, info};

use fleetmq_rpc::peer::peer_service_client::PeerServiceClient;

use crate::types::{member_addr, NodeId, TypeConfig};

/// How often the watch looks at the follower's state.
const CHECK_INTERVAL: Duration = Duration::from_millis(50);
/// How long a connection attempt to the leader may take before it says nothing.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(100);
/// How long the leader may take to answer a status request: it answers in well under a
/// millisecond when it runs at all.
const PROBE_TIMEOUT: Duration = Duration::from_millis(300);
/// Added to the lease, for clocks that do not tick together.
const LEASE_MARGIN: Duration = Duration::from_millis(50);
/// Between the turns of two followers.
const TURN: Duration = Duration::from_millis(250);

/// When this node last received an AppendEntries (a heartbeat or entries): the gRPC
/// server touches it, the watch reads it.
#[derive(Clone, Debug)]
pub struct LeaderContact {
    base: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Default for LeaderContact {
    fn default() -> Self {
        Self {
            base: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl LeaderContact {
    /// Records an AppendEntries arriving now.
    pub fn touch(&self) {
        let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// When the last AppendEntries arrived (the watch's start if none did).
    fn last(&self) -> Instant {
        self.base + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// The timing the watch needs from the Raft configuration.
#[derive(Clone, Copy, Debug)]
pub struct WatchTiming {
    /// The time between two heartbeats as they really go out (openraft's tick).
    pub heartbeat: Duration,
    /// openraft's leader lease: the longest election timeout.
    pub lease: Duration,
}

/// Runs for the life of the node.
pub async fn run_leader_watch(
    raft: Raft<TypeConfig>,
    contact: LeaderContact,
    timing: WatchTiming,
    metrics: Arc<Metrics>,
) {
    let mut tick = tokio::time::interval(CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The last leader this node knew: a candidate's vote request makes a follower forget
    // its leader, and if that candidate cannot win (its log is behind this node's), this
    // node must still be able to stand early instead of waiting out openraft's timers.
    let mut known = None;
    loop {
        tick.tick().await;
        let Some(watched) = silent_leader(&raft, &contact, timing, &mut known) else {
            continue;
        };
        let Some(why) = unresponsive(&watched.addr).await else {
            continue;
        };
        // The turn counts from when this node found the leader unresponsive, not from
        // the lease alone: the probe takes longer than the lease has left, and two
        // followers both past their due times stood at once and split the vote (an extra
        // openraft round, 0.8 s more, in about one frozen-leader run in eight).
        let due = (contact.last() + timing.lease + LEASE_MARGIN).max(Instant::now())
            + TURN * watched.rank;
        tokio::time::sleep_until(due.into()).await;
        // Stand only if nothing changed meanwhile: no new leader, no new term.
        let still = silent_leader(&raft, &contact, timing, &mut known);
        if still.as_ref().map(|w| (w.leader, w.term)) != Some((watched.leader, watched.term)) {
            continue;
        }
        info!(
            leader = watched.leader,
            term = watched.term,
            rank = watched.rank,
            why,
            "the leader is silent and does not answer: calling an election"
        );
        Metrics::add(&metrics.elections_called, 1);
        if let Err(error) = raft.trigger().elect().await {
            debug!(%error, "calling an election failed");
        }
        // Give the election time to finish before looking again.
        tokio::time::sleep(timing.lease).await;
    }
}

struct WatchedLeader {
    leader: NodeId,
    term: u64,
    addr: String,
    /// This node's place among the voters other than the leader.
    rank: u32,
}

/// The leader (the last one known, if none is now), if this node is a voting follower
/// that has not heard from it for two heartbeats.
fn silent_leader(
    raft: &Raft<TypeConfig>,
    contact: &LeaderContact,
    timing: WatchTiming,
    known: &mut Option<NodeId>,
) -> Option<WatchedLeader> {
    let (me, state, leader, term, voters) = {
        let m = raft.metrics().borrow().clone();
        let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
        (m.id, m.state, m.current_leader, m.current_term, voters)
    };
    if leader.is_some() {
        *known = leader.filter(|l| *l != me);
    }
    let leader = leader.or(*known).filter(|l| *l != me)?;
    if state != ServerState::Follower || contact.last().elapsed() < timing.heartbeat * 2 {
        return None;
    }
    let mut others: Vec<NodeId> = voters.into_iter().filter(|v| *v != leader).collect();
    others.sort_unstable();
    let rank = others.iter().position(|v| *v == me)?;
    Some(WatchedLeader {
        leader,
        term,
        addr: member_addr(raft, leader)?,
        rank: u32::try_from(rank).unwrap_or(u32::MAX),
    })
}

/// Why the leader at `addr` cannot be leading, or `None` if it answers: its address
/// refuses connections (nobody listens there any more), or it takes no connection or
/// answers no status request in time (frozen, or cut off).
async fn unresponsive(addr: &str) -> Option<&'static str> {
    match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            return Some("its address refuses connections")
        }
        Ok(Err(_)) => return None,
        Err(_) => return Some("it takes no connection"),
        Ok(Ok(_)) => {}
    }
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .ok()?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(PROBE_TIMEOUT);
    let probe = async {
        let mut client = PeerServiceClient::connect(endpoint).await.ok()?;
        client
            .cluster_status(fleetmq_rpc::peer::Empty {})
            .await
            .ok()
    };
    match tokio::time::timeout(PROBE_TIMEOUT + CONNECT_TIMEOUT, probe).await {
        Ok(Some(_)) => None,
        Ok(None) | Err(_) => Some("it answers no status request"),
    }
}
