//! The router driven in-process: events in, outbox items and storage writes out.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fleetmq_codec::{
    LastWill, Packet, ProtocolVersion, Publish, PublishProperties, QoS, ReasonCode, RetainHandling,
    SubscriptionOptions, WillProperties,
};
use fleetmq_storage::{KvEngine, MemoryEngine};
use fleetmq_topic::TopicFilter;
use tokio::sync::oneshot;

use crate::admin::AdminRequest;
use crate::config::{BrokerConfig, QueueFullPolicy};
use crate::connection::{ConnectionEnd, ConnectionHandle, Outgoing, OutgoingPublish};
use crate::metrics::{DropReason, Metrics};
use crate::persist;
use crate::router::{ConnectReply, ConnectRequest, Event, Router};
use crate::service::deliver;

struct Harness {
    router: Router,
    metrics: Arc<Metrics>,
    engine: MemoryEngine,
    next_conn: u64,
}

struct Client {
    conn: u64,
    end: ConnectionEnd,
    session_present: bool,
}

impl Harness {
    fn new(config: BrokerConfig) -> Self {
        let metrics = Arc::new(Metrics::default());
        let config = BrokerConfig {
            sys_interval: None,
            ..config
        };
        Harness {
            router: Router::new(config, metrics.clone(), persist::Snapshot::default()),
            metrics,
            engine: MemoryEngine::new(),
            next_conn: 1,
        }
    }

    /// A router restarted on what this one stored.
    fn restart(self, config: BrokerConfig) -> Harness {
        let snapshot = persist::load(&self.engine).unwrap();
        let metrics = Arc::new(Metrics::default());
        let config = BrokerConfig {
            sys_interval: None,
            ..config
        };
        Harness {
            router: Router::new(config, metrics.clone(), snapshot),
            metrics,
            engine: self.engine,
            next_conn: self.next_conn,
        }
    }

    /// Applies events' writes to storage and their outputs to connections, as the service does.
    fn settle(&mut self) {
        let round = self.router.take_round();
        deliver(round.immediate, &self.metrics, &crate::peer::NoForwarder);
        crate::command::apply_all(&self.engine, &round.commands).unwrap();
        deliver(round.outputs, &self.metrics, &crate::peer::NoForwarder);
    }

    fn connect(&mut self, id: &str, version: ProtocolVersion, clean: bool, expiry: u32) -> Client {
        self.connect_with(id, version, clean, expiry, u16::MAX, None)
    }

    fn connect_with(
        &mut self,
        id: &str,
        protocol: ProtocolVersion,
        clean_start: bool,
        session_expiry_interval: u32,
        receive_maximum: u16,
        will: Option<LastWill>,
    ) -> Client {
        let conn = self.next_conn;
        self.next_conn += 1;
        let (handle, end) = ConnectionHandle::new(conn, 1024);
        let (tx, mut rx) = oneshot::channel();
        self.router.handle(Event::Connect {
            conn: handle,
            request: ConnectRequest {
                client_id: Arc::from(id),
                protocol,
                clean_start,
                session_expiry_interval,
                receive_maximum,
                will,
            },
            reply: tx,
        });
        self.settle();
        let ConnectReply { session_present } = rx.try_recv().unwrap();
        Client {
            conn,
            end,
            session_present,
        }
    }

    fn subscribe(
        &mut self,
        c: &Client,
        filter: &str,
        options: SubscriptionOptions,
        id: Option<u32>,
    ) {
        self.router.handle(Event::Subscribe {
            conn: c.conn,
            packet_id: 1,
            filters: vec![Ok((TopicFilter::parse(filter).unwrap(), options))],
            subscription_id: id,
        });
        self.settle();
    }

    fn publish(&mut self, c: &Client, topic: &str, payload: &str, qos: QoS, pid: u16) {
        self.send_publish(c, publish(topic, payload, qos, false, pid));
    }

    fn publish_retained(&mut self, c: &Client, topic: &str, payload: &str, qos: QoS, pid: u16) {
        self.send_publish(c, publish(topic, payload, qos, true, pid));
    }

    fn send_publish(&mut self, c: &Client, publish: Publish) {
        self.queue_publish(c, publish);
        self.settle();
    }

    /// Hands the router a PUBLISH without settling: several make one pass.
    fn queue_publish(&mut self, c: &Client, publish: Publish) {
        self.router.handle(Event::Publish {
            conn: c.conn,
            publish,
        });
    }

    fn disconnect(&mut self, c: Client, publish_will: bool) {
        self.router.handle(Event::Disconnect {
            conn: c.conn,
            publish_will,
            session_expiry_interval: None,
        });
        self.settle();
    }

    fn ack(&mut self, c: &Client, packet_id: u16) {
        self.router.handle(Event::PubAck {
            conn: c.conn,
            packet_id,
        });
        self.settle();
    }
}

pub(crate) fn publish(topic: &str, payload: &str, qos: QoS, retain: bool, pid: u16) -> Publish {
    Publish {
        dup: false,
        qos,
        retain,
        topic: Arc::from(topic),
        packet_id: (qos != QoS::AtMostOnce).then_some(pid),
        properties: PublishProperties::default(),
        payload: Bytes::from(payload.to_string()),
    }
}

pub(crate) fn opts(qos: QoS) -> SubscriptionOptions {
    SubscriptionOptions {
        qos,
        ..SubscriptionOptions::default()
    }
}

/// Everything in a client's outbox now.
fn drain(c: &mut Client) -> Vec<Outgoing> {
    let mut out = Vec::new();
    while let Some(item) = c.end.try_recv() {
        out.push(item);
    }
    out
}

fn publishes(c: &mut Client) -> Vec<OutgoingPublish> {
    drain(c)
        .into_iter()
        .filter_map(|o| match o {
            Outgoing::Publish(p) => Some(p),
            _ => None,
        })
        .collect()
}

fn payloads(items: &[OutgoingPublish]) -> Vec<String> {
    items
        .iter()
        .map(|p| String::from_utf8_lossy(&p.message.payload).into_owned())
        .collect()
}

fn packets(c: &mut Client) -> Vec<Packet> {
    drain(c)
        .into_iter()
        .filter_map(Outgoing::into_packet)
        .collect()
}

const V4: ProtocolVersion = ProtocolVersion::V3_1_1;
const V5: ProtocolVersion = ProtocolVersion::V5;

#[test]
fn qos1_reaches_subscriber_and_publisher_gets_puback() {
    let mut h = Harness::new(BrokerConfig::default());
    let mut sub = h.connect("sub", V4, true, 0);
    let mut publisher = h.connect("pub", V4, true, 0);
    h.subscribe(&sub, "a/+", opts(QoS::AtLeastOnce), None);
    assert!(
        matches!(&packets(&mut sub)[..], [Packet::SubAck(a)] if a.reason_codes == [ReasonCode::GrantedQos1])
    );
    h.publish(&publisher, "a/b", "hi", QoS::AtLeastOnce, 7);
    let got = publishes(&mut sub);
    assert_eq!(payloads(&got), ["hi"]);
    assert_eq!(got[0].qos, QoS::AtLeastOnce);
    assert!(got[0].packet_id.is_some());
    assert!(matches!(&packets(&mut publisher)[..], [Packet::PubAck(a)] if a.packet_id == 7));
}

#[test]
fn subscriber_qos_caps_delivery_qos() {
    let mut h = Harness::new(BrokerConfig::default());
    let mut sub = h.connect("sub", V4, true, 0);
    let publisher = h.connect("pub", V4, true, 0);
    h.subscribe(&sub, "t", opts(QoS::AtMostOnce), None);
    drain(&mut sub);
    h.publish(&publisher, "t", "x", QoS::ExactlyOnce, 1);
    let got = publishes(&mut sub);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].qos, QoS::AtMostOnce);
    assert_eq!(got[0].packet_id, None);
}

#[test]
fn overlapping_subscriptions_give_one_copy_at_highest_qos_with_all_ids() {
    let mut h = Harness::new(BrokerConfig::default());
    let mut v4 = h.connect("v4", V4, true, 0);
    let mut v5 = h.connect("v5", V5, true, 0);
    let publisher = h.connect("pub", V5, true, 0);
    h.subscribe(&v4, "a/#", opts(QoS::AtMostOnce), None);
    h.subscribe(&v4, "a/b", opts(QoS::AtLeastOnce), None);
    h.subscribe(&v5, "a/#", opts(QoS::AtMostOnce), Some(1));
    h.subscribe(&v5, "+/b", opts(QoS::ExactlyOnce), Some(2));
    drain(&mut v4);
    drain(&mut v5);
    h.publish(&publisher, "a/b", "x", QoS::ExactlyOnce, 1);
    let got4 = publishes(&mut v4);
    assert_eq!(got4.len(), 1);
    assert_eq!(got4[0].qos, QoS::AtLeastOnce);
    assert!(got4[0].subscription_ids.is_empty());
    let got5 = publishes(&mut v5);
    assert_eq!(got5.len(), 1);
    assert_eq!(got5[0].qos, QoS::ExactlyOnce);
    let mut ids = got5[0].subscription_ids.clone();
    ids.sort();
    assert_eq!(ids, [1, 2]);
}

#[test]
fn no_local_skips_own_messages() {
    let mut h = Harness::new(BrokerConfig::default());
    let mut c = h.connect("c", V5, true, 0);
    let o = SubscriptionOptions {
        no_local: true,
        ..opts(QoS::AtLeastOnce)
    };
    h.subscribe(&c, "t", o, None);
    drain(&mut c);
    h.publish(&c, "t", "mine", QoS::AtMostOnce, 0);
    assert!(publishes(&mut c).is_empty());
    let other = h.connect("other", V5, true, 0);
    h.publish(&other, "t", "theirs", QoS::AtMostOnce, 0);
    assert_eq!(payloads(&publishes(&mut c)), ["theirs"]);
}

#[test]
fn persistent_session_queues_while_away_and_resends_on_return() {
    let mut h = Harness::new(BrokerConfig::default());
    let sub = h.connect("sub", V4, false, u32::MAX);
    h.subscribe(&sub, "q/#", opts(QoS::ExactlyOnce), None);
    h.disconnect(sub, true);
    let publisher = h.connect("pub", V4, true, 0);
    h.publish(&publisher, "q/1", "one", QoS::AtLeastOnce, 1);
    h.publish(&publisher, "q/2", "two", QoS::ExactlyOnce, 2);
    h.publish(&publisher, "q/3", "zero", QoS::AtMostOnce, 0);
    let mut sub = h.connect("sub", V4, false, u32::MAX);
    assert!(sub.session_present);
    let got = publishes(&mut sub);
    assert_eq!(
        payloads(&got),
        ["one", "two"],
        "QoS 0 is not queued for an absent client"
    );
    assert_eq!(got[0].qos, QoS::AtLeastOnce);
    assert_eq!(got[1].qos, QoS::ExactlyOnce);
}

#[test]
fn unacknowledged_messages_are_resent_with_dup_after_reconnect() {
    let mut h = Harness::new(BrokerConfig::default());
    let mut sub = h.connect("sub", V4, false, u32::MAX);
    h.subscribe(&sub, "t", opts(QoS::AtLeastOnce), None);
    drain(&mut sub);
    let publisher = h.connect("pub", V4, true, 0);
    h.publish(&publisher, "t", "m", QoS::AtLeastOnce, 1);
    let first = publishes(&mut sub);
    assert!(!first[0].dup);
    h.disconnect(sub, true);
    let mut sub = h.connect("sub", V4, false, u32::MAX);
    let again = publishes(&mut sub);
    assert_eq!(payloads(&again), ["m"]);
    assert!(again[0].dup);
    assert_eq!(again[0].packet_id, first[0].packet_id);
    h.ack(&sub, again[0].packet_id.unwrap());
    h.disconnect(sub, true);
    let mut sub = h.connect("sub", V4, false, u32::MAX);
    assert!(
        publishes(&mut sub).is_empty(),
        "acknowledged messages are not resent"
    );
}

#[test]
fn qos2_resend_before_pubrel_is_routed_once() {
    let mut h = Harness::new(BrokerConfig::default());
    let mut sub = h.connect("sub", V4, true, 0);
    h.subscribe(&sub, "t", opts(QoS::ExactlyOnce), None);
    drain(&mut sub);
    let mut publisher = h.connect("pub", V4, true, 0);
    h.publish(&publisher, "t", "once", QoS::ExactlyOnce, 9);
    h.publish(&publisher, "t", "once", QoS::ExactlyOnce, 9);
    assert_eq!(publishes(&mut sub).len(), 1);
    let acks = packets(&mut publisher);
    assert_eq!(acks.len(), 2, "each copy gets PUBREC");
    h.router.handle(Event::PubRel {
        conn: publisher.conn,
        packet_id: 9,
    });
    h.settle();
    assert!(
        matches!(&packets(&mut publisher)[..], [Packet::PubComp(c)] if c.reason_code == ReasonCode::Success)
    );
    h.publish(&publisher, "t", "again", QoS::ExactlyOnce, 9);
    assert_eq!(
        payloads(&publishes(&mut sub)),
        ["again"],
        "after PUBREL the id is free"
    );
}

#[test]
fn inflight_window_follows_receive_maximum() {
    let mut h = Harness::new(BrokerConfig::default());
    let mut sub = h.connect_with("sub", V5, true, 0, 2, None);
    h.subscribe(&sub, "t", opts(QoS::AtLeastOnce), None);
    drain(&mut sub);
    let publisher = h.connect("pub", V5, true, 0);
    for i in 0..5 {
        h.publish(&publisher, "t", &i.to_string(), QoS::AtLeastOnce, i + 1);
    }
    let first = publishes(&mut sub);
    assert_eq!(payloads(&first), ["0", "1"]);
    h.ack(&sub, first[0].packet_id.unwrap());
    assert_eq!(payloads(&publishes(&mut sub)), ["2"]);
}

fn queue_bound(policy: QueueFullPolicy) -> (Vec<String>, u64) {
    let config = BrokerConfig {
        max_queued_messages: 3,
        queue_full_policy: policy,
        ..BrokerConfig::default()
    };
    let mut h = Harness::new(config);
    let sub = h.connect("sub", V4, false, u32::MAX);
    h.subscribe(&sub, "t", opts(QoS::AtLeastOnce), None);
    h.disconnect(sub, true);
    let publisher = h.connect("pub", V4, true, 0);
    for i in 0..6 {
        h.publish(&publisher, "t", &i.to_string(), QoS::AtLeastOnce, i + 1);
    }
    let mut sub = h.connect("sub", V4, false, u32::MAX);
    let got = payloads(&publishes(&mut sub));
    (got, h.metrics.dropped_count(DropReason::QueueFull))
}

#[test]
fn full_queue_drops_new_or_oldest_and_counts() {
    assert_eq!(
        queue_bound(QueueFullPolicy::DropNew),
        (vec!["0".into(), "1".into(), "2".into()], 3)
    );
    assert_eq!(
        queue_bound(QueueFullPolicy::DropOldest),
        (vec!["3".into(), "4".into(), "5".into()], 3)
    );
}

#[test]
fn retained_messages_follow_retain_handling() {
    let mut h = Harness::new(BrokerConfig::default());
    let publisher = h.connect("pub", V5, true, 0);
    h.publish(&publisher, "r/1", "live", QoS::AtLeastOnce, 1);
    h.publish_retained(&publisher, "r/1", "old", QoS::AtLeastOnce, 2);
    h.publish_retained(&publisher, "r/1", "kept", QoS::AtLeastOnce, 3);
    let mut c = h.connect("c", V5, true, 0);
    h.subscribe(&c, "r/#", opts(QoS::AtLeastOnce), None);
    let got = publishes(&mut c);
    assert_eq!(payloads(&got), ["kept"]);
    assert!(
        got[0].retain,
        "retained on subscribe carries the retain flag"
    );

    let if_new = SubscriptionOptions {
        retain_handling: RetainHandling::SendIfNewSubscription,
        ..opts(QoS::AtLeastOnce)
    };
    h.subscribe(&c, "r/#", if_new, None);
    assert!(
        publishes(&mut c).is_empty(),
        "existing subscription: not sent again"
    );
    let never = SubscriptionOptions {
        retain_handling: RetainHandling::DoNotSend,
        ..opts(QoS::AtLeastOnce)
    };
    h.subscribe(&c, "r/+", never, None);
    assert!(publishes(&mut c).is_empty());

    // An empty retained payload clears it.
    h.publish_retained(&publisher, "r/1", "", QoS::AtMostOnce, 0);
    drain(&mut c);
    let mut d = h.connect("d", V5, true, 0);
    h.subscribe(&d, "r/#", opts(QoS::AtLeastOnce), None);
    assert!(publishes(&mut d).is_empty());
}

#[test]
fn retain_as_published_keeps_the_flag_on_live_messages() {
    let mut h = Harness::new(BrokerConfig::default());
    let mut plain = h.connect("plain", V5, true, 0);
    let mut rap = h.connect("rap", V5, true, 0);
    h.subscribe(&plain, "t", opts(QoS::AtMostOnce), None);
    let o = SubscriptionOptions {
        retain_as_published: true,
        ..opts(QoS::AtMostOnce)
    };
    h.subscribe(&rap, "t", o, None);
    drain(&mut plain);
    drain(&mut rap);
    let publisher = h.connect("pub", V5, true, 0);
    h.publish_retained(&publisher, "t", "x", QoS::AtMostOnce, 0);
    assert!(!publishes(&mut plain)[0].retain);
    assert!(publishes(&mut rap)[0].retain);
}

#[test]
fn shared_group_spreads_messages_and_each_goes_to_one_member() {
    let mut h = Harness::new(BrokerConfig::default());
    let mut a = h.connect("a", V5, true, 0);
    let mut b = h.connect("b", V5, true, 0);
    h.subscribe(&a, "$share/g/jobs/#", opts(QoS::AtLeastOnce), None);
    h.subscribe(&b, "$share/g/jobs/#", opts(QoS::AtLeastOnce), None);
    drain(&mut a);
    drain(&mut b);
    let publisher = h.connect("pub", V5, true, 0);
    for i in 0..10 {
        h.publish(&publisher, "jobs/x", &i.to_string(), QoS::AtMostOnce, 0);
    }
    let (ga, gb) = (publishes(&mut a).len(), publishes(&mut b).len());
    assert_eq!(ga + gb, 10);
    assert!(ga >= 3 && gb >= 3, "spread: {ga} vs {gb}");
}

#[test]
fn takeover_closes_the_old_connection_and_keeps_the_session() {
    let mut h = Harness::new(BrokerConfig::default());
    let first = h.connect("same", V5, false, 100);
    h.subscribe(&first, "t", opts(QoS::AtLeastOnce), None);
    let mut second = h.connect("same", V5, false, 100);
    assert!(second.session_present);
    assert_eq!(first.end.close_reason(), Some(ReasonCode::SessionTakenOver));
    // The old connection's late goodbye changes nothing.
    h.disconnect(first, true);
    drain(&mut second);
    let publisher = h.connect("pub", V5, true, 0);
    h.publish(&publisher, "t", "still", QoS::AtLeastOnce, 1);
    assert_eq!(payloads(&publishes(&mut second)), ["still"]);
}

#[test]
fn taking_over_a_session_that_ends_with_its_connection_starts_a_new_one() {
    let mut h = Harness::new(BrokerConfig::default());
    let first = h.connect("same", V4, true, 0);
    h.subscribe(&first, "t", opts(QoS::AtLeastOnce), None);
    // The persistent CONNECT arrives before the clean connection's DISCONNECT: that
    // session ended with its connection all the same.
    let second = h.connect("same", V4, false, 100);
    assert!(!second.session_present);
    h.disconnect(first, false);
    let publisher = h.connect("pub", V5, true, 0);
    h.publish(&publisher, "t", "unsubscribed", QoS::AtLeastOnce, 1);
    let mut second = second;
    assert!(publishes(&mut second).is_empty());
}

fn will(topic: &str, delay: Option<u32>) -> LastWill {
    LastWill {
        topic: Arc::from(topic),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: WillProperties {
            will_delay_interval: delay,
            ..WillProperties::default()
        },
    }
}

#[test]
fn will_is_published_on_abnormal_close_only() {
    let mut h = Harness::new(BrokerConfig::default());
    let mut watcher = h.connect("w", V5, true, 0);
    h.subscribe(&watcher, "wills/#", opts(QoS::AtLeastOnce), None);
    drain(&mut watcher);
    let c = h.connect_with("c", V5, true, 0, 10, Some(will("wills/c", None)));
    h.disconnect(c, false);
    assert!(
        publishes(&mut watcher).is_empty(),
        "normal DISCONNECT: no will"
    );
    let c = h.connect_with("c", V5, true, 0, 10, Some(will("wills/c", None)));
    h.disconnect(c, true);
    assert_eq!(payloads(&publishes(&mut watcher)), ["gone"]);
}

#[test]
fn will_delay_waits_and_a_reconnect_cancels_it() {
    let mut h = Harness::new(BrokerConfig::default());
    let mut watcher = h.connect("w", V5, true, 0);
    h.subscribe(&watcher, "wills/#", opts(QoS::AtLeastOnce), None);
    drain(&mut watcher);
    let c = h.connect_with("c", V5, false, 60, 10, Some(will("wills/c", Some(5))));
    h.disconnect(c, true);
    h.router.fire_timers(Instant::now());
    h.settle();
    assert!(publishes(&mut watcher).is_empty(), "not before the delay");
    h.router
        .fire_timers(Instant::now() + Duration::from_secs(6));
    h.settle();
    assert_eq!(payloads(&publishes(&mut watcher)), ["gone"]);

    let c = h.connect_with("c2", V5, false, 60, 10, Some(will("wills/c2", Some(5))));
    h.disconnect(c, true);
    let _back = h.connect("c2", V5, false, 60);
    h.router
        .fire_timers(Instant::now() + Duration::from_secs(6));
    h.settle();
    assert!(
        publishes(&mut watcher).is_empty(),
        "reconnect within the delay cancels the will"
    );
}

#[test]
fn session_expiry_ends_the_session() {
    let mut h = Harness::new(BrokerConfig::default());
    let c = h.connect("c", V5, false, 2);
    h.subscribe(&c, "t", opts(QoS::AtLeastOnce), None);
    h.disconnect(c, true);
    h.router
        .fire_timers(Instant::now() + Duration::from_secs(3));
    h.settle();
    let c = h.connect("c", V5, false, 2);
    assert!(!c.session_present);
    assert_eq!(h.router.session_count(), 1);
}

#[test]
fn a_session_expiry_timer_does_not_outlive_its_session() {
    let mut h = Harness::new(BrokerConfig::default());
    let c = h.connect("c", V5, false, 5);
    h.disconnect(c, true);
    // Within those 5 s, a new session (clean start) that lives longer.
    let c = h.connect("c", V5, true, 10);
    assert!(!c.session_present);
    h.subscribe(&c, "t", opts(QoS::AtLeastOnce), None);
    h.disconnect(c, true);
    // The first session's timer comes due: its session is gone, the second stays.
    h.router
        .fire_timers(Instant::now() + Duration::from_secs(6));
    h.settle();
    let c = h.connect("c", V5, false, 10);
    assert!(
        c.session_present,
        "the first session's timer ended the second"
    );
}

#[test]
fn expired_messages_are_not_delivered_from_the_queue() {
    let mut h = Harness::new(BrokerConfig::default());
    let sub = h.connect("sub", V5, false, 100);
    h.subscribe(&sub, "t", opts(QoS::AtLeastOnce), None);
    h.disconnect(sub, true);
    let publisher = h.connect("pub", V5, true, 0);
    let mut p = publish("t", "short", QoS::AtLeastOnce, false, 1);
    p.properties.message_expiry_interval = Some(0);
    h.send_publish(&publisher, p);
    h.publish(&publisher, "t", "long", QoS::AtLeastOnce, 2);
    let mut sub = h.connect("sub", V5, false, 100);
    assert_eq!(payloads(&publishes(&mut sub)), ["long"]);
    assert_eq!(h.metrics.dropped_count(DropReason::Expired), 1);
}

#[test]
fn state_survives_a_restart_from_storage() {
    let config = BrokerConfig::default();
    let mut h = Harness::new(config.clone());
    let mut sub = h.connect("sub", V5, false, u32::MAX);
    h.subscribe(&sub, "s/#", opts(QoS::ExactlyOnce), Some(4));
    drain(&mut sub);
    let publisher = h.connect("pub", V5, false, 1000);
    h.publish(&publisher, "s/inflight", "a", QoS::AtLeastOnce, 1);
    let sent = publishes(&mut sub);
    h.disconnect(sub, true);
    h.publish(&publisher, "s/queued", "b", QoS::ExactlyOnce, 2);
    h.publish_retained(&publisher, "s/r", "ret", QoS::AtLeastOnce, 3);
    // The publisher's QoS 2 exchange is half done: id 2 awaits PUBREL.

    let mut h = h.restart(config);
    let mut publisher = h.connect("pub", V5, false, 1000);
    assert!(publisher.session_present);
    h.publish(&publisher, "s/queued", "b", QoS::ExactlyOnce, 2);
    drain(&mut publisher);
    let mut sub = h.connect("sub", V5, false, u32::MAX);
    assert!(sub.session_present);
    let got = publishes(&mut sub);
    assert_eq!(
        payloads(&got),
        ["a", "b", "ret"],
        "inflight resent, queued sent in order, duplicate QoS 2 not routed"
    );
    assert!(
        !got[2].retain,
        "a live match is not flagged retained without retain-as-published"
    );
    assert!(got[0].dup);
    assert_eq!(got[0].packet_id, sent[0].packet_id);
    assert_eq!(got[1].subscription_ids, [4]);
    let mut fresh = h.connect("fresh", V5, true, 0);
    h.subscribe(&fresh, "s/r", opts(QoS::AtLeastOnce), None);
    assert_eq!(payloads(&publishes(&mut fresh)), ["ret"]);
}

#[test]
fn completed_deliveries_leave_no_stored_messages() {
    let mut h = Harness::new(BrokerConfig::default());
    let mut sub = h.connect("sub", V4, false, u32::MAX);
    h.subscribe(&sub, "t", opts(QoS::AtLeastOnce), None);
    drain(&mut sub);
    let publisher = h.connect("pub", V4, true, 0);
    for i in 0..3 {
        h.publish(&publisher, "t", "m", QoS::AtLeastOnce, i + 1);
    }
    let sent = publishes(&mut sub);
    assert_eq!(sent.len(), 3);
    h.ack(&sub, sent[0].packet_id.unwrap());
    // Bodies are swept, not deleted with their last delivery: another node's
    // session may still point at one.
    let unreferenced = persist::unreferenced_messages(&h.engine).unwrap();
    assert_eq!(
        unreferenced.len(),
        1,
        "only the acked message is unreferenced"
    );
    for p in &sent[1..] {
        h.ack(&sub, p.packet_id.unwrap());
    }
    assert!(h
        .engine
        .scan_prefix(persist::DELIVERIES, &[])
        .unwrap()
        .is_empty());
    let unreferenced = persist::unreferenced_messages(&h.engine).unwrap();
    assert_eq!(unreferenced.len(), 3);
    h.router.handle(Event::Sweep(unreferenced));
    h.settle();
    assert!(h
        .engine
        .scan_prefix(persist::MESSAGES, &[])
        .unwrap()
        .is_empty());
}

/// Sends an admin request and settles the round, as the service does.
fn ask<T>(h: &mut Harness, make: impl FnOnce(oneshot::Sender<T>) -> AdminRequest) -> T {
    let (tx, mut rx) = oneshot::channel();
    h.router.handle(Event::Admin(make(tx)));
    h.settle();
    rx.try_recv().expect("the router answers at once")
}

#[test]
fn admin_sees_a_session_with_its_subscriptions_and_queue() {
    let mut h = Harness::new(BrokerConfig::default());
    let sub = h.connect("dev-1", ProtocolVersion::V5, false, 600);
    h.subscribe(&sub, "b/#", opts(QoS::AtLeastOnce), Some(7));
    h.subscribe(&sub, "a/+", opts(QoS::AtMostOnce), None);
    h.disconnect(sub, false);
    let publisher = h.connect("pub", ProtocolVersion::V5, true, 0);
    h.publish(&publisher, "b/1", "queued", QoS::AtLeastOnce, 1);

    let view = ask(&mut h, |reply| AdminRequest::Session {
        client_id: "dev-1".into(),
        reply,
    })
    .expect("the session exists");
    assert!(!view.connected && view.persistent);
    let detail = view.detail.expect("held here");
    assert_eq!((detail.queued, detail.expiry_interval), (1, 600));
    assert!(detail.disconnected_at_ms.is_some());
    let filters: Vec<(&str, Option<u32>)> = view
        .subscriptions
        .iter()
        .map(|s| (s.filter.as_str(), s.subscription_id))
        .collect();
    assert_eq!(filters, [("a/+", None), ("b/#", Some(7))]);

    let none = ask(&mut h, |reply| AdminRequest::Session {
        client_id: "nobody".into(),
        reply,
    });
    assert!(none.is_none());
    let all = ask(&mut h, |reply| AdminRequest::Subscriptions {
        client_id: None,
        limit: 1,
        reply,
    });
    assert_eq!(all.len(), 1, "the limit holds");
}

#[test]
fn admin_lists_retained_by_filter_and_deletes_durably_without_routing() {
    let mut h = Harness::new(BrokerConfig::default());
    let publisher = h.connect("pub", ProtocolVersion::V5, true, 0);
    for (topic, payload) in [("r/b", "2"), ("r/a", "1"), ("other", "3")] {
        h.publish_retained(&publisher, topic, payload, QoS::AtLeastOnce, 1);
    }
    let mut sub = h.connect("sub", ProtocolVersion::V5, true, 0);
    h.subscribe(
        &sub,
        "r/#",
        SubscriptionOptions {
            retain_handling: RetainHandling::DoNotSend,
            ..opts(QoS::AtLeastOnce)
        },
        None,
    );
    let listed = ask(&mut h, |reply| AdminRequest::Retained {
        filter: TopicFilter::parse("r/#").unwrap(),
        limit: 10,
        reply,
    });
    let topics: Vec<&str> = listed.iter().map(|r| &*r.topic).collect();
    assert_eq!(topics, ["r/a", "r/b"]);

    let (existed_tx, mut existed) = oneshot::channel();
    let (done_tx, mut done) = oneshot::channel();
    h.router.handle(Event::Admin(AdminRequest::DeleteRetained {
        topic: Arc::from("r/a"),
        existed: existed_tx,
        done: done_tx,
    }));
    assert!(existed.try_recv().unwrap());
    assert!(
        done.try_recv().is_err(),
        "done waits for the round to be durable"
    );
    h.settle();
    assert!(done.try_recv().is_ok());
    assert!(
        publishes(&mut sub).is_empty(),
        "deleting is not a message for subscribers"
    );
    let mut h = h.restart(BrokerConfig::default());
    let left = ask(&mut h, |reply| AdminRequest::Retained {
        filter: TopicFilter::parse("#").unwrap(),
        limit: 10,
        reply,
    });
    let topics: Vec<&str> = left.iter().map(|r| &*r.topic).collect();
    assert_eq!(topics, ["other", "r/b"], "the deletion was stored");
}

#[test]
fn settings_are_stored_follow_other_nodes_and_survive_a_restart() {
    let mut h = Harness::new(BrokerConfig::default());
    let mut seen = h.router.settings();
    let (done, mut durable) = oneshot::channel();
    h.router.handle(Event::Admin(AdminRequest::PutSetting {
        name: "acl".into(),
        value: Some(Bytes::from_static(b"v1")),
        done,
    }));
    assert!(seen.has_changed().unwrap());
    assert_eq!(
        seen.borrow_and_update().get("acl").map(|v| &v[..]),
        Some(&b"v1"[..])
    );
    h.settle();
    assert!(durable.try_recv().is_ok());

    // Another node's write, as the replicated store applies it here.
    h.router.handle_applied(crate::router::Applied::Entry {
        origin: 2,
        commands: vec![crate::router::AppliedCommand {
            command: crate::command::Command::SetSetting {
                name: "acl".into(),
                value: Some(b"v2".to_vec()),
            },
            verdict: crate::command::Verdict::Applied,
        }],
    });
    assert_eq!(
        seen.borrow_and_update().get("acl").map(|v| &v[..]),
        Some(&b"v2"[..])
    );

    let (done, _durable) = oneshot::channel();
    h.router.handle(Event::Admin(AdminRequest::PutSetting {
        name: "acl".into(),
        value: None,
        done,
    }));
    h.settle();
    assert!(seen.borrow_and_update().is_empty());
    let (done, _durable) = oneshot::channel();
    h.router.handle(Event::Admin(AdminRequest::PutSetting {
        name: "other".into(),
        value: Some(Bytes::from_static(b"kept")),
        done,
    }));
    h.settle();
    let h = h.restart(BrokerConfig::default());
    let after = h.router.settings();
    let after = after.borrow();
    assert_eq!(after.keys().collect::<Vec<_>>(), ["other"]);
}

/// One pass of the router may take a durable PUBLISH and a clean session's QoS 0
/// message together: the latter must not wait for the former's write (on a node cut
/// off from the majority that write waits for as long as the partition lasts), but
/// whatever goes to a connection that already waits in the pass stays behind it.
#[test]
fn outputs_of_an_event_that_wrote_nothing_need_not_wait_for_the_pass_s_writes() {
    let mut h = Harness::new(BrokerConfig::default());
    let durable_sub = h.connect("durable-sub", ProtocolVersion::V5, false, 600);
    h.subscribe(&durable_sub, "d/#", opts(QoS::AtLeastOnce), None);
    let mut clean_sub = h.connect("clean-sub", ProtocolVersion::V5, true, 0);
    h.subscribe(&clean_sub, "c/#", opts(QoS::AtLeastOnce), None);
    let durable_pub = h.connect("durable-pub", ProtocolVersion::V5, true, 0);
    let clean_pub = h.connect("clean-pub", ProtocolVersion::V5, true, 0);

    // Three events in one pass, none settled in between.
    h.queue_publish(
        &durable_pub,
        publish("d/x", "stored", QoS::AtLeastOnce, false, 7),
    );
    h.queue_publish(&clean_pub, publish("c/x", "q0", QoS::AtMostOnce, false, 0));
    h.queue_publish(
        &durable_pub,
        publish("c/x", "q0 after the stored one", QoS::AtMostOnce, false, 0),
    );
    let round = h.router.take_round();
    assert!(
        !round.commands.is_empty(),
        "the QoS 1 message for a persistent session is stored"
    );
    let to = |outputs: &[crate::router::Output]| -> Vec<u64> {
        outputs.iter().map(|o| o.destination()).collect()
    };
    assert_eq!(
        to(&round.immediate),
        [clean_sub.conn, clean_sub.conn],
        "both QoS 0 messages to the clean session need no write"
    );
    assert!(
        to(&round.outputs).contains(&durable_pub.conn),
        "the PUBACK waits for the write: {:?}",
        to(&round.outputs)
    );
    assert!(!to(&round.immediate).contains(&durable_pub.conn));
    deliver(round.immediate, &h.metrics, &crate::peer::NoForwarder);
    assert_eq!(
        payloads(&publishes(&mut clean_sub)),
        ["q0", "q0 after the stored one"]
    );

    // A write-free event's output to a connection that already waits in the pass
    // stays behind it; its other outputs need not.
    h.queue_publish(
        &durable_pub,
        publish("d/y", "stored", QoS::AtLeastOnce, false, 8),
    );
    h.queue_publish(
        &durable_pub,
        publish("c/y", "not stored", QoS::AtLeastOnce, false, 9),
    );
    let round = h.router.take_round();
    assert_eq!(to(&round.immediate), [clean_sub.conn]);
    let acks: Vec<u16> = round
        .outputs
        .iter()
        .filter_map(|o| match o {
            crate::router::Output::Send(handle, Outgoing::Ack { packet_id, .. }, _)
                if handle.id == durable_pub.conn =>
            {
                Some(*packet_id)
            }
            _ => None,
        })
        .collect();
    assert_eq!(acks, [8, 9], "PUBACKs in order, both behind the write");
}

/// Which clients the store holds, by registry and by session record.
fn stored_clients(h: &Harness) -> (Vec<String>, Vec<String>) {
    let snap = persist::load(&h.engine).unwrap();
    let mut owners: Vec<String> = snap.owners.into_iter().map(|(c, _)| c).collect();
    let mut sessions: Vec<String> = snap.sessions.into_iter().map(|(c, _)| c).collect();
    owners.sort();
    sessions.sort();
    (owners, sessions)
}

#[test]
fn a_node_alone_stores_no_clean_session_until_a_second_node_joins() {
    let mut h = Harness::new(BrokerConfig::default());
    h.router.handle_applied(crate::router::Applied::Members(1));
    let clean = h.connect("clean", ProtocolVersion::V3_1_1, true, 0);
    h.subscribe(&clean, "t/#", opts(QoS::AtLeastOnce), None);
    let _with_will = h.connect_with(
        "with-will",
        ProtocolVersion::V5,
        true,
        0,
        u16::MAX,
        Some(will("w/gone", None)),
    );
    let persistent = h.connect("persistent", ProtocolVersion::V5, false, 600);
    h.subscribe(&persistent, "p/#", opts(QoS::AtLeastOnce), None);
    let names = |v: &[&str]| -> Vec<String> { v.iter().map(|s| s.to_string()).collect() };
    let expected = names(&["persistent", "with-will"]);
    assert_eq!(
        stored_clients(&h),
        (expected.clone(), expected),
        "alone, a clean session without a will needs no record: nobody else routes to it"
    );

    // A clean session that ends while unstored writes nothing either.
    let brief = h.connect("brief", ProtocolVersion::V3_1_1, true, 0);
    h.router.handle(Event::Disconnect {
        conn: brief.conn,
        publish_will: false,
        session_expiry_interval: None,
    });
    assert!(h.router.take_round().commands.is_empty());

    // A second node joins: what it must route to is stored at once, subscription too.
    h.router.handle_applied(crate::router::Applied::Members(2));
    h.settle();
    let expected = names(&["clean", "persistent", "with-will"]);
    assert_eq!(stored_clients(&h), (expected.clone(), expected));
    let snap = persist::load(&h.engine).unwrap();
    let (_, record) = snap.sessions.iter().find(|(c, _)| c == "clean").unwrap();
    let filters: Vec<&str> = record.subscriptions.iter().map(|s| &*s.filter).collect();
    assert_eq!(filters, ["t/#"]);

    // From now on every session is stored, and ends as before.
    let _later = h.connect("later", ProtocolVersion::V3_1_1, true, 0);
    assert!(stored_clients(&h).0.contains(&"later".to_string()));
    h.disconnect(clean, false);
    assert!(!stored_clients(&h).0.contains(&"clean".to_string()));

    // Left alone again: sessions stored meanwhile stay stored until they end, new
    // clean ones are not.
    h.router.handle_applied(crate::router::Applied::Members(1));
    let _alone_again = h.connect("alone-again", ProtocolVersion::V3_1_1, true, 0);
    let (owners, _) = stored_clients(&h);
    assert!(owners.contains(&"later".to_string()));
    assert!(!owners.contains(&"alone-again".to_string()));
}
