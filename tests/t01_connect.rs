//! CONNECT and CONNACK for MQTT 3.1, 3.1.1 and 5; empty client ids; keep alive and
//! Server Keep Alive; the connect timeout; session takeover.

use std::time::{Duration, Instant};

use fleetmq_codec::{Packet, ProtocolVersion, QoS, ReasonCode};
use fleetmq_tests::raw::{connect_packet, publish_packet, subscribe_packet};
use fleetmq_tests::{
    names, text, unique_id, v4_options, v5_options, BrokerProcess, RawClient, Recv, V4Client,
    V5Client, QUIET, WAIT,
};
use rumqttc::ConnectReturnCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_connect_is_accepted() {
    let broker = BrokerProcess::start_default();
    let c = V4Client::must_connect(&broker, &unique_id("t01-v311")).await;
    assert_eq!(c.connack.code, ConnectReturnCode::Success);
    assert!(
        !c.connack.session_present,
        "a clean session has no session present"
    );
    c.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v31_mqisdp_connect_is_accepted_and_works() {
    let broker = BrokerProcess::start_default();
    // Protocol name "MQIsdp", level 3.
    let (mut c, ack) = RawClient::must_connect(
        broker.mqtt_addr,
        ProtocolVersion::V3_1,
        &unique_id("t01-v31"),
        true,
    )
    .await;
    assert_eq!(ack.reason_code, ReasonCode::Success);
    assert!(!ack.session_present);

    // The connection is usable: subscribe, publish QoS 1 to ourselves, get it back.
    let sub = c.must_subscribe(1, "t01/v31", QoS::AtLeastOnce).await;
    assert_eq!(sub.reason_codes, vec![ReasonCode::GrantedQos1]);
    c.must_send(Packet::Publish(publish_packet(
        "t01/v31",
        QoS::AtLeastOnce,
        Some(2),
        b"hello 3.1",
    )))
    .await;
    let mut got_puback = false;
    let mut got_publish = None;
    while !(got_puback && got_publish.is_some()) {
        match c.must_recv(WAIT).await {
            Packet::PubAck(a) => {
                assert_eq!(a.packet_id, 2);
                got_puback = true;
            }
            Packet::Publish(p) => got_publish = Some(p),
            other => panic!("unexpected {other:?}"),
        }
    }
    let p = got_publish.expect("publish");
    assert_eq!(&*p.topic, "t01/v31");
    assert_eq!(text(&p.payload), "hello 3.1");
    assert_eq!(p.qos, QoS::AtLeastOnce);
    c.must_ack(&p).await;
    c.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_connect_is_accepted_with_connack_properties() {
    let broker = BrokerProcess::start_default();
    let c = V5Client::must_connect(&broker, &unique_id("t01-v5")).await;
    assert_eq!(
        c.connack.code,
        rumqttc::v5::mqttbytes::v5::ConnectReturnCode::Success
    );
    assert!(!c.connack.session_present);
    let props = c.connack.properties.clone().expect("CONNACK properties");
    // The server advertises its Receive Maximum (1024 by default).
    assert_eq!(props.receive_max, Some(1024), "CONNACK: {props:?}");
    // A client id was given: none is assigned.
    assert_eq!(props.assigned_client_identifier, None);
    c.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_empty_client_id_with_clean_session_is_accepted() {
    let broker = BrokerProcess::start_default();
    let mut c = V4Client::must_connect(&broker, "").await;
    assert_eq!(c.connack.code, ConnectReturnCode::Success);
    // It works like any client.
    c.must_subscribe("t01/empty", rumqttc::QoS::AtLeastOnce)
        .await;
    c.must_publish("t01/empty", rumqttc::QoS::AtLeastOnce, false, "x")
        .await;
    let p = c.must_recv_publish(WAIT).await;
    assert_eq!(text(&p.payload), "x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_empty_client_id_without_clean_session_is_rejected_with_code_2() {
    let broker = BrokerProcess::start_default();
    let (mut c, ack) = RawClient::connect(
        broker.mqtt_addr,
        connect_packet(ProtocolVersion::V3_1_1, "", false, 60),
    )
    .await
    .expect("a CONNACK");
    // 3.1.1 return code 2: identifier rejected.
    assert_eq!(ack.reason_code.to_v3_connack(), 2, "CONNACK {ack:?}");
    assert_eq!(ack.reason_code, ReasonCode::ClientIdentifierNotValid);
    assert!(!ack.session_present);
    c.must_be_closed(WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_empty_client_id_gets_an_assigned_client_identifier() {
    let broker = BrokerProcess::start_default();
    let a = V5Client::must_connect(&broker, "").await;
    let b = V5Client::must_connect(&broker, "").await;
    let id_a = a
        .connack
        .properties
        .as_ref()
        .and_then(|p| p.assigned_client_identifier.clone())
        .expect("an Assigned Client Identifier for the first client");
    let id_b = b
        .connack
        .properties
        .as_ref()
        .and_then(|p| p.assigned_client_identifier.clone())
        .expect("an Assigned Client Identifier for the second client");
    assert!(!id_a.is_empty());
    assert_ne!(id_a, id_b, "two clients got the same assigned id");
    // Both stay connected: the second did not take over the first.
    let mut a = a;
    a.must_subscribe("t01/assigned", rumqttc::v5::mqttbytes::QoS::AtMostOnce)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_silent_client_is_closed_after_one_and_a_half_keep_alive() {
    let broker = BrokerProcess::start_default();
    let (mut c, _) = RawClient::must_connect_with(
        broker.mqtt_addr,
        connect_packet(ProtocolVersion::V3_1_1, &unique_id("t01-ka"), true, 1),
    )
    .await;
    let start = Instant::now();
    let got = c.must_be_closed(Duration::from_secs(8)).await;
    let elapsed = start.elapsed();
    assert!(
        got.is_empty(),
        "3.1.1 has no DISCONNECT from the server: {got:?}"
    );
    assert!(
        elapsed >= Duration::from_millis(1000) && elapsed <= Duration::from_secs(4),
        "closed after {elapsed:?}, expected about 1.5 s"
    );
    broker.must_metric_at_least(
        names::CONNECTIONS_CLOSED,
        &[("reason", "keep_alive_timeout")],
        1.0,
        WAIT,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_silent_client_is_closed_after_one_and_a_half_keep_alive() {
    let broker = BrokerProcess::start_default();
    let (mut c, _) = RawClient::must_connect_with(
        broker.mqtt_addr,
        connect_packet(ProtocolVersion::V5, &unique_id("t01-ka5"), true, 1),
    )
    .await;
    let start = Instant::now();
    let got = c.must_be_closed(Duration::from_secs(8)).await;
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1000) && elapsed <= Duration::from_secs(4),
        "closed after {elapsed:?}, expected about 1.5 s"
    );
    // The server may say why (0x8D Keep Alive timeout) before closing; nothing else.
    match got.as_slice() {
        [] => {}
        [Packet::Disconnect(d)] => assert_eq!(d.reason_code, ReasonCode::KeepAliveTimeout),
        other => panic!("unexpected packets before the close: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinging_client_is_kept_alive() {
    let broker = BrokerProcess::start_default();
    let (mut c, _) = RawClient::must_connect_with(
        broker.mqtt_addr,
        connect_packet(ProtocolVersion::V3_1_1, &unique_id("t01-ping"), true, 1),
    )
    .await;
    // 4 s is well past 1.5 x keep alive: pings must keep the connection open.
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        c.must_send(Packet::PingReq).await;
        match c.must_recv(WAIT).await {
            Packet::PingResp => {}
            other => panic!("expected PINGRESP, got {other:?}"),
        }
    }
    c.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_keep_alive_is_returned_when_the_client_asks_for_more_than_the_maximum() {
    let broker = BrokerProcess::start_with_mqtt_config("max_keep_alive = 5");

    let mut o = v5_options(&broker, &unique_id("t01-ska60"));
    o.set_keep_alive(Duration::from_secs(60));
    let c = V5Client::must_connect_with(o).await;
    let props = c.connack.properties.clone().expect("CONNACK properties");
    assert_eq!(
        props.server_keep_alive,
        Some(5),
        "asked 60, max 5: {props:?}"
    );

    // Keep alive 0 means "none", which is more than the maximum too. (rumqttc's
    // MQTT 5 client refuses keep alives under 5 s: raw clients from here on.)
    let (_c0, ack) = RawClient::must_connect_with(
        broker.mqtt_addr,
        connect_packet(ProtocolVersion::V5, &unique_id("t01-ska0"), true, 0),
    )
    .await;
    assert_eq!(
        ack.properties.server_keep_alive,
        Some(5),
        "asked 0, max 5: {ack:?}"
    );

    // Asking for less than the maximum is granted as asked.
    let (_c3, ack) = RawClient::must_connect_with(
        broker.mqtt_addr,
        connect_packet(ProtocolVersion::V5, &unique_id("t01-ska3"), true, 3),
    )
    .await;
    let ska = ack.properties.server_keep_alive;
    assert!(
        ska.is_none() || ska == Some(3),
        "asked 3 with max 5, got Server Keep Alive {ska:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_keep_alive_is_enforced() {
    let broker = BrokerProcess::start_with_mqtt_config("max_keep_alive = 2");
    let (mut c, ack) = RawClient::must_connect_with(
        broker.mqtt_addr,
        connect_packet(ProtocolVersion::V5, &unique_id("t01-ska-enf"), true, 30),
    )
    .await;
    assert_eq!(ack.properties.server_keep_alive, Some(2), "CONNACK {ack:?}");
    let start = Instant::now();
    c.must_be_closed(Duration::from_secs(12)).await;
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_secs(2) && elapsed <= Duration::from_secs(8),
        "closed after {elapsed:?}, expected about 3 s (1.5 x Server Keep Alive 2)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_without_connect_is_closed_after_connect_timeout() {
    let broker = BrokerProcess::start_with_mqtt_config("connect_timeout = 1");
    let mut c = RawClient::open(broker.mqtt_addr, ProtocolVersion::V3_1_1)
        .await
        .expect("tcp");
    let start = Instant::now();
    let got = c.must_be_closed(Duration::from_secs(8)).await;
    assert!(got.is_empty(), "nothing is sent before CONNECT: {got:?}");
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_millis(500) && elapsed <= Duration::from_secs(5),
        "closed after {elapsed:?}, expected about 1 s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_session_takeover_closes_the_first_connection() {
    let broker = BrokerProcess::start_default();
    let id = unique_id("t01-takeover");
    let mut first = V4Client::must_connect(&broker, &id).await;
    let mut second = V4Client::must_connect(&broker, &id).await;
    assert!(
        first.wait_closed(WAIT).await.is_some(),
        "the first connection was not closed after the takeover"
    );
    // The second connection works.
    second
        .must_subscribe("t01/takeover", rumqttc::QoS::AtLeastOnce)
        .await;
    second
        .must_publish(
            "t01/takeover",
            rumqttc::QoS::AtLeastOnce,
            false,
            "still here",
        )
        .await;
    let p = second.must_recv_publish(WAIT).await;
    assert_eq!(text(&p.payload), "still here");
    broker.must_metric_at_least(
        names::CONNECTIONS_CLOSED,
        &[("reason", "session_taken_over")],
        1.0,
        WAIT,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_session_takeover_sends_disconnect_0x8e() {
    let broker = BrokerProcess::start_default();
    let id = unique_id("t01-takeover5");
    let mut first = V5Client::must_connect(&broker, &id).await;
    let _second = V5Client::must_connect(&broker, &id).await;
    let reason = first.wait_server_disconnect(WAIT).await;
    assert_eq!(
        reason,
        Some(0x8E),
        "the first client should get DISCONNECT 0x8E (Session taken over)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_by_a_different_protocol_version_works() {
    // A 3.1.1 connection taken over by an MQTT 5 one with the same client id.
    let broker = BrokerProcess::start_default();
    let id = unique_id("t01-takeover-mixed");
    let (mut first, _) =
        RawClient::must_connect(broker.mqtt_addr, ProtocolVersion::V3_1_1, &id, true).await;
    let mut second = V5Client::must_connect(&broker, &id).await;
    first.must_be_closed(WAIT).await;
    second
        .must_subscribe("t01/mixed", rumqttc::v5::mqttbytes::QoS::AtMostOnce)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connected_client_count_metric_follows_connections() {
    let broker = BrokerProcess::start_default();
    let a = V4Client::must_connect(&broker, &unique_id("t01-count")).await;
    let b = V5Client::must_connect(&broker, &unique_id("t01-count")).await;
    broker.must_metric_at_least(names::CONNECTIONS_CURRENT, &[], 2.0, WAIT);
    a.disconnect().await;
    b.disconnect().await;
    let deadline = Instant::now() + WAIT;
    loop {
        let now = broker.metric(names::CONNECTIONS_CURRENT, &[]);
        if now == 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "fleetmq_connections_current is still {now} after both clients left"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(broker.metric(names::CONNECTIONS_TOTAL, &[]) >= 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_connect_then_normal_disconnect_leaves_the_broker_healthy() {
    let broker = BrokerProcess::start_default();
    for v in [
        ProtocolVersion::V3_1,
        ProtocolVersion::V3_1_1,
        ProtocolVersion::V5,
    ] {
        let (mut c, _) =
            RawClient::must_connect(broker.mqtt_addr, v, &unique_id("t01-raw"), true).await;
        c.must_send(Packet::Subscribe(subscribe_packet(
            7,
            &[("t01/raw", QoS::ExactlyOnce)],
        )))
        .await;
        let ack = c.must_recv_suback(7).await;
        assert_eq!(ack.reason_codes, vec![ReasonCode::GrantedQos2], "{v:?}");
        match c.recv(QUIET).await.expect("recv") {
            Recv::Timeout => {}
            other => panic!("{v:?}: unexpected {other:?}"),
        }
        c.disconnect().await;
    }
    let (status, body) = broker.http_get("/healthz").expect("GET /healthz");
    assert_eq!(status, 200, "/healthz: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v4_clean_session_options_roundtrip() {
    // A persistent 3.1.1 session reports session_present on its second connection.
    let broker = BrokerProcess::start_default();
    let id = unique_id("t01-present");
    let mut o = v4_options(&broker, &id);
    o.set_clean_session(false);
    let c = V4Client::must_connect_with(o.clone()).await;
    assert!(!c.connack.session_present, "a new session is not present");
    c.disconnect().await;
    let c = V4Client::must_connect_with(o).await;
    assert!(
        c.connack.session_present,
        "the persistent session should be present"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_refuses_connections_beyond_the_limit() {
    let broker = BrokerProcess::start_with_mqtt_config("max_connections = 2");
    let a = V4Client::must_connect(&broker, &unique_id("t01-max-a")).await;
    let _b = V4Client::must_connect(&broker, &unique_id("t01-max-b")).await;
    // The third is refused with CONNACK 0x97 (quota exceeded), before anything else.
    let refused = RawClient::connect(
        broker.mqtt_addr,
        connect_packet(ProtocolVersion::V5, &unique_id("t01-max-c"), true, 60),
    )
    .await;
    match refused {
        Ok((_c, ack)) => assert_eq!(
            ack.reason_code,
            ReasonCode::QuotaExceeded,
            "a third connection with max_connections = 2: {ack:?}"
        ),
        Err(e) => panic!("the third connection should get CONNACK 0x97: {e:#}"),
    }
    let metrics = fleetmq_tests::metrics::fetch_metrics(broker.admin_addr).expect("metrics");
    assert_eq!(
        metrics.value("fleetmq_listener_refused_total", &[("listener", "mqtt")]),
        Some(1.0)
    );
    assert_eq!(
        metrics.value(
            "fleetmq_connections_closed_total",
            &[("reason", "quota_exceeded")]
        ),
        Some(1.0)
    );
    // A slot frees up when a client leaves.
    a.disconnect().await;
    let deadline = Instant::now() + WAIT;
    loop {
        match V4Client::connect(v4_options(&broker, &unique_id("t01-max-d"))).await {
            Ok(_) => break,
            Err(e) => assert!(
                Instant::now() < deadline,
                "no connection accepted after a client left: {e:#}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
