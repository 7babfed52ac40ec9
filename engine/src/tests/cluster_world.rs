//! A modelled Redis Cluster for the cluster-mode tests: nodes that own slots and keep keys, answer `PING`, `INFO`,
//! `CLUSTER INFO` and `CLUSTER NODES`, redirect with `MOVED` and `ASK` as Redis does, migrate slots key by key,
//! and fail over by promoting a replica with a new config epoch. One engine in cluster mode is driven against it
//! on the test kit's fake clock, every connection with its own parser and `ASKING` state.

use crate::slot::{key_slot, SLOTS};
use crate::testkit::{Driver, FakeServer};
use crate::{Action, Config, ConnId};
use bytes::{Bytes, BytesMut};
use std::collections::{BTreeMap, HashMap};

/// One node: its id, whether it is up, and (as a primary) its keys.
pub(crate) struct Node {
    pub(crate) port: u16,
    pub(crate) id: String,
    /// The primary it replicates (None: it is a primary).
    pub(crate) replica_of: Option<usize>,
    pub(crate) epoch: u64,
    pub(crate) up: bool,
    /// Keys it holds (a primary's; a replica's copy is not modelled: a promotion takes over the primary's keys).
    pub(crate) keys: HashMap<Vec<u8>, Vec<u8>>,
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

/// The cluster.
pub(crate) struct ClusterWorld {
    pub(crate) nodes: Vec<Node>,
    /// The owning node of every slot, as the majority knows it.
    pub(crate) owners: Vec<usize>,
    pub(crate) migration: Option<Migration>,
    /// Per connection: what arrived and is not a whole request yet, and whether `ASKING` came before.
    conns: HashMap<ConnId, (usize, Vec<u8>, bool)>,
    /// What each node's command counts reached, by upper-case command name.
    pub(crate) calls: BTreeMap<(usize, String), u64>,
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
                keys: HashMap::new(),
                probe: FakeServer::master(port),
            });
        }
        let owners = (0..SLOTS).map(|slot| slot * primaries / SLOTS).collect();
        ClusterWorld { nodes, owners, migration: None, conns: HashMap::new(), calls: BTreeMap::new() }
    }

    /// The configuration of a proxy in front of it, seeded with node 0.
    pub(crate) fn config(extra: &str) -> Config {
        let json = format!(r#"{{"cluster": {{"seeds": [{{"host": "127.0.0.1", "port": {BASE_PORT}}}]}}{extra}}}"#);
        Config::from_json(&json).expect("a valid cluster configuration")
    }

    /// The `CLUSTER NODES` text the majority would give.
    fn nodes_text(&self) -> String {
        let mut text = String::new();
        for (index, node) in self.nodes.iter().enumerate() {
            let role = match node.replica_of {
                None => "master -".to_string(),
                Some(primary) => format!("slave {}", self.nodes[primary].id),
            };
            let fail = if node.up { "" } else { ",fail" };
            let (role_flag, rest) = role.split_once(' ').expect("two words");
            let mut line = format!(
                "{} 127.0.0.1:{}@{} {role_flag}{fail} {rest} 0 0 {} connected",
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
            text.push_str(&line);
            text.push('\n');
        }
        text
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
                return match String::from_utf8_lossy(&args[1]).to_uppercase().as_str() {
                    "INFO" => bulk(b"cluster_state:ok\r\ncluster_enabled:1\r\n"),
                    "NODES" => bulk(self.nodes_text().as_bytes()),
                    other => format!("-ERR unknown CLUSTER {other}\r\n").into_bytes(),
                };
            }
            "ASKING" => return b"+OK\r\n".to_vec(),
            _ => {}
        }
        // Data commands: every key must be served here, in one slot.
        let (step, keys_from) = match name.as_str() {
            "MSET" | "MSETNX" => (2, 1),
            _ => (1, 1),
        };
        let keys: Vec<&Vec<u8>> = args[keys_from..].iter().step_by(step).collect();
        let key_count = match name.as_str() {
            "SET" | "GET" | "INCR" => 1,
            _ => keys.len(),
        };
        let keys = &keys[..key_count.min(keys.len())];
        let slot = key_slot(keys[0]);
        if keys.iter().any(|k| key_slot(k) != slot) {
            return b"-CROSSSLOT Keys in request don't hash to the same slot\r\n".to_vec();
        }
        let owner = self.owners[usize::from(slot)];
        let migrating = self.migration.filter(|m| m.slot == slot);
        let here = match migrating {
            Some(m) if node == m.to && asking => true,
            Some(m) if node == m.from => {
                let moved: Vec<bool> = keys.iter().map(|k| !self.nodes[node].keys.contains_key(*k)).collect();
                let existing_elsewhere = keys.iter().any(|k| self.nodes[m.to].keys.contains_key(*k));
                if existing_elsewhere && moved.iter().all(|m| *m) {
                    return redirect(self, "ASK", slot, m.to);
                }
                if existing_elsewhere {
                    return b"-TRYAGAIN Multiple keys request during rehashing of slot\r\n".to_vec();
                }
                true
            }
            _ => owner == node,
        };
        if !here || self.nodes[node].replica_of.is_some() {
            return redirect(self, "MOVED", slot, owner);
        }
        let store = &mut self.nodes[node].keys;
        match name.as_str() {
            "GET" => store.get(keys[0]).map_or(b"$-1\r\n".to_vec(), |v| bulk(v)),
            "SET" => {
                store.insert(args[1].clone(), args[2].clone());
                b"+OK\r\n".to_vec()
            }
            "INCR" => {
                let value = store.get(&args[1]).and_then(|v| std::str::from_utf8(v).ok()?.parse::<i64>().ok());
                let next = value.unwrap_or(0) + 1;
                store.insert(args[1].clone(), next.to_string().into_bytes());
                format!(":{next}\r\n").into_bytes()
            }
            "MGET" => {
                let mut out = format!("*{}\r\n", keys.len()).into_bytes();
                for key in keys {
                    out.extend(store.get(*key).map_or(b"$-1\r\n".to_vec(), |v| bulk(v)));
                }
                out
            }
            "MSET" => {
                for pair in args[1..].chunks(2) {
                    store.insert(pair[0].clone(), pair[1].clone());
                }
                b"+OK\r\n".to_vec()
            }
            "DEL" | "EXISTS" => {
                let count = keys.iter().filter(|k| store.contains_key(**k)).count();
                if name == "DEL" {
                    for key in keys {
                        store.remove(*key);
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
            replies.extend(self.answer(node, &args, asking));
            if is_asking {
                if let Some(entry) = self.conns.get_mut(&conn) {
                    entry.2 = true;
                }
            }
        }
        replies
    }

    /// Carries out `actions` against the cluster until the engine has nothing more to do: connects succeed to
    /// nodes that are up (and are refused by those that are down), and what is sent to a node is answered.
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
                        Some(node) if self.nodes[node].up => {
                            self.conns.insert(conn, (node, Vec::new(), false));
                            kit.connected(conn);
                        }
                        _ => kit.refused(conn),
                    },
                    Action::Send { conn, data } if self.conns.contains_key(&conn) => {
                        let node = self.conns[&conn].0;
                        let reply = self.receive(conn, node, &data);
                        if !reply.is_empty() {
                            replies.push((conn, reply));
                        }
                    }
                    Action::Close { conn } if self.conns.contains_key(&conn) => {
                        self.conns.remove(&conn);
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

    /// Lets the engine probe, read the map and settle: `steps` rounds of `check_period`.
    pub(crate) fn settle(&mut self, kit: &mut Driver, steps: usize) -> Vec<Action> {
        let mut out = Vec::new();
        for _ in 0..steps {
            kit.advance(kit.config.check_period);
            let actions = kit.drain();
            out.extend(self.run(kit, actions));
        }
        out
    }

    /// Promotes the replica of the primary `node`, which goes down: the replica takes over its slots and keys
    /// with an epoch above every other.
    pub(crate) fn fail_over(&mut self, kit: &mut Driver, node: usize) -> usize {
        let replica = self.nodes.iter().position(|n| n.replica_of == Some(node)).expect("a replica");
        let epoch = self.nodes.iter().map(|n| n.epoch).max().unwrap_or(0) + 1;
        self.nodes[node].up = false;
        self.nodes[replica].replica_of = None;
        self.nodes[replica].epoch = epoch;
        self.nodes[replica].keys = std::mem::take(&mut self.nodes[node].keys);
        self.nodes[node].replica_of = Some(replica);
        for owner in self.owners.iter_mut().filter(|o| **o == node) {
            *owner = replica;
        }
        // Connections to the dead node break.
        let broken: Vec<ConnId> = self.conns.iter().filter(|(_, (n, _, _))| *n == node).map(|(c, _)| *c).collect();
        for conn in broken {
            self.conns.remove(&conn);
            kit.closed(conn);
        }
        let actions = kit.drain();
        self.run(kit, actions);
        replica
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
