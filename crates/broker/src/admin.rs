//! What the admin API asks of the router, answered from the router's own state: one
//! session, the subscriptions, the retained messages; and the one order it takes,
//! deleting a retained message (a replicated write, like any other).

use std::sync::Arc;

use bytes::Bytes;
use fleetmq_codec::{ProtocolVersion, QoS, SubscriptionOptions};
use fleetmq_topic::TopicFilter;
use tokio::sync::oneshot;

/// A question or order for the router; each carries where its answer goes.
#[derive(Debug)]
pub enum AdminRequest {
    /// The session of `client_id`, wherever in the cluster it is held.
    Session {
        client_id: String,
        reply: oneshot::Sender<Option<SessionView>>,
    },
    /// Subscriptions, those of `client_id` only when given, at most `limit`, in
    /// client id then filter order.
    Subscriptions {
        client_id: Option<String>,
        limit: usize,
        reply: oneshot::Sender<Vec<SubscriptionView>>,
    },
    /// Retained messages whose topic `filter` matches, at most `limit`, in topic order.
    Retained {
        filter: TopicFilter,
        limit: usize,
        reply: oneshot::Sender<Vec<RetainedView>>,
    },
    /// Deletes the retained message of `topic`: `existed` answers at once whether
    /// there was one, `done` fires once the deletion is durable (replicated).
    DeleteRetained {
        topic: Arc<str>,
        existed: oneshot::Sender<bool>,
        done: oneshot::Sender<()>,
    },
    /// Sets (or with `None` removes) the cluster-wide setting `name`; `done` fires
    /// once durable. Every node's [`crate::Settings`] follow.
    PutSetting {
        name: String,
        value: Option<Bytes>,
        done: oneshot::Sender<()>,
    },
}

/// One session as the router knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionView {
    pub client_id: Arc<str>,
    /// The node that holds the session.
    pub node: u64,
    pub connected: bool,
    /// It outlives its connection (session expiry interval > 0).
    pub persistent: bool,
    /// What only the holding node knows; `None` when another node holds it.
    pub detail: Option<SessionDetail>,
    /// Filters as the client sent them, in order.
    pub subscriptions: Vec<SubscriptionView>,
}

/// The parts of a session only the node holding it has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionDetail {
    pub protocol: ProtocolVersion,
    pub expiry_interval: u32,
    /// Messages waiting to be sent.
    pub queued: usize,
    /// QoS 1/2 messages sent and not yet acknowledged.
    pub inflight: usize,
    /// QoS 2 PUBLISHes received and not yet released.
    pub incoming_qos2: usize,
    pub will_topic: Option<Arc<str>>,
    /// Unix ms when the last connection ended; `None` while connected.
    pub disconnected_at_ms: Option<u64>,
}

/// One subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionView {
    pub client_id: Arc<str>,
    pub filter: String,
    pub node: u64,
    /// Known on the node that holds the session only.
    pub options: Option<SubscriptionOptions>,
    pub subscription_id: Option<u32>,
}

/// One retained message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetainedView {
    pub topic: Arc<str>,
    pub qos: QoS,
    pub payload: Bytes,
}
