//! An application message as the router holds it: one `Arc<Message>` is shared by
//! every subscriber it goes to; the payload is never copied.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use fleetmq_codec::{LastWill, Publish, QoS, UserProperty};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: Arc<str>,
    pub payload: Bytes,
    /// QoS the publisher used; a subscriber gets at most this.
    pub qos: QoS,
    /// Retain flag the publisher set.
    pub retain: bool,
    pub properties: MessageProperties,
    /// Client id of the publisher, for No Local. `None` for messages the broker makes.
    pub publisher: Option<Arc<str>>,
    /// Unix time in milliseconds after which the message is not delivered.
    pub expires_at_ms: Option<u64>,
}

/// The MQTT 5 properties a message carries from publisher to subscribers unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MessageProperties {
    pub payload_format_indicator: Option<u8>,
    pub content_type: Option<String>,
    pub response_topic: Option<Arc<str>>,
    pub correlation_data: Option<Bytes>,
    pub user_properties: Vec<UserProperty>,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Message {
    /// The message of a PUBLISH whose topic alias has already been resolved.
    pub fn from_publish(publish: Publish, publisher: Arc<str>, now_ms: u64) -> Message {
        let p = publish.properties;
        Message {
            topic: publish.topic,
            payload: publish.payload,
            qos: publish.qos,
            retain: publish.retain,
            expires_at_ms: p
                .message_expiry_interval
                .map(|secs| now_ms.saturating_add(u64::from(secs) * 1000)),
            properties: MessageProperties {
                payload_format_indicator: p.payload_format_indicator,
                content_type: p.content_type,
                response_topic: p.response_topic,
                correlation_data: p.correlation_data,
                user_properties: p.user_properties,
            },
            publisher: Some(publisher),
        }
    }

    /// The message a will turns into when it is published at `now_ms`.
    pub fn from_will(will: &LastWill, publisher: Arc<str>, now_ms: u64) -> Message {
        let p = &will.properties;
        Message {
            topic: will.topic.clone(),
            payload: will.payload.clone(),
            qos: will.qos,
            retain: will.retain,
            expires_at_ms: p
                .message_expiry_interval
                .map(|secs| now_ms.saturating_add(u64::from(secs) * 1000)),
            properties: MessageProperties {
                payload_format_indicator: p.payload_format_indicator,
                content_type: p.content_type.clone(),
                response_topic: p.response_topic.clone(),
                correlation_data: p.correlation_data.clone(),
                user_properties: p.user_properties.clone(),
            },
            publisher: Some(publisher),
        }
    }

    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_some_and(|at| now_ms >= at)
    }

    /// Seconds left before expiry, rounded up so a live message never says 0.
    pub fn remaining_expiry_secs(&self, now_ms: u64) -> Option<u32> {
        self.expires_at_ms.map(|at| {
            let left = at.saturating_sub(now_ms);
            u32::try_from(left.div_ceil(1000).max(1)).unwrap_or(u32::MAX)
        })
    }
}
