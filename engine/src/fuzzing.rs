//! Fuzz target bodies, shared by the cargo-fuzz targets in `fuzz/` and by the test that replays their corpus.
//!
//! Each function takes the raw fuzz input and panics when an invariant breaks. Compiled for the crate's own
//! tests and with the `fuzzing` feature; not part of the engine's API otherwise.
//!
//! - [`resp_request`] and [`resp_reply`]: the input is `n`, `n` chunk sizes (`n` is the first byte mod 8), then
//!   the payload. The payload is scanned whole and in chunks of the given sizes (cycled), with default and with
//!   tiny [`Limits`]; both scans must give the same frames up to the first error, and both must fail or neither.
//! - [`engine_client_bytes`]: the input is decoded with `arbitrary` into a configuration and a list of
//!   operations (clients connecting, sending bytes or commands, backends connecting, failing, answering ...) run
//!   against an [`Engine`] on a fake clock, checking the connection contract after every input.

use crate::conn::ConnId;
use crate::resp::{Limits, ProtocolError, ReplyScanner, Request, RequestScanner};
use crate::{Action, Config, Engine, Event, Input};
use arbitrary::{Arbitrary, Unstructured};
use bytes::{Bytes, BytesMut};
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Limits small enough for a fuzzer to reach every bound with short inputs.
pub fn tiny_limits() -> Limits {
    Limits { max_bulk_len: 16, max_multibulk_len: 4, max_inline_len: 24, max_request_len: 64 }
}

/// Splits a scanner target's input into chunk sizes (each 1..=256) and the payload.
fn chunking(data: &[u8]) -> (Vec<usize>, &[u8]) {
    let Some((&n, rest)) = data.split_first() else { return (Vec::new(), data) };
    let n = usize::from(n % 8).min(rest.len());
    let (sizes, payload) = rest.split_at(n);
    (sizes.iter().map(|&s| usize::from(s) + 1).collect(), payload)
}

/// Cuts `payload` into consecutive chunks of the given sizes, cycled; one chunk when there are no sizes.
fn chunks<'a>(payload: &'a [u8], sizes: &[usize]) -> Vec<&'a [u8]> {
    if sizes.is_empty() {
        return vec![payload];
    }
    let mut out = Vec::new();
    let mut at = 0;
    for &size in sizes.iter().cycle() {
        if at >= payload.len() {
            break;
        }
        let end = (at + size).min(payload.len());
        out.push(&payload[at..end]);
        at = end;
    }
    out
}

/// What one scan of a stream gave: the frames up to the first error, and that error.
struct Scan<T> {
    frames: Vec<T>,
    error: Option<ProtocolError>,
}

fn scan<T>(pieces: &[&[u8]], mut next: impl FnMut(&mut BytesMut) -> Result<Option<T>, ProtocolError>) -> Scan<T> {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for piece in pieces {
        buf.extend_from_slice(piece);
        loop {
            match next(&mut buf) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(error) => return Scan { frames, error: Some(error) },
            }
        }
    }
    Scan { frames, error: None }
}

/// Requests: the same frames whole and chunked, every frame self-contained.
pub fn resp_request(data: &[u8]) {
    let (sizes, payload) = chunking(data);
    for limits in [Limits::default(), tiny_limits()] {
        let mut scanner = RequestScanner::new(limits);
        let whole = scan(&[payload], |buf| scanner.next_request(buf));
        let mut scanner = RequestScanner::new(limits);
        let chunked = scan(&chunks(payload, &sizes), |buf| scanner.next_request(buf));
        assert_eq!(whole.frames, chunked.frames, "frames differ between a whole and a chunked scan");
        assert_eq!(whole.error, chunked.error, "errors differ between a whole and a chunked scan");
        for request in &whole.frames {
            if request.is_empty() {
                continue;
            }
            // The frame the engine forwards is one complete request by itself, with the same arguments.
            let mut alone = BytesMut::from(&request.frame()[..]);
            let again = RequestScanner::new(Limits::default()).next_request(&mut alone);
            assert_eq!(again.as_ref().ok().and_then(Option::as_ref), Some(request), "a frame does not rescan");
            assert!(alone.is_empty(), "a request frame holds more than one request");
        }
    }
}

/// Replies: the same frames whole and chunked, and the frames are exactly the consumed bytes.
pub fn resp_reply(data: &[u8]) {
    let (sizes, payload) = chunking(data);
    for limits in [Limits::default(), tiny_limits()] {
        let mut scanner = ReplyScanner::new(limits);
        let whole = scan(&[payload], |buf| scanner.next_reply(buf));
        let mut scanner = ReplyScanner::new(limits);
        let chunked = scan(&chunks(payload, &sizes), |buf| scanner.next_reply(buf));
        assert_eq!(whole.frames, chunked.frames, "frames differ between a whole and a chunked scan");
        assert_eq!(whole.error, chunked.error, "errors differ between a whole and a chunked scan");
        let consumed: Vec<u8> = whole.frames.concat();
        assert!(payload.starts_with(&consumed), "reply frames are not the stream's bytes in order");
        for frame in &whole.frames {
            let mut alone = BytesMut::from(&frame[..]);
            let again = ReplyScanner::new(limits).next_reply(&mut alone);
            assert_eq!(again, Ok(Some(frame.clone())), "a reply frame does not rescan");
        }
    }
}

// ---------------------------------------------------------------------------------------------- engine

/// Commands the fuzzer may send by number (as well as raw bytes): one of each kind of handling.
const COMMANDS: &[&str] = &[
    "PING",
    "GET",
    "SET",
    "MGET",
    "DEL",
    "INCR",
    "MULTI",
    "EXEC",
    "DISCARD",
    "WATCH",
    "UNWATCH",
    "SELECT",
    "SUBSCRIBE",
    "UNSUBSCRIBE",
    "PSUBSCRIBE",
    "MONITOR",
    "BLPOP",
    "QUIT",
    "RESET",
    "HELLO",
    "AUTH",
    "CLIENT",
    "INFO",
    "REPLICAOF",
    "CONFIG",
    "PUBLISH",
    "ECHO",
    "EVAL",
    "WAIT",
    "SHUTDOWN",
    "FLUSHALL",
    "NOSUCHCOMMAND",
];

const ARGS: &[&str] = &["k", "0", "1", "2", "ch", "SETNAME", "TRACKING", "on", "off", "NO", "ONE", "3", "v", "SET"];

#[derive(Arbitrary, Debug)]
struct Setup {
    servers: u8,
    reads_to_slaves: bool,
    pool_size: u8,
    max_pipeline: u8,
    max_clients: u8,
    hold_budget: u8,
    small_limits: bool,
}

/// One step of the engine scenario; decoded by [`Op::decode`] from a simple byte format (a tag byte, then its
/// fields, byte strings as a length byte and the bytes) so that seeds are easy to write by hand.
#[derive(Debug)]
enum Op {
    Accept,
    ClientBytes { client: u8, data: Vec<u8> },
    ClientCommand { client: u8, command: u8, args: Vec<u8>, inline: bool },
    ClientClosed { client: u8 },
    WriteBlocked { client: u8 },
    Drained { client: u8 },
    Advance { ms: u16 },
    Timeout,
    Connected { backend: u8 },
    ConnectFailed { backend: u8 },
    BackendClosed { backend: u8 },
    BackendBytes { backend: u8, data: Vec<u8> },
    BackendAnswer { backend: u8, count: u8, flavor: u8 },
    Stale { conn: u8, kind: u8 },
}

impl Op {
    fn decode(u: &mut Unstructured<'_>) -> arbitrary::Result<Op> {
        let tag: u8 = u.arbitrary()?;
        let byte = |u: &mut Unstructured<'_>| u.arbitrary::<u8>();
        let bytes = |u: &mut Unstructured<'_>| -> arbitrary::Result<Vec<u8>> {
            let len = u.arbitrary::<u8>()?;
            Ok(u.bytes(usize::from(len).min(u.len()))?.to_vec())
        };
        Ok(match tag % 14 {
            0 => Op::Accept,
            1 => Op::ClientBytes { client: byte(u)?, data: bytes(u)? },
            2 => Op::ClientCommand { client: byte(u)?, command: byte(u)?, args: bytes(u)?, inline: u.arbitrary()? },
            3 => Op::ClientClosed { client: byte(u)? },
            4 => Op::WriteBlocked { client: byte(u)? },
            5 => Op::Drained { client: byte(u)? },
            6 => Op::Advance { ms: u.arbitrary()? },
            7 => Op::Timeout,
            8 => Op::Connected { backend: byte(u)? },
            9 => Op::ConnectFailed { backend: byte(u)? },
            10 => Op::BackendClosed { backend: byte(u)? },
            11 => Op::BackendBytes { backend: byte(u)?, data: bytes(u)? },
            12 => Op::BackendAnswer { backend: byte(u)?, count: byte(u)?, flavor: byte(u)? },
            _ => Op::Stale { conn: byte(u)?, kind: byte(u)? },
        })
    }
}

/// The harness's view of one client connection.
struct ClientModel {
    id: ConnId,
    /// Neither side has closed it.
    open: bool,
    readable: bool,
    /// Bytes "in the socket", not yet handed to the engine because reading is paused.
    socket: Vec<u8>,
    buf: BytesMut,
    /// A scanner of our own over the same bytes: an independent opinion on protocol errors.
    shadow: RequestScanner,
    shadow_buf: BytesMut,
    shadow_error: bool,
    protocol_error_event: bool,
    sends: Vec<Bytes>,
    closed_by_engine: bool,
}

/// The harness's view of one backend connection the engine asked for.
struct BackendModel {
    id: ConnId,
    server: usize,
    open: bool,
    connected: bool,
    buf: BytesMut,
    /// Requests the engine sent on it and the harness has not answered yet.
    unanswered: VecDeque<Request>,
    sent_scanner: RequestScanner,
    sent_buf: BytesMut,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Client(usize),
    Backend(usize),
}

struct Harness {
    /// Print every operation, action and event (set `FUZZ_TRACE` to debug a failing input).
    trace: bool,
    engine: Engine,
    config: Config,
    now: Instant,
    clients: Vec<ClientModel>,
    backends: Vec<BackendModel>,
    /// Every id the engine ever issued, open or not.
    known: BTreeMap<ConnId, Kind>,
    /// Which server each server believes is its master (None: it is a master).
    replica_of: Vec<Option<usize>>,
    offsets: Vec<i64>,
}

impl Harness {
    fn new(setup: &Setup) -> Harness {
        let servers = usize::from(setup.servers % 3) + 1;
        let list: Vec<String> =
            (0..servers).map(|i| format!("{{\"host\": \"127.0.0.1\", \"port\": {}}}", 7000 + i)).collect();
        let limits = if setup.small_limits { ", \"max_bulk_len\": 64, \"max_request_len\": 1024" } else { "" };
        let json = format!(
            "{{\"servers\": [{}], \"mode\": \"{}\", \"check_period\": 100, \"down_after\": 300, \"hold_ms\": 500, \
             \"pool_size\": {}, \"max_pipeline\": {}, \"max_clients\": {}, \"hold_max_bytes\": {}, \
             \"client_output_limit\": 1024{limits}}}",
            list.join(","),
            if setup.reads_to_slaves { "readsToSlaves" } else { "allToMaster" },
            setup.pool_size % 3 + 1,
            setup.max_pipeline % 8 + 1,
            setup.max_clients % 6 + 1,
            usize::from(setup.hold_budget % 10) * 256,
        );
        let config = Config::from_json(&json).expect("the harness writes valid configurations");
        let now = Instant::now();
        Harness {
            trace: std::env::var_os("FUZZ_TRACE").is_some(),
            engine: Engine::new(config.clone(), now),
            config,
            now,
            clients: Vec::new(),
            backends: Vec::new(),
            known: BTreeMap::new(),
            replica_of: (0..servers).map(|i| if i == 0 { None } else { Some(0) }).collect(),
            offsets: vec![0; servers],
        }
    }

    fn open_client(&self, pick: u8) -> Option<usize> {
        let open: Vec<usize> = (0..self.clients.len()).filter(|&i| self.clients[i].open).collect();
        open.get(usize::from(pick) % open.len().max(1)).copied()
    }

    fn open_backend(&self, pick: u8, connected: Option<bool>) -> Option<usize> {
        let open: Vec<usize> = (0..self.backends.len())
            .filter(|&i| self.backends[i].open && connected.is_none_or(|c| self.backends[i].connected == c))
            .collect();
        open.get(usize::from(pick) % open.len().max(1)).copied()
    }

    fn run(&mut self, op: Op) {
        if self.trace {
            eprintln!("op {op:?}");
        }
        match op {
            Op::Accept => {
                let peer = SocketAddr::from(([127, 0, 0, 1], 50000 + self.clients.len() as u16));
                let id = self.engine.accept(self.now, peer);
                assert!(!self.known.contains_key(&id), "accept reused a live or earlier id {id}");
                self.known.insert(id, Kind::Client(self.clients.len()));
                self.clients.push(ClientModel {
                    id,
                    open: true,
                    readable: true,
                    socket: Vec::new(),
                    buf: BytesMut::new(),
                    shadow: RequestScanner::new(self.config.limits),
                    shadow_buf: BytesMut::new(),
                    shadow_error: false,
                    protocol_error_event: false,
                    sends: Vec::new(),
                    closed_by_engine: false,
                });
                self.drain();
            }
            Op::ClientBytes { client, data } => {
                if let Some(i) = self.open_client(client) {
                    self.clients[i].socket.extend_from_slice(&data);
                    self.deliver_client(i);
                }
            }
            Op::ClientCommand { client, command, args, inline } => {
                if let Some(i) = self.open_client(client) {
                    let mut words = vec![COMMANDS[usize::from(command) % COMMANDS.len()]];
                    words.extend(args.iter().take(4).map(|&a| ARGS[usize::from(a) % ARGS.len()]));
                    if inline {
                        self.clients[i].socket.extend_from_slice(format!("{}\r\n", words.join(" ")).as_bytes());
                    } else {
                        self.clients[i].socket.extend_from_slice(Request::from_args(&words).frame());
                    }
                    self.deliver_client(i);
                }
            }
            Op::ClientClosed { client } => {
                if let Some(i) = self.open_client(client) {
                    self.clients[i].open = false;
                    let conn = self.clients[i].id;
                    self.engine.handle_input(self.now, Input::Closed { conn });
                    self.drain();
                }
            }
            Op::WriteBlocked { client } | Op::Drained { client } => {
                if let Some(i) = self.open_client(client) {
                    let conn = self.clients[i].id;
                    let input = if matches!(op, Op::WriteBlocked { .. }) {
                        Input::WriteBlocked { conn }
                    } else {
                        Input::Drained { conn }
                    };
                    self.engine.handle_input(self.now, input);
                    self.drain();
                }
            }
            Op::Advance { ms } => {
                self.now += Duration::from_millis(u64::from(ms % 2000));
                self.engine.handle_timeout(self.now);
                self.drain();
            }
            Op::Timeout => {
                if let Some((at, _reason)) = self.engine.poll_timeout() {
                    self.now = self.now.max(at);
                }
                self.engine.handle_timeout(self.now);
                self.drain();
            }
            Op::Connected { backend } => {
                if let Some(i) = self.open_backend(backend, Some(false)) {
                    self.backends[i].connected = true;
                    let conn = self.backends[i].id;
                    self.engine.handle_input(self.now, Input::Connected { conn });
                    self.drain();
                }
            }
            Op::ConnectFailed { backend } => {
                if let Some(i) = self.open_backend(backend, Some(false)) {
                    self.backends[i].open = false;
                    let conn = self.backends[i].id;
                    self.engine.handle_input(self.now, Input::ConnectFailed { conn, reason: "refused" });
                    self.drain();
                }
            }
            Op::BackendClosed { backend } => {
                if let Some(i) = self.open_backend(backend, Some(true)) {
                    self.close_backend(i);
                }
            }
            Op::BackendBytes { backend, data } => {
                if let Some(i) = self.open_backend(backend, Some(true)) {
                    self.deliver_backend(i, &data);
                }
            }
            Op::BackendAnswer { backend, count, flavor } => {
                if let Some(i) = self.open_backend(backend, Some(true)) {
                    let mut out = Vec::new();
                    for _ in 0..usize::from(count % 4) + 1 {
                        let Some(request) = self.backends[i].unanswered.pop_front() else { break };
                        self.answer(self.backends[i].server, &request, flavor, &mut out);
                    }
                    self.deliver_backend(i, &out);
                }
            }
            Op::Stale { conn, kind } => {
                let dead: Vec<ConnId> = self
                    .known
                    .iter()
                    .filter(|(_, k)| match **k {
                        Kind::Client(i) => !self.clients[i].open,
                        Kind::Backend(i) => !self.backends[i].open,
                    })
                    .map(|(id, _)| *id)
                    .collect();
                let Some(&conn) = dead.get(usize::from(conn) % dead.len().max(1)) else { return };
                let mut buf = BytesMut::from(&b"*1\r\n$4\r\nPING\r\n+OK\r\n"[..]);
                let input = match kind % 6 {
                    0 => Input::Data { conn, buf: &mut buf },
                    1 => Input::Connected { conn },
                    2 => Input::ConnectFailed { conn, reason: "stale" },
                    3 => Input::Closed { conn },
                    4 => Input::WriteBlocked { conn },
                    _ => Input::Drained { conn },
                };
                self.engine.handle_input(self.now, input);
                assert_eq!(self.engine.poll_action(), None, "an input for the closed connection {conn} acted");
                assert_eq!(self.engine.poll_event(), None, "an input for the closed connection {conn} had an event");
            }
        }
    }

    /// Hands a client's socket bytes to the engine (unless reading is paused), and to the shadow scanner.
    fn deliver_client(&mut self, i: usize) {
        let client = &mut self.clients[i];
        if !client.open || !client.readable || client.socket.is_empty() {
            return;
        }
        let bytes = std::mem::take(&mut client.socket);
        client.buf.extend_from_slice(&bytes);
        let mut shadow_failed_now = false;
        if !client.shadow_error {
            client.shadow_buf.extend_from_slice(&bytes);
            loop {
                match client.shadow.next_request(&mut client.shadow_buf) {
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(_) => {
                        client.shadow_error = true;
                        shadow_failed_now = true;
                        break;
                    }
                }
            }
        }
        let had_event = client.protocol_error_event;
        let conn = client.id;
        let mut buf = std::mem::take(&mut client.buf);
        self.engine.handle_input(self.now, Input::Data { conn, buf: &mut buf });
        self.clients[i].buf = buf;
        self.drain();
        if self.clients[i].protocol_error_event && !had_event {
            assert!(
                shadow_failed_now,
                "the engine saw a protocol error on {conn} where an independent scanner saw none"
            );
        }
    }

    fn deliver_backend(&mut self, i: usize, data: &[u8]) {
        let backend = &mut self.backends[i];
        backend.buf.extend_from_slice(data);
        let conn = backend.id;
        let mut buf = std::mem::take(&mut backend.buf);
        self.engine.handle_input(self.now, Input::Data { conn, buf: &mut buf });
        self.backends[i].buf = buf;
        self.drain();
    }

    fn close_backend(&mut self, i: usize) {
        self.backends[i].open = false;
        let conn = self.backends[i].id;
        self.engine.handle_input(self.now, Input::Closed { conn });
        self.drain();
    }

    /// Answers one request the way a Redis server in the harness's topology would (`flavor` varies it).
    fn answer(&mut self, server: usize, request: &Request, flavor: u8, out: &mut Vec<u8>) {
        let name = request.arg(0).unwrap_or_default().to_ascii_uppercase();
        match (name.as_slice(), flavor % 8) {
            (b"PING", 7) => out.extend_from_slice(b"-LOADING loading\r\n"),
            (b"PING", _) => out.extend_from_slice(b"+PONG\r\n"),
            (b"INFO", _) => {
                self.offsets[server] += i64::from(flavor);
                let mut text = match self.replica_of[server] {
                    None => format!("# Replication\r\nrole:master\r\nmaster_repl_offset:{}\r\n", self.offsets[server]),
                    Some(master) => format!(
                        "# Replication\r\nrole:slave\r\nmaster_host:127.0.0.1\r\nmaster_port:{}\r\n\
                         master_link_status:{}\r\nslave_repl_offset:{}\r\nslave_priority:{}\r\n",
                        7000 + master,
                        if flavor % 5 == 0 { "down" } else { "up" },
                        self.offsets[server],
                        if flavor % 7 == 0 { 0 } else { 100 },
                    ),
                };
                text.push_str(&format!("run_id:{server:040}\r\n"));
                out.extend_from_slice(format!("${}\r\n{text}\r\n", text.len()).as_bytes());
            }
            (b"REPLICAOF", _) => {
                match request.arg(1) {
                    Some(a) if a.eq_ignore_ascii_case(b"NO") => self.replica_of[server] = None,
                    _ => {
                        let port = request.arg(2).and_then(|p| std::str::from_utf8(p).ok()?.parse::<usize>().ok());
                        self.replica_of[server] = port.map(|p| p.saturating_sub(7000));
                    }
                }
                out.extend_from_slice(b"+OK\r\n");
            }
            (b"RESET", _) => out.extend_from_slice(b"+RESET\r\n"),
            (b"SUBSCRIBE" | b"PSUBSCRIBE" | b"UNSUBSCRIBE", _) => {
                let kind = String::from_utf8_lossy(&name).to_ascii_lowercase();
                for (n, channel) in request.args().skip(1).enumerate() {
                    let channel = String::from_utf8_lossy(channel);
                    out.extend_from_slice(
                        format!("*3\r\n${}\r\n{kind}\r\n${}\r\n{channel}\r\n:{}\r\n", kind.len(), channel.len(), n + 1)
                            .as_bytes(),
                    );
                }
            }
            (b"EXEC", _) => out.extend_from_slice(b"*2\r\n+OK\r\n:1\r\n"),
            (_, 0) => out.extend_from_slice(b"$-1\r\n"),
            (_, 1) => out.extend_from_slice(b"-ERR fuzz\r\n"),
            (_, 2) => out.extend_from_slice(b":42\r\n"),
            (_, 3) => out.extend_from_slice(b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$1\r\nx\r\n"),
            (_, 4) => out.extend_from_slice(b"*2\r\n%1\r\n+a\r\n~1\r\n,1.5\r\n$3\r\nabc\r\n"),
            _ => out.extend_from_slice(b"+OK\r\n"),
        }
    }

    /// Drains actions and events, checking each against the connections the harness knows to be open.
    fn drain(&mut self) {
        while let Some(action) = self.engine.poll_action() {
            if self.trace {
                eprintln!("  action {action:?}");
            }
            match action {
                Action::Connect { conn, address } => {
                    assert!(!self.known.contains_key(&conn), "Connect with an id already in use or used: {conn}");
                    let server =
                        self.config.servers.iter().position(|s| *s == address).expect("Connect to a configured server");
                    self.known.insert(conn, Kind::Backend(self.backends.len()));
                    self.backends.push(BackendModel {
                        id: conn,
                        server,
                        open: true,
                        connected: false,
                        buf: BytesMut::new(),
                        unanswered: VecDeque::new(),
                        sent_scanner: RequestScanner::new(Limits::default()),
                        sent_buf: BytesMut::new(),
                    });
                }
                Action::Send { conn, data } => match self.known.get(&conn).copied() {
                    Some(Kind::Client(i)) => {
                        assert!(self.clients[i].open, "Send to the closed client {conn}: {data:?}");
                        self.clients[i].sends.push(data);
                    }
                    Some(Kind::Backend(i)) => {
                        let backend = &mut self.backends[i];
                        assert!(backend.open, "Send to the closed backend {conn}: {data:?}");
                        backend.sent_buf.extend_from_slice(&data);
                        while let Some(request) = backend.sent_scanner.next_request(&mut backend.sent_buf).unwrap() {
                            backend.unanswered.push_back(request);
                        }
                    }
                    None => panic!("Send to {conn}, which the engine never issued"),
                },
                Action::Close { conn } => match self.known.get(&conn).copied() {
                    Some(Kind::Client(i)) => {
                        assert!(self.clients[i].open, "Close of the closed client {conn}");
                        self.clients[i].open = false;
                        self.clients[i].closed_by_engine = true;
                    }
                    Some(Kind::Backend(i)) => {
                        assert!(self.backends[i].open, "Close of the closed backend {conn}");
                        self.backends[i].open = false;
                    }
                    None => panic!("Close of {conn}, which the engine never issued"),
                },
                Action::SetReadable { conn, readable } => match self.known.get(&conn).copied() {
                    Some(Kind::Client(i)) => {
                        assert!(self.clients[i].open, "SetReadable on the closed client {conn}");
                        assert_ne!(self.clients[i].readable, readable, "SetReadable({readable}) twice on {conn}");
                        self.clients[i].readable = readable;
                    }
                    _ => panic!("SetReadable on {conn}, which is not a client"),
                },
            }
        }
        while let Some(event) = self.engine.poll_event() {
            if self.trace {
                eprintln!("  event {event}");
            }
            if let Event::ClientProtocolError { conn, message } = event {
                assert!(message.starts_with("ERR Protocol error"), "protocol error event with {message:?}");
                match self.known.get(&conn) {
                    Some(Kind::Client(i)) => self.clients[*i].protocol_error_event = true,
                    _ => panic!("protocol error event for {conn}, not a client"),
                }
            }
        }
        // A client whose reading resumed gets what its socket holds (bounded: each delivery empties it).
        for i in 0..self.clients.len() {
            if self.clients[i].open && self.clients[i].readable && !self.clients[i].socket.is_empty() {
                self.deliver_client(i);
            }
        }
    }

    /// Lets everything settle: every backend fails and held requests expire, so no reply is awaited any more.
    fn settle(&mut self) {
        for _ in 0..4 {
            for i in 0..self.backends.len() {
                if self.backends[i].open {
                    if self.backends[i].connected {
                        self.close_backend(i);
                    } else {
                        self.backends[i].open = false;
                        let conn = self.backends[i].id;
                        self.engine.handle_input(self.now, Input::ConnectFailed { conn, reason: "settle" });
                        self.drain();
                    }
                }
            }
            self.now += self.config.hold + Duration::from_secs(1);
            self.engine.handle_timeout(self.now);
            self.drain();
        }
    }

    fn check_protocol_errors(&self) {
        for client in &self.clients {
            if client.shadow_error {
                assert!(!client.open, "client {} sent a protocol error and was never closed", client.id);
            }
            // Unless the runtime closed it first (a peer may hang up while its replies are still awaited), the
            // engine closes a client after a protocol error, with the error as the last thing it sends.
            if client.protocol_error_event {
                assert!(!client.open, "client {} had a protocol error but was not closed", client.id);
            }
            if client.protocol_error_event && client.closed_by_engine {
                let last = client.sends.last().map(|b| &b[..]).unwrap_or_default();
                assert!(
                    last.starts_with(b"-ERR Protocol error"),
                    "the last reply to {} before its close was {:?}, not the protocol error",
                    client.id,
                    String::from_utf8_lossy(last)
                );
            }
        }
    }
}

/// Runs an engine through the operations encoded in `data`, checking the connection contract throughout.
pub fn engine_client_bytes(data: &[u8]) {
    let mut input = Unstructured::new(data);
    let Ok(setup) = Setup::arbitrary(&mut input) else { return };
    let mut harness = Harness::new(&setup);
    harness.engine.handle_timeout(harness.now);
    harness.drain();
    let mut steps = 0;
    while !input.is_empty() && steps < 512 {
        let Ok(op) = Op::decode(&mut input) else { break };
        harness.run(op);
        steps += 1;
    }
    harness.settle();
    harness.check_protocol_errors();
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Replays every committed corpus file (and crash regression) of the fuzz targets.
    #[test]
    fn fuzz_corpus_replays() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
        type Target = fn(&[u8]);
        let targets: [(&str, Target); 3] = [
            ("resp_request", super::resp_request),
            ("resp_reply", super::resp_reply),
            ("engine_client_bytes", super::engine_client_bytes),
        ];
        let mut failures = Vec::new();
        for (name, target) in targets {
            let dir = root.join(name);
            let mut files: Vec<_> = std::fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .map(|entry| entry.expect("a directory entry").path())
                .collect();
            files.sort();
            assert!(!files.is_empty(), "{} has no corpus", dir.display());
            for file in files {
                let data = std::fs::read(&file).expect("a corpus file");
                if std::panic::catch_unwind(|| target(&data)).is_err() {
                    failures.push(file.display().to_string());
                }
            }
        }
        assert!(failures.is_empty(), "corpus files that fail: {failures:#?}");
    }

    #[test]
    fn chunking_covers_the_payload() {
        let (sizes, payload) = super::chunking(b"\x02\x00\x02abcdefg");
        assert_eq!(sizes, vec![1, 3]);
        assert_eq!(super::chunks(payload, &sizes), vec![&b"a"[..], b"bcd", b"e", b"fg"]);
    }
}
