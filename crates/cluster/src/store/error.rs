//! The storage half's error type, and its one conversion into openraft's `StorageError`.

use openraft::{AnyError, ErrorSubject, ErrorVerb, StorageError, StorageIOError};

use crate::types::NodeId;

/// The words that start an [`StoreError::Undecodable`]'s message, by which whoever reads
/// openraft's fatal error (the node's watch on it) tells this cause from other failures.
pub const UNDECODABLE_ENTRY: &str = "cannot decode replicated log entry";

/// Everything that can go wrong opening or using the Raft log store or the state machine store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The log store's sled database failed, usually on IO.
    #[error("raft log (sled): {0}")]
    Sled(#[from] sled::Error),
    /// The state machine's key-value engine failed.
    #[error("state machine engine: {0}")]
    Engine(#[from] fleetmq_storage::StorageError),
    /// A record could not be encoded, or a stored one could not be decoded.
    #[error("encoding: {0}")]
    Codec(#[from] postcard::Error),
    /// A replicated log entry this build cannot decode (written by a newer release, or
    /// damaged). Never skipped: a state machine that skips an entry diverges from the
    /// others, so the node stops applying and says which entry stopped it.
    #[error("{UNDECODABLE_ENTRY} {index} ({source}): the node stops applying rather than skip it; run the release that wrote it, or move the node's data_dir away so that it copies the state back from the other members")]
    Undecodable { index: u64, source: postcard::Error },
    /// Stored data does not have the shape this crate writes; the store cannot be trusted.
    #[error("corrupt raft store: {0}")]
    Corrupt(String),
    /// The store was written by a FleetMQ version whose layout this build does not read.
    #[error("the {what} was written by another FleetMQ version (data format {found}, this build reads {expected}): run the version that wrote it, or move the node's data_dir away and start it empty (in a cluster it copies everything back from the other members)")]
    Incompatible {
        what: &'static str,
        found: String,
        expected: String,
    },
    /// The caller named a tree the state machine keeps its own metadata in.
    #[error("tree name {0:?} is reserved for the state machine's metadata")]
    ReservedTree(&'static str),
    /// The log store's flush thread could not be started, or is gone.
    #[error("raft log flusher: {0}")]
    Flusher(String),
    /// A blocking storage task panicked or was cancelled.
    #[error("blocking storage task: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// An IO error outside sled, e.g. creating the store's directory.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

impl StoreError {
    /// Wraps `self` as the openraft error for `verb` on `subject`: openraft stops the node on
    /// any storage error, so the subject and verb are what the operator gets to read.
    pub(crate) fn into_raft(
        self,
        subject: ErrorSubject<NodeId>,
        verb: ErrorVerb,
    ) -> StorageError<NodeId> {
        StorageIOError::new(subject, verb, AnyError::new(&self)).into()
    }
}

/// `result.map_err(...)` in one call, for the many fallible steps of the trait methods.
// openraft's StorageError is large, but it is what every storage trait method returns.
#[allow(clippy::result_large_err)]
pub(crate) trait RaftResultExt<T> {
    /// Converts the error with [`StoreError::into_raft`].
    fn raft(
        self,
        subject: ErrorSubject<NodeId>,
        verb: ErrorVerb,
    ) -> Result<T, StorageError<NodeId>>;
}

impl<T, E: Into<StoreError>> RaftResultExt<T> for Result<T, E> {
    fn raft(
        self,
        subject: ErrorSubject<NodeId>,
        verb: ErrorVerb,
    ) -> Result<T, StorageError<NodeId>> {
        self.map_err(|e| e.into().into_raft(subject, verb))
    }
}
