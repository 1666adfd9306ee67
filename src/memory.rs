//! Handing freed memory back to the operating system at chosen points.
//!
//! The `asl` binary allocates with jemalloc configured never to purge freed pages on its own
//! (`src/main.rs`). A training step frees and reallocates tensors of tens to hundreds of MiB
//! hundreds of times; glibc's malloc, and jemalloc with its default 10 s decay, returned those
//! pages in between, so every reuse faulted them in and zeroed them again: 40–50 % of a step,
//! measured with `perf` (docs/model-bench.md). Instead asl purges where the allocation pattern
//! changes: after each optimizer step and after each stage. A process's footprint is then its
//! largest step, not the sum of its stages.

/// Returns every arena's free pages to the operating system. A no-op for memory that jemalloc
/// does not manage (e.g. in test binaries, which keep the system allocator).
pub fn release_free_memory() {
    #[cfg(not(target_env = "msvc"))]
    {
        // MALLCTL_ARENAS_ALL (4096): every arena at once.
        let name = c"arena.4096.purge";
        // SAFETY: a void mallctl: no old or new value pointers are passed.
        let rc = unsafe {
            tikv_jemalloc_sys::mallctl(
                name.as_ptr(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                0,
            )
        };
        debug_assert_eq!(rc, 0, "jemalloc arena purge failed: {rc}");
    }
}

#[cfg(test)]
mod tests {
    /// jemalloc accepts the purge command (its return code is checked by a debug assertion,
    /// which test builds keep), also when called again with nothing left to purge.
    #[test]
    fn jemalloc_accepts_the_purge_command() {
        let big = vec![1u8; 1 << 20];
        drop(big);
        super::release_free_memory();
        super::release_free_memory();
    }
}
