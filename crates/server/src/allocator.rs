//! The allocator, and how soon it gives freed memory back to the system.
//!
//! sled allocates and frees a tree node copy on most writes, and every node applies
//! every replicated write: with glibc's malloc a third of the broker's CPU under
//! replicated QoS 1 load was the allocator (BENCHMARKS.md, "Profile"), hence mimalloc.
//! Its defaults suit a process that keeps what it frees, though: it commits its arenas
//! up front and purges freed pages only after a delay, so memory freed after a
//! connection storm (handshake buffers, Raft entries) stayed resident, about 1.2 KB per
//! idle connection (BENCHMARKS.md, "What each memory change bought").

use libmimalloc_sys::{mi_option_set, mi_option_t};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_e` in mimalloc.h (the same number in mimalloc 2 and 3); the sys crate
/// names neither.
const ARENA_EAGER_COMMIT: mi_option_t = 4;
const PURGE_DELAY: mi_option_t = 15;

/// Commit arena memory as it is used, and purge freed pages at once: what a broker
/// frees after a burst returns to the system instead of staying in its RSS. A
/// `MIMALLOC_*` variable in the environment still wins (mimalloc reads those itself).
// The workspace denies unsafe code; this is an FFI call that passes two integers.
#[allow(unsafe_code)]
pub fn give_back_freed_memory() {
    for (option, variable) in [
        (ARENA_EAGER_COMMIT, "MIMALLOC_ARENA_EAGER_COMMIT"),
        (PURGE_DELAY, "MIMALLOC_PURGE_DELAY"),
    ] {
        if std::env::var_os(variable).is_none() {
            // SAFETY: sets a plain integer option; mimalloc reads options atomically.
            unsafe { mi_option_set(option, 0) };
        }
    }
}
