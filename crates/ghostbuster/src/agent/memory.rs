//! Giving freed heap back to the system.
//!
//! The agent's resident memory is what operators set limits on. Its peaks are transient: the
//! initial lists (tens of megabytes of JSON and API objects at 10,000 Services, reduced at once
//! to the compact index) and the findings of a full pass. glibc's allocator keeps such freed
//! memory in its arenas, so without a trim the resident size stays at the peak for the life of
//! the process. `malloc_trim(0)` returns free pages of every arena; it costs a few milliseconds
//! and is called only after those peaks.

/// Returns freed heap memory to the system (a no-op where the C library has no `malloc_trim`).
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// At most two malloc arenas. glibc gives each thread that allocates concurrently an arena of its
/// own (up to 8 per core), and memory freed in one arena serves only that arena: the watch
/// tasks, the reactor and the event thread would each keep their own peak. The agent allocates
/// little per second, so the contention this adds is negligible. Call before starting threads.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes an allocator tunable; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
