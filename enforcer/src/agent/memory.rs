//! The agent's heap: glibc malloc settings that keep its resident memory near what it uses.
//!
//! The agent's own state is small (a few MiB), but identifying library files reads large
//! tables for a moment: a Go binary's `.gopclntab` (36 MiB for the largest on a Debian host
//! with the cloud SDKs), a symbol table and its strings. With glibc's defaults that memory
//! stayed resident after it was freed, measured at 80 to 130 MiB RSS for a live heap of about
//! 1 MiB (docs/benchmarks.md, figure 5):
//!
//! - **Dynamic mmap threshold.** An allocation above `M_MMAP_THRESHOLD` (128 KiB) gets its own
//!   mapping, returned to the kernel on `free`; but each such `free` raises the threshold to
//!   the freed size (up to 32 MiB), so the next large buffers come from the heap instead, where
//!   a free chunk below the top is never given back.
//! - **One arena per thread.** Each thread that allocates (tokio workers, the new-file event
//!   thread, its workers, the start-up sweep) gets an arena of its own (up to 8 per CPU), and
//!   each kept its own ~27 MiB of freed table buffers.
//!
//! [`tune`] fixes the threshold (which also stops glibc from raising the trim threshold) and
//! caps the arenas; [`trim`] gives free pages back after a burst (the sweep, an examined file).
//! Other C libraries (musl) have neither knob and keep their defaults.

/// Allocations at least this large get their own mapping, unmapped on `free`.
const MMAP_THRESHOLD: i32 = 256 << 10;
/// Free memory at the top of a heap beyond this is given back at once.
const TRIM_THRESHOLD: i32 = 1 << 20;
/// Arenas: the agent's threads allocate little and rarely at once.
const ARENA_MAX: i32 = 2;

/// Sets the malloc parameters above. Call first thing in the process, before other threads
/// start (an arena, once created, stays).
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; no memory is touched.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
        libc::mallopt(libc::M_ARENA_MAX, ARENA_MAX);
    }
}

/// Returns the free pages of every arena to the kernel (`malloc_trim`): after a burst of
/// allocations that is over.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases memory malloc holds free.
    unsafe {
        libc::malloc_trim(0);
    }
}
