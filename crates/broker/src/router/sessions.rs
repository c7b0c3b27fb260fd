//! Sessions: which node holds each one (claims in the client registry), what this node
//! knows of other nodes' sessions, and connecting, attaching a connection,
//! disconnecting, ending, installing, handing off and removing sessions.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetmq_codec::{LastWill, ProtocolVersion, QoS, ReasonCode};
use fleetmq_topic::TopicFilter;
use tokio::sync::oneshot;
use tracing::{debug, warn};

use crate::command::Command;
use crate::connection::{ConnId, ConnectionHandle};
use crate::message::{now_ms, Message};
use crate::metrics::Metrics;
use crate::persist::{ClientState, OwnerRecord, SessionRecord, SubscriptionRecord, WillRecord};
use crate::session::{Delivery, Inflight, Revocation, Session};

use super::round::Output;
use super::{ConnectReply, ConnectRequest, Router, Timer};

/// What this node knows of a session another node holds: enough to route to it.
#[derive(Debug)]
pub(super) struct RemoteSession {
    pub(super) persistent: bool,
    pub(super) connected: bool,
    pub(super) filters: Vec<String>,
}

/// A CONNECT waiting for its session to arrive from the node that held it.
pub(super) struct PendingConnect {
    pub(super) conn: ConnectionHandle,
    pub(super) request: ConnectRequest,
    pub(super) reply: oneshot::Sender<ConnectReply>,
    /// Messages routed here for the session meanwhile, in order. A durable one (with
    /// its seq) was also written for the session's owner: its write is applied after
    /// the session arrives, and delivering it only then would put it behind messages
    /// routed after the session arrived.
    pub(super) held: Vec<HeldDelivery>,
}

pub(super) struct HeldDelivery {
    pub(super) seq: Option<u64>,
    pub(super) revocation: Option<Revocation>,
    pub(super) stored_id: Option<u64>,
    pub(super) message: Arc<Message>,
    pub(super) qos: QoS,
    pub(super) retain: bool,
    pub(super) subscription_ids: Vec<u32>,
}

/// What a live connection sets on its session: what its CONNECT asked for.
pub(super) struct Attach {
    pub(super) protocol: ProtocolVersion,
    pub(super) expiry_interval: u32,
    pub(super) will: Option<Box<LastWill>>,
    pub(super) inflight_window: u16,
}

impl Router {
    /// True when this node holds (or may take without asking) the client's session.
    pub(super) fn is_mine(&self, client: &str) -> bool {
        self.core
            .owners
            .get(client)
            .is_none_or(|owner| owner.node == self.node_id)
    }

    /// Records in the registry that this node holds the client's session from now on,
    /// in place of the record this node knows of. Proposed before anything else of the
    /// client in the same round, whose writes are fenced by the new record.
    pub(super) fn claim(&mut self, client: &Arc<str>) {
        let expected = self.core.owners.get(client).copied();
        let owner = OwnerRecord {
            node: self.node_id,
            epoch: expected.map_or(0, |o| o.epoch) + 1,
        };
        self.core.owners.insert(client.clone(), owner);
        self.core.push(Command::Claim {
            client: client.to_string(),
            expected,
            owner,
        });
    }

    /// Makes a stored session this node's: in memory, in the trie, with its timers.
    /// A session stored as connected lost its connection now (its node died, or this
    /// process did).
    pub(super) fn install_session(
        &mut self,
        client: Arc<str>,
        state: ClientState,
        messages: &HashMap<u64, Arc<Message>>,
    ) {
        let Some(record) = state.session else {
            return;
        };
        self.set_remote(&client, None);
        let now = now_ms();
        let instant_now = Instant::now();
        let mut session = Session::new(client.clone(), record.protocol(), record.expiry_interval);
        session.stored = true;
        session.generation = self.core.next_generation();
        let generation = session.generation;
        for sub in &record.subscriptions {
            match TopicFilter::parse(&sub.filter) {
                Ok(filter) => {
                    let entry = sub.entry();
                    self.trie.insert(&filter, client.clone(), entry);
                    session.subscriptions.insert(sub.filter.clone(), entry);
                }
                Err(e) => {
                    warn!(client_id = %client, filter = %sub.filter, error = %e, "dropping stored subscription")
                }
            }
        }
        let ended_at = record.disconnected_at_ms.unwrap_or(now);
        session.disconnected_at_ms = Some(ended_at);
        session.will = record.will.map(|w| Box::new(w.into_will()));
        let elapsed = Duration::from_millis(now.saturating_sub(ended_at));
        if let Some(will) = &session.will {
            // As at a disconnect: the will goes at its delay or the session's end.
            let delay = Duration::from_secs(u64::from(
                will.properties
                    .will_delay_interval
                    .unwrap_or(0)
                    .min(session.expiry_interval),
            ));
            self.set_timer(
                instant_now + delay.saturating_sub(elapsed),
                Timer::WillDelay {
                    client: client.clone(),
                    generation,
                },
            );
        }
        if session.expiry_interval != u32::MAX {
            let expiry = Duration::from_secs(u64::from(session.expiry_interval));
            self.set_timer(
                instant_now + expiry.saturating_sub(elapsed),
                Timer::SessionExpiry {
                    client: client.clone(),
                    generation,
                },
            );
        }
        for (seq, record) in state.deliveries {
            self.core.ids.observe(seq);
            let Some(message) = messages.get(&record.message_id) else {
                warn!(client_id = %client, seq, "stored delivery without its message");
                let fence = self.core.fence(&client);
                self.core.push(Command::RemoveDelivery { fence, seq });
                continue;
            };
            let delivery = Delivery {
                seq,
                message: message.clone(),
                stored_id: Some(record.message_id),
                qos: QoS::from_u8(record.qos).unwrap_or(QoS::AtLeastOnce),
                retain: record.retain,
                subscription_ids: record.subscription_ids.clone(),
                persisted: true,
                revocation: None,
            };
            match record.phase() {
                Some((packet_id, phase)) => {
                    session.note_packet_id(packet_id);
                    session.inflight.push_back(Inflight {
                        packet_id,
                        phase,
                        delivery,
                    });
                }
                None => {
                    session.queue.push_back(delivery);
                    Metrics::gauge_add(&self.core.metrics.queued_messages_current, 1);
                }
            }
        }
        session.incoming_qos2.extend(state.qos2_in);
        Metrics::gauge_add(&self.core.metrics.sessions_current, 1);
        Metrics::gauge_add(
            &self.core.metrics.subscriptions_current,
            session.subscriptions.len() as i64,
        );
        self.sessions.insert(client, Box::new(session));
    }

    /// Replaces what the trie holds for a session of another node (`None`: it has none).
    pub(super) fn set_remote(&mut self, client: &Arc<str>, record: Option<&SessionRecord>) {
        if let Some(old) = self.remote.remove(client) {
            for filter in &old.filters {
                if let Ok(parsed) = TopicFilter::parse(filter) {
                    self.trie.remove(&parsed, client);
                }
            }
        }
        let Some(record) = record else {
            return;
        };
        let mut filters = Vec::with_capacity(record.subscriptions.len());
        for sub in &record.subscriptions {
            if let Ok(parsed) = TopicFilter::parse(&sub.filter) {
                self.trie.insert(&parsed, client.clone(), sub.entry());
                filters.push(sub.filter.clone());
            }
        }
        self.remote.insert(
            client.clone(),
            RemoteSession {
                persistent: record.expiry_interval > 0,
                connected: record.disconnected_at_ms.is_none(),
                filters,
            },
        );
    }

    /// Another node now holds a session this node held: let go of it without touching
    /// storage (the new owner writes it from now on) and route to it as remote.
    pub(super) fn hand_off(&mut self, client: &Arc<str>) {
        let Some((session, conn)) = self.remove_session(client) else {
            return;
        };
        if let Some(conn) = conn {
            debug!(client_id = %client, "session moved to another node");
            conn.close(ReasonCode::SessionTakenOver);
        }
        // The trie keeps the entries, keyed by client: they now mean the remote session.
        self.remote.insert(
            client.clone(),
            RemoteSession {
                persistent: session.is_persistent(),
                connected: true,
                filters: session.subscriptions.keys().cloned().collect(),
            },
        );
    }

    /// Drops a session from memory (not from the trie, not from storage) with its
    /// connection's entry and its gauges; returns it and the connection it had.
    pub(super) fn remove_session(
        &mut self,
        client: &Arc<str>,
    ) -> Option<(Session, Option<ConnectionHandle>)> {
        let mut session = self.sessions.remove(client)?;
        let conn = session.connection.take();
        if let Some(conn) = &conn {
            self.connections.remove(&conn.id);
        }
        let metrics = &self.core.metrics;
        Metrics::gauge_add(&metrics.sessions_current, -1);
        Metrics::gauge_add(
            &metrics.subscriptions_current,
            -(session.subscriptions.len() as i64),
        );
        Metrics::gauge_add(
            &metrics.queued_messages_current,
            -(session.queue.len() as i64),
        );
        Some((*session, conn))
    }

    pub(super) fn connect(
        &mut self,
        conn: ConnectionHandle,
        request: ConnectRequest,
        reply: oneshot::Sender<ConnectReply>,
    ) {
        self.connect_claimed(conn, request, reply, false);
    }

    /// A CONNECT; `just_claimed`: its session arrived here by a claim made for it and
    /// applied just now (a CONNECT that waited), so it needs no claim again.
    pub(super) fn connect_claimed(
        &mut self,
        conn: ConnectionHandle,
        request: ConnectRequest,
        reply: oneshot::Sender<ConnectReply>,
        just_claimed: bool,
    ) {
        let client = request.client_id.clone();
        let waiting = self.pending.contains_key(&client);
        if waiting || (!self.sessions.contains_key(&client) && !self.is_mine(&client)) {
            // Another node holds the session: claim it, and finish this CONNECT once
            // the claim is applied and the session's state has been read here. A
            // CONNECT already waiting for it gives its place to this one.
            if !waiting {
                self.claim(&client);
            }
            let held = match self.pending.remove(&client) {
                Some(old) => {
                    old.conn.close(ReasonCode::SessionTakenOver);
                    old.held
                }
                None => Vec::new(),
            };
            let pending = PendingConnect {
                conn,
                request,
                reply,
                held,
            };
            self.pending.insert(client, pending);
            return;
        }
        let mut session_present = false;
        let mut old_will = None;
        if let Some(existing) = self.sessions.get_mut(&client) {
            if let Some(old) = existing.connection.take() {
                debug!(client_id = %client, old_conn = old.id, "session taken over");
                old.close(ReasonCode::SessionTakenOver);
                self.connections.remove(&old.id);
            }
            // A session that ends with its connection (expiry 0) ended with the one just
            // taken over, even when its DISCONNECT is still on its way here.
            if request.clean_start || existing.expiry_interval == 0 {
                old_will = existing.will.take();
                self.end_session(&client);
            } else {
                session_present = true;
            }
        }
        if let Some(will) = old_will {
            self.publish_will(&client, &will);
        }
        // As `Core::stores` will find once the session has this connection's settings.
        let stored = self.core.would_store(
            self.sessions.get(&client).is_some_and(|s| s.stored),
            request.session_expiry_interval,
            request.will.is_some(),
        );
        let resumed_here = self.sessions.contains_key(&client);
        let mut revocation = None;
        if stored
            && (self.core.owners.get(&client).map(|o| o.node) != Some(self.node_id)
                || !resumed_here)
        {
            self.claim(&client);
        } else if stored
            && resumed_here
            && !just_claimed
            && self.core.replicated
            && !self.core.alone
        {
            // Held here, but another node may have claimed it already for an earlier
            // CONNECT of this client that is not applied yet (the client gave up on
            // that node and came here). Claiming again orders the two: if the other
            // claim is first, this one is refused and the CONNACK withdrawn (0x88: the
            // client tries again), rather than sent with session present and followed
            // by 0x8E when the other claim lands.
            self.claim(&client);
            let withdraw = Revocation::default();
            self.core
                .connect_revocations
                .insert(client.clone(), withdraw.clone());
            revocation = Some(withdraw);
        }
        let live = Attach {
            protocol: request.protocol,
            expiry_interval: request.session_expiry_interval,
            will: request.will.map(Box::new),
            inflight_window: request
                .receive_maximum
                .min(self.core.config.max_inflight)
                .max(1),
        };
        self.attach(
            client,
            conn,
            live,
            Some((reply, ConnectReply { session_present }, revocation)),
        );
    }

    /// Gives the client's session (a new one if it has none) the connection `conn`,
    /// stores it as connected, answers the CONNECT if there is one to answer, and
    /// sends what waited: resent inflight messages first, then the queue.
    pub(super) fn attach(
        &mut self,
        client: Arc<str>,
        conn: ConnectionHandle,
        live: Attach,
        reply: Option<(
            oneshot::Sender<ConnectReply>,
            ConnectReply,
            Option<Revocation>,
        )>,
    ) {
        let core = &mut self.core;
        let session = self.sessions.entry(client.clone()).or_insert_with(|| {
            Metrics::gauge_add(&core.metrics.sessions_current, 1);
            Box::new(Session::new(
                client.clone(),
                live.protocol,
                live.expiry_interval,
            ))
        });
        let was_persistent = session.is_persistent();
        session.protocol = live.protocol;
        session.expiry_interval = live.expiry_interval;
        session.will = live.will;
        session.generation = core.next_generation();
        session.disconnected_at_ms = None;
        session.inflight_window = live.inflight_window;
        session.connection = Some(conn.clone());
        self.connections.insert(conn.id, client);

        if was_persistent && !session.is_persistent() {
            core.forget_stored_state(session);
        }
        // Clean sessions are stored too (until they end): other nodes route to them
        // from the record, and a dead node's wills are published from it.
        core.persist_session(session);
        if let Some((reply, value, revocation)) = reply {
            core.round
                .outputs
                .push(Output::Reply(conn.id, reply, value, revocation));
        }
        core.resume(session);
    }

    pub(super) fn disconnect(&mut self, conn: ConnId, publish_will: bool, new_expiry: Option<u32>) {
        let Some(client) = self.connections.remove(&conn) else {
            // Gone before its session arrived from another node: the session stays
            // offline here once it does.
            self.pending.retain(|_, p| p.conn.id != conn);
            return;
        };
        let Some(session) = self.sessions.get_mut(&client) else {
            return;
        };
        if session.connection.as_ref().map(|c| c.id) != Some(conn) {
            return;
        }
        session.connection = None;
        session.disconnected_at_ms = Some(now_ms());
        if let Some(expiry) = new_expiry {
            let expiry = expiry.min(self.core.config.max_session_expiry_interval);
            if session.is_persistent() && expiry == 0 {
                self.core.forget_stored_state(session);
            }
            session.expiry_interval = expiry;
        }
        if !publish_will {
            session.will = None;
        }
        let generation = session.generation;
        let expiry = session.expiry_interval;
        // A will waits for its delay or the end of the session, whichever is first;
        // with neither in the future it goes now.
        let delay = session
            .will
            .as_ref()
            .map(|w| w.properties.will_delay_interval.unwrap_or(0).min(expiry));
        let will_now = match delay {
            Some(0) => session.will.take(),
            _ => None,
        };
        if expiry > 0 {
            self.core.persist_session(session);
        }
        if let Some(delay) = delay.filter(|d| *d > 0) {
            self.set_timer(
                Instant::now() + Duration::from_secs(u64::from(delay)),
                Timer::WillDelay {
                    client: client.clone(),
                    generation,
                },
            );
        }
        if let Some(will) = will_now {
            self.publish_will(&client, &will);
        }
        if expiry == 0 {
            self.end_session(&client);
        } else if expiry != u32::MAX {
            self.set_timer(
                Instant::now() + Duration::from_secs(u64::from(expiry)),
                Timer::SessionExpiry {
                    client: client.clone(),
                    generation,
                },
            );
        }
    }

    /// Removes a session and everything it holds, in memory and in storage.
    pub(super) fn end_session(&mut self, client: &Arc<str>) {
        let Some((session, _)) = self.remove_session(client) else {
            return;
        };
        self.unroute(client, &session);
        if session.stored {
            let fence = self.core.fence(client);
            self.core.owners.remove(client);
            self.core.push(Command::EndSession { fence });
        }
    }

    /// Takes a session of this node that was removed from memory out of the trie.
    pub(super) fn unroute(&mut self, client: &Arc<str>, session: &Session) {
        for filter in session.subscriptions.keys() {
            if let Ok(parsed) = TopicFilter::parse(filter) {
                self.trie.remove(&parsed, client);
            }
        }
    }
}

pub(super) fn session_record(session: &Session) -> SessionRecord {
    let mut subscriptions: Vec<SubscriptionRecord> = session
        .subscriptions
        .iter()
        .map(|(filter, entry)| SubscriptionRecord::new(filter, entry))
        .collect();
    subscriptions.sort_by(|a, b| a.filter.cmp(&b.filter));
    SessionRecord {
        protocol_level: session.protocol.level(),
        expiry_interval: session.expiry_interval,
        subscriptions,
        will: session.will.as_deref().map(WillRecord::from_will),
        disconnected_at_ms: session.disconnected_at_ms,
    }
}
