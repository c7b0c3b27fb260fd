//! Publish and subscribe at QoS 0, 1 and 2 in both directions; packet ids; QoS
//! downgrade; overlapping subscriptions; wildcards; redelivery with DUP on
//! reconnect; QoS 2 exactly-once for a resent PUBLISH.

use fleetmq_codec::{Packet, ProtocolVersion, PubResponse, QoS as CQoS, ReasonCode};
use fleetmq_tests::raw::publish_packet;
use fleetmq_tests::{
    text, unique_id, v4_options, BrokerProcess, RawClient, V4Client, V5Client, QUIET, WAIT,
};
use rumqttc::{QoS, SubscribeReasonCode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_qos_0_1_2_roundtrip() {
    let broker = BrokerProcess::start_default();
    let mut sub = V4Client::must_connect(&broker, &unique_id("t02-sub")).await;
    let codes = sub.must_subscribe("t02/rt", QoS::ExactlyOnce).await;
    assert_eq!(codes, vec![SubscribeReasonCode::Success(QoS::ExactlyOnce)]);
    let mut publisher = V4Client::must_connect(&broker, &unique_id("t02-pub")).await;
    for (qos, payload) in [
        (QoS::AtMostOnce, "q0"),
        (QoS::AtLeastOnce, "q1"),
        (QoS::ExactlyOnce, "q2"),
    ] {
        publisher.must_publish("t02/rt", qos, false, payload).await;
        let p = sub.must_recv_publish(WAIT).await;
        assert_eq!(text(&p.payload), payload);
        assert_eq!(p.topic, "t02/rt");
        assert_eq!(p.qos, qos, "delivered at the published QoS ({payload})");
        assert!(!p.retain);
        assert!(!p.dup);
        if qos == QoS::AtMostOnce {
            assert_eq!(p.pkid, 0, "QoS 0 has no packet id");
        } else {
            assert_ne!(p.pkid, 0, "QoS {qos:?} needs a non-zero packet id");
        }
    }
    sub.must_not_recv_publish(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_qos_0_1_2_roundtrip() {
    use rumqttc::v5::mqttbytes::QoS as Q5;
    let broker = BrokerProcess::start_default();
    let mut sub = V5Client::must_connect(&broker, &unique_id("t02-sub5")).await;
    sub.must_subscribe("t02/rt5", Q5::ExactlyOnce).await;
    let mut publisher = V5Client::must_connect(&broker, &unique_id("t02-pub5")).await;
    for (qos, payload) in [
        (Q5::AtMostOnce, "q0"),
        (Q5::AtLeastOnce, "q1"),
        (Q5::ExactlyOnce, "q2"),
    ] {
        publisher.must_publish("t02/rt5", qos, false, payload).await;
        let p = sub.must_recv_publish(WAIT).await;
        assert_eq!(text(&p.payload), payload);
        assert_eq!(&p.topic[..], b"t02/rt5");
        assert_eq!(p.qos, qos);
        if qos == Q5::AtMostOnce {
            assert_eq!(p.pkid, 0);
        } else {
            assert_ne!(p.pkid, 0);
        }
    }
    sub.must_not_recv_publish(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_versions_interoperate() {
    use rumqttc::v5::mqttbytes::QoS as Q5;
    let broker = BrokerProcess::start_default();
    let mut sub4 = V4Client::must_connect(&broker, &unique_id("t02-mix4")).await;
    sub4.must_subscribe("t02/mix", QoS::AtLeastOnce).await;
    let mut sub5 = V5Client::must_connect(&broker, &unique_id("t02-mix5")).await;
    sub5.must_subscribe("t02/mix", Q5::AtLeastOnce).await;
    let (mut sub31, _) = RawClient::must_connect(
        broker.mqtt_addr,
        ProtocolVersion::V3_1,
        &unique_id("t02-mix31"),
        true,
    )
    .await;
    sub31.must_subscribe(1, "t02/mix", CQoS::AtLeastOnce).await;

    sub5.must_publish("t02/mix", Q5::AtLeastOnce, false, "from v5")
        .await;
    sub4.must_publish("t02/mix", QoS::AtLeastOnce, false, "from v4")
        .await;
    for payload in ["from v5", "from v4"] {
        assert_eq!(text(&sub4.must_recv_publish(WAIT).await.payload), payload);
        assert_eq!(text(&sub5.must_recv_publish(WAIT).await.payload), payload);
        let p = sub31.must_recv_publish(WAIT).await;
        assert_eq!(text(&p.payload), payload);
        sub31.must_ack(&p).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_qos_is_downgraded_to_the_subscription_qos() {
    let broker = BrokerProcess::start_default();
    let mut s0 = V4Client::must_connect(&broker, &unique_id("t02-s0")).await;
    s0.must_subscribe("t02/down", QoS::AtMostOnce).await;
    let mut s1 = V4Client::must_connect(&broker, &unique_id("t02-s1")).await;
    s1.must_subscribe("t02/down", QoS::AtLeastOnce).await;
    let mut s2 = V4Client::must_connect(&broker, &unique_id("t02-s2")).await;
    s2.must_subscribe("t02/down", QoS::ExactlyOnce).await;

    let mut publisher = V4Client::must_connect(&broker, &unique_id("t02-pub")).await;
    publisher
        .must_publish("t02/down", QoS::ExactlyOnce, false, "two")
        .await;
    assert_eq!(s0.must_recv_publish(WAIT).await.qos, QoS::AtMostOnce);
    assert_eq!(s1.must_recv_publish(WAIT).await.qos, QoS::AtLeastOnce);
    assert_eq!(s2.must_recv_publish(WAIT).await.qos, QoS::ExactlyOnce);

    // A QoS 1 publish is never upgraded for a QoS 2 subscriber.
    publisher
        .must_publish("t02/down", QoS::AtLeastOnce, false, "one")
        .await;
    assert_eq!(s2.must_recv_publish(WAIT).await.qos, QoS::AtLeastOnce);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_overlapping_subscriptions_deliver_one_copy_at_the_highest_qos() {
    let broker = BrokerProcess::start_default();
    let mut sub = V4Client::must_connect(&broker, &unique_id("t02-overlap")).await;
    sub.must_subscribe("t02/ov/#", QoS::AtMostOnce).await;
    sub.must_subscribe("t02/ov/+", QoS::ExactlyOnce).await;
    sub.must_subscribe("t02/ov/x", QoS::AtLeastOnce).await;
    let mut publisher = V4Client::must_connect(&broker, &unique_id("t02-pub")).await;
    publisher
        .must_publish("t02/ov/x", QoS::ExactlyOnce, false, "once")
        .await;
    let p = sub.must_recv_publish(WAIT).await;
    assert_eq!(text(&p.payload), "once");
    assert_eq!(
        p.qos,
        QoS::ExactlyOnce,
        "the highest granted QoS of all matches"
    );
    sub.must_not_recv_publish(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcards_match_as_specified() {
    let broker = BrokerProcess::start_default();
    let mut plus = V4Client::must_connect(&broker, &unique_id("t02-plus")).await;
    plus.must_subscribe("t02/w/+/x", QoS::AtLeastOnce).await;
    let mut hash = V4Client::must_connect(&broker, &unique_id("t02-hash")).await;
    hash.must_subscribe("t02/h/#", QoS::AtLeastOnce).await;
    let mut publisher = V4Client::must_connect(&broker, &unique_id("t02-pub")).await;

    for topic in [
        "t02/w/a/x",   // plus
        "t02/w//x",    // plus: an empty level is a level
        "t02/w/a/b/x", // neither
        "t02/w/a",     // neither
        "t02/h",       // hash: "#" includes the parent level
        "t02/h/a",     // hash
        "t02/h/a/b/c", // hash
        "t02/hx",      // neither
    ] {
        publisher
            .must_publish(topic, QoS::AtLeastOnce, false, topic)
            .await;
    }
    let got_plus: Vec<String> = plus
        .drain_publishes(QUIET)
        .await
        .iter()
        .map(|p| p.topic.clone())
        .collect();
    assert_eq!(got_plus, vec!["t02/w/a/x", "t02/w//x"]);
    let got_hash: Vec<String> = hash
        .drain_publishes(QUIET)
        .await
        .iter()
        .map(|p| p.topic.clone())
        .collect();
    assert_eq!(got_hash, vec!["t02/h", "t02/h/a", "t02/h/a/b/c"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_qos1_messages_arrive_in_order_with_valid_packet_ids() {
    let broker = BrokerProcess::start_default();
    let mut sub = V4Client::must_connect(&broker, &unique_id("t02-many-sub")).await;
    sub.must_subscribe("t02/many", QoS::AtLeastOnce).await;
    let publisher = V4Client::must_connect(&broker, &unique_id("t02-many-pub")).await;
    const N: usize = 300;
    for i in 0..N {
        publisher
            .client
            .publish("t02/many", QoS::AtLeastOnce, false, format!("{i}"))
            .await
            .expect("queue publish");
    }
    let got = sub.must_recv_publishes(N, WAIT).await;
    for (i, p) in got.iter().enumerate() {
        assert_eq!(
            text(&p.payload),
            format!("{i}"),
            "order of a single publisher's messages"
        );
        assert_eq!(p.qos, QoS::AtLeastOnce);
        assert_ne!(p.pkid, 0);
    }
    sub.must_not_recv_publish(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_stops_delivery() {
    let broker = BrokerProcess::start_default();
    let mut sub = V4Client::must_connect(&broker, &unique_id("t02-unsub")).await;
    sub.must_subscribe("t02/unsub", QoS::AtLeastOnce).await;
    let mut publisher = V4Client::must_connect(&broker, &unique_id("t02-pub")).await;
    publisher
        .must_publish("t02/unsub", QoS::AtLeastOnce, false, "before")
        .await;
    assert_eq!(text(&sub.must_recv_publish(WAIT).await.payload), "before");
    sub.must_unsubscribe("t02/unsub").await;
    publisher
        .must_publish("t02/unsub", QoS::AtLeastOnce, false, "after")
        .await;
    sub.must_not_recv_publish(QUIET).await;
}

/// Subscribes a persistent raw session to `topic` at `qos`, has a rumqttc client
/// publish `payload`, and returns the raw client with the PUBLISH it received but
/// did not acknowledge.
async fn receive_without_ack(
    broker: &BrokerProcess,
    version: ProtocolVersion,
    id: &str,
    topic: &str,
    qos: CQoS,
    payload: &str,
) -> (RawClient, fleetmq_codec::Publish) {
    let mut connect = fleetmq_tests::raw::connect_packet(version, id, false, 60);
    if version == ProtocolVersion::V5 {
        connect.properties.session_expiry_interval = Some(300);
    }
    let (mut raw, _) = RawClient::must_connect_with(broker.mqtt_addr, connect).await;
    raw.must_subscribe(1, topic, qos).await;
    let mut publisher = V4Client::must_connect(broker, &unique_id("t02-redeliver-pub")).await;
    let q = match qos {
        CQoS::AtMostOnce => QoS::AtMostOnce,
        CQoS::AtLeastOnce => QoS::AtLeastOnce,
        CQoS::ExactlyOnce => QoS::ExactlyOnce,
    };
    publisher.must_publish(topic, q, false, payload).await;
    let p = raw.must_recv_publish(WAIT).await;
    assert_eq!(text(&p.payload), payload);
    assert_eq!(p.qos, qos);
    assert!(!p.dup, "first delivery must not have DUP set");
    (raw, p)
}

async fn reconnect_persistent(
    broker: &BrokerProcess,
    version: ProtocolVersion,
    id: &str,
) -> RawClient {
    let mut connect = fleetmq_tests::raw::connect_packet(version, id, false, 60);
    if version == ProtocolVersion::V5 {
        connect.properties.session_expiry_interval = Some(300);
    }
    let (raw, ack) = RawClient::must_connect_with(broker.mqtt_addr, connect).await;
    assert!(
        ack.session_present,
        "the persistent session should be present"
    );
    raw
}

async fn unacked_qos1_is_redelivered_with_dup(version: ProtocolVersion) {
    let broker = BrokerProcess::start_default();
    let id = unique_id("t02-redeliver1");
    let (raw, first) = receive_without_ack(
        &broker,
        version,
        &id,
        "t02/redeliver1",
        CQoS::AtLeastOnce,
        "again",
    )
    .await;
    drop(raw); // no PUBACK, TCP closed

    let mut raw = reconnect_persistent(&broker, version, &id).await;
    let p = raw.must_recv_publish(WAIT).await;
    assert_eq!(text(&p.payload), "again");
    assert!(p.dup, "a redelivered PUBLISH must have DUP set: {p:?}");
    assert_eq!(
        p.packet_id, first.packet_id,
        "redelivery keeps the packet id"
    );
    raw.must_ack(&p).await;
    raw.must_stay_silent(QUIET).await;
    drop(raw);

    // Acknowledged: not sent again.
    let mut raw = reconnect_persistent(&broker, version, &id).await;
    raw.must_stay_silent(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_unacked_qos1_is_redelivered_with_dup_on_reconnect() {
    unacked_qos1_is_redelivered_with_dup(ProtocolVersion::V3_1_1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_unacked_qos1_is_redelivered_with_dup_on_reconnect() {
    unacked_qos1_is_redelivered_with_dup(ProtocolVersion::V5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_unacked_qos2_is_redelivered_then_pubrel_is_resent() {
    let version = ProtocolVersion::V3_1_1;
    let broker = BrokerProcess::start_default();
    let id = unique_id("t02-redeliver2");
    let (raw, first) = receive_without_ack(
        &broker,
        version,
        &id,
        "t02/redeliver2",
        CQoS::ExactlyOnce,
        "two",
    )
    .await;
    drop(raw); // no PUBREC

    // The PUBLISH comes again with DUP.
    let mut raw = reconnect_persistent(&broker, version, &id).await;
    let p = raw.must_recv_publish(WAIT).await;
    assert_eq!(text(&p.payload), "two");
    assert!(p.dup, "a redelivered PUBLISH must have DUP set: {p:?}");
    assert_eq!(p.packet_id, first.packet_id);
    let pid = p.packet_id.expect("packet id");
    raw.must_send(Packet::PubRec(PubResponse::new(pid))).await;
    match raw.must_recv(WAIT).await {
        Packet::PubRel(r) => assert_eq!(r.packet_id, pid),
        other => panic!("expected PUBREL, got {other:?}"),
    }
    drop(raw); // no PUBCOMP

    // Now the server resends the PUBREL, not the PUBLISH.
    let mut raw = reconnect_persistent(&broker, version, &id).await;
    match raw.must_recv(WAIT).await {
        Packet::PubRel(r) => assert_eq!(r.packet_id, pid),
        other => panic!("expected the PUBREL to be resent, got {other:?}"),
    }
    raw.must_send(Packet::PubComp(PubResponse::new(pid))).await;
    raw.must_stay_silent(QUIET).await;
}

async fn qos2_resent_publish_is_delivered_once(version: ProtocolVersion) {
    let broker = BrokerProcess::start_default();
    let mut sub = V4Client::must_connect(&broker, &unique_id("t02-eo-sub")).await;
    sub.must_subscribe("t02/eo", QoS::ExactlyOnce).await;

    let (mut publisher, _) =
        RawClient::must_connect(broker.mqtt_addr, version, &unique_id("t02-eo-pub"), true).await;
    let mut p = publish_packet("t02/eo", CQoS::ExactlyOnce, Some(7), b"exactly once");
    publisher.must_send(Packet::Publish(p.clone())).await;
    match publisher.must_recv(WAIT).await {
        Packet::PubRec(r) => assert_eq!(r.packet_id, 7),
        other => panic!("expected PUBREC, got {other:?}"),
    }
    // The same PUBLISH again (as after a lost PUBREC), before PUBREL.
    p.dup = true;
    publisher.must_send(Packet::Publish(p)).await;
    match publisher.must_recv(WAIT).await {
        Packet::PubRec(r) => {
            assert_eq!(r.packet_id, 7);
            assert!(!r.reason_code.is_error(), "{r:?}");
        }
        other => panic!("expected a second PUBREC, got {other:?}"),
    }
    publisher
        .must_send(Packet::PubRel(PubResponse::new(7)))
        .await;
    match publisher.must_recv(WAIT).await {
        Packet::PubComp(c) => {
            assert_eq!(c.packet_id, 7);
            assert_eq!(c.reason_code, ReasonCode::Success);
        }
        other => panic!("expected PUBCOMP, got {other:?}"),
    }
    let got = sub.must_recv_publish(WAIT).await;
    assert_eq!(text(&got.payload), "exactly once");
    sub.must_not_recv_publish(QUIET).await;

    // After PUBCOMP the packet id is free: the same id carries a new message.
    publisher
        .must_publish(publish_packet(
            "t02/eo",
            CQoS::ExactlyOnce,
            Some(7),
            b"new message",
        ))
        .await;
    assert_eq!(
        text(&sub.must_recv_publish(WAIT).await.payload),
        "new message"
    );
    sub.must_not_recv_publish(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_qos2_publish_sent_twice_is_delivered_once() {
    qos2_resent_publish_is_delivered_once(ProtocolVersion::V3_1_1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_qos2_publish_sent_twice_is_delivered_once() {
    qos2_resent_publish_is_delivered_once(ProtocolVersion::V5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_receives_its_own_messages_when_subscribed() {
    // Without No Local (3.1.1 has none), a client gets what it publishes.
    let broker = BrokerProcess::start_default();
    let mut c = V4Client::must_connect_with(v4_options(&broker, &unique_id("t02-self"))).await;
    c.must_subscribe("t02/self", QoS::ExactlyOnce).await;
    c.must_publish("t02/self", QoS::ExactlyOnce, false, "me")
        .await;
    let p = c.must_recv_publish(WAIT).await;
    assert_eq!(text(&p.payload), "me");
    assert_eq!(p.qos, QoS::ExactlyOnce);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_deliveries_have_distinct_packet_ids() {
    let broker = BrokerProcess::start_default();
    let (mut raw, _) = RawClient::must_connect(
        broker.mqtt_addr,
        ProtocolVersion::V3_1_1,
        &unique_id("t02-pids"),
        true,
    )
    .await;
    raw.must_subscribe(1, "t02/pids", CQoS::AtLeastOnce).await;
    let publisher = V4Client::must_connect(&broker, &unique_id("t02-pids-pub")).await;
    const N: usize = 20;
    for i in 0..N {
        publisher
            .client
            .publish("t02/pids", QoS::AtLeastOnce, false, format!("{i}"))
            .await
            .expect("queue publish");
    }
    let mut got = Vec::new();
    for _ in 0..N {
        got.push(raw.must_recv_publish(WAIT).await);
    }
    let mut ids: Vec<u16> = got
        .iter()
        .map(|p| p.packet_id.expect("packet id"))
        .collect();
    assert!(!ids.contains(&0), "packet id 0 used: {ids:?}");
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), N, "in-flight messages share packet ids");
    for (i, p) in got.iter().enumerate() {
        assert_eq!(text(&p.payload), format!("{i}"));
        raw.must_ack(p).await;
    }
    raw.must_stay_silent(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_topic_levels_is_enforced() {
    let broker = BrokerProcess::start_with_mqtt_config("max_topic_levels = 3");
    let mut all = V4Client::must_connect(&broker, &unique_id("t02-levels-all")).await;
    all.must_subscribe("t02/#", QoS::AtLeastOnce).await;

    let (mut c, _) = RawClient::must_connect(
        broker.mqtt_addr,
        ProtocolVersion::V5,
        &unique_id("t02-levels"),
        true,
    )
    .await;
    // Three levels: fine.
    c.must_publish(publish_packet(
        "t02/l2/l3",
        CQoS::AtLeastOnce,
        Some(1),
        b"ok",
    ))
    .await;
    assert_eq!(text(&all.must_recv_publish(WAIT).await.payload), "ok");
    // Four levels: refused, by PUBACK 0x90 or DISCONNECT 0x90; never delivered.
    c.must_send(Packet::Publish(publish_packet(
        "t02/l2/l3/l4",
        CQoS::AtLeastOnce,
        Some(2),
        b"too deep",
    )))
    .await;
    match c.must_recv(WAIT).await {
        Packet::PubAck(a) => {
            assert_eq!(a.packet_id, 2);
            assert_eq!(a.reason_code, ReasonCode::TopicNameInvalid, "{a:?}");
        }
        Packet::Disconnect(d) => {
            assert_eq!(d.reason_code, ReasonCode::TopicNameInvalid, "{d:?}");
            c.must_be_closed(WAIT).await;
        }
        other => panic!("expected PUBACK or DISCONNECT with 0x90, got {other:?}"),
    }
    all.must_not_recv_publish(QUIET).await;

    // A four-level filter is refused as well (SUBACK 0x8F, or DISCONNECT).
    let (mut s, _) = RawClient::must_connect(
        broker.mqtt_addr,
        ProtocolVersion::V5,
        &unique_id("t02-levels-sub"),
        true,
    )
    .await;
    s.must_send(Packet::Subscribe(fleetmq_tests::raw::subscribe_packet(
        3,
        &[("t02/l2/l3/+", CQoS::AtMostOnce)],
    )))
    .await;
    match s.must_recv(WAIT).await {
        Packet::SubAck(a) => assert_eq!(a.reason_codes, vec![ReasonCode::TopicFilterInvalid]),
        Packet::Disconnect(d) => assert_eq!(d.reason_code, ReasonCode::TopicFilterInvalid),
        other => panic!("expected SUBACK or DISCONNECT with 0x8F, got {other:?}"),
    }
}
