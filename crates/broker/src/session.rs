//! One client's session: its subscriptions and the QoS 1/2 state machines in both
//! directions. Pure state: the router decides what is written and sent.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

use fleetmq_codec::{LastWill, ProtocolVersion, QoS, SubscriptionOptions};
use fleetmq_topic::SmallMap;

use crate::connection::ConnectionHandle;
use crate::message::Message;

/// What a subscription of this session asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscriptionEntry {
    pub options: SubscriptionOptions,
    pub subscription_id: Option<u32>,
}

/// A message waiting for, or travelling to, this session's client.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Orders deliveries; also the storage key of a persistent delivery.
    pub seq: u64,
    pub message: Arc<Message>,
    /// Id of the stored message body when the session is persistent.
    pub stored_id: Option<u64>,
    pub qos: QoS,
    pub retain: bool,
    pub subscription_ids: Vec<u32>,
    /// Its record is in storage (written once before, here or by another node).
    pub persisted: bool,
    /// Set while the PUBLISH that made it is not applied by the replicated log yet:
    /// revoked if the log refuses that PUBLISH.
    pub revocation: Option<Revocation>,
}

/// Withdraws what a PUBLISH sent once the replicated log refuses it (its publisher's
/// session had moved to another node, which routes the client's resend instead).
/// Outputs carry it and are dropped when it is revoked; they are released only after
/// the router has taken the entry, so a refused PUBLISH sends nothing.
#[derive(Debug, Clone, Default)]
pub struct Revocation(Arc<std::sync::atomic::AtomicBool>);

impl Revocation {
    pub fn revoke(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Release);
    }

    pub fn is_revoked(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn same(&self, other: &Revocation) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// Where an outgoing QoS 1/2 message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// QoS 1 sent, waiting for PUBACK.
    AwaitPubAck,
    /// QoS 2 sent, waiting for PUBREC.
    AwaitPubRec,
    /// PUBREL sent, waiting for PUBCOMP.
    AwaitPubComp,
}

impl Phase {
    pub fn as_u8(self) -> u8 {
        match self {
            Phase::AwaitPubAck => 1,
            Phase::AwaitPubRec => 2,
            Phase::AwaitPubComp => 3,
        }
    }

    pub fn from_u8(value: u8) -> Option<Phase> {
        match value {
            1 => Some(Phase::AwaitPubAck),
            2 => Some(Phase::AwaitPubRec),
            3 => Some(Phase::AwaitPubComp),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Inflight {
    pub packet_id: u16,
    pub phase: Phase,
    pub delivery: Delivery,
}

#[derive(Debug)]
pub struct Session {
    pub client_id: Arc<str>,
    pub protocol: ProtocolVersion,
    /// Seconds the session outlives its connection; 0 ends it with the connection.
    pub expiry_interval: u32,
    /// Keyed by the filter as the client sent it, `$share/...` prefix included.
    /// Most sessions hold one or a few (see [`SmallMap`]).
    pub subscriptions: SmallMap<String, SubscriptionEntry>,
    /// Boxed: most sessions have none, and every session is kept for its whole life.
    pub will: Option<Box<LastWill>>,
    pub connection: Option<ConnectionHandle>,
    /// Bumped on every connect, so timers set for an earlier connection do nothing.
    pub generation: u64,
    /// In send order; at most `inflight_window` long.
    pub inflight: VecDeque<Inflight>,
    pub inflight_window: u16,
    pub queue: VecDeque<Delivery>,
    next_packet_id: u16,
    /// Its registry and session records are in the store (until the session ends).
    /// In a cluster every session's are: other nodes route to it from them, and
    /// publish a dead node's wills from them. A node alone stores only sessions that
    /// outlive their connection or carry a will, until a second node joins.
    pub stored: bool,
    /// Packet ids of QoS 2 PUBLISHes received and not yet released by PUBREL.
    /// A `BTreeSet`, like `held_before_pickup`: empty in nearly every session, and an
    /// empty one takes half the room of a `HashSet`.
    pub incoming_qos2: BTreeSet<u16>,
    /// Unix ms when the last connection ended, `None` while connected.
    pub disconnected_at_ms: Option<u64>,
    /// Seqs of deliveries this node wrote for the session while it was on its way here
    /// and already holds: their replicated writes, applied later, are not new.
    pub held_before_pickup: BTreeSet<u64>,
}

impl Session {
    pub fn new(client_id: Arc<str>, protocol: ProtocolVersion, expiry_interval: u32) -> Self {
        Session {
            client_id,
            protocol,
            expiry_interval,
            subscriptions: SmallMap::new(),
            will: None,
            connection: None,
            generation: 0,
            inflight: VecDeque::new(),
            inflight_window: 1,
            queue: VecDeque::new(),
            next_packet_id: 1,
            stored: false,
            incoming_qos2: BTreeSet::new(),
            disconnected_at_ms: None,
            held_before_pickup: BTreeSet::new(),
        }
    }

    /// Persistent sessions have their state written to storage.
    pub fn is_persistent(&self) -> bool {
        self.expiry_interval > 0
    }

    pub fn is_connected(&self) -> bool {
        self.connection.is_some()
    }

    /// True when one more QoS 1/2 message may be sent now.
    pub fn has_window(&self) -> bool {
        self.connection.is_some() && self.inflight.len() < usize::from(self.inflight_window)
    }

    /// A packet id not in use by any inflight message. The window is at most
    /// 65,535 long, so one is always free.
    pub fn allocate_packet_id(&mut self) -> u16 {
        loop {
            let id = self.next_packet_id;
            self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
            if !self.inflight.iter().any(|i| i.packet_id == id) {
                return id;
            }
        }
    }

    /// Makes sure freshly allocated ids skip those restored from storage.
    pub fn note_packet_id(&mut self, id: u16) {
        if id >= self.next_packet_id {
            self.next_packet_id = id.checked_add(1).unwrap_or(1);
        }
    }

    pub fn inflight_position(&self, packet_id: u16) -> Option<usize> {
        self.inflight.iter().position(|i| i.packet_id == packet_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connection::ConnectionHandle;
    use bytes::Bytes;

    fn delivery(seq: u64) -> Delivery {
        Delivery {
            seq,
            message: Arc::new(Message {
                topic: Arc::from("t"),
                payload: Bytes::new(),
                qos: QoS::AtLeastOnce,
                retain: false,
                properties: Default::default(),
                publisher: None,
                expires_at_ms: None,
            }),
            stored_id: None,
            qos: QoS::AtLeastOnce,
            retain: false,
            subscription_ids: vec![],
            persisted: false,
            revocation: None,
        }
    }

    #[test]
    fn packet_ids_skip_those_in_flight_and_wrap() {
        let mut s = Session::new(Arc::from("c"), ProtocolVersion::V5, 0);
        s.next_packet_id = u16::MAX;
        s.inflight.push_back(Inflight {
            packet_id: 1,
            phase: Phase::AwaitPubAck,
            delivery: delivery(1),
        });
        assert_eq!(s.allocate_packet_id(), u16::MAX);
        assert_eq!(
            s.allocate_packet_id(),
            2,
            "0 is never used and 1 is in flight"
        );
    }

    /// Every session is kept for as long as its client is connected (or its expiry
    /// runs), a million of them on a big node: what rarely holds anything is boxed or
    /// kept in containers that are small while empty.
    #[test]
    fn a_session_stays_small() {
        assert!(
            std::mem::size_of::<Session>() <= 224,
            "Session is {} bytes",
            std::mem::size_of::<Session>()
        );
    }

    #[test]
    fn window_needs_a_connection() {
        let mut s = Session::new(Arc::from("c"), ProtocolVersion::V5, 0);
        s.inflight_window = 2;
        assert!(!s.has_window());
        let (handle, _end) = ConnectionHandle::new(1, 4);
        s.connection = Some(handle);
        assert!(s.has_window());
        for i in 0..2 {
            s.inflight.push_back(Inflight {
                packet_id: i + 1,
                phase: Phase::AwaitPubAck,
                delivery: delivery(u64::from(i)),
            });
        }
        assert!(!s.has_window());
    }
}
