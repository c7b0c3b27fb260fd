//! SledEngine keeps what was flushed: across a clean reopen, and across SIGKILL of the
//! process that was writing.

// Helpers outside #[test] fns count as non-test code for clippy; a failed unwrap here is a
// test failure with its location, which is what a test wants.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use fleetmq_storage::{KvEngine, SledEngine, WriteBatch};

#[test]
fn reopen_keeps_flushed_writes() {
    let dir = tempfile::tempdir().unwrap();
    {
        let e = SledEngine::open(dir.path()).unwrap();
        let mut b = WriteBatch::new();
        b.put("sessions", "c1", "s1");
        b.put("sessions", "c2", "s2");
        b.put("retained", "a/b", "r");
        e.write(b).unwrap();
        let mut b = WriteBatch::new();
        b.delete("sessions", "c2");
        b.put("queue", [7u8, 1], "m");
        e.write(b).unwrap();
        e.flush().unwrap();
    }
    let e = SledEngine::open(dir.path()).unwrap();
    assert_eq!(e.get("sessions", b"c1").unwrap(), Some(b"s1".to_vec()));
    assert_eq!(e.get("sessions", b"c2").unwrap(), None);
    assert_eq!(e.get("retained", b"a/b").unwrap(), Some(b"r".to_vec()));
    assert_eq!(
        e.scan_prefix("queue", &[7]).unwrap(),
        vec![(vec![7, 1], b"m".to_vec())]
    );
}

#[test]
fn a_second_open_of_the_same_store_fails() {
    let dir = tempfile::tempdir().unwrap();
    let _first = SledEngine::open(dir.path()).unwrap();
    assert!(SledEngine::open(dir.path()).is_err());
}

/// Set in the child process: the store directory it writes to.
const CHILD_ENV: &str = "FLEETMQ_STORAGE_CRASH_CHILD_DIR";
/// The child flushes once every this many batches. Between flushes it writes a few MiB, so
/// sled seals and writes out log buffers on its own, mid-batch, and a kill there leaves a torn
/// batch in the log for recovery to discard.
const BATCHES_PER_FLUSH: u64 = 32;
/// Flushes the parent waits for before it kills the child.
const FLUSHES_BEFORE_KILL: usize = 8;
/// How many batches past the last flush the child is killed, one per round: the kill is driven
/// by the child's progress, not by a timer. Kill, recover, and kill again: recovery of an
/// already recovered store must hold too.
const KILL_AFTER: [u64; 4] = [3, 11, 19, 27];

fn be(i: u64) -> [u8; 8] {
    i.to_be_bytes()
}

/// Values of varying size, so batches straddle log buffers and segments.
fn payload(tree: &str, i: u64) -> Vec<u8> {
    let len = 16 + (i as usize * 7919) % 40_000;
    let mut v = format!("{tree}:{i}:").into_bytes();
    v.resize(len, (i % 251) as u8);
    v
}

/// Batch `i`: one record in each of "a" and "b", the only key of "pending", and the number of
/// the last batch in "meta". Any partly applied batch breaks one of the checks in `verify`.
fn batch(i: u64) -> WriteBatch {
    let mut b = WriteBatch::new();
    b.put("a", be(i), payload("a", i));
    b.delete_prefix("pending", Vec::new());
    b.put("pending", be(i), payload("pending", i));
    b.put("b", be(i), payload("b", i));
    b.put("meta", "last", be(i));
    b
}

fn last_batch(e: &SledEngine) -> Option<u64> {
    e.get("meta", b"last")
        .unwrap()
        .map(|v| u64::from_be_bytes(v.try_into().unwrap()))
}

/// Checks that the store holds exactly batches `0..=last`, each whole, and returns `last`.
fn verify(e: &SledEngine) -> Option<u64> {
    let last = last_batch(e);
    let count = last.map_or(0, |l| l + 1);
    for tree in ["a", "b"] {
        let rows = e.scan_prefix(tree, b"").unwrap();
        assert_eq!(
            rows.len() as u64,
            count,
            "tree {tree} vs meta last {last:?}"
        );
        for (i, (k, v)) in rows.iter().enumerate() {
            let i = i as u64;
            assert_eq!(k, &be(i), "tree {tree}: batch {i} missing");
            assert!(
                *v == payload(tree, i),
                "tree {tree}: batch {i} has a wrong value"
            );
        }
    }
    // Compared without printing values, which are up to 40 kB each.
    let pending = e.scan_prefix("pending", b"").unwrap();
    let want: Vec<_> = last
        .map(|l| (be(l).to_vec(), payload("pending", l)))
        .into_iter()
        .collect();
    let keys: Vec<&[u8]> = pending.iter().map(|(k, _)| k.as_slice()).collect();
    assert!(
        pending == want,
        "pending holds keys {keys:?}, expected batch {last:?}"
    );
    last
}

/// The child's role: write batches forever (bounded), flush every few, report each flush.
fn child(dir: &Path) {
    let e = SledEngine::open(dir).unwrap();
    let start = last_batch(&e).map_or(0, |l| l + 1);
    let mut out = std::io::stdout().lock();
    // Bounded so a child the parent failed to kill still ends.
    for i in start..start + 1_000_000 {
        e.write(batch(i)).unwrap();
        writeln!(out, "wrote {i}").unwrap();
        if i % BATCHES_PER_FLUSH == BATCHES_PER_FLUSH - 1 {
            e.flush().unwrap();
            writeln!(out, "flushed {i}").unwrap();
            out.flush().unwrap();
        }
    }
}

#[test]
fn sigkill_keeps_flushed_batches_whole() {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        child(Path::new(&dir));
        return;
    }

    let dir = tempfile::tempdir().unwrap();
    let mut recovered = None;
    for (round, kill_after) in KILL_AFTER.into_iter().enumerate() {
        let mut proc = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "sigkill_keeps_flushed_batches_whole",
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
        let mut flushed = None;
        let mut flushes = 0;
        let mut killed_at = None;
        // Kept open until the child is dead: closing it first would make the child's next
        // write fail with a broken pipe and panic, which is noise, not the crash under test.
        let mut lines = BufReader::new(stdout).lines();
        // libtest prints its own lines too; ours start with "wrote " or "flushed ".
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(n) = line.strip_prefix("flushed ") {
                flushed = Some(n.parse::<u64>().unwrap());
                flushes += 1;
            } else if let Some(n) = line.strip_prefix("wrote ") {
                let n: u64 = n.parse().unwrap();
                if flushes >= FLUSHES_BEFORE_KILL && flushed.is_some_and(|f| n >= f + kill_after) {
                    killed_at = Some(n);
                    break;
                }
            }
        }
        assert!(killed_at.is_some(), "child ended early");
        // Child::kill sends SIGKILL on unix: no destructor, no final flush.
        proc.kill().unwrap();
        proc.wait().unwrap();
        drop(lines);

        let e = SledEngine::open(dir.path()).unwrap();
        let last = verify(&e);
        let flushed = flushed.unwrap();
        assert!(
            last.is_some_and(|l| l >= flushed),
            "round {round}: flushed up to {flushed} but recovered {last:?}"
        );
        assert!(last > recovered, "round {round}: no progress");
        recovered = last;
    }
}
