//! `redis-proxy`: the engine driven by a single-threaded mio event loop.

mod event_loop;

use std::process::ExitCode;

fn main() -> ExitCode {
    redis_proxy_runtime_common::main("redis-proxy", event_loop::run)
}
