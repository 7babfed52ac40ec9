//! `redis-proxy`: the engine driven by a single-threaded mio event loop.

mod event_loop;

use redis_proxy_engine::cli::{self, CliCommand};
use redis_proxy_engine::Config;
use std::process::ExitCode;

fn main() -> ExitCode {
    let command = match cli::parse_args(std::env::args().skip(1)) {
        Ok(command) => command,
        Err(message) => {
            eprintln!("redis-proxy: {message}\n\n{}", cli::usage("redis-proxy"));
            return ExitCode::from(2);
        }
    };
    let path = match command {
        CliCommand::Help => {
            println!("{}", cli::usage("redis-proxy"));
            return ExitCode::SUCCESS;
        }
        CliCommand::Version => {
            println!("redis-proxy {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        CliCommand::Check(path) | CliCommand::Run(path) => path,
    };
    let check_only = matches!(cli::parse_args(std::env::args().skip(1)), Ok(CliCommand::Check(_)));
    let config = match std::fs::read_to_string(&path) {
        Ok(text) => match Config::from_json(&text) {
            Ok(config) => config,
            Err(error) => {
                eprintln!("redis-proxy: {path}: {error}");
                return ExitCode::from(2);
            }
        },
        Err(error) => {
            eprintln!("redis-proxy: cannot read {path}: {error}");
            return ExitCode::from(2);
        }
    };
    if check_only {
        for warning in &config.warnings {
            eprintln!("redis-proxy: {path}: warning: {warning}");
        }
        println!("{path}: configuration is valid ({} servers)", config.servers.len());
        return ExitCode::SUCCESS;
    }
    let log_level = cli::log_level(std::env::var("RUST_LOG").ok().as_deref());
    match event_loop::run(config, log_level) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("redis-proxy: {error}");
            ExitCode::FAILURE
        }
    }
}
