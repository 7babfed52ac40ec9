//! The redis-proxy engine driven by tokio: run the proxy inside your own tokio service.
//!
//! This crate only moves bytes and time. Every decision (parsing, routing, reply ordering, failover) is made by
//! [`redis_proxy_engine::Engine`]; the runtime accepts sockets, hands what it reads to the engine, performs the
//! [`Action`](redis_proxy_engine::Action)s that come out, and calls the engine when its timer is due.
//!
//! ```no_run
//! use redis_proxy_tokio::{Config, Proxy};
//!
//! # async fn example() -> std::io::Result<()> {
//! let config = Config::from_json(r#"{"servers": [{"host": "127.0.0.1", "port": 6379}], "listen_port": 9999}"#)
//!     .expect("valid config");
//! let proxy = Proxy::bind(config).await?;
//! let mut events = proxy.subscribe();
//! tokio::spawn(async move {
//!     while let Ok(event) = events.recv().await {
//!         println!("{} {event}", event.level());
//!     }
//! });
//! proxy.run(async { tokio::signal::ctrl_c().await.ok(); }).await
//! # }
//! ```
//!
//! # Design
//!
//! One task owns the [`Engine`](redis_proxy_engine::Engine) (the future returned by [`Proxy::run`]). It accepts
//! clients, receives what the connections read over one `mpsc` channel, writes to the sockets itself (vectored
//! `try_write`, once per turn for everything queued in that turn, so replies to pipelined requests leave in one
//! `writev`), and sleeps on one reusable timer armed from `Engine::poll_timeout`. Each connection has a small I/O
//! task that reads its socket while the engine wants it read, and waits for writability when the engine task could
//! not write everything. The engine task compares the engine's deadline against `Instant::now()` on every turn
//! rather than trusting the timer branch, so tokio's cooperative budget (which may make a due timer report
//! `Pending`) can delay a timeout by at most one turn, never lose it.
//!
//! # Worker engines (`workers`)
//!
//! With `workers` above 1, the engine task of [`Proxy::run`] is the deciding one (`Engine::new_decider`: it
//! probes, fails over, serves the admin and status listeners and SIGHUP, and accepts the clients), and each accepted
//! client is handed to one of `workers` worker engine tasks in turn (`Engine::new_worker`). They share what
//! `redis-proxy` (mio) shares between its threads (`redis_proxy_runtime_common::crew`), each task woken by a
//! `Notify`. Where the worker tasks run follows the runtime [`Proxy::run`] is awaited on: on a current-thread
//! runtime (the `redis-proxy-tokio` binary's), each worker gets a thread of its own with its own current-thread
//! runtime; on a multi-thread runtime, they are tasks of it (the `multi_thread` example). A client's socket moves
//! from the decider's reactor to its worker's once, when it is handed over.
//!
//! # TLS
//!
//! With `tls` or `server_tls` configured, a connection's rustls state
//! ([`TlsConn`](redis_proxy_runtime_common::TlsConn), shared with the mio runtime) sits behind a mutex held only
//! for one non-blocking call: the I/O task decrypts what it reads, the engine task encrypts what it writes. A
//! connection to a server is handed to the engine only once its handshake is done (in the connect task).
//!
//! # Which tokio runtime
//!
//! Any: the futures are `Send`, so [`Proxy::run`] can be spawned on a multi-thread runtime. The
//! `redis-proxy-tokio` binary uses a **current-thread** runtime, and with `workers` one more per worker thread:
//! every byte of a client goes through its one engine task anyway, so a thread pool adds cross-thread wake-ups
//! (futex calls, cache-line traffic) and no parallelism. Measured on the benchmark machine (2 cores) with one
//! engine (`redis-benchmark -t set,get -n 200000 -c 50`), the default multi-thread runtime spent 4.3-4.6 s of CPU
//! per run against 3.4-3.9 s for current-thread, with lower throughput. With two workers (`VARIANTS="tokio:2
//! tokio-multi:2" bench/workers.sh`, against the `multi_thread` example), a multi-thread runtime of two threads
//! cost 1.00 µs of proxy CPU per request at `-P 16` against 0.70-0.80 µs for a current-thread runtime per worker,
//! and carried 1-14 % fewer requests; at `-P 1` neither was ahead (SET 1.16 times the throughput, GET 0.93).
//!
//! # Closing and shutdown
//!
//! A connection the engine closes (after `QUIT`, a protocol error, or at shutdown) first gets every byte queued for
//! it, however slowly it reads, then a FIN: a background task writes what the socket did not take at once and gives
//! up only after [`CLOSE_STALL`] without the socket taking a byte. What the peer sends meanwhile is read and
//! dropped, so the close never turns into a reset.
//!
//! When the `shutdown` future passed to [`Proxy::run`] completes, the proxy stops accepting and asks the engine
//! to shut down ([`Engine::begin_shutdown`](redis_proxy_engine::Engine::begin_shutdown)): no client is read any
//! more, the engine closes each client as soon as every reply it awaits has been sent, and the rest when its
//! `shutdown_grace` ends. [`Proxy::run`] returns once no client is left and every closed connection has written
//! what was queued for it.

mod driver;

use redis_proxy_engine::Engine;
use redis_proxy_runtime_common::crew;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use tokio::net::TcpListener;
use tokio::runtime::RuntimeFlavor;
use tokio::sync::{broadcast, Notify};

pub use redis_proxy_engine::{Config, Event, Level};
use redis_proxy_runtime_common::TlsSetup;
pub use redis_proxy_runtime_common::{Logger, CLOSE_STALL};

/// How many engine events a slow [`Proxy::subscribe`] receiver may fall behind before it skips some
/// (it then gets `RecvError::Lagged` with the count).
pub const EVENT_CAPACITY: usize = 4096;

/// A proxy bound to its listen address, ready to [`run`](Proxy::run).
pub struct Proxy {
    listener: TcpListener,
    /// The status listener (`status_listen`), if configured.
    status: Option<TcpListener>,
    /// The admin listener (`admin_listen`), if configured.
    admin: Option<TcpListener>,
    /// The TLS listener (`tls`), if configured.
    tls_listener: Option<TcpListener>,
    /// The loaded certificates and keys (`tls`, `server_tls`).
    tls: TlsSetup,
    config: Config,
    events: broadcast::Sender<Event>,
    logger: Option<Logger>,
    config_path: Option<String>,
}

impl Proxy {
    /// Binds `config.bind_address:config.listen_port` (port 0 picks a free port; see [`Proxy::local_addr`]), and
    /// the TLS listener on `tls.port` if `tls` is set; loads the TLS files (an unusable one is an error naming its
    /// field). Secrets the configuration points at (`password_file`, `password_env`) are read here if they were
    /// not yet.
    pub async fn bind(mut config: Config) -> io::Result<Proxy> {
        config
            .resolve_secrets(redis_proxy_runtime_common::cli::read_secret)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let address = tokio::net::lookup_host((config.bind_address.as_str(), config.listen_port))
            .await?
            .next()
            .ok_or_else(|| io::Error::other(format!("cannot resolve bind_address {}", config.bind_address)))?;
        let listener = TcpListener::bind(address)
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {address}: {e}")))?;
        let status = bind_optional(config.status_listen.as_deref(), "status_listen").await?;
        let admin = bind_optional(config.admin_listen.as_deref(), "admin_listen").await?;
        let tls = TlsSetup::load(&config).map_err(io::Error::other)?;
        let tls_listener = match &config.tls {
            Some(settings) => {
                let address = SocketAddr::new(address.ip(), settings.port);
                let listener = TcpListener::bind(address)
                    .await
                    .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on tls.port {address}: {e}")))?;
                Some(listener)
            }
            None => None,
        };
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        Ok(Proxy { listener, status, admin, tls_listener, tls, config, events, logger: None, config_path: None })
    }

    /// The address of the admin listener (`admin_listen`), if one is configured.
    pub fn admin_addr(&self) -> Option<io::Result<SocketAddr>> {
        self.admin.as_ref().map(TcpListener::local_addr)
    }

    /// The address of the TLS listener (`tls`), if one is configured.
    pub fn tls_addr(&self) -> Option<io::Result<SocketAddr>> {
        self.tls_listener.as_ref().map(TcpListener::local_addr)
    }

    /// The address of the status listener (`status_listen`), if one is configured.
    pub fn status_addr(&self) -> Option<io::Result<SocketAddr>> {
        self.status.as_ref().map(TcpListener::local_addr)
    }

    /// The address the proxy accepts clients on.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// A receiver of every [`Event`] the engine reports from now on (server up/down, failover steps, client
    /// errors ...), in order. It ends (`RecvError::Closed`) after [`Proxy::run`] returns.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Logs what the runtime itself notices (at debug level: which engine timer fired) with `logger`. Without one
    /// the proxy writes no log of its own: the engine's events go to [`Proxy::subscribe`] receivers.
    pub fn set_logger(&mut self, logger: Logger) {
        self.logger = Some(logger);
    }

    /// Re-reads the configuration from the file at `path` on `SIGHUP` and on `PROXY RELOAD`, logging the outcome
    /// with the logger (see [`Proxy::set_logger`]). Without it neither reloads.
    pub fn set_config_file(&mut self, path: String) {
        self.config_path = Some(path);
    }

    /// Runs the proxy until `shutdown` completes, then closes the clients cleanly (see the crate docs).
    ///
    /// Errors only if the runtime fails, or with `workers` above 1 if a worker cannot be started (see the crate
    /// docs for where the workers run); I/O errors on single connections are reported to the engine as closes, and
    /// a failing `accept` (e.g. out of file descriptors) is retried after a short pause.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> io::Result<()> {
        let listeners = driver::Listeners {
            clients: self.listener,
            status: self.status,
            admin: self.admin,
            tls: self.tls_listener,
        };
        let Proxy { config, events, logger, config_path, tls, .. } = self;
        let parts = |engine, role, woken| driver::Parts {
            engine,
            role,
            woken,
            events: events.clone(),
            logger: logger.clone(),
            config_path: config_path.clone(),
            tls: tls.clone(),
        };
        let woken = Arc::new(Notify::new());
        let (engine, role) = if config.workers > 1 {
            let notifies: Vec<_> = (0..config.workers).map(|_| Arc::new(Notify::new())).collect();
            let wakes = notifies.iter().map(driver::wake).collect();
            let crew = crew::assemble(&config, driver::wake(&woken), wakes)?;
            for (index, ((engine, role), notify)) in crew.workers.into_iter().zip(notifies).enumerate() {
                start_worker(index, driver::Driver::new(parts(engine, role, notify)))?;
            }
            crew.decider
        } else {
            (Engine::new(config, Instant::now()), driver::Role::Alone)
        };
        driver::Driver::new(parts(engine, role, woken)).run(Some(listeners), shutdown).await
    }
}

/// Starts worker `index`'s engine task: on a current-thread runtime (the binary's), on a thread of its own with
/// its own current-thread runtime, so the workers run in parallel; on a multi-thread runtime, as a task of it.
fn start_worker(index: usize, worker: driver::Driver) -> io::Result<()> {
    // Without listeners, nothing in a worker's task can fail (its errors come from setting up SIGHUP).
    let run = async move {
        let _ = worker.run(None, std::future::pending()).await;
    };
    if tokio::runtime::Handle::current().runtime_flavor() != RuntimeFlavor::CurrentThread {
        tokio::spawn(run);
        return Ok(());
    }
    // The runtime is made on the worker's own thread: one dropped inside the caller's runtime (were the thread not
    // to start) would panic there.
    let (started, outcome) = std::sync::mpsc::channel();
    std::thread::Builder::new().name(format!("worker-{index}")).spawn(move || {
        match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => {
                let _ = started.send(Ok(()));
                runtime.block_on(run);
            }
            Err(error) => {
                let _ = started.send(Err(error));
            }
        }
    })?;
    // Answered at once: the thread has made its runtime, or failed to.
    let made = outcome.recv().map_err(|_| io::Error::other(format!("worker {index}'s thread ended at its start")))?;
    made.map_err(|error| io::Error::new(error.kind(), format!("cannot start worker {index}'s runtime: {error}")))
}

/// Binds the optional listener `field` names (`"host:port"`); None when it is not configured.
async fn bind_optional(address: Option<&str>, field: &str) -> io::Result<Option<TcpListener>> {
    let Some(address) = address else { return Ok(None) };
    let listener = TcpListener::bind(address)
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {field} {address}: {e}")))?;
    Ok(Some(listener))
}

/// Runs a proxy for `config` until `shutdown` completes: [`Proxy::bind`] then [`Proxy::run`].
pub async fn serve(config: Config, shutdown: impl Future<Output = ()>) -> io::Result<()> {
    Proxy::bind(config).await?.run(shutdown).await
}
