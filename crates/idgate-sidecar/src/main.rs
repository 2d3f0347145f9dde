//! `idgate`: see the library for everything.

use std::process::ExitCode;

fn main() -> ExitCode {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    idgate_sidecar::memory::set_release(allocator::purge);
    match idgate_sidecar::run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("idgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// jemalloc, not glibc's malloc: with 1,000 connections open each request
/// takes hyper's 8 KiB buffers from glibc's bins for large chunks, which
/// split and coalesce, and the sidecar serves 8-12 % more requests with
/// jemalloc; at 50 connections 1-2 % more (BENCHMARKS.md, "Stop 44").
#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod allocator {
    #[global_allocator]
    static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

    /// Returns the free memory of every jemalloc arena to the kernel now
    /// (without its background threads, jemalloc decays only as later
    /// allocations come, so an idle sidecar would keep it): run by `serve`
    /// after a burst of connections ends (`idgate_sidecar::memory`). The
    /// library forbids unsafe code, so the one foreign call lives here.
    pub fn purge() {
        // `arena.<i>.purge` with i = MALLCTL_ARENAS_ALL (4096): every arena.
        const PURGE_ALL: &std::ffi::CStr = c"arena.4096.purge";
        // SAFETY: a purge reads and writes nothing through the pointers,
        // which are null with zero lengths, as mallctl allows for a command;
        // jemalloc locks each arena itself, so it may run on any thread at
        // any time.
        let _ = unsafe {
            tikv_jemalloc_sys::mallctl(
                PURGE_ALL.as_ptr(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                0,
            )
        };
    }
}
