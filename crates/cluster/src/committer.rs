//! The broker's [`Committer`] as Raft: a round's writes become one entry, durable
//! once a majority has it in its log and the local state machine has applied it.

use std::future::Future;

use fleetmq_broker::{CommitError, Committer};
use fleetmq_storage::{WriteBatch, WriteOp};
use openraft::Raft;
use tracing::error;

use crate::types::{ClusterOp, ClusterRequest, TypeConfig};

/// Proposes each batch to the Raft group and waits for it to be applied.
pub struct RaftCommitter {
    raft: Raft<TypeConfig>,
}

impl RaftCommitter {
    pub fn new(raft: Raft<TypeConfig>) -> Self {
        RaftCommitter { raft }
    }
}

/// The replicated form of a broker write batch.
pub fn to_request(batch: WriteBatch) -> ClusterRequest {
    let ops = batch
        .into_ops()
        .into_iter()
        .map(|op| match op {
            WriteOp::Put { tree, key, value } => ClusterOp::Put {
                tree: tree.to_string(),
                key,
                value,
            },
            WriteOp::Delete { tree, key } => ClusterOp::Delete {
                tree: tree.to_string(),
                key,
            },
            WriteOp::DeletePrefix { tree, prefix } => ClusterOp::DeletePrefix {
                tree: tree.to_string(),
                prefix,
            },
        })
        .collect();
    ClusterRequest { ops }
}

impl Committer for RaftCommitter {
    fn commit(
        &mut self,
        batch: WriteBatch,
    ) -> impl Future<Output = Result<(), CommitError>> + Send {
        let raft = self.raft.clone();
        async move {
            let response = raft
                .client_write(to_request(batch))
                .await
                .map_err(|e| CommitError::Replication(e.to_string()))?;
            if response.data.skipped_ops > 0 {
                // Every node runs the same tree list; a skip means a version mismatch.
                error!(
                    skipped = response.data.skipped_ops,
                    "state machine skipped writes to unknown trees"
                );
            }
            Ok(())
        }
    }
}
