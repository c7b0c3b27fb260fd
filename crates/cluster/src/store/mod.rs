//! Durable Raft storage: the log in a sled database of its own ([`SledLogStore`]) and the
//! state machine in the broker's key-value engine ([`StateMachineStore`]).
//!
//! The log is the durable record: an entry is acknowledged once its fsync is done. The state
//! machine trails it without fsync of its own, except around snapshots, after which openraft
//! may purge the log. A node keeps the state machine in memory with its snapshot in a file
//! ([`Durability::SnapshotFile`]): a restart loads the file and re-applies the log after it.

mod error;
mod log_store;
mod state_machine;
mod wal;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use fleetmq_storage::KvEngine;

pub use error::{StoreError, UNDECODABLE_ENTRY};
pub use log_store::{SledLogReader, SledLogStore};
pub use state_machine::Durability;
pub use state_machine::{
    stored_applied_index, ApplyFeed, FeedSlot, StateMachineSnapshotBuilder, StateMachineStore,
    META_TREE,
};
pub use wal::{FileLogReader, FileLogStore};

/// The directory of the Raft log as releases before segment files kept it (sled), under
/// a node's Raft directory; moved into [`WAL_DIR`] at start.
pub const LOG_DIR: &str = "raft-log";
/// The log store's directory under a node's Raft directory.
pub const WAL_DIR: &str = "raft-wal";

/// The state machine's snapshot file under a node's Raft directory, when the state
/// machine is kept in memory ([`Durability::SnapshotFile`]).
pub const SNAPSHOT_FILE: &str = "state-snapshot";

/// Opens a node's Raft storage: the log in `dir`/[`LOG_DIR`], and the state machine over
/// `engine` with `trees` as the trees commands may write, its snapshot kept in the
/// engine. Blocking.
pub fn open_raft_storage(
    dir: &Path,
    engine: Arc<dyn KvEngine>,
    trees: &'static [&'static str],
) -> Result<(FileLogStore, StateMachineStore), StoreError> {
    open_raft_storage_kept(dir, engine, trees, Durability::Engine)
}

/// [`open_raft_storage`], with the state machine kept as `durability` says.
pub fn open_raft_storage_kept(
    dir: &Path,
    engine: Arc<dyn KvEngine>,
    trees: &'static [&'static str],
    durability: Durability,
) -> Result<(FileLogStore, StateMachineStore), StoreError> {
    adopt_sled_log(dir)?;
    let log = FileLogStore::open(&dir.join(WAL_DIR))?;
    let sm = StateMachineStore::open(engine, trees, durability)?;
    Ok((log, sm))
}

/// Moves a log an earlier release kept in sled (`dir`/[`LOG_DIR`], upgraded from format 2
/// on the way) into segment files (`dir`/[`WAL_DIR`]), and renames the sled directory
/// `raft-log.before-upgrade`. The copy is made beside and renamed into place, so a crash
/// leaves either the sled log (copied again at the next start) or both (then only
/// renamed). Blocking.
fn adopt_sled_log(dir: &Path) -> Result<(), StoreError> {
    let sled_dir = dir.join(LOG_DIR);
    let wal_dir = dir.join(WAL_DIR);
    if !sled_dir.exists() {
        return Ok(());
    }
    if !wal_dir.exists() {
        let building = dir.join(format!("{WAL_DIR}.partial"));
        if building.exists() {
            std::fs::remove_dir_all(&building)?;
        }
        let copied = {
            let sled = SledLogStore::open(&sled_dir)?;
            wal::copy_from_sled(&building, &sled)?
        };
        std::fs::rename(&building, &wal_dir)?;
        std::fs::File::open(dir)?.sync_all()?;
        tracing::info!(
            entries = copied,
            "raft log moved from sled into segment files"
        );
    }
    std::fs::rename(&sled_dir, dir.join(format!("{LOG_DIR}.before-upgrade")))?;
    Ok(())
}

/// Moves the state a previous release kept in a sled store (`store_dir`) into a snapshot
/// file (`snapshot_file`), the form this release keeps it in, and renames the store to
/// `<store_dir>.before-upgrade`. Returns the renamed directory, or `None` when there was
/// no store. A crash halfway leaves either the store (done again at the next start) or
/// the file and the store (then only renamed). Blocking.
pub fn adopt_engine_store(
    store_dir: &Path,
    snapshot_file: &Path,
    trees: &'static [&'static str],
) -> Result<Option<PathBuf>, StoreError> {
    if !store_dir.exists() {
        return Ok(None);
    }
    if !snapshot_file.exists() {
        let engine = fleetmq_storage::SledEngine::open(store_dir)?;
        if let Some(bytes) = state_machine::export_engine_state(&engine, trees)? {
            state_machine::write_file_atomically(snapshot_file, &bytes)?;
        }
    }
    let mut renamed = store_dir.as_os_str().to_owned();
    renamed.push(".before-upgrade");
    let renamed = PathBuf::from(renamed);
    std::fs::rename(store_dir, &renamed)?;
    Ok(Some(renamed))
}
