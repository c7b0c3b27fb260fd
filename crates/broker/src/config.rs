//! The limits and behaviours of the broker core, validated by the server's config layer.

use std::time::Duration;

/// What a full session queue does with one more message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueFullPolicy {
    /// Keep the queue, drop the incoming message.
    #[default]
    DropNew,
    /// Drop the oldest queued message to make room.
    DropOldest,
}

#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub node_id: u64,
    /// Largest packet the server accepts, in bytes.
    pub max_packet_size: u32,
    /// The Receive Maximum the server advertises and enforces.
    pub receive_maximum: u16,
    /// Cap on QoS 1/2 messages in flight to one client.
    pub max_inflight: u16,
    /// 0 means no limit.
    pub max_keep_alive: u16,
    pub max_session_expiry_interval: u32,
    pub max_queued_messages: usize,
    pub queue_full_policy: QueueFullPolicy,
    pub topic_alias_maximum: u16,
    pub max_topic_levels: usize,
    pub retain_available: bool,
    /// `None` disables the `$SYS` publisher.
    pub sys_interval: Option<Duration>,
    /// Capacity of each connection's outbox channel beyond its inflight window.
    pub outbox_capacity: usize,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            node_id: 1,
            max_packet_size: 1024 * 1024,
            receive_maximum: 1024,
            max_inflight: 1024,
            max_keep_alive: 3600,
            max_session_expiry_interval: u32::MAX,
            max_queued_messages: 10_000,
            queue_full_policy: QueueFullPolicy::DropNew,
            topic_alias_maximum: 64,
            max_topic_levels: 128,
            retain_available: true,
            sys_interval: Some(Duration::from_secs(10)),
            outbox_capacity: 4096,
        }
    }
}
