//! Whether a node is ready for clients, and the Raft figures `/metrics` shows, read from
//! openraft's metrics.
//!
//! Ready means joined and caught up: a voter of the group that knows a leader it has
//! heard from (or is that leader with a quorum's acknowledgement), and that has applied
//! what it has received. A node being added is a learner until it has caught up with
//! the log and is promoted, so it is not ready before. A node cut off from the majority
//! stops being ready within an election timeout: it starts an election and knows no
//! leader; a cut-off leader stops when its quorum's acknowledgements grow old.

use std::fmt::Write as _;

use openraft::{RaftMetrics, ServerState};

use crate::types::{NodeId, TypeConfig};

/// Applied this far behind what it has received, a node is still catching up.
pub const READY_APPLY_LAG: u64 = 1_000;
/// A leader whose last quorum acknowledgement is older than this is cut off.
pub const LEADER_QUORUM_STALE_MS: u64 = 2_000;

type Metrics = RaftMetrics<NodeId, <TypeConfig as openraft::RaftTypeConfig>::Node>;

/// One reading of a node's Raft state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftHealth {
    pub node_id: NodeId,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub is_leader: bool,
    pub voter: bool,
    pub last_log_index: u64,
    pub last_applied_index: u64,
    /// On the leader: how far each follower's matched log is behind the leader's.
    pub follower_lag: Vec<(NodeId, u64)>,
    /// `None` when ready; otherwise why not.
    pub not_ready: Option<String>,
}

impl RaftHealth {
    pub fn read(m: &Metrics) -> RaftHealth {
        let last_log_index = m.last_log_index.unwrap_or(0);
        let last_applied_index = m.last_applied.map_or(0, |l| l.index);
        let is_leader = m.state == ServerState::Leader;
        let voter = m
            .membership_config
            .membership()
            .voter_ids()
            .any(|id| id == m.id);
        let follower_lag = m
            .replication
            .as_ref()
            .map(|replication| {
                replication
                    .iter()
                    .filter(|(id, _)| **id != m.id)
                    .map(|(id, matched)| {
                        let at = matched.map_or(0, |l| l.index);
                        (*id, last_log_index.saturating_sub(at))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let apply_lag = last_log_index.saturating_sub(last_applied_index);
        let not_ready = if let Err(fatal) = &m.running_state {
            Some(format!("raft stopped: {fatal}"))
        } else if !voter {
            Some(
                "not a voter of the group (yet): waiting to be added, or catching up as a learner"
                    .into(),
            )
        } else if m.current_leader.is_none() {
            Some(
                "no leader known: an election is on, or this node is cut off from the majority"
                    .into(),
            )
        } else if m.current_leader == Some(m.id) && !is_leader {
            // A restarted former leader reads its own old vote back: it leads nothing
            // until it wins an election or hears from the leader there is now.
            Some("names itself leader from before a restart: not leading yet".into())
        } else if is_leader
            && m.millis_since_quorum_ack
                .is_none_or(|ms| ms > LEADER_QUORUM_STALE_MS)
            && m.membership_config.membership().voter_ids().count() > 1
        {
            Some("leader without a quorum's recent acknowledgement: cut off".into())
        } else if apply_lag > READY_APPLY_LAG {
            Some(format!(
                "catching up: {apply_lag} received entries not applied yet"
            ))
        } else {
            None
        };
        RaftHealth {
            node_id: m.id,
            term: m.current_term,
            leader: m.current_leader,
            is_leader,
            voter,
            last_log_index,
            last_applied_index,
            follower_lag,
            not_ready,
        }
    }

    pub fn ready(&self) -> bool {
        self.not_ready.is_none()
    }

    /// Prometheus text; `committed_index` is the store's (openraft's metrics lack it).
    pub fn render(&self, committed_index: u64, out: &mut String) {
        let mut gauge = |name: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        };
        gauge(
            "fleetmq_raft_term",
            "The node's current Raft term.",
            self.term,
        );
        gauge(
            "fleetmq_raft_leader_id",
            "The node id of the leader this node knows; 0 when it knows none.",
            self.leader.unwrap_or(0),
        );
        gauge(
            "fleetmq_raft_is_leader",
            "1 when this node is the leader.",
            u64::from(self.is_leader),
        );
        gauge(
            "fleetmq_raft_last_log_index",
            "The index of the last entry in this node's log.",
            self.last_log_index,
        );
        gauge(
            "fleetmq_raft_last_applied_index",
            "The index of the last entry this node applied.",
            self.last_applied_index,
        );
        gauge(
            "fleetmq_raft_committed_index",
            "The index of the last entry this node knows to be committed.",
            committed_index,
        );
        gauge(
            "fleetmq_raft_commit_lag_entries",
            "Entries in this node's log not known to be committed yet.",
            self.last_log_index.saturating_sub(committed_index),
        );
        gauge(
            "fleetmq_raft_apply_lag_entries",
            "Entries in this node's log not applied yet.",
            self.last_log_index.saturating_sub(self.last_applied_index),
        );
        gauge(
            "fleetmq_ready",
            "1 when the node is joined and caught up (what /readyz answers).",
            u64::from(self.ready()),
        );
        let _ = writeln!(
            out,
            "# HELP fleetmq_raft_follower_lag_entries On the leader: entries each follower's log is behind.\n\
             # TYPE fleetmq_raft_follower_lag_entries gauge"
        );
        for (node, lag) in &self.follower_lag {
            let _ = writeln!(
                out,
                "fleetmq_raft_follower_lag_entries{{node=\"{node}\"}} {lag}"
            );
        }
    }
}

/// Waits until Raft stops on this node with an error, then says why once: a log line
/// naming the cause, and for an entry this build cannot decode, a count in
/// `fleetmq_replicated_entries_undecodable_total` (operators alert on it: the node has
/// stopped applying, and will until it runs a release that reads its log).
pub(crate) async fn report_raft_stop(
    raft: openraft::Raft<TypeConfig>,
    metrics: std::sync::Arc<fleetmq_broker::Metrics>,
) {
    let mut watch = raft.metrics();
    let fatal = loop {
        if let Err(fatal) = &watch.borrow_and_update().running_state {
            break fatal.clone();
        }
        if watch.changed().await.is_err() {
            return;
        }
    };
    if matches!(fatal, openraft::error::Fatal::Stopped) {
        return;
    }
    let cause = fatal.to_string();
    if cause.contains(crate::store::UNDECODABLE_ENTRY) {
        fleetmq_broker::Metrics::add(&metrics.entries_undecodable, 1);
    }
    tracing::error!(error = %cause, "raft stopped on this node: it applies and commits nothing more until restarted");
}
