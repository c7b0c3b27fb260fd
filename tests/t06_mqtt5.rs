//! MQTT 5 features: CONNACK capabilities, topic aliases both ways, receive maximum
//! both ways, maximum packet size both ways, message expiry, property
//! pass-through, subscription identifiers, no local, shared subscriptions,
//! request problem information, SUBACK/UNSUBACK reason codes.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use bytes::Bytes;
use fleetmq_codec::{
    Packet, ProtocolVersion, PubResponse, QoS as CQoS, ReasonCode, SubscribeFilter,
    SubscriptionOptions,
};
use fleetmq_tests::raw::{connect_packet, publish_packet, subscribe_packet, unsubscribe_packet};
use fleetmq_tests::{
    names, text, unique_id, v5_options, BrokerProcess, RawClient, Recv, V5Client, QUIET, WAIT,
};
use rumqttc::v5::mqttbytes::v5::{Filter, PublishProperties, SubscribeReasonCode, UnsubAckReason};
use rumqttc::v5::mqttbytes::QoS;

/// A raw MQTT 5 connection with the given CONNECT properties edited by `f`.
async fn raw_v5(
    broker: &BrokerProcess,
    prefix: &str,
    f: impl FnOnce(&mut fleetmq_codec::ConnectProperties),
) -> (RawClient, fleetmq_codec::ConnAck) {
    let mut connect = connect_packet(ProtocolVersion::V5, &unique_id(prefix), true, 60);
    f(&mut connect.properties);
    RawClient::must_connect_with(broker.mqtt_addr, connect).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connack_advertises_the_configured_limits_and_capabilities() {
    let broker = BrokerProcess::start_with_mqtt_config(
        "receive_maximum = 2\nmax_packet_size = 1024\ntopic_alias_maximum = 7",
    );
    let c = V5Client::must_connect(&broker, &unique_id("t06-caps")).await;
    let p = c.connack.properties.clone().expect("CONNACK properties");
    assert_eq!(p.receive_max, Some(2), "{p:?}");
    assert_eq!(p.max_packet_size, Some(1024), "{p:?}");
    assert_eq!(p.topic_alias_max, Some(7), "{p:?}");
    // Everything is supported: absent (meaning "available") or 1, never 0.
    assert_ne!(p.retain_available, Some(0), "{p:?}");
    assert_ne!(p.wildcard_subscription_available, Some(0), "{p:?}");
    assert_ne!(p.subscription_identifiers_available, Some(0), "{p:?}");
    assert_ne!(p.shared_subscription_available, Some(0), "{p:?}");
    assert!(p.max_qos.is_none() || p.max_qos == Some(2), "{p:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_alias_from_client_to_server() {
    let broker = BrokerProcess::start_default();
    let mut sub = V5Client::must_connect(&broker, &unique_id("t06-alias-sub")).await;
    sub.must_subscribe("t06/alias/#", QoS::AtLeastOnce).await;
    let mut publisher = V5Client::must_connect(&broker, &unique_id("t06-alias-pub")).await;
    let alias = |a| PublishProperties {
        topic_alias: Some(a),
        ..PublishProperties::default()
    };
    publisher
        .must_publish_with(
            "t06/alias/x",
            QoS::AtLeastOnce,
            false,
            "set",
            Some(alias(1)),
        )
        .await;
    publisher
        .must_publish_with("", QoS::AtLeastOnce, false, "used", Some(alias(1)))
        .await;
    // Remap alias 1.
    publisher
        .must_publish_with(
            "t06/alias/y",
            QoS::AtLeastOnce,
            false,
            "remap",
            Some(alias(1)),
        )
        .await;
    publisher
        .must_publish_with("", QoS::AtLeastOnce, false, "used again", Some(alias(1)))
        .await;
    let got: Vec<(String, String)> = sub
        .drain_publishes(QUIET)
        .await
        .iter()
        .map(|p| (text(&p.topic), text(&p.payload)))
        .collect();
    let want = [
        ("t06/alias/x", "set"),
        ("t06/alias/x", "used"),
        ("t06/alias/y", "remap"),
        ("t06/alias/y", "used again"),
    ];
    assert_eq!(
        got,
        want.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect::<Vec<_>>()
    );
}

/// Sends a hand-written QoS 0 PUBLISH with a Topic Alias property and expects
/// DISCONNECT with one of `reasons`, then the close.
async fn bad_alias(broker: &BrokerProcess, topic: &[u8], alias: u16, reasons: &[u8]) {
    let (mut c, _) = raw_v5(broker, "t06-badalias", |_| {}).await;
    let mut props = vec![0x23];
    props.extend_from_slice(&alias.to_be_bytes());
    c.must_send_bytes(&fleetmq_tests::raw::wire::publish(
        0x30,
        topic,
        None,
        Some(&props),
        b"x",
    ))
    .await;
    let got = c.must_be_closed(WAIT).await;
    match got.last() {
        Some(Packet::Disconnect(d)) if reasons.contains(&d.reason_code.as_u8()) => {}
        _ => panic!(
            "alias {alias} on topic {:?}: expected DISCONNECT with one of {reasons:#04x?}, got {got:?}",
            String::from_utf8_lossy(topic)
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_topic_alias_disconnects_with_0x94() {
    let broker = BrokerProcess::start_with_mqtt_config("topic_alias_maximum = 5");
    // Above the maximum: "Topic Alias invalid" (the DISCONNECT 0x94 definition).
    bad_alias(&broker, b"t06/a", 6, &[0x94]).await;
    // Alias 0 is forbidden ([MQTT-3.3.2-8]); it is a well-formed Two Byte Integer, so
    // not a Malformed Packet: Topic Alias invalid, or a Protocol Error.
    bad_alias(&broker, b"t06/a", 0, &[0x94, 0x82]).await;
    // An empty topic with an alias never set: a protocol error (0x82), which the
    // server may also report as Topic Alias invalid.
    bad_alias(&broker, b"", 3, &[0x94, 0x82]).await;
    broker.must_metric_at_least(
        names::CONNECTIONS_CLOSED,
        &[("reason", "topic_alias_invalid")],
        1.0,
        WAIT,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_alias_from_server_to_client() {
    let broker = BrokerProcess::start_default();
    let (mut sub, _) = raw_v5(&broker, "t06-salias", |p| p.topic_alias_maximum = Some(10)).await;
    sub.must_subscribe(1, "t06/salias/topic", CQoS::AtMostOnce)
        .await;
    // A client that allows no aliases never gets one.
    let (mut plain, _) = raw_v5(&broker, "t06-noalias", |_| {}).await;
    plain
        .must_subscribe(1, "t06/salias/topic", CQoS::AtMostOnce)
        .await;

    let mut publisher = V5Client::must_connect(&broker, &unique_id("t06-salias-pub")).await;
    for i in 0..3 {
        publisher
            .must_publish("t06/salias/topic", QoS::AtMostOnce, false, format!("{i}"))
            .await;
    }
    let first = sub.must_recv_publish(WAIT).await;
    let second = sub.must_recv_publish(WAIT).await;
    let third = sub.must_recv_publish(WAIT).await;
    assert_eq!(&*first.topic, "t06/salias/topic");
    let alias = first
        .properties
        .topic_alias
        .expect("the first PUBLISH should set up a topic alias");
    assert!((1..=10).contains(&alias), "alias {alias} outside 1..=10");
    for p in [&second, &third] {
        assert_eq!(
            &*p.topic, "",
            "the aliased PUBLISH should have an empty topic: {p:?}"
        );
        assert_eq!(p.properties.topic_alias, Some(alias), "{p:?}");
    }
    assert_eq!(text(&third.payload), "2");

    for i in 0..3 {
        let p = plain.must_recv_publish(WAIT).await;
        assert_eq!(&*p.topic, "t06/salias/topic");
        assert_eq!(
            p.properties.topic_alias, None,
            "the client allowed no alias"
        );
        assert_eq!(text(&p.payload), format!("{i}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exceeding_the_servers_receive_maximum_disconnects_with_0x93() {
    let broker = BrokerProcess::start_with_mqtt_config("receive_maximum = 2");
    let (mut c, ack) = raw_v5(&broker, "t06-rm", |_| {}).await;
    assert_eq!(ack.properties.receive_maximum, Some(2));
    // QoS 2 PUBLISHes stay unacknowledged until PUBCOMP: never send PUBREL.
    for pid in 1..=2u16 {
        c.must_send(Packet::Publish(publish_packet(
            "t06/rm",
            CQoS::ExactlyOnce,
            Some(pid),
            b"x",
        )))
        .await;
        match c.must_recv(WAIT).await {
            Packet::PubRec(r) => assert_eq!(r.packet_id, pid),
            other => panic!("expected PUBREC {pid}, got {other:?}"),
        }
    }
    c.must_send(Packet::Publish(publish_packet(
        "t06/rm",
        CQoS::ExactlyOnce,
        Some(3),
        b"x",
    )))
    .await;
    c.must_be_disconnected_with(0x93, WAIT).await;
    broker.must_metric_at_least(
        names::CONNECTIONS_CLOSED,
        &[("reason", "receive_maximum_exceeded")],
        1.0,
        WAIT,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completed_qos2_exchanges_free_the_receive_quota() {
    // Control for the test above: with PUBREL/PUBCOMP done, many more than the
    // Receive Maximum can be sent one after the other.
    let broker = BrokerProcess::start_with_mqtt_config("receive_maximum = 2");
    let (mut c, _) = raw_v5(&broker, "t06-rm-ok", |_| {}).await;
    for pid in 1..=6u16 {
        c.must_publish(publish_packet("t06/rm", CQoS::ExactlyOnce, Some(pid), b"x"))
            .await;
    }
    c.must_stay_silent(Duration::from_millis(500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_respects_the_clients_receive_maximum() {
    let broker = BrokerProcess::start_default();
    let (mut sub, _) = raw_v5(&broker, "t06-crm", |p| p.receive_maximum = Some(1)).await;
    sub.must_subscribe(1, "t06/crm", CQoS::AtLeastOnce).await;
    let publisher = V5Client::must_connect(&broker, &unique_id("t06-crm-pub")).await;
    for i in 0..5 {
        publisher
            .client
            .publish("t06/crm", QoS::AtLeastOnce, false, format!("{i}"))
            .await
            .expect("queue publish");
    }
    for i in 0..5 {
        let p = sub.must_recv_publish(WAIT).await;
        assert_eq!(text(&p.payload), format!("{i}"));
        // One unacknowledged message at most: nothing more until we ack.
        sub.must_stay_silent(Duration::from_millis(700)).await;
        sub.must_ack(&p).await;
    }
    sub.must_stay_silent(Duration::from_millis(500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_inflight_caps_unacknowledged_deliveries() {
    let broker = BrokerProcess::start_with_mqtt_config("max_inflight = 2");
    let (mut sub, _) = raw_v5(&broker, "t06-inflight", |p| p.receive_maximum = Some(100)).await;
    sub.must_subscribe(1, "t06/inflight", CQoS::AtLeastOnce)
        .await;
    let publisher = V5Client::must_connect(&broker, &unique_id("t06-inflight-pub")).await;
    for i in 0..4 {
        publisher
            .client
            .publish("t06/inflight", QoS::AtLeastOnce, false, format!("{i}"))
            .await
            .expect("queue publish");
    }
    let a = sub.must_recv_publish(WAIT).await;
    let b = sub.must_recv_publish(WAIT).await;
    sub.must_stay_silent(Duration::from_millis(800)).await;
    sub.must_ack(&a).await;
    sub.must_ack(&b).await;
    let c = sub.must_recv_publish(WAIT).await;
    let d = sub.must_recv_publish(WAIT).await;
    let got: Vec<String> = [&a, &b, &c, &d].iter().map(|p| text(&p.payload)).collect();
    assert_eq!(got, vec!["0", "1", "2", "3"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packet_over_the_servers_maximum_disconnects_with_0x95() {
    let broker = BrokerProcess::start_with_mqtt_config("max_packet_size = 1024");
    let (mut c, ack) = raw_v5(&broker, "t06-big", |_| {}).await;
    assert_eq!(ack.properties.maximum_packet_size, Some(1024));
    // Just under the limit is fine.
    c.must_publish(publish_packet(
        "t06/big",
        CQoS::AtLeastOnce,
        Some(1),
        &[b'a'; 900],
    ))
    .await;
    c.must_send(Packet::Publish(publish_packet(
        "t06/big",
        CQoS::AtLeastOnce,
        Some(2),
        &[b'b'; 2000],
    )))
    .await;
    c.must_be_disconnected_with(0x95, WAIT).await;
    broker.must_metric_at_least(
        names::CONNECTIONS_CLOSED,
        &[("reason", "packet_too_large")],
        1.0,
        WAIT,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_never_sends_a_packet_over_the_clients_maximum() {
    let broker = BrokerProcess::start_default();
    let (mut sub, _) = raw_v5(&broker, "t06-cmax", |p| p.maximum_packet_size = Some(256)).await;
    sub.must_subscribe(1, "t06/cmax", CQoS::AtLeastOnce).await;
    let mut publisher = V5Client::must_connect(&broker, &unique_id("t06-cmax-pub")).await;
    publisher
        .must_publish("t06/cmax", QoS::AtLeastOnce, false, vec![b'x'; 1000])
        .await;
    publisher
        .must_publish("t06/cmax", QoS::AtLeastOnce, false, "small")
        .await;
    // The big message is dropped for this client; the connection stays usable.
    let p = sub.must_recv_publish(WAIT).await;
    assert_eq!(text(&p.payload), "small");
    sub.must_ack(&p).await;
    sub.must_stay_silent(QUIET).await;
    broker.must_metric_at_least(
        names::MESSAGES_DROPPED,
        &[("reason", "packet_too_large")],
        1.0,
        WAIT,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_expiry_while_queued_and_remaining_interval_forwarded() {
    let broker = BrokerProcess::start_default();
    let id = unique_id("t06-expiry");
    let mut o = v5_options(&broker, &id);
    o.set_clean_start(false);
    o.set_session_expiry_interval(Some(300));
    let mut sub = V5Client::must_connect_with(o.clone()).await;
    sub.must_subscribe("t06/expiry", QoS::AtLeastOnce).await;
    sub.disconnect().await;

    let mut publisher = V5Client::must_connect(&broker, &unique_id("t06-expiry-pub")).await;
    let expiry = |s| PublishProperties {
        message_expiry_interval: Some(s),
        ..PublishProperties::default()
    };
    publisher
        .must_publish_with(
            "t06/expiry",
            QoS::AtLeastOnce,
            false,
            "short",
            Some(expiry(1)),
        )
        .await;
    publisher
        .must_publish_with(
            "t06/expiry",
            QoS::AtLeastOnce,
            false,
            "long",
            Some(expiry(60)),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let mut sub = V5Client::must_connect_with(o).await;
    assert!(sub.connack.session_present);
    let got = sub.drain_publishes(QUIET).await;
    let payloads: Vec<String> = got.iter().map(|p| text(&p.payload)).collect();
    assert_eq!(
        payloads,
        vec!["long"],
        "the expired message must not be delivered"
    );
    let left = got[0]
        .properties
        .as_ref()
        .and_then(|p| p.message_expiry_interval)
        .expect("the remaining Message Expiry Interval is forwarded");
    assert!(
        (50..60).contains(&left),
        "after 2.5 s queued the remaining interval should be about 57 s, got {left}"
    );
    broker.must_metric_at_least(names::MESSAGES_DROPPED, &[("reason", "expired")], 1.0, WAIT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_expiry_is_forwarded_on_live_delivery() {
    let broker = BrokerProcess::start_default();
    let mut sub = V5Client::must_connect(&broker, &unique_id("t06-exp-live")).await;
    sub.must_subscribe("t06/exp-live", QoS::AtLeastOnce).await;
    let mut publisher = V5Client::must_connect(&broker, &unique_id("t06-exp-live-pub")).await;
    let props = PublishProperties {
        message_expiry_interval: Some(120),
        ..PublishProperties::default()
    };
    publisher
        .must_publish_with("t06/exp-live", QoS::AtLeastOnce, false, "x", Some(props))
        .await;
    publisher
        .must_publish("t06/exp-live", QoS::AtLeastOnce, false, "no expiry")
        .await;
    let p = sub.must_recv_publish(WAIT).await;
    let left = p.properties.and_then(|p| p.message_expiry_interval);
    assert!(
        matches!(left, Some(s) if (110..=120).contains(&s)),
        "expected a Message Expiry Interval of about 120, got {left:?}"
    );
    let p = sub.must_recv_publish(WAIT).await;
    assert_eq!(
        p.properties.and_then(|p| p.message_expiry_interval),
        None,
        "no expiry was set, none must be invented"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_properties_are_passed_through_unchanged() {
    let broker = BrokerProcess::start_default();
    let mut sub = V5Client::must_connect(&broker, &unique_id("t06-props-sub")).await;
    sub.must_subscribe("t06/props", QoS::ExactlyOnce).await;
    let mut publisher = V5Client::must_connect(&broker, &unique_id("t06-props-pub")).await;
    let sent = PublishProperties {
        payload_format_indicator: Some(1),
        content_type: Some("application/json; charset=utf-8".into()),
        response_topic: Some("t06/props/reply".into()),
        correlation_data: Some(Bytes::from_static(&[0, 1, 2, 0xff])),
        user_properties: vec![
            ("a".into(), "1".into()),
            ("b".into(), "two words".into()),
            ("a".into(), "3".into()),
            ("ünï".into(), "çødé".into()),
        ],
        ..PublishProperties::default()
    };
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        publisher
            .must_publish_with("t06/props", qos, false, "{\"k\":1}", Some(sent.clone()))
            .await;
        let p = sub.must_recv_publish(WAIT).await;
        let got = p.properties.expect("properties");
        assert_eq!(got.payload_format_indicator, sent.payload_format_indicator);
        assert_eq!(got.content_type, sent.content_type);
        assert_eq!(got.response_topic, sent.response_topic);
        assert_eq!(got.correlation_data, sent.correlation_data);
        assert_eq!(
            got.user_properties, sent.user_properties,
            "order and duplicates kept"
        );
        assert_eq!(text(&p.payload), "{\"k\":1}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_identifiers_of_all_matching_subscriptions_are_delivered() {
    let broker = BrokerProcess::start_default();
    let mut sub = V5Client::must_connect(&broker, &unique_id("t06-sid")).await;
    sub.must_subscribe_with_id("t06/sid/#", QoS::AtLeastOnce, 1)
        .await;
    sub.must_subscribe_with_id("t06/sid/+", QoS::AtLeastOnce, 2)
        .await;
    sub.must_subscribe("t06/sid/x", QoS::AtLeastOnce).await; // no identifier

    let mut publisher = V5Client::must_connect(&broker, &unique_id("t06-sid-pub")).await;
    publisher
        .must_publish("t06/sid/x", QoS::AtLeastOnce, false, "x")
        .await;
    let copies = sub.drain_publishes(QUIET).await;
    assert!(!copies.is_empty());
    let ids: Vec<Vec<usize>> = copies
        .iter()
        .map(|p| {
            p.properties
                .as_ref()
                .map(|p| p.subscription_identifiers.clone())
                .unwrap_or_default()
        })
        .collect();
    let union: BTreeSet<usize> = ids.iter().flatten().copied().collect();
    assert_eq!(
        union,
        BTreeSet::from([1, 2]),
        "identifiers received: {ids:?}"
    );
    if copies.len() > 1 {
        // One copy per subscription: each carries at most its own identifier.
        assert!(
            ids.iter().all(|i| i.len() <= 1),
            "identifiers received: {ids:?}"
        );
    }

    // Only "#" matches two levels down.
    publisher
        .must_publish("t06/sid/x/y", QoS::AtLeastOnce, false, "deep")
        .await;
    let p = sub.must_recv_publish(WAIT).await;
    assert_eq!(text(&p.payload), "deep");
    assert_eq!(
        p.properties
            .map(|p| p.subscription_identifiers)
            .unwrap_or_default(),
        vec![1]
    );
    sub.must_not_recv_publish(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_local_subscriptions_do_not_receive_their_own_messages() {
    let broker = BrokerProcess::start_default();
    let mut c = V5Client::must_connect(&broker, &unique_id("t06-nl")).await;
    let mut f = Filter::new("t06/nl", QoS::AtLeastOnce);
    f.nolocal = true;
    c.must_subscribe_filter(f, None).await;
    c.must_publish("t06/nl", QoS::AtLeastOnce, false, "mine")
        .await;
    c.must_not_recv_publish(QUIET).await;

    let mut other = V5Client::must_connect(&broker, &unique_id("t06-nl-other")).await;
    other
        .must_publish("t06/nl", QoS::AtLeastOnce, false, "theirs")
        .await;
    assert_eq!(text(&c.must_recv_publish(WAIT).await.payload), "theirs");

    // Without No Local, one's own messages come back.
    let mut echo = V5Client::must_connect(&broker, &unique_id("t06-echo")).await;
    echo.must_subscribe("t06/echo", QoS::AtLeastOnce).await;
    echo.must_publish("t06/echo", QoS::AtLeastOnce, false, "mine")
        .await;
    assert_eq!(text(&echo.must_recv_publish(WAIT).await.payload), "mine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_subscription_delivers_each_message_to_one_member() {
    let broker = BrokerProcess::start_default();
    let mut members = Vec::new();
    for i in 0..3 {
        let mut m = V5Client::must_connect(&broker, &unique_id(&format!("t06-share-{i}"))).await;
        let codes = m
            .must_subscribe("$share/g/t06/share/#", QoS::AtLeastOnce)
            .await;
        assert_eq!(codes, vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]);
        members.push(m);
    }
    let mut other_group = V5Client::must_connect(&broker, &unique_id("t06-share-h")).await;
    other_group
        .must_subscribe("$share/h/t06/share/#", QoS::AtLeastOnce)
        .await;
    let mut plain = V5Client::must_connect(&broker, &unique_id("t06-share-plain")).await;
    plain.must_subscribe("t06/share/#", QoS::AtLeastOnce).await;

    let mut publisher = V5Client::must_connect(&broker, &unique_id("t06-share-pub")).await;
    const N: usize = 30;
    for i in 0..N {
        publisher
            .must_publish(
                &format!("t06/share/{i}"),
                QoS::AtLeastOnce,
                false,
                format!("{i}"),
            )
            .await;
    }
    let mut owner: HashMap<String, usize> = HashMap::new();
    let mut per_member = Vec::new();
    for (m, member) in members.iter_mut().enumerate() {
        let got = member.drain_publishes(QUIET).await;
        per_member.push(got.len());
        for p in got {
            let payload = text(&p.payload);
            if let Some(prev) = owner.insert(payload.clone(), m) {
                panic!("message {payload} went to members {prev} and {m}");
            }
        }
    }
    assert_eq!(
        owner.len(),
        N,
        "every message reaches exactly one member: {per_member:?}"
    );
    assert!(
        per_member.iter().filter(|n| **n > 0).count() >= 2,
        "messages should be spread across the group's members: {per_member:?}"
    );
    // Each group gets its own copy, and plain subscribers get theirs.
    assert_eq!(other_group.drain_publishes(QUIET).await.len(), N);
    assert_eq!(plain.drain_publishes(QUIET).await.len(), N);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_subscription_member_leaving_hands_over_to_the_others() {
    let broker = BrokerProcess::start_default();
    let mut a = V5Client::must_connect(&broker, &unique_id("t06-sh-a")).await;
    a.must_subscribe("$share/g/t06/shl", QoS::AtLeastOnce).await;
    let b = {
        let mut b = V5Client::must_connect(&broker, &unique_id("t06-sh-b")).await;
        b.must_subscribe("$share/g/t06/shl", QoS::AtLeastOnce).await;
        b
    };
    b.disconnect().await;
    let mut publisher = V5Client::must_connect(&broker, &unique_id("t06-sh-pub")).await;
    for i in 0..10 {
        publisher
            .must_publish("t06/shl", QoS::AtLeastOnce, false, format!("{i}"))
            .await;
    }
    assert_eq!(
        a.drain_publishes(QUIET).await.len(),
        10,
        "the remaining member gets everything"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_problem_information_false_means_no_reason_strings() {
    let broker = BrokerProcess::start_default();
    let (mut c, _) = raw_v5(&broker, "t06-rpi", |p| {
        p.request_problem_information = Some(false)
    })
    .await;

    // UNSUBSCRIBE of a filter never subscribed: 0x11, without a reason string.
    c.must_send(Packet::Unsubscribe(unsubscribe_packet(1, &["t06/never"])))
        .await;
    match c.must_recv(WAIT).await {
        Packet::UnsubAck(u) => {
            assert_eq!(u.reason_codes, vec![ReasonCode::NoSubscriptionExisted]);
            assert_eq!(u.properties.reason_string, None, "{u:?}");
            assert!(u.properties.user_properties.is_empty(), "{u:?}");
        }
        other => panic!("expected UNSUBACK, got {other:?}"),
    }
    // PUBREL for a packet id never received: PUBCOMP 0x92, without a reason string.
    c.must_send(Packet::PubRel(PubResponse::new(999))).await;
    match c.must_recv(WAIT).await {
        Packet::PubComp(p) => {
            assert_eq!(p.packet_id, 999);
            assert_eq!(p.reason_code, ReasonCode::PacketIdentifierNotFound);
            assert_eq!(p.properties.reason_string, None, "{p:?}");
            assert!(p.properties.user_properties.is_empty(), "{p:?}");
        }
        other => panic!("expected PUBCOMP, got {other:?}"),
    }
    // PUBLISH with no subscriber: PUBACK (0x00 or 0x10), without a reason string.
    c.must_send(Packet::Publish(publish_packet(
        "t06/nobody",
        CQoS::AtLeastOnce,
        Some(5),
        b"x",
    )))
    .await;
    match c.must_recv(WAIT).await {
        Packet::PubAck(p) => {
            assert_eq!(p.packet_id, 5);
            assert!(
                matches!(
                    p.reason_code,
                    ReasonCode::Success | ReasonCode::NoMatchingSubscribers
                ),
                "{p:?}"
            );
            assert_eq!(p.properties.reason_string, None, "{p:?}");
        }
        other => panic!("expected PUBACK, got {other:?}"),
    }
    // A SUBSCRIBE refused for an invalid filter, if refused by SUBACK: no reason string.
    c.must_send(Packet::Subscribe(subscribe_packet(
        2,
        &[("t06/#/bad", CQoS::AtMostOnce)],
    )))
    .await;
    if let Ok(Recv::Packet(Packet::SubAck(s))) = c.recv(WAIT).await {
        assert_eq!(s.properties.reason_string, None, "{s:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suback_and_unsuback_reason_codes() {
    let broker = BrokerProcess::start_default();
    let (mut c, _) = raw_v5(&broker, "t06-codes", |_| {}).await;
    c.must_send(Packet::Subscribe(subscribe_packet(
        1,
        &[
            ("t06/codes/0", CQoS::AtMostOnce),
            ("t06/codes/1", CQoS::AtLeastOnce),
            ("t06/codes/2", CQoS::ExactlyOnce),
        ],
    )))
    .await;
    let s = c.must_recv_suback(1).await;
    assert_eq!(
        s.reason_codes,
        vec![
            ReasonCode::Success,
            ReasonCode::GrantedQos1,
            ReasonCode::GrantedQos2
        ]
    );
    c.must_send(Packet::Unsubscribe(unsubscribe_packet(
        2,
        &["t06/codes/1", "t06/codes/none", "t06/codes/2"],
    )))
    .await;
    match c.must_recv(WAIT).await {
        Packet::UnsubAck(u) => {
            assert_eq!(u.packet_id, 2);
            assert_eq!(
                u.reason_codes,
                vec![
                    ReasonCode::Success,
                    ReasonCode::NoSubscriptionExisted,
                    ReasonCode::Success
                ]
            );
        }
        other => panic!("expected UNSUBACK, got {other:?}"),
    }
    // Through rumqttc too.
    let mut r = V5Client::must_connect(&broker, &unique_id("t06-codes-r")).await;
    r.must_subscribe("t06/codes/r", QoS::AtMostOnce).await;
    assert_eq!(
        r.must_unsubscribe("t06/codes/r").await,
        vec![UnsubAckReason::Success]
    );
    assert_eq!(
        r.must_unsubscribe("t06/codes/r").await,
        vec![UnsubAckReason::NoSubscriptionExisted]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_options_are_replaced_by_a_new_subscribe() {
    // Subscribing again to the same filter replaces its options (QoS here).
    let broker = BrokerProcess::start_default();
    let (mut c, _) = raw_v5(&broker, "t06-resub", |_| {}).await;
    c.must_subscribe(1, "t06/resub", CQoS::ExactlyOnce).await;
    let mut sub = subscribe_packet(2, &[]);
    sub.filters.push(SubscribeFilter {
        filter: "t06/resub".into(),
        options: SubscriptionOptions {
            qos: CQoS::AtMostOnce,
            ..SubscriptionOptions::default()
        },
    });
    c.must_send(Packet::Subscribe(sub)).await;
    c.must_recv_suback(2).await;
    let mut publisher = V5Client::must_connect(&broker, &unique_id("t06-resub-pub")).await;
    publisher
        .must_publish("t06/resub", QoS::ExactlyOnce, false, "x")
        .await;
    let p = c.must_recv_publish(WAIT).await;
    assert_eq!(
        p.qos,
        CQoS::AtMostOnce,
        "one subscription, with the new QoS"
    );
    c.must_stay_silent(QUIET).await;
}
