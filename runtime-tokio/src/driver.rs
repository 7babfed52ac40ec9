//! The engine task and the per-connection I/O tasks. No Redis semantics live here: bytes in, actions out, time.

use bytes::BytesMut;
use redis_proxy_engine::{Action, ConnId, Engine, Event, Input, Level, StatusSnapshot};
use redis_proxy_runtime_common::crew::{self, Handoff, Wake};
use redis_proxy_runtime_common::http;
use redis_proxy_runtime_common::tls::{self, Entry, TlsConn, TlsSetup};
use redis_proxy_runtime_common::{
    connect_failed, earliest, fire_due_timer, shutdown_complete, CloseStep, Closing, Discarded, Logger, SocketTable,
    WriteQueue,
};
use socket2::SockRef;
use std::future::Future;
use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc, oneshot, watch, Notify};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant as TokioInstant;

/// Room a connection's read buffer gets when it runs low.
const READ_CHUNK: usize = 64 * 1024;
/// Bytes an I/O task may have read that the engine has not been handed yet; it stops reading past this. Without
/// it, one fast peer could fill the channel to the engine task (a large value, read faster than it is forwarded).
const MAX_UNHANDED: usize = 2 * 1024 * 1024;
/// Below this much room, the read buffer grows (to `READ_CHUNK`) before the next read.
const MIN_READ_ROOM: usize = 4 * 1024;
/// Messages the engine task takes from the channel per turn, before it flushes what they produced.
const MESSAGES_PER_TURN: usize = 256;
/// Messages in flight from the I/O tasks to the engine task before the I/O tasks wait.
const CHANNEL_CAPACITY: usize = 1024;
/// Pause after a failed `accept` (e.g. out of file descriptors) before accepting again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// Wake-ups a TLS handshake with a server may take (each advances it by what the socket holds) before the
/// connect is given up as failed.
const HANDSHAKE_WAKEUPS: usize = 1000;
/// A deadline far enough away to stand for "none" (tokio's timer cannot be left unarmed).
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365);

/// What an I/O or connect task tells the engine task.
enum Message {
    /// Bytes read from the connection.
    Data(ConnId, BytesMut),
    /// The peer closed the connection, or reading failed.
    Closed(ConnId),
    /// TLS failed on the connection (the error says which peer and why); it is closed.
    TlsFailed(ConnId, io::Error),
    /// The socket takes writes again after a `try_write` left bytes queued.
    Writable(ConnId),
    /// A connect the engine asked for succeeded (with its TLS handshake done, under `server_tls`).
    Connected(ConnId, TcpStream, Option<Box<TlsConn>>),
    /// A connect the engine asked for failed (in the TCP connect or the TLS handshake; the engine logs why).
    ConnectFailed(ConnId, io::Error),
}

/// Aborts its task when dropped, so no task outlives the connection it serves.
struct TaskGuard(JoinHandle<()>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// An established connection's handles, shared with its I/O task.
struct Io {
    stream: Arc<TcpStream>,
    /// The connection's TLS state, shared by the I/O task (reads) and the engine task (writes); None: plain TCP.
    tls: Option<Arc<Mutex<TlsConn>>>,
    /// Whether the I/O task should read the socket.
    reading: watch::Sender<bool>,
    /// Asks the I/O task to report when the socket is writable.
    want_write: Arc<Notify>,
    /// What the I/O task has read and the engine has not been handed yet (see [`MAX_UNHANDED`]).
    unhanded: Arc<ReadCredit>,
}

/// The bytes one connection's I/O task has read that the engine has not been handed yet, and the wake-up for the
/// task when that falls.
#[derive(Default)]
struct ReadCredit {
    unhanded: AtomicUsize,
    handed: Notify,
}

struct Socket {
    /// None while connecting.
    io: Option<Io>,
    /// The connect task, then the I/O task.
    _task: TaskGuard,
    out: WriteQueue,
    /// Bytes read but not yet handed in (a partial frame, or data read just before a pause took effect).
    read_buf: BytesMut,
    /// How many bytes of `read_buf` the engine has not seen yet (they count against [`MAX_UNHANDED`]).
    unreported: usize,
    /// The engine wants this connection read.
    readable: bool,
}

/// What an engine task plays in `workers` (the clients it is handed are tokio sockets of the decider's reactor).
pub(crate) type Role = crew::Role<TcpStream>;

/// The wake-up of an engine task from another one (see [`crew`]): a permit stored in its `Notify` until it looks.
pub(crate) fn wake(notify: &Arc<Notify>) -> Wake {
    let notify = notify.clone();
    Box::new(move || notify.notify_one())
}

/// The sockets the deciding (or only) engine task listens on; a worker's task has none.
pub(crate) struct Listeners {
    /// Clients.
    pub(crate) clients: TcpListener,
    /// The status page and metrics (`status_listen`).
    pub(crate) status: Option<TcpListener>,
    /// Admin clients (`admin_listen`).
    pub(crate) admin: Option<TcpListener>,
    /// TLS clients (`tls`).
    pub(crate) tls: Option<TcpListener>,
}

/// The task that owns the engine.
pub(crate) struct Driver {
    engine: Engine,
    events: broadcast::Sender<Event>,
    logger: Option<Logger>,
    sockets: SocketTable<Socket>,
    /// Connections with bytes queued this turn, written at its end.
    dirty: Vec<ConnId>,
    /// Connections whose reading resumed with bytes already buffered.
    resumed: Vec<ConnId>,
    sender: mpsc::Sender<Message>,
    receiver: mpsc::Receiver<Message>,
    /// Connections the engine closed that still have bytes to write, finishing in the background.
    closers: JoinSet<()>,
    /// The configuration file, re-read on SIGHUP and `PROXY RELOAD`.
    config_path: Option<String>,
    /// The certificates and keys of `tls` and `server_tls`, read again on reload.
    tls: TlsSetup,
    /// Whether this task's engine is the only one, the deciding one or a worker (`workers`).
    role: Role,
    /// Woken by the other engine tasks of `workers` when they have news for this one.
    woken: Arc<Notify>,
    /// A shutdown began: the task ends once every client is closed (and, on the deciding task, every worker's has
    /// ended).
    stopping: bool,
}

/// What an engine task is made of besides its sockets.
pub(crate) struct Parts {
    pub(crate) engine: Engine,
    pub(crate) role: Role,
    /// Notified by [`wake`] (never, for `Role::Alone`).
    pub(crate) woken: Arc<Notify>,
    pub(crate) events: broadcast::Sender<Event>,
    pub(crate) logger: Option<Logger>,
    pub(crate) config_path: Option<String>,
    pub(crate) tls: TlsSetup,
}

impl Driver {
    pub(crate) fn new(parts: Parts) -> Driver {
        let Parts { engine, role, woken, events, logger, config_path, tls } = parts;
        let (sender, receiver) = mpsc::channel(CHANNEL_CAPACITY);
        Driver {
            engine,
            events,
            logger,
            sockets: SocketTable::new(),
            dirty: Vec::new(),
            resumed: Vec::new(),
            sender,
            receiver,
            closers: JoinSet::new(),
            config_path,
            tls,
            role,
            woken,
            stopping: false,
        }
    }

    /// Runs until `shutdown` completes and the shutdown it starts is over: the engine stops reading clients and
    /// closes each once the replies it awaits are out (at the latest after its `shutdown_grace`), and every closed
    /// connection writes what is queued for it. A worker's task (no `listeners`) shuts down when the decider's does.
    pub(crate) async fn run(
        mut self,
        listeners: Option<Listeners>,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<()> {
        let outcome = self.serve(listeners, shutdown).await;
        // A worker's end lets the decider finish.
        self.role.finished();
        outcome
    }

    /// [`Driver::run`]'s loop.
    async fn serve(&mut self, listeners: Option<Listeners>, shutdown: impl Future<Output = ()>) -> io::Result<()> {
        let (listener, status, admin, tls_listener) = match listeners {
            Some(Listeners { clients, status, admin, tls }) => (Some(clients), status, admin, tls),
            None => (None, None, None, None),
        };
        // None once shutdown began, as `listener`.
        let mut admin = admin;
        let mut tls_listener = tls_listener;
        let mut shutdown = pin!(shutdown);
        // Status connections ask this task for a snapshot; the engine is only ever touched here.
        let (snapshots, mut snapshot_requests) = mpsc::channel::<oneshot::Sender<StatusSnapshot>>(http::MAX_EXCHANGES);
        let _status_task = status.map(|listener| TaskGuard(tokio::spawn(serve_status(listener, snapshots))));
        // SIGHUP belongs to the task with the listeners (the only or the deciding one).
        let mut hangups = match self.config_path {
            Some(_) if listener.is_some() => {
                Some(tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?)
            }
            _ => None,
        };
        // None once shutdown began (and always on a worker): nobody new is accepted here.
        let mut listener = listener;
        let mut timer = pin!(tokio::time::sleep(FAR_FUTURE));
        let mut armed = None;
        let mut batch = Vec::with_capacity(MESSAGES_PER_TURN);
        // After a failed accept (e.g. out of file descriptors), accepting pauses until then; traffic goes on.
        let mut accept_paused_until = None;
        loop {
            self.finish_turn();
            self.role.after_turn(&mut self.engine);
            let done = shutdown_complete(&self.engine, self.closers.len()) && self.role.workers_finished();
            if self.stopping && done {
                return Ok(());
            }
            let deadline = earliest(self.engine.poll_timeout().map(|(at, _)| at), self.role.deadline());
            if deadline != armed {
                armed = deadline;
                timer.as_mut().reset(tokio_deadline(deadline));
            }
            tokio::select! {
                () = &mut shutdown, if listener.is_some() => {
                    listener = None;
                    admin = None;
                    tls_listener = None;
                    self.stopping = true;
                    self.role.shut_down_workers();
                    self.engine.begin_shutdown(Instant::now());
                }
                () = self.woken.notified() => self.on_woken(),
                _ = self.receiver.recv_many(&mut batch, MESSAGES_PER_TURN) => {
                    for message in batch.drain(..) {
                        self.handle_message(message);
                    }
                }
                accepted = accept(listener.as_ref()), if accept_paused_until.is_none() => match accepted {
                    Ok((stream, peer)) => self.accepted(stream, peer, Entry::Plain),
                    Err(_) => accept_paused_until = Some(TokioInstant::now() + ACCEPT_BACKOFF),
                },
                accepted = accept(tls_listener.as_ref()), if accept_paused_until.is_none() && tls_listener.is_some() => {
                    match accepted {
                        Ok((stream, peer)) => self.accepted(stream, peer, Entry::Tls),
                        Err(_) => accept_paused_until = Some(TokioInstant::now() + ACCEPT_BACKOFF),
                    }
                }
                accepted = accept(admin.as_ref()), if accept_paused_until.is_none() && admin.is_some() => {
                    match accepted {
                        Ok((stream, peer)) => self.accepted(stream, peer, Entry::Admin),
                        Err(_) => accept_paused_until = Some(TokioInstant::now() + ACCEPT_BACKOFF),
                    }
                }
                () = resume_accepting(accept_paused_until), if accept_paused_until.is_some() => {
                    accept_paused_until = None;
                }
                Some(_) = self.closers.join_next(), if !self.closers.is_empty() => {}
                Some(()) = hangup(hangups.as_mut()) => {
                    if let Some(logger) = &self.logger {
                        logger.log(redis_proxy_engine::Level::Info, &"SIGHUP: reloading the configuration");
                    }
                    self.reload();
                }
                Some(reply) = snapshot_requests.recv() => {
                    // Blocks this task briefly (at most `crew`'s wait) for the workers' fresh counts.
                    self.role.fresh_status(&mut self.engine);
                    let _ = reply.send(self.engine.status(Instant::now()));
                }
                () = &mut timer => {}
            }
            self.role.gather_status(&mut self.engine);
            // By the clock, not by which branch woke us: a timer polled with the cooperative budget spent reports
            // Pending even when due.
            if fire_due_timer(&mut self.engine, Instant::now(), self.logger.as_ref()) {
                self.drain_engine();
            }
        }
    }

    /// Performs what the engine asked for, handing in data buffered for connections whose reading resumed,
    /// then writes every connection that got bytes this turn.
    fn finish_turn(&mut self) {
        self.drain_engine();
        while let Some(id) = self.resumed.pop() {
            self.hand_in_buffered(id);
        }
        while !self.dirty.is_empty() {
            for id in std::mem::take(&mut self.dirty) {
                if let Some(socket) = self.sockets.get_mut(id) {
                    socket.out.unschedule();
                    self.flush(id);
                }
            }
        }
        while self.closers.try_join_next().is_some() {}
    }

    fn handle_message(&mut self, message: Message) {
        match message {
            Message::Data(conn, chunk) => {
                let Some(socket) = self.sockets.get_mut(conn) else { return };
                socket.unreported += chunk.len();
                if socket.read_buf.is_empty() {
                    socket.read_buf = chunk;
                } else {
                    // O(1) when the chunk continues the buffer's allocation, as consecutive reads usually do.
                    socket.read_buf.unsplit(chunk);
                }
                if socket.readable {
                    self.hand_in_buffered(conn);
                }
            }
            Message::Closed(conn) => self.closed_by_peer(conn),
            Message::TlsFailed(conn, error) => {
                self.log(Level::Warn, &format!("{error}; connection closed"));
                self.closed_by_peer(conn);
            }
            Message::Writable(conn) => self.flush(conn),
            Message::Connected(conn, stream, tls) => {
                let sender = self.sender.clone();
                let Some(socket) = self.sockets.get_mut(conn).filter(|s| s.io.is_none()) else { return };
                let (io, task) = spawn_io(conn, stream, tls, sender);
                socket.io = Some(io);
                socket._task = task;
                self.engine.handle_input(Instant::now(), Input::Connected { conn });
                self.drain_engine();
                self.mark_dirty(conn);
            }
            Message::ConnectFailed(conn, reason) => {
                if self.sockets.remove(conn).is_some() {
                    connect_failed(&mut self.engine, Instant::now(), conn, &reason);
                    self.drain_engine();
                }
            }
        }
    }

    /// What the other engine tasks of `workers` brought: on a worker, the clients handed to it, a new topology, a
    /// reload or a shutdown; on the deciding task, the workers' confirmations and a reload one of their clients
    /// asked for.
    fn on_woken(&mut self) {
        let woken = self.role.woken(&mut self.engine, Instant::now());
        for Handoff { stream, peer, entry } in woken.clients {
            if self.stopping {
                continue;
            }
            // From the decider's reactor to this task's.
            match stream.into_std().and_then(TcpStream::from_std) {
                Ok(stream) => self.take_client(stream, peer, entry),
                Err(error) => self.log(Level::Warn, &format!("cannot take client {peer}: {error}; connection closed")),
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

    /// A client connected: handed to the next worker, or (alone, or on the admin listener) served here.
    fn accepted(&mut self, stream: TcpStream, peer: SocketAddr, entry: Entry) {
        let _ = stream.set_nodelay(true);
        if let Some(Handoff { stream, peer, entry }) = self.role.hand_off(Handoff { stream, peer, entry }) {
            self.take_client(stream, peer, entry);
        }
    }

    /// Serves a client accepted here or handed to this task (`Entry::Admin`: from the admin listener, so it may
    /// send `PROXY` commands; `Entry::Tls`: from the TLS listener, so it speaks TLS).
    fn take_client(&mut self, stream: TcpStream, peer: SocketAddr, entry: Entry) {
        let tls = match self.tls.accept(entry, &peer.to_string()) {
            None => None,
            Some(Ok(tls)) => Some(Box::new(tls)),
            Some(Err(error)) => return self.log(Level::Warn, &format!("{error}; connection closed")),
        };
        let id = if entry == Entry::Admin {
            self.engine.accept_admin(Instant::now(), peer)
        } else {
            self.engine.accept(Instant::now(), peer)
        };
        let (io, task) = spawn_io(id, stream, tls, self.sender.clone());
        self.sockets.insert(id, Socket::new(Some(io), task));
        self.drain_engine();
    }

    fn hand_in_buffered(&mut self, id: ConnId) {
        let Some(socket) = self.sockets.get_mut(id) else { return };
        if !socket.readable || socket.read_buf.is_empty() {
            return;
        }
        let mut buf = std::mem::take(&mut socket.read_buf);
        if let Some(io) = &socket.io {
            let before = io.unhanded.unhanded.fetch_sub(std::mem::take(&mut socket.unreported), Ordering::AcqRel);
            if before >= MAX_UNHANDED {
                io.unhanded.handed.notify_one();
            }
        }
        self.engine.handle_input(Instant::now(), Input::Data { conn: id, buf: &mut buf });
        if let Some(socket) = self.sockets.get_mut(id) {
            socket.read_buf = buf;
        }
        self.drain_engine();
    }

    fn closed_by_peer(&mut self, conn: ConnId) {
        if self.sockets.remove(conn).is_some() {
            self.engine.handle_input(Instant::now(), Input::Closed { conn });
            self.drain_engine();
        }
    }

    /// Performs every pending action and publishes every pending event.
    fn drain_engine(&mut self) {
        while let Some(action) = self.engine.poll_action() {
            match action {
                Action::Send { conn, data } => {
                    let Some(socket) = self.sockets.get_mut(conn) else { continue };
                    if socket.out.push(data) {
                        self.dirty.push(conn);
                    }
                }
                Action::Connect { conn, address } => {
                    let sender = self.sender.clone();
                    let tls = self.tls.connect(&address).transpose();
                    let task = tokio::spawn(async move {
                        let connected = async {
                            let mut tls = tls?.map(Box::new);
                            let stream = TcpStream::connect((address.host.as_str(), address.port)).await?;
                            let _ = stream.set_nodelay(true);
                            if let Some(tls) = &mut tls {
                                tls_handshake(&stream, tls).await?;
                            }
                            Ok((stream, tls))
                        };
                        let message = match connected.await {
                            Ok((stream, tls)) => Message::Connected(conn, stream, tls),
                            Err(error) => Message::ConnectFailed(conn, error),
                        };
                        let _ = sender.send(message).await;
                    });
                    self.sockets.insert(conn, Socket::new(None, TaskGuard(task)));
                }
                Action::Close { conn } => self.close(conn),
                Action::SetReadable { conn, readable } => {
                    let Some(socket) = self.sockets.get_mut(conn) else { continue };
                    socket.readable = readable;
                    if let Some(io) = &socket.io {
                        io.reading.send_replace(readable);
                    }
                    if readable && !socket.read_buf.is_empty() {
                        self.resumed.push(conn);
                    }
                }
            }
        }
        let mut reload = false;
        while let Some(event) = self.engine.poll_event() {
            reload |= event == Event::ReloadRequested;
            // No subscriber is not an error.
            let _ = self.events.send(event);
        }
        if reload && self.role.reload_requested() {
            self.reload();
        }
    }

    /// Re-reads the configuration file, if one is set, and applies this engine's part of it (see
    /// `runtime_common::reload`); the deciding task then has every worker reload too.
    fn reload(&mut self) {
        let (Some(path), Some(logger)) = (self.config_path.clone(), self.logger.clone()) else { return };
        let role = &self.role;
        if redis_proxy_runtime_common::reload(&mut self.engine, &path, &logger, &mut self.tls, |c| role.part(c)) {
            self.role.reloaded();
        }
        self.drain_engine();
    }

    /// The engine is done with `conn`: its socket writes what is queued (in a background task if the socket does
    /// not take it all now), then shuts down its write side, so the peer reads every byte and then a clean end.
    fn close(&mut self, conn: ConnId) {
        let Some(mut socket) = self.sockets.remove(conn) else { return };
        // Still connecting: nothing was sent, dropping the connect task is the close.
        let Some(io) = socket.io.take() else { return };
        let now = Instant::now();
        let mut closing = Closing::new(socket.out, now);
        match flush_closing(&mut closing, &io.stream, io.tls.as_deref()) {
            CloseStep::Finish => finish_close(&io.stream),
            CloseStep::Abandon => {}
            CloseStep::Wait => {
                self.closers.spawn(flush_then_close(io.stream, io.tls, closing));
            }
        }
    }

    /// Logs `message` with the logger, if one is set.
    fn log(&self, level: Level, message: &dyn std::fmt::Display) {
        if let Some(logger) = &self.logger {
            logger.log(level, message);
        }
    }

    fn mark_dirty(&mut self, id: ConnId) {
        if let Some(socket) = self.sockets.get_mut(id) {
            if socket.out.schedule() {
                self.dirty.push(id);
            }
        }
    }

    /// Writes as much of the queue as the socket takes; reports WriteBlocked / Drained on changes.
    fn flush(&mut self, id: ConnId) {
        let Some(socket) = self.sockets.get_mut(id) else { return };
        let Some(io) = &socket.io else { return };
        let (written, tls_pending) = match &io.tls {
            None => (socket.out.write_with(|slices| io.stream.try_write_vectored(slices)), false),
            Some(tls) => {
                let mut tls = lock(tls);
                let mut sock = TryIo(&io.stream);
                // Records rustls still holds go first, also when the queue is empty.
                let written = tls.flush(&mut sock).and_then(|_| socket.out.write_with(|s| tls.write(&mut sock, s)));
                (written, tls.wants_write())
            }
        };
        if written.is_err() {
            return self.closed_by_peer(id);
        }
        if !socket.out.is_empty() || tls_pending {
            io.want_write.notify_one();
        }
        if let Some(input) = socket.out.backpressure(id) {
            self.engine.handle_input(Instant::now(), input);
            self.drain_engine();
        }
    }
}

impl Socket {
    fn new(io: Option<Io>, task: TaskGuard) -> Socket {
        Socket { io, _task: task, out: WriteQueue::new(), read_buf: BytesMut::new(), unreported: 0, readable: true }
    }
}

/// Accepts status connections and serves each in a task of its own, at most `MAX_EXCHANGES` at once.
async fn serve_status(listener: TcpListener, snapshots: mpsc::Sender<oneshot::Sender<StatusSnapshot>>) {
    let mut exchanges = JoinSet::new();
    loop {
        while exchanges.len() >= http::MAX_EXCHANGES {
            exchanges.join_next().await;
        }
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let exchange = serve_exchange(stream, snapshots.clone());
                    exchanges.spawn(async move {
                        let _ = tokio::time::timeout(http::EXCHANGE_TIMEOUT, exchange).await;
                    });
                }
                Err(_) => tokio::time::sleep(ACCEPT_BACKOFF).await,
            },
            Some(_) = exchanges.join_next(), if !exchanges.is_empty() => {}
        }
    }
}

/// Reads one status request, answers it from a snapshot the engine task takes, and closes.
async fn serve_exchange(
    mut stream: TcpStream,
    snapshots: mpsc::Sender<oneshot::Sender<StatusSnapshot>>,
) -> io::Result<()> {
    let mut request = Vec::new();
    let answer = loop {
        let mut chunk = [0u8; 2048];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        request.extend_from_slice(&chunk[..n]);
        match http::parse(&request) {
            http::Parsed::Partial => continue,
            http::Parsed::Bad(answer) => break answer,
            http::Parsed::Request(route) => {
                let (reply, snapshot) = oneshot::channel();
                snapshots.send(reply).await.map_err(|_| io::Error::other("the engine task is gone"))?;
                let snapshot = snapshot.await.map_err(|_| io::Error::other("the engine task is gone"))?;
                break http::respond(route, &snapshot);
            }
        }
    };
    stream.write_all(&answer).await?;
    stream.shutdown().await
}

/// The next SIGHUP; never completes without a signal stream.
async fn hangup(signals: Option<&mut tokio::signal::unix::Signal>) -> Option<()> {
    match signals {
        Some(signals) => signals.recv().await,
        None => std::future::pending().await,
    }
}

/// Accepts the next client; never completes once the listener is gone (shutting down).
async fn accept(listener: Option<&TcpListener>) -> io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

/// Writes a closed connection's queue as the socket takes it, discarding what the peer still sends, then sends
/// the FIN; gives up after `CLOSE_STALL` without progress or when the socket breaks.
async fn flush_then_close(stream: Arc<TcpStream>, tls: Option<Arc<Mutex<TlsConn>>>, mut closing: Closing) {
    let mut peer_closed = false;
    loop {
        tokio::select! {
            ready = stream.writable() => if ready.is_err() {
                return;
            },
            ready = stream.readable(), if !peer_closed => {
                match ready.and_then(|()| Closing::discard_input(|buf| stream.try_read(buf))) {
                    Ok(Discarded::PeerClosed) => peer_closed = true,
                    Ok(Discarded::Empty | Discarded::More) => {}
                    Err(_) => return,
                }
            }
            () = tokio::time::sleep_until(TokioInstant::from_std(closing.deadline())) => {}
        }
        match flush_closing(&mut closing, &stream, tls.as_deref()) {
            CloseStep::Wait => {}
            CloseStep::Finish => return finish_close(&stream),
            CloseStep::Abandon => return,
        }
    }
}

/// Writes what a closing connection has queued (through TLS, then its `close_notify`, for a TLS connection).
fn flush_closing(closing: &mut Closing, stream: &TcpStream, tls: Option<&Mutex<TlsConn>>) -> CloseStep {
    match tls {
        None => closing.flush(Instant::now(), |slices| stream.try_write_vectored(slices)),
        Some(tls) => tls::flush_closing(closing, Instant::now(), &mut lock(tls), &mut TryIo(stream)),
    }
}

/// The TLS state of a connection; a panic elsewhere while it was held leaves it usable (it holds no invariant
/// across calls that a panic could break halfway, and the proxy aborts on panic anyway).
fn lock(tls: &Mutex<TlsConn>) -> std::sync::MutexGuard<'_, TlsConn> {
    tls.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A tokio socket as the non-blocking `Read + Write` rustls drives (`WouldBlock` when it is not ready).
struct TryIo<'a>(&'a TcpStream);

impl Read for TryIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

impl Write for TryIo<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Runs the TLS handshake of a connection to a server; a failure says which server and why.
async fn tls_handshake(stream: &TcpStream, tls: &mut TlsConn) -> io::Result<()> {
    for _ in 0..HANDSHAKE_WAKEUPS {
        if tls.handshake(&mut TryIo(stream))? {
            return Ok(());
        }
        if tls.wants_write() {
            stream.writable().await?;
        } else {
            stream.readable().await?;
        }
    }
    Err(io::Error::new(
        io::ErrorKind::TimedOut,
        format!("TLS with {} failed: the handshake did not finish", tls.label()),
    ))
}

/// Sends the FIN after the last byte, the peer's unread input dropped first.
fn finish_close(stream: &TcpStream) {
    Closing::drain_before_fin(|buf| stream.try_read(buf));
    let _ = SockRef::from(stream).shutdown(Shutdown::Write);
}

/// Completes at `at` (never, for None); created lazily, so a disabled `select!` branch costs nothing.
async fn resume_accepting(at: Option<TokioInstant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn tokio_deadline(at: Option<Instant>) -> TokioInstant {
    match at {
        Some(at) => TokioInstant::from_std(at),
        None => TokioInstant::now() + FAR_FUTURE,
    }
}

/// Starts the I/O task of an established connection.
fn spawn_io(
    id: ConnId,
    stream: TcpStream,
    tls: Option<Box<TlsConn>>,
    sender: mpsc::Sender<Message>,
) -> (Io, TaskGuard) {
    let stream = Arc::new(stream);
    let tls = tls.map(|tls| Arc::new(Mutex::new(*tls)));
    let (reading, reading_rx) = watch::channel(true);
    let want_write = Arc::new(Notify::new());
    let unhanded = Arc::new(ReadCredit::default());
    let channels =
        IoChannels { reading: reading_rx, want_write: want_write.clone(), unhanded: unhanded.clone(), sender };
    let task = tokio::spawn(io_task(id, stream.clone(), tls.clone(), channels));
    (Io { stream, tls, reading, want_write, unhanded }, TaskGuard(task))
}

/// What an I/O task hears from and tells the engine task.
struct IoChannels {
    /// Whether the engine wants the connection read.
    reading: watch::Receiver<bool>,
    /// The engine task asks to be told when the socket is writable.
    want_write: Arc<Notify>,
    /// What this task read that the engine has not been handed yet.
    unhanded: Arc<ReadCredit>,
    /// To the engine task.
    sender: mpsc::Sender<Message>,
}

/// Reads the socket while the engine wants it read, and reports writability when asked.
async fn io_task(id: ConnId, stream: Arc<TcpStream>, tls: Option<Arc<Mutex<TlsConn>>>, channels: IoChannels) {
    let IoChannels { mut reading, want_write, unhanded, sender } = channels;
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut awaiting_writable = false;
    loop {
        let read_enabled = *reading.borrow_and_update();
        let over_credit = unhanded.unhanded.load(Ordering::Acquire) >= MAX_UNHANDED;
        let message = tokio::select! {
            changed = reading.changed() => match changed {
                Ok(()) => continue,
                Err(_) => return,
            },
            () = want_write.notified(), if !awaiting_writable => {
                awaiting_writable = true;
                continue;
            }
            ready = stream.writable(), if awaiting_writable => {
                awaiting_writable = false;
                match ready {
                    Ok(()) => Message::Writable(id),
                    Err(_) => Message::Closed(id),
                }
            }
            () = unhanded.handed.notified(), if over_credit => continue,
            ready = stream.readable(), if read_enabled && !over_credit => {
                if buf.capacity() - buf.len() < MIN_READ_ROOM {
                    buf.reserve(READ_CHUNK);
                }
                let received = ready.and_then(|()| match &tls {
                    None => stream.try_read_buf(&mut buf),
                    Some(tls) => {
                        let mut tls = lock(tls);
                        let received = tls.read(&mut TryIo(&stream), &mut buf);
                        // Records the socket did not take (handshake answers): the engine task writes them.
                        awaiting_writable |= tls.wants_write();
                        received
                    }
                });
                match received {
                    Ok(0) => Message::Closed(id),
                    Ok(n) => {
                        unhanded.unhanded.fetch_add(n, Ordering::AcqRel);
                        Message::Data(id, buf.split())
                    }
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                    Err(error) if error.kind() == io::ErrorKind::InvalidData => Message::TlsFailed(id, error),
                    Err(_) => Message::Closed(id),
                }
            }
        };
        let last = matches!(message, Message::Closed(_) | Message::TlsFailed(..));
        if sender.send(message).await.is_err() || last {
            return;
        }
    }
}
