//! [`Core`]: the router's state shared between sessions, and the per-session QoS 1/2
//! state machines (deliver, queue, inflight window, acknowledgements) with the writes
//! they make, gathered per routed message into one command.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use fleetmq_codec::{QoS, ReasonCode};

use crate::command::{Command, Fence, NewDelivery, PublishCommand};
use crate::config::{BrokerConfig, QueueFullPolicy};
use crate::connection::{AckKind, ConnectionHandle, Outgoing, OutgoingPublish};
use crate::message::{now_ms, Message};
use crate::metrics::{DropReason, Metrics};
use crate::persist::{DeliveryRecord, IdGen, MessageRecord, OwnerRecord};
use crate::session::{Delivery, Inflight, Phase, Revocation, Session};

use super::round::{Output, Round};
use super::sessions::session_record;

/// State the router shares between sessions: everything but the sessions.
pub(super) struct Core {
    pub(super) config: BrokerConfig,
    pub(super) metrics: Arc<Metrics>,
    pub(super) round: Round,
    pub(super) ids: IdGen,
    /// The client registry as applied so far, with this node's own claims and ends
    /// counted from the moment it makes them: the record its next write for a client
    /// is fenced by.
    pub(super) owners: HashMap<Arc<str>, OwnerRecord>,
    /// The PUBLISH whose writes are being gathered into one command.
    pub(super) open: Option<OpenPublish>,
    /// This node's PUBLISH commands not applied yet that sent something out: revoked
    /// if the log refuses them.
    pub(super) revocations: HashMap<u64, Revocation>,
    /// CONNACKs of sessions resumed here whose claim is not applied yet: withdrawn if
    /// that claim is refused (`Router::connect`).
    pub(super) connect_revocations: HashMap<Arc<str>, Revocation>,
    /// Writes come back from a replicated log (every node but one on `--storage
    /// memory`): what this node applied in memory is confirmed or corrected from it.
    pub(super) replicated: bool,
    /// This node's retained and settings writes not applied yet, per topic or name: an
    /// applied value older than one of them must not replace it in memory.
    pub(super) retained_pending: HashMap<Arc<str>, u32>,
    pub(super) settings_pending: HashMap<String, u32>,
    /// Hands out session generations: unique across every incarnation of every
    /// session, so a timer of an ended session never matches its successor.
    pub(super) last_generation: u64,
    /// This node is the only member of its group: no other node routes to its
    /// sessions, so a clean session without a will is not stored (see
    /// [`Session::stored`]). Set by [`Applied::Members`](super::Applied::Members); a
    /// node without Raft is never told, and stores every session.
    pub(super) alone: bool,
}

/// One PUBLISH's writes while it is routed.
pub(super) struct OpenPublish {
    command: PublishCommand,
    /// What it sends is withdrawn if the log refuses it.
    revocation: Option<Revocation>,
}

impl Core {
    pub(super) fn send(&mut self, handle: &ConnectionHandle, item: Outgoing) {
        let revocation = self.revocation();
        self.round
            .outputs
            .push(Output::Send(handle.clone(), item, revocation));
    }

    pub(super) fn push(&mut self, command: Command) {
        self.round.commands.push(command);
    }

    pub(super) fn next_generation(&mut self) -> u64 {
        self.last_generation += 1;
        self.last_generation
    }

    /// The registry record this node's next write for `client` is fenced by.
    pub(super) fn fence(&self, client: &str) -> Fence {
        Fence {
            client: client.to_string(),
            owner: self.owners.get(client).copied(),
        }
    }

    /// Starts gathering what one routed message writes into one command.
    pub(super) fn begin_publish(&mut self, on_behalf: Option<Fence>, qos2_in: Option<u16>) {
        // Only a write on someone's behalf can be refused, and only when another node
        // can take that someone over.
        let revocation =
            (self.replicated && !self.alone && on_behalf.is_some()).then(Revocation::default);
        self.open = Some(OpenPublish {
            command: PublishCommand {
                id: 0,
                on_behalf,
                qos2_in,
                message: None,
                deliveries: Vec::new(),
            },
            revocation,
        });
    }

    /// Proposes what the message routed since [`Core::begin_publish`] writes, if any.
    pub(super) fn end_publish(&mut self) {
        let Some(open) = self.open.take() else {
            return;
        };
        if open.command.is_empty() {
            return;
        }
        let mut command = open.command;
        command.id = self.ids.next_id();
        if let Some(revocation) = open.revocation {
            self.revocations.insert(command.id, revocation);
        }
        self.push(Command::Publish(command));
    }

    /// What withdraws the outputs of the message being routed, if it can be refused.
    pub(super) fn revocation(&self) -> Option<Revocation> {
        self.open.as_ref().and_then(|o| o.revocation.clone())
    }

    /// The id of the message being routed, once its body is stored.
    pub(super) fn stored_id(&self) -> Option<u64> {
        self.open
            .as_ref()
            .and_then(|o| o.command.message.as_ref().map(|(id, _)| *id))
    }

    pub(super) fn write_retained(&mut self, topic: &Arc<str>, record: Option<MessageRecord>) {
        if self.replicated {
            *self.retained_pending.entry(topic.clone()).or_default() += 1;
        }
        self.push(Command::SetRetained {
            topic: topic.to_string(),
            message: record,
        });
    }

    pub(super) fn persist_session(&mut self, session: &mut Session) {
        if !self.stores(session) {
            return;
        }
        session.stored = true;
        let record = session_record(session);
        let fence = self.fence(&session.client_id);
        self.push(Command::SaveSession { fence, record });
    }

    /// Whether the session's records belong in the store (see [`Session::stored`]).
    fn stores(&self, session: &Session) -> bool {
        self.would_store(
            session.stored,
            session.expiry_interval,
            session.will.is_some(),
        )
    }

    /// The same for a session with these settings: whether it is stored already, its
    /// expiry interval (above 0: it outlives its connection), whether it has a will.
    pub(super) fn would_store(&self, stored: bool, expiry_interval: u32, has_will: bool) -> bool {
        stored || !self.alone || expiry_interval > 0 || has_will
    }

    /// Deletes what storage holds for a session that no longer persists.
    pub(super) fn forget_stored_state(&mut self, session: &mut Session) {
        let fence = self.fence(&session.client_id);
        self.push(Command::ForgetSession { fence });
        // The message bodies go with the next sweep, once no node's session points at them.
        for delivery in session
            .inflight
            .iter_mut()
            .map(|i| &mut i.delivery)
            .chain(session.queue.iter_mut())
        {
            delivery.stored_id = None;
        }
    }

    fn forget_delivery(&mut self, client: &str, delivery: &Delivery) {
        if delivery.stored_id.is_some() {
            let fence = self.fence(client);
            self.push(Command::RemoveDelivery {
                fence,
                seq: delivery.seq,
            });
        }
    }

    /// Stores the body of the message being routed (once however many sessions it is
    /// for) and returns its id.
    fn store_message(&mut self, message: &Arc<Message>) -> u64 {
        if let Some(id) = self.stored_id() {
            return id;
        }
        let id = self.ids.next_id();
        if self.open.is_none() {
            // Every caller routes inside begin/end_publish; a stray one still writes.
            self.begin_publish(None, None);
        }
        if let Some(open) = self.open.as_mut() {
            open.command.message = Some((id, MessageRecord::from_message(message)));
        }
        id
    }

    /// Adds the first write of a delivery to the message being routed.
    fn add_delivery(&mut self, client: &str, seq: u64, record: DeliveryRecord) {
        if self.open.is_none() {
            let fence = self.fence(client);
            self.begin_publish(Some(fence), None);
        }
        if let Some(open) = self.open.as_mut() {
            open.command.deliveries.push(NewDelivery {
                client: client.to_string(),
                seq,
                record,
            });
        }
    }

    /// A delivery for a persistent session on another node, written for its owner.
    pub(super) fn store_remote_delivery(
        &mut self,
        client: &str,
        message: &Arc<Message>,
        qos: QoS,
        retain: bool,
        subscription_ids: Vec<u32>,
    ) -> u64 {
        let message_id = self.store_message(message);
        let seq = self.ids.next_id();
        let record = DeliveryRecord {
            message_id,
            qos: qos.as_u8(),
            retain,
            subscription_ids,
            inflight: None,
            for_remote_owner: true,
            first_write: true,
        };
        self.add_delivery(client, seq, record);
        seq
    }

    fn store_delivery(
        &mut self,
        client: &str,
        delivery: &mut Delivery,
        inflight: Option<(u16, Phase)>,
    ) {
        let Some(id) = delivery.stored_id else {
            return;
        };
        let record = DeliveryRecord {
            message_id: id,
            qos: delivery.qos.as_u8(),
            retain: delivery.retain,
            subscription_ids: delivery.subscription_ids.clone(),
            inflight: inflight.map(|(pid, phase)| (pid, phase.as_u8())),
            for_remote_owner: false,
            first_write: !delivery.persisted,
        };
        if delivery.persisted {
            let fence = self.fence(client);
            self.push(Command::DeliveryPhase {
                fence,
                seq: delivery.seq,
                record,
            });
        } else {
            delivery.persisted = true;
            self.add_delivery(client, delivery.seq, record);
        }
    }

    /// Hands one message to one session: sent now, queued, or dropped by policy.
    pub(super) fn deliver(
        &mut self,
        session: &mut Session,
        message: &Arc<Message>,
        qos: QoS,
        retain: bool,
        subscription_ids: Vec<u32>,
    ) {
        if qos == QoS::AtMostOnce {
            // QoS 0 is never queued for an absent client, nor tracked: straight out.
            if let Some(handle) = &session.connection {
                let publish = OutgoingPublish {
                    message: message.clone(),
                    qos,
                    packet_id: None,
                    dup: false,
                    retain,
                    subscription_ids,
                };
                self.send(handle, Outgoing::Publish(publish));
            }
            return;
        }
        let mut delivery = Delivery {
            seq: self.ids.next_id(),
            message: message.clone(),
            stored_id: None,
            qos,
            retain,
            subscription_ids,
            persisted: false,
            revocation: self.revocation(),
        };
        if session.is_persistent() {
            delivery.stored_id = Some(self.store_message(message));
        }
        self.enqueue(session, delivery, false);
    }

    /// Sends a QoS 1/2 delivery now if the window allows, else queues it, or drops
    /// by policy when the queue is full. `stored`: its record is already in storage
    /// (another node wrote it).
    pub(super) fn enqueue(&mut self, session: &mut Session, mut delivery: Delivery, stored: bool) {
        if session.queue.is_empty() && session.has_window() {
            self.start_inflight(session, delivery);
            return;
        }
        if session.queue.len() >= self.config.max_queued_messages {
            self.metrics.dropped(DropReason::QueueFull);
            match self.config.queue_full_policy {
                QueueFullPolicy::DropNew => {
                    if stored {
                        self.forget_delivery(&session.client_id, &delivery);
                    }
                    return;
                }
                QueueFullPolicy::DropOldest => {
                    if let Some(oldest) = session.queue.pop_front() {
                        Metrics::gauge_add(&self.metrics.queued_messages_current, -1);
                        self.forget_delivery(&session.client_id, &oldest);
                    }
                }
            }
        }
        if !stored {
            self.store_delivery(&session.client_id, &mut delivery, None);
        }
        // Waiting for the window of a client that is here; a dropped delivery does not
        // wait, and one for an offline session waits for its client, not the window.
        if session.connection.is_some() {
            self.metrics.inflight_waits.fetch_add(1, Ordering::Relaxed);
        }
        session.queue.push_back(delivery);
        Metrics::gauge_add(&self.metrics.queued_messages_current, 1);
    }

    fn start_inflight(&mut self, session: &mut Session, mut delivery: Delivery) {
        let Some(handle) = session.connection.clone() else {
            return;
        };
        let packet_id = session.allocate_packet_id();
        let phase = if delivery.qos == QoS::ExactlyOnce {
            Phase::AwaitPubRec
        } else {
            Phase::AwaitPubAck
        };
        self.store_delivery(&session.client_id, &mut delivery, Some((packet_id, phase)));
        self.send_publish(&handle, &delivery, Some(packet_id), false);
        session.inflight.push_back(Inflight {
            packet_id,
            phase,
            delivery,
        });
    }

    fn send_publish(
        &mut self,
        handle: &ConnectionHandle,
        delivery: &Delivery,
        packet_id: Option<u16>,
        dup: bool,
    ) {
        let publish = Outgoing::Publish(OutgoingPublish {
            message: delivery.message.clone(),
            qos: delivery.qos,
            packet_id,
            dup,
            retain: delivery.retain,
            subscription_ids: delivery.subscription_ids.clone(),
        });
        self.round.outputs.push(Output::Send(
            handle.clone(),
            publish,
            delivery.revocation.clone(),
        ));
    }

    /// Fills the inflight window from the queue.
    fn pump(&mut self, session: &mut Session) {
        let now = now_ms();
        while session.has_window() {
            let Some(delivery) = session.queue.pop_front() else {
                break;
            };
            Metrics::gauge_add(&self.metrics.queued_messages_current, -1);
            if delivery.message.is_expired(now) {
                self.metrics.dropped(DropReason::Expired);
                self.forget_delivery(&session.client_id, &delivery);
                continue;
            }
            self.start_inflight(session, delivery);
        }
    }

    /// After a (re)connect: resend what was in flight, then send what waited.
    pub(super) fn resume(&mut self, session: &mut Session) {
        let Some(handle) = session.connection.clone() else {
            return;
        };
        for inflight in &session.inflight {
            match inflight.phase {
                Phase::AwaitPubAck | Phase::AwaitPubRec => {
                    self.send_publish(&handle, &inflight.delivery, Some(inflight.packet_id), true)
                }
                Phase::AwaitPubComp => {
                    self.send(&handle, Outgoing::ack(AckKind::PubRel, inflight.packet_id))
                }
            }
        }
        self.pump(session);
    }

    /// PUBACK (QoS 1) or PUBCOMP (QoS 2) ends a message's journey.
    pub(super) fn complete(&mut self, session: &mut Session, packet_id: u16, expected: Phase) {
        let Some(at) = session.inflight_position(packet_id) else {
            return;
        };
        if session.inflight[at].phase != expected {
            return;
        }
        self.finish_inflight(session, at);
    }

    /// Ends the exchange of the inflight message at `at` and refills the window.
    fn finish_inflight(&mut self, session: &mut Session, at: usize) {
        if let Some(done) = session.inflight.remove(at) {
            self.forget_delivery(&session.client_id, &done.delivery);
        }
        self.pump(session);
    }

    /// Acks a packet id the session does not know: 0x92 in MQTT 5, which has a code for it.
    fn send_unknown_id_ack(&mut self, session: &Session, kind: AckKind, packet_id: u16) {
        let Some(handle) = &session.connection else {
            return;
        };
        let reason = if session.protocol.is_v5() {
            ReasonCode::PacketIdentifierNotFound
        } else {
            ReasonCode::Success
        };
        self.send(
            handle,
            Outgoing::Ack {
                kind,
                packet_id,
                reason,
            },
        );
    }

    pub(super) fn pubrec(&mut self, session: &mut Session, packet_id: u16, reason: ReasonCode) {
        let Some(handle) = session.connection.clone() else {
            return;
        };
        let Some(at) = session.inflight_position(packet_id) else {
            self.send_unknown_id_ack(session, AckKind::PubRel, packet_id);
            return;
        };
        if reason.is_error() {
            // The receiver refused the message: the exchange ends here.
            self.finish_inflight(session, at);
            return;
        }
        let client = session.client_id.clone();
        let entry = &mut session.inflight[at];
        if entry.phase == Phase::AwaitPubRec {
            entry.phase = Phase::AwaitPubComp;
            let mut delivery = entry.delivery.clone();
            self.store_delivery(
                &client,
                &mut delivery,
                Some((packet_id, Phase::AwaitPubComp)),
            );
        }
        self.send(&handle, Outgoing::ack(AckKind::PubRel, packet_id));
    }

    pub(super) fn pubrel(&mut self, session: &mut Session, packet_id: u16) {
        let known = session.incoming_qos2.remove(&packet_id);
        if known && session.is_persistent() {
            let fence = self.fence(&session.client_id);
            self.push(Command::ReleaseQos2 { fence, packet_id });
        }
        if known {
            if let Some(handle) = session.connection.clone() {
                self.send(&handle, Outgoing::ack(AckKind::PubComp, packet_id));
            }
        } else {
            self.send_unknown_id_ack(session, AckKind::PubComp, packet_id);
        }
    }
}
