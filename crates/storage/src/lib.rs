//! FleetMQ's storage layer: a small key-value engine behind the [`KvEngine`] trait.
//!
//! The broker and the cluster crates store everything through this trait, so they never
//! depend on a particular engine. An engine offers:
//!
//! - named trees (keyspaces such as `"sessions"` or `"retained"`), each with ordered byte keys;
//! - atomic [`WriteBatch`]es that may span several trees;
//! - explicit durability through [`KvEngine::flush`], so the caller decides when to pay for
//!   an fsync and can commit many batches with one (group commit).
//!
//! Two engines are provided: [`SledEngine`] on disk and [`MemoryEngine`] for tests and for
//! data that need not survive a restart. This crate knows nothing of MQTT.

mod batch;
mod errors;
mod memory;
mod sled_engine;

use std::sync::Arc;

pub use batch::{WriteBatch, WriteOp};
pub use errors::StorageError;
pub use memory::MemoryEngine;
pub use sled_engine::SledEngine;

/// One stored pair, `(key, value)`, as returned by [`KvEngine::scan_prefix`].
pub type KvPair = (Vec<u8>, Vec<u8>);

/// A small key-value engine: named trees, ordered byte keys, atomic batches, explicit
/// durability.
///
/// A tree name may be any string without a NUL byte (engines reject such names with
/// [`StorageError::InvalidTree`]); a tree that was never written to reads as empty. All
/// methods are blocking and may do IO: async callers run them on a blocking thread.
pub trait KvEngine: Send + Sync + 'static {
    /// The value stored under `key` in `tree`, if any.
    fn get(&self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;

    /// All pairs whose key starts with `prefix`, in key order.
    fn scan_prefix(&self, tree: &str, prefix: &[u8]) -> Result<Vec<KvPair>, StorageError>;

    /// Applies every op of `batch` atomically (all trees together): after a crash either all
    /// or none are visible, and concurrent readers never see part of it. Ops apply in order,
    /// so a later op in the batch wins over an earlier one on the same key. Not yet durable
    /// until [`flush`](KvEngine::flush).
    fn write(&self, batch: WriteBatch) -> Result<(), StorageError>;

    /// Makes every write that returned before this call durable (fsync). Blocking: call it
    /// from a blocking thread.
    fn flush(&self) -> Result<(), StorageError>;
}

/// Lets callers share one engine as `Arc<E>` or `Arc<dyn KvEngine>` and still pass it where
/// an engine is expected.
impl<E: KvEngine + ?Sized> KvEngine for Arc<E> {
    fn get(&self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        (**self).get(tree, key)
    }

    fn scan_prefix(&self, tree: &str, prefix: &[u8]) -> Result<Vec<KvPair>, StorageError> {
        (**self).scan_prefix(tree, prefix)
    }

    fn write(&self, batch: WriteBatch) -> Result<(), StorageError> {
        (**self).write(batch)
    }

    fn flush(&self) -> Result<(), StorageError> {
        (**self).flush()
    }
}

/// Rejects tree names that would make the sled key encoding (`tree NUL key`) ambiguous. Both
/// engines apply the same rule so that code tested on [`MemoryEngine`] behaves the same on
/// [`SledEngine`].
fn check_tree(tree: &str) -> Result<(), StorageError> {
    if tree.as_bytes().contains(&0) {
        return Err(StorageError::InvalidTree(tree.to_owned()));
    }
    Ok(())
}
