//! What the replicated log carries: the broker's own commands, who may make each
//! (admission, fenced by the client registry) and what each writes to storage.
//!
//! This is the only module that turns a change of broker state into tree names and
//! keys (through [`crate::persist`]'s layout). The state machine, the single-node
//! committer and the in-process cluster tests all apply commands through [`apply`], so
//! every node decides the same for the same command in the same log position.
//!
//! Fencing: a write on behalf of a client (its session record, its QoS 2 state, its
//! delivery cursors, and everything one of its PUBLISHes writes) names the registry
//! record its proposer holds the client by ([`Fence`]). It is refused, as a whole, when
//! the registry names anything else by the time it is applied: a node that was paused
//! or cut off while the client moved on cannot, once back, add what the client has
//! meanwhile resent elsewhere. A claim names the record it replaces, so of two claims
//! made from the same view (a failover adoption racing a reconnect) only the first is
//! admitted.
//!
//! Every command names the client or topic it belongs to ([`Command::key`]): the
//! state will be split into shards by it.

use std::collections::HashMap;

use fleetmq_storage::{KvEngine, WriteBatch, WriteOp};
use serde::{Deserialize, Serialize};

use crate::persist::{
    self, client_key, client_prefix, DeliveryRecord, MessageRecord, OwnerRecord, PersistError,
    SessionRecord, DELIVERIES, MESSAGES, OWNERS, QOS2_IN, RETAINED, SESSIONS, SETTINGS,
};

/// The registry record a write's proposer holds its client by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fence {
    pub client: String,
    /// `None`: nobody is named (a session a lone node keeps without a record).
    pub owner: Option<OwnerRecord>,
}

/// The first write of one delivery: a message for one session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewDelivery {
    pub client: String,
    pub seq: u64,
    pub record: DeliveryRecord,
}

/// Everything one routed message writes, admitted or refused as one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishCommand {
    /// Unique per proposing node: how the proposer recognises the command's outcome.
    pub id: u64,
    /// The client on whose behalf it is written: the publisher (or the session whose
    /// will it is, or the subscriber that receives retained messages). `None` for
    /// messages from outside any session (another node's forward, the Kafka bridge).
    pub on_behalf: Option<Fence>,
    /// The publisher's QoS 2 packet id, awaiting PUBREL from now on.
    pub qos2_in: Option<u16>,
    /// The message body, stored once for all deliveries.
    pub message: Option<(u64, MessageRecord)>,
    pub deliveries: Vec<NewDelivery>,
}

impl PublishCommand {
    pub fn is_empty(&self) -> bool {
        self.qos2_in.is_none() && self.message.is_none() && self.deliveries.is_empty()
    }
}

/// One change of replicated state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// `owner` holds the client's session from now on, if the registry still names
    /// `expected`.
    Claim {
        client: String,
        expected: Option<OwnerRecord>,
        owner: OwnerRecord,
    },
    SaveSession {
        fence: Fence,
        record: SessionRecord,
    },
    /// The session no longer outlives its connection: its record, deliveries and QoS 2
    /// state go (its registry record stays).
    ForgetSession {
        fence: Fence,
    },
    /// The session ended: everything stored for it goes, registry record included.
    EndSession {
        fence: Fence,
    },
    Publish(PublishCommand),
    /// A delivery was sent or moved on in its QoS exchange; nothing if it is gone.
    DeliveryPhase {
        fence: Fence,
        seq: u64,
        record: DeliveryRecord,
    },
    RemoveDelivery {
        fence: Fence,
        seq: u64,
    },
    /// PUBREL for the client's QoS 2 PUBLISH `packet_id`.
    ReleaseQos2 {
        fence: Fence,
        packet_id: u16,
    },
    /// Sets (`Some`) or clears the retained message of `topic`.
    SetRetained {
        topic: String,
        message: Option<MessageRecord>,
    },
    /// Sets or clears a cluster-wide setting.
    SetSetting {
        name: String,
        value: Option<Vec<u8>>,
    },
    /// Message bodies no delivery points at any more.
    DeleteMessages {
        ids: Vec<u64>,
    },
}

/// What a command belongs to: the shard it will live in follows from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandKey<'a> {
    Client(&'a str),
    Topic(&'a str),
    Setting(&'a str),
    /// Bodies of messages (by id), wherever their deliveries are.
    Messages,
    /// A message from outside any session.
    Unowned,
}

impl Command {
    pub fn key(&self) -> CommandKey<'_> {
        match self {
            Command::Claim { client, .. } => CommandKey::Client(client),
            Command::SaveSession { fence, .. }
            | Command::ForgetSession { fence }
            | Command::EndSession { fence }
            | Command::DeliveryPhase { fence, .. }
            | Command::RemoveDelivery { fence, .. }
            | Command::ReleaseQos2 { fence, .. } => CommandKey::Client(&fence.client),
            Command::Publish(publish) => match &publish.on_behalf {
                Some(fence) => CommandKey::Client(&fence.client),
                None => CommandKey::Unowned,
            },
            Command::SetRetained { topic, .. } => CommandKey::Topic(topic),
            Command::SetSetting { name, .. } => CommandKey::Setting(name),
            Command::DeleteMessages { .. } => CommandKey::Messages,
        }
    }

    /// Roughly how many storage writes it makes: what bounds one Raft entry.
    pub fn weight(&self) -> usize {
        match self {
            Command::Publish(p) => 1 + p.deliveries.len(),
            Command::DeleteMessages { ids } => ids.len().max(1),
            _ => 1,
        }
    }

    /// The short name of its kind, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::Claim { .. } => "claim",
            Command::SaveSession { .. } => "save_session",
            Command::ForgetSession { .. } => "forget_session",
            Command::EndSession { .. } => "end_session",
            Command::Publish(_) => "publish",
            Command::DeliveryPhase { .. } => "delivery_phase",
            Command::RemoveDelivery { .. } => "remove_delivery",
            Command::ReleaseQos2 { .. } => "release_qos2",
            Command::SetRetained { .. } => "set_retained",
            Command::SetSetting { .. } => "set_setting",
            Command::DeleteMessages { .. } => "delete_messages",
        }
    }
}

/// Whether a command was applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Applied,
    /// Refused: the registry named `registry` for the command's client, not what the
    /// command expected.
    Refused {
        registry: Option<OwnerRecord>,
    },
}

/// Writes staged by one apply call on top of an engine, so that each command is
/// admitted against the ones before it; [`Staged::into_batch`] gives them for one
/// atomic write.
pub struct Staged<'a> {
    engine: &'a dyn KvEngine,
    values: HashMap<(&'static str, Vec<u8>), Option<Vec<u8>>>,
    deleted_prefixes: Vec<(&'static str, Vec<u8>)>,
    batch: WriteBatch,
}

impl<'a> Staged<'a> {
    pub fn new(engine: &'a dyn KvEngine) -> Self {
        Staged {
            engine,
            values: HashMap::new(),
            deleted_prefixes: Vec::new(),
            batch: WriteBatch::new(),
        }
    }

    pub fn get(&self, tree: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, PersistError> {
        if let Some(value) = self.values.get(&(tree, key.to_vec())) {
            return Ok(value.clone());
        }
        if self
            .deleted_prefixes
            .iter()
            .any(|(t, prefix)| *t == tree && key.starts_with(prefix))
        {
            return Ok(None);
        }
        Ok(self.engine.get(tree, key)?)
    }

    /// The registry record of `client`, as staged.
    pub fn owner(&self, client: &str) -> Result<Option<OwnerRecord>, PersistError> {
        self.get(OWNERS, client.as_bytes())?
            .map(|bytes| persist::decode(OWNERS, &bytes))
            .transpose()
    }

    /// Stages one raw write (commands use the helpers below; [`legacy`] uses this).
    pub fn push(&mut self, op: WriteOp) {
        match &op {
            WriteOp::Put { tree, key, value } => {
                self.values.insert((tree, key.clone()), Some(value.clone()));
            }
            WriteOp::Delete { tree, key } => {
                self.values.insert((tree, key.clone()), None);
            }
            WriteOp::DeletePrefix { tree, prefix } => {
                self.values
                    .retain(|(t, k), _| !(t == tree && k.starts_with(prefix)));
                self.deleted_prefixes.push((tree, prefix.clone()));
            }
        }
        self.batch.push(op);
    }

    fn put(&mut self, tree: &'static str, key: Vec<u8>, value: Vec<u8>) {
        self.push(WriteOp::Put { tree, key, value });
    }

    fn delete(&mut self, tree: &'static str, key: Vec<u8>) {
        self.push(WriteOp::Delete { tree, key });
    }

    fn delete_prefix(&mut self, tree: &'static str, prefix: Vec<u8>) {
        self.push(WriteOp::DeletePrefix { tree, prefix });
    }

    pub fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }

    pub fn into_batch(self) -> WriteBatch {
        self.batch
    }
}

/// Admits `command` against the registry as staged, and stages its writes if admitted.
/// Deterministic: the same command on the same state decides the same on every node.
pub fn apply(staged: &mut Staged<'_>, command: &Command) -> Result<Verdict, PersistError> {
    match command {
        Command::Claim {
            client,
            expected,
            owner,
        } => {
            let registry = staged.owner(client)?;
            if registry != *expected {
                return Ok(Verdict::Refused { registry });
            }
            staged.put(OWNERS, client.as_bytes().to_vec(), persist::encode(owner));
        }
        Command::SaveSession { fence, record } => {
            if let Some(refused) = check(staged, fence)? {
                return Ok(refused);
            }
            staged.put(
                SESSIONS,
                fence.client.as_bytes().to_vec(),
                persist::encode(record),
            );
        }
        Command::ForgetSession { fence } => {
            if let Some(refused) = check(staged, fence)? {
                return Ok(refused);
            }
            forget(staged, &fence.client);
        }
        Command::EndSession { fence } => {
            if let Some(refused) = check(staged, fence)? {
                return Ok(refused);
            }
            forget(staged, &fence.client);
            staged.delete(OWNERS, fence.client.as_bytes().to_vec());
        }
        Command::Publish(publish) => {
            if let Some(fence) = &publish.on_behalf {
                if let Some(refused) = check(staged, fence)? {
                    return Ok(refused);
                }
                if let Some(packet_id) = publish.qos2_in {
                    staged.put(
                        QOS2_IN,
                        client_key(&fence.client, &packet_id.to_be_bytes()),
                        Vec::new(),
                    );
                }
            }
            if let Some((id, record)) = &publish.message {
                staged.put(MESSAGES, id.to_be_bytes().to_vec(), persist::encode(record));
            }
            for delivery in &publish.deliveries {
                let key = client_key(&delivery.client, &delivery.seq.to_be_bytes());
                // Ids are unique per node and a request applies once; a delivery
                // already there is never overwritten by its first write all the same.
                if staged.get(DELIVERIES, &key)?.is_none() {
                    staged.put(DELIVERIES, key, persist::encode(&delivery.record));
                }
            }
        }
        Command::DeliveryPhase { fence, seq, record } => {
            if let Some(refused) = check(staged, fence)? {
                return Ok(refused);
            }
            let key = client_key(&fence.client, &seq.to_be_bytes());
            // Completed or dropped meanwhile (or its first write was refused): a late
            // phase change must not bring it back.
            if staged.get(DELIVERIES, &key)?.is_some() {
                staged.put(DELIVERIES, key, persist::encode(record));
            }
        }
        Command::RemoveDelivery { fence, seq } => {
            if let Some(refused) = check(staged, fence)? {
                return Ok(refused);
            }
            staged.delete(DELIVERIES, client_key(&fence.client, &seq.to_be_bytes()));
        }
        Command::ReleaseQos2 { fence, packet_id } => {
            if let Some(refused) = check(staged, fence)? {
                return Ok(refused);
            }
            staged.delete(QOS2_IN, client_key(&fence.client, &packet_id.to_be_bytes()));
        }
        Command::SetRetained { topic, message } => match message {
            Some(record) => {
                staged.put(RETAINED, topic.as_bytes().to_vec(), persist::encode(record))
            }
            None => staged.delete(RETAINED, topic.as_bytes().to_vec()),
        },
        Command::SetSetting { name, value } => match value {
            Some(value) => staged.put(SETTINGS, name.as_bytes().to_vec(), value.clone()),
            None => staged.delete(SETTINGS, name.as_bytes().to_vec()),
        },
        Command::DeleteMessages { ids } => {
            for id in ids {
                staged.delete(MESSAGES, id.to_be_bytes().to_vec());
            }
        }
    }
    Ok(Verdict::Applied)
}

/// Applies `commands` in order to `engine` in one atomic write; returns each verdict.
/// Blocking: for the single-node committer and tests; the state machine stages its
/// own, with its bookkeeping in the same write.
pub fn apply_all(
    engine: &dyn KvEngine,
    commands: &[Command],
) -> Result<Vec<Verdict>, PersistError> {
    let mut staged = Staged::new(engine);
    let verdicts = commands
        .iter()
        .map(|command| apply(&mut staged, command))
        .collect::<Result<Vec<_>, _>>()?;
    if !staged.is_empty() {
        engine.write(staged.into_batch())?;
    }
    Ok(verdicts)
}

/// `None` when the registry names what `fence` expects, else the refusal.
fn check(staged: &Staged<'_>, fence: &Fence) -> Result<Option<Verdict>, PersistError> {
    let registry = staged.owner(&fence.client)?;
    Ok((registry != fence.owner).then_some(Verdict::Refused { registry }))
}

fn forget(staged: &mut Staged<'_>, client: &str) {
    staged.delete(SESSIONS, client.as_bytes().to_vec());
    staged.delete_prefix(DELIVERIES, client_prefix(client));
    staged.delete_prefix(QOS2_IN, client_prefix(client));
}

/// Raw writes from logs written before commands existed (data format 2), applied as
/// that release applied them: kept only so an upgraded node can finish applying its
/// old log. Nothing proposes them any more.
pub mod legacy {
    use super::*;

    /// Whether a raw write from `origin` may be applied: only the owner named in the
    /// registry writes a client's session record, QoS 2 state and delivery cursors;
    /// any node may add a delivery not stored yet (the previous release's rule).
    pub fn admit(staged: &Staged<'_>, origin: u64, op: &WriteOp) -> Result<bool, PersistError> {
        let (tree, key, value) = match op {
            WriteOp::Put { tree, key, value } => (*tree, key.as_slice(), Some(value.as_slice())),
            WriteOp::Delete { tree, key } => (*tree, key.as_slice(), None),
            WriteOp::DeletePrefix { tree, prefix } => (*tree, prefix.as_slice(), None),
        };
        let client = match tree {
            SESSIONS => std::str::from_utf8(key).ok(),
            DELIVERIES | QOS2_IN => persist::split_client_key(key).map(|(client, _)| client),
            _ => return Ok(true),
        };
        let Some(client) = client else {
            return Ok(true);
        };
        match staged.owner(client)? {
            None => Ok(true),
            Some(owner) if owner.node == origin => Ok(true),
            Some(_) => Ok(tree == DELIVERIES
                && value
                    .and_then(|v| persist::decode::<DeliveryRecord>(DELIVERIES, v).ok())
                    .is_some_and(|d| d.first_write)
                && staged.get(DELIVERIES, key)?.is_none()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetmq_storage::MemoryEngine;

    fn owner(node: u64, epoch: u64) -> Option<OwnerRecord> {
        Some(OwnerRecord { node, epoch })
    }

    fn fence(client: &str, owner: Option<OwnerRecord>) -> Fence {
        Fence {
            client: client.into(),
            owner,
        }
    }

    fn claim(client: &str, expected: Option<OwnerRecord>, node: u64) -> Command {
        Command::Claim {
            client: client.into(),
            expected,
            owner: OwnerRecord {
                node,
                epoch: expected.map_or(0, |o| o.epoch) + 1,
            },
        }
    }

    fn delivery(client: &str, seq: u64, first: bool) -> (NewDelivery, DeliveryRecord) {
        let record = DeliveryRecord {
            message_id: 9,
            qos: 2,
            retain: false,
            subscription_ids: vec![],
            inflight: None,
            for_remote_owner: true,
            first_write: first,
        };
        (
            NewDelivery {
                client: client.into(),
                seq,
                record: record.clone(),
            },
            record,
        )
    }

    fn publish(on_behalf: Option<Fence>, qos2_in: Option<u16>, to: &str) -> Command {
        Command::Publish(PublishCommand {
            id: 1,
            on_behalf,
            qos2_in,
            message: Some((
                9,
                MessageRecord::from_message(&crate::message::Message {
                    topic: std::sync::Arc::from("t"),
                    payload: bytes::Bytes::from_static(b"x"),
                    qos: fleetmq_codec::QoS::ExactlyOnce,
                    retain: false,
                    properties: Default::default(),
                    publisher: None,
                    expires_at_ms: None,
                }),
            )),
            deliveries: vec![delivery(to, 5, true).0],
        })
    }

    #[test]
    fn a_claim_is_admitted_only_over_the_record_it_expects() {
        let engine = MemoryEngine::new();
        let v = apply_all(&engine, &[claim("c", None, 1)]).unwrap();
        assert_eq!(v, [Verdict::Applied]);
        // A failover adoption and a reconnect, both made from (1, 1): the first wins,
        // the second is refused, whichever it is.
        let v = apply_all(
            &engine,
            &[claim("c", owner(1, 1), 2), claim("c", owner(1, 1), 3)],
        )
        .unwrap();
        assert_eq!(
            v,
            [
                Verdict::Applied,
                Verdict::Refused {
                    registry: owner(2, 2)
                }
            ]
        );
        let stored = Staged::new(&engine).owner("c").unwrap();
        assert_eq!(stored, owner(2, 2));
    }

    #[test]
    fn a_publish_from_a_deposed_owner_is_refused_whole() {
        let engine = MemoryEngine::new();
        apply_all(&engine, &[claim("pub", None, 1), claim("sub", None, 3)]).unwrap();
        // The publisher moved to node 2 before node 1's PUBLISH was applied.
        apply_all(&engine, &[claim("pub", owner(1, 1), 2)]).unwrap();
        let v = apply_all(
            &engine,
            &[publish(Some(fence("pub", owner(1, 1))), Some(7), "sub")],
        )
        .unwrap();
        assert_eq!(
            v,
            [Verdict::Refused {
                registry: owner(2, 2)
            }]
        );
        assert!(engine.scan_prefix(QOS2_IN, &[]).unwrap().is_empty());
        assert!(engine.scan_prefix(DELIVERIES, &[]).unwrap().is_empty());
        assert!(engine.scan_prefix(MESSAGES, &[]).unwrap().is_empty());
        // From the new owner: QoS 2 state, body and delivery, together.
        let v = apply_all(
            &engine,
            &[publish(Some(fence("pub", owner(2, 2))), Some(7), "sub")],
        )
        .unwrap();
        assert_eq!(v, [Verdict::Applied]);
        assert_eq!(engine.scan_prefix(QOS2_IN, &[]).unwrap().len(), 1);
        assert_eq!(engine.scan_prefix(DELIVERIES, &[]).unwrap().len(), 1);
        assert_eq!(engine.scan_prefix(MESSAGES, &[]).unwrap().len(), 1);
    }

    #[test]
    fn session_writes_need_the_current_owner_and_phases_need_the_delivery() {
        let engine = MemoryEngine::new();
        apply_all(&engine, &[claim("c", None, 1)]).unwrap();
        let (new, record) = delivery("c", 5, true);
        let first = Command::Publish(PublishCommand {
            id: 2,
            on_behalf: None,
            qos2_in: None,
            message: None,
            deliveries: vec![new],
        });
        apply_all(&engine, &[first]).unwrap();
        let phase = |node, epoch, seq| Command::DeliveryPhase {
            fence: fence("c", owner(node, epoch)),
            seq,
            record: record.clone(),
        };
        // The owner moves a delivery on; a stale owner cannot; nobody revives one gone.
        let v = apply_all(&engine, &[phase(1, 1, 5), phase(2, 1, 5), phase(1, 1, 6)]).unwrap();
        assert_eq!(v[0], Verdict::Applied);
        assert!(matches!(v[1], Verdict::Refused { .. }));
        assert_eq!(v[2], Verdict::Applied);
        assert!(engine
            .get(DELIVERIES, &client_key("c", &6u64.to_be_bytes()))
            .unwrap()
            .is_none());
        // A deposed owner's end of the session does not delete the new owner's.
        apply_all(&engine, &[claim("c", owner(1, 1), 2)]).unwrap();
        let v = apply_all(
            &engine,
            &[Command::EndSession {
                fence: fence("c", owner(1, 1)),
            }],
        )
        .unwrap();
        assert!(matches!(v[0], Verdict::Refused { .. }));
        assert_eq!(Staged::new(&engine).owner("c").unwrap(), owner(2, 2));
        assert_eq!(engine.scan_prefix(DELIVERIES, &[]).unwrap().len(), 1);
    }

    #[test]
    fn commands_round_trip_through_postcard() {
        let command = publish(Some(fence("p", owner(1, 3))), Some(4), "s");
        let bytes = postcard::to_stdvec(&command).unwrap();
        let back: Command = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, command);
    }
}
