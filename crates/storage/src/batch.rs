//! [`WriteBatch`]: a list of writes that an engine applies all or nothing.

/// One write in a batch. `tree` names a keyspace (`"sessions"`, `"retained"`, ...).
///
/// Tree names are `&'static str` because they are a fixed schema chosen in code, never data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOp {
    /// Stores `value` under `key`, replacing any previous value.
    Put {
        /// The keyspace.
        tree: &'static str,
        /// The key.
        key: Vec<u8>,
        /// The new value.
        value: Vec<u8>,
    },
    /// Removes `key`; removing an absent key is not an error.
    Delete {
        /// The keyspace.
        tree: &'static str,
        /// The key.
        key: Vec<u8>,
    },
    /// Removes every key that starts with `prefix` (an empty prefix empties the tree).
    DeletePrefix {
        /// The keyspace.
        tree: &'static str,
        /// The prefix of the keys to remove.
        prefix: Vec<u8>,
    },
}

impl WriteOp {
    /// The tree this op writes to.
    pub fn tree(&self) -> &'static str {
        match self {
            WriteOp::Put { tree, .. }
            | WriteOp::Delete { tree, .. }
            | WriteOp::DeletePrefix { tree, .. } => tree,
        }
    }
}

/// Writes applied all or nothing, in order, by [`KvEngine::write`](crate::KvEngine::write).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteBatch {
    ops: Vec<WriteOp>,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an op built elsewhere.
    pub fn push(&mut self, op: WriteOp) {
        self.ops.push(op);
    }

    /// Adds a [`WriteOp::Put`].
    pub fn put(&mut self, tree: &'static str, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push(WriteOp::Put {
            tree,
            key: key.into(),
            value: value.into(),
        });
    }

    /// Adds a [`WriteOp::Delete`].
    pub fn delete(&mut self, tree: &'static str, key: impl Into<Vec<u8>>) {
        self.ops.push(WriteOp::Delete {
            tree,
            key: key.into(),
        });
    }

    /// Adds a [`WriteOp::DeletePrefix`].
    pub fn delete_prefix(&mut self, tree: &'static str, prefix: impl Into<Vec<u8>>) {
        self.ops.push(WriteOp::DeletePrefix {
            tree,
            prefix: prefix.into(),
        });
    }

    /// Appends every op of `other` after the ops already here, so that several proposals can be
    /// committed as one batch.
    pub fn extend(&mut self, other: WriteBatch) {
        self.ops.extend(other.ops);
    }

    /// The number of ops.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether the batch has no op.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The ops, in the order they apply.
    pub fn ops(&self) -> &[WriteOp] {
        &self.ops
    }

    /// Takes the ops out, in the order they apply.
    pub fn into_ops(self) -> Vec<WriteOp> {
        self.ops
    }
}

impl From<Vec<WriteOp>> for WriteBatch {
    fn from(ops: Vec<WriteOp>) -> Self {
        Self { ops }
    }
}

impl FromIterator<WriteOp> for WriteBatch {
    fn from_iter<I: IntoIterator<Item = WriteOp>>(iter: I) -> Self {
        Self {
            ops: iter.into_iter().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_ops_in_order_and_extends() {
        let mut a = WriteBatch::new();
        assert!(a.is_empty());
        a.put("t", b"k".to_vec(), b"v".to_vec());
        a.delete("t", "k");
        let mut b = WriteBatch::new();
        b.delete_prefix("u", vec![1u8]);
        a.extend(b);
        assert_eq!(a.len(), 3);
        assert_eq!(
            a.ops(),
            &[
                WriteOp::Put {
                    tree: "t",
                    key: b"k".to_vec(),
                    value: b"v".to_vec()
                },
                WriteOp::Delete {
                    tree: "t",
                    key: b"k".to_vec()
                },
                WriteOp::DeletePrefix {
                    tree: "u",
                    prefix: vec![1]
                },
            ]
        );
        assert_eq!(a.ops()[2].tree(), "u");
        assert_eq!(WriteBatch::from(a.clone().into_ops()), a);
    }
}
