//! Publishing and routing: a message (a client's PUBLISH, a will, an ingested or
//! forwarded one, `$SYS`) is retained if asked, then matched in the trie and handed to
//! sessions of this node, forwarded or written for sessions of other nodes, or held for
//! sessions on their way here. SUBSCRIBE and UNSUBSCRIBE change what matches.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use fleetmq_codec::{
    AckProperties, LastWill, Packet, Publish, QoS, ReasonCode, RetainHandling, SubAck,
    SubscriptionOptions, UnsubAck,
};
use fleetmq_topic::{Match, TopicFilter};
use tracing::debug;

use crate::command::Fence;
use crate::connection::{AckKind, ConnId, Outgoing};
use crate::message::{now_ms, Message, MessageProperties};
use crate::metrics::{DropReason, Metrics};
use crate::peer::{ForwardTarget, ForwardedPublish};
use crate::persist::MessageRecord;
use crate::session::{Session, SubscriptionEntry};

use super::round::Output;
use super::sessions::{HeldDelivery, RemoteSession};
use super::Router;

pub(super) const SYS_PREFIX: &str = "$SYS/";

impl Router {
    pub(super) fn forwarded(&mut self, forwarded: ForwardedPublish) {
        Metrics::add(&self.core.metrics.forwarded_in, 1);
        // Written, if at all, for a session that became persistent since the sender
        // routed: on behalf of no one here.
        self.core.begin_publish(None, None);
        for target in forwarded.targets {
            let Some(session) = self.sessions.get_mut(&target.client) else {
                self.core.metrics.dropped(DropReason::NotLocal);
                continue;
            };
            let mut ids = target.subscription_ids;
            if !session.protocol.is_v5() {
                ids.clear();
            }
            self.core
                .deliver(session, &forwarded.message, target.qos, target.retain, ids);
        }
        self.core.end_publish();
    }

    pub(super) fn client_publish(&mut self, conn: ConnId, publish: Publish) {
        let Some(client) = self.connections.get(&conn).cloned() else {
            return;
        };
        let Some(session) = self.sessions.get_mut(&client) else {
            return;
        };
        let Some(handle) = session.connection.clone() else {
            return;
        };
        let qos = publish.qos;
        let packet_id = publish.packet_id.unwrap_or(0);
        let mut qos2_in = None;
        if qos == QoS::ExactlyOnce {
            // A resent QoS 2 PUBLISH before PUBREL was already routed: ack it again only.
            if !session.incoming_qos2.insert(packet_id) {
                self.core
                    .send(&handle, Outgoing::ack(AckKind::PubRec, packet_id));
                return;
            }
            if session.is_persistent() {
                qos2_in = Some(packet_id);
            }
        }
        // Everything this PUBLISH writes is fenced by the publisher's session, so a
        // node that lost the client meanwhile writes none of it (see command.rs).
        let on_behalf = (qos != QoS::AtMostOnce).then(|| self.core.fence(&client));
        self.core.begin_publish(on_behalf, qos2_in);
        let message = Arc::new(Message::from_publish(publish, client, now_ms()));
        self.retain_and_route(&message);
        let kind = match qos {
            QoS::AtMostOnce => None,
            QoS::AtLeastOnce => Some(AckKind::PubAck),
            QoS::ExactlyOnce => Some(AckKind::PubRec),
        };
        if let Some(kind) = kind {
            self.core.send(&handle, Outgoing::ack(kind, packet_id));
        }
        self.core.end_publish();
    }

    pub(super) fn publish_will(&mut self, client: &Arc<str>, will: &LastWill) {
        debug!(client_id = %client, topic = %will.topic, "publishing will");
        let message = Arc::new(Message::from_will(will, client.clone(), now_ms()));
        let on_behalf = self.core.fence(client);
        self.publish_message(message, Some(on_behalf));
    }

    /// Stores or clears the retained message if asked, then routes to subscribers;
    /// what it writes is on behalf of `on_behalf`'s session, if any.
    pub fn publish_message(&mut self, message: Arc<Message>, on_behalf: Option<Fence>) {
        let on_behalf = on_behalf.filter(|_| message.qos != QoS::AtMostOnce);
        self.core.begin_publish(on_behalf, None);
        self.retain_and_route(&message);
        self.core.end_publish();
    }

    fn retain_and_route(&mut self, message: &Arc<Message>) {
        if message.retain && self.core.config.retain_available {
            self.retain(message);
        }
        self.route(message);
    }

    pub(super) fn retain(&mut self, message: &Arc<Message>) {
        let is_sys = message.topic.starts_with(SYS_PREFIX);
        let metrics = &self.core.metrics;
        if message.payload.is_empty() {
            let had = self.retained.remove(&message.topic).is_some();
            if had && !is_sys {
                Metrics::gauge_add(&metrics.retained_current, -1);
            }
            // Memory may lack what another node set and the log has not brought yet:
            // a clear is written whenever the log decides what every node keeps.
            if !is_sys && (had || self.core.replicated) {
                self.core.write_retained(&message.topic, None);
            }
            return;
        }
        if self
            .retained
            .insert(message.topic.clone(), message.clone())
            .is_none()
            && !is_sys
        {
            Metrics::gauge_add(&metrics.retained_current, 1);
        }
        if !is_sys {
            let record = MessageRecord::from_message(message);
            self.core.write_retained(&message.topic, Some(record));
        }
    }

    fn route(&mut self, message: &Arc<Message>) {
        let mut targets = std::mem::take(&mut self.targets);
        targets.clear();
        let sessions = &self.sessions;
        let remote = &self.remote;
        let counter = &mut self.share_counter;
        self.trie.for_each_match(&message.topic, |m| match m {
            Match::Direct { key, value } => targets.push((key.clone(), *value)),
            Match::Shared { members, .. } => {
                if let Some((key, value)) = pick_shared_member(members, sessions, remote, counter) {
                    targets.push((key.clone(), *value));
                }
            }
        });
        // Overlapping subscriptions of one client give one copy: group by client.
        targets.sort_unstable_by_key(|(client, _)| Arc::as_ptr(client) as *const u8 as usize);
        let mut forwards: Vec<(u64, Vec<ForwardTarget>)> = Vec::new();
        let mut start = 0;
        while start < targets.len() {
            let client = targets[start].0.clone();
            let mut end = start + 1;
            while end < targets.len() && Arc::ptr_eq(&targets[end].0, &client) {
                end += 1;
            }
            let own = message.publisher.as_deref() == Some(&*client);
            let mut qos = None;
            let mut retain = false;
            let mut subscription_ids = Vec::new();
            for (_, entry) in &targets[start..end] {
                if own && entry.options.no_local {
                    continue;
                }
                let granted = entry.options.qos.min(message.qos);
                qos = Some(qos.map_or(granted, |q: QoS| q.max(granted)));
                retain |= entry.options.retain_as_published && message.retain;
                subscription_ids.extend(entry.subscription_id);
            }
            start = end;
            let Some(qos) = qos else {
                continue;
            };
            if let Some(session) = self.sessions.get_mut(&client) {
                if !session.protocol.is_v5() {
                    subscription_ids.clear();
                }
                self.core
                    .deliver(session, message, qos, retain, subscription_ids);
                continue;
            }
            let (Some(owner), Some(session)) =
                (self.core.owners.get(&client), self.remote.get(&client))
            else {
                continue;
            };
            if let Some(pending) = self.pending.get_mut(&client) {
                // On its way here: hold it for the session (durably written too when it
                // must be), instead of sending it to the node it is leaving.
                let durable = session.persistent && qos != QoS::AtMostOnce;
                let seq = durable.then(|| {
                    self.core.store_remote_delivery(
                        &client,
                        message,
                        qos,
                        retain,
                        subscription_ids.clone(),
                    )
                });
                pending.held.push(HeldDelivery {
                    seq,
                    revocation: self.core.revocation(),
                    stored_id: if durable { self.core.stored_id() } else { None },
                    message: message.clone(),
                    qos,
                    retain,
                    subscription_ids,
                });
                continue;
            }
            if session.persistent && qos != QoS::AtMostOnce {
                // Durable before the publisher's ack, like a local persistent session:
                // the owner picks the delivery up from the replicated log.
                let _ = self.core.store_remote_delivery(
                    &client,
                    message,
                    qos,
                    retain,
                    subscription_ids,
                );
            } else {
                let target = ForwardTarget {
                    client: client.clone(),
                    qos,
                    retain,
                    subscription_ids,
                };
                match forwards.iter_mut().find(|(node, _)| *node == owner.node) {
                    Some((_, list)) => list.push(target),
                    None => forwards.push((owner.node, vec![target])),
                }
            }
        }
        for (node, targets) in forwards {
            Metrics::add(&self.core.metrics.forwarded_out, 1);
            let revocation = self.core.revocation();
            self.core.round.outputs.push(Output::Forward(
                node,
                ForwardedPublish {
                    origin_node: self.node_id,
                    message: message.clone(),
                    targets,
                },
                revocation,
            ));
        }
        targets.clear();
        self.targets = targets;
    }

    pub(super) fn subscribe(
        &mut self,
        conn: ConnId,
        packet_id: u16,
        filters: Vec<Result<(TopicFilter, SubscriptionOptions), ReasonCode>>,
        subscription_id: Option<u32>,
    ) {
        let Some(client) = self.connections.get(&conn).cloned() else {
            return;
        };
        let Some(session) = self.sessions.get_mut(&client) else {
            return;
        };
        let mut codes = Vec::with_capacity(filters.len());
        let mut retained_for = Vec::new();
        for item in filters {
            match item {
                Ok((filter, options)) => {
                    let entry = SubscriptionEntry {
                        options,
                        subscription_id,
                    };
                    let existed = session
                        .subscriptions
                        .insert(filter.as_str().to_string(), entry)
                        .is_some();
                    self.trie.insert(&filter, client.clone(), entry);
                    if !existed {
                        Metrics::gauge_add(&self.core.metrics.subscriptions_current, 1);
                    }
                    codes.push(match options.qos {
                        QoS::AtMostOnce => ReasonCode::Success,
                        QoS::AtLeastOnce => ReasonCode::GrantedQos1,
                        QoS::ExactlyOnce => ReasonCode::GrantedQos2,
                    });
                    let send_retained = filter.share_group().is_none()
                        && match options.retain_handling {
                            RetainHandling::SendAtSubscribe => true,
                            RetainHandling::SendIfNewSubscription => !existed,
                            RetainHandling::DoNotSend => false,
                        };
                    if send_retained {
                        retained_for.push((filter, entry));
                    }
                }
                Err(code) => codes.push(code),
            }
        }
        self.core.persist_session(session);
        if let Some(handle) = session.connection.clone() {
            self.core.round.subscribed = true;
            self.core.send(
                &handle,
                Outgoing::Packet(Box::new(Packet::SubAck(SubAck {
                    packet_id,
                    reason_codes: codes,
                    properties: AckProperties::default(),
                }))),
            );
        }
        let now = now_ms();
        for (filter, entry) in retained_for {
            let mut matching: Vec<Arc<Message>> = self
                .retained
                .values()
                .filter(|m| filter.matches(&m.topic) && !m.is_expired(now))
                .cloned()
                .collect();
            matching.sort_by(|a, b| a.topic.cmp(&b.topic));
            for message in matching {
                let qos = entry.options.qos.min(message.qos);
                let ids = match (session.protocol.is_v5(), entry.subscription_id) {
                    (true, Some(id)) => vec![id],
                    _ => Vec::new(),
                };
                // Stored, if at all, for this subscriber: on its behalf.
                let on_behalf = (qos != QoS::AtMostOnce).then(|| self.core.fence(&client));
                self.core.begin_publish(on_behalf, None);
                self.core.deliver(session, &message, qos, true, ids);
                self.core.end_publish();
            }
        }
    }

    pub(super) fn unsubscribe(&mut self, conn: ConnId, packet_id: u16, filters: Vec<String>) {
        let Some(client) = self.connections.get(&conn).cloned() else {
            return;
        };
        let Some(session) = self.sessions.get_mut(&client) else {
            return;
        };
        let mut codes = Vec::with_capacity(filters.len());
        for filter in filters {
            let removed = session.subscriptions.remove(&filter).is_some();
            if removed {
                if let Ok(parsed) = TopicFilter::parse(&filter) {
                    self.trie.remove(&parsed, &client);
                }
                Metrics::gauge_add(&self.core.metrics.subscriptions_current, -1);
            }
            codes.push(if removed {
                ReasonCode::Success
            } else {
                ReasonCode::NoSubscriptionExisted
            });
        }
        self.core.persist_session(session);
        if !session.protocol.is_v5() {
            codes.clear();
        }
        if let Some(handle) = session.connection.clone() {
            self.core.send(
                &handle,
                Outgoing::Packet(Box::new(Packet::UnsubAck(UnsubAck {
                    packet_id,
                    reason_codes: codes,
                    properties: AckProperties::default(),
                }))),
            );
        }
    }

    pub(super) fn publish_sys(&mut self) {
        let m = self.core.metrics.clone();
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed).to_string();
        let gauge = |a: &std::sync::atomic::AtomicI64| a.load(Ordering::Relaxed).max(0).to_string();
        let stats = [
            ("version", env!("CARGO_PKG_VERSION").to_string()),
            ("uptime", m.uptime_secs().to_string()),
            ("clients/connected", gauge(&m.connections_current)),
            ("messages/received", load(&m.messages_received)),
            ("messages/sent", load(&m.messages_sent)),
            ("bytes/received", load(&m.bytes_received)),
            ("bytes/sent", load(&m.bytes_sent)),
            ("subscriptions/count", gauge(&m.subscriptions_current)),
            ("retained/count", gauge(&m.retained_current)),
        ];
        for (name, value) in stats {
            let message = Arc::new(Message {
                topic: Arc::from(format!("{SYS_PREFIX}broker/{name}")),
                payload: Bytes::from(value),
                qos: QoS::AtMostOnce,
                retain: true,
                properties: MessageProperties::default(),
                publisher: None,
                expires_at_ms: None,
            });
            self.publish_message(message, None);
        }
    }
}

/// Round robin over a shared group, on whatever node its members are, preferring
/// members that are connected now.
fn pick_shared_member<'a>(
    members: &'a [(Arc<str>, SubscriptionEntry)],
    sessions: &HashMap<Arc<str>, Box<Session>>,
    remote: &HashMap<Arc<str>, RemoteSession>,
    counter: &mut usize,
) -> Option<&'a (Arc<str>, SubscriptionEntry)> {
    if members.is_empty() {
        return None;
    }
    *counter = counter.wrapping_add(1);
    let start = *counter % members.len();
    let online = (0..members.len())
        .map(|i| &members[(start + i) % members.len()])
        .find(|(client, _)| {
            sessions.get(client).map_or_else(
                || remote.get(client).is_some_and(|r| r.connected),
                |session| session.is_connected(),
            )
        });
    online.or_else(|| members.get(start))
}
