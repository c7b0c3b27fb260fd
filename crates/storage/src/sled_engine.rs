//! [`SledEngine`]: the on-disk [`KvEngine`], built on sled.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{PoisonError, RwLock};
use std::time::{Duration, Instant};

use crate::{check_tree, KvEngine, KvPair, StorageError, WriteBatch, WriteOp};

/// sled's page cache. The broker's hot state lives in its own structures and the store is
/// mostly written and read back only on recovery or takeover, so a large cache would only
/// compete with the broker for memory; 64 MiB keeps recent session and queue pages warm.
const CACHE_CAPACITY: u64 = 64 * 1024 * 1024;

/// The sled tree that holds every keyspace. sled's `apply_batch` is atomic within one sled
/// tree only, so keyspaces are key prefixes in a single sled tree rather than sled trees.
const KV_TREE: &str = "fleetmq_kv";

/// Where the on-disk format version is kept (in sled's default tree, outside the keyspaces).
const FORMAT_KEY: &[u8] = b"fleetmq_storage_format";

/// Bump when the key encoding changes, so an old binary refuses a newer store instead of
/// misreading it.
const FORMAT_VERSION: &[u8] = b"1";

/// Separates the tree name from the key; tree names never contain it (see `check_tree`), so
/// `tree NUL key` is unambiguous and one tree's keys never fall under another tree's prefix.
const SEP: u8 = 0;

/// The on-disk engine: every keyspace in one sled tree, keys stored as `tree NUL key`.
///
/// Durability is only by [`flush`](KvEngine::flush): sled's periodic background flush is
/// turned off, because the caller commits many batches with one flush (group commit) and
/// acknowledges clients only after it; a timer flushing on its own would add fsyncs without
/// making any acknowledgement safer. Writes not flushed before a crash may be lost, but a
/// batch is never partly visible. Dropping the engine without a flush may lose writes too.
#[derive(Debug)]
pub struct SledEngine {
    db: sled::Db,
    kv: sled::Tree,
    /// Writers take it exclusively, so a `DeletePrefix` resolved into deletes by scanning
    /// cannot miss a key that another writer commits between the scan and the apply. Scans take
    /// it shared: a sled iterator is not a snapshot, and without the lock a scan racing a batch
    /// could see part of it. Point reads need no lock, since sled makes `apply_batch` atomic
    /// for them.
    batch_lock: RwLock<()>,
}

impl SledEngine {
    /// Opens the store in directory `path`, creating it if missing.
    ///
    /// Fails if another process has it open, or if it was written by an incompatible version.
    pub fn open(path: &Path) -> Result<Self, StorageError> {
        // sled releases its file lock only when its background threads let go of the
        // last reference, a moment after the handle is dropped: reopening in the same
        // process (tests, an in-process restart) waits briefly for it.
        let deadline = Instant::now() + LOCK_WAIT;
        loop {
            match Self::with_config(base_config().path(path)) {
                Err(StorageError::Sled(sled::Error::Io(e)))
                    if Instant::now() < deadline && e.to_string().contains("acquire lock") =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => return other,
            }
        }
    }

    /// A store in a temporary directory that sled removes when the engine is dropped: for
    /// tests that want the real engine without managing a directory.
    pub fn temporary() -> Result<Self, StorageError> {
        Self::with_config(base_config().temporary(true))
    }

    fn with_config(config: sled::Config) -> Result<Self, StorageError> {
        let db = config.open()?;
        match db.get(FORMAT_KEY)? {
            Some(v) if v.as_ref() == FORMAT_VERSION => {}
            Some(v) => {
                return Err(StorageError::Corrupt(format!(
                    "unsupported storage format {:?}, expected {:?}",
                    String::from_utf8_lossy(&v),
                    String::from_utf8_lossy(FORMAT_VERSION)
                )))
            }
            None => {
                // Not flushed here: if we crash before the first flush the store is empty and
                // the marker is simply written again on the next open.
                db.insert(FORMAT_KEY, FORMAT_VERSION)?;
            }
        }
        let kv = db.open_tree(KV_TREE)?;
        Ok(Self {
            db,
            kv,
            batch_lock: RwLock::new(()),
        })
    }
}

/// How long `open` waits for a lock that this process's dropped engine still holds.
const LOCK_WAIT: Duration = Duration::from_secs(2);

fn base_config() -> sled::Config {
    sled::Config::new()
        .cache_capacity(CACHE_CAPACITY)
        .flush_every_ms(None)
        // A broker writes far more than it reads back (every queued message is written, most
        // are read only on recovery), so trade disk space for write throughput.
        .mode(sled::Mode::HighThroughput)
}

/// `tree NUL key`: the sled key of `key` in keyspace `tree`.
fn encode(tree: &str, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(tree.len() + 1 + key.len());
    out.extend_from_slice(tree.as_bytes());
    out.push(SEP);
    out.extend_from_slice(key);
    out
}

impl KvEngine for SledEngine {
    fn get(&self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        check_tree(tree)?;
        Ok(self.kv.get(encode(tree, key))?.map(|v| v.to_vec()))
    }

    fn scan_prefix(&self, tree: &str, prefix: &[u8]) -> Result<Vec<KvPair>, StorageError> {
        check_tree(tree)?;
        // Poisoning carries no meaning for a `()` lock (see `write`).
        let _shared = self
            .batch_lock
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let tree_len = tree.len() + 1;
        self.kv
            .scan_prefix(encode(tree, prefix))
            .map(|item| {
                let (k, v) = item?;
                let key = k.get(tree_len..).ok_or_else(|| {
                    StorageError::Corrupt(format!("key {k:?} shorter than its tree prefix"))
                })?;
                Ok((key.to_vec(), v.to_vec()))
            })
            .collect()
    }

    fn write(&self, batch: WriteBatch) -> Result<(), StorageError> {
        for op in batch.ops() {
            check_tree(op.tree())?;
        }
        if batch.is_empty() {
            return Ok(());
        }
        // The guarded data is `()`, so a panic in another writer left nothing half-updated
        // here; sled itself either applied that writer's batch whole or not at all.
        let _exclusive = self
            .batch_lock
            .write()
            .unwrap_or_else(PoisonError::into_inner);

        // Ops apply in order, so fold them into the final state of each touched key first;
        // `None` means deleted. A sled::Batch alone could not express "put, then delete by
        // prefix" on keys that are not on disk yet.
        let mut pending: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
        for op in batch.into_ops() {
            match op {
                WriteOp::Put { tree, key, value } => {
                    pending.insert(encode(tree, &key), Some(value));
                }
                WriteOp::Delete { tree, key } => {
                    pending.insert(encode(tree, &key), None);
                }
                WriteOp::DeletePrefix { tree, prefix } => {
                    let full = encode(tree, &prefix);
                    for key in self.kv.scan_prefix(&full).keys() {
                        pending.insert(key?.to_vec(), None);
                    }
                    // Keys put earlier in this batch are not in sled yet.
                    for (_, value) in pending
                        .range_mut(full.clone()..)
                        .take_while(|(k, _)| k.starts_with(&full))
                    {
                        *value = None;
                    }
                }
            }
        }

        let mut sled_batch = sled::Batch::default();
        for (key, value) in pending {
            match value {
                Some(value) => sled_batch.insert(key, value),
                None => sled_batch.remove(key),
            }
        }
        // One sled::Batch on one sled tree: recovered all or nothing, and readers (which take
        // sled's shared concurrency lock) never see it half applied.
        self.kv.apply_batch(sled_batch)?;
        Ok(())
    }

    fn flush(&self) -> Result<(), StorageError> {
        // Flushes sled's single log, which holds the writes of every tree.
        self.db.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_prefixes_do_not_overlap() {
        // "a" NUL ... and "ab" NUL ... differ at the second byte, so a scan of tree "a"
        // cannot reach tree "ab".
        assert!(!encode("ab", b"x").starts_with(&encode("a", b"")));
        assert_eq!(encode("t", b"k"), b"t\0k".to_vec());
    }

    #[test]
    fn rejects_unknown_format() {
        let dir = tempfile::tempdir().unwrap();
        {
            let e = SledEngine::open(dir.path()).unwrap();
            e.db.insert(FORMAT_KEY, b"999".to_vec()).unwrap();
            e.flush().unwrap();
        }
        assert!(matches!(
            SledEngine::open(dir.path()),
            Err(StorageError::Corrupt(_))
        ));
    }
}
