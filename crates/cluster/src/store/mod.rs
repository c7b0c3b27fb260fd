//! Durable Raft storage: the log in a sled database of its own ([`SledLogStore`]) and the
//! state machine in the broker's key-value engine ([`StateMachineStore`]).
//!
//! The log is the durable record: an entry is acknowledged once its fsync is done. The state
//! machine trails it without fsync of its own, except around snapshots, after which openraft
//! may purge the log.

mod error;
mod log_store;
mod state_machine;

use std::path::Path;
use std::sync::Arc;

use fleetmq_storage::KvEngine;

pub use error::{StoreError, UNDECODABLE_ENTRY};
pub use log_store::{SledLogReader, SledLogStore};
pub use state_machine::{
    stored_applied_index, ApplyFeed, FeedSlot, StateMachineSnapshotBuilder, StateMachineStore,
    META_TREE,
};

/// The log store's directory under a node's Raft directory.
pub const LOG_DIR: &str = "raft-log";

/// Opens a node's Raft storage: the log in `dir`/[`LOG_DIR`], and the state machine over
/// `engine` with `trees` as the trees commands may write. Blocking.
pub fn open_raft_storage(
    dir: &Path,
    engine: Arc<dyn KvEngine>,
    trees: &'static [&'static str],
) -> Result<(SledLogStore, StateMachineStore), StoreError> {
    let log = SledLogStore::open(&dir.join(LOG_DIR))?;
    let sm = StateMachineStore::new(engine, trees)?;
    Ok((log, sm))
}
