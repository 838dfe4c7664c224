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
