//! The engine targets: an [`Engine`](crate::Engine) driven through decoded [`Op`]s by the test kit's [`Driver`],
//! with a model of every connection it opened, checking the connection contract after every input. The admin
//! target mixes in `PROXY ADD/REMOVE/FAILOVER` from an admin client, reloads that add, remove, reorder and
//! re-address servers, `SCAN` cursors and numbered `ECHO`s, and checks that replies stay in order and that a
//! removed server gets no new connection or request. The Sentinel target runs the same in Sentinel mode, the
//! fuzzed sentinels answering, publishing and stopping as the input says, and checks that the engine connects
//! only where it was told to and sends writes and reads only to the servers the sentinels named for them.

mod admin_ops;
mod cluster_ops;
mod sentinel_ops;

use super::cluster::ClusterModel;
use super::input::{sentinel_json, sentinel_port, Op, Setup, ARGS, CLUSTER_UNIVERSE, COMMANDS, UNIVERSE};
use super::sentinels::FakeSentinel;
use super::servers;
use crate::address::ServerAddress;
use crate::conn::ConnId;
use crate::resp::{Limits, ReplyScanner, Request};
use crate::testkit::stream::RequestStream;
use crate::testkit::{master_and_replicas, Driver, FakeServer};
use crate::{Action, Event, Input};
use arbitrary::{Arbitrary, Unstructured};
use bytes::{Bytes, BytesMut};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

/// The harness's view of one client connection.
struct ClientModel {
    id: ConnId,
    /// Neither side has closed it.
    open: bool,
    readable: bool,
    /// Bytes "in the socket", not yet handed to the engine because reading is paused.
    socket: Vec<u8>,
    /// A scanner of our own over the same bytes: an independent opinion on protocol errors.
    shadow: RequestStream,
    shadow_error: bool,
    protocol_error_event: bool,
    sends: Vec<Bytes>,
    closed_by_engine: bool,
    /// `ECHO` tokens sent so far (each one's number is its position).
    echoes: u32,
    /// The last `SCAN` cursor this client was sent back, if seen.
    cursor: Option<Vec<u8>>,
    /// The requests the engine was handed whole (as the shadow scanner splits them; empty inline lines left out).
    requests: usize,
    /// It sent a sharded (un)subscription: its replies are not one per request (a confirmation per channel,
    /// messages).
    subscribed: bool,
}

/// What a backend connection reaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Peer {
    /// A server of the universe (by index).
    Server(usize),
    /// A configured sentinel (by index).
    Sentinel(usize),
}

/// The harness's view of one backend connection the engine asked for.
struct BackendModel {
    id: ConnId,
    peer: Peer,
    /// The address the engine connected to (a server may go by two).
    address: ServerAddress,
    open: bool,
    connected: bool,
    /// Requests the engine sent on it and the harness has not answered yet.
    unanswered: VecDeque<Request>,
    sent: RequestStream,
    /// A sentinel's subscription (it was sent `HELLO`).
    subscriber: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Client(usize),
    Backend(usize),
}

struct Harness {
    /// Print every operation, action and event (set `FUZZ_TRACE` to debug a failing input).
    trace: bool,
    /// The engine, its clock and its connections' read buffers.
    driver: Driver,
    clients: Vec<ClientModel>,
    backends: Vec<BackendModel>,
    /// Every id the engine ever issued, open or not.
    known: BTreeMap<ConnId, Kind>,
    /// The fake servers of every address the target may use: the configured ones first.
    servers: Vec<FakeServer>,
    /// Their addresses, in the same order.
    universe: Vec<ServerAddress>,
    /// Servers the engine reported removed (and did not add back since): no connection or request may reach them.
    removed: BTreeSet<ServerAddress>,
    /// The admin client, in the admin target.
    admin: Option<usize>,
    /// Whether reads are split now (reloads may flip it).
    reads_to_slaves: bool,
    /// Sentinel mode: the fuzzed sentinels (none otherwise), and the JSON of the `sentinel` object.
    sentinels: Vec<FakeSentinel>,
    sentinel_json: Option<String>,
    /// Sentinel mode: where the engine may connect (the configured servers and sentinels, and every address an
    /// answer it was handed named), the servers (by port) an answer named as the master, and those named as the
    /// master or listed as a healthy replica.
    may_connect: BTreeSet<ServerAddress>,
    named_masters: BTreeSet<u16>,
    named_readable: BTreeSet<u16>,
    /// Cluster mode: what the nodes say of the cluster (None in the other modes). The engine may connect only to
    /// the seeds and to addresses a `CLUSTER NODES` answer or a redirection it was handed named (`may_connect`).
    cluster: Option<ClusterModel>,
}

/// Which engine target a harness runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Servers configured, or added by the admin client.
    Servers,
    /// Sentinel mode, with the byte that decodes to the `sentinel` object.
    Sentinel(u8),
    /// Cluster mode.
    Cluster,
}

impl Harness {
    /// A harness for `setup` in `mode`.
    fn new(setup: &Setup, mode: Mode) -> Harness {
        let (count, sentinel_json) = match mode {
            Mode::Sentinel(byte) => {
                let (count, json) = sentinel_json(byte);
                (count, Some(json))
            }
            _ => (0, None),
        };
        let (config, cluster, universe_size) = match mode {
            Mode::Cluster => {
                let (seeds, config) = setup.cluster_config();
                (config, Some(ClusterModel::new(CLUSTER_UNIVERSE, seeds)), CLUSTER_UNIVERSE)
            }
            _ => (setup.config(sentinel_json.as_deref()), None, UNIVERSE),
        };
        let universe: Vec<ServerAddress> = (0..universe_size)
            .map(|i| ServerAddress { host: "127.0.0.1".into(), port: crate::testkit::port_of(i) })
            .collect();
        assert!(config.servers.iter().zip(&universe).all(|(a, b)| a == b), "configured servers come first");
        let servers = master_and_replicas(&universe);
        let sentinel_addresses = (0..count).map(|i| ServerAddress { host: "127.0.0.1".into(), port: sentinel_port(i) });
        let seeds = config.cluster.iter().flat_map(|c| c.seeds.iter().cloned());
        let may_connect = config.servers.iter().cloned().chain(sentinel_addresses).chain(seeds).collect();
        Harness {
            trace: std::env::var_os("FUZZ_TRACE").is_some(),
            driver: Driver::new(config),
            clients: Vec::new(),
            backends: Vec::new(),
            known: BTreeMap::new(),
            servers,
            universe,
            removed: BTreeSet::new(),
            admin: None,
            reads_to_slaves: setup.reads_to_slaves(),
            sentinels: vec![FakeSentinel::default(); count],
            sentinel_json,
            may_connect,
            named_masters: BTreeSet::new(),
            named_readable: BTreeSet::new(),
            cluster,
        }
    }

    /// Registers a new client connection `id` in the model.
    fn add_client(&mut self, id: ConnId) -> usize {
        assert!(!self.known.contains_key(&id), "accept reused a live or earlier id {id}");
        self.known.insert(id, Kind::Client(self.clients.len()));
        self.clients.push(ClientModel {
            id,
            open: true,
            readable: true,
            socket: Vec::new(),
            shadow: RequestStream::new(self.driver.config.limits),
            shadow_error: false,
            protocol_error_event: false,
            sends: Vec::new(),
            closed_by_engine: false,
            echoes: 0,
            cursor: None,
            requests: 0,
            subscribed: false,
        });
        self.clients.len() - 1
    }

    /// Sends `words` as one request from client `i`.
    fn send_words(&mut self, i: usize, words: &[&str]) {
        self.clients[i].socket.extend_from_slice(Request::from_args(words).frame());
        self.deliver_client(i);
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
                let id = self.driver.accept();
                self.add_client(id);
                self.drain();
            }
            Op::AdminAdd { .. }
            | Op::AdminRemove { .. }
            | Op::AdminFailover { .. }
            | Op::AdminQuery { .. }
            | Op::Reload { .. } => self.admin_op(op),
            Op::ClusterSays { .. } | Op::ClusterRaw { .. } | Op::BackendRedirect { .. } | Op::ClientKeys { .. } => {
                self.cluster_op(op)
            }
            Op::ClientScan { client, cursor } => {
                if let Some(i) = self.open_client(client) {
                    let last = self.clients[i].cursor.clone().unwrap_or_else(|| b"0".to_vec());
                    let cursor = match cursor % 4 {
                        0 => b"0".to_vec(),
                        1 => cursor.to_string().into_bytes(),
                        _ => last,
                    };
                    let cursor = String::from_utf8_lossy(&cursor).into_owned();
                    self.send_words(i, &["SCAN", &cursor, "COUNT", "10"]);
                }
            }
            Op::ClientEcho { client } => {
                if let Some(i) = self.open_client(client) {
                    let token = format!("echo-{}-{}", i, self.clients[i].echoes);
                    self.clients[i].echoes += 1;
                    self.send_words(i, &["ECHO", &token]);
                }
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
                    self.driver.closed(self.clients[i].id);
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
                    self.driver.engine.handle_input(self.driver.clock.now(), input);
                    self.drain();
                }
            }
            Op::Advance { ms } => {
                self.driver.advance(Duration::from_millis(u64::from(ms % 2000)));
                self.drain();
            }
            Op::Timeout => {
                let due = self.driver.engine.poll_timeout().map(|(at, _reason)| at);
                self.driver.advance_to(due.unwrap_or(self.driver.clock.now()));
                self.drain();
            }
            Op::Connected { backend } => {
                if let Some(i) = self.open_backend(backend, Some(false)) {
                    if let Peer::Sentinel(s) = self.backends[i].peer {
                        if !self.sentinels[s].up {
                            self.backends[i].open = false;
                            self.driver.refused(self.backends[i].id);
                            self.drain();
                            return;
                        }
                    }
                    self.backends[i].connected = true;
                    self.driver.connected(self.backends[i].id);
                    self.drain();
                }
            }
            Op::ConnectFailed { backend } => {
                if let Some(i) = self.open_backend(backend, Some(false)) {
                    self.backends[i].open = false;
                    // The high bit picks the evidence: nothing listens (refused), or the host did not answer.
                    if backend >= 0x80 {
                        self.driver.refused(self.backends[i].id);
                    } else {
                        self.driver.connect_failed(self.backends[i].id, "host unreachable");
                    }
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
                        match self.backends[i].peer {
                            Peer::Server(server) if self.cluster.is_some() => {
                                self.answer_in_cluster(i, server, &request, flavor % 8, 0, &mut out)
                            }
                            Peer::Server(server) => {
                                servers::answer(&mut self.servers[server], &request, flavor, &mut out)
                            }
                            Peer::Sentinel(s) => {
                                let named = self.sentinels[s].answer(&self.universe, &request, flavor, &mut out);
                                self.learn(named);
                            }
                        }
                    }
                    self.deliver_backend(i, &out);
                }
            }
            Op::SentinelSays { .. } | Op::SentinelPush { .. } | Op::SentinelToggle { .. } => self.sentinel_op(op),
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
                let input = match kind % 7 {
                    0 => Input::Data { conn, buf: &mut buf },
                    1 => Input::Connected { conn },
                    2 => Input::ConnectFailed { conn, reason: "stale", failure: crate::ConnectFailure::TlsHandshake },
                    3 => Input::Closed { conn },
                    4 => Input::WriteBlocked { conn },
                    5 => Input::Refused { conn },
                    _ => Input::Drained { conn },
                };
                self.driver.engine.handle_input(self.driver.clock.now(), input);
                assert_eq!(self.driver.engine.poll_action(), None, "an input for the closed connection {conn} acted");
                assert_eq!(
                    self.driver.engine.poll_event(),
                    None,
                    "an input for the closed connection {conn} had an event"
                );
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
        let mut shadow_failed_now = false;
        if !client.shadow_error {
            client.shadow.push(&bytes);
            loop {
                match client.shadow.next_request() {
                    Ok(Some(request)) => client.requests += usize::from(!request.is_empty()),
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
        self.driver.feed(conn, &bytes);
        self.drain();
        if self.clients[i].protocol_error_event && !had_event {
            assert!(
                shadow_failed_now,
                "the engine saw a protocol error on {conn} where an independent scanner saw none"
            );
        }
    }

    fn deliver_backend(&mut self, i: usize, data: &[u8]) {
        self.driver.feed(self.backends[i].id, data);
        self.drain();
    }

    fn close_backend(&mut self, i: usize) {
        self.backends[i].open = false;
        self.driver.closed(self.backends[i].id);
        self.drain();
    }

    /// Drains actions and events, checking each against the connections the harness knows to be open.
    fn drain(&mut self) {
        // Actions and events come in two queues, so their order within one input is lost: a server added by this
        // input may be connected to in it, and one removed by it may have been sent its last probe in it.
        let events: Vec<Event> = std::iter::from_fn(|| self.driver.engine.poll_event()).collect();
        let added: BTreeSet<ServerAddress> = events
            .iter()
            .filter_map(|event| match event {
                Event::ServerAdded { address } => Some(address.clone()),
                _ => None,
            })
            .collect();
        let removed: BTreeSet<ServerAddress> = self.removed.difference(&added).cloned().collect();
        assert!(!self.driver.engine.orders_pending(), "the engine left orders for the pool unexecuted");
        while let Some(action) = self.driver.engine.poll_action() {
            if self.trace {
                eprintln!("  action {action:?}");
            }
            match action {
                Action::Connect { conn, address } => {
                    assert!(!self.known.contains_key(&conn), "Connect with an id already in use or used: {conn}");
                    assert!(!removed.contains(&address), "Connect to the removed server {address}");
                    let peer = match (0..self.sentinels.len()).find(|&s| address.port == sentinel_port(s)) {
                        Some(s) => Peer::Sentinel(s),
                        None => Peer::Server(self.server_index(&address)),
                    };
                    if !self.sentinels.is_empty() {
                        assert!(self.may_connect.contains(&address), "Connect to {address}, which no sentinel named");
                    }
                    if self.cluster.is_some() {
                        assert!(
                            self.may_connect.contains(&address),
                            "Connect to {address}, which is no seed and which no node named"
                        );
                    }
                    self.known.insert(conn, Kind::Backend(self.backends.len()));
                    self.backends.push(BackendModel {
                        id: conn,
                        peer,
                        address,
                        subscriber: false,
                        open: true,
                        connected: false,
                        unanswered: VecDeque::new(),
                        sent: RequestStream::new(Limits::default()),
                    });
                }
                Action::Send { conn, data } => match self.known.get(&conn).copied() {
                    Some(Kind::Client(i)) => {
                        assert!(self.clients[i].open, "Send to the closed client {conn}: {data:?}");
                        if let Some(cursor) = scan_cursor(&data) {
                            self.clients[i].cursor = Some(cursor);
                        }
                        self.clients[i].sends.push(data);
                    }
                    Some(Kind::Backend(i)) => {
                        let address = &self.backends[i].address;
                        assert!(!removed.contains(address), "Send to the removed server {address}: {data:?}");
                        assert!(self.backends[i].open, "Send to the closed backend {conn}: {data:?}");
                        self.backends[i].sent.push(&data);
                        while let Some(request) = self.backends[i].sent.next_request().unwrap() {
                            match self.backends[i].peer {
                                Peer::Server(_) => self.check_sentinel_rules(self.backends[i].address.port, &request),
                                Peer::Sentinel(_) => {
                                    if request.arg(0).is_some_and(|a| a.eq_ignore_ascii_case(b"HELLO")) {
                                        self.backends[i].subscriber = true;
                                    }
                                }
                            }
                            self.backends[i].unanswered.push_back(request);
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
                    // A backend streaming a large reply to a client that blocked (never reached with the small
                    // values fuzzing makes, kept honest all the same).
                    Some(Kind::Backend(i)) => {
                        assert!(self.backends[i].open, "SetReadable on the closed backend {conn}")
                    }
                    None => panic!("SetReadable on {conn}, which the engine never issued"),
                },
            }
        }
        for event in events {
            if self.trace {
                eprintln!("  event {event}");
            }
            match &event {
                Event::ServerRemoved { address } => {
                    self.removed.insert(address.clone());
                }
                Event::ServerAdded { address } => {
                    self.removed.remove(address);
                }
                _ => {}
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
                        self.driver.connect_failed(self.backends[i].id, "settle");
                        self.drain();
                    }
                }
            }
            self.driver.advance(self.driver.config.hold + Duration::from_secs(1));
            self.drain();
        }
    }

    /// Every client got its `ECHO` replies in the order it sent them (a request may fail instead, with an error
    /// in its place, but never overtake or be overtaken).
    fn check_reply_order(&self) {
        for client in &self.clients {
            let mut scanner = ReplyScanner::new(Limits::default());
            let mut buf = BytesMut::new();
            for piece in &client.sends {
                buf.extend_from_slice(piece);
            }
            let mut next = 0u32;
            while let Ok(Some(frame)) = scanner.next_reply(&mut buf) {
                let text = String::from_utf8_lossy(&frame);
                if let Some(n) = text.split("echo-").nth(1).and_then(|rest| rest.split(['-', '\r']).nth(1)) {
                    let n: u32 = n.parse().expect("an echo number");
                    assert!(n >= next, "client {}: ECHO {n} answered after a later one ({next})", client.id);
                    next = n + 1;
                }
            }
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

/// The cursor of a `SCAN` reply at the start of `data`, if it is one.
fn scan_cursor(data: &[u8]) -> Option<Vec<u8>> {
    let rest = data.strip_prefix(b"*2\r\n$")?;
    let header_end = rest.iter().position(|&b| b == b'\r')?;
    let len: usize = std::str::from_utf8(&rest[..header_end]).ok()?.parse().ok()?;
    let cursor = rest.get(header_end + 2..header_end + 2 + len)?;
    cursor.iter().all(u8::is_ascii_digit).then(|| cursor.to_vec())
}

/// Runs an engine through the operations encoded in `data`, checking the connection contract throughout.
pub fn engine_client_bytes(data: &[u8]) {
    run_ops(data, Mode::Servers, Op::decode);
}

/// Like [`engine_client_bytes`], with admin commands, reloads, `SCAN` cursors and numbered `ECHO`s mixed in:
/// besides the connection contract, replies stay in order per client and a removed server gets no new
/// connection or request.
pub fn engine_admin(data: &[u8]) {
    run_ops(data, Mode::Servers, Op::decode_with_admin);
}

/// Like [`engine_admin`] in Sentinel mode: after the setup, a byte picks 1 to 3 sentinels; the operations add
/// what each sentinel answers (the master it names, the replicas it lists and which are healthy, under their own
/// or other addresses, with the named master promoted or not), malformed answers, the events they publish and
/// their outages. Besides the admin target's invariants: the engine connects only to the configured servers and
/// sentinels and to servers a sentinel's answer named; no `REPLICAOF` reaches a server; a write reaches only a
/// server an answer named the master, and a read only one named the master or listed as a healthy replica.
pub fn engine_sentinel(data: &[u8]) {
    run_ops(data, Mode::Sentinel(0), Op::decode_with_sentinels);
}

/// The engine in cluster mode, seeded with 1 to 3 nodes: the operations add what the nodes answer to
/// `CLUSTER INFO` and `CLUSTER NODES` (maps that change, malformed lines, absurd epochs, addresses that come and
/// go, no slots, raw bytes), requests bounced with `MOVED`, `ASK` (to any address), `TRYAGAIN`, `CLUSTERDOWN` or
/// malformed redirections, commands with keys (single-key, split by slot, refused across slots) and numbered
/// `ECHO`s. Besides the connection contract and the order of `ECHO` replies: the engine connects only to the
/// seeds and to addresses a `CLUSTER NODES` answer or a redirection handed to it named; every request a client
/// that stayed connected sent gets exactly one reply; and once the clients are gone and the backends closed,
/// no request is left in the engine's table of routed requests.
pub fn engine_cluster(data: &[u8]) {
    run_ops(data, Mode::Cluster, Op::decode_with_cluster);
}

fn run_ops(data: &[u8], mode: Mode, decode: fn(&mut Unstructured<'_>) -> arbitrary::Result<Op>) {
    let mut input = Unstructured::new(data);
    let Ok(setup) = Setup::arbitrary(&mut input) else { return };
    let mode = match mode {
        Mode::Sentinel(_) => match input.arbitrary::<u8>() {
            Ok(byte) => Mode::Sentinel(byte),
            Err(_) => return,
        },
        other => other,
    };
    let mut harness = Harness::new(&setup, mode);
    harness.driver.advance(Duration::ZERO);
    harness.drain();
    let mut steps = 0;
    while !input.is_empty() && steps < 512 {
        let Ok(op) = decode(&mut input) else { break };
        harness.run(op);
        steps += 1;
    }
    harness.settle();
    harness.check_protocol_errors();
    harness.check_reply_order();
    if mode == Mode::Cluster {
        harness.check_cluster_end();
    }
}
