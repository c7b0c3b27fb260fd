//! The router: one owner of every session, the subscription trie and the retained
//! store, fed by events from connection tasks over a bounded channel. It never does
//! IO: what must be written goes into the round's [`WriteBatch`], what must be sent
//! into its outputs, and the service decides when both happen (after the batch is
//! durable, when there is one).
//!
//! One concept per file, each with its own `impl Router` block:
//! - `mod.rs`: the [`Router`] and what it takes in ([`Event`], [`Applied`]), its
//!   construction, the dispatch of events, timers, and the round being filled;
//! - `round.rs`: a [`Round`] and its [`Output`]s, and their order within one pass;
//! - `routing.rs`: publishing and routing messages, subscribing and unsubscribing;
//! - `sessions.rs`: which node holds a session, and connecting, disconnecting,
//!   ending, installing and handing off sessions;
//! - `admin.rs`: what the admin API reads from the router and orders it to do;
//! - `apply.rs`: taking in what the replicated log applied, snapshots included;
//! - `core.rs`: the state shared between sessions and the QoS 1/2 state machines.

mod admin;
mod apply;
mod core;
mod round;
mod routing;
mod sessions;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fleetmq_codec::{LastWill, ProtocolVersion, Publish, ReasonCode, SubscriptionOptions};
use fleetmq_topic::{SubscriptionTrie, TopicFilter};
use tokio::sync::{oneshot, watch};
use tracing::debug;

use crate::admin::AdminRequest;
use crate::command::{Command, Verdict};
use crate::config::BrokerConfig;
use crate::connection::{AckKind, ConnId, ConnectionHandle, Outgoing};
use crate::message::Message;
use crate::metrics::Metrics;
use crate::peer::ForwardedPublish;
use crate::persist::{ClientState, IdGen, Snapshot};
use crate::session::{Phase, Session, SubscriptionEntry};

use self::core::Core;
pub use self::round::{Output, Round};
use self::sessions::{PendingConnect, RemoteSession};

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
                connect_revocations: HashMap::new(),
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

    fn with_session(&mut self, conn: ConnId, f: impl FnOnce(&mut Core, &mut Session)) {
        let Some(client) = self.connections.get(&conn) else {
            return;
        };
        if let Some(session) = self.sessions.get_mut(client) {
            f(&mut self.core, session);
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
