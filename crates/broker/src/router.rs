//! The router: one owner of every session, the subscription trie and the retained
//! store, fed by events from connection tasks over a bounded channel. It never does
//! IO: what must be written goes into the round's [`WriteBatch`], what must be sent
//! into its outputs, and the service decides when both happen (after the batch is
//! durable, when there is one).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fleetmq_codec::{
    AckProperties, LastWill, Packet, ProtocolVersion, Publish, QoS, ReasonCode, RetainHandling,
    SubAck, SubscriptionOptions, UnsubAck,
};
use fleetmq_topic::{Match, SubscriptionTrie, TopicFilter};
use tokio::sync::{oneshot, watch};
use tracing::{debug, info, warn};

use crate::admin::{AdminRequest, RetainedView, SessionDetail, SessionView, SubscriptionView};
use crate::command::{Command, Fence, NewDelivery, PublishCommand, Verdict};
use crate::config::{BrokerConfig, QueueFullPolicy};
use crate::connection::{AckKind, ConnId, ConnectionHandle, Outgoing, OutgoingPublish};
use crate::message::{now_ms, Message, MessageProperties};
use crate::metrics::{DropReason, Metrics};
use crate::peer::{ForwardTarget, ForwardedPublish};
use crate::persist::{
    ClientState, DeliveryRecord, IdGen, MessageRecord, OwnerRecord, SessionRecord, Snapshot,
    SubscriptionRecord, WillRecord,
};
use crate::session::{Delivery, Inflight, Phase, Revocation, Session, SubscriptionEntry};

/// What a connection task asks of the router.
#[derive(Debug)]
pub enum Event {
    Connect {
        conn: ConnectionHandle,
        request: ConnectRequest,
        reply: oneshot::Sender<ConnectReply>,
    },
    /// A PUBLISH whose topic alias the connection already resolved.
    Publish {
        conn: ConnId,
        publish: Publish,
    },
    PubAck {
        conn: ConnId,
        packet_id: u16,
    },
    PubRec {
        conn: ConnId,
        packet_id: u16,
        reason: ReasonCode,
    },
    PubRel {
        conn: ConnId,
        packet_id: u16,
    },
    PubComp {
        conn: ConnId,
        packet_id: u16,
    },
    Subscribe {
        conn: ConnId,
        packet_id: u16,
        /// Per filter, in order: parsed, or the reason it was refused.
        filters: Vec<Result<(TopicFilter, SubscriptionOptions), ReasonCode>>,
        subscription_id: Option<u32>,
    },
    Unsubscribe {
        conn: ConnId,
        packet_id: u16,
        filters: Vec<String>,
    },
    /// A QoS 1/2 PUBLISH the connection refused before routing it (the Kafka bridge
    /// could not take it): its PUBACK/PUBREC with `reason` goes out in turn with the
    /// acknowledgements of the PUBLISHes before it.
    RefusePublish {
        conn: ConnId,
        kind: AckKind,
        packet_id: u16,
        reason: ReasonCode,
    },
    /// The connection ended; `publish_will` is false only after a normal DISCONNECT.
    Disconnect {
        conn: ConnId,
        publish_will: bool,
        session_expiry_interval: Option<u32>,
    },
    /// A message another node routed to sessions of this node (one hop: delivered to
    /// local sessions only, never forwarded again).
    Forwarded(ForwardedPublish),
    /// Stored messages no delivery points at any more ([`persist::unreferenced_messages`]).
    Sweep(Vec<u64>),
    /// A message from outside MQTT (the Kafka bridge's ingress), routed like a client's
    /// PUBLISH; `done` fires once the round that routed it is durable.
    Ingest {
        message: Arc<Message>,
        done: oneshot::Sender<()>,
    },
    /// A question or order of the admin API.
    Admin(AdminRequest),
}

/// What the replicated store tells the router, in the order it was applied.
#[derive(Debug)]
pub enum Applied {
    /// The commands of one committed entry, in order: the admitted ones of another
    /// node's entry; every one of this node's own, with its verdict (a refused claim or
    /// publish has to be undone in memory).
    Entry {
        origin: u64,
        commands: Vec<AppliedCommand>,
    },
    /// A client whose session is now this node's (it connected here, or the node
    /// it was on died), with everything stored for it as of the entries sent before.
    Loaded {
        client: Arc<str>,
        state: Box<ClientState>,
    },
    /// A Raft snapshot replaced the whole store (this node had fallen further behind
    /// than the log the leader keeps): everything now stored, read right after the
    /// install, with nothing applied in between. Entries sent later follow it.
    Reset(Box<Snapshot>),
    /// Everything up to and including this Raft log index has been sent: what the
    /// entries wrote is in the router's view once it takes this.
    Through(u64),
    /// How many nodes (voters and learners) the group has now: sent when the feed
    /// starts and with every membership change.
    Members(usize),
}

/// One command of an applied entry and what the state machine decided.
#[derive(Debug, Clone)]
pub struct AppliedCommand {
    pub command: Command,
    pub verdict: Verdict,
}

/// A validated CONNECT.
#[derive(Debug)]
pub struct ConnectRequest {
    pub client_id: Arc<str>,
    pub protocol: ProtocolVersion,
    pub clean_start: bool,
    /// Already capped by `max_session_expiry_interval`.
    pub session_expiry_interval: u32,
    /// The client's Receive Maximum (65,535 for MQTT 3.x).
    pub receive_maximum: u16,
    pub will: Option<LastWill>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectReply {
    pub session_present: bool,
}

/// Something to do once the round's writes are durable.
#[derive(Debug)]
pub enum Output {
    /// A packet for a connection; not sent if its [`Revocation`] was revoked meanwhile
    /// (it came from a PUBLISH the replicated log refused).
    Send(ConnectionHandle, Outgoing, Option<Revocation>),
    /// The CONNACK decision for connection `ConnId`.
    Reply(ConnId, oneshot::Sender<ConnectReply>, ConnectReply),
    /// A message for sessions of another node.
    Forward(u64, ForwardedPublish, Option<Revocation>),
    /// Tells an [`Event::Ingest`] caller that its message is routed and durable.
    Done(oneshot::Sender<()>),
}

impl Output {
    /// Where the output goes, as one number: outputs to the same destination keep
    /// their order. Peer nodes are kept apart from connection ids.
    pub fn destination(&self) -> u64 {
        match self {
            Output::Send(handle, ..) => handle.id,
            Output::Forward(node, ..) => u64::MAX - node,
            Output::Reply(conn, ..) => *conn,
            // Below every node's (node ids are at most 1023): one queue of its own.
            Output::Done(_) => u64::MAX - 2048,
        }
    }
}

/// Everything one pass of the router produced.
#[derive(Debug, Default)]
pub struct Round {
    /// What the round changes in replicated state, in order.
    pub commands: Vec<Command>,
    /// Outputs that go out once the round's writes are durable.
    pub outputs: Vec<Output>,
    /// Outputs of events that wrote nothing, to destinations none of `outputs` goes
    /// to: they need not wait for the writes of other events in the round (had each
    /// event been a round of its own, they would not have), only behind earlier
    /// rounds' outputs to the same destination. Without this a clean session's QoS 0
    /// message routed in the same pass as a durable PUBLISH waits for that write:
    /// on a node cut off from the majority, for as long as the partition lasts.
    pub immediate: Vec<Output>,
    /// A SUBACK is among the outputs: they wait for every node to route to the
    /// subscription (`Visibility` in service.rs); other rounds pass straight through.
    pub subscribed: bool,
    /// Destinations of `outputs[..held_indexed]`, indexed only once an event that
    /// wrote nothing follows one that did.
    held: HashSet<u64>,
    held_indexed: usize,
}

impl Round {
    pub fn is_empty(&self) -> bool {
        self.commands.is_empty() && self.outputs.is_empty() && self.immediate.is_empty()
    }

    /// Roughly how many storage writes the round's commands make.
    pub fn weight(&self) -> usize {
        self.commands.iter().map(Command::weight).sum()
    }

    /// Sorts the outputs one event added after `outputs_before`: they wait for the
    /// round's writes if the event wrote (or subscribed), or if an output that waits
    /// goes to the same destination; the others go to `immediate`.
    fn settle_event(&mut self, outputs_before: usize, commands_before: usize, subscribed: bool) {
        if self.commands.len() > commands_before || self.subscribed != subscribed {
            return;
        }
        if outputs_before == 0 {
            if self.immediate.is_empty() {
                std::mem::swap(&mut self.immediate, &mut self.outputs);
            } else {
                self.immediate.append(&mut self.outputs);
            }
            return;
        }
        for output in &self.outputs[self.held_indexed..outputs_before] {
            self.held.insert(output.destination());
        }
        self.held_indexed = outputs_before;
        let added = self.outputs.split_off(outputs_before);
        for output in added {
            if self.held.contains(&output.destination()) {
                self.outputs.push(output);
            } else {
                self.immediate.push(output);
            }
        }
        self.held_indexed = self.outputs.len();
    }
}

#[derive(Debug, Clone)]
enum Timer {
    WillDelay { client: Arc<str>, generation: u64 },
    SessionExpiry { client: Arc<str>, generation: u64 },
    Sys,
}

impl Timer {
    fn client(&self) -> Option<&Arc<str>> {
        match self {
            Timer::WillDelay { client, .. } | Timer::SessionExpiry { client, .. } => Some(client),
            Timer::Sys => None,
        }
    }
}

/// State the router shares between sessions: everything but the sessions.
struct Core {
    config: BrokerConfig,
    metrics: Arc<Metrics>,
    round: Round,
    ids: IdGen,
    /// The client registry as applied so far, with this node's own claims and ends
    /// counted from the moment it makes them: the record its next write for a client
    /// is fenced by.
    owners: HashMap<Arc<str>, OwnerRecord>,
    /// The PUBLISH whose writes are being gathered into one command.
    open: Option<OpenPublish>,
    /// This node's PUBLISH commands not applied yet that sent something out: revoked
    /// if the log refuses them.
    revocations: HashMap<u64, Revocation>,
    /// Writes come back from a replicated log (every node but one on `--storage
    /// memory`): what this node applied in memory is confirmed or corrected from it.
    replicated: bool,
    /// This node's retained and settings writes not applied yet, per topic or name: an
    /// applied value older than one of them must not replace it in memory.
    retained_pending: HashMap<Arc<str>, u32>,
    settings_pending: HashMap<String, u32>,
    /// Hands out session generations: unique across every incarnation of every
    /// session, so a timer of an ended session never matches its successor.
    last_generation: u64,
    /// This node is the only member of its group: no other node routes to its
    /// sessions, so a clean session without a will is not stored (see
    /// [`Session::stored`]). Set by [`Applied::Members`]; a node without Raft is never
    /// told, and stores every session.
    alone: bool,
}

/// What this node knows of a session another node holds: enough to route to it.
#[derive(Debug)]
struct RemoteSession {
    persistent: bool,
    connected: bool,
    filters: Vec<String>,
}

/// One PUBLISH's writes while it is routed.
struct OpenPublish {
    command: PublishCommand,
    /// What it sends is withdrawn if the log refuses it.
    revocation: Option<Revocation>,
}

/// A CONNECT waiting for its session to arrive from the node that held it.
struct PendingConnect {
    conn: ConnectionHandle,
    request: ConnectRequest,
    reply: oneshot::Sender<ConnectReply>,
    /// Messages routed here for the session meanwhile, in order. A durable one (with
    /// its seq) was also written for the session's owner: its write is applied after
    /// the session arrives, and delivering it only then would put it behind messages
    /// routed after the session arrived.
    held: Vec<HeldDelivery>,
}

struct HeldDelivery {
    seq: Option<u64>,
    revocation: Option<Revocation>,
    stored_id: Option<u64>,
    message: Arc<Message>,
    qos: QoS,
    retain: bool,
    subscription_ids: Vec<u32>,
}

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

/// What a live connection sets on its session: what its CONNECT asked for.
struct Attach {
    protocol: ProtocolVersion,
    expiry_interval: u32,
    will: Option<Box<LastWill>>,
    inflight_window: u16,
}

pub struct Router {
    core: Core,
    node_id: u64,
    /// Sessions this node holds.
    /// Boxed: the table has room for about twice as many entries as it holds, and a
    /// session is some 500 bytes; a node with many idle clients pays for that room.
    sessions: HashMap<Arc<str>, Box<Session>>,
    /// Sessions held by other nodes; their subscriptions are in the trie too.
    remote: HashMap<Arc<str>, RemoteSession>,
    pending: HashMap<Arc<str>, PendingConnect>,
    connections: HashMap<ConnId, Arc<str>>,
    trie: SubscriptionTrie<Arc<str>, SubscriptionEntry>,
    retained: HashMap<Arc<str>, Arc<Message>>,
    timers: BTreeMap<(Instant, u64), Timer>,
    timer_seq: u64,
    share_counter: usize,
    /// Reused for every PUBLISH to avoid an allocation per message.
    targets: Vec<(Arc<str>, SubscriptionEntry)>,
    /// See [`Router::applied_through`].
    applied_through: u64,
    /// The replicated settings as applied so far.
    settings: watch::Sender<Settings>,
}

/// Cluster-wide settings by name ([`persist::SETTINGS`]), as the router last applied them.
pub type Settings = Arc<BTreeMap<String, Bytes>>;

const SYS_PREFIX: &str = "$SYS/";

impl Router {
    /// A router holding what `snapshot` stored.
    pub fn new(config: BrokerConfig, metrics: Arc<Metrics>, snapshot: Snapshot) -> Self {
        let sys_interval = config.sys_interval;
        let node_id = config.node_id;
        let mut router = Router {
            core: Core {
                config,
                metrics,
                round: Round::default(),
                ids: IdGen::new(node_id),
                alone: false,
                owners: HashMap::new(),
                open: None,
                revocations: HashMap::new(),
                replicated: false,
                retained_pending: HashMap::new(),
                settings_pending: HashMap::new(),
                last_generation: 0,
            },
            node_id,
            sessions: HashMap::new(),
            remote: HashMap::new(),
            pending: HashMap::new(),
            connections: HashMap::new(),
            trie: SubscriptionTrie::new(),
            retained: HashMap::new(),
            timers: BTreeMap::new(),
            timer_seq: 0,
            share_counter: 0,
            targets: Vec::new(),
            applied_through: 0,
            settings: watch::Sender::new(Settings::default()),
        };
        router.restore(snapshot);
        if let Some(interval) = sys_interval {
            router.set_timer(
                Instant::now() + interval.min(Duration::from_secs(1)),
                Timer::Sys,
            );
        }
        router
    }

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

    fn restore(&mut self, snap: Snapshot) {
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

    /// True when this node holds (or may take without asking) the client's session.
    fn is_mine(&self, client: &str) -> bool {
        self.core
            .owners
            .get(client)
            .is_none_or(|owner| owner.node == self.node_id)
    }

    /// Records in the registry that this node holds the client's session from now on,
    /// in place of the record this node knows of. Proposed before anything else of the
    /// client in the same round, whose writes are fenced by the new record.
    fn claim(&mut self, client: &Arc<str>) {
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
    fn install_session(
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
    fn set_remote(&mut self, client: &Arc<str>, record: Option<&SessionRecord>) {
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
    fn hand_off(&mut self, client: &Arc<str>) {
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
    fn remove_session(&mut self, client: &Arc<str>) -> Option<(Session, Option<ConnectionHandle>)> {
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

    fn set_setting(&mut self, name: &str, value: Option<Bytes>) {
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
                Command::Claim { .. }
                | Command::SaveSession { .. }
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
            self.connect(pending.conn, pending.request, pending.reply);
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

    /// Takes what the events handled since the last call produced.
    pub fn take_round(&mut self) -> Round {
        std::mem::take(&mut self.core.round)
    }

    /// Outputs and writes produced so far in this round.
    pub fn round_len(&self) -> usize {
        let round = &self.core.round;
        round.outputs.len() + round.immediate.len() + round.commands.len()
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.timers.keys().next().map(|(at, _)| *at)
    }

    fn set_timer(&mut self, at: Instant, timer: Timer) {
        self.timer_seq += 1;
        self.timers.insert((at, self.timer_seq), timer);
    }

    /// Runs every timer due at `now`.
    pub fn fire_timers(&mut self, now: Instant) {
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let timer = entry.remove();
            match timer {
                Timer::WillDelay { client, generation } => {
                    if let Some(session) = self.sessions.get_mut(&client) {
                        if session.generation == generation && !session.is_connected() {
                            if let Some(will) = session.will.take() {
                                if session.is_persistent() {
                                    self.core.persist_session(session);
                                }
                                self.publish_will(&client, &will);
                            }
                        }
                    }
                }
                Timer::SessionExpiry { client, generation } => {
                    let expired = self
                        .sessions
                        .get(&client)
                        .is_some_and(|s| s.generation == generation && !s.is_connected());
                    if expired {
                        debug!(client_id = %client, "session expired");
                        self.end_session(&client);
                    }
                }
                Timer::Sys => {
                    self.publish_sys();
                    if let Some(interval) = self.core.config.sys_interval {
                        self.set_timer(now + interval, Timer::Sys);
                    }
                }
            }
        }
    }

    pub fn handle(&mut self, event: Event) {
        let round = &self.core.round;
        let (outputs_before, commands_before, subscribed) =
            (round.outputs.len(), round.commands.len(), round.subscribed);
        self.handle_event(event);
        self.core
            .round
            .settle_event(outputs_before, commands_before, subscribed);
    }

    fn handle_event(&mut self, event: Event) {
        match event {
            Event::Connect {
                conn,
                request,
                reply,
            } => self.connect(conn, request, reply),
            Event::Publish { conn, publish } => self.client_publish(conn, publish),
            Event::RefusePublish {
                conn,
                kind,
                packet_id,
                reason,
            } => {
                let handle = self
                    .connections
                    .get(&conn)
                    .and_then(|client| self.sessions.get(client))
                    .and_then(|session| session.connection.clone());
                if let Some(handle) = handle {
                    let ack = Outgoing::Ack {
                        kind,
                        packet_id,
                        reason,
                    };
                    self.core.send(&handle, ack);
                }
            }
            Event::PubAck { conn, packet_id } => self.with_session(conn, |core, s| {
                core.complete(s, packet_id, Phase::AwaitPubAck)
            }),
            Event::PubRec {
                conn,
                packet_id,
                reason,
            } => self.with_session(conn, |core, s| core.pubrec(s, packet_id, reason)),
            Event::PubComp { conn, packet_id } => self.with_session(conn, |core, s| {
                core.complete(s, packet_id, Phase::AwaitPubComp)
            }),
            Event::PubRel { conn, packet_id } => {
                self.with_session(conn, |core, s| core.pubrel(s, packet_id))
            }
            Event::Subscribe {
                conn,
                packet_id,
                filters,
                subscription_id,
            } => self.subscribe(conn, packet_id, filters, subscription_id),
            Event::Unsubscribe {
                conn,
                packet_id,
                filters,
            } => self.unsubscribe(conn, packet_id, filters),
            Event::Disconnect {
                conn,
                publish_will,
                session_expiry_interval,
            } => self.disconnect(conn, publish_will, session_expiry_interval),
            Event::Forwarded(forwarded) => self.forwarded(forwarded),
            Event::Sweep(ids) => self.core.push(Command::DeleteMessages { ids }),
            Event::Ingest { message, done } => {
                Metrics::add(&self.core.metrics.messages_ingested, 1);
                self.publish_message(message, None);
                self.core.round.outputs.push(Output::Done(done));
            }
            Event::Admin(request) => self.admin(request),
        }
    }

    fn admin(&mut self, request: AdminRequest) {
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

    fn forwarded(&mut self, forwarded: ForwardedPublish) {
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

    fn with_session(&mut self, conn: ConnId, f: impl FnOnce(&mut Core, &mut Session)) {
        let Some(client) = self.connections.get(&conn) else {
            return;
        };
        if let Some(session) = self.sessions.get_mut(client) {
            f(&mut self.core, session);
        }
    }

    fn connect(
        &mut self,
        conn: ConnectionHandle,
        request: ConnectRequest,
        reply: oneshot::Sender<ConnectReply>,
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
        if stored
            && (self.core.owners.get(&client).map(|o| o.node) != Some(self.node_id)
                || !self.sessions.contains_key(&client))
        {
            self.claim(&client);
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
            Some((reply, ConnectReply { session_present })),
        );
    }

    /// Gives the client's session (a new one if it has none) the connection `conn`,
    /// stores it as connected, answers the CONNECT if there is one to answer, and
    /// sends what waited: resent inflight messages first, then the queue.
    fn attach(
        &mut self,
        client: Arc<str>,
        conn: ConnectionHandle,
        live: Attach,
        reply: Option<(oneshot::Sender<ConnectReply>, ConnectReply)>,
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
        if let Some((reply, value)) = reply {
            core.round
                .outputs
                .push(Output::Reply(conn.id, reply, value));
        }
        core.resume(session);
    }

    fn disconnect(&mut self, conn: ConnId, publish_will: bool, new_expiry: Option<u32>) {
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
    fn end_session(&mut self, client: &Arc<str>) {
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
    fn unroute(&mut self, client: &Arc<str>, session: &Session) {
        for filter in session.subscriptions.keys() {
            if let Ok(parsed) = TopicFilter::parse(filter) {
                self.trie.remove(&parsed, client);
            }
        }
    }

    fn client_publish(&mut self, conn: ConnId, publish: Publish) {
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

    fn publish_will(&mut self, client: &Arc<str>, will: &LastWill) {
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

    fn retain(&mut self, message: &Arc<Message>) {
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

    fn subscribe(
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

    fn unsubscribe(&mut self, conn: ConnId, packet_id: u16, filters: Vec<String>) {
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

    fn publish_sys(&mut self) {
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

    pub fn metrics(&self) -> Arc<Metrics> {
        self.core.metrics.clone()
    }

    /// Number of sessions held, connected or not.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
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

fn session_record(session: &Session) -> SessionRecord {
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

impl Core {
    fn send(&mut self, handle: &ConnectionHandle, item: Outgoing) {
        let revocation = self.revocation();
        self.round
            .outputs
            .push(Output::Send(handle.clone(), item, revocation));
    }

    fn push(&mut self, command: Command) {
        self.round.commands.push(command);
    }

    fn next_generation(&mut self) -> u64 {
        self.last_generation += 1;
        self.last_generation
    }

    /// The registry record this node's next write for `client` is fenced by.
    fn fence(&self, client: &str) -> Fence {
        Fence {
            client: client.to_string(),
            owner: self.owners.get(client).copied(),
        }
    }

    /// Starts gathering what one routed message writes into one command.
    fn begin_publish(&mut self, on_behalf: Option<Fence>, qos2_in: Option<u16>) {
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
    fn end_publish(&mut self) {
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
    fn revocation(&self) -> Option<Revocation> {
        self.open.as_ref().and_then(|o| o.revocation.clone())
    }

    /// The id of the message being routed, once its body is stored.
    fn stored_id(&self) -> Option<u64> {
        self.open
            .as_ref()
            .and_then(|o| o.command.message.as_ref().map(|(id, _)| *id))
    }

    fn write_retained(&mut self, topic: &Arc<str>, record: Option<MessageRecord>) {
        if self.replicated {
            *self.retained_pending.entry(topic.clone()).or_default() += 1;
        }
        self.push(Command::SetRetained {
            topic: topic.to_string(),
            message: record,
        });
    }

    fn persist_session(&mut self, session: &mut Session) {
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
    fn would_store(&self, stored: bool, expiry_interval: u32, has_will: bool) -> bool {
        stored || !self.alone || expiry_interval > 0 || has_will
    }

    /// Deletes what storage holds for a session that no longer persists.
    fn forget_stored_state(&mut self, session: &mut Session) {
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
    fn store_remote_delivery(
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
    fn deliver(
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
    fn enqueue(&mut self, session: &mut Session, mut delivery: Delivery, stored: bool) {
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
    fn resume(&mut self, session: &mut Session) {
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
    fn complete(&mut self, session: &mut Session, packet_id: u16, expected: Phase) {
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

    fn pubrec(&mut self, session: &mut Session, packet_id: u16, reason: ReasonCode) {
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

    fn pubrel(&mut self, session: &mut Session, packet_id: u16) {
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
