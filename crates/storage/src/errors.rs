//! The storage crate's one error type.

/// Everything that can go wrong in a storage engine.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The sled engine failed, usually on IO.
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    /// Stored data does not have the shape this crate wrote; the store cannot be trusted.
    #[error("corrupt store: {0}")]
    Corrupt(String),
    /// A tree name contains a NUL byte, which the key encoding reserves as separator.
    #[error("invalid tree name {0:?}: it must not contain a NUL byte")]
    InvalidTree(String),
    /// A thread panicked while holding the in-memory engine's lock, possibly halfway through a
    /// batch, so the engine refuses further use rather than expose a partial write.
    #[error("in-memory engine poisoned by a panic during a write")]
    Poisoned,
}
