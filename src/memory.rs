//! Handing freed memory back to the operating system at chosen points.
//!
//! The `asl` binary allocates with jemalloc configured never to purge freed pages on its own
//! ([`crate::process::JEMALLOC_CONF`]). A training step frees and reallocates tensors of tens to hundreds of MiB
//! hundreds of times; glibc's malloc, and jemalloc with its default 10 s decay, returned those
//! pages in between, so every reuse faulted them in and zeroed them again: 40–50 % of a step,
//! measured with `perf` (docs/model-bench.md). Instead asl purges where it chooses: after a
//! stage and after a training step, each only when the process holds more than half the
//! machine's memory. Purging after every step regardless made the `train` stage's small
//! micro-batches fault their memory in again each time (22 % of its samples in
//! `clear_page_erms`, 120 s against 103 s on the default's round 1); purging after every stage
//! did the same to `asl run`, where each train step and each apply is a stage (100k page faults
//! against 10k in one AMX round of the default, 4 % of its CPU time).

/// Returns every arena's free pages to the operating system. A no-op for memory that jemalloc
/// does not manage (e.g. in test binaries, which keep the system allocator).
pub(crate) fn release_free_memory() {
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

/// [`release_free_memory`] when the process's resident memory exceeds half of the machine's
/// (Linux; elsewhere it never purges). Called between training steps: below that mark the next
/// step reuses the freed pages, above it fragmentation could grow the footprint past what the
/// machine has.
pub(crate) fn release_free_memory_if_large() {
    if let (Some(rss), Some(total)) = (resident_bytes(), total_memory_bytes())
        && rss > total / 2
    {
        release_free_memory();
    }
}

/// Resident set size (`VmRSS` of `/proc/self/status`).
fn resident_bytes() -> Option<u64> {
    kib_field(
        &std::fs::read_to_string("/proc/self/status").ok()?,
        "VmRSS:",
    )
}

/// The value of a `Name:   123 kB` line, in bytes.
fn kib_field(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(name))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// `MemTotal` from `/proc/meminfo`, read once.
fn total_memory_bytes() -> Option<u64> {
    static TOTAL: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *TOTAL.get_or_init(|| kib_field(&std::fs::read_to_string("/proc/meminfo").ok()?, "MemTotal:"))
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

    #[cfg(target_os = "linux")]
    #[test]
    fn reads_this_process_and_machine_memory() {
        let rss = super::resident_bytes().unwrap();
        let total = super::total_memory_bytes().unwrap();
        assert!(rss > 0 && rss < total, "rss {rss} total {total}");
        // A test process is far below half of any machine's memory: nothing is purged.
        super::release_free_memory_if_large();
    }
}
