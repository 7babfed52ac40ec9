//! The [`Engine`]: the coordinator that feeds each machine's outcomes to the others behind the sans-IO contract.
//!
//! It owns the machines and decides nothing itself beyond their order: a client's request goes `client` (split,
//! classify) -> `route` (which server) -> `pool` (which connection) -> `client` (a reply slot); a reply comes
//! back `pool` (whose) -> `client` (in order); probe replies go to `monitor`, and whatever changes a server's
//! standing goes to `failover`, whose decisions come back here to be carried out. What `monitor` and `sentinel`
//! order (connections to open, requests to send, connections to close) is handed to `pool` at once.

use crate::address::ServerAddress;
use crate::admin::{self, AdminClients};
use crate::auth;
use crate::client::{Clients, HeldRequest, NextRequest, LARGE_VALUE};
use crate::cluster::Cluster;
use crate::cluster_self::ProxyNode;
use crate::command::CommandFlags;
use crate::config::Config;
use crate::conn::{ConnId, Lane};
use crate::contract::{Action, Input, Outbox, TimerReason};
use crate::cursor::{self, Issuer, Process, ScanCall};
use crate::event::Event;
use crate::failover::{Decision, Failover, SwitchoverStep};
use crate::fence::{FencePoll, ReadFloor};
use crate::monitor::{Monitor, ProbeOutcome, ReplicaOf};
use crate::pool::{Pool, Purpose, SentinelQuery, Waiter};
use crate::publication::{Following, Publisher};
use crate::resp;
use crate::route::{Demand, Route, Router};
use crate::sentinel::Sentinels;
use crate::server_id::ServerId;
use crate::session::{Handling, Pin};
use crate::status::{Class, Gathered, History, ServerStatus, StatusSnapshot, Target, LATENCY_SAMPLE};
use crate::stream::{Piece, Streams};
use crate::topology::{self, Role};
use crate::trend::Trend;
use crate::upload::{UploadPiece, Uploads};
use crate::wait::Waits;
use bytes::BytesMut;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

mod cluster_map;
mod cluster_path;
mod cluster_shard_pubsub;
mod cluster_transaction;
mod following;
mod operations;
mod reply_path;
mod request_path;
mod workers;

use cluster_map::cluster_unhealthy;
use reply_path::Loss;

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
    out: Outbox,
    shutdown_grace: Duration,
    /// When the shutdown grace ends ([`Engine::begin_shutdown`] was called).
    shutdown_deadline: Option<Instant>,
    /// Failovers so far, for the status snapshot.
    history: History,
    /// Since when writes go to the routed master.
    master_since: Option<Instant>,
    /// Clients that came in on the admin listener (allowed `PROXY` commands, as admin users are).
    admins: AdminClients,
    /// The configuration in force (the last one [`Engine::reconfigure`] accepted).
    config: Config,
    /// Sentinel mode: the sentinels decide the master (the failover rules are not applied).
    sentinels: Option<Sentinels>,
    /// Samples of the last minutes, for the status page's charts.
    trend: Trend,
    /// Cluster mode: the slot map and the requests in the cluster (the failover rules are not applied).
    cluster: Option<Box<Cluster>>,
    /// Deciding for worker engines: what was published to them and what they confirmed.
    publisher: Option<Box<Publisher>>,
    /// A worker engine: the topology it follows instead of deciding.
    following: Option<Box<Following>>,
    /// A deciding engine: the status each worker engine last reported, added to its own.
    workers_status: Vec<Option<StatusSnapshot>>,
}

impl Engine {
    /// An engine for `config`; it starts probing the servers at the first [`Engine::handle_timeout`].
    pub fn new(config: Config, now: Instant) -> Engine {
        let mut engine = Engine {
            clients: Clients::new(&config),
            pool: Pool::new(config.pool_size + config.large_pool_size, config.limits),
            monitor: Monitor::new(&config, now),
            // A planned switchover holds writes for at most half of `hold_ms`, so that held requests never expire
            // because of one.
            failover: Failover::new(now, config.down_after, config.check_period, config.hold / 2),
            router: Router::new(&config),
            waits: Waits::default(),
            fence_poll: FencePoll::default(),
            streams: Streams::default(),
            uploads: Uploads::default(),
            out: Outbox::default(),
            shutdown_grace: config.shutdown_grace,
            shutdown_deadline: None,
            history: History::default(),
            master_since: None,
            admins: AdminClients::default(),
            sentinels: config.sentinel.as_ref().map(|s| Sentinels::new(s, config.check_period, now)),
            trend: Trend::default(),
            cluster: config.cluster.as_ref().map(|c| {
                let node = ProxyNode::new(&config.bind_address, config.listen_port);
                Box::new(Cluster::new(c, config.down_after, node))
            }),
            publisher: None,
            following: None,
            workers_status: Vec::new(),
            config,
        };
        for (id, view) in engine.monitor.views().iter() {
            let auth = engine.config.server_credentials(&view.address).and_then(auth::auth_request);
            engine.pool.add_server(id, view.address.clone(), auth);
        }
        for address in engine.config.sentinel.iter().flat_map(|s| &s.sentinels) {
            engine.pool.add_sentinel(address.clone());
        }
        engine.pool.set_readonly(engine.cluster.is_some() && engine.config.mode == crate::Mode::ReadsToSlaves);
        if engine.sentinels.is_some() {
            // Reads reach a replica only once the sentinels list it as healthy.
            for id in engine.monitor.views().ids() {
                engine.monitor.set_reads_vetoed(id, true);
            }
        }
        engine
    }

    /// A client connected from `peer` on the admin listener: as [`Engine::accept`], and it may send `PROXY`
    /// commands (every other client gets an error for them).
    pub fn accept_admin(&mut self, now: Instant, peer: SocketAddr) -> ConnId {
        let conn = self.accept(now, peer);
        let clients = &self.clients;
        self.admins.accepted(conn, |c| clients.contains(c));
        conn
    }

    /// What an operator may want to know now: servers, master, failovers, clients, held requests, counters.
    /// Builds a fresh snapshot (allocates): call it when asked (a status page, a scrape), not on every turn.
    pub fn status(&self, now: Instant) -> StatusSnapshot {
        let master = self.failover.master();
        let views = self.monitor.views();
        let master_view = master.and_then(|m| views.get(m));
        let master_offset = master_view.and_then(|v| v.info.as_ref()).map(|i| i.repl_offset);
        let servers = views
            .iter()
            .map(|(id, view)| {
                let info = view.info.as_ref();
                let replica = info.is_some_and(|i| i.role == Some(Role::Replica));
                let replica_info = info.filter(|_| replica);
                ServerStatus {
                    address: view.address.clone(),
                    role: info.and_then(|i| i.role),
                    routed_master: master == Some(id),
                    health: view.health,
                    why: if view.failures.credentials_refused() {
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
                    no_reads_because: self.router.why_no_reads(now, views, master, id),
                    obstacle: view.failures.obstacle().map(|o| o.brief().to_string()),
                    last_ok_ago: view.last_ok.map(|ok| now.saturating_duration_since(ok)),
                    connections: self.pool.counts_of(id),
                }
            })
            .collect();
        let cluster = self.cluster_status(now);
        let no_master_reason = match (master, master_view) {
            _ if self.cluster.is_some() => {
                cluster.as_ref().and_then(|c| cluster_unhealthy(c, &topology::obstacles_suffix(views)))
            }
            (Some(_), Some(m)) if m.is_routable() => None,
            (Some(_), Some(m)) => Some(format!("master {} is {}: {}", m.address, m.health.name(), m.why)),
            (Some(_), None) => Some("no master: the routed master is no longer a server of this proxy".to_string()),
            (None, _) if self.sentinels.is_some() => Some(
                "no master: waiting for a majority of the sentinels to name one that its own INFO confirms".to_string(),
            ),
            (None, _) => Some(self.failover.why_no_master().to_string()),
        };
        let gathered = Gathered {
            servers,
            master: master_view.map(|m| m.address.clone()),
            master_since: self.master_since.filter(|_| master.is_some()).map(|at| now.saturating_duration_since(at)),
            no_master_reason,
            mode: self.config.mode,
            clients: self.clients.count(),
            held: self.clients.held_stats(),
        };
        let mut snapshot = self.history.snapshot_into(now, gathered, &self.out.counters);
        snapshot.cluster = cluster;
        for worker in self.workers_status.iter().flatten() {
            snapshot.add_worker(worker);
        }
        snapshot.trend = self.trend.samples(now);
        snapshot
    }

    /// The master writes go to now, if any.
    pub fn master(&self) -> Option<&ServerAddress> {
        self.failover.master().and_then(|m| self.monitor.address(m))
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

    /// Whether the monitor or the sentinels ordered something the pool has not carried out yet. Never so once an
    /// input is handled (the coordinator hands their orders on after each step); the test kit checks it.
    #[cfg(any(test, feature = "testkit"))]
    pub fn orders_pending(&mut self) -> bool {
        !self.monitor.orders().is_empty()
            || self.sentinels.as_mut().is_some_and(|s| !s.orders().is_empty())
            || self.cluster.as_mut().is_some_and(|c| !c.orders().is_empty())
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
            self.monitor.deadline(),
            self.failover.deadline().map(|at| (at, TimerReason::FailoverDeadline)),
            self.clients.hold_deadline().map(|at| (at, TimerReason::HoldExpiry)),
            self.waits.deadline().map(|at| (at, TimerReason::Wait)),
            self.fence_poll.deadline().map(|at| (at, TimerReason::ReadFence)),
            self.shutdown_deadline.map(|at| (at, TimerReason::ShutdownGrace)),
            self.sentinels.as_ref().map(|s| (s.deadline(self.failover.master().is_some()), TimerReason::Sentinel)),
            self.failover.switchover_poll().map(|at| (at, TimerReason::Switchover)),
            self.streams.deadline().map(|at| (at, TimerReason::StreamStall)),
            self.cluster.as_ref().and_then(|c| c.deadline()).map(|at| (at, TimerReason::Cluster)),
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
    pub(super) fn connection_changed(&mut self, now: Instant, input: Input<'_>) {
        match input {
            Input::Data { .. } => {}
            Input::Connected { conn } => {
                self.pool.connected(conn);
                if let Some(server) = self.pool.knock_of(conn) {
                    self.monitor.knock_accepted(now, server, &mut self.out);
                    self.execute_orders();
                }
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
        self.monitor.tick(now);
        self.cluster_tick(now);
        if let Some(sentinels) = self.sentinels.as_mut() {
            sentinels.tick(now);
        }
        self.execute_orders();
        let newly_down = self.monitor.detect_down(now, &mut self.out);
        self.execute_orders();
        for server in newly_down {
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
            self.clients.set_obstacles(topology::obstacles_suffix(self.monitor.views()));
        }
        if self.cluster.as_deref().is_some_and(|c| c.shard_subscriptions.any_unplaced()) {
            // A client's own SSUBSCRIBE past `hold_ms` gets its error before the requests it sent after it.
            self.place_shard_batches(now);
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

    pub(super) fn run_held(&mut self, now: Instant, conn: ConnId) {
        while let Some(mut held) = self.clients.pop_held(conn) {
            if !self.execute(now, conn, &mut held) {
                self.clients.unpop_held(conn, held);
                return;
            }
        }
    }

    pub(super) fn run_all_held(&mut self, now: Instant) {
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
    pub(super) fn deliver(&mut self, now: Instant, conn: ConnId, seq: u64, reply: bytes::Bytes) {
        if !self.clients.deliver(conn, seq, reply, &mut self.out) && !self.release_ready_while_resending(conn) {
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

    /// Cluster mode: when a request of `conn` waits to be sent again, its replies that are in go out without
    /// waiting for the rest of their read (see [`crate::reply_order::ReadBatches`]). Returns whether any did.
    fn release_ready_while_resending(&mut self, conn: ConnId) -> bool {
        self.cluster.as_deref().is_some_and(|c| c.requests.resend_waiting_for(conn))
            && self.clients.release_ready(conn, &mut self.out)
    }

    /// Replies that answered fenced clients' writes need the offsets that prove where the writes have
    /// replicated: asked for once per input that can carry replies (not per reply), at its end.
    pub(super) fn after_replies(&mut self, now: Instant) {
        if self.clients.take_write_answered() {
            self.fence_write_answered(now);
        }
    }

    /// Hands the pool the private connections of clients that left, and lets streams whose client or backend
    /// connection is gone go on or end.
    #[inline(always)]
    pub(super) fn release_departed(&mut self) {
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
    pub(super) fn release_privates_of_departed(&mut self) {
        for departed in self.clients.take_departed() {
            if let Some(private) = departed.private {
                self.pool.release_private(private, departed.passthrough, &mut self.out);
            }
            if departed.passthrough {
                self.close_lines_of(departed.client);
            }
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
    pub(super) fn tidy_streams(&mut self) {
        let (pool, clients) = (&self.pool, &self.clients);
        for backend in self.streams.tidy(|b| pool.contains(b), |c| clients.contains(c)) {
            self.out.actions.push_back(Action::SetReadable { conn: backend, readable: true });
        }
    }

    pub(super) fn evaluate_failover(&mut self, now: Instant) {
        if self.cluster.is_some() {
            // The cluster fails over by itself: its map is followed instead.
            return self.cluster_tick(now);
        }
        if self.sentinels.is_some() {
            self.follow_sentinels(now);
        } else if self.is_worker() {
            // Its decider's topology is followed instead (Engine::follow).
            self.drop_master_seen_down(now);
        } else {
            for decision in self.failover.evaluate(self.monitor.views(), now) {
                self.carry_out(now, decision);
            }
        }
        self.waits.follow_master(self.monitor.views(), self.failover.master());
    }

    /// Carries out one decision of the failover rules (or, in Sentinel mode, of the sentinels).
    pub(super) fn carry_out(&mut self, now: Instant, decision: Decision) {
        match decision {
            Decision::Adopt { master, reason } => {
                let Some(address) = self.monitor.address(master).cloned() else { return };
                self.history.end(now, &address);
                self.master_since = Some(now);
                if let Some(end) = self.failover.end_switchover(now, master, &address, reason) {
                    let reply = match &end.outcome {
                        Ok(text) => resp::simple_reply(&format!("OK {text}")),
                        Err(text) => resp::error_reply(&format!("ERR planned switchover {text}")),
                    };
                    let outcome = match end.outcome {
                        Ok(text) | Err(text) => text,
                    };
                    self.out.event(Event::SwitchoverEnded { outcome });
                    let (client, seq) = end.requester;
                    self.deliver(now, client, seq, reply);
                }
                self.out.event(Event::MasterAdopted { address, reason });
                // Held writes go to the new master in its own epoch.
                self.waits.follow_master(self.monitor.views(), self.failover.master());
                self.run_all_held(now);
            }
            Decision::Lose { master, reason } => {
                if let Some(address) = self.monitor.address(master).cloned() {
                    self.history.begin(now, address.clone(), reason);
                    self.out.event(Event::MasterLost { address, reason });
                }
                // The next choice waits for fresh INFO from every running server: ask for it now.
                self.monitor.probe_idle_servers(now);
                self.execute_orders();
                // Requests in flight on the old master get errors now rather than hanging.
                self.close_backends_of(now, master, true, "master lost");
            }
            Decision::Promote { candidate, reason } => {
                let Some(address) = self.monitor.address(candidate).cloned() else { return };
                self.history.chose(&address, &reason);
                self.out.event(Event::PromotionStarted { address, reason });
                let why = "promoting it: the master is lost".to_string();
                self.monitor.send_replicaof(now, candidate, ReplicaOf::NoOne, why, &mut self.out);
                self.execute_orders();
            }
            Decision::Repoint { server, master } => {
                let order = ReplicaOf::Master { master, masterauth: self.masterauth_for(master) };
                let views = self.monitor.views();
                let (Some(view), Some(master_view)) = (views.get(server), views.get(master)) else { return };
                let why = view.misplacement(&master_view.address);
                self.monitor.send_replicaof(now, server, order, why, &mut self.out);
                self.execute_orders();
            }
        }
    }

    /// Hands the pool what the monitor and the sentinels ordered, in the order given. Called right after each of
    /// their steps that may order something, so the actions come out in the order they were decided.
    pub(super) fn execute_orders(&mut self) {
        self.pool.execute(self.monitor.orders(), &mut self.out);
        if let Some(sentinels) = self.sentinels.as_mut() {
            self.pool.execute(sentinels.orders(), &mut self.out);
        }
    }
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
