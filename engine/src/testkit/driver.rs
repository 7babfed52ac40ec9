//! [`Driver`]: an [`Engine`] on a [`FakeClock`] with the plumbing every test repeats: read buffers per
//! connection, drained actions, connects reported, probes answered by [`FakeServer`]s.

use super::clock::FakeClock;
use super::server::FakeServer;
use crate::{Action, Config, ConnId, ConnectFailure, Engine, Event, Input, ServerAddress, Topology};
use bytes::BytesMut;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A configuration with `servers` servers on 127.0.0.1, ports 7000 upwards, and every other setting at its
/// default.
pub fn config(servers: usize) -> Config {
    Config::with_servers((0..servers).map(|i| ServerAddress { host: "127.0.0.1".into(), port: port_of(i) }).collect())
}

/// The port of server `index` in a [`config`].
pub fn port_of(index: usize) -> u16 {
    7000 + index as u16
}

/// The connections the engine asked to open in `actions`, in order, with where to.
pub fn connects(actions: &[Action]) -> Vec<(ConnId, ServerAddress)> {
    actions
        .iter()
        .filter_map(|action| match action {
            Action::Connect { conn, address } => Some((*conn, address.clone())),
            _ => None,
        })
        .collect()
}

/// Fake servers for `servers`: the first a master, every other one its replica (link up, offset 0).
pub fn master_and_replicas(servers: &[ServerAddress]) -> Vec<FakeServer> {
    servers
        .iter()
        .enumerate()
        .map(
            |(i, address)| {
                if i == 0 {
                    FakeServer::master(address.port)
                } else {
                    FakeServer::replica_of(address.port, &servers[0])
                }
            },
        )
        .collect()
}

/// Everything `actions` send on `conn`, concatenated.
pub fn sent_on(actions: &[Action], conn: ConnId) -> Vec<u8> {
    let mut out = Vec::new();
    for action in actions {
        if let Action::Send { conn: to, data } = action {
            if *to == conn {
                out.extend_from_slice(data);
            }
        }
    }
    out
}

/// The `SetReadable` actions for `conn` in `actions`, in order.
pub fn readable(actions: &[Action], conn: ConnId) -> Vec<bool> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::SetReadable { conn: to, readable } if *to == conn => Some(*readable),
            _ => None,
        })
        .collect()
}

/// An engine on a fake clock, and what a runtime would keep for it.
pub struct Driver {
    /// The engine under test.
    pub engine: Engine,
    /// Its time; [`Driver::advance`] moves it and lets the engine act.
    pub clock: FakeClock,
    /// The configuration the engine was made with.
    pub config: Config,
    /// Each connection's read buffer, holding a partial frame between feeds, as a runtime keeps it.
    bufs: BTreeMap<ConnId, BytesMut>,
    /// The probe connection of each server, once its first probe went out.
    probes: Vec<Option<ConnId>>,
    accepted: u16,
}

impl Driver {
    /// An engine for `config` that has not probed yet.
    pub fn new(config: Config) -> Driver {
        Driver::with_clock(config, FakeClock::new())
    }

    /// An engine for `config` made at `clock`'s time, which it keeps.
    pub fn with_clock(config: Config, clock: FakeClock) -> Driver {
        let engine = Engine::new(config.clone(), clock.now());
        Driver::with_engine(engine, config, clock)
    }

    /// Drives `engine`, made for `config` (a decider's or a worker's) at `clock`'s time.
    pub fn with_engine(engine: Engine, config: Config, clock: FakeClock) -> Driver {
        let probes = vec![None; config.servers.len()];
        Driver { engine, clock, config, bufs: BTreeMap::new(), probes, accepted: 0 }
    }

    /// An engine whose server 0 is adopted as master, every other server answering as its replica (link up,
    /// offset 0); the actions and events of getting there are drained.
    pub fn with_master(config: Config) -> Driver {
        Driver::new(config).adopting_server_0()
    }

    /// A deciding engine (`workers` above 1, [`Engine::new_decider`]) whose server 0 is adopted as master, as
    /// [`Driver::with_master`] does.
    pub fn decider_with_master(config: Config) -> Driver {
        let clock = FakeClock::new();
        let decider = Engine::new_decider(config.clone(), clock.now()).expect("a configuration of servers");
        Driver::with_engine(decider, config, clock).adopting_server_0()
    }

    /// A worker engine ([`Engine::new_worker`], with its share of the configuration) on this deciding engine's
    /// clock, made from the topology it publishes now, which is returned with it.
    pub fn new_worker(&mut self) -> (Driver, Topology) {
        let topology = self.engine.poll_topology().expect("a deciding engine with something to publish");
        let share = self.config.worker_share();
        let worker = Engine::new_worker(share, self.clock.now(), &topology).expect("a configuration of servers");
        (Driver::with_engine(worker, self.config.clone(), self.clock), topology)
    }

    /// Runs a probe round answered by a master (server 0) and its replicas, checks that server 0 is adopted, and
    /// drains what getting there did.
    fn adopting_server_0(mut self) -> Driver {
        let master = self.config.servers[0].clone();
        let mut servers = master_and_replicas(&self.config.servers);
        self.probe_round(&mut servers);
        assert_eq!(self.engine.master(), Some(&master), "server 0 was not adopted as master");
        self.drain();
        self.events();
        self
    }

    /// Runs a probe round now: every server's probe connection is opened (and reported connected) if it is not
    /// yet, and what the probes send is answered by `servers` (one per configured server, in order). Returns the
    /// other actions of the round, then everything the engine did with the replies (which may include more on the
    /// probe connections, such as `REPLICAOF`).
    pub fn probe_round(&mut self, servers: &mut [FakeServer]) -> Vec<Action> {
        assert_eq!(servers.len(), self.config.servers.len(), "one fake server per configured server");
        self.engine.handle_timeout(self.clock.now());
        let mut actions = self.drain();
        for (conn, address) in connects(&actions) {
            let index = self.config.servers.iter().position(|s| *s == address).expect("a configured server");
            if self.probes[index].is_none() {
                self.probes[index] = Some(conn);
                self.connected(conn);
            }
        }
        let probes: Vec<(usize, ConnId)> =
            self.probes.iter().enumerate().filter_map(|(i, p)| p.map(|conn| (i, conn))).collect();
        for (index, conn) in probes {
            let sent = sent_on(&actions, conn);
            if !sent.is_empty() {
                let reply = servers[index].respond(&sent);
                self.feed(conn, &reply);
            }
        }
        actions.retain(|action| match action {
            Action::Send { conn, .. } | Action::Connect { conn, .. } => !self.probes.contains(&Some(*conn)),
            _ => true,
        });
        actions.extend(self.drain());
        actions
    }

    /// A client connects (from 127.0.0.1, a new port each time).
    pub fn accept(&mut self) -> ConnId {
        self.accepted = self.accepted.wrapping_add(1);
        let peer = SocketAddr::from(([127, 0, 0, 1], 50_000u16.wrapping_add(self.accepted)));
        self.engine.accept(self.clock.now(), peer)
    }

    /// Every action the engine has queued, in order. Panics if the engine left an order of its monitor or
    /// sentinels to the pool unexecuted: its actions would come out late or never.
    pub fn drain(&mut self) -> Vec<Action> {
        assert!(!self.engine.orders_pending(), "the engine left orders for the pool unexecuted");
        std::iter::from_fn(|| self.engine.poll_action()).collect()
    }

    /// Every event the engine has queued, in order.
    pub fn events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.engine.poll_event()).collect()
    }

    /// `data` arrives on `conn`: appended to its read buffer, which goes to the engine (a partial frame stays).
    pub fn feed(&mut self, conn: ConnId, data: &[u8]) {
        let buf = self.bufs.entry(conn).or_default();
        buf.extend_from_slice(data);
        self.engine.handle_input(self.clock.now(), Input::Data { conn, buf });
    }

    /// The connection the engine asked for is established.
    pub fn connected(&mut self, conn: ConnId) {
        self.engine.handle_input(self.clock.now(), Input::Connected { conn });
    }

    /// Reports every connect in `actions` established; returns their ids in order.
    pub fn connect_all(&mut self, actions: &[Action]) -> Vec<ConnId> {
        let conns: Vec<ConnId> = connects(actions).into_iter().map(|(conn, _)| conn).collect();
        for &conn in &conns {
            self.connected(conn);
        }
        conns
    }

    /// The connection the engine asked for could not be established: it timed out.
    pub fn connect_failed(&mut self, conn: ConnId, reason: &str) {
        self.connect_failed_with(conn, reason, ConnectFailure::TimedOut);
    }

    /// The connection the engine asked for could not be established, for `reason` of the kind `failure`.
    pub fn connect_failed_with(&mut self, conn: ConnId, reason: &str, failure: ConnectFailure) {
        self.engine.handle_input(self.clock.now(), Input::ConnectFailed { conn, reason, failure });
    }

    /// The server refused the connection the engine asked for: nothing listens there.
    pub fn refused(&mut self, conn: ConnId) {
        self.engine.handle_input(self.clock.now(), Input::Refused { conn });
    }

    /// The peer closed `conn`, or it broke.
    pub fn closed(&mut self, conn: ConnId) {
        self.bufs.remove(&conn);
        self.engine.handle_input(self.clock.now(), Input::Closed { conn });
    }

    /// Moves the clock by `by` and lets the engine act on the time.
    pub fn advance(&mut self, by: Duration) {
        let now = self.clock.advance(by);
        self.engine.handle_timeout(now);
    }

    /// Moves the clock to `at` (unless that has passed) and lets the engine act on the time.
    pub fn advance_to(&mut self, at: Instant) {
        let now = self.clock.advance_to(at);
        self.engine.handle_timeout(now);
    }

    /// Moves the clock to `now` (unless that has passed) without letting the engine act, and returns the driver:
    /// for several engines on one shared clock (the simulation, the Sentinel world), each of which sees the time
    /// only when it is next called. Its timers fire only when [`Driver::advance_to`] says so.
    pub fn catch_up(&mut self, now: Instant) -> &mut Driver {
        self.clock.advance_to(now);
        self
    }
}
