//! A listener behind a load balancer that speaks the PROXY protocol (v1 and v2): the
//! client's real address is the one the broker logs, a connection without the header
//! is closed and counted, and the plain listener beside it needs no header. (TLS and
//! WebSocket listeners are tested with mosquitto and paho in
//! `tests/python/test_listeners.py`.)

use std::net::SocketAddr;
use std::time::Duration;

use fleetmq_codec::{Packet, ProtocolVersion, Publish, QoS};
use fleetmq_tests::broker::free_port;
use fleetmq_tests::raw::connect_packet;
use fleetmq_tests::{unique_id, BrokerOptions, BrokerProcess, RawClient, Recv};

/// A broker with a second TCP listener, named `lb`, that requires PROXY headers.
fn broker_behind_a_balancer() -> (BrokerProcess, SocketAddr) {
    let lb: SocketAddr = format!("127.0.0.1:{}", free_port())
        .parse()
        .expect("address");
    let config = format!(
        r#"
[[listeners]]
name = "lb"
kind = "tcp"
listen = "{lb}"
proxy_protocol = true
"#
    );
    (
        BrokerProcess::start(BrokerOptions::new().config(&config)),
        lb,
    )
}

/// Sends `header` then a CONNECT for `client_id`; returns the client once CONNACK came.
async fn connect_through(lb: SocketAddr, header: &[u8], client_id: &str) -> RawClient {
    let mut client = RawClient::open(lb, ProtocolVersion::V5)
        .await
        .expect("open a TCP connection");
    client.must_send_bytes(header).await;
    client
        .must_send(Packet::Connect(Box::new(connect_packet(
            ProtocolVersion::V5,
            client_id,
            true,
            30,
        ))))
        .await;
    match client.must_recv(Duration::from_secs(10)).await {
        Packet::ConnAck(ack) => assert!(!ack.reason_code.is_error(), "{ack:?}"),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    client
}

/// The broker's "client connected" log line for `client_id`.
fn connected_line(broker: &BrokerProcess, client_id: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let log = broker.log_tail(2000);
        if let Some(line) = log
            .lines()
            .find(|l| l.contains("client connected") && l.contains(client_id))
        {
            return line.to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no 'client connected' line for {client_id}:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn a_proxy_v1_header_gives_the_clients_real_address() {
    let (broker, lb) = broker_behind_a_balancer();
    let id = unique_id("v1");
    let mut client =
        connect_through(lb, b"PROXY TCP4 203.0.113.9 127.0.0.1 40000 1883\r\n", &id).await;
    let line = connected_line(&broker, &id);
    assert!(line.contains("peer=203.0.113.9:40000"), "{line}");
    assert!(line.contains("listener=lb"), "{line}");
    // MQTT goes on as usual after the header.
    let topic = format!("t15/{id}");
    client.must_subscribe(1, &topic, QoS::AtMostOnce).await;
    client
        .must_publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: topic.as_str().into(),
            packet_id: None,
            properties: Default::default(),
            payload: bytes::Bytes::from_static(b"through the balancer"),
        })
        .await;
    let got = client.must_recv_publish(Duration::from_secs(10)).await;
    assert_eq!(&got.payload[..], b"through the balancer");
}

#[tokio::test]
async fn a_proxy_v2_header_gives_the_clients_real_address() {
    let (broker, lb) = broker_behind_a_balancer();
    let id = unique_id("v2");
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    // Version 2, PROXY; TCP over IPv6; 36 address bytes.
    header.extend_from_slice(&[0x21, 0x21, 0, 36]);
    let source: std::net::Ipv6Addr = "2001:db8::7".parse().expect("address");
    header.extend_from_slice(&source.octets());
    header.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
    header.extend_from_slice(&4711u16.to_be_bytes());
    header.extend_from_slice(&1883u16.to_be_bytes());
    let _client = connect_through(lb, &header, &id).await;
    let line = connected_line(&broker, &id);
    assert!(line.contains("peer=[2001:db8::7]:4711"), "{line}");
}

#[tokio::test]
async fn without_the_header_the_connection_is_closed_and_counted() {
    let (broker, lb) = broker_behind_a_balancer();
    let mut client = RawClient::open(lb, ProtocolVersion::V5)
        .await
        .expect("open a TCP connection");
    client
        .must_send(Packet::Connect(Box::new(connect_packet(
            ProtocolVersion::V5,
            &unique_id("nohdr"),
            true,
            30,
        ))))
        .await;
    match client.recv(Duration::from_secs(10)).await {
        Ok(Recv::Closed) => {}
        other => panic!("expected the connection closed without an answer, got {other:?}"),
    }
    broker.must_metric_at_least(
        "fleetmq_listener_handshake_failed_total",
        &[("listener", "lb")],
        1.0,
        Duration::from_secs(10),
    );
    // The plain listener needs no header.
    let (_plain, _) = RawClient::must_connect(
        broker.mqtt_addr,
        ProtocolVersion::V5,
        &unique_id("plain"),
        true,
    )
    .await;
}
