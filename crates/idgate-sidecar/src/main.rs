//! `idgate`: see the library for everything.

use std::process::ExitCode;

fn main() -> ExitCode {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    idgate_sidecar::memory::set_release(malloc_trim);
    match idgate_sidecar::run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("idgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Returns the free memory of every malloc arena to the kernel (glibc
/// keeps it otherwise): run by `serve` after a burst of connections ends
/// (`idgate_sidecar::memory`). The library forbids unsafe code, so the one
/// foreign call lives here.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn malloc_trim() {
    unsafe extern "C" {
        fn malloc_trim(pad: usize) -> std::ffi::c_int;
    }
    // SAFETY: malloc_trim takes no pointer, only the padding to keep at the
    // top of the heap, and locks each arena itself, so it is safe to call
    // from any thread at any time.
    unsafe {
        malloc_trim(0);
    }
}
