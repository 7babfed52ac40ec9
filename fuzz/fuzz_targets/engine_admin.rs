//! `engine_admin`: see `redis_proxy_engine::fuzzing::engine_admin` for the input format and the invariants checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| redis_proxy_engine::fuzzing::engine_admin(data));
