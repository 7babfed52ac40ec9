//! The proxy embedded in a service that runs tokio's multi-thread runtime, as a library user would run it:
//! `cargo run --release -p redis-proxy-tokio --example multi_thread -- CONFIG.json`. The runtime gets one thread
//! per `workers`; the worker engines run as tasks of it, where `redis-proxy-tokio` gives each a current-thread
//! runtime on a thread of its own. `bench/workers.sh` measures the two against each other. Stops on SIGINT or
//! SIGTERM, after the clients are closed cleanly.

use redis_proxy_tokio::{Config, Proxy};
use std::io;
use tokio::signal::unix::{signal, SignalKind};

fn main() -> io::Result<()> {
    let path = std::env::args().nth(1).ok_or_else(|| io::Error::other("usage: multi_thread CONFIG.json"))?;
    let config = Config::from_json(&std::fs::read_to_string(&path)?).map_err(io::Error::other)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(config.workers).enable_all().build()?;
    runtime.block_on(async {
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        let proxy = Proxy::bind(config).await?;
        eprintln!("listening on {}", proxy.local_addr()?);
        let mut events = proxy.subscribe();
        tokio::spawn(async move {
            while let Ok(event) = events.recv().await {
                eprintln!("{} {event}", event.level());
            }
        });
        proxy
            .run(async {
                tokio::select! {
                    _ = interrupt.recv() => {}
                    _ = terminate.recv() => {}
                }
            })
            .await
    })
}
