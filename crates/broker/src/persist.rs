//! How sessions, queued messages, QoS 2 state and retained messages are laid out
//! in the key-value store, and loading them back at start.
//!
//! Trees and keys (client ids never contain U+0000, so 0 separates key parts):
//! - `sessions`: client id → [`SessionRecord`]
//! - `messages`: message id (u64 BE) → [`MessageRecord`], stored once however many
//!   sessions it waits for
//! - `deliveries`: client id, 0, seq (u64 BE) → [`DeliveryRecord`], one per message per session
//! - `qos2_in`: client id, 0, packet id (u16 BE) → empty: QoS 2 PUBLISHes awaiting PUBREL
//! - `retained`: topic → [`MessageRecord`]

use std::sync::Arc;

use bytes::Bytes;
use fleetmq_codec::{
    LastWill, ProtocolVersion, QoS, RetainHandling, SubscriptionOptions, WillProperties,
};
use fleetmq_storage::{KvEngine, StorageError};
use serde::{Deserialize, Serialize};

use crate::message::{Message, MessageProperties};
use crate::session::{Phase, SubscriptionEntry};

pub const SESSIONS: &str = "sessions";
pub const MESSAGES: &str = "messages";
pub const DELIVERIES: &str = "deliveries";
pub const QOS2_IN: &str = "qos2_in";
pub const RETAINED: &str = "retained";
/// Every tree the broker writes, in the order of the layout above.
pub const TREES: &[&str] = &[SESSIONS, MESSAGES, DELIVERIES, QOS2_IN, RETAINED];

#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("corrupt {tree} record: {detail}")]
    Corrupt { tree: &'static str, detail: String },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MessageRecord {
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
    pub payload_format_indicator: Option<u8>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
    pub user_properties: Vec<(String, String)>,
    pub publisher: Option<String>,
    pub expires_at_ms: Option<u64>,
}

impl MessageRecord {
    pub fn from_message(m: &Message) -> Self {
        MessageRecord {
            topic: m.topic.to_string(),
            payload: m.payload.clone(),
            qos: m.qos.as_u8(),
            retain: m.retain,
            payload_format_indicator: m.properties.payload_format_indicator,
            content_type: m.properties.content_type.clone(),
            response_topic: m.properties.response_topic.as_deref().map(str::to_string),
            correlation_data: m.properties.correlation_data.clone(),
            user_properties: m.properties.user_properties.clone(),
            publisher: m.publisher.as_deref().map(str::to_string),
            expires_at_ms: m.expires_at_ms,
        }
    }

    pub fn into_message(self) -> Message {
        Message {
            topic: Arc::from(self.topic),
            payload: self.payload,
            qos: QoS::from_u8(self.qos).unwrap_or(QoS::AtLeastOnce),
            retain: self.retain,
            properties: MessageProperties {
                payload_format_indicator: self.payload_format_indicator,
                content_type: self.content_type,
                response_topic: self.response_topic.map(Arc::from),
                correlation_data: self.correlation_data,
                user_properties: self.user_properties,
            },
            publisher: self.publisher.map(Arc::from),
            expires_at_ms: self.expires_at_ms,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SubscriptionRecord {
    pub filter: String,
    pub qos: u8,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: u8,
    pub subscription_id: Option<u32>,
}

impl SubscriptionRecord {
    pub fn new(filter: &str, entry: &SubscriptionEntry) -> Self {
        SubscriptionRecord {
            filter: filter.to_string(),
            qos: entry.options.qos.as_u8(),
            no_local: entry.options.no_local,
            retain_as_published: entry.options.retain_as_published,
            retain_handling: entry.options.retain_handling as u8,
            subscription_id: entry.subscription_id,
        }
    }

    pub fn entry(&self) -> SubscriptionEntry {
        SubscriptionEntry {
            options: SubscriptionOptions {
                qos: QoS::from_u8(self.qos).unwrap_or_default(),
                no_local: self.no_local,
                retain_as_published: self.retain_as_published,
                retain_handling: match self.retain_handling {
                    1 => RetainHandling::SendIfNewSubscription,
                    2 => RetainHandling::DoNotSend,
                    _ => RetainHandling::SendAtSubscribe,
                },
            },
            subscription_id: self.subscription_id,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WillRecord {
    pub message: MessageRecord,
    pub delay_interval: Option<u32>,
    pub message_expiry_interval: Option<u32>,
}

impl WillRecord {
    pub fn from_will(will: &LastWill) -> Self {
        let p = &will.properties;
        WillRecord {
            message: MessageRecord {
                topic: will.topic.to_string(),
                payload: will.payload.clone(),
                qos: will.qos.as_u8(),
                retain: will.retain,
                payload_format_indicator: p.payload_format_indicator,
                content_type: p.content_type.clone(),
                response_topic: p.response_topic.as_deref().map(str::to_string),
                correlation_data: p.correlation_data.clone(),
                user_properties: p.user_properties.clone(),
                publisher: None,
                expires_at_ms: None,
            },
            delay_interval: p.will_delay_interval,
            message_expiry_interval: p.message_expiry_interval,
        }
    }

    pub fn into_will(self) -> LastWill {
        let m = self.message;
        LastWill {
            topic: Arc::from(m.topic),
            payload: m.payload,
            qos: QoS::from_u8(m.qos).unwrap_or_default(),
            retain: m.retain,
            properties: WillProperties {
                will_delay_interval: self.delay_interval,
                payload_format_indicator: m.payload_format_indicator,
                message_expiry_interval: self.message_expiry_interval,
                content_type: m.content_type,
                response_topic: m.response_topic.map(Arc::from),
                correlation_data: m.correlation_data,
                user_properties: m.user_properties,
            },
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionRecord {
    pub protocol_level: u8,
    pub expiry_interval: u32,
    pub subscriptions: Vec<SubscriptionRecord>,
    pub will: Option<WillRecord>,
    pub disconnected_at_ms: Option<u64>,
}

impl SessionRecord {
    pub fn protocol(&self) -> ProtocolVersion {
        match self.protocol_level {
            3 => ProtocolVersion::V3_1,
            4 => ProtocolVersion::V3_1_1,
            _ => ProtocolVersion::V5,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeliveryRecord {
    pub message_id: u64,
    pub qos: u8,
    pub retain: bool,
    pub subscription_ids: Vec<u32>,
    /// Set once the message was sent: its packet id and [`Phase`] as u8.
    pub inflight: Option<(u16, u8)>,
}

impl DeliveryRecord {
    pub fn phase(&self) -> Option<(u16, Phase)> {
        self.inflight
            .and_then(|(id, phase)| Phase::from_u8(phase).map(|p| (id, p)))
    }
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing these plain structs into a Vec cannot fail.
    postcard::to_stdvec(value).unwrap_or_default()
}

pub fn decode<'a, T: Deserialize<'a>>(
    tree: &'static str,
    bytes: &'a [u8],
) -> Result<T, PersistError> {
    postcard::from_bytes(bytes).map_err(|e| PersistError::Corrupt {
        tree,
        detail: e.to_string(),
    })
}

pub fn client_key(client_id: &str, suffix: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(client_id.len() + 1 + suffix.len());
    key.extend_from_slice(client_id.as_bytes());
    key.push(0);
    key.extend_from_slice(suffix);
    key
}

pub fn client_prefix(client_id: &str) -> Vec<u8> {
    client_key(client_id, &[])
}

/// Splits `client id, 0, rest` into its parts.
pub fn split_client_key(key: &[u8]) -> Option<(&str, &[u8])> {
    let at = key.iter().position(|b| *b == 0)?;
    let client = std::str::from_utf8(&key[..at]).ok()?;
    Some((client, &key[at + 1..]))
}

/// Everything stored, read at start.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub sessions: Vec<(String, SessionRecord)>,
    pub messages: Vec<(u64, MessageRecord)>,
    /// Client id, seq, record; in key order, so per client in seq order.
    pub deliveries: Vec<(String, u64, DeliveryRecord)>,
    pub qos2_in: Vec<(String, u16)>,
    pub retained: Vec<MessageRecord>,
}

pub fn load(engine: &dyn KvEngine) -> Result<Snapshot, PersistError> {
    let mut snap = Snapshot::default();
    for (key, value) in engine.scan_prefix(SESSIONS, &[])? {
        let client = String::from_utf8(key).map_err(|e| PersistError::Corrupt {
            tree: SESSIONS,
            detail: e.to_string(),
        })?;
        snap.sessions.push((client, decode(SESSIONS, &value)?));
    }
    for (key, value) in engine.scan_prefix(MESSAGES, &[])? {
        let id = u64_key(MESSAGES, &key)?;
        snap.messages.push((id, decode(MESSAGES, &value)?));
    }
    for (key, value) in engine.scan_prefix(DELIVERIES, &[])? {
        let (client, rest) = split_client_key(&key).ok_or(PersistError::Corrupt {
            tree: DELIVERIES,
            detail: "key without client id".into(),
        })?;
        let seq = u64_key(DELIVERIES, rest)?;
        snap.deliveries
            .push((client.to_string(), seq, decode(DELIVERIES, &value)?));
    }
    for (key, _) in engine.scan_prefix(QOS2_IN, &[])? {
        let (client, rest) = split_client_key(&key).ok_or(PersistError::Corrupt {
            tree: QOS2_IN,
            detail: "key without client id".into(),
        })?;
        let id: [u8; 2] = rest.try_into().map_err(|_| PersistError::Corrupt {
            tree: QOS2_IN,
            detail: "packet id is not 2 bytes".into(),
        })?;
        snap.qos2_in
            .push((client.to_string(), u16::from_be_bytes(id)));
    }
    for (_, value) in engine.scan_prefix(RETAINED, &[])? {
        snap.retained.push(decode(RETAINED, &value)?);
    }
    Ok(snap)
}

fn u64_key(tree: &'static str, key: &[u8]) -> Result<u64, PersistError> {
    let bytes: [u8; 8] = key.try_into().map_err(|_| PersistError::Corrupt {
        tree,
        detail: "key is not 8 bytes".into(),
    })?;
    Ok(u64::from_be_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_record_round_trips() {
        let m = Message {
            topic: Arc::from("a/b"),
            payload: Bytes::from_static(b"hello"),
            qos: QoS::ExactlyOnce,
            retain: true,
            properties: MessageProperties {
                payload_format_indicator: Some(1),
                content_type: Some("text/plain".into()),
                response_topic: Some(Arc::from("r")),
                correlation_data: Some(Bytes::from_static(b"c")),
                user_properties: vec![("k".into(), "v".into())],
            },
            publisher: Some(Arc::from("pub")),
            expires_at_ms: Some(42),
        };
        let bytes = encode(&MessageRecord::from_message(&m));
        let back: MessageRecord = decode(MESSAGES, &bytes).unwrap();
        assert_eq!(back.into_message(), m);
    }

    #[test]
    fn client_keys_split_back() {
        let key = client_key("dev-1", &7u64.to_be_bytes());
        let (client, rest) = split_client_key(&key).unwrap();
        assert_eq!(client, "dev-1");
        assert_eq!(rest, 7u64.to_be_bytes());
    }

    #[test]
    fn corrupt_records_are_errors_not_panics() {
        assert!(decode::<SessionRecord>(SESSIONS, &[0xff, 0xff, 0xff]).is_err());
    }
}
