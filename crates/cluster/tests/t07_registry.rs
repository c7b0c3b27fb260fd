//! The client registry in the state machine: commands on a client's behalf are
//! admitted only from the node that holds it at the record they name, a claim only over
//! the record it expects, and the apply feed tells the broker what was applied (its own
//! refusals too) and which sessions became its own. Entries of an upgraded format-2 log
//! are applied as that release applied them.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use fleetmq_broker::command::{Command, Fence, NewDelivery, PublishCommand, Verdict};
use fleetmq_broker::persist::{
    self, DeliveryRecord, MessageRecord, OwnerRecord, SessionRecord, DELIVERIES, MESSAGES, OWNERS,
    QOS2_IN, SESSIONS,
};
use fleetmq_broker::Applied;
use fleetmq_cluster::types::RequestBody;
use fleetmq_cluster::{
    ApplyFeed, ClusterOp, ClusterRequest, NodeId, StateMachineStore, TypeConfig,
};
use fleetmq_storage::{KvEngine, MemoryEngine};
use openraft::storage::RaftStateMachine;
use openraft::testing::log_id;
use openraft::{Entry, EntryPayload};

fn entry(index: u64, origin: NodeId, commands: Vec<Command>) -> Entry<TypeConfig> {
    request(index, origin, 0, commands)
}

fn request(index: u64, origin: NodeId, seq: u64, commands: Vec<Command>) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(1, 1, index),
        payload: EntryPayload::Normal(ClusterRequest::commands(origin, seq, commands)),
    }
}

fn owner(node: NodeId, epoch: u64) -> Option<OwnerRecord> {
    Some(OwnerRecord { node, epoch })
}

fn claim(client: &str, expected: Option<OwnerRecord>, node: NodeId) -> Command {
    Command::Claim {
        client: client.into(),
        expected,
        owner: OwnerRecord {
            node,
            epoch: expected.map_or(0, |o| o.epoch) + 1,
        },
    }
}

fn fence(client: &str, owner: Option<OwnerRecord>) -> Fence {
    Fence {
        client: client.into(),
        owner,
    }
}

fn session(expiry: u32) -> SessionRecord {
    SessionRecord {
        protocol_level: 4,
        expiry_interval: expiry,
        subscriptions: vec![],
        will: None,
        disconnected_at_ms: None,
    }
}

fn save(client: &str, by: Option<OwnerRecord>, expiry: u32) -> Command {
    Command::SaveSession {
        fence: fence(client, by),
        record: session(expiry),
    }
}

fn message() -> MessageRecord {
    MessageRecord {
        topic: "t".into(),
        payload: bytes::Bytes::from_static(b"m"),
        qos: 2,
        retain: false,
        payload_format_indicator: None,
        content_type: None,
        response_topic: None,
        correlation_data: None,
        user_properties: vec![],
        publisher: None,
        expires_at_ms: None,
    }
}

/// A QoS 2 PUBLISH of `publisher` (held at `by`) for subscriber `to`, delivery `seq`.
fn publish(publisher: Option<(&str, Option<OwnerRecord>)>, to: &str, seq: u64) -> Command {
    Command::Publish(PublishCommand {
        id: seq,
        on_behalf: publisher.map(|(client, by)| fence(client, by)),
        qos2_in: publisher.map(|_| 7),
        message: Some((seq, message())),
        deliveries: vec![NewDelivery {
            client: to.into(),
            seq,
            record: DeliveryRecord {
                message_id: seq,
                qos: 2,
                retain: false,
                subscription_ids: vec![],
                inflight: None,
                for_remote_owner: true,
                first_write: true,
            },
        }],
    })
}

fn delivery_key(client: &str, seq: u64) -> Vec<u8> {
    persist::client_key(client, &seq.to_be_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_owners_commands_are_refused_whole_on_every_node_alike() {
    let engine: Arc<dyn KvEngine> = Arc::new(MemoryEngine::new());
    let mut sm = StateMachineStore::new(Arc::clone(&engine), persist::TREES).unwrap();
    let responses = sm
        .apply([
            // Node 1 creates both sessions; node 3 holds the subscriber.
            entry(
                1,
                1,
                vec![claim("pub", None, 1), save("pub", owner(1, 1), 60)],
            ),
            entry(
                2,
                3,
                vec![claim("sub", None, 3), save("sub", owner(3, 1), 60)],
            ),
            // The publisher moves to node 2 (it reconnected there).
            entry(3, 2, vec![claim("pub", owner(1, 1), 2)]),
            // Node 1, paused before it proposed, rewrites the session and routes a QoS 2
            // PUBLISH it received before the move: none of it lands, the delivery to
            // node 3's subscriber included.
            entry(
                4,
                1,
                vec![
                    save("pub", owner(1, 1), 1),
                    publish(Some(("pub", owner(1, 1))), "sub", 11),
                ],
            ),
            // The failover of node 1, decided from the registry before the move, comes
            // after the client's own claim: refused, the client stays where it is.
            entry(5, 0, vec![claim("pub", owner(1, 1), 3)]),
            // The client's resend on node 2, and a message from outside any session.
            entry(6, 2, vec![publish(Some(("pub", owner(2, 2))), "sub", 12)]),
            entry(7, 3, vec![publish(None, "sub", 13)]),
        ])
        .await
        .unwrap();
    let fenced: Vec<usize> = responses.iter().map(|r| r.fenced_ops).collect();
    assert_eq!(fenced, vec![0, 0, 0, 2, 1, 0, 0]);
    let stored: SessionRecord =
        persist::decode(SESSIONS, &engine.get(SESSIONS, b"pub").unwrap().unwrap()).unwrap();
    assert_eq!(stored.expiry_interval, 60, "the deposed owner's rewrite");
    let registry: OwnerRecord =
        persist::decode(OWNERS, &engine.get(OWNERS, b"pub").unwrap().unwrap()).unwrap();
    assert_eq!(Some(registry), owner(2, 2), "the stale adoption");
    assert!(engine
        .get(DELIVERIES, &delivery_key("sub", 11))
        .unwrap()
        .is_none());
    assert!(engine
        .get(MESSAGES, &11u64.to_be_bytes())
        .unwrap()
        .is_none());
    assert!(engine
        .get(DELIVERIES, &delivery_key("sub", 12))
        .unwrap()
        .is_some());
    assert!(engine
        .get(DELIVERIES, &delivery_key("sub", 13))
        .unwrap()
        .is_some());
    // One QoS 2 receive state: the new owner's, for the resend.
    assert_eq!(engine.scan_prefix(QOS2_IN, &[]).unwrap().len(), 1);

    // Only the owner completes a delivery.
    let remove = |by| Command::RemoveDelivery {
        fence: fence("sub", by),
        seq: 12,
    };
    let responses = sm
        .apply([
            entry(8, 1, vec![remove(owner(1, 1))]),
            entry(9, 3, vec![remove(owner(3, 1))]),
        ])
        .await
        .unwrap();
    assert_eq!(responses[0].fenced_ops, 1);
    assert_eq!(responses[1].fenced_ops, 0);
    assert!(engine
        .get(DELIVERIES, &delivery_key("sub", 12))
        .unwrap()
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_landed_twice_is_applied_once() {
    let engine: Arc<dyn KvEngine> = Arc::new(MemoryEngine::new());
    let mut sm = StateMachineStore::new(Arc::clone(&engine), persist::TREES).unwrap();
    let create = vec![claim("dev", None, 3), publish(None, "dev", 9)];
    let delete = vec![Command::RemoveDelivery {
        fence: fence("dev", owner(3, 1)),
        seq: 9,
    }];
    let responses = sm
        .apply([
            request(1, 3, 100, create.clone()),
            request(2, 3, 101, delete),
            // Node 3's first attempt timed out although it had committed: it retried.
            request(3, 3, 100, create),
        ])
        .await
        .unwrap();
    let duplicate: Vec<bool> = responses.iter().map(|r| r.duplicate).collect();
    assert_eq!(duplicate, vec![false, false, true]);
    assert!(
        engine
            .get(DELIVERIES, &delivery_key("dev", 9))
            .unwrap()
            .is_none(),
        "the completed delivery did not come back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_gets_each_entry_with_this_nodes_refusals_then_its_new_sessions() {
    let engine: Arc<dyn KvEngine> = Arc::new(MemoryEngine::new());
    let mut sm = StateMachineStore::new(Arc::clone(&engine), persist::TREES).unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    *sm.feed_slot().lock().await = Some(ApplyFeed { node_id: 2, tx });
    sm.apply([
        entry(1, 1, vec![claim("a", None, 1), save("a", owner(1, 1), 60)]),
        entry(2, 2, vec![claim("a", owner(1, 1), 2)]),
        // Claimed by 2 and then by 3 in the same apply: 2 gets no load for it.
        entry(3, 2, vec![claim("b", None, 2)]),
        entry(4, 3, vec![claim("b", owner(2, 1), 3)]),
        // Refusals: node 3's is not news here, node 2's own is.
        entry(5, 3, vec![save("a", owner(3, 1), 5)]),
        entry(6, 2, vec![save("b", owner(2, 1), 5)]),
    ])
    .await
    .unwrap();
    let mut entries = Vec::new();
    let mut loaded = Vec::new();
    let mut through = Vec::new();
    while let Ok(item) = rx.try_recv() {
        match item {
            Applied::Entry { origin, commands } => {
                assert!(loaded.is_empty(), "every entry comes before the loads");
                let verdicts: Vec<bool> = commands
                    .iter()
                    .map(|c| c.verdict == Verdict::Applied)
                    .collect();
                entries.push((origin, verdicts));
            }
            Applied::Loaded { client, state } => {
                loaded.push((client.to_string(), state.session.is_some()));
            }
            Applied::Reset(_) => panic!("no snapshot is installed here"),
            Applied::Through(index) => through.push(index),
            Applied::Members(_) => panic!("no membership entry is applied here"),
        }
    }
    assert_eq!(
        entries,
        vec![
            (1, vec![true, true]),
            (2, vec![true]),
            (2, vec![true]),
            (3, vec![true]),
            (3, vec![]),
            (2, vec![false]),
        ]
    );
    assert_eq!(loaded, vec![("a".to_string(), true)]);
    assert_eq!(through, [6], "the last item says the whole apply was sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_writes_of_an_upgraded_log_apply_as_before_and_reload_the_router() {
    let engine: Arc<dyn KvEngine> = Arc::new(MemoryEngine::new());
    let mut sm = StateMachineStore::new(Arc::clone(&engine), persist::TREES).unwrap();
    let raw = |index, origin, ops| Entry {
        log_id: log_id(1, 1, index),
        payload: EntryPayload::Normal(ClusterRequest {
            origin,
            request_seq: 0,
            body: RequestBody::Legacy(ops),
        }),
    };
    let put = |tree: &str, key: &str, value: Vec<u8>| ClusterOp::Put {
        tree: tree.into(),
        key: key.as_bytes().to_vec(),
        value,
    };
    let responses = sm
        .apply([
            raw(
                1,
                1,
                vec![
                    put(
                        OWNERS,
                        "dev",
                        persist::encode(&OwnerRecord { node: 1, epoch: 1 }),
                    ),
                    put(SESSIONS, "dev", persist::encode(&session(60))),
                ],
            ),
            // The previous release's rule: only the owner writes the session.
            raw(
                2,
                2,
                vec![put(SESSIONS, "dev", persist::encode(&session(1)))],
            ),
            raw(3, 1, vec![put("no-such-tree", "k", vec![1])]),
        ])
        .await
        .unwrap();
    let counts: Vec<(usize, usize)> = responses
        .iter()
        .map(|r| (r.fenced_ops, r.skipped_ops))
        .collect();
    assert_eq!(counts, vec![(0, 0), (1, 0), (0, 1)]);
    let stored: SessionRecord =
        persist::decode(SESSIONS, &engine.get(SESSIONS, b"dev").unwrap().unwrap()).unwrap();
    assert_eq!(stored.expiry_interval, 60);

    // Under a running broker the router cannot follow raw writes: it reloads.
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    *sm.feed_slot().lock().await = Some(ApplyFeed { node_id: 1, tx });
    sm.apply([raw(
        4,
        1,
        vec![put(SESSIONS, "dev", persist::encode(&session(30)))],
    )])
    .await
    .unwrap();
    let Ok(Applied::Reset(stored)) = rx.try_recv() else {
        panic!("a reload of the store");
    };
    assert_eq!(stored.sessions.len(), 1);
    assert_eq!(stored.sessions[0].1.expiry_interval, 30);
}

/// With the state machine in memory a snapshot is all a restart has, and it holds the
/// trees the store was opened with: a command writing another tree stops the node
/// instead of being lost at the next restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_writing_a_tree_snapshots_do_not_hold_stops_the_state_machine() {
    static ONLY_SESSIONS: &[&str] = &[persist::SESSIONS, persist::OWNERS];
    let engine: Arc<dyn KvEngine> = Arc::new(MemoryEngine::new());
    let mut sm = StateMachineStore::new(Arc::clone(&engine), ONLY_SESSIONS).unwrap();
    let result = sm
        .apply([entry(
            1,
            1,
            vec![Command::SetSetting {
                name: "acl".into(),
                value: Some(vec![1]),
            }],
        )])
        .await;
    let error = result.expect_err("a write outside the snapshot's trees is an error");
    assert!(
        error.to_string().contains("snapshots do not hold"),
        "the error says why: {error}"
    );
    assert_eq!(engine.get(persist::SETTINGS, b"acl").unwrap(), None);
}
