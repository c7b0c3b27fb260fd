//! Malformed and hostile input on raw sockets. Every case checks the server's
//! answer (MQTT 5: DISCONNECT, or CONNACK for CONNECT-phase errors, with the
//! reason code the spec names; MQTT 3.1.1: a plain close), that the socket is then
//! closed, and that `fleetmq_decode_errors_total` and
//! `fleetmq_connections_closed_total{reason}` moved. Then the same garbage and
//! random bytes are thrown at one node while healthy clients publish and receive:
//! they must lose nothing and the process must stay up.
//!
//! The bytes of bad packets are written by hand here (`wire`); our codec only
//! builds the valid CONNECTs and decodes what the server answers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fleetmq_codec::{Packet, ProtocolVersion};
use fleetmq_tests::raw::wire;
use fleetmq_tests::{
    names, text, unique_id, BrokerProcess, RawClient, Recv, V4Client, V5Client, WAIT,
};

/// Every node in this file refuses packets over 1 KiB.
const CONFIG: &str = "max_packet_size = 1024";

const MALFORMED: Option<&str> = Some("malformed_packet");
const PROTOCOL: Option<&str> = Some("protocol_error");

#[derive(Debug, Clone)]
enum Expect {
    /// MQTT 5: DISCONNECT with one of these reason codes, then the close.
    Disconnect(&'static [u8]),
    /// The close, with no packet before it.
    Closed,
    /// A CONNACK whose reason (or 3.1.1 return) code is one of these, then the close.
    ConnAck(&'static [u8]),
    /// The close, optionally preceded by a CONNACK with one of these codes.
    ClosedMaybeConnAck(&'static [u8]),
    /// Either a SUBACK whose only code is one of `suback` (and the connection stays
    /// usable), or DISCONNECT with one of `disconnect` then the close (MQTT 5), or a
    /// plain close (3.1.1).
    SubAckOrClose {
        suback: &'static [u8],
        disconnect: &'static [u8],
    },
}

#[derive(Debug, Clone)]
pub struct Case {
    name: &'static str,
    /// `Some(v)`: sent after a successful CONNECT at version `v`. `None`: the
    /// first bytes on a fresh connection.
    after_connect: Option<ProtocolVersion>,
    bytes: Vec<u8>,
    expect: Expect,
    /// The codec must refuse the bytes: `fleetmq_decode_errors_total` moves.
    decode_error: bool,
    /// `fleetmq_connections_closed_total{reason=...}` moves.
    close_reason: Option<&'static str>,
}

fn case(
    name: &'static str,
    after_connect: Option<ProtocolVersion>,
    bytes: Vec<u8>,
    expect: Expect,
    decode_error: bool,
    close_reason: Option<&'static str>,
) -> Case {
    Case {
        name,
        after_connect,
        bytes,
        expect,
        decode_error,
        close_reason,
    }
}

const V5: Option<ProtocolVersion> = Some(ProtocolVersion::V5);
const V311: Option<ProtocolVersion> = Some(ProtocolVersion::V3_1_1);
const FRESH: Option<ProtocolVersion> = None;

fn bad_remaining_length(first: u8) -> Vec<u8> {
    // Five bytes of remaining length: the fourth still has its continuation bit.
    vec![first, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]
}

/// A QoS 0 PUBLISH; `props` is `Some` for MQTT 5.
fn publish0(topic: &[u8], props: Option<&[u8]>) -> Vec<u8> {
    wire::publish(0x30, topic, None, props, b"payload")
}

fn v5_props(v5: bool) -> Option<&'static [u8]> {
    if v5 {
        Some(&[])
    } else {
        None
    }
}

/// Malformed packets after a valid CONNECT, for MQTT 5 (`v5`) or 3.1.1.
fn after_connect_cases(v5: bool) -> Vec<Case> {
    let version = if v5 { V5 } else { V311 };
    let p = v5_props(v5);
    let e = |codes: &'static [u8]| {
        if v5 {
            Expect::Disconnect(codes)
        } else {
            Expect::Closed
        }
    };
    let mut huge_header = vec![0x30];
    huge_header.extend(wire::varint(100_000_000));
    huge_header.extend_from_slice(&[0, 1, b'a', 0, 0, 0, 0, 0]);
    vec![
        case(
            "remaining length of 5 bytes",
            version,
            bad_remaining_length(0x30),
            e(&[0x81]),
            true,
            MALFORMED,
        ),
        case(
            "SUBSCRIBE with reserved flags 0000",
            version,
            wire::subscribe(0x80, 1, p, b"a/b", 0x01),
            e(&[0x81]),
            true,
            MALFORMED,
        ),
        case(
            "PUBREL with reserved flags 0000",
            version,
            vec![0x60, 0x02, 0x00, 0x01],
            e(&[0x81]),
            true,
            MALFORMED,
        ),
        case(
            "PUBLISH with QoS 3",
            version,
            wire::publish(0x36, b"a", Some(1), p, b"x"),
            e(&[0x81]),
            true,
            MALFORMED,
        ),
        case(
            "invalid UTF-8 in topic",
            version,
            publish0(b"a/\xC3\x28", p),
            e(&[0x81]),
            true,
            MALFORMED,
        ),
        case(
            "UTF-16 surrogate in topic",
            version,
            publish0(b"a/\xED\xA0\x80", p),
            e(&[0x81]),
            true,
            MALFORMED,
        ),
        case(
            "NUL character in topic",
            version,
            publish0(b"a\x00b", p),
            e(&[0x81]),
            true,
            MALFORMED,
        ),
        case(
            "wildcard in PUBLISH topic name",
            version,
            publish0(b"a/+/b", p),
            e(&[0x90]),
            false,
            if v5 { Some("topic_name_invalid") } else { None },
        ),
        case(
            "bad topic filter a/#/b",
            version,
            wire::subscribe(0x82, 1, p, b"a/#/b", 0x01),
            Expect::SubAckOrClose {
                suback: if v5 { &[0x8F] } else { &[0x80] },
                disconnect: &[0x81, 0x82, 0x8F],
            },
            false,
            None,
        ),
        case(
            "bad topic filter a/b+",
            version,
            wire::subscribe(0x82, 1, p, b"a/b+", 0x01),
            Expect::SubAckOrClose {
                suback: if v5 { &[0x8F] } else { &[0x80] },
                disconnect: &[0x81, 0x82, 0x8F],
            },
            false,
            None,
        ),
        case(
            "PUBLISH QoS 1 with packet id 0",
            version,
            wire::publish(0x32, b"a", Some(0), p, b"x"),
            e(&[0x82]),
            true,
            PROTOCOL,
        ),
        case(
            "SUBSCRIBE with packet id 0",
            version,
            wire::subscribe(0x82, 0, p, b"a", 0x01),
            e(&[0x82]),
            true,
            PROTOCOL,
        ),
        case(
            "SUBSCRIBE without any topic filter",
            version,
            wire::packet(0x82, &if v5 { vec![0, 1, 0] } else { vec![0, 1] }),
            e(&[0x82]),
            true,
            PROTOCOL,
        ),
        case(
            "second CONNECT",
            version,
            if v5 {
                wire::connect_v5("second")
            } else {
                wire::connect_v311("second")
            },
            e(&[0x82]),
            false,
            PROTOCOL,
        ),
        case(
            "reserved packet type 0",
            version,
            vec![0x00, 0x00],
            e(&[0x81]),
            true,
            MALFORMED,
        ),
        case(
            "PINGREQ with trailing bytes",
            version,
            vec![0xC0, 0x01, 0x00],
            e(&[0x81]),
            true,
            MALFORMED,
        ),
        case(
            "string longer than the packet",
            version,
            {
                let mut b = vec![0x30, 0x0A, 0x00, 0xC8];
                b.extend_from_slice(b"abcdefgh");
                b
            },
            e(&[0x81]),
            true,
            MALFORMED,
        ),
        case(
            "packet over max_packet_size",
            version,
            wire::publish(0x30, b"big", None, p, &[b'x'; 2000]),
            e(&[0x95]),
            true,
            Some("packet_too_large"),
        ),
        case(
            "remaining length of 100 MB",
            version,
            huge_header,
            e(&[0x95]),
            true,
            Some("packet_too_large"),
        ),
    ]
}

/// MQTT 5-only malformed packets after a valid CONNECT.
fn v5_only_cases() -> Vec<Case> {
    let d = Expect::Disconnect;
    vec![
        case(
            "unknown property identifier 0x7F",
            V5,
            publish0(b"a", Some(&[0x7F, 0x00])),
            d(&[0x81]),
            true,
            MALFORMED,
        ),
        case(
            "duplicated Payload Format Indicator",
            V5,
            publish0(b"a", Some(&[0x01, 0x01, 0x01, 0x01])),
            d(&[0x82]),
            true,
            PROTOCOL,
        ),
        case(
            // MQTT 5 §2.2.2.2: an identifier not valid for its packet type is a
            // Malformed Packet (0x81).
            "Session Expiry Interval property in PUBLISH",
            V5,
            publish0(b"a", Some(&[0x11, 0, 0, 0, 10])),
            d(&[0x81]),
            true,
            MALFORMED,
        ),
        case(
            "property length beyond the packet",
            V5,
            publish0(b"a", Some(&[0x01])),
            d(&[0x81]),
            true,
            MALFORMED,
        ),
        case(
            // §3.3.4: a client's PUBLISH must not carry a Subscription Identifier.
            "Subscription Identifier in a client PUBLISH",
            V5,
            publish0(b"a", Some(&[0x0B, 0x01])),
            d(&[0x82]),
            false,
            PROTOCOL,
        ),
        case(
            // §3.8.3.1: reserved bits 6-7 set: Malformed Packet.
            "subscription options with reserved bits",
            V5,
            wire::subscribe(0x82, 1, Some(&[]), b"a", 0xC1),
            d(&[0x81]),
            true,
            MALFORMED,
        ),
        case(
            // §3.8.3.1: "It is a Protocol Error to send a Retain Handling value of 3".
            "subscription options with Retain Handling 3",
            V5,
            wire::subscribe(0x82, 1, Some(&[]), b"a", 0x31),
            d(&[0x82]),
            true,
            PROTOCOL,
        ),
        case(
            // §3.8.3.1: Maximum QoS 3 is a Protocol Error.
            "subscription options with QoS 3",
            V5,
            wire::subscribe(0x82, 1, Some(&[]), b"a", 0x03),
            d(&[0x82]),
            true,
            PROTOCOL,
        ),
        case(
            // [MQTT-3.8.3-4]: No Local on a shared subscription is a Protocol Error.
            "No Local on a shared subscription",
            V5,
            wire::subscribe(0x82, 1, Some(&[]), b"$share/g/a", 0x05),
            d(&[0x82]),
            false,
            PROTOCOL,
        ),
        case(
            // §4.12: AUTH without an Authentication Method in CONNECT.
            "AUTH without authentication method",
            V5,
            vec![0xF0, 0x00],
            d(&[0x82]),
            false,
            PROTOCOL,
        ),
    ]
}

fn will_payload_v5() -> Vec<u8> {
    let mut p = wire::string(b"will-client");
    p.push(0); // will properties
    p.extend(wire::string(b"will/topic"));
    p.extend(wire::string(b"bye"));
    p
}

/// Bad first packets and bad CONNECTs.
fn connect_phase_cases() -> Vec<Case> {
    let id = wire::string(b"cid");
    let mut oversize_connect_payload = wire::string(b"cid");
    oversize_connect_payload.extend(wire::string(&[b'u'; 2000]));
    vec![
        case(
            "first packet PINGREQ",
            FRESH,
            vec![0xC0, 0x00],
            Expect::Closed,
            false,
            PROTOCOL,
        ),
        case(
            "first packet SUBSCRIBE",
            FRESH,
            wire::subscribe(0x82, 1, None, b"a", 0x00),
            Expect::Closed,
            false,
            PROTOCOL,
        ),
        case(
            "first packet PUBLISH",
            FRESH,
            publish0(b"a", None),
            Expect::Closed,
            false,
            PROTOCOL,
        ),
        case(
            "CONNECT with protocol level 6",
            FRESH,
            wire::connect(b"MQTT", 6, 0x02, 60, None, &id),
            Expect::ConnAck(&[0x84, 0x01]),
            true,
            Some("unsupported_protocol_version"),
        ),
        case(
            "CONNECT with protocol level 2",
            FRESH,
            wire::connect(b"MQTT", 2, 0x02, 60, None, &id),
            Expect::ConnAck(&[0x84, 0x01]),
            true,
            Some("unsupported_protocol_version"),
        ),
        case(
            "CONNECT with protocol name MQTX",
            FRESH,
            wire::connect(b"MQTX", 4, 0x02, 60, None, &id),
            Expect::ClosedMaybeConnAck(&[0x84, 0x01]),
            true,
            Some("unsupported_protocol_version"),
        ),
        case(
            "CONNECT with remaining length of 5 bytes",
            FRESH,
            bad_remaining_length(0x10),
            Expect::ClosedMaybeConnAck(&[0x81]),
            true,
            MALFORMED,
        ),
        case(
            "v5 CONNECT with the reserved flag set",
            FRESH,
            wire::connect(b"MQTT", 5, 0x03, 60, Some(&[]), &id),
            Expect::ConnAck(&[0x81]),
            true,
            MALFORMED,
        ),
        case(
            "3.1.1 CONNECT with the reserved flag set",
            FRESH,
            wire::connect(b"MQTT", 4, 0x03, 60, None, &id),
            Expect::Closed,
            true,
            None,
        ),
        case(
            "v5 CONNECT with will QoS 3",
            FRESH,
            wire::connect(b"MQTT", 5, 0x1E, 60, Some(&[]), &will_payload_v5()),
            Expect::ConnAck(&[0x81]),
            true,
            MALFORMED,
        ),
        case(
            "3.1.1 CONNECT with will QoS 3",
            FRESH,
            wire::connect(b"MQTT", 4, 0x1E, 60, None, &{
                let mut p = wire::string(b"cid");
                p.extend(wire::string(b"will/topic"));
                p.extend(wire::string(b"bye"));
                p
            }),
            Expect::Closed,
            true,
            None,
        ),
        case(
            "3.1.1 CONNECT with a password but no user name",
            FRESH,
            wire::connect(b"MQTT", 4, 0x42, 60, None, &{
                let mut p = wire::string(b"cid");
                p.extend(wire::string(b"secret"));
                p
            }),
            Expect::Closed,
            true,
            None,
        ),
        case(
            "v5 CONNECT with an invalid UTF-8 client id",
            FRESH,
            wire::connect(b"MQTT", 5, 0x02, 60, Some(&[]), &wire::string(b"\xC3\x28")),
            Expect::ConnAck(&[0x81]),
            true,
            MALFORMED,
        ),
        case(
            "v5 CONNECT with a NUL in the client id",
            FRESH,
            wire::connect(b"MQTT", 5, 0x02, 60, Some(&[]), &wire::string(b"a\x00b")),
            Expect::ConnAck(&[0x81]),
            true,
            MALFORMED,
        ),
        case(
            "v5 CONNECT with a duplicated Session Expiry Interval",
            FRESH,
            wire::connect(
                b"MQTT",
                5,
                0x02,
                60,
                Some(&[0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 2]),
                &id,
            ),
            Expect::ConnAck(&[0x82]),
            true,
            PROTOCOL,
        ),
        case(
            "v5 CONNECT with an unknown property",
            FRESH,
            wire::connect(b"MQTT", 5, 0x02, 60, Some(&[0x7F, 0x00]), &id),
            Expect::ConnAck(&[0x81]),
            true,
            MALFORMED,
        ),
        case(
            "v5 CONNECT with a Topic Alias property",
            FRESH,
            wire::connect(b"MQTT", 5, 0x02, 60, Some(&[0x23, 0, 1]), &id),
            Expect::ConnAck(&[0x81]),
            true,
            MALFORMED,
        ),
        case(
            // §3.1.2.11.3: Receive Maximum 0 is a Protocol Error.
            "v5 CONNECT with Receive Maximum 0",
            FRESH,
            wire::connect(b"MQTT", 5, 0x02, 60, Some(&[0x21, 0, 0]), &id),
            Expect::ConnAck(&[0x82]),
            true,
            PROTOCOL,
        ),
        case(
            // §3.1.2.11.4: Maximum Packet Size 0 is a Protocol Error.
            "v5 CONNECT with Maximum Packet Size 0",
            FRESH,
            wire::connect(b"MQTT", 5, 0x02, 60, Some(&[0x27, 0, 0, 0, 0]), &id),
            Expect::ConnAck(&[0x82]),
            true,
            PROTOCOL,
        ),
        case(
            "v5 CONNECT over max_packet_size",
            FRESH,
            wire::connect(b"MQTT", 5, 0x82, 60, Some(&[]), &oversize_connect_payload),
            Expect::ClosedMaybeConnAck(&[0x95]),
            true,
            Some("packet_too_large"),
        ),
        case(
            // No enhanced authentication: 0x8C Bad authentication method (or 0x87).
            "v5 CONNECT with an unsupported authentication method",
            FRESH,
            wire::connect(
                b"MQTT",
                5,
                0x02,
                60,
                Some(&[0x15, 0, 5, b'S', b'C', b'R', b'A', b'M']),
                &id,
            ),
            Expect::ConnAck(&[0x8C, 0x87]),
            false,
            None,
        ),
    ]
}

pub fn all_cases() -> Vec<Case> {
    let mut all = connect_phase_cases();
    all.extend(after_connect_cases(true));
    all.extend(v5_only_cases());
    all.extend(after_connect_cases(false));
    all
}

/// Parses one CONNACK at the front of `bytes` (either version) and returns its code.
fn connack_code(name: &str, bytes: &[u8]) -> u8 {
    assert!(
        bytes.len() >= 4 && bytes[0] == 0x20 && bytes[1] >= 2 && bytes[1] < 0x80,
        "{name}: expected a CONNACK, got bytes {bytes:02x?}"
    );
    let len = 2 + bytes[1] as usize;
    assert_eq!(
        bytes.len(),
        len,
        "{name}: bytes after the CONNACK: {bytes:02x?}"
    );
    bytes[3]
}

/// Runs one case on a new connection to `broker` and checks everything it promises.
pub async fn run_case(broker: &BrokerProcess, case: &Case) {
    eprintln!("case: {} ({:?})", case.name, case.after_connect);
    let name = case.name;
    let decode_before = broker.metric(names::DECODE_ERRORS, &[]);
    let reason_before = case
        .close_reason
        .map(|r| broker.metric(names::CONNECTIONS_CLOSED, &[("reason", r)]));

    let mut c = match case.after_connect {
        Some(v) => {
            RawClient::must_connect(broker.mqtt_addr, v, &unique_id("t07"), true)
                .await
                .0
        }
        None => RawClient::open(broker.mqtt_addr, ProtocolVersion::V5)
            .await
            .expect("tcp connect"),
    };
    // The server may close before it read everything: a failed write is fine.
    let _ = c.send_bytes(&case.bytes).await;

    let mut closed_by_server = true;
    match (&case.expect, case.after_connect) {
        (Expect::Disconnect(codes), _) => {
            let got = c.must_be_closed(WAIT).await;
            match got.last() {
                Some(Packet::Disconnect(d)) if codes.contains(&d.reason_code.as_u8()) => {}
                _ => panic!(
                    "{name}: expected DISCONNECT with {codes:02x?} then a close, got {got:?}"
                ),
            }
        }
        (Expect::Closed, Some(_)) => {
            let got = c.must_be_closed(WAIT).await;
            assert!(
                got.is_empty(),
                "{name}: expected a plain close, got {got:?}"
            );
        }
        (Expect::Closed, None) => {
            let (bytes, closed) = c.read_all_until_close(WAIT).await;
            assert!(
                closed,
                "{name}: the connection was not closed (got {bytes:02x?})"
            );
            assert!(
                bytes.is_empty(),
                "{name}: expected a plain close, got bytes {bytes:02x?}"
            );
        }
        (Expect::ConnAck(codes), _) => {
            let (bytes, closed) = c.read_all_until_close(WAIT).await;
            assert!(
                closed,
                "{name}: the connection was not closed (got {bytes:02x?})"
            );
            let code = connack_code(name, &bytes);
            assert!(
                codes.contains(&code),
                "{name}: CONNACK code {code:#04x}, expected one of {codes:02x?}"
            );
        }
        (Expect::ClosedMaybeConnAck(codes), _) => {
            let (bytes, closed) = c.read_all_until_close(WAIT).await;
            assert!(
                closed,
                "{name}: the connection was not closed (got {bytes:02x?})"
            );
            if !bytes.is_empty() {
                let code = connack_code(name, &bytes);
                assert!(
                    codes.contains(&code),
                    "{name}: CONNACK code {code:#04x}, expected one of {codes:02x?}"
                );
            }
        }
        (Expect::SubAckOrClose { suback, disconnect }, _) => match c.recv(WAIT).await {
            Ok(Recv::Packet(Packet::SubAck(s))) => {
                let codes: Vec<u8> = s.reason_codes.iter().map(|r| r.as_u8()).collect();
                assert!(
                    codes.len() == 1 && suback.contains(&codes[0]),
                    "{name}: SUBACK codes {codes:02x?}, expected one of {suback:02x?}"
                );
                // Refused by SUBACK: the connection goes on.
                c.must_send(Packet::PingReq).await;
                match c.must_recv(WAIT).await {
                    Packet::PingResp => {}
                    other => panic!(
                        "{name}: expected PINGRESP after the refused SUBSCRIBE, got {other:?}"
                    ),
                }
                closed_by_server = false;
            }
            Ok(Recv::Packet(Packet::Disconnect(d))) => {
                assert!(
                    case.after_connect == V5 && disconnect.contains(&d.reason_code.as_u8()),
                    "{name}: DISCONNECT {d:?}, expected one of {disconnect:02x?}"
                );
                c.must_be_closed(WAIT).await;
            }
            Ok(Recv::Closed) => assert!(
                case.after_connect == V311,
                "{name}: an MQTT 5 client must get a SUBACK or a DISCONNECT with a reason code"
            ),
            other => panic!("{name}: expected SUBACK or a close, got {other:?}"),
        },
    }

    if closed_by_server {
        if case.decode_error {
            let v = wait_metric(broker, names::DECODE_ERRORS, &[], decode_before + 1.0).await;
            assert!(
                v >= decode_before + 1.0,
                "{name}: fleetmq_decode_errors_total did not move ({v})"
            );
        }
        if let (Some(reason), Some(before)) = (case.close_reason, reason_before) {
            let v = wait_metric(
                broker,
                names::CONNECTIONS_CLOSED,
                &[("reason", reason)],
                before + 1.0,
            )
            .await;
            assert!(
                v >= before + 1.0,
                "{name}: fleetmq_connections_closed_total{{reason=\"{reason}\"}} stayed at {v}\n{}",
                broker.metrics().lines_for(names::CONNECTIONS_CLOSED)
            );
        }
    }
}

/// Sends a case's bytes and waits (a little) for the close, checking nothing:
/// for the storm, where only the other clients' fate matters.
async fn throw_case(broker: &BrokerProcess, case: &Case) {
    let mut c = match case.after_connect {
        Some(v) => {
            RawClient::must_connect(broker.mqtt_addr, v, &unique_id("t07"), true)
                .await
                .0
        }
        None => RawClient::open(broker.mqtt_addr, ProtocolVersion::V5)
            .await
            .expect("tcp connect"),
    };
    let _ = c.send_bytes(&case.bytes).await;
    let _ = c.read_all_until_close(Duration::from_secs(2)).await;
}

/// Polls a metric until it reaches `at_least` or 5 s pass; returns the last value.
async fn wait_metric(
    broker: &BrokerProcess,
    name: &str,
    labels: &[(&str, &str)],
    at_least: f64,
) -> f64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let v = broker.metric(name, labels);
        if v >= at_least || tokio::time::Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs the named cases one after the other on one node, each in its own task so
/// that one failing case does not hide the others; fails listing every failure.
async fn run_named(cases: Vec<Case>, names: &[&str]) {
    let broker = Arc::new(BrokerProcess::start_with_mqtt_config(CONFIG));
    let mut ran = 0;
    let mut failures = Vec::new();
    for c in cases.into_iter().filter(|c| names.contains(&c.name)) {
        ran += 1;
        let b = broker.clone();
        let name = c.name;
        if let Err(e) = tokio::spawn(async move { run_case(&b, &c).await }).await {
            let why = match e.try_into_panic() {
                Ok(p) => p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default(),
                Err(e) => e.to_string(),
            };
            failures.push(format!("- {name}: {why}"));
        }
    }
    assert_eq!(ran, names.len(), "a case name is misspelt");
    let mut broker = Arc::into_inner(broker).expect("no case task still holds the node");
    broker.must_be_alive();
    assert!(
        failures.is_empty(),
        "{} of {ran} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

macro_rules! cases_test {
    ($test:ident, $cases:expr, [$($name:expr),+ $(,)?]) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $test() {
            run_named($cases, &[$($name),+]).await;
        }
    };
}

cases_test!(
    v5_bad_remaining_length,
    after_connect_cases(true),
    ["remaining length of 5 bytes"]
);
cases_test!(
    v311_bad_remaining_length,
    after_connect_cases(false),
    ["remaining length of 5 bytes"]
);
cases_test!(
    v5_reserved_flags_and_types,
    after_connect_cases(true),
    [
        "SUBSCRIBE with reserved flags 0000",
        "PUBREL with reserved flags 0000",
        "PUBLISH with QoS 3",
        "reserved packet type 0",
        "PINGREQ with trailing bytes",
        "string longer than the packet",
    ]
);
cases_test!(
    v311_reserved_flags_and_types,
    after_connect_cases(false),
    [
        "SUBSCRIBE with reserved flags 0000",
        "PUBREL with reserved flags 0000",
        "PUBLISH with QoS 3",
        "reserved packet type 0",
        "PINGREQ with trailing bytes",
        "string longer than the packet",
    ]
);
cases_test!(
    v5_bad_strings,
    after_connect_cases(true),
    [
        "invalid UTF-8 in topic",
        "UTF-16 surrogate in topic",
        "NUL character in topic"
    ]
);
cases_test!(
    v311_bad_strings,
    after_connect_cases(false),
    [
        "invalid UTF-8 in topic",
        "UTF-16 surrogate in topic",
        "NUL character in topic"
    ]
);
cases_test!(
    v5_wildcard_in_topic_name_is_0x90,
    after_connect_cases(true),
    ["wildcard in PUBLISH topic name"]
);
cases_test!(
    v311_wildcard_in_topic_name_closes,
    after_connect_cases(false),
    ["wildcard in PUBLISH topic name"]
);
cases_test!(
    v5_bad_topic_filters,
    after_connect_cases(true),
    ["bad topic filter a/#/b", "bad topic filter a/b+"]
);
cases_test!(
    v311_bad_topic_filters,
    after_connect_cases(false),
    ["bad topic filter a/#/b", "bad topic filter a/b+"]
);
cases_test!(
    v5_packet_id_zero_and_empty_subscribe,
    after_connect_cases(true),
    [
        "PUBLISH QoS 1 with packet id 0",
        "SUBSCRIBE with packet id 0",
        "SUBSCRIBE without any topic filter"
    ]
);
cases_test!(
    v311_packet_id_zero_and_empty_subscribe,
    after_connect_cases(false),
    [
        "PUBLISH QoS 1 with packet id 0",
        "SUBSCRIBE with packet id 0",
        "SUBSCRIBE without any topic filter"
    ]
);
cases_test!(
    v5_second_connect_is_0x82,
    after_connect_cases(true),
    ["second CONNECT"]
);
cases_test!(
    v311_second_connect_closes,
    after_connect_cases(false),
    ["second CONNECT"]
);
cases_test!(
    v5_oversize_packets_are_0x95,
    after_connect_cases(true),
    ["packet over max_packet_size", "remaining length of 100 MB"]
);
cases_test!(
    v311_oversize_packets_close,
    after_connect_cases(false),
    ["packet over max_packet_size", "remaining length of 100 MB"]
);
cases_test!(
    v5_bad_properties,
    v5_only_cases(),
    [
        "unknown property identifier 0x7F",
        "duplicated Payload Format Indicator",
        "Session Expiry Interval property in PUBLISH",
        "property length beyond the packet",
        "Subscription Identifier in a client PUBLISH",
    ]
);
cases_test!(
    v5_bad_subscription_options,
    v5_only_cases(),
    [
        "subscription options with reserved bits",
        "subscription options with Retain Handling 3",
        "subscription options with QoS 3",
        "No Local on a shared subscription",
    ]
);
cases_test!(
    v5_auth_without_method_is_0x82,
    v5_only_cases(),
    ["AUTH without authentication method"]
);
cases_test!(
    first_packet_not_connect_closes,
    connect_phase_cases(),
    [
        "first packet PINGREQ",
        "first packet SUBSCRIBE",
        "first packet PUBLISH"
    ]
);
cases_test!(
    unknown_protocol_level_and_name,
    connect_phase_cases(),
    [
        "CONNECT with protocol level 6",
        "CONNECT with protocol level 2",
        "CONNECT with protocol name MQTX"
    ]
);
cases_test!(
    bad_connect_flags,
    connect_phase_cases(),
    [
        "CONNECT with remaining length of 5 bytes",
        "v5 CONNECT with the reserved flag set",
        "3.1.1 CONNECT with the reserved flag set",
        "v5 CONNECT with will QoS 3",
        "3.1.1 CONNECT with will QoS 3",
        "3.1.1 CONNECT with a password but no user name",
    ]
);
cases_test!(
    bad_connect_strings,
    connect_phase_cases(),
    [
        "v5 CONNECT with an invalid UTF-8 client id",
        "v5 CONNECT with a NUL in the client id"
    ]
);
cases_test!(
    bad_connect_properties,
    connect_phase_cases(),
    [
        "v5 CONNECT with a duplicated Session Expiry Interval",
        "v5 CONNECT with an unknown property",
        "v5 CONNECT with a Topic Alias property",
        "v5 CONNECT with Receive Maximum 0",
        "v5 CONNECT with Maximum Packet Size 0",
    ]
);
cases_test!(
    oversize_connect,
    connect_phase_cases(),
    ["v5 CONNECT over max_packet_size"]
);
cases_test!(
    unsupported_authentication_method,
    connect_phase_cases(),
    ["v5 CONNECT with an unsupported authentication method"]
);

/// A tiny deterministic generator (xorshift), so failures are reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_never_hurts_other_clients() {
    use rumqttc::v5::mqttbytes::QoS as Q5;
    use rumqttc::QoS;

    let mut broker = BrokerProcess::start_with_mqtt_config(CONFIG);
    let mut sub4 = V4Client::must_connect(&broker, &unique_id("t07-healthy4")).await;
    sub4.must_subscribe("t07/healthy", QoS::AtLeastOnce).await;
    let mut sub5 = V5Client::must_connect(&broker, &unique_id("t07-healthy5")).await;
    sub5.must_subscribe("t07/healthy", Q5::ExactlyOnce).await;

    // A publisher keeps going while the garbage flows.
    let done = Arc::new(AtomicBool::new(false));
    let mut publisher = V4Client::must_connect(&broker, &unique_id("t07-healthy-pub")).await;
    let publisher_done = done.clone();
    let publishing = tokio::spawn(async move {
        let mut sent = 0usize;
        while !publisher_done.load(Ordering::Relaxed) || sent < 100 {
            publisher
                .must_publish("t07/healthy", QoS::AtLeastOnce, false, format!("{sent}"))
                .await;
            sent += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        sent
    });

    let decode_before = broker.metric(names::DECODE_ERRORS, &[]);
    let cases = all_cases();
    for c in &cases {
        throw_case(&broker, c).await;
    }
    // Random bytes: on fresh connections, and after a valid CONNECT of each version.
    let mut rng = Rng(0x5eed_f1ee_7a11_u64);
    for i in 0..120 {
        let len = 1 + (rng.next() % 300) as usize;
        let garbage = rng.bytes(len);
        let mut c = match i % 3 {
            0 => RawClient::open(broker.mqtt_addr, ProtocolVersion::V5)
                .await
                .expect("tcp connect"),
            1 => {
                RawClient::must_connect(
                    broker.mqtt_addr,
                    ProtocolVersion::V5,
                    &unique_id("t07-rnd"),
                    true,
                )
                .await
                .0
            }
            _ => {
                RawClient::must_connect(
                    broker.mqtt_addr,
                    ProtocolVersion::V3_1_1,
                    &unique_id("t07-rnd"),
                    true,
                )
                .await
                .0
            }
        };
        let _ = c.send_bytes(&garbage).await;
        // Whatever the answer, the connection is dropped after a short while.
        let _ = c.read_all_until_close(Duration::from_millis(50)).await;
    }
    done.store(true, Ordering::Relaxed);
    let sent = publishing.await.expect("the publisher task panicked");

    for (who, got) in [
        (
            "v4",
            sub4.drain_publishes(Duration::from_secs(3))
                .await
                .iter()
                .map(|p| text(&p.payload))
                .collect::<Vec<_>>(),
        ),
        (
            "v5",
            sub5.drain_publishes(Duration::from_secs(3))
                .await
                .iter()
                .map(|p| text(&p.payload))
                .collect::<Vec<_>>(),
        ),
    ] {
        let want: Vec<String> = (0..sent).map(|i| i.to_string()).collect();
        assert_eq!(got.len(), want.len(), "{who} subscriber lost messages");
        assert_eq!(got, want, "{who} subscriber got messages out of order");
    }
    broker.must_be_alive();
    let (status, body) = broker.http_get("/healthz").expect("GET /healthz");
    assert_eq!(status, 200, "/healthz after the garbage: {body}");
    let decode_after = broker.metric(names::DECODE_ERRORS, &[]);
    assert!(
        decode_after > decode_before,
        "fleetmq_decode_errors_total did not move ({decode_before} -> {decode_after})"
    );
    // The healthy clients were never disconnected.
    sub4.must_publish("t07/healthy", QoS::AtLeastOnce, false, "still connected")
        .await;
    assert_eq!(
        text(&sub4.must_recv_publish(WAIT).await.payload),
        "still connected"
    );
}
