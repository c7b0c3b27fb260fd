//! Several routers as the nodes of one cluster, in-process: each round's writes go to a
//! shared store and, as the state machine would feed them, to every router in order;
//! forwarded PUBLISHes go straight to their node. No Raft here (crates/cluster tests
//! that), just the routers' side of it and the state machine's admission of writes.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use fleetmq_codec::{ProtocolVersion, Publish, PublishProperties, QoS, ReasonCode};
use fleetmq_storage::{KvEngine, MemoryEngine};
use fleetmq_topic::TopicFilter;
use tokio::sync::oneshot;

use crate::command::{self, Command, Verdict};
use crate::config::BrokerConfig;
use crate::connection::{ConnectionEnd, ConnectionHandle, Outgoing, OutgoingPublish};
use crate::metrics::Metrics;
use crate::peer::{ForwardedPublish, Forwarder};
use crate::persist::{self, OwnerRecord, OWNERS};
use crate::router::{Applied, AppliedCommand, ConnectReply, ConnectRequest, Event, Round, Router};
use crate::service::deliver;

#[derive(Default)]
struct Outbox(Mutex<Vec<(u64, ForwardedPublish)>>);

impl Forwarder for Arc<Outbox> {
    fn forward(&self, node: u64, publish: ForwardedPublish) {
        if let Ok(mut list) = self.0.lock() {
            list.push((node, publish));
        }
    }
}

struct Cluster {
    routers: Vec<Router>,
    metrics: Arc<Metrics>,
    engine: MemoryEngine,
    forwarded: Arc<Outbox>,
    next_conn: u64,
    /// A node (1-based) whose state machine has fallen behind: what is committed
    /// meanwhile is not fed to its router, until [`Cluster::catch_up`] or
    /// [`Cluster::replay_missed`].
    lagging: Option<usize>,
    /// The entries the lagging node's router missed, in commit order.
    missed: Vec<(u64, Vec<AppliedCommand>)>,
}

struct Client {
    conn: u64,
    end: ConnectionEnd,
    reply: oneshot::Receiver<ConnectReply>,
}

impl Client {
    /// Whether its CONNECT was answered with a session present.
    fn reply_present(&mut self) -> bool {
        self.reply.try_recv().is_ok_and(|r| r.session_present)
    }
}

impl Cluster {
    fn new(nodes: u64) -> Self {
        let metrics = Arc::new(Metrics::default());
        let routers = (1..=nodes)
            .map(|node_id| {
                let config = BrokerConfig {
                    node_id,
                    sys_interval: None,
                    ..BrokerConfig::default()
                };
                let mut router = Router::new(config, metrics.clone(), persist::Snapshot::default());
                router.set_replicated();
                router
            })
            .collect();
        Cluster {
            routers,
            metrics,
            engine: MemoryEngine::new(),
            forwarded: Arc::new(Outbox::default()),
            next_conn: 1,
            lagging: None,
            missed: Vec::new(),
        }
    }

    /// Commits every router's round in node order and feeds it to all, until quiet.
    fn settle(&mut self) {
        for _ in 0..10 {
            let mut quiet = true;
            for i in 0..self.routers.len() {
                let round = self.routers[i].take_round();
                if round.is_empty() {
                    continue;
                }
                quiet = false;
                self.commit(i as u64 + 1, round);
            }
            let forwarded: Vec<_> = self.forwarded.0.lock().unwrap().drain(..).collect();
            for (node, publish) in forwarded {
                quiet = false;
                self.routers[node as usize - 1].handle(Event::Forwarded(publish));
            }
            if quiet {
                return;
            }
        }
        panic!("the cluster did not settle");
    }

    /// Commits one round of node `origin`: its commands are admitted and applied to the
    /// store as the state machine does ([`command::apply_all`]), and fed, in order, to
    /// every router that is not lagging; then its outputs go out.
    fn commit(&mut self, origin: u64, round: Round) {
        deliver(round.immediate, &self.metrics, &self.forwarded);
        let verdicts = command::apply_all(&self.engine, &round.commands).unwrap();
        let applied: Vec<AppliedCommand> = round
            .commands
            .into_iter()
            .zip(verdicts)
            .map(|(command, verdict)| AppliedCommand { command, verdict })
            .collect();
        self.apply(origin, &applied);
        deliver(round.outputs, &self.metrics, &self.forwarded);
    }

    /// What node `node`'s router is fed of an entry of `origin`: another node's
    /// admitted commands, all of its own with their verdicts.
    fn fed(node: usize, origin: u64, commands: &[AppliedCommand]) -> Vec<AppliedCommand> {
        commands
            .iter()
            .filter(|c| node as u64 == origin || c.verdict == Verdict::Applied)
            .cloned()
            .collect()
    }

    /// Feeds committed commands to every router that is not lagging, with the loads a
    /// claim gives its new owner.
    fn apply(&mut self, origin: u64, commands: &[AppliedCommand]) {
        for (i, router) in self.routers.iter_mut().enumerate() {
            if self.lagging == Some(i + 1) {
                self.missed.push((origin, commands.to_vec()));
            } else {
                router.handle_applied(Applied::Entry {
                    origin,
                    commands: Self::fed(i + 1, origin, commands),
                });
            }
        }
        for applied in commands {
            let (Command::Claim { client, owner, .. }, Verdict::Applied) =
                (&applied.command, applied.verdict)
            else {
                continue;
            };
            if self.lagging == Some(owner.node as usize) {
                continue;
            }
            let state = persist::load_client(&self.engine, client).unwrap();
            self.routers[owner.node as usize - 1].handle_applied(Applied::Loaded {
                client: Arc::from(client.as_str()),
                state: Box::new(state),
            });
        }
    }

    /// The lagging node installs a snapshot: its router gets the whole store.
    fn catch_up(&mut self) {
        let node = self.lagging.take().unwrap();
        self.missed.clear();
        let stored = persist::load(&self.engine).unwrap();
        self.routers[node - 1].handle_applied(Applied::Reset(Box::new(stored)));
        self.settle();
    }

    /// The lagging node `node` applies the next `n` entries it missed, one by one, as
    /// its state machine would while catching up through the log; its rounds stay
    /// with the caller.
    fn replay_missed(&mut self, node: usize, n: usize) {
        for (origin, commands) in self.missed.drain(..n) {
            let commands = Self::fed(node, origin, &commands);
            self.routers[node - 1].handle_applied(Applied::Entry { origin, commands });
        }
    }

    fn connect(&mut self, node: usize, id: &str, clean: bool, expiry: u32) -> Client {
        let conn = self.next_conn;
        self.next_conn += 1;
        let (handle, end) = ConnectionHandle::new(conn, 1024);
        let (tx, rx) = oneshot::channel();
        self.routers[node - 1].handle(Event::Connect {
            conn: handle,
            request: connect_request(id, clean, expiry),
            reply: tx,
        });
        self.settle();
        Client {
            conn,
            end,
            reply: rx,
        }
    }

    fn subscribe(&mut self, node: usize, c: &Client, filter: &str, qos: QoS) {
        self.routers[node - 1].handle(Event::Subscribe {
            conn: c.conn,
            packet_id: 1,
            filters: vec![Ok((
                TopicFilter::parse(filter).unwrap(),
                fleetmq_codec::SubscriptionOptions {
                    qos,
                    ..Default::default()
                },
            ))],
            subscription_id: None,
        });
        self.settle();
    }

    fn publish(&mut self, node: usize, c: &Client, topic: &str, payload: &str, qos: QoS) {
        self.send_publish(node, c, topic, payload, qos, false);
    }

    fn publish_retained(&mut self, node: usize, c: &Client, topic: &str, payload: &str) {
        self.send_publish(node, c, topic, payload, QoS::AtLeastOnce, true);
    }

    fn send_publish(
        &mut self,
        node: usize,
        c: &Client,
        topic: &str,
        payload: &str,
        qos: QoS,
        retain: bool,
    ) {
        let packet_id = (qos != QoS::AtMostOnce).then_some(1);
        self.routers[node - 1].handle(Event::Publish {
            conn: c.conn,
            publish: publish_of(topic, payload, qos, retain, packet_id, false),
        });
        self.settle();
    }

    /// A QoS 2 PUBLISH sent again (DUP) with the packet id of [`publish_uncommitted`].
    fn send_publish_dup(&mut self, node: usize, c: &Client, payload: &str) {
        self.routers[node - 1].handle(Event::Publish {
            conn: c.conn,
            publish: publish_of("q/1", payload, QoS::ExactlyOnce, false, Some(7), true),
        });
        self.settle();
    }

    fn disconnect(&mut self, node: usize, c: &Client) {
        self.routers[node - 1].handle(Event::Disconnect {
            conn: c.conn,
            publish_will: false,
            session_expiry_interval: None,
        });
        self.settle();
    }

    fn owner(&self, client: &str) -> OwnerRecord {
        let bytes = self.engine.get(OWNERS, client.as_bytes()).unwrap().unwrap();
        persist::decode(OWNERS, &bytes).unwrap()
    }

    /// Commits a move of `client` to `node`, as the leader's failover does.
    fn move_session(&mut self, client: &str, node: u64) {
        let expected = self.owner(client);
        self.move_session_from(client, expected, node);
    }

    /// Commits a move of `client` to `node` over the registry record `expected`, as a
    /// failover decided from it does.
    fn move_session_from(&mut self, client: &str, expected: OwnerRecord, node: u64) {
        let mut round = Round::default();
        round.commands.push(Command::Claim {
            client: client.into(),
            expected: Some(expected),
            owner: OwnerRecord {
                node,
                epoch: expected.epoch + 1,
            },
        });
        // Proposed by the leader, which is none of the routers here.
        self.commit(0, round);
    }
}

fn connect_request(id: &str, clean_start: bool, session_expiry_interval: u32) -> ConnectRequest {
    ConnectRequest {
        client_id: Arc::from(id),
        protocol: ProtocolVersion::V5,
        clean_start,
        session_expiry_interval,
        receive_maximum: u16::MAX,
        will: None,
    }
}

fn publish_of(
    topic: &str,
    payload: &str,
    qos: QoS,
    retain: bool,
    packet_id: Option<u16>,
    dup: bool,
) -> Publish {
    Publish {
        dup,
        qos,
        retain,
        topic: Arc::from(topic),
        packet_id,
        properties: PublishProperties::default(),
        payload: Bytes::from(payload.to_string()),
    }
}

fn publishes(c: &mut Client) -> Vec<OutgoingPublish> {
    let mut out = Vec::new();
    while let Some(item) = c.end.try_recv() {
        if let Outgoing::Publish(p) = item {
            out.push(p);
        }
    }
    out
}

fn payloads(c: &mut Client) -> Vec<String> {
    publishes(c)
        .iter()
        .map(|p| String::from_utf8_lossy(&p.message.payload).into_owned())
        .collect()
}

#[test]
fn a_publish_reaches_subscribers_on_every_node_once() {
    let mut cluster = Cluster::new(3);
    let mut durable = cluster.connect(2, "durable", false, 600);
    let mut clean = cluster.connect(3, "clean", true, 0);
    let mut local = cluster.connect(1, "local", true, 0);
    cluster.subscribe(2, &durable, "t/#", QoS::AtLeastOnce);
    cluster.subscribe(3, &clean, "t/#", QoS::AtLeastOnce);
    cluster.subscribe(1, &local, "t/+", QoS::AtMostOnce);
    let publisher = cluster.connect(1, "pub", true, 0);
    for i in 0..3 {
        cluster.publish(1, &publisher, "t/x", &format!("m{i}"), QoS::AtLeastOnce);
    }
    assert_eq!(payloads(&mut durable), ["m0", "m1", "m2"]);
    assert_eq!(payloads(&mut clean), ["m0", "m1", "m2"]);
    assert_eq!(payloads(&mut local), ["m0", "m1", "m2"]);
    // The durable subscriber's copies went through the store, the clean one's over the
    // forward stream: one forward per message, to node 3 only.
    assert_eq!(
        cluster
            .metrics
            .forwarded_out
            .load(std::sync::atomic::Ordering::Relaxed),
        3
    );
}

#[test]
fn a_shared_group_spreads_over_members_on_every_node() {
    let mut cluster = Cluster::new(3);
    let mut members: Vec<Client> = (1..=3)
        .map(|node| cluster.connect(node, &format!("m{node}"), true, 0))
        .collect();
    for (i, member) in members.iter().enumerate() {
        cluster.subscribe(i + 1, member, "$share/g/job", QoS::AtMostOnce);
    }
    let publisher = cluster.connect(1, "pub", true, 0);
    for i in 0..30 {
        cluster.publish(1, &publisher, "job", &format!("{i}"), QoS::AtMostOnce);
    }
    let counts: Vec<usize> = members.iter_mut().map(|m| payloads(m).len()).collect();
    assert_eq!(
        counts.iter().sum::<usize>(),
        30,
        "each message once: {counts:?}"
    );
    assert!(
        counts.iter().all(|c| *c > 0),
        "every node's member got some: {counts:?}"
    );
}

#[test]
fn a_session_follows_its_client_to_another_node_with_its_queue() {
    let mut cluster = Cluster::new(2);
    let mut first = cluster.connect(1, "dev", false, 600);
    assert_eq!(
        first.reply.try_recv().unwrap(),
        ConnectReply {
            session_present: false
        }
    );
    cluster.subscribe(1, &first, "cmd/#", QoS::AtLeastOnce);
    let publisher = cluster.connect(2, "pub", true, 0);
    cluster.publish(2, &publisher, "cmd/a", "before", QoS::AtLeastOnce);
    let got = publishes(&mut first);
    assert_eq!(got.len(), 1, "delivered on node 1");

    // Not acknowledged; the client turns up on node 2.
    let mut second = cluster.connect(2, "dev", false, 600);
    assert_eq!(
        second.reply.try_recv().unwrap(),
        ConnectReply {
            session_present: true
        }
    );
    assert_eq!(
        first.end.close_reason(),
        Some(ReasonCode::SessionTakenOver),
        "node 1 closed the old connection with 0x8E"
    );
    let resent = publishes(&mut second);
    assert_eq!(
        resent.len(),
        1,
        "the unacknowledged message is resent on node 2"
    );
    assert!(resent[0].dup);
    assert_eq!(resent[0].packet_id, got[0].packet_id);

    // The subscription moved too: a new message goes to node 2 only.
    cluster.publish(2, &publisher, "cmd/b", "after", QoS::AtLeastOnce);
    assert_eq!(payloads(&mut second), ["after"]);
    let owner: OwnerRecord = persist::decode(
        OWNERS,
        &cluster.engine.get(OWNERS, b"dev").unwrap().unwrap(),
    )
    .unwrap();
    assert_eq!(owner.node, 2);
    assert_eq!(owner.epoch, 2);
}

fn is_closed(c: &Client) -> Option<ReasonCode> {
    c.end.close_reason()
}

#[test]
fn a_router_under_an_installed_snapshot_reloads_what_it_missed() {
    let mut cluster = Cluster::new(2);
    let moving = cluster.connect(2, "moving", false, 600);
    cluster.subscribe(2, &moving, "m/#", QoS::AtLeastOnce);
    let mut staying = cluster.connect(2, "staying", false, 600);
    cluster.subscribe(2, &staying, "s/#", QoS::AtLeastOnce);
    let pub1 = cluster.connect(1, "pub1", true, 0);
    let pub2 = cluster.connect(2, "pub2", true, 0);
    cluster.publish_retained(1, &pub1, "r/old", "stale");

    // Node 2 falls behind; everything below is committed while it applies nothing.
    cluster.lagging = Some(2);
    // (a) "moving" is taken over on node 1.
    let mut moved = cluster.connect(1, "moving", false, 600);
    assert!(moved.reply.try_recv().unwrap().session_present);
    // (b) Node 1 stores a message for "staying", for node 2 to pick up.
    cluster.publish(1, &pub1, "s/1", "missed", QoS::AtLeastOnce);
    // (c) A session appears on node 1.
    let mut newcomer = cluster.connect(1, "newcomer", true, 0);
    cluster.subscribe(1, &newcomer, "n/#", QoS::AtMostOnce);
    // (d) The retained set changes.
    cluster.publish_retained(1, &pub1, "r/old", "");
    cluster.publish_retained(1, &pub1, "r/new", "fresh");
    // Node 2's own writes meanwhile: one committed (so in the snapshot), one still on its
    // way through Raft when the snapshot is installed.
    cluster.subscribe(2, &staying, "own/#", QoS::AtMostOnce);
    cluster.routers[1].handle(Event::Subscribe {
        conn: staying.conn,
        packet_id: 2,
        filters: vec![Ok((
            TopicFilter::parse("late/#").unwrap(),
            fleetmq_codec::SubscriptionOptions::default(),
        ))],
        subscription_id: None,
    });
    let in_flight = cluster.routers[1].take_round();

    // Node 2 still acts on what it last applied.
    cluster.publish(2, &pub2, "n/1", "too early", QoS::AtMostOnce);
    assert!(payloads(&mut newcomer).is_empty());
    assert!(payloads(&mut staying).is_empty());
    assert_eq!(is_closed(&moving), None);

    cluster.catch_up();

    // (a) The session moved: its connection here is closed with 0x8E, and a message
    // published on node 2 reaches it on node 1.
    assert_eq!(is_closed(&moving), Some(ReasonCode::SessionTakenOver));
    cluster.publish(2, &pub2, "m/1", "to node 1", QoS::AtLeastOnce);
    assert_eq!(payloads(&mut moved), ["to node 1"]);
    // (b) The session that stayed keeps its connection and gets what was stored for it.
    assert_eq!(is_closed(&staying), None);
    assert_eq!(payloads(&mut staying), ["missed"]);
    // (c) Node 2 routes to the new remote session.
    cluster.publish(2, &pub2, "n/1", "hello", QoS::AtMostOnce);
    assert_eq!(payloads(&mut newcomer), ["hello"]);
    // (d) A new subscriber on node 2 gets the retained messages as they are now.
    let mut reader = cluster.connect(2, "reader", true, 0);
    cluster.subscribe(2, &reader, "r/#", QoS::AtLeastOnce);
    assert_eq!(payloads(&mut reader), ["fresh"]);
    // Node 2's own writes survive the reload, the one the snapshot lacked included.
    cluster.commit(2, in_flight);
    cluster.publish(2, &pub2, "own/1", "own", QoS::AtMostOnce);
    cluster.publish(2, &pub2, "late/1", "late", QoS::AtMostOnce);
    assert_eq!(payloads(&mut staying), ["own", "late"]);
}

#[test]
fn a_session_that_came_back_meanwhile_is_reloaded_under_its_connection() {
    let mut cluster = Cluster::new(2);
    let mut roamer = cluster.connect(2, "roamer", false, 600);
    cluster.subscribe(2, &roamer, "a/#", QoS::AtLeastOnce);
    let pub1 = cluster.connect(1, "pub1", true, 0);
    let pub2 = cluster.connect(2, "pub2", true, 0);

    // While node 2 lags, the session goes to node 1, gains a subscription and a message
    // in flight there, and is moved back to node 2 (node 1 deemed dead).
    cluster.lagging = Some(2);
    let mut away = cluster.connect(1, "roamer", false, 600);
    cluster.subscribe(1, &away, "b/#", QoS::AtLeastOnce);
    cluster.publish(1, &pub1, "b/1", "while away", QoS::AtLeastOnce);
    let sent = publishes(&mut away);
    assert_eq!(sent.len(), 1);
    cluster.move_session("roamer", 2);
    assert_eq!(is_closed(&away), Some(ReasonCode::SessionTakenOver));
    assert_eq!(cluster.owner("roamer").epoch, 3);

    cluster.catch_up();

    // Node 2 holds it again: the connection it kept stays, with the stored session.
    assert_eq!(is_closed(&roamer), None);
    let resent = publishes(&mut roamer);
    assert_eq!(resent.len(), 1, "the message in flight is resent");
    assert!(resent[0].dup);
    assert_eq!(resent[0].packet_id, sent[0].packet_id);
    cluster.publish(2, &pub2, "b/2", "gained", QoS::AtMostOnce);
    cluster.publish(2, &pub2, "a/1", "kept", QoS::AtMostOnce);
    assert_eq!(payloads(&mut roamer), ["gained", "kept"]);
}

#[test]
fn sessions_given_to_a_lagging_node_are_taken_up_from_the_snapshot() {
    let mut cluster = Cluster::new(2);
    let first = cluster.connect(1, "comer", false, 600);
    cluster.subscribe(1, &first, "c/#", QoS::AtLeastOnce);
    let sleeper = cluster.connect(1, "sleeper", false, 600);
    cluster.subscribe(1, &sleeper, "z/#", QoS::AtLeastOnce);
    cluster.disconnect(1, &sleeper);
    let pub1 = cluster.connect(1, "pub1", true, 0);
    let pub2 = cluster.connect(2, "pub2", true, 0);
    assert_eq!(cluster.routers[1].session_count(), 1);

    cluster.lagging = Some(2);
    // "comer" reconnects on node 2: its claim is committed (node 1 lets go) but node 2
    // has not applied it, so its CONNECT waits.
    let mut second = cluster.connect(2, "comer", false, 600);
    assert_eq!(is_closed(&first), Some(ReasonCode::SessionTakenOver));
    cluster.publish(1, &pub1, "c/1", "meanwhile", QoS::AtLeastOnce);
    assert!(second.reply.try_recv().is_err());
    // "sleeper", offline, is moved to node 2.
    cluster.move_session("sleeper", 2);

    cluster.catch_up();

    assert!(second.reply.try_recv().unwrap().session_present);
    assert_eq!(payloads(&mut second), ["meanwhile"]);
    cluster.publish(2, &pub2, "c/2", "after", QoS::AtLeastOnce);
    assert_eq!(payloads(&mut second), ["after"]);
    assert_eq!(
        cluster.routers[1].session_count(),
        3,
        "pub2, comer and the adopted sleeper"
    );
    let mut woken = cluster.connect(2, "sleeper", false, 600);
    assert!(woken.reply.try_recv().unwrap().session_present);
    cluster.publish(2, &pub2, "z/1", "wake", QoS::AtLeastOnce);
    assert_eq!(payloads(&mut woken), ["wake"]);
}

#[test]
fn a_deposed_owner_sends_nothing_on_the_connection_it_let_go() {
    // Node 3 is cut off while its client's session is moved to node 2 (failover). Once
    // back it applies what it missed in log order: a QoS 2 delivery stored for it before
    // the move, then the move. The PUBLISH it makes of that delivery is released only
    // after its own write commits, behind the move: were it sent then on the connection
    // node 3 let go, the client would get the message again from node 2 under another
    // packet id, a QoS 2 message delivered twice.
    let mut cluster = Cluster::new(3);
    let mut first = cluster.connect(3, "sub", false, 600);
    cluster.subscribe(3, &first, "d/#", QoS::ExactlyOnce);
    let publisher = cluster.connect(1, "pub", true, 0);

    cluster.lagging = Some(3);
    cluster.publish(1, &publisher, "d/1", "once", QoS::ExactlyOnce);
    cluster.move_session("sub", 2);
    assert!(publishes(&mut first).is_empty(), "node 3 was cut off");
    assert_eq!(cluster.missed.len(), 2, "the delivery, then the move");

    cluster.lagging = None;
    cluster.replay_missed(3, 1);
    let stale = cluster.routers[2].take_round();
    assert!(
        stale.outputs.iter().any(|o| matches!(
            o,
            crate::router::Output::Send(h, Outgoing::Publish(_), _) if h.id == first.conn
        )),
        "node 3 still holds the session when it applies the delivery, and sends it"
    );
    cluster.replay_missed(3, 1);
    assert_eq!(is_closed(&first), Some(ReasonCode::SessionTakenOver));
    cluster.commit(3, stale);
    assert!(
        publishes(&mut first).is_empty(),
        "nothing goes out on a connection after the router let it go"
    );

    let mut second = cluster.connect(2, "sub", false, 600);
    assert!(second.reply.try_recv().unwrap().session_present);
    let got = publishes(&mut second);
    assert_eq!(got.len(), 1, "delivered once, by the owner: {got:?}");
    assert!(!got[0].dup);
}

fn is_open(c: &Client) -> bool {
    is_closed(c).is_none()
}

/// A QoS 2 PUBLISH handed to node `node`'s router whose round is not committed yet (the
/// node was paused, or cut off, right after): the round is returned to commit later.
fn publish_uncommitted(
    cluster: &mut Cluster,
    node: usize,
    c: &Client,
    payload: &str,
    dup: bool,
) -> Round {
    cluster.routers[node - 1].handle(Event::Publish {
        conn: c.conn,
        publish: publish_of("q/1", payload, QoS::ExactlyOnce, false, Some(7), dup),
    });
    cluster.routers[node - 1].take_round()
}

#[test]
fn a_qos2_publish_whose_publisher_moved_before_it_was_applied_is_delivered_once() {
    let mut cluster = Cluster::new(3);
    let mut near = cluster.connect(1, "near", false, 600);
    cluster.subscribe(1, &near, "q/#", QoS::ExactlyOnce);
    let mut far = cluster.connect(3, "far", false, 600);
    cluster.subscribe(3, &far, "q/#", QoS::ExactlyOnce);
    let publisher = cluster.connect(1, "pub", false, 600);

    // Node 1 takes the PUBLISH in; before its round commits, the publisher resumes its
    // session on node 2 (node 1 was paused: the client timed out and moved).
    let late = publish_uncommitted(&mut cluster, 1, &publisher, "once", false);
    let mut moved = cluster.connect(2, "pub", false, 600);
    assert!(moved.reply_present());
    assert_eq!(is_closed(&publisher), Some(ReasonCode::SessionTakenOver));
    // Node 1 resumes: its round commits after the move, and is refused whole.
    cluster.commit(1, late);
    cluster.settle();
    assert!(publishes(&mut near).is_empty(), "node 1's own subscriber");
    assert!(publishes(&mut far).is_empty(), "node 3's subscriber");
    assert_eq!(
        cluster
            .metrics
            .commands_refused
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );

    // The client resends on node 2, as MQTT says it must: one copy each.
    cluster.send_publish_dup(2, &moved, "once");
    assert_eq!(payloads(&mut near), ["once"]);
    assert_eq!(payloads(&mut far), ["once"]);
    assert!(is_open(&near) && is_open(&far));
}

#[test]
fn a_claim_racing_a_failover_adoption_stands() {
    let mut cluster = Cluster::new(3);
    let first = cluster.connect(1, "dev", false, 600);
    cluster.subscribe(1, &first, "d/#", QoS::AtLeastOnce);
    let before = cluster.owner("dev");
    // Node 1 is taken for dead; the leader decides to give "dev" to node 3 from the
    // registry as it reads it. Meanwhile the client reconnects on node 2, whose claim
    // is committed first.
    let mut second = cluster.connect(2, "dev", false, 600);
    assert!(second.reply_present());
    cluster.move_session_from("dev", before, 3);
    assert_eq!(cluster.owner("dev").node, 2, "the reconnect's claim stands");
    assert!(is_open(&second));
    assert_eq!(cluster.routers[2].session_count(), 0);
    let publisher = cluster.connect(3, "pub", true, 0);
    cluster.publish(3, &publisher, "d/1", "still here", QoS::AtLeastOnce);
    assert_eq!(payloads(&mut second), ["still here"]);
}

#[test]
fn nodes_setting_one_retained_topic_at_once_agree_on_the_last_in_the_log() {
    let mut cluster = Cluster::new(2);
    let a = cluster.connect(1, "a", true, 0);
    let b = cluster.connect(2, "b", true, 0);
    for round in 0..3 {
        // Both take a retained PUBLISH in before either is committed; the log orders
        // node 2's first one round, node 1's first the next.
        let from_a = retained_uncommitted(&mut cluster, 1, &a, &format!("a{round}"));
        let from_b = retained_uncommitted(&mut cluster, 2, &b, &format!("b{round}"));
        let expected = if round % 2 == 0 {
            cluster.commit(2, from_b);
            cluster.commit(1, from_a);
            format!("a{round}")
        } else {
            cluster.commit(1, from_a);
            cluster.commit(2, from_b);
            format!("b{round}")
        };
        cluster.settle();
        for node in 1..=2 {
            let mut reader = cluster.connect(node, "reader", true, 0);
            cluster.subscribe(node, &reader, "r/t", QoS::AtMostOnce);
            assert_eq!(payloads(&mut reader), vec![expected.clone()], "node {node}");
            cluster.disconnect(node, &reader);
        }
    }
}

fn retained_uncommitted(cluster: &mut Cluster, node: usize, c: &Client, payload: &str) -> Round {
    cluster.routers[node - 1].handle(Event::Publish {
        conn: c.conn,
        publish: publish_of("r/t", payload, QoS::AtLeastOnce, true, Some(1), false),
    });
    cluster.routers[node - 1].take_round()
}

#[test]
fn a_claim_left_behind_by_a_connect_given_up_on_is_never_served_stale() {
    let mut cluster = Cluster::new(2);
    let first = cluster.connect(1, "dev", false, 600);
    cluster.subscribe(1, &first, "d/#", QoS::AtLeastOnce);
    cluster.disconnect(1, &first);

    // The client tries node 2, whose claim cannot commit yet; it gives up on node 2 and
    // comes back to node 1, which holds the session.
    let conn = cluster.next_conn;
    cluster.next_conn += 1;
    let (handle, _end) = ConnectionHandle::new(conn, 1024);
    let (tx, _given_up) = oneshot::channel();
    cluster.routers[1].handle(Event::Connect {
        conn: handle,
        request: connect_request("dev", false, 600),
        reply: tx,
    });
    let left_behind = cluster.routers[1].take_round();
    cluster.routers[1].handle(Event::Disconnect {
        conn,
        publish_will: true,
        session_expiry_interval: None,
    });
    let node2_rest = cluster.routers[1].take_round();
    let (handle, back_end) = ConnectionHandle::new(cluster.next_conn, 1024);
    let back_conn = cluster.next_conn;
    cluster.next_conn += 1;
    let (tx, mut back_reply) = oneshot::channel();
    cluster.routers[0].handle(Event::Connect {
        conn: handle,
        request: connect_request("dev", false, 600),
        reply: tx,
    });
    let node1_round = cluster.routers[0].take_round();
    // Node 2's older claim is committed first: node 1's is refused, and its CONNACK is
    // withdrawn rather than sent with session present and followed by 0x8E.
    cluster.commit(2, left_behind);
    cluster.commit(2, node2_rest);
    cluster.commit(1, node1_round);
    cluster.settle();
    let answered = back_reply.try_recv();
    assert!(
        !matches!(
            answered,
            Ok(ConnectReply {
                session_present: true
            })
        ),
        "a CONNACK with session present for a session another node took: {answered:?}"
    );
    let _ = (back_conn, back_end);

    // The client tries again: its session comes back to node 1.
    let mut again = cluster.connect(1, "dev", false, 600);
    assert!(again.reply_present());
    let publisher = cluster.connect(2, "pub", true, 0);
    cluster.publish(2, &publisher, "d/1", "kept", QoS::AtLeastOnce);
    assert_eq!(payloads(&mut again), ["kept"]);
}
