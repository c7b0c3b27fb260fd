//! The client registry in the state machine: writes to a client's session state are
//! admitted only from the node that holds it, any node may add a new delivery, and the
//! apply feed tells the broker what was applied and which sessions became its own.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use fleetmq_broker::persist::{
    self, DeliveryRecord, OwnerRecord, SessionRecord, DELIVERIES, OWNERS, SESSIONS,
};
use fleetmq_broker::Applied;
use fleetmq_cluster::{
    ApplyFeed, ClusterOp, ClusterRequest, NodeId, StateMachineStore, TypeConfig,
};
use fleetmq_storage::{KvEngine, MemoryEngine, WriteOp};
use openraft::storage::RaftStateMachine;
use openraft::testing::log_id;
use openraft::{Entry, EntryPayload};

fn put(tree: &str, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> ClusterOp {
    ClusterOp::Put {
        tree: tree.into(),
        key: key.into(),
        value: value.into(),
    }
}

fn entry(index: u64, origin: NodeId, ops: Vec<ClusterOp>) -> Entry<TypeConfig> {
    request(index, origin, 0, ops)
}

fn request(index: u64, origin: NodeId, seq: u64, ops: Vec<ClusterOp>) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(1, 1, index),
        payload: EntryPayload::Normal(ClusterRequest {
            origin,
            request_seq: seq,
            ops,
        }),
    }
}

fn delivery(first_write: bool, phase: Option<(u16, u8)>) -> Vec<u8> {
    persist::encode(&DeliveryRecord {
        message_id: 1,
        qos: 2,
        retain: false,
        subscription_ids: vec![],
        inflight: phase,
        for_remote_owner: false,
        first_write,
    })
}

fn owner(node: NodeId, epoch: u64) -> Vec<u8> {
    persist::encode(&OwnerRecord { node, epoch })
}

fn session(expiry: u32) -> Vec<u8> {
    persist::encode(&SessionRecord {
        protocol_level: 4,
        expiry_interval: expiry,
        subscriptions: vec![],
        will: None,
        disconnected_at_ms: None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_owner_cannot_overwrite_but_anyone_adds_deliveries() {
    let engine: Arc<dyn KvEngine> = Arc::new(MemoryEngine::new());
    let mut sm = StateMachineStore::new(Arc::clone(&engine), persist::TREES).unwrap();
    let delivery_key = persist::client_key("dev", &7u64.to_be_bytes());
    let responses = sm
        .apply([
            // Node 1 creates the session.
            entry(
                1,
                1,
                vec![
                    put(OWNERS, "dev", owner(1, 1)),
                    put(SESSIONS, "dev", session(60)),
                ],
            ),
            // Node 2 claims it.
            entry(2, 2, vec![put(OWNERS, "dev", owner(2, 2))]),
            // Node 1, not yet aware, rewrites the session, moves a delivery to its next
            // phase (a key node 2 may have completed and deleted meanwhile) and stores a
            // message it routed there; node 3 routes a new message to it.
            entry(
                3,
                1,
                vec![
                    put(SESSIONS, "dev", session(1)),
                    put(
                        DELIVERIES,
                        persist::client_key("dev", &1u64.to_be_bytes()),
                        delivery(false, Some((5, 3))),
                    ),
                    put(
                        DELIVERIES,
                        persist::client_key("dev", &2u64.to_be_bytes()),
                        delivery(true, Some((6, 2))),
                    ),
                ],
            ),
            entry(
                4,
                3,
                vec![put(DELIVERIES, delivery_key.clone(), delivery(true, None))],
            ),
            // Another first write of the same key is not a second delivery.
            entry(
                5,
                3,
                vec![put(
                    DELIVERIES,
                    delivery_key.clone(),
                    delivery(true, Some((1, 1))),
                )],
            ),
        ])
        .await
        .unwrap();
    let fenced: Vec<usize> = responses.iter().map(|r| r.fenced_ops).collect();
    assert_eq!(fenced, vec![0, 0, 2, 0, 1]);
    assert!(engine
        .get(DELIVERIES, &persist::client_key("dev", &1u64.to_be_bytes()))
        .unwrap()
        .is_none());
    assert!(engine
        .get(DELIVERIES, &persist::client_key("dev", &2u64.to_be_bytes()))
        .unwrap()
        .is_some());
    // Node 1's session rewrite after the claim was not applied.
    let stored: SessionRecord =
        persist::decode(SESSIONS, &engine.get(SESSIONS, b"dev").unwrap().unwrap()).unwrap();
    assert_eq!(
        stored.expiry_interval, 60,
        "the deposed owner's rewrite was fenced"
    );
    assert_eq!(
        engine.get(DELIVERIES, &delivery_key).unwrap(),
        Some(delivery(true, None))
    );

    let responses = sm
        .apply([entry(
            6,
            1,
            vec![
                ClusterOp::Delete {
                    tree: DELIVERIES.into(),
                    key: delivery_key.clone(),
                },
                ClusterOp::DeletePrefix {
                    tree: DELIVERIES.into(),
                    prefix: persist::client_prefix("dev"),
                },
            ],
        )])
        .await
        .unwrap();
    assert_eq!(responses[0].fenced_ops, 2, "only the owner deletes");
    assert!(engine.get(DELIVERIES, &delivery_key).unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_landed_twice_is_applied_once() {
    let engine: Arc<dyn KvEngine> = Arc::new(MemoryEngine::new());
    let mut sm = StateMachineStore::new(Arc::clone(&engine), persist::TREES).unwrap();
    let key = persist::client_key("dev", &9u64.to_be_bytes());
    let create = vec![put(DELIVERIES, key.clone(), delivery(true, None))];
    let delete = vec![ClusterOp::Delete {
        tree: DELIVERIES.into(),
        key: key.clone(),
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
        engine.get(DELIVERIES, &key).unwrap().is_none(),
        "the completed delivery did not come back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_gets_each_entry_then_the_sessions_that_became_this_nodes() {
    let engine: Arc<dyn KvEngine> = Arc::new(MemoryEngine::new());
    let mut sm = StateMachineStore::new(Arc::clone(&engine), persist::TREES).unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    *sm.feed_slot().lock().await = Some(ApplyFeed { node_id: 2, tx });
    sm.apply([
        entry(
            1,
            1,
            vec![
                put(OWNERS, "a", owner(1, 1)),
                put(SESSIONS, "a", session(60)),
            ],
        ),
        entry(2, 2, vec![put(OWNERS, "a", owner(2, 2))]),
        // Claimed by 2 and then by 3 in the same apply: 2 gets no load for it.
        entry(3, 2, vec![put(OWNERS, "b", owner(2, 1))]),
        entry(4, 3, vec![put(OWNERS, "b", owner(3, 2))]),
    ])
    .await
    .unwrap();
    let mut entries = 0;
    let mut loaded = Vec::new();
    let mut through = Vec::new();
    while let Ok(item) = rx.try_recv() {
        match item {
            Applied::Entry { origin, ops } => {
                assert!(loaded.is_empty(), "every entry comes before the loads");
                entries += 1;
                assert!((1..=3).contains(&origin));
                assert!(ops.iter().all(|op| matches!(op, WriteOp::Put { .. })));
            }
            Applied::Loaded { client, state } => {
                loaded.push((client.to_string(), state.session.is_some()));
            }
            Applied::Reset(_) => panic!("no snapshot is installed here"),
            Applied::Through(index) => through.push(index),
            Applied::Members(_) => panic!("no membership entry is applied here"),
        }
    }
    assert_eq!(entries, 4);
    assert_eq!(loaded, vec![("a".to_string(), true)]);
    assert_eq!(through, [4], "the last item says the whole apply was sent");
}
