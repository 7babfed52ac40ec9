//! `engine_sentinel`: see `redis_proxy_engine::fuzzing::engine_sentinel` for the input format and the invariants
//! checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| redis_proxy_engine::fuzzing::engine_sentinel(data));
