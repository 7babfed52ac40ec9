//! Backend connections: shared pipelined ones per server, private ones (RESET before reuse, then AUTH again if the
//! server has credentials), probe connections, the FIFO that matches each connection's replies to their requests,
//! and what is left when one is lost.
//!
//! The monitor and the sentinels keep no connection ids: they name the connections they use by [`Line`] and
//! record [`Order`]s, which the engine hands to [`Pool::execute`].

use crate::address::ServerAddress;
use crate::conn::{ConnId, ConnTable, Lane};
use crate::contract::{Action, Outbox};
use crate::resp::{Limits, ProtocolError, ReplyScanner};
use crate::server_id::{ServerId, ServerTable};
use crate::status::BackendCounts;
use bytes::{Bytes, BytesMut};
use smallvec::SmallVec;
use std::collections::VecDeque;
use std::time::Instant;

/// Released private connections kept per server for reuse; more are closed (reconnecting is cheap, sockets are not).
const MAX_IDLE_PRIVATE: usize = 16;

/// What a backend connection is used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// Shared and pipelined: many clients' stateless requests; `slot` is its place in the server's pool (the
    /// first `pool_size` + `large_pool_size` slots speak RESP2, as many more RESP3).
    Shared { slot: usize },
    /// Private to one client while its session carries state; `owner` None while being cleaned or idle.
    Private { owner: Option<ConnId> },
    /// The monitor's probe connection (PING, INFO, REPLICAOF).
    Probe,
    /// The monitor's liveness check: a fresh connection that only has to be accepted, then is closed.
    Knock,
    /// One request of `owner` that must reach a busy server at once (`SCRIPT KILL`): its own connection, closed
    /// after the reply.
    OutOfBand { owner: ConnId },
    /// A connection to sentinel `index` (Sentinel mode): its queries, or (`subscriber`) its event channels.
    Sentinel { index: usize, subscriber: bool },
}

/// A probe request awaiting its reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Probe {
    Ping,
    Info,
    ReplicaOf,
    /// `SCRIPT KILL` or `FUNCTION KILL` to a server that stayed busy for `busy_down_after`.
    Kill,
    /// `CONFIG SET masterauth` before a `REPLICAOF` (the master has credentials).
    MasterAuth,
    /// `INFO replication` for the replication offset only (for `WAIT` and read fences), sent at that instant with
    /// that serial.
    Offset {
        sent_at: Instant,
        serial: u64,
    },
}

impl Probe {
    /// The command it sent, for the log of the probes whose reply is only logged.
    pub(crate) fn command(self) -> &'static str {
        match self {
            Probe::Ping => "PING",
            Probe::Info | Probe::Offset { .. } => "INFO",
            Probe::ReplicaOf => "REPLICAOF",
            // FUNCTION KILL is logged under this name too.
            Probe::Kill => "SCRIPT KILL",
            Probe::MasterAuth => "CONFIG SET masterauth",
        }
    }
}

/// A question asked of a sentinel, awaiting its reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SentinelQuery {
    /// `AUTH` on connecting.
    Auth,
    /// `SENTINEL get-master-addr-by-name <name>`.
    MasterAddr,
    /// `SENTINEL replicas <name>`.
    Replicas,
    /// `HELLO 3` (with the credentials) on the subscription connection.
    Subscribe,
}

impl SentinelQuery {
    /// Whether it is one of a round's questions, whose reply is the sentinel's answer (not a connection's set-up).
    pub(crate) fn is_round_question(self) -> bool {
        matches!(self, SentinelQuery::MasterAddr | SentinelQuery::Replicas)
    }
}

/// Who gets the next reply on a backend connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Waiter {
    /// Reply slot `seq` of client `conn` (a stale id finds no client and the reply is dropped), `sent` then (for
    /// the latency histogram).
    Client { conn: ConnId, seq: u64, sent: Instant },
    /// The `RESET` that cleans a released private connection.
    Reset,
    /// A request the proxy sent for itself whose reply nobody reads (the `DISCARD` of an aborted transaction).
    Ignore,
    /// A probe.
    Probe(Probe),
    /// The `AUTH` every connection to a server with credentials starts with (and a cleaned private one repeats
    /// after its `RESET`, which logs it out).
    Auth,
    /// A question to a sentinel.
    Sentinel(SentinelQuery),
    /// A client's request in a cluster, kept under `ticket` (see [`crate::routed`]) until answered, `sent` then.
    Routed { ticket: u32, sent: Instant },
    /// A request queued inside the transaction of `ticket` (`+QUEUED`, or the redirection it met).
    Queued { ticket: u32 },
    /// A question about the cluster's slot map.
    ClusterMap(MapQuery),
    /// The `CLUSTER FAILOVER` of a planned switchover in cluster mode.
    ClusterFailover,
}

/// The questions that read a cluster's slot map, sent together on a node's probe connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MapQuery {
    /// `CLUSTER INFO`: whether the node sees a working cluster.
    Info,
    /// `CLUSTER NODES`: the nodes, their slots and epochs.
    Nodes,
}

/// A connection the monitor or the sentinels use, named by what it is for: the pool keeps its id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Line {
    /// The probe connection of a server ([`Purpose::Probe`]).
    Probe(ServerId),
    /// The knock under way on a server ([`Purpose::Knock`]).
    Knock(ServerId),
    /// A connection to sentinel `index` ([`Purpose::Sentinel`]).
    Sentinel { index: usize, subscriber: bool },
}

/// What the monitor or the sentinels ask of the pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Order {
    /// Open the line's connection; one it has already is closed first (a line has one connection at most).
    Open(Line),
    /// Send `data` on the line's connection, one request per waiter; nothing when it has none.
    Send { line: Line, waiters: SmallVec<[Waiter; 2]>, data: Bytes },
    /// Close the line's connection, if it has one.
    Close(Line),
}

/// Orders recorded by one machine, in the order given, until the pool carries them out.
#[derive(Debug, Default)]
pub(crate) struct Orders(Vec<Order>);

impl Orders {
    /// Records that `line`'s connection is to be opened (see [`Order::Open`]).
    pub(crate) fn open(&mut self, line: Line) {
        self.0.push(Order::Open(line));
    }

    /// Records that `data` is to be sent on `line`'s connection, one request per waiter.
    pub(crate) fn send(&mut self, line: Line, waiters: &[Waiter], data: Bytes) {
        self.0.push(Order::Send { line, waiters: SmallVec::from_slice(waiters), data });
    }

    /// Records that `line`'s connection is to be closed.
    pub(crate) fn close(&mut self, line: Line) {
        self.0.push(Order::Close(line));
    }

    /// Whether no order awaits the pool.
    #[cfg(any(test, feature = "testkit"))]
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The orders recorded so far, in order, taken out.
    pub(crate) fn take(&mut self) -> std::vec::Drain<'_, Order> {
        self.0.drain(..)
    }
}

/// One connection to a server, or to a sentinel (no server of ours: `server` is None).
struct Backend {
    server: Option<ServerId>,
    purpose: Purpose,
    /// Whether the runtime reported it connected.
    connected: bool,
    scanner: ReplyScanner,
    /// Replies expected, in order.
    waiters: VecDeque<Waiter>,
    /// Whatever arrives is handed on as it is, unscanned (a replication stream, see [`Pool::set_raw`]).
    raw: bool,
}

impl Backend {
    /// The line it is, if it is one.
    fn line(&self) -> Option<Line> {
        match (self.purpose, self.server) {
            (Purpose::Probe, Some(server)) => Some(Line::Probe(server)),
            (Purpose::Knock, Some(server)) => Some(Line::Knock(server)),
            (Purpose::Sentinel { index, subscriber }, _) => Some(Line::Sentinel { index, subscriber }),
            _ => None,
        }
    }
}

/// A backend connection that is gone, with what was waiting on it.
pub(crate) struct LostBackend {
    /// None for a sentinel connection.
    pub(crate) server: Option<ServerId>,
    pub(crate) purpose: Purpose,
    /// Whether it had been connected (a request on it may have run).
    pub(crate) connected: bool,
    pub(crate) waiters: VecDeque<Waiter>,
}

/// The connections the engine keeps to one server (the probe connection is the monitor's).
struct ServerConns {
    address: ServerAddress,
    /// The shared RESP2 slots, then as many RESP3 ones.
    shared: Vec<Option<ConnId>>,
    idle_private: Vec<ConnId>,
    /// The `AUTH` request each new connection starts with (`server_auth`), if any.
    auth: Option<Bytes>,
}

/// A server's [`Line::Probe`] and [`Line::Knock`]: kept apart from [`ServerConns`], whose size the request path's
/// lookups depend on (`bench/instructions.sh`).
#[derive(Clone, Copy, Debug, Default)]
struct ServerLines {
    probe: Option<ConnId>,
    knock: Option<ConnId>,
}

/// One sentinel's address and its lines ([`Line::Sentinel`]).
struct SentinelConns {
    address: ServerAddress,
    command: Option<ConnId>,
    subscriber: Option<ConnId>,
}

/// Every backend connection, by server.
pub(crate) struct Pool {
    conns: ConnTable<Backend>,
    servers: ServerTable<ServerConns>,
    lines: ServerTable<ServerLines>,
    /// Sentinel mode: the sentinels, by their index in the configuration.
    sentinels: Vec<SentinelConns>,
    limits: Limits,
    /// Shared slots per server and protocol: `pool_size` + `large_pool_size`.
    slots_per_protocol: usize,
    /// Cluster mode with reads to replicas: every connection that carries clients' requests starts with
    /// `READONLY`, without which a replica redirects every read to its primary.
    readonly: bool,
}

impl Pool {
    /// A pool with `slots_per_protocol` shared slots per protocol (RESP2 and RESP3) for each server added.
    pub(crate) fn new(slots_per_protocol: usize, limits: Limits) -> Pool {
        let servers = ServerTable::default();
        let lines = ServerTable::default();
        let conns = ConnTable::new(Lane::Backend);
        Pool { conns, servers, lines, sentinels: Vec::new(), limits, slots_per_protocol, readonly: false }
    }

    /// Whether new connections that carry clients' requests start with `READONLY` (cluster mode with reads to
    /// replicas); connections open already keep what they were.
    pub(crate) fn set_readonly(&mut self, readonly: bool) {
        self.readonly = readonly;
    }

    /// Opens a connection to `server`, logged in first if the server has credentials (a knock sends nothing); the
    /// runtime reports the outcome.
    /// None when `server` is gone.
    pub(crate) fn open(&mut self, server: ServerId, purpose: Purpose, out: &mut Outbox) -> Option<ConnId> {
        let address = self.servers.get(server)?.address.clone();
        Some(self.open_to(Some(server), address, purpose, out))
    }

    /// Carries out `orders` in the order they were given.
    pub(crate) fn execute(&mut self, orders: &mut Orders, out: &mut Outbox) {
        for order in orders.take() {
            match order {
                Order::Open(line) => self.open_line(line, out),
                Order::Send { line, waiters, data } => {
                    if let Some(conn) = self.line(line) {
                        self.send(conn, &waiters, data, out);
                    }
                }
                Order::Close(line) => {
                    if let Some(conn) = self.line(line) {
                        self.close(conn, out);
                    }
                }
            }
        }
    }

    /// The connection `line` has now, if any.
    fn line(&mut self, line: Line) -> Option<ConnId> {
        *self.line_slot(line)?
    }

    /// Where the connection of `line` is kept (None when its server or sentinel is unknown).
    fn line_slot(&mut self, line: Line) -> Option<&mut Option<ConnId>> {
        match line {
            Line::Probe(server) => Some(&mut self.lines.get_mut(server)?.probe),
            Line::Knock(server) => Some(&mut self.lines.get_mut(server)?.knock),
            Line::Sentinel { index, subscriber } => {
                let sentinel = self.sentinels.get_mut(index)?;
                Some(if subscriber { &mut sentinel.subscriber } else { &mut sentinel.command })
            }
        }
    }

    /// Opens `line`'s connection, closing the one it had.
    fn open_line(&mut self, line: Line, out: &mut Outbox) {
        if let Some(old) = self.line(line) {
            self.close(old, out);
        }
        let conn = match line {
            Line::Probe(server) => self.open(server, Purpose::Probe, out),
            Line::Knock(server) => self.open(server, Purpose::Knock, out),
            Line::Sentinel { index, subscriber } => {
                let Some(address) = self.sentinels.get(index).map(|s| s.address.clone()) else { return };
                Some(self.open_to(None, address, Purpose::Sentinel { index, subscriber }, out))
            }
        };
        if let Some(slot) = self.line_slot(line) {
            *slot = conn;
        }
    }

    /// The server `conn` knocks on, if it is a knock.
    pub(crate) fn knock_of(&self, conn: ConnId) -> Option<ServerId> {
        match self.conns.get(conn)?.line()? {
            Line::Knock(server) => Some(server),
            _ => None,
        }
    }

    /// The sentinel `conn` goes to, by its index in the configuration, if it is a sentinel's.
    pub(crate) fn sentinel_of(&self, conn: ConnId) -> Option<usize> {
        match self.conns.get(conn)?.line()? {
            Line::Sentinel { index, .. } => Some(index),
            _ => None,
        }
    }

    fn open_to(
        &mut self,
        server: Option<ServerId>,
        address: ServerAddress,
        purpose: Purpose,
        out: &mut Outbox,
    ) -> ConnId {
        let backend = Backend {
            server,
            purpose,
            connected: false,
            scanner: ReplyScanner::new(self.limits),
            waiters: VecDeque::new(),
            raw: false,
        };
        let conn = self.conns.insert(backend);
        out.actions.push_back(Action::Connect { conn, address });
        if purpose != Purpose::Knock {
            self.authenticate(conn, server, out);
        }
        if matches!(purpose, Purpose::Shared { .. } | Purpose::Private { .. }) {
            self.declare_readonly(conn, out);
        }
        conn
    }

    /// Sends `READONLY` on `conn` when reads go to cluster replicas. A primary accepts it and is unchanged; an
    /// error (a server without cluster support) is ignored: its reads are then answered as without it.
    fn declare_readonly(&mut self, conn: ConnId, out: &mut Outbox) {
        if self.readonly {
            self.send(conn, &[Waiter::Ignore], Bytes::from_static(b"*1\r\n$8\r\nREADONLY\r\n"), out);
        }
    }

    /// Sends `server`'s `AUTH` on `conn`, if it has credentials. A sentinel connection (no server) logs in with
    /// the sentinels' own credentials, which `sentinel` sends.
    fn authenticate(&mut self, conn: ConnId, server: Option<ServerId>, out: &mut Outbox) {
        if let Some(auth) = server.and_then(|server| self.servers.get(server)?.auth.clone()) {
            self.send(conn, &[Waiter::Auth], auth, out);
        }
    }

    /// Replaces the `AUTH` request of `server`'s new connections (a reload changed `server_auth`).
    pub(crate) fn set_auth(&mut self, server: ServerId, auth: Option<Bytes>) {
        if let Some(conns) = self.servers.get_mut(server) {
            conns.auth = auth;
        }
    }

    /// The shared connection in `slot` (of one protocol's slots) of `server` for RESP2 or `resp3` clients, opened if
    /// there is none (None when `server` is gone). A RESP3 one starts with `HELLO 3`, whose reply nobody reads.
    // Inlined into the request path (bench/instructions.sh: 15 instructions per round trip); opening is out of line.
    #[inline(always)]
    pub(crate) fn shared(&mut self, server: ServerId, slot: usize, resp3: bool, out: &mut Outbox) -> Option<ConnId> {
        let slot = if resp3 { slot + self.slots_per_protocol } else { slot };
        match self.servers.get(server)?.shared.get(slot) {
            Some(Some(conn)) => Some(*conn),
            _ => self.open_shared(server, slot, resp3, out),
        }
    }

    /// Opens the shared connection in `slot` (of both protocols' slots) of `server`.
    #[cold]
    #[inline(never)]
    fn open_shared(&mut self, server: ServerId, slot: usize, resp3: bool, out: &mut Outbox) -> Option<ConnId> {
        let conn = self.open(server, Purpose::Shared { slot }, out)?;
        if let Some(shared) = self.servers.get_mut(server).and_then(|s| s.shared.get_mut(slot)) {
            *shared = Some(conn);
        }
        if resp3 {
            self.send(conn, &[Waiter::Ignore], hello_3(), out);
        }
        Some(conn)
    }

    /// A private connection to `server` for `owner`: an idle clean one, or a new one. For a `resp3` client it is
    /// switched with `HELLO 3` first (idle ones were `RESET` to RESP2), and that reply is read by nobody. None when
    /// `server` is gone.
    pub(crate) fn acquire_private(
        &mut self,
        server: ServerId,
        owner: ConnId,
        resp3: bool,
        out: &mut Outbox,
    ) -> Option<ConnId> {
        let conn = loop {
            let Some(idle) = self.servers.get_mut(server)?.idle_private.pop() else {
                break self.open(server, Purpose::Private { owner: Some(owner) }, out)?;
            };
            if let Some(backend) = self.conns.get_mut(idle) {
                backend.purpose = Purpose::Private { owner: Some(owner) };
                break idle;
            }
        };
        if resp3 {
            self.send(conn, &[Waiter::Ignore], hello_3(), out);
        }
        Some(conn)
    }

    /// Hands back a private connection whose client no longer needs it: cleaned with `RESET` and pooled when
    /// `+RESET` comes back ([`Pool::reset_done`]), or closed when it cannot be cleaned (requests still on it, or
    /// `passthrough`: the server pushes frames at it).
    pub(crate) fn release_private(&mut self, conn: ConnId, passthrough: bool, out: &mut Outbox) {
        let Some(backend) = self.conns.get_mut(conn) else { return };
        if passthrough || !backend.waiters.is_empty() {
            self.close(conn, out);
            return;
        }
        backend.purpose = Purpose::Private { owner: None };
        backend.waiters.push_back(Waiter::Reset);
        let server = backend.server;
        out.send(conn, Bytes::from_static(b"*1\r\n$5\r\nRESET\r\n"));
        // RESET logged it out and turned READONLY off: the next owner must find it as a new one.
        self.authenticate(conn, server, out);
        self.declare_readonly(conn, out);
    }

    /// A `RESET` reply arrived on `conn`: pool it for reuse if it is clean and goes to the routed `master`.
    pub(crate) fn reset_done(&mut self, conn: ConnId, frame: &[u8], master: Option<ServerId>, out: &mut Outbox) {
        let Some(backend) = self.conns.get(conn) else { return };
        let Some(server) = backend.server else { return };
        let released = backend.purpose == (Purpose::Private { owner: None });
        let reusable = frame == b"+RESET\r\n"
            && backend.waiters.iter().all(|w| *w == Waiter::Auth)
            && released
            && self.servers.get(server).is_some_and(|s| s.idle_private.len() < MAX_IDLE_PRIVATE)
            && master == Some(server);
        if let Some(conns) = self.servers.get_mut(server).filter(|_| reusable) {
            conns.idle_private.push(conn);
        } else if released {
            self.close(conn, out);
        }
    }

    /// Sends `data` (one request per waiter, or one in pass-through where nobody waits) on `conn`.
    pub(crate) fn send(&mut self, conn: ConnId, waiters: &[Waiter], data: Bytes, out: &mut Outbox) {
        if let Some(backend) = self.conns.get_mut(conn) {
            // One waiter is the common case; `push_back` costs less than `extend`'s general path.
            match waiters {
                [one] => backend.waiters.push_back(*one),
                more => backend.waiters.extend(more),
            }
        }
        out.send(conn, data);
    }

    /// From now on hands on whatever arrives on the private connection `conn` as it is: after `SYNC` the server
    /// sends an RDB payload that is no RESP frame. Only a connection whose owner is in pass-through is made raw.
    pub(crate) fn set_raw(&mut self, conn: ConnId) {
        if let Some(backend) = self.conns.get_mut(conn) {
            backend.raw = true;
        }
    }

    /// The runtime connected `conn`.
    pub(crate) fn connected(&mut self, conn: ConnId) {
        if let Some(backend) = self.conns.get_mut(conn) {
            backend.connected = true;
        }
    }

    /// Whether `conn` is one of ours and open.
    pub(crate) fn contains(&self, conn: ConnId) -> bool {
        self.conns.get(conn).is_some()
    }

    /// The server `conn` goes to.
    pub(crate) fn server_of(&self, conn: ConnId) -> Option<ServerId> {
        self.conns.get(conn).and_then(|b| b.server)
    }

    /// The next complete reply on `conn`, with the client that owns the connection if it is private.
    pub(crate) fn next_reply(
        &mut self,
        conn: ConnId,
        buf: &mut BytesMut,
    ) -> Result<Option<(Bytes, Option<ConnId>)>, ProtocolError> {
        let Some(backend) = self.conns.get_mut(conn) else {
            buf.clear();
            return Ok(None);
        };
        let owner = match backend.purpose {
            Purpose::Private { owner } => owner,
            _ => None,
        };
        // Until its AUTH is answered a connection's replies are still frames (the replication stream follows).
        if backend.raw && backend.waiters.front() != Some(&Waiter::Auth) {
            return Ok((!buf.is_empty()).then(|| (buf.split().freeze(), owner)));
        }
        Ok(backend.scanner.next_reply(buf)?.map(|frame| (frame, owner)))
    }

    /// The large bulk reply `buf` holds the start of on `conn`, if the scanner stopped at one that may be streamed
    /// (see [`ReplyScanner::partial_large_bulk`]): its whole length, and the waiter it answers.
    pub(crate) fn partial_large_bulk(&self, conn: ConnId, buf: &BytesMut) -> Option<(usize, Option<Waiter>)> {
        let backend = self.conns.get(conn).filter(|b| !b.raw)?;
        let whole = backend.scanner.partial_large_bulk(buf)?;
        Some((whole, backend.waiters.front().copied()))
    }

    /// The large reply partly in `buf` on `conn` is held whole after all: room for the rest is reserved.
    pub(crate) fn hold_whole(&self, conn: ConnId, buf: &mut BytesMut) {
        if let Some(backend) = self.conns.get(conn) {
            backend.scanner.reserve_rest(buf);
        }
    }

    /// The large reply partly read on `conn` is streamed: its bytes are taken as they come, not scanned.
    pub(crate) fn stream_taken(&mut self, conn: ConnId) {
        if let Some(backend) = self.conns.get_mut(conn) {
            backend.scanner.stream_taken();
        }
    }

    /// Drops and returns the front waiter of the private connection `conn` if the proxy itself awaits that reply:
    /// [`Waiter::Ignore`] (the `HELLO 3` that switched it before its client went into pass-through, where replies
    /// are not counted) or [`Waiter::Auth`].
    pub(crate) fn take_proxy_waiter(&mut self, conn: ConnId) -> Option<Waiter> {
        let backend = self.conns.get_mut(conn)?;
        match backend.waiters.front() {
            Some(Waiter::Ignore | Waiter::Auth) => backend.waiters.pop_front(),
            _ => None,
        }
    }

    /// Who the reply that just arrived on `conn` is for (None: nobody asked; the connection is out of step). An
    /// out-of-band connection is closed once its reply is in.
    pub(crate) fn pop_waiter(&mut self, conn: ConnId, out: &mut Outbox) -> Option<Waiter> {
        let backend = self.conns.get_mut(conn)?;
        let waiter = backend.waiters.pop_front();
        if matches!(backend.purpose, Purpose::OutOfBand { .. }) && backend.waiters.is_empty() {
            self.close(conn, out);
        }
        waiter
    }

    /// Closes `conn` without failing anything on it (it awaits nothing a client needs).
    pub(crate) fn close(&mut self, conn: ConnId, out: &mut Outbox) {
        if let Some(backend) = self.conns.remove(conn) {
            out.close(conn);
            self.detach(conn, &backend);
        }
    }

    /// Forgets `conn` (failed, broken, or given up on) and returns what was waiting on it.
    pub(crate) fn remove(&mut self, conn: ConnId) -> Option<LostBackend> {
        let backend = self.conns.remove(conn)?;
        self.detach(conn, &backend);
        Some(LostBackend {
            server: backend.server,
            purpose: backend.purpose,
            connected: backend.connected,
            waiters: backend.waiters,
        })
    }

    /// Requests of clients in flight on the connections to `server`.
    pub(crate) fn in_flight(&self, server: ServerId) -> usize {
        self.conns
            .iter()
            .filter(|(_, b)| b.server == Some(server))
            .map(|(_, b)| {
                b.waiters.iter().filter(|w| matches!(w, Waiter::Client { .. } | Waiter::Routed { .. })).count()
            })
            .sum()
    }

    /// A new server under `id` (at start, `PROXY ADD`, reload, Sentinel mode), whose connections start with
    /// `auth`.
    pub(crate) fn add_server(&mut self, id: ServerId, address: ServerAddress, auth: Option<Bytes>) {
        let slots = 2 * self.slots_per_protocol;
        self.servers.insert(id, ServerConns { address, shared: vec![None; slots], idle_private: Vec::new(), auth });
        self.lines.insert(id, ServerLines::default());
    }

    /// Sentinel mode: the next sentinel of the configuration is at `address` (its index is the count so far).
    pub(crate) fn add_sentinel(&mut self, address: ServerAddress) {
        self.sentinels.push(SentinelConns { address, command: None, subscriber: None });
    }

    /// Forgets `server`, whose connections are all closed; no other server's id changes.
    pub(crate) fn remove_server(&mut self, server: ServerId) {
        self.servers.remove(server);
        self.lines.remove(server);
    }

    /// The connections to `server` by kind, for the status snapshot.
    pub(crate) fn counts_of(&self, server: ServerId) -> BackendCounts {
        let mut counts = BackendCounts::default();
        for (_, backend) in self.conns.iter().filter(|(_, b)| b.server == Some(server)) {
            match backend.purpose {
                Purpose::Shared { .. } => counts.shared += 1,
                Purpose::Private { .. } => counts.private += 1,
                Purpose::Probe | Purpose::Knock | Purpose::OutOfBand { .. } => counts.probe += 1,
                Purpose::Sentinel { .. } => {}
            }
        }
        counts
    }

    /// The connections to `server`, probe included unless `keep_probe`.
    pub(crate) fn conns_of(&self, server: ServerId, keep_probe: bool) -> Vec<ConnId> {
        self.conns
            .iter()
            .filter(|(_, b)| b.server == Some(server) && !(keep_probe && b.purpose == Purpose::Probe))
            .map(|(id, _)| id)
            .collect()
    }

    fn detach(&mut self, conn: ConnId, backend: &Backend) {
        if let Some(slot) = backend.line().and_then(|line| self.line_slot(line)).filter(|slot| **slot == Some(conn)) {
            *slot = None;
        }
        let Some(server) = backend.server.and_then(|id| self.servers.get_mut(id)) else { return };
        match backend.purpose {
            Purpose::Shared { slot } if server.shared.get(slot) == Some(&Some(conn)) => server.shared[slot] = None,
            Purpose::Private { .. } => server.idle_private.retain(|c| *c != conn),
            _ => {}
        }
    }
}

/// `HELLO 3`, as a request frame.
fn hello_3() -> Bytes {
    Bytes::from_static(b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n")
}
