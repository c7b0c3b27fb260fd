//! [`StateMachineStore`]: applies committed entries to the broker's key-value engine.
//!
//! The state machine writes into the very engine the broker reads, one tree per kind of
//! record (`sessions`, `messages`, ...), plus the [`META_TREE`] tree for its own bookkeeping:
//! - `applied` → the last applied log id and the last membership, postcard-encoded;
//! - `snapshot` → the last built or installed snapshot (meta and data).
//!
//! Every apply writes the entries' ops and the new `applied` record in one atomic
//! [`KvEngine::write`], so after a crash the trees and `applied` always agree. Apply does not
//! flush: the Raft log is the durable record and openraft re-applies from `applied` on restart.
//! Building or installing a snapshot does flush, because openraft purges the log up to a
//! snapshot right after it and the entries would no longer be there to re-apply.
//!
//! Applying does no IO besides the engine, and has no transport code.
//!
//! Each command is admitted against the client registry and turned into storage writes
//! by the broker's [`command::apply`]: a node that no longer holds a session cannot
//! write for it. Once the broker runs, an [`ApplyFeed`] receives every applied entry's
//! admitted commands (and this node's own refused ones, with the registry that refused
//! them), then the stored state of each client whose session became this node's, in
//! apply order (see docs/cluster-design.md).

use std::collections::BTreeSet;
use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use fleetmq_broker::command::{self, Command, Staged, Verdict};
use fleetmq_broker::persist::{self, OwnerRecord, OWNERS};
use fleetmq_broker::{Applied, AppliedCommand};
use fleetmq_storage::{KvEngine, KvPair, WriteBatch, WriteOp};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend,
    RaftSnapshotBuilder, SnapshotMeta, StorageError, StoredMembership,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::error::{RaftResultExt, StoreError};
use crate::types::{ClusterOp, ClusterResponse, NodeId, RequestBody, TypeConfig};

type RaftResult<T> = Result<T, StorageError<NodeId>>;

/// The tree the state machine keeps its own metadata in; no caller tree may use this name.
pub const META_TREE: &str = "raft_meta";
const APPLIED_KEY: &[u8] = b"applied";
const SNAPSHOT_KEY: &[u8] = b"snapshot";
const FORMAT_KEY: &[u8] = b"format";
/// The layout of everything the state machine keeps (its metadata and the broker's trees).
/// Bump when a stored record changes shape, so a node refuses a store it would misread.
/// 2: `AppliedState.last_request`, `DeliveryRecord.{for_remote_owner, first_write}`, the
/// `owners` tree. Stores written before this key existed have `applied` but no format.
const DATA_FORMAT: &[u8] = b"2";
/// Bump when [`SnapshotBlob`] changes shape, so a node refuses a snapshot it would misread.
const SNAPSHOT_FORMAT: u8 = 2;

/// How far the state machine has got.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct AppliedState {
    last_applied: Option<LogId<NodeId>>,
    last_membership: StoredMembership<NodeId, BasicNode>,
    /// Per proposing node, the highest `request_seq` applied.
    last_request: std::collections::BTreeMap<NodeId, u64>,
}

/// One tree's contents in a snapshot.
#[derive(Debug, Serialize, Deserialize)]
struct TreeDump {
    name: String,
    pairs: Vec<KvPair>,
}

/// The serialized form of a snapshot: every known tree plus the applied state it reflects.
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotBlob {
    format: u8,
    applied: AppliedState,
    trees: Vec<TreeDump>,
}

/// A snapshot as kept in memory and under [`SNAPSHOT_KEY`].
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, BasicNode>,
    data: Vec<u8>,
}

impl StoredSnapshot {
    fn to_snapshot(&self) -> Snapshot<TypeConfig> {
        Snapshot {
            meta: self.meta.clone(),
            snapshot: Box::new(Cursor::new(self.data.clone())),
        }
    }
}

/// Where applied entries go once the broker runs on this node.
#[derive(Debug)]
pub struct ApplyFeed {
    pub node_id: NodeId,
    pub tx: tokio::sync::mpsc::Sender<Applied>,
}

/// The feed slot, shared between the state machine (which openraft owns) and the node
/// (which attaches the broker). Apply holds it for its whole run, so whoever attaches a
/// feed under it sees no apply half done.
pub type FeedSlot = Arc<tokio::sync::Mutex<Option<ApplyFeed>>>;

/// What one apply call produced.
struct AppliedBatch {
    responses: Vec<ClusterResponse>,
    applied: AppliedState,
    feed: Vec<Applied>,
}

/// The last built or installed snapshot, shared by the state machine and its builders, which
/// openraft runs in a task of their own.
type CurrentSnapshot = Arc<Mutex<Option<StoredSnapshot>>>;

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    Ok(postcard::to_stdvec(value)?)
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    Ok(postcard::from_bytes(bytes)?)
}

/// Runs blocking engine work off the async threads, as [`KvEngine`] asks of async callers.
async fn blocking<T, F>(f: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
{
    tokio::task::spawn_blocking(f).await?
}

/// Where the state machine keeps its snapshot, and so what survives a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Durability {
    /// The engine is durable (sled): the snapshot and the applied state live in its
    /// [`META_TREE`], and a restart reads them back.
    Engine,
    /// The engine is memory: the snapshot is this file, loaded into the engine on open;
    /// a restart re-applies the Raft log's entries after it. The Raft log is the durable
    /// record either way (apply never flushed), so this changes only where the state is
    /// rebuilt from, and spares every node the per-write cost of a disk-backed tree
    /// (docs/cluster-design.md, "The state machine in memory").
    SnapshotFile(PathBuf),
}

/// Writes `bytes` to `path` so that a crash leaves the old file or the new one, whole:
/// a temporary file, fsynced, renamed over it, and the directory fsynced. Blocking.
pub(crate) fn write_file_atomically(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// Keeps `candidate` as the current snapshot, in memory and where `durability` says,
/// unless the current one is newer (a snapshot installed while this one was being
/// built). Returns whether it was kept. Blocking.
///
/// `batch` is written with it (atomically, for a durable engine); the snapshot is on
/// disk before this returns, since openraft purges the log up to a snapshot once it has
/// one.
fn keep_snapshot(
    engine: &dyn KvEngine,
    current: &CurrentSnapshot,
    candidate: StoredSnapshot,
    mut batch: WriteBatch,
    durability: &Durability,
) -> Result<bool, StoreError> {
    // Held across the write so that a concurrent build and install cannot interleave their
    // compare and their write. The guarded value is replaced whole, so a poisoned lock holds
    // nothing half-updated.
    let mut guard = current.lock().unwrap_or_else(PoisonError::into_inner);
    if guard
        .as_ref()
        .is_some_and(|c| c.meta.last_log_id > candidate.meta.last_log_id)
    {
        return Ok(false);
    }
    match durability {
        Durability::Engine => {
            batch.put(META_TREE, SNAPSHOT_KEY, encode(&candidate)?);
            engine.write(batch)?;
            engine.flush()?;
        }
        Durability::SnapshotFile(path) => {
            // The file first: after a crash the node restarts from it, and the entries
            // after it are still in the log.
            write_file_atomically(path, &encode(&candidate)?)?;
            engine.write(batch)?;
        }
    }
    *guard = Some(candidate);
    Ok(true)
}

/// The writes that make an engine hold `trees` (a snapshot's) and `applied`, after
/// emptying every tree in `known`. Trees a snapshot names that are not known are skipped.
fn restore_batch(
    known: &'static [&'static str],
    trees: Vec<TreeDump>,
    applied: &AppliedState,
) -> Result<WriteBatch, StoreError> {
    let mut batch = WriteBatch::new();
    for tree in known {
        batch.delete_prefix(tree, Vec::new());
    }
    for dump in trees {
        let Some(tree) = known.iter().copied().find(|t| *t == dump.name) else {
            tracing::warn!(tree = %dump.name, "snapshot holds an unknown tree; skipped");
            continue;
        };
        for (key, value) in dump.pairs {
            batch.put(tree, key, value);
        }
    }
    batch.put(META_TREE, APPLIED_KEY, encode(applied)?);
    Ok(batch)
}

/// The snapshot kept in `path`, if there is one. Blocking.
fn read_snapshot_file(path: &Path) -> Result<Option<(StoredSnapshot, SnapshotBlob)>, StoreError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let unreadable =
        |e: postcard::Error| StoreError::Corrupt(format!("state snapshot {}: {e}", path.display()));
    let stored: StoredSnapshot = postcard::from_bytes(&bytes).map_err(unreadable)?;
    let format = stored.data.first().copied();
    if format != Some(SNAPSHOT_FORMAT) {
        return Err(StoreError::Incompatible {
            what: "state snapshot",
            found: format.map_or_else(|| "none".to_owned(), |f| f.to_string()),
            expected: SNAPSHOT_FORMAT.to_string(),
        });
    }
    let blob: SnapshotBlob = postcard::from_bytes(&stored.data).map_err(unreadable)?;
    Ok(Some((stored, blob)))
}

/// The state a state machine kept in a durable engine holds (a `store` directory of
/// a release before the state machine moved to memory), as the bytes of a snapshot
/// file; `None` if it never applied an entry. Blocking.
pub fn export_engine_state(
    engine: &dyn KvEngine,
    trees: &'static [&'static str],
) -> Result<Option<Vec<u8>>, StoreError> {
    check_or_mark_format(engine)?;
    let applied = stored_applied_state(engine)?;
    if applied.last_applied.is_none() {
        return Ok(None);
    }
    let dump = trees
        .iter()
        .map(|name| {
            Ok(TreeDump {
                name: (*name).to_owned(),
                pairs: engine.scan_prefix(name, b"")?,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    let candidate = snapshot_of(applied, dump)?;
    Ok(Some(encode(&candidate)?))
}

/// A snapshot of `trees` as of `applied`.
fn snapshot_of(applied: AppliedState, trees: Vec<TreeDump>) -> Result<StoredSnapshot, StoreError> {
    let meta = SnapshotMeta {
        last_log_id: applied.last_applied,
        last_membership: applied.last_membership.clone(),
        snapshot_id: snapshot_id(applied.last_applied),
    };
    let blob = SnapshotBlob {
        format: SNAPSHOT_FORMAT,
        applied,
        trees,
    };
    Ok(StoredSnapshot {
        meta,
        data: encode(&blob)?,
    })
}

/// Checks that the store in `engine` has the layout this build reads, and marks a fresh
/// one. Blocking.
fn check_or_mark_format(engine: &dyn KvEngine) -> Result<(), StoreError> {
    match engine.get(META_TREE, FORMAT_KEY)? {
        Some(v) if v == DATA_FORMAT => Ok(()),
        found => {
            let written_before = engine.get(META_TREE, APPLIED_KEY)?.is_some();
            if found.is_some() || written_before {
                return Err(StoreError::Incompatible {
                    what: "state machine store",
                    found: found.map_or_else(
                        || "1 (unmarked)".to_owned(),
                        |v| String::from_utf8_lossy(&v).into_owned(),
                    ),
                    expected: String::from_utf8_lossy(DATA_FORMAT).into_owned(),
                });
            }
            // A fresh store. Not flushed: a crash keeps a prefix of the engine's
            // writes, so a store that has `applied` has its format too.
            let mut batch = WriteBatch::new();
            batch.put(META_TREE, FORMAT_KEY, DATA_FORMAT);
            engine.write(batch)?;
            Ok(())
        }
    }
}

/// The replicated state machine over a [`KvEngine`] shared with the broker.
///
/// Trees are those named at construction; an op naming any other tree is skipped and counted
/// in [`ClusterResponse::skipped_ops`], the same way on every node running the same build.
/// The current snapshot is kept in memory as well as in [`META_TREE`], so openraft can send it
/// to a lagging follower without reading it back.
pub struct StateMachineStore {
    engine: Arc<dyn KvEngine>,
    trees: &'static [&'static str],
    applied: AppliedState,
    current: CurrentSnapshot,
    feed: FeedSlot,
    durability: Durability,
}

impl std::fmt::Debug for StateMachineStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMachineStore")
            .field("trees", &self.trees)
            .field("applied", &self.applied)
            .finish_non_exhaustive()
    }
}

/// What the store in `engine` has applied (nothing before the first entry).
fn stored_applied_state(engine: &dyn KvEngine) -> Result<AppliedState, StoreError> {
    Ok(engine
        .get(META_TREE, APPLIED_KEY)?
        .map(|v| decode(&v))
        .transpose()?
        .unwrap_or_default())
}

/// The log index the store in `engine` has applied through (0 before any entry).
pub fn stored_applied_index(engine: &dyn KvEngine) -> Result<u64, StoreError> {
    Ok(stored_applied_state(engine)?
        .last_applied
        .map_or(0, |id| id.index))
}

impl StateMachineStore {
    /// Opens the state machine kept in `engine`, with `trees` as the trees commands may
    /// write. Blocking: it reads the applied state and the current snapshot back.
    ///
    /// Fails if `trees` contains [`META_TREE`] or if the stored metadata cannot be decoded.
    pub fn new(
        engine: Arc<dyn KvEngine>,
        trees: &'static [&'static str],
    ) -> Result<Self, StoreError> {
        Self::open(engine, trees, Durability::Engine)
    }

    /// Opens the state machine over `engine`, kept as `durability` says: with
    /// [`Durability::SnapshotFile`], `engine` is an empty memory engine, filled here from
    /// the snapshot file if there is one. Blocking.
    pub fn open(
        engine: Arc<dyn KvEngine>,
        trees: &'static [&'static str],
        durability: Durability,
    ) -> Result<Self, StoreError> {
        if trees.contains(&META_TREE) {
            return Err(StoreError::ReservedTree(META_TREE));
        }
        check_or_mark_format(engine.as_ref())?;
        let current = match &durability {
            Durability::Engine => engine
                .get(META_TREE, SNAPSHOT_KEY)?
                .map(|v| decode(&v))
                .transpose()?,
            Durability::SnapshotFile(path) => match read_snapshot_file(path)? {
                Some((stored, blob)) => {
                    engine.write(restore_batch(trees, blob.trees, &blob.applied)?)?;
                    tracing::info!(
                        snapshot = %stored.meta,
                        "state loaded from the snapshot file; the log's later entries follow"
                    );
                    Some(stored)
                }
                None => None,
            },
        };
        let applied = stored_applied_state(engine.as_ref())?;
        Ok(Self {
            engine,
            trees,
            applied,
            current: Arc::new(Mutex::new(current)),
            feed: FeedSlot::default(),
            durability,
        })
    }

    /// Where the node attaches the broker's [`ApplyFeed`].
    pub fn feed_slot(&self) -> FeedSlot {
        Arc::clone(&self.feed)
    }

    /// The engine the state machine writes, for readers such as the broker.
    pub fn engine(&self) -> &Arc<dyn KvEngine> {
        &self.engine
    }

    /// The trees commands may write.
    pub fn trees(&self) -> &'static [&'static str] {
        self.trees
    }

    /// Applies `entries` to the engine in one atomic write, admitting each command
    /// against the client registry; with `feed_node`, also returns what the feed gets.
    /// Blocking.
    fn apply_blocking(
        engine: &dyn KvEngine,
        trees: &'static [&'static str],
        mut applied: AppliedState,
        entries: Vec<Entry<TypeConfig>>,
        feed_node: Option<NodeId>,
    ) -> Result<AppliedBatch, StoreError> {
        let mut staged = Staged::new(engine);
        let mut responses = Vec::new();
        let mut feed = Vec::new();
        let mut claimed: BTreeSet<String> = BTreeSet::new();
        // A format-2 entry applied under a running broker: its router reloads.
        let mut legacy_applied = false;
        let start = applied.clone();
        for entry in entries {
            // Re-running an old entry after newer ones could put back a value they replaced.
            // openraft never does this; the guard makes apply idempotent if it ever did.
            if applied
                .last_applied
                .is_some_and(|last| entry.log_id.index <= last.index)
            {
                tracing::warn!(log_id = %entry.log_id, "entry already applied; skipped");
                responses.push(ClusterResponse::default());
                continue;
            }
            applied.last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => responses.push(ClusterResponse::default()),
                EntryPayload::Normal(request) => {
                    let mut response = ClusterResponse::default();
                    // A proposal retried after a timeout may be in the log twice; the
                    // second copy must not re-create what was deleted in between.
                    if request.request_seq != 0 {
                        let last = applied.last_request.entry(request.origin).or_insert(0);
                        if request.request_seq <= *last {
                            response.duplicate = true;
                            responses.push(response);
                            continue;
                        }
                        *last = request.request_seq;
                    }
                    match request.body {
                        RequestBody::Commands(commands) => {
                            let own = feed_node == Some(request.origin);
                            let mut fed = Vec::new();
                            for command in commands {
                                let verdict = command::apply(&mut staged, &command)
                                    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                                match verdict {
                                    Verdict::Applied => {
                                        if let Command::Claim { client, owner, .. } = &command {
                                            if Some(owner.node) == feed_node {
                                                claimed.insert(client.clone());
                                            }
                                        }
                                    }
                                    Verdict::Refused { .. } => {
                                        response.fenced_ops += 1;
                                        // Another node's refusals change nothing here.
                                        if !own {
                                            continue;
                                        }
                                    }
                                }
                                if feed_node.is_some() {
                                    fed.push(AppliedCommand { command, verdict });
                                }
                            }
                            if feed_node.is_some() {
                                feed.push(Applied::Entry {
                                    origin: request.origin,
                                    commands: fed,
                                });
                            }
                        }
                        RequestBody::Legacy(ops) => {
                            Self::apply_legacy(
                                &mut staged,
                                trees,
                                request.origin,
                                ops,
                                &mut response,
                            )?;
                            legacy_applied = true;
                        }
                    }
                    responses.push(response);
                }
                EntryPayload::Membership(membership) => {
                    if feed_node.is_some() {
                        feed.push(Applied::Members(membership.nodes().count()));
                    }
                    applied.last_membership = StoredMembership::new(Some(entry.log_id), membership);
                    responses.push(ClusterResponse::default());
                }
            }
        }
        if applied == start {
            return Ok(AppliedBatch {
                responses,
                applied,
                feed,
            });
        }
        let mut batch = staged.into_batch();
        // A snapshot holds the listed trees only, and with the state machine in memory a
        // snapshot is all a restart has: a write elsewhere would be lost then, so it
        // stops the node now (the same on every node) instead.
        if let Some(op) = batch.ops().iter().find(|op| !trees.contains(&op.tree())) {
            return Err(StoreError::Corrupt(format!(
                "a command wrote tree {:?}, which snapshots do not hold",
                op.tree()
            )));
        }
        batch.put(META_TREE, APPLIED_KEY, encode(&applied)?);
        engine.write(batch)?;
        if feed_node.is_some() && legacy_applied {
            // Raw writes say nothing the router can follow: it rebuilds from the store.
            let stored = persist::load(engine).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            tracing::info!(
                "entries of an upgraded log applied under a running broker; its router reloads"
            );
            feed.push(Applied::Reset(Box::new(stored)));
            return Ok(AppliedBatch {
                responses,
                applied,
                feed,
            });
        }
        if let Some(node) = feed_node {
            // Sessions that became this node's: read after the write, so each load holds
            // everything the entries sent before it did.
            for client in claimed {
                let Some(bytes) = engine.get(OWNERS, client.as_bytes())? else {
                    continue;
                };
                let owner: Option<OwnerRecord> = persist::decode(OWNERS, &bytes).ok();
                if owner.map(|o| o.node) != Some(node) {
                    continue;
                }
                let state = persist::load_client(engine, &client)
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                feed.push(Applied::Loaded {
                    client: Arc::from(client),
                    state: Box::new(state),
                });
            }
        }
        Ok(AppliedBatch {
            responses,
            applied,
            feed,
        })
    }

    /// Applies one format-2 entry's raw writes as the previous release did: writes to a
    /// client's session state only from the node the registry names.
    fn apply_legacy(
        staged: &mut Staged<'_>,
        trees: &'static [&'static str],
        origin: NodeId,
        ops: Vec<ClusterOp>,
        response: &mut ClusterResponse,
    ) -> Result<(), StoreError> {
        let resolve = |name: &str| trees.iter().copied().find(|t| *t == name);
        for op in ops {
            let op = match op {
                ClusterOp::Put { tree, key, value } => {
                    resolve(&tree).map(|tree| WriteOp::Put { tree, key, value })
                }
                ClusterOp::Delete { tree, key } => {
                    resolve(&tree).map(|tree| WriteOp::Delete { tree, key })
                }
                ClusterOp::DeletePrefix { tree, prefix } => {
                    resolve(&tree).map(|tree| WriteOp::DeletePrefix { tree, prefix })
                }
            };
            let Some(op) = op else {
                tracing::warn!("format-2 write names an unknown tree; skipped");
                response.skipped_ops += 1;
                continue;
            };
            let admitted = command::legacy::admit(staged, origin, &op)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            if admitted {
                staged.push(op);
            } else {
                response.fenced_ops += 1;
            }
        }
        Ok(())
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = StateMachineSnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> RaftResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>)> {
        Ok((
            self.applied.last_applied,
            self.applied.last_membership.clone(),
        ))
    }

    async fn apply<I>(&mut self, entries: I) -> RaftResult<Vec<ClusterResponse>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let subject = match entries.last() {
            Some(entry) => ErrorSubject::Apply(entry.log_id),
            None => ErrorSubject::StateMachine,
        };
        let feed = Arc::clone(&self.feed);
        let feed = feed.lock().await;
        let feed_node = feed.as_ref().map(|f| f.node_id);
        let engine = Arc::clone(&self.engine);
        let trees = self.trees;
        let applied = self.applied.clone();
        let result = blocking(move || {
            Self::apply_blocking(engine.as_ref(), trees, applied, entries, feed_node)
        })
        .await
        .raft(subject, ErrorVerb::Write)?;
        self.applied = result.applied;
        if let Some(feed) = feed.as_ref() {
            let through = self.applied.last_applied.map(|id| id.index);
            let items = result.feed.into_iter().chain(through.map(Applied::Through));
            for item in items {
                // Waits when the broker is busy: apply backpressure, never a dropped entry.
                if feed.tx.send(item).await.is_err() {
                    break;
                }
            }
        }
        Ok(result.responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // The trees are read here, while openraft holds the state machine and no apply can
        // run: the builder itself runs concurrently with later applies, and the engine has no
        // point-in-time view to read from then.
        let engine = Arc::clone(&self.engine);
        let trees = self.trees;
        let dump = blocking(move || {
            trees
                .iter()
                .map(|name| {
                    Ok(TreeDump {
                        name: (*name).to_owned(),
                        pairs: engine.scan_prefix(name, b"")?,
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()
        })
        .await;
        StateMachineSnapshotBuilder {
            engine: Arc::clone(&self.engine),
            current: Arc::clone(&self.current),
            applied: self.applied.clone(),
            dump: Some(dump),
            durability: self.durability.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> RaftResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> RaftResult<()> {
        let subject = || ErrorSubject::Snapshot(Some(meta.signature()));
        let data = snapshot.into_inner();
        let blob: SnapshotBlob = decode(&data).raft(subject(), ErrorVerb::Read)?;
        let applied = AppliedState {
            last_applied: meta.last_log_id,
            last_membership: meta.last_membership.clone(),
            last_request: blob.applied.last_request.clone(),
        };
        if blob.format != SNAPSHOT_FORMAT || blob.applied != applied {
            return Err(StoreError::Corrupt(format!(
                "snapshot data (format {}, applied {:?}) does not match its meta {meta}",
                blob.format, blob.applied.last_applied
            )))
            .raft(subject(), ErrorVerb::Read);
        }

        // Every known tree is emptied and refilled in the batch that also moves `applied`, so
        // readers see the old state or the new one, never a mix.
        let batch =
            restore_batch(self.trees, blob.trees, &applied).raft(subject(), ErrorVerb::Write)?;

        let engine = Arc::clone(&self.engine);
        let current = Arc::clone(&self.current);
        let candidate = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        // Held from before the write until the broker has the new state, as apply holds it:
        // a feed attached meanwhile could otherwise read the old store and never hear of
        // the new one.
        let feed = Arc::clone(&self.feed);
        let feed = feed.lock().await;
        let durability = self.durability.clone();
        let installed =
            blocking(move || keep_snapshot(&*engine, &current, candidate, batch, &durability))
                .await
                .raft(subject(), ErrorVerb::Write)?;
        if installed {
            self.applied = applied;
            if let Some(feed) = feed.as_ref() {
                // The broker's view was built from entries, and the snapshot replaced the
                // store wholesale: it rebuilds that view from the store as it is now.
                let engine = Arc::clone(&self.engine);
                let stored = blocking(move || {
                    persist::load(engine.as_ref()).map_err(|e| StoreError::Corrupt(e.to_string()))
                })
                .await
                .raft(subject(), ErrorVerb::Read)?;
                tracing::info!(snapshot = %meta, "snapshot installed under a running broker; its router reloads");
                // A closed feed means the broker is stopping: nobody is left to tell.
                if feed.tx.send(Applied::Reset(Box::new(stored))).await.is_ok() {
                    if let Some(last) = meta.last_log_id {
                        let _ = feed.tx.send(Applied::Through(last.index)).await;
                    }
                }
            }
        } else {
            // openraft only installs a snapshot newer than what it has; skipping is safe but
            // worth hearing about.
            tracing::warn!(snapshot = %meta, "a newer snapshot is already current; install skipped");
        }
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> RaftResult<Option<Snapshot<TypeConfig>>> {
        let current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(current.as_ref().map(StoredSnapshot::to_snapshot))
    }
}

/// Builds a snapshot from the trees read when openraft asked for the builder.
pub struct StateMachineSnapshotBuilder {
    engine: Arc<dyn KvEngine>,
    current: CurrentSnapshot,
    applied: AppliedState,
    /// The trees as read in `get_snapshot_builder`, or why they could not be; taken by the
    /// first build.
    dump: Option<Result<Vec<TreeDump>, StoreError>>,
    durability: Durability,
}

impl std::fmt::Debug for StateMachineSnapshotBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMachineSnapshotBuilder")
            .field("applied", &self.applied)
            .finish_non_exhaustive()
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineSnapshotBuilder {
    async fn build_snapshot(&mut self) -> RaftResult<Snapshot<TypeConfig>> {
        let subject = || ErrorSubject::Snapshot(None);
        let trees = self
            .dump
            .take()
            .unwrap_or_else(|| Err(StoreError::Corrupt("snapshot builder used twice".into())))
            .raft(subject(), ErrorVerb::Read)?;
        let candidate =
            snapshot_of(self.applied.clone(), trees).raft(subject(), ErrorVerb::Write)?;
        let snapshot = candidate.to_snapshot();
        let engine = Arc::clone(&self.engine);
        let current = Arc::clone(&self.current);
        let durability = self.durability.clone();
        let kept = blocking(move || {
            keep_snapshot(
                &*engine,
                &current,
                candidate,
                WriteBatch::new(),
                &durability,
            )
        })
        .await
        .raft(subject(), ErrorVerb::Write)?;
        if !kept {
            tracing::info!(snapshot = %snapshot.meta, "a newer snapshot was installed meanwhile");
        }
        Ok(snapshot)
    }
}

/// A snapshot id unique per build: the last log id alone would repeat when a snapshot is
/// rebuilt at the same point, and openraft uses the id to tell transfers apart.
fn snapshot_id(last_applied: Option<LogId<NodeId>>) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    match last_applied {
        Some(log_id) => format!("{log_id}-{nanos}"),
        None => format!("none-{nanos}"),
    }
}
