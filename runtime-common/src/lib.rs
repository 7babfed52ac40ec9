//! What every redis-proxy runtime needs besides its event loop.
//!
//! The engine (`redis-proxy-engine`) decides everything and does no I/O; a runtime (`redis-proxy-mio`,
//! `redis-proxy-tokio`) moves bytes and time. What the runtimes would otherwise each write again lives here:
//!
//! - [`main`]: the binaries' shared `main` (command line, `--check`, `--help`, `--version`, exit codes);
//!   [`cli`] for its parts;
//! - [`log::Logger`]: log lines on standard error, filtered by `RUST_LOG`.
//!
//! Nothing here knows about Redis, and nothing here is an event loop.

pub mod cli;
pub mod log;

pub use log::Logger;

use redis_proxy_engine::{Config, Level};
use std::io;
use std::process::ExitCode;

/// The `main` of a runtime binary called `program`: reads the command line and the configuration file, answers
/// `--help`, `--version` and `--check`, logs the configuration's warnings, then runs `run` with the configuration
/// and a logger set by `RUST_LOG`. Exit code 0 when `run` returns, 1 when it fails, 2 for a bad command line or
/// configuration.
pub fn main(program: &str, run: impl FnOnce(Config, Logger) -> io::Result<()>) -> ExitCode {
    let config = match cli::startup(program, std::env::args().skip(1), |path| std::fs::read_to_string(path)) {
        cli::Startup::Run(config) => config,
        cli::Startup::Exit { code, stdout, stderr } => {
            print!("{stdout}");
            eprint!("{stderr}");
            return ExitCode::from(code);
        }
    };
    let logger = Logger::from_env();
    for warning in &config.warnings {
        logger.log(Level::Warn, &format!("config: {warning}"));
    }
    match run(config, logger) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{program}: {error}");
            ExitCode::FAILURE
        }
    }
}
