//! Sans-IO core of redis-proxy, a Redis failover proxy.
//!
//! The [`Engine`] decides everything (how requests are split and routed, which backend connection carries them,
//! how replies are matched and ordered, which server is the master and when to fail over) and does no I/O:
//! it never reads the clock, never touches a socket, never spawns. A runtime (`redis-proxy-mio`,
//! `redis-proxy-tokio`, or your own loop) moves bytes and time in and performs the actions that come out.
//!
//! # Run loop
//!
//! 1. Create the engine with [`Engine::new`] and the current time.
//! 2. After **every** input, drain [`Engine::poll_action`] until it returns None and perform each action
//!    (send, connect, close, pause or resume reading); drain [`Engine::poll_event`] for logs.
//! 3. Sleep in your poller until I/O is ready or the instant from [`Engine::poll_timeout`] arrives.
//! 4. For each accepted client call [`Engine::accept`]; for each read, [`Engine::handle_input`] with
//!    [`Input::Data`] and that connection's buffer (the engine splits complete frames off it and leaves a
//!    partial one for next time); report connects, failures, closes and write backpressure with the other
//!    [`Input`] variants.
//! 5. When the timeout instant has passed, call [`Engine::handle_timeout`]. Repeat.
//! 6. Operating it: clients of an admin listener are accepted with [`Engine::accept_admin`] (only they may send
//!    `PROXY ...` commands); [`Engine::status`] returns a [`StatusSnapshot`] for a status page or metrics; on
//!    [`Event::ReloadRequested`] (or `SIGHUP`) re-read the configuration and hand it to [`Engine::reconfigure`].
//! 7. To stop gracefully, call [`Engine::begin_shutdown`], stop accepting, and keep looping (timers included)
//!    until [`Engine::client_count`] is 0: the engine closes every client once its replies are out, and the rest
//!    when its `shutdown_grace` ends.
//!
//! Every call takes `now`; time only moves when the runtime says so, which is what lets the tests drive the
//! engine on a fake clock. Connection ids ([`ConnId`]) carry a generation, so an id that outlived its
//! connection never reaches the slot's next occupant.
//!
//! ```no_run
//! use bytes::BytesMut;
//! use redis_proxy_engine::{Action, Config, Engine, Input};
//! use std::time::Instant;
//!
//! let config = Config::from_json(r#"{"servers": [{"host": "127.0.0.1", "port": 6379}]}"#).unwrap();
//! let mut engine = Engine::new(config, Instant::now());
//! let client = engine.accept(Instant::now(), "127.0.0.1:50000".parse().unwrap());
//! let mut buf = BytesMut::from(&b"*1\r\n$4\r\nPING\r\n"[..]);
//! engine.handle_input(Instant::now(), Input::Data { conn: client, buf: &mut buf });
//! while let Some(action) = engine.poll_action() {
//!     match action {
//!         Action::Send { conn, data } => { /* queue `data` on the socket of `conn` */ }
//!         Action::Connect { conn, address } => { /* open a socket, later report Input::Connected */ }
//!         Action::Close { conn } => { /* flush, then close */ }
//!         Action::SetReadable { conn, readable } => { /* stop or resume reading */ }
//!     }
//! }
//! while let Some(event) = engine.poll_event() {
//!     eprintln!("{} {event}", event.level());
//! }
//! if let Some((at, reason)) = engine.poll_timeout() {
//!     // sleep until `at` unless I/O comes first, then: engine.handle_timeout(Instant::now());
//!     let _ = (at, reason);
//! }
//! ```
//!
//! A complete loop over plain `std::net` sockets is in `examples/std_loop.rs`.
//!
//! # Inside
//!
//! A few small machines, each owning its state and returning outcomes; `engine` is the coordinator that feeds
//! one machine's outcomes to the next, so no machine calls another's methods except where noted:
//!
//! | module | owns |
//! |---|---|
//! | `admin` | the `PROXY` admin commands: parsing and replies (the engine carries them out) |
//! | `auth` | client authentication (`AUTH`, `HELLO ... AUTH`, read-only users) and the servers' credentials |
//! | `contract` | [`Input`], [`Action`], [`TimerReason`] and the queue the machines fill |
//! | `conn` | [`ConnId`]s with generations; the client and backend tables share one id space |
//! | `resp` | resumable zero-copy RESP2/RESP3 scanners, encoders, limits for client input |
//! | `command` | the command table generated from Redis 7 (flags, key positions) |
//! | `session` | one client's connection state (db, MULTI/WATCH, pins) and what each request demands |
//! | `client` | the clients: the table, each one's state, its input, backpressure, pass-through; a facade over the next two |
//! | `reply_order` | one client's reply slots in request order: numbering, filling, what may be written now |
//! | `hold_queue` | held requests: each client's queue, the time and memory bounds, expiry with its error |
//! | `pool` | backend connections: shared, private (RESET before reuse), probe, sentinels'; FIFO reply matching; loss; orders carried out |
//! | `monitor` | the probe schedule, each server's health; what to open, send and close, as orders for `pool` |
//! | `topology` | the server view and health types, `INFO` parsing |
//! | `failover` | the pure rules and phase machine: adopt, lose, promote, re-point |
//! | `failure` | why a server cannot be used: the runtime's [`ConnectFailure`], per server the last obstacle and the evidence (gone, busy, unreachable), the words a held request's error ends with |
//! | `sentinel` | Sentinel mode: asks the sentinels, accepts the master a majority names, learns healthy replicas |
//! | `cursor` | `SCAN`-family cursors: which server returned each one to a client |
//! | `fence` | read-your-writes: a client's reads stay on the master until its writes have replicated |
//! | `stream` | large bulk replies forwarded to their client as they arrive, paused while the client does not read |
//! | `upload` | large request values forwarded to the server as they arrive, on a private connection, paused while the server does not read |
//! | `route` | where a request goes: master, a readable replica, the cursor's server, or nowhere yet |
//! | `wait` | `WAIT` answered by the proxy from the replicas' offsets |
//! | `offset_poll` | the schedule on which `wait`, `fence` and a planned switchover re-read replication offsets |
//! | `tls_config` | the `tls` and `server_tls` settings, parsed for the runtimes (no decision depends on them) |
//! | `status` | the [`StatusSnapshot`] ([`Engine::status`]), the cheap [`Counters`], the failover history |
//! | `trend` | a sample every [`TREND_INTERVAL`] of what the status page charts, kept for [`TREND_WINDOW`] |
//! | `engine` | the coordinator: [`Engine`] |
//!
//! The `fuzzing` feature publishes the fuzz target bodies; `testkit` the test kit (fake clock, fake server, engine
//! driver) that the tests, the fuzz targets and the benchmark share; `command-table` publishes the command table
//! (for the drift test against a live server). The tests that span modules (the request, stream and upload paths,
//! the failover simulation, Sentinel mode) are in the test-only `tests` folder.
#![forbid(unsafe_code)]
#![warn(unreachable_pub)]

mod address;
mod admin;
mod auth;
mod client;
mod cluster;
mod cluster_config;
mod cluster_nodes;
mod cluster_pubsub;
mod cluster_scan;
mod cluster_self;
mod cluster_shard_pubsub;
mod cluster_switchover;
mod cluster_writes;
#[cfg(feature = "command-table")]
pub mod command;
#[cfg(not(feature = "command-table"))]
#[allow(unreachable_pub, dead_code)] // What only the drift test reads is published with `command-table`.
mod command;
mod config;
mod config_fields;
mod conn;
mod contract;
mod cursor;
mod engine;
mod event;
mod failover;
mod failure;
mod fanout;
mod fence;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
mod hold_queue;
mod key_slots;
mod monitor;
mod offset_poll;
mod pool;
mod publication;
mod redirect;
mod reply_order;
mod resp;
mod route;
mod routed;
mod sentinel;
mod server_id;
mod session;
mod slot;
mod slot_map;
mod status;
mod stream;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
#[cfg(test)]
mod tests;
mod tls_config;
mod topology;
mod transaction;
mod trend;
mod upload;
mod wait;

pub use address::ServerAddress;
pub use cluster_config::ClusterConfig;
pub use config::{
    ClientUser, Config, Credentials, LogFormat, Mode, PasswordSource, Secret, SecretLocation, SentinelConfig,
    DEFAULT_LARGE_POOL_SIZE, MAX_WORKERS,
};
pub use config_fields::ConfigError;
pub use conn::ConnId;
pub use contract::{Action, Input, TimerReason};
pub use engine::Engine;
pub use event::{Event, Level};
pub use failure::{CertificateProblem, ConnectFailure};
pub use publication::Topology;
pub use resp::Limits;
pub use status::{
    BackendCounts, Class, ClusterCounts, ClusterStatus, Counters, ErrorCounts, FailoverRecord, LatencyHistogram,
    ServerStatus, ShardStatus, StatusSnapshot, Target, TrendSample, FAILOVER_HISTORY, LATENCY_BUCKETS, LATENCY_SAMPLE,
};
pub use tls_config::{ClientTls, ServerTls, SYSTEM_CA_FILE};
pub use topology::{Health, Role};
pub use trend::{TREND_INTERVAL, TREND_WINDOW};
