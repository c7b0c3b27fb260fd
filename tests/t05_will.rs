//! Will messages: published on an abnormal close (TCP dropped, protocol error),
//! not after a normal DISCONNECT, published after MQTT 5 DISCONNECT 0x04; the MQTT 5
//! Will Delay Interval, honoured and cancelled by a reconnect within the delay.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fleetmq_codec::{
    Disconnect, LastWill, Packet, ProtocolVersion, QoS as CQoS, ReasonCode, WillProperties,
};
use fleetmq_tests::raw::{connect_packet, wire};
use fleetmq_tests::{
    text, unique_id, v4_options, v5_options, BrokerProcess, RawClient, V4Client, V5Client, WAIT,
};
use rumqttc::v5::mqttbytes::v5::LastWillProperties;
use rumqttc::v5::mqttbytes::QoS as Q5;
use rumqttc::{LastWill as V4Will, QoS};

async fn watcher(broker: &BrokerProcess, topic: &str) -> V4Client {
    let mut w = V4Client::must_connect(broker, &unique_id("t05-watch")).await;
    w.must_subscribe(topic, QoS::AtLeastOnce).await;
    w
}

fn raw_will(topic: &str, payload: &str, delay: Option<u32>) -> LastWill {
    LastWill {
        topic: Arc::from(topic),
        payload: Bytes::from(payload.to_string()),
        qos: CQoS::AtLeastOnce,
        retain: false,
        properties: WillProperties {
            will_delay_interval: delay,
            ..WillProperties::default()
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_will_is_published_when_the_connection_drops() {
    let broker = BrokerProcess::start_default();
    let mut w = watcher(&broker, "t05/drop").await;
    let mut o = v4_options(&broker, &unique_id("t05-drop"));
    o.set_last_will(V4Will::new("t05/drop", "gone", QoS::AtLeastOnce, false));
    let c = V4Client::must_connect_with(o).await;
    w.must_not_recv_publish(Duration::from_millis(500)).await;
    c.drop_connection().await;
    let p = w.must_recv_publish(WAIT).await;
    assert_eq!(p.topic, "t05/drop");
    assert_eq!(text(&p.payload), "gone");
    assert_eq!(p.qos, QoS::AtLeastOnce);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_no_will_after_a_normal_disconnect() {
    let broker = BrokerProcess::start_default();
    let mut w = watcher(&broker, "t05/normal").await;
    let mut o = v4_options(&broker, &unique_id("t05-normal"));
    o.set_last_will(V4Will::new("t05/normal", "gone", QoS::AtLeastOnce, false));
    let c = V4Client::must_connect_with(o).await;
    c.disconnect().await;
    w.must_not_recv_publish(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_is_published_when_the_server_closes_for_a_protocol_error() {
    let broker = BrokerProcess::start_default();
    let mut w = watcher(&broker, "t05/proto").await;
    let mut connect = connect_packet(ProtocolVersion::V3_1_1, &unique_id("t05-proto"), true, 60);
    connect.will = Some(raw_will("t05/proto", "bad client", None));
    let (mut c, _) = RawClient::must_connect_with(broker.mqtt_addr, connect).await;
    // A PUBLISH with QoS 3: malformed.
    c.must_send_bytes(&wire::publish(0x36, b"t05/x", Some(1), None, b"x"))
        .await;
    c.must_be_closed(WAIT).await;
    assert_eq!(text(&w.must_recv_publish(WAIT).await.payload), "bad client");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_is_published_after_keep_alive_timeout() {
    let broker = BrokerProcess::start_default();
    let mut w = watcher(&broker, "t05/ka").await;
    let mut connect = connect_packet(ProtocolVersion::V3_1_1, &unique_id("t05-ka"), true, 1);
    connect.will = Some(raw_will("t05/ka", "timed out", None));
    let (_c, _) = RawClient::must_connect_with(broker.mqtt_addr, connect).await;
    // Silent: closed after ~1.5 s, then the will.
    assert_eq!(text(&w.must_recv_publish(WAIT).await.payload), "timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_will_is_kept_as_retained_message() {
    let broker = BrokerProcess::start_default();
    let mut o = v4_options(&broker, &unique_id("t05-ret"));
    o.set_last_will(V4Will::new("t05/ret", "offline", QoS::AtLeastOnce, true));
    let c = V4Client::must_connect_with(o).await;
    c.drop_connection().await;
    // Subscribed after the will was published: the retained copy arrives.
    let deadline = Instant::now() + WAIT;
    loop {
        let mut late = V4Client::must_connect(&broker, &unique_id("t05-late")).await;
        late.must_subscribe("t05/ret", QoS::AtLeastOnce).await;
        if let Some(p) = late.recv_publish(Duration::from_millis(500)).await {
            assert_eq!(text(&p.payload), "offline");
            assert!(p.retain);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the retained will never appeared"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_no_will_after_normal_disconnect_but_will_after_disconnect_0x04() {
    let broker = BrokerProcess::start_default();
    let mut w = watcher(&broker, "t05/v5/#").await;

    // Normal disconnection (0x00): no will.
    let mut connect = connect_packet(ProtocolVersion::V5, &unique_id("t05-n5"), true, 60);
    connect.will = Some(raw_will("t05/v5/normal", "normal", None));
    let (mut c, _) = RawClient::must_connect_with(broker.mqtt_addr, connect).await;
    c.must_send(Packet::Disconnect(Disconnect::new(ReasonCode::Success)))
        .await;
    c.must_be_closed(WAIT).await;

    // Disconnect with Will Message (0x04): the will is published.
    let mut connect = connect_packet(ProtocolVersion::V5, &unique_id("t05-w5"), true, 60);
    connect.will = Some(raw_will("t05/v5/with-will", "asked for it", None));
    let (mut c, _) = RawClient::must_connect_with(broker.mqtt_addr, connect).await;
    c.must_send(Packet::Disconnect(Disconnect::new(
        ReasonCode::DisconnectWithWillMessage,
    )))
    .await;
    c.must_be_closed(WAIT).await;

    let p = w.must_recv_publish(WAIT).await;
    assert_eq!(
        p.topic,
        "t05/v5/with-will",
        "only the 0x04 will: got {:?}",
        text(&p.payload)
    );
    assert_eq!(text(&p.payload), "asked for it");
    w.must_not_recv_publish(Duration::from_secs(1)).await;
}

fn v5_will_options(
    broker: &BrokerProcess,
    id: &str,
    topic: &str,
    payload: &str,
    delay: u32,
) -> rumqttc::v5::MqttOptions {
    let mut o = v5_options(broker, id);
    o.set_clean_start(false);
    // The will waits for the earlier of its delay and the session's end.
    o.set_session_expiry_interval(Some(60));
    let props = LastWillProperties {
        delay_interval: Some(delay),
        payload_format_indicator: None,
        message_expiry_interval: None,
        content_type: None,
        response_topic: None,
        correlation_data: None,
        user_properties: Vec::new(),
    };
    o.set_last_will(rumqttc::v5::mqttbytes::v5::LastWill::new(
        topic,
        payload.to_string(),
        Q5::AtLeastOnce,
        false,
        Some(props),
    ));
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_will_delay_interval_is_honoured() {
    let broker = BrokerProcess::start_default();
    let mut w = watcher(&broker, "t05/delay").await;
    let c = V5Client::must_connect_with(v5_will_options(
        &broker,
        &unique_id("t05-delay"),
        "t05/delay",
        "late",
        2,
    ))
    .await;
    let dropped = Instant::now();
    c.drop_connection().await;
    // Not before the delay (checked coarsely: nothing in the first second)...
    w.must_not_recv_publish(Duration::from_secs(1)).await;
    // ...but after it.
    let p = w.must_recv_publish(WAIT).await;
    let after = dropped.elapsed();
    assert_eq!(text(&p.payload), "late");
    assert!(
        after >= Duration::from_millis(1500),
        "will published after {after:?}, delay is 2 s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_will_delay_is_cancelled_by_a_reconnect_within_the_delay() {
    let broker = BrokerProcess::start_default();
    let mut w = watcher(&broker, "t05/cancel").await;
    let id = unique_id("t05-cancel");
    let c =
        V5Client::must_connect_with(v5_will_options(&broker, &id, "t05/cancel", "never", 3)).await;
    c.drop_connection().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let back =
        V5Client::must_connect_with(v5_will_options(&broker, &id, "t05/cancel", "never", 3)).await;
    assert!(back.connack.session_present);
    // Well past the original delay: no will.
    w.must_not_recv_publish(Duration::from_secs(5)).await;
    drop(back);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_will_properties_are_passed_through() {
    let broker = BrokerProcess::start_default();
    let mut w = V5Client::must_connect(&broker, &unique_id("t05-w5")).await;
    w.must_subscribe("t05/props", Q5::AtLeastOnce).await;
    let mut o = v5_options(&broker, &unique_id("t05-props"));
    let props = LastWillProperties {
        content_type: Some("text/plain".into()),
        payload_format_indicator: Some(1),
        response_topic: Some("t05/reply".into()),
        correlation_data: Some(Bytes::from_static(b"\x01\x02")),
        user_properties: vec![("k".into(), "v".into())],
        delay_interval: None,
        message_expiry_interval: None,
    };
    o.set_last_will(rumqttc::v5::mqttbytes::v5::LastWill::new(
        "t05/props",
        "bye",
        Q5::AtLeastOnce,
        false,
        Some(props),
    ));
    let c = V5Client::must_connect_with(o).await;
    c.drop_connection().await;
    let p = w.must_recv_publish(WAIT).await;
    assert_eq!(text(&p.payload), "bye");
    let got = p.properties.expect("will properties");
    assert_eq!(got.content_type.as_deref(), Some("text/plain"));
    assert_eq!(got.payload_format_indicator, Some(1));
    assert_eq!(got.response_topic.as_deref(), Some("t05/reply"));
    assert_eq!(got.correlation_data.as_deref(), Some(&b"\x01\x02"[..]));
    assert_eq!(
        got.user_properties,
        vec![("k".to_string(), "v".to_string())]
    );
}
