//! Byte-exact vectors, worked out by hand from the specs: each is decoded to
//! the expected value and that value encodes back to the same bytes.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::{must_decode, must_encode};
use fleetmq_codec::ProtocolVersion::{V3_1, V3_1_1, V5};
use fleetmq_codec::*;

#[track_caller]
fn check(version: ProtocolVersion, bytes: &[u8], expected: Packet) {
    assert_eq!(
        must_decode(bytes, version),
        expected,
        "decoding {bytes:02x?}"
    );
    assert_eq!(
        must_encode(&expected, version),
        bytes,
        "encoding {expected:?}"
    );
}

fn connect(protocol: ProtocolVersion) -> Connect {
    Connect {
        protocol,
        clean_start: true,
        keep_alive: 60,
        client_id: "abc".into(),
        will: None,
        username: None,
        password: None,
        properties: ConnectProperties::default(),
    }
}

fn publish(qos: QoS, packet_id: Option<u16>, topic: &str, payload: &'static [u8]) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: Arc::from(topic),
        packet_id,
        properties: PublishProperties::default(),
        payload: Bytes::from_static(payload),
    }
}

#[test]
fn connect_v3_1() {
    let bytes = b"\x10\x11\x00\x06MQIsdp\x03\x02\x00\x3c\x00\x03abc";
    check(V3_1, bytes, Packet::Connect(Box::new(connect(V3_1))));
}

#[test]
fn connect_v3_1_1() {
    let bytes = b"\x10\x0f\x00\x04MQTT\x04\x02\x00\x3c\x00\x03abc";
    check(V3_1_1, bytes, Packet::Connect(Box::new(connect(V3_1_1))));
}

#[test]
fn connect_v5_without_properties() {
    let bytes = b"\x10\x10\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x03abc";
    check(V5, bytes, Packet::Connect(Box::new(connect(V5))));
}

#[test]
fn connect_is_decoded_whatever_the_connection_version() {
    let bytes = b"\x10\x10\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x03abc";
    assert_eq!(
        must_decode(bytes, V3_1_1),
        Packet::Connect(Box::new(connect(V5)))
    );
}

#[test]
fn connect_v5_with_session_expiry() {
    let bytes = b"\x10\x15\x00\x04MQTT\x05\x02\x00\x3c\x05\x11\x00\x00\x00\x0a\x00\x03abc";
    let mut expected = connect(V5);
    expected.properties.session_expiry_interval = Some(10);
    check(V5, bytes, Packet::Connect(Box::new(expected)));
}

#[test]
fn connect_v3_1_1_with_will_username_and_password() {
    // Flags 0xEE: user name, password, will retain, will QoS 1, will, clean session.
    let bytes =
        b"\x10\x1a\x00\x04MQTT\x04\xee\x00\x0a\x00\x01c\x00\x01t\x00\x02hi\x00\x01u\x00\x01p";
    let expected = Connect {
        protocol: V3_1_1,
        clean_start: true,
        keep_alive: 10,
        client_id: "c".into(),
        will: Some(LastWill {
            topic: Arc::from("t"),
            payload: Bytes::from_static(b"hi"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: WillProperties::default(),
        }),
        username: Some("u".into()),
        password: Some(Bytes::from_static(b"p")),
        properties: ConnectProperties::default(),
    };
    check(V3_1_1, bytes, Packet::Connect(Box::new(expected)));
}

#[test]
fn connack_each_version() {
    let ack = |session_present, reason_code| {
        Packet::ConnAck(ConnAck {
            session_present,
            reason_code,
            properties: ConnAckProperties::default(),
        })
    };
    check(V3_1, b"\x20\x02\x00\x00", ack(false, ReasonCode::Success));
    check(V3_1_1, b"\x20\x02\x01\x00", ack(true, ReasonCode::Success));
    check(
        V3_1_1,
        b"\x20\x02\x00\x05",
        ack(false, ReasonCode::NotAuthorized),
    );
    check(V5, b"\x20\x03\x01\x00\x00", ack(true, ReasonCode::Success));
    check(
        V5,
        b"\x20\x03\x00\x87\x00",
        ack(false, ReasonCode::NotAuthorized),
    );
}

#[test]
fn connack_v3_maps_reason_codes_to_return_codes() {
    let ack = ConnAck {
        session_present: false,
        reason_code: ReasonCode::Banned,
        properties: ConnAckProperties::default(),
    };
    assert_eq!(
        must_encode(&Packet::ConnAck(ack), V3_1_1),
        b"\x20\x02\x00\x05"
    );
}

#[test]
fn connack_v3_1_ignores_session_present() {
    let ack = ConnAck {
        session_present: true,
        reason_code: ReasonCode::Success,
        properties: ConnAckProperties::default(),
    };
    assert_eq!(
        must_encode(&Packet::ConnAck(ack), V3_1),
        b"\x20\x02\x00\x00"
    );
}

#[test]
fn publish_v3() {
    for version in [V3_1, V3_1_1] {
        let p = publish(QoS::AtMostOnce, None, "a/b", b"hi");
        check(version, b"\x30\x07\x00\x03a/bhi", Packet::Publish(p));
        let p = Publish {
            dup: true,
            retain: true,
            ..publish(QoS::AtLeastOnce, Some(10), "a/b", b"hi")
        };
        check(
            version,
            b"\x3b\x09\x00\x03a/b\x00\x0ahi",
            Packet::Publish(p),
        );
    }
}

#[test]
fn publish_v5() {
    let p = publish(QoS::AtMostOnce, None, "a/b", b"hi");
    check(V5, b"\x30\x08\x00\x03a/b\x00hi", Packet::Publish(p));
    let mut p = publish(QoS::ExactlyOnce, Some(1), "", b"hi");
    p.properties.topic_alias = Some(5);
    check(
        V5,
        b"\x34\x0a\x00\x00\x00\x01\x03\x23\x00\x05hi",
        Packet::Publish(p),
    );
}

#[test]
fn publish_two_byte_remaining_length() {
    let payload: &'static [u8] = &[0x55; 200];
    let mut bytes = vec![0x30, 0xcb, 0x01, 0x00, 0x01, b'a'];
    bytes.extend_from_slice(payload);
    check(
        V3_1_1,
        &bytes,
        Packet::Publish(publish(QoS::AtMostOnce, None, "a", payload)),
    );
}

#[test]
fn publish_payload_shares_the_read_buffer() {
    let mut buf = bytes::BytesMut::from(&b"\x30\x07\x00\x03a/bhi"[..]);
    let start = buf.as_ptr() as usize;
    let Some(Packet::Publish(p)) = decode(&mut buf, V3_1_1, 1024).unwrap() else {
        panic!()
    };
    assert_eq!(p.payload.as_ptr() as usize, start + 7);
}

#[test]
fn pub_responses() {
    for version in [V3_1, V3_1_1, V5] {
        check(
            version,
            b"\x40\x02\x00\x01",
            Packet::PubAck(PubResponse::new(1)),
        );
        check(
            version,
            b"\x50\x02\x00\x02",
            Packet::PubRec(PubResponse::new(2)),
        );
        check(
            version,
            b"\x62\x02\x00\x03",
            Packet::PubRel(PubResponse::new(3)),
        );
        check(
            version,
            b"\x70\x02\xff\xff",
            Packet::PubComp(PubResponse::new(0xffff)),
        );
    }
}

#[test]
fn pub_responses_v5_with_reason_and_properties() {
    let ack = |reason_code, reason_string: Option<&str>| PubResponse {
        packet_id: 1,
        reason_code,
        properties: AckProperties {
            reason_string: reason_string.map(str::to_owned),
            user_properties: vec![],
        },
    };
    // The short form without a property length decodes; the encoder always
    // writes the length so that every client can parse it.
    assert_eq!(
        must_decode(b"\x40\x03\x00\x01\x10", V5),
        Packet::PubAck(ack(ReasonCode::NoMatchingSubscribers, None))
    );
    check(
        V5,
        b"\x40\x04\x00\x01\x10\x00",
        Packet::PubAck(ack(ReasonCode::NoMatchingSubscribers, None)),
    );
    check(
        V5,
        b"\x40\x08\x00\x01\x00\x04\x1f\x00\x01x",
        Packet::PubAck(ack(ReasonCode::Success, Some("x"))),
    );
    check(
        V5,
        b"\x62\x04\x00\x01\x92\x00",
        Packet::PubRel(ack(ReasonCode::PacketIdentifierNotFound, None)),
    );
}

#[test]
fn pub_responses_v5_accept_reason_code_with_empty_property_length() {
    assert_eq!(
        must_decode(b"\x40\x04\x00\x01\x00\x00", V5),
        Packet::PubAck(PubResponse::new(1))
    );
}

#[test]
fn subscribe_and_suback_v3() {
    for version in [V3_1, V3_1_1] {
        let filter = SubscribeFilter {
            filter: "a/b".into(),
            options: SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                ..Default::default()
            },
        };
        let subscribe = Subscribe {
            packet_id: 1,
            filters: vec![filter],
            properties: SubscribeProperties::default(),
        };
        check(
            version,
            b"\x82\x08\x00\x01\x00\x03a/b\x01",
            Packet::Subscribe(subscribe),
        );
        let suback = SubAck {
            packet_id: 1,
            reason_codes: vec![
                ReasonCode::Success,
                ReasonCode::GrantedQos1,
                ReasonCode::UnspecifiedError,
            ],
            properties: AckProperties::default(),
        };
        check(
            version,
            b"\x90\x05\x00\x01\x00\x01\x80",
            Packet::SubAck(suback),
        );
    }
}

#[test]
fn suback_v3_encodes_any_failure_as_0x80() {
    let suback = SubAck {
        packet_id: 1,
        reason_codes: vec![ReasonCode::NotAuthorized, ReasonCode::GrantedQos2],
        properties: AckProperties::default(),
    };
    assert_eq!(
        must_encode(&Packet::SubAck(suback), V3_1_1),
        b"\x90\x04\x00\x01\x80\x02"
    );
}

#[test]
fn subscribe_and_suback_v5() {
    let subscribe = Subscribe {
        packet_id: 1,
        filters: vec![SubscribeFilter {
            filter: "a/b".into(),
            options: SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                no_local: true,
                retain_as_published: true,
                retain_handling: RetainHandling::DoNotSend,
            },
        }],
        properties: SubscribeProperties {
            subscription_identifier: Some(7),
            user_properties: vec![],
        },
    };
    check(
        V5,
        b"\x82\x0b\x00\x01\x02\x0b\x07\x00\x03a/b\x2d",
        Packet::Subscribe(subscribe),
    );
    let suback = SubAck {
        packet_id: 1,
        reason_codes: vec![ReasonCode::Success, ReasonCode::NotAuthorized],
        properties: AckProperties::default(),
    };
    check(V5, b"\x90\x05\x00\x01\x00\x00\x87", Packet::SubAck(suback));
}

#[test]
fn unsubscribe_and_unsuback() {
    for version in [V3_1, V3_1_1] {
        let unsubscribe = Unsubscribe {
            packet_id: 1,
            filters: vec!["a/b".into()],
            user_properties: vec![],
        };
        check(
            version,
            b"\xa2\x07\x00\x01\x00\x03a/b",
            Packet::Unsubscribe(unsubscribe),
        );
        let unsuback = UnsubAck {
            packet_id: 1,
            reason_codes: vec![],
            properties: AckProperties::default(),
        };
        check(version, b"\xb0\x02\x00\x01", Packet::UnsubAck(unsuback));
    }
    let unsubscribe = Unsubscribe {
        packet_id: 1,
        filters: vec!["a/b".into()],
        user_properties: vec![],
    };
    check(
        V5,
        b"\xa2\x08\x00\x01\x00\x00\x03a/b",
        Packet::Unsubscribe(unsubscribe),
    );
    let unsuback = UnsubAck {
        packet_id: 1,
        reason_codes: vec![ReasonCode::NoSubscriptionExisted],
        properties: AckProperties::default(),
    };
    check(V5, b"\xb0\x04\x00\x01\x00\x11", Packet::UnsubAck(unsuback));
}

#[test]
fn unsuback_v3_leaves_out_reason_codes() {
    let unsuback = UnsubAck {
        packet_id: 1,
        reason_codes: vec![ReasonCode::Success],
        properties: AckProperties::default(),
    };
    assert_eq!(
        must_encode(&Packet::UnsubAck(unsuback), V3_1_1),
        b"\xb0\x02\x00\x01"
    );
}

#[test]
fn ping() {
    for version in [V3_1, V3_1_1, V5] {
        check(version, b"\xc0\x00", Packet::PingReq);
        check(version, b"\xd0\x00", Packet::PingResp);
    }
}

#[test]
fn disconnect() {
    let normal = Packet::Disconnect(Disconnect::new(ReasonCode::Success));
    for version in [V3_1, V3_1_1, V5] {
        check(version, b"\xe0\x00", normal.clone());
    }
    let with_will = Packet::Disconnect(Disconnect::new(ReasonCode::DisconnectWithWillMessage));
    assert_eq!(must_decode(b"\xe0\x01\x04", V5), with_will);
    check(V5, b"\xe0\x02\x04\x00", with_will.clone());
    // 3.x has no reason code to carry.
    assert_eq!(must_encode(&with_will, V3_1_1), b"\xe0\x00");
    let expiry = Disconnect {
        reason_code: ReasonCode::Success,
        properties: DisconnectProperties {
            session_expiry_interval: Some(0),
            ..Default::default()
        },
    };
    check(
        V5,
        b"\xe0\x07\x00\x05\x11\x00\x00\x00\x00",
        Packet::Disconnect(expiry),
    );
}

#[test]
fn auth() {
    let success = Auth {
        reason_code: ReasonCode::Success,
        properties: AuthProperties::default(),
    };
    check(V5, b"\xf0\x00", Packet::Auth(success));
    let next = Auth {
        reason_code: ReasonCode::ContinueAuthentication,
        properties: AuthProperties {
            authentication_method: Some("M".into()),
            ..Default::default()
        },
    };
    check(V5, b"\xf0\x06\x18\x04\x15\x00\x01M", Packet::Auth(next));
}

#[test]
fn user_properties_keep_order_and_duplicates() {
    let ack = PubResponse {
        packet_id: 1,
        reason_code: ReasonCode::Success,
        properties: AckProperties {
            reason_string: None,
            user_properties: vec![("k".into(), "2".into()), ("k".into(), "1".into())],
        },
    };
    check(
        V5,
        b"\x40\x12\x00\x01\x00\x0e\x26\x00\x01k\x00\x012\x26\x00\x01k\x00\x011",
        Packet::PubAck(ack),
    );
}

#[test]
fn publish_with_several_subscription_identifiers() {
    let mut p = publish(QoS::AtMostOnce, None, "t", b"");
    p.properties.subscription_identifiers = vec![1, 200];
    check(
        V5,
        b"\x30\x09\x00\x01t\x05\x0b\x01\x0b\xc8\x01",
        Packet::Publish(p),
    );
}
