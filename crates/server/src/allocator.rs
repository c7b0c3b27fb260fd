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
//!
//! Purging at once does not go with transparent huge pages, which mimalloc asks for on
//! its arenas: a purge breaks up a 2 MiB page, and the next allocation there faults in
//! a fresh one and zeroes all of it. In a connection storm that zeroing was 13% of the
//! broker's CPU (BENCHMARKS.md, the connection storm), so the process turns them off.

use libmimalloc_sys::{mi_option_set, mi_option_t};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc.h's `mi_option_e` (15 in mimalloc 2 and 3);
/// the sys crate does not name it.
const PURGE_DELAY: mi_option_t = 15;

/// Purge freed pages at once, so that what a broker frees after a burst returns to
/// the system instead of staying in its RSS, and use no transparent huge pages (see
/// above). `MIMALLOC_PURGE_DELAY` and `MIMALLOC_ALLOW_THP` in the environment still
/// win. Options that shape the first arena (its eager commit) cannot be set
/// here: mimalloc reserves it before `main` runs, so only the environment reaches them.
// The workspace denies unsafe code; this is an FFI call that passes two integers.
#[allow(unsafe_code)]
pub fn purge_freed_memory_at_once() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets a plain integer option; mimalloc reads options atomically.
        unsafe { mi_option_set(PURGE_DELAY, 0) };
    }
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        // mimalloc reserved its first arena (huge pages advised) before `main`: only the
        // process-wide switch reaches it, and it applies to mappings that exist.
        // SAFETY: prctl with integer arguments; it changes a flag of this process only.
        let refused = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) } != 0;
        if refused {
            // Not fatal: the broker runs as before, at some CPU cost in storms.
            eprintln!(
                "fleetmq: could not turn off transparent huge pages: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}
