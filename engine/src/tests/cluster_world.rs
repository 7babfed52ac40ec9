//! A modelled Redis Cluster for the cluster-mode tests: nodes that own slots and keep keys, answer `PING`, `INFO`,
//! `CLUSTER INFO` and `CLUSTER NODES`, redirect with `MOVED`, `ASK` and `TRYAGAIN` as Redis does, migrate slots
//! key by key (each frozen state of `redis-cli --cluster reshard` can be held), and fail over by promoting a
//! replica with a new config epoch. One engine in cluster mode is driven against it on the test kit's fake clock,
//! every connection with its own parser and `ASKING` state.
//!
//! Beyond what the fixed tests need, the simulation (`cluster_sim`) uses:
//! - nodes cut off in a minority (or just restarted): they answer `CLUSTER NODES` with the view they had when cut
//!   off, `CLUSTER INFO` with `cluster_state:fail`, and every data command with `CLUSTERDOWN`, as Redis does;
//! - nodes whose gossip lags: `CLUSTER NODES` shows an older view, `cluster_state` still `ok`;
//! - nodes that refuse new connections;
//! - a network delay ([`ClusterWorld::latency`]): requests reach a node, and replies the engine, that long after
//!   they were sent, so that the cluster can change while they travel ([`ClusterWorld::deliver_due`]);
//! - a log of every key's values in the order the nodes executed the writes ([`ClusterWorld::history`]), and the
//!   writes a node executed for a slot that the majority does not give it ([`ClusterWorld::violations`]).

use crate::slot::{key_slot, SLOTS};
use crate::testkit::{Driver, FakeServer};
use crate::{Action, Config, ConnId};
use bytes::{Bytes, BytesMut};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// One node: its id, whether it is up, and (as a primary) its keys.
pub(crate) struct Node {
    pub(crate) port: u16,
    pub(crate) id: String,
    /// The primary it replicates (None: it is a primary).
    pub(crate) replica_of: Option<usize>,
    pub(crate) epoch: u64,
    /// Its process runs: connections to it open; when it stops, they break.
    pub(crate) up: bool,
    /// The majority agreed it failed (the `fail` flag in `CLUSTER NODES`).
    pub(crate) flagged: bool,
    /// It runs but refuses new connections (`maxclients` reached, say).
    pub(crate) refusing: bool,
    /// Cut off in a minority, or restarted and not caught up yet: the `CLUSTER NODES` text it keeps answering
    /// (with `cluster_state:fail`); data commands get `CLUSTERDOWN`.
    pub(crate) minority: Option<String>,
    /// Its gossip lags: the older `CLUSTER NODES` text it answers (with `cluster_state:ok`).
    pub(crate) lagging: Option<String>,
    /// Keys it holds (a primary's; a replica's copy is not modelled: a promotion takes over the primary's keys).
    pub(crate) keys: BTreeMap<Vec<u8>, Vec<u8>>,
    /// `PING` and `INFO`.
    probe: FakeServer,
}

/// A slot being migrated: keys of it already moved are on `to`; `from` answers `ASK` for keys it no longer has.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Migration {
    pub(crate) slot: u16,
    pub(crate) from: usize,
    pub(crate) to: usize,
}

/// How far a [`Migration`] has got, as `redis-cli --cluster reshard` carries it out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Stage {
    /// `CLUSTER SETSLOT <slot> IMPORTING` on the target only: it serves the slot after `ASKING`, the source
    /// does not redirect yet.
    ImportingOnly,
    /// `MIGRATING` on the source too: keys move one at a time (`MIGRATE`); the source answers `ASK` for a key it
    /// no longer has and `TRYAGAIN` for a request with keys on both sides.
    #[default]
    Both,
    /// `CLUSTER SETSLOT <slot> NODE <target>` on the target: it owns the slot with a bumped config epoch; the
    /// source, not told yet, still answers `ASK` (it has no key of the slot left).
    TargetOwns,
}

/// One value a key took, in execution order: when (the world's execution count) and what (None: deleted).
pub(crate) type Version = (u64, Option<Vec<u8>>);

/// What travels on the network when the world has a latency.
#[derive(Clone, Debug)]
enum Packet {
    /// Bytes the engine sent to a node.
    ToNode(Vec<u8>),
    /// Bytes a node answered.
    ToEngine(Vec<u8>),
}

/// The cluster.
pub(crate) struct ClusterWorld {
    pub(crate) nodes: Vec<Node>,
    /// The owning node of every slot, as the majority knows it.
    pub(crate) owners: Vec<usize>,
    pub(crate) migration: Option<Migration>,
    /// How far the migration has got.
    pub(crate) stage: Stage,
    /// Per connection: its node, what arrived and is not a whole request yet, and whether `ASKING` came before.
    conns: BTreeMap<ConnId, (usize, Vec<u8>, bool)>,
    /// Connections inside `MULTI`: the replies their queued commands will give at `EXEC` (the model runs each
    /// command when it is queued; nothing else runs in between here), and whether one was refused (a redirection:
    /// `EXEC` then answers `EXECABORT`, as Redis does).
    multi: BTreeMap<ConnId, (Vec<Vec<u8>>, bool)>,
    /// What each node's command counts reached, by upper-case command name.
    pub(crate) calls: BTreeMap<(usize, String), u64>,
    /// How long a request takes to reach a node, and its reply the engine (zero: at once, within
    /// [`ClusterWorld::run`]).
    pub(crate) latency: Duration,
    /// Packets on their way: when they arrive, in sending order.
    wire: Vec<(Instant, ConnId, Packet)>,
    /// Data commands executed so far: the clock of [`ClusterWorld::history`].
    pub(crate) executed: u64,
    /// Every key's values, in the order the writes were executed.
    pub(crate) history: BTreeMap<Vec<u8>, Vec<Version>>,
    /// Writes executed by a node that did not own the slot (by the majority's map) nor import it after `ASKING`.
    pub(crate) violations: Vec<String>,
    /// The values of the `SET`s and `MSET`s a node bounced (`MOVED`, `ASK`, `TRYAGAIN`, `CLUSTERDOWN`).
    pub(crate) bounced_writes: BTreeSet<Vec<u8>>,
    /// The shard channels each connection is subscribed to (on its node).
    shard_channels: BTreeMap<ConnId, BTreeSet<Vec<u8>>>,
    /// Print every data command a node answers (`CLUSTER_TRACE` set).
    trace: bool,
}

/// The first port of the modelled nodes.
pub(crate) const BASE_PORT: u16 = 7000;

fn bulk(value: &[u8]) -> Vec<u8> {
    let mut out = format!("${}\r\n", value.len()).into_bytes();
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
    out
}

impl ClusterWorld {
    /// `primaries` primaries, each with one replica, the slots spread evenly; epochs 1..=primaries.
    pub(crate) fn new(primaries: usize) -> ClusterWorld {
        let mut nodes = Vec::new();
        for index in 0..primaries * 2 {
            let port = BASE_PORT + index as u16;
            let replica_of = (index >= primaries).then(|| index - primaries);
            nodes.push(Node {
                port,
                id: format!("{:040x}", index + 1),
                replica_of,
                epoch: (index % primaries) as u64 + 1,
                up: true,
                flagged: false,
                refusing: false,
                minority: None,
                lagging: None,
                keys: BTreeMap::new(),
                probe: FakeServer::master(port),
            });
        }
        let owners = (0..SLOTS).map(|slot| slot * primaries / SLOTS).collect();
        ClusterWorld {
            nodes,
            owners,
            migration: None,
            stage: Stage::default(),
            conns: BTreeMap::new(),
            multi: BTreeMap::new(),
            calls: BTreeMap::new(),
            latency: Duration::ZERO,
            wire: Vec::new(),
            executed: 0,
            history: BTreeMap::new(),
            violations: Vec::new(),
            bounced_writes: BTreeSet::new(),
            shard_channels: BTreeMap::new(),
            trace: std::env::var_os("CLUSTER_TRACE").is_some(),
        }
    }

    /// The configuration of a proxy in front of it, seeded with node 0.
    pub(crate) fn config(extra: &str) -> Config {
        let json = format!(r#"{{"cluster": {{"seeds": [{{"host": "127.0.0.1", "port": {BASE_PORT}}}]}}{extra}}}"#);
        Config::from_json(&json).expect("a valid cluster configuration")
    }

    /// The `CLUSTER NODES` text the majority would give.
    pub(crate) fn nodes_text(&self) -> String {
        let mut text = String::new();
        for (index, node) in self.nodes.iter().enumerate() {
            let (role, primary) = match node.replica_of {
                None => ("master", "-".to_string()),
                Some(primary) => ("slave", self.nodes[primary].id.clone()),
            };
            let fail = if node.flagged { ",fail" } else { "" };
            let mut line = format!(
                "{} 127.0.0.1:{}@{} {role}{fail} {primary} 0 0 {} connected",
                node.id,
                node.port,
                node.port + 10000,
                node.epoch
            );
            let mut slot = 0;
            while slot < SLOTS {
                if self.owners[slot] != index || node.replica_of.is_some() {
                    slot += 1;
                    continue;
                }
                let first = slot;
                while slot < SLOTS && self.owners[slot] == index {
                    slot += 1;
                }
                line.push_str(&format!(" {first}-{}", slot - 1));
            }
            if let Some(m) = self.migration.filter(|m| m.from == index && self.stage != Stage::ImportingOnly) {
                line.push_str(&format!(" [{}->-{}]", m.slot, self.nodes[m.to].id));
            }
            if let Some(m) = self.migration.filter(|m| m.to == index && self.stage != Stage::TargetOwns) {
                line.push_str(&format!(" [{}-<-{}]", m.slot, self.nodes[m.from].id));
            }
            text.push_str(&line);
            text.push('\n');
        }
        text
    }

    /// The node a connection of the engine's goes to (None: not one the world knows).
    pub(crate) fn node_of(&self, conn: ConnId) -> Option<usize> {
        self.conns.get(&conn).map(|(node, _, _)| *node)
    }

    /// The node at `port`.
    fn node_at(&self, port: u16) -> Option<usize> {
        self.nodes.iter().position(|n| n.port == port)
    }

    /// Who holds `key` now: the slot's owner, or the migration's target once the key moved there.
    pub(crate) fn holder(&self, key: &[u8]) -> usize {
        let slot = usize::from(key_slot(key));
        match self.migration {
            Some(m) if usize::from(m.slot) == slot && self.nodes[m.to].keys.contains_key(key) => m.to,
            _ => self.owners[slot],
        }
    }

    /// The node `primary`'s config epoch goes above every other's, unless it already is the only highest (what
    /// `CLUSTER SETSLOT ... NODE` does on the node that imported a slot, and a promotion).
    pub(crate) fn bump_epoch(&mut self, primary: usize) {
        let max = self.nodes.iter().map(|n| n.epoch).max().unwrap_or(0);
        let unique = self.nodes.iter().filter(|n| n.epoch == max).count() == 1;
        if self.nodes[primary].epoch != max || !unique {
            self.nodes[primary].epoch = max + 1;
        }
    }

    /// Records a write of `key` (None: deleted) executed by `node` for `slot`; a node that neither owns the slot
    /// by the majority's map nor imports it after `ASKING` is a violation.
    fn log_write(&mut self, node: usize, slot: u16, asking: bool, key: &[u8], value: Option<Vec<u8>>) {
        let owner = self.owners[usize::from(slot)];
        let importing = self.migration.is_some_and(|m| m.slot == slot && m.to == node) && asking;
        if owner != node && !importing {
            self.violations.push(format!(
                "node {} wrote {:?} of slot {slot}, which the majority gives to node {}",
                self.nodes[node].port,
                String::from_utf8_lossy(key),
                self.nodes[owner].port
            ));
        }
        self.history.entry(key.to_vec()).or_default().push((self.executed, value));
    }

    /// `node` answers `args` on a connection that did (`asking`) or did not send `ASKING` just before.
    fn answer(&mut self, node: usize, args: &[Vec<u8>], asking: bool) -> Vec<u8> {
        let name = String::from_utf8_lossy(&args[0]).to_uppercase();
        *self.calls.entry((node, name.clone())).or_default() += 1;
        let redirect = |this: &ClusterWorld, kind: &str, slot: u16, to: usize| {
            format!("-{kind} {slot} 127.0.0.1:{}\r\n", this.nodes[to].port).into_bytes()
        };
        match name.as_str() {
            "PING" | "INFO" | "AUTH" | "RESET" => {
                let reply = self.nodes[node].probe.answer(args).expect("a probe command");
                return reply.to_vec();
            }
            "CLUSTER" => {
                let stale = self.nodes[node].minority.as_ref().or(self.nodes[node].lagging.as_ref());
                let state = if self.nodes[node].minority.is_some() { "fail" } else { "ok" };
                return match String::from_utf8_lossy(&args[1]).to_uppercase().as_str() {
                    "INFO" => bulk(format!("cluster_state:{state}\r\ncluster_enabled:1\r\n").as_bytes()),
                    "NODES" => bulk(stale.cloned().unwrap_or_else(|| self.nodes_text()).as_bytes()),
                    // A manual failover: the replica takes over at once here (Redis first has the primary stop
                    // its clients until the replica caught up, which loses nothing either).
                    "FAILOVER" => match self.nodes[node].replica_of {
                        Some(primary) => {
                            let replica = self.promote_replica_of(primary);
                            self.nodes[primary].replica_of = Some(replica);
                            b"+OK\r\n".to_vec()
                        }
                        None => b"-ERR You should send CLUSTER FAILOVER to a replica\r\n".to_vec(),
                    },
                    other => format!("-ERR unknown CLUSTER {other}\r\n").into_bytes(),
                };
            }
            "ASKING" => return b"+OK\r\n".to_vec(),
            // A subscription: one confirmation per channel (the count is not modelled).
            "SUBSCRIBE" | "PSUBSCRIBE" => {
                let kind = name.to_lowercase();
                let mut out = Vec::new();
                for (n, channel) in args[1..].iter().enumerate() {
                    out.extend(format!("*3\r\n${}\r\n{kind}\r\n", kind.len()).into_bytes());
                    out.extend(bulk(channel));
                    out.extend(format!(":{}\r\n", n + 1).into_bytes());
                }
                return out;
            }
            _ => {}
        }
        if self.nodes[node].minority.is_some() {
            return b"-CLUSTERDOWN The cluster is down\r\n".to_vec();
        }
        // Data commands: every key must be served here, in one slot.
        let step = if name == "MSET" || name == "MSETNX" { 2 } else { 1 };
        let keys: Vec<Vec<u8>> = args[1..].iter().step_by(step).cloned().collect();
        let key_count = match name.as_str() {
            "SET" | "GET" | "INCR" => 1,
            _ => keys.len(),
        };
        let keys = &keys[..key_count.min(keys.len())];
        let Some(first) = keys.first() else {
            return format!("-ERR wrong number of arguments for '{name}' command\r\n").into_bytes();
        };
        let slot = key_slot(first);
        if keys.iter().any(|k| key_slot(k) != slot) {
            return b"-CROSSSLOT Keys in request don't hash to the same slot\r\n".to_vec();
        }
        let owner = self.owners[usize::from(slot)];
        if self.nodes[node].replica_of.is_some() {
            return redirect(self, "MOVED", slot, owner);
        }
        // Where this node stands with the slot, in its own view (as Redis's `getNodeByQuery`).
        let migration = self.migration.filter(|m| m.slot == slot);
        let importing = migration.is_some_and(|m| m.to == node && self.stage != Stage::TargetOwns);
        let migrating = migration.filter(|m| m.from == node && self.stage != Stage::ImportingOnly);
        let serves = owner == node || migrating.is_some() || (importing && asking);
        if !serves {
            return redirect(self, "MOVED", slot, owner);
        }
        let mut distinct = keys.to_vec();
        distinct.sort();
        distinct.dedup();
        let missing = distinct.iter().filter(|k| !self.nodes[node].keys.contains_key(*k)).count();
        if let Some(m) = migrating.filter(|_| missing > 0) {
            if missing < distinct.len() {
                return b"-TRYAGAIN Multiple keys request during rehashing of slot\r\n".to_vec();
            }
            return redirect(self, "ASK", slot, m.to);
        }
        if importing && asking && owner != node && distinct.len() > 1 && missing > 0 {
            return b"-TRYAGAIN Multiple keys request during rehashing of slot\r\n".to_vec();
        }
        self.executed += 1;
        match name.as_str() {
            "GET" => self.nodes[node].keys.get(first).map_or(b"$-1\r\n".to_vec(), |v| bulk(v)),
            // Which keys are watched is not modelled: a watched transaction always runs.
            "WATCH" => b"+OK\r\n".to_vec(),
            "SET" => {
                self.nodes[node].keys.insert(args[1].clone(), args[2].clone());
                self.log_write(node, slot, asking, &args[1], Some(args[2].clone()));
                b"+OK\r\n".to_vec()
            }
            "INCR" => {
                let store = &mut self.nodes[node].keys;
                let value = store.get(&args[1]).and_then(|v| std::str::from_utf8(v).ok()?.parse::<i64>().ok());
                let next = value.unwrap_or(0) + 1;
                store.insert(args[1].clone(), next.to_string().into_bytes());
                self.log_write(node, slot, asking, &args[1], Some(next.to_string().into_bytes()));
                format!(":{next}\r\n").into_bytes()
            }
            "MGET" => {
                let mut out = format!("*{}\r\n", keys.len()).into_bytes();
                for key in keys {
                    out.extend(self.nodes[node].keys.get(key).map_or(b"$-1\r\n".to_vec(), |v| bulk(v)));
                }
                out
            }
            "MSET" => {
                for pair in args[1..].chunks(2) {
                    self.nodes[node].keys.insert(pair[0].clone(), pair[1].clone());
                    self.log_write(node, slot, asking, &pair[0], Some(pair[1].clone()));
                }
                b"+OK\r\n".to_vec()
            }
            "DEL" | "EXISTS" => {
                let count = keys.iter().filter(|k| self.nodes[node].keys.contains_key(*k)).count();
                if name == "DEL" {
                    for key in keys {
                        if self.nodes[node].keys.remove(key).is_some() {
                            self.log_write(node, slot, asking, key, None);
                        }
                    }
                }
                format!(":{count}\r\n").into_bytes()
            }
            other => format!("-ERR the modelled node does not know {other}\r\n").into_bytes(),
        }
    }

    /// Takes what the engine sent on `conn` (to `node`) and returns the replies to every whole request.
    fn receive(&mut self, conn: ConnId, node: usize, data: &[u8]) -> Vec<u8> {
        let entry = self.conns.entry(conn).or_insert((node, Vec::new(), false));
        entry.1.extend_from_slice(data);
        let mut replies = Vec::new();
        while let Some(entry) = self.conns.get_mut(&conn) {
            let Some((args, len)) = split_request(&entry.1) else { break };
            entry.1.drain(..len);
            let asking = std::mem::take(&mut entry.2);
            let is_asking = args[0].eq_ignore_ascii_case(b"ASKING");
            let reply = match &args[0].to_ascii_uppercase()[..] {
                b"SSUBSCRIBE" | b"SUNSUBSCRIBE" => {
                    *self.calls.entry((node, String::from_utf8_lossy(&args[0]).to_uppercase())).or_default() += 1;
                    self.shard_subscription(conn, node, &args)
                }
                b"MULTI" => {
                    self.multi.insert(conn, (Vec::new(), false));
                    b"+OK\r\n".to_vec()
                }
                b"EXEC" => match self.multi.remove(&conn) {
                    Some((_, true)) => b"-EXECABORT Transaction discarded because of previous errors.\r\n".to_vec(),
                    Some((replies, false)) => {
                        let mut out = format!("*{}\r\n", replies.len()).into_bytes();
                        replies.into_iter().for_each(|r| out.extend(r));
                        out
                    }
                    None => b"-ERR EXEC without MULTI\r\n".to_vec(),
                },
                _ if self.multi.contains_key(&conn) => {
                    let reply = self.answer(node, &args, asking);
                    let queue = self.multi.entry(conn).or_default();
                    if reply.starts_with(b"-") {
                        queue.1 = true;
                        reply
                    } else {
                        queue.0.push(reply);
                        b"+QUEUED\r\n".to_vec()
                    }
                }
                _ => self.answer(node, &args, asking),
            };
            if self.trace && !matches!(&args[0][..], b"PING" | b"INFO" | b"CLUSTER") {
                let words: Vec<String> = args.iter().map(|a| String::from_utf8_lossy(a).into_owned()).collect();
                eprintln!(
                    "  node {} {conn}{} {words:?} -> {:?}",
                    self.nodes[node].port,
                    if asking { " (asking)" } else { "" },
                    String::from_utf8_lossy(&reply)
                );
            }
            let bounced = [&b"-MOVED"[..], b"-ASK", b"-TRYAGAIN", b"-CLUSTERDOWN"].iter().any(|e| reply.starts_with(e));
            if bounced {
                match &args[0].to_ascii_uppercase()[..] {
                    b"SET" => self.bounced_writes.extend(args.get(2).cloned()),
                    b"MSET" => self.bounced_writes.extend(args.iter().skip(2).step_by(2).cloned()),
                    _ => {}
                }
            }
            replies.extend(reply);
            if is_asking {
                if let Some(entry) = self.conns.get_mut(&conn) {
                    entry.2 = true;
                }
            }
        }
        replies
    }

    /// Carries out `actions` against the cluster until the engine has nothing more to do: connects succeed to
    /// nodes that are up (and are refused by those that are down or refusing), and what is sent to a node is
    /// answered (at once, or after [`ClusterWorld::latency`] each way: see [`ClusterWorld::deliver_due`]).
    /// Returns what the engine sent to clients, and every other action it took that the world did not consume.
    pub(crate) fn run(&mut self, kit: &mut Driver, actions: Vec<Action>) -> Vec<Action> {
        let mut pending = actions;
        let mut out = Vec::new();
        let mut rounds = 0;
        while !pending.is_empty() {
            rounds += 1;
            assert!(rounds < 1000, "the engine and the world do not settle");
            let mut replies: Vec<(ConnId, Vec<u8>)> = Vec::new();
            for action in pending.drain(..) {
                match action {
                    Action::Connect { conn, address } => match self.node_at(address.port) {
                        Some(node) if self.nodes[node].up && !self.nodes[node].refusing => {
                            self.conns.insert(conn, (node, Vec::new(), false));
                            kit.connected(conn);
                        }
                        _ => kit.refused(conn),
                    },
                    Action::Send { conn, data } if self.conns.contains_key(&conn) => {
                        if self.latency > Duration::ZERO {
                            let at = kit.clock.now() + self.latency;
                            self.wire.push((at, conn, Packet::ToNode(data.to_vec())));
                            continue;
                        }
                        let node = self.conns[&conn].0;
                        let reply = self.receive(conn, node, &data);
                        if !reply.is_empty() {
                            replies.push((conn, reply));
                        }
                    }
                    Action::Close { conn } if self.conns.contains_key(&conn) => {
                        self.conns.remove(&conn);
                        self.wire.retain(|(_, c, _)| *c != conn);
                    }
                    other => out.push(other),
                }
            }
            for (conn, reply) in replies {
                kit.feed(conn, &reply);
            }
            pending = kit.drain();
        }
        out
    }

    /// Delivers the packets due by now: requests reach their node, which answers (the reply travels back), and
    /// replies reach the engine. Returns what the engine did with them that the world did not consume (as
    /// [`ClusterWorld::run`]).
    pub(crate) fn deliver_due(&mut self, kit: &mut Driver) -> Vec<Action> {
        let mut out = Vec::new();
        loop {
            let now = kit.clock.now();
            let Some(index) = self.wire.iter().position(|(at, _, _)| *at <= now) else { break };
            let (_, conn, packet) = self.wire.remove(index);
            let Some(&(node, _, _)) = self.conns.get(&conn) else { continue };
            match packet {
                Packet::ToNode(data) => {
                    let reply = self.receive(conn, node, &data);
                    if !reply.is_empty() {
                        self.wire.push((now + self.latency, conn, Packet::ToEngine(reply)));
                    }
                }
                Packet::ToEngine(data) => {
                    kit.feed(conn, &data);
                    let actions = kit.drain();
                    out.extend(self.run(kit, actions));
                }
            }
        }
        out
    }

    /// When the next packet arrives.
    pub(crate) fn next_arrival(&self) -> Option<Instant> {
        self.wire.iter().map(|(at, _, _)| *at).min()
    }

    /// Lets the engine probe, read the map and settle: `steps` rounds of `check_period`.
    pub(crate) fn settle(&mut self, kit: &mut Driver, steps: usize) -> Vec<Action> {
        let mut out = Vec::new();
        for _ in 0..steps {
            kit.advance(kit.config.check_period);
            let actions = kit.drain();
            out.extend(self.run(kit, actions));
            out.extend(self.deliver_due(kit));
        }
        out
    }

    /// `SSUBSCRIBE` or `SUNSUBSCRIBE` on `conn` to `node`, answered as Redis does: the channels must share a slot
    /// the node owns (or `MOVED`), one confirmation per channel with the connection's count.
    fn shard_subscription(&mut self, conn: ConnId, node: usize, args: &[Vec<u8>]) -> Vec<u8> {
        let subscribe = args[0].eq_ignore_ascii_case(b"SSUBSCRIBE");
        if let Some(first) = args.get(1) {
            let slot = key_slot(first);
            if args[1..].iter().any(|c| key_slot(c) != slot) {
                return b"-CROSSSLOT Keys in request don't hash to the same slot\r\n".to_vec();
            }
            let owner = self.owners[usize::from(slot)];
            if subscribe && owner != node {
                return format!("-MOVED {slot} 127.0.0.1:{}\r\n", self.nodes[owner].port).into_bytes();
            }
        }
        let kind = if subscribe { "ssubscribe" } else { "sunsubscribe" };
        let channels = self.shard_channels.entry(conn).or_default();
        let mut out = Vec::new();
        for channel in &args[1..] {
            if subscribe {
                channels.insert(channel.clone());
            } else {
                channels.remove(channel);
            }
            out.extend(format!("*3\r\n${}\r\n{kind}\r\n", kind.len()).into_bytes());
            out.extend(bulk(channel));
            out.extend(format!(":{}\r\n", channels.len()).into_bytes());
        }
        out
    }

    /// `SPUBLISH` of `payload` on `channel`, as its slot's owner would deliver it: an `smessage` on every
    /// connection to that node subscribed to it. Returns what the engine then did that the world did not consume.
    pub(crate) fn spublish(&mut self, kit: &mut Driver, channel: &[u8], payload: &[u8]) -> Vec<Action> {
        let owner = self.owners[usize::from(key_slot(channel))];
        let mut pushes = Vec::new();
        let mut message = b"*3\r\n$8\r\nsmessage\r\n".to_vec();
        message.extend(bulk(channel));
        message.extend(bulk(payload));
        for (conn, channels) in &self.shard_channels {
            if channels.contains(channel) && self.conns.get(conn).is_some_and(|(n, _, _)| *n == owner) {
                pushes.push((*conn, message.clone()));
            }
        }
        self.push_to_engine(kit, pushes)
    }

    /// Every node drops the shard channels of slots the majority gives to another node, with a `sunsubscribe` on
    /// each subscribed connection, as Redis does when it learns a slot left it. Returns what the engine then did
    /// that the world did not consume.
    pub(crate) fn drop_unowned_shard_channels(&mut self, kit: &mut Driver) -> Vec<Action> {
        let mut pushes = Vec::new();
        for (conn, channels) in &mut self.shard_channels {
            let Some(node) = self.conns.get(conn).map(|(n, _, _)| *n) else { continue };
            let dropped: Vec<Vec<u8>> =
                channels.iter().filter(|c| self.owners[usize::from(key_slot(c))] != node).cloned().collect();
            for channel in dropped {
                channels.remove(&channel);
                pushes.push((*conn, sunsubscribe_push(&channel, channels.len())));
            }
        }
        self.push_to_engine(kit, pushes)
    }

    /// Sends pushes of the nodes to the engine: behind the replies already on their way on the same connection
    /// (after [`ClusterWorld::latency`]), or at once. Returns what the engine did that the world did not consume.
    fn push_to_engine(&mut self, kit: &mut Driver, pushes: Vec<(ConnId, Vec<u8>)>) -> Vec<Action> {
        if pushes.is_empty() {
            return Vec::new();
        }
        if self.latency > Duration::ZERO {
            let at = kit.clock.now() + self.latency;
            self.wire.extend(pushes.into_iter().map(|(conn, data)| (at, conn, Packet::ToEngine(data))));
            return Vec::new();
        }
        for (conn, data) in pushes {
            kit.feed(conn, &data);
        }
        let actions = kit.drain();
        self.run(kit, actions)
    }

    /// Moves `slot` to the primary `to` (its keys too), as a finished reshard leaves it; the old owner drops
    /// the slot's shard channels with a `sunsubscribe` on each subscribed connection, as Redis does.
    pub(crate) fn move_slot(&mut self, kit: &mut Driver, slot: u16, to: usize) -> Vec<Action> {
        let from = std::mem::replace(&mut self.owners[usize::from(slot)], to);
        self.bump_epoch(to);
        let moving: Vec<Vec<u8>> = self.nodes[from].keys.keys().filter(|k| key_slot(k) == slot).cloned().collect();
        for key in moving {
            if let Some(value) = self.nodes[from].keys.remove(&key) {
                self.nodes[to].keys.insert(key, value);
            }
        }
        self.drop_unowned_shard_channels(kit)
    }

    /// Stops `node`'s process: its connections break (what travels on them is lost), new ones are refused.
    pub(crate) fn crash(&mut self, kit: &mut Driver, node: usize) -> Vec<Action> {
        self.nodes[node].up = false;
        let broken: Vec<ConnId> = self.conns.iter().filter(|(_, (n, _, _))| *n == node).map(|(c, _)| *c).collect();
        for &conn in &broken {
            self.conns.remove(&conn);
            self.wire.retain(|(_, c, _)| *c != conn);
            kit.closed(conn);
        }
        let actions = kit.drain();
        self.run(kit, actions)
    }

    /// The replica of `primary` takes over its slots and keys with an epoch above every other, as the majority
    /// decides once `primary` is flagged failed. `primary` stays listed as a failed primary without slots until
    /// it rejoins. Returns the replica.
    pub(crate) fn promote_replica_of(&mut self, primary: usize) -> usize {
        let replica = self.nodes.iter().position(|n| n.replica_of == Some(primary)).expect("a replica");
        self.nodes[replica].replica_of = None;
        self.bump_epoch(replica);
        self.nodes[replica].keys = std::mem::take(&mut self.nodes[primary].keys);
        for owner in self.owners.iter_mut().filter(|o| **o == primary) {
            *owner = replica;
        }
        replica
    }

    /// Promotes the replica of the primary `node`, which goes down: the replica takes over its slots and keys
    /// with an epoch above every other.
    pub(crate) fn fail_over(&mut self, kit: &mut Driver, node: usize) -> usize {
        self.nodes[node].flagged = true;
        let replica = self.promote_replica_of(node);
        self.nodes[node].replica_of = Some(replica);
        self.crash(kit, node);
        replica
    }

    /// Moves up to `count` keys of the migrating slot from its source to its target (`MIGRATE`, one at a time);
    /// returns how many keys of the slot the source still has.
    pub(crate) fn migrate_keys(&mut self, count: usize) -> usize {
        let Some(m) = self.migration else { return 0 };
        let keys: Vec<Vec<u8>> =
            self.nodes[m.from].keys.keys().filter(|k| key_slot(k) == m.slot).take(count).cloned().collect();
        for key in keys {
            if let Some(value) = self.nodes[m.from].keys.remove(&key) {
                self.nodes[m.to].keys.insert(key, value);
            }
        }
        self.nodes[m.from].keys.keys().filter(|k| key_slot(k) == m.slot).count()
    }
}

/// The arguments of the whole multibulk request at the start of `buf`, and its length.
fn split_request(buf: &[u8]) -> Option<(Vec<Vec<u8>>, usize)> {
    let line_end = |at: usize| buf.get(at..)?.windows(2).position(|w| w == b"\r\n").map(|p| at + p);
    let end = line_end(0)?;
    let count: usize = std::str::from_utf8(&buf[1..end]).ok()?.parse().ok()?;
    let mut at = end + 2;
    let mut args = Vec::with_capacity(count);
    for _ in 0..count {
        let end = line_end(at)?;
        let len: usize = std::str::from_utf8(&buf[at + 1..end]).ok()?.parse().ok()?;
        let start = end + 2;
        args.push(buf.get(start..start + len)?.to_vec());
        at = start + len + 2;
        if buf.len() < at {
            return None;
        }
    }
    Some((args, at))
}

/// A node's `sunsubscribe` of `channel`, with `left` shard channels left on the connection.
fn sunsubscribe_push(channel: &[u8], left: usize) -> Vec<u8> {
    let mut push = b"*3\r\n$12\r\nsunsubscribe\r\n".to_vec();
    push.extend(bulk(channel));
    push.extend(format!(":{left}\r\n").into_bytes());
    push
}

/// The bytes sent to `client` in `actions`, joined.
pub(crate) fn to_client(actions: &[Action], client: ConnId) -> Bytes {
    let mut out = BytesMut::new();
    for action in actions {
        if let Action::Send { conn, data } = action {
            if *conn == client {
                out.extend_from_slice(data);
            }
        }
    }
    out.freeze()
}
