//! The Raft storage: openraft's own storage suite, then what FleetMQ relies on beyond it:
//! appended entries and applied state survive a reopen and a SIGKILL, apply is atomic and
//! idempotent, a snapshot carries every tree to another node, unknown trees are skipped.

// Helpers outside #[test] fns count as non-test code for clippy; a failed unwrap here is a
// test failure with its location, which is what a test wants.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use fleetmq_cluster::{
    open_raft_storage, ClusterOp, ClusterRequest, ClusterResponse, FileLogStore, NodeId,
    SledLogStore, StateMachineStore, StoreError, TypeConfig, META_TREE,
};
use fleetmq_storage::{KvEngine, KvPair, MemoryEngine, SledEngine};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{log_id, StoreBuilder, Suite};
use openraft::{
    AnyError, BasicNode, Entry, EntryPayload, LogId, Membership, RaftLogReader,
    RaftSnapshotBuilder, StorageError, StorageIOError, StoredMembership, Vote,
};
use tempfile::TempDir;

/// The broker's trees (crates/broker/src/persist.rs).
const TREES: &[&str] = &["sessions", "messages", "deliveries", "qos2_in", "retained"];

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn put(tree: &str, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> ClusterOp {
    ClusterOp::Put {
        tree: tree.into(),
        key: key.into(),
        value: value.into(),
    }
}

/// An entry of raw writes on named trees (an upgraded format-2 log's): the state
/// machine's mechanics (atomic apply, snapshots, unknown trees) on any tree. Typed
/// commands are tested in t07_registry.
fn normal(index: u64, ops: Vec<ClusterOp>) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(1, 1, index),
        payload: EntryPayload::Normal(ClusterRequest {
            origin: 1,
            request_seq: 0,
            body: fleetmq_cluster::types::RequestBody::Legacy(ops),
        }),
    }
}

fn membership(index: u64, voters: &[NodeId]) -> Entry<TypeConfig> {
    let voters: BTreeSet<NodeId> = voters.iter().copied().collect();
    Entry {
        log_id: log_id(1, 1, index),
        payload: EntryPayload::Membership(Membership::new(vec![voters], None)),
    }
}

fn dump(engine: &dyn KvEngine) -> Vec<(&'static str, Vec<KvPair>)> {
    TREES
        .iter()
        .map(|t| (*t, engine.scan_prefix(t, b"").unwrap()))
        .collect()
}

// --- openraft's suite -------------------------------------------------------------------

fn io_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write(AnyError::new(&e)).into()
}

/// Builds a log store and a state machine in a fresh temporary directory, which the guard
/// removes once the test is done with both.
struct Builder {
    sled_engine: bool,
}

impl StoreBuilder<TypeConfig, FileLogStore, StateMachineStore, TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(TempDir, FileLogStore, StateMachineStore), StorageError<NodeId>> {
        let dir = tempfile::tempdir().map_err(io_err)?;
        let engine: Arc<dyn KvEngine> = if self.sled_engine {
            Arc::new(SledEngine::open(&dir.path().join("sm")).map_err(io_err)?)
        } else {
            Arc::new(MemoryEngine::new())
        };
        let (log, sm) = open_raft_storage(dir.path(), engine, TREES).map_err(io_err)?;
        Ok((dir, log, sm))
    }
}

/// The log as releases before segment files kept it: still read, to move it.
struct SledLogBuilder;

impl StoreBuilder<TypeConfig, SledLogStore, StateMachineStore, TempDir> for SledLogBuilder {
    async fn build(
        &self,
    ) -> Result<(TempDir, SledLogStore, StateMachineStore), StorageError<NodeId>> {
        let dir = tempfile::tempdir().map_err(io_err)?;
        let log = SledLogStore::open(&dir.path().join("raft-log")).map_err(io_err)?;
        let sm = StateMachineStore::new(Arc::new(MemoryEngine::new()), TREES).map_err(io_err)?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_suite_with_sled_engine() {
    Suite::test_all(Builder { sled_engine: true }).unwrap();
}

#[test]
fn openraft_suite_with_memory_engine() {
    Suite::test_all(Builder { sled_engine: false }).unwrap();
}

#[test]
fn openraft_suite_with_the_sled_log() {
    Suite::test_all(SledLogBuilder).unwrap();
}

// --- the log store ----------------------------------------------------------------------

#[test]
fn an_entry_that_does_not_decode_stops_the_log_and_names_its_index() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    rt.block_on(async {
        let mut log = SledLogStore::open(dir.path()).unwrap();
        log.blocking_append((1..=3).map(|i| normal(i, vec![put("sessions", [i as u8], "v")])))
            .await
            .unwrap();
    });
    // What a newer release (or a damaged disk) leaves in the log: entry 2 is not an
    // entry this build can read.
    {
        let db = sled::open(dir.path()).unwrap();
        let tree = db.open_tree("raft_log").unwrap();
        let mut key = vec![b'e'];
        key.extend_from_slice(&2u64.to_be_bytes());
        tree.insert(key, vec![0xff; 24]).unwrap();
        db.flush().unwrap();
    }
    rt.block_on(async {
        let mut log = SledLogStore::open(dir.path()).unwrap();
        let error = log
            .try_get_log_entries(1..=3)
            .await
            .expect_err("an undecodable entry is an error, never skipped");
        let text = error.to_string();
        assert!(
            text.contains(fleetmq_cluster::store::UNDECODABLE_ENTRY) && text.contains(" 2 "),
            "the error names the entry: {text}"
        );
        // The entries before it still read.
        let first = log.try_get_log_entries(1..2).await.unwrap();
        assert_eq!(first, vec![normal(1, vec![put("sessions", [1], "v")])]);
    });
}

#[test]
fn log_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let vote = Vote::new_committed(3, 2);
    rt.block_on(async {
        let mut log = SledLogStore::open(dir.path()).unwrap();
        // Several entries per append: one flush covers them all.
        log.blocking_append((1..=5).map(|i| normal(i, vec![put("sessions", [i as u8], "v")])))
            .await
            .unwrap();
        log.blocking_append([membership(6, &[1, 2, 3])])
            .await
            .unwrap();
        log.blocking_append((7..=9).map(|i| normal(i, vec![])))
            .await
            .unwrap();
        log.save_vote(&vote).await.unwrap();
        log.save_committed(Some(log_id(1, 1, 6))).await.unwrap();
        log.purge(log_id(1, 1, 2)).await.unwrap();
        log.truncate(log_id(1, 1, 8)).await.unwrap();
    });
    rt.block_on(async {
        let mut log = SledLogStore::open(dir.path()).unwrap();
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 1, 2)));
        assert_eq!(state.last_log_id, Some(log_id(1, 1, 7)));
        assert_eq!(log.read_vote().await.unwrap(), Some(vote));
        assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, 1, 6)));
        let entries = log.try_get_log_entries(0..100).await.unwrap();
        let indexes: Vec<u64> = entries.iter().map(|e| e.log_id.index).collect();
        assert_eq!(indexes, vec![3, 4, 5, 6, 7]);
        assert_eq!(entries[0], normal(3, vec![put("sessions", [3], "v")]));
        assert_eq!(entries[3], membership(6, &[1, 2, 3]));
        // A reader from the store sees the same, with any kind of range.
        let mut reader = log.get_log_reader().await;
        assert_eq!(
            reader.try_get_log_entries(4..=5).await.unwrap(),
            entries[1..3]
        );
        assert_eq!(reader.try_get_log_entries(6..).await.unwrap(), entries[3..]);
        assert!(reader.try_get_log_entries(5..5).await.unwrap().is_empty());
    });
}

#[test]
fn log_refuses_a_second_open() {
    let dir = tempfile::tempdir().unwrap();
    let _first = SledLogStore::open(dir.path()).unwrap();
    assert!(matches!(
        SledLogStore::open(dir.path()),
        Err(StoreError::Sled(_))
    ));
}

// --- the state machine ------------------------------------------------------------------

#[test]
fn apply_survives_reopen_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let first = vec![
        membership(1, &[1]),
        normal(
            2,
            vec![
                put("sessions", "c1", "s1"),
                put("sessions", "c2", "s2"),
                put("deliveries", b"c1\0\0", "d0"),
                put("deliveries", b"c1\0\x01", "d1"),
            ],
        ),
        normal(
            3,
            vec![
                ClusterOp::Delete {
                    tree: "sessions".into(),
                    key: b"c2".to_vec(),
                },
                ClusterOp::DeletePrefix {
                    tree: "deliveries".into(),
                    prefix: b"c1\0".to_vec(),
                },
                put("retained", "a/b", "r"),
            ],
        ),
    ];
    let (applied, contents) = rt.block_on(async {
        let engine: Arc<dyn KvEngine> = Arc::new(SledEngine::open(dir.path()).unwrap());
        let mut sm = StateMachineStore::new(Arc::clone(&engine), TREES).unwrap();
        let responses = sm.apply(first.clone()).await.unwrap();
        assert_eq!(responses, vec![ClusterResponse::default(); 3]);
        (sm.applied_state().await.unwrap(), dump(&*engine))
    });
    assert_eq!(applied.0, Some(log_id(1, 1, 3)));
    assert_eq!(
        applied.1,
        StoredMembership::new(
            Some(log_id(1, 1, 1)),
            Membership::new(vec![BTreeSet::from([1])], None)
        )
    );
    assert_eq!(
        contents[0],
        ("sessions", vec![(b"c1".to_vec(), b"s1".to_vec())])
    );
    assert!(contents[2].1.is_empty(), "deliveries: {:?}", contents[2]);

    rt.block_on(async {
        let engine: Arc<dyn KvEngine> = Arc::new(SledEngine::open(dir.path()).unwrap());
        let mut sm = StateMachineStore::new(Arc::clone(&engine), TREES).unwrap();
        assert_eq!(sm.applied_state().await.unwrap(), applied);
        assert_eq!(dump(&*engine), contents);

        // Entries already applied change nothing, even though entry 2 re-run after entry 3
        // would bring back what 3 deleted.
        let responses = sm.apply(first[1..].to_vec()).await.unwrap();
        assert_eq!(responses.len(), 2);
        assert_eq!(sm.applied_state().await.unwrap(), applied);
        assert_eq!(dump(&*engine), contents);

        // And the next entry goes on from there.
        sm.apply([normal(4, vec![put("qos2_in", b"c1\0\0\x07", "")])])
            .await
            .unwrap();
        assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(1, 1, 4)));
        assert_eq!(engine.scan_prefix("qos2_in", b"").unwrap().len(), 1);
    });
}

#[test]
fn unknown_tree_is_skipped_and_counted() {
    let rt = rt();
    rt.block_on(async {
        let engine: Arc<dyn KvEngine> = Arc::new(MemoryEngine::new());
        let mut sm = StateMachineStore::new(Arc::clone(&engine), TREES).unwrap();
        let responses = sm
            .apply([
                normal(
                    1,
                    vec![
                        put("sessions", "c1", "s1"),
                        put("bogus", "k", "v"),
                        put(META_TREE, "applied", "garbage"),
                        ClusterOp::DeletePrefix {
                            tree: "nope".into(),
                            prefix: vec![],
                        },
                    ],
                ),
                normal(2, vec![put("retained", "t", "r")]),
            ])
            .await
            .unwrap();
        assert_eq!(
            responses,
            vec![
                ClusterResponse {
                    skipped_ops: 3,
                    fenced_ops: 0,
                    duplicate: false,
                },
                ClusterResponse {
                    skipped_ops: 0,
                    fenced_ops: 0,
                    duplicate: false,
                }
            ]
        );
        assert!(engine.scan_prefix("bogus", b"").unwrap().is_empty());
        assert_eq!(engine.get("sessions", b"c1").unwrap(), Some(b"s1".to_vec()));
        // The metadata was not overwritten by the op that named its tree.
        assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(1, 1, 2)));
        drop(sm);
        let mut sm = StateMachineStore::new(Arc::clone(&engine), TREES).unwrap();
        assert_eq!(sm.applied_state().await.unwrap().0, Some(log_id(1, 1, 2)));
    });
}

#[test]
fn the_metadata_tree_is_reserved() {
    static WITH_META: &[&str] = &["sessions", META_TREE];
    assert!(matches!(
        StateMachineStore::new(Arc::new(MemoryEngine::new()), WITH_META),
        Err(StoreError::ReservedTree(META_TREE))
    ));
}

#[test]
fn snapshot_carries_every_tree_to_another_store() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let (snapshot, leader_contents) = rt.block_on(async {
        let engine: Arc<dyn KvEngine> = Arc::new(MemoryEngine::new());
        let mut sm = StateMachineStore::new(Arc::clone(&engine), TREES).unwrap();
        let mut entries = vec![membership(1, &[1, 2, 3])];
        for i in 2..50u64 {
            let mut ops = vec![
                put("messages", i.to_be_bytes(), vec![i as u8; 100]),
                put(
                    "deliveries",
                    [b"c\0".as_slice(), &i.to_be_bytes()].concat(),
                    "",
                ),
                put("sessions", format!("c{}", i % 7), format!("s{i}")),
            ];
            if i % 10 == 0 {
                ops.push(ClusterOp::DeletePrefix {
                    tree: "deliveries".into(),
                    prefix: b"c\0".to_vec(),
                });
            }
            entries.push(normal(i, ops));
        }
        sm.apply(entries).await.unwrap();
        let snapshot = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        // Applies after the build do not leak into the snapshot.
        sm.apply([normal(50, vec![put("retained", "late", "x")])])
            .await
            .unwrap();
        let current = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta, snapshot.meta);
        assert_eq!(current.snapshot.get_ref(), snapshot.snapshot.get_ref());
        assert_eq!(snapshot.meta.last_log_id, Some(log_id(1, 1, 49)));
        let mut contents = dump(&*engine);
        contents[4].1.clear(); // "retained": only the late put is there
        (snapshot, contents)
    });

    rt.block_on(async {
        // The follower has state of its own that the snapshot must replace, not merge with.
        let engine: Arc<dyn KvEngine> = Arc::new(SledEngine::open(dir.path()).unwrap());
        let mut sm = StateMachineStore::new(Arc::clone(&engine), TREES).unwrap();
        sm.apply([normal(
            1,
            vec![put("sessions", "stale", "x"), put("qos2_in", "stale", "")],
        )])
        .await
        .unwrap();
        let mut received = sm.begin_receiving_snapshot().await.unwrap();
        received
            .get_mut()
            .extend_from_slice(snapshot.snapshot.get_ref());
        sm.install_snapshot(&snapshot.meta, received).await.unwrap();
        assert_eq!(dump(&*engine), leader_contents);
        assert_eq!(
            sm.applied_state().await.unwrap(),
            (
                snapshot.meta.last_log_id,
                snapshot.meta.last_membership.clone()
            )
        );
        assert_eq!(
            sm.get_current_snapshot().await.unwrap().unwrap().meta,
            snapshot.meta
        );
    });

    // The installed state and the current snapshot survive a restart.
    rt.block_on(async {
        let engine: Arc<dyn KvEngine> = Arc::new(SledEngine::open(dir.path()).unwrap());
        let mut sm = StateMachineStore::new(Arc::clone(&engine), TREES).unwrap();
        assert_eq!(dump(&*engine), leader_contents);
        assert_eq!(
            sm.applied_state().await.unwrap().0,
            snapshot.meta.last_log_id
        );
        let current = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(current.meta, snapshot.meta);
        assert_eq!(current.snapshot.get_ref(), snapshot.snapshot.get_ref());
    });
}

#[test]
fn snapshot_with_mismatched_meta_is_refused() {
    let rt = rt();
    rt.block_on(async {
        let mut a = StateMachineStore::new(Arc::new(MemoryEngine::new()), TREES).unwrap();
        a.apply([normal(1, vec![put("sessions", "c", "s")])])
            .await
            .unwrap();
        let snapshot = a
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        let mut meta = snapshot.meta.clone();
        meta.last_log_id = Some(log_id(1, 1, 7));
        let engine: Arc<dyn KvEngine> = Arc::new(MemoryEngine::new());
        let mut b = StateMachineStore::new(Arc::clone(&engine), TREES).unwrap();
        assert!(b.install_snapshot(&meta, snapshot.snapshot).await.is_err());
        assert!(engine.scan_prefix("sessions", b"").unwrap().is_empty());
        assert_eq!(b.applied_state().await.unwrap().0, None);
    });
}

// --- SIGKILL ----------------------------------------------------------------------------

/// Set in the child process: the directory of the node it runs.
const CHILD_ENV: &str = "FLEETMQ_CLUSTER_STORE_CRASH_CHILD_DIR";
/// The child flushes the state machine's engine once every this many entries.
const ENTRIES_PER_SM_FLUSH: u64 = 16;
/// Entries past the last state machine flush at which the child is killed, one per round.
const KILL_AFTER: [u64; 3] = [5, 11, 3];
/// Entries the child must have appended before it may be killed, per round.
const MIN_ENTRIES_PER_ROUND: u64 = 40;

/// Entry `i`: a record in "messages", the only key of "deliveries", and the session of
/// "c{i % 5}". Any partly applied entry breaks one of the checks in `verify`.
fn crash_entry(i: u64) -> Entry<TypeConfig> {
    normal(
        i,
        vec![
            put("messages", i.to_be_bytes(), crash_payload(i)),
            ClusterOp::DeletePrefix {
                tree: "deliveries".into(),
                prefix: vec![],
            },
            put("deliveries", i.to_be_bytes(), ""),
            put("sessions", format!("c{}", i % 5), i.to_be_bytes()),
        ],
    )
}

fn crash_payload(i: u64) -> Vec<u8> {
    vec![(i % 251) as u8; 64 + (i as usize * 7919) % 4000]
}

fn open_node(dir: &Path) -> (Arc<dyn KvEngine>, FileLogStore, StateMachineStore) {
    let engine: Arc<dyn KvEngine> = Arc::new(SledEngine::open(&dir.join("sm")).unwrap());
    let (log, sm) = open_raft_storage(dir, Arc::clone(&engine), TREES).unwrap();
    (engine, log, sm)
}

/// The child's role: recover like openraft would (re-apply the log past the state machine),
/// then append and apply entries one by one, reporting each step, until killed.
fn child(dir: &Path) {
    let rt = rt();
    rt.block_on(async {
        let (engine, mut log, mut sm) = open_node(dir);
        let last_log = log
            .get_log_state()
            .await
            .unwrap()
            .last_log_id
            .map_or(0, |l| l.index);
        let applied = sm.applied_state().await.unwrap().0.map_or(0, |l| l.index);
        let replay = log
            .try_get_log_entries(applied + 1..=last_log)
            .await
            .unwrap();
        sm.apply(replay).await.unwrap();
        let mut out = std::io::stdout().lock();
        // Bounded so a child the parent failed to kill still ends.
        for i in last_log + 1..last_log + 100_000 {
            log.blocking_append([crash_entry(i)]).await.unwrap();
            writeln!(out, "appended {i}").unwrap();
            sm.apply([crash_entry(i)]).await.unwrap();
            if i % ENTRIES_PER_SM_FLUSH == 0 {
                engine.flush().unwrap();
                writeln!(out, "sm flushed {i}").unwrap();
            }
            out.flush().unwrap();
        }
    });
}

/// Checks the node holds log entries `1..=last` exactly and a state machine that is entries
/// `1..=applied` applied whole; returns `(last, applied)`.
fn verify(dir: &Path) -> (u64, u64) {
    rt().block_on(async {
        let (engine, mut log, mut sm) = open_node(dir);
        let last = log
            .get_log_state()
            .await
            .unwrap()
            .last_log_id
            .map_or(0, |l| l.index);
        let entries = log.try_get_log_entries(..).await.unwrap();
        assert_eq!(entries.len() as u64, last, "log has a hole");
        for (i, e) in (1..).zip(&entries) {
            assert!(*e == crash_entry(i), "log entry {i} differs");
        }

        let applied = sm.applied_state().await.unwrap().0.map_or(0, |l| l.index);
        assert!(
            applied <= last,
            "applied {applied} past the log's end {last}"
        );
        let messages = engine.scan_prefix("messages", b"").unwrap();
        assert_eq!(
            messages.len() as u64,
            applied,
            "messages vs applied {applied}"
        );
        for (i, (k, v)) in (1u64..).zip(&messages) {
            assert_eq!(k, &i.to_be_bytes(), "message {i} missing");
            assert!(*v == crash_payload(i), "message {i} differs");
        }
        let deliveries = engine.scan_prefix("deliveries", b"").unwrap();
        let want: Vec<KvPair> = (applied > 0)
            .then(|| (applied.to_be_bytes().to_vec(), Vec::new()))
            .into_iter()
            .collect();
        assert_eq!(deliveries, want, "deliveries vs applied {applied}");
        for s in 0..5u64 {
            let latest = (1..=applied).rev().find(|i| i % 5 == s);
            assert_eq!(
                engine.get("sessions", format!("c{s}").as_bytes()).unwrap(),
                latest.map(|i| i.to_be_bytes().to_vec()),
                "session c{s} vs applied {applied}"
            );
        }
        (last, applied)
    })
}

#[test]
fn sigkill_keeps_acknowledged_entries_and_whole_applies() {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        child(Path::new(&dir));
        return;
    }

    let dir = tempfile::tempdir().unwrap();
    let mut recovered = 0;
    for (round, kill_after) in KILL_AFTER.into_iter().enumerate() {
        let mut proc = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "sigkill_keeps_acknowledged_entries_and_whole_applies",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = proc.stdout.take().unwrap();
        let mut appended = None;
        let mut sm_flushed = None;
        let mut killed = false;
        // Kept open until the child is dead, so it never fails on a broken pipe first.
        let mut lines = BufReader::new(stdout).lines();
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(n) = line.strip_prefix("sm flushed ") {
                sm_flushed = Some(n.parse::<u64>().unwrap());
            } else if let Some(n) = line.strip_prefix("appended ") {
                let n: u64 = n.parse().unwrap();
                appended = Some(n);
                if n >= recovered + MIN_ENTRIES_PER_ROUND
                    && sm_flushed.is_some_and(|f| n >= f + kill_after)
                {
                    killed = true;
                    break;
                }
            }
        }
        assert!(killed, "round {round}: child ended early");
        // Child::kill sends SIGKILL: no destructor, no final flush of either store.
        proc.kill().unwrap();
        proc.wait().unwrap();
        drop(lines);

        let (last, applied) = verify(dir.path());
        let appended = appended.unwrap();
        assert!(
            last >= appended,
            "round {round}: entry {appended} was acknowledged but the log ends at {last}"
        );
        assert!(
            applied >= sm_flushed.unwrap(),
            "round {round}: state machine flushed at {sm_flushed:?} but recovered {applied}"
        );
        recovered = last;
    }
}

#[test]
fn entries_round_trip_with_any_payload() {
    // Entries are stored with postcard, which is not self-describing: every payload kind and
    // an empty request must come back as written.
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let mut log = SledLogStore::open(dir.path()).unwrap();
        let entries: Vec<Entry<TypeConfig>> = vec![
            Entry {
                log_id: LogId::new(openraft::CommittedLeaderId::new(2, 9), 1),
                payload: EntryPayload::Blank,
            },
            Entry {
                log_id: log_id(2, 9, 2),
                payload: EntryPayload::Membership(Membership::new(
                    vec![BTreeSet::from([1, 2]), BTreeSet::from([2, 3])],
                    [
                        (1, BasicNode::new("10.0.0.1:7000")),
                        (2, BasicNode::new("10.0.0.2:7000")),
                        (3, BasicNode::new("10.0.0.3:7000")),
                        (4, BasicNode::new("10.0.0.4:7000")),
                    ]
                    .into_iter()
                    .collect::<std::collections::BTreeMap<_, _>>(),
                )),
            },
            normal(3, vec![]),
            normal(4, vec![put("sessions", vec![0u8; 0], vec![255u8; 70_000])]),
        ];
        log.blocking_append(entries.clone()).await.unwrap();
        assert_eq!(log.try_get_log_entries(..).await.unwrap(), entries);
    });
}

// --- the segment-file log --------------------------------------------------------------

fn segment(dir: &Path, first: u64) -> std::path::PathBuf {
    dir.join(format!("{first:020}.wal"))
}

#[test]
fn the_segment_log_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let vote = Vote::new_committed(3, 2);
    rt.block_on(async {
        let mut log = FileLogStore::open(dir.path()).unwrap();
        log.blocking_append((1..=5).map(|i| normal(i, vec![put("sessions", [i as u8], "v")])))
            .await
            .unwrap();
        log.blocking_append([membership(6, &[1, 2, 3])])
            .await
            .unwrap();
        log.blocking_append((7..=9).map(|i| normal(i, vec![])))
            .await
            .unwrap();
        log.save_vote(&vote).await.unwrap();
        log.save_committed(Some(log_id(1, 1, 6))).await.unwrap();
        log.purge(log_id(1, 1, 2)).await.unwrap();
        log.truncate(log_id(1, 1, 8)).await.unwrap();
    });
    rt.block_on(async {
        let mut log = FileLogStore::open(dir.path()).unwrap();
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 1, 2)));
        assert_eq!(state.last_log_id, Some(log_id(1, 1, 7)));
        assert_eq!(log.read_vote().await.unwrap(), Some(vote));
        assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, 1, 6)));
        let entries = log.try_get_log_entries(0..100).await.unwrap();
        let indexes: Vec<u64> = entries.iter().map(|e| e.log_id.index).collect();
        assert_eq!(indexes, vec![3, 4, 5, 6, 7]);
        assert_eq!(entries[0], normal(3, vec![put("sessions", [3], "v")]));
        assert_eq!(entries[3], membership(6, &[1, 2, 3]));
        let mut reader = log.get_log_reader().await;
        assert_eq!(
            reader.try_get_log_entries(4..=5).await.unwrap(),
            entries[1..3]
        );
        assert_eq!(reader.try_get_log_entries(6..).await.unwrap(), entries[3..]);
        assert!(reader.try_get_log_entries(5..5).await.unwrap().is_empty());
        // Appends go on after the truncation.
        log.blocking_append([normal(8, vec![])]).await.unwrap();
        assert_eq!(
            log.get_log_state().await.unwrap().last_log_id,
            Some(log_id(1, 1, 8))
        );
    });
}

/// A crash during an append leaves a record cut short at the end: it was never
/// acknowledged (its sync had not returned), and opening cuts it off. Anything else
/// that does not read back whole, with records after it, is damage: refused.
#[test]
fn a_torn_tail_is_cut_and_damage_before_other_records_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    rt.block_on(async {
        let mut log = FileLogStore::open(dir.path()).unwrap();
        log.blocking_append((1..=3).map(|i| normal(i, vec![put("sessions", [i as u8], "v")])))
            .await
            .unwrap();
    });
    let path = segment(dir.path(), 1);
    let whole = std::fs::read(&path).unwrap();
    // Half of a fourth record.
    let mut torn = whole.clone();
    let mut fourth = Vec::new();
    fourth.extend_from_slice(&4u64.to_le_bytes());
    fourth.extend_from_slice(&100u32.to_le_bytes());
    fourth.extend_from_slice(&[7u8; 30]);
    torn.extend_from_slice(&fourth);
    std::fs::write(&path, &torn).unwrap();
    rt.block_on(async {
        let mut log = FileLogStore::open(dir.path()).unwrap();
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id.map(|id| id.index), Some(3));
        log.blocking_append([normal(4, vec![])]).await.unwrap();
        let indexes: Vec<u64> = log
            .try_get_log_entries(1..=4)
            .await
            .unwrap()
            .iter()
            .map(|e| e.log_id.index)
            .collect();
        assert_eq!(indexes, [1, 2, 3, 4]);
    });
    // A flipped byte inside the first record, the others after it: refused.
    let mut damaged = std::fs::read(&path).unwrap();
    damaged[20] ^= 0xff;
    std::fs::write(&path, &damaged).unwrap();
    let error = FileLogStore::open(dir.path()).expect_err("damage is not cut off");
    assert!(
        error.to_string().contains("is damaged at byte 0"),
        "the error says where: {error}"
    );
}

/// An entry whose record is whole but whose encoding this build cannot read (a newer
/// release's) is an error naming it, never skipped.
#[test]
fn an_undecodable_entry_in_the_segment_log_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    rt.block_on(async {
        let mut log = FileLogStore::open(dir.path()).unwrap();
        log.blocking_append((1..=2).map(|i| normal(i, vec![])))
            .await
            .unwrap();
    });
    let path = segment(dir.path(), 1);
    let mut bytes = std::fs::read(&path).unwrap();
    let body = vec![0xffu8; 12];
    bytes.extend_from_slice(&3u64.to_le_bytes());
    bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    bytes.extend_from_slice(&body);
    bytes.extend_from_slice(&body);
    std::fs::write(&path, &bytes).unwrap();
    // The record after it is cut as torn; entry 3 itself is whole and read at open.
    let error = FileLogStore::open(dir.path()).expect_err("entry 3 does not decode");
    let text = error.to_string();
    assert!(
        text.contains(fleetmq_cluster::store::UNDECODABLE_ENTRY) && text.contains(" 3 "),
        "the error names the entry: {text}"
    );
}

/// A data directory of a release that kept the log in sled: the log moves into segment
/// files at open, vote, committed and purge mark included, and the sled directory is
/// renamed.
#[test]
fn a_sled_log_moves_into_segment_files() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let vote = Vote::new_committed(4, 1);
    rt.block_on(async {
        let mut log = SledLogStore::open(&dir.path().join("raft-log")).unwrap();
        log.blocking_append(
            (1..=600).map(|i| normal(i, vec![put("sessions", [(i % 200) as u8], "v")])),
        )
        .await
        .unwrap();
        log.save_vote(&vote).await.unwrap();
        log.save_committed(Some(log_id(1, 1, 590))).await.unwrap();
        log.purge(log_id(1, 1, 10)).await.unwrap();
    });
    rt.block_on(async {
        let (mut log, _sm) =
            open_raft_storage(dir.path(), Arc::new(MemoryEngine::new()), TREES).unwrap();
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 1, 10)));
        assert_eq!(state.last_log_id, Some(log_id(1, 1, 600)));
        assert_eq!(log.read_vote().await.unwrap(), Some(vote));
        assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, 1, 590)));
        let entries = log.try_get_log_entries(0..=600).await.unwrap();
        assert_eq!(entries.len(), 590);
        assert_eq!(entries[0], normal(11, vec![put("sessions", [11], "v")]));
        assert_eq!(entries[589], normal(600, vec![put("sessions", [0], "v")]));
    });
    assert!(!dir.path().join("raft-log").exists());
    assert!(dir.path().join("raft-log.before-upgrade").is_dir());
    assert!(dir.path().join("raft-wal").is_dir());
}
