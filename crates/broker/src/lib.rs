//! FleetMQ's broker core: sessions, QoS 1/2 state machines, inflight windows,
//! offline queues, the retained store, wills and the router. It does no network
//! IO: connection tasks talk to it through [`Event`]s on a bounded channel and
//! drain a bounded outbox per connection ([`ConnectionHandle`]); it writes to
//! storage through [`fleetmq_storage::KvEngine`], group-committed.

pub mod admin;
pub mod command;
pub mod config;
pub mod connection;
pub mod message;
pub mod metrics;
pub mod peer;
pub mod persist;
pub mod router;
pub mod service;
pub mod session;

pub use admin::{AdminRequest, RetainedView, SessionDetail, SessionView, SubscriptionView};
pub use config::{BrokerConfig, QueueFullPolicy};
pub use connection::{
    AckKind, ConnId, ConnectionEnd, ConnectionHandle, ConnectionSignal, Next, Outgoing,
    OutgoingPublish,
};
pub use message::{now_ms, Message, MessageProperties};
pub use metrics::{CloseReason, DropReason, Metrics};
pub use peer::{ForwardTarget, ForwardedPublish, Forwarder, NoForwarder};
pub use router::{Applied, AppliedCommand, ConnectReply, ConnectRequest, Event, Settings};
pub use service::{
    BrokerParts, BrokerService, CommitError, Committer, LocalCommitter, RoutingView,
    StorageFailure, Visibility,
};
pub use session::Revocation;

#[cfg(test)]
mod router_cluster_tests;
#[cfg(test)]
mod router_tests;
#[cfg(test)]
mod service_tests;
