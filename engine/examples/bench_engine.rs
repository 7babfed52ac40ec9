//! Engine micro-benchmark: a fixed GET/SET mix pushed through the engine alone, no sockets.
//!
//! The test kit's [`Driver::with_master`] adopts one server as master (its probe answered by the kit's fake
//! server); then `--clients` clients do round trips in turns: every client's request bytes go in
//! (`Input::Data`), the actions that come out are performed against a fake server that answers each forwarded
//! request, the replies go back in on the backend connections, and the `Send`s to the clients come out. Buffers
//! are kept per connection and appended to, as a runtime does. (Needs the engine's `testkit` feature, which the
//! engine's own dev-dependency turns on for its examples.)
//!
//! ```text
//! cargo run --release -p redis-proxy-engine --example bench_engine -- [--mode get|set|mix] [--requests N]
//!     [--clients C] [--pipeline P] [--value-size B] [--resp3] [--cluster N] [--worker] [--quiet]
//! ```
//!
//! With `--worker` the engine is a worker engine (`workers` above 1) that follows a deciding engine, which adopted
//! the master.
//!
//! With `--resp3` every client says `HELLO 3` first (as `redis-benchmark -3` does), so its requests go on the
//! proxy's RESP3 shared connections.
//!
//! With `--cluster N` the engine runs in cluster mode in front of a healthy cluster of N primaries that share
//! the slots evenly (the fake servers answer `CLUSTER NODES` and the probe; the map is read before the clients
//! connect). Keys are `key:` and 12 digits, counting through 100,000 values as `redis-benchmark -r 100000`
//! makes them, so that they spread over the slots; in standalone mode the key changes nothing.
//!
//! It prints ns per round trip. `bench/instructions.sh` runs it under `valgrind --tool=callgrind` with
//! collection switched on only inside [`round_trips`], which gives instructions per round trip without setup.

use bytes::BytesMut;
use redis_proxy_engine::testkit::{self, Driver, FakeServer};
use redis_proxy_engine::{Action, Config, ConnId, Input};
use std::hint::black_box;
use std::time::Instant;

/// Which requests the clients send.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mix {
    Get,
    Set,
    /// Alternating GET and SET.
    Mixed,
}

struct Options {
    mix: Mix,
    requests: u64,
    clients: usize,
    pipeline: usize,
    value_size: usize,
    resp3: bool,
    /// Primaries of the cluster in front of which the engine runs (0: standalone mode, one master).
    cluster: usize,
    /// Standalone mode: the engine is a worker engine following a deciding engine (`workers` above 1).
    worker: bool,
    quiet: bool,
}

fn parse_options() -> Options {
    let mut options = Options {
        mix: Mix::Get,
        requests: 1_000_000,
        clients: 50,
        pipeline: 1,
        value_size: 3,
        resp3: false,
        cluster: 0,
        worker: false,
        quiet: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage(&format!("{arg} needs a value")));
        match arg.as_str() {
            "--mode" => {
                options.mix = match value().as_str() {
                    "get" => Mix::Get,
                    "set" => Mix::Set,
                    "mix" => Mix::Mixed,
                    other => usage(&format!("unknown mode {other}")),
                }
            }
            "--requests" => options.requests = value().parse().unwrap_or_else(|_| usage("bad --requests")),
            "--clients" => options.clients = value().parse().unwrap_or_else(|_| usage("bad --clients")),
            "--pipeline" => options.pipeline = value().parse().unwrap_or_else(|_| usage("bad --pipeline")),
            "--value-size" => options.value_size = value().parse().unwrap_or_else(|_| usage("bad --value-size")),
            "--resp3" => options.resp3 = true,
            "--cluster" => options.cluster = value().parse().unwrap_or_else(|_| usage("bad --cluster")),
            "--worker" => options.worker = true,
            "--quiet" => options.quiet = true,
            "--help" | "-h" => usage(""),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    if options.clients == 0 || options.pipeline == 0 {
        usage("--clients and --pipeline must be at least 1");
    }
    options
}

fn usage(problem: &str) -> ! {
    if !problem.is_empty() {
        eprintln!("bench_engine: {problem}");
    }
    eprintln!(
        "usage: bench_engine [--mode get|set|mix] [--requests N] [--clients C] [--pipeline P] [--value-size B] \
         [--resp3] [--cluster N] [--worker] [--quiet]"
    );
    std::process::exit(2);
}

/// The engine, the connections it opened, and one read buffer per connection.
struct Rig {
    /// The engine (with its master adopted) and its fake clock, which stands still.
    driver: Driver,
    now: Instant,
    clients: Vec<ConnId>,
    client_bufs: Vec<BytesMut>,
    /// Backend connections the engine opened, with their read buffers and the replies the fake server owes them.
    backends: Vec<FakeBackend>,
    get_request: Vec<u8>,
    set_request: Vec<u8>,
    get_reply: Vec<u8>,
    /// Replies delivered to clients, and their bytes.
    replies: u64,
    reply_bytes: u64,
    /// The next request's key number (below [`KEYS`]).
    next_key: u64,
    /// The `CLUSTER NODES` text of the cluster (None: standalone mode).
    cluster_nodes: Option<String>,
}

struct FakeBackend {
    conn: ConnId,
    buf: BytesMut,
    /// Bytes the fake server will send back on the next turn.
    owed: Vec<u8>,
    /// What answers everything but the benchmark's own requests (in cluster mode: the probe and the map).
    server: FakeServer,
}

/// The port of the cluster's first node; node `i` listens on `CLUSTER_PORT + i`.
const CLUSTER_PORT: u16 = 7000;
/// How many different keys the requests name.
const KEYS: u64 = 100_000;
/// Where a request's 12 key digits start: after `*2\r\n$3\r\nGET\r\n$16\r\nkey:` (or `*3` and `SET`).
const KEY_DIGITS: std::ops::Range<usize> = 22..34;

/// A cluster configuration seeded with its first node.
fn cluster_config() -> Config {
    let json = format!(r#"{{"cluster": {{"seeds": [{{"host": "127.0.0.1", "port": {CLUSTER_PORT}}}]}}}}"#);
    Config::from_json(&json).expect("a valid cluster configuration")
}

/// `CLUSTER NODES` of a healthy cluster of `primaries` primaries (no replicas) that share the slots evenly.
fn cluster_nodes(primaries: usize) -> String {
    const SLOTS: usize = 16_384;
    (0..primaries)
        .map(|i| {
            let port = CLUSTER_PORT as usize + i;
            let (first, last) = (i * SLOTS / primaries, (i + 1) * SLOTS / primaries - 1);
            format!(
                "{:040x} 127.0.0.1:{port}@{} master - 0 0 {} connected {first}-{last}\n",
                i + 1,
                port + 10_000,
                i + 1
            )
        })
        .collect()
}

/// Writes key number `n` into `request`'s key digits.
fn set_key(request: &mut [u8], n: u64) {
    let mut n = n;
    for digit in request[KEY_DIGITS].iter_mut().rev() {
        *digit = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

impl Rig {
    fn new(clients: usize, value_size: usize, resp3: bool, cluster: usize, worker: bool) -> Rig {
        let mut config = if cluster > 0 { cluster_config() } else { testkit::config(1) };
        config.max_clients = clients.max(config.max_clients);
        let value = vec![b'x'; value_size];
        let mut set_request = format!("*3\r\n$3\r\nSET\r\n$16\r\nkey:__rand_int__\r\n${value_size}\r\n").into_bytes();
        set_request.extend_from_slice(&value);
        set_request.extend_from_slice(b"\r\n");
        let mut get_reply = format!("${value_size}\r\n").into_bytes();
        get_reply.extend_from_slice(&value);
        get_reply.extend_from_slice(b"\r\n");
        let check_period = config.check_period;
        let driver = match (cluster, worker) {
            (0, false) => Driver::with_master(config),
            (0, true) => Driver::decider_with_master(config).new_worker().0,
            _ => Driver::new(config),
        };
        let mut rig = Rig {
            now: driver.clock.now(),
            driver,
            clients: Vec::new(),
            client_bufs: Vec::new(),
            backends: Vec::new(),
            get_request: b"*2\r\n$3\r\nGET\r\n$16\r\nkey:__rand_int__\r\n".to_vec(),
            set_request,
            get_reply,
            replies: 0,
            reply_bytes: 0,
            next_key: 0,
            cluster_nodes: (cluster > 0).then(|| cluster_nodes(cluster)),
        };
        if cluster > 0 {
            // Probe rounds: the seed's map is read, every node is learnt and probed.
            for _ in 0..5 {
                rig.driver.advance(check_period);
                rig.now = rig.driver.clock.now();
                rig.settle();
            }
        }
        for _ in 0..clients {
            let conn = rig.driver.accept();
            rig.clients.push(conn);
            let mut buf = BytesMut::new();
            if resp3 {
                buf.extend_from_slice(HELLO_3);
                rig.driver.engine.handle_input(rig.now, Input::Data { conn, buf: &mut buf });
            }
            rig.client_bufs.push(buf);
        }
        // The HELLOs went on the RESP3 connection (the proxy passes them, answered by the server): answer them.
        rig.settle();
        rig.replies = 0;
        rig.reply_bytes = 0;
        rig.driver.events();
        rig
    }

    /// Performs every action and delivers every reply owed, until the engine has nothing more to do.
    fn settle(&mut self) {
        self.drain();
        while let Some(index) = self.backends.iter().position(|b| !b.owed.is_empty()) {
            let backend = &mut self.backends[index];
            backend.buf.extend_from_slice(&backend.owed);
            backend.owed.clear();
            let conn = backend.conn;
            self.driver.engine.handle_input(self.now, Input::Data { conn, buf: &mut self.backends[index].buf });
            self.drain();
        }
    }

    /// Performs every action: connects succeed at once, sends to a backend are answered, sends to clients counted.
    fn drain(&mut self) {
        while let Some(action) = self.driver.engine.poll_action() {
            match action {
                Action::Send { conn, data } => {
                    if let Some(backend) = self.backends.iter_mut().find(|b| b.conn == conn) {
                        if !answer(&mut backend.owed, &data, self.get_request.len(), &self.get_reply) {
                            let reply = backend.server.respond(&data);
                            backend.owed.extend_from_slice(&reply);
                        }
                    } else {
                        self.replies += 1;
                        self.reply_bytes += data.len() as u64;
                        black_box(data);
                    }
                }
                Action::Connect { conn, address } => {
                    let server = match &self.cluster_nodes {
                        Some(nodes) => FakeServer::cluster_node(address.port, nodes),
                        None => FakeServer::master(address.port),
                    };
                    self.backends.push(FakeBackend { conn, buf: BytesMut::new(), owed: Vec::new(), server });
                    self.driver.engine.handle_input(self.now, Input::Connected { conn });
                }
                Action::Close { conn } => panic!("the engine closed {conn} during the benchmark"),
                Action::SetReadable { .. } => {}
            }
        }
    }
}

/// `HELLO 3`, as a client and the proxy's RESP3 connections send it.
const HELLO_3: &[u8] = b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n";

/// What the fake server answers to one forwarded request: the engine forwards each request as its own `Send`,
/// and the benchmark's GET and SET requests have different lengths, so the length says which it is. False:
/// not one of the benchmark's requests (the backend's [`FakeServer`] answers it).
fn answer(owed: &mut Vec<u8>, data: &[u8], get_request_len: usize, get_reply: &[u8]) -> bool {
    if data.len() == get_request_len && data.starts_with(b"*2\r\n$3\r\nGET\r\n") {
        owed.extend_from_slice(get_reply);
    } else if data.starts_with(b"*3\r\n$3\r\nSET\r\n") {
        owed.extend_from_slice(b"+OK\r\n");
    } else if data.starts_with(HELLO_3) {
        // One answer per HELLO in `data` (the connection's own, then the clients').
        let count = data.windows(HELLO_3.len()).filter(|w| *w == HELLO_3).count();
        for _ in 0..count {
            owed.extend_from_slice(b"%1\r\n$5\r\nproto\r\n:3\r\n");
        }
    } else {
        // The probe and the map (in standalone mode the probe was answered before the benchmark).
        return false;
    }
    true
}

/// `turns` turns: every client sends `pipeline` requests (each in its own `Input::Data`), then every backend
/// connection gets the replies it is owed in one `Input::Data`. Returns the number of round trips.
#[inline(never)]
fn round_trips(rig: &mut Rig, turns: u64, pipeline: usize, mix: Mix) -> u64 {
    let mut sent = 0u64;
    let mut next_is_get = true;
    for _ in 0..turns {
        for index in 0..rig.clients.len() {
            let conn = rig.clients[index];
            for _ in 0..pipeline {
                let request = match mix {
                    Mix::Get => &mut rig.get_request,
                    Mix::Set => &mut rig.set_request,
                    Mix::Mixed => {
                        next_is_get = !next_is_get;
                        if next_is_get {
                            &mut rig.get_request
                        } else {
                            &mut rig.set_request
                        }
                    }
                };
                set_key(request, rig.next_key);
                rig.next_key = (rig.next_key + 1) % KEYS;
                rig.client_bufs[index].extend_from_slice(request);
                sent += 1;
            }
            let buf = &mut rig.client_bufs[index];
            rig.driver.engine.handle_input(rig.now, Input::Data { conn, buf });
            rig.drain();
        }
        for index in 0..rig.backends.len() {
            let backend = &mut rig.backends[index];
            if backend.owed.is_empty() {
                continue;
            }
            backend.buf.extend_from_slice(&backend.owed);
            backend.owed.clear();
            let conn = backend.conn;
            rig.driver.engine.handle_input(rig.now, Input::Data { conn, buf: &mut rig.backends[index].buf });
            rig.drain();
        }
    }
    sent
}

fn main() {
    let options = parse_options();
    let mut rig = Rig::new(options.clients, options.value_size, options.resp3, options.cluster, options.worker);
    let per_turn = (options.clients * options.pipeline) as u64;
    let turns = options.requests.div_ceil(per_turn);
    // Warm up (opens the shared backend connections) outside the measured part, unless asked for nothing.
    if options.requests > 0 {
        round_trips(&mut rig, 2, options.pipeline, options.mix);
    }
    let replies_before = rig.replies;
    let started = Instant::now();
    let sent = round_trips(&mut rig, turns, options.pipeline, options.mix);
    let elapsed = started.elapsed();
    let replies = rig.replies - replies_before;
    assert_eq!(replies, sent, "every request got exactly one reply");
    if !options.quiet {
        let mode = match options.mix {
            Mix::Get => "get",
            Mix::Set => "set",
            Mix::Mixed => "mix",
        };
        let ns = if sent > 0 { elapsed.as_nanos() as f64 / sent as f64 } else { 0.0 };
        println!(
            "mode={mode}{}{} clients={} pipeline={} value={}B round_trips={sent} backends={} elapsed={:.3}s \
             ns_per_round_trip={ns:.1} ({:.2} M round trips/s)",
            if options.resp3 { " resp3" } else { "" },
            if options.cluster > 0 { format!(" cluster={}", options.cluster) } else { String::new() },
            options.clients,
            options.pipeline,
            options.value_size,
            rig.backends.len(),
            elapsed.as_secs_f64(),
            if ns > 0.0 { 1e3 / ns } else { 0.0 },
        );
    }
}
