//! Counters and gauges of the broker, shared by the router and connection tasks.
//! Labels are low-cardinality by construction: never a client id or a topic.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Instant;

use fleetmq_codec::ReasonCode;

/// Why a message was not delivered to a subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The session's queue was at `max_queued_messages`.
    QueueFull,
    /// The message expiry interval passed while it waited.
    Expired,
    /// Bigger than the subscriber's Maximum Packet Size.
    PacketTooLarge,
    /// A QoS 0 message for a connection whose outbox was full.
    OutboxFull,
    /// A message for another node whose forward queue was full or whose link was down.
    ForwardQueueFull,
    /// A forwarded message for a session that is no longer on this node.
    NotLocal,
    /// A client's PUBLISH still waiting for the Kafka bridge when its connection ended
    /// (never acknowledged: a QoS 1/2 publisher sends it again).
    BridgePending,
}

impl DropReason {
    const ALL: [DropReason; 7] = [
        DropReason::QueueFull,
        DropReason::Expired,
        DropReason::PacketTooLarge,
        DropReason::OutboxFull,
        DropReason::ForwardQueueFull,
        DropReason::NotLocal,
        DropReason::BridgePending,
    ];

    fn label(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::Expired => "expired",
            DropReason::PacketTooLarge => "packet_too_large",
            DropReason::OutboxFull => "outbox_full",
            DropReason::ForwardQueueFull => "forward_queue_full",
            DropReason::NotLocal => "not_local",
            DropReason::BridgePending => "bridge_pending",
        }
    }
}

/// How a connection ended, for `fleetmq_connections_closed_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client sent DISCONNECT.
    ClientDisconnect,
    /// The socket closed or failed without a DISCONNECT.
    ConnectionLost,
    /// The server closed it with this reason code.
    Server(ReasonCode),
}

const CLOSE_CLIENT: usize = 256;
const CLOSE_LOST: usize = 257;

pub struct Metrics {
    started: Instant,
    pub connections_current: AtomicI64,
    pub connections_total: AtomicU64,
    closed: Box<[AtomicU64]>,
    pub decode_errors: AtomicU64,
    pub messages_received: AtomicU64,
    /// Messages from outside MQTT (the Kafka bridge's ingress).
    pub messages_ingested: AtomicU64,
    pub messages_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    pub bytes_sent: AtomicU64,
    dropped: [AtomicU64; DropReason::ALL.len()],
    pub sessions_current: AtomicI64,
    pub subscriptions_current: AtomicI64,
    pub retained_current: AtomicI64,
    pub queued_messages_current: AtomicI64,
    pub commits_total: AtomicU64,
    pub committed_batches_total: AtomicU64,
    /// 1 once a commit failed for good (a full disk, a failed fsync, Raft stopped).
    pub storage_failed: AtomicI64,
    /// PUBACK/PUBREC sent with an error code because the message could not be stored.
    pub acks_refused_storage: AtomicU64,
    /// Clients told to move because a write they waited for could not commit.
    pub clients_moved_commit_stuck: AtomicU64,
    pub slow_consumer_disconnects: AtomicU64,
    /// QoS 1/2 deliveries to a connected client that waited in its queue because its
    /// inflight window (`max_inflight`, or the client's Receive Maximum) was full.
    pub inflight_waits: AtomicU64,
    /// Messages sent to other nodes on the forward stream (one per node, not per session).
    pub forwarded_out: AtomicU64,
    /// Messages received from other nodes on the forward stream.
    pub forwarded_in: AtomicU64,
    /// Replicated entries whose writes the router looked at (applied on this node).
    pub applied_entries: AtomicU64,
    /// Sessions this node took over from another node (reconnects and adoptions).
    pub sessions_taken_over: AtomicU64,
    /// This node's replicated commands the log refused (its client had moved on).
    pub commands_refused: AtomicU64,
    /// Outputs dropped because the PUBLISH that made them was refused.
    pub outputs_withdrawn: AtomicU64,
    /// Elections this node called because its leader's address refused connections.
    pub elections_called: AtomicU64,
    /// Replicated log entries this node could not decode.
    pub entries_undecodable: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            started: Instant::now(),
            connections_current: AtomicI64::new(0),
            connections_total: AtomicU64::new(0),
            closed: (0..258).map(|_| AtomicU64::new(0)).collect(),
            decode_errors: AtomicU64::new(0),
            messages_received: AtomicU64::new(0),
            messages_ingested: AtomicU64::new(0),
            messages_sent: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            dropped: Default::default(),
            sessions_current: AtomicI64::new(0),
            subscriptions_current: AtomicI64::new(0),
            retained_current: AtomicI64::new(0),
            queued_messages_current: AtomicI64::new(0),
            commits_total: AtomicU64::new(0),
            committed_batches_total: AtomicU64::new(0),
            storage_failed: AtomicI64::new(0),
            acks_refused_storage: AtomicU64::new(0),
            clients_moved_commit_stuck: AtomicU64::new(0),
            slow_consumer_disconnects: AtomicU64::new(0),
            inflight_waits: AtomicU64::new(0),
            forwarded_out: AtomicU64::new(0),
            forwarded_in: AtomicU64::new(0),
            applied_entries: AtomicU64::new(0),
            sessions_taken_over: AtomicU64::new(0),
            commands_refused: AtomicU64::new(0),
            outputs_withdrawn: AtomicU64::new(0),
            elections_called: AtomicU64::new(0),
            entries_undecodable: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    pub fn uptime_secs(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    pub fn dropped(&self, reason: DropReason) {
        self.dropped[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn dropped_count(&self, reason: DropReason) -> u64 {
        self.dropped[reason as usize].load(Ordering::Relaxed)
    }

    pub fn closed(&self, reason: CloseReason) {
        let index = match reason {
            CloseReason::ClientDisconnect => CLOSE_CLIENT,
            CloseReason::ConnectionLost => CLOSE_LOST,
            CloseReason::Server(code) => code.as_u8() as usize,
        };
        if let Some(counter) = self.closed.get(index) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn gauge_add(gauge: &AtomicI64, n: i64) {
        gauge.fetch_add(n, Ordering::Relaxed);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let gauge = |a: &AtomicI64| a.load(Ordering::Relaxed).max(0);
        let mut one = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        one(
            "fleetmq_uptime_seconds",
            "gauge",
            "Seconds since the node started.",
            self.uptime_secs().to_string(),
        );
        one(
            "fleetmq_connections_current",
            "gauge",
            "Open client connections.",
            gauge(&self.connections_current).to_string(),
        );
        one(
            "fleetmq_connections_total",
            "counter",
            "Client connections accepted.",
            load(&self.connections_total).to_string(),
        );
        one(
            "fleetmq_decode_errors_total",
            "counter",
            "Packets that could not be decoded.",
            load(&self.decode_errors).to_string(),
        );
        one(
            "fleetmq_messages_received_total",
            "counter",
            "PUBLISH packets received from clients.",
            load(&self.messages_received).to_string(),
        );
        one(
            "fleetmq_messages_ingested_total",
            "counter",
            "Messages from outside MQTT routed to subscribers (Kafka ingress).",
            load(&self.messages_ingested).to_string(),
        );
        one(
            "fleetmq_messages_sent_total",
            "counter",
            "PUBLISH packets sent to clients.",
            load(&self.messages_sent).to_string(),
        );
        one(
            "fleetmq_bytes_received_total",
            "counter",
            "Bytes read from client sockets.",
            load(&self.bytes_received).to_string(),
        );
        one(
            "fleetmq_bytes_sent_total",
            "counter",
            "Bytes written to client sockets.",
            load(&self.bytes_sent).to_string(),
        );
        one(
            "fleetmq_sessions_current",
            "gauge",
            "Sessions held, connected or not.",
            gauge(&self.sessions_current).to_string(),
        );
        one(
            "fleetmq_subscriptions_current",
            "gauge",
            "Subscriptions held.",
            gauge(&self.subscriptions_current).to_string(),
        );
        one(
            "fleetmq_retained_messages_current",
            "gauge",
            "Retained messages held.",
            gauge(&self.retained_current).to_string(),
        );
        one(
            "fleetmq_queued_messages_current",
            "gauge",
            "Messages waiting in session queues.",
            gauge(&self.queued_messages_current).to_string(),
        );
        one(
            "fleetmq_storage_commits_total",
            "counter",
            "Durable flushes of the local store (group commits).",
            load(&self.commits_total).to_string(),
        );
        one(
            "fleetmq_storage_committed_batches_total",
            "counter",
            "Router batches made durable; divided by commits it gives the group commit factor.",
            load(&self.committed_batches_total).to_string(),
        );
        one(
            "fleetmq_storage_failed",
            "gauge",
            "1 once a commit failed for good (full disk, failed fsync, Raft stopped): the node refuses what it cannot store and drains.",
            self.storage_failed.load(Ordering::Relaxed).to_string(),
        );
        one(
            "fleetmq_storage_refused_acks_total",
            "counter",
            "PUBACK/PUBREC sent with an error reason (or connections closed, MQTT 3.1.1) because the message could not be stored.",
            load(&self.acks_refused_storage).to_string(),
        );
        one(
            "fleetmq_clients_moved_commit_stuck_total",
            "counter",
            "Clients told to move (DISCONNECT 0x9C) because a write they waited for could not commit for seconds: this node could not reach a majority.",
            load(&self.clients_moved_commit_stuck).to_string(),
        );
        one(
            "fleetmq_slow_consumer_disconnects_total",
            "counter",
            "Connections closed because they did not read their outgoing packets.",
            load(&self.slow_consumer_disconnects).to_string(),
        );
        one(
            "fleetmq_forwarded_out_total",
            "counter",
            "Messages sent to other nodes for their sessions (one per node and message).",
            load(&self.forwarded_out).to_string(),
        );
        one(
            "fleetmq_forwarded_in_total",
            "counter",
            "Messages received from other nodes for this node's sessions.",
            load(&self.forwarded_in).to_string(),
        );
        one(
            "fleetmq_applied_entries_total",
            "counter",
            "Replicated entries the router has seen applied on this node.",
            load(&self.applied_entries).to_string(),
        );
        one(
            "fleetmq_sessions_taken_over_total",
            "counter",
            "Sessions this node took from another node (reconnect elsewhere or adoption of a dead node's).",
            load(&self.sessions_taken_over).to_string(),
        );
        one(
            "fleetmq_replicated_commands_refused_total",
            "counter",
            "This node's replicated commands refused when applied: their client's session had moved to another node (fencing).",
            load(&self.commands_refused).to_string(),
        );
        one(
            "fleetmq_outputs_withdrawn_total",
            "counter",
            "Packets not sent because the PUBLISH that produced them was refused by the replicated log.",
            load(&self.outputs_withdrawn).to_string(),
        );
        one(
            "fleetmq_raft_elections_called_total",
            "counter",
            "Elections this node called early because its leader stopped answering (its address refused connections, or it did not answer a status probe).",
            load(&self.elections_called).to_string(),
        );
        one(
            "fleetmq_replicated_entries_undecodable_total",
            "counter",
            "Replicated log entries this node could not decode (written by a newer release, or damaged): refused when the leader sent them, or read from its own log, which stops applying on this node.",
            load(&self.entries_undecodable).to_string(),
        );

        let _ = writeln!(
            out,
            "# HELP fleetmq_messages_dropped_total Messages not delivered to a subscriber.\n# TYPE fleetmq_messages_dropped_total counter"
        );
        for reason in DropReason::ALL {
            let _ = writeln!(
                out,
                "fleetmq_messages_dropped_total{{reason=\"{}\"}} {}",
                reason.label(),
                self.dropped_count(reason)
            );
        }

        let _ = writeln!(
            out,
            "# HELP fleetmq_connections_closed_total Connections closed, by reason.\n# TYPE fleetmq_connections_closed_total counter"
        );
        for (index, counter) in self.closed.iter().enumerate() {
            let value = counter.load(Ordering::Relaxed);
            let label = match index {
                CLOSE_CLIENT => Some("client_disconnect".to_string()),
                CLOSE_LOST => Some("connection_lost".to_string()),
                code => u8::try_from(code)
                    .ok()
                    .and_then(ReasonCode::from_u8)
                    .map(reason_label),
            };
            if let Some(label) = label {
                if value > 0 || index >= CLOSE_CLIENT {
                    let _ = writeln!(
                        out,
                        "fleetmq_connections_closed_total{{reason=\"{label}\"}} {value}"
                    );
                }
            }
        }
        out
    }
}

/// `SessionTakenOver` → `session_taken_over`.
pub fn reason_label(code: ReasonCode) -> String {
    let name = format!("{code:?}");
    let mut out = String::with_capacity(name.len() + 4);
    for (i, ch) in name.chars().enumerate() {
        if ch.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(ch.to_ascii_lowercase());
        } else {
            out.push(ch);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_labels_are_snake_case() {
        assert_eq!(
            reason_label(ReasonCode::SessionTakenOver),
            "session_taken_over"
        );
        assert_eq!(
            reason_label(ReasonCode::MalformedPacket),
            "malformed_packet"
        );
        assert_eq!(
            reason_label(ReasonCode::ReceiveMaximumExceeded),
            "receive_maximum_exceeded"
        );
    }

    #[test]
    fn render_counts_closes_and_drops() {
        let m = Metrics::default();
        m.closed(CloseReason::Server(ReasonCode::PacketTooLarge));
        m.closed(CloseReason::Server(ReasonCode::PacketTooLarge));
        m.dropped(DropReason::QueueFull);
        let text = m.render();
        assert!(text.contains("fleetmq_connections_closed_total{reason=\"packet_too_large\"} 2"));
        assert!(text.contains("fleetmq_messages_dropped_total{reason=\"queue_full\"} 1"));
        assert!(text.contains("fleetmq_connections_closed_total{reason=\"connection_lost\"} 0"));
    }
}
