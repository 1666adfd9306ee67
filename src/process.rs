//! Process-wide set-up that the `asl` binary and the benchmark examples share, so a benchmark
//! measures what the stages run: the allocator and candle's CPU thread count.

#[cfg(not(target_env = "msvc"))]
pub use tikv_jemallocator::Jemalloc;

/// jemalloc's settings: never purge freed pages on its own, use transparent huge pages. Training
/// frees and reallocates tensors of tens to hundreds of MiB many times a step, and returning
/// their pages in between made each reuse fault in and zero them again (40–50 % of a step,
/// measured with `perf`). asl purges explicitly instead ([`crate::memory`]).
/// `_RJEM_MALLOC_CONF` in the environment still overrides this.
pub const JEMALLOC_CONF: &[u8; 67] =
    b"thp:always,metadata_thp:always,dirty_decay_ms:-1,muzzy_decay_ms:-1\0";

/// Makes jemalloc, with [`JEMALLOC_CONF`], the global allocator of the binary that invokes it
/// (at the crate root of a `main.rs` or an example). Library test binaries keep the system
/// allocator.
#[macro_export]
macro_rules! use_jemalloc {
    () => {
        #[cfg(not(target_env = "msvc"))]
        #[global_allocator]
        static GLOBAL: $crate::process::Jemalloc = $crate::process::Jemalloc;

        #[cfg(not(target_env = "msvc"))]
        #[allow(non_upper_case_globals)]
        #[unsafe(export_name = "_rjem_malloc_conf")]
        pub(crate) static malloc_conf: &[u8; 67] = $crate::process::JEMALLOC_CONF;
    };
}

/// Sets `RAYON_NUM_THREADS` to the number of cores unless it is set already. candle's CPU matmul
/// asks for the thread count on every call, and without this variable that parses
/// `/proc/cpuinfo` each time (44 % of batched decode, docs/model-bench.md).
///
/// # Safety
///
/// It writes the environment: call it at the start of `main`, before any other thread exists.
pub unsafe fn set_thread_count_from_cores() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        // SAFETY: the caller guarantees no other thread exists yet.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", threads.to_string()) };
    }
}
