//! A condition expression: compiled and checked as a policy load does, then
//! evaluated against a fixed request for every kind of caller.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::json;

fuzz_target!(|data: &[u8]| {
    let Ok(expression) = std::str::from_utf8(data) else {
        return;
    };
    let document = json!({"bindings": [{
        "role": "roles/run.invoker",
        "members": ["allUsers", "allAuthenticatedUsers"],
        "condition": {"title": "fuzz", "expression": expression},
    }]});
    idgate_fuzz::load_and_decide("cel.json", document.to_string().as_bytes());
});
