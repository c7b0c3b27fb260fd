//! [`SledLogStore`]: the Raft log in a sled database of its own.
//!
//! Layout, all in one sled tree so that every change is one atomic `apply_batch`:
//! - `e` + index (u64 big-endian) → a postcard-encoded [`Entry`]; big-endian so that sled's key
//!   order is index order and the last entry is the last key;
//! - `m:vote`, `m:committed`, `m:purged` → the vote, the committed log id and the last purged
//!   log id, postcard-encoded;
//! - `m:format` → the layout version.
//!
//! Durability: [`append`](RaftLogStorage::append) writes its entries into sled's buffers and
//! hands the `LogFlushed` callback to a flush thread, which fsyncs and only then calls it.
//! That fsync is the durability point of every acknowledged MQTT message. The thread takes
//! every callback queued while the previous fsync ran and covers them all with one more
//! (group commit), so RaftCore keeps replicating while the disk works.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{
    Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, StorageError, Vote,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::error::{RaftResultExt, StoreError};
use crate::types::{ClusterRequest, NodeId, RequestBody, TypeConfig};

type RaftResult<T> = Result<T, StorageError<NodeId>>;

/// The sled tree holding entries and metadata (see the module docs for the layout).
const LOG_TREE: &str = "raft_log";
const ENTRY_PREFIX: u8 = b'e';
const VOTE_KEY: &[u8] = b"m:vote";
const COMMITTED_KEY: &[u8] = b"m:committed";
const PURGED_KEY: &[u8] = b"m:purged";
const FORMAT_KEY: &[u8] = b"m:format";
/// Bump when the layout or the entry encoding changes, so an old binary refuses a newer log
/// instead of misreading it. 2: entries carry `ClusterRequest { origin, request_seq }`
/// with raw writes. 3: the writes are typed commands (`RequestBody`); a format-2 log is
/// upgraded when opened (see [`upgrade_from_2`]).
const FORMAT_VERSION: &[u8] = b"3";
const FORMAT_2: &[u8] = b"2";

/// Recent entries are read back soon after they are written (replication to followers and
/// apply), older ones only by a lagging follower, so a modest cache is enough.
const CACHE_CAPACITY: u64 = 32 * 1024 * 1024;

fn entry_key(index: u64) -> [u8; 9] {
    let mut key = [ENTRY_PREFIX; 9];
    key[1..].copy_from_slice(&index.to_be_bytes());
    key
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    Ok(postcard::to_stdvec(value)?)
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    Ok(postcard::from_bytes(bytes)?)
}

/// Reads and decodes one metadata record.
fn read_meta<T: DeserializeOwned>(tree: &sled::Tree, key: &[u8]) -> Result<Option<T>, StoreError> {
    tree.get(key)?.map(|v| decode(&v)).transpose()
}

/// The entries whose index lies in `range`, in index order. Shared by the store and its
/// readers.
fn read_entries<RB: RangeBounds<u64>>(
    tree: &sled::Tree,
    range: RB,
) -> Result<Vec<Entry<TypeConfig>>, StoreError> {
    let start = match range.start_bound() {
        Bound::Included(&i) => Bound::Included(entry_key(i)),
        Bound::Excluded(&i) => match i.checked_add(1) {
            Some(i) => Bound::Included(entry_key(i)),
            None => return Ok(Vec::new()),
        },
        Bound::Unbounded => Bound::Included(entry_key(0)),
    };
    let end = match range.end_bound() {
        Bound::Included(&i) => Bound::Included(entry_key(i)),
        Bound::Excluded(&i) => Bound::Excluded(entry_key(i)),
        Bound::Unbounded => Bound::Included(entry_key(u64::MAX)),
    };
    if let (Bound::Included(s), Bound::Excluded(e)) = (&start, &end) {
        // sled panics on a range whose start lies past its end.
        if s >= e {
            return Ok(Vec::new());
        }
    }
    if let (Bound::Included(s), Bound::Included(e)) = (&start, &end) {
        if s > e {
            return Ok(Vec::new());
        }
    }
    tree.range((start, end))
        .map(|item| {
            let (key, value) = item?;
            decode_entry(&key, &value)
        })
        .collect()
}

/// Decodes an entry and checks it sits under its own index: a mismatch means the store was
/// damaged, and serving it would corrupt the Raft log.
fn decode_entry(key: &[u8], value: &[u8]) -> Result<Entry<TypeConfig>, StoreError> {
    let entry: Entry<TypeConfig> = postcard::from_bytes(value).map_err(|source| {
        let index = key
            .get(1..9)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u64::from_be_bytes);
        StoreError::Undecodable { index, source }
    })?;
    if key != entry_key(entry.log_id.index) {
        return Err(StoreError::Corrupt(format!(
            "entry {} stored under key {key:?}",
            entry.log_id
        )));
    }
    Ok(entry)
}

/// The entry payload of a format-2 log, as that release wrote it.
mod format2 {
    use serde::{Deserialize, Serialize};

    use crate::types::{ClusterOp, NodeId};

    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct Request {
        pub origin: NodeId,
        pub request_seq: u64,
        pub ops: Vec<ClusterOp>,
    }

    impl std::fmt::Display for Request {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "format-2 request from node {}", self.origin)
        }
    }

    openraft::declare_raft_types!(
        pub Config:
            D = Request,
            R = crate::types::ClusterResponse,
            NodeId = NodeId,
            Node = openraft::BasicNode,
            Entry = openraft::Entry<Config>,
            SnapshotData = std::io::Cursor<Vec<u8>>,
            AsyncRuntime = openraft::TokioRuntime,
    );
}

/// Rewrites every entry of a format-2 log in today's encoding, its raw writes kept as
/// [`RequestBody::Legacy`] (applied as that release applied them), and marks the log
/// format 3, in one atomic batch made durable before anything else happens. Entries are
/// kept, not dropped: some may be committed and not yet applied anywhere. Blocking.
fn upgrade_from_2(tree: &sled::Tree, db: &sled::Db) -> Result<(), StoreError> {
    let mut batch = sled::Batch::default();
    let mut entries = 0usize;
    for item in tree.scan_prefix([ENTRY_PREFIX]) {
        let (key, value) = item?;
        let old: Entry<format2::Config> = decode(&value)?;
        let payload = match old.payload {
            EntryPayload::Blank => EntryPayload::Blank,
            EntryPayload::Normal(request) => EntryPayload::Normal(ClusterRequest {
                origin: request.origin,
                request_seq: request.request_seq,
                body: RequestBody::Legacy(request.ops),
            }),
            EntryPayload::Membership(membership) => EntryPayload::Membership(membership),
        };
        let entry: Entry<TypeConfig> = Entry {
            log_id: old.log_id,
            payload,
        };
        batch.insert(key, encode(&entry)?);
        entries += 1;
    }
    batch.insert(FORMAT_KEY, FORMAT_VERSION);
    tree.apply_batch(batch)?;
    db.flush()?;
    tracing::info!(entries, "raft log upgraded from format 2 to 3");
    Ok(())
}

/// The Raft log store: a sled database of its own, entries keyed by index.
///
/// Opening takes sled's exclusive lock on the directory; dropping the store stops its flush
/// thread and releases it, unless a [`SledLogReader`] obtained from it is still alive.
pub struct SledLogStore {
    tree: sled::Tree,
    flusher: Flusher,
    /// The last committed index, for the metrics: openraft 0.9 reports the last log and
    /// applied indexes but not the committed one, which it hands only to this store.
    committed: Arc<AtomicU64>,
}

impl Debug for SledLogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledLogStore").finish_non_exhaustive()
    }
}

impl SledLogStore {
    /// Opens the log in directory `path`, creating it if missing. Blocking.
    ///
    /// Fails if another process has it open or if it was written by an incompatible version.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(CACHE_CAPACITY)
            // Durability comes only from the flush thread: a timer flushing on its own would
            // add fsyncs without making any acknowledgement safer.
            .flush_every_ms(None)
            .mode(sled::Mode::HighThroughput)
            .open()?;
        let tree = db.open_tree(LOG_TREE)?;
        match tree.get(FORMAT_KEY)? {
            Some(v) if v.as_ref() == FORMAT_VERSION => {}
            Some(v) if v.as_ref() == FORMAT_2 => upgrade_from_2(&tree, &db)?,
            Some(v) => {
                return Err(StoreError::Incompatible {
                    what: "raft log",
                    found: String::from_utf8_lossy(&v).into_owned(),
                    expected: String::from_utf8_lossy(FORMAT_VERSION).into_owned(),
                })
            }
            // Not flushed: it becomes durable with the first vote or entry, and until then
            // there is nothing to misread.
            None => {
                tree.insert(FORMAT_KEY, FORMAT_VERSION)?;
            }
        }
        let committed: Option<Option<LogId<NodeId>>> = read_meta(&tree, COMMITTED_KEY)?;
        let committed = Arc::new(AtomicU64::new(committed.flatten().map_or(0, |id| id.index)));
        let flusher = Flusher::start(db)?;
        Ok(Self {
            tree,
            flusher,
            committed,
        })
    }

    /// The last committed log index, kept up to date as the group commits.
    pub fn committed_index(&self) -> Arc<AtomicU64> {
        self.committed.clone()
    }

    /// What a log moving to another store needs: the vote, the committed and purged
    /// log ids, and the last entry's index (0 when none). Blocking.
    #[allow(clippy::type_complexity)]
    pub(crate) fn export_meta(
        &self,
    ) -> Result<
        (
            Option<Vote<NodeId>>,
            Option<LogId<NodeId>>,
            Option<LogId<NodeId>>,
            u64,
        ),
        StoreError,
    > {
        let vote = read_meta(&self.tree, VOTE_KEY)?;
        let committed: Option<Option<LogId<NodeId>>> = read_meta(&self.tree, COMMITTED_KEY)?;
        let last = match self
            .tree
            .range(entry_key(0)..=entry_key(u64::MAX))
            .next_back()
            .transpose()?
        {
            Some((key, value)) => decode_entry(&key, &value)?.log_id.index,
            None => 0,
        };
        Ok((vote, committed.flatten(), self.last_purged()?, last))
    }

    /// The entries in `range`, in index order. Blocking.
    pub(crate) fn export_entries(
        &self,
        range: std::ops::RangeInclusive<u64>,
    ) -> Result<Vec<Entry<TypeConfig>>, StoreError> {
        read_entries(&self.tree, range)
    }

    fn last_purged(&self) -> Result<Option<LogId<NodeId>>, StoreError> {
        read_meta(&self.tree, PURGED_KEY)
    }

    /// Writes one metadata record and waits until it is durable.
    async fn put_meta_durable<T: Serialize>(
        &self,
        key: &[u8],
        value: &T,
    ) -> Result<(), StoreError> {
        self.tree.insert(key, encode(value)?)?;
        self.flusher.flush().await
    }
}

impl RaftLogReader<TypeConfig> for SledLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> RaftResult<Vec<Entry<TypeConfig>>> {
        read_entries(&self.tree, range).raft(ErrorSubject::Logs, ErrorVerb::Read)
    }
}

impl RaftLogStorage<TypeConfig> for SledLogStore {
    type LogReader = SledLogReader;

    async fn get_log_state(&mut self) -> RaftResult<LogState<TypeConfig>> {
        let last_purged_log_id = self
            .last_purged()
            .raft(ErrorSubject::Logs, ErrorVerb::Read)?;
        let last = self
            .tree
            .range(entry_key(0)..=entry_key(u64::MAX))
            .next_back()
            .transpose()
            .raft(ErrorSubject::Logs, ErrorVerb::Read)?;
        let last_log_id = match last {
            Some((key, value)) => Some(
                decode_entry(&key, &value)
                    .raft(ErrorSubject::Logs, ErrorVerb::Read)?
                    .log_id,
            ),
            // Every entry purged: the log still ends where the purge did.
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        SledLogReader {
            tree: self.tree.clone(),
        }
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> RaftResult<()> {
        // A vote must survive a crash before it is acted on, or a node could vote twice in
        // one term.
        self.put_meta_durable(VOTE_KEY, vote)
            .await
            .raft(ErrorSubject::Vote, ErrorVerb::Write)
    }

    async fn read_vote(&mut self) -> RaftResult<Option<Vote<NodeId>>> {
        read_meta(&self.tree, VOTE_KEY).raft(ErrorSubject::Vote, ErrorVerb::Read)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> RaftResult<()> {
        // Not flushed: it only saves re-applying entries at start, and it becomes durable
        // with the next append or vote. The entries it points at were written before it, and
        // sled recovers a prefix of its writes, so it never outlives them.
        let bytes = encode(&committed).raft(ErrorSubject::Store, ErrorVerb::Write)?;
        self.tree
            .insert(COMMITTED_KEY, bytes)
            .raft(ErrorSubject::Store, ErrorVerb::Write)?;
        self.committed
            .store(committed.map_or(0, |id| id.index), Ordering::Relaxed);
        Ok(())
    }

    async fn read_committed(&mut self) -> RaftResult<Option<LogId<NodeId>>> {
        let committed: Option<Option<LogId<NodeId>>> =
            read_meta(&self.tree, COMMITTED_KEY).raft(ErrorSubject::Store, ErrorVerb::Read)?;
        Ok(committed.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> RaftResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = sled::Batch::default();
        for entry in entries {
            let bytes = encode(&entry).raft(ErrorSubject::Log(entry.log_id), ErrorVerb::Write)?;
            batch.insert(&entry_key(entry.log_id.index)[..], bytes);
        }
        self.tree
            .apply_batch(batch)
            .raft(ErrorSubject::Logs, ErrorVerb::Write)?;
        // The callback tells openraft the entries are durable: only the flush thread may call
        // it, after an fsync that started once they were written.
        self.flusher
            .submit(FlushWaiter::Log(callback))
            .raft(ErrorSubject::Logs, ErrorVerb::Write)
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> RaftResult<()> {
        // Not flushed: if a crash undoes it, the conflicting entries come back and the leader
        // truncates them again; entries appended after it are flushed together with it.
        let mut batch = sled::Batch::default();
        for key in self
            .tree
            .range(entry_key(log_id.index)..=entry_key(u64::MAX))
            .keys()
        {
            batch.remove(key.raft(ErrorSubject::Logs, ErrorVerb::Delete)?);
        }
        self.tree
            .apply_batch(batch)
            .raft(ErrorSubject::Logs, ErrorVerb::Delete)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> RaftResult<()> {
        // The purge mark and the removals go in one batch, so the log never claims entries it
        // no longer has. Not flushed: openraft purges only what the state machine has applied
        // and made durable in a snapshot, so undoing a purge loses nothing.
        let mut batch = sled::Batch::default();
        batch.insert(
            PURGED_KEY,
            encode(&log_id).raft(ErrorSubject::Logs, ErrorVerb::Delete)?,
        );
        for key in self
            .tree
            .range(entry_key(0)..=entry_key(log_id.index))
            .keys()
        {
            batch.remove(key.raft(ErrorSubject::Logs, ErrorVerb::Delete)?);
        }
        self.tree
            .apply_batch(batch)
            .raft(ErrorSubject::Logs, ErrorVerb::Delete)
    }
}

/// A read-only handle on a [`SledLogStore`]'s entries, for openraft's replication tasks.
#[derive(Clone)]
pub struct SledLogReader {
    tree: sled::Tree,
}

impl Debug for SledLogReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledLogReader").finish_non_exhaustive()
    }
}

impl RaftLogReader<TypeConfig> for SledLogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> RaftResult<Vec<Entry<TypeConfig>>> {
        read_entries(&self.tree, range).raft(ErrorSubject::Logs, ErrorVerb::Read)
    }
}

/// Who waits for the next fsync.
enum FlushWaiter {
    /// An append whose entries become durable with it.
    Log(LogFlushed<TypeConfig>),
    /// A caller that wrote metadata and blocks until it is durable.
    Sync(tokio::sync::oneshot::Sender<Result<(), String>>),
}

/// The flush thread and the queue feeding it.
///
/// A dedicated OS thread rather than a tokio task: fsync blocks for milliseconds, and the
/// thread outlives any one runtime (openraft's test suite starts a runtime per test).
struct Flusher {
    tx: Option<mpsc::Sender<FlushWaiter>>,
    thread: Option<JoinHandle<()>>,
}

impl Flusher {
    fn start(db: sled::Db) -> Result<Self, StoreError> {
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("raft-log-flush".into())
            .spawn(move || flush_loop(&db, &rx))?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    fn submit(&self, waiter: FlushWaiter) -> Result<(), StoreError> {
        self.tx
            .as_ref()
            .ok_or_else(|| StoreError::Flusher("stopped".into()))?
            .send(waiter)
            .map_err(|_| StoreError::Flusher("thread exited".into()))
    }

    /// Waits until every write made before this call is durable.
    async fn flush(&self) -> Result<(), StoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(FlushWaiter::Sync(tx))?;
        rx.await
            .map_err(|_| StoreError::Flusher("thread exited".into()))?
            .map_err(StoreError::Flusher)
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        // Closing the queue ends the loop once it has served every waiter; joining releases
        // the thread's handle on the database, so the directory can be reopened at once.
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("raft log flush thread panicked");
            }
        }
    }
}

fn flush_loop(db: &sled::Db, rx: &mpsc::Receiver<FlushWaiter>) {
    while let Ok(first) = rx.recv() {
        // Everything queued so far was written before it was queued, so one fsync started now
        // covers it all.
        let mut waiters = vec![first];
        waiters.extend(rx.try_iter());
        let result = db.flush().map(drop).map_err(|e| e.to_string());
        if let Err(e) = &result {
            tracing::error!(error = %e, "raft log fsync failed");
        }
        tracing::trace!(waiters = waiters.len(), "raft log flushed");
        // Served in queue order: openraft expects log IO completions in the order it issued
        // them.
        for waiter in waiters {
            match waiter {
                FlushWaiter::Log(callback) => {
                    callback.log_io_completed(result.clone().map_err(io::Error::other));
                }
                FlushWaiter::Sync(tx) => {
                    // The waiter may have been cancelled; the flush happened all the same.
                    let _ = tx.send(result.clone());
                }
            }
        }
    }
}
