//! Drives engines against the [`Cluster`] model on a fake clock and checks the failover invariants.
//!
//! # Time and network
//!
//! Time is whole simulated milliseconds from a fixed `Instant`. Every byte between an engine and a server takes
//! [`LATENCY_MS`]; events at the same millisecond run in the order they were scheduled, so each connection is FIFO.
//! A slow server processes what arrives `slow_ms` later (one request at a time, in arrival order). A hung server
//! accepts connections and buffers requests, and executes all of them when it resumes (as a SIGSTOPped Redis does
//! after SIGCONT), also those on connections the engine has closed meanwhile; their replies go nowhere. A crash
//! closes every connection to the server (the engine gets [`Input::Closed`]) and refuses new ones
//! ([`Input::ConnectFailed`]). A partition of engine `e` from server `s` does the same, for `e` only. Replication
//! runs every [`REPLICATION_PERIOD_MS`], so a write can be acknowledged before any replica has it.
//!
//! # Phases of a run
//!
//! Faults happen until the last scheduled one; then everything heals (resumed, not slow, no partition, and with
//! [`Scenario::restart_at_end`] every crashed server restarts). [`SETTLE_MS`] later the topology must have
//! converged; clients send one last write each and, [`DRAIN_MS`] later, every request must have had its reply.
//!
//! # Invariants (checked after every step, or at the named moment)
//!
//! 1. A `SET` is sent only to a server that is a master in the model at that moment. With two engines, one may
//!    still write to a master another engine has just demoted, for as long as it takes to see it: its next probe,
//!    or `down_after` if the server stops answering ([`stale_master_allowance`]); the write gets `-READONLY`.
//! 2. The engines never route to two different running masters (a crashed or hung one takes no writes; an engine
//!    counts it down within `down_after`) for longer than [`split_allowance`] (one check period plus
//!    network and server delays), except while a partition lasts and [`PARTITION_AFTERMATH_MS`] after: engines
//!    that see different servers cannot agree (they fight: one re-points what the other promotes).
//! 3. Every client request gets exactly one reply, of the right kind (`+OK` or an error for `SET`; the written
//!    value, nil or an error for `GET`), and a `GET` never returns a value other than the one written for its key.
//!    No request is executed twice. The engine never closes a client, never acts on a connection it was told is
//!    closed, and never asks for a timeout it then does not consume.
//! 4. After healing and [`SETTLE_MS`]: one master among the running servers, every other running server its
//!    replica with the link up, and every engine routing to it (or, when no running server may become master, no
//!    engine routing at all). The clients' last writes succeed.
//! 5. No acknowledged write is missing from the final master, unless Redis's asynchronous replication allowed it to
//!    be lost: at some moment every server holding it was crashed or hung; or when it ran, not every engine routed
//!    to the server that ran it (a failover or split view was under way); or a replica that lacked it was promoted
//!    while no running replica of the same priority had it, or while the server that ran it was still running
//!    (promoted away from a live master, whose unreplicated tail Redis then discards).

use super::model::{port_of, Cluster, Health, SimRole};
use crate::resp::{Limits, ReplyScanner, RequestScanner};
use crate::{Action, Config, ConnId, Engine, Event, Input, ServerAddress};
use bytes::{Bytes, BytesMut};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

/// The engines' `check_period` in the simulation.
pub(crate) const CHECK_PERIOD_MS: u64 = 100;
/// The engines' `down_after` (their default: 3 x `check_period`).
pub(crate) const DOWN_AFTER_MS: u64 = 3 * CHECK_PERIOD_MS;
/// One-way delay between an engine and a server.
pub(crate) const LATENCY_MS: u64 = 1;
/// How often replicas catch up with their masters.
pub(crate) const REPLICATION_PERIOD_MS: u64 = 10;
/// How long after healing everything must have converged.
pub(crate) const SETTLE_MS: u64 = 5_000;
/// How long after convergence every outstanding request must have been answered.
pub(crate) const DRAIN_MS: u64 = 2_000;
/// How long after a partition heals the engines may still route to different masters: an engine that was cut
/// off sees the server again at its next probe (one check period), unless the server fails meanwhile, in which
/// case the other engine counts it down within `down_after`.
pub(crate) const PARTITION_AFTERMATH_MS: u64 = CHECK_PERIOD_MS + DOWN_AFTER_MS + 4 * LATENCY_MS;
/// Most requests a simulated client has in flight before it waits.
const MAX_OUTSTANDING: usize = 8;
/// Lines of trace kept for a violation report.
const TRACE_LINES: usize = 200;

/// A fault, applied at a scheduled simulated time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    /// Kill the server (no-op if it is not running).
    Crash(usize),
    /// Start a crashed server again; it loads its data for `load_ms` (no-op if it runs).
    Restart {
        /// The server.
        server: usize,
        /// How long it reports `loading:1`.
        load_ms: u64,
    },
    /// Stop the server (SIGSTOP): connections are accepted, nothing is answered.
    Hang(usize),
    /// Resume a hung server: it executes everything buffered meanwhile.
    Unhang(usize),
    /// Make the server process everything `ms` late (0: normal again).
    Slow {
        /// The server.
        server: usize,
        /// The delay.
        ms: u64,
    },
    /// Cut engine `engine` off from server `server` (connections reset, connects refused).
    Partition {
        /// The engine.
        engine: usize,
        /// The server.
        server: usize,
    },
    /// Undo a partition.
    Heal {
        /// The engine.
        engine: usize,
        /// The server.
        server: usize,
    },
}

/// One simulated run: the servers, the engines, the clients and the faults.
#[derive(Clone, Debug)]
pub(crate) struct Scenario {
    /// Initial topology: `master_of[i] == i` makes server `i` a master, another index makes it that one's replica.
    pub(crate) master_of: Vec<usize>,
    /// `replica-priority` per server.
    pub(crate) priorities: Vec<i64>,
    /// How many engines watch the servers (1 or 2).
    pub(crate) engines: usize,
    /// When the second engine starts (ms), so the two probe out of step.
    pub(crate) second_engine_delay_ms: u64,
    /// Clients per engine.
    pub(crate) clients_per_engine: usize,
    /// Each client sends a request this often (ms).
    pub(crate) client_interval_ms: u64,
    /// Faults and when (ms), in any order.
    pub(crate) faults: Vec<(u64, Fault)>,
    /// Whether healing restarts the crashed servers too.
    pub(crate) restart_at_end: bool,
}

/// What a passing run did, for statistics.
#[derive(Clone, Debug, Default)]
pub(crate) struct Outcome {
    /// Requests the clients sent.
    pub(crate) requests: u64,
    /// Error replies they got.
    pub(crate) errors: u64,
    /// Writes acknowledged with `+OK`.
    pub(crate) acked_writes: u64,
    /// Acknowledged writes missing at the end, each within Redis's asynchronous-replication window.
    pub(crate) lost_in_window: u64,
    /// The master everything converged on, if any.
    pub(crate) final_master: Option<usize>,
    /// Failovers (`REPLICAOF NO ONE` executed by a replica).
    pub(crate) promotions: u64,
    /// Simulated time, ms.
    pub(crate) simulated_ms: u64,
    /// The last faults, engine events and model changes.
    pub(crate) trace: Vec<String>,
}

/// A broken invariant: when, what, and the trace that led there.
#[derive(Clone, Debug)]
pub(crate) struct Violation {
    /// Simulated time, ms.
    pub(crate) at_ms: u64,
    /// What broke.
    pub(crate) message: String,
    /// The last faults, engine events and model changes.
    pub(crate) trace: Vec<String>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "at {} ms: {}", self.at_ms, self.message)?;
        for line in &self.trace {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

/// How long an engine may keep writing to a server another engine demoted: until its next `INFO` of it comes back
/// (one check period plus the round trip), or, if the server stops answering first, until it counts it down.
pub(crate) fn stale_master_allowance(slow_ms: u64) -> u64 {
    (CHECK_PERIOD_MS + 2 * LATENCY_MS + 2 * slow_ms).max(DOWN_AFTER_MS) + 1
}

/// How long two engines may route to different masters: one check period plus the delays of the replies that
/// tell the slower engine, and one promotion round trip.
pub(crate) fn split_allowance(max_slow_ms: u64) -> u64 {
    CHECK_PERIOD_MS + 4 * LATENCY_MS + 2 * max_slow_ms + 1
}

/// Runs `scenario` to the end; Err with the first broken invariant.
pub(crate) fn run(scenario: &Scenario) -> Result<Outcome, Violation> {
    let mut sim = Sim::new(scenario);
    match sim.run() {
        Ok(()) => Ok(Outcome { trace: sim.trace.into_iter().collect(), ..sim.outcome }),
        Err(message) => Err(Violation { at_ms: sim.now, message, trace: sim.trace.into_iter().collect() }),
    }
}

type Key = (usize, ConnId);

enum Delivery {
    Connected,
    ConnectFailed,
    Closed,
    Data(Bytes),
}

enum Net {
    Connect {
        key: Key,
    },
    ToServer {
        key: Key,
        data: Bytes,
    },
    /// A server works through its backlog.
    Drain {
        server: usize,
    },
    ToEngine {
        key: Key,
        what: Delivery,
    },
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ServerSide {
    Pending,
    Alive,
    Dead,
}

struct NetConn {
    server: usize,
    side: ServerSide,
    engine_open: bool,
    tap_scanner: RequestScanner,
    tap_buf: BytesMut,
    server_scanner: RequestScanner,
    server_buf: BytesMut,
    engine_buf: BytesMut,
}

enum Op {
    Set { key: Bytes, value: Bytes, last: bool },
    Get { key: Bytes, value: Bytes },
}

struct Client {
    engine: usize,
    conn: ConnId,
    to_engine: BytesMut,
    from_engine: BytesMut,
    scanner: ReplyScanner,
    outstanding: VecDeque<Op>,
    readable: bool,
    next_at: u64,
    sent: u64,
    acked: Vec<(Bytes, Bytes)>,
}

struct Sim<'a> {
    scenario: &'a Scenario,
    base: Instant,
    now: u64,
    config: Config,
    engines: Vec<Option<Engine>>,
    engine_start: Vec<u64>,
    cluster: Cluster,
    conns: BTreeMap<Key, NetConn>,
    clients: Vec<Client>,
    client_of: BTreeMap<Key, usize>,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    payloads: BTreeMap<u64, Net>,
    seq: u64,
    faults: Vec<(u64, Fault)>,
    next_fault: usize,
    partitions: BTreeSet<(usize, usize)>,
    /// Per server, what arrived and is not processed yet, in arrival order, each with the time it may be
    /// processed (arrival plus the server's delay): a slow server's queue, and everything a hung server buffers.
    backlog: Vec<VecDeque<(u64, Key, Bytes)>>,
    next_replication: u64,
    heal_at: u64,
    healed: bool,
    converge_at: u64,
    converged: bool,
    end_at: u64,
    split_since: Option<u64>,
    /// When the last partition ended.
    partition_healed_at: Option<u64>,
    max_slow: u64,
    excused: Vec<bool>,
    /// Errors to the writes sent after convergence (a failure if there is a master to write to).
    late_failures: Vec<String>,
    trace: VecDeque<String>,
    outcome: Outcome,
}

impl<'a> Sim<'a> {
    fn new(scenario: &'a Scenario) -> Sim<'a> {
        let count = scenario.master_of.len();
        let servers: Vec<ServerAddress> =
            (0..count).map(|i| ServerAddress { host: "127.0.0.1".into(), port: port_of(i) }).collect();
        let mut config = Config::with_servers(servers);
        config.check_period = Duration::from_millis(CHECK_PERIOD_MS);
        config.down_after = Duration::from_millis(DOWN_AFTER_MS);
        config.hold = Duration::from_millis(DOWN_AFTER_MS + 3 * CHECK_PERIOD_MS);
        let mut faults = scenario.faults.clone();
        faults.sort_by_key(|(at, _)| *at);
        let last_fault = faults.last().map_or(0, |(at, _)| *at);
        let heal_at = last_fault + 1;
        let converge_at = heal_at + SETTLE_MS;
        let max_slow =
            faults.iter().filter_map(|(_, f)| if let Fault::Slow { ms, .. } = f { Some(*ms) } else { None }).max();
        let engine_start: Vec<u64> =
            (0..scenario.engines).map(|e| if e == 0 { 0 } else { scenario.second_engine_delay_ms }).collect();
        let mut cluster = Cluster::new(&scenario.master_of, &scenario.priorities);
        cluster.replicate(0);
        Sim {
            scenario,
            base: Instant::now(),
            now: 0,
            config,
            engines: (0..scenario.engines).map(|_| None).collect(),
            engine_start,
            cluster,
            conns: BTreeMap::new(),
            clients: Vec::new(),
            client_of: BTreeMap::new(),
            queue: BinaryHeap::new(),
            payloads: BTreeMap::new(),
            seq: 0,
            faults,
            next_fault: 0,
            partitions: BTreeSet::new(),
            backlog: vec![VecDeque::new(); count],
            next_replication: REPLICATION_PERIOD_MS,
            heal_at,
            healed: false,
            converge_at,
            converged: false,
            end_at: converge_at + DRAIN_MS,
            split_since: None,
            partition_healed_at: None,
            max_slow: max_slow.unwrap_or(0),
            excused: Vec::new(),
            late_failures: Vec::new(),
            trace: VecDeque::new(),
            outcome: Outcome::default(),
        }
    }

    fn at(&self, ms: u64) -> Instant {
        self.base + Duration::from_millis(ms)
    }

    fn ms(&self, instant: Instant) -> u64 {
        let since = instant.saturating_duration_since(self.base);
        let whole = since.as_millis() as u64;
        if Duration::from_millis(whole) < since {
            whole + 1
        } else {
            whole
        }
    }

    fn note(&mut self, line: String) {
        if self.trace.len() == TRACE_LINES {
            self.trace.pop_front();
        }
        self.trace.push_back(format!("{:>6} {line}", self.now));
    }

    fn schedule(&mut self, at: u64, net: Net) {
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq)));
        self.payloads.insert(self.seq, net);
    }

    fn run(&mut self) -> Result<(), String> {
        loop {
            let next = self.next_time();
            if next >= self.end_at {
                break;
            }
            self.now = next;
            self.step()?;
        }
        self.now = self.end_at;
        self.final_checks()
    }

    fn next_time(&self) -> u64 {
        let mut next = self.end_at;
        if !self.converged {
            next = next.min(self.converge_at);
        }
        if !self.healed {
            next = next.min(self.heal_at);
        }
        if let Some((at, _)) = self.faults.get(self.next_fault) {
            next = next.min(*at);
        }
        if let Some(Reverse((at, _))) = self.queue.peek() {
            next = next.min(*at);
        }
        next = next.min(self.next_replication);
        for (e, engine) in self.engines.iter().enumerate() {
            match engine {
                None => next = next.min(self.engine_start[e]),
                Some(engine) => {
                    if let Some((at, _)) = engine.poll_timeout() {
                        next = next.min(self.ms(at).max(self.now));
                    }
                }
            }
        }
        for client in &self.clients {
            if client.next_at != u64::MAX {
                next = next.min(client.next_at);
            }
        }
        next
    }

    fn step(&mut self) -> Result<(), String> {
        for e in 0..self.engines.len() {
            if self.engines[e].is_none() && self.now >= self.engine_start[e] {
                self.start_engine(e)?;
            }
        }
        while let Some(&(at, fault)) = self.faults.get(self.next_fault) {
            if at > self.now {
                break;
            }
            self.next_fault += 1;
            self.apply_fault(fault)?;
        }
        if !self.healed && self.now >= self.heal_at {
            self.heal()?;
        }
        while let Some(&Reverse((at, seq))) = self.queue.peek() {
            if at > self.now {
                break;
            }
            self.queue.pop();
            let net = self.payloads.remove(&seq).expect("every queued id has a payload");
            self.deliver(net)?;
        }
        if self.now >= self.next_replication {
            self.next_replication = self.now + REPLICATION_PERIOD_MS;
            self.cluster.replicate(self.now);
        }
        for index in 0..self.clients.len() {
            if self.clients[index].next_at <= self.now {
                self.client_send(index)?;
            }
        }
        for e in 0..self.engines.len() {
            let due = self.engines[e].as_ref().and_then(|engine| engine.poll_timeout()).map(|(at, _)| at);
            if due.is_some_and(|at| at <= self.at(self.now)) {
                let now = self.at(self.now);
                self.engines[e].as_mut().expect("due implies started").handle_timeout(now);
                self.drain(e)?;
                if let Some((at, reason)) = self.engines[e].as_ref().and_then(|engine| engine.poll_timeout()) {
                    if at <= now {
                        return Err(format!("engine {e} asks again for a timeout already handled ({reason:?})"));
                    }
                }
            }
        }
        if !self.converged && self.now >= self.converge_at {
            self.converged = true;
            self.check_converged()?;
        }
        self.check_step()
    }

    fn start_engine(&mut self, e: usize) -> Result<(), String> {
        self.engines[e] = Some(Engine::new(self.config.clone(), self.at(self.now)));
        for c in 0..self.scenario.clients_per_engine {
            let peer = format!("10.0.{e}.{}:40000", c + 1).parse().expect("a valid socket address");
            let now = self.at(self.now);
            let conn = self.engines[e].as_mut().expect("just started").accept(now, peer);
            let index = self.clients.len();
            self.client_of.insert((e, conn), index);
            self.clients.push(Client {
                engine: e,
                conn,
                to_engine: BytesMut::new(),
                from_engine: BytesMut::new(),
                scanner: ReplyScanner::new(Limits::default()),
                outstanding: VecDeque::new(),
                readable: true,
                next_at: self.now + (index as u64 * 7) % self.scenario.client_interval_ms.max(1),
                sent: 0,
                acked: Vec::new(),
            });
        }
        self.drain(e)
    }

    // ------------------------------------------------------------------ faults

    fn apply_fault(&mut self, fault: Fault) -> Result<(), String> {
        let count = self.cluster.servers.len();
        let valid = match fault {
            Fault::Crash(s) | Fault::Hang(s) | Fault::Unhang(s) => s < count,
            Fault::Restart { server, .. } | Fault::Slow { server, .. } => server < count,
            Fault::Partition { engine, server } | Fault::Heal { engine, server } => {
                server < count && engine < self.engines.len()
            }
        };
        if !valid {
            return Ok(());
        }
        self.note(format!("fault {fault:?}"));
        match fault {
            Fault::Crash(s) => {
                if self.cluster.servers[s].health != Health::Crashed {
                    self.cluster.crash(s);
                    self.backlog[s].clear();
                    self.kill_conns(|_, server| server == s);
                }
            }
            Fault::Restart { server, load_ms } => {
                if self.cluster.servers[server].health == Health::Crashed {
                    self.cluster.restart(server, self.now, load_ms);
                }
            }
            Fault::Hang(s) => {
                if self.cluster.servers[s].health == Health::Up {
                    self.cluster.servers[s].health = Health::Hung;
                    self.cluster.holders_dirty = true;
                }
            }
            Fault::Unhang(s) => self.unhang(s)?,
            Fault::Slow { server, ms } => self.cluster.servers[server].slow_ms = ms,
            Fault::Partition { engine, server } => {
                if self.partitions.insert((engine, server)) {
                    self.kill_conns(|e, s| e == engine && s == server);
                }
            }
            Fault::Heal { engine, server } => {
                if self.partitions.remove(&(engine, server)) && self.partitions.is_empty() {
                    self.partition_healed_at = Some(self.now);
                }
            }
        }
        Ok(())
    }

    fn heal(&mut self) -> Result<(), String> {
        self.healed = true;
        self.note("heal".to_string());
        if !self.partitions.is_empty() {
            self.partitions.clear();
            self.partition_healed_at = Some(self.now);
        }
        for s in 0..self.cluster.servers.len() {
            self.cluster.servers[s].slow_ms = 0;
            self.unhang(s)?;
            if self.scenario.restart_at_end && self.cluster.servers[s].health == Health::Crashed {
                self.cluster.restart(s, self.now, 0);
            }
        }
        Ok(())
    }

    fn unhang(&mut self, s: usize) -> Result<(), String> {
        if self.cluster.servers[s].health != Health::Hung {
            return Ok(());
        }
        self.cluster.servers[s].health = Health::Up;
        self.cluster.holders_dirty = true;
        self.drain_backlog(s)
    }

    /// Processes, in arrival order, what server `s` has had long enough (unless it is hung or crashed).
    fn drain_backlog(&mut self, s: usize) -> Result<(), String> {
        while self.cluster.servers[s].health == Health::Up {
            match self.backlog[s].front() {
                Some(&(ready, _, _)) if ready <= self.now => {
                    let (_, key, data) = self.backlog[s].pop_front().expect("front exists");
                    if self.conns.get(&key).is_some_and(|c| c.side == ServerSide::Alive) {
                        self.process(key, data)?;
                    }
                }
                _ => break,
            }
        }
        Ok(())
    }

    /// Resets every live connection that `matches(engine, server)`; the engines hear of it one latency later.
    fn kill_conns(&mut self, matches: impl Fn(usize, usize) -> bool) {
        let mut closed = Vec::new();
        for (key, conn) in self.conns.iter_mut() {
            if matches(key.0, conn.server) && conn.side != ServerSide::Dead {
                conn.side = ServerSide::Dead;
                if conn.engine_open {
                    closed.push(*key);
                }
            }
        }
        for key in closed {
            self.schedule(self.now + LATENCY_MS, Net::ToEngine { key, what: Delivery::Closed });
        }
    }

    // ------------------------------------------------------------------ network

    fn deliver(&mut self, net: Net) -> Result<(), String> {
        match net {
            Net::Connect { key } => {
                let Some(conn) = self.conns.get_mut(&key) else { return Ok(()) };
                let server = conn.server;
                let refused = self.cluster.servers[server].health == Health::Crashed
                    || self.partitions.contains(&(key.0, server));
                conn.side = if refused { ServerSide::Dead } else { ServerSide::Alive };
                let what = if refused { Delivery::ConnectFailed } else { Delivery::Connected };
                self.schedule(self.now + LATENCY_MS, Net::ToEngine { key, what });
            }
            Net::ToServer { key, data } => {
                let Some(conn) = self.conns.get(&key) else { return Ok(()) };
                if conn.side != ServerSide::Alive {
                    return Ok(());
                }
                let s = conn.server;
                let server = &self.cluster.servers[s];
                if server.health == Health::Up && server.slow_ms == 0 && self.backlog[s].is_empty() {
                    self.process(key, data)?;
                } else {
                    let last = self.backlog[s].back().map_or(0, |&(ready, _, _)| ready);
                    let ready = (self.now + server.slow_ms).max(last);
                    self.backlog[s].push_back((ready, key, data));
                    self.schedule(ready, Net::Drain { server: s });
                }
            }
            Net::Drain { server } => self.drain_backlog(server)?,
            Net::ToEngine { key, what } => {
                let now = self.at(self.now);
                let Some(conn) = self.conns.get_mut(&key) else { return Ok(()) };
                if !conn.engine_open {
                    return Ok(());
                }
                let engine = self.engines[key.0].as_mut().expect("connections belong to started engines");
                match what {
                    Delivery::Connected => engine.handle_input(now, Input::Connected { conn: key.1 }),
                    Delivery::ConnectFailed => {
                        conn.engine_open = false;
                        engine.handle_input(now, Input::ConnectFailed { conn: key.1, reason: "connection refused" });
                    }
                    Delivery::Closed => {
                        conn.engine_open = false;
                        engine.handle_input(now, Input::Closed { conn: key.1 });
                    }
                    Delivery::Data(data) => {
                        conn.engine_buf.extend_from_slice(&data);
                        engine.handle_input(now, Input::Data { conn: key.1, buf: &mut conn.engine_buf });
                    }
                }
                self.drain(key.0)?;
            }
        }
        Ok(())
    }

    /// A server executes what arrived on a connection and writes the replies back.
    fn process(&mut self, key: Key, data: Bytes) -> Result<(), String> {
        let Some(conn) = self.conns.get_mut(&key) else { return Ok(()) };
        let s = conn.server;
        conn.server_buf.extend_from_slice(&data);
        let mut requests = Vec::new();
        loop {
            match conn.server_scanner.next_request(&mut conn.server_buf) {
                Ok(Some(request)) => requests.push(request),
                Ok(None) => break,
                Err(error) => return Err(format!("engine {} sent server {s} a malformed request: {error}", key.0)),
            }
        }
        let mut out = BytesMut::new();
        for request in requests {
            if request.is_empty() {
                continue;
            }
            let (reply, effect) = self.cluster.execute(s, self.now, &request);
            out.extend_from_slice(&reply);
            if effect.duplicate_write {
                return Err(format!(
                    "server {s} executed a SET for key {:?} a second time (a write was retried)",
                    String::from_utf8_lossy(request.arg(1).unwrap_or_default())
                ));
            }
            if let Some(id) = effect.wrote {
                self.write_executed(s, id);
            }
            if effect.promoted {
                self.outcome.promotions += 1;
                self.note(format!("server {s} promoted (offset {})", self.cluster.servers[s].offset()));
                self.promoted(s);
            }
            if effect.demoted || effect.promoted {
                self.cluster.holders_dirty = true;
            }
            if effect.demoted {
                self.note(format!("server {s} demoted: {:?}", self.cluster.servers[s].role));
            }
        }
        if !out.is_empty() {
            self.schedule(self.now + LATENCY_MS, Net::ToEngine { key, what: Delivery::Data(out.freeze()) });
        }
        Ok(())
    }

    // ------------------------------------------------------------------ engines

    /// Performs everything engine `e` asked for.
    fn drain(&mut self, e: usize) -> Result<(), String> {
        let mut resume = Vec::new();
        loop {
            let Some(engine) = self.engines[e].as_mut() else { return Ok(()) };
            let Some(action) = engine.poll_action() else { break };
            match action {
                Action::Send { conn, data } => {
                    if let Some(&client) = self.client_of.get(&(e, conn)) {
                        self.client_receive(client, &data)?;
                    } else {
                        self.send_to_server((e, conn), data)?;
                    }
                }
                Action::Connect { conn, address } => {
                    let Some(server) = self.cluster.server_at(&address) else {
                        return Err(format!("engine {e} connects to {address}, which is not configured"));
                    };
                    if self.conns.contains_key(&(e, conn)) {
                        return Err(format!("engine {e} reuses connection id {conn}"));
                    }
                    self.conns.insert(
                        (e, conn),
                        NetConn {
                            server,
                            side: ServerSide::Pending,
                            engine_open: true,
                            tap_scanner: RequestScanner::new(Limits::default()),
                            tap_buf: BytesMut::new(),
                            server_scanner: RequestScanner::new(Limits::default()),
                            server_buf: BytesMut::new(),
                            engine_buf: BytesMut::new(),
                        },
                    );
                    self.schedule(self.now + LATENCY_MS, Net::Connect { key: (e, conn) });
                }
                Action::Close { conn } => {
                    if self.client_of.contains_key(&(e, conn)) {
                        return Err(format!("engine {e} closed client {conn}, which only sends SET and GET"));
                    }
                    match self.conns.get_mut(&(e, conn)) {
                        Some(c) if c.engine_open => c.engine_open = false,
                        _ => return Err(format!("engine {e} closes {conn}, which is not open")),
                    }
                }
                Action::SetReadable { conn, readable } => {
                    if let Some(&client) = self.client_of.get(&(e, conn)) {
                        self.clients[client].readable = readable;
                        if readable {
                            resume.push(client);
                        }
                    }
                }
            }
        }
        while let Some(engine) = self.engines[e].as_mut() {
            let Some(event) = engine.poll_event() else { break };
            if matches!(
                event,
                Event::MasterAdopted { .. }
                    | Event::MasterLost { .. }
                    | Event::PromotionStarted { .. }
                    | Event::ReplicaOfSent { .. }
                    | Event::ServerDown { .. }
                    | Event::ServerUp { .. }
                    | Event::RoleSeen { .. }
            ) {
                self.note(format!("engine {e}: {event}"));
            }
        }
        for client in resume {
            self.feed_client(client)?;
        }
        Ok(())
    }

    fn send_to_server(&mut self, key: Key, data: Bytes) -> Result<(), String> {
        let Some(conn) = self.conns.get_mut(&key) else {
            return Err(format!("engine {} sends on {}, which it never opened", key.0, key.1));
        };
        if !conn.engine_open {
            return Err(format!("engine {} sends on {}, which is closed", key.0, key.1));
        }
        let s = conn.server;
        conn.tap_buf.extend_from_slice(&data);
        let mut writes = 0;
        while let Ok(Some(request)) = conn.tap_scanner.next_request(&mut conn.tap_buf) {
            if request.arg(0).is_some_and(|name| name.eq_ignore_ascii_case(b"SET")) {
                writes += 1;
            }
        }
        if writes > 0 {
            let server = &self.cluster.servers[s];
            if server.role != SimRole::Master {
                let demoted_for = server.demoted_at_ms.map(|at| self.now - at);
                let allowed =
                    self.engines.len() > 1 && demoted_for.is_some_and(|d| d <= stale_master_allowance(self.max_slow));
                if !allowed {
                    return Err(format!(
                        "engine {} routed a SET to server {s}, which is {:?} (demoted {demoted_for:?} ms ago)",
                        key.0, server.role
                    ));
                }
            }
        }
        self.schedule(self.now + LATENCY_MS, Net::ToServer { key, data });
        Ok(())
    }

    // ------------------------------------------------------------------ clients

    fn client_send(&mut self, index: usize) -> Result<(), String> {
        let client = &mut self.clients[index];
        client.next_at = self.now + self.scenario.client_interval_ms.max(1);
        if self.now >= self.converge_at {
            client.next_at = u64::MAX;
        }
        if client.outstanding.len() >= MAX_OUTSTANDING {
            return Ok(());
        }
        let n = client.sent;
        client.sent += 1;
        self.outcome.requests += 1;
        let last = self.now >= self.converge_at;
        let op = if n % 3 == 2 && !client.acked.is_empty() && !last {
            let (key, value) = client.acked[(n as usize * 7) % client.acked.len()].clone();
            Op::Get { key, value }
        } else {
            let key = Bytes::from(format!("c{index}:{n}"));
            let value = Bytes::from(format!("v{index}:{n}"));
            Op::Set { key, value, last }
        };
        let request = match &op {
            Op::Set { key, value, .. } => crate::resp::Request::from_args(&[b"SET".as_slice(), key, value]),
            Op::Get { key, .. } => crate::resp::Request::from_args(&[b"GET".as_slice(), key]),
        };
        client.outstanding.push_back(op);
        client.to_engine.extend_from_slice(request.frame());
        self.feed_client(index)
    }

    fn feed_client(&mut self, index: usize) -> Result<(), String> {
        let now = self.at(self.now);
        let client = &mut self.clients[index];
        if !client.readable || client.to_engine.is_empty() {
            return Ok(());
        }
        let e = client.engine;
        let engine = self.engines[e].as_mut().expect("clients belong to started engines");
        engine.handle_input(now, Input::Data { conn: client.conn, buf: &mut client.to_engine });
        self.drain(e)
    }

    fn client_receive(&mut self, index: usize, data: &[u8]) -> Result<(), String> {
        let client = &mut self.clients[index];
        client.from_engine.extend_from_slice(data);
        loop {
            let client = &mut self.clients[index];
            let reply = match client.scanner.next_reply(&mut client.from_engine) {
                Ok(Some(reply)) => reply,
                Ok(None) => return Ok(()),
                Err(error) => return Err(format!("client {index} got a malformed reply: {error}")),
            };
            let Some(op) = client.outstanding.pop_front() else {
                return Err(format!("client {index} got a reply it did not ask for: {:?}", show(&reply)));
            };
            let error = reply.first() == Some(&b'-');
            if error {
                self.outcome.errors += 1;
            }
            match op {
                Op::Set { key, value, last } => {
                    if &reply[..] == b"+OK\r\n" {
                        self.outcome.acked_writes += 1;
                        self.clients[index].acked.push((key, value));
                    } else if !error {
                        return Err(format!("client {index}: SET {key:?} got {:?}", show(&reply)));
                    } else if last {
                        self.late_failures.push(format!("client {index}: {}", show(&reply)));
                    }
                }
                Op::Get { key, value } => {
                    let expected = crate::resp::bulk_reply(&value);
                    if !error && &reply[..] != b"$-1\r\n" && reply != expected {
                        return Err(format!("client {index}: GET {key:?} got {:?}, wrote {value:?}", show(&reply)));
                    }
                }
            }
        }
    }

    // ------------------------------------------------------------------ invariants

    fn routed_master(&self, e: usize) -> Option<usize> {
        self.engines[e].as_ref()?.master().and_then(|address| self.cluster.server_at(address))
    }

    fn write_executed(&mut self, server: usize, id: u64) {
        let id = id as usize;
        if self.excused.len() <= id {
            self.excused.resize(id + 1, false);
        }
        // Written while some engine does not route to this server: a failover or split view is under way.
        let agreed = (0..self.engines.len()).all(|e| self.routed_master(e) == Some(server));
        self.excused[id] = !agreed;
    }

    fn promoted(&mut self, p: usize) {
        let servers = &self.cluster.servers;
        for (id, write) in self.cluster.writes.iter().enumerate() {
            if self.excused[id] || servers[p].holds(write, id as u64) {
                continue;
            }
            let writer_running = servers[write.server].serving(self.now);
            let better_replica = servers.iter().enumerate().any(|(q, other)| {
                q != p
                    && other.serving(self.now)
                    && matches!(other.role, SimRole::Replica { .. })
                    && other.priority == servers[p].priority
                    && other.holds(write, id as u64)
            });
            if writer_running || !better_replica {
                self.excused[id] = true;
            }
        }
    }

    fn check_step(&mut self) -> Result<(), String> {
        if std::mem::take(&mut self.cluster.holders_dirty) {
            let servers = &self.cluster.servers;
            for (id, write) in self.cluster.writes.iter().enumerate() {
                if !self.excused[id] && !servers.iter().any(|s| s.health == Health::Up && s.holds(write, id as u64)) {
                    self.excused[id] = true;
                }
            }
        }
        // Split brain is two running masters taking writes: an engine still routing to a server that crashed or
        // hung (it counts it down within down_after) sends writes nowhere.
        let routed: BTreeSet<usize> = (0..self.engines.len())
            .filter_map(|e| self.routed_master(e))
            .filter(|&s| self.cluster.servers[s].health == Health::Up)
            .collect();
        let partitioned = !self.partitions.is_empty()
            || self.partition_healed_at.is_some_and(|at| self.now < at + PARTITION_AFTERMATH_MS);
        if routed.len() > 1 && !partitioned {
            let since = *self.split_since.get_or_insert(self.now);
            if self.now - since > split_allowance(self.max_slow) {
                return Err(format!("the engines have routed to different masters {routed:?} since {since} ms"));
            }
        } else {
            self.split_since = None;
        }
        Ok(())
    }

    fn check_converged(&mut self) -> Result<(), String> {
        let servers = &self.cluster.servers;
        let running: Vec<usize> = (0..servers.len()).filter(|&s| servers[s].health == Health::Up).collect();
        let masters: Vec<usize> = running.iter().copied().filter(|&s| servers[s].role == SimRole::Master).collect();
        let promotable = running.iter().any(|&s| servers[s].role == SimRole::Master || servers[s].priority != 0);
        let routed: Vec<Option<usize>> = (0..self.engines.len()).map(|e| self.routed_master(e)).collect();
        if !promotable {
            if routed.iter().any(Option::is_some) {
                return Err(format!("no running server may be master, yet the engines route to {routed:?}"));
            }
            return Ok(());
        }
        let [master] = masters[..] else {
            return Err(format!("not converged: running masters {masters:?} (running {running:?})"));
        };
        for &s in &running {
            if s != master && (servers[s].role != (SimRole::Replica { master: Some(master) }) || !servers[s].link_up) {
                return Err(format!(
                    "not converged: server {s} is {:?} (link up: {}), master is {master}",
                    servers[s].role, servers[s].link_up
                ));
            }
        }
        if routed.iter().any(|r| *r != Some(master)) {
            return Err(format!("not converged: the engines route to {routed:?}, the master is {master}"));
        }
        self.outcome.final_master = Some(master);
        Ok(())
    }

    fn final_checks(&mut self) -> Result<(), String> {
        self.outcome.simulated_ms = self.end_at;
        for (index, client) in self.clients.iter().enumerate() {
            if !client.outstanding.is_empty() {
                return Err(format!("client {index} still waits for {} replies", client.outstanding.len()));
            }
        }
        let Some(master) = self.outcome.final_master else { return Ok(()) };
        if let Some(failure) = self.late_failures.first() {
            return Err(format!("a write sent after convergence failed: {failure}"));
        }
        let keys: BTreeMap<&Bytes, usize> =
            self.cluster.writes.iter().enumerate().map(|(id, w)| (&w.key, id)).collect();
        for (index, client) in self.clients.iter().enumerate() {
            for (key, _) in &client.acked {
                let id = keys[key];
                let write = &self.cluster.writes[id];
                if self.cluster.servers[master].holds(write, id as u64) {
                    continue;
                }
                if self.excused[id] {
                    self.outcome.lost_in_window += 1;
                } else {
                    return Err(format!(
                        "client {index}'s acknowledged write {key:?} (run by server {} at {} ms) is lost",
                        write.server, write.at_ms
                    ));
                }
            }
        }
        Ok(())
    }
}

fn show(reply: &[u8]) -> String {
    String::from_utf8_lossy(reply).trim_end().to_string()
}
