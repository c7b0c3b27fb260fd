//! `decode(encode(p)) == p` for every packet type and version, and the values
//! the encoder refuses.

mod common;

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use common::samples::samples;
use common::{any_packet, connect, must_decode, must_encode, versioned_packet, VERSIONS};
use fleetmq_codec::ProtocolVersion::{V3_1, V3_1_1, V5};
use fleetmq_codec::*;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn encode_then_decode_gives_the_packet_back((version, packet) in versioned_packet()) {
        let bytes = must_encode(&packet, version);
        prop_assert_eq!(must_decode(&bytes, version), packet);
    }

    #[test]
    fn v5_packets_round_trip(packet in any_packet(V5)) {
        let bytes = must_encode(&packet, V5);
        prop_assert_eq!(must_decode(&bytes, V5), packet);
    }

    /// A CONNECT is written for its own protocol and read back whatever the
    /// connection's version.
    #[test]
    fn connect_round_trips_on_any_connection(
        c in common::version().prop_flat_map(connect),
        connection in common::version(),
    ) {
        let packet = Packet::Connect(Box::new(c));
        let bytes = must_encode(&packet, connection);
        prop_assert_eq!(must_decode(&bytes, connection), packet);
    }
}

#[test]
fn samples_round_trip() {
    for version in VERSIONS {
        for packet in samples(version) {
            let bytes = must_encode(&packet, version);
            assert_eq!(must_decode(&bytes, version), packet, "{version:?}");
        }
    }
}

#[test]
fn every_packet_type_is_sampled() {
    for version in VERSIONS {
        let kinds: std::collections::BTreeSet<_> =
            samples(version).iter().map(Packet::kind).collect();
        assert_eq!(
            kinds.len(),
            if version.is_v5() { 15 } else { 14 },
            "{version:?}: {kinds:?}"
        );
    }
}

// --- Encode errors -----------------------------------------------------------

#[track_caller]
fn refuses(packet: &Packet, version: ProtocolVersion, expected: EncodeError) {
    let mut buf = BytesMut::from(&b"kept"[..]);
    assert_eq!(encode(packet, version, &mut buf), Err(expected));
    assert_eq!(
        &buf[..],
        b"kept",
        "a failed encode leaves the buffer as it was"
    );
}

fn publish(topic: &str) -> Publish {
    Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: Arc::from(topic),
        packet_id: None,
        properties: PublishProperties::default(),
        payload: Bytes::new(),
    }
}

#[test]
fn auth_cannot_be_encoded_for_v3() {
    let auth = Packet::Auth(Auth {
        reason_code: ReasonCode::Success,
        properties: AuthProperties::default(),
    });
    for version in [V3_1, V3_1_1] {
        refuses(&auth, version, EncodeError::NotInProtocol("AUTH"));
    }
}

#[test]
fn strings_longer_than_65535_bytes_are_refused() {
    let topic = "a".repeat(65_536);
    refuses(
        &Packet::Publish(publish(&topic)),
        V3_1_1,
        EncodeError::StringTooLong(65_536),
    );
    let ok = "a".repeat(65_535);
    assert!(encode(&Packet::Publish(publish(&ok)), V3_1_1, &mut BytesMut::new()).is_ok());
}

#[test]
fn binary_data_longer_than_65535_bytes_is_refused() {
    let mut p = publish("t");
    p.properties.correlation_data = Some(Bytes::from(vec![0; 70_000]));
    refuses(&Packet::Publish(p), V5, EncodeError::StringTooLong(70_000));
}

#[test]
fn packets_above_the_mqtt_limit_are_refused() {
    let mut p = publish("t");
    // 3 bytes of topic plus this payload is one byte over 268,435,455.
    p.payload = Bytes::from(vec![0; MAX_REMAINING_LENGTH - 2]);
    refuses(
        &Packet::Publish(p),
        V3_1_1,
        EncodeError::PacketTooLarge(MAX_REMAINING_LENGTH + 6),
    );
}

#[test]
fn qos_1_and_2_need_a_packet_id() {
    for qos in [QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let p = Publish {
            qos,
            ..publish("t")
        };
        refuses(
            &Packet::Publish(p),
            V5,
            EncodeError::MissingPacketId("PUBLISH"),
        );
    }
}

#[test]
fn packet_id_0_is_refused() {
    let p = Publish {
        qos: QoS::AtLeastOnce,
        packet_id: Some(0),
        ..publish("t")
    };
    refuses(
        &Packet::Publish(p),
        V3_1_1,
        EncodeError::ZeroPacketId("PUBLISH"),
    );
    refuses(
        &Packet::PubRel(PubResponse::new(0)),
        V5,
        EncodeError::ZeroPacketId("PUBREL"),
    );
}

#[test]
fn qos_0_drops_packet_id_and_dup() {
    let p = Publish {
        dup: true,
        packet_id: Some(5),
        ..publish("t")
    };
    assert_eq!(
        must_encode(&Packet::Publish(p), V3_1_1),
        b"\x30\x03\x00\x01t"
    );
}

#[test]
fn reason_codes_not_allowed_in_the_packet_are_refused() {
    let mut ack = PubResponse::new(1);
    ack.reason_code = ReasonCode::PacketIdentifierNotFound;
    refuses(
        &Packet::PubAck(ack.clone()),
        V5,
        EncodeError::InvalidReasonCode {
            packet: "PUBACK",
            code: 0x92,
        },
    );
    // 3.x has no reason code in acks to get wrong.
    assert_eq!(
        must_encode(&Packet::PubAck(ack), V3_1_1),
        b"\x40\x02\x00\x01"
    );

    let suback = SubAck {
        packet_id: 1,
        reason_codes: vec![ReasonCode::NoMatchingSubscribers],
        properties: AckProperties::default(),
    };
    let expected = EncodeError::InvalidReasonCode {
        packet: "SUBACK",
        code: 0x10,
    };
    refuses(&Packet::SubAck(suback.clone()), V5, expected.clone());
    refuses(&Packet::SubAck(suback), V3_1_1, expected);

    let disconnect = Disconnect::new(ReasonCode::ContinueAuthentication);
    let expected = EncodeError::InvalidReasonCode {
        packet: "DISCONNECT",
        code: 0x18,
    };
    refuses(&Packet::Disconnect(disconnect), V5, expected);
}

#[test]
fn invalid_property_values_are_refused() {
    let mut p = publish("t");
    p.properties.topic_alias = Some(0);
    refuses(
        &Packet::Publish(p),
        V5,
        EncodeError::InvalidPropertyValue(0x23),
    );
    let mut p = publish("t");
    p.properties.subscription_identifiers = vec![0];
    refuses(
        &Packet::Publish(p),
        V5,
        EncodeError::InvalidPropertyValue(0x0b),
    );
    let mut p = publish("t");
    p.properties.payload_format_indicator = Some(2);
    refuses(
        &Packet::Publish(p),
        V5,
        EncodeError::InvalidPropertyValue(0x01),
    );
    let subscribe = Subscribe {
        packet_id: 1,
        filters: vec![SubscribeFilter {
            filter: "a".into(),
            options: Default::default(),
        }],
        properties: SubscribeProperties {
            subscription_identifier: Some(268_435_456),
            user_properties: vec![],
        },
    };
    refuses(
        &Packet::Subscribe(subscribe),
        V5,
        EncodeError::InvalidPropertyValue(0x0b),
    );
}

#[test]
fn maximum_qos_2_is_said_by_leaving_the_property_out() {
    let connack = ConnAck {
        session_present: false,
        reason_code: ReasonCode::Success,
        properties: ConnAckProperties {
            maximum_qos: Some(QoS::ExactlyOnce),
            ..Default::default()
        },
    };
    assert_eq!(
        must_encode(&Packet::ConnAck(connack), V5),
        b"\x20\x03\x00\x00\x00"
    );
}

#[test]
fn empty_filter_lists_are_refused() {
    let subscribe = Subscribe {
        packet_id: 1,
        filters: vec![],
        properties: SubscribeProperties::default(),
    };
    refuses(
        &Packet::Subscribe(subscribe),
        V5,
        EncodeError::NoTopicFilters("SUBSCRIBE"),
    );
    let unsubscribe = Unsubscribe {
        packet_id: 1,
        filters: vec![],
        user_properties: vec![],
    };
    refuses(
        &Packet::Unsubscribe(unsubscribe),
        V3_1,
        EncodeError::NoTopicFilters("UNSUBSCRIBE"),
    );
}

#[test]
fn nul_in_strings_is_refused() {
    refuses(
        &Packet::Publish(publish("a\0b")),
        V3_1_1,
        EncodeError::DisallowedCharacter,
    );
}

#[test]
fn publish_without_topic_needs_an_alias_in_v5() {
    refuses(
        &Packet::Publish(publish("")),
        V3_1_1,
        EncodeError::EmptyTopicName,
    );
    refuses(
        &Packet::Publish(publish("")),
        V5,
        EncodeError::EmptyTopicName,
    );
    let mut p = publish("");
    p.properties.topic_alias = Some(1);
    // The alias is a v5 property: 3.x cannot use it.
    refuses(
        &Packet::Publish(p.clone()),
        V3_1_1,
        EncodeError::EmptyTopicName,
    );
    assert!(encode(&Packet::Publish(p), V5, &mut BytesMut::new()).is_ok());
}

#[test]
fn v3_connect_cannot_carry_a_password_alone() {
    let connect = Connect {
        protocol: V3_1_1,
        clean_start: true,
        keep_alive: 0,
        client_id: "c".into(),
        will: None,
        username: None,
        password: Some(Bytes::from_static(b"pw")),
        properties: ConnectProperties::default(),
    };
    refuses(
        &Packet::Connect(Box::new(connect)),
        V3_1_1,
        EncodeError::PasswordWithoutUsername,
    );
}

#[test]
fn v3_encoding_leaves_out_v5_fields() {
    let mut p = publish("t");
    p.properties.content_type = Some("text/plain".into());
    p.properties.user_properties = vec![("k".into(), "v".into())];
    assert_eq!(
        must_encode(&Packet::Publish(p), V3_1_1),
        b"\x30\x03\x00\x01t"
    );
}
