//! The allocator, and how soon it gives freed memory back to the system.
//!
//! sled allocates and frees a tree node copy on most writes, and every node applies
//! every replicated write: with glibc's malloc a third of the broker's CPU under
//! replicated QoS 1 load was the allocator (BENCHMARKS.md, "Profile"), hence mimalloc.
//! Its default suits a process that keeps what it frees, though: freed pages are purged
//! only after a delay, and only when the allocator runs again, which an idle broker
//! hardly does. The memory freed after a connection storm (handshake buffers, Raft
//! entries) stayed resident: about 1.3 KB per idle connection (BENCHMARKS.md, "What
//! each memory change bought").

use libmimalloc_sys::{mi_option_set, mi_option_t};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc.h's `mi_option_e` (15 in mimalloc 2 and 3);
/// the sys crate does not name it.
const PURGE_DELAY: mi_option_t = 15;

/// Purge freed pages at once, so that what a broker frees after a burst returns to
/// the system instead of staying in its RSS. `MIMALLOC_PURGE_DELAY` in the environment
/// still wins. Options that shape the first arena (its eager commit) cannot be set
/// here: mimalloc reserves it before `main` runs, so only the environment reaches them.
// The workspace denies unsafe code; this is an FFI call that passes two integers.
#[allow(unsafe_code)]
pub fn purge_freed_memory_at_once() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets a plain integer option; mimalloc reads options atomically.
        unsafe { mi_option_set(PURGE_DELAY, 0) };
    }
}
