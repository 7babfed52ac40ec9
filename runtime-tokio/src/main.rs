//! `redis-proxy-tokio`: the engine driven by tokio on a current-thread runtime; same command line as `redis-proxy`.

use redis_proxy_engine::cli::{self, log_line, Startup};
use redis_proxy_engine::{Config, Level};
use redis_proxy_tokio::Proxy;
use std::process::ExitCode;
use std::time::SystemTime;
use tokio::sync::broadcast::error::RecvError;

const PROGRAM: &str = "redis-proxy-tokio";

fn main() -> ExitCode {
    let config = match cli::startup(PROGRAM, std::env::args().skip(1), |path| std::fs::read_to_string(path)) {
        Startup::Run(config) => config,
        Startup::Exit { code, stdout, stderr } => {
            print!("{stdout}");
            eprint!("{stderr}");
            return ExitCode::from(code);
        }
    };
    let log_level = cli::log_level(std::env::var("RUST_LOG").ok().as_deref());
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("{PROGRAM}: cannot start the tokio runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config, log_level)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{PROGRAM}: {error}");
            ExitCode::FAILURE
        }
    }
}

fn log(log_level: Level, level: Level, message: &dyn std::fmt::Display) {
    if level <= log_level {
        eprintln!("{}", log_line(SystemTime::now(), level, message));
    }
}

/// Runs the proxy until SIGINT or SIGTERM, logging the engine's events.
async fn run(config: Config, log_level: Level) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    for warning in &config.warnings {
        log(log_level, Level::Warn, &format!("config: {warning}"));
    }
    let servers: Vec<String> = config.servers.iter().map(ToString::to_string).collect();
    let proxy = Proxy::bind(config).await?;
    log(log_level, Level::Info, &format!("listening on {}, servers {}", proxy.local_addr()?, servers.join(", ")));
    let mut events = proxy.subscribe();
    let logger = tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(event) => log(log_level, event.level(), &event),
                Err(RecvError::Lagged(skipped)) => {
                    log(log_level, Level::Warn, &format!("{skipped} event(s) not logged: the log fell behind"));
                }
                Err(RecvError::Closed) => break,
            }
        }
    });
    let shutdown = async {
        let name = tokio::select! {
            _ = interrupt.recv() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        };
        log(log_level, Level::Info, &format!("{name}: closing clients and shutting down"));
    };
    let result = proxy.run(shutdown).await;
    let _ = logger.await;
    result
}
