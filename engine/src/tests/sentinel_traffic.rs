//! One proxy in Sentinel mode (`readsToSlaves`) with client traffic, on random schedules of what the sentinels
//! say: replica lists that add, drop and re-address servers (`localhost` for `127.0.0.1`), failovers to another
//! server (the old master crashed or kept as a replica), `+switch-master` events, and sentinels that stop and
//! start (at most one at a time, so two of the three always agree). Four servers, 7000 to 7003; the clients send
//! pipelines of numbered `ECHO`s, `SCAN` iterations, `MULTI`/`EXEC`, `WAIT`, `GET` and `SET` every 10 ms.
//!
//! # Invariants
//!
//! 1. Every request gets exactly one reply, in request order, of its kind (or an error): each `ECHO` its own tag.
//! 2. A `SCAN` cursor reaches only the server that returned it (the fake servers check it), and an iteration that
//!    ends has returned every key (every server holds the same keys: a restart from 0 elsewhere covers them all).
//! 3. A read (`GET`, `SCAN`) reaches only a server the sentinels name as the master or list as a healthy replica,
//!    except up to [`GRACE_MS`] after they stopped naming it.
//! 4. Nothing reaches a server after the engine reported it removed, and no `REPLICAOF` reaches any (both checked
//!    by the [`World`]).
//! 5. Once every sentinel runs again, the proxy routes to the sentinels' master within [`GRACE_MS`], and every
//!    request is answered.

use super::sentinel_world::{Client, World, SCAN_KEYS, STEP_MS};
use crate::resp::{Limits, ReplyScanner};
use crate::testkit::FakeServer;
use bytes::BytesMut;
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

const SERVERS: [u16; 4] = [7000, 7001, 7002, 7003];
const SENTINELS: [u16; 3] = [26000, 26001, 26002];
const CHECK_PERIOD_MS: u64 = 100;
const CLIENTS: usize = 2;
/// How often each client sends.
const SEND_EVERY_MS: u64 = 10;
/// How long reads may still reach a server the sentinels stopped naming: the proxy asks them at least once per
/// check period and acts on the answer at once (answers come at once here); a stopped sentinel's connections are
/// given up on two check periods after an unanswered question, with one step of slack for each.
const GRACE_MS: u64 = 3 * CHECK_PERIOD_MS + 2 * STEP_MS;

/// One step of a schedule.
#[derive(Clone, Copy, Debug)]
enum Step {
    /// Every sentinel lists the servers of `listed` (a mask of [`SERVERS`], the master left out), those of
    /// `healthy` healthy, under `localhost` if `alias`.
    Replicas { listed: u8, healthy: u8, alias: bool },
    /// Sentinel fails over to server `to` (promoted; every other running server its replica): the old master
    /// crashes unless `old_stays_up`.
    Failover { to: u16, old_stays_up: bool },
    /// A sentinel stops, or starts again (another stopped one starts first).
    Toggle(u16),
    /// A sentinel publishes `+switch-master`.
    Notify(u16),
    /// Time passes (ms), the clients sending.
    Wait(u64),
}

fn step() -> impl Strategy<Value = Step> {
    let sentinel = prop::sample::select(SENTINELS.to_vec());
    prop_oneof![
        3 => (0u8..16, 0u8..16, any::<bool>()).prop_map(|(listed, healthy, alias)| Step::Replicas { listed, healthy, alias }),
        2 => (prop::sample::select(SERVERS.to_vec()), any::<bool>())
            .prop_map(|(to, old_stays_up)| Step::Failover { to, old_stays_up }),
        2 => sentinel.clone().prop_map(Step::Toggle),
        1 => sentinel.prop_map(Step::Notify),
        5 => (10u64..800).prop_map(Step::Wait),
    ]
}

/// What a client expects back for a request it sent.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Expect {
    /// Its own tag, or an error.
    Echo(String),
    /// A `SCAN` reply (cursor and keys), or an error.
    Scan,
    /// Anything but an error is fine (`SET`, `GET`, `MULTI`, `EXEC`, `WAIT`); an error too.
    Any,
}

/// One client's traffic and what it has seen.
struct Traffic {
    client: Client,
    /// Requests sent, not answered yet, in order.
    expected: VecDeque<Expect>,
    /// Bytes of replies not yet split into frames.
    buf: BytesMut,
    scanner: ReplyScanner,
    /// How many replies were parsed so far.
    parsed: usize,
    sent: u64,
    echoes: u64,
    /// The `SCAN` iteration: the cursor to continue (None: start one), whether a call is outstanding, the keys
    /// returned since it started.
    cursor: Option<String>,
    scanning: bool,
    keys: BTreeSet<String>,
    completed_scans: u64,
    /// Continued iterations the proxy started again from 0 (the first key came back): its cursor's server was gone.
    restarts: u64,
}

struct Sim {
    world: World,
    traffic: Vec<Traffic>,
    /// The master the sentinels name, the replicas they list (port, healthy), and under which host.
    master: u16,
    replicas: Vec<(u16, bool)>,
    alias: bool,
    /// The servers the sentinels allowed reads to when they last changed, and per server until when (ms) reads to
    /// it are excused although the sentinels do not allow them any more.
    allowed: BTreeSet<u16>,
    excused: BTreeMap<u16, u64>,
    checked: usize,
}

fn bytes_of(words: &[&str]) -> Vec<u8> {
    crate::resp::Request::from_args(words).frame().to_vec()
}

impl Sim {
    fn new() -> Sim {
        // The fake servers' offsets never move: with read-your-writes a client that wrote would read only from the
        // master from then on, and the replicas the sentinels list would see no reads.
        let extra = format!(
            ", \"check_period\": {CHECK_PERIOD_MS}, \"hold_ms\": 1000, \"mode\": \"readsToSlaves\", \
             \"read_your_writes\": false"
        );
        let mut world = World::new(1, SENTINELS.len(), &extra);
        world.servers.insert(7003, FakeServer::replica_of(7003, &super::sentinel_world::addr(7000)));
        let traffic = (0..CLIENTS)
            .map(|_| Traffic {
                client: world.client(0),
                expected: VecDeque::new(),
                buf: BytesMut::new(),
                scanner: ReplyScanner::new(Limits::default()),
                parsed: 0,
                sent: 0,
                echoes: 0,
                cursor: None,
                scanning: false,
                keys: BTreeSet::new(),
                completed_scans: 0,
                restarts: 0,
            })
            .collect();
        let replicas = vec![(7001, true), (7002, true)];
        let excused = SERVERS.iter().map(|port| (*port, GRACE_MS)).collect();
        let allowed = [7000, 7001, 7002].into();
        Sim { world, traffic, master: 7000, replicas, alias: false, allowed, excused, checked: 0 }
    }

    /// The servers reads may reach now.
    fn readable(&self) -> BTreeSet<u16> {
        let healthy = self.replicas.iter().filter(|(_, healthy)| *healthy).map(|(port, _)| *port);
        healthy.chain([self.master]).collect()
    }

    /// Tells every sentinel what Sentinel decided; reads to servers no longer readable are excused a while.
    fn publish_state(&mut self) {
        let host = if self.alias { "localhost" } else { "127.0.0.1" };
        let replicas: Vec<(u16, &'static str, &'static str)> = self
            .replicas
            .iter()
            .map(|(port, healthy)| (*port, if *healthy { "slave" } else { "s_down,slave" }, "ok"))
            .collect();
        for sentinel in self.world.sentinels.values_mut() {
            sentinel.host = host;
            sentinel.master = Some(self.master);
            sentinel.replicas = replicas.clone();
        }
        let now = self.world.clock.ms();
        let readable = self.readable();
        for port in self.allowed.difference(&readable) {
            self.excused.insert(*port, now + GRACE_MS);
        }
        self.allowed = readable;
    }

    fn apply(&mut self, step: Step) -> Result<(), TestCaseError> {
        match step {
            Step::Replicas { listed, healthy, alias } => {
                self.replicas = SERVERS
                    .iter()
                    .enumerate()
                    .filter(|(i, port)| listed & (1 << i) != 0 && **port != self.master)
                    .map(|(i, port)| (*port, healthy & (1 << i) != 0 && !self.world.down.contains(port)))
                    .collect();
                self.alias = alias;
                self.publish_state();
            }
            Step::Failover { to, old_stays_up } if to != self.master && !self.world.down.contains(&to) => {
                let old = self.master;
                if !old_stays_up {
                    self.world.kill(old);
                }
                self.world.set_role(to, None);
                let running: Vec<u16> =
                    SERVERS.into_iter().filter(|p| *p != to && !self.world.down.contains(p)).collect();
                for port in &running {
                    self.world.set_role(*port, Some(to));
                }
                self.master = to;
                self.replicas = running.into_iter().map(|port| (port, true)).collect();
                self.publish_state();
            }
            Step::Failover { .. } => {}
            Step::Toggle(port) => {
                if self.world.sentinels[&port].up {
                    let others_up = SENTINELS.iter().all(|s| *s == port || self.world.sentinels[s].up);
                    if others_up {
                        self.world.stop_sentinel(port);
                    }
                } else {
                    self.world.start_sentinel(port);
                }
            }
            Step::Notify(port) => self.world.publish(port, "+switch-master", "mymaster"),
            Step::Wait(ms) => self.wait(ms, true)?,
        }
        self.check()
    }

    /// Lets `ms` pass; the clients send every [`SEND_EVERY_MS`] if `sending`.
    fn wait(&mut self, ms: u64, sending: bool) -> Result<(), TestCaseError> {
        for _ in 0..ms / STEP_MS {
            if sending && self.world.clock.ms() % SEND_EVERY_MS == 0 {
                for index in 0..self.traffic.len() {
                    self.send(index);
                }
            }
            self.world.run(Duration::from_millis(STEP_MS));
            self.check()?;
        }
        Ok(())
    }

    /// Client `index` sends its next request or pipeline.
    fn send(&mut self, index: usize) {
        let t = &mut self.traffic[index];
        let mut requests: Vec<(Vec<u8>, Expect)> = Vec::new();
        let echo = |t: &mut Traffic| {
            let tag = format!("echo-{index}-{}", t.echoes);
            t.echoes += 1;
            (bytes_of(&["ECHO", &tag]), Expect::Echo(tag))
        };
        match t.sent % 6 {
            0 => {
                requests.push(echo(t));
                requests.push(echo(t));
                requests.push((bytes_of(&["GET", "k"]), Expect::Any));
            }
            1 | 4 if !t.scanning => {
                let cursor = t.cursor.clone().unwrap_or_else(|| "0".to_string());
                t.scanning = true;
                requests.push((bytes_of(&["SCAN", &cursor, "COUNT", "3"]), Expect::Scan));
            }
            2 => {
                requests.push((bytes_of(&["MULTI"]), Expect::Any));
                requests.push((bytes_of(&["SET", "k", "v"]), Expect::Any));
                requests.push(echo(t));
                requests.push((bytes_of(&["EXEC"]), Expect::Any));
            }
            3 => {
                requests.push((bytes_of(&["SET", "k", "v"]), Expect::Any));
                requests.push((bytes_of(&["WAIT", "1", "30"]), Expect::Any));
            }
            _ => requests.push(echo(t)),
        }
        t.sent += 1;
        let mut bytes = Vec::new();
        for (request, expect) in requests {
            bytes.extend_from_slice(&request);
            t.expected.push_back(expect);
        }
        let client = t.client;
        self.world.send(client, &bytes);
    }

    /// Checks the replies that came and the reads that landed since the last check.
    fn check(&mut self) -> Result<(), TestCaseError> {
        for index in 0..self.traffic.len() {
            let replies = self.world.replies(self.traffic[index].client);
            let t = &mut self.traffic[index];
            t.buf.extend_from_slice(&replies[t.parsed..]);
            t.parsed = replies.len();
            while let Some(frame) = t.scanner.next_reply(&mut t.buf).expect("the proxy sends valid replies") {
                let expect = t.expected.pop_front();
                prop_assert!(expect.is_some(), "client {} got a reply it did not ask for: {:?}", index, frame);
                let error = frame.first() == Some(&b'-');
                match expect.unwrap() {
                    Expect::Echo(tag) => {
                        let ok = error || frame.ends_with(format!("\r\n{tag}\r\n").as_bytes());
                        prop_assert!(ok, "client {} expected {} and got {:?}", index, tag, frame);
                    }
                    Expect::Scan => {
                        t.scanning = false;
                        if error {
                            // The iteration starts again.
                            t.cursor = None;
                            t.keys.clear();
                            continue;
                        }
                        let text = String::from_utf8_lossy(&frame).into_owned();
                        let lines: Vec<&str> = text.split("\r\n").collect();
                        prop_assert!(lines[0] == "*2", "client {} SCAN got {:?}", index, text);
                        let cursor = lines[2].to_string();
                        if t.cursor.is_some() && lines.contains(&"k0") {
                            t.restarts += 1;
                        }
                        t.keys.extend(lines.iter().filter(|l| l.starts_with('k')).map(|l| l.to_string()));
                        if cursor == "0" {
                            prop_assert_eq!(t.keys.len(), SCAN_KEYS, "client {} SCAN missed keys: {:?}", index, t.keys);
                            t.keys.clear();
                            t.cursor = None;
                            t.completed_scans += 1;
                        } else {
                            t.cursor = Some(cursor);
                        }
                    }
                    Expect::Any => {}
                }
            }
        }
        let readable = &self.allowed;
        for landing in &self.world.landings[self.checked..] {
            if matches!(landing.command.as_str(), "GET" | "SCAN") {
                let excused = self.excused.get(&landing.port).is_some_and(|until| landing.at <= *until);
                prop_assert!(
                    readable.contains(&landing.port) || excused,
                    "a {} reached {} at {} ms; the sentinels allow {:?}",
                    landing.command,
                    landing.port,
                    landing.at,
                    readable
                );
            }
        }
        self.checked = self.world.landings.len();
        Ok(())
    }

    /// Starts every sentinel and checks invariant 5.
    fn heal_and_drain(&mut self) -> Result<(), TestCaseError> {
        for port in SENTINELS {
            self.world.start_sentinel(port);
        }
        self.wait(GRACE_MS, true)?;
        prop_assert_eq!(self.world.master_port(0), Some(self.master));
        // The last requests are answered within the hold bound (1 s) at most.
        self.wait(1500, false)?;
        for (index, t) in self.traffic.iter().enumerate() {
            prop_assert!(t.expected.is_empty(), "client {} still waits for {:?}", index, t.expected);
        }
        Ok(())
    }
}

/// Runs `steps`; returns how many `SCAN` iterations ended and how many continued ones were started again.
fn run_schedule(steps: &[Step]) -> Result<(u64, u64), TestCaseError> {
    let mut sim = Sim::new();
    sim.wait(300, true)?;
    for &step in steps {
        sim.apply(step)?;
    }
    sim.heal_and_drain()?;
    Ok((sim.traffic.iter().map(|t| t.completed_scans).sum(), sim.traffic.iter().map(|t| t.restarts).sum()))
}

/// How many schedules the property test tries: 64, or `PROPTEST_CASES`.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(64)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    /// Invariants 1 to 5 of the module documentation, on random schedules.
    #[test]
    fn traffic_stays_in_order_and_reads_follow_the_sentinels(steps in proptest::collection::vec(step(), 1..25)) {
        run_schedule(&steps)?;
    }
}

/// The sentinels drop the server a `SCAN` iteration runs on, mid-scan: the cursor is not continued there (the
/// iteration starts again on a server they list), and it still returns every key.
#[test]
fn the_sentinels_drop_the_server_a_scan_runs_on() {
    let steps = [
        Step::Wait(35),
        // Only 7002 is listed from now on: 7001, where half of the iterations run, is dropped.
        Step::Replicas { listed: 0b0100, healthy: 0b0100, alias: false },
        // The event prompts a round at once: the proxy learns it before the iteration there can end.
        Step::Notify(26000),
        Step::Wait(400),
        // Re-addressed: the same servers under `localhost`, 7003 added.
        Step::Replicas { listed: 0b1100, healthy: 0b1100, alias: true },
        Step::Wait(400),
    ];
    let (scans, restarts) = run_schedule(&steps).unwrap();
    assert!(scans >= 4, "{scans} iterations ended");
    assert!(restarts >= 1, "no iteration was running on 7001 when the sentinels dropped it");
}
