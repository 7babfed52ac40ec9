//! `engine_client_bytes`: see `redis_proxy_engine::fuzzing::engine_client_bytes` for the input format and the invariants checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| redis_proxy_engine::fuzzing::engine_client_bytes(data));
