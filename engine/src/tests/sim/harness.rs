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
//! ([`Input::Refused`]). A partition of engine `e` from server `s` closes that engine's connections and fails its
//! new ones ([`Input::ConnectFailed`], as a host that is unreachable). Replication
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
//!    or `busy_down_after` if the server stops answering ([`stale_master_allowance`]); the write gets `-READONLY`.
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
//! 6. Busy is not dead: no engine counts a running server it can reach down before [`BUSY_DOWN_AFTER_MS`] have
//!    passed since that engine last received a probe answer from it (it accepts connections, so it is busy, not
//!    gone), unless a crash, restart or partition touched it within [`DISTURBED_MS`].
//! 7. A crash is acted on at once: an engine routing to a master that crashed stops routing to it within
//!    [`CRASH_ACTED_ON_MS`] (the closed connections, one reconnect refused), unless it is cut off from it or the
//!    server was disturbed within one check period before (the reconnect is then rate-limited).

mod clients;
mod faults;
mod invariants;
mod network;

use self::clients::Client;
use self::network::{Net, NetConn};
use super::model::Cluster;
use super::scenario::{
    Fault, Outcome, Scenario, Violation, BUSY_DOWN_AFTER_MS, CHECK_PERIOD_MS, DOWN_AFTER_MS, DRAIN_MS, LATENCY_MS,
    REPLICATION_PERIOD_MS, SETTLE_MS,
};
use crate::testkit::{self, Driver, FakeClock};
use crate::{Action, Config, ConnId, Event};
use bytes::Bytes;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::time::Duration;

/// Lines of trace kept for a violation report.
const TRACE_LINES: usize = 200;

/// Runs `scenario` to the end; Err with the first broken invariant.
pub(crate) fn run(scenario: &Scenario) -> Result<Outcome, Violation> {
    let mut sim = Sim::new(scenario);
    match sim.run() {
        Ok(()) => Ok(Outcome { trace: sim.trace.into_iter().collect(), ..sim.outcome }),
        Err(message) => Err(Violation { at_ms: sim.clock.ms(), message, trace: sim.trace.into_iter().collect() }),
    }
}

type Key = (usize, ConnId);

struct Sim<'a> {
    scenario: &'a Scenario,
    /// Simulated time, in whole milliseconds from the start.
    clock: FakeClock,
    config: Config,
    /// The engines, each with its own read buffers, from the time they start.
    engines: Vec<Option<Driver>>,
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
    /// Per (engine, server): when the engine last received a probe answer (`PONG` or `INFO`) from the server.
    last_probe_answer: BTreeMap<(usize, usize), u64>,
    /// Per server: when a crash, restart, partition or heal last touched it.
    disturbed_at: Vec<Option<u64>>,
    /// Per engine: the master it routed to when that crashed, and when.
    crashed_master: Vec<Option<(usize, u64)>>,
    excused: Vec<bool>,
    /// Errors to the writes sent after convergence (a failure if there is a master to write to).
    late_failures: Vec<String>,
    trace: VecDeque<String>,
    outcome: Outcome,
}

impl<'a> Sim<'a> {
    fn new(scenario: &'a Scenario) -> Sim<'a> {
        let count = scenario.master_of.len();
        let mut config = testkit::config(count);
        config.check_period = Duration::from_millis(CHECK_PERIOD_MS);
        config.down_after = Duration::from_millis(DOWN_AFTER_MS);
        config.busy_down_after = Duration::from_millis(BUSY_DOWN_AFTER_MS);
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
        let mut cluster = Cluster::new(&scenario.master_of, &scenario.priorities, 0);
        cluster.replicate(0);
        Sim {
            scenario,
            clock: FakeClock::new(),
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
            last_probe_answer: BTreeMap::new(),
            disturbed_at: vec![None; count],
            crashed_master: vec![None; scenario.engines],
            excused: Vec::new(),
            late_failures: Vec::new(),
            trace: VecDeque::new(),
            outcome: Outcome::default(),
        }
    }

    fn note(&mut self, line: String) {
        if self.trace.len() == TRACE_LINES {
            self.trace.pop_front();
        }
        self.trace.push_back(format!("{:>6} {line}", self.clock.ms()));
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
            self.clock.advance_to(self.clock.at_ms(next));
            self.step()?;
        }
        self.clock.advance_to(self.clock.at_ms(self.end_at));
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
                Some(driver) => {
                    if let Some((at, _)) = driver.engine.poll_timeout() {
                        next = next.min(self.clock.ms_of(at).max(self.clock.ms()));
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
            if self.engines[e].is_none() && self.clock.ms() >= self.engine_start[e] {
                self.start_engine(e)?;
            }
        }
        while let Some(&(at, fault)) = self.faults.get(self.next_fault) {
            if at > self.clock.ms() {
                break;
            }
            self.next_fault += 1;
            self.apply_fault(fault)?;
        }
        if !self.healed && self.clock.ms() >= self.heal_at {
            self.heal()?;
        }
        while let Some(&Reverse((at, seq))) = self.queue.peek() {
            if at > self.clock.ms() {
                break;
            }
            self.queue.pop();
            let net = self.payloads.remove(&seq).expect("every queued id has a payload");
            self.deliver(net)?;
        }
        if self.clock.ms() >= self.next_replication {
            self.next_replication = self.clock.ms() + REPLICATION_PERIOD_MS;
            self.cluster.replicate(self.clock.ms());
        }
        for index in 0..self.clients.len() {
            if self.clients[index].next_at <= self.clock.ms() {
                self.client_send(index)?;
            }
        }
        for e in 0..self.engines.len() {
            let due = self.engines[e].as_ref().and_then(|driver| driver.engine.poll_timeout()).map(|(at, _)| at);
            if due.is_some_and(|at| at <= self.clock.now()) {
                let now = self.clock.now();
                self.driver(e).advance_to(now);
                self.drain(e)?;
                if let Some((at, reason)) = self.engines[e].as_ref().and_then(|driver| driver.engine.poll_timeout()) {
                    if at <= now {
                        return Err(format!("engine {e} asks again for a timeout already handled ({reason:?})"));
                    }
                }
            }
        }
        if !self.converged && self.clock.ms() >= self.converge_at {
            self.converged = true;
            self.check_converged()?;
        }
        self.check_step()
    }

    fn start_engine(&mut self, e: usize) -> Result<(), String> {
        self.engines[e] = Some(Driver::with_clock(self.config.clone(), self.clock));
        for _ in 0..self.scenario.clients_per_engine {
            let conn = self.driver(e).accept();
            let index = self.clients.len();
            self.client_of.insert((e, conn), index);
            let first_at = self.clock.ms() + (index as u64 * 7) % self.scenario.client_interval_ms.max(1);
            self.clients.push(Client::new(e, conn, first_at));
        }
        self.drain(e)
    }

    /// Engine `e`'s driver, its clock brought to the simulation's time (an engine sees time only when called).
    fn driver(&mut self, e: usize) -> &mut Driver {
        let now = self.clock.now();
        self.engines[e].as_mut().expect("only started engines are driven").catch_up(now)
    }

    /// Performs everything engine `e` asked for.
    fn drain(&mut self, e: usize) -> Result<(), String> {
        let mut resume = Vec::new();
        loop {
            let Some(driver) = self.engines[e].as_mut() else { return Ok(()) };
            let Some(action) = driver.engine.poll_action() else { break };
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
                    self.conns.insert((e, conn), NetConn::new(server));
                    self.schedule(self.clock.ms() + LATENCY_MS, Net::Connect { key: (e, conn) });
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
        while let Some(driver) = self.engines[e].as_mut() {
            let Some(event) = driver.engine.poll_event() else { break };
            if let Event::ServerDown { address, .. } = &event {
                self.check_counted_down(e, address.port)?;
            }
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
}
