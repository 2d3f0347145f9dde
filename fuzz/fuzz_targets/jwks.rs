//! A JWKS response body, as the key cache parses it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(keys) = idgate::jwks::parse_jwks(data) {
        assert!(!keys.is_empty(), "an empty key set must be an error");
        assert!(
            keys.keys().all(|kid| !kid.is_empty()),
            "a key without a kid"
        );
    }
});
