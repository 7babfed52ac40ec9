//! The event loop: accept, read until WouldBlock, hand bytes to the engine, perform its actions with vectored
//! writes, sleep until I/O or the engine's next timeout. No Redis semantics live here.

use bytes::{Buf, Bytes, BytesMut};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use redis_proxy_engine::{Action, Config, ConnId, Engine, Input, Level};
use redis_proxy_runtime_common::Logger;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

const LISTENER: Token = Token(usize::MAX);
const SIGNALS: Token = Token(usize::MAX - 1);
/// After SIGINT/SIGTERM, the longest the proxy waits for clients to get the replies they await.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// Free room a read buffer gets before a read (more while reads keep filling it, up to `MAX_READ_ROOM`).
const MIN_READ_ROOM: usize = 4 * 1024;
/// The most room a read buffer is grown to for one read, while a peer keeps sending.
const MAX_READ_ROOM: usize = 1024 * 1024;
/// Reads per connection per turn, so one busy peer cannot starve the others.
const READS_PER_TURN: usize = 16;
/// Buffers handed to one `writev`.
const MAX_IOVECS: usize = 64;
/// A read buffer that has held more than this is replaced by a fresh one once the engine has taken its frames,
/// so one large value does not pin its allocation for the rest of the connection's life.
const SHRINK_READ_BUF_AFTER: usize = 4 * 64 * 1024;

struct Socket {
    id: ConnId,
    stream: TcpStream,
    read_buf: BytesMut,
    /// The most `read_buf` has held since it was last replaced (its allocation is at least this large).
    read_buf_peak: usize,
    /// Room to give the read buffer before the next read: doubles while reads fill it.
    read_room: usize,
    out: VecDeque<Bytes>,
    connecting: bool,
    /// The engine wants this connection read.
    readable: bool,
    /// Reported WriteBlocked and not yet Drained.
    blocked: bool,
    /// Queued for a flush at the end of the turn.
    dirty: bool,
}

struct Runtime {
    poll: Poll,
    engine: Engine,
    sockets: Vec<Option<Socket>>,
    dirty: Vec<usize>,
    /// Connections that may still hold unread bytes (turn cap reached, or reading resumed).
    read_again: Vec<usize>,
    logger: Logger,
}

/// Runs the proxy until a fatal error (binding the listen address, or the poller failing).
pub fn run(config: Config, logger: Logger) -> io::Result<()> {
    let address = (config.bind_address.as_str(), config.listen_port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::other(format!("cannot resolve bind_address {}", config.bind_address)))?;
    let mut listener =
        TcpListener::bind(address).map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {address}: {e}")))?;
    let poll = Poll::new()?;
    poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
    let mut signals = Signals::new([SIGINT, SIGTERM])?;
    poll.registry().register(&mut signals, SIGNALS, Interest::READABLE)?;
    logger.listening(address, &config.servers);
    let mut runtime = Runtime {
        poll,
        engine: Engine::new(config, Instant::now()),
        sockets: Vec::new(),
        dirty: Vec::new(),
        read_again: Vec::new(),
        logger,
    };
    runtime.event_loop(listener, signals)
}

impl Runtime {
    /// Runs until the poller fails, or until a shutdown (SIGINT/SIGTERM) has closed every client or run out of
    /// time; a second signal ends the wait.
    fn event_loop(&mut self, mut listener: TcpListener, mut signals: Signals) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut shutdown_deadline: Option<Instant> = None;
        loop {
            self.drain_engine();
            self.flush_dirty();
            let now = Instant::now();
            if shutdown_deadline.is_some_and(|at| self.engine.client_count() == 0 || now >= at) {
                self.logger.log(Level::Info, &"shutdown complete");
                return Ok(());
            }
            let deadline = match (self.engine.poll_timeout().map(|(at, _)| at), shutdown_deadline) {
                (Some(engine), Some(shutdown)) => Some(engine.min(shutdown)),
                (engine, shutdown) => engine.or(shutdown),
            };
            let timeout = if !self.read_again.is_empty() {
                Some(Duration::ZERO)
            } else {
                // Round up: waking a hair early would only spin back into the poller.
                deadline.map(|at| at.saturating_duration_since(now) + Duration::from_micros(999))
            };
            if let Err(error) = self.poll.poll(&mut events, timeout) {
                if error.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(error);
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_all(&listener),
                    SIGNALS => {
                        if signals.pending().next().is_none() {
                            continue;
                        }
                        if shutdown_deadline.is_some() {
                            self.logger.log(Level::Warn, &"second signal: exiting without waiting for clients");
                            return Ok(());
                        }
                        self.logger.log(Level::Info, &"signal received: closing clients once their replies are out");
                        let _ = self.poll.registry().deregister(&mut listener);
                        self.engine.begin_shutdown(Instant::now());
                        shutdown_deadline = Some(Instant::now() + SHUTDOWN_GRACE);
                    }
                    Token(index) => {
                        if event.is_writable() || event.is_error() || event.is_write_closed() {
                            self.on_writable(index);
                        }
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.read_socket(index);
                        }
                    }
                }
            }
            for index in std::mem::take(&mut self.read_again) {
                self.read_socket(index);
            }
            let now = Instant::now();
            if self.engine.poll_timeout().is_some_and(|(at, _)| at <= now) {
                self.engine.handle_timeout(now);
            }
        }
    }

    fn accept_all(&mut self, listener: &TcpListener) {
        loop {
            match listener.accept() {
                Ok((mut stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let id = self.engine.accept(Instant::now(), peer);
                    let registered = self.poll.registry().register(
                        &mut stream,
                        Token(id.index()),
                        Interest::READABLE | Interest::WRITABLE,
                    );
                    if let Err(error) = registered {
                        self.logger.log(Level::Error, &format!("cannot register client {peer}: {error}"));
                        self.engine.handle_input(Instant::now(), Input::Closed { conn: id });
                        continue;
                    }
                    self.insert(Socket::new(id, stream, false));
                    self.drain_engine();
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

    fn insert(&mut self, socket: Socket) {
        let index = socket.id.index();
        if self.sockets.len() <= index {
            self.sockets.resize_with(index + 1, || None);
        }
        self.sockets[index] = Some(socket);
    }

    fn socket(&mut self, index: usize) -> Option<&mut Socket> {
        self.sockets.get_mut(index).and_then(Option::as_mut)
    }

    fn on_writable(&mut self, index: usize) {
        let Some(socket) = self.socket(index) else { return };
        let id = socket.id;
        if socket.connecting {
            match connect_result(&socket.stream) {
                None => return,
                Some(Ok(())) => {
                    socket.connecting = false;
                    let _ = socket.stream.set_nodelay(true);
                    self.engine.handle_input(Instant::now(), Input::Connected { conn: id });
                    self.drain_engine();
                }
                Some(Err(error)) => {
                    self.forget(index);
                    let reason = error.to_string();
                    self.engine.handle_input(Instant::now(), Input::ConnectFailed { conn: id, reason: &reason });
                    self.drain_engine();
                    return;
                }
            }
        }
        self.flush(index);
    }

    fn read_socket(&mut self, index: usize) {
        for _ in 0..READS_PER_TURN {
            let Some(socket) = self.sockets.get_mut(index).and_then(Option::as_mut) else { return };
            if !socket.readable || socket.connecting {
                return;
            }
            let id = socket.id;
            if socket.read_buf.capacity() - socket.read_buf.len() < MIN_READ_ROOM {
                socket.read_buf.reserve(socket.read_room);
            }
            let room = socket.read_buf.capacity() - socket.read_buf.len();
            match recv_into(&socket.stream, &mut socket.read_buf) {
                Ok(0) => return self.closed_by_peer(index),
                Ok(n) => {
                    socket.read_room = if n == room { (room * 2).min(MAX_READ_ROOM) } else { MIN_READ_ROOM };
                    socket.read_buf_peak = socket.read_buf_peak.max(socket.read_buf.len());
                    let mut buf = std::mem::take(&mut socket.read_buf);
                    self.engine.handle_input(Instant::now(), Input::Data { conn: id, buf: &mut buf });
                    if let Some(socket) = self.socket(index).filter(|s| s.id == id) {
                        if buf.is_empty() {
                            // Nothing partial is left: let go of the allocation (the frames split off keep it
                            // alive only until they are written), so an idle connection holds no buffer.
                            buf = BytesMut::new();
                            socket.read_buf_peak = 0;
                        } else if socket.read_buf_peak > SHRINK_READ_BUF_AFTER && buf.len() <= MIN_READ_ROOM {
                            // The frames split off share the large allocation; copying the small rest lets it go
                            // once they are written.
                            buf = BytesMut::from(&buf[..]);
                            socket.read_buf_peak = buf.len();
                        }
                        socket.read_buf = buf;
                    }
                    self.drain_engine();
                    if n < room {
                        return;
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return self.closed_by_peer(index),
            }
        }
        self.read_again.push(index);
    }

    fn closed_by_peer(&mut self, index: usize) {
        if let Some(socket) = self.forget(index) {
            self.engine.handle_input(Instant::now(), Input::Closed { conn: socket.id });
            self.drain_engine();
        }
    }

    fn forget(&mut self, index: usize) -> Option<Socket> {
        let mut socket = self.sockets.get_mut(index)?.take()?;
        let _ = self.poll.registry().deregister(&mut socket.stream);
        Some(socket)
    }

    /// Performs every pending action and logs every pending event.
    fn drain_engine(&mut self) {
        while let Some(action) = self.engine.poll_action() {
            match action {
                Action::Send { conn, data } => {
                    if let Some(socket) = self.socket(conn.index()).filter(|s| s.id == conn) {
                        socket.out.push_back(data);
                        if !socket.dirty {
                            socket.dirty = true;
                            self.dirty.push(conn.index());
                        }
                    }
                }
                Action::Connect { conn, address } => self.connect(conn, &address.host, address.port),
                Action::Close { conn } => {
                    if self.socket(conn.index()).is_some_and(|s| s.id == conn) {
                        self.flush(conn.index());
                        if let Some(socket) = self.forget(conn.index()) {
                            let _ = socket.stream.shutdown(std::net::Shutdown::Both);
                        }
                    }
                }
                Action::SetReadable { conn, readable } => {
                    if let Some(socket) = self.socket(conn.index()).filter(|s| s.id == conn) {
                        socket.readable = readable;
                        if readable {
                            self.read_again.push(conn.index());
                        }
                    }
                }
            }
        }
        while let Some(event) = self.engine.poll_event() {
            self.logger.log(event.level(), &event);
        }
    }

    fn connect(&mut self, conn: ConnId, host: &str, port: u16) {
        let result = resolve(host, port).and_then(|address| {
            let mut stream = TcpStream::connect(address)?;
            self.poll.registry().register(&mut stream, Token(conn.index()), Interest::READABLE | Interest::WRITABLE)?;
            Ok(stream)
        });
        match result {
            Ok(stream) => self.insert(Socket::new(conn, stream, true)),
            Err(error) => {
                let reason = error.to_string();
                self.engine.handle_input(Instant::now(), Input::ConnectFailed { conn, reason: &reason });
            }
        }
    }

    fn flush_dirty(&mut self) {
        for index in std::mem::take(&mut self.dirty) {
            if let Some(socket) = self.socket(index) {
                socket.dirty = false;
                self.flush(index);
            }
        }
    }

    /// Writes as much of the queue as the socket takes, in vectored writes.
    fn flush(&mut self, index: usize) {
        let Some(socket) = self.socket(index) else { return };
        if socket.connecting {
            return;
        }
        let id = socket.id;
        let mut failed = false;
        while !socket.out.is_empty() {
            // This runs once per reply written: no heap allocation, and a plain write for the common single
            // buffer (most client replies at pipeline depth 1).
            let result = if socket.out.len() == 1 {
                socket.stream.write(&socket.out[0])
            } else {
                let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
                let mut count = 0;
                for (slot, data) in slices.iter_mut().zip(socket.out.iter()) {
                    *slot = IoSlice::new(data);
                    count += 1;
                }
                socket.stream.write_vectored(&slices[..count])
            };
            match result {
                Ok(0) => {
                    failed = true;
                    break;
                }
                Ok(mut written) => {
                    while written > 0 {
                        let front = socket.out.front_mut().expect("written bytes came from the queue");
                        if written >= front.len() {
                            written -= front.len();
                            socket.out.pop_front();
                        } else {
                            front.advance(written);
                            written = 0;
                        }
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            return self.closed_by_peer(index);
        }
        let now_blocked = !socket.out.is_empty();
        if now_blocked != socket.blocked {
            socket.blocked = now_blocked;
            let input = if now_blocked { Input::WriteBlocked { conn: id } } else { Input::Drained { conn: id } };
            self.engine.handle_input(Instant::now(), input);
            self.drain_engine();
        }
    }
}

impl Socket {
    fn new(id: ConnId, stream: TcpStream, connecting: bool) -> Socket {
        Socket {
            id,
            stream,
            read_buf: BytesMut::new(),
            read_buf_peak: 0,
            read_room: MIN_READ_ROOM,
            out: VecDeque::new(),
            connecting,
            readable: true,
            blocked: false,
            dirty: false,
        }
    }
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
