//! A forwarded PUBLISH on the wire: [`ForwardedPublish`] to and from the protobuf
//! `ForwardMessage` of `proto/peer.proto`.
//!
//! Encoding cannot fail. Decoding checks what protobuf cannot express (a QoS is 0, 1 or
//! 2, a payload format indicator fits a byte): a message that breaks those rules comes
//! from a node of another version and is refused, never guessed at.

use std::sync::Arc;

use fleetmq_broker::{ForwardTarget, ForwardedPublish, Message, MessageProperties};
use fleetmq_codec::QoS;
use fleetmq_rpc::peer as pb;

/// Why a `ForwardMessage` from a peer is not a valid [`ForwardedPublish`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForwardDecodeError {
    /// A QoS outside 0..=2, in the message or in one of its targets.
    #[error("invalid {what} QoS {value}")]
    InvalidQos { what: &'static str, value: u32 },
    /// A payload format indicator that does not fit the byte MQTT carries it in.
    #[error("invalid payload format indicator {0}")]
    InvalidPayloadFormatIndicator(u32),
}

/// The wire form of `publish` for the `ForwardBatch` of its destination node.
///
/// The payload and correlation data are shared with `publish`, not copied.
pub fn encode_forwarded(publish: &ForwardedPublish) -> pb::ForwardMessage {
    let message = &publish.message;
    let properties = &message.properties;
    pb::ForwardMessage {
        topic: message.topic.to_string(),
        payload: message.payload.clone(),
        qos: u32::from(message.qos as u8),
        retain: message.retain,
        publisher_client_id: message.publisher.as_deref().map(str::to_owned),
        message_expiry_unix_ms: message.expires_at_ms,
        payload_format_indicator: properties.payload_format_indicator.map(u32::from),
        content_type: properties.content_type.clone(),
        response_topic: properties.response_topic.as_deref().map(str::to_owned),
        correlation_data: properties.correlation_data.clone(),
        user_properties: properties
            .user_properties
            .iter()
            .map(|(key, value)| pb::UserProperty {
                key: key.clone(),
                value: value.clone(),
            })
            .collect(),
        origin_node: publish.origin_node,
        // Order comes from the single stream per node pair; see proto/peer.proto.
        publisher_sequence: 0,
        targets: publish
            .targets
            .iter()
            .map(|target| pb::ForwardTarget {
                client_id: target.client.to_string(),
                qos: u32::from(target.qos as u8),
                retain: target.retain,
                subscription_ids: target.subscription_ids.clone(),
            })
            .collect(),
    }
}

fn qos(what: &'static str, value: u32) -> Result<QoS, ForwardDecodeError> {
    u8::try_from(value)
        .ok()
        .and_then(QoS::from_u8)
        .ok_or(ForwardDecodeError::InvalidQos { what, value })
}

/// The [`ForwardedPublish`] a peer sent in a batch from `origin_node`.
///
/// The batch's origin wins over the message's own `origin_node` field: it is the node
/// at the other end of the stream.
pub fn decode_forwarded(
    origin_node: u64,
    message: pb::ForwardMessage,
) -> Result<ForwardedPublish, ForwardDecodeError> {
    let payload_format_indicator = message
        .payload_format_indicator
        .map(|value| {
            u8::try_from(value)
                .map_err(|_| ForwardDecodeError::InvalidPayloadFormatIndicator(value))
        })
        .transpose()?;
    let targets = message
        .targets
        .into_iter()
        .map(|target| {
            Ok(ForwardTarget {
                client: Arc::from(target.client_id),
                qos: qos("target", target.qos)?,
                retain: target.retain,
                subscription_ids: target.subscription_ids,
            })
        })
        .collect::<Result<Vec<_>, ForwardDecodeError>>()?;
    Ok(ForwardedPublish {
        origin_node,
        message: Arc::new(Message {
            topic: Arc::from(message.topic),
            payload: message.payload,
            qos: qos("message", message.qos)?,
            retain: message.retain,
            properties: MessageProperties {
                payload_format_indicator,
                content_type: message.content_type,
                response_topic: message.response_topic.map(Arc::from),
                correlation_data: message.correlation_data,
                user_properties: message
                    .user_properties
                    .into_iter()
                    .map(|property| (property.key, property.value))
                    .collect(),
            },
            publisher: message.publisher_client_id.map(Arc::from),
            expires_at_ms: message.message_expiry_unix_ms,
        }),
        targets,
    })
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use prost::Message as _;

    use super::*;

    fn full_publish() -> ForwardedPublish {
        ForwardedPublish {
            origin_node: 3,
            message: Arc::new(Message {
                topic: Arc::from("plant/7/temperature"),
                payload: Bytes::from_static(b"\x00\x01binary\xff"),
                qos: QoS::ExactlyOnce,
                retain: true,
                properties: MessageProperties {
                    payload_format_indicator: Some(1),
                    content_type: Some("application/json".to_owned()),
                    response_topic: Some(Arc::from("plant/7/reply")),
                    correlation_data: Some(Bytes::from_static(b"corr")),
                    user_properties: vec![
                        ("k".to_owned(), "v1".to_owned()),
                        ("k".to_owned(), "v2".to_owned()),
                        ("a".to_owned(), String::new()),
                    ],
                },
                publisher: Some(Arc::from("sensor-7")),
                expires_at_ms: Some(1_700_000_000_123),
            }),
            targets: vec![
                ForwardTarget {
                    client: Arc::from("dashboard"),
                    qos: QoS::AtLeastOnce,
                    retain: false,
                    subscription_ids: vec![4, 9],
                },
                ForwardTarget {
                    client: Arc::from("logger"),
                    qos: QoS::AtMostOnce,
                    retain: true,
                    subscription_ids: vec![],
                },
            ],
        }
    }

    fn assert_same(a: &ForwardedPublish, b: &ForwardedPublish) {
        assert_eq!(a.origin_node, b.origin_node);
        assert_eq!(a.message, b.message);
        assert_eq!(a.targets, b.targets);
    }

    #[test]
    fn every_field_survives_a_round_trip_through_protobuf_bytes() {
        let publish = full_publish();
        let bytes = encode_forwarded(&publish).encode_to_vec();
        let decoded_pb = pb::ForwardMessage::decode(bytes.as_slice()).expect("protobuf decodes");
        let decoded = decode_forwarded(3, decoded_pb).expect("valid message");
        assert_same(&decoded, &publish);
    }

    #[test]
    fn absent_options_stay_absent() {
        let publish = ForwardedPublish {
            origin_node: 2,
            message: Arc::new(Message {
                topic: Arc::from("t"),
                payload: Bytes::new(),
                qos: QoS::AtMostOnce,
                retain: false,
                properties: MessageProperties::default(),
                // A message the broker made itself.
                publisher: None,
                expires_at_ms: None,
            }),
            targets: vec![],
        };
        let bytes = encode_forwarded(&publish).encode_to_vec();
        let decoded_pb = pb::ForwardMessage::decode(bytes.as_slice()).expect("protobuf decodes");
        let decoded = decode_forwarded(2, decoded_pb).expect("valid message");
        assert_same(&decoded, &publish);
    }

    #[test]
    fn an_empty_publisher_id_is_not_confused_with_none() {
        let mut publish = full_publish();
        Arc::make_mut(&mut publish.message).publisher = Some(Arc::from(""));
        let decoded = decode_forwarded(3, encode_forwarded(&publish)).expect("valid message");
        assert_eq!(decoded.message.publisher.as_deref(), Some(""));
    }

    #[test]
    fn the_batch_origin_wins_over_the_message_origin() {
        let decoded = decode_forwarded(5, encode_forwarded(&full_publish())).expect("valid");
        assert_eq!(decoded.origin_node, 5);
    }

    #[test]
    fn invalid_qos_and_format_indicator_are_refused() {
        let mut message = encode_forwarded(&full_publish());
        message.qos = 3;
        assert_eq!(
            decode_forwarded(3, message).map(|_| ()),
            Err(ForwardDecodeError::InvalidQos {
                what: "message",
                value: 3
            })
        );

        let mut message = encode_forwarded(&full_publish());
        message.targets[1].qos = 256;
        assert_eq!(
            decode_forwarded(3, message).map(|_| ()),
            Err(ForwardDecodeError::InvalidQos {
                what: "target",
                value: 256
            })
        );

        let mut message = encode_forwarded(&full_publish());
        message.payload_format_indicator = Some(300);
        assert_eq!(
            decode_forwarded(3, message).map(|_| ()),
            Err(ForwardDecodeError::InvalidPayloadFormatIndicator(300))
        );
    }
}
