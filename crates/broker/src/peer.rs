//! What the router exchanges with other nodes outside Raft: PUBLISHes for their
//! clean sessions and QoS 0 subscribers, sent once per node over one ordered stream
//! (one hop: the receiver delivers to its own sessions and never forwards again).
//! The cluster crate implements [`Forwarder`]; a single node uses [`NoForwarder`].

use std::sync::Arc;

use fleetmq_codec::QoS;

use crate::message::Message;

/// One session on the receiving node that a forwarded message is for, with what the
/// origin's router decided for it (overlapping subscriptions already merged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardTarget {
    pub client: Arc<str>,
    pub qos: QoS,
    pub retain: bool,
    pub subscription_ids: Vec<u32>,
}

/// A message and the sessions of one node it is for.
#[derive(Debug, Clone)]
pub struct ForwardedPublish {
    pub origin_node: u64,
    pub message: Arc<Message>,
    pub targets: Vec<ForwardTarget>,
}

/// Sends forwarded PUBLISHes to other nodes. Never blocks the router: an
/// implementation queues (bounded) and counts what it had to drop.
pub trait Forwarder: Send + Sync + 'static {
    fn forward(&self, node: u64, publish: ForwardedPublish);
}

/// The forwarder of a node that has no peers: there is nobody to send to.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoForwarder;

impl Forwarder for NoForwarder {
    fn forward(&self, node: u64, _publish: ForwardedPublish) {
        tracing::warn!(node, "forward to another node without a cluster; dropped");
    }
}
