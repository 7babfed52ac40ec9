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
//! 8. `WAIT` (see [`clients`]).
//! 9. Every client gets its replies in request order: each `ECHO` and `EXEC` (mixed traffic) is answered with its
//!    own tag, or an error.
//! 10. `SCAN` (mixed traffic, while reads are split): a cursor other than 0 reaches only the server process that
//!     returned it (a cursor whose server was removed, is down or no longer serves reads starts again from 0
//!     elsewhere), and an iteration that ends has returned every key held throughout by the server that served
//!     it since its last start. Exception, a known engine bug: a cursor continued on its own server after that
//!     server restarted (a new process) is counted in [`Outcome::scans_continued_after_restart`], not failed.
//! 11. Servers come and go only as the operator says ([`Scenario::admin`]): after an engine's
//!     [`Event::ServerRemoved`] for an address, that engine opens no connection to it and sends nothing on one
//!     until it reports it added again; the routed master is one of the engine's servers; the operator's commands
//!     each get one reply (`+OK` or an error). Membership counts for the other invariants: a server no engine
//!     watches (a spare, a removed one) may be anything. With one engine, a planned switchover (`PROXY FAILOVER`)
//!     promotes a server holding every write of the master it replaces, if that master runs.
//! 12. With [`Scenario::workers`], one deciding engine and its workers (see [`workers`]): no worker decides, and
//!     no write reaches an old master once any worker has written to a newer one. The decider and its workers are
//!     one host: a partition cuts them all off. Invariant 7 allows a worker the time it takes to pick up its
//!     decider's word.

mod admin;
mod clients;
mod faults;
mod invariants;
mod network;
mod workers;

use self::clients::Client;
use self::network::{Net, NetConn};
use super::model::Cluster;
use super::scenario::{
    AdminOp, Fault, Outcome, Scenario, Violation, BUSY_DOWN_AFTER_MS, CHECK_PERIOD_MS, DOWN_AFTER_MS, DRAIN_MS,
    LATENCY_MS, REPLICATION_PERIOD_MS, SETTLE_MS,
};
use crate::address::ServerAddress;
use crate::config::Mode;
use crate::testkit::{self, Driver, FakeClock};
use crate::{Action, Config, ConnId, Event, TimerReason};
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
    /// Each engine's configuration now (reloads change it), starting from the same one.
    configs: Vec<Config>,
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
    /// The operator's actions, in time order, and the next one due.
    admin_ops: Vec<(u64, AdminOp)>,
    next_admin: usize,
    /// Per engine, its admin client (from the time it starts).
    admins: Vec<Option<admin::AdminClient>>,
    /// Per model server, the address the operator names it by (its own, or its alias after a re-address).
    operator_address: Vec<ServerAddress>,
    /// (engine, address) of every server an engine reported removed and has not added back since.
    removed: BTreeSet<(usize, ServerAddress)>,
    /// Per engine, when it last asked again for a timeout it had just handled (a known engine bug, tolerated).
    timeout_spun: Vec<Option<u64>>,
    /// Per engine, the master a planned switchover it began is moving away from (model index).
    switching_from: Vec<Option<usize>>,
    /// Per client, the `SCAN`s servers executed for its iteration in progress, on connections the engine had open.
    scan_traces: Vec<Vec<network::ScanExec>>,
    /// Per client, which server process (server, incarnation) returned each of its cursors.
    scan_issued: Vec<BTreeMap<u64, (usize, u32)>>,
    /// With workers: what the decider published last, and each worker's confirmed epoch.
    workers: workers::Workers,
}

impl<'a> Sim<'a> {
    fn new(scenario: &'a Scenario) -> Sim<'a> {
        let configured = scenario.master_of.len();
        let count = configured + scenario.spares;
        let mut config = testkit::config(configured);
        if scenario.reads_to_slaves {
            config.mode = Mode::ReadsToSlaves;
        }
        config.check_period = Duration::from_millis(CHECK_PERIOD_MS);
        config.down_after = Duration::from_millis(DOWN_AFTER_MS);
        config.busy_down_after = Duration::from_millis(BUSY_DOWN_AFTER_MS);
        config.hold = Duration::from_millis(DOWN_AFTER_MS + 3 * CHECK_PERIOD_MS);
        let mut faults = scenario.faults.clone();
        faults.sort_by_key(|(at, _)| *at);
        let mut admin_ops = scenario.admin.clone();
        admin_ops.sort_by_key(|(at, _)| *at);
        let last_fault = faults.last().map_or(0, |(at, _)| *at);
        let last_admin = admin_ops.last().map_or(0, |(at, _)| *at);
        let heal_at = last_fault.max(last_admin) + 1;
        let converge_at = heal_at + SETTLE_MS;
        let max_slow =
            faults.iter().filter_map(|(_, f)| if let Fault::Slow { ms, .. } = f { Some(*ms) } else { None }).max();
        let engine_count = if scenario.workers > 0 { 1 + scenario.workers } else { scenario.engines };
        let engine_start: Vec<u64> = (0..engine_count)
            .map(|e| if e == 0 || scenario.workers > 0 { 0 } else { scenario.second_engine_delay_ms })
            .collect();
        let mut cluster = Cluster::new(&scenario.master_of, &scenario.priorities, scenario.spares);
        let operator_address = cluster.servers.iter().map(|s| s.address.clone()).collect();
        cluster.replicate(0);
        Sim {
            scenario,
            clock: FakeClock::new(),
            configs: vec![config; engine_count],
            engines: (0..engine_count).map(|_| None).collect(),
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
            crashed_master: vec![None; engine_count],
            excused: Vec::new(),
            late_failures: Vec::new(),
            trace: VecDeque::new(),
            outcome: Outcome::default(),
            admin_ops,
            next_admin: 0,
            admins: (0..engine_count).map(|_| None).collect(),
            operator_address,
            removed: BTreeSet::new(),
            switching_from: vec![None; engine_count],
            timeout_spun: vec![None; engine_count],
            scan_traces: Vec::new(),
            scan_issued: Vec::new(),
            workers: workers::Workers::new(scenario, engine_count),
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
        if let Some((at, _)) = self.admin_ops.get(self.next_admin) {
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
                        let mut at = self.clock.ms_of(at).max(self.clock.ms());
                        if self.timeout_spun[e].is_some_and(|spun| at <= spun) {
                            at = self.clock.ms() + 1;
                        }
                        next = next.min(at);
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
        while let Some(&(at, op)) = self.admin_ops.get(self.next_admin) {
            if at > self.clock.ms() {
                break;
            }
            self.next_admin += 1;
            self.apply_admin(op)?;
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
                    if at <= now && reason == TimerReason::Switchover {
                        // A known engine bug (see `Outcome::switchover_timer_spins`): counted; the harness moves
                        // on (it wakes the engine again a millisecond later, where a runtime would spin).
                        self.outcome.switchover_timer_spins += 1;
                        self.timeout_spun[e] = Some(self.clock.ms());
                        if self.outcome.switchover_timer_spins == 1 {
                            self.note(format!("engine {e} asks again for the switchover timeout (known engine bug)"));
                        }
                    } else if at <= now {
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
        self.engines[e] = Some(self.new_driver(e)?);
        let (serves_clients, serves_admin) = self.workers.serves(e);
        for _ in 0..self.scenario.clients_per_engine * usize::from(serves_clients) {
            let conn = self.driver(e).accept();
            let index = self.clients.len();
            self.client_of.insert((e, conn), index);
            let first_at = self.clock.ms() + (index as u64 * 7) % self.scenario.client_interval_ms.max(1);
            let mixed = self.scenario.mixed_traffic.map(|seed| seed ^ ((index as u64) << 48));
            self.clients.push(Client::new(e, conn, first_at, mixed));
            self.scan_traces.push(Vec::new());
            self.scan_issued.push(BTreeMap::new());
        }
        if serves_admin {
            let now = self.clock.now();
            let conn = self.driver(e).engine.accept_admin(now, "127.0.0.1:40000".parse().expect("an address"));
            self.admins[e] = Some(admin::AdminClient::new(conn));
        }
        self.drain(e)
    }

    /// Engine `e`'s driver, its clock brought to the simulation's time (an engine sees time only when called).
    fn driver(&mut self, e: usize) -> &mut Driver {
        let now = self.clock.now();
        self.engines[e].as_mut().expect("only started engines are driven").catch_up(now)
    }

    /// Performs everything engine `e` asked for.
    ///
    /// Actions and events come in two queues, so their order within one input is lost: a server added by this
    /// input may be connected to in it (its `ServerAdded` counts first), and one removed by it may have been sent
    /// its last probe in it (its `ServerRemoved` counts after the actions).
    fn drain(&mut self, e: usize) -> Result<(), String> {
        let mut events = Vec::new();
        while let Some(event) = self.engines[e].as_mut().and_then(|driver| driver.engine.poll_event()) {
            if let Event::ServerAdded { address } = &event {
                self.removed.remove(&(e, address.clone()));
            }
            events.push(event);
        }
        let (mut resume, mut reconnect) = (Vec::new(), Vec::new());
        if let Some(driver) = self.engines[e].as_mut() {
            assert!(!driver.engine.orders_pending(), "the engine left orders for the pool unexecuted");
        }
        loop {
            let Some(driver) = self.engines[e].as_mut() else { return Ok(()) };
            let Some(action) = driver.engine.poll_action() else { break };
            match action {
                Action::Send { conn, data } => {
                    if let Some(&client) = self.client_of.get(&(e, conn)) {
                        self.client_receive(client, &data)?;
                    } else if self.admins[e].as_ref().is_some_and(|a| a.conn == conn) {
                        self.admin_receive(e, &data)?;
                    } else {
                        self.send_to_server((e, conn), data)?;
                    }
                }
                Action::Connect { conn, address } => {
                    let Some(server) = self.cluster.server_at(&address) else {
                        return Err(format!("engine {e} connects to {address}, which is not configured"));
                    };
                    if self.removed.contains(&(e, address.clone())) {
                        return Err(format!("engine {e} connects to {address}, which it removed"));
                    }
                    if self.conns.contains_key(&(e, conn)) {
                        return Err(format!("engine {e} reuses connection id {conn}"));
                    }
                    self.conns.insert((e, conn), NetConn::new(server, address));
                    self.schedule(self.clock.ms() + LATENCY_MS, Net::Connect { key: (e, conn) });
                }
                Action::Close { conn } => {
                    if let Some(&client) = self.client_of.get(&(e, conn)) {
                        if !self.clients[client].private_lost {
                            return Err(format!("engine {e} closed client {client}, which sends only valid requests"));
                        }
                        reconnect.push(client);
                        continue;
                    }
                    if self.admins[e].as_ref().is_some_and(|a| a.conn == conn) {
                        return Err(format!("engine {e} closed its admin client {conn}"));
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
                    } else if let Some(admin) = self.admins[e].as_mut().filter(|a| a.conn == conn) {
                        admin.readable = readable;
                    }
                }
            }
        }
        for event in events {
            match &event {
                Event::ServerDown { address, .. } => self.check_counted_down(e, address.port)?,
                Event::ServerRemoving { address } => self.removal_began(e, address),
                Event::ServerRemoved { address } => {
                    self.removed.insert((e, address.clone()));
                    self.outcome.removals += 1;
                }
                Event::SwitchoverStarted { from, .. } => self.switching_from[e] = self.cluster.server_at(from),
                Event::SwitchoverEnded { .. } => self.switching_from[e] = None,
                Event::MasterAdopted { address, .. } if e == 0 => {
                    if let Some(server) = self.cluster.server_at(address) {
                        self.workers.adopted(server);
                    }
                }
                Event::PromotionStarted { .. } | Event::ReplicaOfSent { .. } if self.workers.is_worker(e) => {
                    return Err(format!("worker engine {e} decided something: {event}"));
                }
                _ => {}
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
                    | Event::ServerAdded { .. }
                    | Event::ServerRemoving { .. }
                    | Event::ServerRemoved { .. }
                    | Event::SwitchoverStarted { .. }
                    | Event::SwitchoverEnded { .. }
            ) {
                self.note(format!("engine {e}: {event}"));
            }
        }
        for client in reconnect {
            self.client_reconnects(client)?;
        }
        for client in resume {
            self.feed_client(client)?;
        }
        self.feed_admin(e)?;
        self.pass_topology(e)
    }
}
