//! What the bridge produces for one MQTT message: the Kafka topic, key, headers and
//! value, computed once when the message arrives and stored as such in the outbox.

use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::config::{EgressRule, PayloadFormat};
use crate::template::{kafka_topic_name, TemplateInput};

/// An MQTT PUBLISH as the bridge sees it.
#[derive(Debug, Clone)]
pub struct BridgedMessage {
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
    pub client_id: String,
    pub username: Option<String>,
    /// MQTT 5 user properties, in order.
    pub user_properties: Vec<(String, String)>,
    pub content_type: Option<String>,
    /// When the broker received it, unix milliseconds.
    pub received_at_ms: u64,
}

/// One Kafka record, ready to produce.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KafkaRecord {
    /// The rule that made it (metrics and logs).
    pub rule: String,
    pub topic: String,
    pub key: Option<Vec<u8>>,
    /// In order; names may repeat (MQTT user properties may).
    pub headers: Vec<(String, Vec<u8>)>,
    pub value: Vec<u8>,
    /// The record's timestamp: when the broker received the message.
    pub timestamp_ms: u64,
}

/// The header names the bridge sets besides the user properties.
pub mod header {
    pub const TOPIC: &str = "mqtt.topic";
    pub const QOS: &str = "mqtt.qos";
    pub const RETAIN: &str = "mqtt.retain";
    pub const CLIENT_ID: &str = "mqtt.client_id";
    pub const USERNAME: &str = "mqtt.username";
    pub const CONTENT_TYPE: &str = "mqtt.content_type";
}

/// The JSON envelope of `payload = "json"`; documented in docs/kafka-bridge.md.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Envelope {
    pub topic: String,
    /// The payload as UTF-8 text when it is valid UTF-8, else base64.
    pub payload: String,
    /// `"utf8"` or `"base64"`.
    pub payload_encoding: String,
    pub qos: u8,
    pub retain: bool,
    pub client_id: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub username: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub user_properties: Vec<(String, String)>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub content_type: Option<String>,
    pub timestamp_ms: u64,
}

impl KafkaRecord {
    /// The record `rule` makes of `message`.
    pub fn build(rule: &EgressRule, message: &BridgedMessage) -> KafkaRecord {
        let input = TemplateInput {
            topic: &message.topic,
            client_id: &message.client_id,
            username: message.username.as_deref().unwrap_or(""),
        };
        let topic = kafka_topic_name(&rule.kafka_topic.render(input));
        let key = rule
            .key
            .as_ref()
            .map(|t| t.render(input).into_bytes())
            .filter(|k| !k.is_empty());
        let mut headers = vec![
            (
                header::TOPIC.to_string(),
                message.topic.clone().into_bytes(),
            ),
            (
                header::QOS.to_string(),
                message.qos.to_string().into_bytes(),
            ),
            (
                header::RETAIN.to_string(),
                message.retain.to_string().into_bytes(),
            ),
            (
                header::CLIENT_ID.to_string(),
                message.client_id.clone().into_bytes(),
            ),
        ];
        if let Some(username) = &message.username {
            headers.push((header::USERNAME.to_string(), username.clone().into_bytes()));
        }
        if let Some(content_type) = &message.content_type {
            headers.push((
                header::CONTENT_TYPE.to_string(),
                content_type.clone().into_bytes(),
            ));
        }
        for (name, value) in &message.user_properties {
            headers.push((name.clone(), value.clone().into_bytes()));
        }
        let value = match rule.payload {
            PayloadFormat::Raw => message.payload.to_vec(),
            PayloadFormat::Json => envelope_json(message),
        };
        KafkaRecord {
            rule: rule.name.to_string(),
            topic,
            key,
            headers,
            value,
            timestamp_ms: message.received_at_ms,
        }
    }

    /// Bytes the record takes in the outbox, roughly: what the outbox bound counts.
    pub fn size(&self) -> u64 {
        let headers: usize = self.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
        (self.topic.len() + self.key.as_ref().map_or(0, Vec::len) + headers + self.value.len())
            as u64
    }
}

fn envelope_json(message: &BridgedMessage) -> Vec<u8> {
    let (payload, payload_encoding) = match std::str::from_utf8(&message.payload) {
        Ok(text) => (text.to_string(), "utf8"),
        Err(_) => (
            base64::engine::general_purpose::STANDARD.encode(&message.payload),
            "base64",
        ),
    };
    let envelope = Envelope {
        topic: message.topic.clone(),
        payload,
        payload_encoding: payload_encoding.to_string(),
        qos: message.qos,
        retain: message.retain,
        client_id: message.client_id.clone(),
        username: message.username.clone(),
        user_properties: message.user_properties.clone(),
        content_type: message.content_type.clone(),
        timestamp_ms: message.received_at_ms,
    };
    // A struct of strings and numbers always serializes.
    serde_json::to_vec(&envelope).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AckMode, EgressRule};
    use crate::template::Template;

    fn rule(payload: PayloadFormat) -> EgressRule {
        EgressRule {
            name: "r1".into(),
            filter: fleetmq_topic::TopicFilter::parse("site/+/temp").unwrap(),
            kafka_topic: Template::parse("t", "mqtt-${topic.2}").unwrap(),
            key: Some(Template::parse("k", "${clientid}").unwrap()),
            payload,
            ack: AckMode::AfterOutbox,
        }
    }

    fn message(payload: &'static [u8]) -> BridgedMessage {
        BridgedMessage {
            topic: "site/a/temp".into(),
            payload: Bytes::from_static(payload),
            qos: 1,
            retain: false,
            client_id: "dev-1".into(),
            username: Some("alice".into()),
            user_properties: vec![("unit".into(), "C".into()), ("unit".into(), "K".into())],
            content_type: None,
            received_at_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn a_raw_record_keeps_the_payload_and_carries_the_metadata_in_headers() {
        let record = KafkaRecord::build(&rule(PayloadFormat::Raw), &message(b"21.5"));
        assert_eq!(record.topic, "mqtt-a");
        assert_eq!(record.key.as_deref(), Some(&b"dev-1"[..]));
        assert_eq!(record.value, b"21.5");
        let headers: Vec<(&str, &[u8])> = record
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        assert_eq!(
            headers,
            [
                ("mqtt.topic", &b"site/a/temp"[..]),
                ("mqtt.qos", b"1"),
                ("mqtt.retain", b"false"),
                ("mqtt.client_id", b"dev-1"),
                ("mqtt.username", b"alice"),
                ("unit", b"C"),
                ("unit", b"K"),
            ]
        );
        assert_eq!(record.timestamp_ms, 1_700_000_000_000);
    }

    #[test]
    fn the_json_envelope_holds_text_as_text_and_binary_as_base64() {
        let text = KafkaRecord::build(&rule(PayloadFormat::Json), &message(b"21.5"));
        let envelope: Envelope = serde_json::from_slice(&text.value).unwrap();
        assert_eq!(envelope.payload, "21.5");
        assert_eq!(envelope.payload_encoding, "utf8");
        assert_eq!(envelope.topic, "site/a/temp");
        assert_eq!(envelope.client_id, "dev-1");
        assert_eq!(envelope.user_properties.len(), 2);

        let binary = KafkaRecord::build(&rule(PayloadFormat::Json), &message(&[0xff, 0x00, 0x10]));
        let envelope: Envelope = serde_json::from_slice(&binary.value).unwrap();
        assert_eq!(envelope.payload_encoding, "base64");
        assert_eq!(envelope.payload, "/wAQ");
    }

    #[test]
    fn an_empty_key_means_no_key() {
        let mut r = rule(PayloadFormat::Raw);
        r.key = Some(Template::parse("k", "${username}").unwrap());
        let mut m = message(b"x");
        m.username = None;
        assert_eq!(KafkaRecord::build(&r, &m).key, None);
    }
}
