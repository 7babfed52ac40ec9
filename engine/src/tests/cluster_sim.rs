//! One proxy in cluster mode against the modelled cluster of `cluster_world`, on random schedules: pipelines
//! from several clients (`SET`, `GET`, `INCR`, `MGET`, `MSET`, `DEL`, `EXISTS`, every written value unique, keys
//! sharing hash tags), a slot migrated one step at a time as `redis-cli --cluster reshard` does it (`IMPORTING`,
//! `MIGRATING`, keys moved one by one, the slot given to the target with a bumped config epoch, then the source
//! told), any of those states held while traffic runs; a primary that crashes or is cut off in a minority (which
//! keeps answering `CLUSTER NODES` with its old view and `cluster_state:fail`), flagged failed by the majority,
//! its replica promoted with a higher epoch, and the old primary back as a replica; nodes whose gossip lags;
//! nodes that refuse connections; time passing. The network takes [`LATENCY_MS`] each way, so the cluster changes
//! while requests travel. `CLUSTER_TRACE=1` prints every step, every data command a node answers and every
//! reply a client gets.
//!
//! # Invariants
//!
//! Checked after every step, and at the end once everything healed:
//!
//! 1. No `MOVED`, `ASK`, `TRYAGAIN` or `CROSSSLOT` reply reaches a client; no client is closed.
//! 2. Every request gets exactly one reply, in order, of its kind: each checked by content against the model. A
//!    read (`GET`, each value of an `MGET`) returns a value the key held at some moment between the request and
//!    its reply (values are unique per write, so a reply meant for another request, or read from a stale copy,
//!    shows), and not older than the client's own earlier write of that key, unless a node bounced that write
//!    (`MOVED`, `ASK`, `TRYAGAIN`, `CLUSTERDOWN`): the requests pipelined behind it had gone out already and may
//!    run before it is sent again, as with any cluster client. A write that waited in the proxy (for a
//!    connection, a primary, a resend) is not overtaken by the client's later requests.
//! 3. Acknowledged writes are never lost: at the end a read of every key through the proxy returns the value of
//!    a write that was acknowledged or answered with an error saying it may or may not have run, and that no
//!    acknowledged write began after; a counter counts at least its acknowledged `INCR`s and at most those plus
//!    the uncertain ones; a write answered with an error that says it did not run never ran; and what the proxy
//!    reads is what the cluster holds.
//! 4. No write is executed by a node that does not own its slot by the majority's map, except the migration's
//!    target after `ASKING` (the world records each).
//! 5. No map from a minority node is accepted: the engine's status never shows a map read from a node after it
//!    was cut off, never shows a primary's config epoch going down, and once it shows a failed primary's
//!    promoted replica, never shows the failed primary serving slots again.
//! 6. The engine never panics and leaves no order unexecuted (`Driver::drain` asserts it after every input); at
//!    the end nothing is left in flight (`in_flight` of the status is 0).
//! 7. A client subscribed to shard channels (one per primary at first) stays subscribed through every move of
//!    their slots (nodes drop a slot's channels with a `sunsubscribe` of their own when the majority gives the
//!    slot away): it gets its three confirmations, then nothing but messages, and at the end a message published
//!    on each channel's slot owner reaches it exactly once.

use super::cluster_world::{ClusterWorld, Stage, BASE_PORT};
use crate::resp::{Limits, ReplyScanner, Request};
use crate::slot::key_slot;
use crate::testkit::Driver;
use crate::{Action, ConnId, ServerAddress};
use bytes::{Bytes, BytesMut};
use proptest::collection::vec;
use proptest::prelude::*;
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// Keys that `SET`, `MSET` and `DEL` write: three share the tag `a`, two the tag `b`.
const VALUE_KEYS: [&str; 8] = ["{a}1", "{a}2", "{a}3", "{b}1", "{b}2", "c1", "c2", "c3"];
/// Keys only `INCR` writes.
const COUNTERS: [&str; 3] = ["{a}n", "{b}n", "n1"];
const CLIENTS: usize = 3;
const PRIMARIES: usize = 3;
/// How long the network takes each way.
const LATENCY_MS: u64 = 1;
const CHECK_PERIOD_MS: u64 = 100;
const HOLD_MS: u64 = 1000;
/// The shard channels the subscriber follows: one per primary's slot range at first, two of them sharing a tag
/// with keys the clients write (so their slots move with the migrations of those keys).
const SHARD_CHANNELS: [&str; 3] = ["{a}ch", "{b}ch", "n1"];

fn all_keys() -> impl Iterator<Item = &'static str> {
    VALUE_KEYS.iter().chain(&COUNTERS).copied()
}

fn any_key(index: u8) -> &'static str {
    let keys: Vec<&str> = all_keys().collect();
    keys[usize::from(index) % keys.len()]
}

fn value_key(index: u8) -> &'static str {
    VALUE_KEYS[usize::from(index) % VALUE_KEYS.len()]
}

/// One request of a pipeline, keys by index.
#[derive(Clone, Debug)]
enum Req {
    Set(u8),
    Get(u8),
    Incr(u8),
    MGet(Vec<u8>),
    MSet(Vec<u8>),
    Del(Vec<u8>),
    Exists(Vec<u8>),
}

/// One step of a schedule.
#[derive(Clone, Debug)]
enum Step {
    /// Client `client` sends a pipeline.
    Send { client: u8, pipeline: Vec<Req> },
    /// The migration goes one step further; when none runs, one starts: the slot of key `key` (any key) to the
    /// primary `to` (picked among the others), `keys` keys moved per step.
    Migrate { key: u8, to: u8, keys: u8 },
    /// The failover goes one step further; when none runs, one starts: of primary `primary`, which crashes or
    /// (`partition`) is cut off in a minority.
    Failover { primary: u8, partition: bool },
    /// Node `node`'s gossip stops: its `CLUSTER NODES` stays as it is now, `cluster_state:ok`.
    Lag { node: u8 },
    /// Every lagging node catches up.
    Gossip,
    /// Node `node` starts or stops refusing new connections.
    Refuse { node: u8 },
    /// Time passes (ms).
    Wait(u64),
}

fn req() -> impl Strategy<Value = Req> {
    let values = || 0..VALUE_KEYS.len() as u8;
    let any = || 0..(VALUE_KEYS.len() + COUNTERS.len()) as u8;
    prop_oneof![
        3 => values().prop_map(Req::Set),
        3 => any().prop_map(Req::Get),
        2 => (0..COUNTERS.len() as u8).prop_map(Req::Incr),
        2 => vec(any(), 2..5).prop_map(Req::MGet),
        2 => vec(values(), 2..4).prop_map(Req::MSet),
        1 => vec(values(), 1..4).prop_map(Req::Del),
        1 => vec(any(), 1..4).prop_map(Req::Exists),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        10 => (0..CLIENTS as u8, vec(req(), 1..6)).prop_map(|(client, pipeline)| Step::Send { client, pipeline }),
        4 => (any::<u8>(), any::<u8>(), 1..4u8).prop_map(|(key, to, keys)| Step::Migrate { key, to, keys }),
        3 => (any::<u8>(), any::<bool>()).prop_map(|(primary, partition)| Step::Failover { primary, partition }),
        1 => any::<u8>().prop_map(|node| Step::Lag { node }),
        1 => Just(Step::Gossip),
        1 => any::<u8>().prop_map(|node| Step::Refuse { node }),
        3 => (1..400u64).prop_map(Step::Wait),
    ]
}

/// What a request was, with its keys and values resolved.
#[derive(Clone, Debug)]
enum Kind {
    /// A write of these keys (and values; None: `DEL`), answered `OK` (or a count for `DEL`).
    Write {
        command: &'static str,
        pairs: Vec<(&'static str, Option<Vec<u8>>)>,
    },
    Get(&'static str),
    Incr(&'static str),
    MGet(Vec<&'static str>),
    Exists(Vec<&'static str>),
}

/// A request sent and not answered yet.
#[derive(Debug)]
struct Pending {
    kind: Kind,
    /// The world's execution count when it was sent: it cannot have run before.
    invoked: u64,
    /// For each key it reads: the value of this client's latest earlier write of it (`SET`, `MSET`), if any.
    own: Vec<Option<Vec<u8>>>,
    /// The writes it made, by index in [`Sim::writes`].
    writes: Vec<usize>,
}

/// How a write ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Pending,
    Acked,
    /// An error that says it may or may not have run (or a write of several keys: some parts may have run).
    Uncertain,
    /// An error that says it did not run.
    Failed,
}

/// One key written by one request.
#[derive(Debug)]
struct Write {
    key: &'static str,
    /// None: deleted.
    value: Option<Vec<u8>>,
    /// The simulation's event count when it was sent and when its reply came.
    sent: u64,
    replied: u64,
    outcome: Outcome,
    /// The error it was answered with, and the command.
    error: Option<String>,
    command: &'static str,
}

/// One client's traffic.
struct Client {
    conn: ConnId,
    expected: VecDeque<Pending>,
    buf: BytesMut,
    scanner: ReplyScanner,
    /// Its latest write of each key, in the order it sent them.
    own: BTreeMap<&'static str, Vec<u8>>,
    sent: u64,
}

/// A failover under way.
#[derive(Clone, Debug)]
struct Failover {
    primary: usize,
    replica: usize,
    /// Cut off in a minority rather than crashed.
    partition: bool,
    /// The view it keeps answering (the majority's when it was cut off).
    stale: String,
    /// Steps done: 1 cut off or crashed, 2 flagged, 3 replica promoted, 4 back but not caught up.
    phase: u8,
    /// The config epoch the replica was promoted with, and whether the engine's status has shown it since.
    promoted_epoch: u64,
    promotion_seen: bool,
}

/// What the simulation counts, for the report of a run.
#[derive(Clone, Debug, Default)]
struct Tally {
    requests: u64,
    errors: u64,
    /// Errors by their first words.
    error_kinds: BTreeMap<String, u64>,
    migrations: u64,
    failovers: u64,
}

struct Sim {
    world: ClusterWorld,
    kit: Driver,
    clients: Vec<Client>,
    writes: Vec<Write>,
    /// Counters: acknowledged `INCR`s, uncertain ones, and every value an acknowledged one returned.
    incrs: BTreeMap<&'static str, (u64, u64, Vec<i64>)>,
    /// The simulation's event count: requests sent and replies read.
    events: u64,
    failover: Option<Failover>,
    /// A node cut off (partitioned, or restarted and not caught up) and since when.
    cut: Option<(usize, Instant)>,
    /// The highest config epoch the status showed for each primary.
    epochs: BTreeMap<ServerAddress, u64>,
    tally: Tally,
    /// The client subscribed to [`SHARD_CHANNELS`], and what it was sent.
    subscriber: ConnId,
    subscriber_got: BytesMut,
}

fn address(node: usize) -> ServerAddress {
    ServerAddress { host: "127.0.0.1".into(), port: BASE_PORT + node as u16 }
}

fn frame(words: &[&[u8]]) -> Bytes {
    Request::from_args(words).frame().clone()
}

/// The value of a bulk reply (None: nil); Err for anything else.
fn bulk_value(frame: &[u8]) -> Result<Option<Vec<u8>>, String> {
    if frame == b"$-1\r\n" || frame == b"_\r\n" {
        return Ok(None);
    }
    let rest = frame.strip_prefix(b"$").ok_or_else(|| format!("not a bulk: {:?}", String::from_utf8_lossy(frame)))?;
    let end = rest.iter().position(|&b| b == b'\r').ok_or("no header end")?;
    Ok(Some(rest[end + 2..rest.len() - 2].to_vec()))
}

/// The elements of an array reply.
fn elements(frame: &Bytes) -> Result<Vec<Bytes>, String> {
    let text = String::from_utf8_lossy(frame);
    let count: usize = text
        .strip_prefix('*')
        .and_then(|t| t.split("\r\n").next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("not an array: {text:?}"))?;
    let header = frame.iter().position(|&b| b == b'\n').ok_or("no header")? + 1;
    let mut rest = BytesMut::from(&frame[header..]);
    let mut scanner = ReplyScanner::new(Limits::default());
    let mut out = Vec::new();
    for _ in 0..count {
        out.push(scanner.next_reply(&mut rest).ok().flatten().ok_or("a short array")?);
    }
    Ok(out)
}

fn integer(frame: &[u8]) -> Option<i64> {
    std::str::from_utf8(frame.strip_prefix(b":")?.strip_suffix(b"\r\n")?).ok()?.parse().ok()
}

impl Sim {
    fn new() -> Sim {
        let mut world = ClusterWorld::new(PRIMARIES);
        let json = format!(
            r#"{{"cluster": {{"seeds": [{{"host": "127.0.0.1", "port": {BASE_PORT}}}], "refresh_period": 1000}},
                "check_period": {CHECK_PERIOD_MS}, "hold_ms": {HOLD_MS}}}"#
        );
        let mut kit = Driver::new(crate::Config::from_json(&json).expect("a valid configuration"));
        world.settle(&mut kit, 5);
        let subscriber = kit.accept();
        let mut subscriptions = BytesMut::new();
        for channel in SHARD_CHANNELS {
            subscriptions.extend_from_slice(&frame(&[b"SSUBSCRIBE", channel.as_bytes()]));
        }
        kit.feed(subscriber, &subscriptions);
        let actions = kit.drain();
        let subscriber_got =
            BytesMut::from(&super::cluster_world::to_client(&world.run(&mut kit, actions), subscriber)[..]);
        world.latency = Duration::from_millis(LATENCY_MS);
        let clients = (0..CLIENTS)
            .map(|_| Client {
                conn: kit.accept(),
                expected: VecDeque::new(),
                buf: BytesMut::new(),
                scanner: ReplyScanner::new(Limits::default()),
                own: BTreeMap::new(),
                sent: 0,
            })
            .collect();
        Sim {
            world,
            kit,
            clients,
            writes: Vec::new(),
            incrs: BTreeMap::new(),
            events: 0,
            failover: None,
            cut: None,
            epochs: BTreeMap::new(),
            tally: Tally::default(),
            subscriber,
            subscriber_got,
        }
    }

    /// Takes what the engine did that the world did not consume: sends to clients.
    fn take(&mut self, actions: Vec<Action>) -> Result<(), TestCaseError> {
        for action in actions {
            match action {
                Action::Send { conn, data } => {
                    if let Some(client) = self.clients.iter_mut().find(|c| c.conn == conn) {
                        client.buf.extend_from_slice(&data);
                    } else if conn == self.subscriber {
                        self.subscriber_got.extend_from_slice(&data);
                    }
                }
                Action::Close { conn } => {
                    prop_assert!(self.clients.iter().all(|c| c.conn != conn), "the engine closed client {}", conn);
                    prop_assert!(conn != self.subscriber, "the engine closed the subscriber");
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Lets `ms` pass: the engine's timers fire and packets arrive when they are due.
    fn wait(&mut self, ms: u64) -> Result<(), TestCaseError> {
        let until = self.kit.clock.now() + Duration::from_millis(ms);
        // The nodes that lost a slot since the last step drop its shard channels first.
        let out = self.world.drop_unowned_shard_channels(&mut self.kit);
        self.take(out)?;
        loop {
            let now = self.kit.clock.now();
            let next = [self.kit.engine.poll_timeout().map(|(at, _)| at), self.world.next_arrival(), Some(until)]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(until)
                .max(now + Duration::from_millis(1))
                .min(until);
            if next <= now {
                break;
            }
            self.kit.advance_to(next);
            let actions = self.kit.drain();
            let out = self.world.run(&mut self.kit, actions);
            self.take(out)?;
            let out = self.world.deliver_due(&mut self.kit);
            self.take(out)?;
            self.check_replies()?;
        }
        Ok(())
    }

    /// Sends client `index`'s pipeline.
    fn send(&mut self, index: usize, pipeline: &[Req]) -> Result<(), TestCaseError> {
        let mut bytes = BytesMut::new();
        for req in pipeline {
            let client = &mut self.clients[index];
            client.sent += 1;
            let value_of = |key: &str| format!("v:{key}:{index}:{}", client.sent).into_bytes();
            let (kind, words): (Kind, Vec<Vec<u8>>) = match req {
                Req::Set(k) => {
                    let key = value_key(*k);
                    let value = value_of(key);
                    let words = vec![b"SET".to_vec(), key.into(), value.clone()];
                    (Kind::Write { command: "SET", pairs: vec![(key, Some(value))] }, words)
                }
                Req::MSet(keys) => {
                    let mut keys: Vec<&'static str> = keys.iter().map(|k| value_key(*k)).collect();
                    keys.dedup();
                    keys.sort();
                    keys.dedup();
                    let pairs: Vec<(&'static str, Option<Vec<u8>>)> =
                        keys.iter().map(|k| (*k, Some(value_of(k)))).collect();
                    let mut words = vec![b"MSET".to_vec()];
                    for (key, value) in &pairs {
                        words.push(key.as_bytes().to_vec());
                        words.push(value.clone().unwrap_or_default());
                    }
                    (Kind::Write { command: "MSET", pairs }, words)
                }
                Req::Del(keys) => {
                    let mut keys: Vec<&'static str> = keys.iter().map(|k| value_key(*k)).collect();
                    keys.sort();
                    keys.dedup();
                    let mut words = vec![b"DEL".to_vec()];
                    words.extend(keys.iter().map(|k| k.as_bytes().to_vec()));
                    (Kind::Write { command: "DEL", pairs: keys.iter().map(|k| (*k, None)).collect() }, words)
                }
                Req::Get(k) => (Kind::Get(any_key(*k)), vec![b"GET".to_vec(), any_key(*k).into()]),
                Req::Incr(k) => {
                    let key = COUNTERS[usize::from(*k) % COUNTERS.len()];
                    (Kind::Incr(key), vec![b"INCR".to_vec(), key.into()])
                }
                Req::MGet(keys) => {
                    let keys: Vec<&'static str> = keys.iter().map(|k| any_key(*k)).collect();
                    let mut words = vec![b"MGET".to_vec()];
                    words.extend(keys.iter().map(|k| k.as_bytes().to_vec()));
                    (Kind::MGet(keys), words)
                }
                Req::Exists(keys) => {
                    let keys: Vec<&'static str> = keys.iter().map(|k| any_key(*k)).collect();
                    let mut words = vec![b"EXISTS".to_vec()];
                    words.extend(keys.iter().map(|k| k.as_bytes().to_vec()));
                    (Kind::Exists(keys), words)
                }
            };
            self.events += 1;
            self.tally.requests += 1;
            let reads: Vec<&'static str> = match &kind {
                Kind::Get(key) => vec![key],
                Kind::MGet(keys) => keys.clone(),
                _ => Vec::new(),
            };
            let own = reads.iter().map(|k| self.clients[index].own.get(k).cloned()).collect();
            let mut writes = Vec::new();
            if let Kind::Write { pairs, .. } = &kind {
                for (key, value) in pairs {
                    match value {
                        Some(value) => {
                            self.clients[index].own.insert(key, value.clone());
                        }
                        // After a DEL of its own, the client's earlier write no longer bounds what it reads.
                        None => {
                            self.clients[index].own.remove(key);
                        }
                    }
                    writes.push(self.writes.len());
                    self.writes.push(Write {
                        key,
                        value: value.clone(),
                        sent: self.events,
                        replied: 0,
                        outcome: Outcome::Pending,
                        error: None,
                        command: match &kind {
                            Kind::Write { command, .. } => command,
                            _ => "",
                        },
                    });
                }
            }
            let words: Vec<&[u8]> = words.iter().map(Vec::as_slice).collect();
            bytes.extend_from_slice(&frame(&words));
            let invoked = self.world.executed;
            self.clients[index].expected.push_back(Pending { kind, invoked, own, writes });
        }
        let conn = self.clients[index].conn;
        self.kit.feed(conn, &bytes);
        let actions = self.kit.drain();
        let out = self.world.run(&mut self.kit, actions);
        self.take(out)?;
        self.check_replies()
    }

    /// The values `key` may be read as by a read that ran after execution `from` and by execution `to`.
    fn readable(&self, key: &str, from: u64, to: u64) -> Vec<Option<Vec<u8>>> {
        let history = self.world.history.get(key.as_bytes()).map(Vec::as_slice).unwrap_or_default();
        let before = history.iter().rev().find(|(at, _)| *at <= from).map(|(_, v)| v.clone()).unwrap_or(None);
        let mut values = vec![before];
        values.extend(history.iter().filter(|(at, _)| *at > from && *at <= to).map(|(_, v)| v.clone()));
        values
    }

    /// Checks a read of `key` that returned `value`, for a request sent at execution `invoked` by a client whose
    /// own latest write of the key is `own`.
    fn check_read(&self, key: &str, value: Option<Vec<u8>>, invoked: u64, own: &Option<Vec<u8>>) -> Result<(), String> {
        let mut from = invoked;
        // A write a node bounced (`MOVED`, `ASK`, `TRYAGAIN`, `CLUSTERDOWN`) is sent again when its reply comes:
        // the client's requests pipelined behind it had gone out already, and may run first.
        if let Some(own) = own.as_ref().filter(|v| !self.world.bounced_writes.contains(*v)) {
            let history = self.world.history.get(key.as_bytes()).map(Vec::as_slice).unwrap_or_default();
            if let Some((at, _)) = history.iter().find(|(_, v)| v.as_ref() == Some(own)) {
                from = from.max(*at);
            }
        }
        let readable = self.readable(key, from, self.world.executed);
        if readable.contains(&value) {
            return Ok(());
        }
        Err(format!(
            "a read of {key} returned {:?}; between executions {from} and {} it held {:?}",
            value.map(|v| String::from_utf8_lossy(&v).into_owned()),
            self.world.executed,
            readable.iter().map(|v| v.as_ref().map(|v| String::from_utf8_lossy(v).into_owned())).collect::<Vec<_>>()
        ))
    }

    /// Reads the replies that came and checks each against its request (invariants 1 and 2).
    fn check_replies(&mut self) -> Result<(), TestCaseError> {
        for index in 0..self.clients.len() {
            loop {
                let client = &mut self.clients[index];
                let reply = client.scanner.next_reply(&mut client.buf);
                prop_assert!(reply.is_ok(), "client {} got an invalid reply: {:?}", index, reply);
                let Some(reply) = reply.unwrap() else { break };
                let pending = client.expected.pop_front();
                prop_assert!(pending.is_some(), "client {} got a reply it did not ask for: {:?}", index, reply);
                self.events += 1;
                if std::env::var_os("CLUSTER_TRACE").is_some() {
                    eprintln!("{} ms: client {index} got {:?}", self.kit.clock.ms(), String::from_utf8_lossy(&reply));
                }
                self.check_reply(index, pending.unwrap(), &reply)?;
            }
        }
        prop_assert!(self.world.violations.is_empty(), "{:?}", self.world.violations);
        Ok(())
    }

    fn check_reply(&mut self, index: usize, pending: Pending, reply: &Bytes) -> Result<(), TestCaseError> {
        let text = String::from_utf8_lossy(reply).into_owned();
        for forbidden in ["-MOVED", "-ASK", "-TRYAGAIN", "-CROSSSLOT"] {
            prop_assert!(!text.starts_with(forbidden), "client {} got {:?} for {:?}", index, text, pending.kind);
        }
        // `TRYAGAIN` and `CLUSTERDOWN` are retried until the hold bound, as a request without a primary is held.
        for retried in ["(last: TRYAGAIN", "(last: CLUSTERDOWN"] {
            prop_assert!(!text.contains(retried), "client {} got {:?} for {:?}", index, text, pending.kind);
        }
        if reply.first() == Some(&b'-') {
            self.tally.errors += 1;
            let kind: String = text.split(['(', ';', '\r']).next().unwrap_or_default().chars().take(60).collect();
            *self.tally.error_kinds.entry(kind).or_default() += 1;
            // A write of several keys may have been split (by slot, or key by key during a migration): its
            // error is one part's, and other parts may have run.
            let split = matches!(&pending.kind, Kind::Write { pairs, .. } if pairs.len() > 1);
            let outcome =
                if split || text.contains("may or may not have run") { Outcome::Uncertain } else { Outcome::Failed };
            for &w in &pending.writes {
                self.writes[w].outcome = outcome;
                self.writes[w].replied = self.events;
                self.writes[w].error = Some(text.clone());
            }
            if let Kind::Incr(key) = pending.kind {
                if outcome == Outcome::Uncertain {
                    self.incrs.entry(key).or_default().1 += 1;
                }
            }
            return Ok(());
        }
        match &pending.kind {
            Kind::Write { command, pairs } => {
                if *command == "DEL" {
                    let count = integer(reply);
                    prop_assert!(
                        count.is_some_and(|n| n >= 0 && n as usize <= pairs.len()),
                        "client {} DEL {:?} got {:?}",
                        index,
                        pairs,
                        text
                    );
                } else {
                    prop_assert_eq!(&text, "+OK\r\n", "client {} {} {:?}", index, command, pairs);
                }
                for &w in &pending.writes {
                    self.writes[w].outcome = Outcome::Acked;
                    self.writes[w].replied = self.events;
                }
            }
            Kind::Get(key) => {
                let value = bulk_value(reply);
                prop_assert!(value.is_ok(), "client {} GET {} got {:?}", index, key, text);
                let checked = self.check_read(key, value.unwrap(), pending.invoked, &pending.own[0]);
                prop_assert!(checked.is_ok(), "client {}: {}", index, checked.unwrap_err());
            }
            Kind::MGet(keys) => {
                let values = elements(reply);
                prop_assert!(values.is_ok(), "client {} MGET {:?} got {:?}", index, keys, text);
                let values = values.unwrap();
                prop_assert_eq!(values.len(), keys.len(), "client {} MGET {:?} got {:?}", index, keys, text);
                for ((key, element), own) in keys.iter().zip(&values).zip(&pending.own) {
                    let value = bulk_value(element);
                    prop_assert!(value.is_ok(), "client {} MGET {:?} got {:?}", index, keys, text);
                    let checked = self.check_read(key, value.unwrap(), pending.invoked, own);
                    prop_assert!(checked.is_ok(), "client {} MGET: {}", index, checked.unwrap_err());
                }
            }
            Kind::Incr(key) => {
                let value = integer(reply);
                prop_assert!(value.is_some_and(|n| n > 0), "client {} INCR {} got {:?}", index, key, text);
                let counter = self.incrs.entry(key).or_default();
                prop_assert!(!counter.2.contains(&value.unwrap()), "two INCRs of {} answered {:?}", key, value);
                counter.0 += 1;
                counter.2.push(value.unwrap());
            }
            Kind::Exists(keys) => {
                let count = integer(reply);
                prop_assert!(
                    count.is_some_and(|n| n >= 0 && n as usize <= keys.len()),
                    "client {} EXISTS {:?} got {:?}",
                    index,
                    keys,
                    text
                );
            }
        }
        Ok(())
    }

    /// Invariant 5, on the engine's status now.
    fn check_status(&mut self) -> Result<(), TestCaseError> {
        let now = self.kit.clock.now();
        let status = self.kit.engine.status(now).cluster.expect("cluster mode");
        for shard in status.shards.iter().filter(|s| s.epoch > 0) {
            let highest = self.epochs.entry(shard.primary.clone()).or_default();
            prop_assert!(
                shard.epoch >= *highest,
                "the config epoch of {} went down from {} to {}: {:?}",
                shard.primary,
                *highest,
                shard.epoch,
                status
            );
            *highest = shard.epoch;
        }
        if let (Some((node, since)), Some(age), Some(from)) = (self.cut, status.map_age, &status.map_from) {
            let accepted = now - age;
            prop_assert!(
                !(*from == address(node) && accepted > since + Duration::from_millis(LATENCY_MS)),
                "the map held was read from {}, cut off since {} ms, at {} ms",
                from,
                self.kit.clock.ms_of(since),
                self.kit.clock.ms_of(accepted)
            );
        }
        if let Some(failover) = self.failover.as_mut().filter(|f| f.phase >= 3) {
            let (primary, replica) = (address(failover.primary), address(failover.replica));
            if status.shards.iter().any(|s| s.primary == replica && s.epoch >= failover.promoted_epoch) {
                failover.promotion_seen = true;
            }
            // A shard of epoch 0 was learnt from a `MOVED` (which carries no epoch) that a majority node sent
            // before the promotion and arrived after: the next request there corrects it.
            let stale = status.shards.iter().any(|s| s.primary == primary && s.epoch > 0);
            prop_assert!(
                !(failover.promotion_seen && stale),
                "{} serves slots again after the status showed its replica {} promoted: {:?}",
                primary,
                replica,
                status
            );
        }
        Ok(())
    }

    /// A primary that can take part in a migration or failover: up, not cut off, not refusing, not failing over.
    fn healthy_primaries(&self) -> Vec<usize> {
        let busy = |n: usize| self.failover.as_ref().is_some_and(|f| f.primary == n || f.replica == n);
        (0..self.world.nodes.len())
            .filter(|&n| {
                let node = &self.world.nodes[n];
                node.replica_of.is_none()
                    && node.up
                    && !node.flagged
                    && node.minority.is_none()
                    && !busy(n)
                    && self.world.owners.contains(&n)
            })
            .collect()
    }

    /// The migration's next step (see [`Step::Migrate`]).
    fn migrate(&mut self, key: u8, to: u8, keys: u8) {
        let Some(m) = self.world.migration else {
            let slot = key_slot(any_key(key).as_bytes());
            let from = self.world.owners[usize::from(slot)];
            let healthy = self.healthy_primaries();
            let targets: Vec<usize> = healthy.iter().copied().filter(|&n| n != from).collect();
            if !healthy.contains(&from) || targets.is_empty() {
                return;
            }
            let to = targets[usize::from(to) % targets.len()];
            self.world.migration = Some(super::cluster_world::Migration { slot, from, to });
            self.world.stage = Stage::ImportingOnly;
            self.tally.migrations += 1;
            return;
        };
        match self.world.stage {
            Stage::ImportingOnly => self.world.stage = Stage::Both,
            Stage::Both => {
                if self.world.migrate_keys(usize::from(keys)) == 0 {
                    // Every key moved: `CLUSTER SETSLOT <slot> NODE <target>` on the target.
                    self.world.owners[usize::from(m.slot)] = m.to;
                    self.world.bump_epoch(m.to);
                    self.world.stage = Stage::TargetOwns;
                }
            }
            Stage::TargetOwns => {
                // ... then on the source: the migration is over.
                self.world.migration = None;
                self.world.stage = Stage::default();
            }
        }
    }

    /// The failover's next step (see [`Step::Failover`]).
    fn fail_over(&mut self, primary: u8, partition: bool) -> Result<(), TestCaseError> {
        let now = self.kit.clock.now();
        let Some(mut failover) = self.failover.clone() else {
            let migrating = |n: usize| self.world.migration.is_some_and(|m| m.from == n || m.to == n);
            let candidates: Vec<usize> =
                self.healthy_primaries()
                    .into_iter()
                    .filter(|&p| !migrating(p))
                    .filter(|&p| {
                        self.world.nodes.iter().any(|r| {
                            r.replica_of == Some(p) && r.up && !r.flagged && !r.refusing && r.minority.is_none()
                        })
                    })
                    .collect();
            let Some(&primary) = candidates.get(usize::from(primary) % candidates.len().max(1)) else { return Ok(()) };
            let replica = self.world.nodes.iter().position(|r| r.replica_of == Some(primary)).expect("a replica");
            let stale = self.world.nodes_text();
            if partition {
                self.world.nodes[primary].minority = Some(stale.clone());
                self.world.nodes[primary].lagging = None;
                self.cut = Some((primary, now));
            } else {
                let out = self.world.crash(&mut self.kit, primary);
                self.take(out)?;
            }
            self.tally.failovers += 1;
            self.failover = Some(Failover {
                primary,
                replica,
                partition,
                stale,
                phase: 1,
                promoted_epoch: u64::MAX,
                promotion_seen: false,
            });
            return Ok(());
        };
        let p = failover.primary;
        match failover.phase {
            1 => self.world.nodes[p].flagged = true,
            2 => {
                let replica = self.world.promote_replica_of(p);
                failover.promoted_epoch = self.world.nodes[replica].epoch;
            }
            3 if !failover.partition => {
                // It restarts with the view it had, and says the cluster is down until it has caught up.
                self.world.nodes[p].up = true;
                self.world.nodes[p].minority = Some(failover.stale.clone());
                self.cut = Some((p, now));
            }
            3 => {}
            _ => {
                let node = &mut self.world.nodes[p];
                node.minority = None;
                node.flagged = false;
                node.replica_of = Some(failover.replica);
                node.keys.clear();
                self.cut = None;
                self.failover = None;
                return Ok(());
            }
        }
        failover.phase += 1;
        self.failover = Some(failover);
        Ok(())
    }

    fn apply(&mut self, step: &Step) -> Result<(), TestCaseError> {
        if std::env::var_os("CLUSTER_TRACE").is_some() {
            eprintln!("{} ms: {step:?}", self.kit.clock.ms());
        }
        match step {
            Step::Send { client, pipeline } => self.send(usize::from(*client) % CLIENTS, pipeline)?,
            Step::Migrate { key, to, keys } => self.migrate(*key, *to, *keys),
            Step::Failover { primary, partition } => self.fail_over(*primary, *partition)?,
            Step::Lag { node } => {
                let node = usize::from(*node) % self.world.nodes.len();
                if self.world.nodes[node].minority.is_none() {
                    self.world.nodes[node].lagging = Some(self.world.nodes_text());
                }
            }
            Step::Gossip => self.world.nodes.iter_mut().for_each(|n| n.lagging = None),
            Step::Refuse { node } => {
                let node = &mut self.world.nodes[usize::from(*node) % (PRIMARIES * 2)];
                node.refusing = !node.refusing;
            }
            Step::Wait(ms) => self.wait(*ms)?,
        }
        self.wait(1)?;
        self.check_status()
    }

    /// Ends every fault (the migration and failover carried to their end, gossip caught up, connections taken),
    /// lets the engine settle, and checks invariants 3 and 6.
    fn heal_and_check(&mut self) -> Result<(), TestCaseError> {
        while self.failover.is_some() {
            self.fail_over(0, false)?;
            self.wait(50)?;
            self.check_status()?;
        }
        while self.world.migration.is_some() {
            self.migrate(0, 0, 3);
            self.wait(20)?;
            self.check_status()?;
        }
        self.world.nodes.iter_mut().for_each(|n| {
            n.lagging = None;
            n.refusing = false;
        });
        self.wait(HOLD_MS * 3)?;
        self.check_status()?;
        for (index, client) in self.clients.iter().enumerate() {
            prop_assert!(client.expected.is_empty(), "client {} still waits for {:?}", index, client.expected);
        }
        let status = self.kit.engine.status(self.kit.clock.now()).cluster.expect("cluster mode");
        prop_assert_eq!(status.in_flight, 0, "requests left in flight: {:?}", status);
        prop_assert_eq!(status.served_slots, crate::slot::SLOTS);
        // The final read, through the proxy, of every key.
        let reader = self.kit.accept();
        let mut bytes = BytesMut::new();
        for key in all_keys() {
            bytes.extend_from_slice(&frame(&[b"GET", key.as_bytes()]));
        }
        self.kit.feed(reader, &bytes);
        let actions = self.kit.drain();
        let mut out = self.world.run(&mut self.kit, actions);
        let until = self.kit.clock.now() + Duration::from_millis(100);
        while self.kit.clock.now() < until {
            self.kit.advance(Duration::from_millis(1));
            let actions = self.kit.drain();
            out.extend(self.world.run(&mut self.kit, actions));
            out.extend(self.world.deliver_due(&mut self.kit));
        }
        let mut buf = BytesMut::from(&super::cluster_world::to_client(&out, reader)[..]);
        let mut scanner = ReplyScanner::new(Limits::default());
        for key in all_keys() {
            let reply = scanner.next_reply(&mut buf).ok().flatten();
            prop_assert!(reply.is_some(), "no final reply for {}", key);
            let value = bulk_value(&reply.unwrap());
            prop_assert!(value.is_ok(), "the final read of {} got {:?}", key, value);
            let value = value.unwrap();
            let holder = self.world.holder(key.as_bytes());
            let held = self.world.nodes[holder].keys.get(key.as_bytes()).cloned();
            prop_assert_eq!(&value, &held, "the proxy reads {} other than the cluster holds it", key);
            let last = self.world.history.get(key.as_bytes()).and_then(|h| h.last()).and_then(|(_, v)| v.clone());
            prop_assert_eq!(&held, &last, "the cluster lost the last write of {}", key);
            self.check_final(key, value)?;
        }
        let status = self.kit.engine.status(self.kit.clock.now()).cluster.expect("cluster mode");
        prop_assert_eq!(status.in_flight, 0, "requests left in flight after the final reads: {:?}", status);
        self.check_subscriber()
    }

    /// Invariant 7: a message published now on each shard channel reaches the subscriber once, and it was sent
    /// nothing but its confirmations and messages.
    fn check_subscriber(&mut self) -> Result<(), TestCaseError> {
        for channel in SHARD_CHANNELS {
            let out = self.world.spublish(&mut self.kit, channel.as_bytes(), format!("last:{channel}").as_bytes());
            self.take(out)?;
        }
        self.wait(10)?;
        let mut scanner = ReplyScanner::new(Limits::default());
        let mut frames = Vec::new();
        while let Ok(Some(frame)) = scanner.next_reply(&mut self.subscriber_got) {
            frames.push(String::from_utf8_lossy(&frame).into_owned());
        }
        let confirmations: Vec<String> = SHARD_CHANNELS
            .iter()
            .enumerate()
            .map(|(n, c)| format!("*3\r\n$10\r\nssubscribe\r\n${}\r\n{c}\r\n:{}\r\n", c.len(), n + 1))
            .collect();
        prop_assert_eq!(&frames[..confirmations.len().min(frames.len())], &confirmations[..], "{:?}", frames);
        let rest = &frames[confirmations.len()..];
        prop_assert!(rest.iter().all(|f| f.starts_with("*3\r\n$8\r\nsmessage\r\n")), "the subscriber got {:?}", rest);
        for channel in SHARD_CHANNELS {
            let last = format!(
                "$8\r\nsmessage\r\n${}\r\n{channel}\r\n${}\r\nlast:{channel}\r\n",
                channel.len(),
                channel.len() + 5
            );
            let got = rest.iter().filter(|f| f.ends_with(&last)).count();
            prop_assert_eq!(got, 1, "the last message of {} reached the subscriber {} times: {:?}", channel, got, rest);
        }
        Ok(())
    }

    /// Invariant 3 for `key`, whose final value is `value`.
    fn check_final(&self, key: &'static str, value: Option<Vec<u8>>) -> Result<(), TestCaseError> {
        for write in self.writes.iter().filter(|w| w.key == key && w.outcome == Outcome::Failed) {
            let ran = self
                .world
                .history
                .get(key.as_bytes())
                .is_some_and(|h| h.iter().any(|(_, v)| v.is_some() && *v == write.value));
            prop_assert!(!ran, "a write of {} answered with an error that says it did not run ran: {:?}", key, write);
        }
        if let Some((acked, uncertain, _)) = self.incrs.get(key) {
            let count = value.as_ref().and_then(|v| std::str::from_utf8(v).ok()?.parse::<u64>().ok()).unwrap_or(0);
            prop_assert!(
                *acked <= count && count <= acked + uncertain,
                "{} counts {} with {} INCRs acknowledged and {} uncertain",
                key,
                count,
                acked,
                uncertain
            );
            return Ok(());
        }
        if COUNTERS.contains(&key) {
            return Ok(());
        }
        let writes: Vec<&Write> = self.writes.iter().filter(|w| w.key == key).collect();
        let acked: Vec<&&Write> = writes.iter().filter(|w| w.outcome == Outcome::Acked).collect();
        let candidates: Vec<&Option<Vec<u8>>> = writes
            .iter()
            .filter(|w| matches!(w.outcome, Outcome::Acked | Outcome::Uncertain))
            .filter(|w| !acked.iter().any(|later| later.sent > w.replied))
            .map(|w| &w.value)
            .collect();
        let fine = if acked.is_empty() && value.is_none() { true } else { candidates.contains(&&value) };
        let shown = |v: &Option<Vec<u8>>| v.as_ref().map(|v| String::from_utf8_lossy(v).into_owned());
        prop_assert!(
            fine,
            "the final value of {} is {:?}; it may be {:?}; its writes: {:?}",
            key,
            shown(&value),
            candidates.iter().map(|v| shown(v)).collect::<Vec<_>>(),
            writes
                .iter()
                .map(|w| (w.command, shown(&w.value), w.outcome, w.sent, w.replied, &w.error))
                .collect::<Vec<_>>()
        );
        Ok(())
    }
}

/// Runs `steps` and checks every invariant; returns the tally.
fn run_schedule(steps: &[Step]) -> Result<Tally, TestCaseError> {
    let mut sim = Sim::new();
    for step in steps {
        sim.apply(step)?;
    }
    sim.heal_and_check()?;
    Ok(sim.tally.clone())
}

/// How many schedules the property test tries: 192 (about 14 s in a debug build), or `PROPTEST_CASES`.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(192)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    /// Invariants 1 to 6 of the module documentation, on random schedules.
    #[test]
    fn cluster_traffic_survives_migrations_failovers_and_partitions(steps in vec(step(), 1..50)) {
        run_schedule(&steps)?;
    }
}

/// Found by the simulation: a client pipelines `MSET {b}1 ... {a}1 ...` while the primary of `{b}1` refuses
/// connections (the part waits for a resend, with a backoff that grew with earlier tries), then `GET {b}1`. The
/// `GET` went out as soon as a connection opened, before the `MSET` part's resend was due, and read the key as it
/// was before the client's own write. A client's later requests now wait while an earlier one waits for a resend,
/// and resends go out in the order the client sent the requests.
#[test]
fn a_request_waiting_for_a_resend_is_not_overtaken_by_the_clients_next_one() {
    use Req::*;
    let steps = [
        Step::Migrate { key: 0, to: 0, keys: 1 },
        Step::Failover { primary: 0, partition: false },
        Step::Send { client: 0, pipeline: vec![Get(7), MSet(vec![3, 0])] },
        Step::Send { client: 0, pipeline: vec![Set(0)] },
        Step::Failover { primary: 0, partition: false },
        Step::Wait(190),
        Step::Failover { primary: 0, partition: false },
        Step::Failover { primary: 0, partition: false },
        Step::Send { client: 0, pipeline: vec![Set(0)] },
        Step::Migrate { key: 0, to: 0, keys: 1 },
        Step::Refuse { node: 0 },
        Step::Send { client: 0, pipeline: vec![Set(0)] },
        Step::Send { client: 0, pipeline: vec![Get(3)] },
        Step::Send { client: 0, pipeline: vec![Set(0)] },
    ];
    run_schedule(&steps).unwrap();
}

/// Found by the simulation: a primary cut off in a minority answers `CLUSTERDOWN` until the majority promotes
/// its replica. The engine counted each retry as a redirection and, after five (155 ms of backoff), answered
/// the client "the cluster redirected the request 5 times". `TRYAGAIN` and `CLUSTERDOWN` are now retried until
/// `hold_ms`, as a request for a shard without a primary is held; only `MOVED` and `ASK` count.
#[test]
fn a_primary_cut_off_in_a_minority_holds_its_requests_until_the_promotion() {
    use Req::*;
    let steps = [
        // Node 7000 (slots 0-5460: `{b}`, `c2`, `n1`) is cut off, the majority takes 300 ms to promote its replica.
        Step::Failover { primary: 0, partition: true },
        Step::Send { client: 0, pipeline: vec![Set(3), Incr(2), Get(3)] },
        Step::Wait(300),
        Step::Failover { primary: 0, partition: true },
        Step::Failover { primary: 0, partition: true },
        Step::Wait(300),
    ];
    let tally = run_schedule(&steps).unwrap();
    assert_eq!(tally.errors, 0, "{:?}", tally.error_kinds);
}

/// Found by the simulation: a primary fails over to its replica, then the replica is cut off in a minority and
/// the old primary, back as a replica, is promoted again. The proxy had forgotten the old primary (the map no
/// longer named it), so the `MOVED` its shard channel's re-subscription met could not fix the map, the
/// re-subscription went back to the cut-off node at once, five times in a few milliseconds, and the channel was
/// given up. A `MOVED` to a node the proxy does not know now learns it, as for any request, and a refusal that
/// fixed nothing waits for the next map.
#[test]
fn a_shard_channel_follows_its_slot_back_to_a_primary_the_map_had_dropped() {
    let steps = [
        Step::Failover { primary: 77, partition: false },
        Step::Failover { primary: 0, partition: false },
        Step::Failover { primary: 0, partition: false },
        Step::Wait(196),
        Step::Failover { primary: 0, partition: false },
        Step::Failover { primary: 0, partition: false },
        Step::Failover { primary: 203, partition: true },
    ];
    run_schedule(&steps).unwrap();
}
