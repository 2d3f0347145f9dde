//! The `idgate` binary's library: command line, settings, and the `serve`
//! sidecar (proxy, forward-auth, admin listener), wired so tests can run the
//! whole thing in-process on port 0.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
