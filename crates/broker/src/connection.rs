//! The router's side of a client connection: a bounded outbox the connection task
//! drains into its socket, and a switch to close it.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use fleetmq_codec::{Packet, PubResponse, QoS, ReasonCode};
use tokio::sync::{mpsc, watch};

use crate::message::Message;
use crate::metrics::{DropReason, Metrics};

/// Identifies one network connection (not a client id: a client reconnecting gets a new one).
pub type ConnId = u64;

/// A PUBLISH on its way to one subscriber. The connection task turns it into a
/// packet, applying its topic aliases and the remaining expiry at write time.
#[derive(Debug, Clone)]
pub struct OutgoingPublish {
    pub message: Arc<Message>,
    pub qos: QoS,
    pub packet_id: Option<u16>,
    pub dup: bool,
    pub retain: bool,
    pub subscription_ids: Vec<u32>,
}

/// Which of the four QoS acknowledgements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckKind {
    PubAck,
    PubRec,
    PubRel,
    PubComp,
}

#[derive(Debug, Clone)]
pub enum Outgoing {
    Publish(OutgoingPublish),
    /// The most frequent control packets, kept small so the outbox stays compact.
    Ack {
        kind: AckKind,
        packet_id: u16,
        reason: ReasonCode,
    },
    /// SUBACK, UNSUBACK and the like, ready to encode.
    Packet(Box<Packet>),
}

impl Outgoing {
    pub fn ack(kind: AckKind, packet_id: u16) -> Outgoing {
        Outgoing::Ack {
            kind,
            packet_id,
            reason: ReasonCode::Success,
        }
    }

    /// The packet to encode for anything but a PUBLISH.
    pub fn into_packet(self) -> Option<Packet> {
        match self {
            Outgoing::Publish(_) => None,
            Outgoing::Ack {
                kind,
                packet_id,
                reason,
            } => {
                let mut response = PubResponse::new(packet_id);
                response.reason_code = reason;
                Some(match kind {
                    AckKind::PubAck => Packet::PubAck(response),
                    AckKind::PubRec => Packet::PubRec(response),
                    AckKind::PubRel => Packet::PubRel(response),
                    AckKind::PubComp => Packet::PubComp(response),
                })
            }
            Outgoing::Packet(packet) => Some(*packet),
        }
    }
}

/// The router's handle on a connection task.
#[derive(Debug, Clone)]
pub struct ConnectionHandle {
    pub id: ConnId,
    outbox: mpsc::Sender<Outgoing>,
    close: Arc<watch::Sender<Option<ReasonCode>>>,
}

/// The connection task's end of its handle.
pub struct ConnectionEnd {
    pub outbox: mpsc::Receiver<Outgoing>,
    pub close: watch::Receiver<Option<ReasonCode>>,
}

impl ConnectionHandle {
    /// A handle and the connection task's end, with an outbox of `capacity` items.
    pub fn new(id: ConnId, capacity: usize) -> (ConnectionHandle, ConnectionEnd) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let (close_tx, close_rx) = watch::channel(None);
        (
            ConnectionHandle {
                id,
                outbox: tx,
                close: Arc::new(close_tx),
            },
            ConnectionEnd {
                outbox: rx,
                close: close_rx,
            },
        )
    }

    /// Asks the connection task to send DISCONNECT with `reason` (MQTT 5) and close.
    pub fn close(&self, reason: ReasonCode) {
        self.close.send_replace(Some(reason));
    }

    /// Queues `item` without waiting. The router never blocks on one slow client:
    /// a QoS 0 message that does not fit is dropped and counted; anything else
    /// that does not fit closes the connection (its session keeps the state).
    ///
    /// Nothing is queued once the router has asked the connection to close: a round
    /// decided before, say, the session moved to another node is released only after
    /// the move, and what it sends would reach a client whose session is now elsewhere
    /// (a QoS 2 message delivered there again under another packet id).
    pub fn send(&self, item: Outgoing, metrics: &Metrics) -> bool {
        if self.close.borrow().is_some() {
            return false;
        }
        match self.outbox.try_send(item) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(item)) => {
                if matches!(&item, Outgoing::Publish(p) if p.qos == QoS::AtMostOnce) {
                    metrics.dropped(DropReason::OutboxFull);
                } else {
                    metrics
                        .slow_consumer_disconnects
                        .fetch_add(1, Ordering::Relaxed);
                    self.close(ReasonCode::QuotaExceeded);
                }
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}
