//! Sentinel mode through the whole engine, on the test kit: fake sentinels and fake servers answer what the engine
//! sends them; the tests assert where writes and reads land. The majority rule, `ROLE`/`INFO` confirmation, a
//! lying or stale sentinel, and a proxy cut off from the majority; and a randomized schedule of Sentinel
//! failovers, demotions, crashes and partitions between the proxy and the sentinels, checked against the
//! invariants of Sentinel mode.

use crate::testkit::{FakeClock, FakeServer};
use crate::{Action, Config, ConnId, Engine, Event, Input, ServerAddress};
use bytes::BytesMut;
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::time::Duration;

const GET: &[u8] = b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n";
const SET: &[u8] = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n";

fn addr(port: u16) -> ServerAddress {
    ServerAddress { host: "127.0.0.1".into(), port }
}

/// A sentinel reduced to what the proxy asks: the master it names, the replicas it lists, whether it is up.
struct FakeSentinel {
    master: Option<u16>,
    /// (port, flags, master-link-status)
    replicas: Vec<(u16, &'static str, &'static str)>,
    up: bool,
}

/// Where a backend connection goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Peer {
    Server(u16),
    Sentinel(u16),
}

/// An engine in Sentinel mode with its fake network: servers on ports 7000.., sentinels on 26000...
struct World {
    engine: Engine,
    clock: FakeClock,
    servers: BTreeMap<u16, FakeServer>,
    down: Vec<u16>,
    sentinels: BTreeMap<u16, FakeSentinel>,
    peers: BTreeMap<ConnId, Peer>,
    /// Sentinel subscription connections (those that were sent HELLO).
    subscribers: BTreeMap<u16, ConnId>,
    bufs: BTreeMap<ConnId, BytesMut>,
    received: BTreeMap<ConnId, Vec<u8>>,
    /// What each client was sent.
    replies: BTreeMap<ConnId, Vec<u8>>,
    /// Data requests (anything but the probe's) each server received, by command name.
    requests: Vec<(u16, String)>,
    /// Every `SET` a server received: when (ms since start) and which.
    sets: Vec<(u64, u16)>,
    events: Vec<Event>,
}

impl World {
    /// Three servers (7000 master, 7001 and 7002 its replicas) and `sentinels` sentinels all naming 7000.
    fn new(sentinels: usize, extra: &str) -> World {
        let list: Vec<String> =
            (0..sentinels).map(|i| format!("{{\"host\": \"127.0.0.1\", \"port\": {}}}", 26000 + i)).collect();
        let text = format!(
            "{{\"sentinel\": {{\"sentinels\": [{}], \"master_name\": \"mymaster\", \"majority_lost_after\": 3000}}{extra}}}",
            list.join(",")
        );
        let config = Config::from_json(&text).unwrap();
        let clock = FakeClock::new();
        let mut servers = BTreeMap::new();
        servers.insert(7000, FakeServer::master(7000));
        servers.insert(7001, FakeServer::replica_of(7001, &addr(7000)));
        servers.insert(7002, FakeServer::replica_of(7002, &addr(7000)));
        let sentinels = (0..sentinels)
            .map(|i| {
                let replicas = vec![(7001, "slave", "ok"), (7002, "slave", "ok")];
                (26000 + i as u16, FakeSentinel { master: Some(7000), replicas, up: true })
            })
            .collect();
        World {
            engine: Engine::new(config, clock.now()),
            clock,
            servers,
            down: Vec::new(),
            sentinels,
            peers: BTreeMap::new(),
            subscribers: BTreeMap::new(),
            bufs: BTreeMap::new(),
            received: BTreeMap::new(),
            replies: BTreeMap::new(),
            requests: Vec::new(),
            sets: Vec::new(),
            events: Vec::new(),
        }
    }

    /// Performs what the engine asks until it asks nothing more.
    fn settle(&mut self) {
        for _ in 0..1000 {
            let actions: Vec<Action> = std::iter::from_fn(|| self.engine.poll_action()).collect();
            self.events.extend(std::iter::from_fn(|| self.engine.poll_event()));
            if actions.is_empty() {
                return;
            }
            for action in actions {
                self.perform(action);
            }
        }
        panic!("the engine never settled");
    }

    fn input(&mut self, input: Input<'_>) {
        let now = self.clock.now();
        self.engine.handle_input(now, input);
    }

    fn perform(&mut self, action: Action) {
        match action {
            Action::Connect { conn, address } => {
                let port = address.port;
                let (peer, up) = if port >= 26000 {
                    (Peer::Sentinel(port), self.sentinels.get(&port).is_some_and(|s| s.up))
                } else {
                    (Peer::Server(port), self.servers.contains_key(&port) && !self.down.contains(&port))
                };
                if up {
                    self.peers.insert(conn, peer);
                    self.input(Input::Connected { conn });
                } else {
                    self.input(Input::Refused { conn });
                }
            }
            Action::Send { conn, data } => match self.peers.get(&conn).copied() {
                None => self.replies.entry(conn).or_default().extend_from_slice(&data),
                Some(peer) => {
                    let mut pending = self.received.remove(&conn).unwrap_or_default();
                    pending.extend_from_slice(&data);
                    let mut reply = Vec::new();
                    while let Some((args, len)) = split(&pending) {
                        pending.drain(..len);
                        reply.extend(match peer {
                            Peer::Server(port) => self.server_answer(port, &args),
                            Peer::Sentinel(port) => {
                                if args[0].eq_ignore_ascii_case(b"HELLO") {
                                    self.subscribers.insert(port, conn);
                                }
                                sentinel_answer(&self.sentinels[&port], &args)
                            }
                        });
                    }
                    self.received.insert(conn, pending);
                    if !reply.is_empty() {
                        self.feed(conn, &reply);
                    }
                }
            },
            Action::Close { conn } => {
                self.peers.remove(&conn);
                self.subscribers.retain(|_, c| *c != conn);
            }
            Action::SetReadable { .. } => {}
        }
    }

    fn server_answer(&mut self, port: u16, args: &[Vec<u8>]) -> Vec<u8> {
        let server = self.servers.get_mut(&port).expect("a known server");
        if let Some(reply) = server.answer(args) {
            return reply.to_vec();
        }
        let name = String::from_utf8_lossy(&args[0]).to_uppercase();
        self.requests.push((port, name.clone()));
        if name == "SET" {
            self.sets.push((self.clock.ms(), port));
        }
        match name.as_str() {
            "GET" => b"$1\r\nv\r\n".to_vec(),
            _ => b"+OK\r\n".to_vec(),
        }
    }

    fn feed(&mut self, conn: ConnId, data: &[u8]) {
        let now = self.clock.now();
        let buf = self.bufs.entry(conn).or_default();
        buf.extend_from_slice(data);
        self.engine.handle_input(now, Input::Data { conn, buf });
    }

    /// Lets `by` pass in steps of 10 ms, the engine acting on time and the network answering.
    fn run(&mut self, by: Duration) {
        self.settle();
        for _ in 0..by.as_millis() / 10 {
            let now = self.clock.advance(Duration::from_millis(10));
            self.engine.handle_timeout(now);
            self.settle();
        }
    }

    fn master_port(&self) -> Option<u16> {
        self.engine.master().map(|m| m.port)
    }

    /// Kills server `port`: its connections are reset, new ones refused.
    fn kill(&mut self, port: u16) {
        self.down.push(port);
        let conns: Vec<ConnId> =
            self.peers.iter().filter(|(_, p)| **p == Peer::Server(port)).map(|(c, _)| *c).collect();
        for conn in conns {
            self.peers.remove(&conn);
            self.input(Input::Closed { conn });
        }
        self.settle();
    }

    /// Stops sentinel `port`: its connections are reset, new ones refused.
    fn stop_sentinel(&mut self, port: u16) {
        self.sentinels.get_mut(&port).unwrap().up = false;
        let conns: Vec<ConnId> =
            self.peers.iter().filter(|(_, p)| **p == Peer::Sentinel(port)).map(|(c, _)| *c).collect();
        for conn in conns {
            self.peers.remove(&conn);
            self.input(Input::Closed { conn });
        }
        self.settle();
    }

    /// Sentinel `port` publishes `message` on `channel`.
    fn publish(&mut self, port: u16, channel: &str, message: &str) {
        let conn = self.subscribers[&port];
        let push =
            format!(">3\r\n$7\r\nmessage\r\n${}\r\n{channel}\r\n${}\r\n{message}\r\n", channel.len(), message.len());
        self.feed(conn, push.as_bytes());
        self.settle();
    }

    /// Server `port` becomes a master (promoted), or a replica of `of`.
    fn set_role(&mut self, port: u16, of: Option<u16>) {
        let server = self.servers.get_mut(&port).unwrap();
        match of {
            None => server.info.replica_of = None,
            Some(master) => {
                *server = FakeServer::replica_of(port, &addr(master));
            }
        }
    }

    fn client(&mut self) -> ConnId {
        let now = self.clock.now();
        let conn = self.engine.accept(now, "127.0.0.1:50000".parse().unwrap());
        self.settle();
        conn
    }

    fn send(&mut self, client: ConnId, request: &[u8]) {
        self.feed(client, request);
        self.settle();
    }

    /// Which servers received requests named `name`, in order; forgets them.
    fn take(&mut self, name: &str) -> Vec<u16> {
        let (hits, rest): (Vec<_>, Vec<_>) = self.requests.drain(..).partition(|(_, n)| n == name);
        self.requests = rest;
        hits.into_iter().map(|(port, _)| port).collect()
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
            Some(port) => format!("*2\r\n$9\r\n127.0.0.1\r\n${}\r\n{port}\r\n", port.to_string().len()).into_bytes(),
            None => b"*-1\r\n".to_vec(),
        },
        ("SENTINEL", Some("replicas")) => {
            let mut out = format!("*{}\r\n", sentinel.replicas.len());
            for (port, flags, link) in &sentinel.replicas {
                let fields = [("ip", "127.0.0.1".to_string()), ("port", port.to_string())]
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

#[test]
fn follows_the_master_a_majority_names_and_never_sends_replicaof() {
    let mut world = World::new(3, "");
    world.run(Duration::from_millis(100));
    assert_eq!(world.master_port(), Some(7000));
    // Two clients use both shared slots of a server that was learnt from the sentinels (none is configured).
    let client = world.client();
    let other = world.client();
    world.send(client, SET);
    world.send(other, SET);
    assert_eq!(world.take("SET"), [7000, 7000]);

    // Sentinel fails over: the master dies, 7001 is promoted, 7002 follows it.
    world.kill(7000);
    world.send(client, SET);
    world.run(Duration::from_millis(500));
    assert_eq!(world.take("SET"), Vec::<u16>::new(), "held while no master is confirmed");
    world.set_role(7001, None);
    world.set_role(7002, Some(7001));
    world.sentinels.get_mut(&26000).unwrap().master = Some(7001);
    world.publish(26000, "+switch-master", "mymaster 127.0.0.1 7000 127.0.0.1 7001");
    world.run(Duration::from_millis(300));
    assert_ne!(world.master_port(), Some(7001), "one sentinel is no majority");
    assert!(world.take("SET").is_empty());

    world.sentinels.get_mut(&26001).unwrap().master = Some(7001);
    world.run(Duration::from_millis(300));
    assert_eq!(world.master_port(), Some(7001));
    assert_eq!(world.take("SET"), [7001], "the held write went to the new master");
    assert!(world.take("REPLICAOF").is_empty());
    assert!(!world.events.iter().any(|e| matches!(e, Event::ReplicaOfSent { .. } | Event::PromotionStarted { .. })));

    // The old master returns as a master (its own config); Sentinel has not re-pointed it yet: never routed.
    world.down.clear();
    world.run(Duration::from_millis(3000));
    assert_eq!(world.master_port(), Some(7001));
    world.send(client, SET);
    assert_eq!(world.take("SET"), [7001]);
}

#[test]
fn a_named_master_is_routed_only_once_its_own_info_says_master() {
    let mut world = World::new(3, "");
    world.run(Duration::from_millis(100));
    assert_eq!(world.master_port(), Some(7000));
    // Every sentinel names 7001, which still reports role:slave (stale or lying sentinels, or a promotion not
    // finished): writes are held, 7001 is asked again and again.
    for sentinel in world.sentinels.values_mut() {
        sentinel.master = Some(7001);
    }
    let client = world.client();
    world.run(Duration::from_millis(1500));
    assert_eq!(world.master_port(), None, "the old master is dropped, the new one not confirmed");
    world.send(client, SET);
    world.run(Duration::from_millis(500));
    assert!(world.take("SET").is_empty(), "a server that is not master yet is never routed to");
    world.set_role(7001, None);
    world.run(Duration::from_millis(300));
    assert_eq!(world.master_port(), Some(7001));
    assert_eq!(world.take("SET"), [7001]);
}

#[test]
fn the_majority_wins_over_a_lying_or_stale_sentinel() {
    let mut world = World::new(3, "");
    // Sentinel 26002 names a server that is a master too (another setup, or an old configuration).
    world.servers.insert(7009, FakeServer::master(7009));
    world.sentinels.get_mut(&26002).unwrap().master = Some(7009);
    world.run(Duration::from_millis(1500));
    assert_eq!(world.master_port(), Some(7000));
    let client = world.client();
    world.send(client, SET);
    assert_eq!(world.take("SET"), [7000]);
    // It shouts about a switch: a prompt to ask again, not the truth.
    world.publish(26002, "+switch-master", "mymaster 127.0.0.1 7000 127.0.0.1 7009");
    world.run(Duration::from_millis(1000));
    assert_eq!(world.master_port(), Some(7000));
    // After a real failover, a stale sentinel still naming the old master is outvoted.
    world.kill(7000);
    world.set_role(7001, None);
    world.sentinels.get_mut(&26000).unwrap().master = Some(7001);
    world.sentinels.get_mut(&26001).unwrap().master = Some(7001);
    world.sentinels.get_mut(&26002).unwrap().master = Some(7000);
    world.run(Duration::from_millis(1500));
    assert_eq!(world.master_port(), Some(7001));
    world.send(client, SET);
    assert_eq!(world.take("SET"), [7001]);
}

#[test]
fn without_a_majority_the_master_is_kept_then_dropped_after_the_bound() {
    let mut world = World::new(3, "");
    world.run(Duration::from_millis(100));
    let client = world.client();
    world.stop_sentinel(26001);
    world.stop_sentinel(26002);
    world.run(Duration::from_millis(100));
    assert!(world
        .events
        .iter()
        .any(|e| matches!(e, Event::SentinelNoMajority { keeping: Some(m), .. } if m.port == 7000)));
    // A lone sentinel's switch is not followed.
    world.set_role(7001, None);
    world.sentinels.get_mut(&26000).unwrap().master = Some(7001);
    world.publish(26000, "+switch-master", "mymaster 127.0.0.1 7000 127.0.0.1 7001");
    world.run(Duration::from_millis(2000));
    assert_eq!(world.master_port(), Some(7000), "the current master is kept");
    world.send(client, SET);
    assert_eq!(world.take("SET"), [7000], "service goes on");
    // Past majority_lost_after (3 s here) since the majority was last heard: no more writes.
    world.run(Duration::from_millis(1000));
    assert_eq!(world.master_port(), None);
    world.send(client, SET);
    world.run(Duration::from_millis(100));
    assert!(world.take("SET").is_empty());
    // The majority returns and names 7001: the held write goes there.
    for sentinel in world.sentinels.values_mut() {
        sentinel.up = true;
        sentinel.master = Some(7001);
    }
    world.run(Duration::from_millis(1500));
    assert_eq!(world.master_port(), Some(7001));
    assert_eq!(world.take("SET"), [7001]);
}

#[test]
fn reads_go_only_to_replicas_the_sentinels_list_as_healthy() {
    let mut world = World::new(3, ", \"mode\": \"readsToSlaves\", \"read_your_writes\": false");
    for sentinel in world.sentinels.values_mut() {
        sentinel.replicas = vec![(7001, "slave", "ok"), (7002, "s_down,slave", "ok")];
    }
    world.run(Duration::from_millis(1500));
    let client = world.client();
    for _ in 0..6 {
        world.send(client, GET);
    }
    assert_eq!(world.take("GET"), [7001; 6]);
    for sentinel in world.sentinels.values_mut() {
        sentinel.replicas = vec![(7001, "slave", "err"), (7002, "slave", "ok")];
    }
    world.run(Duration::from_millis(1500));
    for _ in 0..4 {
        world.send(client, GET);
    }
    assert_eq!(world.take("GET"), [7002; 4]);
}

#[test]
fn configuration_of_sentinel_mode() {
    let config =
        Config::from_json(r#"{"sentinel": {"sentinels": [{"port": 26379}], "master_name": "m", "password": "p"}}"#)
            .unwrap();
    let sentinel = config.sentinel.unwrap();
    assert!(config.servers.is_empty());
    assert_eq!(sentinel.majority_lost_after, Duration::from_millis(5000));
    let credentials = sentinel.credentials.as_ref().expect("credentials");
    assert_eq!(credentials.password, crate::config::PasswordSource::Plain(crate::config::Secret::new("p")));
    let err = |text: &str| Config::from_json(text).unwrap_err().0;
    assert!(err(r#"{"sentinel": {"sentinels": [], "master_name": "m"}}"#).contains("`sentinel.sentinels`"));
    assert!(err(r#"{"sentinel": {"sentinels": [{"port": 1}]}}"#).contains("`sentinel.master_name`"));
    assert!(err(r#"{"sentinel": {"sentinels": [{"port": 1}], "master_name": "m", "x": 1}}"#).contains("`x`"));
    assert!(err(r#"{"sentinel": {"sentinels": [{"port": 1}], "master_name": "m", "majority_lost_after": "1"}}"#)
        .contains("`sentinel.majority_lost_after`"));
    assert!(err(r#"{}"#).contains("missing field `servers`"));
}

/// One step of a randomized Sentinel-mode schedule.
#[derive(Clone, Copy, Debug)]
enum Step {
    /// Sentinel fails over to replica `to` (of 7000..=7002); the old master stays up as a master when
    /// `old_stays_up` (it is cut off from the sentinels, not from the proxy: the dangerous case), else crashes.
    Failover {
        to: u16,
        old_stays_up: bool,
    },
    /// Sentinel converts every other running master into a replica of the current one.
    Demote,
    /// The proxy loses (or regains) its link to sentinel `index`.
    Cut(usize),
    Heal(usize),
    /// A sentinel event reaches the proxy, if it can hear sentinel 0.
    Notify,
    /// Time passes (ms).
    Wait(u64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        2 => (7000u16..7003, any::<bool>()).prop_map(|(to, old_stays_up)| Step::Failover { to, old_stays_up }),
        1 => Just(Step::Demote),
        2 => (0usize..3).prop_map(Step::Cut),
        2 => (0usize..3).prop_map(Step::Heal),
        1 => Just(Step::Notify),
        4 => (10u64..4000).prop_map(Step::Wait),
    ]
}

/// The randomized schedule: a client writes every 20 ms; after every 10 ms each `SET` a server received is
/// checked. Invariants:
/// 1. A write reaches only the master the sentinels name, except within two check periods after they switched
///    or after the proxy regained a majority (it asks once per check period), or within `majority_lost_after`
///    after it lost the majority (it keeps the master it had, then stops): so proxies following a majority never
///    write to two masters once Sentinel has switched beyond those bounds, and a proxy cut off from the
///    majority stops writing after its bound.
/// 2. After everything heals, the proxy routes to the master the sentinels name, and writes reach it.
fn check_schedule(steps: &[Step], liar: bool) -> Result<(), TestCaseError> {
    const CHECK_PERIOD: u64 = 100;
    const BOUND: u64 = 3000;
    let mut world = World::new(3, ", \"check_period\": 100, \"hold_ms\": 2000");
    if liar {
        world.servers.insert(7009, FakeServer::master(7009));
        world.sentinels.get_mut(&26002).unwrap().master = Some(7009);
    }
    let mut master = 7000u16;
    let mut cut = [false; 3];
    // Since when the proxy has (Ok) or has not (Err) had a majority of the sentinels naming the master in reach.
    let mut contact: Result<u64, u64> = Ok(0);
    let mut switched_at = 0u64;
    let client = world.client();
    let mut checked = 0;
    let mut tick = |world: &mut World, ms: u64, master: u16, contact: Result<u64, u64>, switched_at: u64| {
        for _ in 0..ms / 10 {
            if world.clock.ms() % 20 == 0 {
                world.feed(client, SET);
            }
            world.run(Duration::from_millis(10));
            for &(at, port) in &world.sets[checked..] {
                let grace = 2 * CHECK_PERIOD + 50;
                let excused = at <= switched_at + grace
                    || match contact {
                        Ok(since) => at <= since + grace,
                        Err(since) => at <= since + BOUND + 50,
                    };
                prop_assert!(port == master || excused, "write to {port} at {at} ms; master {master}, {contact:?}");
            }
            checked = world.sets.len();
        }
        Ok(())
    };
    tick(&mut world, 500, master, contact, switched_at)?;
    for &step in steps {
        match step {
            Step::Failover { to, old_stays_up } if to != master && !world.down.contains(&to) => {
                if !old_stays_up {
                    world.kill(master);
                }
                world.set_role(to, None);
                for port in [7000u16, 7001, 7002] {
                    if port != to && (port != master || !old_stays_up) {
                        world.set_role(port, Some(to));
                    }
                }
                for (port, sentinel) in world.sentinels.iter_mut() {
                    if !(liar && *port == 26002) {
                        sentinel.master = Some(to);
                        sentinel.replicas =
                            [7000, 7001, 7002].into_iter().filter(|p| *p != to).map(|p| (p, "slave", "ok")).collect();
                    }
                }
                master = to;
                switched_at = world.clock.ms();
            }
            Step::Failover { .. } => {}
            Step::Demote => {
                for port in [7000u16, 7001, 7002] {
                    if port != master && !world.down.contains(&port) {
                        world.set_role(port, Some(master));
                    }
                }
            }
            Step::Cut(index) | Step::Heal(index) => {
                let port = 26000 + index as u16;
                cut[index] = matches!(step, Step::Cut(_));
                if cut[index] {
                    world.stop_sentinel(port);
                } else {
                    world.sentinels.get_mut(&port).unwrap().up = true;
                }
            }
            Step::Notify => {
                if world.subscribers.contains_key(&26000) {
                    world.publish(26000, "+switch-master", "mymaster");
                }
            }
            Step::Wait(ms) => tick(&mut world, ms, master, contact, switched_at)?,
        }
        let honest_in_reach = (0..3).filter(|i| !(cut[*i] || (liar && *i == 2))).count();
        let now = world.clock.ms();
        contact = match (contact, honest_in_reach >= 2) {
            (Ok(since), true) => Ok(since),
            (Err(_), true) => Ok(now),
            (Ok(_), false) => Err(now),
            (Err(since), false) => Err(since),
        };
    }
    // Heal: every sentinel in reach, the old masters demoted (Sentinel converts them once it reaches them).
    for (index, was_cut) in cut.iter().enumerate() {
        if *was_cut {
            world.sentinels.get_mut(&(26000 + index as u16)).unwrap().up = true;
        }
    }
    for port in [7000u16, 7001, 7002] {
        if port != master && !world.down.contains(&port) {
            world.set_role(port, Some(master));
        }
    }
    contact = Ok(world.clock.ms());
    tick(&mut world, 2000, master, contact, switched_at)?;
    prop_assert_eq!(world.master_port(), Some(master));
    let before = world.sets.len();
    world.send(client, SET);
    world.run(Duration::from_millis(100));
    prop_assert!(world.sets[before..].contains(&(world.sets.last().map_or(0, |s| s.0), master)));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn random_sentinel_schedules_keep_the_invariants(
        steps in proptest::collection::vec(step(), 1..25),
        liar in any::<bool>(),
    ) {
        check_schedule(&steps, liar)?;
    }
}
