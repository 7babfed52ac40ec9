//! `redis-proxy`: the engine driven by a single-threaded mio event loop.

mod event_loop;

use redis_proxy_engine::cli::{self, Startup};
use std::process::ExitCode;

fn main() -> ExitCode {
    let config = match cli::startup("redis-proxy", std::env::args().skip(1), |path| std::fs::read_to_string(path)) {
        Startup::Run(config) => config,
        Startup::Exit { code, stdout, stderr } => {
            print!("{stdout}");
            eprint!("{stderr}");
            return ExitCode::from(code);
        }
    };
    let log_level = cli::log_level(std::env::var("RUST_LOG").ok().as_deref());
    match event_loop::run(config, log_level) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("redis-proxy: {error}");
            ExitCode::FAILURE
        }
    }
}
