//! The simulated network and the servers' side of it: connections, one-way delays, a server's backlog while it
//! is slow or hung, resets, and a server executing what arrives.

use super::super::model::Health;
use super::super::model::SimRole;
use super::super::scenario::{stale_master_allowance, LATENCY_MS};
use super::{Key, Sim};
use crate::resp::Limits;
use crate::testkit::stream::RequestStream;
use bytes::{Bytes, BytesMut};

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

pub(super) struct NetConn {
    pub(super) server: usize,
    pub(super) side: ServerSide,
    pub(super) engine_open: bool,
    /// What the engine wrote, as the invariants read it.
    pub(super) tap: RequestStream,
    /// What the server has received, as it splits it.
    pub(super) received: RequestStream,
}

impl NetConn {
    /// A connection an engine is opening to `server`.
    pub(super) fn new(server: usize) -> NetConn {
        NetConn {
            server,
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
            let (reply, effect) = self.cluster.execute(s, self.clock.ms(), &request);
            out.extend_from_slice(&reply);
            if effect.duplicate_write {
                return Err(format!(
                    "server {s} executed a SET for key {:?} a second time (a write was retried)",
                    String::from_utf8_lossy(request.arg(1).unwrap_or_default())
                ));
            }
            if let Some(id) = effect.wrote {
                self.write_executed(s, id);
            }
            if effect.promoted {
                self.outcome.promotions += 1;
                self.note(format!("server {s} promoted (offset {})", self.cluster.servers[s].offset()));
                self.promoted(s);
            }
            if effect.demoted || effect.promoted {
                self.cluster.holders_dirty = true;
            }
            if effect.demoted {
                self.note(format!("server {s} demoted: {:?}", self.cluster.servers[s].role));
            }
        }
        if !out.is_empty() {
            self.schedule(self.clock.ms() + LATENCY_MS, Net::ToEngine { key, what: Delivery::Data(out.freeze()) });
        }
        Ok(())
    }

    pub(super) fn send_to_server(&mut self, key: Key, data: Bytes) -> Result<(), String> {
        let Some(conn) = self.conns.get_mut(&key) else {
            return Err(format!("engine {} sends on {}, which it never opened", key.0, key.1));
        };
        if !conn.engine_open {
            return Err(format!("engine {} sends on {}, which is closed", key.0, key.1));
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
