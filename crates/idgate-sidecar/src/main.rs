//! `idgate`: see the library for everything.

use std::process::ExitCode;

fn main() -> ExitCode {
    match idgate_sidecar::run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("idgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}
