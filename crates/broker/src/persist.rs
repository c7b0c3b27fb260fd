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
//! - `owners`: client id → [`OwnerRecord`]: the client registry, which node holds the
//!   session; writes on a client's behalf are fenced by it (see [`crate::command`])
//!
//! Message ids and delivery seqs come from [`IdGen`]: unique across nodes (the node id
//! is in the low bits) and ordered by time, so every node writes the same trees.

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
pub const OWNERS: &str = "owners";
/// Cluster-wide settings an operator changes at runtime (the access rules): name →
/// opaque bytes the server interprets.
pub const SETTINGS: &str = "settings";
/// Every tree the broker writes, in the order of the layout above.
pub const TREES: &[&str] = &[
    SESSIONS, MESSAGES, DELIVERIES, QOS2_IN, RETAINED, OWNERS, SETTINGS,
];

/// Node ids fit in this many low bits of every message id and delivery seq.
pub const NODE_ID_BITS: u32 = 10;
/// The largest node id a cluster may use.
pub const MAX_NODE_ID: u64 = (1 << NODE_ID_BITS) - 1;

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
    /// Written by a node that did not hold the session when it routed the message
    /// (the session's owner picks it up from the replicated log), as opposed to a
    /// delivery its owner wrote and already holds in memory.
    pub for_remote_owner: bool,
    /// The first write of this delivery (as opposed to a phase change): the only kind
    /// a node that does not hold the session may make.
    pub first_write: bool,
}

impl DeliveryRecord {
    pub fn phase(&self) -> Option<(u16, Phase)> {
        self.inflight
            .and_then(|(id, phase)| Phase::from_u8(phase).map(|p| (id, p)))
    }
}

/// Which node holds a client's session, and how many times it has moved.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct OwnerRecord {
    pub node: u64,
    pub epoch: u64,
}

/// Makes message ids and delivery seqs that no other node makes: microseconds since
/// the epoch (strictly increasing per node) in the high bits, the node id in the low
/// ones. Time order keeps a session's deliveries from several nodes roughly in
/// arrival order when they are read back in key order.
#[derive(Debug, Clone)]
pub struct IdGen {
    node_id: u64,
    last: u64,
}

impl IdGen {
    pub fn new(node_id: u64) -> Self {
        IdGen {
            node_id: node_id & MAX_NODE_ID,
            last: 0,
        }
    }

    /// Never hand out an id at or below `id` again (ids read back from storage).
    pub fn observe(&mut self, id: u64) {
        self.last = self.last.max(id >> NODE_ID_BITS);
    }

    pub fn next_id(&mut self) -> u64 {
        let micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        self.last = (self.last + 1).max(micros);
        (self.last << NODE_ID_BITS) | self.node_id
    }
}

/// Everything stored for one client, read when its session moves to this node.
#[derive(Debug, Default)]
pub struct ClientState {
    pub session: Option<SessionRecord>,
    /// Seq and record, in seq order.
    pub deliveries: Vec<(u64, DeliveryRecord)>,
    /// The messages the deliveries point at.
    pub messages: Vec<(u64, MessageRecord)>,
    pub qos2_in: Vec<u16>,
}

/// Reads one client's session, deliveries, their messages and QoS 2 state.
pub fn load_client(engine: &dyn KvEngine, client: &str) -> Result<ClientState, PersistError> {
    let mut state = ClientState {
        session: engine
            .get(SESSIONS, client.as_bytes())?
            .map(|v| decode(SESSIONS, &v))
            .transpose()?,
        ..ClientState::default()
    };
    let prefix = client_prefix(client);
    let mut wanted = Vec::new();
    for (key, value) in engine.scan_prefix(DELIVERIES, &prefix)? {
        let seq = u64_key(DELIVERIES, &key[prefix.len()..])?;
        let record: DeliveryRecord = decode(DELIVERIES, &value)?;
        wanted.push(record.message_id);
        state.deliveries.push((seq, record));
    }
    wanted.sort_unstable();
    wanted.dedup();
    for id in wanted {
        if let Some(value) = engine.get(MESSAGES, &id.to_be_bytes())? {
            state.messages.push((id, decode(MESSAGES, &value)?));
        }
    }
    for (key, _) in engine.scan_prefix(QOS2_IN, &prefix)? {
        let id: [u8; 2] = key[prefix.len()..]
            .try_into()
            .map_err(|_| PersistError::Corrupt {
                tree: QOS2_IN,
                detail: "packet id is not 2 bytes".into(),
            })?;
        state.qos2_in.push(u16::from_be_bytes(id));
    }
    Ok(state)
}

/// Stored messages no delivery points at any more. A message gets its deliveries in
/// the batch that stores it and only loses them afterwards, so one found here stays
/// unreferenced: any node may delete it, whichever sessions (on whichever nodes) once
/// held it.
pub fn unreferenced_messages(engine: &dyn KvEngine) -> Result<Vec<u64>, PersistError> {
    // Messages first, deliveries second, while entries keep being applied: a message
    // comes with its deliveries in one atomic write and only loses them later, so one
    // seen here has its deliveries in the second scan unless they are gone for good.
    // The other order lost messages: one stored between the scans looked unreferenced,
    // and its deliveries were left without a body.
    let mut candidates = Vec::new();
    for (key, _) in engine.scan_prefix(MESSAGES, &[])? {
        candidates.push(u64_key(MESSAGES, &key)?);
    }
    if candidates.is_empty() {
        return Ok(candidates);
    }
    let mut referenced = std::collections::HashSet::new();
    for (_, value) in engine.scan_prefix(DELIVERIES, &[])? {
        let record: DeliveryRecord = decode(DELIVERIES, &value)?;
        referenced.insert(record.message_id);
    }
    candidates.retain(|id| !referenced.contains(id));
    Ok(candidates)
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
    pub owners: Vec<(String, OwnerRecord)>,
    pub settings: Vec<(String, Vec<u8>)>,
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
    for (key, value) in engine.scan_prefix(OWNERS, &[])? {
        let client = String::from_utf8(key).map_err(|e| PersistError::Corrupt {
            tree: OWNERS,
            detail: e.to_string(),
        })?;
        snap.owners.push((client, decode(OWNERS, &value)?));
    }
    for (key, value) in engine.scan_prefix(SETTINGS, &[])? {
        let name = String::from_utf8(key).map_err(|e| PersistError::Corrupt {
            tree: SETTINGS,
            detail: e.to_string(),
        })?;
        snap.settings.push((name, value));
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
    use fleetmq_storage::WriteBatch;

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
    fn ids_are_unique_per_node_and_increase() {
        let mut a = IdGen::new(1);
        let mut b = IdGen::new(2);
        let (a1, a2, b1) = (a.next_id(), a.next_id(), b.next_id());
        assert!(a2 > a1);
        assert_eq!(a1 & MAX_NODE_ID, 1);
        assert_eq!(b1 & MAX_NODE_ID, 2);
        assert_ne!(a1, b1);
        // An id from the future (another node's clock ahead): never reused.
        let mut c = IdGen::new(1);
        let future = ((a2 >> NODE_ID_BITS) + 60_000_000) << NODE_ID_BITS | 3;
        c.observe(future);
        assert!(c.next_id() > future);
    }

    /// An engine that stores a new message with its delivery right after the first
    /// scan, as the state machine applying an entry during a sweep's scans does.
    struct WritesBetweenScans {
        inner: fleetmq_storage::MemoryEngine,
        scans: std::sync::atomic::AtomicUsize,
    }

    impl KvEngine for WritesBetweenScans {
        fn get(&self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
            self.inner.get(tree, key)
        }

        fn scan_prefix(
            &self,
            tree: &str,
            prefix: &[u8],
        ) -> Result<Vec<fleetmq_storage::KvPair>, StorageError> {
            let found = self.inner.scan_prefix(tree, prefix)?;
            if self.scans.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                let mut batch = WriteBatch::new();
                batch.put(MESSAGES, 7u64.to_be_bytes().to_vec(), vec![0]);
                batch.put(
                    DELIVERIES,
                    client_key("late", &1u64.to_be_bytes()),
                    encode(&delivery_of(7)),
                );
                self.inner.write(batch)?;
            }
            Ok(found)
        }

        fn write(&self, batch: WriteBatch) -> Result<(), StorageError> {
            self.inner.write(batch)
        }

        fn flush(&self) -> Result<(), StorageError> {
            Ok(())
        }
    }

    fn delivery_of(message_id: u64) -> DeliveryRecord {
        DeliveryRecord {
            message_id,
            qos: 1,
            retain: false,
            subscription_ids: vec![],
            inflight: None,
            for_remote_owner: true,
            first_write: true,
        }
    }

    #[test]
    fn a_message_stored_during_the_sweep_scan_is_not_swept() {
        let engine = WritesBetweenScans {
            inner: fleetmq_storage::MemoryEngine::new(),
            scans: Default::default(),
        };
        let mut batch = WriteBatch::new();
        // 1 is referenced, 2 is not.
        batch.put(MESSAGES, 1u64.to_be_bytes().to_vec(), vec![0]);
        batch.put(MESSAGES, 2u64.to_be_bytes().to_vec(), vec![0]);
        batch.put(
            DELIVERIES,
            client_key("c", &1u64.to_be_bytes()),
            encode(&delivery_of(1)),
        );
        engine.inner.write(batch).unwrap();
        assert_eq!(unreferenced_messages(&engine).unwrap(), [2]);
        assert!(engine
            .inner
            .get(MESSAGES, &7u64.to_be_bytes())
            .unwrap()
            .is_some());
        // The next sweep sees message 7 with its delivery.
        assert_eq!(unreferenced_messages(&engine).unwrap(), [2]);
    }

    #[test]
    fn corrupt_records_are_errors_not_panics() {
        assert!(decode::<SessionRecord>(SESSIONS, &[0xff, 0xff, 0xff]).is_err());
    }
}
