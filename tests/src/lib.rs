//! The harness of FleetMQ's black-box integration tests.
//!
//! Every test starts its own `fleetmq` process ([`BrokerProcess`]) on fresh
//! loopback ports and a fresh data directory, so tests run in parallel, and drives
//! it with clients written by others (`rumqttc` v4 and v5: [`V4Client`],
//! [`V5Client`]) or, for what those cannot express, with a [`RawClient`] that
//! encodes valid packets with our codec and sends malformed ones as hand-written
//! bytes ([`raw::wire`]).
//!
//! Cluster tests start three processes as one [`Cluster`] (`--peers`, `/readyz`,
//! `fleetmq ctl status`), optionally behind fault-injecting [`Proxy`]s that cut a node
//! off, and drive them with reconnecting raw clients ([`cluster::Publisher`],
//! [`cluster::DurableSubscriber`]) whose records [`cluster::check_delivery`] judges.
//!
//! Helpers named `must_*` panic with a useful message instead of returning an error.

pub mod broker;
pub mod cluster;
pub mod kafka;
pub mod metrics;
pub mod proxy;
pub mod raw;
pub mod v4;
pub mod v5;

use std::time::Duration;

pub use broker::{broker_binary, BrokerOptions, BrokerProcess};
pub use cluster::{Cluster, ClusterOptions, NodeStatus};
pub use metrics::Metrics;
pub use proxy::Proxy;
pub use raw::{RawClient, Recv};
pub use v4::{v4_options, V4Client};
pub use v5::{v5_options, V5Client};

/// How long to wait for something that should happen.
pub const WAIT: Duration = Duration::from_secs(10);
/// How long to watch for something that should not happen.
pub const QUIET: Duration = Duration::from_millis(1500);

/// A client id unique within the test process, readable in logs.
pub fn unique_id(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A payload as text, for assertions and messages.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Metric names of the testing contract (docs/testing-contract.md).
pub mod names {
    pub const CONNECTIONS_CURRENT: &str = "fleetmq_connections_current";
    pub const CONNECTIONS_TOTAL: &str = "fleetmq_connections_total";
    pub const CONNECTIONS_CLOSED: &str = "fleetmq_connections_closed_total";
    pub const DECODE_ERRORS: &str = "fleetmq_decode_errors_total";
    pub const MESSAGES_RECEIVED: &str = "fleetmq_messages_received_total";
    pub const MESSAGES_SENT: &str = "fleetmq_messages_sent_total";
    pub const BYTES_RECEIVED: &str = "fleetmq_bytes_received_total";
    pub const BYTES_SENT: &str = "fleetmq_bytes_sent_total";
    pub const MESSAGES_DROPPED: &str = "fleetmq_messages_dropped_total";
    pub const SESSIONS_CURRENT: &str = "fleetmq_sessions_current";
    pub const SUBSCRIPTIONS_CURRENT: &str = "fleetmq_subscriptions_current";
    pub const RETAINED_CURRENT: &str = "fleetmq_retained_messages_current";
}
