//! The behaviour every `KvEngine` promises, checked against both engines, plus a property test
//! that compares both engines with a plain model under random op sequences.

// Helpers outside #[test] fns count as non-test code for clippy; a failed unwrap here is a
// test failure with its location, which is what a test wants.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};

use fleetmq_storage::{KvEngine, MemoryEngine, SledEngine, StorageError, WriteBatch, WriteOp};
use proptest::prelude::*;

type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

fn pairs(items: &[(&[u8], &[u8])]) -> Pairs {
    items
        .iter()
        .map(|(k, v)| (k.to_vec(), v.to_vec()))
        .collect()
}

fn must_write<E: KvEngine>(e: &E, f: impl FnOnce(&mut WriteBatch)) {
    let mut b = WriteBatch::new();
    f(&mut b);
    e.write(b).unwrap();
}

/// Every check an engine must pass. `e` must be empty.
fn conformance<E: KvEngine>(e: &E) {
    // Reads of a tree never written.
    assert_eq!(e.get("nothing", b"k").unwrap(), None);
    assert!(e.scan_prefix("nothing", b"").unwrap().is_empty());

    // Put, overwrite, delete, delete of an absent key.
    must_write(e, |b| b.put("kv", "k", "v1"));
    assert_eq!(e.get("kv", b"k").unwrap(), Some(b"v1".to_vec()));
    must_write(e, |b| b.put("kv", "k", "v2"));
    assert_eq!(e.get("kv", b"k").unwrap(), Some(b"v2".to_vec()));
    must_write(e, |b| b.delete("kv", "k"));
    assert_eq!(e.get("kv", b"k").unwrap(), None);
    must_write(e, |b| b.delete("kv", "absent"));
    // Empty keys and values are ordinary.
    must_write(e, |b| b.put("kv", Vec::new(), Vec::new()));
    assert_eq!(e.get("kv", b"").unwrap(), Some(Vec::new()));

    // Scans return keys in byte order whatever the insertion order, including NUL and 0xff.
    must_write(e, |b| {
        for k in [
            &b"b"[..],
            b"a\xff",
            b"a",
            b"",
            b"a\x00",
            b"ab",
            b"\xff",
            b"aa",
        ] {
            b.put("order", k, [k, b"!"].concat());
        }
    });
    let all = e.scan_prefix("order", b"").unwrap();
    let keys: Vec<&[u8]> = all.iter().map(|(k, _)| k.as_slice()).collect();
    assert_eq!(
        keys,
        [
            &b""[..],
            b"a",
            b"a\x00",
            b"aa",
            b"ab",
            b"a\xff",
            b"b",
            b"\xff"
        ]
    );
    assert!(all.iter().all(|(k, v)| *v == [k.as_slice(), b"!"].concat()));
    assert_eq!(
        e.scan_prefix("order", b"a").unwrap(),
        pairs(&[
            (b"a", b"a!"),
            (b"a\x00", b"a\x00!"),
            (b"aa", b"aa!"),
            (b"ab", b"ab!"),
            (b"a\xff", b"a\xff!"),
        ])
    );
    assert_eq!(
        e.scan_prefix("order", b"a\xff").unwrap(),
        pairs(&[(b"a\xff", b"a\xff!")])
    );
    assert!(e.scan_prefix("order", b"c").unwrap().is_empty());

    // Trees are isolated, even when one name is a prefix of another.
    must_write(e, |b| {
        b.put("t", "k", "in t");
        b.put("tt", "k", "in tt");
        b.put("t2", "k", "in t2");
    });
    assert_eq!(e.get("t", b"k").unwrap(), Some(b"in t".to_vec()));
    assert_eq!(e.get("tt", b"k").unwrap(), Some(b"in tt".to_vec()));
    assert_eq!(e.scan_prefix("t", b"").unwrap(), pairs(&[(b"k", b"in t")]));
    must_write(e, |b| b.delete_prefix("t", Vec::new()));
    assert!(e.scan_prefix("t", b"").unwrap().is_empty());
    assert_eq!(e.get("tt", b"k").unwrap(), Some(b"in tt".to_vec()));
    assert_eq!(e.get("t2", b"k").unwrap(), Some(b"in t2".to_vec()));

    // DeletePrefix removes exactly the keys under the prefix.
    must_write(e, |b| b.delete_prefix("order", "a"));
    assert_eq!(
        e.scan_prefix("order", b"").unwrap(),
        pairs(&[(b"", b"!"), (b"b", b"b!"), (b"\xff", b"\xff!")])
    );

    // A batch spanning trees is visible whole.
    must_write(e, |b| {
        b.put("sessions", "c1", "s");
        b.put("retained", "x/y", "r");
        b.put("queue", [0, 1], "m1");
        b.put("queue", [0, 2], "m2");
        b.delete("kv", Vec::new());
    });
    assert_eq!(e.get("sessions", b"c1").unwrap(), Some(b"s".to_vec()));
    assert_eq!(e.get("retained", b"x/y").unwrap(), Some(b"r".to_vec()));
    assert_eq!(e.scan_prefix("queue", &[0]).unwrap().len(), 2);
    assert_eq!(e.get("kv", b"").unwrap(), None);

    // Ops in one batch apply in order.
    must_write(e, |b| {
        b.put("seq", "p/1", "x");
        b.put("seq", "p/2", "x");
        b.delete_prefix("seq", "p/");
        b.put("seq", "p/3", "kept");
        b.put("seq", "k", "first");
        b.delete("seq", "k");
        b.put("seq", "k", "last");
    });
    assert_eq!(
        e.scan_prefix("seq", b"").unwrap(),
        pairs(&[(b"k", b"last"), (b"p/3", b"kept")])
    );
    // DeletePrefix also removes keys written by earlier batches, then a later put survives.
    must_write(e, |b| {
        b.delete_prefix("seq", "p/");
        b.put("seq", "p/4", "new");
    });
    assert_eq!(
        e.scan_prefix("seq", b"p/").unwrap(),
        pairs(&[(b"p/4", b"new")])
    );

    // An empty batch changes nothing.
    let before: Vec<Pairs> = ["order", "seq", "queue"]
        .iter()
        .map(|t| e.scan_prefix(t, b"").unwrap())
        .collect();
    e.write(WriteBatch::new()).unwrap();
    let after: Vec<Pairs> = ["order", "seq", "queue"]
        .iter()
        .map(|t| e.scan_prefix(t, b"").unwrap())
        .collect();
    assert_eq!(before, after);

    // A batch with an invalid tree name is rejected whole.
    let mut bad = WriteBatch::new();
    bad.put("valid", "k", "v");
    bad.put("in\0valid", "k", "v");
    assert!(matches!(e.write(bad), Err(StorageError::InvalidTree(_))));
    assert_eq!(e.get("valid", b"k").unwrap(), None);
    assert!(matches!(
        e.get("in\0valid", b"k"),
        Err(StorageError::InvalidTree(_))
    ));

    e.flush().unwrap();
}

/// Readers never see half a batch: a writer puts the same counter in two trees in one batch,
/// and a reader that reads `x` then `y` must never find `y` behind `x`.
fn concurrent_readers_see_whole_batches<E: KvEngine>(e: &E) {
    const ROUNDS: u64 = 300;
    /// Tells the reader to stop even if the writer panics, so a failure cannot hang the test.
    struct SetOnDrop<'a>(&'a AtomicBool);
    impl Drop for SetOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Release);
        }
    }

    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let _done = SetOnDrop(&done);
            for i in 1..=ROUNDS {
                let mut b = WriteBatch::new();
                b.put("x", "n", i.to_be_bytes());
                b.delete_prefix("z", Vec::new());
                b.put("z", i.to_be_bytes(), "");
                b.put("y", "n", i.to_be_bytes());
                e.write(b).unwrap();
            }
        });
        s.spawn(|| {
            let read = |tree| {
                e.get(tree, b"n")
                    .unwrap()
                    .map_or(0, |v| u64::from_be_bytes(v.try_into().unwrap()))
            };
            loop {
                let finished = done.load(Ordering::Acquire);
                let x = read("x");
                let z = e.scan_prefix("z", b"").unwrap();
                let y = read("y");
                assert!(y >= x, "saw x={x} but y={y}");
                assert!(z.len() <= 1, "a scan saw two batches at once: {z:?}");
                if finished {
                    break;
                }
            }
        });
    });
}

#[test]
fn memory_engine_conforms() {
    conformance(&MemoryEngine::new());
    concurrent_readers_see_whole_batches(&MemoryEngine::new());
}

#[test]
fn sled_engine_conforms() {
    let dir = tempfile::tempdir().unwrap();
    conformance(&SledEngine::open(dir.path()).unwrap());
    concurrent_readers_see_whole_batches(&SledEngine::temporary().unwrap());
}

#[test]
fn arc_dyn_engine_conforms() {
    let e: std::sync::Arc<dyn KvEngine> = std::sync::Arc::new(MemoryEngine::new());
    conformance(&e);
}

// ---- model-based property test ----

const TREES: &[&str] = &["a", "ab", "b"];

#[derive(Debug, Clone)]
enum Step {
    Write(Vec<WriteOp>),
    Get(&'static str, Vec<u8>),
    Scan(&'static str, Vec<u8>),
    Flush,
    /// Flush, close and reopen the engine (a no-op for the in-memory one).
    Reopen,
}

/// Small alphabets make collisions, shared prefixes and NUL/0xff edges frequent.
fn key() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop::sample::select(vec![0u8, 1, 2, 0xff]), 0..4)
}

fn tree() -> impl Strategy<Value = &'static str> {
    prop::sample::select(TREES)
}

fn op() -> impl Strategy<Value = WriteOp> {
    prop_oneof![
        4 => (tree(), key(), prop::collection::vec(any::<u8>(), 0..6))
            .prop_map(|(tree, key, value)| WriteOp::Put { tree, key, value }),
        2 => (tree(), key()).prop_map(|(tree, key)| WriteOp::Delete { tree, key }),
        1 => (tree(), key()).prop_map(|(tree, prefix)| WriteOp::DeletePrefix { tree, prefix }),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => prop::collection::vec(op(), 0..6).prop_map(Step::Write),
        2 => (tree(), key()).prop_map(|(t, k)| Step::Get(t, k)),
        2 => (tree(), key()).prop_map(|(t, p)| Step::Scan(t, p)),
        1 => Just(Step::Flush),
        1 => Just(Step::Reopen),
    ]
}

type Model = BTreeMap<&'static str, BTreeMap<Vec<u8>, Vec<u8>>>;

fn apply_to_model(model: &mut Model, ops: &[WriteOp]) {
    for op in ops {
        match op {
            WriteOp::Put { tree, key, value } => {
                model
                    .entry(tree)
                    .or_default()
                    .insert(key.clone(), value.clone());
            }
            WriteOp::Delete { tree, key } => {
                model.entry(tree).or_default().remove(key);
            }
            WriteOp::DeletePrefix { tree, prefix } => {
                model
                    .entry(tree)
                    .or_default()
                    .retain(|k, _| !k.starts_with(prefix));
            }
        }
    }
}

fn model_scan(model: &Model, tree: &str, prefix: &[u8]) -> Pairs {
    model
        .get(tree)
        .into_iter()
        .flatten()
        .filter(|(k, _)| k.starts_with(prefix))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn check_against_model<E: KvEngine>(
    mut engine: E,
    steps: &[Step],
    mut reopen: impl FnMut(E) -> E,
) -> Result<(), TestCaseError> {
    let mut model = Model::new();
    for step in steps {
        match step {
            Step::Write(ops) => {
                engine.write(WriteBatch::from(ops.clone())).unwrap();
                apply_to_model(&mut model, ops);
            }
            Step::Get(tree, key) => {
                let want = model.get(tree).and_then(|t| t.get(key)).cloned();
                prop_assert_eq!(engine.get(tree, key).unwrap(), want);
            }
            Step::Scan(tree, prefix) => {
                prop_assert_eq!(
                    engine.scan_prefix(tree, prefix).unwrap(),
                    model_scan(&model, tree, prefix)
                );
            }
            Step::Flush => engine.flush().unwrap(),
            Step::Reopen => engine = reopen(engine),
        }
    }
    for tree in TREES {
        prop_assert_eq!(
            engine.scan_prefix(tree, b"").unwrap(),
            model_scan(&model, tree, b"")
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn engines_match_model(steps in prop::collection::vec(step(), 0..40)) {
        check_against_model(MemoryEngine::new(), &steps, |e| e)?;

        let dir = tempfile::tempdir().unwrap();
        let sled = SledEngine::open(dir.path()).unwrap();
        check_against_model(sled, &steps, |e| {
            e.flush().unwrap();
            drop(e);
            SledEngine::open(dir.path()).unwrap()
        })?;
    }
}
