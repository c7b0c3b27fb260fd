//! A data directory written by a FleetMQ version with another layout is refused with an
//! error that says so, instead of being misread or failing on a raw decode error.

use std::sync::Arc;

use fleetmq_cluster::{open_raft_storage, StoreError, META_TREE};
use fleetmq_storage::{KvEngine, MemoryEngine, WriteBatch};

const TREES: &[&str] = &["sessions"];

fn engine_with(pairs: &[(&[u8], &[u8])]) -> Arc<MemoryEngine> {
    let engine = Arc::new(MemoryEngine::new());
    let mut batch = WriteBatch::new();
    for (key, value) in pairs {
        batch.put(META_TREE, key.to_vec(), value.to_vec());
    }
    engine.write(batch).expect("write");
    engine
}

fn assert_incompatible(result: Result<impl Sized, StoreError>, what: &str, found: &str) {
    let Err(error) = result else {
        panic!("the {what} of another version was opened");
    };
    let text = error.to_string();
    assert!(
        matches!(&error, StoreError::Incompatible { what: w, found: f, .. } if *w == what && f == found),
        "unexpected error: {text}"
    );
    assert!(
        text.contains("another FleetMQ version") && text.contains("data_dir"),
        "the message tells the operator what to do: {text}"
    );
}

#[test]
fn a_fresh_store_is_marked_and_opens_again() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let engine = Arc::new(MemoryEngine::new());
    let (log, sm) =
        open_raft_storage(dir.path(), engine.clone(), TREES).expect("fresh store opens");
    drop((log, sm));
    assert!(
        engine.get(META_TREE, b"format").expect("read").is_some(),
        "a fresh state machine store records its format"
    );
    open_raft_storage(dir.path(), engine, TREES).expect("the same store opens again");
}

#[test]
fn a_state_machine_store_from_before_the_format_mark_is_refused() {
    let dir = tempfile::tempdir().expect("temporary directory");
    // What the first version left: an applied state and no format.
    let engine = engine_with(&[(b"applied", b"\x00\x00\x00")]);
    assert_incompatible(
        open_raft_storage(dir.path(), engine, TREES),
        "state machine store",
        "1 (unmarked)",
    );
}

#[test]
fn a_state_machine_store_of_another_format_is_refused() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let engine = engine_with(&[(b"format", b"99")]);
    assert_incompatible(
        open_raft_storage(dir.path(), engine, TREES),
        "state machine store",
        "99",
    );
}

#[test]
fn a_raft_log_of_another_format_is_refused() {
    let dir = tempfile::tempdir().expect("temporary directory");
    {
        let db = sled::open(dir.path().join("raft-log")).expect("sled opens");
        let tree = db.open_tree("raft_log").expect("log tree");
        tree.insert(b"m:format", b"1").expect("insert");
        db.flush().expect("flush");
    }
    assert_incompatible(
        open_raft_storage(dir.path(), Arc::new(MemoryEngine::new()), TREES),
        "raft log",
        "1",
    );
}
