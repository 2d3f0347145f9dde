//! A credential header, as sent, through extraction, strict parsing and
//! two verifiers (see `idgate_fuzz::token_input` for the input format).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let harness = idgate_fuzz::token_harness();
    if let Some(headers) = idgate_fuzz::token_input(harness, data) {
        harness.check(&headers);
    }
});
