//! The [`Engine`]: the coordinator that feeds each machine's outcomes to the others behind the sans-IO contract.
//!
//! It owns the machines and decides nothing itself beyond their order: a client's request goes `client` (split,
//! classify) -> `route` (which server) -> `pool` (which connection) -> `client` (a reply slot); a reply comes
//! back `pool` (whose) -> `client` (in order); probe replies go to `monitor`, and whatever changes a server's
//! standing goes to `failover`, whose decisions come back here to be carried out.

use crate::admin::{self, AdminCommand};
use crate::auth;
use crate::client::{Clients, HeldRequest, NextRequest, LARGE_VALUE};
use crate::command::CommandFlags;
use crate::config::{Config, ServerAddress};
use crate::conn::{ConnId, Lane};
use crate::contract::{Action, Input, Outbox, TimerReason};
use crate::cursor::{self, Issuer, ScanCall};
use crate::event::Event;
use crate::failover::{Decision, Failover};
use crate::failure;
use crate::fence::{FencePoll, ReadFloor};
use crate::monitor::{Monitor, ProbeOutcome, ReplicaOf};
use crate::offset_poll::PollSchedule;
use crate::pool::{Pool, Purpose, Waiter};
use crate::resp;
use crate::route::{Demand, Route, Router};
use crate::sentinel::{self, SentinelQuery, Sentinels, Verdict};
use crate::session::{Handling, Pin};
use crate::status::{Class, Gathered, History, ServerStatus, StatusSnapshot, Target, LATENCY_SAMPLE};
use crate::stream::{Piece, Streams};
use crate::topology::{addresses_match, Role, ServerId, ServerView};
use crate::trend::Trend;
use crate::upload::{UploadPiece, Uploads};
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

/// How a backend connection was lost: the evidence it is, if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Loss {
    /// The connect was refused: nothing listens there.
    Refused,
    /// The connect failed otherwise (timed out, host unreachable).
    ConnectFailed,
    /// The server (or the network) closed it.
    Closed,
    /// The engine closed it (the server is down or lost as master, a bad reply): no evidence.
    GaveUp,
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
    /// Large replies being forwarded as they arrive.
    streams: Streams,
    /// Large requests being forwarded piece by piece as they arrive.
    uploads: Uploads,
    /// Bumped whenever the routed master or its replication history (`master_replid`) changes: a write
    /// acknowledged in an earlier epoch may have been lost (a demoted master resyncs and drops what it had).
    master_epoch: u64,
    /// The routed master, with its `master_replid` as its last `INFO` said.
    master_history: Option<(ServerId, Option<String>)>,
    out: Outbox,
    shutdown_grace: Duration,
    /// When the shutdown grace ends ([`Engine::begin_shutdown`] was called).
    shutdown_deadline: Option<Instant>,
    /// Failovers so far, for the status snapshot.
    history: History,
    /// Since when writes go to the routed master.
    master_since: Option<Instant>,
    /// Clients that came in on the admin listener (the only ones allowed `PROXY` commands).
    admins: Vec<ConnId>,
    /// Servers being removed, forgotten once their requests in flight are answered.
    removing: Vec<ServerId>,
    /// The planned switchover under way.
    switchover: Option<Switchover>,
    /// The configuration in force (the last one [`Engine::reconfigure`] accepted).
    config: Config,
    /// How long a planned switchover may hold writes before it is aborted (half of `hold_ms`, so that held
    /// requests never expire because of one).
    switchover_bound: Duration,
    /// Sentinel mode: the sentinels decide the master (the failover rules are not applied).
    sentinels: Option<Sentinels>,
    /// Samples of the last minutes, for the status page's charts.
    trend: Trend,
}

/// A planned switchover (`PROXY FAILOVER`) under way; the failover machine holds its phase.
struct Switchover {
    /// The admin client's reply slot, filled when it ends.
    admin: (ConnId, u64),
    target: ServerId,
    started: Instant,
    /// When the master had no request of a client in flight any more: offsets read after it count.
    drained_at: Option<Instant>,
    /// When to ask for the offsets again.
    poll: PollSchedule,
}

/// How often a planned switchover asks the master and its target for their offsets.
const SWITCHOVER_POLL: Duration = Duration::from_millis(10);

impl Engine {
    /// An engine for `config`; it starts probing the servers at the first [`Engine::handle_timeout`].
    pub fn new(config: Config, now: Instant) -> Engine {
        let mut engine = Engine {
            clients: Clients::new(&config),
            pool: Pool::new(&config.servers, config.pool_size + config.large_pool_size, config.limits, |address| {
                config.server_credentials(address).and_then(auth::auth_request)
            }),
            monitor: Monitor::new(&config, now),
            failover: Failover::new(config.servers.len(), now, config.down_after, config.check_period),
            router: Router::new(&config),
            waits: Waits::default(),
            fence_poll: FencePoll::default(),
            streams: Streams::default(),
            uploads: Uploads::default(),
            master_epoch: 0,
            master_history: None,
            out: Outbox::default(),
            shutdown_grace: config.shutdown_grace,
            shutdown_deadline: None,
            history: History::default(),
            master_since: None,
            admins: Vec::new(),
            removing: Vec::new(),
            switchover: None,
            switchover_bound: config.hold / 2,
            sentinels: config.sentinel.as_ref().map(|s| Sentinels::new(s, config.check_period, now)),
            trend: Trend::default(),
            config,
        };
        if engine.sentinels.is_some() {
            // Reads reach a replica only once the sentinels list it as healthy.
            for index in 0..engine.monitor.views().len() {
                engine.monitor.set_reads_vetoed(ServerId(index), true);
            }
        }
        engine
    }

    /// Applies a re-read configuration while clients stay connected: servers added and removed (as `PROXY ADD`
    /// and `PROXY REMOVE`), `mode`, the client limits, `hold_ms`, `replica_max_lag`, `allow_topology_commands`.
    /// Refused, with nothing changed, when `new` changes a field that cannot change live (see
    /// [`Config::unchangeable_difference`]) or would remove the master. Returns what changed, for the log.
    pub fn reconfigure(&mut self, now: Instant, new: Config) -> Result<Vec<String>, String> {
        if let Some(field) = self.config.unchangeable_difference(&new) {
            return Err(format!("`{field}` cannot change while the proxy runs (restart it to change it)"));
        }
        let current = self.servers();
        // In Sentinel mode the servers are the ones the sentinels name: the configured list is only a first view.
        let following = self.sentinels.is_some();
        let removed: Vec<ServerAddress> =
            current.iter().filter(|s| !following && !new.servers.contains(s)).cloned().collect();
        let added: Vec<ServerAddress> =
            new.servers.iter().filter(|s| !following && !current.contains(s)).cloned().collect();
        if let Some(master) =
            removed.iter().find(|s| self.monitor.find(s).is_some_and(|id| self.failover.is_involved(id)))
        {
            return Err(format!("it removes {master}, the master: fail over first (PROXY FAILOVER)"));
        }
        if let Some(draining) = added.iter().find(|s| self.monitor.find(s).is_some()) {
            return Err(format!("it adds {draining}, which is still being removed: reload again in a moment"));
        }
        let mut changes = Vec::new();
        for address in removed {
            self.remove_server(now, &address)?;
            changes.push(format!("removing server {address}"));
        }
        for address in added {
            self.add_server(now, address.clone())?;
            changes.push(format!("added server {address}"));
        }
        if new.mode != self.config.mode {
            changes.push(format!("mode {:?} -> {:?}", self.config.mode, new.mode));
        }
        if new.server_auth != self.config.server_auth || new.server_auth_overrides != self.config.server_auth_overrides
        {
            // New connections log in with the new credentials; open ones stay logged in as they are.
            for (index, view) in self.monitor.views().iter().enumerate() {
                self.pool.set_auth(ServerId(index), new.server_credentials(&view.address).and_then(auth::auth_request));
            }
            changes.push("server credentials (for new connections)".to_string());
        }
        if new.client_users != self.config.client_users {
            changes.push("client users (for new logins)".to_string());
        }
        self.clients.set_limits(&new);
        self.router = Router::new(&new);
        self.switchover_bound = new.hold / 2;
        self.config = new;
        Ok(changes)
    }

    /// A client connected from `peer` on the admin listener: as [`Engine::accept`], and it may send `PROXY`
    /// commands (every other client gets an error for them).
    pub fn accept_admin(&mut self, now: Instant, peer: SocketAddr) -> ConnId {
        let conn = self.accept(now, peer);
        let clients = &self.clients;
        self.admins.retain(|admin| clients.contains(*admin));
        if self.clients.contains(conn) {
            self.admins.push(conn);
        }
        conn
    }

    /// What an operator may want to know now: servers, master, failovers, clients, held requests, counters.
    /// Builds a fresh snapshot (allocates): call it when asked (a status page, a scrape), not on every turn.
    pub fn status(&self, now: Instant) -> StatusSnapshot {
        let master = self.failover.master();
        let views = self.monitor.views();
        let master_offset = master.and_then(|m| views[m.0].info.as_ref()).map(|i| i.repl_offset);
        let servers = views
            .iter()
            .enumerate()
            .map(|(index, view)| {
                let info = view.info.as_ref();
                let replica = info.is_some_and(|i| i.role == Some(Role::Replica));
                let replica_info = info.filter(|_| replica);
                ServerStatus {
                    address: view.address.clone(),
                    role: info.and_then(|i| i.role),
                    routed_master: master == Some(ServerId(index)),
                    health: view.health,
                    why: if view.auth_refused {
                        "it refuses the proxy's credentials (WRONGPASS or NOAUTH): see server_auth"
                    } else {
                        view.why
                    },
                    repl_offset: info.map(|i| i.repl_offset),
                    lag_bytes: master_offset
                        .zip(info.filter(|_| replica))
                        .map(|(m, i)| m.saturating_sub(i.repl_offset).max(0)),
                    // Redis says -1 while the link is down or syncing: no lag to show then.
                    lag_seconds: replica_info
                        .filter(|i| i.link_up && !i.sync_in_progress)
                        .and_then(|i| i.last_io_secs)
                        .filter(|s| *s >= 0),
                    link_up: replica_info.map(|i| i.link_up),
                    replication: replica_info.map(|i| {
                        let lagging = i.last_io_secs.is_some_and(|s| {
                            s < 0 || Duration::from_secs(s.unsigned_abs()) > self.config.replica_max_lag
                        });
                        if i.sync_in_progress || (!i.link_up && i.never_synced) {
                            "syncing"
                        } else if !i.link_up {
                            "link down"
                        } else if lagging {
                            "lagging"
                        } else {
                            "in sync"
                        }
                    }),
                    no_reads_because: self.router.why_no_reads(now, views, master, ServerId(index)),
                    obstacle: view.obstacle.as_ref().map(|o| o.brief().to_string()),
                    last_ok_ago: view.last_ok.map(|ok| now.saturating_duration_since(ok)),
                    connections: self.pool.counts_of(ServerId(index)),
                }
            })
            .collect();
        let no_master_reason = match master {
            Some(m) if views[m.0].is_routable() => None,
            Some(m) => {
                Some(format!("master {} is {}: {}", views[m.0].address, views[m.0].health.name(), views[m.0].why))
            }
            None if self.sentinels.is_some() => Some(
                "no master: waiting for a majority of the sentinels to name one that its own INFO confirms".to_string(),
            ),
            None => Some(self.failover.why_no_master().to_string()),
        };
        let gathered = Gathered {
            servers,
            master: master.map(|m| views[m.0].address.clone()),
            master_since: self.master_since.filter(|_| master.is_some()).map(|at| now.saturating_duration_since(at)),
            no_master_reason,
            mode: self.config.mode,
            clients: self.clients.count(),
            held: self.clients.held_stats(),
        };
        let mut snapshot = self.history.snapshot_into(now, gathered, &self.out.counters);
        snapshot.trend = self.trend.samples(now);
        snapshot
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
            self.sentinels.as_ref().map(|s| (s.deadline(self.failover.master().is_some()), TimerReason::Sentinel)),
            self.switchover.as_ref().and_then(|s| s.poll.next()).map(|at| (at, TimerReason::Switchover)),
            self.streams.deadline().map(|at| (at, TimerReason::StreamStall)),
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
                Lane::Client => {
                    let before = buf.len();
                    if before >= LARGE_VALUE {
                        // A large value, or a pipeline as large, arrived at once.
                        self.clients.moves_large_values(conn);
                    }
                    self.client_data(now, conn, buf);
                    self.out.counters.bytes_in += before.saturating_sub(buf.len()) as u64;
                }
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
            Input::ConnectFailed { conn, reason, failure } => {
                if let Some(server) = self.pool.server_of(conn) {
                    self.monitor.connect_error(server, reason, failure, &mut self.out);
                }
                self.backend_lost(now, conn, &format!("connect failed: {reason}"), Loss::ConnectFailed)
            }
            Input::Refused { conn } => self.backend_lost(now, conn, "connection refused", Loss::Refused),
            Input::Closed { conn } => match conn.lane() {
                Lane::Client => self.clients.remove(conn, false, &mut self.out),
                Lane::Backend => self.backend_lost(now, conn, "closed by the server", Loss::Closed),
            },
            Input::WriteBlocked { conn } => {
                self.clients.set_write_blocked(conn, true, &mut self.out);
                self.stream_backpressure(now, conn, true);
                self.upload_backpressure(conn, true);
            }
            Input::Drained { conn } => {
                self.clients.set_write_blocked(conn, false, &mut self.out);
                self.stream_backpressure(now, conn, false);
                self.upload_backpressure(conn, false);
            }
        }
    }

    /// Lets the engine act on time: probes, down detection, failover deadlines, held requests that expire, the end
    /// of the shutdown grace.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.trend.due(now) {
            let snapshot = self.status(now);
            self.trend.record(now, &snapshot);
        }
        self.monitor.tick(now, &mut self.pool, &mut self.out);
        if let Some(sentinels) = self.sentinels.as_mut() {
            sentinels.tick(now, &mut self.pool, &mut self.out);
        }
        for server in self.monitor.detect_down(now, &mut self.pool, &mut self.out) {
            self.close_backends_of(now, server, false, "server is down");
        }
        self.evaluate_failover(now);
        let waits_due = self.waits.poll_due(now);
        if self.fence_poll.poll_due(now, self.monitor.views(), self.failover.master()) || waits_due {
            self.request_offsets(now);
        }
        self.settle_waits(now);
        self.advance_switchover(now);
        self.finish_removals(now);
        if self.clients.any_held() {
            // Why no server can be used, for the errors of the held requests that expire.
            self.clients.set_obstacles(failure::obstacles_suffix(self.monitor.views()));
        }
        self.clients.expire_held(now, self.failover.master().is_some(), &mut self.out);
        for backend in self.streams.stalled(now) {
            self.out.actions.push_back(Action::SetReadable { conn: backend, readable: true });
        }
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
        if !self.uploads.is_empty() && self.upload_data(now, conn, buf) {
            return;
        }
        loop {
            while let NextRequest::Request(held) = self.clients.next_request(now, conn, buf, &mut self.out) {
                if held.spec.is_none() && self.proxy_command(now, conn, &held) {
                    continue;
                }
                if self.clients.has_held(conn) || !self.execute(now, conn, &held) {
                    self.clients.hold(conn, held, self.failover.master().is_some(), &mut self.out);
                }
            }
            // What is left is the start of a request: one with a large value still arriving goes on as it comes.
            if buf.is_empty() || !self.start_upload(now, conn, buf) || self.upload_data(now, conn, buf) {
                break;
            }
        }
        self.clients.update_reading(conn, &mut self.out);
    }

    /// Starts uploading the request whose start `buf` holds, if it may be (see [`crate::upload`]): its head goes
    /// on a private connection of the client's now, as [`Engine::execute`] sends any request. Returns whether it
    /// did (the client moves large values from then on); otherwise the request is held whole, as every other one.
    #[cold]
    #[inline(never)]
    fn start_upload(&mut self, now: Instant, conn: ConnId, buf: &mut BytesMut) -> bool {
        let Some(head) = self.clients.upload_head(now, conn, buf) else { return false };
        // Its read buffer may never hold 64 KiB at once: the value leaves it as it comes.
        self.clients.moves_large_values(conn);
        if !self.execute(now, conn, &head.held) {
            return false;
        }
        // The head asked for a private connection, so the client holds one now.
        let Some(backend) = self.clients.forward_state(conn).and_then(|state| state.private) else { return false };
        self.clients.upload_started(conn, buf, head.head_len);
        self.uploads.start(conn, backend, head.body_len);
        true
    }

    /// Forwards what arrived of the value `conn` is uploading. Returns whether the upload goes on (the caller
    /// leaves `buf` alone); false when the client uploads nothing or the request just ended (what follows in
    /// `buf` is the next request).
    #[cold]
    #[inline(never)]
    fn upload_data(&mut self, now: Instant, conn: ConnId, buf: &mut BytesMut) -> bool {
        let Some(piece) = self.uploads.take(conn, buf) else { return false };
        match piece {
            UploadPiece::Part { backend, data } => self.pool.send(backend, &[], data, &mut self.out),
            UploadPiece::Waiting => {}
            UploadPiece::Last { backend, data, was_blocked } => {
                self.pool.send(backend, &[], data, &mut self.out);
                if was_blocked {
                    self.clients.set_upload_blocked(conn, false, &mut self.out);
                }
                return false;
            }
            UploadPiece::BadTerminator { backend } => {
                buf.clear();
                self.upload_malformed(now, conn, backend);
            }
        }
        true
    }

    /// The value `client` uploaded on `backend` is not followed by CRLF. The server never got the request's last
    /// bytes, so it never ran it: closing the connection drops it there. The client gets Redis's protocol error
    /// in the request's slot and is closed.
    #[cold]
    #[inline(never)]
    fn upload_malformed(&mut self, now: Instant, client: ConnId, backend: ConnId) {
        self.uploads.remove_backend(backend);
        self.clients.private_lost(client, backend);
        let Some(lost) = self.pool.remove(backend) else { return };
        self.out.close(backend);
        let message = format!("ERR {}", resp::ProtocolError::MissingBulkTerminator);
        self.out.event(Event::ClientProtocolError { conn: client, message: message.clone() });
        let earlier = resp::error_reply(
            "ERR redis-proxy closed the connection after a protocol error; the command may or may not have run",
        );
        let slots: Vec<(ConnId, u64)> = lost
            .waiters
            .iter()
            .filter_map(|waiter| match *waiter {
                Waiter::Client { conn, seq, .. } => Some((conn, seq)),
                _ => None,
            })
            .collect();
        for (index, &(conn, seq)) in slots.iter().enumerate() {
            let reply = if index + 1 == slots.len() { resp::error_reply(&message) } else { earlier.clone() };
            self.deliver(now, conn, seq, reply);
        }
        self.clients.close_if_done(client, &mut self.out);
    }

    /// Runs a classified request now (true), or leaves it to the caller to hold (false) when it must wait: no
    /// master, or an order barrier.
    fn execute(&mut self, now: Instant, conn: ConnId, held: &HeldRequest) -> bool {
        let pin = match &held.handling {
            Handling::Local(reply) => {
                self.out.counters.request(Target::Proxy, Class::of(held.spec));
                self.clients.reply_local(conn, reply.clone(), &mut self.out);
                return true;
            }
            Handling::LocalThenClose(reply) => {
                self.out.counters.request(Target::Proxy, Class::of(held.spec));
                self.clients.reply_local(conn, reply.clone(), &mut self.out);
                self.clients.close_after_replies(conn, &mut self.out);
                return true;
            }
            Handling::Refuse(message) => {
                self.out.counters.request(Target::Proxy, Class::of(held.spec));
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
                self.out.counters.request(Target::Master, Class::Other);
                let waiter = Waiter::Client { conn, seq, sent: now };
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
        let Ok(waiter) = self.clients.start_request(now, conn, backend, pin, write_epoch) else { return false };
        if let (Some(split), Some(Waiter::Client { seq, .. })) = (split, waiter) {
            self.split_sent(conn, seq, split, server);
        }
        if pin == Pin::Replication {
            self.pool.set_raw(backend);
        }
        let target = if Some(server) == master { Target::Master } else { Target::Replica };
        self.out.counters.request(target, Class::of(held.spec));
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
        self.out.counters.request(Target::Proxy, Class::Other);
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

    /// Hands the pool the private connections of clients that left, and lets streams whose client or backend
    /// connection is gone go on or end.
    #[inline(always)]
    fn release_departed(&mut self) {
        // Looked at before it is taken: taking the list, empty after nearly every input, costs more.
        if self.clients.any_departed() {
            self.release_privates_of_departed();
        }
        if !self.streams.is_empty() {
            self.tidy_streams();
        }
    }

    /// Takes back the private connections of the clients that left.
    #[cold]
    #[inline(never)]
    fn release_privates_of_departed(&mut self) {
        for departed in self.clients.take_departed() {
            self.pool.release_private(departed.private, departed.passthrough, &mut self.out);
        }
        if !self.uploads.is_empty() {
            // Their connections were closed with them: they hold part of a request.
            let clients = &self.clients;
            self.uploads.retain_clients(|client| clients.contains(client));
        }
    }

    /// Forgets streams on connections that closed, and resumes reading the ones paused for a client that left:
    /// the rest of its value is read and dropped, so that the connection's later replies get through.
    #[cold]
    #[inline(never)]
    fn tidy_streams(&mut self) {
        let (pool, clients) = (&self.pool, &self.clients);
        for backend in self.streams.tidy(|b| pool.contains(b), |c| clients.contains(c)) {
            self.out.actions.push_back(Action::SetReadable { conn: backend, readable: true });
        }
    }

    /// A backend connection blocked on writing (or drained): the client uploading on it stops (or resumes) being
    /// read, so the proxy never holds more of a value than the server's socket refuses.
    fn upload_backpressure(&mut self, backend: ConnId, blocked: bool) {
        if let Some(client) = self.uploads.backend_blocked(backend, blocked) {
            self.clients.set_upload_blocked(client, blocked, &mut self.out);
        }
    }

    /// A client blocked on writing (or drained): the backend connection streaming a reply to it, if any, stops
    /// (or resumes) being read, so the proxy never holds more of a value than the client's socket refuses.
    fn stream_backpressure(&mut self, now: Instant, client: ConnId, blocked: bool) {
        // A client that left has no say: the rest of its value is read and dropped.
        if !self.clients.contains(client) {
            return;
        }
        if let Some(backend) = self.streams.client_blocked(now, client, blocked) {
            self.out.actions.push_back(Action::SetReadable { conn: backend, readable: !blocked });
        }
    }

    // ------------------------------------------------------------------ backends

    fn backend_data(&mut self, now: Instant, conn: ConnId, buf: &mut BytesMut) {
        if !self.streams.is_empty() && self.stream_through(now, conn, buf) {
            return;
        }
        loop {
            let (frame, owner) = match self.pool.next_reply(conn, buf) {
                Ok(Some(reply)) => reply,
                Ok(None) => {
                    // Only a partial reply can be a large one to stream; the common case has nothing left.
                    if !buf.is_empty() {
                        self.partial_reply(now, conn, buf);
                    }
                    return;
                }
                Err(error) => {
                    buf.clear();
                    self.close_and_fail(now, conn, &format!("bad reply: {error}"));
                    return;
                }
            };
            if let Some(owner) = owner {
                match self.pool.take_proxy_waiter(conn) {
                    Some(Waiter::Auth) => {
                        self.backend_auth_reply(now, conn, &frame);
                        continue;
                    }
                    Some(_) => continue,
                    None => {}
                }
                if frame.first() == Some(&b'>') || self.clients.is_passthrough(owner) {
                    self.clients.push(owner, frame, &mut self.out);
                    continue;
                }
            } else if frame.first() == Some(&b'>') {
                // A push on a shared RESP3 connection answers no request (none of its clients subscribed to
                // anything, as that pins): matching it to one would put the connection out of step. On a
                // sentinel's subscription it is an event.
                self.sentinel_push(now, conn, &frame);
                continue;
            }
            match self.pool.pop_waiter(conn, &mut self.out) {
                Some(Waiter::Client { conn: client, seq, sent }) => {
                    // One request in LATENCY_SAMPLE: reading the time difference costs more than the rest of
                    // the counting together, and a steady sample shows the same distribution.
                    if seq % LATENCY_SAMPLE == 0 {
                        self.out.counters.latency.observe(now.saturating_duration_since(sent));
                    }
                    if frame.len() >= LARGE_VALUE {
                        self.clients.moves_large_values(client);
                    }
                    self.deliver(now, client, seq, frame)
                }
                Some(Waiter::Reset) => self.pool.reset_done(conn, &frame, self.failover.master(), &mut self.out),
                Some(Waiter::Ignore) => {}
                Some(Waiter::Auth) => self.backend_auth_reply(now, conn, &frame),
                Some(Waiter::Sentinel(query)) => self.sentinel_reply(now, conn, query, &frame),
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
                            self.advance_switchover(now);
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

    /// The reply to the `AUTH` a backend connection started with: the monitor learns whether the server takes the
    /// proxy's credentials; one that takes them again may be what held requests and the failover rules wait for.
    #[cold]
    #[inline(never)]
    fn backend_auth_reply(&mut self, now: Instant, conn: ConnId, frame: &[u8]) {
        let Some(server) = self.pool.server_of(conn) else { return };
        if self.monitor.auth_reply(server, frame, &mut self.out) {
            self.evaluate_failover(now);
            self.run_all_held(now);
        }
    }

    /// The `CONFIG SET masterauth` a server needs before it is pointed at `master` (None: no credentials).
    fn masterauth_for(&self, master: ServerId) -> Option<bytes::Bytes> {
        let address = self.monitor.address(master);
        self.config.server_credentials(address).and_then(auth::masterauth_request)
    }

    /// Starts streaming the large reply whose start `buf` holds on `conn` if its client is owed it next (then the
    /// header and the body so far go out now); otherwise it is held whole, as every other reply.
    #[cold]
    #[inline(never)]
    fn partial_reply(&mut self, now: Instant, conn: ConnId, buf: &mut BytesMut) {
        let Some((whole, waiter)) = self.pool.partial_large_bulk(conn, buf) else { return };
        if let Some(Waiter::Client { conn: client, .. }) = waiter {
            self.clients.moves_large_values(client);
        }
        let client = match waiter {
            Some(Waiter::Client { conn: client, seq, .. }) if self.clients.is_next(client, seq) => (client, seq),
            _ => return self.pool.hold_whole(conn, buf),
        };
        self.pool.stream_taken(conn);
        let data = buf.split().freeze();
        self.streams.start(conn, client.0, client.1, whole - data.len());
        self.stream_part(now, client.0, client.1, data);
    }

    /// Sends a piece of a streamed reply; a client already blocked on writing pauses the stream at once.
    fn stream_part(&mut self, now: Instant, client: ConnId, seq: u64, data: bytes::Bytes) {
        self.clients.stream_part(client, seq, data, &mut self.out);
        if self.clients.is_write_blocked(client) {
            self.stream_backpressure(now, client, true);
        }
    }

    /// Hands what arrived on `conn` to the reply streamed on it, if one is. Returns true when the stream took
    /// everything (or the connection was given up); false when there is none, or it ended and the replies after
    /// it are left in `buf` for the scanner.
    #[cold]
    #[inline(never)]
    fn stream_through(&mut self, now: Instant, conn: ConnId, buf: &mut BytesMut) -> bool {
        match self.streams.take(conn, buf) {
            None => false,
            Some(Piece::Part { client, seq, data }) => {
                self.stream_part(now, client, seq, data);
                true
            }
            Some(Piece::Last { data, was_paused }) => {
                if was_paused {
                    self.out.actions.push_back(Action::SetReadable { conn, readable: true });
                }
                match self.pool.pop_waiter(conn, &mut self.out) {
                    Some(Waiter::Client { conn: client, seq, sent }) => {
                        if seq % LATENCY_SAMPLE == 0 {
                            self.out.counters.latency.observe(now.saturating_duration_since(sent));
                        }
                        self.deliver(now, client, seq, data);
                        false
                    }
                    // A stream starts only for a client's waiter and keeps it at the front: not reached.
                    _ => {
                        buf.clear();
                        self.close_and_fail(now, conn, "unexpected reply");
                        true
                    }
                }
            }
            Some(Piece::BadTerminator) => {
                buf.clear();
                self.close_and_fail(now, conn, "bad reply: bulk string not terminated by CRLF");
                true
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
            self.backend_lost(now, conn, reason, Loss::GaveUp);
        }
    }

    /// A backend connection failed, was `refused`, broke or was closed by the engine: every request in flight on it
    /// gets an error (a write may or may not have run: never retried), a private connection's client is closed
    /// because the state it built is gone, and the monitor weighs the evidence.
    fn backend_lost(&mut self, now: Instant, conn: ConnId, reason: &str, loss: Loss) {
        let refused = loss == Loss::Refused;
        let Some(lost) = self.pool.remove(conn) else { return };
        if let Some(client) = self.streams.remove(conn) {
            // The client has part of a reply whose rest will never come: no error can follow it in the protocol.
            self.clients.remove(client, true, &mut self.out);
        }
        if let Some(client) = self.uploads.remove_backend(conn) {
            // The client is closed below (it loses its private connection); what it still sends is dropped.
            self.clients.set_upload_blocked(client, false, &mut self.out);
        }
        let Some(lost_server) = lost.server else {
            self.sentinel_lost(now, conn);
            return;
        };
        // The owner loses its private connection before any error is delivered: delivering runs the owner's held
        // requests, which must not be sent on (or wait forever for) this connection.
        let orphaned = match lost.purpose {
            Purpose::Private { owner: Some(owner) } if self.clients.private_lost(owner, conn) => Some(owner),
            _ => None,
        };
        let address = self.monitor.address(lost_server).clone();
        let message = if lost.connected {
            format!("ERR redis-proxy lost the connection to {address} ({reason}); the command may or may not have run")
        } else {
            format!("ERR redis-proxy could not reach {address} ({reason}); the command was not sent")
        };
        let error = resp::error_reply(&message);
        let mut failed = 0;
        for waiter in &lost.waiters {
            if let Waiter::Client { conn: client, seq, .. } = *waiter {
                failed += 1;
                self.deliver(now, client, seq, error.clone());
            }
        }
        self.out.event(Event::BackendLost { address, reason: reason.to_string(), failed_requests: failed });
        let went_down = refused && self.monitor.refused(lost_server, &mut self.out);
        if went_down {
            self.close_backends_of(now, lost_server, false, "server is down");
        }
        if refused {
            self.monitor.forget_knock(lost_server, conn);
        } else if loss == Loss::ConnectFailed && !lost.connected {
            self.monitor.connect_failed(lost_server, conn);
        } else {
            // Closed by the engine itself (it gave up on the server's connections): no evidence either way.
            self.monitor.forget_knock(lost_server, conn);
        }
        match lost.purpose {
            Purpose::Knock => {}
            Purpose::Probe => self.monitor.probe_lost(now, lost_server, &mut self.pool, &mut self.out),
            // A connection that never opened, or one lost with requests on it, may mean a dead server. An idle
            // connection closed by the server (its `timeout` setting) is just reopened when needed.
            _ if !lost.connected || failed > 0 => {
                self.monitor.data_conn_lost(now, lost_server, &mut self.pool, &mut self.out)
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

    // ------------------------------------------------------------------ admin

    /// Runs `held` if it is a `PROXY` command (true); one the authentication check refused is answered as any
    /// refusal. Out of line: only commands Redis does not know get here, and the request path stays short.
    #[cold]
    #[inline(never)]
    fn proxy_command(&mut self, now: Instant, conn: ConnId, held: &HeldRequest) -> bool {
        if matches!(held.handling, Handling::Refuse(_)) || !admin::is_proxy_command(&held.request) {
            return false;
        }
        self.admin_command(now, conn, held);
        true
    }

    /// Runs a `PROXY` command of `conn` (refused unless it came in on the admin listener).
    fn admin_command(&mut self, now: Instant, conn: ConnId, held: &HeldRequest) {
        self.out.counters.request(Target::Proxy, Class::Other);
        if !self.admins.contains(&conn) && !self.clients.is_admin_user(conn) {
            let message = "ERR PROXY commands are accepted only on the admin listener (admin_listen) or from a client \
                           user with \"admin\": true";
            self.clients.reply_local(conn, resp::error_reply(message), &mut self.out);
            return;
        }
        let text: Vec<String> = held.request.args().map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        self.out.event(Event::AdminCommand { conn, command: text.join(" ") });
        let reply = match admin::parse(&held.request) {
            Err(message) => resp::error_reply(&message),
            Ok(AdminCommand::Add(_) | AdminCommand::Remove(_) | AdminCommand::Failover(_))
                if self.sentinels.is_some() =>
            {
                resp::error_reply("ERR in Sentinel mode the sentinels decide the servers and the master: ask them")
            }
            Ok(AdminCommand::Status) => admin::bulk(&admin::status_text(&self.status(now))),
            Ok(AdminCommand::Servers) => admin::bulk_array(&admin::server_lines(&self.status(now))),
            Ok(AdminCommand::Add(address)) => match self.add_server(now, address) {
                Ok(()) => resp::simple_reply("OK"),
                Err(message) => resp::error_reply(&message),
            },
            Ok(AdminCommand::Remove(address)) => match self.remove_server(now, &address) {
                Ok(()) => resp::simple_reply("OK draining"),
                Err(message) => resp::error_reply(&message),
            },
            Ok(AdminCommand::Failover(target)) => match self.begin_switchover(now, conn, target) {
                // The reply comes when the switchover ends.
                Ok(()) => return,
                Err(message) => resp::error_reply(&message),
            },
            Ok(AdminCommand::Reload) => {
                self.out.event(Event::ReloadRequested);
                resp::simple_reply("OK reloading: see the log for the outcome")
            }
        };
        self.clients.reply_local(conn, reply, &mut self.out);
    }

    /// The servers watched now, in order (configured ones and those added since).
    pub fn servers(&self) -> Vec<ServerAddress> {
        self.monitor.views().iter().filter(|v| !v.draining).map(|v| v.address.clone()).collect()
    }

    /// Watches a new server (`PROXY ADD`, a reload): probed at once; the failover rules make it a replica of the
    /// master if it is not one, and reads reach it once it is in sync (`readsToSlaves`).
    pub fn add_server(&mut self, now: Instant, address: ServerAddress) -> Result<(), String> {
        if self.monitor.find(&address).is_some() {
            return Err(format!("ERR {address} is already a server of this proxy"));
        }
        self.pool.add_server(address.clone(), self.config.server_credentials(&address).and_then(auth::auth_request));
        self.failover.add_server();
        self.monitor.add_server(now, address.clone(), &mut self.pool, &mut self.out);
        self.out.event(Event::ServerAdded { address });
        Ok(())
    }

    /// Removes a server (`PROXY REMOVE`, a reload): it gets no new requests, those in flight finish, then its
    /// connections close. The routed master cannot be removed (fail over first).
    pub fn remove_server(&mut self, now: Instant, address: &ServerAddress) -> Result<(), String> {
        let Some(server) = self.monitor.find(address).filter(|s| !self.removing.contains(s)) else {
            return Err(format!("ERR {address} is not a server of this proxy"));
        };
        if self.failover.is_involved(server) {
            return Err(format!("ERR {address} is the master (or becoming it): fail over first (PROXY FAILOVER)"));
        }
        if self.monitor.views().len() - self.removing.len() <= 1 {
            return Err("ERR the last server cannot be removed".to_string());
        }
        self.monitor.drain(server);
        self.removing.push(server);
        self.out.event(Event::ServerRemoving { address: address.clone() });
        self.finish_removals(now);
        Ok(())
    }

    /// Forgets the servers being removed that have no request of a client in flight any more.
    fn finish_removals(&mut self, now: Instant) {
        while let Some(position) = self.removing.iter().position(|s| self.pool.in_flight(*s) == 0) {
            let server = self.removing.remove(position);
            for conn in self.pool.conns_of(server, false) {
                self.close_and_fail(now, conn, "server removed");
            }
            let address = self.monitor.address(server).clone();
            self.monitor.remove_server(server);
            self.pool.remove_server(server);
            self.failover.remove_server(server);
            for other in &mut self.removing {
                if other.0 > server.0 {
                    other.0 -= 1;
                }
            }
            self.out.event(Event::ServerRemoved { address });
        }
    }

    /// Starts a planned switchover for the admin client `conn` (its reply comes when it ends).
    fn begin_switchover(&mut self, now: Instant, conn: ConnId, target: Option<ServerAddress>) -> Result<(), String> {
        if !self.removing.is_empty() {
            return Err("ERR a server is being removed: try again in a moment".to_string());
        }
        let target = match target {
            None => None,
            Some(address) => Some(
                self.monitor.find(&address).ok_or_else(|| format!("ERR {address} is not a server of this proxy"))?,
            ),
        };
        let deadline = now + self.switchover_bound;
        let (master, target) = self
            .failover
            .begin_switchover(self.monitor.views(), target, deadline)
            .map_err(|why| format!("ERR cannot fail over: {why}"))?;
        let Some(seq) = self.clients.reserve_slot(conn) else { return Ok(()) };
        let (from, to) = (self.monitor.address(master).clone(), self.monitor.address(target).clone());
        self.history.begin(now, from.clone(), "planned switchover (PROXY FAILOVER)");
        self.out.event(Event::SwitchoverStarted { from, to });
        let poll = PollSchedule::default();
        self.switchover = Some(Switchover { admin: (conn, seq), target, started: now, drained_at: None, poll });
        self.advance_switchover(now);
        Ok(())
    }

    /// Moves a planned switchover on: once the master has no request in flight, polls both offsets until the
    /// target's equals the master's (every acknowledged write is on it), then promotes the target.
    fn advance_switchover(&mut self, now: Instant) {
        let Some((master, target)) = self.failover.switching() else { return };
        let Some(switchover) = self.switchover.as_mut() else { return };
        let due = switchover.poll.due(now, true, SWITCHOVER_POLL);
        // Requests already sent run to the end: their writes are acknowledged, so they must be on the target too.
        if self.pool.in_flight(master) > 0 {
            return;
        }
        let drained = *switchover.drained_at.get_or_insert(now);
        let fresh = |view: &ServerView| {
            view.offset_seen.as_ref().filter(|(at, _)| *at >= drained).map(|(_, info)| info.repl_offset)
        };
        let views = self.monitor.views();
        if let (Some(master_offset), Some(target_offset)) = (fresh(&views[master.0]), fresh(&views[target.0])) {
            if master_offset == target_offset {
                self.failover.promote_switchover(now);
                let address = self.monitor.address(target).clone();
                let reason = format!("PROXY FAILOVER, once its offset reached the master's ({master_offset})");
                self.history.chose(&address, &reason);
                self.out.event(Event::PromotionStarted { address, reason });
                let why = "promoting it: a planned switchover".to_string();
                self.monitor.send_replicaof(now, target, ReplicaOf::NoOne, why, &mut self.pool, &mut self.out);
                return;
            }
        }
        if due {
            self.monitor.request_offset(now, master, &mut self.pool, &mut self.out);
            self.monitor.request_offset(now, target, &mut self.pool, &mut self.out);
        }
    }

    // ------------------------------------------------------------------ failover

    fn evaluate_failover(&mut self, now: Instant) {
        if self.sentinels.is_some() {
            self.follow_sentinels(now);
        } else {
            for decision in self.failover.evaluate(self.monitor.views(), now) {
                self.carry_out(now, decision);
            }
        }
        self.follow_master_history();
    }

    /// Carries out one decision of the failover rules (or, in Sentinel mode, of the sentinels).
    fn carry_out(&mut self, now: Instant, decision: Decision) {
        match decision {
            Decision::Adopt { master, reason } => {
                let address = self.monitor.address(master).clone();
                self.history.end(now, &address);
                self.master_since = Some(now);
                if let Some(switchover) = self.switchover.take() {
                    let held_ms = now.saturating_duration_since(switchover.started).as_secs_f64() * 1000.0;
                    let (reply, outcome) = if master == switchover.target {
                        let text = format!("done: {address} is the master; writes were held for {held_ms:.1} ms");
                        (resp::simple_reply(&format!("OK {text}")), text)
                    } else {
                        let text = format!("aborted ({reason}); {address} is still the master");
                        (resp::error_reply(&format!("ERR planned switchover {text}")), text)
                    };
                    self.out.event(Event::SwitchoverEnded { outcome });
                    let (client, seq) = switchover.admin;
                    self.deliver(now, client, seq, reply);
                }
                self.out.event(Event::MasterAdopted { address, reason });
                // Held writes go to the new master in its own epoch.
                self.follow_master_history();
                self.run_all_held(now);
            }
            Decision::Lose { master, reason } => {
                let address = self.monitor.address(master).clone();
                self.history.begin(now, address.clone(), reason);
                self.out.event(Event::MasterLost { address, reason });
                // The next choice waits for fresh INFO from every running server: ask for it now.
                self.monitor.probe_idle_servers(now, &mut self.pool, &mut self.out);
                // Requests in flight on the old master get errors now rather than hanging.
                self.close_backends_of(now, master, true, "master lost");
            }
            Decision::Promote { candidate, reason } => {
                let address = self.monitor.address(candidate).clone();
                self.history.chose(&address, &reason);
                self.out.event(Event::PromotionStarted { address, reason });
                let why = "promoting it: the master is lost".to_string();
                self.monitor.send_replicaof(now, candidate, ReplicaOf::NoOne, why, &mut self.pool, &mut self.out);
            }
            Decision::Repoint { server, master } => {
                let order = ReplicaOf::Master { master, masterauth: self.masterauth_for(master) };
                let views = self.monitor.views();
                let why = views[server.0].misplacement(&views[master.0].address);
                self.monitor.send_replicaof(now, server, order, why, &mut self.pool, &mut self.out)
            }
        }
    }

    // ------------------------------------------------------------------ sentinel mode

    /// A reply from a sentinel.
    #[cold]
    #[inline(never)]
    fn sentinel_reply(&mut self, now: Instant, conn: ConnId, query: SentinelQuery, frame: &[u8]) {
        let Some(sentinels) = self.sentinels.as_mut() else { return };
        sentinels.reply(now, conn, query, frame, &mut self.out);
        if query.is_round_question() {
            self.evaluate_failover(now);
            self.run_all_held(now);
        }
    }

    /// A push on a connection with no owner: a sentinel's event prompts a round at once.
    #[cold]
    #[inline(never)]
    fn sentinel_push(&mut self, now: Instant, conn: ConnId, frame: &[u8]) {
        let Some(sentinels) = self.sentinels.as_mut() else { return };
        if sentinels.push(now, conn, frame, &mut self.out) {
            sentinels.tick(now, &mut self.pool, &mut self.out);
        }
    }

    /// A sentinel connection is gone: its answer no longer counts.
    fn sentinel_lost(&mut self, now: Instant, conn: ConnId) {
        let Some(sentinels) = self.sentinels.as_mut() else { return };
        if sentinels.lost(conn, &mut self.pool, &mut self.out) {
            self.evaluate_failover(now);
        }
    }

    /// The server at `address`, watched from now on if it was not (the sentinels named it).
    fn server_for(&mut self, now: Instant, address: &ServerAddress) -> ServerId {
        let known = self.monitor.views().iter().position(|v| addresses_match(&address.host, address.port, &v.address));
        if let Some(index) = known {
            return ServerId(index);
        }
        // Not watched yet (checked just above), so it is added.
        let _ = self.add_server(now, address.clone());
        let server = ServerId(self.monitor.views().len() - 1);
        self.monitor.set_reads_vetoed(server, true);
        server
    }

    /// Sentinel mode: routes to the master a majority of the sentinels names once its own `INFO` confirms it,
    /// keeps the current one without a majority (until `majority_lost_after`), and lets reads reach only the
    /// replicas the sentinels list as healthy.
    fn follow_sentinels(&mut self, now: Instant) {
        let routed = self.failover.master();
        let routed_address = routed.map(|m| self.monitor.address(m).clone());
        let Some(sentinels) = self.sentinels.as_mut() else { return };
        sentinels.evaluate(now, routed_address.as_ref(), &mut self.out);
        let agreed = sentinels.agreed().map(|(address, since)| (address.clone(), since));
        let replicas = sentinels.replicas().map(<[_]>::to_vec);
        let cut_off = sentinels.cut_off(now);
        let agreed = agreed.map(|(address, since)| (self.server_for(now, &address), since));
        if let Some(replicas) = replicas {
            for report in &replicas {
                self.server_for(now, &report.address);
            }
            for index in 0..self.monitor.views().len() {
                let address = self.monitor.address(ServerId(index));
                let healthy =
                    replicas.iter().any(|r| r.healthy && addresses_match(&r.address.host, r.address.port, address));
                self.monitor.set_reads_vetoed(ServerId(index), !healthy);
            }
        }
        match sentinel::verdict(self.monitor.views(), routed, agreed, cut_off) {
            Verdict::Keep => {}
            Verdict::Route(master) => {
                if let Some(old) = routed {
                    self.failover.follow(None, now);
                    let reason = "a majority of the sentinels names another master";
                    self.carry_out(now, Decision::Lose { master: old, reason });
                }
                self.failover.follow(Some(master), now);
                let reason = "a majority of the sentinels names it and its INFO reports role:master";
                self.history.chose(self.monitor.address(master), reason);
                self.carry_out(now, Decision::Adopt { master, reason });
            }
            Verdict::Drop { reason, confirm } => {
                self.failover.follow(None, now);
                if let Some(old) = routed {
                    self.carry_out(now, Decision::Lose { master: old, reason });
                }
                if let Some(server) = confirm {
                    self.confirm_master(now, server);
                }
            }
            Verdict::Confirm(server) => self.confirm_master(now, server),
        }
    }

    /// Asks `server`, which a majority of the sentinels names, for its `INFO` (unless a probe is outstanding), and
    /// the sentinels again soon: it is routed to once it reports `role:master`.
    fn confirm_master(&mut self, now: Instant, server: ServerId) {
        let due = self.sentinels.as_mut().is_some_and(|s| s.confirm_due(now));
        if due && self.monitor.views()[server.0].probe_pending_since.is_none() {
            self.monitor.send_probe(now, server, &mut self.pool, &mut self.out);
        }
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
    fn status_shows_the_master_and_counts_requests() {
        let mut kit = Driver::with_master(config(1));
        let now = kit.clock.now();
        let status = kit.engine.status(now);
        assert!(status.healthy(), "{:?}", status.no_master_reason);
        assert_eq!(status.servers[0].role, Some(Role::Master));
        assert_eq!(status.servers[0].connections.probe, 1);
        let client = kit.accept();
        kit.feed(client, b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*1\r\n$4\r\nPING\r\n");
        kit.drain();
        let status = kit.engine.status(now);
        let counters = &status.counters;
        assert_eq!(counters.clients_accepted, 1);
        assert_eq!(counters.requests[Target::Master as usize][Class::Read as usize], 1);
        assert_eq!(counters.bytes_in, 34);
        assert_eq!(status.clients, 1);
    }

    #[test]
    fn a_connect_error_is_reported_once_per_reason() {
        // Long enough that the server is not counted down (which closes its connections) during the test.
        let mut slow = config(1);
        slow.down_after = Duration::from_secs(60);
        let mut kit = Driver::new(slow);
        // Every connect of the next probe round fails for `reason`; returns how many connect errors were reported.
        let fail_round = |kit: &mut Driver, reason: &str| {
            kit.advance(Duration::from_secs(1));
            let opened = connects(&kit.drain());
            assert!(!opened.is_empty(), "the round opens a connection");
            for (conn, _) in opened {
                kit.connect_failed(conn, reason);
            }
            kit.drain();
            kit.events().into_iter().filter(|e| matches!(e, Event::ConnectFailed { .. })).count()
        };
        let tls = "TLS with server 127.0.0.1:7000 failed: invalid peer certificate: UnknownIssuer";
        assert_eq!(fail_round(&mut kit, tls), 1);
        assert_eq!(fail_round(&mut kit, tls), 0, "the same reason is not said again");
        assert_eq!(fail_round(&mut kit, "timed out"), 1, "a new reason is");
    }

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
