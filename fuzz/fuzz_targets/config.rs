//! The sidecar's settings: a config file's text, flags and `IDGATE_*`
//! variables (see `idgate_fuzz::config` for the input format), loaded as
//! `idgate serve` loads them.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| idgate_fuzz::config::check(data));
