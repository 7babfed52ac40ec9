//! `redis-proxy`: the engine driven by a mio event loop, on one thread or (`workers`) on several.

mod event_loop;

use std::process::ExitCode;

fn main() -> ExitCode {
    redis_proxy_runtime_common::main("redis-proxy", event_loop::run)
}
