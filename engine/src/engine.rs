//! The [`Engine`]: the coordinator that feeds each machine's outcomes to the others behind the sans-IO contract.
//!
//! It owns the machines and decides nothing itself beyond their order: a client's request goes `client` (split,
//! classify) -> `route` (which server) -> `pool` (which connection) -> `client` (a reply slot); a reply comes
//! back `pool` (whose) -> `client` (in order); probe replies go to `monitor`, and whatever changes a server's
//! standing goes to `failover`, whose decisions come back here to be carried out.

use crate::client::{Clients, HeldRequest, NextRequest};
use crate::command::CommandFlags;
use crate::config::{Config, ServerAddress};
use crate::conn::{ConnId, Lane};
use crate::contract::{Action, Input, Outbox, TimerReason};
use crate::cursor::{self, Issuer, ScanCall};
use crate::event::Event;
use crate::failover::{Decision, Failover};
use crate::fence::{FencePoll, ReadFloor};
use crate::monitor::{Monitor, ProbeOutcome};
use crate::pool::{Pool, Purpose, Waiter};
use crate::resp;
use crate::route::{Demand, Route, Router};
use crate::session::{Handling, Pin};
use crate::topology::{Role, ServerId};
use crate::wait::Waits;
use bytes::BytesMut;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// What a request routed with reads split must leave behind once it is sent.
struct SplitFacts {
    /// Its `SCAN`-family call, whose reply's cursor is remembered.
    scan: Option<ScanCall>,
    /// It may write: the client's reads stay on the master until it has replicated.
    fences: bool,
}

/// The sans-IO proxy. See the crate documentation for the call order.
pub struct Engine {
    clients: Clients,
    pool: Pool,
    monitor: Monitor,
    failover: Failover,
    router: Router,
    waits: Waits,
    fence_poll: FencePoll,
    /// Bumped whenever the routed master or its replication history (`master_replid`) changes: a write
    /// acknowledged in an earlier epoch may have been lost (a demoted master resyncs and drops what it had).
    master_epoch: u64,
    /// The routed master, with its `master_replid` as its last `INFO` said.
    master_history: Option<(ServerId, Option<String>)>,
    out: Outbox,
    shutdown_grace: Duration,
    /// When the shutdown grace ends ([`Engine::begin_shutdown`] was called).
    shutdown_deadline: Option<Instant>,
}

impl Engine {
    /// An engine for `config`; it starts probing the servers at the first [`Engine::handle_timeout`].
    pub fn new(config: Config, now: Instant) -> Engine {
        Engine {
            clients: Clients::new(&config),
            pool: Pool::new(&config.servers, config.pool_size, config.limits),
            monitor: Monitor::new(&config, now),
            failover: Failover::new(config.servers.len(), now, config.down_after, config.check_period),
            router: Router::new(&config),
            waits: Waits::default(),
            fence_poll: FencePoll::default(),
            master_epoch: 0,
            master_history: None,
            out: Outbox::default(),
            shutdown_grace: config.shutdown_grace,
            shutdown_deadline: None,
        }
    }

    /// The master writes go to now, if any.
    pub fn master(&self) -> Option<&ServerAddress> {
        self.failover.master().map(|m| self.monitor.address(m))
    }

    /// Number of client connections open.
    pub fn client_count(&self) -> usize {
        self.clients.count()
    }

    /// The next thing the runtime must do, until None.
    #[must_use]
    pub fn poll_action(&mut self) -> Option<Action> {
        self.out.actions.pop_front()
    }

    /// The next event to log or count, until None.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.out.events.pop_front()
    }

    /// When the engine next needs [`Engine::handle_timeout`], and why; None when nothing is pending.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<(Instant, TimerReason)> {
        [
            Some(self.monitor.deadline()),
            self.failover.deadline().map(|at| (at, TimerReason::FailoverDeadline)),
            self.clients.hold_deadline().map(|at| (at, TimerReason::HoldExpiry)),
            self.waits.deadline().map(|at| (at, TimerReason::Wait)),
            self.fence_poll.deadline().map(|at| (at, TimerReason::ReadFence)),
            self.shutdown_deadline.map(|at| (at, TimerReason::ShutdownGrace)),
        ]
        .into_iter()
        .flatten()
        .min_by_key(|(at, _)| *at)
    }

    /// A client connected from `peer`; returns the id its events and actions carry.
    pub fn accept(&mut self, now: Instant, peer: SocketAddr) -> ConnId {
        let _ = now;
        let conn = self.clients.accept(peer, self.shutdown_deadline.is_some(), &mut self.out);
        self.release_departed();
        conn
    }

    /// Begins a graceful shutdown: no client is read any more, requests still held get an error, and each client
    /// is closed ([`Action::Close`]) as soon as every reply it awaits has been sent; clients still waiting when
    /// `shutdown_grace` has passed (a `BLPOP 0`) are closed then. New clients are turned away. The shutdown is
    /// complete when [`Engine::client_count`] is 0.
    pub fn begin_shutdown(&mut self, now: Instant) {
        self.shutdown_deadline = Some(now + self.shutdown_grace);
        self.clients.begin_shutdown(&mut self.out);
        self.release_departed();
    }

    /// Hands the engine something that happened on a connection.
    pub fn handle_input(&mut self, now: Instant, input: Input<'_>) {
        match input {
            Input::Data { conn, buf } => match conn.lane() {
                Lane::Client => self.client_data(now, conn, buf),
                Lane::Backend => {
                    self.backend_data(now, conn, buf);
                    self.after_replies(now);
                }
            },
            other => {
                self.connection_changed(now, other);
                self.after_replies(now);
            }
        }
        self.release_departed();
    }

    /// Everything but data: kept out of line so that the data path stays small.
    #[cold]
    #[inline(never)]
    fn connection_changed(&mut self, now: Instant, input: Input<'_>) {
        match input {
            Input::Data { .. } => {}
            Input::Connected { conn } => {
                self.pool.connected(conn);
                self.monitor.knock_accepted(now, conn, &mut self.pool, &mut self.out);
            }
            Input::ConnectFailed { conn, reason } => {
                self.backend_lost(now, conn, &format!("connect failed: {reason}"), false)
            }
            Input::Refused { conn } => self.backend_lost(now, conn, "connection refused", true),
            Input::Closed { conn } => match conn.lane() {
                Lane::Client => self.clients.remove(conn, false, &mut self.out),
                Lane::Backend => self.backend_lost(now, conn, "closed by the server", false),
            },
            Input::WriteBlocked { conn } => self.clients.set_write_blocked(conn, true, &mut self.out),
            Input::Drained { conn } => self.clients.set_write_blocked(conn, false, &mut self.out),
        }
    }

    /// Lets the engine act on time: probes, down detection, failover deadlines, held requests that expire, the end
    /// of the shutdown grace.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.monitor.tick(now, &mut self.pool, &mut self.out);
        for server in self.monitor.detect_down(now, &mut self.pool, &mut self.out) {
            self.close_backends_of(now, server, false, "server is down");
        }
        self.evaluate_failover(now);
        let waits_due = self.waits.poll_due(now);
        if self.fence_poll.poll_due(now, self.monitor.views(), self.failover.master()) || waits_due {
            self.request_offsets(now);
        }
        self.settle_waits(now);
        self.clients.expire_held(now, self.failover.master().is_some(), &mut self.out);
        if self.shutdown_deadline.is_some_and(|at| now >= at) {
            self.clients.close_all(&mut self.out);
        }
        self.after_replies(now);
        self.release_departed();
    }

    // ------------------------------------------------------------------ requests

    // Inlined by hand, with `deliver`: the request and reply paths are the hot path, and the call overhead of the
    // split into machines cost about 20 instructions per round trip (bench/instructions.sh).
    #[inline(always)]
    fn client_data(&mut self, now: Instant, conn: ConnId, buf: &mut BytesMut) {
        while let NextRequest::Request(held) = self.clients.next_request(now, conn, buf, &mut self.out) {
            if self.clients.has_held(conn) || !self.execute(now, conn, &held) {
                self.clients.hold(conn, held, self.failover.master().is_some(), &mut self.out);
            }
        }
        self.clients.update_reading(conn, &mut self.out);
    }

    /// Runs a classified request now (true), or leaves it to the caller to hold (false) when it must wait: no
    /// master, or an order barrier.
    fn execute(&mut self, now: Instant, conn: ConnId, held: &HeldRequest) -> bool {
        let pin = match &held.handling {
            Handling::Local(reply) => {
                self.clients.reply_local(conn, reply.clone(), &mut self.out);
                return true;
            }
            Handling::LocalThenClose(reply) => {
                self.clients.reply_local(conn, reply.clone(), &mut self.out);
                self.clients.close_after_replies(conn, &mut self.out);
                return true;
            }
            Handling::Refuse(message) => {
                self.clients.reply_local(conn, resp::error_reply(message), &mut self.out);
                return true;
            }
            Handling::AbortExec => {
                // The server still queues the transaction: drop it there, and fail EXEC as Redis would.
                if let Some(private) = self.clients.forward_state(conn).and_then(|state| state.private) {
                    self.pool.send(private, &[Waiter::Ignore], discard_request(), &mut self.out);
                }
                let abort = "EXECABORT Transaction discarded because of previous errors.";
                self.clients.reply_local(conn, resp::error_reply(abort), &mut self.out);
                return true;
            }
            Handling::OutOfBand => {
                // Its own connection to the master, so that it never waits behind the script it must stop.
                let Some(master) = self.failover.master() else { return false };
                let Some(seq) = self.clients.reserve_slot(conn) else { return true };
                let backend = self.pool.open(master, Purpose::OutOfBand { owner: conn }, &mut self.out);
                let waiter = Waiter::Client { conn, seq };
                self.pool.send(backend, &[waiter], held.request.frame().clone(), &mut self.out);
                return true;
            }
            Handling::Wait { replicas, timeout } => return self.start_wait(now, conn, *replicas, *timeout),
            Handling::Forward(pin) => *pin,
        };
        // A client that is gone needs nothing more.
        let Some(state) = self.clients.forward_state(conn) else { return true };
        let wants_private = pin > Pin::Shared || state.private.is_some();
        let master = self.failover.master();
        let (server, split) = if self.router.splits_reads() {
            match self.route_split(now, conn, held, wants_private, master) {
                Ok(routed) => routed,
                Err(ran) => return ran,
            }
        } else {
            let Some(server) = self.router.route_to_master(self.monitor.views(), master) else { return false };
            (server, None)
        };
        let backend = match (wants_private, state.private) {
            (true, Some(existing)) => existing,
            // Order barrier: the private connection must not overtake requests still in flight elsewhere.
            (true, None) if state.in_flight > 0 => return false,
            (true, None) => {
                // A replication stream is passed on raw, from its first byte: no HELLO reply may precede it.
                let resp3 = held.resp3 && pin != Pin::Replication;
                let backend = self.pool.acquire_private(server, conn, resp3, &mut self.out);
                self.clients.set_private(conn, backend);
                backend
            }
            (false, _) => self.pool.shared(server, state.shared_slot, held.resp3, &mut self.out),
        };
        let read_only = held.spec.is_some_and(|s| s.flags.contains(CommandFlags::READONLY));
        let write_epoch = (Some(server) == master && !read_only).then_some(self.master_epoch);
        let Ok(waiter) = self.clients.start_request(conn, backend, pin, write_epoch) else { return false };
        if let (Some(split), Some(Waiter::Client { seq, .. })) = (split, waiter) {
            self.split_sent(conn, seq, split, server);
        }
        if pin == Pin::Replication {
            self.pool.set_raw(backend);
        }
        self.pool.send(backend, waiter.as_slice(), held.request.frame().clone(), &mut self.out);
        true
    }

    /// Routes a request where reads are split (`readsToSlaves`): the client's `SCAN` cursors and, with
    /// `read_your_writes`, its writes bend the choice. Returns the server and what must be remembered once the
    /// request is sent, or what [`Engine::execute`] returns when it is not sent (held: false; answered here with
    /// an error: true). Out of line, so that the `allToMaster` path stays short.
    #[inline(never)]
    fn route_split(
        &mut self,
        now: Instant,
        conn: ConnId,
        held: &HeldRequest,
        private: bool,
        master: Option<ServerId>,
    ) -> Result<(ServerId, Option<SplitFacts>), bool> {
        let replica_read = self.router.replica_read(held.spec, private);
        let floor = if replica_read && self.router.read_your_writes() {
            let master_offset = master.and_then(|m| {
                let view = &self.monitor.views()[m.0];
                // Read from a server that still said it was the master (as `WAIT` requires).
                let reading = view.offset_seen.as_ref().filter(|(_, info)| info.role == Some(Role::Master));
                reading.map(|(_, info)| (view.offset_serial, info.repl_offset))
            });
            self.clients.read_floor(conn, master_offset)
        } else {
            ReadFloor::Any
        };
        let scan = cursor::scan_call(&held.request);
        let issuer = match &scan {
            Some(call) => self.clients.cursor_issuer(conn, call),
            None => Issuer::Anyone,
        };
        let demand = Demand { replica_read, issuer, floor };
        let server = match self.router.route(now, demand, self.monitor.views(), master) {
            Route::Server(server) => server,
            Route::Wait => return Err(false),
            Route::Refuse(refusal) => {
                let message = refusal.message(self.monitor.views());
                self.clients.reply_local(conn, resp::error_reply(&message), &mut self.out);
                return Err(true);
            }
        };
        let fences = !replica_read && self.router.fences(held.spec, private);
        Ok((server, Some(SplitFacts { scan, fences })))
    }

    /// A request routed with reads split went to `server` with reply slot `seq`: its cursor and its write are
    /// remembered for the client.
    #[inline(never)]
    fn split_sent(&mut self, conn: ConnId, seq: u64, split: SplitFacts, server: ServerId) {
        if let Some(call) = &split.scan {
            self.clients.scan_sent(conn, seq, call, server);
        }
        if split.fences {
            self.clients.write_sent(conn, seq);
        }
    }

    /// Asks every server for its replication offset (for `WAIT` and read fences).
    fn request_offsets(&mut self, now: Instant) {
        for index in 0..self.monitor.views().len() {
            self.monitor.request_offset(now, ServerId(index), &mut self.pool, &mut self.out);
        }
        self.clients.set_next_offset_serial(self.monitor.next_offset_serial());
    }

    /// Starts a `WAIT` once every earlier request of the client is answered (false: hold it until then).
    fn start_wait(&mut self, now: Instant, conn: ConnId, replicas: u64, timeout: Option<Duration>) -> bool {
        let Some(state) = self.clients.forward_state(conn) else { return true };
        if state.in_flight > 0 || self.failover.master().is_none() {
            return false;
        }
        let Some(seq) = self.clients.reserve_slot(conn) else { return true };
        // Writes acknowledged by an earlier master may have been lost with it: no replica can vouch for them.
        let void = self.clients.take_unconfirmed_writes(conn).is_some_and(|epoch| epoch < self.master_epoch);
        self.waits.add(now, conn, seq, replicas, timeout, void, self.master_epoch);
        self.request_offsets(now);
        true
    }

    /// Answers the `WAIT`s that are done.
    fn settle_waits(&mut self, now: Instant) {
        let clients = &self.clients;
        let (views, master, epoch) = (self.monitor.views(), self.failover.master(), self.master_epoch);
        let done = self.waits.settle(now, views, master, epoch, |c| clients.contains(c));
        for wait in done {
            self.deliver(now, wait.client, wait.seq, wait.reply);
        }
    }

    fn run_held(&mut self, now: Instant, conn: ConnId) {
        while let Some(held) = self.clients.pop_held(conn) {
            if !self.execute(now, conn, &held) {
                self.clients.unpop_held(conn, held);
                return;
            }
        }
    }

    fn run_all_held(&mut self, now: Instant) {
        if !self.clients.any_held() {
            return;
        }
        for conn in self.clients.holding() {
            self.run_held(now, conn);
            self.clients.update_reading(conn, &mut self.out);
        }
    }

    /// Fills a client's reply slot; if replies went out, releases a private connection its state no longer
    /// needs, runs held requests, resumes reading and finishes a pending close.
    #[inline(always)]
    fn deliver(&mut self, now: Instant, conn: ConnId, seq: u64, reply: bytes::Bytes) {
        if !self.clients.deliver(conn, seq, reply, &mut self.out) {
            return;
        }
        if let Some(private) = self.clients.settle(conn) {
            self.pool.release_private(private, false, &mut self.out);
        }
        if self.clients.needs_attention(conn) {
            self.run_held(now, conn);
            self.clients.update_reading(conn, &mut self.out);
            self.clients.close_if_done(conn, &mut self.out);
        }
    }

    /// Replies that answered fenced clients' writes need the offsets that prove where the writes have
    /// replicated: asked for once per input that can carry replies (not per reply), at its end.
    fn after_replies(&mut self, now: Instant) {
        if self.clients.take_write_answered() {
            self.fence_write_answered(now);
        }
    }

    /// Out of line: it only happens with `read_your_writes`.
    #[inline(never)]
    fn fence_write_answered(&mut self, now: Instant) {
        self.fence_poll.demand(now, self.monitor.next_offset_serial());
        if self.fence_poll.poll_due(now, self.monitor.views(), self.failover.master()) {
            self.request_offsets(now);
        }
    }

    /// Hands the pool the private connections of clients that left.
    fn release_departed(&mut self) {
        for departed in self.clients.take_departed() {
            self.pool.release_private(departed.private, departed.passthrough, &mut self.out);
        }
    }

    // ------------------------------------------------------------------ backends

    fn backend_data(&mut self, now: Instant, conn: ConnId, buf: &mut BytesMut) {
        loop {
            let (frame, owner) = match self.pool.next_reply(conn, buf) {
                Ok(Some(reply)) => reply,
                Ok(None) => return,
                Err(error) => {
                    buf.clear();
                    self.close_and_fail(now, conn, &format!("bad reply: {error}"));
                    return;
                }
            };
            if let Some(owner) = owner {
                if self.pool.skip_ignored(conn) {
                    continue;
                }
                if frame.first() == Some(&b'>') || self.clients.is_passthrough(owner) {
                    self.clients.push(owner, frame, &mut self.out);
                    continue;
                }
            } else if frame.first() == Some(&b'>') {
                // A push on a shared RESP3 connection answers no request (none of its clients subscribed to
                // anything, as that pins): matching it to one would put the connection out of step.
                continue;
            }
            match self.pool.pop_waiter(conn, &mut self.out) {
                Some(Waiter::Client { conn: client, seq }) => self.deliver(now, client, seq, frame),
                Some(Waiter::Reset) => self.pool.reset_done(conn, &frame, self.failover.master(), &mut self.out),
                Some(Waiter::Ignore) => {}
                Some(Waiter::Probe(probe)) => {
                    let Some(server) = self.pool.server_of(conn) else { continue };
                    match self.monitor.probe_reply(now, server, probe, &frame, &mut self.out) {
                        ProbeOutcome::Nothing => {}
                        ProbeOutcome::Recovered | ProbeOutcome::Facts => {
                            self.evaluate_failover(now);
                            self.run_all_held(now);
                            self.settle_waits(now);
                        }
                        ProbeOutcome::Offset => {
                            self.settle_waits(now);
                            // While fences wait, the next poll goes out as soon as one is due.
                            if self.fence_poll.poll_due(now, self.monitor.views(), self.failover.master()) {
                                self.request_offsets(now);
                            }
                        }
                    }
                }
                None => {
                    // A reply nobody asked for: the connection is out of step and cannot be trusted.
                    self.close_and_fail(now, conn, "unexpected reply");
                    buf.clear();
                    return;
                }
            }
        }
    }

    /// Closes the connections to `server` (the probe too unless `keep_probe`); in-flight requests get errors.
    fn close_backends_of(&mut self, now: Instant, server: ServerId, keep_probe: bool, reason: &str) {
        for conn in self.pool.conns_of(server, keep_probe) {
            self.close_and_fail(now, conn, reason);
        }
    }

    /// Closes a backend connection the engine gives up on and fails its requests (see [`Engine::backend_lost`]).
    /// Failing requests can close other connections, so a connection already gone is skipped.
    fn close_and_fail(&mut self, now: Instant, conn: ConnId, reason: &str) {
        if self.pool.contains(conn) {
            self.out.close(conn);
            self.backend_lost(now, conn, reason, false);
        }
    }

    /// A backend connection failed, was `refused`, broke or was closed by the engine: every request in flight on it
    /// gets an error (a write may or may not have run: never retried), a private connection's client is closed
    /// because the state it built is gone, and the monitor weighs the evidence.
    fn backend_lost(&mut self, now: Instant, conn: ConnId, reason: &str, refused: bool) {
        let Some(lost) = self.pool.remove(conn) else { return };
        // The owner loses its private connection before any error is delivered: delivering runs the owner's held
        // requests, which must not be sent on (or wait forever for) this connection.
        let orphaned = match lost.purpose {
            Purpose::Private { owner: Some(owner) } if self.clients.private_lost(owner, conn) => Some(owner),
            _ => None,
        };
        let address = self.monitor.address(lost.server).clone();
        let message = if lost.connected {
            format!("ERR redis-proxy lost the connection to {address} ({reason}); the command may or may not have run")
        } else {
            format!("ERR redis-proxy could not reach {address} ({reason}); the command was not sent")
        };
        let error = resp::error_reply(&message);
        let mut failed = 0;
        for waiter in &lost.waiters {
            if let Waiter::Client { conn: client, seq } = *waiter {
                failed += 1;
                self.deliver(now, client, seq, error.clone());
            }
        }
        self.out.event(Event::BackendLost { address, reason: reason.to_string(), failed_requests: failed });
        let went_down = refused && self.monitor.refused(lost.server, &mut self.out);
        if went_down {
            self.close_backends_of(now, lost.server, false, "server is down");
        }
        if refused {
            self.monitor.knock_refused(lost.server, conn);
        } else if !lost.connected {
            self.monitor.connect_failed(lost.server, conn);
        }
        match lost.purpose {
            Purpose::Knock => {}
            Purpose::Probe => self.monitor.probe_lost(now, lost.server, &mut self.pool, &mut self.out),
            // A connection that never opened, or one lost with requests on it, may mean a dead server. An idle
            // connection closed by the server (its `timeout` setting) is just reopened when needed.
            _ if !lost.connected || failed > 0 => {
                self.monitor.data_conn_lost(now, lost.server, &mut self.pool, &mut self.out)
            }
            _ => {}
        }
        if went_down || matches!(lost.purpose, Purpose::Probe | Purpose::Knock) {
            // A server gone or unreachable may be what a choice among several masters was waiting for.
            self.evaluate_failover(now);
        }
        if let Some(owner) = orphaned {
            self.clients.close_if_done(owner, &mut self.out);
        }
    }

    // ------------------------------------------------------------------ failover

    fn evaluate_failover(&mut self, now: Instant) {
        for decision in self.failover.evaluate(self.monitor.views(), now) {
            match decision {
                Decision::Adopt { master, reason } => {
                    let address = self.monitor.address(master).clone();
                    self.out.event(Event::MasterAdopted { address, reason });
                    // Held writes go to the new master in its own epoch.
                    self.follow_master_history();
                    self.run_all_held(now);
                }
                Decision::Lose { master, reason } => {
                    let address = self.monitor.address(master).clone();
                    self.out.event(Event::MasterLost { address, reason });
                    // The next choice waits for fresh INFO from every running server: ask for it now.
                    self.monitor.probe_idle_servers(now, &mut self.pool, &mut self.out);
                    // Requests in flight on the old master get errors now rather than hanging.
                    self.close_backends_of(now, master, true, "master lost");
                }
                Decision::Promote { candidate, reason } => {
                    let address = self.monitor.address(candidate).clone();
                    self.out.event(Event::PromotionStarted { address, reason });
                    self.monitor.send_replicaof(now, candidate, None, &mut self.pool, &mut self.out);
                }
                Decision::Repoint { server, master } => {
                    self.monitor.send_replicaof(now, server, Some(master), &mut self.pool, &mut self.out)
                }
            }
        }
        self.follow_master_history();
    }

    /// Starts a new master epoch when the routed master, or the history it serves, changed.
    fn follow_master_history(&mut self) {
        let views = self.monitor.views();
        let replid = |m: ServerId| views[m.0].info.as_ref().and_then(|i| i.replid.as_deref());
        let current = self.failover.master().map(|m| (m, replid(m)));
        let known = self.master_history.as_ref().map(|(m, h)| (*m, h.as_deref()));
        if current != known {
            self.master_history = current.map(|(m, h)| (m, h.map(str::to_string)));
            self.master_epoch += 1;
        }
    }
}

/// `DISCARD`, as a request frame.
fn discard_request() -> bytes::Bytes {
    bytes::Bytes::from_static(b"*1\r\n$7\r\nDISCARD\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{config, connects, sent_on, Driver};
    use bytes::Bytes;

    #[test]
    fn shutdown_closes_idle_clients_at_once_and_busy_ones_after_their_reply() {
        let mut kit = Driver::with_master(config(1));
        let idle = kit.accept();
        let busy = kit.accept();
        kit.drain();
        kit.feed(busy, b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
        let [(shared, _)] = connects(&kit.drain())[..] else { panic!("one shared connection is opened") };

        let now = kit.clock.now();
        kit.engine.begin_shutdown(now);
        let actions = kit.drain();
        assert!(actions.contains(&Action::Close { conn: idle }));
        assert!(!actions.contains(&Action::Close { conn: busy }), "a reply is still awaited");
        assert_eq!(kit.engine.client_count(), 1);
        assert!(matches!(kit.accept(), late if kit.engine.client_count() == 1 && late != busy));

        kit.connected(shared);
        kit.feed(shared, b"$1\r\nv\r\n");
        let actions = kit.drain();
        let sent = Action::Send { conn: busy, data: Bytes::from_static(b"$1\r\nv\r\n") };
        let closed = Action::Close { conn: busy };
        let position = |wanted: &Action| actions.iter().position(|a| a == wanted);
        assert!(position(&sent) < position(&closed) && position(&closed).is_some(), "{actions:?}");
        assert_eq!(kit.engine.client_count(), 0);
    }

    #[test]
    fn resp3_clients_share_a_connection_opened_with_hello_3_whose_reply_and_pushes_nobody_gets() {
        let mut kit = Driver::with_master(config(1));
        let (resp3, resp2) = (kit.accept(), kit.accept());
        kit.drain();
        kit.feed(resp3, b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
        let actions = kit.drain();
        let [(shared, _)] = connects(&actions)[..] else { panic!("one RESP3 shared connection: {actions:?}") };
        let hello = b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n";
        let expected = [&hello[..], hello, b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"].concat();
        assert_eq!(sent_on(&actions, shared), expected, "the proxy's HELLO 3 first, then the client's");
        kit.feed(resp2, b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
        assert_eq!(connects(&kit.drain()).len(), 1, "a RESP2 client gets a connection of the other protocol");

        kit.connected(shared);
        let map = b"%1\r\n+proto\r\n:3\r\n";
        kit.feed(shared, &[&map[..], map, b">2\r\n+stray\r\n+push\r\n$1\r\nv\r\n"].concat());
        let actions = kit.drain();
        assert_eq!(sent_on(&actions, resp3), [&map[..], b"$1\r\nv\r\n"].concat(), "{actions:?}");
    }
}
