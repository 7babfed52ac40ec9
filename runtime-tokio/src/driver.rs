//! The engine task and the per-connection I/O tasks. No Redis semantics live here: bytes in, actions out, time.

use bytes::{Buf, Bytes, BytesMut};
use redis_proxy_engine::{Action, Config, ConnId, Engine, Event, Input};
use socket2::SockRef;
use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, IoSlice};
use std::net::{Shutdown, SocketAddr};
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc, watch, Notify};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant as TokioInstant;

/// Room a connection's read buffer gets when it runs low.
const READ_CHUNK: usize = 64 * 1024;
/// Below this much room, the read buffer grows (to `READ_CHUNK`) before the next read.
const MIN_READ_ROOM: usize = 4 * 1024;
/// Buffers handed to one `writev`.
const MAX_IOVECS: usize = 64;
/// Messages the engine task takes from the channel per turn, before it flushes what they produced.
const MESSAGES_PER_TURN: usize = 256;
/// Messages in flight from the I/O tasks to the engine task before the I/O tasks wait.
const CHANNEL_CAPACITY: usize = 1024;
/// How long a closed connection may take to write what was still queued for it.
const CLOSE_LINGER: Duration = Duration::from_secs(1);
/// Pause after a failed `accept` (e.g. out of file descriptors) before accepting again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// A deadline far enough away to stand for "none" (tokio's timer cannot be left unarmed).
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365);

/// What an I/O or connect task tells the engine task.
enum Message {
    /// Bytes read from the connection.
    Data(ConnId, BytesMut),
    /// The peer closed the connection, or reading failed.
    Closed(ConnId),
    /// The socket takes writes again after a `try_write` left bytes queued.
    Writable(ConnId),
    /// A connect the engine asked for succeeded.
    Connected(ConnId, TcpStream),
    /// A connect the engine asked for failed.
    ConnectFailed(ConnId, String),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Client,
    Backend,
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
    /// Whether the I/O task should read the socket.
    reading: watch::Sender<bool>,
    /// Asks the I/O task to report when the socket is writable.
    want_write: Arc<Notify>,
}

struct Socket {
    id: ConnId,
    kind: Kind,
    /// None while connecting.
    io: Option<Io>,
    /// The connect task, then the I/O task.
    _task: TaskGuard,
    out: VecDeque<Bytes>,
    /// Bytes read but not yet handed in (a partial frame, or data read just before a pause took effect).
    read_buf: BytesMut,
    /// The engine wants this connection read.
    readable: bool,
    /// Reported WriteBlocked and not yet Drained.
    blocked: bool,
    /// Queued for a flush at the end of the turn.
    dirty: bool,
}

/// The task that owns the engine.
pub(crate) struct Driver {
    engine: Engine,
    events: broadcast::Sender<Event>,
    sockets: Vec<Option<Socket>>,
    dirty: Vec<usize>,
    /// Connections whose reading resumed with bytes already buffered.
    resumed: Vec<usize>,
    sender: mpsc::Sender<Message>,
    receiver: mpsc::Receiver<Message>,
    /// Connections closed with bytes still queued, finishing in the background.
    closers: JoinSet<()>,
    /// Set once shutdown began: until then clients close after the grace period's end.
    shutdown_deadline: Option<TokioInstant>,
}

impl Driver {
    pub(crate) fn new(config: Config, events: broadcast::Sender<Event>) -> Driver {
        let (sender, receiver) = mpsc::channel(CHANNEL_CAPACITY);
        Driver {
            engine: Engine::new(config, Instant::now()),
            events,
            sockets: Vec::new(),
            dirty: Vec::new(),
            resumed: Vec::new(),
            sender,
            receiver,
            closers: JoinSet::new(),
            shutdown_deadline: None,
        }
    }

    pub(crate) async fn run(mut self, listener: TcpListener, shutdown: impl Future<Output = ()>) -> io::Result<()> {
        let mut shutdown = pin!(shutdown);
        let mut timer = pin!(tokio::time::sleep(FAR_FUTURE));
        let mut armed = None;
        let mut batch = Vec::with_capacity(MESSAGES_PER_TURN);
        // After a failed accept (e.g. out of file descriptors), accepting pauses until then; traffic goes on.
        let mut accept_paused_until = None;
        loop {
            self.finish_turn();
            let deadline = self.engine.poll_timeout().map(|(at, _)| at);
            if deadline != armed {
                armed = deadline;
                timer.as_mut().reset(tokio_deadline(deadline));
            }
            tokio::select! {
                () = &mut shutdown => break,
                _ = self.receiver.recv_many(&mut batch, MESSAGES_PER_TURN) => {
                    for message in batch.drain(..) {
                        self.handle_message(message);
                    }
                }
                accepted = listener.accept(), if accept_paused_until.is_none() => match accepted {
                    Ok((stream, peer)) => self.accepted(stream, peer),
                    Err(_) => accept_paused_until = Some(TokioInstant::now() + ACCEPT_BACKOFF),
                },
                () = resume_accepting(accept_paused_until), if accept_paused_until.is_some() => {
                    accept_paused_until = None;
                }
                () = &mut timer => {}
            }
            self.check_timer();
        }
        drop(listener);
        self.drain_for_shutdown(timer).await;
        Ok(())
    }

    /// Lets the engine finish: it stops reading clients and closes each once its replies are out; clients still
    /// waiting when the grace period ends are closed then. Every close writes what is queued, sends a FIN and
    /// waits (within the grace period) for the client's own close.
    async fn drain_for_shutdown(&mut self, mut timer: std::pin::Pin<&mut tokio::time::Sleep>) {
        let hard_deadline = Instant::now() + crate::SHUTDOWN_GRACE;
        self.shutdown_deadline = Some(TokioInstant::from_std(hard_deadline));
        self.engine.begin_shutdown(Instant::now());
        let mut batch = Vec::with_capacity(MESSAGES_PER_TURN);
        loop {
            self.finish_turn();
            if self.engine.client_count() == 0 || Instant::now() >= hard_deadline {
                break;
            }
            let engine_deadline = self.engine.poll_timeout().map_or(hard_deadline, |(at, _)| at);
            timer.as_mut().reset(TokioInstant::from_std(engine_deadline.min(hard_deadline)));
            tokio::select! {
                _ = self.receiver.recv_many(&mut batch, MESSAGES_PER_TURN) => {
                    for message in batch.drain(..) {
                        self.handle_message(message);
                    }
                }
                () = &mut timer => {}
            }
            self.check_timer();
        }
        let deadline = TokioInstant::from_std(hard_deadline);
        for index in 0..self.sockets.len() {
            let Some(socket) = self.sockets[index].take() else { continue };
            if let (Kind::Client, Some(io)) = (socket.kind, socket.io) {
                self.closers.spawn(close_gracefully(io.stream, socket.out, deadline, true));
            }
        }
        while self.closers.join_next().await.is_some() {}
    }

    /// Performs what the engine asked for, handing in data buffered for connections whose reading resumed,
    /// then writes every connection that got bytes this turn.
    fn finish_turn(&mut self) {
        self.drain_engine();
        while let Some(index) = self.resumed.pop() {
            self.hand_in_buffered(index);
        }
        while !self.dirty.is_empty() {
            for index in std::mem::take(&mut self.dirty) {
                if let Some(socket) = self.socket(index) {
                    socket.dirty = false;
                    self.flush(index);
                }
            }
        }
        while self.closers.try_join_next().is_some() {}
    }

    /// Calls `handle_timeout` if the engine's deadline has passed by the clock (not by which branch woke us:
    /// a timer polled with the cooperative budget spent reports Pending even when due).
    fn check_timer(&mut self) {
        let now = Instant::now();
        if self.engine.poll_timeout().is_some_and(|(at, _)| at <= now) {
            self.engine.handle_timeout(now);
            self.drain_engine();
        }
    }

    fn handle_message(&mut self, message: Message) {
        match message {
            Message::Data(conn, chunk) => {
                let Some(socket) = self.socket_of(conn) else { return };
                if socket.read_buf.is_empty() {
                    socket.read_buf = chunk;
                } else {
                    // O(1) when the chunk continues the buffer's allocation, as consecutive reads usually do.
                    socket.read_buf.unsplit(chunk);
                }
                if socket.readable {
                    self.hand_in_buffered(conn.index());
                }
            }
            Message::Closed(conn) => self.closed_by_peer(conn),
            Message::Writable(conn) => {
                if self.socket_of(conn).is_some() {
                    self.flush(conn.index());
                }
            }
            Message::Connected(conn, stream) => {
                let sender = self.sender.clone();
                let Some(socket) = self.socket_of(conn).filter(|s| s.io.is_none()) else { return };
                let (io, task) = spawn_io(conn, stream, sender);
                socket.io = Some(io);
                socket._task = task;
                self.engine.handle_input(Instant::now(), Input::Connected { conn });
                self.drain_engine();
                self.mark_dirty(conn.index());
            }
            Message::ConnectFailed(conn, reason) => {
                if self.socket_of(conn).is_some() {
                    self.sockets[conn.index()] = None;
                    self.engine.handle_input(Instant::now(), Input::ConnectFailed { conn, reason: &reason });
                    self.drain_engine();
                }
            }
        }
    }

    fn accepted(&mut self, stream: TcpStream, peer: SocketAddr) {
        let _ = stream.set_nodelay(true);
        let id = self.engine.accept(Instant::now(), peer);
        let (io, task) = spawn_io(id, stream, self.sender.clone());
        self.insert(Socket::new(id, Kind::Client, Some(io), task));
        self.drain_engine();
    }

    fn hand_in_buffered(&mut self, index: usize) {
        let Some(socket) = self.socket(index) else { return };
        if !socket.readable || socket.read_buf.is_empty() {
            return;
        }
        let id = socket.id;
        let mut buf = std::mem::take(&mut socket.read_buf);
        self.engine.handle_input(Instant::now(), Input::Data { conn: id, buf: &mut buf });
        if let Some(socket) = self.socket_of(id) {
            socket.read_buf = buf;
        }
        self.drain_engine();
    }

    fn closed_by_peer(&mut self, conn: ConnId) {
        if self.socket_of(conn).is_some() {
            self.sockets[conn.index()] = None;
            self.engine.handle_input(Instant::now(), Input::Closed { conn });
            self.drain_engine();
        }
    }

    /// Performs every pending action and publishes every pending event.
    fn drain_engine(&mut self) {
        while let Some(action) = self.engine.poll_action() {
            match action {
                Action::Send { conn, data } => {
                    let Some(socket) = self.socket_of(conn) else { continue };
                    socket.out.push_back(data);
                    self.mark_dirty(conn.index());
                }
                Action::Connect { conn, address } => {
                    let sender = self.sender.clone();
                    let task = tokio::spawn(async move {
                        let message = match TcpStream::connect((address.host.as_str(), address.port)).await {
                            Ok(stream) => {
                                let _ = stream.set_nodelay(true);
                                Message::Connected(conn, stream)
                            }
                            Err(error) => Message::ConnectFailed(conn, error.to_string()),
                        };
                        let _ = sender.send(message).await;
                    });
                    self.insert(Socket::new(conn, Kind::Backend, None, TaskGuard(task)));
                }
                Action::Close { conn } => self.close(conn),
                Action::SetReadable { conn, readable } => {
                    let Some(socket) = self.socket_of(conn) else { continue };
                    socket.readable = readable;
                    if let Some(io) = &socket.io {
                        io.reading.send_replace(readable);
                    }
                    if readable && !socket.read_buf.is_empty() {
                        self.resumed.push(conn.index());
                    }
                }
            }
        }
        while let Some(event) = self.engine.poll_event() {
            // No subscriber is not an error.
            let _ = self.events.send(event);
        }
    }

    /// Writes what the socket takes now; what is left is written in the background (for at most
    /// `CLOSE_LINGER`) before the FIN.
    fn close(&mut self, conn: ConnId) {
        if self.socket_of(conn).is_none() {
            return;
        }
        let mut socket = self.sockets[conn.index()].take().expect("checked above");
        let Some(io) = socket.io.take() else { return };
        if let (Some(deadline), Kind::Client) = (self.shutdown_deadline, socket.kind) {
            // Shutting down: the client gets its replies, a FIN, and time to close its side (no reset).
            self.closers.spawn(close_gracefully(io.stream, socket.out, deadline, true));
            return;
        }
        let _ = write_now(&io.stream, &mut socket.out);
        if socket.out.is_empty() {
            let _ = SockRef::from(&*io.stream).shutdown(Shutdown::Write);
        } else {
            let deadline = TokioInstant::now() + CLOSE_LINGER;
            self.closers.spawn(close_gracefully(io.stream, socket.out, deadline, false));
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

    /// The socket of `conn`, unless its slot now belongs to a newer connection.
    fn socket_of(&mut self, conn: ConnId) -> Option<&mut Socket> {
        self.socket(conn.index()).filter(|s| s.id == conn)
    }

    fn mark_dirty(&mut self, index: usize) {
        if let Some(socket) = self.socket(index) {
            if !socket.dirty {
                socket.dirty = true;
                self.dirty.push(index);
            }
        }
    }

    /// Writes as much of the queue as the socket takes; reports WriteBlocked / Drained on changes.
    fn flush(&mut self, index: usize) {
        let Some(socket) = self.socket(index) else { return };
        let Some(io) = &socket.io else { return };
        let id = socket.id;
        if write_now(&io.stream, &mut socket.out).is_err() {
            return self.closed_by_peer(id);
        }
        let now_blocked = !socket.out.is_empty();
        if now_blocked {
            io.want_write.notify_one();
        }
        if now_blocked != socket.blocked {
            socket.blocked = now_blocked;
            let input = if now_blocked { Input::WriteBlocked { conn: id } } else { Input::Drained { conn: id } };
            self.engine.handle_input(Instant::now(), input);
            self.drain_engine();
        }
    }
}

impl Socket {
    fn new(id: ConnId, kind: Kind, io: Option<Io>, task: TaskGuard) -> Socket {
        Socket {
            id,
            kind,
            io,
            _task: task,
            out: VecDeque::new(),
            read_buf: BytesMut::new(),
            readable: true,
            blocked: false,
            dirty: false,
        }
    }
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

/// Writes from the front of `out` with vectored writes until it is empty or the socket would block.
fn write_now(stream: &TcpStream, out: &mut VecDeque<Bytes>) -> io::Result<()> {
    while !out.is_empty() {
        let slices: Vec<IoSlice<'_>> = out.iter().take(MAX_IOVECS).map(|b| IoSlice::new(b)).collect();
        match stream.try_write_vectored(&slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(mut written) => {
                while written > 0 {
                    let front = out.front_mut().expect("written bytes came from the queue");
                    if written >= front.len() {
                        written -= front.len();
                        out.pop_front();
                    } else {
                        front.advance(written);
                        written = 0;
                    }
                }
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// Writes `out` (until `deadline`), sends FIN, and with `await_peer` reads and discards until the peer closes its
/// side too, so the close is an orderly FIN exchange rather than a reset.
async fn close_gracefully(stream: Arc<TcpStream>, mut out: VecDeque<Bytes>, deadline: TokioInstant, await_peer: bool) {
    let finish = async {
        while !out.is_empty() {
            stream.writable().await?;
            write_now(&stream, &mut out)?;
        }
        SockRef::from(&*stream).shutdown(Shutdown::Write)?;
        if !await_peer {
            return Ok(());
        }
        let mut sink = [0u8; 4096];
        loop {
            stream.readable().await?;
            match stream.try_read(&mut sink) {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
    };
    let _ = tokio::time::timeout_at(deadline, finish).await;
}

/// Starts the I/O task of an established connection.
fn spawn_io(id: ConnId, stream: TcpStream, sender: mpsc::Sender<Message>) -> (Io, TaskGuard) {
    let stream = Arc::new(stream);
    let (reading, reading_rx) = watch::channel(true);
    let want_write = Arc::new(Notify::new());
    let task = tokio::spawn(io_task(id, stream.clone(), reading_rx, want_write.clone(), sender));
    (Io { stream, reading, want_write }, TaskGuard(task))
}

/// Reads the socket while the engine wants it read, and reports writability when asked.
async fn io_task(
    id: ConnId,
    stream: Arc<TcpStream>,
    mut reading: watch::Receiver<bool>,
    want_write: Arc<Notify>,
    sender: mpsc::Sender<Message>,
) {
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut awaiting_writable = false;
    loop {
        let read_enabled = *reading.borrow_and_update();
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
            ready = stream.readable(), if read_enabled => {
                if buf.capacity() - buf.len() < MIN_READ_ROOM {
                    buf.reserve(READ_CHUNK);
                }
                match ready.and_then(|()| stream.try_read_buf(&mut buf)) {
                    Ok(0) => Message::Closed(id),
                    Ok(_) => Message::Data(id, buf.split()),
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => Message::Closed(id),
                }
            }
        };
        let last = matches!(message, Message::Closed(_));
        if sender.send(message).await.is_err() || last {
            return;
        }
    }
}
