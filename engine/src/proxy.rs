//! The [`Engine`]: clients, backend connections, probes and failover tied together behind the sans-IO contract.

use crate::backend::{Backend, Purpose, Waiter};
use crate::command::{self, CommandFlags, CommandSpec};
use crate::config::{Config, Mode, ServerAddress};
use crate::conn::{ConnId, ConnTable};
use crate::event::Event;
use crate::failover::{Decision, Failover};
use crate::resp::{self, Request, RequestScanner};
use crate::route;
use crate::session::{Handling, Pin, Session};
use crate::topology::{ReplicationInfo, ServerId, ServerView};
use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

/// What the runtime must do; drained with [`Engine::poll_action`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Queue `data` for writing on `conn` (also while it is still connecting: write once connected).
    Send {
        /// The connection.
        conn: ConnId,
        /// The bytes.
        data: Bytes,
    },
    /// Open a TCP connection to `address` and report [`Input::Connected`] or [`Input::ConnectFailed`] for `conn`.
    Connect {
        /// The id the new connection carries.
        conn: ConnId,
        /// Where to connect.
        address: ServerAddress,
    },
    /// Close `conn` after writing what is queued for it; report nothing more about it.
    Close {
        /// The connection.
        conn: ConnId,
    },
    /// Stop (`false`) or resume (`true`) reading from `conn`; on resume, read what the socket already holds.
    SetReadable {
        /// The connection.
        conn: ConnId,
        /// Whether to read.
        readable: bool,
    },
}

/// Something that happened on a connection, handed to [`Engine::handle_input`].
#[derive(Debug)]
pub enum Input<'a> {
    /// Bytes arrived on `conn`; the engine splits complete frames off `buf` and leaves a partial one in it.
    /// Keep `buf` per connection and append the next read to it.
    Data {
        /// The connection.
        conn: ConnId,
        /// The connection's read buffer.
        buf: &'a mut BytesMut,
    },
    /// A connection asked for with [`Action::Connect`] is established.
    Connected {
        /// The connection.
        conn: ConnId,
    },
    /// A connection asked for with [`Action::Connect`] could not be established.
    ConnectFailed {
        /// The connection.
        conn: ConnId,
        /// Why, for the log.
        reason: &'a str,
    },
    /// The peer closed `conn`, or it failed; the runtime has closed it.
    Closed {
        /// The connection.
        conn: ConnId,
    },
    /// Writing to `conn` would block: its peer is not reading as fast as the engine sends.
    WriteBlocked {
        /// The connection.
        conn: ConnId,
    },
    /// Everything queued for `conn` after a [`Input::WriteBlocked`] has been written.
    Drained {
        /// The connection.
        conn: ConnId,
    },
}

/// Why the engine wants [`Engine::handle_timeout`] at the instant [`Engine::poll_timeout`] returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerReason {
    /// Time to probe the servers.
    Probe,
    /// A server will count as down unless it answers first.
    DownCheck(ServerId),
    /// A promotion must be confirmed by then.
    FailoverDeadline,
    /// The oldest held request expires.
    HoldExpiry,
}

/// Released private connections kept per server for reuse; more are closed (reconnecting is cheap, sockets are not).
const MAX_IDLE_PRIVATE: usize = 16;

/// The connections the engine keeps to one configured server.
struct Server {
    probe: Option<ConnId>,
    shared: Vec<Option<ConnId>>,
    idle_private: Vec<ConnId>,
}

/// A request waiting in a client's queue, already classified.
struct HeldRequest {
    request: Request,
    /// The command, if Redis knows it.
    spec: Option<&'static CommandSpec>,
    handling: Handling,
    since: Instant,
}

impl HeldRequest {
    /// The memory it takes while held: its bytes and its bookkeeping.
    fn cost(&self) -> usize {
        self.request.frame().len() + std::mem::size_of::<HeldRequest>()
    }
}

struct Client {
    scanner: RequestScanner,
    session: Session,
    /// Replies in request order; None while awaited. The front is request number `first_seq`.
    slots: VecDeque<Option<Bytes>>,
    first_seq: u64,
    held: VecDeque<HeldRequest>,
    /// The private backend connection, if the session needs one.
    private: Option<ConnId>,
    /// The backend connection of the newest request in flight, so the client's order survives a switch.
    last_backend: Option<ConnId>,
    shared_slot: usize,
    paused: bool,
    write_blocked: bool,
    bytes_while_blocked: usize,
    /// Its private connection passes every frame straight through (set once the first passthrough request
    /// went out, after all earlier replies came back).
    passthrough: bool,
    /// Whether `hold_deadlines` has an entry for this client.
    hold_tracked: bool,
    /// QUIT or a protocol error: close once the queued replies are out, read nothing more.
    closing: bool,
}

impl Client {
    fn in_flight(&self) -> usize {
        self.slots.len()
    }

    fn is_passthrough(&self) -> bool {
        self.passthrough && self.private.is_some()
    }
}

enum Conn {
    Client(Client),
    Backend(Backend),
}

/// The sans-IO proxy. See the crate documentation for the call order.
pub struct Engine {
    config: Config,
    conns: ConnTable<Conn>,
    servers: Vec<Server>,
    /// What is known of each server, parallel to `servers`.
    views: Vec<ServerView>,
    failover: Failover,
    actions: VecDeque<Action>,
    events: VecDeque<Event>,
    next_probe: Instant,
    clients: usize,
    /// Memory taken by held requests over all clients (see [`HeldRequest::cost`]).
    held_bytes: usize,
    /// (deadline, client) in deadline order, for expiring held requests; stale entries are skipped.
    hold_deadlines: VecDeque<(Instant, ConnId)>,
    replica_cursor: usize,
    /// [`Engine::begin_shutdown`] was called.
    shutting_down: bool,
}

impl Engine {
    /// An engine for `config`; it starts probing the servers at the first [`Engine::handle_timeout`].
    pub fn new(config: Config, now: Instant) -> Engine {
        let views: Vec<ServerView> = config.servers.iter().map(|a| ServerView::new(a.clone(), now)).collect();
        let servers = config
            .servers
            .iter()
            .map(|_| Server { probe: None, shared: vec![None; config.pool_size], idle_private: Vec::new() })
            .collect::<Vec<_>>();
        let failover = Failover::new(servers.len(), now, config.down_after, config.check_period);
        Engine {
            config,
            conns: ConnTable::new(),
            servers,
            views,
            failover,
            actions: VecDeque::new(),
            events: VecDeque::new(),
            next_probe: now,
            clients: 0,
            held_bytes: 0,
            hold_deadlines: VecDeque::new(),
            replica_cursor: 0,
            shutting_down: false,
        }
    }

    /// The configuration the engine runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The master writes go to now, if any.
    pub fn master(&self) -> Option<&ServerAddress> {
        self.failover.master().map(|m| &self.views[m.0].address)
    }

    /// What the engine knows of each server, in configuration order.
    pub fn server_views(&self) -> impl Iterator<Item = &ServerView> {
        self.views.iter()
    }

    /// Number of client connections open.
    pub fn client_count(&self) -> usize {
        self.clients
    }

    /// The next thing the runtime must do, until None.
    #[must_use]
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The next event to log or count, until None.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When the engine next needs [`Engine::handle_timeout`], and why.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<(Instant, TimerReason)> {
        let mut best = (self.next_probe, TimerReason::Probe);
        let mut consider = |at: Instant, reason| {
            if at < best.0 {
                best = (at, reason);
            }
        };
        for (index, view) in self.views.iter().enumerate() {
            if !view.down {
                consider(view.down_deadline(self.config.down_after), TimerReason::DownCheck(ServerId(index)));
            }
        }
        if let Some(deadline) = self.failover.deadline() {
            consider(deadline, TimerReason::FailoverDeadline);
        }
        if let Some(&(deadline, _)) = self.hold_deadlines.front() {
            consider(deadline, TimerReason::HoldExpiry);
        }
        Some(best)
    }

    /// A client connected from `peer`; returns the id its events and actions carry.
    pub fn accept(&mut self, now: Instant, peer: SocketAddr) -> ConnId {
        let _ = now;
        let conn = self.conns.insert(Conn::Client(Client {
            scanner: RequestScanner::new(self.config.limits),
            session: Session::default(),
            slots: VecDeque::new(),
            first_seq: 0,
            held: VecDeque::new(),
            private: None,
            last_backend: None,
            shared_slot: 0,
            paused: false,
            write_blocked: false,
            bytes_while_blocked: 0,
            hold_tracked: false,
            passthrough: false,
            closing: false,
        }));
        if let Some(Conn::Client(client)) = self.conns.get_mut(conn) {
            client.shared_slot = conn.index() % self.config.pool_size;
        }
        self.clients += 1;
        if self.shutting_down {
            self.actions.push_back(Action::Send { conn, data: resp::error_reply("ERR redis-proxy is shutting down") });
            self.remove_client(conn, true);
        } else if self.clients > self.config.max_clients {
            self.events.push_back(Event::ClientRejected { peer });
            self.actions.push_back(Action::Send { conn, data: resp::error_reply("ERR max number of clients reached") });
            self.remove_client(conn, true);
        } else {
            self.events.push_back(Event::ClientAccepted { conn, peer });
        }
        conn
    }

    /// Begins a graceful shutdown: no client is read any more, requests still held get an error, and each client
    /// is closed ([`Action::Close`]) as soon as every reply it awaits has been sent. New clients are turned away.
    /// The shutdown is complete when [`Engine::client_count`] is 0; a runtime bounds the wait (a `BLPOP 0` may
    /// never be answered).
    pub fn begin_shutdown(&mut self, now: Instant) {
        let _ = now;
        self.shutting_down = true;
        let error = resp::error_reply("ERR redis-proxy is shutting down; the command was not sent");
        for conn in self.conns.ids() {
            let Some(client) = client_mut(&mut self.conns, conn) else { continue };
            let held = std::mem::take(&mut client.held);
            client.closing = true;
            self.held_bytes -= held.iter().map(HeldRequest::cost).sum::<usize>();
            for _ in &held {
                self.reply_local(conn, error.clone());
            }
            if let Some(client) = client_mut(&mut self.conns, conn) {
                if !client.paused {
                    client.paused = true;
                    self.actions.push_back(Action::SetReadable { conn, readable: false });
                }
            }
            self.close_if_done(conn);
        }
    }

    /// Hands the engine something that happened on a connection.
    pub fn handle_input(&mut self, now: Instant, input: Input<'_>) {
        match input {
            Input::Data { conn, buf } => match self.conns.get(conn) {
                Some(Conn::Client(_)) => self.client_data(now, conn, buf),
                Some(Conn::Backend(_)) => self.backend_data(now, conn, buf),
                None => buf.clear(),
            },
            Input::Connected { conn } => {
                if let Some(Conn::Backend(backend)) = self.conns.get_mut(conn) {
                    backend.connected = true;
                }
            }
            Input::ConnectFailed { conn, reason } => self.backend_lost(now, conn, &format!("connect failed: {reason}")),
            Input::Closed { conn } => match self.conns.get(conn) {
                Some(Conn::Client(_)) => self.remove_client(conn, false),
                Some(Conn::Backend(_)) => self.backend_lost(now, conn, "closed by the server"),
                None => {}
            },
            Input::WriteBlocked { conn } => {
                if let Some(Conn::Client(client)) = self.conns.get_mut(conn) {
                    client.write_blocked = true;
                    client.bytes_while_blocked = 0;
                    self.update_reading(conn);
                }
            }
            Input::Drained { conn } => {
                if let Some(Conn::Client(client)) = self.conns.get_mut(conn) {
                    client.write_blocked = false;
                    self.update_reading(conn);
                }
            }
        }
    }

    /// Lets the engine act on time: probes, down detection, failover deadlines, held requests that expire.
    pub fn handle_timeout(&mut self, now: Instant) {
        if now >= self.next_probe {
            self.next_probe = now + self.config.check_period;
            self.probe_all(now);
        }
        self.detect_down(now);
        self.evaluate_failover(now);
        self.expire_held(now);
    }

    // ------------------------------------------------------------------ clients

    fn client(&mut self, conn: ConnId) -> Option<&mut Client> {
        client_mut(&mut self.conns, conn)
    }

    fn client_data(&mut self, now: Instant, conn: ConnId, buf: &mut BytesMut) {
        loop {
            let Some(client) = client_mut(&mut self.conns, conn) else { return };
            if client.closing {
                buf.clear();
                return;
            }
            let request = match client.scanner.next_request(buf) {
                Ok(Some(request)) => request,
                Ok(None) => break,
                Err(error) => {
                    let message = format!("ERR {error}");
                    buf.clear();
                    self.events.push_back(Event::ClientProtocolError { conn, message: message.clone() });
                    // Requests held so far were never sent, and the client is about to be closed: each gets an
                    // error now, so that the protocol error stays the last reply, in the order of the stream.
                    let dropped = std::mem::take(&mut client.held);
                    self.held_bytes -= dropped.iter().map(HeldRequest::cost).sum::<usize>();
                    for _ in &dropped {
                        self.reply_local(
                            conn,
                            resp::error_reply(
                                "ERR redis-proxy did not send this command: a protocol error followed it",
                            ),
                        );
                    }
                    self.reply_local(conn, resp::error_reply(&message));
                    if let Some(client) = self.client(conn) {
                        client.closing = true;
                    }
                    self.close_if_done(conn);
                    return;
                }
            };
            if request.is_empty() {
                continue;
            }
            let pinned = client.private.is_some() || client.session.current_pin() != Pin::Shared;
            let spec = command::resolve(request.arg(0).unwrap_or_default(), request.arg(1));
            let handling = client.session.classify(&request, spec, pinned, self.config.allow_topology_commands);
            let held = HeldRequest { request, spec, handling, since: now };
            if !client.held.is_empty() || !self.execute(now, conn, &held) {
                self.hold(conn, held);
            }
        }
        self.update_reading(conn);
    }

    /// Queues a request that cannot go out yet; past the global bound it gets an error instead.
    fn hold(&mut self, conn: ConnId, held: HeldRequest) {
        if self.held_bytes + held.cost() > self.config.hold_max_bytes {
            self.events.push_back(Event::RequestsExpired { count: 1 });
            self.reply_local(conn, resp::error_reply(&self.hold_error()));
            return;
        }
        let deadline = held.since + self.config.hold;
        let Some(client) = client_mut(&mut self.conns, conn) else { return };
        self.held_bytes += held.cost();
        client.held.push_back(held);
        if !client.hold_tracked {
            client.hold_tracked = true;
            let at = self.hold_deadlines.partition_point(|(d, _)| *d <= deadline);
            self.hold_deadlines.insert(at, (deadline, conn));
        }
    }

    fn hold_error(&self) -> String {
        if self.failover.master().is_none() {
            format!(
                "MASTERDOWN no master is available: redis-proxy held the request for {} ms",
                self.config.hold.as_millis()
            )
        } else {
            format!("ERR redis-proxy held the request for {} ms and could not send it", self.config.hold.as_millis())
        }
    }

    /// Runs a classified request now (true), or leaves it to the caller to hold (false) when it must wait: no
    /// master, or an order barrier.
    fn execute(&mut self, now: Instant, conn: ConnId, held: &HeldRequest) -> bool {
        let pin = match &held.handling {
            Handling::Local(reply) => {
                self.reply_local(conn, reply.clone());
                return true;
            }
            Handling::LocalThenClose(reply) => {
                self.reply_local(conn, reply.clone());
                if let Some(client) = self.client(conn) {
                    client.closing = true;
                }
                self.close_if_done(conn);
                return true;
            }
            Handling::Refuse(message) => {
                self.reply_local(conn, resp::error_reply(message));
                return true;
            }
            Handling::Forward(pin) => *pin,
        };
        // A client that is gone needs nothing more.
        let Some(client) = self.client(conn) else { return true };
        let private = client.private;
        let wants_private = pin > Pin::Shared || private.is_some();
        let Some(target_server) = self.route(now, held.spec, wants_private) else {
            return false;
        };
        let backend = if wants_private {
            match private {
                Some(existing) => existing,
                None => {
                    // Order barrier: the private connection must not overtake requests still in flight elsewhere.
                    if self.client(conn).is_some_and(|c| c.in_flight() > 0) {
                        return false;
                    }
                    let backend = self.acquire_private(now, target_server, conn);
                    if let Some(client) = self.client(conn) {
                        client.private = Some(backend);
                    }
                    backend
                }
            }
        } else {
            let slot = self.client(conn).map_or(0, |c| c.shared_slot);
            self.shared_conn(now, target_server, slot)
        };
        let client = self.client(conn).expect("client checked above");
        // Order barrier: a switch of connection, or into passthrough (where replies are no longer counted), waits
        // until every earlier reply is in.
        let entering_passthrough = pin == Pin::Passthrough && !client.passthrough;
        if client.in_flight() > 0 && (client.last_backend != Some(backend) || entering_passthrough) {
            return false;
        }
        client.last_backend = Some(backend);
        client.passthrough |= entering_passthrough;
        let waiter = if client.passthrough {
            None
        } else {
            let seq = client.first_seq + client.slots.len() as u64;
            client.slots.push_back(None);
            Some(Waiter::Client { conn, seq })
        };
        if let Some(Conn::Backend(b)) = self.conns.get_mut(backend) {
            if let Some(waiter) = waiter {
                b.waiters.push_back(waiter);
            }
        }
        self.actions.push_back(Action::Send { conn: backend, data: held.request.frame().clone() });
        true
    }

    /// The server a forwarded request goes to, or None when it must wait for a master.
    fn route(&mut self, now: Instant, spec: Option<&'static CommandSpec>, private: bool) -> Option<ServerId> {
        // A master whose connections just failed gets nothing until a probe hears from it again: requests wait
        // (for it, or for a failover) instead of failing one by one.
        let master = self.failover.master().filter(|m| !self.views[m.0].suspect && !self.views[m.0].unreachable);
        if !private && self.config.mode == Mode::ReadsToSlaves {
            let read_only = spec
                .is_some_and(|s| s.flags.contains(CommandFlags::READONLY) && !s.flags.contains(CommandFlags::WRITE));
            if read_only {
                if let Some(routed) = self.failover.master() {
                    let policy = route::ReadPolicy {
                        now,
                        max_lag: self.config.replica_max_lag,
                        probe_late_after: self.config.check_period / 2,
                    };
                    if let Some(replica) = route::read_replica(&self.views, routed, &mut self.replica_cursor, &policy) {
                        return Some(replica);
                    }
                }
            }
        }
        master
    }

    fn reply_local(&mut self, conn: ConnId, reply: Bytes) {
        let Some(client) = self.client(conn) else { return };
        // Behind replies still awaited, also in passthrough mode (entered while earlier requests were in flight).
        if client.slots.is_empty() {
            self.send_to_client(conn, reply);
            return;
        }
        client.slots.push_back(Some(reply));
    }

    /// Fills the reply slot `seq` of `conn` and sends every reply that is now next in order.
    fn deliver(&mut self, now: Instant, conn: ConnId, seq: u64, reply: Bytes) {
        let Some(client) = self.client(conn) else { return };
        let Some(index) = seq.checked_sub(client.first_seq).map(|i| i as usize) else { return };
        if index >= client.slots.len() {
            return;
        }
        if index == 0 {
            client.slots.pop_front();
            client.first_seq += 1;
            self.send_to_client(conn, reply);
        } else {
            client.slots[index] = Some(reply);
            return;
        }
        loop {
            let Some(client) = self.client(conn) else { return };
            match client.slots.front_mut().and_then(Option::take) {
                Some(ready) => {
                    client.slots.pop_front();
                    client.first_seq += 1;
                    self.send_to_client(conn, ready);
                }
                None => break,
            }
        }
        self.after_progress(now, conn);
    }

    /// After a client's in-flight count dropped: release its private connection if its state ended, run held
    /// requests, resume reading, finish a pending close.
    fn after_progress(&mut self, now: Instant, conn: ConnId) {
        let Some(client) = self.client(conn) else { return };
        if client.slots.is_empty() {
            client.session.blocking = false;
            if client.session.is_clean() {
                if let Some(private) = client.private.take() {
                    client.last_backend = None;
                    self.release_private(private);
                }
            }
        }
        // Held requests, a paused read and a pending close are the rare cases; a reply usually needs none.
        let Some(client) = self.client(conn) else { return };
        if client.held.is_empty() && !client.paused && !client.closing {
            return;
        }
        self.run_held(now, conn);
        self.update_reading(conn);
        self.close_if_done(conn);
    }

    fn run_held(&mut self, now: Instant, conn: ConnId) {
        loop {
            let Some(client) = self.client(conn) else { return };
            if client.closing {
                // After QUIT nothing more is sent, as Redis reads nothing after it.
                let dropped = std::mem::take(&mut client.held);
                self.held_bytes -= dropped.iter().map(HeldRequest::cost).sum::<usize>();
                return;
            }
            let Some(held) = client.held.pop_front() else { return };
            self.held_bytes -= held.cost();
            if !self.execute(now, conn, &held) {
                self.held_bytes += held.cost();
                let Some(client) = self.client(conn) else { return };
                client.held.push_front(held);
                return;
            }
        }
    }

    fn send_to_client(&mut self, conn: ConnId, data: Bytes) {
        let limit = self.config.client_output_limit;
        let Some(client) = self.client(conn) else { return };
        if client.write_blocked {
            client.bytes_while_blocked += data.len();
            if client.is_passthrough() && client.bytes_while_blocked > limit {
                self.events.push_back(Event::ClientOutputLimit { conn });
                self.remove_client(conn, true);
                return;
            }
        }
        self.actions.push_back(Action::Send { conn, data });
    }

    /// Pauses reading a client that has too much in flight or does not read its replies, and resumes it after.
    fn update_reading(&mut self, conn: ConnId) {
        let max = self.config.max_pipeline;
        let Some(client) = self.client(conn) else { return };
        let load = client.in_flight() + client.held.len();
        let should_pause = client.write_blocked || load >= max;
        let may_resume = !client.write_blocked && load <= max / 2;
        if !client.paused && should_pause {
            client.paused = true;
            self.actions.push_back(Action::SetReadable { conn, readable: false });
        } else if client.paused && may_resume && !client.closing {
            client.paused = false;
            self.actions.push_back(Action::SetReadable { conn, readable: true });
        }
    }

    fn close_if_done(&mut self, conn: ConnId) {
        let Some(client) = self.client(conn) else { return };
        if client.closing && client.slots.is_empty() {
            self.remove_client(conn, true);
        }
    }

    /// Forgets a client; `close` asks the runtime to close it (after flushing what is queued).
    fn remove_client(&mut self, conn: ConnId, close: bool) {
        let Some(Conn::Client(client)) = self.conns.remove(conn) else { return };
        self.clients -= 1;
        self.held_bytes -= client.held.iter().map(HeldRequest::cost).sum::<usize>();
        if close {
            self.actions.push_back(Action::Close { conn });
        }
        self.events.push_back(Event::ClientClosed { conn });
        if let Some(private) = client.private {
            let idle = matches!(self.conns.get(private), Some(Conn::Backend(b)) if b.waiters.is_empty());
            if idle && !client.is_passthrough() {
                self.release_private(private);
            } else {
                self.close_backend(private);
            }
        }
    }

    // ------------------------------------------------------------------ backends

    fn open_backend(&mut self, server: ServerId, purpose: Purpose) -> ConnId {
        let conn = self.conns.insert(Conn::Backend(Backend::new(server, purpose, self.config.limits)));
        self.actions.push_back(Action::Connect { conn, address: self.views[server.0].address.clone() });
        conn
    }

    fn shared_conn(&mut self, _now: Instant, server: ServerId, slot: usize) -> ConnId {
        if let Some(conn) = self.servers[server.0].shared[slot] {
            return conn;
        }
        let conn = self.open_backend(server, Purpose::Shared { slot });
        self.servers[server.0].shared[slot] = Some(conn);
        conn
    }

    fn acquire_private(&mut self, _now: Instant, server: ServerId, owner: ConnId) -> ConnId {
        while let Some(idle) = self.servers[server.0].idle_private.pop() {
            if let Some(Conn::Backend(backend)) = self.conns.get_mut(idle) {
                backend.purpose = Purpose::Private { owner: Some(owner) };
                return idle;
            }
        }
        self.open_backend(server, Purpose::Private { owner: Some(owner) })
    }

    /// Cleans a private connection with `RESET`; it rejoins the idle pool when `+RESET` comes back.
    fn release_private(&mut self, backend: ConnId) {
        let Some(Conn::Backend(b)) = self.conns.get_mut(backend) else { return };
        b.purpose = Purpose::Private { owner: None };
        b.waiters.push_back(Waiter::Reset);
        self.actions.push_back(Action::Send { conn: backend, data: Bytes::from_static(b"*1\r\n$5\r\nRESET\r\n") });
    }

    fn close_backend(&mut self, conn: ConnId) {
        if let Some(Conn::Backend(backend)) = self.conns.remove(conn) {
            self.actions.push_back(Action::Close { conn });
            self.detach_backend(conn, &backend);
        }
    }

    /// Removes every reference the servers hold to a backend connection that is gone.
    fn detach_backend(&mut self, conn: ConnId, backend: &Backend) {
        let server = &mut self.servers[backend.server.0];
        match backend.purpose {
            Purpose::Shared { slot } if server.shared[slot] == Some(conn) => server.shared[slot] = None,
            Purpose::Probe if server.probe == Some(conn) => {
                server.probe = None;
                self.views[backend.server.0].probe_pending_since = None;
            }
            _ => server.idle_private.retain(|c| *c != conn),
        }
    }

    /// Closes a backend connection the engine gives up on and fails its requests (see [`Engine::backend_lost`]).
    /// Failing requests can close other connections, so a connection already gone is skipped.
    fn close_and_fail(&mut self, now: Instant, conn: ConnId, reason: &str) {
        if matches!(self.conns.get(conn), Some(Conn::Backend(_))) {
            self.actions.push_back(Action::Close { conn });
            self.backend_lost(now, conn, reason);
        }
    }

    /// A backend connection failed, broke or was closed by the engine: every request in flight on it gets an
    /// error (a write may or may not have run: never retried), and a private connection's client is closed
    /// because the state it built is gone.
    fn backend_lost(&mut self, now: Instant, conn: ConnId, reason: &str) {
        let Some(Conn::Backend(backend)) = self.conns.remove(conn) else { return };
        self.detach_backend(conn, &backend);
        // The owner loses its private connection before any error is delivered: delivering runs the owner's held
        // requests, which must not be sent on (or wait forever for) this connection.
        let mut orphaned = None;
        if let Purpose::Private { owner: Some(owner) } = backend.purpose {
            if let Some(client) = self.client(owner) {
                if client.private == Some(conn) {
                    client.private = None;
                    client.closing = true;
                    orphaned = Some(owner);
                }
            }
        }
        let address = self.views[backend.server.0].address.clone();
        let mut failed = 0;
        let message = if backend.connected {
            format!("ERR redis-proxy lost the connection to {address} ({reason}); the command may or may not have run")
        } else {
            format!("ERR redis-proxy could not reach {address} ({reason}); the command was not sent")
        };
        let error = resp::error_reply(&message);
        for waiter in &backend.waiters {
            if let Waiter::Client { conn: client, seq } = *waiter {
                failed += 1;
                self.deliver(now, client, seq, error.clone());
            }
        }
        if backend.purpose == Purpose::Probe {
            self.views[backend.server.0].unreachable = true;
            // An unreachable server may be what a choice among several masters was waiting for.
            self.evaluate_failover(now);
        } else if !backend.connected || failed > 0 {
            // A refused connection, or one lost with requests on it, may mean a dead server: route nothing more to
            // it until a probe hears from it (at once, if its probe connection still works). An idle connection
            // closed by the server (its `timeout` setting) is just reopened when needed.
            self.views[backend.server.0].suspect = true;
            if self.views[backend.server.0].probe_pending_since.is_none() {
                self.send_probe(now, backend.server);
            }
        }
        if let Some(owner) = orphaned {
            self.close_if_done(owner);
        }
        self.events.push_back(Event::BackendLost { address, reason: reason.to_string(), failed_requests: failed });
    }

    fn backend_data(&mut self, now: Instant, conn: ConnId, buf: &mut BytesMut) {
        loop {
            let Some(Conn::Backend(backend)) = self.conns.get_mut(conn) else {
                buf.clear();
                return;
            };
            let frame = match backend.scanner.next_reply(buf) {
                Ok(Some(frame)) => frame,
                Ok(None) => return,
                Err(error) => {
                    buf.clear();
                    self.close_and_fail(now, conn, &format!("bad reply: {error}"));
                    return;
                }
            };
            let purpose = backend.purpose;
            if let Purpose::Private { owner: Some(owner) } = purpose {
                let passthrough = matches!(self.conns.get(owner), Some(Conn::Client(c)) if c.is_passthrough());
                if passthrough || frame.first() == Some(&b'>') {
                    self.send_to_client(owner, frame);
                    continue;
                }
            }
            let Some(Conn::Backend(backend)) = self.conns.get_mut(conn) else { return };
            let Some(waiter) = backend.waiters.pop_front() else {
                // A reply nobody asked for: the connection is out of step and cannot be trusted.
                self.close_and_fail(now, conn, "unexpected reply");
                buf.clear();
                return;
            };
            match waiter {
                Waiter::Client { conn: client, seq } => self.deliver(now, client, seq, frame),
                Waiter::Reset => self.reset_done(conn, &frame),
                Waiter::Probe(probe) => self.probe_reply(now, conn, probe, &frame),
            }
        }
    }

    fn reset_done(&mut self, conn: ConnId, frame: &[u8]) {
        let Some(Conn::Backend(backend)) = self.conns.get(conn) else { return };
        let server = backend.server;
        let reusable = frame == b"+RESET\r\n"
            && backend.waiters.is_empty()
            && backend.purpose == (Purpose::Private { owner: None })
            && self.servers[server.0].idle_private.len() < MAX_IDLE_PRIVATE
            && self.failover.master() == Some(server);
        if reusable {
            self.servers[server.0].idle_private.push(conn);
        } else if backend.purpose == (Purpose::Private { owner: None }) {
            self.close_backend(conn);
        }
    }

    // ------------------------------------------------------------------ probes and failover

    fn probe_all(&mut self, now: Instant) {
        for index in 0..self.servers.len() {
            let server = ServerId(index);
            match self.servers[index].probe {
                None => {
                    let conn = self.open_backend(server, Purpose::Probe);
                    self.servers[index].probe = Some(conn);
                    self.send_probe(now, server);
                }
                Some(conn) => match self.views[index].probe_pending_since {
                    None => self.send_probe(now, server),
                    Some(sent) if now.saturating_duration_since(sent) >= self.config.down_after => {
                        // A hung server: drop the connection and try a fresh one next round.
                        self.close_backend(conn);
                    }
                    Some(_) => {}
                },
            }
        }
    }

    fn send_probe(&mut self, now: Instant, server: ServerId) {
        let Some(conn) = self.servers[server.0].probe else { return };
        let Some(Conn::Backend(backend)) = self.conns.get_mut(conn) else { return };
        backend.waiters.push_back(Waiter::Probe(crate::backend::Probe::Ping));
        backend.waiters.push_back(Waiter::Probe(crate::backend::Probe::Info));
        self.views[server.0].probe_pending_since = Some(now);
        self.actions
            .push_back(Action::Send { conn, data: Bytes::from_static(b"*1\r\n$4\r\nPING\r\n*1\r\n$4\r\nINFO\r\n") });
    }

    fn probe_reply(&mut self, now: Instant, conn: ConnId, probe: crate::backend::Probe, frame: &Bytes) {
        use crate::backend::Probe;
        let Some(Conn::Backend(backend)) = self.conns.get(conn) else { return };
        let server = backend.server;
        match probe {
            Probe::Ping => {
                let valid =
                    frame.starts_with(b"+PONG") || frame.starts_with(b"-LOADING") || frame.starts_with(b"-MASTERDOWN");
                if valid {
                    let view = &mut self.views[server.0];
                    view.last_ok = Some(now);
                    let was_unavailable = view.down || view.suspect || view.unreachable;
                    view.suspect = false;
                    view.unreachable = false;
                    if view.down {
                        view.down = false;
                        self.events.push_back(Event::ServerUp { address: view.address.clone() });
                    }
                    if was_unavailable {
                        self.evaluate_failover(now);
                        self.run_all_held(now);
                    }
                }
            }
            Probe::Info => {
                self.views[server.0].probe_pending_since = None;
                if let Some(text) = bulk_payload(frame) {
                    let info = ReplicationInfo::parse(text);
                    self.record_info(now, server, info);
                }
            }
            Probe::ReplicaOf => {
                let address = self.views[server.0].address.clone();
                let reply = String::from_utf8_lossy(frame.trim_ascii_end()).into_owned();
                self.events.push_back(Event::ReplicaOfAnswered { address, reply });
            }
        }
    }

    fn record_info(&mut self, now: Instant, server: ServerId, info: ReplicationInfo) {
        let view = &mut self.views[server.0];
        let changed = view.info.as_ref().is_none_or(|old| old.role != info.role || old.master != info.master);
        if changed {
            if let Some(role) = info.role {
                self.events.push_back(Event::RoleSeen {
                    address: view.address.clone(),
                    role,
                    master: info.master.as_ref().map(|(h, p)| format!("{h}:{p}")),
                });
            }
        }
        view.info = Some(info);
        view.info_at = Some(now);
        self.evaluate_failover(now);
    }

    fn detect_down(&mut self, now: Instant) {
        for index in 0..self.servers.len() {
            let view = &mut self.views[index];
            if !view.down && now >= view.down_deadline(self.config.down_after) {
                view.down = true;
                view.info = None;
                self.events.push_back(Event::ServerDown { address: view.address.clone() });
                self.close_backends_of(now, ServerId(index), false, "server is down");
                self.views[index].suspect = false;
            }
        }
    }

    /// Closes the connections to `server` (the probe too unless `keep_probe`); in-flight requests get errors.
    fn close_backends_of(&mut self, now: Instant, server: ServerId, keep_probe: bool, reason: &str) {
        let conns: Vec<ConnId> = self
            .conns
            .ids()
            .into_iter()
            .filter(|id| {
                matches!(self.conns.get(*id), Some(Conn::Backend(b))
                    if b.server == server && !(keep_probe && b.purpose == Purpose::Probe))
            })
            .collect();
        for conn in conns {
            self.close_and_fail(now, conn, reason);
        }
    }

    fn evaluate_failover(&mut self, now: Instant) {
        let decisions = self.failover.evaluate(&self.views, now);
        for decision in decisions {
            match decision {
                Decision::Adopt { master, reason } => {
                    let address = self.views[master.0].address.clone();
                    self.events.push_back(Event::MasterAdopted { address, reason });
                    self.run_all_held(now);
                }
                Decision::Lose { master, reason } => {
                    let address = self.views[master.0].address.clone();
                    self.events.push_back(Event::MasterLost { address, reason });
                    // The next choice waits for fresh INFO from every running server: ask for it now.
                    for index in 0..self.servers.len() {
                        if self.views[index].probe_pending_since.is_none() {
                            self.send_probe(now, ServerId(index));
                        }
                    }
                    // Requests in flight on the old master get errors now rather than hanging.
                    self.close_backends_of(now, master, true, "master lost");
                }
                Decision::Promote { candidate, reason } => {
                    let address = self.views[candidate.0].address.clone();
                    self.events.push_back(Event::PromotionStarted { address, reason });
                    self.send_replicaof(now, candidate, None);
                }
                Decision::Repoint { server, master } => self.send_replicaof(now, server, Some(master)),
            }
        }
    }

    /// Sends `REPLICAOF` (then `INFO`, so the answer is confirmed at once) on the server's probe connection.
    fn send_replicaof(&mut self, now: Instant, server: ServerId, master: Option<ServerId>) {
        use crate::backend::Probe;
        let Some(conn) = self.servers[server.0].probe else { return };
        let target = master.map(|m| self.views[m.0].address.clone());
        let request = match &target {
            Some(address) => Request::from_args(&[
                b"REPLICAOF".as_slice(),
                address.host.as_bytes(),
                address.port.to_string().as_bytes(),
            ]),
            None => Request::from_args(&[b"REPLICAOF".as_slice(), b"NO", b"ONE"]),
        };
        let Some(Conn::Backend(backend)) = self.conns.get_mut(conn) else { return };
        backend.waiters.push_back(Waiter::Probe(Probe::ReplicaOf));
        backend.waiters.push_back(Waiter::Probe(Probe::Info));
        self.views[server.0].probe_pending_since.get_or_insert(now);
        self.actions.push_back(Action::Send { conn, data: request.frame().clone() });
        self.actions.push_back(Action::Send { conn, data: Bytes::from_static(b"*1\r\n$4\r\nINFO\r\n") });
        let address = self.views[server.0].address.clone();
        self.events.push_back(Event::ReplicaOfSent { address, master: target });
    }

    fn run_all_held(&mut self, now: Instant) {
        if self.held_bytes == 0 {
            return;
        }
        let waiting: Vec<ConnId> = self.hold_deadlines.iter().map(|(_, c)| *c).collect();
        for conn in waiting {
            self.run_held(now, conn);
            self.update_reading(conn);
        }
    }

    fn expire_held(&mut self, now: Instant) {
        let mut expired = 0;
        while let Some(&(deadline, conn)) = self.hold_deadlines.front() {
            if deadline > now {
                break;
            }
            self.hold_deadlines.pop_front();
            let hold = self.config.hold;
            let error = resp::error_reply(&self.hold_error());
            if let Some(client) = self.client(conn) {
                client.hold_tracked = false;
            }
            while let Some(client) = self.client(conn) {
                let Some(front) = client.held.front() else { break };
                if front.since + hold > now {
                    // Its own deadline governs from here; the entry just popped belonged to an older front.
                    let next = front.since + hold;
                    client.hold_tracked = true;
                    let at = self.hold_deadlines.partition_point(|(d, _)| *d <= next);
                    self.hold_deadlines.insert(at, (next, conn));
                    break;
                }
                if let Some(expired_request) = client.held.pop_front() {
                    self.held_bytes -= expired_request.cost();
                }
                expired += 1;
                self.reply_local(conn, error.clone());
            }
            self.update_reading(conn);
        }
        if expired > 0 {
            self.events.push_back(Event::RequestsExpired { count: expired });
        }
    }
}

fn client_mut(conns: &mut ConnTable<Conn>, conn: ConnId) -> Option<&mut Client> {
    match conns.get_mut(conn) {
        Some(Conn::Client(client)) => Some(client),
        _ => None,
    }
}

/// The payload of a bulk string reply, if `frame` is one.
fn bulk_payload(frame: &[u8]) -> Option<&[u8]> {
    if frame.first() != Some(&b'$') && frame.first() != Some(&b'=') {
        return None;
    }
    let header_end = memchr::memchr(b'\n', frame)? + 1;
    frame.get(header_end..frame.len().checked_sub(2)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(engine: &mut Engine) -> Vec<Action> {
        std::iter::from_fn(|| engine.poll_action()).collect()
    }

    /// An engine whose one server answered its first probe as a master.
    fn engine_with_master(now: Instant) -> Engine {
        let config = Config::from_json(r#"{"servers": [{"host": "127.0.0.1", "port": 6379}]}"#).unwrap();
        let mut engine = Engine::new(config, now);
        engine.handle_timeout(now);
        let probe = drain(&mut engine)
            .into_iter()
            .find_map(|a| if let Action::Connect { conn, .. } = a { Some(conn) } else { None })
            .expect("the probe connection is opened at once");
        engine.handle_input(now, Input::Connected { conn: probe });
        let info = b"role:master\r\nrun_id:abc\r\n";
        let mut reply = BytesMut::from(&b"+PONG\r\n"[..]);
        reply.extend_from_slice(format!("${}\r\n", info.len()).as_bytes());
        reply.extend_from_slice(info);
        reply.extend_from_slice(b"\r\n");
        engine.handle_input(now, Input::Data { conn: probe, buf: &mut reply });
        assert!(engine.master().is_some());
        drain(&mut engine);
        engine
    }

    #[test]
    fn shutdown_closes_idle_clients_at_once_and_busy_ones_after_their_reply() {
        let now = Instant::now();
        let mut engine = engine_with_master(now);
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let idle = engine.accept(now, peer);
        let busy = engine.accept(now, peer);
        drain(&mut engine);
        let mut request = BytesMut::from(&b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"[..]);
        engine.handle_input(now, Input::Data { conn: busy, buf: &mut request });
        let shared = drain(&mut engine)
            .into_iter()
            .find_map(|a| if let Action::Connect { conn, .. } = a { Some(conn) } else { None })
            .expect("a shared connection is opened");

        engine.begin_shutdown(now);
        let actions = drain(&mut engine);
        assert!(actions.contains(&Action::Close { conn: idle }));
        assert!(!actions.contains(&Action::Close { conn: busy }), "a reply is still awaited");
        assert_eq!(engine.client_count(), 1);
        assert!(matches!(engine.accept(now, peer), late if engine.client_count() == 1 && late != busy));

        engine.handle_input(now, Input::Connected { conn: shared });
        let mut reply = BytesMut::from(&b"$1\r\nv\r\n"[..]);
        engine.handle_input(now, Input::Data { conn: shared, buf: &mut reply });
        let actions = drain(&mut engine);
        let sent = Action::Send { conn: busy, data: Bytes::from_static(b"$1\r\nv\r\n") };
        let closed = Action::Close { conn: busy };
        let position = |wanted: &Action| actions.iter().position(|a| a == wanted);
        assert!(position(&sent) < position(&closed) && position(&closed).is_some(), "{actions:?}");
        assert_eq!(engine.client_count(), 0);
    }
}
