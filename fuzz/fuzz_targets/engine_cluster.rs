//! `engine_cluster`: see `redis_proxy_engine::fuzzing::engine_cluster` for the input format and the invariants
//! checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| redis_proxy_engine::fuzzing::engine_cluster(data));
