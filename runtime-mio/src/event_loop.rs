//! The event loop: accept, read until WouldBlock, hand bytes to the engine, perform its actions with vectored
//! writes, sleep until I/O or the engine's next timeout. No Redis semantics live here.

use bytes::BytesMut;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use redis_proxy_engine::{Action, Config, ConnId, Engine, Event, Input, Level, ServerAddress};
use redis_proxy_runtime_common::crew::{self, Handoff, Wake};
use redis_proxy_runtime_common::http::{self, Exchange, ExchangeStep};
use redis_proxy_runtime_common::tls::{self, Entry, TlsConn, TlsSetup};
use redis_proxy_runtime_common::{
    connect_failed, earliest, fire_due_timer, shutdown_complete, CloseStep, Closing, Discarded, Logger, ReadBuffers,
    SocketTable, WriteQueue,
};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

const LISTENER: Token = Token(usize::MAX);
const SIGNALS: Token = Token(usize::MAX - 1);
const STATUS_LISTENER: Token = Token(usize::MAX - 2);
const ADMIN_LISTENER: Token = Token(usize::MAX - 3);
const TLS_LISTENER: Token = Token(usize::MAX - 4);
/// The token of a thread's waker: the other threads of `workers` have news for it.
const WAKER: Token = Token(usize::MAX - 5);
/// Set in the token of a status (HTTP) connection, over its index in `Runtime::exchanges`.
const EXCHANGE: usize = 1 << (usize::BITS - 3);
/// Set in the token of a closing socket, over its index in `Runtime::closing`: the engine hands a closed
/// connection's index to the next connection at once, so a socket still flushing cannot keep it.
const CLOSING: usize = 1 << (usize::BITS - 2);
/// Free room a read buffer gets before a read (more while reads keep filling it, up to `MAX_READ_ROOM`).
const MIN_READ_ROOM: usize = 4 * 1024;
/// The most room a read buffer is grown to for one read, while a peer keeps sending.
const MAX_READ_ROOM: usize = 1024 * 1024;
/// Reads per connection per turn, so one busy peer cannot starve the others.
const READS_PER_TURN: usize = 16;
/// Bytes read per connection per turn: a large value streamed to a client is queued for it until the turn's
/// writes (and the `WriteBlocked` that pauses its backend), so this bounds what one value can pile up.
const READ_BYTES_PER_TURN: usize = 2 * 1024 * 1024;
/// A read buffer that has held more than this is replaced by a fresh one once the engine has taken its frames,
/// so one large value does not pin its allocation for the rest of the connection's life.
const SHRINK_READ_BUF_AFTER: usize = 4 * 64 * 1024;

struct Socket {
    stream: TcpStream,
    /// The connection's TLS state, for a client of the TLS listener or a server under `server_tls`; None: plain
    /// TCP (decided once, when the connection is made, so the plain path only tests this).
    tls: Option<Box<TlsConn>>,
    read_buf: BytesMut,
    /// The most `read_buf` has held since it was last replaced (its allocation is at least this large).
    read_buf_peak: usize,
    /// The size of `read_buf`'s allocation (0: none), for [`ReadBuffers`].
    read_alloc: usize,
    /// Room to give the read buffer before the next read: doubles while reads fill it.
    read_room: usize,
    out: WriteQueue,
    connecting: bool,
    /// The engine wants this connection read.
    readable: bool,
}

/// A socket the engine closed that still has bytes to write.
struct ClosingSocket {
    stream: TcpStream,
    tls: Option<Box<TlsConn>>,
    closing: Closing,
    /// The peer shut down its side: nothing more to discard.
    peer_closed: bool,
}

struct Runtime {
    poll: Poll,
    engine: Engine,
    sockets: SocketTable<Socket>,
    /// Large read-buffer allocations, used again once the frames split off them are written.
    read_buffers: ReadBuffers,
    /// Closed by the engine, still flushing; the token is `CLOSING` | index.
    closing: Vec<Option<ClosingSocket>>,
    /// Connections with bytes queued this turn, written at its end.
    dirty: Vec<ConnId>,
    /// Sockets that may still hold unread bytes (turn cap reached, or reading resumed).
    read_again: Vec<Token>,
    logger: Logger,
    /// Status (HTTP) connections being served; the token is `EXCHANGE` | index.
    exchanges: Vec<Option<(TcpStream, Exchange)>>,
    /// The configuration file, re-read on SIGHUP and `PROXY RELOAD`.
    config_path: String,
    /// The certificates and keys of `tls` and `server_tls`, read again on reload.
    tls: TlsSetup,
    /// Whether this thread is the only one, the deciding one or a worker (`workers`).
    role: Role,
    /// A shutdown began: the loop ends once every client is closed (and, on the deciding thread, every worker's
    /// loop has ended).
    stopping: bool,
}

/// Runs the proxy until a fatal error (binding the listen address, or the poller failing), or until a shutdown
/// asked for by SIGINT/SIGTERM is complete.
pub fn run(config: Config, logger: Logger, config_path: String) -> io::Result<()> {
    let address = (config.bind_address.as_str(), config.listen_port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::other(format!("cannot resolve bind_address {}", config.bind_address)))?;
    let mut listener =
        TcpListener::bind(address).map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {address}: {e}")))?;
    let poll = Poll::new()?;
    poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    poll.registry().register(&mut signals, SIGNALS, Interest::READABLE)?;
    logger.listening(address, &config);
    let mut status = bind_optional(config.status_listen.as_deref(), "status_listen")?;
    if let Some((listener, address)) = &mut status {
        poll.registry().register(listener, STATUS_LISTENER, Interest::READABLE)?;
        logger.log(Level::Info, &format!("status page, /status.json, /metrics and /health on http://{address}/"));
    }
    let mut admin = bind_optional(config.admin_listen.as_deref(), "admin_listen")?;
    if let Some((listener, address)) = &mut admin {
        poll.registry().register(listener, ADMIN_LISTENER, Interest::READABLE)?;
        logger.log(Level::Info, &format!("admin commands (PROXY ...) on {address}"));
    }
    let tls = TlsSetup::load(&config).map_err(io::Error::other)?;
    let tls_listener = match &config.tls {
        Some(settings) => {
            let address = SocketAddr::new(address.ip(), settings.port);
            let mut listener = TcpListener::bind(address)
                .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on tls.port {address}: {e}")))?;
            poll.registry().register(&mut listener, TLS_LISTENER, Interest::READABLE)?;
            logger.log(Level::Info, &format!("TLS clients on {address}"));
            Some(listener)
        }
        None => None,
    };
    if config.server_tls.is_some() {
        logger.log(Level::Info, &"connections to the servers use TLS (server_tls)");
    }
    let (engine, role, workers) = if config.workers > 1 {
        logger.log(Level::Info, &format!("{} worker threads; this one probes and decides", config.workers));
        let polls = (0..config.workers).map(|_| Poll::new()).collect::<io::Result<Vec<_>>>()?;
        let wakes = polls.iter().map(|poll| waker(poll)).collect::<io::Result<Vec<_>>>()?;
        let crew = crew::assemble(&config, waker(&poll)?, wakes)?;
        let workers =
            polls.into_iter().zip(crew.workers).map(|(poll, (engine, role))| WorkerStart { poll, engine, role });
        (crew.decider.0, crew.decider.1, workers.collect())
    } else {
        (Engine::new(config, Instant::now()), Role::Alone, Vec::new())
    };
    let threads = workers
        .into_iter()
        .enumerate()
        .map(|(index, start)| spawn_worker(index, start, &logger, &config_path, &tls))
        .collect::<io::Result<Vec<_>>>()?;
    let mut runtime = Runtime::new(poll, engine, role, logger, config_path, tls);
    let listeners = Listeners { clients: Some(listener), tls: tls_listener, admin: admin.map(|(l, _)| l) };
    let outcome = runtime.event_loop(listeners, Some(signals), status.map(|(l, _)| l));
    // Asked to stop (a second signal, or a failed poller): the workers stop with the process.
    for thread in threads.into_iter().filter(|t| t.is_finished()) {
        let _ = thread.join();
    }
    outcome
}

/// What a mio thread plays in `workers` (the clients it is handed are mio sockets).
type Role = crew::Role<TcpStream>;

/// A worker thread, ready to run: its poller (whose waker is shared), its engine and its place.
struct WorkerStart {
    poll: Poll,
    engine: Engine,
    role: Role,
}

/// A wake-up of the thread polling `poll`, through its [`WAKER`].
fn waker(poll: &Poll) -> io::Result<Wake> {
    let waker = Waker::new(poll.registry(), WAKER)?;
    Ok(Box::new(move || {
        // Fails only if the poller is gone, and then its thread has ended.
        let _ = waker.wake();
    }))
}

/// Starts worker `index`'s thread: its event loop over the clients the deciding thread hands it.
fn spawn_worker(
    index: usize,
    start: WorkerStart,
    logger: &Logger,
    config_path: &str,
    tls: &TlsSetup,
) -> io::Result<std::thread::JoinHandle<()>> {
    let (logger, config_path, tls) = (logger.clone(), config_path.to_string(), tls.clone());
    std::thread::Builder::new().name(format!("worker-{index}")).spawn(move || {
        let WorkerStart { poll, engine, role } = start;
        let mut runtime = Runtime::new(poll, engine, role, logger.clone(), config_path, tls);
        let listeners = Listeners { clients: None, tls: None, admin: None };
        if let Err(error) = runtime.event_loop(listeners, None, None) {
            logger.log(Level::Error, &format!("worker {index} stopped: {error}"));
        }
        runtime.role.finished();
    })
}

/// Binds the optional listener `field` names (`"host:port"`); None when it is not configured.
fn bind_optional(address: Option<&str>, field: &str) -> io::Result<Option<(TcpListener, SocketAddr)>> {
    let Some(address) = address else { return Ok(None) };
    let resolved = address
        .to_socket_addrs()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot resolve {field} {address}: {e}")))?
        .next()
        .ok_or_else(|| io::Error::other(format!("cannot resolve {field} {address}")))?;
    let listener = TcpListener::bind(resolved)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {field} {resolved}: {e}")))?;
    Ok(Some((listener, resolved)))
}

/// The listeners clients connect to; each None once shutdown began.
struct Listeners {
    /// Plain clients.
    clients: Option<TcpListener>,
    /// TLS clients (`tls`).
    tls: Option<TcpListener>,
    /// Admin clients (`admin_listen`).
    admin: Option<TcpListener>,
}

impl Runtime {
    /// A thread's loop over `poll`, driving `engine` in `role`, with nothing connected yet.
    fn new(poll: Poll, engine: Engine, role: Role, logger: Logger, config_path: String, tls: TlsSetup) -> Runtime {
        Runtime {
            poll,
            engine,
            sockets: SocketTable::new(),
            read_buffers: ReadBuffers::default(),
            closing: Vec::new(),
            dirty: Vec::new(),
            read_again: Vec::new(),
            logger,
            exchanges: Vec::new(),
            config_path,
            tls,
            role,
            stopping: false,
        }
    }

    /// Runs until the poller fails, or until a shutdown (SIGINT/SIGTERM) is complete: the engine has closed every
    /// client and every closed socket has written what was queued for it. A second signal ends the wait.
    fn event_loop(
        &mut self,
        listeners: Listeners,
        mut signals: Option<Signals>,
        status: Option<TcpListener>,
    ) -> io::Result<()> {
        let Listeners { clients: mut listener, tls: mut tls_listener, mut admin } = listeners;
        let mut events = Events::with_capacity(1024);
        loop {
            self.drain_engine();
            self.flush_dirty();
            let now = Instant::now();
            self.role.after_turn(&mut self.engine);
            let done = shutdown_complete(&self.engine, self.closing_count()) && self.role.workers_finished();
            if self.stopping && done {
                if signals.is_some() {
                    self.logger.log(Level::Info, &"shutdown complete");
                }
                return Ok(());
            }
            let deadline = earliest(self.engine.poll_timeout().map(|(at, _)| at), self.closing_deadline());
            let deadline = earliest(deadline, self.role.deadline());
            let deadline = earliest(deadline, self.exchanges.iter().flatten().map(|(_, e)| e.deadline()).min());
            let timeout = if !self.read_again.is_empty() {
                Some(Duration::ZERO)
            } else {
                // Round up: waking a hair early would only spin back into the poller. None: sleep until I/O.
                deadline.map(|at| at.saturating_duration_since(now) + Duration::from_micros(999))
            };
            if let Err(error) = self.poll.poll(&mut events, timeout) {
                if error.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(error);
            }
            self.role.gather_status(&mut self.engine);
            for event in events.iter() {
                match event.token() {
                    WAKER => self.woken(),
                    LISTENER => {
                        if let Some(listener) = &listener {
                            self.accept_all(listener, Entry::Plain);
                        }
                    }
                    TLS_LISTENER => {
                        if let Some(listener) = &tls_listener {
                            self.accept_all(listener, Entry::Tls);
                        }
                    }
                    ADMIN_LISTENER => {
                        if let Some(admin) = &admin {
                            self.accept_all(admin, Entry::Admin);
                        }
                    }
                    STATUS_LISTENER => {
                        if let Some(status) = &status {
                            self.accept_exchanges(status);
                        }
                    }
                    SIGNALS => {
                        let Some(signals) = signals.as_mut() else { continue };
                        let pending: Vec<i32> = signals.pending().collect();
                        if pending.contains(&SIGHUP) {
                            self.logger.log(Level::Info, &"SIGHUP: reloading the configuration");
                            self.reload();
                        }
                        let Some(signal) = pending.into_iter().find(|s| *s != SIGHUP) else { continue };
                        let name = if signal == SIGINT { "SIGINT" } else { "SIGTERM" };
                        let Some(mut stopped) = listener.take() else {
                            self.logger.log(Level::Warn, &format!("{name} again: exiting without waiting for clients"));
                            return Ok(());
                        };
                        self.logger.log(Level::Info, &format!("{name}: closing clients and shutting down"));
                        let _ = self.poll.registry().deregister(&mut stopped);
                        for mut other in [admin.take(), tls_listener.take()].into_iter().flatten() {
                            let _ = self.poll.registry().deregister(&mut other);
                        }
                        self.stopping = true;
                        self.role.shut_down_workers();
                        self.engine.begin_shutdown(Instant::now());
                    }
                    Token(token) if token & CLOSING != 0 => {
                        let slot = token & !CLOSING;
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.discard_closing_input(slot);
                        }
                        if event.is_writable() || event.is_write_closed() || event.is_error() {
                            self.flush_closing(slot);
                        }
                    }
                    // After the exact tokens above: SIGNALS and the listeners have this bit set too.
                    Token(token) if token & EXCHANGE != 0 => self.serve_exchange(token & !EXCHANGE),
                    Token(index) => {
                        let Some((id, _)) = self.sockets.at(index) else { continue };
                        if event.is_writable() || event.is_error() || event.is_write_closed() {
                            self.on_writable(id);
                        }
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.read_socket(id);
                        }
                    }
                }
            }
            for token in std::mem::take(&mut self.read_again) {
                match token {
                    Token(token) if token & CLOSING != 0 => self.discard_closing_input(token & !CLOSING),
                    Token(index) => {
                        if let Some((id, _)) = self.sockets.at(index) {
                            self.read_socket(id);
                        }
                    }
                }
            }
            let now = Instant::now();
            fire_due_timer(&mut self.engine, now, Some(&self.logger));
            self.abandon_stalled(now);
            self.drop_late_exchanges(now);
        }
    }

    /// Accepts status connections while fewer than `MAX_EXCHANGES` are being served (the rest wait in the
    /// backlog until one ends).
    fn accept_exchanges(&mut self, listener: &TcpListener) {
        while self.exchanges.iter().flatten().count() < http::MAX_EXCHANGES {
            match listener.accept() {
                Ok((mut stream, _)) => {
                    let slot = self.exchanges.iter().position(Option::is_none).unwrap_or(self.exchanges.len());
                    let interest = Interest::READABLE | Interest::WRITABLE;
                    if self.poll.registry().register(&mut stream, Token(EXCHANGE | slot), interest).is_err() {
                        continue;
                    }
                    let entry = Some((stream, Exchange::new(Instant::now())));
                    if slot == self.exchanges.len() {
                        self.exchanges.push(entry);
                    } else {
                        self.exchanges[slot] = entry;
                    }
                    self.serve_exchange(slot);
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            }
        }
    }

    /// Reads a status request, answers it from a fresh snapshot, and closes once the answer is written.
    fn serve_exchange(&mut self, slot: usize) {
        let Some((stream, exchange)) = self.exchanges.get_mut(slot).and_then(Option::as_mut) else { return };
        let (engine, role) = (&mut self.engine, &self.role);
        let snapshot = || {
            role.fresh_status(engine);
            engine.status(Instant::now())
        };
        let step = exchange.advance(|buf| (&*stream).read(buf), |buf| (&*stream).write(buf), snapshot);
        match step {
            ExchangeStep::Wait => {}
            ExchangeStep::Done | ExchangeStep::Drop => {
                if let Some((mut stream, _)) = self.exchanges[slot].take() {
                    let _ = self.poll.registry().deregister(&mut stream);
                    if step == ExchangeStep::Done {
                        let _ = stream.shutdown(Shutdown::Write);
                    }
                }
            }
        }
    }

    /// Drops status connections that did not finish within `EXCHANGE_TIMEOUT`.
    fn drop_late_exchanges(&mut self, now: Instant) {
        for entry in &mut self.exchanges {
            if entry.as_ref().is_some_and(|(_, e)| e.deadline() <= now) {
                if let Some((mut stream, _)) = entry.take() {
                    let _ = self.poll.registry().deregister(&mut stream);
                }
            }
        }
    }

    /// Accepts every pending client of `listener` (`Entry::Admin`: the admin listener, whose clients may send
    /// `PROXY`; `Entry::Tls`: the TLS listener, whose clients speak TLS).
    fn accept_all(&mut self, listener: &TcpListener, entry: Entry) {
        loop {
            match listener.accept() {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    if let Some(client) = self.role.hand_off(Handoff { stream, peer, entry }) {
                        self.take_client(client);
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    // EMFILE and friends: log, and let the next readiness event retry.
                    self.logger.log(Level::Error, &format!("accept failed: {error}"));
                    return;
                }
            }
        }
    }

    /// What the thread's waker brought: on a worker, the clients handed to it, a new topology, a reload or a
    /// shutdown; on the deciding thread, the workers' confirmations and a reload one of their clients asked for.
    fn woken(&mut self) {
        let woken = self.role.woken(&mut self.engine, Instant::now());
        for client in woken.clients {
            if !self.stopping {
                self.take_client(client);
            }
        }
        if woken.reload {
            self.reload();
        }
        if woken.shutdown && !self.stopping {
            self.stopping = true;
            self.engine.begin_shutdown(Instant::now());
        }
        self.drain_engine();
    }

    /// Serves a client accepted on this thread or handed to it: its TLS state, its engine connection, its socket.
    fn take_client(&mut self, client: Handoff<TcpStream>) {
        let Handoff { mut stream, peer, entry } = client;
        let tls = match self.tls.accept(entry, &peer.to_string()) {
            None => None,
            Some(Ok(tls)) => Some(Box::new(tls)),
            Some(Err(error)) => {
                self.logger.log(Level::Warn, &format!("{error}; connection closed"));
                return;
            }
        };
        let id = if entry == Entry::Admin {
            self.engine.accept_admin(Instant::now(), peer)
        } else {
            self.engine.accept(Instant::now(), peer)
        };
        let registered =
            self.poll.registry().register(&mut stream, Token(id.index()), Interest::READABLE | Interest::WRITABLE);
        if let Err(error) = registered {
            self.logger.log(Level::Error, &format!("cannot register client {peer}: {error}"));
            self.engine.handle_input(Instant::now(), Input::Closed { conn: id });
            return;
        }
        self.sockets.insert(id, Socket::new(stream, tls, false));
        self.drain_engine();
    }

    fn on_writable(&mut self, id: ConnId) {
        let Some(socket) = self.sockets.get_mut(id) else { return };
        if socket.connecting {
            return self.advance_connect(id);
        }
        self.flush(id);
    }

    /// Moves a connection the engine asked for towards `Connected`: the TCP connect, then (under `server_tls`)
    /// the TLS handshake. A failure of either is a failed connect for the engine (a refusal is evidence of its
    /// own; a TLS failure is not one), which logs the server and the reason.
    fn advance_connect(&mut self, id: ConnId) {
        let Some(socket) = self.sockets.get_mut(id) else { return };
        let established = match connect_result(&socket.stream) {
            None => return,
            Some(Ok(())) => match &mut socket.tls {
                None => Ok(()),
                Some(tls) => match tls.handshake(&mut &socket.stream) {
                    Ok(true) => Ok(()),
                    Ok(false) => return,
                    Err(error) => Err(error),
                },
            },
            Some(Err(error)) => Err(error),
        };
        match established {
            Ok(()) => {
                socket.connecting = false;
                let _ = socket.stream.set_nodelay(true);
                if socket.tls.is_some() {
                    // The last handshake records may have brought data with them, held by rustls.
                    self.read_again.push(Token(id.index()));
                }
                self.engine.handle_input(Instant::now(), Input::Connected { conn: id });
                self.drain_engine();
                self.flush(id);
            }
            Err(error) => {
                self.forget(id);
                connect_failed(&mut self.engine, Instant::now(), id, &error);
                self.drain_engine();
            }
        }
    }

    fn read_socket(&mut self, id: ConnId) {
        let mut read_this_turn = 0;
        for _ in 0..READS_PER_TURN {
            let Some(socket) = self.sockets.get_mut(id) else { return };
            if socket.connecting {
                // A TLS handshake in progress reads its records here.
                return self.advance_connect(id);
            }
            if !socket.readable {
                return;
            }
            if socket.read_buf.capacity() - socket.read_buf.len() < MIN_READ_ROOM {
                self.read_buffers.make_room(&mut socket.read_buf, &mut socket.read_alloc, socket.read_room);
            }
            let room = socket.read_buf.capacity() - socket.read_buf.len();
            let received = match &mut socket.tls {
                None => recv_into(&socket.stream, &mut socket.read_buf),
                Some(tls) => match tls.read(&mut &socket.stream, &mut socket.read_buf) {
                    // Plaintext comes in records, never as "the buffer was filled": read on until WouldBlock.
                    Ok(n) if n > 0 => Ok(n.max(room)),
                    Err(error) if error.kind() == io::ErrorKind::InvalidData => {
                        self.logger.log(Level::Warn, &format!("{error}; connection closed"));
                        Err(error)
                    }
                    other => other,
                },
            };
            match received {
                Ok(0) => return self.closed_by_peer(id),
                Ok(n) => {
                    socket.read_room = if n == room { (room * 2).min(MAX_READ_ROOM) } else { MIN_READ_ROOM };
                    socket.read_buf_peak = socket.read_buf_peak.max(socket.read_buf.len());
                    let mut buf = std::mem::take(&mut socket.read_buf);
                    self.engine.handle_input(Instant::now(), Input::Data { conn: id, buf: &mut buf });
                    if let Some(socket) = self.sockets.get_mut(id) {
                        if buf.is_empty() {
                            // Nothing partial is left: let go of the allocation (the frames split off keep it
                            // alive only until they are written, then a later read may take it), so an idle
                            // connection holds no buffer.
                            self.read_buffers.recycle(std::mem::take(&mut buf), socket.read_alloc);
                            socket.read_alloc = 0;
                            socket.read_buf_peak = 0;
                        } else if socket.read_buf_peak > SHRINK_READ_BUF_AFTER && buf.len() <= MIN_READ_ROOM {
                            // The frames split off share the large allocation; copying the small rest lets it go
                            // once they are written.
                            let rest = BytesMut::from(&buf[..]);
                            let large = std::mem::replace(&mut buf, rest);
                            self.read_buffers.recycle(large, socket.read_alloc);
                            socket.read_alloc = buf.capacity();
                            socket.read_buf_peak = buf.len();
                        }
                        socket.read_buf = buf;
                    }
                    self.drain_engine();
                    read_this_turn += n;
                    if n < room {
                        return;
                    }
                    if read_this_turn >= READ_BYTES_PER_TURN {
                        break;
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return self.closed_by_peer(id),
            }
        }
        self.read_again.push(Token(id.index()));
    }

    fn closed_by_peer(&mut self, id: ConnId) {
        if self.forget(id).is_some() {
            self.engine.handle_input(Instant::now(), Input::Closed { conn: id });
            self.drain_engine();
        }
    }

    fn forget(&mut self, id: ConnId) -> Option<Socket> {
        let mut socket = self.sockets.remove(id)?;
        let _ = self.poll.registry().deregister(&mut socket.stream);
        Some(socket)
    }

    /// Performs every pending action and logs every pending event.
    fn drain_engine(&mut self) {
        while let Some(action) = self.engine.poll_action() {
            match action {
                Action::Send { conn, data } => {
                    if let Some(socket) = self.sockets.get_mut(conn) {
                        if socket.out.push(data) {
                            self.dirty.push(conn);
                        }
                    }
                }
                Action::Connect { conn, address } => self.connect(conn, &address),
                Action::Close { conn } => self.close(conn),
                Action::SetReadable { conn, readable } => {
                    if let Some(socket) = self.sockets.get_mut(conn) {
                        socket.readable = readable;
                        if readable {
                            self.read_again.push(Token(conn.index()));
                        }
                    }
                }
            }
        }
        let mut reload = false;
        while let Some(event) = self.engine.poll_event() {
            reload |= event == Event::ReloadRequested;
            self.logger.log(event.level(), &event);
        }
        // A worker passes a client's `PROXY RELOAD` to the deciding thread, which reloads first.
        if reload && self.role.reload_requested() {
            self.reload();
        }
    }

    /// Re-reads the configuration file and applies it (see `runtime_common::reload`); on the deciding thread, the
    /// workers reload once it has.
    fn reload(&mut self) {
        let role = &self.role;
        let (engine, path, tls) = (&mut self.engine, &self.config_path, &mut self.tls);
        let applied = redis_proxy_runtime_common::reload(engine, path, &self.logger, tls, |config| role.part(config));
        if applied {
            self.role.reloaded();
        }
        self.drain_engine();
    }

    fn connect(&mut self, conn: ConnId, address: &ServerAddress) {
        let tls = self.tls.connect(address).transpose().map(|tls| tls.map(Box::new));
        let result = tls.and_then(|tls| {
            let mut stream = TcpStream::connect(resolve(&address.host, address.port)?)?;
            self.poll.registry().register(&mut stream, Token(conn.index()), Interest::READABLE | Interest::WRITABLE)?;
            Ok((stream, tls))
        });
        match result {
            Ok((stream, tls)) => self.sockets.insert(conn, Socket::new(stream, tls, true)),
            Err(error) => connect_failed(&mut self.engine, Instant::now(), conn, &error),
        }
    }

    fn flush_dirty(&mut self) {
        for id in std::mem::take(&mut self.dirty) {
            if let Some(socket) = self.sockets.get_mut(id) {
                socket.out.unschedule();
                self.flush(id);
            }
        }
    }

    /// Writes as much of the queue as the socket takes, and tells the engine when that blocks or drains.
    fn flush(&mut self, id: ConnId) {
        let Some(socket) = self.sockets.get_mut(id) else { return };
        if socket.connecting {
            return;
        }
        let written = match &mut socket.tls {
            None => socket.out.write_with(writer(&socket.stream)),
            // Records rustls still holds go first, also when the queue is empty.
            Some(tls) => tls
                .flush(&mut &socket.stream)
                .and_then(|_| socket.out.write_with(|slices| tls.write(&mut &socket.stream, slices))),
        };
        if written.is_err() {
            return self.closed_by_peer(id);
        }
        if let Some(input) = socket.out.backpressure(id) {
            self.engine.handle_input(Instant::now(), input);
            self.drain_engine();
        }
    }

    /// The engine is done with `id`: its socket writes what is queued (in the background if the socket does not
    /// take it all now), then shuts down its write side, so the peer reads every byte and then a clean end.
    fn close(&mut self, id: ConnId) {
        let Some(mut socket) = self.forget(id) else { return };
        if socket.connecting {
            return;
        }
        let mut closing = Closing::new(socket.out, Instant::now());
        match flush_closing(&mut closing, &socket.stream, socket.tls.as_deref_mut()) {
            CloseStep::Finish => finish_close(&socket.stream),
            CloseStep::Abandon => {}
            CloseStep::Wait => {
                let slot = self.closing.iter().position(Option::is_none).unwrap_or(self.closing.len());
                let token = Token(CLOSING | slot);
                let interest = Interest::READABLE | Interest::WRITABLE;
                if self.poll.registry().register(&mut socket.stream, token, interest).is_err() {
                    return;
                }
                let entry = ClosingSocket { stream: socket.stream, tls: socket.tls, closing, peer_closed: false };
                if slot == self.closing.len() {
                    self.closing.push(Some(entry));
                } else {
                    self.closing[slot] = Some(entry);
                }
                self.discard_closing_input(slot);
            }
        }
    }

    /// Reads and drops what a closing socket's peer sent (the engine is done with it; see `Closing`).
    fn discard_closing_input(&mut self, slot: usize) {
        let Some(entry) = self.closing.get_mut(slot).and_then(Option::as_mut) else { return };
        if entry.peer_closed {
            return;
        }
        match Closing::discard_input(|buf| (&entry.stream).read(buf)) {
            Ok(Discarded::Empty) => {}
            Ok(Discarded::PeerClosed) => entry.peer_closed = true,
            Ok(Discarded::More) => self.read_again.push(Token(CLOSING | slot)),
            Err(_) => {
                self.end_closing(slot);
            }
        }
    }

    fn flush_closing(&mut self, slot: usize) {
        let Some(entry) = self.closing.get_mut(slot).and_then(Option::as_mut) else { return };
        match flush_closing(&mut entry.closing, &entry.stream, entry.tls.as_deref_mut()) {
            CloseStep::Wait => {}
            CloseStep::Finish => {
                if let Some(entry) = self.end_closing(slot) {
                    finish_close(&entry.stream);
                }
            }
            CloseStep::Abandon => {
                self.end_closing(slot);
            }
        }
    }

    fn end_closing(&mut self, slot: usize) -> Option<ClosingSocket> {
        let mut entry = self.closing.get_mut(slot)?.take()?;
        let _ = self.poll.registry().deregister(&mut entry.stream);
        Some(entry)
    }

    /// Gives up the closing sockets that took nothing for `CLOSE_STALL`.
    fn abandon_stalled(&mut self, now: Instant) {
        for slot in 0..self.closing.len() {
            if self.closing[slot].as_ref().is_some_and(|entry| entry.closing.deadline() <= now) {
                self.flush_closing(slot);
            }
        }
    }

    fn closing_count(&self) -> usize {
        self.closing.iter().flatten().count()
    }

    fn closing_deadline(&self) -> Option<Instant> {
        self.closing.iter().flatten().map(|entry| entry.closing.deadline()).min()
    }
}

impl Socket {
    fn new(stream: TcpStream, tls: Option<Box<TlsConn>>, connecting: bool) -> Socket {
        Socket {
            stream,
            tls,
            read_buf: BytesMut::new(),
            read_buf_peak: 0,
            read_alloc: 0,
            read_room: MIN_READ_ROOM,
            out: WriteQueue::new(),
            connecting,
            readable: true,
        }
    }
}

/// One non-blocking write of `stream`: a plain `write` for the common single buffer (most client replies at
/// pipeline depth 1), `writev` for more.
fn writer(stream: &TcpStream) -> impl FnMut(&[IoSlice<'_>]) -> io::Result<usize> + '_ {
    move |slices| match slices {
        [one] => (&*stream).write(one),
        _ => (&*stream).write_vectored(slices),
    }
}

/// Writes what a closing connection has queued (through TLS, then its `close_notify`, for a TLS connection).
fn flush_closing(closing: &mut Closing, stream: &TcpStream, tls: Option<&mut TlsConn>) -> CloseStep {
    match tls {
        None => closing.flush(Instant::now(), writer(stream)),
        Some(tls) => tls::flush_closing(closing, Instant::now(), tls, &mut &*stream),
    }
}

/// Sends the FIN after the last byte, the peer's unread input dropped first.
fn finish_close(stream: &TcpStream) {
    Closing::drain_before_fin(|buf| (&*stream).read(buf));
    let _ = stream.shutdown(Shutdown::Write);
}

/// Reads from `stream` straight into the spare capacity of `buf` (no zeroing, no copy) and extends it.
fn recv_into(stream: &TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    let n = socket2::SockRef::from(stream).recv(buf.spare_capacity_mut())?;
    // SAFETY: `recv` initialised the first `n` bytes of the spare capacity (it returns how many it wrote, at
    // most the slice's length), so the buffer may grow over them.
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}

fn resolve(host: &str, port: u16) -> io::Result<SocketAddr> {
    (host, port).to_socket_addrs()?.next().ok_or_else(|| io::Error::other(format!("{host} resolves to no address")))
}

/// Whether a non-blocking connect finished: None while in progress.
fn connect_result(stream: &TcpStream) -> Option<io::Result<()>> {
    match stream.take_error() {
        Ok(Some(error)) | Err(error) => return Some(Err(error)),
        Ok(None) => {}
    }
    match stream.peer_addr() {
        Ok(_) => Some(Ok(())),
        Err(error) if error.kind() == io::ErrorKind::NotConnected => None,
        Err(error) => Some(Err(error)),
    }
}
