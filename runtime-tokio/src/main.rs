//! `redis-proxy-tokio`: the engine driven by tokio on a current-thread runtime (one per thread, with `workers`); same
//! command line as `redis-proxy`.

use redis_proxy_engine::{Config, Level};
use redis_proxy_runtime_common::Logger;
use redis_proxy_tokio::Proxy;
use std::io;
use std::process::ExitCode;
use tokio::sync::broadcast::error::RecvError;

fn main() -> ExitCode {
    redis_proxy_runtime_common::main("redis-proxy-tokio", |config, logger, path| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|error| io::Error::new(error.kind(), format!("cannot start the tokio runtime: {error}")))?;
        runtime.block_on(run(config, logger, path))
    })
}

/// Runs the proxy until SIGINT or SIGTERM and the shutdown it starts are over, logging the engine's events.
async fn run(config: Config, logger: Logger, path: String) -> io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let shown = config.clone();
    let mut proxy = Proxy::bind(config).await?;
    proxy.set_logger(logger.clone());
    proxy.set_config_file(path);
    logger.listening(proxy.local_addr()?, &shown);
    if shown.workers > 1 {
        let workers = shown.workers;
        logger.log(Level::Info, &format!("{workers} worker threads, each on a runtime of its own; this one decides"));
    }
    if let Some(address) = proxy.tls_addr().transpose()? {
        logger.log(Level::Info, &format!("TLS clients on {address}"));
    }
    if shown.server_tls.is_some() {
        logger.log(Level::Info, &"connections to the servers use TLS (server_tls)");
    }
    if let Some(address) = proxy.status_addr().transpose()? {
        logger.log(Level::Info, &format!("status page, /status.json, /metrics and /health on http://{address}/"));
    }
    let mut events = proxy.subscribe();
    let event_logger = logger.clone();
    let event_log = tokio::spawn(async move {
        let logger = event_logger;
        loop {
            match events.recv().await {
                Ok(event) => logger.log(event.level(), &event),
                Err(RecvError::Lagged(skipped)) => {
                    logger.log(Level::Warn, &format!("{skipped} event(s) not logged: the log fell behind"));
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
        logger.log(Level::Info, &format!("{name}: closing clients and shutting down"));
    };
    let result = proxy.run(shutdown).await;
    let _ = event_log.await;
    if result.is_ok() {
        logger.log(Level::Info, &"shutdown complete");
    }
    result
}
