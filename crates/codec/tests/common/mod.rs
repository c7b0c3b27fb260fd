//! Helpers and proptest strategies shared by the codec's tests. Each strategy
//! generates only values that are valid for the version it is given, so that
//! `decode(encode(p)) == p` must hold for all of them.

#![allow(dead_code, clippy::unwrap_used)]

pub mod samples;

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use fleetmq_codec::*;
use proptest::collection::vec;
use proptest::option::of;
use proptest::prelude::*;
use proptest::sample::select;

pub const VERSIONS: [ProtocolVersion; 3] = [
    ProtocolVersion::V3_1,
    ProtocolVersion::V3_1_1,
    ProtocolVersion::V5,
];

pub const NO_LIMIT: usize = usize::MAX;

pub fn must_encode(packet: &Packet, version: ProtocolVersion) -> Vec<u8> {
    let mut buf = BytesMut::new();
    encode(packet, version, &mut buf).unwrap();
    buf.to_vec()
}

/// Decodes `bytes`, which must hold exactly one whole packet.
pub fn must_decode(bytes: &[u8], version: ProtocolVersion) -> Packet {
    let mut buf = BytesMut::from(bytes);
    let packet = decode(&mut buf, version, NO_LIMIT)
        .unwrap()
        .expect("a whole packet");
    assert!(buf.is_empty(), "{} bytes left over", buf.len());
    packet
}

pub fn decode_err(bytes: &[u8], version: ProtocolVersion) -> DecodeError {
    let mut buf = BytesMut::from(bytes);
    match decode(&mut buf, version, NO_LIMIT) {
        Err(e) => e,
        other => panic!("expected an error for {bytes:02x?}, got {other:?}"),
    }
}

/// Prefixes `body` with a fixed header (for bodies below 128 bytes).
pub fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    assert!(body.len() < 128);
    let mut out = vec![first, body.len() as u8];
    out.extend_from_slice(body);
    out
}

/// An MQTT string: two-byte length and the bytes.
pub fn mqtt_str(s: &[u8]) -> Vec<u8> {
    let mut out = (s.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(s);
    out
}

// ---------------------------------------------------------------------------
// Strategies

pub fn string() -> impl Strategy<Value = String> {
    "[^\\x00]{0,12}"
}

pub fn nonempty_string() -> impl Strategy<Value = String> {
    "[^\\x00]{1,12}"
}

pub fn arc_str() -> impl Strategy<Value = Arc<str>> {
    string().prop_map(Arc::from)
}

pub fn binary() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..24).prop_map(Bytes::from)
}

pub fn user_properties() -> impl Strategy<Value = Vec<UserProperty>> {
    vec((string(), string()), 0..3)
}

pub fn qos() -> impl Strategy<Value = QoS> {
    select(vec![QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce])
}

fn packet_id() -> impl Strategy<Value = u16> {
    1..=u16::MAX
}

fn nonzero_u16() -> impl Strategy<Value = u16> {
    1..=u16::MAX
}

fn nonzero_u32() -> impl Strategy<Value = u32> {
    1..=u32::MAX
}

fn subscription_identifier() -> impl Strategy<Value = u32> {
    1..=268_435_455u32
}

/// A strategy for `T`'s v5-only part: the default outside MQTT 5.
fn v5_only<T: Default + Clone + std::fmt::Debug + 'static>(
    version: ProtocolVersion,
    strategy: impl Strategy<Value = T> + 'static,
) -> BoxedStrategy<T> {
    if version.is_v5() {
        strategy.boxed()
    } else {
        Just(T::default()).boxed()
    }
}

pub const CONNACK_V3_CODES: [ReasonCode; 6] = [
    ReasonCode::Success,
    ReasonCode::UnsupportedProtocolVersion,
    ReasonCode::ClientIdentifierNotValid,
    ReasonCode::ServerUnavailable,
    ReasonCode::BadUserNameOrPassword,
    ReasonCode::NotAuthorized,
];

pub fn codes(values: &[u8]) -> Vec<ReasonCode> {
    values
        .iter()
        .map(|v| ReasonCode::from_u8(*v).unwrap())
        .collect()
}

// The allowed sets, copied from the spec independently of the library's own.
pub const CONNACK_V5: &[u8] = &[
    0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90, 0x95, 0x97,
    0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F,
];
pub const PUBACK_V5: &[u8] = &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99];
pub const PUBREL_V5: &[u8] = &[0x00, 0x92];
pub const SUBACK_V5: &[u8] = &[
    0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2,
];
pub const UNSUBACK_V5: &[u8] = &[0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91];
pub const DISCONNECT_V5: &[u8] = &[
    0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93, 0x94, 0x95,
    0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2,
];
pub const AUTH_V5: &[u8] = &[0x00, 0x18, 0x19];

fn connect_properties() -> impl Strategy<Value = ConnectProperties> {
    (
        of(any::<u32>()),
        of(nonzero_u16()),
        of(nonzero_u32()),
        of(any::<u16>()),
        of(any::<bool>()),
        of(any::<bool>()),
        user_properties(),
        of(string()),
        of(binary()),
    )
        .prop_map(
            |(sei, rm, mps, tam, rri, rpi, up, am, ad)| ConnectProperties {
                session_expiry_interval: sei,
                receive_maximum: rm,
                maximum_packet_size: mps,
                topic_alias_maximum: tam,
                request_response_information: rri,
                request_problem_information: rpi,
                user_properties: up,
                authentication_method: am,
                authentication_data: ad,
            },
        )
}

fn will_properties() -> impl Strategy<Value = WillProperties> {
    (
        of(any::<u32>()),
        of(0..=1u8),
        of(any::<u32>()),
        of(string()),
        of(arc_str()),
        of(binary()),
        user_properties(),
    )
        .prop_map(|(wdi, pfi, mei, ct, rt, cd, up)| WillProperties {
            will_delay_interval: wdi,
            payload_format_indicator: pfi,
            message_expiry_interval: mei,
            content_type: ct,
            response_topic: rt,
            correlation_data: cd,
            user_properties: up,
        })
}

fn will(version: ProtocolVersion) -> impl Strategy<Value = LastWill> {
    (
        arc_str(),
        binary(),
        qos(),
        any::<bool>(),
        v5_only(version, will_properties()),
    )
        .prop_map(|(topic, payload, qos, retain, properties)| LastWill {
            topic,
            payload,
            qos,
            retain,
            properties,
        })
}

pub fn connect(version: ProtocolVersion) -> impl Strategy<Value = Connect> {
    (
        any::<bool>(),
        any::<u16>(),
        string(),
        of(will(version)),
        of(string()),
        of(binary()),
        v5_only(version, connect_properties()),
    )
        .prop_map(
            move |(clean_start, keep_alive, client_id, will, username, password, properties)| {
                // 3.x cannot send a password without a user name.
                let username = match (&username, &password) {
                    (None, Some(_)) if !version.is_v5() => Some("user".to_owned()),
                    _ => username,
                };
                Connect {
                    protocol: version,
                    clean_start,
                    keep_alive,
                    client_id,
                    will,
                    username,
                    password,
                    properties,
                }
            },
        )
}

fn connack_properties() -> impl Strategy<Value = ConnAckProperties> {
    let first = (
        of(any::<u32>()),
        of(nonzero_u16()),
        of(select(vec![QoS::AtMostOnce, QoS::AtLeastOnce])),
        of(any::<bool>()),
        of(nonzero_u32()),
        of(string()),
        of(any::<u16>()),
        of(string()),
        user_properties(),
    );
    let second = (
        of(any::<bool>()),
        of(any::<bool>()),
        of(any::<bool>()),
        of(any::<u16>()),
        of(string()),
        of(string()),
        of(string()),
        of(binary()),
    );
    (first, second).prop_map(
        |((sei, rm, mq, ra, mps, aci, tam, rs, up), (wsa, sia, ssa, ska, ri, sr, am, ad))| {
            ConnAckProperties {
                session_expiry_interval: sei,
                receive_maximum: rm,
                maximum_qos: mq,
                retain_available: ra,
                maximum_packet_size: mps,
                assigned_client_identifier: aci,
                topic_alias_maximum: tam,
                reason_string: rs,
                user_properties: up,
                wildcard_subscription_available: wsa,
                subscription_identifiers_available: sia,
                shared_subscription_available: ssa,
                server_keep_alive: ska,
                response_information: ri,
                server_reference: sr,
                authentication_method: am,
                authentication_data: ad,
            }
        },
    )
}

fn connack(version: ProtocolVersion) -> impl Strategy<Value = ConnAck> {
    let reasons = if version.is_v5() {
        codes(CONNACK_V5)
    } else {
        CONNACK_V3_CODES.to_vec()
    };
    (
        any::<bool>(),
        select(reasons),
        v5_only(version, connack_properties()),
    )
        .prop_map(move |(session_present, reason_code, properties)| ConnAck {
            session_present: session_present && version != ProtocolVersion::V3_1,
            reason_code,
            properties,
        })
}

fn publish_properties() -> impl Strategy<Value = PublishProperties> {
    (
        of(0..=1u8),
        of(any::<u32>()),
        of(nonzero_u16()),
        of(arc_str()),
        of(binary()),
        user_properties(),
        vec(subscription_identifier(), 0..3),
        of(string()),
    )
        .prop_map(|(pfi, mei, ta, rt, cd, up, si, ct)| PublishProperties {
            payload_format_indicator: pfi,
            message_expiry_interval: mei,
            topic_alias: ta,
            response_topic: rt,
            correlation_data: cd,
            user_properties: up,
            subscription_identifiers: si,
            content_type: ct,
        })
}

fn publish(version: ProtocolVersion) -> impl Strategy<Value = Publish> {
    (
        any::<bool>(),
        qos(),
        any::<bool>(),
        arc_str(),
        packet_id(),
        v5_only(version, publish_properties()),
        binary(),
    )
        .prop_map(|(dup, qos, retain, topic, id, properties, payload)| {
            // An empty topic needs a topic alias to stand for it.
            let topic = if topic.is_empty() && properties.topic_alias.is_none() {
                Arc::from("t")
            } else {
                topic
            };
            let qos0 = qos == QoS::AtMostOnce;
            Publish {
                dup: dup && !qos0,
                qos,
                retain,
                topic,
                packet_id: (!qos0).then_some(id),
                properties,
                payload,
            }
        })
}

fn ack_properties() -> impl Strategy<Value = AckProperties> {
    (of(string()), user_properties()).prop_map(|(reason_string, user_properties)| AckProperties {
        reason_string,
        user_properties,
    })
}

fn pub_response(version: ProtocolVersion, allowed: &[u8]) -> impl Strategy<Value = PubResponse> {
    let reasons = if version.is_v5() {
        codes(allowed)
    } else {
        vec![ReasonCode::Success]
    };
    (
        packet_id(),
        select(reasons),
        v5_only(version, ack_properties()),
    )
        .prop_map(|(packet_id, reason_code, properties)| PubResponse {
            packet_id,
            reason_code,
            properties,
        })
}

fn subscription_options(version: ProtocolVersion) -> BoxedStrategy<SubscriptionOptions> {
    if !version.is_v5() {
        return qos()
            .prop_map(|qos| SubscriptionOptions {
                qos,
                ..Default::default()
            })
            .boxed();
    }
    let handling = select(vec![
        RetainHandling::SendAtSubscribe,
        RetainHandling::SendIfNewSubscription,
        RetainHandling::DoNotSend,
    ]);
    (qos(), any::<bool>(), any::<bool>(), handling)
        .prop_map(
            |(qos, no_local, retain_as_published, retain_handling)| SubscriptionOptions {
                qos,
                no_local,
                retain_as_published,
                retain_handling,
            },
        )
        .boxed()
}

fn subscribe(version: ProtocolVersion) -> impl Strategy<Value = Subscribe> {
    let filter = (string(), subscription_options(version))
        .prop_map(|(filter, options)| SubscribeFilter { filter, options });
    let properties = (of(subscription_identifier()), user_properties()).prop_map(
        |(subscription_identifier, user_properties)| SubscribeProperties {
            subscription_identifier,
            user_properties,
        },
    );
    (packet_id(), vec(filter, 1..4), v5_only(version, properties)).prop_map(
        |(packet_id, filters, properties)| Subscribe {
            packet_id,
            filters,
            properties,
        },
    )
}

fn suback(version: ProtocolVersion) -> impl Strategy<Value = SubAck> {
    let reasons = if version.is_v5() {
        codes(SUBACK_V5)
    } else {
        codes(&[0x00, 0x01, 0x02, 0x80])
    };
    (
        packet_id(),
        vec(select(reasons), 0..4),
        v5_only(version, ack_properties()),
    )
        .prop_map(|(packet_id, reason_codes, properties)| SubAck {
            packet_id,
            reason_codes,
            properties,
        })
}

fn unsubscribe(version: ProtocolVersion) -> impl Strategy<Value = Unsubscribe> {
    (
        packet_id(),
        vec(string(), 1..4),
        v5_only(version, user_properties()),
    )
        .prop_map(|(packet_id, filters, user_properties)| Unsubscribe {
            packet_id,
            filters,
            user_properties,
        })
}

fn unsuback(version: ProtocolVersion) -> impl Strategy<Value = UnsubAck> {
    (
        packet_id(),
        v5_only(version, vec(select(codes(UNSUBACK_V5)), 0..4)),
        v5_only(version, ack_properties()),
    )
        .prop_map(|(packet_id, reason_codes, properties)| UnsubAck {
            packet_id,
            reason_codes,
            properties,
        })
}

fn disconnect(version: ProtocolVersion) -> BoxedStrategy<Disconnect> {
    if !version.is_v5() {
        return Just(Disconnect::new(ReasonCode::Success)).boxed();
    }
    let properties = (
        of(any::<u32>()),
        of(string()),
        user_properties(),
        of(string()),
    )
        .prop_map(|(sei, rs, up, sr)| DisconnectProperties {
            session_expiry_interval: sei,
            reason_string: rs,
            user_properties: up,
            server_reference: sr,
        });
    (select(codes(DISCONNECT_V5)), properties)
        .prop_map(|(reason_code, properties)| Disconnect {
            reason_code,
            properties,
        })
        .boxed()
}

fn auth() -> impl Strategy<Value = Auth> {
    let properties = (of(string()), of(binary()), of(string()), user_properties()).prop_map(
        |(am, ad, rs, up)| AuthProperties {
            authentication_method: am,
            authentication_data: ad,
            reason_string: rs,
            user_properties: up,
        },
    );
    (select(codes(AUTH_V5)), properties).prop_map(|(reason_code, properties)| Auth {
        reason_code,
        properties,
    })
}

/// Any packet valid in `version`, every packet type it has.
pub fn any_packet(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    let mut strategies = vec![
        connect(version)
            .prop_map(|c| Packet::Connect(Box::new(c)))
            .boxed(),
        connack(version).prop_map(Packet::ConnAck).boxed(),
        publish(version).prop_map(Packet::Publish).boxed(),
        pub_response(version, PUBACK_V5)
            .prop_map(Packet::PubAck)
            .boxed(),
        pub_response(version, PUBACK_V5)
            .prop_map(Packet::PubRec)
            .boxed(),
        pub_response(version, PUBREL_V5)
            .prop_map(Packet::PubRel)
            .boxed(),
        pub_response(version, PUBREL_V5)
            .prop_map(Packet::PubComp)
            .boxed(),
        subscribe(version).prop_map(Packet::Subscribe).boxed(),
        suback(version).prop_map(Packet::SubAck).boxed(),
        unsubscribe(version).prop_map(Packet::Unsubscribe).boxed(),
        unsuback(version).prop_map(Packet::UnsubAck).boxed(),
        Just(Packet::PingReq).boxed(),
        Just(Packet::PingResp).boxed(),
        disconnect(version).prop_map(Packet::Disconnect).boxed(),
    ];
    if version.is_v5() {
        strategies.push(auth().prop_map(Packet::Auth).boxed());
    }
    proptest::strategy::Union::new(strategies).boxed()
}

pub fn version() -> impl Strategy<Value = ProtocolVersion> {
    select(VERSIONS.to_vec())
}

/// A version and a packet valid in it.
pub fn versioned_packet() -> impl Strategy<Value = (ProtocolVersion, Packet)> {
    version().prop_flat_map(|v| (Just(v), any_packet(v)))
}
