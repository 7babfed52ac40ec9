//! The simulated network and the servers' side of it: connections, one-way delays, a server's backlog while it
//! is slow or hung, resets, and a server executing what arrives (with `MULTI`/`EXEC` kept per connection, and
//! every `SCAN` of a client's iteration recorded for the `SCAN` invariants).

use super::super::model::Health;
use super::super::model::SimRole;
use super::super::scenario::{stale_master_allowance, LATENCY_MS};
use super::{Key, Sim};
use crate::address::ServerAddress;
use crate::resp::{Limits, Request};
use crate::testkit::stream::RequestStream;
use bytes::{Bytes, BytesMut};
use std::collections::BTreeSet;

/// The client whose keys a `SCAN ... MATCH c<client>:*` iterates, if `request` is one.
fn scan_client(request: &Request) -> Option<usize> {
    let at = request.args().position(|arg| arg.eq_ignore_ascii_case(b"MATCH"))?;
    let pattern = std::str::from_utf8(request.arg(at + 1)?).ok()?;
    pattern.strip_prefix('c')?.strip_suffix(":*")?.parse().ok()
}

pub(super) enum Delivery {
    Connected,
    Refused,
    ConnectFailed,
    Closed,
    Data(Bytes),
}

pub(super) enum Net {
    Connect {
        key: Key,
    },
    ToServer {
        key: Key,
        data: Bytes,
    },
    /// A server works through its backlog.
    Drain {
        server: usize,
    },
    /// A worker engine takes the topology its decider published.
    Publish {
        worker: usize,
        topology: Box<crate::Topology>,
    },
    /// The decider hears the epoch every worker has confirmed.
    Confirm {
        epoch: u64,
    },
    ToEngine {
        key: Key,
        what: Delivery,
    },
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum ServerSide {
    Pending,
    Alive,
    Dead,
}

/// A `MULTI` a connection has open on its server.
#[derive(Default)]
pub(super) struct Transaction {
    queued: Vec<Request>,
    /// A command was refused while queuing: `EXEC` fails.
    refused: bool,
}

/// One `SCAN` a server executed for a client's iteration, on a connection the engine had open.
pub(super) struct ScanExec {
    /// The server process: (server, incarnation).
    pub(super) process: (usize, u32),
    /// The cursor it was given.
    pub(super) cursor: u64,
    /// The client's keys the server held then.
    pub(super) held: BTreeSet<Bytes>,
}

pub(super) struct NetConn {
    pub(super) server: usize,
    /// The address the engine connected to (the server's own or its alias).
    pub(super) address: ServerAddress,
    pub(super) side: ServerSide,
    pub(super) engine_open: bool,
    /// What the engine wrote, as the invariants read it.
    pub(super) tap: RequestStream,
    /// What the server has received, as it splits it.
    pub(super) received: RequestStream,
    /// The `MULTI` open on it, if any.
    pub(super) transaction: Option<Transaction>,
}

impl NetConn {
    /// A connection an engine is opening to `server` at `address`.
    pub(super) fn new(server: usize, address: ServerAddress) -> NetConn {
        NetConn {
            server,
            address,
            transaction: None,
            side: ServerSide::Pending,
            engine_open: true,
            tap: RequestStream::new(Limits::default()),
            received: RequestStream::new(Limits::default()),
        }
    }
}

impl Sim<'_> {
    /// Processes, in arrival order, what server `s` has had long enough (unless it is hung or crashed).
    pub(super) fn drain_backlog(&mut self, s: usize) -> Result<(), String> {
        while self.cluster.servers[s].health == Health::Up {
            match self.backlog[s].front() {
                Some(&(ready, _, _)) if ready <= self.clock.ms() => {
                    let (_, key, data) = self.backlog[s].pop_front().expect("front exists");
                    if self.conns.get(&key).is_some_and(|c| c.side == ServerSide::Alive) {
                        self.process(key, data)?;
                    }
                }
                _ => break,
            }
        }
        Ok(())
    }

    /// Resets every live connection that `matches(engine, server)`; the engines hear of it one latency later.
    pub(super) fn kill_conns(&mut self, matches: impl Fn(usize, usize) -> bool) {
        let mut closed = Vec::new();
        for (key, conn) in self.conns.iter_mut() {
            if matches(key.0, conn.server) && conn.side != ServerSide::Dead {
                conn.side = ServerSide::Dead;
                if conn.engine_open {
                    closed.push(*key);
                }
            }
        }
        for key in closed {
            self.schedule(self.clock.ms() + LATENCY_MS, Net::ToEngine { key, what: Delivery::Closed });
        }
    }

    // ------------------------------------------------------------------ network

    pub(super) fn deliver(&mut self, net: Net) -> Result<(), String> {
        match net {
            Net::Publish { worker, topology } => self.publish_to(worker, &topology)?,
            Net::Confirm { epoch } => self.confirm_to_decider(epoch)?,
            Net::Connect { key } => {
                let Some(conn) = self.conns.get_mut(&key) else { return Ok(()) };
                let server = conn.server;
                let refused = self.cluster.servers[server].health == Health::Crashed;
                let cut_off = self.partitions.contains(&(key.0, server));
                conn.side = if refused || cut_off { ServerSide::Dead } else { ServerSide::Alive };
                let what = match (refused, cut_off) {
                    (_, true) => Delivery::ConnectFailed,
                    (true, false) => Delivery::Refused,
                    (false, false) => Delivery::Connected,
                };
                self.schedule(self.clock.ms() + LATENCY_MS, Net::ToEngine { key, what });
            }
            Net::ToServer { key, data } => {
                let Some(conn) = self.conns.get(&key) else { return Ok(()) };
                if conn.side != ServerSide::Alive {
                    return Ok(());
                }
                let s = conn.server;
                let server = &self.cluster.servers[s];
                if server.health == Health::Up && server.slow_ms == 0 && self.backlog[s].is_empty() {
                    self.process(key, data)?;
                } else {
                    let last = self.backlog[s].back().map_or(0, |&(ready, _, _)| ready);
                    let ready = (self.clock.ms() + server.slow_ms).max(last);
                    self.backlog[s].push_back((ready, key, data));
                    self.schedule(ready, Net::Drain { server: s });
                }
            }
            Net::Drain { server } => self.drain_backlog(server)?,
            Net::ToEngine { key, what } => {
                let Some(conn) = self.conns.get_mut(&key) else { return Ok(()) };
                if !conn.engine_open {
                    return Ok(());
                }
                conn.engine_open = matches!(what, Delivery::Connected | Delivery::Data(_));
                let server = conn.server;
                let (e, id) = key;
                match what {
                    Delivery::Connected => self.driver(e).connected(id),
                    Delivery::Refused => self.driver(e).refused(id),
                    Delivery::ConnectFailed => self.driver(e).connect_failed(id, "host unreachable"),
                    Delivery::Closed => self.driver(e).closed(id),
                    Delivery::Data(data) => {
                        // Clients send only SET and GET: a PONG or an INFO text is a probe's answer.
                        let finder = |needle: &[u8]| memchr::memmem::find(&data, needle).is_some();
                        if finder(b"+PONG\r\n") || finder(b"role:") {
                            self.last_probe_answer.insert((e, server), self.clock.ms());
                        }
                        self.driver(e).feed(id, &data);
                    }
                }
                self.drain(key.0)?;
            }
        }
        Ok(())
    }

    /// A server executes what arrived on a connection and writes the replies back.
    pub(super) fn process(&mut self, key: Key, data: Bytes) -> Result<(), String> {
        let Some(conn) = self.conns.get_mut(&key) else { return Ok(()) };
        let s = conn.server;
        conn.received.push(&data);
        let mut requests = Vec::new();
        loop {
            match conn.received.next_request() {
                Ok(Some(request)) => requests.push(request),
                Ok(None) => break,
                Err(error) => return Err(format!("engine {} sent server {s} a malformed request: {error}", key.0)),
            }
        }
        let mut out = BytesMut::new();
        for request in requests {
            if request.is_empty() {
                continue;
            }
            let reply = self.execute_on(key, s, &request)?;
            out.extend_from_slice(&reply);
        }
        if !out.is_empty() {
            self.schedule(self.clock.ms() + LATENCY_MS, Net::ToEngine { key, what: Delivery::Data(out.freeze()) });
        }
        Ok(())
    }

    /// Server `s` executes one request that arrived on connection `key`, as Redis does: `MULTI` queues what follows
    /// until `EXEC` (a write refused while queuing on a replica fails the `EXEC`), `RESET` ends a `MULTI`.
    fn execute_on(&mut self, key: Key, s: usize, request: &Request) -> Result<Bytes, String> {
        let name = request.arg(0).unwrap_or_default().to_ascii_uppercase();
        let loading = !self.cluster.servers[s].serving(self.clock.ms());
        let conn = self.conns.get_mut(&key).expect("a connection that delivers requests exists");
        let reply = match (name.as_slice(), conn.transaction.as_mut()) {
            (b"MULTI", Some(_)) => Bytes::from_static(b"-ERR MULTI calls can not be nested\r\n"),
            (b"MULTI", None) if loading => Bytes::from_static(b"-LOADING Redis is loading the dataset in memory\r\n"),
            (b"MULTI", None) => {
                conn.transaction = Some(Transaction::default());
                Bytes::from_static(b"+OK\r\n")
            }
            (b"EXEC", None) => Bytes::from_static(b"-ERR EXEC without MULTI\r\n"),
            (b"DISCARD", None) => Bytes::from_static(b"-ERR DISCARD without MULTI\r\n"),
            (b"DISCARD", Some(_)) => {
                conn.transaction = None;
                Bytes::from_static(b"+OK\r\n")
            }
            (b"EXEC", Some(_)) => {
                let transaction = conn.transaction.take().expect("matched Some");
                let replica = self.cluster.servers[s].role != SimRole::Master;
                let writes =
                    transaction.queued.iter().any(|r| r.arg(0).is_some_and(|n| n.eq_ignore_ascii_case(b"SET")));
                if transaction.refused {
                    Bytes::from_static(b"-EXECABORT Transaction discarded because of previous errors.\r\n")
                } else if replica && writes {
                    Bytes::from_static(
                        b"-ERR Transaction contains write commands but instance is now a read-only replica. EXEC \
                          aborted.\r\n",
                    )
                } else {
                    let mut out = BytesMut::from(format!("*{}\r\n", transaction.queued.len()).as_bytes());
                    for queued in &transaction.queued {
                        out.extend_from_slice(&self.execute_one(key, s, queued)?);
                    }
                    out.freeze()
                }
            }
            (b"RESET", _) => {
                conn.transaction = None;
                self.execute_one(key, s, request)?
            }
            (_, Some(transaction)) => {
                let write = name == b"SET";
                if loading {
                    transaction.refused = true;
                    Bytes::from_static(b"-LOADING Redis is loading the dataset in memory\r\n")
                } else if write && self.cluster.servers[s].role != SimRole::Master {
                    transaction.refused = true;
                    Bytes::from_static(b"-READONLY You can't write against a read only replica.\r\n")
                } else {
                    transaction.queued.push(request.clone());
                    Bytes::from_static(b"+QUEUED\r\n")
                }
            }
            (b"SCAN", None) => return self.execute_scan(key, s, request),
            (_, None) => self.execute_one(key, s, request)?,
        };
        Ok(reply)
    }

    /// Server `s` executes a `SCAN`; one of a client's iteration (`MATCH c<client>:*`) is checked and recorded:
    /// a cursor other than 0 must reach the server process that returned it (anywhere else it skips keys).
    fn execute_scan(&mut self, key: Key, s: usize, request: &Request) -> Result<Bytes, String> {
        let reply = self.execute_one(key, s, request)?;
        let Some(client) = scan_client(request) else { return Ok(reply) };
        let Some(cursor) = std::str::from_utf8(request.arg(1).unwrap_or_default()).ok().and_then(|c| c.parse().ok())
        else {
            return Ok(reply);
        };
        let process = (s, self.cluster.servers[s].incarnation);
        let exempt = self.clients.get(client).and_then(|c| c.scan.as_ref()).is_none_or(|scan| scan.exempt);
        let issuer = self.scan_issued[client].get(&cursor).copied();
        match issuer {
            Some(issuer) if cursor != 0 && !exempt && issuer != process => {
                let what = format!(
                    "engine {} continued client {client}'s SCAN cursor {cursor} of server {} (incarnation {}) on server \
                     {s} (incarnation {})",
                    key.0, issuer.0, issuer.1, process.1
                );
                if issuer.0 != s {
                    return Err(format!("{what}: keys are skipped"));
                }
                // A known engine bug (see `Outcome::scans_continued_after_restart`): counted, and the iteration
                // is no longer checked.
                self.outcome.scans_continued_after_restart += 1;
                self.note(format!("{what}, which restarted since (known engine bug)"));
                if let Some(scan) = self.clients[client].scan.as_mut() {
                    scan.exempt = true;
                }
            }
            _ => {}
        }
        let open = self.conns.get(&key).is_some_and(|c| c.engine_open);
        if !open || !reply.starts_with(b"*2\r\n") {
            return Ok(reply);
        }
        let asked = self.clients[client].scan.as_ref().map(|scan| scan.cursor);
        if cursor == 0 && asked.is_some_and(|asked| asked != 0) {
            self.outcome.scan_restarts += 1;
            self.note(format!("server {s} restarts client {client}'s SCAN (it asked for {})", asked.unwrap_or(0)));
        }
        if let Some(next) = super::clients::parse_scan_reply(&reply).map(|(cursor, _)| cursor).filter(|&c| c != 0) {
            self.scan_issued[client].insert(next, process);
        }
        let prefix = format!("c{client}:");
        let held = self.cluster.keys_with_prefix(s, prefix.as_bytes());
        self.scan_traces[client].push(ScanExec { process, cursor, held });
        Ok(reply)
    }

    /// Server `s` executes one request outside a transaction, with the harness's bookkeeping of its effect.
    fn execute_one(&mut self, key: Key, s: usize, request: &Request) -> Result<Bytes, String> {
        let (reply, effect) = self.cluster.execute(s, self.clock.ms(), request);
        if effect.duplicate_write {
            return Err(format!(
                "server {s} executed a SET for key {:?} a second time (a write was retried)",
                String::from_utf8_lossy(request.arg(1).unwrap_or_default())
            ));
        }
        if let Some(id) = effect.wrote {
            self.write_executed(s, id);
            let open = self.conns.get(&key).is_some_and(|c| c.engine_open);
            self.workers.check_write(key.0, s, open)?;
        }
        if effect.promoted {
            self.outcome.promotions += 1;
            self.note(format!("server {s} promoted (offset {})", self.cluster.servers[s].offset()));
            self.check_switchover_promotion(s)?;
            self.promoted(s);
        }
        if effect.demoted || effect.promoted {
            self.cluster.holders_dirty = true;
        }
        if effect.demoted {
            self.note(format!("server {s} demoted: {:?}", self.cluster.servers[s].role));
        }
        Ok(reply)
    }

    pub(super) fn send_to_server(&mut self, key: Key, data: Bytes) -> Result<(), String> {
        let Some(conn) = self.conns.get_mut(&key) else {
            return Err(format!("engine {} sends on {}, which it never opened", key.0, key.1));
        };
        if !conn.engine_open {
            return Err(format!("engine {} sends on {}, which is closed", key.0, key.1));
        }
        if self.removed.contains(&(key.0, conn.address.clone())) {
            return Err(format!("engine {} sends on {} to {}, which it removed", key.0, key.1, conn.address));
        }
        let s = conn.server;
        conn.tap.push(&data);
        let mut writes = 0;
        while let Ok(Some(request)) = conn.tap.next_request() {
            if request.arg(0).is_some_and(|name| name.eq_ignore_ascii_case(b"SET")) {
                writes += 1;
            }
        }
        if writes > 0 {
            let server = &self.cluster.servers[s];
            if server.role != SimRole::Master {
                let demoted_for = server.demoted_at_ms.map(|at| self.clock.ms() - at);
                let allowed =
                    self.engines.len() > 1 && demoted_for.is_some_and(|d| d <= stale_master_allowance(self.max_slow));
                if !allowed {
                    return Err(format!(
                        "engine {} routed a SET to server {s}, which is {:?} (demoted {demoted_for:?} ms ago)",
                        key.0, server.role
                    ));
                }
            }
        }
        self.schedule(self.clock.ms() + LATENCY_MS, Net::ToServer { key, data });
        Ok(())
    }
}
