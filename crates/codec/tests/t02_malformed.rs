//! One test per validation rule: the exact error and the reason code the server
//! would send for it.

mod common;

use bytes::{Bytes, BytesMut};
use common::{decode_err, mqtt_str, must_decode, packet, NO_LIMIT};
use fleetmq_codec::ProtocolVersion::{V3_1, V3_1_1, V5};
use fleetmq_codec::ReasonCode::{MalformedPacket, ProtocolError};
use fleetmq_codec::*;

#[track_caller]
fn rejects(bytes: &[u8], version: ProtocolVersion, expected: DecodeError, reason: ReasonCode) {
    let err = decode_err(bytes, version);
    assert_eq!(err, expected, "decoding {bytes:02x?}");
    assert_eq!(err.reason_code(), reason, "reason code of {err}");
}

fn connect_body(name: &[u8], level: u8, flags: u8, rest: &[u8]) -> Vec<u8> {
    let mut body = mqtt_str(name);
    body.extend_from_slice(&[level, flags, 0x00, 0x3c]);
    body.extend_from_slice(rest);
    body
}

/// A v5 CONNECT (clean start, client id "c") carrying `props`.
fn v5_connect_with(props: &[u8]) -> Vec<u8> {
    let mut rest = vec![props.len() as u8];
    rest.extend_from_slice(props);
    rest.extend_from_slice(&mqtt_str(b"c"));
    packet(0x10, &connect_body(b"MQTT", 5, 0x02, &rest))
}

/// A v5 QoS 0 PUBLISH to "t" carrying `props`.
fn v5_publish_with(props: &[u8]) -> Vec<u8> {
    let mut body = mqtt_str(b"t");
    body.push(props.len() as u8);
    body.extend_from_slice(props);
    packet(0x30, &body)
}

/// A v5 PUBACK with reason Success carrying `props`.
fn v5_puback_with(props: &[u8]) -> Vec<u8> {
    let mut body = vec![0x00, 0x01, 0x00, props.len() as u8];
    body.extend_from_slice(props);
    packet(0x40, &body)
}

// --- Fixed header ----------------------------------------------------------

#[test]
fn packet_type_0_is_reserved() {
    rejects(
        b"\x00\x00",
        V5,
        DecodeError::InvalidPacketType(0),
        MalformedPacket,
    );
}

#[test]
fn auth_does_not_exist_in_v3() {
    for version in [V3_1, V3_1_1] {
        rejects(
            b"\xf0\x00",
            version,
            DecodeError::InvalidPacketType(15),
            MalformedPacket,
        );
    }
}

#[test]
fn reserved_flags_must_match_the_spec() {
    let cases: &[(&[u8], &str, u8)] = &[
        (b"\x11\x00", "CONNECT", 0x1),
        (b"\x28\x02\x00\x00", "CONNACK", 0x8),
        (b"\x41\x02\x00\x01", "PUBACK", 0x1),
        (b"\x52\x02\x00\x01", "PUBREC", 0x2),
        (b"\x60\x02\x00\x01", "PUBREL", 0x0),
        (b"\x63\x02\x00\x01", "PUBREL", 0x3),
        (b"\x72\x02\x00\x01", "PUBCOMP", 0x2),
        (b"\x80\x02\x00\x01", "SUBSCRIBE", 0x0),
        (b"\x92\x02\x00\x01", "SUBACK", 0x2),
        (b"\xa0\x02\x00\x01", "UNSUBSCRIBE", 0x0),
        (b"\xb4\x02\x00\x01", "UNSUBACK", 0x4),
        (b"\xc1\x00", "PINGREQ", 0x1),
        (b"\xdf\x00", "PINGRESP", 0xf),
        (b"\xe2\x00", "DISCONNECT", 0x2),
        (b"\xf1\x00", "AUTH", 0x1),
    ];
    for &(bytes, name, flags) in cases {
        let expected = DecodeError::InvalidFlags {
            packet: name,
            flags,
        };
        rejects(bytes, V5, expected, MalformedPacket);
    }
}

#[test]
fn bad_first_byte_is_refused_before_the_rest_arrives() {
    let mut buf = BytesMut::from(&b"\x80"[..]);
    let err = decode(&mut buf, V3_1_1, NO_LIMIT).unwrap_err();
    assert_eq!(
        err,
        DecodeError::InvalidFlags {
            packet: "SUBSCRIBE",
            flags: 0
        }
    );
}

#[test]
fn dup_on_subscribe_is_accepted_in_v3_1_only() {
    let bytes = b"\x8a\x06\x00\x01\x00\x01a\x00";
    assert!(matches!(must_decode(bytes, V3_1), Packet::Subscribe(_)));
    let expected = DecodeError::InvalidFlags {
        packet: "SUBSCRIBE",
        flags: 0xa,
    };
    rejects(bytes, V3_1_1, expected, MalformedPacket);
}

#[test]
fn publish_qos_3_is_invalid() {
    rejects(
        b"\x36\x05\x00\x01t\x00\x01",
        V3_1_1,
        DecodeError::InvalidQos(3),
        MalformedPacket,
    );
}

#[test]
fn publish_dup_with_qos_0_is_malformed() {
    let expected = DecodeError::InvalidFlags {
        packet: "PUBLISH",
        flags: 0b1000,
    };
    rejects(b"\x38\x03\x00\x01t", V3_1_1, expected, MalformedPacket);
}

#[test]
fn remaining_length_of_five_bytes_is_refused_at_the_fourth() {
    // The fourth byte still has its continuation bit: no fifth byte is needed to know.
    rejects(
        b"\x30\xff\xff\xff\xff",
        V5,
        DecodeError::MalformedRemainingLength,
        MalformedPacket,
    );
    rejects(
        b"\x30\x80\x80\x80\x80",
        V5,
        DecodeError::MalformedRemainingLength,
        MalformedPacket,
    );
}

#[test]
fn overlong_remaining_length_is_refused() {
    rejects(
        b"\xc0\x80\x00",
        V5,
        DecodeError::MalformedRemainingLength,
        MalformedPacket,
    );
    rejects(
        b"\x30\x81\x80\x00",
        V5,
        DecodeError::MalformedRemainingLength,
        MalformedPacket,
    );
}

#[test]
fn four_byte_remaining_length_is_accepted() {
    // 2,097,152 needs four bytes; only the header is here, so it waits for more.
    let mut buf = BytesMut::from(&b"\x30\x80\x80\x80\x01"[..]);
    assert_eq!(decode(&mut buf, V5, NO_LIMIT).unwrap(), None);
    assert_eq!(buf.len(), 5);
}

#[test]
fn packet_too_large_is_refused_from_the_fixed_header() {
    // Remaining length 200: 203 bytes in all, with only the header received.
    let mut buf = BytesMut::from(&b"\x30\xc8\x01"[..]);
    let err = decode(&mut buf, V5, 100).unwrap_err();
    assert_eq!(
        err,
        DecodeError::PacketTooLarge {
            size: 203,
            max: 100
        }
    );
    assert_eq!(err.reason_code(), ReasonCode::PacketTooLarge);
}

#[test]
fn packet_of_exactly_the_maximum_size_is_accepted() {
    let mut buf = BytesMut::from(&b"\x40\x02\x00\x01"[..]);
    assert!(decode(&mut buf, V5, 4).unwrap().is_some());
}

#[test]
fn incomplete_packet_is_not_consumed() {
    let mut buf = BytesMut::from(&b"\x30\x07\x00\x03a/bh"[..]);
    assert_eq!(decode(&mut buf, V5, NO_LIMIT).unwrap(), None);
    assert_eq!(&buf[..], b"\x30\x07\x00\x03a/bh");
    let mut empty = BytesMut::new();
    assert_eq!(decode(&mut empty, V5, NO_LIMIT).unwrap(), None);
}

// --- Lengths ---------------------------------------------------------------

#[test]
fn content_shorter_than_the_packet_needs_is_truncated() {
    rejects(
        b"\x40\x01\x00",
        V3_1_1,
        DecodeError::Truncated("packet identifier"),
        MalformedPacket,
    );
    rejects(
        b"\x30\x02\x00\x05",
        V3_1_1,
        DecodeError::Truncated("topic name"),
        MalformedPacket,
    );
    rejects(
        b"\x20\x01\x00",
        V3_1_1,
        DecodeError::Truncated("reason code"),
        MalformedPacket,
    );
}

#[test]
fn trailing_bytes_are_refused() {
    rejects(
        b"\x40\x03\x00\x01\x00",
        V3_1_1,
        DecodeError::TrailingBytes(1),
        MalformedPacket,
    );
    rejects(
        b"\xc0\x01\x00",
        V5,
        DecodeError::TrailingBytes(1),
        MalformedPacket,
    );
    rejects(
        b"\xd0\x02\x00\x00",
        V5,
        DecodeError::TrailingBytes(2),
        MalformedPacket,
    );
    rejects(
        b"\xe0\x01\x00",
        V3_1_1,
        DecodeError::TrailingBytes(1),
        MalformedPacket,
    );
    rejects(
        b"\x20\x03\x00\x00\x00",
        V3_1_1,
        DecodeError::TrailingBytes(1),
        MalformedPacket,
    );
}

#[test]
fn v3_unsuback_has_no_payload() {
    rejects(
        b"\xb0\x03\x00\x01\x00",
        V3_1_1,
        DecodeError::TrailingBytes(1),
        MalformedPacket,
    );
}

#[test]
fn v5_connack_without_property_length_is_truncated() {
    rejects(
        b"\x20\x02\x00\x00",
        V5,
        DecodeError::Truncated("property length"),
        MalformedPacket,
    );
}

#[test]
fn auth_with_a_reason_code_needs_a_property_length() {
    rejects(
        b"\xf0\x01\x18",
        V5,
        DecodeError::Truncated("property length"),
        MalformedPacket,
    );
}

// --- Packet identifiers ----------------------------------------------------

#[test]
fn packet_identifier_0_is_refused() {
    let cases: &[(&[u8], &str)] = &[
        (b"\x32\x05\x00\x01t\x00\x00", "PUBLISH"),
        (b"\x40\x02\x00\x00", "PUBACK"),
        (b"\x50\x02\x00\x00", "PUBREC"),
        (b"\x62\x02\x00\x00", "PUBREL"),
        (b"\x70\x02\x00\x00", "PUBCOMP"),
        (b"\x82\x06\x00\x00\x00\x01a\x00", "SUBSCRIBE"),
        (b"\x90\x03\x00\x00\x00", "SUBACK"),
        (b"\xa2\x05\x00\x00\x00\x01a", "UNSUBSCRIBE"),
        (b"\xb0\x02\x00\x00", "UNSUBACK"),
    ];
    for &(bytes, name) in cases {
        rejects(
            bytes,
            V3_1_1,
            DecodeError::ZeroPacketId(name),
            ProtocolError,
        );
    }
}

// --- Strings ---------------------------------------------------------------

#[test]
fn invalid_utf8_is_refused() {
    rejects(
        b"\x30\x04\x00\x02\xc3\x28",
        V3_1_1,
        DecodeError::InvalidUtf8,
        MalformedPacket,
    );
}

#[test]
fn utf16_surrogates_are_refused() {
    // U+D800 encoded as if it were a scalar value.
    rejects(
        b"\x30\x05\x00\x03\xed\xa0\x80",
        V3_1_1,
        DecodeError::InvalidUtf8,
        MalformedPacket,
    );
}

#[test]
fn nul_character_is_refused() {
    rejects(
        b"\x30\x04\x00\x02a\x00",
        V3_1_1,
        DecodeError::DisallowedCharacter,
        MalformedPacket,
    );
    let mut props = vec![0x26];
    props.extend(mqtt_str(b"k\0"));
    props.extend(mqtt_str(b"v"));
    rejects(
        &v5_puback_with(&props),
        V5,
        DecodeError::DisallowedCharacter,
        MalformedPacket,
    );
}

#[test]
fn publish_needs_a_topic_name_or_alias() {
    rejects(
        b"\x30\x02\x00\x00",
        V3_1_1,
        DecodeError::EmptyTopicName,
        ProtocolError,
    );
    rejects(
        b"\x30\x03\x00\x00\x00",
        V5,
        DecodeError::EmptyTopicName,
        ProtocolError,
    );
}

// --- CONNECT ---------------------------------------------------------------

#[test]
fn unknown_protocol_name_is_refused() {
    let bytes = packet(0x10, &connect_body(b"MQTX", 4, 0x02, &mqtt_str(b"c")));
    let expected = DecodeError::InvalidProtocolName("MQTX".into());
    rejects(
        &bytes,
        V3_1_1,
        expected,
        ReasonCode::UnsupportedProtocolVersion,
    );
}

#[test]
fn protocol_name_and_level_must_match() {
    for (name, level) in [
        (&b"MQTT"[..], 3),
        (b"MQIsdp", 4),
        (b"MQIsdp", 5),
        (b"MQTT", 6),
        (b"MQTT", 0),
    ] {
        let bytes = packet(0x10, &connect_body(name, level, 0x02, &mqtt_str(b"c")));
        let expected = DecodeError::UnsupportedProtocolVersion(level);
        rejects(
            &bytes,
            V3_1_1,
            expected,
            ReasonCode::UnsupportedProtocolVersion,
        );
    }
}

#[test]
fn connect_reserved_flag_must_be_0() {
    let bytes = packet(0x10, &connect_body(b"MQTT", 4, 0x03, &mqtt_str(b"c")));
    let expected = DecodeError::InvalidConnectFlags("reserved bit is set");
    rejects(&bytes, V3_1_1, expected, MalformedPacket);
}

#[test]
fn will_qos_and_retain_need_a_will() {
    for flags in [0x02 | 0x08, 0x02 | 0x10, 0x02 | 0x20] {
        let bytes = packet(0x10, &connect_body(b"MQTT", 4, flags, &mqtt_str(b"c")));
        let expected = DecodeError::InvalidConnectFlags("will QoS or retain set without a will");
        rejects(&bytes, V3_1_1, expected, MalformedPacket);
    }
}

#[test]
fn will_qos_3_is_invalid() {
    let mut rest = mqtt_str(b"c");
    rest.extend(mqtt_str(b"t"));
    rest.extend(mqtt_str(b"p"));
    let bytes = packet(0x10, &connect_body(b"MQTT", 4, 0x02 | 0x04 | 0x18, &rest));
    rejects(&bytes, V3_1_1, DecodeError::InvalidQos(3), MalformedPacket);
}

#[test]
fn password_without_user_name_is_malformed_in_v3() {
    let mut rest = mqtt_str(b"c");
    rest.extend(mqtt_str(b"pw"));
    let v3 = packet(0x10, &connect_body(b"MQTT", 4, 0x02 | 0x40, &rest));
    let expected = DecodeError::InvalidConnectFlags("password without user name");
    rejects(&v3, V3_1_1, expected, MalformedPacket);

    let mut rest = vec![0x00];
    rest.extend(mqtt_str(b"c"));
    rest.extend(mqtt_str(b"pw"));
    let v5 = packet(0x10, &connect_body(b"MQTT", 5, 0x02 | 0x40, &rest));
    let Packet::Connect(connect) = must_decode(&v5, V5) else {
        panic!("not a CONNECT")
    };
    assert_eq!(connect.username, None);
    assert_eq!(connect.password, Some(Bytes::from_static(b"pw")));
}

// --- CONNACK ---------------------------------------------------------------

#[test]
fn connack_reserved_flags_must_be_0() {
    rejects(
        b"\x20\x02\x02\x00",
        V3_1_1,
        DecodeError::InvalidConnAckFlags(2),
        MalformedPacket,
    );
    rejects(
        b"\x20\x03\x80\x00\x00",
        V5,
        DecodeError::InvalidConnAckFlags(0x80),
        MalformedPacket,
    );
    // MQTT 3.1 gives that byte no meaning.
    assert!(matches!(
        must_decode(b"\x20\x02\xff\x00", V3_1),
        Packet::ConnAck(_)
    ));
}

#[test]
fn v3_connack_return_code_above_5_is_invalid() {
    let expected = DecodeError::InvalidReasonCode {
        packet: "CONNACK",
        code: 6,
    };
    rejects(b"\x20\x02\x00\x06", V3_1_1, expected, MalformedPacket);
}

// --- SUBSCRIBE / UNSUBSCRIBE -----------------------------------------------

#[test]
fn subscribe_without_filters_is_a_protocol_error() {
    rejects(
        b"\x82\x02\x00\x01",
        V3_1_1,
        DecodeError::NoTopicFilters("SUBSCRIBE"),
        ProtocolError,
    );
    rejects(
        b"\x82\x03\x00\x01\x00",
        V5,
        DecodeError::NoTopicFilters("SUBSCRIBE"),
        ProtocolError,
    );
}

#[test]
fn unsubscribe_without_filters_is_a_protocol_error() {
    let expected = DecodeError::NoTopicFilters("UNSUBSCRIBE");
    rejects(b"\xa2\x02\x00\x01", V3_1_1, expected.clone(), ProtocolError);
    rejects(b"\xa2\x03\x00\x01\x00", V5, expected, ProtocolError);
}

#[test]
fn subscribe_filter_without_options_is_truncated() {
    let expected = DecodeError::Truncated("subscription options");
    rejects(
        b"\x82\x05\x00\x01\x00\x01a",
        V3_1_1,
        expected,
        MalformedPacket,
    );
}

#[test]
fn subscription_options_reserved_bits_must_be_0() {
    for byte in [0x40, 0x80, 0xc1] {
        let bytes = [0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', byte];
        let expected = DecodeError::InvalidSubscriptionOptions(byte);
        rejects(&bytes, V5, expected, MalformedPacket);
    }
    // Only the QoS exists in 3.x.
    for byte in [0x04, 0x08, 0x10, 0x80] {
        let bytes = [0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', byte];
        let expected = DecodeError::InvalidSubscriptionOptions(byte);
        rejects(&bytes, V3_1_1, expected, MalformedPacket);
    }
}

#[test]
fn retain_handling_3_is_invalid() {
    let bytes = [0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', 0x30];
    // MQTT 5 3.8.3.1: "It is a Protocol Error to send a Retain Handling value of 3".
    rejects(
        &bytes,
        V5,
        DecodeError::InvalidRetainHandling(0x30),
        ProtocolError,
    );
}

#[test]
fn subscription_qos_3_is_invalid() {
    let bytes = [0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x03];
    // MQTT 5 3.8.3.1: a Protocol Error (3.x has no reason code: the connection closes).
    rejects(
        &bytes,
        V3_1_1,
        DecodeError::InvalidSubscriptionQos(0x03),
        ProtocolError,
    );
    let bytes = [0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', 0x03];
    rejects(
        &bytes,
        V5,
        DecodeError::InvalidSubscriptionQos(0x03),
        ProtocolError,
    );
}

// --- Properties ------------------------------------------------------------

#[test]
fn unknown_property_is_refused() {
    for id in [0x00, 0x04, 0x14, 0x1b, 0x20, 0x2b, 0x7f, 0x80, 0xff] {
        rejects(
            &v5_puback_with(&[id, 0x00]),
            V5,
            DecodeError::UnknownProperty(id),
            MalformedPacket,
        );
    }
}

#[test]
fn property_not_allowed_in_the_packet_is_refused() {
    let expected = DecodeError::PropertyNotAllowed {
        packet: "CONNECT",
        id: 0x23,
    };
    rejects(
        &v5_connect_with(&[0x23, 0x00, 0x01]),
        V5,
        expected,
        MalformedPacket,
    );
    let expected = DecodeError::PropertyNotAllowed {
        packet: "PUBLISH",
        id: 0x11,
    };
    rejects(
        &v5_publish_with(&[0x11, 0, 0, 0, 1]),
        V5,
        expected,
        MalformedPacket,
    );
    let expected = DecodeError::PropertyNotAllowed {
        packet: "PUBACK",
        id: 0x0b,
    };
    rejects(
        &v5_puback_with(&[0x0b, 0x01]),
        V5,
        expected,
        MalformedPacket,
    );
    // Will Delay Interval belongs to the will, not to the CONNECT.
    let expected = DecodeError::PropertyNotAllowed {
        packet: "CONNECT",
        id: 0x18,
    };
    rejects(
        &v5_connect_with(&[0x18, 0, 0, 0, 1]),
        V5,
        expected,
        MalformedPacket,
    );
}

#[test]
fn duplicate_property_is_refused() {
    let props = [0x21, 0x00, 0x01, 0x21, 0x00, 0x02];
    rejects(
        &v5_connect_with(&props),
        V5,
        DecodeError::DuplicateProperty(0x21),
        ProtocolError,
    );
    let props = [0x1f, 0x00, 0x01, b'a', 0x1f, 0x00, 0x01, b'b'];
    rejects(
        &v5_puback_with(&props),
        V5,
        DecodeError::DuplicateProperty(0x1f),
        ProtocolError,
    );
}

#[test]
fn subscription_identifier_repeats_in_publish_only() {
    let Packet::Publish(p) = must_decode(&v5_publish_with(&[0x0b, 0x01, 0x0b, 0x02]), V5) else {
        panic!("not a PUBLISH")
    };
    assert_eq!(p.properties.subscription_identifiers, vec![1, 2]);
    let bytes = packet(
        0x82,
        &[
            0x00, 0x01, 0x04, 0x0b, 0x01, 0x0b, 0x02, 0x00, 0x01, b'a', 0x00,
        ],
    );
    rejects(
        &bytes,
        V5,
        DecodeError::DuplicateProperty(0x0b),
        ProtocolError,
    );
}

#[test]
fn user_property_may_repeat() {
    let mut props = Vec::new();
    for _ in 0..3 {
        props.push(0x26);
        props.extend(mqtt_str(b"k"));
        props.extend(mqtt_str(b"v"));
    }
    let Packet::PubAck(ack) = must_decode(&v5_puback_with(&props), V5) else {
        panic!()
    };
    assert_eq!(ack.properties.user_properties.len(), 3);
}

#[test]
fn invalid_property_values_are_refused() {
    let connect_cases: &[(&[u8], u8)] = &[
        (&[0x21, 0x00, 0x00], 0x21),             // receive maximum 0
        (&[0x27, 0x00, 0x00, 0x00, 0x00], 0x27), // maximum packet size 0
        (&[0x17, 0x02], 0x17),                   // request problem information 2
        (&[0x19, 0xff], 0x19),                   // request response information 255
    ];
    for &(props, id) in connect_cases {
        let expected = DecodeError::InvalidPropertyValue(id);
        rejects(&v5_connect_with(props), V5, expected, ProtocolError);
    }
    let publish_cases: &[(&[u8], u8)] = &[
        (&[0x01, 0x02], 0x01),       // payload format indicator 2
        (&[0x0b, 0x00], 0x0b),       // subscription identifier 0
        (&[0x23, 0x00, 0x00], 0x23), // topic alias 0
    ];
    for &(props, id) in publish_cases {
        let expected = DecodeError::InvalidPropertyValue(id);
        rejects(&v5_publish_with(props), V5, expected, ProtocolError);
    }
    // CONNACK maximum QoS 2, and retain available 2.
    for (props, id) in [([0x24, 0x02], 0x24), ([0x25, 0x02], 0x25)] {
        let bytes = packet(0x20, &[0x00, 0x00, 0x02, props[0], props[1]]);
        rejects(
            &bytes,
            V5,
            DecodeError::InvalidPropertyValue(id),
            ProtocolError,
        );
    }
}

#[test]
fn property_length_past_the_packet_is_truncated() {
    let bytes = packet(0x40, &[0x00, 0x01, 0x00, 0x05, 0x1f, 0x00]);
    rejects(
        &bytes,
        V5,
        DecodeError::Truncated("properties"),
        MalformedPacket,
    );
}

#[test]
fn property_value_past_the_property_block_is_truncated() {
    // The block is 3 bytes long but its string claims 5.
    let bytes = packet(
        0x40,
        &[0x00, 0x01, 0x00, 0x03, 0x1f, 0x00, 0x05, b'a', b'b', b'c'],
    );
    rejects(
        &bytes,
        V5,
        DecodeError::Truncated("property value"),
        MalformedPacket,
    );
}

#[test]
fn overlong_variable_byte_integers_are_refused() {
    // Property length 0 written in two bytes.
    let bytes = packet(0x40, &[0x00, 0x01, 0x00, 0x80, 0x00]);
    rejects(
        &bytes,
        V5,
        DecodeError::InvalidVariableByteInteger,
        MalformedPacket,
    );
    // Subscription identifier 1 written in two bytes.
    let expected = DecodeError::InvalidVariableByteInteger;
    rejects(
        &v5_publish_with(&[0x0b, 0x81, 0x00]),
        V5,
        expected,
        MalformedPacket,
    );
    // Five bytes.
    let bytes = v5_publish_with(&[0x0b, 0x81, 0x81, 0x81, 0x81, 0x01]);
    rejects(
        &bytes,
        V5,
        DecodeError::InvalidVariableByteInteger,
        MalformedPacket,
    );
}

// --- Reason codes ----------------------------------------------------------

#[test]
fn reason_code_not_allowed_in_the_packet_is_refused() {
    let cases: &[(&[u8], &str, u8)] = &[
        (b"\x20\x03\x00\x04\x00", "CONNACK", 0x04),
        (b"\x20\x03\x00\x8b\x00", "CONNACK", 0x8b),
        (b"\x40\x03\x00\x01\x92", "PUBACK", 0x92),
        (b"\x50\x03\x00\x01\x11", "PUBREC", 0x11),
        (b"\x62\x03\x00\x01\x10", "PUBREL", 0x10),
        (b"\x70\x03\x00\x01\x80", "PUBCOMP", 0x80),
        (b"\x90\x04\x00\x01\x00\x11", "SUBACK", 0x11),
        (b"\xb0\x04\x00\x01\x00\x01", "UNSUBACK", 0x01),
        (b"\xe0\x01\x18", "DISCONNECT", 0x18),
        (b"\xe0\x01\x85", "DISCONNECT", 0x85),
        (b"\xf0\x02\x80\x00", "AUTH", 0x80),
        (b"\x40\x03\x00\x01\x03", "PUBACK", 0x03),
    ];
    for &(bytes, name, code) in cases {
        let expected = DecodeError::InvalidReasonCode { packet: name, code };
        rejects(bytes, V5, expected, MalformedPacket);
    }
}

#[test]
fn v3_suback_return_codes_are_0_1_2_and_0x80() {
    let Packet::SubAck(suback) = must_decode(b"\x90\x06\x00\x01\x00\x01\x02\x80", V3_1_1) else {
        panic!()
    };
    let expected = [
        ReasonCode::Success,
        ReasonCode::GrantedQos1,
        ReasonCode::GrantedQos2,
        ReasonCode::UnspecifiedError,
    ];
    assert_eq!(suback.reason_codes, expected);
    for code in [0x03, 0x81, 0x87] {
        let expected = DecodeError::InvalidReasonCode {
            packet: "SUBACK",
            code,
        };
        rejects(
            &[0x90, 0x03, 0x00, 0x01, code],
            V3_1_1,
            expected,
            MalformedPacket,
        );
    }
}

// --- Short forms -------------------------------------------------------------

#[test]
fn short_forms_mean_success_without_properties() {
    assert_eq!(
        must_decode(b"\x50\x02\x00\x07", V5),
        Packet::PubRec(PubResponse::new(7))
    );
    assert_eq!(
        must_decode(b"\xe0\x00", V5),
        Packet::Disconnect(Disconnect::new(ReasonCode::Success))
    );
    let auth = Auth {
        reason_code: ReasonCode::Success,
        properties: AuthProperties::default(),
    };
    assert_eq!(must_decode(b"\xf0\x00", V5), Packet::Auth(auth));
}
