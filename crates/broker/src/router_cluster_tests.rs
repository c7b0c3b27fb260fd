//! Several routers as the nodes of one cluster, in-process: each round's writes go to a
//! shared store and, as the state machine would feed them, to every router in order;
//! forwarded PUBLISHes go straight to their node. No Raft here (crates/cluster tests
//! that), and no admission (the state machine's), just the routers' side of it.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use fleetmq_codec::{ProtocolVersion, Publish, PublishProperties, QoS, ReasonCode};
use fleetmq_storage::{KvEngine, MemoryEngine, WriteOp};
use fleetmq_topic::TopicFilter;
use tokio::sync::oneshot;

use crate::config::BrokerConfig;
use crate::connection::{ConnectionEnd, ConnectionHandle, Outgoing, OutgoingPublish};
use crate::metrics::Metrics;
use crate::peer::{ForwardedPublish, Forwarder};
use crate::persist::{self, OwnerRecord, OWNERS};
use crate::router::{Applied, ConnectReply, ConnectRequest, Event, Router};
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
}

struct Client {
    conn: u64,
    end: ConnectionEnd,
    reply: oneshot::Receiver<ConnectReply>,
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
                Router::new(config, metrics.clone(), persist::Snapshot::default())
            })
            .collect();
        Cluster {
            routers,
            metrics,
            engine: MemoryEngine::new(),
            forwarded: Arc::new(Outbox::default()),
            next_conn: 1,
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
                let origin = i as u64 + 1;
                let ops: Vec<WriteOp> = round.batch.ops().to_vec();
                self.engine.write(round.batch).unwrap();
                for router in &mut self.routers {
                    router.handle_applied(Applied::Entry {
                        origin,
                        ops: ops.clone(),
                    });
                }
                for op in &ops {
                    let WriteOp::Put {
                        tree: OWNERS,
                        key,
                        value,
                    } = op
                    else {
                        continue;
                    };
                    let owner: OwnerRecord = persist::decode(OWNERS, value).unwrap();
                    let client = std::str::from_utf8(key).unwrap();
                    let state = persist::load_client(&self.engine, client).unwrap();
                    self.routers[owner.node as usize - 1].handle_applied(Applied::Loaded {
                        client: Arc::from(client),
                        state: Box::new(state),
                    });
                }
                deliver(round.outputs, &self.metrics, &self.forwarded);
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

    fn connect(&mut self, node: usize, id: &str, clean: bool, expiry: u32) -> Client {
        let conn = self.next_conn;
        self.next_conn += 1;
        let (handle, end) = ConnectionHandle::new(conn, 1024);
        let (tx, rx) = oneshot::channel();
        self.routers[node - 1].handle(Event::Connect {
            conn: handle,
            request: ConnectRequest {
                client_id: Arc::from(id),
                protocol: ProtocolVersion::V5,
                clean_start: clean,
                session_expiry_interval: expiry,
                receive_maximum: u16::MAX,
                will: None,
            },
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
        self.routers[node - 1].handle(Event::Publish {
            conn: c.conn,
            publish: Publish {
                dup: false,
                qos,
                retain: false,
                topic: Arc::from(topic),
                packet_id: (qos != QoS::AtMostOnce).then_some(1),
                properties: PublishProperties::default(),
                payload: Bytes::from(payload.to_string()),
            },
        });
        self.settle();
    }
}

fn publishes(c: &mut Client) -> Vec<OutgoingPublish> {
    let mut out = Vec::new();
    while let Ok(item) = c.end.outbox.try_recv() {
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
        *first.end.close.borrow(),
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
