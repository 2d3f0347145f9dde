//! Where the `idgate` binary comes from.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The workspace's root directory.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the e2e crate sits in the workspace root")
        .to_path_buf()
}

/// The `idgate` binary: `$IDGATE_BIN` if set; otherwise `cargo build -p
/// idgate-sidecar --bin idgate` runs once per test process (a no-op when the
/// binary is fresh, so a test never runs a stale one) and the executable
/// cargo reports is used, which honours `CARGO_TARGET_DIR` and any
/// configured target directory. The e2e crate cannot use
/// `CARGO_BIN_EXE_idgate`: that exists only in the binary's own package.
pub fn idgate_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("IDGATE_BIN") {
            return PathBuf::from(bin);
        }
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
        let out = Command::new(&cargo)
            .args([
                "build",
                "-p",
                "idgate-sidecar",
                "--bin",
                "idgate",
                "--message-format=json-render-diagnostics",
            ])
            .current_dir(workspace_root())
            .stderr(Stdio::inherit())
            .output()
            .expect("run cargo build");
        assert!(
            out.status.success(),
            "cargo build -p idgate-sidecar --bin idgate failed ({})",
            out.status
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|msg| msg["reason"] == "compiler-artifact" && msg["target"]["name"] == "idgate")
            .find_map(|msg| msg["executable"].as_str().map(PathBuf::from))
            .expect("cargo reported no idgate executable")
    })
}
