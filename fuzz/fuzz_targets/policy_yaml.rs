//! An IAM policy file read as YAML (gcloud's default output): shape checks,
//! members, CEL conditions compiled, then decisions for a few callers.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| idgate_fuzz::load_and_decide("policy.yaml", data));
