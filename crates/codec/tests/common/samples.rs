//! Hand-picked valid packets of every type for each protocol version: the seed
//! corpus of the fuzzer (`examples/gen_corpus.rs`) and a round-trip test.

use std::sync::Arc;

use bytes::Bytes;
use fleetmq_codec::*;

fn user(name: &str, value: &str) -> UserProperty {
    (name.to_owned(), value.to_owned())
}

fn connect(protocol: ProtocolVersion) -> Vec<Packet> {
    let v5 = protocol.is_v5();
    let minimal = Connect {
        protocol,
        clean_start: true,
        keep_alive: 60,
        client_id: "client-1".into(),
        will: None,
        username: None,
        password: None,
        properties: ConnectProperties::default(),
    };
    let full = Connect {
        protocol,
        clean_start: false,
        keep_alive: 0,
        client_id: String::new(),
        will: Some(LastWill {
            topic: Arc::from("status/client-2"),
            payload: Bytes::from_static(b"offline"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: if v5 {
                WillProperties {
                    will_delay_interval: Some(30),
                    payload_format_indicator: Some(1),
                    message_expiry_interval: Some(3600),
                    content_type: Some("text/plain".into()),
                    response_topic: Some(Arc::from("reply/here")),
                    correlation_data: Some(Bytes::from_static(&[1, 2, 3])),
                    user_properties: vec![user("k", "v")],
                }
            } else {
                WillProperties::default()
            },
        }),
        username: Some("alice".into()),
        password: Some(Bytes::from_static(b"secret")),
        properties: if v5 {
            ConnectProperties {
                session_expiry_interval: Some(u32::MAX),
                receive_maximum: Some(100),
                maximum_packet_size: Some(1 << 20),
                topic_alias_maximum: Some(10),
                request_response_information: Some(true),
                request_problem_information: Some(false),
                user_properties: vec![user("a", "1"), user("a", "2")],
                authentication_method: Some("SCRAM-SHA-256".into()),
                authentication_data: Some(Bytes::from_static(b"client-first")),
            }
        } else {
            ConnectProperties::default()
        },
    };
    let mut packets = vec![minimal, full];
    if v5 {
        // A password without a user name exists only in MQTT 5.
        packets.push(Connect {
            protocol,
            clean_start: true,
            keep_alive: 30,
            client_id: "token-only".into(),
            will: Some(LastWill {
                topic: Arc::from("t"),
                payload: Bytes::new(),
                qos: QoS::ExactlyOnce,
                retain: false,
                properties: WillProperties::default(),
            }),
            username: None,
            password: Some(Bytes::from_static(b"jwt")),
            properties: ConnectProperties::default(),
        });
    }
    packets
        .into_iter()
        .map(|c| Packet::Connect(Box::new(c)))
        .collect()
}

fn acks(v5: bool) -> Vec<Packet> {
    let mut packets = vec![
        Packet::PubAck(PubResponse::new(1)),
        Packet::PubRec(PubResponse::new(2)),
        Packet::PubRel(PubResponse::new(3)),
        Packet::PubComp(PubResponse::new(u16::MAX)),
    ];
    if v5 {
        let with = |packet_id, reason_code, reason: Option<&str>| PubResponse {
            packet_id,
            reason_code,
            properties: AckProperties {
                reason_string: reason.map(str::to_owned),
                user_properties: vec![],
            },
        };
        packets.extend([
            Packet::PubAck(with(4, ReasonCode::NoMatchingSubscribers, None)),
            Packet::PubAck(with(5, ReasonCode::QuotaExceeded, Some("slow down"))),
            Packet::PubRec(with(6, ReasonCode::PacketIdentifierInUse, Some("in use"))),
            Packet::PubRel(with(7, ReasonCode::PacketIdentifierNotFound, None)),
            Packet::PubComp(with(8, ReasonCode::Success, Some("ok"))),
        ]);
    }
    packets
}

/// Valid packets of every type that `version` has.
pub fn samples(version: ProtocolVersion) -> Vec<Packet> {
    let v5 = version.is_v5();
    let mut packets = connect(version);

    packets.push(Packet::ConnAck(ConnAck {
        session_present: version != ProtocolVersion::V3_1,
        reason_code: ReasonCode::Success,
        properties: ConnAckProperties::default(),
    }));
    packets.push(Packet::ConnAck(ConnAck {
        session_present: false,
        reason_code: if v5 {
            ReasonCode::Banned
        } else {
            ReasonCode::NotAuthorized
        },
        properties: ConnAckProperties::default(),
    }));
    if v5 {
        packets.push(Packet::ConnAck(ConnAck {
            session_present: false,
            reason_code: ReasonCode::Success,
            properties: ConnAckProperties {
                session_expiry_interval: Some(0),
                receive_maximum: Some(1024),
                maximum_qos: Some(QoS::AtLeastOnce),
                retain_available: Some(false),
                maximum_packet_size: Some(65_536),
                assigned_client_identifier: Some("auto-42".into()),
                topic_alias_maximum: Some(16),
                reason_string: Some("welcome".into()),
                user_properties: vec![user("node", "2")],
                wildcard_subscription_available: Some(true),
                subscription_identifiers_available: Some(true),
                shared_subscription_available: Some(false),
                server_keep_alive: Some(120),
                response_information: Some("resp/".into()),
                server_reference: Some("other:1883".into()),
                authentication_method: Some("SCRAM-SHA-256".into()),
                authentication_data: Some(Bytes::from_static(b"server-final")),
            },
        }));
    }

    let publish = |qos, packet_id, topic: &str, payload: &'static [u8]| Publish {
        dup: false,
        qos,
        retain: false,
        topic: Arc::from(topic),
        packet_id,
        properties: PublishProperties::default(),
        payload: Bytes::from_static(payload),
    };
    packets.push(Packet::Publish(publish(
        QoS::AtMostOnce,
        None,
        "a/b",
        b"hello",
    )));
    packets.push(Packet::Publish(Publish {
        dup: true,
        retain: true,
        ..publish(QoS::AtLeastOnce, Some(10), "sensors/1/temp", b"21.5")
    }));
    packets.push(Packet::Publish(publish(
        QoS::ExactlyOnce,
        Some(11),
        "x",
        b"",
    )));
    if v5 {
        packets.push(Packet::Publish(Publish {
            properties: PublishProperties {
                payload_format_indicator: Some(0),
                message_expiry_interval: Some(10),
                topic_alias: Some(3),
                response_topic: Some(Arc::from("reply")),
                correlation_data: Some(Bytes::from_static(b"id-7")),
                user_properties: vec![user("trace", "abc")],
                subscription_identifiers: vec![1, 268_435_455],
                content_type: Some("application/json".into()),
            },
            ..publish(QoS::AtLeastOnce, Some(12), "", b"{}")
        }));
    }

    packets.extend(acks(v5));

    let filter = |filter: &str, qos| SubscribeFilter {
        filter: filter.into(),
        options: SubscriptionOptions {
            qos,
            ..Default::default()
        },
    };
    packets.push(Packet::Subscribe(Subscribe {
        packet_id: 20,
        filters: vec![
            filter("a/+", QoS::AtMostOnce),
            filter("b/#", QoS::ExactlyOnce),
        ],
        properties: SubscribeProperties::default(),
    }));
    if v5 {
        packets.push(Packet::Subscribe(Subscribe {
            packet_id: 21,
            filters: vec![SubscribeFilter {
                filter: "$share/g/c".into(),
                options: SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    no_local: true,
                    retain_as_published: true,
                    retain_handling: RetainHandling::DoNotSend,
                },
            }],
            properties: SubscribeProperties {
                subscription_identifier: Some(7),
                user_properties: vec![user("x", "y")],
            },
        }));
    }

    let failure = if v5 {
        ReasonCode::NotAuthorized
    } else {
        ReasonCode::UnspecifiedError
    };
    packets.push(Packet::SubAck(SubAck {
        packet_id: 20,
        reason_codes: vec![ReasonCode::Success, ReasonCode::GrantedQos2, failure],
        properties: AckProperties::default(),
    }));

    packets.push(Packet::Unsubscribe(Unsubscribe {
        packet_id: 30,
        filters: vec!["a/+".into(), "b/#".into()],
        user_properties: if v5 {
            vec![user("why", "done")]
        } else {
            vec![]
        },
    }));
    packets.push(Packet::UnsubAck(UnsubAck {
        packet_id: 30,
        reason_codes: if v5 {
            vec![ReasonCode::Success, ReasonCode::NoSubscriptionExisted]
        } else {
            vec![]
        },
        properties: AckProperties::default(),
    }));

    packets.push(Packet::PingReq);
    packets.push(Packet::PingResp);
    packets.push(Packet::Disconnect(Disconnect::new(ReasonCode::Success)));
    if v5 {
        packets.push(Packet::Disconnect(Disconnect::new(
            ReasonCode::DisconnectWithWillMessage,
        )));
        packets.push(Packet::Disconnect(Disconnect {
            reason_code: ReasonCode::ServerMoved,
            properties: DisconnectProperties {
                session_expiry_interval: Some(0),
                reason_string: Some("moving".into()),
                user_properties: vec![],
                server_reference: Some("node-3:1883".into()),
            },
        }));
        packets.push(Packet::Auth(Auth {
            reason_code: ReasonCode::Success,
            properties: AuthProperties::default(),
        }));
        packets.push(Packet::Auth(Auth {
            reason_code: ReasonCode::ContinueAuthentication,
            properties: AuthProperties {
                authentication_method: Some("SCRAM-SHA-256".into()),
                authentication_data: Some(Bytes::from_static(b"server-first")),
                reason_string: None,
                user_properties: vec![],
            },
        }));
    }
    packets
}
