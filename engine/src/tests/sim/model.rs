//! A model of a small group of Redis servers: health, roles, replication links and offsets, run ids, priorities,
//! and a key-value store, answering the commands the engine sends exactly as Redis 7 does.
//!
//! A server's dataset is its replication log: a list of write ids (each id is one `SET` executed once, somewhere).
//! Its replication offset is the log's length. A replica whose log is a prefix of its master's copies the missing
//! tail (a partial resync); otherwise it does a full sync and takes the master's log whole, dropping writes its
//! master never had, as Redis does. Because write ids are unique and logs only grow by appending new ids or by
//! copying another log's prefix, write `w` is held by a server exactly when `log[position(w)] == w`.
//!
//! Each server listens on `127.0.0.1:port` and is reachable under an alias, `localhost:port`: to the engine another
//! address, so a reload can re-address a server (remove one address, add the other) without changing the process.
//!
//! `SCAN` walks the keys in an order of the server process's own (a hash of the key seeded by the server and its
//! incarnation, as Redis seeds its dictionaries at start): the cursor is the position after the last key examined.
//! So an iteration returns every key present throughout it, even while keys are added or dropped, and a cursor
//! continued on another server, or on the same one after a restart, skips keys, as with Redis.
//!
//! Restarts: a crashed server comes back as a master (a Redis without `replicaof` in its config file) with its
//! dataset as of the crash (persistence on, e.g. AOF with `appendfsync always`), its offset as of the crash, and a
//! new run id; it may spend a while loading (`loading:1`, `-LOADING` to most commands).

use crate::address::ServerAddress;
use crate::resp::{bulk_reply, Request};
use crate::testkit::{port_of, ConnectedReplica, Info, ReplicaLink};

use bytes::Bytes;
use std::collections::BTreeSet;

/// Whether a server process runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Health {
    /// Running and answering.
    Up,
    /// Killed: connections are closed, connects are refused.
    Crashed,
    /// Stopped (SIGSTOP): the kernel accepts connections and buffers requests, nothing is answered until resumed.
    Hung,
}

/// A server's replication role in the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SimRole {
    /// `role:master`
    Master,
    /// `role:slave` of server `master` (None: an address outside the modelled group, never reachable).
    Replica {
        /// Index of its master.
        master: Option<usize>,
    },
}

/// One executed `SET`.
#[derive(Clone, Debug)]
pub(crate) struct Write {
    /// The key.
    pub(crate) key: Bytes,
    /// The value.
    pub(crate) value: Bytes,
    /// Where it sits in every log that holds it.
    pub(crate) position: usize,
    /// The server that executed it.
    pub(crate) server: usize,
    /// When it was executed (simulated ms).
    pub(crate) at_ms: u64,
}

/// One modelled Redis server.
#[derive(Clone, Debug)]
pub(crate) struct SimServer {
    /// Where it listens.
    pub(crate) address: ServerAddress,
    /// Another address of the same process (`localhost` for `127.0.0.1`).
    pub(crate) alias: ServerAddress,
    /// Whether it runs.
    pub(crate) health: Health,
    /// Extra delay before it processes what arrives (a busy server), in ms.
    pub(crate) slow_ms: u64,
    /// Master or replica.
    pub(crate) role: SimRole,
    /// Whether its link to its master is up (replicas).
    pub(crate) link_up: bool,
    /// When its link went down (None: never connected since it was last pointed somewhere).
    pub(crate) link_down_since_ms: Option<u64>,
    /// When it last heard from its master.
    pub(crate) last_io_ms: u64,
    /// Its dataset and replication stream: write ids in order; the offset is the length.
    pub(crate) log: Vec<u64>,
    /// Its run id (40 hex digits), new at every restart.
    pub(crate) run_id: String,
    /// `master_replid`: the history it serves, or follows once synced; new at a restart and at a promotion.
    pub(crate) replid: String,
    /// `master_replid2`: the history it continued when it was last promoted.
    pub(crate) replid2: Option<String>,
    /// Promotions so far, to make each new history id unique.
    pub(crate) promotions: u32,
    /// `replica-priority`.
    pub(crate) priority: i64,
    /// Loading its dataset until then (after a restart).
    pub(crate) loading_until_ms: u64,
    /// Incremented at every restart; connections belong to one incarnation.
    pub(crate) incarnation: u32,
    /// When it last stopped being a master by `REPLICAOF host port`.
    pub(crate) demoted_at_ms: Option<u64>,
}

impl SimServer {
    /// Whether it answers now (up and not loading).
    pub(crate) fn serving(&self, now_ms: u64) -> bool {
        self.health == Health::Up && now_ms >= self.loading_until_ms
    }

    /// Its replication offset.
    pub(crate) fn offset(&self) -> i64 {
        self.log.len() as i64
    }

    /// Whether it holds `write`.
    pub(crate) fn holds(&self, write: &Write, id: u64) -> bool {
        self.log.get(write.position) == Some(&id)
    }
}

/// What executing one command changed, for the harness's bookkeeping.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Effect {
    /// A `SET` created this write.
    pub(crate) wrote: Option<u64>,
    /// A `SET` for a key that had already been written: the same request ran twice.
    pub(crate) duplicate_write: bool,
    /// `REPLICAOF NO ONE` turned a replica into a master.
    pub(crate) promoted: bool,
    /// `REPLICAOF host port` turned a master into a replica.
    pub(crate) demoted: bool,
}

/// The modelled servers and every write ever executed.
#[derive(Clone, Debug)]
pub(crate) struct Cluster {
    /// The servers, in configuration order.
    pub(crate) servers: Vec<SimServer>,
    /// Every executed write, by id.
    pub(crate) writes: Vec<Write>,
    /// Set when datasets or availability changed in a way that may have removed a write's last available copy.
    pub(crate) holders_dirty: bool,
}

fn run_id(server: usize, incarnation: u32) -> String {
    // splitmix64, twice, for 40 deterministic hex digits.
    let mut state = (server as u64) << 32 | u64::from(incarnation);
    let mut next = || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let text = format!("{:016x}{:016x}{:016x}", next(), next(), next());
    text[..40].to_string()
}

/// The seed of a server process's `SCAN` order: new at every restart.
fn scan_seed(server: usize, incarnation: u32) -> u64 {
    (server as u64) << 32 | u64::from(incarnation)
}

/// Where `key` sits in the `SCAN` order of the process with `seed`: FNV-1a, then mixed; 1..=2^62, so that the
/// cursor after it is never 0 and never overflows.
fn scan_position(seed: u64, key: &[u8]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for &byte in key {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash = (hash ^ (hash >> 31)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    (hash ^ (hash >> 29)) % (1 << 62) + 1
}

fn simple(text: &'static [u8]) -> Bytes {
    Bytes::from_static(text)
}

const LOADING: &[u8] = b"-LOADING Redis is loading the dataset in memory\r\n";

impl Cluster {
    /// `count` servers on 127.0.0.1:7000.., all up; `master_of[i] == i` makes server `i` a master, any other
    /// index makes it a replica of that server (link up at the first replication tick); `priorities` per server;
    /// then `spares` more, each a fresh and empty master of nothing.
    pub(crate) fn new(master_of: &[usize], priorities: &[i64], spares: usize) -> Cluster {
        let count = master_of.len();
        let servers = master_of
            .iter()
            .copied()
            .chain(count..count + spares)
            .enumerate()
            .map(|(index, of)| SimServer {
                address: ServerAddress { host: "127.0.0.1".into(), port: port_of(index) },
                alias: ServerAddress { host: "localhost".into(), port: port_of(index) },
                health: Health::Up,
                slow_ms: 0,
                role: if of == index { SimRole::Master } else { SimRole::Replica { master: Some(of) } },
                link_up: false,
                link_down_since_ms: None,
                last_io_ms: 0,
                log: Vec::new(),
                run_id: run_id(index, 0),
                replid: run_id(index, 0),
                replid2: None,
                promotions: 0,
                priority: priorities.get(index).copied().unwrap_or(100),
                loading_until_ms: 0,
                incarnation: 0,
                demoted_at_ms: None,
            })
            .collect();
        Cluster { servers, writes: Vec::new(), holders_dirty: false }
    }

    /// The server listening on `address` (its own or its alias), if any.
    pub(crate) fn server_at(&self, address: &ServerAddress) -> Option<usize> {
        self.servers.iter().position(|s| s.address == *address || s.alias == *address)
    }

    /// The keys server `index` holds now that start with `prefix`.
    pub(crate) fn keys_with_prefix(&self, index: usize, prefix: &[u8]) -> BTreeSet<Bytes> {
        let server = &self.servers[index];
        server.log.iter().map(|&id| &self.writes[id as usize].key).filter(|k| k.starts_with(prefix)).cloned().collect()
    }

    /// Kills server `index` (the harness closes its connections).
    pub(crate) fn crash(&mut self, index: usize) {
        self.servers[index].health = Health::Crashed;
        self.holders_dirty = true;
    }

    /// Starts a crashed server again: a master with its data as of the crash, a new run id, loading for a while.
    pub(crate) fn restart(&mut self, index: usize, now_ms: u64, load_ms: u64) {
        let server = &mut self.servers[index];
        server.health = Health::Up;
        server.incarnation += 1;
        server.run_id = run_id(index, server.incarnation);
        server.replid = server.run_id.clone();
        server.replid2 = None;
        server.role = SimRole::Master;
        server.link_up = false;
        server.link_down_since_ms = None;
        server.loading_until_ms = now_ms + load_ms;
        self.holders_dirty = true;
    }

    /// Executes one request on server `index` at `now_ms` and returns the reply Redis would send.
    pub(crate) fn execute(&mut self, index: usize, now_ms: u64, request: &Request) -> (Bytes, Effect) {
        let mut effect = Effect::default();
        let name = request.arg(0).unwrap_or_default().to_ascii_uppercase();
        let loading = now_ms < self.servers[index].loading_until_ms;
        let reply = match name.as_slice() {
            b"INFO" => self.info(index, now_ms).reply(),
            b"RESET" => simple(b"+RESET\r\n"),
            _ if loading => simple(LOADING),
            b"PING" => simple(b"+PONG\r\n"),
            b"ECHO" => match request.arg(1) {
                Some(message) if request.arg_count() == 2 => bulk_reply(message),
                _ => simple(b"-ERR wrong number of arguments for 'echo' command\r\n"),
            },
            b"SCAN" => self.scan(index, request),
            b"REPLICAOF" | b"SLAVEOF" => self.replicaof(index, now_ms, request, &mut effect),
            b"SET" => match (request.arg(1), request.arg(2)) {
                (Some(key), Some(value)) if request.arg_count() == 3 => {
                    if self.servers[index].role != SimRole::Master {
                        simple(b"-READONLY You can't write against a read only replica.\r\n")
                    } else {
                        let key = Bytes::copy_from_slice(key);
                        effect.duplicate_write = self.writes.iter().any(|w| w.key == key);
                        let id = self.writes.len() as u64;
                        let server = &mut self.servers[index];
                        self.writes.push(Write {
                            key,
                            value: Bytes::copy_from_slice(value),
                            position: server.log.len(),
                            server: index,
                            at_ms: now_ms,
                        });
                        server.log.push(id);
                        effect.wrote = Some(id);
                        simple(b"+OK\r\n")
                    }
                }
                _ => simple(b"-ERR syntax error\r\n"),
            },
            b"GET" => match request.arg(1) {
                Some(key) if request.arg_count() == 2 => {
                    let found = self.servers[index]
                        .log
                        .iter()
                        .rev()
                        .map(|&id| &self.writes[id as usize])
                        .find(|w| w.key == key);
                    match found {
                        Some(write) => bulk_reply(&write.value),
                        None => simple(b"$-1\r\n"),
                    }
                }
                _ => simple(b"-ERR wrong number of arguments for 'get' command\r\n"),
            },
            _ => {
                let shown = String::from_utf8_lossy(request.arg(0).unwrap_or_default()).into_owned();
                Bytes::from(format!("-ERR unknown command '{shown}', with args beginning with: \r\n"))
            }
        };
        (reply, effect)
    }

    /// `SCAN cursor [MATCH prefix*] [COUNT n]`: examines the next `n` keys (10 by default) in this process's
    /// order from `cursor`, returns those that match, and the cursor after the last one examined (0: the end).
    fn scan(&self, index: usize, request: &Request) -> Bytes {
        let number = |arg: Option<&[u8]>| std::str::from_utf8(arg?).ok()?.parse::<u64>().ok();
        let Some(cursor) = number(request.arg(1)) else { return simple(b"-ERR invalid cursor\r\n") };
        let (mut prefix, mut count, mut at) = (&b""[..], 10usize, 2);
        while at < request.arg_count() {
            let option = request.arg(at).unwrap_or_default().to_ascii_uppercase();
            match (option.as_slice(), request.arg(at + 1)) {
                (b"MATCH", Some(pattern))
                    if pattern.ends_with(b"*") && !pattern[..pattern.len() - 1].contains(&b'*') =>
                {
                    prefix = &pattern[..pattern.len() - 1];
                }
                (b"COUNT", Some(n)) => match number(Some(n)) {
                    Some(n) if n > 0 => count = n as usize,
                    _ => return simple(b"-ERR value is out of range, must be positive\r\n"),
                },
                _ => return simple(b"-ERR syntax error\r\n"),
            }
            at += 2;
        }
        let server = &self.servers[index];
        let seed = scan_seed(index, server.incarnation);
        let mut keys: Vec<(u64, &Bytes)> = server
            .log
            .iter()
            .map(|&id| &self.writes[id as usize].key)
            .map(|key| (scan_position(seed, key), key))
            .filter(|(position, _)| *position >= cursor)
            .collect();
        keys.sort_unstable();
        let examined = &keys[..count.min(keys.len())];
        let next = if examined.len() == keys.len() { 0 } else { examined.last().map_or(0, |(p, _)| p + 1) };
        let matched: Vec<&Bytes> = examined.iter().map(|(_, k)| *k).filter(|k| k.starts_with(prefix)).collect();
        let next = next.to_string();
        let mut reply = format!("*2\r\n${}\r\n{next}\r\n*{}\r\n", next.len(), matched.len()).into_bytes();
        for key in matched {
            reply.extend_from_slice(&bulk_reply(key));
        }
        Bytes::from(reply)
    }

    fn replicaof(&mut self, index: usize, now_ms: u64, request: &Request, effect: &mut Effect) -> Bytes {
        let (Some(host), Some(port), 3) = (request.arg(1), request.arg(2), request.arg_count()) else {
            return simple(b"-ERR wrong number of arguments for 'replicaof' command\r\n");
        };
        if host.eq_ignore_ascii_case(b"no") && port.eq_ignore_ascii_case(b"one") {
            let server = &mut self.servers[index];
            if server.role != SimRole::Master {
                server.role = SimRole::Master;
                server.link_up = false;
                server.link_down_since_ms = None;
                // As Redis does: a new history, continuing the one it followed.
                server.promotions += 1;
                server.replid2 = Some(std::mem::replace(
                    &mut server.replid,
                    format!("{}-{}", &server.run_id[..30], server.promotions),
                ));
                effect.promoted = true;
            }
            return simple(b"+OK\r\n");
        }
        let host = String::from_utf8_lossy(host).into_owned();
        let Some(port) = std::str::from_utf8(port).ok().and_then(|p| p.parse::<u16>().ok()) else {
            return simple(b"-ERR Invalid master port\r\n");
        };
        let master = self.servers.iter().position(|s| s.address.is_named(&host, port));
        let server = &mut self.servers[index];
        if server.role == (SimRole::Replica { master }) {
            return simple(b"+OK Already connected to specified master\r\n");
        }
        if server.role == SimRole::Master {
            server.demoted_at_ms = Some(now_ms);
            effect.demoted = true;
        }
        server.role = SimRole::Replica { master };
        server.link_up = false;
        server.link_down_since_ms = None;
        simple(b"+OK\r\n")
    }

    /// One replication round at `now_ms`: every running replica whose master runs catches up with it (partial
    /// resync when its log is a prefix of the master's, full sync otherwise). A crashed master takes the link down
    /// at once; a hung one leaves it up but sends nothing (Redis notices only after `repl-timeout`, 60 s).
    pub(crate) fn replicate(&mut self, now_ms: u64) {
        for index in 0..self.servers.len() {
            let replica = &self.servers[index];
            if !replica.serving(now_ms) {
                continue;
            }
            let SimRole::Replica { master } = replica.role else { continue };
            let source = master.filter(|&m| m != index).map(|m| &self.servers[m]);
            let reachable = source.map(|s| (s.health, s.serving(now_ms)));
            match reachable {
                Some((Health::Hung, _)) => {}
                Some((_, true)) => {
                    let source = source.expect("reachable");
                    let (master_log, history) = (&source.log, source.replid.clone());
                    let log = &self.servers[index].log;
                    let prefix = log.len() <= master_log.len()
                        && log.last().is_none_or(|&last| master_log[log.len() - 1] == last);
                    let new_log = if prefix {
                        let mut grown = log.clone();
                        grown.extend_from_slice(&master_log[log.len()..]);
                        grown
                    } else {
                        self.holders_dirty = true;
                        master_log.clone()
                    };
                    let replica = &mut self.servers[index];
                    replica.log = new_log;
                    replica.replid = history;
                    replica.replid2 = None;
                    replica.link_up = true;
                    replica.link_down_since_ms = None;
                    replica.last_io_ms = now_ms;
                }
                _ => {
                    let replica = &mut self.servers[index];
                    if replica.link_up {
                        replica.link_up = false;
                        replica.link_down_since_ms = Some(now_ms);
                    }
                }
            }
        }
    }

    /// What server `index` reports in `INFO` at `now_ms`, laid out by the test kit as Redis 7 does.
    pub(crate) fn info(&self, index: usize, now_ms: u64) -> Info {
        let server = &self.servers[index];
        let secs = |since: u64| (now_ms.saturating_sub(since) / 1000) as i64;
        let replica_of = match server.role {
            SimRole::Master => None,
            SimRole::Replica { master } => {
                let (master_host, master_port) = match master {
                    Some(m) => (self.servers[m].address.host.clone(), self.servers[m].address.port),
                    None => ("10.255.255.1".to_string(), 6379),
                };
                Some(ReplicaLink {
                    master_host,
                    master_port,
                    link_up: server.link_up,
                    last_io_secs: if server.link_up { secs(server.last_io_ms) } else { -1 },
                    link_down_since_secs: server.link_down_since_ms.map_or(-1, secs),
                    priority: server.priority,
                })
            }
        };
        let replicas = self
            .servers
            .iter()
            .filter(|other| {
                other.role == (SimRole::Replica { master: Some(index) })
                    && other.link_up
                    && other.health != Health::Crashed
            })
            .map(|other| ConnectedReplica { address: other.address.clone(), offset: other.offset() })
            .collect();
        Info {
            run_id: server.run_id.clone(),
            replid: Some(server.replid.clone()),
            replid2: server.replid2.clone(),
            port: server.address.port,
            loading: now_ms < server.loading_until_ms,
            offset: server.offset(),
            replica_of,
            replicas,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::{ReplicationInfo, Role};

    fn request(args: &[&str]) -> Request {
        Request::from_args(args)
    }

    #[test]
    fn info_parses_as_the_engine_expects() {
        let mut cluster = Cluster::new(&[0, 0, 1], &[100, 50, 100], 0);
        cluster.execute(0, 0, &request(&["SET", "k", "v"]));
        cluster.replicate(10);
        let master = ReplicationInfo::parse(cluster.info(0, 10).text().as_bytes());
        assert_eq!(master.role, Some(Role::Master));
        assert_eq!(master.repl_offset, 1);
        assert_eq!(master.connected_replicas, 1);
        assert_eq!(master.run_id.as_deref(), Some(cluster.servers[0].run_id.as_str()));
        let replica = ReplicationInfo::parse(cluster.info(1, 10).text().as_bytes());
        assert_eq!(replica.role, Some(Role::Replica));
        assert_eq!(replica.master, Some(("127.0.0.1".to_string(), 7000)));
        assert!(replica.link_up);
        assert_eq!(replica.priority, 50);
        assert_eq!(replica.repl_offset, 1);
        cluster.crash(0);
        cluster.replicate(2010);
        let replica = ReplicationInfo::parse(cluster.info(1, 5010).text().as_bytes());
        assert!(!replica.link_up);
        assert_eq!(replica.link_down_since_secs, Some(3));
    }

    #[test]
    fn replicas_refuse_writes_and_full_sync_drops_unreplicated_writes() {
        let mut cluster = Cluster::new(&[0, 0], &[100, 100], 0);
        let (reply, _) = cluster.execute(1, 0, &request(&["SET", "a", "1"]));
        assert!(reply.starts_with(b"-READONLY"));
        cluster.execute(0, 0, &request(&["SET", "a", "1"]));
        cluster.replicate(1);
        cluster.execute(0, 2, &request(&["SET", "b", "2"]));
        cluster.crash(0);
        let (_, effect) = cluster.execute(1, 3, &request(&["REPLICAOF", "NO", "ONE"]));
        assert!(effect.promoted);
        cluster.execute(1, 4, &request(&["SET", "c", "3"]));
        cluster.restart(0, 5, 0);
        assert_eq!(cluster.servers[0].role, SimRole::Master);
        let (_, effect) = cluster.execute(0, 6, &request(&["REPLICAOF", "127.0.0.1", "7001"]));
        assert!(effect.demoted);
        cluster.replicate(7);
        let (reply, _) = cluster.execute(0, 8, &request(&["GET", "b"]));
        assert_eq!(&reply[..], b"$-1\r\n");
        let (reply, _) = cluster.execute(0, 8, &request(&["GET", "c"]));
        assert_eq!(&reply[..], b"$1\r\n3\r\n");
    }

    /// Runs `SCAN cursor MATCH k* COUNT 3` on `server`; the next cursor and the keys.
    fn scan(cluster: &mut Cluster, server: usize, cursor: u64) -> (u64, Vec<String>) {
        let (reply, _) =
            cluster.execute(server, 0, &request(&["SCAN", &cursor.to_string(), "MATCH", "k*", "COUNT", "3"]));
        let text = String::from_utf8(reply.to_vec()).unwrap();
        let lines: Vec<&str> = text.split("\r\n").collect();
        let next = lines[2].parse().unwrap();
        let keys = lines[4..].iter().skip(1).step_by(2).map(|s| s.to_string()).collect();
        (next, keys)
    }

    #[test]
    fn scan_returns_every_key_present_throughout_and_a_foreign_cursor_skips() {
        let mut cluster = Cluster::new(&[0, 0], &[100, 100], 0);
        for n in 0..20 {
            cluster.execute(0, 0, &request(&["SET", &format!("k{n}"), "v"]));
        }
        cluster.execute(0, 0, &request(&["SET", "other", "v"]));
        cluster.replicate(1);
        let (mut cursor, mut seen, mut calls) = (0, BTreeSet::new(), 0);
        loop {
            let (next, keys) = scan(&mut cluster, 0, cursor);
            seen.extend(keys);
            // Keys written meanwhile may or may not be returned; none of the others may be missed.
            cluster.execute(0, 0, &request(&["SET", &format!("k-new{calls}"), "v"]));
            calls += 1;
            if next == 0 {
                break;
            }
            cursor = next;
        }
        assert!(calls >= 7, "COUNT 3 over 21 keys takes 7 calls or more");
        assert!((0..20).all(|n| seen.contains(&format!("k{n}"))), "{seen:?}");
        assert!(!seen.contains("other"), "MATCH filters");
        // Four calls into server 0's order, continued on server 1 (another order): some keys are never returned.
        let (mut cursor, mut returned) = (0, BTreeSet::new());
        for _ in 0..4 {
            let (next, keys) = scan(&mut cluster, 0, cursor);
            returned.extend(keys);
            cursor = next;
        }
        while cursor != 0 {
            let (next, keys) = scan(&mut cluster, 1, cursor);
            returned.extend(keys);
            cursor = next;
        }
        let skipped = (0..20).filter(|n| !returned.contains(&format!("k{n}"))).count();
        assert!(skipped > 0, "a cursor continued on another server skips keys");
    }
}
