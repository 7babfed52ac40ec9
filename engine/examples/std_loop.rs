//! The engine driven by a minimal loop over plain `std::net` non-blocking sockets: how to embed it in any
//! event loop. Run it with `cargo run -p redis-proxy-engine --example std_loop -- CONFIG.json`.
//!
//! Deliberately simple, not a production runtime: it has no poller, so every turn tries every socket and a turn
//! that moved nothing sleeps 1 ms; and `std` has no non-blocking connect, so backend connects block the loop
//! (for at most 1 s each). The real runtimes (`redis-proxy`, `redis-proxy-tokio`) do neither.

use bytes::{Buf, Bytes, BytesMut};
use redis_proxy_engine::{Action, Config, ConnId, ConnectFailure, Engine, Input};
use std::collections::{BTreeMap, VecDeque};
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

struct Conn {
    stream: TcpStream,
    buf: BytesMut,
    out: VecDeque<Bytes>,
    readable: bool,
    blocked: bool,
}

type Conns = BTreeMap<ConnId, Conn>;

fn main() -> io::Result<()> {
    let path = std::env::args().nth(1).ok_or_else(|| io::Error::other("usage: std_loop CONFIG.json"))?;
    let config = Config::from_json(&std::fs::read_to_string(&path)?).map_err(|e| io::Error::other(e.to_string()))?;
    let listener = TcpListener::bind((config.bind_address.as_str(), config.listen_port))?;
    listener.set_nonblocking(true)?;
    eprintln!("listening on {}", listener.local_addr()?);
    let mut engine = Engine::new(config, Instant::now());
    let mut conns = Conns::new();
    let mut scratch = vec![0u8; 64 * 1024];
    loop {
        let mut busy = false;
        while let Ok((stream, peer)) = listener.accept() {
            stream.set_nonblocking(true)?;
            stream.set_nodelay(true)?;
            let id = engine.accept(Instant::now(), peer);
            conns.insert(id, Conn::new(stream));
            perform(&mut engine, &mut conns);
            busy = true;
        }
        let ids: Vec<ConnId> = conns.keys().copied().collect();
        for id in ids {
            // Read: hand every chunk in, drain the engine, stop at WouldBlock, after 16 reads, or when paused.
            for _ in 0..16 {
                let Some(conn) = conns.get_mut(&id).filter(|c| c.readable) else { break };
                match conn.stream.read(&mut scratch) {
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Ok(0) | Err(_) => {
                        conns.remove(&id);
                        engine.handle_input(Instant::now(), Input::Closed { conn: id });
                    }
                    Ok(n) => {
                        conn.buf.extend_from_slice(&scratch[..n]);
                        engine.handle_input(Instant::now(), Input::Data { conn: id, buf: &mut conn.buf });
                    }
                }
                perform(&mut engine, &mut conns);
                busy = true;
            }
            // Write what the socket takes; tell the engine when the queue backs up and when it empties.
            let Some(conn) = conns.get_mut(&id) else { continue };
            let had = conn.out.len();
            let input = match flush(conn) {
                Err(_) => {
                    conns.remove(&id);
                    Input::Closed { conn: id }
                }
                Ok(()) if conn.blocked == conn.out.is_empty() => {
                    conn.blocked = !conn.blocked;
                    if conn.blocked {
                        Input::WriteBlocked { conn: id }
                    } else {
                        Input::Drained { conn: id }
                    }
                }
                Ok(()) => {
                    busy |= had != conn.out.len();
                    continue;
                }
            };
            engine.handle_input(Instant::now(), input);
            perform(&mut engine, &mut conns);
            busy = true;
        }
        let now = Instant::now();
        if engine.poll_timeout().is_some_and(|(at, _)| at <= now) {
            engine.handle_timeout(now);
            perform(&mut engine, &mut conns);
        } else if !busy {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Drains the engine's actions and events; reports connect results, which may produce more actions.
fn perform(engine: &mut Engine, conns: &mut Conns) {
    loop {
        let mut reports = Vec::new();
        while let Some(action) = engine.poll_action() {
            match action {
                Action::Send { conn, data } => conns.get_mut(&conn).map_or((), |c| c.out.push_back(data)),
                Action::Connect { conn, address } => {
                    let connected = connect(&address.host, address.port).map(|s| conns.insert(conn, Conn::new(s)));
                    reports.push((conn, connected.err().map(|e| e.to_string())));
                }
                Action::Close { conn } => {
                    if let Some(mut c) = conns.remove(&conn) {
                        let _ = flush(&mut c);
                        let _ = c.stream.shutdown(Shutdown::Both);
                    }
                }
                Action::SetReadable { conn, readable } => conns.get_mut(&conn).map_or((), |c| c.readable = readable),
            }
        }
        while let Some(event) = engine.poll_event() {
            eprintln!("{} {event}", event.level());
        }
        if reports.is_empty() {
            return;
        }
        for (conn, failure) in reports {
            let input = match &failure {
                None => Input::Connected { conn },
                Some(reason) => Input::ConnectFailed { conn, reason, failure: ConnectFailure::Other },
            };
            engine.handle_input(Instant::now(), input);
        }
    }
}

fn connect(host: &str, port: u16) -> io::Result<TcpStream> {
    let address = (host, port).to_socket_addrs()?.next().ok_or_else(|| io::Error::other("no address"))?;
    let stream = TcpStream::connect_timeout(&address, Duration::from_secs(1))?;
    stream.set_nonblocking(true)?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Writes the queue until it is empty or the socket would block (a real runtime would use `write_vectored`).
fn flush(conn: &mut Conn) -> io::Result<()> {
    while let Some(front) = conn.out.front_mut() {
        match conn.stream.write(front) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) if n == front.len() => drop(conn.out.pop_front()),
            Ok(n) => front.advance(n),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl Conn {
    fn new(stream: TcpStream) -> Conn {
        Conn { stream, buf: BytesMut::new(), out: VecDeque::new(), readable: true, blocked: false }
    }
}
