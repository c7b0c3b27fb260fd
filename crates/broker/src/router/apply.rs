//! Taking in what the replicated log applied, in its order: other nodes' commands, the
//! verdicts on this node's own, sessions loaded for this node, and snapshots that
//! replace the whole store. No transport here: all of it arrives as [`Applied`] values.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use fleetmq_codec::{QoS, ReasonCode};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::command::{Command, PublishCommand, Verdict};
use crate::message::Message;
use crate::metrics::Metrics;
use crate::persist::{
    ClientState, DeliveryRecord, IdGen, MessageRecord, OwnerRecord, SessionRecord, Snapshot,
};
use crate::session::{Delivery, Revocation};

use super::routing::SYS_PREFIX;
use super::sessions::Attach;
use super::{Applied, AppliedCommand, Router, Settings};

/// A snapshot's message bodies, deliveries and QoS 2 state, by client: what sessions
/// are installed from.
struct StoredClients {
    /// Session records, to be taken by whoever installs the sessions.
    sessions: Vec<(String, SessionRecord)>,
    messages: HashMap<u64, Arc<Message>>,
    /// Per client, in seq order.
    deliveries: HashMap<String, Vec<(u64, DeliveryRecord)>>,
    qos2_in: HashMap<String, Vec<u16>>,
}

impl StoredClients {
    /// Indexes what was stored; `ids` will not hand out a stored id or seq again.
    fn index(
        ids: &mut IdGen,
        messages: Vec<(u64, MessageRecord)>,
        deliveries: Vec<(String, u64, DeliveryRecord)>,
        qos2_in: Vec<(String, u16)>,
    ) -> Self {
        let mut stored = StoredClients {
            sessions: Vec::new(),
            messages: HashMap::with_capacity(messages.len()),
            deliveries: HashMap::new(),
            qos2_in: HashMap::new(),
        };
        for (id, record) in messages {
            ids.observe(id);
            stored.messages.insert(id, Arc::new(record.into_message()));
        }
        for (client, seq, record) in deliveries {
            ids.observe(seq);
            stored
                .deliveries
                .entry(client)
                .or_default()
                .push((seq, record));
        }
        for (client, packet_id) in qos2_in {
            stored.qos2_in.entry(client).or_default().push(packet_id);
        }
        stored
    }

    /// Everything stored for `client`, whose session record is `record`.
    fn take(&mut self, client: &str, record: SessionRecord) -> ClientState {
        ClientState {
            deliveries: self.deliveries.remove(client).unwrap_or_default(),
            qos2_in: self.qos2_in.remove(client).unwrap_or_default(),
            session: Some(record),
            messages: Vec::new(),
        }
    }
}

impl Router {
    /// Takes the registry and the retained messages of `snap` as the router's own and
    /// indexes what it stored per client; returns the registry the router had before.
    fn take_snapshot(&mut self, snap: Snapshot) -> (HashMap<Arc<str>, OwnerRecord>, StoredClients) {
        let Snapshot {
            sessions,
            messages,
            deliveries,
            qos2_in,
            retained,
            owners,
            settings,
        } = snap;
        self.settings.send_replace(Arc::new(
            settings
                .into_iter()
                .map(|(name, value)| (name, Bytes::from(value)))
                .collect(),
        ));
        let owners = owners
            .into_iter()
            .map(|(client, owner)| (Arc::from(client), owner))
            .collect();
        let before = std::mem::replace(&mut self.core.owners, owners);
        self.replace_retained(retained);
        let mut stored = StoredClients::index(&mut self.core.ids, messages, deliveries, qos2_in);
        stored.sessions = sessions;
        (before, stored)
    }

    pub(super) fn restore(&mut self, snap: Snapshot) {
        let (_, mut stored) = self.take_snapshot(snap);
        let sessions = std::mem::take(&mut stored.sessions);
        let mut with_session = std::collections::HashSet::new();
        for (client, record) in sessions {
            let client: Arc<str> = Arc::from(client);
            with_session.insert(client.clone());
            if !self.is_mine(&client) {
                self.set_remote(&client, Some(&record));
                continue;
            }
            if self.core.owners.get(&client).map(|o| o.node) != Some(self.node_id) {
                // Stored before the registry existed: claim it so other nodes know.
                self.claim(&client);
            }
            let state = stored.take(&client, record);
            self.install_session(client, state, &stored.messages);
        }
        // Deliveries of a session that is stored nowhere can never be sent.
        for (client, list) in stored.deliveries {
            if with_session.contains(client.as_str()) || !self.is_mine(&client) {
                continue;
            }
            let fence = self.core.fence(&client);
            for (seq, _) in list {
                self.core.push(Command::RemoveDelivery {
                    fence: fence.clone(),
                    seq,
                });
            }
        }
        if !self.sessions.is_empty() || !self.retained.is_empty() || !self.remote.is_empty() {
            info!(
                sessions = self.sessions.len(),
                remote_sessions = self.remote.len(),
                retained = self.retained.len(),
                "restored state from storage"
            );
        }
    }

    /// Replaces the stored retained messages held in memory with `records`.
    fn replace_retained(&mut self, records: Vec<MessageRecord>) {
        // $SYS topics are this node's own, never stored nor counted: they stay.
        let before = self.retained.len();
        self.retained
            .retain(|topic, _| topic.starts_with(SYS_PREFIX));
        for record in records {
            let message = Arc::new(record.into_message());
            self.retained.insert(message.topic.clone(), message);
        }
        // Both counts hold the same $SYS topics: the difference is the stored ones'.
        Metrics::gauge_add(
            &self.core.metrics.retained_current,
            self.retained.len() as i64 - before as i64,
        );
    }

    /// Takes in what the replicated store applied: other nodes' sessions, retained
    /// messages and deliveries for sessions of this node; sessions moving here or away.
    pub fn handle_applied(&mut self, applied: Applied) {
        match applied {
            Applied::Entry { origin, commands } => {
                Metrics::add(&self.core.metrics.applied_entries, 1);
                self.apply_entry(origin, commands);
            }
            Applied::Loaded { client, state } => self.loaded(client, *state),
            Applied::Reset(snapshot) => self.reset(*snapshot),
            Applied::Through(index) => self.applied_through = self.applied_through.max(index),
            Applied::Members(count) => self.set_members(count),
        }
    }

    /// Sessions stop being stored when the node is left alone, and those that were not
    /// are stored the moment a second node joins: before the newcomer routes (it
    /// applies the log up to here, and this entry follows at once), so it learns
    /// of every subscription here.
    fn set_members(&mut self, count: usize) {
        let alone = count <= 1;
        if alone == self.core.alone {
            return;
        }
        self.core.alone = alone;
        if alone {
            return;
        }
        let unstored: Vec<Arc<str>> = self
            .sessions
            .iter()
            .filter(|(_, s)| !s.stored)
            .map(|(client, _)| client.clone())
            .collect();
        info!(
            members = count,
            sessions = unstored.len(),
            "another node joined: storing the sessions kept only in memory"
        );
        for client in unstored {
            self.claim(&client);
            if let Some(session) = self.sessions.get_mut(&client) {
                self.core.persist_session(session);
            }
        }
    }

    /// Follows the replicated settings: this node's writes once handled, other nodes'
    /// once applied here.
    pub fn settings(&self) -> watch::Receiver<Settings> {
        self.settings.subscribe()
    }

    pub(super) fn set_setting(&mut self, name: &str, value: Option<Bytes>) {
        self.settings.send_if_modified(|settings| {
            if settings.get(name) == value.as_ref() {
                return false;
            }
            let map = Arc::make_mut(settings);
            match value {
                Some(value) => map.insert(name.to_string(), value),
                None => map.remove(name),
            };
            true
        });
    }

    /// This node's writes come back to it from a replicated log ([`Applied`]): memory
    /// follows the log's order for what several nodes write (retained messages,
    /// settings), and a PUBLISH the log refuses is withdrawn.
    pub fn set_replicated(&mut self) {
        self.core.replicated = true;
    }

    /// The Raft log index up to which replicated writes are in this router's view.
    pub fn applied_through(&self) -> u64 {
        self.applied_through
    }

    /// Takes in one applied entry. Every kind of command is named here: one added
    /// later does not compile until this says what it means for the router.
    fn apply_entry(&mut self, origin: u64, commands: Vec<AppliedCommand>) {
        let own = origin == self.node_id;
        for AppliedCommand { command, verdict } in commands {
            if let Verdict::Refused { registry } = verdict {
                if own {
                    self.refused(command, registry);
                }
                continue;
            }
            match command {
                // This node's own: its memory made them when it proposed them.
                Command::Claim { client, .. } if own => {
                    self.core.connect_revocations.remove(client.as_str());
                }
                Command::SaveSession { .. }
                | Command::ForgetSession { .. }
                | Command::EndSession { .. }
                    if own => {}
                Command::Claim { client, owner, .. } => self.claimed_elsewhere(client, owner),
                Command::SaveSession { fence, record } => {
                    let client: Arc<str> = Arc::from(fence.client);
                    if !self.sessions.contains_key(&client) {
                        self.set_remote(&client, Some(&record));
                    }
                }
                Command::ForgetSession { fence } => {
                    let client: Arc<str> = Arc::from(fence.client);
                    if !self.sessions.contains_key(&client) {
                        self.set_remote(&client, None);
                    }
                }
                Command::EndSession { fence } => {
                    let client: Arc<str> = Arc::from(fence.client);
                    self.core.owners.remove(&client);
                    if !self.sessions.contains_key(&client) {
                        self.set_remote(&client, None);
                    }
                }
                Command::Publish(publish) => {
                    if own {
                        self.core.revocations.remove(&publish.id);
                    }
                    self.picked_up(own, publish);
                }
                // The owner's bookkeeping of its own sessions: only the owner holds them
                // in memory, and it wrote these.
                Command::DeliveryPhase { .. }
                | Command::RemoveDelivery { .. }
                | Command::ReleaseQos2 { .. }
                | Command::DeleteMessages { .. } => {}
                Command::SetRetained { topic, message } => {
                    self.applied_retained(own, topic, message)
                }
                Command::SetSetting { name, value } => self.applied_setting(own, name, value),
            }
        }
    }

    /// Another node's claim was admitted: the session is that node's now.
    fn claimed_elsewhere(&mut self, client: String, owner: OwnerRecord) {
        let client: Arc<str> = Arc::from(client);
        self.core.owners.insert(client.clone(), owner);
        if owner.node != self.node_id {
            self.hand_off(&client);
            if let Some(pending) = self.pending.remove(&client) {
                // Another node claimed it after this one: it won.
                pending.conn.close(ReasonCode::SessionTakenOver);
            }
        }
    }

    /// One of this node's commands that the log refused: the registry named `registry`
    /// for its client by the time it was applied, not what this node held it by.
    fn refused(&mut self, command: Command, registry: Option<OwnerRecord>) {
        Metrics::add(&self.core.metrics.commands_refused, 1);
        match command {
            Command::Claim { client, .. } => {
                let client: Arc<str> = Arc::from(client);
                if let Some(withdraw) = self.core.connect_revocations.remove(&client) {
                    withdraw.revoke();
                }
                match registry {
                    Some(owner) if owner.node != self.node_id => {
                        self.claimed_elsewhere(client.to_string(), owner)
                    }
                    // The record this node expected was replaced or removed by one it
                    // has applied since (the session ended where it was): claim again
                    // over what is there now, for the CONNECT waiting or the session
                    // held here, and store that session again under the new record.
                    _ => {
                        match registry {
                            Some(owner) => self.core.owners.insert(client.clone(), owner),
                            None => self.core.owners.remove(&client),
                        };
                        if self.pending.contains_key(&client) || self.sessions.contains_key(&client)
                        {
                            debug!(client_id = %client, "claim refused; claiming again");
                            self.claim(&client);
                            if let Some(session) = self.sessions.get_mut(&client) {
                                self.core.persist_session(session);
                            }
                        }
                    }
                }
            }
            Command::Publish(publish) => {
                if let Some(revocation) = self.core.revocations.remove(&publish.id) {
                    revocation.revoke();
                    self.withdraw(&revocation);
                }
                debug!(
                    client_id = publish.on_behalf.as_ref().map(|f| f.client.as_str()),
                    "publish refused: its publisher's session moved on"
                );
            }
            other => debug!(kind = other.kind(), "command refused: its session moved on"),
        }
    }

    /// Removes from memory every delivery a refused PUBLISH made on this node; what it
    /// would have sent is dropped on the way out (see [`Revocation`]).
    fn withdraw(&mut self, revocation: &Revocation) {
        let made_by = |d: &Delivery| d.revocation.as_ref().is_some_and(|r| r.same(revocation));
        let metrics = self.core.metrics.clone();
        for session in self.sessions.values_mut() {
            let queued = session.queue.len();
            session.queue.retain(|d| !made_by(d));
            Metrics::gauge_add(
                &metrics.queued_messages_current,
                session.queue.len() as i64 - queued as i64,
            );
            session.inflight.retain(|i| !made_by(&i.delivery));
        }
        for pending in self.pending.values_mut() {
            pending
                .held
                .retain(|h| !h.revocation.as_ref().is_some_and(|r| r.same(revocation)));
        }
    }

    /// A retained message as the log ordered it. This node's own writes not applied
    /// yet are newer: memory keeps theirs until the last of them is applied.
    fn applied_retained(&mut self, own: bool, topic: String, message: Option<MessageRecord>) {
        let topic: Arc<str> = Arc::from(topic);
        if own {
            if let Some(n) = self.core.retained_pending.get_mut(&topic) {
                *n -= 1;
                if *n == 0 {
                    self.core.retained_pending.remove(&topic);
                }
            }
        }
        if self.core.retained_pending.contains_key(&topic) {
            return;
        }
        let metrics = &self.core.metrics;
        match message {
            Some(record) => {
                let message = Arc::new(record.into_message());
                if self.retained.insert(topic, message).is_none() {
                    Metrics::gauge_add(&metrics.retained_current, 1);
                }
            }
            None => {
                if self.retained.remove(&topic).is_some() {
                    Metrics::gauge_add(&metrics.retained_current, -1);
                }
            }
        }
    }

    /// A setting as the log ordered it; like [`Router::applied_retained`].
    fn applied_setting(&mut self, own: bool, name: String, value: Option<Vec<u8>>) {
        if own {
            if let Some(n) = self.core.settings_pending.get_mut(&name) {
                *n -= 1;
                if *n == 0 {
                    self.core.settings_pending.remove(&name);
                }
            }
        }
        if !self.core.settings_pending.contains_key(&name) {
            self.set_setting(&name, value.map(Bytes::from));
        }
    }

    /// The deliveries of an applied PUBLISH for sessions of this node that it did not
    /// write for them itself: another node routed the message here, or this node wrote
    /// it for another node's session that has since moved here.
    fn picked_up(&mut self, own: bool, publish: PublishCommand) {
        let mut message: Option<(u64, Arc<Message>)> = None;
        let mut record = publish.message;
        for delivery in publish.deliveries {
            let Some(session) = self.sessions.get_mut(delivery.client.as_str()) else {
                continue;
            };
            if own && !delivery.record.for_remote_owner {
                continue;
            }
            let seq = delivery.seq;
            if own && session.held_before_pickup.remove(&seq) {
                continue;
            }
            if message.is_none() {
                message = record
                    .take()
                    .map(|(id, record)| (id, Arc::new(record.into_message())));
            }
            let Some((id, body)) = message
                .as_ref()
                .filter(|(id, _)| *id == delivery.record.message_id)
            else {
                warn!(client_id = %delivery.client, seq, "replicated delivery without its message");
                continue;
            };
            self.core.ids.observe(seq);
            let delivery = Delivery {
                seq,
                message: body.clone(),
                stored_id: Some(*id),
                qos: QoS::from_u8(delivery.record.qos).unwrap_or(QoS::AtLeastOnce),
                retain: delivery.record.retain,
                subscription_ids: delivery.record.subscription_ids,
                persisted: true,
                revocation: None,
            };
            self.core.enqueue(session, delivery, true);
        }
    }

    fn loaded(&mut self, client: Arc<str>, mut state: ClientState) {
        if self.sessions.contains_key(&client) {
            return;
        }
        let messages: HashMap<u64, Arc<Message>> = std::mem::take(&mut state.messages)
            .into_iter()
            .map(|(id, record)| (id, Arc::new(record.into_message())))
            .collect();
        self.adopt(client, state, &messages);
    }

    /// Makes a stored session this node's: installs it, then finishes the CONNECT that
    /// waited for it, or keeps it offline until its client comes back.
    fn adopt(
        &mut self,
        client: Arc<str>,
        state: ClientState,
        messages: &HashMap<u64, Arc<Message>>,
    ) {
        if self.sessions.contains_key(&client) {
            return;
        }
        let had_session = state.session.is_some();
        let loaded_seqs: std::collections::HashSet<u64> =
            state.deliveries.iter().map(|(seq, _)| *seq).collect();
        self.install_session(client.clone(), state, messages);
        if had_session {
            Metrics::add(&self.core.metrics.sessions_taken_over, 1);
            info!(client_id = %client, "session taken over from another node");
        }
        if let Some(pending) = self.pending.remove(&client) {
            self.connect_claimed(pending.conn, pending.request, pending.reply, true);
            let Some(session) = self.sessions.get_mut(&client) else {
                return;
            };
            for held in pending.held {
                match held.seq {
                    // Written in the batch that claimed the session: already loaded.
                    Some(seq) if loaded_seqs.contains(&seq) => {}
                    Some(seq) => {
                        session.held_before_pickup.insert(seq);
                        let delivery = Delivery {
                            seq,
                            message: held.message,
                            stored_id: held.stored_id,
                            qos: held.qos,
                            retain: held.retain,
                            subscription_ids: held.subscription_ids,
                            persisted: true,
                            revocation: held.revocation,
                        };
                        self.core.enqueue(session, delivery, true);
                    }
                    None => {
                        let fence = self.core.fence(&client);
                        self.core.begin_publish(Some(fence), None);
                        self.core.deliver(
                            session,
                            &held.message,
                            held.qos,
                            held.retain,
                            held.subscription_ids,
                        );
                        self.core.end_publish();
                    }
                }
            }
        } else if let Some(session) = self.sessions.get_mut(&client) {
            // Adopted from a dead node: it is this node's now, offline until its
            // client comes back; rewrite it so the record says it is disconnected.
            self.core.persist_session(session);
        }
    }

    /// Rebuilds what the router derived from the store once a snapshot replaced it,
    /// keeping the connections of the sessions that stay here.
    ///
    /// The snapshot is the store as of an entry this node never saw applied; memory is
    /// the store as of the last entry it saw, plus this node's own writes not applied
    /// yet (a lagging follower still commits through the leader, a cut-off one keeps
    /// retrying, and those entries come after the snapshot). So, per session:
    /// - another node's now: handed off (0x8E), as if its claim had been applied;
    /// - held here throughout ([`held_throughout`]): memory stays. Only the owner
    ///   writes a session's record, QoS 2 state and delivery cursors, and memory has
    ///   its latest writes, some of which the snapshot lacks; the store adds only what
    ///   other nodes wrote meanwhile: deliveries they routed here;
    /// - another node's meanwhile and this node's again: reloaded from the store,
    ///   whose writes by that node win, with its connection kept if it has one;
    /// - this node's now but not in memory: adopted, as if loaded from the entry that
    ///   gave it to this node; that finishes a CONNECT waiting for it.
    ///
    /// A CONNECT waiting for a session the snapshot names another node for stays
    /// waiting: its claim may be in an entry after the snapshot, and the router cannot
    /// tell that from a claim overtaken by another node's; if none comes, the connection
    /// gives up after `connect_timeout` (0x88) like any claim that cannot commit.
    /// Other nodes' sessions and the retained messages are read as at start.
    fn reset(&mut self, snap: Snapshot) {
        let (mut before, mut stored) = self.take_snapshot(snap);
        // This node's own commands applied inside the snapshot never come back as
        // entries: what waits for them would wait for ever. Those not applied yet come
        // back unmatched, which leaves memory to the log's order (a PUBLISH of theirs
        // refused is not withdrawn: the price of not knowing which they are).
        self.core.revocations.clear();
        self.core.connect_revocations.clear();
        self.core.retained_pending.clear();
        self.core.settings_pending.clear();
        // This node's own claims not applied yet are ahead of the snapshot: its next
        // writes for those clients are fenced by them.
        for (client, mine) in &before {
            let ahead = mine.node == self.node_id
                && self
                    .core
                    .owners
                    .get(client)
                    .is_some_and(|now| now.node == self.node_id && now.epoch < mine.epoch);
            if ahead {
                self.core.owners.insert(client.clone(), *mine);
            }
        }
        // A CONNECT waiting for its session: the record this node had is its own claim,
        // not one applied; who held the session before is not known here.
        before.retain(|client, _| !self.pending.contains_key(client));
        let sessions = std::mem::take(&mut stored.sessions);
        let mut records: HashMap<Arc<str>, SessionRecord> = sessions
            .into_iter()
            .map(|(client, record)| (Arc::from(client), record))
            .collect();

        let node = self.node_id;
        let (mut moved, mut kept) = (Vec::new(), Vec::new());
        let mut reload = std::collections::HashSet::new();
        for client in self.sessions.keys() {
            let now = self.core.owners.get(client);
            if now.is_some_and(|o| o.node != node) {
                moved.push(client.clone());
            } else if records.contains_key(client)
                && !held_throughout(node, before.get(client), now)
            {
                reload.insert(client.clone());
            } else {
                kept.push(client.clone());
            }
        }
        for client in &moved {
            self.hand_off(client);
        }
        // Set for the state being replaced; installing sets the new state's own.
        self.timers
            .retain(|_, timer| timer.client().is_none_or(|c| !reload.contains(c)));
        for client in &kept {
            if !self.core.owners.contains_key(client) {
                // As at start: a session nobody is named for is claimed, so that other
                // nodes route to it and no one else's writes to it are admitted.
                self.claim(client);
            }
            self.pick_up_missed(client, &mut stored);
        }
        let reloaded = reload.len();
        for client in reload {
            if let Some(record) = records.remove(&client) {
                self.reload_session(client, record, &mut stored);
            }
        }

        let remote: Vec<Arc<str>> = self.remote.keys().cloned().collect();
        for client in &remote {
            self.set_remote(client, None);
        }
        let mut adopted = 0;
        for (client, record) in records {
            if self.sessions.contains_key(&client) {
                continue;
            }
            if !self.is_mine(&client) {
                self.set_remote(&client, Some(&record));
                continue;
            }
            if held_throughout(node, before.get(&client), self.core.owners.get(&client)) {
                // Ended here: its deletes are in entries after the snapshot.
                continue;
            }
            if !self.core.owners.contains_key(&client) {
                self.claim(&client);
            }
            let state = stored.take(&client, record);
            self.adopt(client, state, &stored.messages);
            adopted += 1;
        }
        // Claimed, and the claim applied, but nothing stored for it: a new session.
        let waiting: Vec<Arc<str>> = self
            .pending
            .keys()
            .filter(|client| {
                self.core
                    .owners
                    .get(*client)
                    .is_some_and(|o| o.node == node)
            })
            .cloned()
            .collect();
        for client in waiting {
            self.adopt(client, ClientState::default(), &stored.messages);
        }
        info!(
            kept = kept.len(),
            moved = moved.len(),
            reloaded,
            adopted,
            remote_sessions = self.remote.len(),
            retained = self.retained.len(),
            "reloaded state from an installed snapshot"
        );
    }

    /// Deliveries that other nodes stored for a session this node held while it missed
    /// their entries (skipped by a snapshot): picked up as if from those entries.
    fn pick_up_missed(&mut self, client: &Arc<str>, stored: &mut StoredClients) {
        let list = stored.deliveries.remove(&**client).unwrap_or_default();
        let Some(session) = self.sessions.get_mut(client) else {
            return;
        };
        // This node's own writes of these were applied inside the snapshot: they will
        // never come back as entries to be recognized by.
        session
            .held_before_pickup
            .retain(|seq| list.binary_search_by_key(seq, |(s, _)| *s).is_err());
        let known: std::collections::HashSet<u64> = session
            .inflight
            .iter()
            .map(|i| i.delivery.seq)
            .chain(session.queue.iter().map(|d| d.seq))
            .chain(session.held_before_pickup.iter().copied())
            .collect();
        for (seq, record) in list {
            // The owner rewrites a delivery once it sends it, so one still as another
            // node first wrote it and not in memory was never seen here. (One this node
            // completed or dropped before any of its writes for it were applied would
            // be sent again: the price of not losing the others.)
            if known.contains(&seq) || !record.for_remote_owner || record.inflight.is_some() {
                continue;
            }
            let Some(message) = stored.messages.get(&record.message_id) else {
                warn!(client_id = %client, seq, "stored delivery without its message");
                continue;
            };
            let delivery = Delivery {
                seq,
                message: message.clone(),
                stored_id: Some(record.message_id),
                qos: QoS::from_u8(record.qos).unwrap_or(QoS::AtLeastOnce),
                retain: record.retain,
                subscription_ids: record.subscription_ids,
                persisted: true,
                revocation: None,
            };
            self.core.enqueue(session, delivery, true);
        }
    }

    /// Replaces a session of this node with the one stored for it (another node held
    /// it meanwhile), keeping its connection if it has one.
    fn reload_session(
        &mut self,
        client: Arc<str>,
        record: SessionRecord,
        stored: &mut StoredClients,
    ) {
        let Some((old, conn)) = self.remove_session(&client) else {
            return;
        };
        self.unroute(&client, &old);
        let state = stored.take(&client, record);
        let Some(conn) = conn else {
            self.adopt(client, state, &stored.messages);
            return;
        };
        self.install_session(client.clone(), state, &stored.messages);
        if let Some(session) = self.sessions.get_mut(&client) {
            // QoS 2 PUBLISHes this connection sent and has not released yet: its next
            // PUBREL must find them, whatever the other node stored.
            session.incoming_qos2.extend(old.incoming_qos2);
        }
        // The connection keeps what its CONNECT asked for.
        let live = Attach {
            protocol: old.protocol,
            expiry_interval: old.expiry_interval,
            will: old.will,
            inflight_window: old.inflight_window,
        };
        self.attach(client, conn, live, None);
    }
}

/// Whether no other node can have held a session of node `node` between the registry
/// record the router had applied (`before`) and the one a snapshot holds (`now`).
/// Going to another node and coming back takes two claims, each one epoch up; a single
/// step up is this node's own claim (a new client's first, a clean start's), which its
/// memory already reflects. With nobody named now, whoever deleted the record ended the
/// session (this node, or one that held it and left no trace): memory is kept.
fn held_throughout(node: u64, before: Option<&OwnerRecord>, now: Option<&OwnerRecord>) -> bool {
    let epoch = match before {
        Some(before) if before.node != node => return false,
        Some(before) => before.epoch,
        None => 0,
    };
    now.is_none_or(|now| now.node == node && now.epoch <= epoch + 1)
}
