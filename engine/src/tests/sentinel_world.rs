//! The fake network of the Sentinel-mode tests: fake sentinels and fake servers that answer what one or several
//! engines (proxies, each with its own connections) send them, on one fake clock. Each proxy has its own partition
//! from the sentinels: cut from some, all or none of them, by resets or by silence. Every data request a server
//! receives is logged with when and from which proxy, so the tests can assert where writes landed.
//!
//! Servers are on ports 7000.., sentinels on 26000..; answers come at once (no latency), so the only delays are the
//! engines' own timers and the 10 ms steps of [`World::run`].
//!
//! Each proxy's engine is driven by a [`Driver`], as the simulation drives its engines: the driver keeps the
//! engine's read buffers and a copy of the world's one [`FakeClock`], brought to the world's time before every
//! call ([`World::driver`]); this module adds only the network.
//!
//! [`World::with_workers`] makes the engines one proxy instead: engine 0 decides (it follows the sentinels) and the
//! others are its workers, each publication carried to them and their confirmations back as soon as the engines
//! settle. A worker never connects to a sentinel.

use crate::testkit::{Driver, FakeClock, FakeServer};
use crate::{Action, Config, ConnId, Engine, Event, ServerAddress};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// How far [`World::run`] moves the clock between two timeouts: the tests' bounds add it as the timer slack.
pub(crate) const STEP_MS: u64 = 10;

/// The proxies' `sentinel.majority_lost_after`.
pub(crate) const MAJORITY_LOST_AFTER_MS: u64 = 3000;

pub(crate) fn addr(port: u16) -> ServerAddress {
    ServerAddress { host: "127.0.0.1".into(), port }
}

/// A sentinel reduced to what the proxy asks: the master it names, the replicas it lists, whether it is up.
pub(crate) struct FakeSentinel {
    /// The host it names every server by (`127.0.0.1`; `localhost` names the same processes otherwise).
    pub(crate) host: &'static str,
    pub(crate) master: Option<u16>,
    /// (port, flags, master-link-status)
    pub(crate) replicas: Vec<(u16, &'static str, &'static str)>,
    pub(crate) up: bool,
}

/// Where a backend connection goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Peer {
    Server(u16),
    Sentinel(u16),
}

/// How a proxy is cut from a sentinel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cut {
    /// Its connections are reset and new ones refused (the sentinel's host answers, the sentinel does not).
    Reset,
    /// Packets are lost: open connections go quiet and new ones never complete (a network partition). A connection
    /// that went quiet stays so after the partition heals: only a new one gets through.
    Silent,
}

/// A client connected to one proxy.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Client {
    proxy: usize,
    conn: ConnId,
}

impl Client {
    /// The engine it is connected to.
    pub(crate) fn engine(&self) -> usize {
        self.proxy
    }
}

/// A data request (anything but the probe's) a server received.
#[derive(Clone, Debug)]
pub(crate) struct Landing {
    /// Milliseconds since the start.
    pub(crate) at: u64,
    pub(crate) proxy: usize,
    pub(crate) port: u16,
    /// The command name, upper case.
    pub(crate) command: String,
}

/// One engine and its side of the network.
pub(crate) struct Proxy {
    /// The engine, with its read buffers and its copy of the world's clock.
    pub(crate) driver: Driver,
    peers: BTreeMap<ConnId, Peer>,
    /// Sentinel subscription connections (those that were sent HELLO), by sentinel port.
    subscribers: BTreeMap<u16, ConnId>,
    /// What each backend connection was sent that does not form a whole request yet.
    received: BTreeMap<ConnId, Vec<u8>>,
    /// The sentinels this proxy is cut from, and how.
    cuts: BTreeMap<u16, Cut>,
    /// Connections that went quiet in a silent cut: what is sent on them is lost.
    quiet: BTreeSet<ConnId>,
    pub(crate) events: Vec<Event>,
    /// Its clients, and everything it sent each of them.
    clients: BTreeMap<ConnId, Vec<u8>>,
    /// The servers (ports) it reported removed and did not add back since: nothing may reach them.
    removed: BTreeSet<u16>,
}

/// Engines in Sentinel mode with their fake network.
pub(crate) struct World {
    pub(crate) clock: FakeClock,
    pub(crate) servers: BTreeMap<u16, FakeServer>,
    /// Servers that crashed: their connections were reset, new ones are refused.
    pub(crate) down: Vec<u16>,
    pub(crate) sentinels: BTreeMap<u16, FakeSentinel>,
    pub(crate) proxies: Vec<Proxy>,
    /// Every data request the servers received, in order.
    pub(crate) landings: Vec<Landing>,
    /// How many of the engines are workers of engine 0 (0: every engine is a proxy of its own).
    workers: usize,
    /// The least epoch the workers confirmed that engine 0 was told of.
    told_decider: u64,
}

impl World {
    /// `proxies` engines configured with `sentinels` sentinels (and `extra` settings); three servers (7000 master,
    /// 7001 and 7002 its replicas) and every sentinel naming 7000.
    pub(crate) fn new(proxies: usize, sentinels: usize, extra: &str) -> World {
        let (config, clock) = Self::config(sentinels, extra);
        let drivers = (0..proxies).map(|_| Driver::with_clock(config.clone(), clock)).collect();
        Self::with_drivers(drivers, sentinels, clock, 0)
    }

    /// One proxy with `sentinels` sentinels (and `extra` settings): engine 0 decides, engines 1 to `workers` are
    /// its workers. The servers and sentinels are as in [`World::new`].
    pub(crate) fn with_workers(sentinels: usize, workers: usize, extra: &str) -> World {
        let (config, clock) = Self::config(sentinels, extra);
        let mut decider = Engine::new_decider(config.clone(), clock.now()).expect("a deciding engine");
        let first = decider.poll_topology().expect("a first publication");
        let mut drivers = vec![Driver::with_engine(decider, config.clone(), clock)];
        for _ in 0..workers {
            let worker = Engine::new_worker(config.worker_share(), clock.now(), &first).expect("a worker engine");
            drivers.push(Driver::with_engine(worker, config.worker_share(), clock));
        }
        Self::with_drivers(drivers, sentinels, clock, workers)
    }

    /// The configuration of `sentinels` sentinels and `extra` settings, and the world's clock.
    fn config(sentinels: usize, extra: &str) -> (Config, FakeClock) {
        let list: Vec<String> =
            (0..sentinels).map(|i| format!("{{\"host\": \"127.0.0.1\", \"port\": {}}}", 26000 + i)).collect();
        let text = format!(
            "{{\"sentinel\": {{\"sentinels\": [{}], \"master_name\": \"mymaster\", \"majority_lost_after\": {MAJORITY_LOST_AFTER_MS}}}{extra}}}",
            list.join(",")
        );
        (Config::from_json(&text).unwrap(), FakeClock::new())
    }

    /// The world of the engines `drivers` drive (`workers` of them workers of the first).
    fn with_drivers(drivers: Vec<Driver>, sentinels: usize, clock: FakeClock, workers: usize) -> World {
        let mut servers = BTreeMap::new();
        servers.insert(7000, FakeServer::master(7000));
        servers.insert(7001, FakeServer::replica_of(7001, &addr(7000)));
        servers.insert(7002, FakeServer::replica_of(7002, &addr(7000)));
        let sentinels = (0..sentinels)
            .map(|i| {
                let replicas = vec![(7001, "slave", "ok"), (7002, "slave", "ok")];
                (26000 + i as u16, FakeSentinel { host: "127.0.0.1", master: Some(7000), replicas, up: true })
            })
            .collect();
        let proxies = drivers
            .into_iter()
            .map(|driver| Proxy {
                driver,
                peers: BTreeMap::new(),
                subscribers: BTreeMap::new(),
                received: BTreeMap::new(),
                cuts: BTreeMap::new(),
                quiet: BTreeSet::new(),
                events: Vec::new(),
                clients: BTreeMap::new(),
                removed: BTreeSet::new(),
            })
            .collect();
        World { clock, servers, down: Vec::new(), sentinels, proxies, landings: Vec::new(), workers, told_decider: 0 }
    }

    /// Performs what every engine asks until none asks anything more, carrying the decider's publications to its
    /// workers and their confirmations back.
    pub(crate) fn settle(&mut self) {
        for _ in 0..100 {
            for proxy in 0..self.proxies.len() {
                self.settle_proxy(proxy);
            }
            if !self.carry_topology() {
                return;
            }
        }
        panic!("the decider and its workers never settled");
    }

    /// With workers: hands them the decider's newest publication and the decider their least confirmation, if
    /// either is new. Returns whether one was.
    fn carry_topology(&mut self) -> bool {
        if self.workers == 0 {
            return false;
        }
        let mut newest = None;
        while let Some(topology) = self.proxies[0].driver.engine.poll_topology() {
            newest = Some(topology);
        }
        let now = self.clock.now();
        if let Some(topology) = &newest {
            for worker in 1..=self.workers {
                self.driver(worker).engine.follow(now, topology);
            }
        }
        let least = (1..=self.workers).map(|w| self.proxies[w].driver.engine.confirmed_epoch()).min().unwrap_or(0);
        let told = least > self.told_decider;
        if told {
            self.told_decider = least;
            self.driver(0).engine.workers_confirmed(now, least);
        }
        newest.is_some() || told
    }

    /// Performs what engine `proxy` asks until it asks nothing more (what it asks touches only its own
    /// connections, so the engines settle one by one).
    fn settle_proxy(&mut self, proxy: usize) {
        for _ in 0..1000 {
            let driver = self.driver(proxy);
            let actions = driver.drain();
            let events = driver.events();
            // An action and an event of one batch come in two queues: a server removed in this batch may have been
            // sent its last probe in it, so the removal counts from the next batch on.
            for action in actions.iter() {
                self.perform(proxy, action.clone());
            }
            let p = &mut self.proxies[proxy];
            for event in &events {
                match event {
                    Event::ServerRemoved { address } => p.removed.insert(address.port),
                    Event::ServerAdded { address } => p.removed.remove(&address.port),
                    _ => false,
                };
            }
            p.events.extend(events);
            if actions.is_empty() {
                return;
            }
        }
        panic!("engine {proxy} never settled");
    }

    /// Proxy `proxy`'s driver, its clock brought to the world's time (an engine sees time only when called).
    fn driver(&mut self, proxy: usize) -> &mut Driver {
        self.proxies[proxy].driver.catch_up(self.clock.now())
    }

    fn perform(&mut self, proxy: usize, action: Action) {
        match action {
            Action::Connect { conn, address } => {
                let port = address.port;
                assert!(!self.proxies[proxy].removed.contains(&port), "proxy {proxy} connects to removed {address}");
                let worker = self.workers > 0 && proxy > 0;
                assert!(!(worker && port >= 26000), "worker engine {proxy} connects to the sentinel {address}");
                let cut = self.proxies[proxy].cuts.get(&port).copied();
                let (peer, up) = if port >= 26000 {
                    (Peer::Sentinel(port), self.sentinels.get(&port).is_some_and(|s| s.up))
                } else {
                    (Peer::Server(port), self.servers.contains_key(&port) && !self.down.contains(&port))
                };
                match cut {
                    Some(Cut::Silent) => {
                        // Never completes: the engine gives up on it by its own timers.
                        self.proxies[proxy].peers.insert(conn, peer);
                        self.proxies[proxy].quiet.insert(conn);
                    }
                    None if up => {
                        self.proxies[proxy].peers.insert(conn, peer);
                        self.driver(proxy).connected(conn);
                    }
                    _ => self.driver(proxy).refused(conn),
                }
            }
            Action::Send { conn, data } => {
                let p = &mut self.proxies[proxy];
                if let Some(replies) = p.clients.get_mut(&conn) {
                    replies.extend_from_slice(&data);
                    return;
                }
                let Some(peer) = p.peers.get(&conn).copied() else { return };
                if let Peer::Server(port) = peer {
                    assert!(!p.removed.contains(&port), "proxy {proxy} sends to the removed server {port}");
                }
                if p.quiet.contains(&conn) {
                    return;
                }
                let mut pending = p.received.remove(&conn).unwrap_or_default();
                pending.extend_from_slice(&data);
                let mut reply = Vec::new();
                while let Some((args, len)) = split(&pending) {
                    pending.drain(..len);
                    reply.extend(match peer {
                        Peer::Server(port) => self.server_answer(proxy, port, &args),
                        Peer::Sentinel(port) => {
                            if args[0].eq_ignore_ascii_case(b"HELLO") {
                                self.proxies[proxy].subscribers.insert(port, conn);
                            }
                            sentinel_answer(&self.sentinels[&port], &args)
                        }
                    });
                }
                self.proxies[proxy].received.insert(conn, pending);
                if !reply.is_empty() {
                    self.driver(proxy).feed(conn, &reply);
                }
            }
            Action::Close { conn } => {
                let p = &mut self.proxies[proxy];
                p.peers.remove(&conn);
                p.quiet.remove(&conn);
                p.subscribers.retain(|_, c| *c != conn);
            }
            Action::SetReadable { .. } => {}
        }
    }

    fn server_answer(&mut self, proxy: usize, port: u16, args: &[Vec<u8>]) -> Vec<u8> {
        let command = String::from_utf8_lossy(&args[0]).to_uppercase();
        assert!(!matches!(command.as_str(), "REPLICAOF" | "SLAVEOF"), "proxy {proxy} sent {command} to {port}");
        let server = self.servers.get_mut(&port).expect("a known server");
        if let Some(reply) = server.answer(args) {
            return reply.to_vec();
        }
        let reply = match command.as_str() {
            "GET" => b"$1\r\nv\r\n".to_vec(),
            "ECHO" => bulk(args.get(1).map_or(&b""[..], Vec::as_slice)),
            "EXEC" => b"*0\r\n".to_vec(),
            "SCAN" => scan_answer(port, args.get(1).map_or(&b"0"[..], Vec::as_slice)),
            _ => b"+OK\r\n".to_vec(),
        };
        self.landings.push(Landing { at: self.clock.ms(), proxy, port, command });
        reply
    }

    /// Lets `by` pass in steps of [`STEP_MS`], every engine acting on time and the network answering.
    pub(crate) fn run(&mut self, by: Duration) {
        self.settle();
        for _ in 0..by.as_millis() as u64 / STEP_MS {
            let now = self.clock.advance(Duration::from_millis(STEP_MS));
            for proxy in 0..self.proxies.len() {
                self.proxies[proxy].driver.advance_to(now);
            }
            self.settle();
        }
    }

    /// The port of the master engine `proxy` routes writes to.
    pub(crate) fn master_port(&self, proxy: usize) -> Option<u16> {
        self.proxies[proxy].driver.engine.master().map(|m| m.port)
    }

    /// Resets the connections of every proxy that `matches` selects (by proxy and peer).
    fn reset(&mut self, matches: impl Fn(usize, Peer) -> bool) {
        for proxy in 0..self.proxies.len() {
            let p = &mut self.proxies[proxy];
            let conns: Vec<ConnId> =
                p.peers.iter().filter(|(_, peer)| matches(proxy, **peer)).map(|(c, _)| *c).collect();
            for conn in conns {
                let p = &mut self.proxies[proxy];
                p.peers.remove(&conn);
                p.quiet.remove(&conn);
                self.driver(proxy).closed(conn);
            }
            self.settle_proxy(proxy);
        }
    }

    /// Kills server `port`: its connections are reset, new ones refused.
    pub(crate) fn kill(&mut self, port: u16) {
        self.down.push(port);
        self.reset(|_, peer| peer == Peer::Server(port));
    }

    /// Stops sentinel `port`: its connections are reset, new ones refused.
    pub(crate) fn stop_sentinel(&mut self, port: u16) {
        self.sentinels.get_mut(&port).unwrap().up = false;
        self.reset(|_, peer| peer == Peer::Sentinel(port));
    }

    /// Cuts proxy `proxy` from sentinel `port`, as `how` says.
    pub(crate) fn cut(&mut self, proxy: usize, port: u16, how: Cut) {
        self.proxies[proxy].cuts.insert(port, how);
        match how {
            Cut::Reset => self.reset(|p, peer| p == proxy && peer == Peer::Sentinel(port)),
            Cut::Silent => {
                let p = &mut self.proxies[proxy];
                let conns: Vec<ConnId> =
                    p.peers.iter().filter(|(_, peer)| **peer == Peer::Sentinel(port)).map(|(c, _)| *c).collect();
                p.quiet.extend(conns);
            }
        }
    }

    /// Ends the cut between proxy `proxy` and sentinel `port` (new connections get through).
    pub(crate) fn heal(&mut self, proxy: usize, port: u16) {
        self.proxies[proxy].cuts.remove(&port);
    }

    /// Whether proxy `proxy` can reach sentinel `port` now.
    pub(crate) fn reaches(&self, proxy: usize, port: u16) -> bool {
        self.sentinels[&port].up && !self.proxies[proxy].cuts.contains_key(&port)
    }

    /// Sentinel `port` publishes `message` on `channel` to every proxy whose subscription is live.
    pub(crate) fn publish(&mut self, port: u16, channel: &str, message: &str) {
        let push =
            format!(">3\r\n$7\r\nmessage\r\n${}\r\n{channel}\r\n${}\r\n{message}\r\n", channel.len(), message.len());
        for proxy in 0..self.proxies.len() {
            let p = &self.proxies[proxy];
            if let Some(conn) = p.subscribers.get(&port).copied().filter(|c| !p.quiet.contains(c)) {
                self.driver(proxy).feed(conn, push.as_bytes());
                self.settle_proxy(proxy);
            }
        }
    }

    /// Server `port` becomes a master (promoted), or a replica of `of`.
    pub(crate) fn set_role(&mut self, port: u16, of: Option<u16>) {
        let server = self.servers.get_mut(&port).unwrap();
        match of {
            None => server.info.replica_of = None,
            Some(master) => {
                *server = FakeServer::replica_of(port, &addr(master));
            }
        }
    }

    /// A new client of proxy `proxy`.
    pub(crate) fn client(&mut self, proxy: usize) -> Client {
        let conn = self.driver(proxy).accept();
        self.proxies[proxy].clients.insert(conn, Vec::new());
        self.settle_proxy(proxy);
        Client { proxy, conn }
    }

    /// Everything proxy sent `client` so far.
    pub(crate) fn replies(&self, client: Client) -> &[u8] {
        &self.proxies[client.proxy].clients[&client.conn]
    }

    /// Starts sentinel `port` again (new connections get through).
    pub(crate) fn start_sentinel(&mut self, port: u16) {
        self.sentinels.get_mut(&port).unwrap().up = true;
    }

    /// `client` sends `request`, without letting time pass.
    pub(crate) fn send(&mut self, client: Client, request: &[u8]) {
        self.driver(client.proxy).feed(client.conn, request);
        self.settle_proxy(client.proxy);
    }

    /// Which servers received requests named `name` (from any proxy), in order; forgets them.
    pub(crate) fn take(&mut self, name: &str) -> Vec<u16> {
        let (hits, rest): (Vec<_>, Vec<_>) = self.landings.drain(..).partition(|l| l.command == name);
        self.landings = rest;
        hits.into_iter().map(|l| l.port).collect()
    }
}

fn sentinel_answer(sentinel: &FakeSentinel, args: &[Vec<u8>]) -> Vec<u8> {
    let name = String::from_utf8_lossy(&args[0]).to_uppercase();
    let sub = args.get(1).map(|a| String::from_utf8_lossy(a).to_lowercase());
    match (name.as_str(), sub.as_deref()) {
        ("HELLO", _) => b"%1\r\n$5\r\nproto\r\n:3\r\n".to_vec(),
        ("SUBSCRIBE", _) => Vec::new(),
        ("AUTH", _) => b"+OK\r\n".to_vec(),
        ("SENTINEL", Some("get-master-addr-by-name")) => match sentinel.master {
            Some(port) => {
                [&b"*2\r\n"[..], &bulk(sentinel.host.as_bytes()), &bulk(port.to_string().as_bytes())].concat()
            }
            None => b"*-1\r\n".to_vec(),
        },
        ("SENTINEL", Some("replicas")) => {
            let mut out = format!("*{}\r\n", sentinel.replicas.len());
            for (port, flags, link) in &sentinel.replicas {
                let fields = [("ip", sentinel.host.to_string()), ("port", port.to_string())]
                    .into_iter()
                    .chain([("flags", flags.to_string()), ("master-link-status", link.to_string())]);
                out.push_str("*8\r\n");
                for (key, value) in fields {
                    out.push_str(&format!("${}\r\n{key}\r\n${}\r\n{value}\r\n", key.len(), value.len()));
                }
            }
            out.into_bytes()
        }
        other => panic!("the fake sentinel does not know {other:?}"),
    }
}

/// A bulk string.
fn bulk(value: &[u8]) -> Vec<u8> {
    [format!("${}\r\n", value.len()).as_bytes(), value, b"\r\n"].concat()
}

/// The keys every server holds, for `SCAN`.
pub(crate) const SCAN_KEYS: usize = 10;

/// How many keys one `SCAN` call returns.
const SCAN_STEP: usize = 3;

/// Server `port`'s reply to `SCAN cursor`: the next [`SCAN_STEP`] of the keys `k0`.. in order, and a cursor that
/// names the server (`port * 100 + position`; 0 at the end). A cursor another server issued is a test failure:
/// the proxy must send a cursor only to the server that returned it.
fn scan_answer(port: u16, cursor: &[u8]) -> Vec<u8> {
    let cursor: u64 = std::str::from_utf8(cursor).ok().and_then(|c| c.parse().ok()).expect("a numeric cursor");
    assert!(cursor == 0 || cursor / 100 == u64::from(port), "server {port} got cursor {cursor}, issued by another");
    let from = (cursor % 100) as usize;
    let to = (from + SCAN_STEP).min(SCAN_KEYS);
    let next = if to == SCAN_KEYS { 0 } else { u64::from(port) * 100 + to as u64 };
    let mut out = [&b"*2\r\n"[..], &bulk(next.to_string().as_bytes())].concat();
    out.extend_from_slice(format!("*{}\r\n", to - from).as_bytes());
    for key in from..to {
        out.extend_from_slice(&bulk(format!("k{key}").as_bytes()));
    }
    out
}

/// The arguments and length of the complete multibulk at the start of `buf`.
fn split(buf: &[u8]) -> Option<(Vec<Vec<u8>>, usize)> {
    let line = |at: usize| -> Option<(usize, usize)> {
        let end = at + buf.get(at..)?.windows(2).position(|w| w == b"\r\n")?;
        Some((std::str::from_utf8(&buf[at + 1..end]).ok()?.parse().ok()?, end + 2))
    };
    let (count, mut at) = line(0)?;
    let mut args = Vec::new();
    for _ in 0..count {
        let (len, start) = line(at)?;
        args.push(buf.get(start..start + len)?.to_vec());
        at = start + len + 2;
        if buf.len() < at {
            return None;
        }
    }
    Some((args, at))
}
