//! [`MemoryEngine`]: an in-memory [`KvEngine`] for tests and for state that need not survive a
//! restart.

use std::collections::{BTreeMap, HashMap};
use std::sync::RwLock;

use crate::{check_tree, KvEngine, KvPair, StorageError, WriteBatch, WriteOp};

type Tree = BTreeMap<Vec<u8>, Vec<u8>>;

/// An in-memory engine: one ordered map per tree behind a single lock.
///
/// One lock for all trees is what makes a batch atomic across trees; readers only ever see a
/// batch whole. Nothing is durable, so [`flush`](KvEngine::flush) does nothing.
#[derive(Debug, Default)]
pub struct MemoryEngine {
    trees: RwLock<HashMap<String, Tree>>,
}

impl MemoryEngine {
    /// An empty engine.
    pub fn new() -> Self {
        Self::default()
    }
}

impl KvEngine for MemoryEngine {
    fn get(&self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        check_tree(tree)?;
        let trees = self.trees.read().map_err(|_| StorageError::Poisoned)?;
        Ok(trees.get(tree).and_then(|t| t.get(key)).cloned())
    }

    fn scan_prefix(&self, tree: &str, prefix: &[u8]) -> Result<Vec<KvPair>, StorageError> {
        check_tree(tree)?;
        let trees = self.trees.read().map_err(|_| StorageError::Poisoned)?;
        let Some(t) = trees.get(tree) else {
            return Ok(Vec::new());
        };
        Ok(t.range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn write(&self, batch: WriteBatch) -> Result<(), StorageError> {
        // Validate everything before touching the maps: failing halfway would leave a partial
        // batch visible.
        for op in batch.ops() {
            check_tree(op.tree())?;
        }
        if batch.is_empty() {
            return Ok(());
        }
        let mut trees = self.trees.write().map_err(|_| StorageError::Poisoned)?;
        for op in batch.into_ops() {
            match op {
                WriteOp::Put { tree, key, value } => {
                    // Only a tree's first put allocates its name: the state machine of a
                    // cluster node puts every replicated write through here.
                    match trees.get_mut(tree) {
                        Some(t) => {
                            t.insert(key, value);
                        }
                        None => {
                            trees.entry(tree.to_owned()).or_default().insert(key, value);
                        }
                    }
                }
                WriteOp::Delete { tree, key } => {
                    if let Some(t) = trees.get_mut(tree) {
                        t.remove(&key);
                    }
                }
                WriteOp::DeletePrefix { tree, prefix } => {
                    if let Some(t) = trees.get_mut(tree) {
                        // Walk only the matching range instead of `retain`, which would visit
                        // the whole tree for a small prefix.
                        let doomed: Vec<Vec<u8>> = t
                            .range(prefix.clone()..)
                            .take_while(|(k, _)| k.starts_with(&prefix))
                            .map(|(k, _)| k.clone())
                            .collect();
                        for k in doomed {
                            t.remove(&k);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), StorageError> {
        Ok(())
    }
}
