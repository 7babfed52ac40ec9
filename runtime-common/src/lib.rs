//! What every redis-proxy runtime needs besides its event loop.
//!
//! The engine (`redis-proxy-engine`) decides everything and does no I/O; a runtime (`redis-proxy-mio`,
//! `redis-proxy-tokio`) moves bytes and time. What the runtimes would otherwise each write again lives here:
//!
//! - [`main`]: the binaries' shared `main` (command line, `--check`, `--probe`, `--help`, `--version`, exit
//!   codes); [`cli`] for its parts, [`probe`] for `--probe`;
//! - [`log::Logger`]: log lines on standard error, filtered by `RUST_LOG`;
//! - [`SocketTable`]: sockets by [`ConnId`](redis_proxy_engine::ConnId) index, with the generation checked;
//! - [`ReadBuffers`]: large read-buffer allocations used again once the frames split off them are written;
//! - [`WriteQueue`]: a connection's pending output, written with vectored writes, and the `WriteBlocked` /
//!   `Drained` edges the engine hears about;
//! - [`Closing`]: what [`Action::Close`](redis_proxy_engine::Action::Close) means in every runtime: every
//!   queued byte is written, then the FIN; a connection is given up only after [`CLOSE_STALL`] without progress;
//! - [`fire_due_timer`] and [`shutdown_complete`]: the two checks of the run loop every runtime makes;
//! - [`connect_failed`]: how a failed connect is reported (a refusal is evidence of its own; the rest with its
//!   kind, a refused TLS certificate's in plain words from [`server_cert`]);
//! - [`tls`]: TLS with rustls on both sides ([`TlsSetup`] from the configuration's files, [`TlsConn`] for one
//!   connection, driven by the runtime's own sockets);
//! - [`crew`]: `workers` above 1, the deciding loop and the worker loops, and what passes between them;
//! - [`http`] and [`metrics`]: the status listener's answers (`/`, `/status.json`, `/metrics`, `/health`),
//!   rendered from the engine's status snapshot.
//!
//! Nothing here knows about Redis, and nothing here is an event loop.

mod board;
pub mod cli;
pub mod closing;
pub mod crew;
pub mod http;
pub mod log;
pub mod metrics;
pub mod probe;
pub mod read_buffers;
pub mod server_cert;
pub mod socket_table;
pub mod tls;
pub mod write_queue;

pub use closing::{CloseStep, Closing, Discarded, CLOSE_STALL};
pub use log::Logger;
pub use read_buffers::ReadBuffers;
pub use socket_table::SocketTable;
pub use tls::{TlsConn, TlsSetup};
pub use write_queue::{WriteQueue, MAX_IOVECS};

use redis_proxy_engine::{Config, ConnId, ConnectFailure, Engine, Input, Level};
use std::io;
use std::process::ExitCode;
use std::time::Instant;

/// The `main` of a runtime binary called `program`: reads the command line and the configuration file, answers
/// `--help`, `--version`, `--check` and `--probe` ([`probe`]), logs the configuration's warnings, then runs `run`
/// with the configuration and a logger set by its `log_level` (else `RUST_LOG`). Exit code 0 when `run` returns,
/// 1 when it fails, 2 for a bad command line or configuration.
pub fn main(program: &str, run: impl FnOnce(Config, Logger, String) -> io::Result<()>) -> ExitCode {
    let (config, path) = match cli::startup(program, std::env::args().skip(1), |path| std::fs::read_to_string(path)) {
        cli::Startup::Run(config, path) => (*config, path),
        cli::Startup::Probe(config, path) => return probe::main(program, &config, &path),
        cli::Startup::Exit { code, stdout, stderr } => {
            print!("{stdout}");
            eprint!("{stderr}");
            return ExitCode::from(code);
        }
    };
    let logger = Logger::from_config(config.log_format, config.log_level);
    for warning in &config.warnings {
        logger.log(Level::Warn, &format!("config: {warning}"));
    }
    match run(config, logger, path) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{program}: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Re-reads the configuration file at `path` (on `SIGHUP` or `PROXY RELOAD`) and hands the engine its part of it
/// ([`Engine::reconfigure`]): `part` makes that part of the file's (the whole file for the only or deciding engine,
/// a worker engine's share of the totals, [`Config::worker_share`]). Then applies its `log_level` to `logger`; logs
/// what changed, or why the new file was refused and the running configuration kept (unreadable, invalid, a TLS
/// file that does not load, or a change that needs a restart). The TLS files are read again too: new connections
/// use the new certificates (`tls`, replaced in place). Clients stay connected either way. Returns whether the new
/// configuration was applied.
pub fn reload(
    engine: &mut Engine,
    path: &str,
    logger: &Logger,
    tls: &mut TlsSetup,
    part: impl FnOnce(Config) -> Config,
) -> bool {
    logger.log(Level::Info, &format!("reload: re-reading {path}"));
    let outcome = std::fs::read_to_string(path)
        .map_err(|error| format!("cannot read {path}: {error}"))
        .and_then(|text| cli::load_config(&text).map_err(|error| format!("{path}: {error}")))
        .and_then(|config| Ok((TlsSetup::load(&config).map_err(|error| format!("{path}: {error}"))?, config)))
        .and_then(|(setup, config)| {
            let log_level = config.log_level;
            let mut changes = engine.reconfigure(Instant::now(), part(config))?;
            if setup.acceptor.is_some() || setup.connector.is_some() {
                changes.push("TLS files re-read (new connections use them)".to_string());
            }
            *tls = setup;
            Ok((changes, log_level))
        });
    match outcome {
        Ok((mut changes, log_level)) => {
            let before = logger.level();
            logger.set_level(log_level);
            if logger.level() != before {
                changes.push(format!("log level {before} -> {}", logger.level()));
            }
            if changes.is_empty() {
                logger.log(Level::Info, &"reload: applied (no change)");
            } else {
                logger.log(Level::Info, &format!("reload: applied: {}", changes.join(", ")));
            }
            true
        }
        Err(reason) => {
            logger.log(Level::Error, &format!("reload refused, the running configuration is kept: {reason}"));
            false
        }
    }
}

/// Calls [`Engine::handle_timeout`] if the engine's timer is due at `now`, logging its reason at debug level (to
/// find what wakes an idle proxy); returns whether it was due. A runtime checks the clock rather than trusting
/// which wake-up it got, so an early or lost wake-up delays a timeout by at most one turn.
pub fn fire_due_timer(engine: &mut Engine, now: Instant, logger: Option<&Logger>) -> bool {
    let Some((at, reason)) = engine.poll_timeout() else { return false };
    if at > now {
        return false;
    }
    if let Some(logger) = logger.filter(|l| l.enabled(Level::Debug)) {
        logger.log(Level::Debug, &format!("timer: {reason:?}"));
    }
    engine.handle_timeout(now);
    true
}

/// Reports a connect to a server that failed: a refusal as [`Input::Refused`] (nothing listens there: the
/// server's process is gone, which the engine acts on at once), anything else as [`Input::ConnectFailed`] with
/// its kind ([`connect_failure`]).
pub fn connect_failed(engine: &mut Engine, now: Instant, conn: ConnId, error: &io::Error) {
    if error.kind() == io::ErrorKind::ConnectionRefused {
        engine.handle_input(now, Input::Refused { conn });
    } else {
        let failure = connect_failure(error);
        engine.handle_input(now, Input::ConnectFailed { conn, reason: &error.to_string(), failure });
    }
}

/// The kind of a failed connect to a server: a failed TLS handshake says its own ([`server_cert::TlsFailure`]);
/// otherwise the error's kind tells a timeout and an unreachable host from the rest.
pub fn connect_failure(error: &io::Error) -> ConnectFailure {
    if let Some(tls) = error.get_ref().and_then(|inner| inner.downcast_ref::<server_cert::TlsFailure>()) {
        return tls.failure;
    }
    match error.kind() {
        io::ErrorKind::TimedOut => ConnectFailure::TimedOut,
        io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => ConnectFailure::Unreachable,
        _ => ConnectFailure::Other,
    }
}

/// The earlier of two optional deadlines (None: no deadline), for a run loop that sleeps until the first of several.
pub fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Whether a shutdown that began with [`Engine::begin_shutdown`] is over: the engine has closed every client
/// (its `shutdown_grace` bounds how long replies in flight may take) and no closed connection still has bytes
/// to write (`closing`: how many do; each is bounded by [`CLOSE_STALL`]).
pub fn shutdown_complete(engine: &Engine, closing: usize) -> bool {
    engine.client_count() == 0 && closing == 0
}

#[cfg(test)]
fn test_conn() -> redis_proxy_engine::ConnId {
    test_conns().0
}

/// Two ids from a real engine with the same index and different generations (the engine's ids cannot be made up).
#[cfg(test)]
fn test_conns() -> (redis_proxy_engine::ConnId, redis_proxy_engine::ConnId) {
    use redis_proxy_engine::Input;
    let config = Config::from_json(r#"{"servers": [{"host": "127.0.0.1", "port": 1}]}"#).expect("valid config");
    let now = Instant::now();
    let mut engine = Engine::new(config, now);
    let peer = "127.0.0.1:50000".parse().expect("an address");
    let first = engine.accept(now, peer);
    engine.handle_input(now, Input::Closed { conn: first });
    let second = engine.accept(now, peer);
    assert_eq!(first.index(), second.index(), "the engine reuses a freed slot");
    (first, second)
}
