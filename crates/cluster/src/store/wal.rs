//! [`FileLogStore`]: the Raft log in segment files of its own.
//!
//! Layout of the directory:
//! - `<first index, 20 digits>.wal`: segments, each a run of records with consecutive
//!   indexes starting at the one in its name. A record is the entry's index (u64), the
//!   length of its encoding (u32) and the CRC-32 of that encoding (u32), all little
//!   endian, then the postcard-encoded [`Entry`];
//! - `meta`: the vote, the last purged log id and the committed log id, replaced whole
//!   (a temporary file, fsynced, renamed, the directory fsynced).
//!
//! An append is one `write` of its records at the end of the current segment; the
//! `LogFlushed` callback goes to a flush thread, which `fdatasync`s the segment and only
//! then calls it, covering every append queued meanwhile with one sync (group commit).
//! sled, which kept the log before, wrote each entry through its page cache and IO
//! buffers: the log's share of the brokers' CPU was most of sled's (BENCHMARKS.md).
//!
//! What a crash can leave, and what opening makes of it: a torn record at the end of the
//! last segment (cut off: it was never acknowledged, since its sync had not returned); a
//! truncation or purge half done (truncation syncs the cut segment and the directory
//! before it returns, purge writes its mark durably before it deletes segments, so what
//! is left is consistent with the mark); an empty segment (removed).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io;
use std::ops::{Bound, RangeBounds};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{Entry, ErrorSubject, ErrorVerb, LogId, OptionalSend, StorageError, Vote};
use serde::{Deserialize, Serialize};

use super::error::{RaftResultExt, StoreError};
use crate::types::{NodeId, TypeConfig};

type RaftResult<T> = Result<T, StorageError<NodeId>>;

const META_FILE: &str = "meta";
const SEGMENT_SUFFIX: &str = ".wal";
/// Bump when the layout or the record encoding changes.
const FORMAT: u8 = 1;
/// A segment is closed and a new one started once it is this large.
const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
const HEADER: usize = 16;

/// What `meta` holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Meta {
    format: u8,
    vote: Option<Vote<NodeId>>,
    purged: Option<LogId<NodeId>>,
    committed: Option<LogId<NodeId>>,
}

/// Where one entry's record lies.
#[derive(Debug, Clone, Copy)]
struct Loc {
    segment: u64,
    offset: u64,
    len: u32,
}

/// The entries the log holds and where; shared by the store and its readers.
#[derive(Debug, Default)]
struct Index {
    /// Segments by first index, opened for reading.
    segments: BTreeMap<u64, Arc<File>>,
    /// The index of `locs[0]`.
    first: u64,
    locs: std::collections::VecDeque<Loc>,
}

impl Index {
    fn last(&self) -> Option<u64> {
        (!self.locs.is_empty()).then(|| self.first + self.locs.len() as u64 - 1)
    }

    fn loc(&self, index: u64) -> Option<Loc> {
        let at = index.checked_sub(self.first)?;
        self.locs.get(usize::try_from(at).ok()?).copied()
    }

    fn read(&self, index: u64) -> Result<Entry<TypeConfig>, StoreError> {
        let loc = self
            .loc(index)
            .ok_or_else(|| StoreError::Corrupt(format!("raft log entry {index} is not held")))?;
        let file = self.segments.get(&loc.segment).ok_or_else(|| {
            StoreError::Corrupt(format!("raft log segment {} is missing", loc.segment))
        })?;
        let mut buf = vec![0u8; loc.len as usize];
        file.read_exact_at(&mut buf, loc.offset + HEADER as u64)?;
        let entry: Entry<TypeConfig> = postcard::from_bytes(&buf)
            .map_err(|source| StoreError::Undecodable { index, source })?;
        if entry.log_id.index != index {
            return Err(StoreError::Corrupt(format!(
                "raft log entry {} stored as entry {index}",
                entry.log_id
            )));
        }
        Ok(entry)
    }

    fn read_range<RB: RangeBounds<u64>>(
        &self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StoreError> {
        let Some(last) = self.last() else {
            return Ok(Vec::new());
        };
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        }
        .max(self.first);
        let end = match range.end_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => match i.checked_sub(1) {
                Some(i) => i,
                None => return Ok(Vec::new()),
            },
            Bound::Unbounded => u64::MAX,
        }
        .min(last);
        (start..=end).map(|i| self.read(i)).collect()
    }
}

fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}{SEGMENT_SUFFIX}"))
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)?.sync_all()?;
    Ok(())
}

fn read_meta(dir: &Path) -> Result<Option<Meta>, StoreError> {
    match std::fs::read(dir.join(META_FILE)) {
        Ok(bytes) => Ok(Some(postcard::from_bytes(&bytes)?)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn write_meta(dir: &Path, meta: &Meta) -> Result<(), StoreError> {
    super::state_machine::write_file_atomically(&dir.join(META_FILE), &postcard::to_stdvec(meta)?)
}

/// The segment being appended to.
#[derive(Debug)]
struct Writer {
    first: u64,
    file: Arc<File>,
    len: u64,
    /// The index its next record must have: records in a segment are consecutive.
    next: u64,
}

/// The Raft log store: segment files in a directory of its own (see the module docs).
pub struct FileLogStore {
    dir: PathBuf,
    meta: Meta,
    index: Arc<RwLock<Index>>,
    writer: Option<Writer>,
    last_log_id: Option<LogId<NodeId>>,
    /// The segment the flush thread syncs: the writer's.
    syncing: Arc<Mutex<Option<Arc<File>>>>,
    flusher: Flusher,
    committed: Arc<AtomicU64>,
}

impl Debug for FileLogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileLogStore")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// How a segment's records end.
enum SegmentEnd {
    /// At the end of the file.
    Clean,
    /// In what a crash during an append leaves: a record cut short by the end of the
    /// file, or zeros to the end (space the file system allocated before the data).
    Torn(u64),
    /// In a damaged record with more data after it.
    Damaged(u64),
}

/// Reads one segment's records; returns where they lie and how they end.
fn scan_segment(file: &File, first: u64) -> Result<(Vec<Loc>, SegmentEnd), StoreError> {
    let size = file.metadata()?.len();
    let mut locs = Vec::new();
    let mut offset = 0u64;
    let mut header = [0u8; HEADER];
    let bad_at = loop {
        if offset == size {
            return Ok((locs, SegmentEnd::Clean));
        }
        if offset + HEADER as u64 > size {
            break offset;
        }
        file.read_exact_at(&mut header, offset)?;
        let index = u64::from_le_bytes(header[0..8].try_into().unwrap_or_default());
        let len = u32::from_le_bytes(header[8..12].try_into().unwrap_or_default());
        let crc = u32::from_le_bytes(header[12..16].try_into().unwrap_or_default());
        let end = offset + HEADER as u64 + u64::from(len);
        if index != first + locs.len() as u64 || end > size {
            break offset;
        }
        let mut body = vec![0u8; len as usize];
        file.read_exact_at(&mut body, offset + HEADER as u64)?;
        if crc32fast::hash(&body) != crc {
            break offset;
        }
        locs.push(Loc {
            segment: first,
            offset,
            len,
        });
        offset = end;
    };
    // Torn only if nothing but a cut record or zeros follows.
    let mut rest = vec![
        0u8;
        usize::try_from(size - bad_at)
            .unwrap_or(usize::MAX)
            .min(1 << 20)
    ];
    let mut at = bad_at;
    let mut torn = true;
    while at < size {
        let n = usize::try_from(size - at)
            .unwrap_or(usize::MAX)
            .min(rest.len());
        file.read_exact_at(&mut rest[..n], at)?;
        at += n as u64;
        if rest[..n].iter().any(|b| *b != 0) {
            torn = false;
            break;
        }
    }
    if !torn {
        // The last record, cut short or not all written: what its header claims reaches
        // the end of the file (or past it).
        let claimed = if size - bad_at >= HEADER as u64 {
            file.read_exact_at(&mut header, bad_at)?;
            let len = u32::from_le_bytes(header[8..12].try_into().unwrap_or_default());
            bad_at + HEADER as u64 + u64::from(len)
        } else {
            size
        };
        torn = claimed >= size;
    }
    Ok((
        locs,
        if torn {
            SegmentEnd::Torn(bad_at)
        } else {
            SegmentEnd::Damaged(bad_at)
        },
    ))
}

impl FileLogStore {
    /// Opens the log in directory `path`, creating it if missing. Blocking.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(path)?;
        let meta = match read_meta(path)? {
            Some(meta) if meta.format == FORMAT => meta,
            Some(meta) => {
                return Err(StoreError::Incompatible {
                    what: "raft log",
                    found: format!("segments {}", meta.format),
                    expected: format!("segments {FORMAT}"),
                })
            }
            None => {
                let meta = Meta {
                    format: FORMAT,
                    ..Meta::default()
                };
                write_meta(path, &meta)?;
                meta
            }
        };
        let mut firsts = Vec::new();
        for item in std::fs::read_dir(path)? {
            let name = item?.file_name();
            let name = name.to_string_lossy();
            if let Some(first) = name.strip_suffix(SEGMENT_SUFFIX) {
                if let Ok(first) = first.parse::<u64>() {
                    firsts.push(first);
                }
            }
        }
        firsts.sort_unstable();
        let purged = meta.purged.map(|id| id.index);
        let mut index = Index::default();
        let mut writer = None;
        let count = firsts.len();
        for (n, first) in firsts.into_iter().enumerate() {
            let seg_path = segment_path(path, first);
            let file = OpenOptions::new().read(true).write(true).open(&seg_path)?;
            let (locs, end) = scan_segment(&file, first)?;
            let is_last = n + 1 == count;
            let valid = match end {
                SegmentEnd::Clean => file.metadata()?.len(),
                SegmentEnd::Torn(at) if is_last => {
                    // A record a crash cut short: its append was never acknowledged
                    // (its sync had not returned).
                    tracing::warn!(segment = %seg_path.display(), at, "raft log: a torn record at the end is cut off");
                    file.set_len(at)?;
                    file.sync_all()?;
                    at
                }
                SegmentEnd::Torn(at) | SegmentEnd::Damaged(at) => {
                    return Err(StoreError::Corrupt(format!(
                        "raft log segment {} is damaged at byte {at}, with records after it: move the node's data_dir away and start it empty (it copies the log back from the other members)",
                        seg_path.display()
                    )));
                }
            };
            let next = first + locs.len() as u64;
            for (k, loc) in locs.into_iter().enumerate() {
                let at = first + k as u64;
                // Up to the purge mark, entries may still be in a segment: not held.
                if purged.is_some_and(|p| at <= p) {
                    continue;
                }
                match index.last() {
                    None => index.first = at,
                    Some(last) if at != last + 1 => {
                        return Err(StoreError::Corrupt(format!(
                            "raft log segment {} does not follow entry {last}",
                            seg_path.display()
                        )));
                    }
                    Some(_) => {}
                }
                index.locs.push_back(loc);
            }
            let file = Arc::new(file);
            index.segments.insert(first, file.clone());
            if is_last {
                writer = Some(Writer {
                    first,
                    file,
                    len: valid,
                    next,
                });
            }
        }
        if index.locs.is_empty() {
            index.first = purged.map_or(0, |p| p + 1);
        }
        let last_log_id = match index.last() {
            Some(last) => Some(index.read(last)?.log_id),
            None => meta.purged,
        };
        let syncing = Arc::new(Mutex::new(writer.as_ref().map(|w| w.file.clone())));
        let flusher = Flusher::start(syncing.clone())?;
        let committed = Arc::new(AtomicU64::new(meta.committed.map_or(0, |id| id.index)));
        Ok(Self {
            dir: path.to_path_buf(),
            meta,
            index: Arc::new(RwLock::new(index)),
            writer,
            last_log_id,
            syncing,
            flusher,
            committed,
        })
    }

    /// The last committed log index, kept up to date as the group commits.
    pub fn committed_index(&self) -> Arc<AtomicU64> {
        self.committed.clone()
    }

    fn index_write(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts a segment whose first entry is `first`; the one before it is synced first,
    /// since the flush thread syncs only the current one.
    fn start_segment(&mut self, first: u64) -> Result<(), StoreError> {
        if let Some(old) = &self.writer {
            old.file.sync_data()?;
        }
        let file = Arc::new(
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(segment_path(&self.dir, first))?,
        );
        sync_dir(&self.dir)?;
        self.index_write().segments.insert(first, file.clone());
        *self.syncing.lock().unwrap_or_else(PoisonError::into_inner) = Some(file.clone());
        self.writer = Some(Writer {
            first,
            file,
            len: 0,
            next: first,
        });
        Ok(())
    }

    fn append_blocking(&mut self, entries: Vec<Entry<TypeConfig>>) -> Result<(), StoreError> {
        let Some(first_entry) = entries.first() else {
            return Ok(());
        };
        let at = first_entry.log_id.index;
        let last = self
            .index
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .last();
        match last {
            // Entries replacing some the log holds: openraft truncates first, but an
            // append that overwrites is still an overwrite.
            Some(last) if at <= last => self.truncate_blocking(at)?,
            Some(last) if at > last + 1 => {
                return Err(StoreError::Corrupt(format!(
                    "raft log append of entry {} would leave a gap after entry {last}",
                    first_entry.log_id
                )));
            }
            // An empty log starts wherever its first entry is (after a purge, the
            // entry after the snapshot).
            _ => {}
        }
        // A new segment when the current one is full, or when its records would not run
        // on (the log was purged past its end by an installed snapshot).
        let needs_segment = self
            .writer
            .as_ref()
            .is_none_or(|w| w.len >= SEGMENT_BYTES || w.next != first_entry.log_id.index);
        if needs_segment {
            self.start_segment(first_entry.log_id.index)?;
        }
        let Some(writer) = self.writer.as_mut() else {
            return Err(StoreError::Corrupt(
                "raft log has no segment to append to".into(),
            ));
        };
        let mut buf = Vec::new();
        let mut locs = Vec::with_capacity(entries.len());
        for entry in &entries {
            let body = postcard::to_stdvec(entry)?;
            let len = u32::try_from(body.len())
                .map_err(|_| StoreError::Corrupt("raft log entry over 4 GiB".into()))?;
            locs.push(Loc {
                segment: writer.first,
                offset: writer.len + buf.len() as u64,
                len,
            });
            buf.extend_from_slice(&entry.log_id.index.to_le_bytes());
            buf.extend_from_slice(&len.to_le_bytes());
            buf.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
            buf.extend_from_slice(&body);
        }
        writer.file.write_all_at(&buf, writer.len)?;
        writer.len += buf.len() as u64;
        writer.next = first_entry.log_id.index + entries.len() as u64;
        let mut index = self.index_write();
        if index.locs.is_empty() {
            index.first = first_entry.log_id.index;
        }
        index.locs.extend(locs);
        drop(index);
        self.last_log_id = entries.last().map(|e| e.log_id);
        Ok(())
    }

    fn truncate_blocking(&mut self, since: u64) -> Result<(), StoreError> {
        let mut index = self.index_write();
        let Some(loc) = index.loc(since) else {
            return Ok(());
        };
        let later: Vec<u64> = index
            .segments
            .range(loc.segment + 1..)
            .map(|(first, _)| *first)
            .collect();
        for first in &later {
            index.segments.remove(first);
        }
        let file = index.segments.get(&loc.segment).cloned().ok_or_else(|| {
            StoreError::Corrupt(format!("raft log segment {} is missing", loc.segment))
        })?;
        let keep = usize::try_from(since - index.first)
            .map_err(|_| StoreError::Corrupt("raft log index overflow".into()))?;
        index.locs.truncate(keep);
        drop(index);
        file.set_len(loc.offset)?;
        file.sync_all()?;
        for first in later {
            std::fs::remove_file(segment_path(&self.dir, first))?;
        }
        sync_dir(&self.dir)?;
        *self.syncing.lock().unwrap_or_else(PoisonError::into_inner) = Some(file.clone());
        self.writer = Some(Writer {
            first: loc.segment,
            file,
            len: loc.offset,
            next: since,
        });
        let index = self.index.read().unwrap_or_else(PoisonError::into_inner);
        self.last_log_id = match index.last() {
            Some(last) => Some(index.read(last)?.log_id),
            None => self.meta.purged,
        };
        Ok(())
    }

    fn purge_blocking(&mut self, log_id: LogId<NodeId>) -> Result<(), StoreError> {
        // The mark first, durably: a purge undone by a crash after the segments went
        // would leave the log claiming entries it no longer has.
        self.meta.purged = Some(log_id);
        write_meta(&self.dir, &self.meta)?;
        let mut index = self.index_write();
        while !index.locs.is_empty() && index.first <= log_id.index {
            index.locs.pop_front();
            index.first += 1;
        }
        if index.locs.is_empty() {
            index.first = log_id.index + 1;
        }
        // A segment goes once every entry in it is purged; the writer's stays.
        let current = self.writer.as_ref().map(|w| w.first);
        let firsts: Vec<u64> = index.segments.keys().copied().collect();
        let mut doomed = Vec::new();
        for pair in firsts.windows(2) {
            let (first, next) = (pair[0], pair[1]);
            if next <= log_id.index + 1 && Some(first) != current {
                doomed.push(first);
            }
        }
        for first in &doomed {
            index.segments.remove(first);
        }
        drop(index);
        for first in doomed {
            std::fs::remove_file(segment_path(&self.dir, first))?;
        }
        if self.last_log_id < Some(log_id) {
            self.last_log_id = Some(log_id);
        }
        Ok(())
    }
}

impl RaftLogReader<TypeConfig> for FileLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> RaftResult<Vec<Entry<TypeConfig>>> {
        let index = self.index.read().unwrap_or_else(PoisonError::into_inner);
        index
            .read_range(range)
            .raft(ErrorSubject::Logs, ErrorVerb::Read)
    }
}

impl RaftLogStorage<TypeConfig> for FileLogStore {
    type LogReader = FileLogReader;

    async fn get_log_state(&mut self) -> RaftResult<LogState<TypeConfig>> {
        Ok(LogState {
            last_purged_log_id: self.meta.purged,
            last_log_id: self.last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        FileLogReader {
            index: self.index.clone(),
        }
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> RaftResult<()> {
        // A vote must survive a crash before it is acted on, or a node could vote twice in
        // one term.
        self.meta.vote = Some(*vote);
        write_meta(&self.dir, &self.meta).raft(ErrorSubject::Vote, ErrorVerb::Write)
    }

    async fn read_vote(&mut self) -> RaftResult<Option<Vote<NodeId>>> {
        Ok(self.meta.vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> RaftResult<()> {
        // Kept in memory, written with the next vote or purge and when the store closes:
        // it only saves re-applying entries at start (a node learns the committed index
        // from its leader, or as leader commits its log again).
        self.meta.committed = committed;
        self.committed
            .store(committed.map_or(0, |id| id.index), Ordering::Relaxed);
        Ok(())
    }

    async fn read_committed(&mut self) -> RaftResult<Option<LogId<NodeId>>> {
        Ok(self.meta.committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> RaftResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.append_blocking(entries.into_iter().collect())
            .raft(ErrorSubject::Logs, ErrorVerb::Write)?;
        // The callback tells openraft the entries are durable: only the flush thread may call
        // it, after a sync that started once they were written.
        self.flusher
            .submit(callback)
            .raft(ErrorSubject::Logs, ErrorVerb::Write)
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> RaftResult<()> {
        self.truncate_blocking(log_id.index)
            .raft(ErrorSubject::Logs, ErrorVerb::Delete)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> RaftResult<()> {
        self.purge_blocking(log_id)
            .raft(ErrorSubject::Logs, ErrorVerb::Delete)
    }
}

impl Drop for FileLogStore {
    fn drop(&mut self) {
        // The committed index saves re-applying at the next start; best effort.
        if let Err(error) = write_meta(&self.dir, &self.meta) {
            tracing::warn!(%error, "raft log: could not save the committed index on close");
        }
    }
}

/// A read-only handle on a [`FileLogStore`]'s entries, for openraft's replication tasks.
#[derive(Clone)]
pub struct FileLogReader {
    index: Arc<RwLock<Index>>,
}

impl Debug for FileLogReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileLogReader").finish_non_exhaustive()
    }
}

impl RaftLogReader<TypeConfig> for FileLogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> RaftResult<Vec<Entry<TypeConfig>>> {
        let index = self.index.read().unwrap_or_else(PoisonError::into_inner);
        index
            .read_range(range)
            .raft(ErrorSubject::Logs, ErrorVerb::Read)
    }
}

/// The flush thread and the queue feeding it.
///
/// A dedicated OS thread rather than a tokio task: a sync blocks for milliseconds, and the
/// thread outlives any one runtime (openraft's test suite starts a runtime per test).
struct Flusher {
    tx: Option<mpsc::Sender<LogFlushed<TypeConfig>>>,
    thread: Option<JoinHandle<()>>,
}

impl Flusher {
    fn start(syncing: Arc<Mutex<Option<Arc<File>>>>) -> Result<Self, StoreError> {
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("raft-log-flush".into())
            .spawn(move || flush_loop(&syncing, &rx))?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    fn submit(&self, callback: LogFlushed<TypeConfig>) -> Result<(), StoreError> {
        self.tx
            .as_ref()
            .ok_or_else(|| StoreError::Flusher("stopped".into()))?
            .send(callback)
            .map_err(|_| StoreError::Flusher("thread exited".into()))
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("raft log flush thread panicked");
            }
        }
    }
}

fn flush_loop(syncing: &Mutex<Option<Arc<File>>>, rx: &mpsc::Receiver<LogFlushed<TypeConfig>>) {
    while let Ok(first) = rx.recv() {
        // Everything queued so far was written before it was queued, so one sync started
        // now covers it all. Segments before the current one were synced when it started.
        let mut waiters = vec![first];
        waiters.extend(rx.try_iter());
        let file = syncing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let result = match file {
            Some(file) => file.sync_data().map_err(|e| e.to_string()),
            None => Ok(()),
        };
        if let Err(e) = &result {
            tracing::error!(error = %e, "raft log fsync failed");
        }
        // Served in queue order: openraft expects log IO completions in the order it issued
        // them.
        for callback in waiters {
            callback.log_io_completed(result.clone().map_err(io::Error::other));
        }
    }
}

/// Moves the log kept in `sled` into a new log in `dir` (which must not hold one),
/// durably, a bounded number of entries at a time. Blocking.
pub(crate) fn copy_from_sled(dir: &Path, sled: &super::SledLogStore) -> Result<u64, StoreError> {
    let (vote, committed, purged, last) = sled.export_meta()?;
    let mut store = FileLogStore::open(dir)?;
    store.meta.vote = vote;
    store.meta.purged = purged;
    store.meta.committed = committed;
    write_meta(dir, &store.meta)?;
    store.index_write().first = purged.map_or(0, |p| p.index + 1);
    let mut from = purged.map_or(0, |p| p.index + 1);
    let mut copied = 0;
    while from <= last {
        let to = last.min(from + 255);
        let entries = sled.export_entries(from..=to)?;
        copied += entries.len() as u64;
        store.append_blocking(entries)?;
        from = to + 1;
    }
    if let Some(writer) = &store.writer {
        writer.file.sync_all()?;
    }
    sync_dir(dir)?;
    Ok(copied)
}
