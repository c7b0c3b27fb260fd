//! The admin API's view of the router: sessions, subscriptions and retained messages,
//! and its orders (delete a retained message, put a setting).

use std::sync::Arc;

use bytes::Bytes;
use fleetmq_codec::QoS;

use crate::admin::{AdminRequest, RetainedView, SessionDetail, SessionView, SubscriptionView};
use crate::command::Command;
use crate::message::{Message, MessageProperties};
use crate::session::SubscriptionEntry;

use super::round::Output;
use super::Router;

impl Router {
    pub(super) fn admin(&mut self, request: AdminRequest) {
        match request {
            AdminRequest::Session { client_id, reply } => {
                let _ = reply.send(self.session_view(&client_id));
            }
            AdminRequest::Subscriptions {
                client_id,
                limit,
                reply,
            } => {
                let mut clients: Vec<&Arc<str>> = match &client_id {
                    Some(id) => self
                        .sessions
                        .get_key_value(id.as_str())
                        .map(|(k, _)| k)
                        .or_else(|| self.remote.get_key_value(id.as_str()).map(|(k, _)| k))
                        .into_iter()
                        .collect(),
                    None => self.sessions.keys().chain(self.remote.keys()).collect(),
                };
                clients.sort();
                let mut out = Vec::new();
                for client in clients {
                    if out.len() >= limit {
                        break;
                    }
                    if let Some(view) = self.session_view(client) {
                        out.extend(view.subscriptions);
                    }
                }
                out.truncate(limit);
                let _ = reply.send(out);
            }
            AdminRequest::Retained {
                filter,
                limit,
                reply,
            } => {
                let mut found: Vec<&Arc<Message>> = self
                    .retained
                    .values()
                    .filter(|m| filter.matches(&m.topic))
                    .collect();
                found.sort_by(|a, b| a.topic.cmp(&b.topic));
                found.truncate(limit);
                let views = found
                    .into_iter()
                    .map(|m| RetainedView {
                        topic: m.topic.clone(),
                        qos: m.qos,
                        payload: m.payload.clone(),
                    })
                    .collect();
                let _ = reply.send(views);
            }
            AdminRequest::DeleteRetained {
                topic,
                existed,
                done,
            } => {
                let _ = existed.send(self.retained.contains_key(&topic));
                // An empty retained message deletes, through the same replicated write
                // a client's would make, without being routed to subscribers.
                let message = Arc::new(Message {
                    topic,
                    payload: Bytes::new(),
                    qos: QoS::AtMostOnce,
                    retain: true,
                    properties: MessageProperties::default(),
                    publisher: None,
                    expires_at_ms: None,
                });
                self.retain(&message);
                self.core.round.outputs.push(Output::Done(done));
            }
            AdminRequest::PutSetting { name, value, done } => {
                if self.core.replicated {
                    *self.core.settings_pending.entry(name.clone()).or_default() += 1;
                }
                self.core.push(Command::SetSetting {
                    name: name.clone(),
                    value: value.as_ref().map(|v| v.to_vec()),
                });
                self.set_setting(&name, value);
                self.core.round.outputs.push(Output::Done(done));
            }
        }
    }

    fn session_view(&self, client_id: &str) -> Option<SessionView> {
        if let Some(s) = self.sessions.get(client_id) {
            let mut filters: Vec<(&String, &SubscriptionEntry)> = s.subscriptions.iter().collect();
            filters.sort_by(|a, b| a.0.cmp(b.0));
            return Some(SessionView {
                client_id: s.client_id.clone(),
                node: self.node_id,
                connected: s.connection.is_some(),
                persistent: s.is_persistent(),
                detail: Some(SessionDetail {
                    protocol: s.protocol,
                    expiry_interval: s.expiry_interval,
                    queued: s.queue.len(),
                    inflight: s.inflight.len(),
                    incoming_qos2: s.incoming_qos2.len(),
                    will_topic: s.will.as_ref().map(|w| w.topic.clone()),
                    disconnected_at_ms: s.disconnected_at_ms,
                }),
                subscriptions: filters
                    .into_iter()
                    .map(|(filter, entry)| SubscriptionView {
                        client_id: s.client_id.clone(),
                        filter: filter.clone(),
                        node: self.node_id,
                        options: Some(entry.options),
                        subscription_id: entry.subscription_id,
                    })
                    .collect(),
            });
        }
        let (client, remote) = self.remote.get_key_value(client_id)?;
        let node = self.core.owners.get(client_id).map_or(0, |o| o.node);
        let mut filters = remote.filters.clone();
        filters.sort();
        Some(SessionView {
            client_id: client.clone(),
            node,
            connected: remote.connected,
            persistent: remote.persistent,
            detail: None,
            subscriptions: filters
                .into_iter()
                .map(|filter| SubscriptionView {
                    client_id: client.clone(),
                    filter,
                    node,
                    options: None,
                    subscription_id: None,
                })
                .collect(),
        })
    }
}
